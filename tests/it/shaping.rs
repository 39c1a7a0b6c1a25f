//! Issue 21, shaping: the pace per phone number, over real sockets on both engines.
//!
//! Tests listed in `both_engines!` (at the end) run as `relay::…` (`fast_path = true`) and
//! `hyper::…` (`fast_path = false`).

use std::time::{Duration, Instant};

use crate::support::*;

const WABA_A: &str = "102290129340398";
const PHONE_A1: &str = "106540352242922";
const PHONE_A2: &str = "106540352242923";

fn config(engine: Engine, mode: &str) -> String {
    let engine_line = engine.config_line();
    format!(
        r#"
{engine_line}
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
state_dir = "{{state_dir}}"
upstream = "{{upstream}}"
request_timeout = "5s"

[shaping]
mode = "{mode}"
max_delay = "1s"

[shaping.phone_throughput]
"{PHONE_A1}" = 5

[[accounts]]
waba_id = "{WABA_A}"
phone_number_ids = ["{PHONE_A1}", "{PHONE_A2}"]
"#
    )
}

async fn start(engine: Engine, upstream: &str, mode: &str) -> Gateway {
    Gateway::builder(&config(engine, mode))
        .var("upstream", upstream)
        .start()
        .await
}

/// One send's answer: status, `x-wa-breaker`, `retry-after`, the Graph code, how long it
/// took.
struct Sent {
    status: u16,
    marker: Option<String>,
    retry_after: Option<u64>,
    code: Option<i64>,
    details: String,
    took: Duration,
}

async fn send_timed(gw: &Gateway, phone: &str) -> Sent {
    let t0 = Instant::now();
    let r = gw.send_str(phone, TEXT_BODY).await;
    let took = t0.elapsed();
    let header = |k: &str| {
        r.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (status, marker, retry_after) = (
        r.status().as_u16(),
        header("x-wa-breaker"),
        header("retry-after").and_then(|v| v.parse().ok()),
    );
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    Sent {
        status,
        marker,
        retry_after,
        code: body["error"]["code"].as_i64(),
        details: body["error"]["error_data"]["details"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        took,
    }
}

/// 30 sends at once from a number paced at 5/s with `max_delay = "1s"`: the upstream never
/// sees more than 10 of them in any one second (a second's burst, then the pace); the
/// forwarded ones waited at most about `max_delay`; the rest are answered locally with
/// Meta's 130429, `x-wa-breaker: shaped` and `retry-after`. A send of another number made
/// meanwhile is not held up: it reaches the upstream before the paced number's last send.
async fn a_number_over_its_pace_waits_then_is_answered_130429_locally(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake.url(), "enforce").await;
    let name = engine.name();

    let burst: Vec<_> = (0..30)
        .map(|_| {
            let gw = &gw;
            async move { send_timed(gw, PHONE_A1).await }
        })
        .collect();
    let other = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send_timed(&gw, PHONE_A2).await
    };
    let (sent, other) = tokio::join!(futures_util::future::join_all(burst), other);

    assert_eq!(other.status, 200, "{name}: the other number's send");
    let forwarded: Vec<&Sent> = sent.iter().filter(|s| s.status == 200).collect();
    let local: Vec<&Sent> = sent.iter().filter(|s| s.status != 200).collect();
    assert!(
        forwarded.len() >= 10 && forwarded.len() <= 13,
        "{name}: {} forwarded",
        forwarded.len()
    );
    for s in &forwarded {
        assert!(
            s.took < Duration::from_millis(2500),
            "{name}: a forwarded send waited {:?}",
            s.took
        );
    }
    for s in &local {
        assert_eq!(s.status, 400, "{name}");
        assert_eq!(s.marker.as_deref(), Some("shaped"), "{name}");
        assert_eq!(s.code, Some(130429), "{name}");
        assert!(s.retry_after.is_some_and(|n| n >= 1), "{name}");
        assert!(
            s.details.contains("wa-breaker") && s.details.contains(PHONE_A1),
            "{name}: {}",
            s.details
        );
    }

    let mut at: Vec<Instant> = fake.sends_for(PHONE_A1).iter().map(|r| r.at).collect();
    assert_eq!(at.len(), forwarded.len(), "{name}: what the upstream saw");
    at.sort();
    for (i, t) in at.iter().enumerate() {
        let within = at[i..]
            .iter()
            .take_while(|u| **u < *t + Duration::from_secs(1))
            .count();
        assert!(within <= 10, "{name}: {within} sends within a second");
    }
    // The other number's send was not queued behind the paced ones.
    let other_at = fake.sends_for(PHONE_A2)[0].at;
    assert!(
        other_at < *at.last().unwrap(),
        "{name}: the other number waited"
    );

    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "wa_breaker_shaped_total", &[("reason", "pace")]),
        Some(local.len() as f64),
        "{name}"
    );
    assert!(
        metric(&m, "wa_breaker_shaping_wait_seconds_count", &[]).is_some_and(|n| n >= 5.0),
        "{name}"
    );
}

/// `mode = "observe"`: the same burst is forwarded whole, and what enforce would have held
/// is counted (and logged once).
async fn observe_mode_forwards_everything_and_counts_what_it_would_hold(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake.url(), "observe").await;
    let name = engine.name();
    let burst: Vec<_> = (0..30)
        .map(|_| {
            let gw = &gw;
            async move { send_timed(gw, PHONE_A1).await }
        })
        .collect();
    let sent = futures_util::future::join_all(burst).await;
    assert!(sent.iter().all(|s| s.status == 200), "{name}");
    assert_eq!(fake.count_for_phone(PHONE_A1), 30, "{name}");
    let m = gw.metrics().await;
    let observed = metric_sum(
        &m,
        "wa_breaker_shaping_observed_total",
        &[("reason", "pace")],
    );
    assert!(observed >= 17.0, "{name}: {observed} observed");
    assert_eq!(
        metric(&m, "wa_breaker_shaped_total", &[("reason", "pace")]),
        Some(0.0),
        "{name}"
    );
    assert!(
        gw.wait_for_log("over its pace", Duration::from_secs(5))
            .await,
        "{name}"
    );
}

both_engines!(
    a_number_over_its_pace_waits_then_is_answered_130429_locally,
    observe_mode_forwards_everything_and_counts_what_it_would_hold,
);
