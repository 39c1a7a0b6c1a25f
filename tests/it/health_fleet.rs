//! Issue 14 — one Health Status poller per circuit across the fleet, and phone-number
//! circuits closed by a phone-node poll. Real gateway processes on one real redis-server,
//! against the fake Cloud API (which records each health poll's arrival and how many were
//! in flight then).

use std::time::{Duration, Instant};

use crate::signals_util::*;
use crate::support::*;
use serde_json::json;

const PREFIX: &str = "hf";
const LIMIT: Duration = Duration::from_secs(120);

/// A gateway config on `redis` (when given) with `[health]` lines: token, `interval`,
/// no jitter, `lease`, `budget`.
fn fleet_config(
    upstream: &str,
    redis: Option<&str>,
    interval: &str,
    lease: &str,
    budget: u32,
) -> String {
    let health = format!(
        "{}\nlease = \"{lease}\"\nhourly_budget = {budget}",
        health(interval, "2s")
    );
    let top = match redis {
        Some(url) => format!(
            "redis_url = \"{url}\"\nredis_prefix = \"{PREFIX}\"\nredis_retry_max = \"300ms\"\n"
        ),
        None => String::new(),
    };
    format!("{top}{}", config(upstream, "", &health))
}

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test exceeded its time limit");
}

async fn open_by_webhook(gw: &Gateway, waba: &str) {
    let r = deliver(gw, &account_update(waba, now_unix(), disabled("DISABLE"))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(circuit(gw, waba).await["state"], "open");
}

/// A BLOCKED answer that takes `delay` (so overlapping pollers would show in flight).
fn slow_blocked(delay: Duration) -> Reply {
    Reply::json(200, &health_json(WABA, "BLOCKED")).with_delay(delay)
}

async fn count_polls(gw: &Gateway) -> f64 {
    metric_sum(&gw.metrics().await, "wa_breaker_health_polls_total", &[])
}

fn m(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(text, name, labels).unwrap_or(0.0)
}

/// Budget windows are clock hours: a test counting polls in one window starts well
/// inside it.
async fn away_from_the_hour_boundary(needed: Duration) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let left = 3600 - secs % 3600;
    if left < needed.as_secs() + 5 {
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
}

/// Three replicas, one open circuit, 10 s of polling every 150 ms (answers taking 60 ms):
/// the fake sees one poller at a time and about one poll per interval, not three; the
/// holder is visible in each replica's `/metrics`; killed with SIGKILL, another replica
/// takes over within one lease (plus at most two intervals).
#[tokio::test]
async fn three_replicas_one_poller_and_takeover_within_a_lease() {
    if !redis_available() {
        eprintln!("redis-server not found: skipped");
        return;
    }
    bounded(async {
        let redis = RedisServer::start();
        let fake = FakeCloud::start().await;
        let answer = Duration::from_millis(60);
        fake.set_health_reply(WABA, slow_blocked(answer));
        let interval = Duration::from_millis(150);
        // A lease of 20 intervals: long enough that a replica starved of CPU for a moment
        // (a busy 2-core machine) keeps it — with 1 s, a stall under load handed it over
        // mid-run — and short enough to time the takeover.
        let lease = Duration::from_secs(3);
        let cfg = fleet_config(&fake.url(), Some(&redis.url()), "150ms", "3s", 10_000);
        let gws = vec![
            Gateway::start(&cfg).await,
            Gateway::start(&cfg).await,
            Gateway::start(&cfg).await,
        ];
        open_by_webhook(&gws[0], WABA).await;
        for gw in &gws {
            wait_state(gw, WABA, "open", Duration::from_secs(5)).await;
        }

        let run = Duration::from_secs(10);
        let started = Instant::now();
        tokio::time::sleep(run).await;
        let polls: Vec<HealthPoll> = fake
            .health_polls(WABA)
            .into_iter()
            .filter(|p| p.at >= started)
            .collect();
        let max_in_flight = polls.iter().map(|p| p.in_flight).max().unwrap_or(0);
        // A poll loop sleeps one interval after each answer: one poller makes one poll per
        // interval + answer time.
        let expected = (run.as_millis() / (interval + answer).as_millis()) as usize;
        eprintln!(
            "3 replicas, {run:?} at {interval:?}: {} polls (≈{expected} for one poller), max in flight {max_in_flight}",
            polls.len()
        );
        assert_eq!(max_in_flight, 1, "more than one poller at a time");
        assert!(
            polls.len() >= expected * 6 / 10 && polls.len() <= expected * 13 / 10,
            "{} polls, expected about {expected}",
            polls.len()
        );
        // Who polls: exactly one replica holds the lease and made the polls; the others
        // counted lease skips.
        let mut holder = None;
        for (i, gw) in gws.iter().enumerate() {
            let t = gw.metrics().await;
            let held = m(&t, "wa_breaker_health_leases_held", &[]);
            let blocked = m(&t, "wa_breaker_health_polls_total", &[("result", "blocked")]);
            let lease_skips = m(&t, "wa_breaker_health_poll_skipped_total", &[("reason", "lease")]);
            eprintln!("replica {i}: leases_held {held}, polls {blocked}, lease skips {lease_skips}");
            if held == 1.0 {
                assert!(holder.is_none(), "two holders");
                holder = Some(i);
                assert!(blocked as usize >= polls.len() * 9 / 10);
            } else {
                assert_eq!(held, 0.0);
                assert!(lease_skips >= 10.0, "replica {i}: {lease_skips} lease skips");
            }
        }
        let holder = holder.expect("one replica holds the lease");

        // SIGKILL the poller: it cannot release its lease; another takes over when the
        // lease lapses.
        let last_before = fake.health_polls(WABA).last().map(|p| p.at).unwrap();
        let killed_at = Instant::now();
        gws[holder].kill9();
        let n = fake.health_polls(WABA).len();
        assert!(
            fake.wait_for(Duration::from_secs(10), |_| fake.health_polls(WABA).len() > n)
                .await,
            "nobody took over"
        );
        let first_after = fake.health_polls(WABA)[n].at;
        let gap = first_after - last_before;
        let since_kill = first_after - killed_at;
        eprintln!(
            "takeover: last poll of the killed holder → first poll of the new one {gap:?} ({since_kill:?} after SIGKILL; lease {lease:?}, interval {interval:?})"
        );
        assert!(
            since_kill <= lease + interval * 2 + Duration::from_millis(300),
            "takeover took {since_kill:?}"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after: Vec<HealthPoll> = fake
            .health_polls(WABA)
            .into_iter()
            .filter(|p| p.at >= first_after)
            .collect();
        assert_eq!(after.iter().map(|p| p.in_flight).max(), Some(1));
        let mut takeovers = 0.0;
        let mut holders = 0.0;
        for (i, gw) in gws.iter().enumerate() {
            if i == holder {
                continue;
            }
            let t = gw.metrics().await;
            takeovers += m(&t, "wa_breaker_health_lease_acquired_total", &[("how", "takeover")]);
            holders += m(&t, "wa_breaker_health_leases_held", &[]);
        }
        assert_eq!(holders, 1.0);
        assert!(takeovers >= 1.0);

        // AVAILABLE closes it on every live replica, and polling stops.
        fake.set_health(WABA, health_json(WABA, "AVAILABLE"));
        for (i, gw) in gws.iter().enumerate() {
            if i != holder {
                let c = wait_state(gw, WABA, "closed", Duration::from_secs(5)).await;
                assert_eq!(c["source"], "health");
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n = fake.health_polls(WABA).len();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(fake.health_polls(WABA).len(), n, "polling continued after close");
        assert!(redis.keys(&format!("{PREFIX}:poll:{WABA}")).is_empty(), "lease released");
    })
    .await;
}

/// The hourly budget holds whatever the replica count: budget 5, three replicas polling
/// every 100 ms for 3 s → the fake sees 5 polls of the WABA; the rest are budget skips.
#[tokio::test]
async fn hourly_budget_holds_across_three_replicas() {
    if !redis_available() {
        eprintln!("redis-server not found: skipped");
        return;
    }
    bounded(async {
        away_from_the_hour_boundary(Duration::from_secs(15)).await;
        let redis = RedisServer::start();
        let fake = FakeCloud::start().await;
        fake.set_health(WABA, health_json(WABA, "BLOCKED"));
        let cfg = fleet_config(&fake.url(), Some(&redis.url()), "100ms", "500ms", 5);
        let gws = vec![
            Gateway::start(&cfg).await,
            Gateway::start(&cfg).await,
            Gateway::start(&cfg).await,
        ];
        open_by_webhook(&gws[1], WABA).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let polls = fake.count_health(WABA);
        let mut skips = 0.0;
        let mut made = 0.0;
        for gw in &gws {
            let t = gw.metrics().await;
            skips += m(
                &t,
                "wa_breaker_health_poll_skipped_total",
                &[("reason", "budget")],
            );
            made += metric_sum(&t, "wa_breaker_health_polls_total", &[]);
        }
        eprintln!("budget 5, 3 replicas, 3 s at 100 ms: {polls} polls, {skips} budget skips");
        assert_eq!(polls, 5);
        assert_eq!(made, 5.0);
        assert!(skips >= 15.0, "{skips}");
        let keys = redis.keys(&format!("{PREFIX}:poll-budget:{WABA}:*"));
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert_eq!(redis.get(&keys[0]).as_deref(), Some("5"));
        let ttl: i64 = redis.cmd(&["PTTL", &keys[0]]).trim().parse().unwrap_or(-1);
        assert!(ttl > 0 && ttl <= 3_660_000, "budget key ttl {ttl}");
    })
    .await;
}

/// Without Redis, a single gateway keeps the same hourly budget locally.
#[tokio::test]
async fn without_redis_the_budget_is_kept_locally() {
    bounded(async {
        away_from_the_hour_boundary(Duration::from_secs(10)).await;
        let fake = FakeCloud::start().await;
        fake.set_health(WABA, health_json(WABA, "BLOCKED"));
        let gw = Gateway::start(&fleet_config(&fake.url(), None, "100ms", "1s", 3)).await;
        open_by_webhook(&gw, WABA).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(fake.count_health(WABA), 3);
        let t = gw.metrics().await;
        assert!(
            m(
                &t,
                "wa_breaker_health_poll_skipped_total",
                &[("reason", "budget")]
            ) >= 5.0
        );
        assert_eq!(
            m(
                &t,
                "wa_breaker_health_poll_skipped_total",
                &[("reason", "lease")]
            ),
            0.0
        );
        assert_eq!(m(&t, "wa_breaker_health_leases_held", &[]), 0.0);
    })
    .await;
}

/// Redis going away mid-run: one line, then every replica polls on its own (a circuit
/// is never left unpolled); when it is back, one poller again.
#[tokio::test]
async fn losing_redis_falls_back_to_local_polling() {
    if !redis_available() {
        eprintln!("redis-server not found: skipped");
        return;
    }
    bounded(async {
        let redis = RedisServer::start();
        let fake = FakeCloud::start().await;
        fake.set_health_reply(WABA, slow_blocked(Duration::from_millis(30)));
        let cfg = fleet_config(&fake.url(), Some(&redis.url()), "150ms", "1s", 10_000);
        let gws = vec![Gateway::start(&cfg).await, Gateway::start(&cfg).await];
        open_by_webhook(&gws[0], WABA).await;
        wait_state(&gws[1], WABA, "open", Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut pollers = 0;
        for gw in &gws {
            let a = count_polls(gw).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            if count_polls(gw).await > a {
                pollers += 1;
            }
        }
        assert_eq!(pollers, 1, "with redis: one poller");

        redis.stop();
        for gw in &gws {
            assert!(
                gw.wait_for_log(
                    "redis is away for the health poll leases",
                    Duration::from_secs(5)
                )
                .await
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = [count_polls(&gws[0]).await, count_polls(&gws[1]).await];
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = [count_polls(&gws[0]).await, count_polls(&gws[1]).await];
        for i in 0..2 {
            assert!(
                after[i] >= before[i] + 3.0,
                "replica {i} stopped polling without redis"
            );
        }
        for gw in &gws {
            assert_eq!(
                gw.logs()
                    .matches("redis is away for the health poll leases")
                    .count(),
                1,
                "logged once"
            );
        }

        redis.restart();
        for gw in &gws {
            assert!(
                gw.wait_for_log(
                    "redis is back for the health poll leases",
                    Duration::from_secs(10)
                )
                .await
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let n = fake.health_polls(WABA).len();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let back: Vec<HealthPoll> = fake.health_polls(WABA)[n..].to_vec();
        assert_eq!(back.iter().map(|p| p.in_flight).max(), Some(1));
        assert!(
            back.len() <= 16,
            "{} polls in 2 s: more than one poller",
            back.len()
        );
    })
    .await;
}

/// A phone-level trip (a send answered 133010) opens the phone number's circuit; its
/// phone-node poll `GET /{phone-id}?fields=health_status` holds it while the number is
/// BLOCKED and closes it on AVAILABLE (source `health`, the answer as evidence).
async fn phone_circuit_closed_by_a_phone_node_poll(engine: Engine) {
    bounded(async {
        let fake = FakeCloud::start().await;
        let mut blocked = health_json_phone(PHONE, WABA, "AVAILABLE");
        blocked["health_status"]["can_send_message"] = json!("BLOCKED");
        blocked["health_status"]["entities"][0] = json!({
            "entity_type": "PHONE_NUMBER", "id": PHONE, "can_send_message": "BLOCKED",
            "errors": [{"error_code": 133010, "error_description": "The phone number is not registered."}]
        });
        fake.set_health(PHONE, blocked);
        fake.on_phone(PHONE, Reply::graph_error(400, 133010, "Account not registered"));
        let cfg = format!(
            "{}\n{}",
            engine.config_line(),
            fleet_config(&fake.url(), None, "150ms", "1s", 60)
        );
        let gw = Gateway::start(&cfg).await;
        let r = gw.send_str(PHONE, TEXT_BODY).await;
        assert_eq!(r.status(), 400);
        let key = format!("phone:{PHONE}");
        wait_state(&gw, &key, "open", Duration::from_secs(3)).await;
        assert!(fake.wait_health(PHONE, 2, Duration::from_secs(3)).await);
        let c = circuit(&gw, &key).await;
        assert_eq!(c["state"], "open");
        let n = notes(&c);
        assert_eq!(n.len(), 1, "{c:#}");
        assert!(n[0]["reason"].as_str().unwrap().contains("PHONE_NUMBER 133010"));
        // The WABA itself is neither opened nor polled.
        assert_eq!(circuit(&gw, WABA).await["state"], "closed");
        assert_eq!(fake.count_health(WABA), 0);

        fake.set_health(PHONE, health_json_phone(PHONE, WABA, "AVAILABLE"));
        let c = wait_state(&gw, &key, "closed", Duration::from_secs(3)).await;
        assert_eq!(c["source"], "health");
        let last = c["history"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["evidence"]["kind"], "health");
        assert_eq!(last["evidence"]["health_status"]["entities"][0]["entity_type"], "PHONE_NUMBER");
        for p in fake.health_requests(PHONE) {
            assert_eq!(p.path, format!("/{TEST_VERSION}/{PHONE}"));
            assert_eq!(p.query.as_deref(), Some("fields=health_status"));
            assert_eq!(
                p.header("authorization"),
                Some(format!("Bearer {HEALTH_TOKEN}").as_str())
            );
        }
        // Closed: it sends again, and polling stops.
        fake.on_phone(PHONE, Reply::ok_send());
        assert_eq!(gw.send_str(PHONE, TEXT_BODY).await.status(), 200);
        let n = fake.count_health(PHONE);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(fake.count_health(PHONE), n);
    })
    .await;
}

both_engines!(phone_circuit_closed_by_a_phone_node_poll);
