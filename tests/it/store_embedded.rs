//! The embedded store (single instance): state survives a restart and a kill -9, a corrupt
//! store is a clear start-up error, and `--move-aside-corrupt-state` recovers.
//! Real gateway processes, a fake Cloud API, real sockets.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::json;

const PHONE: &str = "106540352242922";
const WABA: &str = "102290129340398";
const ADMIN: &str = "test-admin-token-0123456789";
const LIMIT: Duration = Duration::from_secs(90);

fn config(upstream: &str, state_dir: &str) -> String {
    format!(
        r#"
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
state_dir = "{state_dir}"
upstream = "{upstream}"
admin_token = "{ADMIN}"
log_level = "info,wa_breaker=debug"

[[accounts]]
waba_id = "{WABA}"
phone_number_ids = ["{PHONE}"]
"#
    )
}

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test exceeded its time limit");
}

async fn assert_blocked(gw: &Gateway, n: usize) {
    for _ in 0..n {
        let r = gw.send_str(PHONE, TEMPLATE_BODY).await;
        assert_eq!(r.status(), 403);
        assert_eq!(
            r.headers().get("x-wa-breaker").map(|v| v.to_str().unwrap()),
            Some("open"),
            "answered locally"
        );
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], 368);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_an_open_circuit_and_no_send_leaks() {
    bounded(async {
        let fake = FakeCloud::start().await;
        fake.on_phone(PHONE, Reply::blocked_368());
        let gw = Gateway::start(&config(&fake.url(), "{state_dir}")).await;

        // The trip: Meta answers 368 once, the gateway opens the circuit.
        let r = gw.send_str(PHONE, TEMPLATE_BODY).await;
        assert_eq!(r.status(), 403);
        assert!(r.headers().get("x-wa-breaker").is_none(), "upstream answer");
        assert_blocked(&gw, 3).await;
        assert_eq!(fake.count_for_phone(PHONE), 1);

        // Graceful restart, then Meta would accept again: the gateway must still block.
        fake.on_phone(PHONE, Reply::ok_send());
        let t = Instant::now();
        gw.restart().await;
        eprintln!("graceful restart took {:?}", t.elapsed());
        let (status, c) = gw.circuit(ADMIN, WABA).await;
        assert_eq!(status, 200);
        assert_eq!(c["state"], "open", "{c}");
        assert_eq!(c["source"], "send");
        assert_eq!(c["history"][0]["evidence"]["fbtrace_id"], FBTRACE_ID, "{c}");
        assert_blocked(&gw, 10).await;

        // And after a kill -9 (the trip is long committed).
        gw.kill9();
        gw.restart().await;
        assert_blocked(&gw, 10).await;
        assert_eq!(
            fake.count_for_phone(PHONE),
            1,
            "no send leaked after restart"
        );

        // Closing is persisted too.
        let r = gw
            .admin_post(&format!("/admin/circuits/{WABA}/close"), Some(ADMIN), None)
            .await;
        assert_eq!(r.status(), 200, "close acknowledged once durable");
        gw.kill9();
        gw.restart().await;
        let r = gw.send_str(PHONE, TEMPLATE_BODY).await;
        assert_eq!(r.status(), 200, "closed after restart: forwarded");
        assert_eq!(fake.count_for_phone(PHONE), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_a_burst_loses_no_acknowledged_open() {
    bounded(async {
        let fake = FakeCloud::start().await;
        let gw = Arc::new(Gateway::start(&config(&fake.url(), "{state_dir}")).await);
        let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let killed = Arc::new(AtomicBool::new(false));
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));

        // 16 clients open distinct WABAs as fast as they can; SIGKILL once 50 are acknowledged.
        let mut clients = Vec::new();
        for _ in 0..16 {
            let (gw, acked, killed, next) =
                (gw.clone(), acked.clone(), killed.clone(), next.clone());
            clients.push(tokio::spawn(async move {
                while !killed.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let waba = format!("{}", 200_000_000_000_000u64 + i as u64);
                    let url = format!("{}/admin/circuits/{waba}/open", gw.admin_url());
                    let r = gw
                        .client()
                        .post(&url)
                        .bearer_auth(ADMIN)
                        .json(&json!({"reason": "burst"}))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => acked.lock().unwrap().push(waba),
                        Ok(r) if r.status() == 202 => {} // applied, not (yet) durable: not acknowledged
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        Err(_) => break, // the process is gone
                    }
                }
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.lock().unwrap().len() < 50 {
            assert!(Instant::now() < deadline, "50 acknowledgements within 30 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        gw.kill9();
        killed.store(true, Ordering::SeqCst);
        for c in clients {
            c.await.unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        let sent = next.load(Ordering::SeqCst);
        eprintln!(
            "{} opens acknowledged of {sent} sent before kill -9",
            acked.len()
        );

        let t = Instant::now();
        gw.restart().await;
        eprintln!("restart after kill -9 took {:?}", t.elapsed());
        let r = gw.admin_get("/admin/circuits", Some(ADMIN)).await;
        let all: Vec<serde_json::Value> = r.json().await.unwrap();
        let open: std::collections::HashSet<String> = all
            .iter()
            .filter(|c| c["state"] == "open")
            .map(|c| c["waba_id"].as_str().unwrap().to_string())
            .collect();
        let lost: Vec<&String> = acked.iter().filter(|w| !open.contains(*w)).collect();
        assert!(
            lost.is_empty(),
            "acknowledged opens lost by kill -9: {lost:?}"
        );
        assert!(open.len() >= acked.len());
    })
    .await;
}

fn corrupt_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".corrupt-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_store_is_a_clear_error_and_can_be_moved_aside() {
    bounded(async {
        let fake = FakeCloud::start().await;
        let state = tempfile::tempdir().unwrap();
        let state_dir = state.path().display().to_string();
        let file = state.path().join("circuits.redb");
        let cfg = config(&fake.url(), &state_dir);

        let gw = Gateway::start(&cfg).await;
        let r = gw
            .admin_post(&format!("/admin/circuits/{WABA}/open"), Some(ADMIN), None)
            .await;
        assert_eq!(r.status(), 200);
        gw.stop().await;
        assert!(file.is_file(), "store file at {}", file.display());

        let cases = [
            ("garbage", 0u8),
            ("zeroed pages", 1u8),
            ("empty (0 bytes)", 2u8),
            ("truncated to half", 3u8),
        ];
        for (what, damage) in cases {
            let mut bytes = std::fs::read(&file).unwrap();
            match damage {
                0 => bytes.iter_mut().for_each(|b| *b = 0x5A),
                1 => {
                    // Keep the header, wipe everything after the first page.
                    let len = bytes.len();
                    bytes[4096.min(len)..].iter_mut().for_each(|b| *b = 0);
                }
                2 => bytes.clear(),
                _ => bytes.truncate(bytes.len() / 2),
            }
            std::fs::write(&file, &bytes).unwrap();
            let aside_before = corrupt_names(state.path()).len();

            let bad = Gateway::builder(&cfg).no_wait().start().await;
            let st = bad
                .wait_exit(Duration::from_secs(15))
                .await
                .unwrap_or_else(|| panic!("{what}: gateway kept running on a corrupt store"));
            assert!(!st.success(), "{what}: non-zero exit, got {st}");
            let logs = bad.logs();
            assert!(
                logs.contains(&file.display().to_string()),
                "{what}: names the file:\n{logs}"
            );
            assert!(logs.contains("corrupt"), "{what}: says corrupt:\n{logs}");
            assert!(
                logs.contains("--move-aside-corrupt-state"),
                "{what}: says how to recover:\n{logs}"
            );
            assert_eq!(
                corrupt_names(state.path()).len(),
                aside_before,
                "{what}: nothing moved without the flag"
            );
            assert_eq!(
                std::fs::metadata(&file).unwrap().len(),
                bytes.len() as u64,
                "{what}: the file is left as it was"
            );

            let t = Instant::now();
            let ok = Gateway::builder(&cfg)
                .arg("--move-aside-corrupt-state")
                .start()
                .await;
            eprintln!(
                "{what}: started with --move-aside-corrupt-state in {:?}",
                t.elapsed()
            );
            assert!(ok.logs().contains("MOVED ASIDE"), "{what}: logged loudly");
            let (_, c) = ok.circuit(ADMIN, WABA).await;
            assert_eq!(c["state"], "closed", "{what}: starts empty: {c}");
            // The fresh store works: open again, survive a restart.
            let r = ok
                .admin_post(&format!("/admin/circuits/{WABA}/open"), Some(ADMIN), None)
                .await;
            assert_eq!(r.status(), 200);
            ok.stop().await;
        }
        assert_eq!(
            corrupt_names(state.path()).len(),
            cases.len(),
            "every bad file kept aside"
        );
        let gw = Gateway::start(&cfg).await;
        let (_, c) = gw.circuit(ADMIN, WABA).await;
        assert_eq!(c["state"], "open");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_state_dir_is_a_clear_error() {
    bounded(async {
        let fake = FakeCloud::start().await;
        let tmp = tempfile::tempdir().unwrap();
        let not_a_dir = tmp.path().join("file");
        std::fs::write(&not_a_dir, b"x").unwrap();
        let state_dir = not_a_dir.join("state");
        let bad = Gateway::builder(&config(&fake.url(), &state_dir.display().to_string()))
            .no_wait()
            .start()
            .await;
        let st = bad.wait_exit(Duration::from_secs(15)).await.expect("exits");
        assert!(!st.success());
        let logs = bad.logs();
        assert!(logs.contains(&state_dir.display().to_string()), "{logs}");
        assert!(logs.contains("state_dir"), "{logs}");

        // Two gateways on one state_dir: the second is refused with the reason.
        let shared = tempfile::tempdir().unwrap();
        let cfg = config(&fake.url(), &shared.path().display().to_string());
        let _first = Gateway::start(&cfg).await;
        let second = Gateway::builder(&cfg).no_wait().start().await;
        let st = second
            .wait_exit(Duration::from_secs(15))
            .await
            .expect("exits");
        assert!(!st.success());
        assert!(second.logs().contains("own state_dir"), "{}", second.logs());
    })
    .await;
}
