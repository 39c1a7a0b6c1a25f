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
    config_with(engine, mode, "")
}

fn config_with(engine: Engine, mode: &str, shaping: &str) -> String {
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
{shaping}

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
    send_body(gw, phone, TEXT_BODY).await
}

async fn send_body(gw: &Gateway, phone: &str, body: &str) -> Sent {
    let t0 = Instant::now();
    let r = gw.send_str(phone, body).await;
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

/// `n` sends of `phone` at once, each on its own connection.
async fn burst(gw: &Gateway, phone: &str, n: usize) -> Vec<Sent> {
    futures_util::future::join_all((0..n).map(|_| send_timed(gw, phone))).await
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

    let other = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send_timed(&gw, PHONE_A2).await
    };
    let (sent, other) = tokio::join!(burst(&gw, PHONE_A1, 30), other);

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
    let sent = burst(&gw, PHONE_A1, 30).await;
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

/// A text send from a phone number to `to`.
async fn send_to(gw: &Gateway, phone: &str, to: &str) -> Sent {
    let body = serde_json::json!({
        "messaging_product": "whatsapp",
        "to": to,
        "type": "text",
        "text": {"body": "hello"},
    })
    .to_string();
    send_body(gw, phone, &body).await
}

fn pair_rate() -> Reply {
    Reply::graph_error(
        400,
        131056,
        "(#131056) (Business Account, Consumer Account) pair rate limit hit",
    )
}

/// Meta answers 131056 for one (phone number, recipient) pair: the retry, spelled
/// differently, is answered locally with Meta's 131056, `retry-after` and
/// `x-wa-breaker: shaped`; another recipient of the number and another number to that
/// recipient flow. After the hold (`pair_hold = "1s"`) the pair is forwarded again; a
/// second 131056 within the hold's reach holds it four times longer.
async fn a_pair_meta_answered_131056_is_held_and_a_repeat_quadruples_the_hold(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = Gateway::builder(&config_with(engine, "enforce", "pair_hold = \"1s\""))
        .var("upstream", &fake.url())
        .start()
        .await;
    let name = engine.name();

    fake.queue_phone(PHONE_A1, vec![pair_rate()]);
    let first = send_to(&gw, PHONE_A1, "15557654321").await;
    assert_eq!(first.code, Some(131056), "{name}: Meta's answer relayed");
    assert_eq!(fake.count_for_phone(PHONE_A1), 1, "{name}");

    let retry = send_to(&gw, PHONE_A1, "+1 555-765-4321").await;
    assert_eq!(retry.status, 400, "{name}");
    assert_eq!(retry.marker.as_deref(), Some("shaped"), "{name}");
    assert_eq!(retry.code, Some(131056), "{name}");
    assert_eq!(retry.retry_after, Some(1), "{name}");
    assert!(
        retry.details.contains("wa-breaker") && retry.details.contains(PHONE_A1),
        "{name}: {}",
        retry.details
    );
    assert_eq!(
        fake.count_for_phone(PHONE_A1),
        1,
        "{name}: the retry stayed here"
    );

    let other_recipient = send_to(&gw, PHONE_A1, "15550001111").await;
    assert_eq!(other_recipient.status, 200, "{name}: another recipient");
    let other_number = send_to(&gw, PHONE_A2, "15557654321").await;
    assert_eq!(other_number.status, 200, "{name}: another number");
    assert_eq!(fake.count_for_phone(PHONE_A1), 2, "{name}");
    assert_eq!(fake.count_for_phone(PHONE_A2), 1, "{name}");

    // The hold is over; Meta answers 131056 again, within the hold's reach: 4 s.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fake.queue_phone(PHONE_A1, vec![pair_rate()]);
    let again = send_to(&gw, PHONE_A1, "1 (555) 765 4321").await;
    assert_eq!(again.code, Some(131056), "{name}");
    assert_eq!(again.marker, None, "{name}: forwarded after the hold");
    assert_eq!(fake.count_for_phone(PHONE_A1), 3, "{name}");
    let held = send_to(&gw, PHONE_A1, "15557654321").await;
    assert_eq!(held.marker.as_deref(), Some("shaped"), "{name}");
    assert!(
        held.retry_after.is_some_and(|n| (3..=4).contains(&n)),
        "{name}: retry-after {:?}",
        held.retry_after
    );
    assert_eq!(fake.count_for_phone(PHONE_A1), 3, "{name}");

    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "wa_breaker_shaped_total", &[("reason", "pair")]),
        Some(2.0),
        "{name}"
    );
}

/// `mode = "observe"`: a pair Meta answered 131056 is forwarded, and counted.
async fn observe_mode_forwards_a_held_pair_and_counts_it(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake.url(), "observe").await;
    let name = engine.name();
    fake.queue_phone(PHONE_A1, vec![pair_rate()]);
    assert_eq!(
        send_to(&gw, PHONE_A1, "15557654321").await.code,
        Some(131056)
    );
    let retry = send_to(&gw, PHONE_A1, "+1 555 765 4321").await;
    assert_eq!(retry.status, 200, "{name}");
    assert_eq!(fake.count_for_phone(PHONE_A1), 2, "{name}");
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "wa_breaker_shaping_observed_total",
            &[("reason", "pair"), ("action", "answer")]
        ),
        Some(1.0),
        "{name}"
    );
    assert_eq!(
        metric(&m, "wa_breaker_shaped_total", &[("reason", "pair")]),
        Some(0.0),
        "{name}"
    );
}

/// Sends of `phone` from `workers` loops, one after another, until `until`.
async fn flat_out(gw: &Gateway, phone: &str, workers: usize, until: Instant) {
    futures_util::future::join_all((0..workers).map(|_| async {
        while Instant::now() < until {
            if send_timed(gw, phone).await.status != 200 {
                // Answered locally at once: try again shortly, as a busy app would.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }))
    .await;
}

async fn replicas(gw: &Gateway) -> Option<f64> {
    metric(&gw.metrics().await, "wa_breaker_fleet_replicas", &[])
}

async fn wait_replicas(gw: &Gateway, n: f64, within: Duration) {
    let t = Instant::now();
    while replicas(gw).await != Some(n) {
        assert!(
            t.elapsed() < within,
            "{n} replicas not seen: {:?}",
            replicas(gw).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Upstream sends of `phone` whose arrival is within `[from, to)`.
fn sends_between(fake: &FakeCloud, phone: &str, from: Instant, to: Instant) -> usize {
    fake.sends_for(phone)
        .iter()
        .filter(|r| r.at >= from && r.at < to)
        .count()
}

/// Two replicas on one Redis, a number at 10/s, both sending flat out: each paces at half,
/// so past the first second's burst the upstream sees about 10 a second in total; one
/// replica stops and the other takes the whole rate within seconds.
async fn two_replicas_share_a_numbers_pace_and_one_takes_it_all_when_the_other_stops(
    engine: Engine,
) {
    let redis = RedisServer::start();
    let fake = FakeCloud::start().await;
    let name = engine.name();
    let cfg = format!(
        r#"
{}
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
state_dir = "{{state_dir}}"
upstream = "{}"
request_timeout = "5s"
redis_url = "{}"
redis_prefix = "pace"

[shaping]
mode = "enforce"
max_delay = "1s"

[shaping.phone_throughput]
"{PHONE_A1}" = 10

[[accounts]]
waba_id = "{WABA_A}"
phone_number_ids = ["{PHONE_A1}", "{PHONE_A2}"]
"#,
        engine.config_line(),
        fake.url(),
        redis.url()
    );
    let a = Gateway::start(&cfg).await;
    let b = Gateway::start(&cfg).await;
    wait_replicas(&a, 2.0, Duration::from_secs(5)).await;
    wait_replicas(&b, 2.0, Duration::from_secs(5)).await;

    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(4);
    tokio::join!(
        flat_out(&a, PHONE_A1, 6, end),
        flat_out(&b, PHONE_A1, 6, end)
    );
    // Past the first second (each replica's burst of its share, 5), 10/s in total: in
    // the 3 s after it at most 30, plus a slot each replica may start at either edge.
    let steady = sends_between(&fake, PHONE_A1, t0 + Duration::from_secs(1), end);
    assert!(
        (20..=34).contains(&steady),
        "{name}: {steady} sends reached the upstream in 3 s at 10/s shared by two replicas"
    );
    let first = sends_between(&fake, PHONE_A1, t0, t0 + Duration::from_secs(1));
    assert!(first <= 22, "{name}: {first} in the first second");

    // B stops: within LIVE_FOR plus a beat A paces at the whole rate.
    b.stop().await;
    wait_replicas(&a, 1.0, Duration::from_secs(10)).await;
    let t1 = Instant::now();
    let end = t1 + Duration::from_secs(3);
    flat_out(&a, PHONE_A1, 6, end).await;
    let alone = sends_between(&fake, PHONE_A1, t1 + Duration::from_secs(1), end);
    assert!(
        (16..=23).contains(&alone),
        "{name}: {alone} sends in 2 s from the replica left (10/s expected, 5/s would be half)"
    );
}

/// Meta answers a send of a number 130429 anyway: the number's pace halves, and the
/// per-number gauge shows it (a series only for numbers paced below their throughput).
async fn a_number_meta_throttled_is_shown_at_its_lowered_pace(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake.url(), "enforce").await;
    let name = engine.name();
    fake.queue_phone(
        PHONE_A2,
        vec![Reply::graph_error(400, 130429, "(#130429) Rate limit hit")],
    );
    assert_eq!(send_timed(&gw, PHONE_A2).await.code, Some(130429), "{name}");
    assert_eq!(send_timed(&gw, PHONE_A1).await.status, 200, "{name}");
    let deadline = Instant::now() + Duration::from_secs(8);
    let text = loop {
        let text = gw.metrics().await;
        if metric(
            &text,
            "wa_breaker_shaping_pace",
            &[("phone_number_id", PHONE_A2)],
        )
        .is_some()
            || Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let pace = metric(
        &text,
        "wa_breaker_shaping_pace",
        &[("phone_number_id", PHONE_A2)],
    );
    // 80/s halved; a recovery step (10 s) cannot have passed yet.
    assert_eq!(pace, Some(40.0), "{name}: {text}");
    assert_eq!(
        metric(
            &text,
            "wa_breaker_shaping_pace",
            &[("phone_number_id", PHONE_A1)]
        ),
        None,
        "{name}: a number at its full pace has no series"
    );
}

both_engines!(
    two_replicas_share_a_numbers_pace_and_one_takes_it_all_when_the_other_stops,
    a_number_meta_throttled_is_shown_at_its_lowered_pace,
    a_number_over_its_pace_waits_then_is_answered_130429_locally,
    observe_mode_forwards_everything_and_counts_what_it_would_hold,
    a_pair_meta_answered_131056_is_held_and_a_repeat_quadruples_the_hold,
    observe_mode_forwards_a_held_pair_and_counts_it,
);
