//! The gateway end to end over real sockets: pass-through, trip on 368, local answers,
//! upstream failures, admin API, observe mode, config errors, graceful shutdown.
//!
//! Every behaviour test runs once per engine (`relay::…` with `fast_path = true`,
//! `hyper::…` with `fast_path = false`, see `both_engines!` at the end); tests that start
//! no gateway, or only exercise the admin listener, run once.

use std::time::Duration;

use crate::support::*;
use serde_json::{json, Value};

const WABA_A: &str = "102290129340398";
const PHONE_A1: &str = "106540352242922";
const PHONE_A2: &str = "106540352242923";
const WABA_B: &str = "102290129340399";
const PHONE_B: &str = "106540352242924";
const UNMAPPED: &str = "999000111222333";
const ADMIN: &str = "test-admin-token-0123456789";

fn config(engine: Engine, extra: &str) -> String {
    let engine_line = engine.config_line();
    format!(
        r#"
{engine_line}
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
state_dir = "{{state_dir}}"
upstream = "{{upstream}}"
admin_token = "{ADMIN}"
{extra}

[[accounts]]
waba_id = "{WABA_A}"
phone_number_ids = ["{PHONE_A1}", "{PHONE_A2}"]

[[accounts]]
waba_id = "{WABA_B}"
phone_number_ids = ["{PHONE_B}"]
"#
    )
}

async fn start(engine: Engine, fake: &FakeCloud, extra: &str) -> Gateway {
    Gateway::builder(&config(engine, extra))
        .var("upstream", &fake.url())
        .start()
        .await
}

async fn body_json(r: reqwest::Response) -> Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

async fn pass_through_is_byte_identical(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake, "").await;

    let r = gw.send_str(PHONE_A1, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-wa-breaker").is_none());
    assert_eq!(r.bytes().await.unwrap(), OK_SEND_BODY.as_bytes());

    let sent = fake.sends_for(PHONE_A1);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].method, "POST");
    assert_eq!(sent[0].path, format!("/v21.0/{PHONE_A1}/messages"));
    assert_eq!(sent[0].body, TEMPLATE_BODY.as_bytes());
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Bearer {TEST_TOKEN}").as_str())
    );
    assert_eq!(sent[0].header("content-type"), Some("application/json"));

    // An error that is not an enforcement block: passed through untouched, no trip.
    let err = graph_error_body(
        131047,
        "Re-engagement message",
        None,
        Some("More than 24 hours"),
    );
    let err_bytes = serde_json::to_vec(&err).unwrap();
    fake.on_phone(
        PHONE_A1,
        Reply::raw(400, err_bytes.clone()).with_header("x-fb-trace-id", "abc"),
    );
    let r = gw.send_str(PHONE_A1, TEXT_BODY).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers().get("x-fb-trace-id").unwrap(), "abc");
    assert_eq!(r.bytes().await.unwrap(), err_bytes);

    // Query strings and other Graph calls pass too.
    let r = gw
        .get(&format!(
            "/v21.0/{PHONE_A1}/whatsapp_business_profile?fields=about"
        ))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        fake.last().unwrap().path_and_query(),
        format!("/v21.0/{PHONE_A1}/whatsapp_business_profile?fields=about")
    );
    let (s, c) = gw.circuit(ADMIN, WABA_A).await;
    assert_eq!(s, 200);
    assert_eq!(c["state"], "closed");
}

async fn first_368_trips_and_later_sends_never_reach_upstream(engine: Engine) {
    let fake = FakeCloud::start().await;
    fake.on_phone(PHONE_A1, Reply::blocked_368());
    let gw = start(engine, &fake, "").await;

    // The tripping answer goes back byte for byte.
    let r = gw.send_str(PHONE_A1, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("x-wa-breaker").is_none());
    assert_eq!(r.bytes().await.unwrap(), BLOCKED_368_BODY.as_bytes());

    // Every later send for that WABA, on any of its numbers, is answered locally.
    for phone in [PHONE_A1, PHONE_A2, PHONE_A1] {
        let r = gw.send_str(phone, TEMPLATE_BODY).await;
        assert_eq!(r.status(), 403);
        assert_eq!(r.headers()["x-wa-breaker"], "open");
        assert_eq!(r.headers()["content-type"], "application/json");
        assert!(
            r.headers().get("retry-after").is_none(),
            "end unknown: no retry-after"
        );
        let b = body_json(r).await;
        assert_eq!(b["error"]["code"], 368);
        let details = b["error"]["error_data"]["details"].as_str().unwrap();
        assert!(
            details.contains("answered locally") && details.contains("since"),
            "{details}"
        );
        assert!(details.contains(WABA_A));
    }
    assert_eq!(fake.count_for_phone(PHONE_A1), 1);
    assert_eq!(fake.count_for_phone(PHONE_A2), 0);

    // Reads pass while open; other WABAs are unaffected.
    let r = gw
        .get(&format!("/v21.0/{PHONE_A1}/whatsapp_business_profile"))
        .await;
    assert_eq!(r.status(), 200);
    let r = gw.send_str(PHONE_B, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 200);

    // The evidence of the trip is on the circuit.
    let (_, c) = gw.circuit(ADMIN, WABA_A).await;
    assert_eq!(c["state"], "open");
    assert_eq!(c["source"], "send");
    assert_eq!(c["code"], 368);
    let ev = &c["history"][0]["evidence"];
    assert_eq!(ev["fbtrace_id"], FBTRACE_ID);
    assert_eq!(ev["phone_number_id"], PHONE_A1);

    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "wa_breaker_circuit_open", &[("waba_id", WABA_A)]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "wa_breaker_requests_total",
            &[("outcome", "answered_locally")]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(&m, "wa_breaker_upstream_errors_total", &[("code", "368")]),
        Some(1.0)
    );
    assert!(gw.logs().contains("circuit transition"));
    assert!(gw.logs().contains(FBTRACE_ID));
}

/// 150 senders race the trip. With `upstream_concurrency = 4`, at most 4 sends can be on
/// their way upstream when the first 368 comes back; the rest were queued and must be
/// answered locally, not forwarded.
async fn concurrent_senders_racing_the_trip_leak_nothing_queued(engine: Engine) {
    let fake = FakeCloud::start().await;
    fake.on_phone(
        PHONE_A1,
        Reply::blocked_368().with_delay(Duration::from_millis(150)),
    );
    fake.on_phone(
        PHONE_A2,
        Reply::blocked_368().with_delay(Duration::from_millis(150)),
    );
    let gw = start(engine, &fake, "upstream_concurrency = 4").await;

    let mut tasks = Vec::new();
    for i in 0..150 {
        let client = gw.client();
        let url = format!(
            "{}/v21.0/{}/messages",
            gw.url(),
            if i % 2 == 0 { PHONE_A1 } else { PHONE_A2 }
        );
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .header("authorization", format!("Bearer {TEST_TOKEN}"))
                .body(TEMPLATE_BODY)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.headers().get("x-wa-breaker").is_some(),
            )
        }));
    }
    let mut local = 0;
    for t in tasks {
        let (status, is_local) = t.await.unwrap();
        assert_eq!(status, 403);
        local += is_local as usize;
    }
    let upstream = fake.count_for_phone(PHONE_A1) + fake.count_for_phone(PHONE_A2);
    assert!(upstream <= 4, "{upstream} sends reached the upstream");
    assert_eq!(local + upstream, 150);

    // After the trip: zero.
    for _ in 0..20 {
        assert_eq!(gw.send_str(PHONE_A2, TEMPLATE_BODY).await.status(), 403);
    }
    assert_eq!(
        fake.count_for_phone(PHONE_A1) + fake.count_for_phone(PHONE_A2),
        upstream
    );
}

/// Without a limit, 120 concurrent senders: those already on the wire get Meta's 368;
/// once the trip is recorded, not one more send leaves.
async fn concurrent_senders_then_zero_after_trip(engine: Engine) {
    let fake = FakeCloud::start().await;
    fake.on_phone(PHONE_A1, Reply::blocked_368());
    let gw = start(engine, &fake, "").await;
    let mut tasks = Vec::new();
    for _ in 0..120 {
        let client = gw.client();
        let url = format!("{}/v21.0/{PHONE_A1}/messages", gw.url());
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .body(TEMPLATE_BODY)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 403);
    }
    let before = fake.count_for_phone(PHONE_A1);
    assert!(before >= 1);
    for _ in 0..50 {
        gw.send_str(PHONE_A1, TEXT_BODY).await;
    }
    assert_eq!(fake.count_for_phone(PHONE_A1), before);
    let (_, c) = gw.circuit(ADMIN, WABA_A).await;
    let transitions = c["history"].as_array().unwrap().len();
    assert_eq!(
        transitions, 1,
        "concurrent trips collapse into one transition"
    );
}

async fn errors_that_are_not_enforcement_blocks_never_trip(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake, "classify_body_limit = 1024").await;
    let mut huge = graph_error_body(
        368,
        "(#368) Temporarily blocked for policies violations",
        None,
        None,
    );
    huge["error"]["padding"] = Value::String("x".repeat(4000));
    let cases: Vec<(u16, Vec<u8>)> = vec![
        (
            403,
            serde_json::to_vec(&graph_error_body(10, "Permission denied", None, None)).unwrap(),
        ),
        (403, b"<html><body>Forbidden</body></html>".to_vec()),
        (403, b"".to_vec()),
        (403, serde_json::to_vec(&huge).unwrap()),
        (
            400,
            serde_json::to_vec(&graph_error_body(131047, "Re-engagement", None, None)).unwrap(),
        ),
        (
            429,
            serde_json::to_vec(&graph_error_body(130429, "Rate limit hit", None, None)).unwrap(),
        ),
        (
            401,
            serde_json::to_vec(&graph_error_body(190, "Access token expired", None, None)).unwrap(),
        ),
        (
            500,
            serde_json::to_vec(&graph_error_body(
                131000,
                "Something went wrong",
                None,
                None,
            ))
            .unwrap(),
        ),
    ];
    for (status, body) in cases {
        fake.on_phone(PHONE_A1, Reply::raw(status, body.clone()));
        let r = gw.send_str(PHONE_A1, TEMPLATE_BODY).await;
        assert_eq!(r.status().as_u16(), status);
        assert!(r.headers().get("x-wa-breaker").is_none());
        assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());
    }
    let r = gw.admin_get("/admin/circuits", Some(ADMIN)).await;
    assert_eq!(body_json(r).await, json!([]));
    let m = gw.metrics().await;
    assert!(!m.contains("wa_breaker_circuit_open{"));

    // 368 from a phone number of unknown WABA: no WABA is guessed, but that one phone
    // number's circuit opens, so the app's retries stop.
    fake.on_phone(UNMAPPED, Reply::blocked_368());
    let r = gw.send_str(UNMAPPED, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("x-wa-breaker").is_none());
    let r = gw.send_str(UNMAPPED, TEMPLATE_BODY).await;
    assert_eq!(r.headers()["x-wa-breaker"], "open");
    assert_eq!(fake.count_for_phone(UNMAPPED), 1);
    let list = body_json(gw.admin_get("/admin/circuits", Some(ADMIN)).await).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["phone_number_id"], UNMAPPED);
    // Not known yet: null, not an empty string (issue 23).
    assert!(list[0]["waba_id"].is_null(), "{}", list[0]);
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "wa_breaker_requests_total", &[("outcome", "unmapped")]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "wa_breaker_phone_circuit_open",
            &[("phone_number_id", UNMAPPED)]
        ),
        Some(1.0)
    );
    assert!(!m.contains("wa_breaker_circuit_open{"), "no WABA circuit");
}

async fn upstream_down_or_slow_is_502_or_504_and_trips_nothing(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(
        engine,
        &fake,
        "request_timeout = \"300ms\"\nconnect_timeout = \"300ms\"",
    )
    .await;

    fake.on_phone(
        PHONE_A1,
        Reply::ok_send().with_delay(Duration::from_secs(3)),
    );
    let r = gw.send_str(PHONE_A1, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 504);
    assert_eq!(r.headers()["x-wa-breaker"], "upstream-error");
    let b = body_json(r).await;
    assert_eq!(b["error"]["code"], 2);
    assert_eq!(b["error"]["error_subcode"], 504);
    assert_eq!(b["error"]["type"], "WaBreakerException");

    fake.stop();
    let r = gw.send_str(PHONE_A1, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 502);
    let b = body_json(r).await;
    assert_eq!(b["error"]["code"], 2);
    assert_eq!(b["error"]["error_subcode"], 502);

    let (_, c) = gw.circuit(ADMIN, WABA_A).await;
    assert_eq!(c["state"], "closed");
    assert_eq!(c["history"], json!([]));

    // The gateway keeps serving when the upstream comes back.
    fake.resume().await;
    fake.reset_phone(PHONE_A1);
    assert_eq!(gw.send_str(PHONE_A1, TEMPLATE_BODY).await.status(), 200);
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "wa_breaker_requests_total",
            &[("outcome", "upstream_error")]
        ),
        Some(2.0)
    );
}

async fn upstream_dropping_the_connection_is_502(engine: Engine) {
    let fake = FakeCloud::start().await;
    fake.on_phone(PHONE_A1, Reply::drop_connection());
    let gw = start(engine, &fake, "").await;
    let r = gw.send_str(PHONE_A1, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 502);
    let (_, c) = gw.circuit(ADMIN, WABA_A).await;
    assert_eq!(c["state"], "closed");
}

async fn admin_auth_and_manual_open_close(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake, "").await;

    assert_eq!(gw.admin_get("/healthz", None).await.status(), 200);
    assert_eq!(gw.admin_get("/readyz", None).await.status(), 200);
    assert_eq!(gw.admin_get("/admin/circuits", None).await.status(), 401);
    assert_eq!(
        gw.admin_get("/admin/circuits", Some("wrong-token-0123456789"))
            .await
            .status(),
        401
    );
    assert_eq!(
        gw.admin_get("/admin/circuits", Some(&ADMIN[..10]))
            .await
            .status(),
        401
    );
    assert_eq!(
        gw.admin_get("/admin/circuits", Some(ADMIN)).await.status(),
        200
    );
    let open = format!("/admin/circuits/{WABA_A}/open");
    assert_eq!(gw.admin_post(&open, None, None).await.status(), 401);
    assert_eq!(
        gw.admin_post(&open, Some("nope-nope-nope-nope"), None)
            .await
            .status(),
        401
    );

    // Bad input changes nothing.
    let r = gw
        .admin_post(&open, Some(ADMIN), Some(&json!({"until": "yesterday"})))
        .await;
    assert_eq!(r.status(), 400);
    let r = gw
        .admin_post(
            &open,
            Some(ADMIN),
            Some(&json!({"until": "2001-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(r.status(), 400);
    let r = gw
        .admin_post("/admin/circuits/abc/open", Some(ADMIN), None)
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(gw.circuit(ADMIN, WABA_A).await.1["state"], "closed");
    assert_eq!(gw.circuit(ADMIN, "123").await.0, 404);

    // Open by hand, no body.
    let r = gw.admin_post(&open, Some(ADMIN), None).await;
    assert_eq!(r.status(), 200);
    let c = body_json(r).await;
    assert_eq!(c["state"], "open");
    assert_eq!(c["source"], "admin");
    assert_eq!(gw.send_str(PHONE_A1, TEMPLATE_BODY).await.status(), 403);
    assert_eq!(fake.count_for_phone(PHONE_A1), 0);

    // Re-open with a reason and an end: retry-after counts down to it.
    let until = chrono::Utc::now() + chrono::Duration::seconds(3600);
    let r = gw
        .admin_post(
            &open,
            Some(ADMIN),
            Some(&json!({"reason": "appeal pending", "until": until.to_rfc3339()})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let c = body_json(r).await;
    assert_eq!(c["reason"], "appeal pending");
    assert!(c["until"].is_string());
    let r = gw.send_str(PHONE_A2, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 403);
    let ra: i64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3500..=3600).contains(&ra), "retry-after {ra}");

    // Close by hand: sends flow again.
    let r = gw
        .admin_post(
            &format!("/admin/circuits/{WABA_A}/close"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(body_json(r).await["state"], "closed");
    assert_eq!(gw.send_str(PHONE_A1, TEMPLATE_BODY).await.status(), 200);
    assert_eq!(fake.count_for_phone(PHONE_A1), 1);

    let list = body_json(gw.admin_get("/admin/circuits", Some(ADMIN)).await).await;
    let hist = list[0]["history"].as_array().unwrap();
    assert_eq!(hist.len(), 3);
    assert_eq!(hist[1]["evidence"]["reason"], "appeal pending");
}

#[tokio::test]
async fn admin_api_is_disabled_without_a_token() {
    let fake = FakeCloud::start().await;
    let cfg = config(Engine::Relay, "").replace(&format!("admin_token = \"{ADMIN}\""), "");
    let gw = Gateway::builder(&cfg)
        .var("upstream", &fake.url())
        .start()
        .await;
    let r = gw.admin_get("/admin/circuits", Some(ADMIN)).await;
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("disabled"));
    assert_eq!(gw.admin_get("/metrics", None).await.status(), 200);
}

async fn observe_mode_forwards_but_records(engine: Engine) {
    let fake = FakeCloud::start().await;
    fake.on_phone(PHONE_A1, Reply::blocked_368());
    let gw = start(engine, &fake, "mode = \"observe\"").await;
    for _ in 0..3 {
        let r = gw.send_str(PHONE_A1, TEMPLATE_BODY).await;
        assert_eq!(r.status(), 403);
        assert!(r.headers().get("x-wa-breaker").is_none());
    }
    assert_eq!(fake.count_for_phone(PHONE_A1), 3);
    let (_, c) = gw.circuit(ADMIN, WABA_A).await;
    assert_eq!(c["state"], "open");
}

async fn unversioned_paths_trip_and_block(engine: Engine) {
    let fake = FakeCloud::start().await;
    fake.on_phone(PHONE_A1, Reply::blocked_368());
    let gw = start(engine, &fake, "").await;
    assert_eq!(
        gw.post(&format!("/{PHONE_A1}/messages"), TEXT_BODY)
            .await
            .status(),
        403
    );
    let r = gw.post(&format!("/{PHONE_A2}/messages"), TEXT_BODY).await;
    assert_eq!(r.headers()["x-wa-breaker"], "open");
    assert_eq!(
        fake.count_for_phone(PHONE_A1) + fake.count_for_phone(PHONE_A2),
        1
    );
    assert_eq!(
        fake.sends_for(PHONE_A1)[0].path,
        format!("/{PHONE_A1}/messages")
    );
}

async fn the_131031_lock_trips_too(engine: Engine) {
    let fake = FakeCloud::start().await;
    fake.on_phone(
        PHONE_B,
        Reply::graph_error(403, 131031, "Account has been locked"),
    );
    let gw = start(engine, &fake, "").await;
    assert_eq!(gw.send_str(PHONE_B, TEMPLATE_BODY).await.status(), 403);
    let r = gw.send_str(PHONE_B, TEMPLATE_BODY).await;
    assert_eq!(r.headers()["x-wa-breaker"], "open");
    assert_eq!(body_json(r).await["error"]["code"], 131031);
    assert_eq!(fake.count_for_phone(PHONE_B), 1);
}

async fn h2c_clients_are_served(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake, "").await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .post(format!("{}/v21.0/{PHONE_A1}/messages", gw.url()))
        .body(TEMPLATE_BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(fake.sends_for(PHONE_A1)[0].body, TEMPLATE_BODY.as_bytes());
}

async fn sigterm_drains_in_flight_requests(engine: Engine) {
    let fake = FakeCloud::start().await;
    fake.on_phone(
        PHONE_A1,
        Reply::ok_send().with_delay(Duration::from_millis(700)),
    );
    let gw = start(engine, &fake, "drain_timeout = \"5s\"").await;
    let client = gw.client();
    let url = format!("{}/v21.0/{PHONE_A1}/messages", gw.url());
    let inflight = tokio::spawn(async move { client.post(url).body(TEMPLATE_BODY).send().await });
    assert!(fake.wait_count(1, Duration::from_secs(5)).await);
    let status = gw.stop().await;
    assert!(status.success(), "exit status {status:?}");
    let r = inflight
        .await
        .unwrap()
        .expect("in-flight request completed");
    assert_eq!(r.status(), 200);
    assert!(gw.logs().contains("shutting down"));
}

#[test]
fn config_errors_are_clear_and_exit_non_zero() {
    let cases: &[(&str, &[&str])] = &[
        ("listen = \"127.0.0.1:0\"\nbogus_key = 1\n", &["bogus_key"]),
        ("upstream = \"ftp://x\"\n", &["upstream"]),
        ("trip_codes = \"368\"\n", &["trip_codes"]),
        ("mode = \"shadow\"\n", &["mode"]),
        ("admin_token = \"short\"\n", &["admin_token"]),
        ("[health]\ninterval = \"soon\"\n", &["interval"]),
        ("[[accounts]]\nwaba_id = \"1\"\nphone_number_ids = [\"2\"]\n[[accounts]]\nwaba_id = \"3\"\nphone_number_ids = [\"2\"]\n", &["accounts[1].phone_number_ids", "already mapped"]),
        ("listen = ", &["listen"]),
        ("upstream_ca_file = \"/nonexistent/ca.pem\"\n", &["upstream_ca_file", "/nonexistent/ca.pem"]),
        (concat!("upstream_ca_file = \"", env!("CARGO_MANIFEST_DIR"), "/Cargo.toml\"\n"), &["upstream_ca_file", "no certificate"]),
        ("fast_path = \"yes\"\n", &["fast_path"]),
    ];
    for (cfg, needles) in cases {
        let tc = write_config(cfg);
        let out = Gateway::run_cli(&["--config", &tc.path_str()], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "config {cfg:?}: {err}");
        for n in *needles {
            assert!(err.contains(n), "config {cfg:?}: stderr lacks {n:?}: {err}");
        }
    }
    let out = Gateway::run_cli(&["--config", "/nonexistent/wa.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/wa.toml"));

    // Environment overrides are validated and named too.
    let out = Gateway::run_cli(&["check-config"], &[("WA_BREAKER_MODE", "loud")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WA_BREAKER_MODE"));

    let out = Gateway::run_cli(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--config") && help.contains("check-config") && help.contains("WA_BREAKER_")
    );
}

/// `[[accounts]]` is parsed apart from the rest of the file (issue 24: the start-up peak):
/// accounts on both sides of other tables, past one parse chunk (64), still load and layer
/// with the environment as before — another key from the environment keeps them,
/// `WA_BREAKER_ACCOUNTS` replaces them — and a bad account is named with its index and file.
#[test]
fn accounts_load_apart_from_the_rest_and_layer_with_the_environment() {
    let mut text = String::from("state_dir = \"{state_dir}\"\nlog_level = \"warn\"\n");
    let account = |i: u64| {
        format!(
            "[[accounts]]\nwaba_id = \"{}\"\nphone_number_ids = [\"{}\", \"{}\"]\n\n",
            100_000_000_000_000 + i,
            200_000_000_000_000 + 2 * i,
            200_000_000_000_000 + 2 * i + 1
        )
    };
    for i in 0..100 {
        text.push_str(&account(i));
    }
    // A string that looks like a header is not one.
    text.push_str("[webhook]\npath = \"/wh\"\nverify_token = \"\"\"\n[[accounts]]\n\"\"\"\n\n");
    for i in 100..150 {
        text.push_str(&account(i));
    }
    let tc = write_config(&text);
    let out = Gateway::run_cli(
        &["check-config", "--config", &tc.path_str()],
        &[("WA_BREAKER_LOG_LEVEL", "debug")],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("150 WABAs with 300 phone numbers"),
        "{stderr}"
    );
    assert!(stdout.contains("log_level = \"debug\""), "{stdout}");
    assert!(stdout.contains("path = \"/wh\""), "{stdout}");
    let first = stdout.find("\"100000000000000\"").expect("first account");
    let last = stdout.find("\"100000000000149\"").expect("last account");
    assert!(first < last, "accounts keep the file's order");
    assert!(stdout.contains("\"200000000000299\""), "{stdout}");

    // The environment's accounts replace the file's, as figment's layering always did.
    let out = Gateway::run_cli(
        &["check-config", "--config", &tc.path_str()],
        &[(
            "WA_BREAKER_ACCOUNTS",
            "[{waba_id=\"5\",phone_number_ids=[\"6\"]}]",
        )],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("1 WABAs with 1 phone numbers"), "{stderr}");

    // A bad account: the same message as ever, its index and the file named.
    let tc = write_config(&format!(
        "{text}[[accounts]]\nwaba_id = 7\nphone_number_ids = [\"8\"]\n"
    ));
    let out = Gateway::run_cli(&["check-config", "--config", &tc.path_str()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`accounts.150.waba_id` in ")
            && stderr
                .contains("config.toml: invalid type: found signed int `7`, expected a string"),
        "{stderr}"
    );
}

#[test]
fn check_config_prints_effective_settings_with_secrets_masked() {
    let tc = write_config(&format!(
        "admin_token = \"{ADMIN}\"\n[webhook]\napp_secret = [\"appsecret-one-XYZ\", \"appsecret-two-XYZ\"]\n"
    ));
    let out = Gateway::run_cli(
        &["check-config", "--config", &tc.path_str()],
        &[
            ("WA_BREAKER_HEALTH__ACCESS_TOKEN", "EAAhealthTOKENxyz"),
            ("WA_BREAKER_LOG_LEVEL", "debug"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("log_level = \"debug\""), "{stdout}");
    assert!(stdout.contains("upstream = \"https://graph.facebook.com\""));
    for secret in [
        ADMIN,
        "appsecret-one-XYZ",
        "appsecret-two-XYZ",
        "EAAhealthTOKENxyz",
    ] {
        assert!(!stdout.contains(secret), "{secret} leaked: {stdout}");
    }
    assert!(stdout.contains("***"));
}

both_engines!(
    pass_through_is_byte_identical,
    first_368_trips_and_later_sends_never_reach_upstream,
    concurrent_senders_racing_the_trip_leak_nothing_queued,
    concurrent_senders_then_zero_after_trip,
    errors_that_are_not_enforcement_blocks_never_trip,
    upstream_down_or_slow_is_502_or_504_and_trips_nothing,
    upstream_dropping_the_connection_is_502,
    admin_auth_and_manual_open_close,
    observe_mode_forwards_but_records,
    unversioned_paths_trip_and_block,
    the_131031_lock_trips_too,
    h2c_clients_are_served,
    sigterm_drains_in_flight_requests,
);
