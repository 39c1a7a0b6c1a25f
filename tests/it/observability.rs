//! Metrics, structured logs and the promise that no secret leaks anywhere.

use std::time::Duration;

use crate::support::*;
use serde_json::Value;

const WABA: &str = "102290129340398";
const PHONE: &str = "106540352242922";
const ADMIN: &str = "admin-SECRET-token-0123456789";
const APP_SECRET: &str = "appsecret-SECRET-abcdef";
const VERIFY: &str = "verify-SECRET-token";
const HEALTH: &str = "EAAhealth-SECRET-token";
const REDIS_PASS: &str = "redispass-SECRET";

fn config(format: &str, redis_port: u16) -> String {
    format!(
        r#"
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
state_dir = "{{state_dir}}"
upstream = "{{upstream}}"
admin_token = "{ADMIN}"
redis_url = "redis://:{REDIS_PASS}@127.0.0.1:{redis_port}"
log_format = "{format}"
log_level = "debug"
request_timeout = "300ms"

[webhook]
app_secret = "{APP_SECRET}"
verify_token = "{VERIFY}"

[health]
access_token = "{HEALTH}"
interval = "100ms"

[[accounts]]
waba_id = "{WABA}"
phone_number_ids = ["{PHONE}"]
"#
    )
}

const SECRETS: &[&str] = &[ADMIN, APP_SECRET, VERIFY, HEALTH, REDIS_PASS, TEST_TOKEN];

fn assert_clean(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} leaks {s}:\n{text}");
    }
}

/// Exercises every path that could echo a secret, then searches every output for them.
async fn exercise(format: &str) -> (Gateway, FakeCloud, String) {
    let fake = FakeCloud::start().await;
    fake.on_phone(PHONE, Reply::blocked_368());
    fake.set_health(WABA, health_json(WABA, "BLOCKED"));
    // A Redis port with nothing listening: the gateway must cope without leaking the URL.
    let dead_port = free_port();
    let gw = Gateway::builder(&config(format, dead_port))
        .var("upstream", &fake.url())
        .start()
        .await;
    let mut bodies = String::new();
    for _ in 0..2 {
        let r = gw.send_str(PHONE, TEMPLATE_BODY).await;
        bodies += &r.text().await.unwrap();
    }
    // Unmapped send with the bearer token in the query string too.
    let r = gw
        .post(
            &format!("/v21.0/555/messages?access_token={TEST_TOKEN}"),
            TEXT_BODY,
        )
        .await;
    bodies += &r.text().await.unwrap();
    // Wrong admin token, and a webhook with a bad signature and a wrong verify token.
    bodies += &gw
        .admin_get("/admin/circuits", Some("wrong-token-0123456789"))
        .await
        .text()
        .await
        .unwrap();
    bodies += &gw
        .webhook_post("/webhook", "not-the-secret", b"{}")
        .await
        .text()
        .await
        .unwrap();
    bodies += &gw
        .webhook_verify("/webhook", "wrong", "123")
        .await
        .text()
        .await
        .unwrap();
    bodies += &gw
        .admin_get(&format!("/admin/circuits/{WABA}"), Some(ADMIN))
        .await
        .text()
        .await
        .unwrap();
    // Upstream gone: 502 bodies.
    fake.stop();
    bodies += &gw
        .send_str("106540352242999", TEXT_BODY)
        .await
        .text()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    (gw, fake, bodies)
}

#[tokio::test]
async fn no_secret_in_logs_metrics_bodies_text() {
    let (gw, _fake, bodies) = exercise("text").await;
    assert_clean("error bodies", &bodies);
    assert_clean("metrics", &gw.metrics().await);
    let logs = gw.logs();
    assert!(logs.contains("circuit transition"), "{logs}");
    assert_clean("text logs", &logs);
}

#[tokio::test]
async fn no_secret_in_json_logs_and_every_line_is_json() {
    let (gw, _fake, bodies) = exercise("json").await;
    assert_clean("error bodies", &bodies);
    let logs = gw.logs();
    assert_clean("json logs", &logs);
    let mut transitions = 0;
    for line in logs.lines().filter(|l| l.starts_with('{')) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["message"] == "circuit transition" {
            transitions += 1;
            assert_eq!(v["waba_id"], WABA);
            assert_eq!(v["code"], 368);
            assert_eq!(v["fbtrace_id"], FBTRACE_ID);
            assert_eq!(v["to"], "open");
        }
    }
    assert_eq!(transitions, 1, "{logs}");
}

#[tokio::test]
async fn metrics_after_a_trip() {
    let fake = FakeCloud::start().await;
    fake.on_phone(PHONE, Reply::blocked_368());
    let cfg = format!(
        "listen = \"{{listen}}\"\nadmin_listen = \"{{admin_listen}}\"\nstate_dir = \"{{state_dir}}\"\nupstream = \"{{upstream}}\"\n[[accounts]]\nwaba_id = \"{WABA}\"\nphone_number_ids = [\"{PHONE}\"]\n[[accounts]]\nwaba_id = \"1\"\nphone_number_ids = [\"2\"]\n"
    );
    let gw = Gateway::builder(&cfg)
        .var("upstream", &fake.url())
        .start()
        .await;
    let m = gw.metrics().await;
    // No series per configured account before anything happened; no Redis gauge without Redis.
    assert!(!m.contains("wa_breaker_circuit_open{"), "{m}");
    assert!(!m.contains("wa_breaker_redis_connected"), "{m}");
    assert!(m.contains("wa_breaker_build_info{version="));

    gw.send_str(PHONE, TEMPLATE_BODY).await;
    gw.send_str(PHONE, TEMPLATE_BODY).await;
    gw.send_str("2", TEMPLATE_BODY).await;
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "wa_breaker_circuit_open", &[("waba_id", WABA)]),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "wa_breaker_circuit_open", &[("waba_id", "1")]),
        None
    );
    assert_eq!(
        metric(
            &m,
            "wa_breaker_circuit_transitions_total",
            &[("waba_id", WABA), ("to", "open"), ("source", "send")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "wa_breaker_requests_total", &[("outcome", "forwarded")]),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &m,
            "wa_breaker_requests_total",
            &[("outcome", "answered_locally")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "wa_breaker_upstream_duration_seconds_count",
            &[("class", "4xx")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "wa_breaker_upstream_duration_seconds_count",
            &[("class", "2xx")]
        ),
        Some(1.0)
    );

    // Unknown error codes share one label value.
    fake.on_phone("2", Reply::graph_error(400, 987654, "new code"));
    gw.send_str("2", TEMPLATE_BODY).await;
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "wa_breaker_upstream_errors_total", &[("code", "other")]),
        Some(1.0)
    );
}
