//! Transition notifications over real sockets: two gateway processes sharing a real
//! redis-server announce each transition once (by the replica that made it), a sink that is
//! down gets the queued notifications when it returns, webhook signatures verify, filters
//! hold, a hanging sink does not delay sends or the other sinks, and sink URLs never show.

use std::time::{Duration, Instant};

use crate::support::*;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

const PHONE: &str = "106540352242922";
const WABA: &str = "102290129340398";
const OTHER_PHONE: &str = "106540352242999";
const OTHER_WABA: &str = "102290129340111";
/// A phone number no circuit covers: its sends are forwarded.
const FREE_PHONE: &str = "106540352242000";
const ADMIN: &str = "test-admin-token-0123456789";
const SECRET: &str = "notify-secret-0123456789";
const LIMIT: Duration = Duration::from_secs(120);

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test exceeded its time limit");
}

/// A gateway config with `sinks` (TOML `[[notify]]` tables) and optional Redis.
fn config(upstream: &str, redis_url: Option<&str>, sinks: &str) -> String {
    let redis = redis_url
        .map(|u| {
            format!("redis_url = \"{u}\"\nredis_prefix = \"n\"\nredis_retry_max = \"300ms\"\n")
        })
        .unwrap_or_default();
    format!(
        r#"
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
state_dir = "{{state_dir}}"
upstream = "{upstream}"
admin_token = "{ADMIN}"
log_level = "info,wa_breaker=debug"
{redis}
[[accounts]]
waba_id = "{WABA}"
phone_number_ids = ["{PHONE}"]

[[accounts]]
waba_id = "{OTHER_WABA}"
phone_number_ids = ["{OTHER_PHONE}"]

{sinks}
"#
    )
}

fn webhook_sink(url: &str, extra: &str) -> String {
    format!(
        "[[notify]]\nkind = \"webhook\"\nurl = \"{url}/hooks/wa?token=SINKTOKEN\"\nsecret = \"{SECRET}\"\nretry_max = \"200ms\"\n{extra}\n"
    )
}

fn verify(r: &Recorded) {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&r.body);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(
        r.header("x-wa-breaker-signature"),
        Some(want.as_str()),
        "signature of {}",
        r.body_str()
    );
}

async fn admin(gw: &Gateway, waba: &str, op: &str) {
    let r = gw
        .admin_post(&format!("/admin/circuits/{waba}/{op}"), Some(ADMIN), None)
        .await;
    assert_eq!(r.status(), 200, "admin {op} {waba}");
}

async fn wait_state(gw: &Gateway, waba: &str, state: &str, within: Duration) {
    let t = Instant::now();
    loop {
        let (_, c) = gw.circuit(ADMIN, waba).await;
        if c["state"] == state {
            return;
        }
        assert!(
            t.elapsed() < within,
            "{waba} not {state} within {within:?}: {c}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_redis(gw: &Gateway) {
    let t = Instant::now();
    while metric(&gw.metrics().await, "wa_breaker_redis_connected", &[]) != Some(1.0) {
        assert!(t.elapsed() < Duration::from_secs(10), "redis not connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn counter(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&gw.metrics().await, name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_announce_each_transition_once_signed_and_filtered() {
    bounded(async {
        let redis = RedisServer::start();
        let fake = FakeCloud::start().await;
        let hooks = FakeCloud::start_webhook_sink().await;
        let slack = FakeCloud::start_webhook_sink().await;
        let sinks = format!(
            "{}[[notify]]\nkind = \"slack\"\nurl = \"{}/services/T000/B000/SLACKSECRETPATH\"\ntransitions = [\"open\"]\nwaba_ids = [\"{WABA}\"]\n",
            webhook_sink(&hooks.url(), "name = \"ops\""),
            slack.url()
        );
        let cfg = config(&fake.url(), Some(&redis.url()), &sinks);
        let a = Gateway::start(&cfg).await;
        let b = Gateway::start(&cfg).await;
        wait_redis(&a).await;
        wait_redis(&b).await;

        // A trips on a send; B learns it over Redis.
        fake.on_phone(PHONE, Reply::blocked_368());
        assert_eq!(a.send_str(PHONE, TEMPLATE_BODY).await.status(), 403);
        wait_state(&b, WABA, "open", Duration::from_secs(2)).await;
        // B closes it; A learns it. Then the other WABA opens and closes on B (the Slack
        // sink filters it out, the webhook sink hears both).
        assert!(hooks.wait_count(1, Duration::from_secs(5)).await, "open not announced");
        admin(&b, WABA, "close").await;
        wait_state(&a, WABA, "closed", Duration::from_secs(2)).await;
        admin(&b, OTHER_WABA, "open").await;
        wait_state(&a, OTHER_WABA, "open", Duration::from_secs(2)).await;
        admin(&a, OTHER_WABA, "close").await;
        wait_state(&b, OTHER_WABA, "closed", Duration::from_secs(2)).await;

        assert!(hooks.wait_count(4, Duration::from_secs(5)).await);
        // Anything a second replica would send arrives within this time.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let got = hooks.requests();
        let seen: Vec<(String, String, String)> = got
            .iter()
            .map(|r| {
                let v = r.json();
                (
                    v["waba_id"].as_str().unwrap_or_default().to_string(),
                    v["to"].as_str().unwrap_or_default().to_string(),
                    v["source"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let want = |w: &str, to: &str, src: &str| (w.to_string(), to.to_string(), src.to_string());
        assert_eq!(
            seen,
            vec![
                want(WABA, "open", "send"),
                want(WABA, "closed", "admin"),
                want(OTHER_WABA, "open", "admin"),
                want(OTHER_WABA, "closed", "admin"),
            ],
            "exactly one notification per transition, in order"
        );
        for r in &got {
            verify(r);
            assert_eq!(r.method, "POST");
            assert_eq!(r.path_and_query(), "/hooks/wa?token=SINKTOKEN");
            assert_eq!(r.header("content-type"), Some("application/json"));
        }
        let open = got[0].json();
        assert_eq!(open["code"], 368);
        assert_eq!(open["evidence"]["fbtrace_id"], FBTRACE_ID);
        assert_eq!(open["evidence"]["phone_number_id"], PHONE);
        assert!(open["at"].as_str().is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()));
        assert!(open["since"].is_string());
        // Made by different replicas: each announced its own change.
        let replicas: Vec<Value> = got.iter().map(|r| r.json()["replica"].clone()).collect();
        assert_ne!(replicas[0], replicas[1], "{replicas:?}");
        assert_eq!(replicas[1], replicas[2]);

        // Slack: only the open of WABA, as text.
        assert!(slack.wait_count(1, Duration::from_secs(2)).await);
        let s = slack.requests();
        assert_eq!(s.len(), 1, "slack filter: {:?}", s.iter().map(|r| r.body_str()).collect::<Vec<_>>());
        assert_eq!(s[0].path, "/services/T000/B000/SLACKSECRETPATH");
        assert!(s[0].header("x-wa-breaker-signature").is_none());
        let text = s[0].json()["text"].as_str().unwrap_or_default().to_string();
        for want in [WABA, "code: 368", "source: send", "scope: all sends", "since:", "until:", FBTRACE_ID] {
            assert!(text.contains(want), "{want:?} missing from {text}");
        }
        eprintln!("slack text:\n{text}");

        let sent = [("sink", "ops")];
        let total = counter(&a, "wa_breaker_notify_sent_total", &sent).await
            + counter(&b, "wa_breaker_notify_sent_total", &sent).await;
        assert_eq!(total, 4.0);
        for gw in [&a, &b] {
            let logs = gw.logs();
            for secret in ["SLACKSECRETPATH", "SINKTOKEN", SECRET] {
                assert!(!logs.contains(secret), "{secret} in the log");
            }
            assert!(!gw.metrics().await.contains("SLACKSECRETPATH"));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_down_then_back_gets_the_queued_notifications() {
    bounded(async {
        let fake = FakeCloud::start().await;
        let hooks = FakeCloud::start_webhook_sink().await;
        hooks.stop();
        let cfg = config(
            &fake.url(),
            None,
            &webhook_sink(&hooks.url(), "retry_for = \"60s\""),
        );
        let gw = Gateway::start(&cfg).await;

        admin(&gw, WABA, "open").await;
        admin(&gw, OTHER_WABA, "open").await;
        admin(&gw, WABA, "close").await;
        // Sends are answered while the sink is away.
        assert_eq!(gw.send_str(OTHER_PHONE, TEMPLATE_BODY).await.status(), 403);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let failures = counter(
            &gw,
            "wa_breaker_notify_failures_total",
            &[("sink", "webhook-0")],
        )
        .await;
        assert!(failures >= 3.0, "retried while away: {failures}");
        assert_eq!(
            gw.logs().matches("notification sink failing").count(),
            1,
            "one line per outage"
        );

        hooks.resume().await;
        assert!(
            hooks.wait_count(3, Duration::from_secs(5)).await,
            "queued notifications not delivered after the sink came back: {}",
            hooks.count()
        );
        let got: Vec<(String, String)> = hooks
            .requests()
            .iter()
            .map(|r| {
                verify(r);
                let v = r.json();
                (
                    v["waba_id"].as_str().unwrap().into(),
                    v["to"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (WABA.into(), "open".into()),
                (OTHER_WABA.into(), "open".into()),
                (WABA.into(), "closed".into()),
            ]
        );
        assert!(
            gw.wait_for_log("notification sink reachable again", Duration::from_secs(2))
                .await
        );
        assert_eq!(
            counter(
                &gw,
                "wa_breaker_notify_sent_total",
                &[("sink", "webhook-0")]
            )
            .await,
            3.0
        );
        assert_eq!(
            counter(
                &gw,
                "wa_breaker_notify_dropped_total",
                &[("sink", "webhook-0"), ("reason", "gave_up")]
            )
            .await,
            0.0
        );
        assert!(!gw.logs().contains("SINKTOKEN"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_gives_up_drops_counts_and_logs_once() {
    bounded(async {
        let fake = FakeCloud::start().await;
        let hooks = FakeCloud::start_webhook_sink().await;
        hooks.set_status(500);
        let cfg = config(
            &fake.url(),
            None,
            &webhook_sink(&hooks.url(), "retry_for = \"500ms\""),
        );
        let gw = Gateway::start(&cfg).await;
        admin(&gw, WABA, "open").await;
        admin(&gw, WABA, "close").await;
        let gave_up = [("sink", "webhook-0"), ("reason", "gave_up")];
        let t = Instant::now();
        while counter(&gw, "wa_breaker_notify_dropped_total", &gave_up).await < 2.0 {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "not dropped after retry_for"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            hooks.count() >= 4,
            "retried before giving up: {}",
            hooks.count()
        );
        let logs = gw.logs();
        assert_eq!(
            logs.matches("notification dropped after retrying").count(),
            1,
            "{logs}"
        );
        assert_eq!(logs.matches("notification sink failing").count(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_sink_delays_neither_sends_nor_other_sinks() {
    bounded(async {
        let fake = FakeCloud::start().await;
        let hanging = FakeCloud::start_webhook_sink().await;
        let healthy = FakeCloud::start_webhook_sink().await;
        hanging.hold();
        let sinks = format!(
            "{}{}",
            webhook_sink(&hanging.url(), "name = \"hangs\"\ntimeout = \"20s\"\nqueue = 1"),
            webhook_sink(&healthy.url(), "name = \"fine\"")
        );
        let gw = Gateway::start(&config(&fake.url(), None, &sinks)).await;

        // Baseline: forwarded and local answers before any notification is pending.
        admin(&gw, OTHER_WABA, "open").await;
        assert!(hanging.wait_in_flight(1, Duration::from_secs(5)).await, "hanging sink got the first");
        let (fwd_before, local_before) = measure(&gw, OTHER_PHONE).await;

        // Now the hanging sink holds one request and its queue (1) fills: more transitions.
        admin(&gw, OTHER_WABA, "close").await;
        fake.on_phone(PHONE, Reply::blocked_368());
        let t = Instant::now();
        assert_eq!(gw.send_str(PHONE, TEMPLATE_BODY).await.status(), 403);
        let trip = t.elapsed();
        fake.on_phone(PHONE, Reply::ok_send());
        admin(&gw, OTHER_WABA, "open").await;

        // The healthy sink heard all four while the other hangs.
        assert!(healthy.wait_count(4, Duration::from_secs(3)).await, "healthy sink: {}", healthy.count());
        let (fwd_during, local_during) = measure(&gw, OTHER_PHONE).await;
        eprintln!(
            "hanging sink: tripping send {trip:?}; forwarded p50/max before {:?}/{:?} during {:?}/{:?}; local answers p50/max before {:?}/{:?} during {:?}/{:?}",
            fwd_before.0, fwd_before.1, fwd_during.0, fwd_during.1,
            local_before.0, local_before.1, local_during.0, local_during.1
        );
        assert!(trip < Duration::from_millis(500), "tripping send took {trip:?}");
        assert!(fwd_during.1 < Duration::from_millis(500), "forwarded max {:?}", fwd_during.1);
        assert!(local_during.1 < Duration::from_millis(500), "local max {:?}", local_during.1);
        let dropped = counter(&gw, "wa_breaker_notify_dropped_total", &[("sink", "hangs"), ("reason", "queue_full")]).await;
        assert!(dropped >= 1.0, "full queue drops counted: {dropped}");
        assert_eq!(gw.logs().matches("notification queue full").count(), 1);
        hanging.release();
    })
    .await;
}

/// p50 and max of 50 forwarded sends (a phone number of no open circuit) and 50 local
/// answers (`blocked`, whose circuit is open).
async fn measure(gw: &Gateway, blocked: &str) -> ((Duration, Duration), (Duration, Duration)) {
    let mut fwd = Vec::new();
    let mut local = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        assert_eq!(gw.send_str(FREE_PHONE, TEXT_BODY).await.status(), 200);
        fwd.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(gw.send_str(blocked, TEMPLATE_BODY).await.status(), 403);
        local.push(t.elapsed());
    }
    let stats = |mut v: Vec<Duration>| {
        v.sort();
        (v[v.len() / 2], v[v.len() - 1])
    };
    (stats(fwd), stats(local))
}

#[test]
fn check_config_masks_sink_urls_and_secrets() {
    let tc = write_config(&format!(
        "[[notify]]\nkind = \"slack\"\nurl = \"https://hooks.slack.com/services/T000/B000/SLACKSECRETPATH\"\n\n[[notify]]\nkind = \"webhook\"\nurl = \"https://alerts.example.com/in?token=QUERYSECRET\"\nsecret = \"{SECRET}\"\ntransitions = [\"open\"]\n"
    ));
    let out = Gateway::run_cli(&["check-config", "--config", &tc.path_str()], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("https://hooks.slack.com/***"), "{stdout}");
    assert!(
        stdout.contains("https://alerts.example.com/***"),
        "{stdout}"
    );
    for secret in ["SLACKSECRETPATH", "QUERYSECRET", SECRET] {
        assert!(!stdout.contains(secret), "{secret} leaked: {stdout}");
    }

    // A bad sink is refused at load time, naming the key and never the URL's secret part.
    for (toml, key) in [
        ("kind = \"slack\"\nurl = \"ftp://hooks.example/SECRETPATH\"", "notify[0].url"),
        ("kind = \"slack\"\nurl = \"https://hooks.example/SECRETPATH\"\nsecret = \"0123456789abcdefXYZ\"", "notify[0].secret"),
        ("kind = \"webhook\"\nurl = \"https://hooks.example/SECRETPATH\"\nwaba_ids = [\"abc\"]", "notify[0].waba_ids"),
        ("kind = \"webhook\"\nurl = \"https://hooks.example/SECRETPATH\"\nqueue = 0", "notify[0].queue"),
        ("kind = \"pager\"\nurl = \"https://hooks.example/SECRETPATH\"", "kind"),
    ] {
        let tc = write_config(&format!("[[notify]]\n{toml}\n"));
        let out = Gateway::run_cli(&["check-config", "--config", &tc.path_str()], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml} accepted");
        assert!(stderr.contains(key), "{key} not named: {stderr}");
        assert!(!stderr.contains("SECRETPATH"), "URL leaked: {stderr}");
        assert!(!stderr.contains("0123456789abcdefXYZ"), "secret leaked: {stderr}");
    }
}
