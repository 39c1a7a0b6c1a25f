//! Replicated state over one real redis-server: trips and closes cross replicas, ordering
//! holds for concurrent and out-of-order changes, Redis outages neither stop nor split the
//! replicas, and a late replica catches up. Real gateway processes, real sockets.

use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{json, Value};

const PHONE: &str = "106540352242922";
const WABA: &str = "102290129340398";
const ADMIN: &str = "test-admin-token-0123456789";
const PREFIX: &str = "t";
const LIMIT: Duration = Duration::from_secs(120);

fn config(upstream: &str, redis_url: &str) -> String {
    format!(
        r#"
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
state_dir = "{{state_dir}}"
upstream = "{upstream}"
admin_token = "{ADMIN}"
redis_url = "{redis_url}"
redis_prefix = "{PREFIX}"
redis_retry_max = "300ms"
log_level = "info,wa_breaker=debug"

[[accounts]]
waba_id = "{WABA}"
phone_number_ids = ["{PHONE}"]
"#
    )
}

fn key(waba: &str) -> String {
    format!("{PREFIX}:circuit:{waba}")
}

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test exceeded its time limit");
}

async fn circuit(gw: &Gateway, waba: &str) -> Value {
    let (status, c) = gw.circuit(ADMIN, waba).await;
    assert!(status == 200 || status == 404, "GET circuit: {status}");
    c
}

/// Polls until `pred` holds for the gateway's circuit; returns how long it took.
async fn wait_circuit(
    gw: &Gateway,
    waba: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Duration {
    let t = Instant::now();
    loop {
        let c = circuit(gw, waba).await;
        if pred(&c) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < within,
            "circuit {waba} did not reach the state within {within:?}: {c}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn is_open(c: &Value) -> bool {
    c["state"] == "open"
}

fn is_closed(c: &Value) -> bool {
    c["state"] == "closed"
}

/// The ordering identity of a circuit: two replicas agree when these are equal.
fn ident(c: &Value) -> (Value, Value, Value, Value) {
    (
        c["state"].clone(),
        c["updated_at"].clone(),
        c["version"].clone(),
        c["origin"].clone(),
    )
}

async fn admin(gw: &Gateway, waba: &str, op: &str) -> u16 {
    gw.admin_post(&format!("/admin/circuits/{waba}/{op}"), Some(ADMIN), None)
        .await
        .status()
        .as_u16()
}

async fn redis_connected(gw: &Gateway) -> Option<f64> {
    metric(&gw.metrics().await, "wa_breaker_redis_connected", &[])
}

async fn wait_metric(gw: &Gateway, want: f64, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        if redis_connected(gw).await == Some(want) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < within,
            "wa_breaker_redis_connected != {want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn assert_blocked(gw: &Gateway, n: usize) {
    for _ in 0..n {
        let r = gw.send_str(PHONE, TEMPLATE_BODY).await;
        assert_eq!(r.status(), 403);
        assert_eq!(
            r.headers().get("x-wa-breaker").map(|v| v.to_str().unwrap()),
            Some("open")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trip_on_a_blocks_b_and_admin_close_on_b_closes_a() {
    bounded(async {
        let redis = RedisServer::start();
        let fake = FakeCloud::start().await;
        let cfg = config(&fake.url(), &redis.url());
        let a = Gateway::start(&cfg).await;
        let b = Gateway::start(&cfg).await;
        wait_metric(&a, 1.0, Duration::from_secs(5)).await;
        wait_metric(&b, 1.0, Duration::from_secs(5)).await;

        fake.on_phone(PHONE, Reply::blocked_368());
        let r = a.send_str(PHONE, TEMPLATE_BODY).await;
        assert_eq!(r.status(), 403);
        let took = wait_circuit(&b, WABA, Duration::from_secs(1), is_open).await;
        eprintln!("trip on A reached B in {took:?}");
        assert_blocked(&b, 20).await;
        assert_blocked(&a, 5).await;
        assert_eq!(
            fake.count_for_phone(PHONE),
            1,
            "only A's tripping send reached Meta"
        );

        // The key: JSON with the circuit, no TTL (open until a signal).
        let stored: Value = serde_json::from_str(&redis.get(&key(WABA)).expect("key")).unwrap();
        assert_eq!(stored["state"], "open");
        assert_eq!(stored["source"], "send");
        assert_eq!(stored["history"][0]["evidence"]["fbtrace_id"], FBTRACE_ID);
        assert_eq!(redis.cmd(&["TTL", &key(WABA)]), "-1");

        // An operator closes on B: A follows.
        fake.on_phone(PHONE, Reply::ok_send());
        assert_eq!(admin(&b, WABA, "close").await, 200);
        let took = wait_circuit(&a, WABA, Duration::from_secs(1), is_closed).await;
        eprintln!("close on B reached A in {took:?}");
        let r = a.send_str(PHONE, TEMPLATE_BODY).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            ident(&circuit(&a, WABA).await),
            ident(&circuit(&b, WABA).await)
        );

        // Closed keys expire (default 7 days); open-with-until keys live until + 1 h.
        let ttl: i64 = redis.cmd(&["TTL", &key(WABA)]).parse().unwrap();
        assert!(
            (7 * 86400 - 60..=7 * 86400).contains(&ttl),
            "closed TTL {ttl}"
        );
        let until = (chrono::Utc::now() + chrono::Duration::seconds(600)).to_rfc3339();
        let r = a
            .admin_post(
                "/admin/circuits/300000000000001/open",
                Some(ADMIN),
                Some(&json!({"until": until})),
            )
            .await;
        assert_eq!(r.status(), 200);
        let deadline = Instant::now() + Duration::from_secs(2);
        let ttl: i64 = loop {
            let t: i64 = redis
                .cmd(&["TTL", &key("300000000000001")])
                .parse()
                .unwrap();
            if t > 0 || Instant::now() > deadline {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(
            (600 + 3600 - 30..=600 + 3600).contains(&ttl),
            "until TTL {ttl}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_and_out_of_order_changes_resolve_the_same_on_both() {
    bounded(async {
        let redis = RedisServer::start();
        let fake = FakeCloud::start().await;
        let cfg = config(&fake.url(), &redis.url());
        let a = Gateway::start(&cfg).await;
        let b = Gateway::start(&cfg).await;

        // Racing operators: open on A and close on B at the same moment, for 10 WABAs.
        for i in 0..10u64 {
            let waba = format!("{}", 400_000_000_000_000u64 + i);
            if i % 2 == 0 {
                // Start from open so the close has something to do.
                assert_eq!(admin(&a, &waba, "open").await, 200);
                wait_circuit(&b, &waba, Duration::from_secs(1), is_open).await;
            }
            let (ra, rb) = tokio::join!(admin(&a, &waba, "open"), admin(&b, &waba, "close"));
            assert_eq!((ra, rb), (200, 200));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        for i in 0..10u64 {
            let waba = format!("{}", 400_000_000_000_000u64 + i);
            let (ca, cb) = (circuit(&a, &waba).await, circuit(&b, &waba).await);
            assert_eq!(
                ident(&ca),
                ident(&cb),
                "replicas disagree on {waba}:\nA {ca}\nB {cb}"
            );
            let stored: Value = serde_json::from_str(&redis.get(&key(&waba)).unwrap()).unwrap();
            assert_eq!(ident(&stored), ident(&ca), "redis disagrees on {waba}");
        }

        // Out-of-order delivery, crafted straight into Redis: start from an open circuit.
        assert_eq!(admin(&a, WABA, "open").await, 200);
        wait_circuit(&b, WABA, Duration::from_secs(1), is_open).await;
        let base: Value = serde_json::from_str(&redis.get(&key(WABA)).unwrap()).unwrap();
        let t0 = chrono::DateTime::parse_from_rfc3339(base["updated_at"].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc);
        let craft = |state: &str, offset_ms: i64, version: u64| -> String {
            let mut c = base.clone();
            c["state"] = json!(state);
            c["updated_at"] = json!((t0 + chrono::Duration::milliseconds(offset_ms)).to_rfc3339());
            c["version"] = json!(version);
            c["origin"] = json!("crafted");
            c.as_object_mut().unwrap().remove("order_key");
            c.to_string()
        };
        let channel = format!("{PREFIX}:changes");
        // A stale close (older event time, even with a huge version) is ignored by both, and
        // when it was written over the key, the replicas that know better repair the key.
        let stale = craft("closed", -60_000, 10_000);
        redis.cmd(&["SET", &key(WABA), &stale]);
        redis.cmd(&["PUBLISH", &channel, &stale]);
        let t = Instant::now();
        loop {
            let stored: Value = serde_json::from_str(&redis.get(&key(WABA)).unwrap()).unwrap();
            if is_open(&stored) {
                assert_eq!(ident(&stored), ident(&circuit(&a, WABA).await));
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "stale key not repaired: {stored}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!("stale key repaired in {:?}", t.elapsed());
        assert!(is_open(&circuit(&a, WABA).await) && is_open(&circuit(&b, WABA).await));
        // A newer close, then a stale open delivered after it: both end closed.
        let close = craft("closed", 2_000, 1);
        let late_open = craft("open", 1_000, 50);
        redis.cmd(&["SET", &key(WABA), &close]);
        redis.cmd(&["PUBLISH", &channel, &close]);
        redis.cmd(&["PUBLISH", &channel, &late_open]);
        for gw in [&a, &b] {
            wait_circuit(gw, WABA, Duration::from_secs(1), is_closed).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (ca, cb) = (circuit(&a, WABA).await, circuit(&b, WABA).await);
        assert!(is_closed(&ca) && is_closed(&cb), "A {ca}\nB {cb}");
        assert_eq!(ident(&ca), ident(&cb));
        assert_eq!(ca["origin"], "crafted");

        // A replica started now sees the same, from the keys alone.
        let c = Gateway::start(&cfg).await;
        assert_eq!(ident(&circuit(&c, WABA).await), ident(&ca));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_both_serving_and_changes_converge_after() {
    bounded(async {
        let redis = RedisServer::start();
        let fake = FakeCloud::start().await;
        let cfg = config(&fake.url(), &redis.url());
        let a = Gateway::start(&cfg).await;
        let b = Gateway::start(&cfg).await;
        const W2: &str = "500000000000002";

        fake.on_phone(PHONE, Reply::blocked_368());
        assert_eq!(a.send_str(PHONE, TEMPLATE_BODY).await.status(), 403);
        wait_circuit(&b, WABA, Duration::from_secs(1), is_open).await;

        redis.stop();
        let t = Instant::now();
        for gw in [&a, &b] {
            wait_metric(gw, 0.0, Duration::from_secs(12)).await;
        }
        eprintln!("outage noticed in {:?}", t.elapsed());
        // Several reconnect attempts (300 ms cap) go by; both keep serving and blocking.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for gw in [&a, &b] {
            let r = gw.admin_get("/readyz", None).await;
            assert_eq!(r.status(), 200, "readiness stays up");
            assert_blocked(gw, 5).await;
        }
        assert_eq!(fake.count_for_phone(PHONE), 1);
        for gw in [&a, &b] {
            let warns = gw.logs().matches("redis is away").count();
            assert_eq!(warns, 1, "one log line per outage:\n{}", gw.logs());
        }

        // Changes made while away: still acknowledged (embedded store), local for now.
        assert_eq!(admin(&a, W2, "open").await, 200);
        assert_eq!(admin(&b, WABA, "close").await, 200);
        assert!(is_open(&circuit(&a, W2).await));
        assert!(
            !is_open(&circuit(&b, W2).await),
            "B cannot know about A's open yet"
        );
        assert!(
            is_open(&circuit(&a, WABA).await),
            "A cannot know about B's close yet"
        );

        // Redis comes back empty (same port, no persistence): both converge.
        redis.restart();
        let t = Instant::now();
        for gw in [&a, &b] {
            wait_circuit(gw, W2, Duration::from_secs(5), is_open).await;
            wait_circuit(gw, WABA, Duration::from_secs(5), is_closed).await;
            wait_metric(gw, 1.0, Duration::from_secs(5)).await;
        }
        eprintln!("converged {:?} after redis came back", t.elapsed());
        for w in [WABA, W2] {
            assert_eq!(ident(&circuit(&a, w).await), ident(&circuit(&b, w).await));
            assert!(redis.get(&key(w)).is_some(), "{w} written back to redis");
        }
        for gw in [&a, &b] {
            assert!(gw.logs().contains("redis is back"), "{}", gw.logs());
        }
        // And B's close holds: A forwards again.
        fake.on_phone(PHONE, Reply::ok_send());
        assert_eq!(a.send_str(PHONE, TEMPLATE_BODY).await.status(), 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_replica_catches_up_and_unreachable_redis_does_not_block_start() {
    bounded(async {
        let redis = RedisServer::start();
        let fake = FakeCloud::start().await;
        let cfg = config(&fake.url(), &redis.url());
        let a = Gateway::start(&cfg).await;
        fake.on_phone(PHONE, Reply::blocked_368());
        assert_eq!(a.send_str(PHONE, TEMPLATE_BODY).await.status(), 403);
        a.stop().await;

        // A replica that starts after the trip blocks from its first request.
        let late = Gateway::start(&cfg).await;
        assert!(is_open(&circuit(&late, WABA).await));
        assert_blocked(&late, 10).await;
        assert_eq!(fake.count_for_phone(PHONE), 1);

        // Redis unreachable at start: the gateway serves anyway, then connects later.
        redis.stop();
        let t = Instant::now();
        let lonely = Gateway::start(&cfg).await;
        eprintln!("ready without redis in {:?}", t.elapsed());
        assert!(t.elapsed() < Duration::from_secs(8));
        assert_eq!(redis_connected(&lonely).await, Some(0.0));
        assert_eq!(admin(&lonely, "600000000000003", "open").await, 200);
        redis.restart();
        wait_metric(&lonely, 1.0, Duration::from_secs(5)).await;
        let deadline = Instant::now() + Duration::from_secs(2);
        while redis.get(&key("600000000000003")).is_none() {
            assert!(
                Instant::now() < deadline,
                "change made before redis answered is written back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(lonely.logs().contains("redis is back"));
        // And the late replica (restarted redis lost its keys) wrote back what it knew.
        wait_circuit(&lonely, WABA, Duration::from_secs(5), is_open).await;
    })
    .await;
}
