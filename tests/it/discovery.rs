//! Protection without a hand-kept map: a phone number of unknown WABA that trips opens its
//! own circuit at once and widens to its WABA when the owner is learned (Health Status read,
//! relayed `messages` webhook, operator); mappings persist across restarts and replicas;
//! the accounts admin API; the discovery token rule; the learned map's cap. Real gateway
//! processes over real sockets against the fake Cloud API (and a real redis-server).

use std::time::{Duration, Instant};

use crate::support::webhook::{change, entry, envelope, now_unix};
use crate::support::*;
use serde_json::{json, Value};

const P1: &str = "106540352242922";
const P2: &str = "106540352242923";
const W: &str = "102290129340398";
const ADMIN: &str = "test-admin-token-0123456789";
const SECRET: &str = "test-app-secret-abc";
const HEALTH_TOKEN: &str = "health-token-SECRET-xyz";
const LIMIT: Duration = Duration::from_secs(120);

both_engines!(unknown_phone_trips_at_once_then_widens_to_its_waba);

fn config(engine: Engine, upstream: &str, extra: &str) -> String {
    format!(
        r#"{}
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
state_dir = "{{state_dir}}"
upstream = "{upstream}"
admin_token = "{ADMIN}"
log_level = "info,wa_breaker=debug"
{extra}
"#,
        engine.config_line()
    )
}

fn with_secret_and_token() -> String {
    format!(
        r#"
[webhook]
app_secret = "{SECRET}"
[health]
access_token = "{HEALTH_TOKEN}"
interval = "1h"
"#
    )
}

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test exceeded its time limit");
}

async fn accounts(gw: &Gateway) -> Vec<Value> {
    let r = gw.admin_get("/admin/accounts", Some(ADMIN)).await;
    assert_eq!(r.status(), 200);
    r.json::<Vec<Value>>().await.unwrap()
}

async fn mapping(gw: &Gateway, phone: &str) -> Option<Value> {
    accounts(gw)
        .await
        .into_iter()
        .find(|m| m["phone_number_id"] == phone)
}

/// Waits until the gateway maps `phone` to `waba` (or to nothing, for `None`).
async fn wait_mapping(gw: &Gateway, phone: &str, waba: Option<&str>, within: Duration) -> Value {
    let t = Instant::now();
    loop {
        let m = mapping(gw, phone).await;
        let held = m
            .as_ref()
            .and_then(|m| m["waba_id"].as_str().map(str::to_owned));
        if held.as_deref() == waba {
            return m.unwrap_or(Value::Null);
        }
        assert!(
            t.elapsed() < within,
            "{phone} not mapped to {waba:?} within {within:?}: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_open(gw: &Gateway, waba: &str, within: Duration) -> Value {
    let t = Instant::now();
    loop {
        let (_, c) = gw.circuit(ADMIN, waba).await;
        if c["state"] == "open" {
            return c;
        }
        assert!(
            t.elapsed() < within,
            "{waba} not open within {within:?}: {c}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn put_account(gw: &Gateway, phone: &str, body: &str) -> (u16, Value) {
    let r = gw
        .client()
        .put(format!("{}/admin/accounts/phones/{phone}", gw.admin_url()))
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn delete_account(gw: &Gateway, phone: &str) -> (u16, Value) {
    let r = gw
        .client()
        .delete(format!("{}/admin/accounts/phones/{phone}", gw.admin_url()))
        .header("authorization", format!("Bearer {ADMIN}"))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// A `messages` webhook of WABA `waba` naming `phone` in its metadata (a status update).
fn messages_webhook(waba: &str, phone: &str) -> Vec<u8> {
    let value = json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": phone},
        "statuses": [{"id": "wamid.X", "status": "delivered", "timestamp": now_unix().to_string(), "recipient_id": "15551234567"}]
    });
    serde_json::to_vec(&envelope(vec![entry(
        waba,
        now_unix(),
        vec![change("messages", value)],
    )]))
    .unwrap()
}

/// The issue's first scenario: no `[[accounts]]`; a send for an unknown phone number gets
/// 403/368 → its next send is answered locally with zero further upstream sends; Health
/// Status of the phone names WABA W (learned, the circuit widens to W); W's other phone,
/// learned from a relayed `messages` webhook, is answered locally too. Phone-keyed circuits
/// are listed with their `phone_number_id`.
async fn unknown_phone_trips_at_once_then_widens_to_its_waba(engine: Engine) {
    bounded(async {
        let fake = FakeCloud::start().await;
        fake.on_phone(P1, Reply::blocked_368());
        fake.set_health(P1, health_json_phone(P1, W, "BLOCKED"));
        let gw = Gateway::start(&config(engine, &fake.url(), &with_secret_and_token())).await;

        let r = gw.send(P1, &text_body()).await;
        assert_eq!(r.status(), 403);
        assert_eq!(fake.count_for_phone(P1), 1);
        // The phone number's own circuit stops the retries at once.
        for _ in 0..5 {
            let r = gw.send(P1, &text_body()).await;
            assert_eq!(r.status(), 403);
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], 368, "{body}");
        }
        assert_eq!(
            fake.count_for_phone(P1),
            1,
            "retries reached Meta ({})",
            engine.name()
        );

        // Discovery reads the phone number's Health Status with the health token, learns W,
        // and the circuit widens to W.
        let m = wait_mapping(&gw, P1, Some(W), Duration::from_secs(10)).await;
        assert_eq!(m["source"], "health", "{m}");
        let reads = fake.health_requests(P1);
        assert!(!reads.is_empty());
        for r in &reads {
            assert_eq!(
                r.header("authorization"),
                Some(format!("Bearer {HEALTH_TOKEN}").as_str())
            );
        }
        let c = wait_open(&gw, W, Duration::from_secs(10)).await;
        assert_eq!(c["code"], 368, "{c}");
        let list: Vec<Value> = gw
            .admin_get("/admin/circuits", Some(ADMIN))
            .await
            .json()
            .await
            .unwrap();
        assert!(
            list.iter().any(|c| c["phone_number_id"] == P1),
            "phone-keyed circuit listed: {list:?}"
        );

        // W's other phone number, learned from a relayed messages webhook: answered locally.
        let r = gw
            .webhook_post("/webhook", SECRET, &messages_webhook(W, P2))
            .await;
        assert_eq!(r.status(), 200);
        let m = wait_mapping(&gw, P2, Some(W), Duration::from_secs(5)).await;
        assert_eq!(m["source"], "webhook", "{m}");
        let r = gw.send(P2, &text_body()).await;
        assert_eq!(r.status(), 403);
        assert_eq!(fake.count_for_phone(P2), 0, "P2's send reached Meta");
        assert_eq!(fake.count_for_phone(P1), 1);
        let metrics = gw.metrics().await;
        assert!(
            metrics.contains("wa_breaker_mappings_learned_total{source=\"health\"} 1"),
            "{metrics}"
        );
        assert!(metrics.contains("wa_breaker_mappings_learned_total{source=\"webhook\"} 1"));
        assert!(!metrics.contains(HEALTH_TOKEN) && !gw.logs().contains(HEALTH_TOKEN));
    })
    .await
}

/// A relayed `messages` webhook teaches the mapping; a restart keeps it (embedded store).
#[tokio::test]
async fn a_learned_mapping_survives_restart() {
    bounded(async {
        let fake = FakeCloud::start().await;
        let extra = format!("[webhook]\napp_secret = \"{SECRET}\"\n");
        let gw = Gateway::start(&config(Engine::Relay, &fake.url(), &extra)).await;
        let r = gw
            .webhook_post("/webhook", SECRET, &messages_webhook(W, P1))
            .await;
        assert_eq!(r.status(), 200);
        wait_mapping(&gw, P1, Some(W), Duration::from_secs(5)).await;
        // A second delivery of the same mapping writes nothing new.
        let r = gw
            .webhook_post("/webhook", SECRET, &messages_webhook(W, P1))
            .await;
        assert_eq!(r.status(), 200);

        gw.kill9();
        gw.restart().await;
        let m = wait_mapping(&gw, P1, Some(W), Duration::from_secs(2)).await;
        assert_eq!(m["source"], "webhook");
        assert!(
            plain(&gw.logs()).contains("phone_numbers_learned=1"),
            "startup log counts learned"
        );

        // Protected now: an operator opens W; P1's send is answered locally.
        let r = gw
            .admin_post(&format!("/admin/circuits/{W}/open"), Some(ADMIN), None)
            .await;
        assert_eq!(r.status(), 200);
        let r = gw.send(P1, &text_body()).await;
        assert_eq!(r.status(), 403);
        assert_eq!(fake.count_for_phone(P1), 0);
    })
    .await
}

/// Admin add / move / remove: applies at once on both replicas (one Redis), survives a
/// restart; bad input gets 400/404/409 and changes nothing; a webhook-learned mapping on one
/// replica is seen by the other.
#[tokio::test]
async fn accounts_at_run_time_across_replicas() {
    bounded(async {
        let fake = FakeCloud::start().await;
        let redis = RedisServer::start();
        let extra = format!(
            "redis_url = \"{}\"\nredis_prefix = \"d\"\nredis_retry_max = \"300ms\"\n[webhook]\napp_secret = \"{SECRET}\"\n[[accounts]]\nwaba_id = \"{W}\"\nphone_number_ids = [\"{P1}\"]\n",
            redis.url()
        );
        let a = Gateway::start(&config(Engine::Relay, &fake.url(), &extra)).await;
        let b = Gateway::start(&config(Engine::Hyper, &fake.url(), &extra)).await;

        // Configured entries are listed with their source.
        let m = mapping(&a, P1).await.expect("configured mapping listed");
        assert_eq!(m["source"], "config");
        assert_eq!(m["waba_id"], W);
        for k in ["phone_number_id", "waba_id", "source", "updated_at"] {
            assert!(m.get(k).is_some(), "{k} in {m}");
        }

        // Bad input: 400 / 404 / 409, and nothing changes.
        let before = accounts(&a).await;
        assert_eq!(put_account(&a, "12ab", &format!(r#"{{"waba_id":"{W}"}}"#)).await.0, 400);
        assert_eq!(put_account(&a, P2, r#"{"waba_id":"W-1"}"#).await.0, 400);
        assert_eq!(put_account(&a, P2, r#"{"waba":"1"}"#).await.0, 400);
        assert_eq!(put_account(&a, P2, "not json").await.0, 400);
        assert_eq!(delete_account(&a, "x1").await.0, 400);
        assert_eq!(delete_account(&a, P2).await.0, 404);
        assert_eq!(delete_account(&a, P1).await.0, 409, "configured: the config file's");
        let r = a.client().put(format!("{}/admin/accounts/phones/{P2}", a.admin_url())).body("{}").send().await.unwrap();
        assert_eq!(r.status(), 401, "bearer-protected");
        assert_eq!(accounts(&a).await, before);

        // Add on A: applies on A at once and on B over Redis.
        let (s, body) = put_account(&a, P2, &format!(r#"{{"waba_id":"{W}"}}"#)).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["source"], "admin");
        assert_eq!(body["durable"], true);
        wait_mapping(&b, P2, Some(W), Duration::from_secs(5)).await;

        // Move on B (to another WABA): both follow.
        let w2 = "102290129340399";
        assert_eq!(put_account(&b, P2, &format!(r#"{{"waba_id":"{w2}"}}"#)).await.0, 200);
        wait_mapping(&a, P2, Some(w2), Duration::from_secs(5)).await;

        // A webhook-learned mapping on B reaches A.
        let p3 = "106540352242924";
        let r = b.webhook_post("/webhook", SECRET, &messages_webhook(W, p3)).await;
        assert_eq!(r.status(), 200);
        wait_mapping(&a, p3, Some(W), Duration::from_secs(5)).await;

        // Remove on A: gone on both, and stays gone after a restart of B.
        let (s, body) = delete_account(&a, P2).await;
        assert_eq!(s, 200, "{body}");
        wait_mapping(&b, P2, None, Duration::from_secs(5)).await;
        b.stop().await;
        b.restart().await;
        wait_mapping(&b, P2, None, Duration::from_secs(2)).await;
        wait_mapping(&b, p3, Some(W), Duration::from_secs(5)).await;

        // The operator's move applies to sends: with w2 open, P2 (mapped to w2 again) is
        // answered locally on both engines.
        assert_eq!(put_account(&b, P2, &format!(r#"{{"waba_id":"{w2}"}}"#)).await.0, 200);
        let r = b.admin_post(&format!("/admin/circuits/{w2}/open"), Some(ADMIN), None).await;
        assert_eq!(r.status(), 200);
        wait_open(&a, w2, Duration::from_secs(5)).await;
        wait_mapping(&a, P2, Some(w2), Duration::from_secs(5)).await;
        for gw in [&a, &b] {
            assert_eq!(gw.send(P2, &text_body()).await.status(), 403);
        }
        assert_eq!(fake.count_for_phone(P2), 0);
    })
    .await
}

/// The token rule: with no `health.access_token`, discovery reads nothing unless
/// `discovery.use_caller_token = true`; then it uses the caller's token for that one read,
/// and the token appears in no log line, metric or admin answer. With no accounts, no
/// webhook secret and no token the gateway says at start that sends are not protected.
#[tokio::test]
async fn discovery_uses_only_the_tokens_the_config_allows() {
    bounded(async {
        let fake = FakeCloud::start().await;
        fake.set_health(P1, health_json_phone(P1, W, "AVAILABLE"));

        // No token allowed: no read at all, and the warning at start.
        let gw = Gateway::start(&config(Engine::Relay, &fake.url(), "")).await;
        assert!(gw.logs().contains("not protected by WABA"), "{}", gw.logs());
        for _ in 0..3 {
            assert_eq!(gw.send(P1, &text_body()).await.status(), 200);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            fake.count_health(P1),
            0,
            "a read with a token the config does not allow"
        );
        assert!(mapping(&gw, P1).await.is_none());
        drop(gw);

        // Opt-in: the caller's own token, for that one read.
        for engine in Engine::ALL {
            fake.clear();
            let extra = "[discovery]\nuse_caller_token = true\n";
            let gw = Gateway::start(&config(engine, &fake.url(), extra)).await;
            assert!(!gw.logs().contains("not protected by WABA"));
            assert_eq!(gw.send(P1, &text_body()).await.status(), 200);
            wait_mapping(&gw, P1, Some(W), Duration::from_secs(5)).await;
            let reads = fake.health_requests(P1);
            assert_eq!(reads.len(), 1, "{}: one read per unknown id", engine.name());
            assert_eq!(
                reads[0].header("authorization"),
                Some(format!("Bearer {TEST_TOKEN}").as_str())
            );
            // At most once per id: more sends, no more reads.
            for _ in 0..5 {
                gw.send(P1, &text_body()).await;
            }
            assert_eq!(fake.count_health(P1), 1);
            let admin = gw
                .admin_get("/admin/accounts", Some(ADMIN))
                .await
                .text()
                .await
                .unwrap();
            let circuits = gw
                .admin_get("/admin/circuits", Some(ADMIN))
                .await
                .text()
                .await
                .unwrap();
            for (what, text) in [
                ("logs", gw.logs()),
                ("metrics", gw.metrics().await),
                ("accounts", admin),
                ("circuits", circuits),
            ] {
                assert!(!text.contains(TEST_TOKEN), "caller token in {what}");
            }
        }
    })
    .await
}

/// A failed read is retried only after `discovery.retry_after` (doubling), not per send.
#[tokio::test]
async fn failed_reads_back_off() {
    bounded(async {
        let fake = FakeCloud::start().await;
        let extra = format!(
            "[health]\naccess_token = \"{HEALTH_TOKEN}\"\n[discovery]\nretry_after = \"1s\"\n"
        );
        let gw = Gateway::start(&config(Engine::Relay, &fake.url(), &extra)).await;
        // Unknown node: the fake answers 404 code 100.
        for _ in 0..20 {
            gw.send(P1, &text_body()).await;
        }
        assert!(fake.wait_health(P1, 1, Duration::from_secs(5)).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(fake.count_health(P1), 1, "no retry before retry_after");
        // After it, the next send asks again; then it answers.
        fake.set_health(P1, health_json_phone(P1, W, "AVAILABLE"));
        tokio::time::sleep(Duration::from_millis(1000)).await;
        gw.send(P1, &text_body()).await;
        wait_mapping(&gw, P1, Some(W), Duration::from_secs(5)).await;
        assert_eq!(fake.count_health(P1), 2);
        assert!(gw
            .metrics()
            .await
            .contains("wa_breaker_discovery_lookups_total{result=\"not_found\"} 1"));
    })
    .await
}

/// The text without ANSI colour sequences.
fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut esc = false;
    for ch in s.chars() {
        match (esc, ch) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// 200 000 distinct random phone ids in sends, every one answerable by Health Status: the
/// learned map stays at its cap, and memory and `/metrics` stay bounded.
#[tokio::test]
async fn the_learned_map_cap_holds_under_200k_random_ids() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let fake = FakeCloud::start().await;
        fake.stop_recording();
        fake.health_for_any_phone(W);
        let extra = format!("[health]\naccess_token = \"{HEALTH_TOKEN}\"\n[discovery]\nmax_learned = 2000\nmax_concurrent = 8\n");
        let gw = Gateway::start(&config(Engine::Relay, &fake.url(), &extra)).await;
        let pid = gw.pid().unwrap();
        let rss_before = rss_kb(pid);
        let metrics_before = gw.metrics().await.len();
        let body = std::sync::Arc::new(TEXT_BODY.to_string());
        let n = 200_000u64;
        let tasks = 32u64;
        let t = Instant::now();
        let mut joins = Vec::new();
        for k in 0..tasks {
            let client = gw.client();
            let url = gw.url();
            let body = body.clone();
            joins.push(tokio::spawn(async move {
                let mut rng = k.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for _ in 0..n / tasks {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let phone = 100_000_000_000_000 + rng % 800_000_000_000_000;
                    let r = client
                        .post(format!("{url}/{TEST_VERSION}/{phone}/messages"))
                        .header("authorization", format!("Bearer {TEST_TOKEN}"))
                        .header("content-type", "application/json")
                        .body(body.as_str().to_owned())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                }
            }));
        }
        for j in joins {
            j.await.unwrap();
        }
        let took = t.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let learned = accounts(&gw).await.len();
        let metrics = gw.metrics().await;
        let rss_after = rss_kb(pid);
        let learned_metric = metrics
            .lines()
            .find(|l| l.starts_with("wa_breaker_mappings_learned_total{source=\"health\"}"))
            .unwrap_or_default()
            .to_string();
        eprintln!(
            "200k random ids in {took:?}: {learned} mappings held, {learned_metric}, RSS {rss_before} → {rss_after} kB, /metrics {metrics_before} → {} bytes",
            metrics.len()
        );
        assert!(learned <= 2000, "cap: {learned}");
        let total: f64 = learned_metric.rsplit(' ').next().unwrap_or("0").parse().unwrap_or(0.0);
        assert!(total > 2000.0, "the cap was reached and evicted ({total} learned)");
        assert!(metrics.len() < metrics_before + 16 * 1024, "/metrics grew: {} → {}", metrics_before, metrics.len());
        assert!(rss_after < rss_before + 64 * 1024, "RSS grew {rss_before} → {rss_after} kB");
    })
    .await
    .expect("test exceeded its time limit");
}
