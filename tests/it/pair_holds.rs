//! Issue 21, pair holds (after Meta's 131056) shared by the fleet: a hold recorded on one
//! replica answers the pair's retry on another (same Redis), repeats on another replica
//! quadruple from the shared record, a delivery or an operator on one ends it on the
//! other, and a hold is still there after kill -9 and a restart (the embedded store).
//! Real sockets, both engines (`both_engines!` at the end).

use std::time::{Duration, Instant};

use crate::signals_util::ADMIN;
use crate::support::*;
use serde_json::{json, Value};

const WABA: &str = "102290129340398";
const PHONE: &str = "106540352242922";
/// The recipient, as digits.
const R: &str = "15557654321";

fn config(engine: Engine, mode: &str, pair_hold: &str, extra: &str) -> String {
    let engine_line = engine.config_line();
    format!(
        r#"
{engine_line}
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
state_dir = "{{state_dir}}"
upstream = "{{upstream}}"
admin_token = "{ADMIN}"
request_timeout = "5s"
{extra}

[shaping]
mode = "{mode}"
pair_hold = "{pair_hold}"

[[accounts]]
waba_id = "{WABA}"
phone_number_ids = ["{PHONE}"]
"#
    )
}

fn redis_line(redis: &RedisServer) -> String {
    format!("redis_url = \"{}\"\nredis_prefix = \"ph\"", redis.url())
}

fn pair_rate() -> Reply {
    Reply::graph_error(
        400,
        131056,
        "(#131056) (Business Account, Consumer Account) pair rate limit hit",
    )
}

/// A text send to `to`: status, `x-wa-breaker`, `retry-after`, Graph code.
async fn send(gw: &Gateway, to: &str) -> (u16, Option<String>, Option<u64>, Option<i64>) {
    let body =
        json!({"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": "hi"}})
            .to_string();
    let r = gw.send_str(PHONE, &body).await;
    let h = |k: &str| {
        r.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (status, marker, retry) = (
        r.status().as_u16(),
        h("x-wa-breaker"),
        h("retry-after").and_then(|v| v.parse().ok()),
    );
    let v: Value = r.json().await.unwrap_or_default();
    (status, marker, retry, v["error"]["code"].as_i64())
}

/// The pair holds `GET /admin/holds` lists.
async fn pairs(gw: &Gateway) -> Vec<Value> {
    let r = gw.admin_get("/admin/holds", Some(ADMIN)).await;
    assert_eq!(r.status(), 200);
    let all: Vec<Value> = r.json().await.unwrap();
    all.into_iter().filter(|h| h["kind"] == "pair").collect()
}

/// Waits (at most 15 s: a loaded machine runs these tests in parallel) until `gw` lists
/// the pair hold at `level`, or none (`None`).
async fn wait_level(gw: &Gateway, level: Option<u64>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let listed = pairs(gw).await;
        let now = listed.first().and_then(|h| h["level"].as_u64());
        if now == level && listed.len() <= 1 {
            if let Some(h) = listed.first() {
                assert_eq!(h["phone_number_id"], PHONE, "{what}");
                assert_eq!(h["recipient"], R, "{what}");
            }
            return;
        }
        assert!(Instant::now() < deadline, "{what}: listed {listed:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn delete(gw: &Gateway, path: &str) -> u16 {
    client()
        .delete(format!("{}{path}", gw.admin_url()))
        .header("authorization", format!("Bearer {ADMIN}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Two replicas on one Redis, `pair_hold = "4s"`: (a) Meta's 131056 through A holds the
/// pair on B too — B answers the retry locally with 131056 and `retry-after`, nothing
/// reaches Meta; (d) once the hold ended (within its reach), Meta's next 131056 through B
/// holds it four times longer (level 1, from the record A made), on A too; (e) an
/// operator's `DELETE` on A ends it on B.
///
/// The hold's length is every window the test has: for the hold to reach B and be seen
/// there before it ends, and for B's 131056 to land within its reach after it ended. 4 s
/// leaves room on a loaded machine (2 s once failed there).
async fn a_pair_hold_on_one_replica_holds_repeats_and_clears_on_the_other(engine: Engine) {
    let redis = RedisServer::start();
    let fake = FakeCloud::start().await;
    let cfg = config(engine, "enforce", "4s", &redis_line(&redis));
    let a = Gateway::builder(&cfg)
        .var("upstream", &fake.url())
        .start()
        .await;
    let b = Gateway::builder(&cfg)
        .var("upstream", &fake.url())
        .start()
        .await;
    let name = engine.name();

    // (a)
    fake.queue_phone(PHONE, vec![pair_rate()]);
    assert_eq!(
        send(&a, R).await.3,
        Some(131056),
        "{name}: Meta's answer relayed"
    );
    wait_level(&b, Some(0), &format!("{name}: the hold reached B")).await;
    let (status, marker, retry, code) = send(&b, "+1 555-765-4321").await;
    assert_eq!(
        (status, marker.as_deref(), code),
        (400, Some("shaped"), Some(131056)),
        "{name}: B answers the retry"
    );
    assert!(
        retry.is_some_and(|s| (1..=4).contains(&s)),
        "{name}: {retry:?}"
    );
    assert_eq!(
        fake.count_for_phone(PHONE),
        1,
        "{name}: nothing more reached Meta"
    );

    // (d) The hold ends on both (the expiry timer); within its reach, Meta's 131056
    // through B quadruples it.
    wait_level(&b, None, &format!("{name}: the hold ended on B")).await;
    wait_level(&a, None, &format!("{name}: the hold ended on A")).await;
    fake.queue_phone(PHONE, vec![pair_rate()]);
    let (_, marker, _, code) = send(&b, R).await;
    assert_eq!(
        (marker, code),
        (None, Some(131056)),
        "{name}: forwarded, Meta says 131056"
    );
    wait_level(&a, Some(1), &format!("{name}: level 1 reached A")).await;
    let (status, marker, retry, _) = send(&a, R).await;
    assert_eq!((status, marker.as_deref()), (400, Some("shaped")), "{name}");
    assert!(
        retry.is_some_and(|s| (10..=16).contains(&s)),
        "{name}: 4 × 4 s, retry-after {retry:?}"
    );
    assert_eq!(fake.count_for_phone(PHONE), 2, "{name}");
    let m = a.metrics().await;
    assert_eq!(
        metric(&m, "wa_breaker_shaping_pairs", &[]),
        Some(1.0),
        "{name}"
    );

    // (e)
    let path = format!("/admin/holds/pair/{PHONE}/{R}");
    assert_eq!(delete(&a, &path).await, 200, "{name}");
    wait_level(&b, None, &format!("{name}: the clear reached B")).await;
    let (status, marker, ..) = send(&b, R).await;
    assert_eq!(
        (status, marker),
        (200, None),
        "{name}: forwarded once cleared"
    );
    assert_eq!(delete(&b, &path).await, 404, "{name}: none left");
    assert_eq!(fake.count_for_phone(PHONE), 3, "{name}");
}

/// (c) A delivered send (2xx) for the pair through B ends the hold on A. B runs in
/// `observe` mode, so it forwards the pair's send while the hold stands.
async fn a_delivery_on_one_replica_ends_the_hold_on_the_other(engine: Engine) {
    let redis = RedisServer::start();
    let fake = FakeCloud::start().await;
    let a = Gateway::builder(&config(engine, "enforce", "30s", &redis_line(&redis)))
        .var("upstream", &fake.url())
        .start()
        .await;
    let b = Gateway::builder(&config(engine, "observe", "30s", &redis_line(&redis)))
        .var("upstream", &fake.url())
        .start()
        .await;
    let name = engine.name();
    fake.queue_phone(PHONE, vec![pair_rate()]);
    assert_eq!(send(&a, R).await.3, Some(131056), "{name}");
    let (status, marker, ..) = send(&a, R).await;
    assert_eq!(
        (status, marker.as_deref()),
        (400, Some("shaped")),
        "{name}: held on A"
    );
    wait_level(&b, Some(0), &format!("{name}: the hold reached B")).await;
    let (status, marker, ..) = send(&b, R).await;
    assert_eq!((status, marker), (200, None), "{name}: delivered through B");
    wait_level(&a, None, &format!("{name}: the delivery ended it on A")).await;
    let (status, marker, ..) = send(&a, R).await;
    assert_eq!((status, marker), (200, None), "{name}: A forwards again");
    assert_eq!(fake.count_for_phone(PHONE), 3, "{name}");
}

/// (b) `pair_hold = "30s"`, one gateway with its embedded store: the hold is still there
/// after kill -9 and a restart (its record is committed within milliseconds; the send's
/// answer did not wait for it).
async fn a_pair_hold_survives_kill9_and_a_restart(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = Gateway::builder(&config(engine, "enforce", "30s", ""))
        .var("upstream", &fake.url())
        .start()
        .await;
    let name = engine.name();
    fake.queue_phone(PHONE, vec![pair_rate()]);
    assert_eq!(send(&gw, R).await.3, Some(131056), "{name}");
    wait_level(&gw, Some(0), name).await;
    // The record goes to disk in the background: give the writer its commit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.kill9();
    gw.restart().await;
    let (status, marker, retry, code) = send(&gw, R).await;
    assert_eq!(
        (status, marker.as_deref(), code),
        (400, Some("shaped"), Some(131056)),
        "{name}: held after the restart"
    );
    assert!(
        retry.is_some_and(|s| (20..=30).contains(&s)),
        "{name}: {retry:?}"
    );
    assert_eq!(fake.count_for_phone(PHONE), 1, "{name}");
    wait_level(&gw, Some(0), name).await;
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "wa_breaker_shaping_pairs", &[]),
        Some(1.0),
        "{name}"
    );
    // A pair hold is not a circuit.
    let r = gw.admin_get("/admin/circuits", Some(ADMIN)).await;
    let all: Vec<Value> = r.json().await.unwrap();
    assert!(
        all.iter().all(|c| c["recipient"].is_null()),
        "{name}: {all:?}"
    );
}

both_engines!(
    a_pair_hold_on_one_replica_holds_repeats_and_clears_on_the_other,
    a_delivery_on_one_replica_ends_the_hold_on_the_other,
    a_pair_hold_survives_kill9_and_a_restart,
);
