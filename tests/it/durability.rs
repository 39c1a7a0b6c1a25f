//! A block is never silently forgotten (real processes, real disks): a tripping answer the
//! app received survives a kill -9, the embedded store heals after a full disk, times from
//! the future cannot pin a circuit, a newer close that arrives first is remembered, and
//! signed floods of notes do not grow state.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{json, Value};

const WABA: &str = "102290129340398";
const PHONE: &str = "106540352242922";
const ADMIN: &str = "test-admin-token-0123456789";
const SECRET: &str = "durability-app-secret";

fn config(engine: Engine, upstream: &str, extra: &str) -> String {
    format!(
        r#"
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
state_dir = "{{state_dir}}"
upstream = "{upstream}"
admin_token = "{ADMIN}"
{engine}
{extra}

[webhook]
app_secret = "{SECRET}"
max_body = 4194304

[[accounts]]
waba_id = "{WABA}"
phone_number_ids = ["{PHONE}"]
"#,
        engine = engine.config_line()
    )
}

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(240), f)
        .await
        .expect("test exceeded its time limit");
}

async fn json_of(r: reqwest::Response) -> Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

/// 20 rounds: a send trips the circuit, the app reads the whole 403/368, the process is
/// killed at once, it restarts: the next send is answered locally, none reaches Meta.
async fn a_trip_the_app_received_survives_kill9(engine: Engine) {
    bounded(async {
        let fake = FakeCloud::start().await;
        fake.on_phone(PHONE, Reply::blocked_368());
        let gw = Gateway::builder(&config(engine, &fake.url(), ""))
            .start()
            .await;
        let close = format!("/admin/circuits/{WABA}/close");
        let mut leaks = Vec::new();
        for round in 0..20 {
            let r = gw.admin_post(&close, Some(ADMIN), None).await;
            assert_eq!(r.status(), 200, "round {round}: close");
            let r = gw.send_str(PHONE, TEMPLATE_BODY).await;
            assert_eq!(r.status(), 403, "round {round}");
            assert!(
                r.headers().get("x-wa-breaker").is_none(),
                "round {round}: Meta's own answer"
            );
            assert_eq!(r.bytes().await.unwrap(), BLOCKED_368_BODY.as_bytes());
            gw.kill9();
            gw.restart().await;
            let before = fake.count_for_phone(PHONE);
            let r = gw.send_str(PHONE, TEMPLATE_BODY).await;
            if r.headers().get("x-wa-breaker").is_none() || fake.count_for_phone(PHONE) != before {
                leaks.push(round);
            }
        }
        assert!(
            leaks.is_empty(),
            "{engine:?}: sends forwarded after restart in rounds {leaks:?}"
        );
    })
    .await;
}

/// 16 clients send to 100 blocked WABAs as fast as they can; the process is killed once 50
/// of them have answered 403 to a client. After the restart, each of those WABAs answers
/// locally: not one send reaches Meta.
async fn kill9_during_a_burst_of_trips_loses_no_block_a_client_heard_of(engine: Engine) {
    bounded(async {
        let fake = FakeCloud::start().await;
        fake.set_default(Reply::blocked_368());
        let n = 100u64;
        let waba = |i: u64| (300_000_000_000_000 + i).to_string();
        let phone = |i: u64| (400_000_000_000_000 + i).to_string();
        let accounts: String = (0..n)
            .map(|i| {
                format!(
                    "[[accounts]]\nwaba_id = \"{}\"\nphone_number_ids = [\"{}\"]\n",
                    waba(i),
                    phone(i)
                )
            })
            .collect();
        let cfg = format!("{}\n{accounts}", config(engine, &fake.url(), ""));
        let gw = Arc::new(Gateway::builder(&cfg).start().await);
        let heard: Arc<Mutex<HashSet<u64>>> = Arc::default();
        let killed = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for c in 0..16u64 {
            let (gw, heard, killed) = (gw.clone(), heard.clone(), killed.clone());
            clients.push(tokio::spawn(async move {
                let mut i = c;
                while !killed.load(Ordering::SeqCst) {
                    i = (i * 7 + 13) % n;
                    let url = format!("{}/v21.0/{}/messages", gw.url(), phone(i));
                    let Ok(r) = gw.client().post(&url).body(TEMPLATE_BODY).send().await else {
                        break; // the process is gone
                    };
                    let status = r.status();
                    // Only an answer read to its end counts as heard.
                    if r.bytes().await.is_ok() && status == 403 {
                        heard.lock().unwrap().insert(i);
                    }
                }
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while heard.lock().unwrap().len() < 50 {
            assert!(Instant::now() < deadline, "50 WABAs blocked within 60 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        gw.kill9();
        killed.store(true, Ordering::SeqCst);
        for c in clients {
            c.await.unwrap();
        }
        let heard = heard.lock().unwrap().clone();
        gw.restart().await;
        let before = fake.count();
        let mut forwarded = Vec::new();
        for i in &heard {
            let r = gw.send_str(&phone(*i), TEMPLATE_BODY).await;
            if r.headers().get("x-wa-breaker").is_none() {
                forwarded.push(waba(*i));
            }
        }
        eprintln!(
            "{engine:?}: {} WABAs answered 403 before kill -9",
            heard.len()
        );
        assert!(
            forwarded.is_empty(),
            "{engine:?}: blocks a client heard of, forgotten: {forwarded:?}"
        );
        assert_eq!(fake.count(), before, "no send reached Meta");
    })
    .await;
}

/// The metric's value on `gw`.
async fn gauge(gw: &Gateway, name: &str) -> Option<f64> {
    metric(&gw.metrics().await, name, &[])
}

/// A small tmpfs the test mounts; `None` (and a clear message) where mounting is impossible.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("wab-tmpfs-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status();
        match st {
            Ok(s) if s.success() => Some(Tmpfs(dir)),
            other => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs at {} ({other:?}): the disk-full test needs root (CI and this machine have it)",
                    dir.display()
                );
                let _ = std::fs::remove_dir(&dir);
                None
            }
        }
    }

    /// Fills the file system to the last byte with `filler`.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let small = [0u8; 512];
        while f.write_all(&small).is_ok() {}
        while f.write_all(&[0u8]).is_ok() {}
        let _ = f.flush();
    }

    fn free(&self) {
        let _ = std::fs::remove_file(self.0.join("filler"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The store on a tmpfs that fills up: the gateway keeps answering, says it is not durable
/// (gauge, 202, the tripping answer waits then goes), and once space is back it heals by
/// itself: both the trip made during the outage and a later open survive a kill -9.
async fn a_full_disk_heals_and_forgets_nothing(engine: Engine) {
    bounded(async {
        let Some(fs) = Tmpfs::mount("8m") else { return };
        let state = fs.0.join("state");
        let fake = FakeCloud::start().await;
        fake.on_phone(PHONE, Reply::blocked_368());
        let other = "102290129340400";
        let cfg =
            config(engine, &fake.url(), "").replace("{state_dir}", &state.display().to_string());
        let gw = Gateway::builder(&cfg).start().await;
        assert_eq!(gauge(&gw, "wa_breaker_store_durable").await, Some(1.0));

        fs.fill();
        // The trip: its answer waits up to 1 s for the commit, then goes anyway.
        let t = Instant::now();
        let r = gw.send_str(PHONE, TEMPLATE_BODY).await;
        assert_eq!(r.status(), 403);
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(900),
            "the tripping answer waited: {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(5),
            "but not for long: {waited:?}"
        );
        // Later sends are answered locally (memory), none reaches Meta.
        let r = gw.send_str(PHONE, TEMPLATE_BODY).await;
        assert_eq!(r.headers()["x-wa-breaker"], "open");
        assert_eq!(fake.count_for_phone(PHONE), 1);
        let r = gw
            .admin_post(&format!("/admin/circuits/{other}/open"), Some(ADMIN), None)
            .await;
        assert_eq!(r.status(), 202, "not durable yet");
        let body = json_of(r).await;
        assert_eq!(body["durable"], false);
        assert!(body["warning"].as_str().unwrap().contains("not yet stored"));
        assert_eq!(gauge(&gw, "wa_breaker_store_durable").await, Some(0.0));
        let m = gw.metrics().await;
        assert!(metric(&m, "wa_breaker_store_commit_failures_total", &[]).unwrap() >= 1.0);
        assert!(metric(&m, "wa_breaker_ack_timeouts_total", &[]).unwrap() >= 1.0);

        fs.free();
        let t = Instant::now();
        loop {
            if gauge(&gw, "wa_breaker_store_durable").await == Some(1.0) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(15), "healed within 15 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "{engine:?}: store healed {:?} after the disk was freed",
            t.elapsed()
        );
        let third = "102290129340401";
        let r = gw
            .admin_post(&format!("/admin/circuits/{third}/open"), Some(ADMIN), None)
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(json_of(r).await["durable"], true);
        let logs = gw.logs();
        assert_eq!(
            logs.matches("cannot commit to the state store").count(),
            1,
            "one line per outage"
        );
        assert!(logs.contains("state store writable again"));

        gw.kill9();
        gw.restart().await;
        for w in [WABA, other, third] {
            let (_, c) = gw.circuit(ADMIN, w).await;
            assert_eq!(c["state"], "open", "{w} survived: {c}");
        }
        let r = gw.send_str(PHONE, TEMPLATE_BODY).await;
        assert_eq!(r.headers()["x-wa-breaker"], "open");
        assert_eq!(fake.count_for_phone(PHONE), 1);
        gw.stop().await;
    })
    .await;
}

/// The exchange's order, the same on both engines: the upstream permit goes back when the
/// answer is judged, not when the trip it caused is durable, and the outcome is recorded
/// after the acknowledgement. With one permit and a full disk (each trip's answer waits out
/// the 1 s acknowledgement bound), a send of another WABA queued behind the tripping send is
/// forwarded and answered while the tripping answer still waits; until that answer goes, it
/// is not counted.
async fn the_permit_goes_back_at_judgement_and_the_outcome_is_counted_after_the_ack(
    engine: Engine,
) {
    bounded(async {
        let Some(fs) = Tmpfs::mount("8m") else { return };
        let state = fs.0.join("state");
        let fake = FakeCloud::start().await;
        fake.on_phone(PHONE, Reply::blocked_368());
        let (waba2, phone2) = ("102290129340500", "106540352242500");
        let cfg = config(engine, &fake.url(), "upstream_concurrency = 1")
            .replace("{state_dir}", &state.display().to_string())
            + &format!(
                "\n[[accounts]]\nwaba_id = \"{waba2}\"\nphone_number_ids = [\"{phone2}\"]\n"
            );
        let gw = Gateway::builder(&cfg).start().await;
        let forwarded = |m: &str| {
            metric(m, "wa_breaker_requests_total", &[("outcome", "forwarded")]).unwrap_or(0.0)
        };
        fs.fill();
        fake.hold();
        let tripping = async {
            let r = gw.send_str(PHONE, TEXT_BODY).await;
            (r.status().as_u16(), Instant::now())
        };
        let queued = async {
            assert!(fake.wait_in_flight(1, Duration::from_secs(10)).await);
            let (r, ()) = tokio::join!(gw.send_str(phone2, TEXT_BODY), async {
                // The second send is queued for the one permit by now; then Meta answers.
                tokio::time::sleep(Duration::from_millis(300)).await;
                fake.release();
            });
            let done = Instant::now();
            // The tripping answer is still waiting for its acknowledgement: only this send
            // is counted yet.
            let m = gw.metrics().await;
            (r.status().as_u16(), done, forwarded(&m))
        };
        let ((a_status, a_done), (b_status, b_done, counted)) = tokio::join!(tripping, queued);
        assert_eq!(a_status, 403);
        assert_eq!(b_status, 200);
        assert!(
            b_done < a_done,
            "{engine:?}: the queued send was answered while the trip waited for durability"
        );
        assert_eq!(
            counted, 1.0,
            "{engine:?}: the tripping send is counted once it settles"
        );
        assert_eq!(forwarded(&gw.metrics().await), 2.0);
        assert_eq!(fake.count_for_phone(phone2), 1);
        fs.free();
        gw.stop().await;
    })
    .await;
}

/// SIGTERM while the store cannot commit: the exit status says the state is not durable.
async fn sigterm_with_uncommitted_changes_exits_non_zero(engine: Engine) {
    bounded(async {
        let Some(fs) = Tmpfs::mount("8m") else { return };
        let state = fs.0.join("state");
        let fake = FakeCloud::start().await;
        let cfg =
            config(engine, &fake.url(), "").replace("{state_dir}", &state.display().to_string());
        let gw = Gateway::builder(&cfg).start().await;
        fs.fill();
        let r = gw
            .admin_post(&format!("/admin/circuits/{WABA}/open"), Some(ADMIN), None)
            .await;
        assert_eq!(r.status(), 202);
        let st = gw.stop().await;
        assert!(!st.success(), "exit status {st:?}");
        assert!(
            gw.logs().contains("not committed to the state store"),
            "{}",
            gw.logs()
        );
        fs.free();
    })
    .await;
}

async fn post_webhook(gw: &Gateway, body: &Value) -> u16 {
    let bytes = serde_json::to_vec(body).unwrap();
    gw.webhook_post("/webhook", SECRET, &bytes)
        .await
        .status()
        .as_u16()
}

/// A DISABLE dated in the year 2100 opens the circuit at now + max_clock_skew (marked as
/// clamped), an operator's close takes effect, the same event delivered again changes
/// nothing, and a REINSTATE dated after the bound closes a circuit it reopened.
async fn a_future_dated_event_cannot_pin_a_circuit(engine: Engine) {
    bounded(async {
        let fake = FakeCloud::start().await;
        let gw = Gateway::builder(&config(engine, &fake.url(), "max_clock_skew = \"2s\""))
            .start()
            .await;
        let y2100 = 4_102_444_800;
        let disable = account_update(WABA, y2100, disabled("DISABLE"));
        assert_eq!(post_webhook(&gw, &disable).await, 200);
        let (_, c) = gw.circuit(ADMIN, WABA).await;
        assert_eq!(c["state"], "open");
        let last = c["history"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["clamped_from"], "2100-01-01T00:00:00Z", "{last}");
        let ordered: chrono::DateTime<chrono::Utc> =
            c["updated_at"].as_str().unwrap().parse().unwrap();
        assert!(
            ordered < chrono::Utc::now() + chrono::Duration::seconds(3),
            "{ordered}"
        );

        let r = gw
            .admin_post(&format!("/admin/circuits/{WABA}/close"), Some(ADMIN), None)
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(json_of(r).await["state"], "closed");
        assert_eq!(gw.send_str(PHONE, TEMPLATE_BODY).await.status(), 200);

        // Meta delivers the same event again: recognised, nothing reopens.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(post_webhook(&gw, &disable).await, 200);
        assert_eq!(gw.circuit(ADMIN, WABA).await.1["state"], "closed");

        // An open by the operator, then a REINSTATE dated past the clamp bound closes it.
        let r = gw
            .admin_post(&format!("/admin/circuits/{WABA}/open"), Some(ADMIN), None)
            .await;
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let reinstate = account_update(WABA, now_unix(), disabled("REINSTATE"));
        assert_eq!(post_webhook(&gw, &reinstate).await, 200);
        assert_eq!(gw.circuit(ADMIN, WABA).await.1["state"], "closed");
    })
    .await;
}

/// Meta redelivers for days: a REINSTATE that arrives before an older DISABLE (for a
/// circuit that never opened) is remembered, so the DISABLE opens nothing — also after a
/// restart.
async fn a_newer_close_that_arrives_first_is_remembered(engine: Engine) {
    bounded(async {
        let fake = FakeCloud::start().await;
        let gw = Gateway::builder(&config(engine, &fake.url(), ""))
            .start()
            .await;
        let t = now_unix();
        let reinstate = account_update(WABA, t, disabled("REINSTATE"));
        let disable = account_update(WABA, t - 60, disabled("DISABLE"));
        assert_eq!(post_webhook(&gw, &reinstate).await, 200);
        let (_, c) = gw.circuit(ADMIN, WABA).await;
        assert_eq!(c["state"], "closed");
        assert_eq!(
            c["history"].as_array().unwrap().len(),
            1,
            "the close is on record: {c}"
        );
        gw.restart().await;
        assert_eq!(post_webhook(&gw, &disable).await, 200);
        assert_eq!(gw.circuit(ADMIN, WABA).await.1["state"], "closed");
        assert_eq!(gw.send_str(PHONE, TEMPLATE_BODY).await.status(), 200);
    })
    .await;
}

/// A signed batch of 10 000 notes (ACCOUNT_VIOLATION without a health token) for WABAs the gateway does not know
/// creates no circuit and no metric series.
async fn a_flood_of_notes_for_unknown_wabas_grows_nothing(engine: Engine) {
    bounded(async {
        let fake = FakeCloud::start().await;
        let gw = Gateway::builder(&config(engine, &fake.url(), ""))
            .start()
            .await;
        let before_metrics = gw.metrics().await;
        let t = now_unix();
        let entries: Vec<Value> = (0..10_000u64)
            .map(|i| {
                entry(
                    &(500_000_000_000_000 + i).to_string(),
                    t,
                    vec![change("account_update", violation("ADULT"))],
                )
            })
            .collect();
        assert_eq!(post_webhook(&gw, &envelope(entries)).await, 200);
        let all = json_of(gw.admin_get("/admin/circuits", Some(ADMIN)).await).await;
        assert_eq!(all, json!([]), "no circuit");
        let after_metrics = gw.metrics().await;
        let series = |m: &str| m.lines().filter(|l| l.contains("waba_id=")).count();
        assert_eq!(series(&after_metrics), series(&before_metrics));
        assert!(
            after_metrics.len() < before_metrics.len() + 512,
            "/metrics {} -> {} bytes",
            before_metrics.len(),
            after_metrics.len()
        );
        assert_eq!(
            metric(
                &after_metrics,
                "wa_breaker_events_ignored_total",
                &[("reason", "unknown_waba")]
            ),
            Some(10_000.0)
        );
        // A note for a configured WABA is still recorded.
        let note = account_update(WABA, t, violation("ADULT"));
        assert_eq!(post_webhook(&gw, &note).await, 200);
        let (_, c) = gw.circuit(ADMIN, WABA).await;
        assert_eq!(c["history"].as_array().unwrap().len(), 1, "{c}");
        assert_eq!(
            gw.logs().matches("events not recorded").count(),
            1,
            "summarised, not 10 000 lines"
        );
    })
    .await;
}

/// `GET /admin/circuits` filters by state and pages.
async fn the_circuit_list_filters_and_pages(engine: Engine) {
    bounded(async {
        let fake = FakeCloud::start().await;
        let gw = Gateway::builder(&config(engine, &fake.url(), ""))
            .start()
            .await;
        for i in 0..5 {
            let w = format!("10229012934040{i}");
            let op = if i % 2 == 0 { "open" } else { "close" };
            let r = gw
                .admin_post(&format!("/admin/circuits/{w}/{op}"), Some(ADMIN), None)
                .await;
            assert_eq!(r.status(), 200);
        }
        let ids = |v: Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|c| c["waba_id"].as_str().unwrap().to_string())
                .collect()
        };
        let get = |q: &'static str| {
            let gw = &gw;
            async move {
                gw.admin_get(&format!("/admin/circuits{q}"), Some(ADMIN))
                    .await
            }
        };
        let open = ids(json_of(get("?state=open").await).await);
        assert_eq!(
            open,
            ["102290129340400", "102290129340402", "102290129340404"]
        );
        assert_eq!(
            ids(json_of(get("?state=closed").await).await).len(),
            2,
            "closes are remembered"
        );
        let page1 = ids(json_of(get("?limit=2").await).await);
        assert_eq!(page1, ["102290129340400", "102290129340401"]);
        let page2 = ids(json_of(get("?limit=2&after=102290129340401").await).await);
        assert_eq!(page2, ["102290129340402", "102290129340403"]);
        for bad in [
            "?state=ajar",
            "?limit=0",
            "?limit=x",
            "?after=abc",
            "?colour=red",
        ] {
            assert_eq!(get(bad).await.status(), 400, "{bad}");
        }
    })
    .await;
}

both_engines!(
    a_trip_the_app_received_survives_kill9,
    kill9_during_a_burst_of_trips_loses_no_block_a_client_heard_of,
    a_full_disk_heals_and_forgets_nothing,
    the_permit_goes_back_at_judgement_and_the_outcome_is_counted_after_the_ack,
    sigterm_with_uncommitted_changes_exits_non_zero,
    a_future_dated_event_cannot_pin_a_circuit,
    a_newer_close_that_arrives_first_is_remembered,
    a_flood_of_notes_for_unknown_wabas_grows_nothing,
    the_circuit_list_filters_and_pages,
);

/// Two replicas on one Redis: a REINSTATE on A, then an older DISABLE on B: both stay closed.
#[tokio::test]
async fn a_newer_close_is_remembered_across_replicas() {
    bounded(async {
        let redis = RedisServer::start();
        let fake = FakeCloud::start().await;
        let cfg = config(
            Engine::Relay,
            &fake.url(),
            &format!(
                "redis_url = \"{}\"\nredis_retry_max = \"300ms\"",
                redis.url()
            ),
        );
        let a = Gateway::start(&cfg).await;
        let b = Gateway::start(&cfg).await;
        let t = now_unix();
        assert_eq!(
            post_webhook(&a, &account_update(WABA, t, disabled("REINSTATE"))).await,
            200
        );
        // B learns of the close through Redis.
        let start = Instant::now();
        while b.circuit(ADMIN, WABA).await.0 != 200 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "B has the closed record"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            post_webhook(&b, &account_update(WABA, t - 60, disabled("DISABLE"))).await,
            200
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        for gw in [&a, &b] {
            assert_eq!(gw.circuit(ADMIN, WABA).await.1["state"], "closed");
            assert_eq!(gw.send_str(PHONE, TEMPLATE_BODY).await.status(), 200);
        }
    })
    .await;
}
