//! Restriction expiry, over real sockets against the built binary: a circuit with `until`
//! closes when it passes — confirmed by one health poll when a token is configured (BLOCKED
//! holds it open, and polling closes it later) — timers re-arm when `until` changes, and a
//! restriction that ended while the gateway was down expires at start.

use std::time::Duration;

use crate::signals_util::*;
use crate::support::*;
use serde_json::json;

const SEC: Duration = Duration::from_secs(4);

async fn restrict(gw: &Gateway, waba: &str, at: i64, expiration: i64) {
    let body = account_update(
        waba,
        at,
        restriction(&["RESTRICTED_BIZ_INITIATED_MESSAGING"], json!(expiration)),
    );
    assert_eq!(deliver(gw, &body).await.status(), 200);
    let c = circuit(gw, waba).await;
    assert_eq!(c["state"], "open", "{c:#}");
    assert_eq!(until(&c).unwrap().timestamp(), expiration);
}

#[tokio::test]
async fn expires_without_a_token() {
    let fake = FakeCloud::start().await;
    let gw = Gateway::start(&config(&fake.url(), "", "")).await;
    let t = now_unix();
    restrict(&gw, WABA, t, t + 1).await;
    assert_eq!(gw.send_str(PHONE, TEMPLATE_BODY).await.status(), 403);
    let c = wait_state(&gw, WABA, "closed", SEC).await;
    assert_eq!(c["source"], "expiry");
    let last = c["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["evidence"]["kind"], "expiry");
    assert_eq!(gw.send_str(PHONE, TEMPLATE_BODY).await.status(), 200);
    assert_eq!(fake.count_health(WABA), 0);
}

#[tokio::test]
async fn expiry_is_confirmed_by_one_health_poll() {
    let fake = FakeCloud::start().await;
    fake.set_health(WABA, health_json(WABA, "AVAILABLE"));
    // A long interval: only the expiry's confirmation polls.
    let gw = Gateway::start(&config(&fake.url(), "", &health("1h", "1h"))).await;
    let t = now_unix();
    restrict(&gw, WABA, t, t + 1).await;
    let c = wait_state(&gw, WABA, "closed", SEC).await;
    assert_eq!(c["source"], "expiry");
    assert!(c["reason"].as_str().unwrap().contains("AVAILABLE"), "{c:#}");
    assert_eq!(fake.count_health(WABA), 1);
}

#[tokio::test]
async fn blocked_poll_holds_an_expired_restriction_until_available() {
    let fake = FakeCloud::start().await;
    fake.set_health(WABA, health_json(WABA, "BLOCKED"));
    let gw = Gateway::start(&config(&fake.url(), "", &health("300ms", "1s"))).await;
    let t = now_unix();
    restrict(&gw, WABA, t, t + 1).await;
    assert!(gw.wait_for_log("Health Status says BLOCKED", SEC).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = circuit(&gw, WABA).await;
    assert_eq!(c["state"], "open");
    assert_eq!(gw.send_str(PHONE, TEMPLATE_BODY).await.status(), 403);
    // Polling continues and closes it when Meta says the WABA can send.
    fake.set_health(WABA, health_json(WABA, "AVAILABLE"));
    let c = wait_state(&gw, WABA, "closed", SEC).await;
    assert_eq!(c["source"], "health");
}

#[tokio::test]
async fn a_new_until_rearms_the_timer() {
    let fake = FakeCloud::start().await;
    let gw = Gateway::start(&config(&fake.url(), "", "")).await;
    let t = now_unix();
    restrict(&gw, WABA, t - 10, t + 1).await;
    // Meta extends the restriction before it ends.
    restrict(&gw, WABA, t - 5, t + 4).await;
    // Past the first end, before the new one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(circuit(&gw, WABA).await["state"], "open");
    let c = wait_state(&gw, WABA, "closed", SEC).await;
    assert_eq!(c["source"], "expiry");
}

#[tokio::test]
async fn past_due_at_start_expires_at_once() {
    let fake = FakeCloud::start().await;
    let gw = Gateway::start(&config(&fake.url(), "", "")).await;
    let t = now_unix();
    restrict(&gw, WABA, t, t + 2).await;
    gw.stop().await;
    // The restriction ends while the gateway is down.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    gw.restart().await;
    let c = wait_state(&gw, WABA, "closed", Duration::from_millis(1500)).await;
    assert_eq!(c["source"], "expiry");
}

#[tokio::test]
async fn an_operators_until_is_not_second_guessed() {
    let fake = FakeCloud::start().await;
    fake.set_health(WABA, health_json(WABA, "BLOCKED"));
    let gw = Gateway::start(&config(&fake.url(), "", &health("100ms", "1s"))).await;
    let until = chrono::Utc::now() + chrono::Duration::milliseconds(1200);
    let r = gw
        .admin_post(
            &format!("/admin/circuits/{WABA}/open"),
            Some(ADMIN),
            Some(&json!({"reason": "investigating", "until": until.to_rfc3339()})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let c = wait_state(&gw, WABA, "closed", SEC).await;
    assert_eq!(c["source"], "expiry");
    assert_eq!(fake.count_health(WABA), 0);
}
