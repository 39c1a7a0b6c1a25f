//! What a new user tripped on (issue 23's walk-through), each fixed and kept fixed: a
//! second gateway on a served address refuses to start (and `listen_shared` allows a
//! hand-over between instances sharing Redis); log files carry no colour codes; the process
//! exits right after `stopped`; `check-config` refuses what the start would refuse; a
//! webhook that widens a circuit counts as applied; log lines speak the configuration's
//! words. Real processes over real sockets.

use std::time::{Duration, Instant};

use crate::support::webhook::{change, entry, envelope, now_unix};
use crate::support::*;
use serde_json::json;

const W: &str = "102290129340398";
const P1: &str = "106540352242922";
const ADMIN: &str = "test-admin-token-0123456789";
const SECRET: &str = "walkthrough-app-secret";
const LIMIT: Duration = Duration::from_secs(120);

both_engines!(a_webhook_that_widens_a_circuit_counts_as_applied);

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test exceeded its time limit");
}

fn config(listen: &str, upstream: &str, extra: &str) -> String {
    format!(
        r#"listen = "{listen}"
admin_listen = "{{admin_listen}}"
state_dir = "{{state_dir}}"
upstream = "{upstream}"
admin_token = "{ADMIN}"
{extra}
[[accounts]]
waba_id = "{W}"
phone_number_ids = ["{P1}"]
"#
    )
}

/// The line both refusals print.
fn refused(addr: &str) -> String {
    format!("cannot listen on {addr} (listen): the address is in use by another process")
}

/// A second gateway on a `listen` another gateway serves (other admin port, other state
/// dir) used to start and take about half the sends (`SO_REUSEPORT`); now it refuses with
/// one clear line and the first keeps every send. So does a gateway on a port any other
/// server holds.
#[tokio::test]
async fn a_second_gateway_on_a_served_address_refuses_to_start() {
    bounded(async {
        let fake = FakeCloud::start().await;
        let a = Gateway::start(&config("{listen}", &fake.url(), "")).await;
        let addr = a.listen_addr().to_string();
        let b = Gateway::builder(&config(&addr, &fake.url(), ""))
            .no_wait()
            .start()
            .await;
        let status = b
            .wait_exit(Duration::from_secs(15))
            .await
            .expect("the second gateway must exit");
        assert!(!status.success());
        let log = b.logs();
        assert!(log.contains(&refused(&addr)), "{log}");
        assert!(
            log.contains("listen_shared = true"),
            "the way to hand over on purpose: {log}"
        );
        assert!(!log.contains("wa-breaker ready"), "{log}");
        // Every send still reaches the first gateway.
        for _ in 0..10 {
            let c = client();
            let r = c
                .post(format!("{}/v21.0/{P1}/messages", a.url()))
                .body(TEXT_BODY)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        assert_eq!(fake.count_for_phone(P1), 10);

        // Any other server on the port.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = other.local_addr().unwrap().to_string();
        let c = Gateway::builder(&config(&addr, &fake.url(), ""))
            .no_wait()
            .start()
            .await;
        let status = c.wait_exit(Duration::from_secs(15)).await.expect("exit");
        assert!(!status.success());
        assert!(c.logs().contains(&refused(&addr)), "{}", c.logs());
    })
    .await
}

/// `listen_shared = true` on both: a second instance sharing Redis starts on the same
/// address, knows the circuits the first tripped, and serves every send once the first has
/// stopped (a hand-over). Without `redis_url` the key is refused.
#[tokio::test]
async fn listen_shared_hands_over_between_instances_sharing_redis() {
    bounded(async {
        let out = Gateway::run_cli(&["check-config"], &[("WA_BREAKER_LISTEN_SHARED", "true")]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("listen_shared") && err.contains("redis_url"),
            "{err}"
        );

        let redis = RedisServer::start();
        let fake = FakeCloud::start().await;
        fake.on_phone(P1, Reply::blocked_368());
        let shared = format!("listen_shared = true\nredis_url = \"{}\"\n", redis.url());
        let a = Gateway::start(&config("{listen}", &fake.url(), &shared)).await;
        let addr = a.listen_addr().to_string();
        let b = Gateway::start(&config(&addr, &fake.url(), &shared)).await;

        let r = a.send(P1, &text_body()).await;
        assert_eq!(r.status(), 403);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, c) = b.circuit(ADMIN, W).await;
            if c["state"] == "open" {
                break;
            }
            assert!(Instant::now() < deadline, "B never heard of the trip: {c}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A hands over: after it stops, B answers every send on the address. (B's config
        // names the address itself, so its launcher's `url()` does not know it.)
        let shared_url = a.url();
        assert!(a.stop().await.success());
        for _ in 0..10 {
            let r = client()
                .post(format!("{shared_url}/v21.0/{P1}/messages"))
                .body(TEXT_BODY)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403);
            assert_eq!(r.headers().get("x-wa-breaker").unwrap(), "open");
        }
        assert!(b.is_running());
        assert_eq!(fake.count_for_phone(P1), 1, "one send reached Meta");
    })
    .await
}

/// Log lines written to a file carry no terminal colour codes.
#[tokio::test]
async fn a_log_file_has_no_colour_codes() {
    bounded(async {
        let fake = FakeCloud::start().await;
        fake.on_phone(P1, Reply::blocked_368());
        let gw = Gateway::start(&config("{listen}", &fake.url(), "")).await;
        assert_eq!(gw.send(P1, &text_body()).await.status(), 403);
        assert!(gw.stop().await.success());
        let log = gw.logs();
        assert!(
            log.contains("wa-breaker ready") && log.contains("circuit transition"),
            "{log}"
        );
        assert!(
            !log.contains('\x1b'),
            "escape codes in the log file:\n{log:?}"
        );
    })
    .await
}

/// Log lines speak the configuration's words and name what they are about (issue 23):
/// `mode=enforce` and `scope=all_sends`, not Rust's `Enforce`/`AllSends`; a phone number's
/// transition names the phone number and no empty `waba_id=`; and circuits the store kept
/// across a restart are not logged again as fresh `closed → open` transitions.
#[tokio::test]
async fn log_lines_use_the_configs_words_and_a_restart_is_not_a_transition() {
    bounded(async {
        let fake = FakeCloud::start().await;
        let unmapped = "106540352242999";
        fake.on_phone(unmapped, Reply::blocked_368());
        fake.on_phone(P1, Reply::blocked_368());
        let gw = Gateway::start(&config("{listen}", &fake.url(), "")).await;
        assert_eq!(gw.send(unmapped, &text_body()).await.status(), 403);
        assert_eq!(gw.send(P1, &text_body()).await.status(), 403);
        let log = gw.logs();
        assert!(log.contains("mode=enforce"), "{log}");
        assert!(
            !log.contains("Enforce") && !log.contains("AllSends"),
            "{log}"
        );
        let transitions: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("circuit transition"))
            .collect();
        assert_eq!(transitions.len(), 2, "{log}");
        for l in &transitions {
            assert!(l.contains("scope=all_sends"), "{l}");
            assert!(
                !l.contains("waba_id= ") && !l.contains("waba_id=\"\""),
                "{l}"
            );
        }
        let phone_line = transitions
            .iter()
            .find(|l| l.contains(&format!("phone_number_id={unmapped}")))
            .unwrap_or_else(|| panic!("the phone number's transition names it: {log}"));
        assert!(!phone_line.contains("waba_id"), "{phone_line}");
        assert!(transitions
            .iter()
            .any(|l| l.contains(&format!("waba_id={W}"))));

        gw.kill9();
        let before = gw.logs().len();
        gw.restart().await;
        let after = gw.logs()[before..].to_string();
        assert!(after.contains("wa-breaker ready"), "{after}");
        assert!(
            !after.contains("circuit transition"),
            "restored circuits are not fresh transitions:\n{after}"
        );
        // Still open, and answered locally.
        assert_eq!(
            gw.send(P1, &text_body()).await.headers()["x-wa-breaker"],
            "open"
        );
        gw.stop().await;
    })
    .await
}

/// The process exits right after logging `stopped` (it used to linger 1.2–2.0 s), with
/// everything that can still be in flight at shutdown busy: health polls of an open
/// circuit, a notification sink that never answers, discovery reads.
#[tokio::test]
async fn exit_follows_stopped_at_once() {
    bounded(async {
        let fake = FakeCloud::start().await;
        fake.on_phone(P1, Reply::blocked_368());
        fake.health_for_any_phone(W);
        let sink = FakeCloud::start_webhook_sink().await;
        sink.hold();
        let extra = format!(
            r#"[health]
access_token = "health-token-0123456789"
interval = "1s"
[discovery]
use_caller_token = true
[[notify]]
kind = "webhook"
url = "{}/hook"
timeout = "30s"
"#,
            sink.url()
        );
        let gw = Gateway::start(&config("{listen}", &fake.url(), &extra)).await;
        assert_eq!(gw.send(P1, &text_body()).await.status(), 403);
        // An unmapped number: a discovery read with the caller's token.
        gw.send("106540352242000", &text_body()).await;
        assert!(
            sink.wait_count(1, Duration::from_secs(5)).await,
            "the sink holds a notification"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;

        gw.signal("TERM");
        let mut stopped_at = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        let exited_at = loop {
            if stopped_at.is_none() && gw.logs().contains("INFO wa_breaker: stopped") {
                stopped_at = Some(Instant::now());
            }
            if gw.exit_status().is_some() {
                break Instant::now();
            }
            assert!(Instant::now() < deadline, "no exit:\n{}", gw.logs());
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        sink.release();
        let stopped_at = stopped_at.unwrap_or(exited_at);
        let linger = exited_at.duration_since(stopped_at);
        assert!(
            gw.logs().contains("stopped"),
            "the log says stopped:\n{}",
            gw.logs()
        );
        assert!(
            linger < Duration::from_millis(500),
            "the process lingered {linger:?} after logging `stopped`"
        );
        assert!(gw.exit_status().unwrap().success());
    })
    .await
}

/// `check-config` refuses what the start refuses, with messages that say what to write.
#[test]
fn check_config_refuses_what_the_start_would() {
    // An upstream port out of range.
    let tc = write_config(
        "listen = \"{listen}\"\nadmin_listen = \"{admin_listen}\"\nstate_dir = \"{state_dir}\"\nupstream = \"http://127.0.0.1:99999\"\n",
    );
    for args in [vec!["check-config", "--config"], vec!["--config"]] {
        let mut a = args.clone();
        let p = tc.path_str();
        a.push(&p);
        let out = Gateway::run_cli(&a, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("`upstream`") && err.contains("99999") && err.contains("1-65535"),
            "{args:?}: {err}"
        );
    }

    // A host name where an address belongs: the value echoed, the addresses meant.
    let out = Gateway::run_cli(
        &["check-config"],
        &[("WA_BREAKER_LISTEN", "localhost:8080")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "\"localhost:8080\"",
        "127.0.0.1:8080",
        "0.0.0.0:8080",
        "[::]:8080",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    let tc = write_config("listen = \"localhost:8080\"\n");
    let out = Gateway::run_cli(&["check-config", "--config", &tc.path_str()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`listen`") && err.contains("127.0.0.1:8080"),
        "{err}"
    );

    // A corrupt state store stops the start: check-config says so and exits non-zero.
    let tc = write_config(
        "listen = \"{listen}\"\nadmin_listen = \"{admin_listen}\"\nstate_dir = \"{state_dir}\"\n",
    );
    let store = tc.dir.path().join("state").join("circuits.redb");
    std::fs::write(&store, b"this is not a redb database").unwrap();
    let out = Gateway::run_cli(&["check-config", "--config", &tc.path_str()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("would not start") && err.contains("--move-aside-corrupt-state"),
        "{err}"
    );
    assert!(
        err.contains(&store.display().to_string()),
        "names the file: {err}"
    );
    assert_eq!(
        std::fs::read(&store).unwrap(),
        b"this is not a redb database",
        "check-config changed the store"
    );
}

/// A store in use by the running gateway is not an error for `check-config`.
#[tokio::test]
async fn check_config_of_a_running_gateway_is_ok() {
    bounded(async {
        let fake = FakeCloud::start().await;
        let gw = Gateway::start(&config("{listen}", &fake.url(), "")).await;
        let cfg = gw.config_path().display().to_string();
        let out = tokio::task::spawn_blocking(move || {
            Gateway::run_cli(&["check-config", "--config", &cfg], &[])
        })
        .await
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert!(err.contains("config OK") && err.contains("in use"), "{err}");
    })
    .await
}

fn messages_webhook(waba: &str, phone: &str) -> Vec<u8> {
    let value = json!({"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone},
        "statuses": [{"id": "wamid.X", "status": "delivered", "timestamp": now_unix().to_string(), "recipient_id": "15551234567"}]});
    serde_json::to_vec(&envelope(vec![entry(
        waba,
        now_unix(),
        vec![change("messages", value)],
    )]))
    .unwrap()
}

/// `wa_breaker_webhooks_total{result="applied"}` counts a delivery whose mapping widened a
/// phone number's circuit to its WABA (it stayed 0).
async fn a_webhook_that_widens_a_circuit_counts_as_applied(engine: Engine) {
    bounded(async {
        let fake = FakeCloud::start().await;
        let phone = "106540352242955";
        fake.on_phone(phone, Reply::blocked_368());
        let gw = Gateway::start(&format!(
            "{}\nlisten = \"{{listen}}\"\nadmin_listen = \"{{admin_listen}}\"\nstate_dir = \"{{state_dir}}\"\nupstream = \"{}\"\nadmin_token = \"{ADMIN}\"\n[webhook]\napp_secret = \"{SECRET}\"\n",
            engine.config_line(),
            fake.url()
        ))
        .await;
        assert_eq!(gw.send(phone, &text_body()).await.status(), 403);
        let (_, c) = gw.circuit(ADMIN, &format!("phone:{phone}")).await;
        assert_eq!(c["state"], "open", "{c}");
        let before = metric(&gw.metrics().await, "wa_breaker_webhooks_total", &[("result", "applied")])
            .unwrap_or(0.0);

        let r = gw.webhook_post("/webhook", SECRET, &messages_webhook(W, phone)).await;
        assert_eq!(r.status(), 200);
        let (_, c) = gw.circuit(ADMIN, W).await;
        assert_eq!(c["state"], "open", "widened to the WABA: {c}");
        let after = metric(&gw.metrics().await, "wa_breaker_webhooks_total", &[("result", "applied")])
            .unwrap_or(0.0);
        assert_eq!(after - before, 1.0, "{}", engine.name());

        // The same delivery again changes nothing and counts nothing.
        let r = gw.webhook_post("/webhook", SECRET, &messages_webhook(W, phone)).await;
        assert_eq!(r.status(), 200);
        let again = metric(&gw.metrics().await, "wa_breaker_webhooks_total", &[("result", "applied")])
            .unwrap_or(0.0);
        assert_eq!(again, after);
    })
    .await
}

/// Every `(#anchor)` link in the README (the table of contents, cross references) names a
/// heading that exists, slugged as GitHub does.
#[test]
fn the_readmes_own_links_resolve() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let mut anchors = std::collections::HashSet::new();
    let mut fenced = false;
    for line in readme.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        anchors.insert(slug);
    }
    assert!(anchors.contains("contents"), "a table of contents");
    let mut missing = Vec::new();
    for (i, _) in readme.match_indices("](#") {
        let rest = &readme[i + 3..];
        let link = &rest[..rest.find(')').unwrap()];
        if !anchors.contains(link) {
            missing.push(link.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "README links to missing sections: {missing:?}"
    );
}
