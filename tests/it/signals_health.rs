//! Health Status polling, over real sockets against the built binary: polls only while a
//! circuit is open, with the configured token; AVAILABLE closes, BLOCKED and LIMITED hold;
//! polling stops when the circuit closes; 401 backs off; the global concurrency limit; the
//! health check after an `ACCOUNT_VIOLATION`.

use std::time::{Duration, Instant};

use crate::signals_util::*;
use crate::support::fake_cloud::{FAKE_APP_ID, FAKE_BUSINESS_ID};
use crate::support::*;
use serde_json::{json, Value};

const SEC: Duration = Duration::from_secs(3);

async fn open_by_webhook(gw: &Gateway, waba: &str) {
    let r = deliver(gw, &account_update(waba, now_unix(), disabled("DISABLE"))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(circuit(gw, waba).await["state"], "open");
}

#[tokio::test]
async fn polls_with_the_token_holds_on_blocked_and_closes_on_available() {
    let fake = FakeCloud::start().await;
    fake.set_health(WABA, health_json(WABA, "BLOCKED"));
    let gw = Gateway::start(&config(&fake.url(), "", &health("150ms", "2s"))).await;

    // Nothing is polled while closed.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(fake.count_health(WABA), 0);

    open_by_webhook(&gw, WABA).await;
    assert!(fake.wait_health(WABA, 3, SEC).await);
    let c = circuit(&gw, WABA).await;
    assert_eq!(c["state"], "open");
    // A steady BLOCKED is recorded once, with its error code and description.
    let n = notes(&c);
    assert_eq!(n.len(), 1, "{c:#}");
    assert_eq!(n[0]["source"], "health");
    assert!(n[0]["reason"].as_str().unwrap().contains("141006"));
    assert_eq!(
        n[0]["evidence"]["health_status"]["can_send_message"],
        "BLOCKED"
    );

    let polls = fake.health_requests(WABA);
    for p in &polls {
        assert_eq!(p.path, format!("/v21.0/{WABA}"));
        assert_eq!(p.query.as_deref(), Some("fields=health_status"));
        assert_eq!(
            p.header("authorization"),
            Some(format!("Bearer {HEALTH_TOKEN}").as_str())
        );
    }
    // Roughly one poll per interval (no burst).
    let gaps: Vec<Duration> = polls.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(120)),
        "{gaps:?}"
    );

    fake.set_health(WABA, health_json(WABA, "AVAILABLE"));
    let c = wait_state(&gw, WABA, "closed", SEC).await;
    assert_eq!(c["source"], "health");
    let last = c["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["evidence"]["kind"], "health");
    assert_eq!(
        last["evidence"]["health_status"]["can_send_message"],
        "AVAILABLE"
    );

    // Closed: polling stops.
    let after = fake.count_health(WABA);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(fake.count_health(WABA), after);
    let m = gw.metrics().await;
    assert!(
        metric(
            &m,
            "wa_breaker_health_polls_total",
            &[("result", "blocked")]
        )
        .unwrap()
            >= 3.0
    );
    assert_eq!(
        metric(
            &m,
            "wa_breaker_health_polls_total",
            &[("result", "available")]
        ),
        Some(1.0)
    );
    // The token never reaches the logs.
    assert!(!gw.logs().contains(HEALTH_TOKEN));
}

#[tokio::test]
async fn limited_keeps_the_circuit_open() {
    let fake = FakeCloud::start().await;
    fake.set_health(WABA, health_json(WABA, "LIMITED"));
    let gw = Gateway::start(&config(&fake.url(), "", &health("100ms", "1s"))).await;
    open_by_webhook(&gw, WABA).await;
    assert!(fake.wait_health(WABA, 4, SEC).await);
    let c = circuit(&gw, WABA).await;
    assert_eq!(c["state"], "open");
    assert_eq!(c["scope"], "all_sends");
    let n = notes(&c);
    assert_eq!(n.len(), 1);
    assert!(n[0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("health_status: LIMITED"));
}

#[tokio::test]
async fn polling_stops_when_an_operator_closes_and_resumes_on_a_send_trip() {
    let fake = FakeCloud::start().await;
    fake.set_health(WABA, health_json(WABA, "BLOCKED"));
    let gw = Gateway::start(&config(&fake.url(), "", &health("100ms", "1s"))).await;
    open_by_webhook(&gw, WABA).await;
    assert!(fake.wait_health(WABA, 2, SEC).await);
    let r = gw
        .admin_post(&format!("/admin/circuits/{WABA}/close"), Some(ADMIN), None)
        .await;
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let n = fake.count_health(WABA);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(fake.count_health(WABA), n);
    // A send answered with 368 trips it again: polling resumes.
    fake.on_phone(PHONE, Reply::blocked_368());
    assert_eq!(gw.send_str(PHONE, TEXT_BODY).await.status(), 403);
    let c = circuit(&gw, WABA).await;
    assert_eq!(
        (c["state"].as_str(), c["source"].as_str()),
        (Some("open"), Some("send"))
    );
    assert!(fake.wait_health(WABA, n + 1, SEC).await);
}

#[tokio::test]
async fn an_operators_open_is_not_polled() {
    let fake = FakeCloud::start().await;
    fake.set_health(WABA, health_json(WABA, "AVAILABLE"));
    let gw = Gateway::start(&config(&fake.url(), "", &health("100ms", "1s"))).await;
    let r = gw
        .admin_post(&format!("/admin/circuits/{WABA}/open"), Some(ADMIN), None)
        .await;
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.count_health(WABA), 0);
    assert_eq!(circuit(&gw, WABA).await["state"], "open");
}

#[tokio::test]
async fn no_token_no_polls() {
    let fake = FakeCloud::start().await;
    fake.set_health(WABA, health_json(WABA, "AVAILABLE"));
    let gw = Gateway::start(&config(&fake.url(), "", "interval = \"100ms\"")).await;
    open_by_webhook(&gw, WABA).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(fake.count_health(WABA), 0);
    assert_eq!(circuit(&gw, WABA).await["state"], "open");
}

#[tokio::test]
async fn expired_token_backs_off_and_never_closes() {
    let fake = FakeCloud::start().await;
    fake.set_health_reply(
        WABA,
        Reply::graph_error(
            401,
            190,
            "Error validating access token: Session has expired",
        ),
    );
    let gw = Gateway::start(&config(&fake.url(), "", &health("100ms", "10s"))).await;
    open_by_webhook(&gw, WABA).await;
    let start = Instant::now();
    assert!(fake.wait_health(WABA, 1, SEC).await);
    tokio::time::sleep(Duration::from_millis(1600).saturating_sub(start.elapsed())).await;
    // Without backoff: ~16 polls in 1.6 s. With it: 100 ms, then 200, 400, 800 → 4.
    let n = fake.count_health(WABA);
    assert!((2..=5).contains(&n), "{n} polls in 1.6 s");
    let polls = fake.health_requests(WABA);
    let gaps: Vec<u128> = polls
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_millis())
        .collect();
    assert!(gaps.windows(2).all(|g| g[1] > g[0]), "gaps grow: {gaps:?}");
    assert_eq!(circuit(&gw, WABA).await["state"], "open");
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "wa_breaker_health_polls_total",
            &[("result", "auth_error")]
        ),
        Some(n as f64)
    );
    assert_eq!(gw.logs().matches("refused the access token").count(), 1);
    assert!(!gw.logs().contains(HEALTH_TOKEN));
}

#[tokio::test]
async fn server_errors_back_off_then_recover() {
    let fake = FakeCloud::start().await;
    fake.set_health_reply(WABA, Reply::raw(503, "busy"));
    let gw = Gateway::start(&config(&fake.url(), "", &health("100ms", "400ms"))).await;
    open_by_webhook(&gw, WABA).await;
    assert!(fake.wait_health(WABA, 2, SEC).await);
    fake.set_health(WABA, health_json(WABA, "AVAILABLE"));
    // The backoff is capped at 400 ms: recovery is quick.
    let c = wait_state(&gw, WABA, "closed", SEC).await;
    assert_eq!(c["source"], "health");
}

#[tokio::test]
async fn concurrent_polls_are_bounded() {
    let fake = FakeCloud::start().await;
    let wabas: Vec<String> = (0..6).map(|i| format!("5000000000000{i}")).collect();
    for w in &wabas {
        fake.set_health(w, health_json(w, "BLOCKED"));
    }
    let cfg = format!("{}\nmax_concurrent = 2", health("100ms", "1s"));
    let gw = Gateway::start(&config(&fake.url(), "", &cfg)).await;
    fake.hold();
    let t = now_unix();
    let entries: Vec<Value> = wabas
        .iter()
        .map(|w| entry(w, t, vec![change("account_update", disabled("DISABLE"))]))
        .collect();
    assert_eq!(deliver(&gw, &envelope(entries)).await.status(), 200);
    // All six are due after 100 ms; only two are asked at once.
    assert!(fake.wait_in_flight(2, SEC).await);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(fake.max_in_flight(), 2);
    fake.release();
    assert!(
        fake.wait_for(SEC, |r| wabas
            .iter()
            .all(|w| r.iter().any(|x| x.is_health_for(w))))
            .await,
        "every open circuit gets polled"
    );
    assert!(fake.max_in_flight() <= 2);
}

#[tokio::test]
async fn violation_checks_health_at_once() {
    let fake = FakeCloud::start().await;
    fake.set_health(WABA, health_json(WABA, "BLOCKED"));
    fake.set_health(WABA2, health_json(WABA2, "AVAILABLE"));
    // A long interval: only the violation's own check can poll.
    let gw = Gateway::start(&config(&fake.url(), "", &health("1h", "1h"))).await;
    let t = now_unix();
    let body = envelope(vec![
        entry(WABA, t, vec![change("account_update", violation("ADULT"))]),
        entry(WABA2, t, vec![change("account_update", violation("SCAM"))]),
    ]);
    assert_eq!(deliver(&gw, &body).await.status(), 200);
    // BLOCKED: opens, the violation as evidence.
    let c = wait_state(&gw, WABA, "open", SEC).await;
    assert_eq!(c["scope"], "all_sends");
    assert_eq!(c["source"], "webhook");
    let opened = c["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(opened["evidence"]["event"], "ACCOUNT_VIOLATION");
    assert!(opened["reason"].as_str().unwrap().contains("BLOCKED"));
    assert_eq!(gw.send_str(PHONE, TEXT_BODY).await.status(), 403);
    // AVAILABLE: a violation only.
    assert!(fake.wait_health(WABA2, 1, SEC).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = circuit(&gw, WABA2).await;
    assert_eq!(c["state"], "closed");
    assert_eq!(notes(&c).len(), 1);
    assert_eq!(fake.count_health(WABA), 1);
    assert_eq!(json!(fake.count_health(WABA2)), json!(1));
}

/// Meta's own Health Status example: every entity's `can_send_message` is AVAILABLE, the
/// top level is BLOCKED only because SIP calling is not set up (`can_receive_call_sip`,
/// errors 138024 / 138025). Messaging is what the gateway guards: the open circuit closes.
#[tokio::test]
async fn a_top_level_block_for_sip_calling_closes_an_open_circuit() {
    let fake = FakeCloud::start().await;
    let sip = json!({"can_receive_call_sip": "BLOCKED", "errors": [
        {"error_code": 138024, "error_description": "SIP calling is not enabled", "possible_solution": "Enable SIP"},
        {"error_code": 138025, "error_description": "No SIP server configured", "possible_solution": "Configure one"}]});
    let entity = |kind: &str, id: &str| {
        let mut e = json!({"entity_type": kind, "id": id, "can_send_message": "AVAILABLE"});
        e["can_receive_call_sip"] = sip["can_receive_call_sip"].clone();
        e["errors"] = sip["errors"].clone();
        e
    };
    let body = json!({"health_status": {"can_send_message": "BLOCKED", "entities": [
        entity("WABA", WABA), entity("BUSINESS", FAKE_BUSINESS_ID), entity("APP", FAKE_APP_ID)]},
        "id": WABA});
    fake.set_health(WABA, body);
    let gw = Gateway::start(&config(&fake.url(), "", &health("150ms", "2s"))).await;
    open_by_webhook(&gw, WABA).await;
    let c = wait_state(&gw, WABA, "closed", SEC).await;
    assert_eq!(c["source"], "health");
    let last = c["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        last["evidence"]["health_status"]["can_send_message"],
        "BLOCKED"
    );
    assert_eq!(gw.send_str(PHONE, TEXT_BODY).await.status(), 200);
}
