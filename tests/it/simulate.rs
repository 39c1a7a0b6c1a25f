//! `wa-breaker simulate` — the Cloud API simulator users rehearse blocks with — run as a
//! process, with real gateways in front of it over real sockets: a block and its local
//! 368s, an unblock by signed webhook, template pauses, Health Status (discovery, polls),
//! Meta's error envelopes on demand, the request log, the control API's refusals, and the
//! README's rehearsal script run as written.

use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{json, Value};

const W: &str = "102290129340398";
const P1: &str = "106540352242922";
const P2: &str = "106540352242923";
const ADMIN: &str = "test-admin-token-0123456789";
const SECRET: &str = "sim-app-secret-abc";
const HEALTH_TOKEN: &str = "health-token-SECRET-xyz";
const LIMIT: Duration = Duration::from_secs(120);

both_engines!(
    rehearse_a_block_and_unblock_by_signed_webhook,
    a_template_paused_by_webhook_is_answered_locally_until_unpaused,
    discovery_and_health_polls_read_the_simulator,
    a_failed_status_webhook_opens_the_waba,
    metas_codes_on_demand_pass_through_or_trip,
    the_simulators_throughput_upgrade_raises_the_pace,
);

fn accounts() -> String {
    format!("[[accounts]]\nwaba_id = \"{W}\"\nphone_number_ids = [\"{P1}\", \"{P2}\"]\n")
}

fn config(engine: Engine, upstream: &str, extra: &str) -> String {
    format!(
        r#"{}
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
state_dir = "{{state_dir}}"
upstream = "{upstream}"
admin_token = "{ADMIN}"
{extra}
[webhook]
app_secret = "{SECRET}"
"#,
        engine.config_line()
    )
}

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test exceeded its time limit");
}

async fn simulator() -> Simulator {
    Simulator::start(&[
        "--account",
        &format!("{W}={P1},{P2}"),
        "--app-secret",
        SECRET,
        "--quiet",
    ])
    .await
}

async fn wait_state(gw: &Gateway, id: &str, open: bool, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, c) = gw.circuit(ADMIN, id).await;
        if status == 200 && (c["state"] == "open") == open {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "circuit {id} not {} within {within:?}: {status} {c}",
            if open { "open" } else { "closed" }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_local(r: &reqwest::Response) -> bool {
    r.headers().get("x-wa-breaker").is_some_and(|v| v == "open")
}

/// The README's scenario: Meta blocks the WABA; the first send gets Meta's own 403/368 and
/// trips; the WABA's other number is answered locally and Meta receives nothing; a signed
/// REINSTATE reaches the gateway and lifts the block on both sides; sends flow again.
async fn rehearse_a_block_and_unblock_by_signed_webhook(engine: Engine) {
    bounded(async {
        let sim = simulator().await;
        let gw = Gateway::start(&config(engine, &sim.url(), &accounts())).await;

        let b = sim
            .control(&format!("/_sim/wabas/{W}/block"), &json!({}))
            .await;
        assert_eq!(b["block"]["code"], 368, "{b}");
        let r = gw.send(P1, &text_body()).await;
        assert_eq!(r.status(), 403);
        assert!(!is_local(&r), "the first 403 is Meta's own");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], 368, "{body}");
        assert_eq!(body["error"]["type"], "OAuthException");
        assert_eq!(body["error"]["error_data"]["messaging_product"], "whatsapp");
        let trace = body["error"]["fbtrace_id"].as_str().unwrap().to_string();
        assert!(trace.starts_with("SIM"), "{trace}");

        for _ in 0..3 {
            let r = gw.send(P2, &text_body()).await;
            assert_eq!(r.status(), 403);
            assert!(is_local(&r), "answered by the gateway ({})", engine.name());
        }
        assert_eq!(sim.sends(P1).await, 1);
        assert_eq!(
            sim.sends(P2).await,
            0,
            "Meta received a send during the block"
        );
        let c = wait_state(&gw, W, true, Duration::from_secs(2)).await;
        assert_eq!(
            c["history"][0]["evidence"]["fbtrace_id"], trace,
            "the simulator's trace id is the evidence: {c}"
        );

        // Meta lifts the block and says so in a signed account_update webhook.
        let d = sim
            .control(
                "/_sim/webhooks/account_update",
                &json!({"url": format!("{}/webhook", gw.url()), "waba_id": W,
                        "event": "DISABLED_UPDATE", "ban_state": "REINSTATE"}),
            )
            .await;
        assert_eq!(d["status"], 200, "the gateway accepted the signature: {d}");
        assert_eq!(
            d["payload"]["entry"][0]["changes"][0]["value"]["ban_info"]["waba_ban_state"],
            "REINSTATE"
        );
        let c = wait_state(&gw, W, false, Duration::from_secs(2)).await;
        assert_eq!(c["source"], "webhook", "{c}");

        let r = gw.send(P2, &text_body()).await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert!(
            body["messages"][0]["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("wamid.")),
            "{body}"
        );
        assert_eq!(body["contacts"][0]["wa_id"], "15551234567");
        assert_eq!(sim.sends(P2).await, 1);
        let m = gw.metrics().await;
        assert!(
            metric(&m, "wa_breaker_webhooks_total", &[("result", "applied")]).unwrap_or(0.0) >= 1.0,
            "{m}"
        );
    })
    .await
}

/// A template paused (with Meta's status webhook) is answered locally with 132015 — only
/// that template; an unpause webhook lets it through again.
async fn a_template_paused_by_webhook_is_answered_locally_until_unpaused(engine: Engine) {
    bounded(async {
        let sim = simulator().await;
        let gw = Gateway::start(&config(engine, &sim.url(), &accounts())).await;
        let hook = format!("{}/webhook", gw.url());

        let v = sim
            .control(
                "/_sim/templates/order_update/pause",
                &json!({"waba_id": W, "language": "en_US", "webhook": true, "url": hook}),
            )
            .await;
        assert_eq!(v["webhook"]["status"], 200, "{v}");
        let value = &v["webhook"]["payload"]["entry"][0]["changes"][0]["value"];
        assert_eq!(value["event"], "PAUSED");
        assert_eq!(value["other_info"]["title"], "FIRST_PAUSE");

        let r = gw.send_str(P1, TEMPLATE_BODY).await;
        assert_eq!(r.status(), 403);
        assert!(is_local(&r), "{}", engine.name());
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], 132015, "{body}");
        assert_eq!(sim.sends(P1).await, 0);
        let r = gw.send(P1, &text_body()).await;
        assert_eq!(r.status(), 200, "other sends pass");
        assert_eq!(sim.sends(P1).await, 1);

        let v = sim
            .control(
                "/_sim/templates/order_update/unpause",
                &json!({"waba_id": W, "language": "en_US", "webhook": true, "url": hook}),
            )
            .await;
        assert_eq!(v["webhook"]["status"], 200, "{v}");
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let r = gw.send_str(P1, TEMPLATE_BODY).await;
            if r.status() == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "template still answered locally");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(sim.sends(P1).await, 2);

        // A quality drop is recorded and counted, never a block.
        let d = sim
            .control(
                "/_sim/webhooks/message_template_quality_update",
                &json!({"url": hook, "waba_id": W, "template": "order_update", "language": "en_US",
                        "previous": "GREEN", "new": "YELLOW"}),
            )
            .await;
        assert_eq!(d["status"], 200, "{d}");
        assert_eq!(
            d["payload"]["entry"][0]["changes"][0]["value"]["new_quality_score"],
            "YELLOW"
        );
        let m = gw.metrics().await;
        assert_eq!(
            metric(
                &m,
                "wa_breaker_template_quality_total",
                &[("score", "YELLOW")]
            ),
            Some(1.0),
            "{m}"
        );
        assert_eq!(gw.send_str(P1, TEMPLATE_BODY).await.status(), 200);
    })
    .await
}

/// No `[[accounts]]`: a blocked send opens the phone number's circuit; discovery reads the
/// simulator's Health Status of the number (which names its WABA) and widens the circuit
/// to the WABA; once the simulator lifts the block, a Health Status poll closes it.
async fn discovery_and_health_polls_read_the_simulator(engine: Engine) {
    bounded(async {
        let sim = simulator().await;
        let extra = format!(
            "[health]\naccess_token = \"{HEALTH_TOKEN}\"\ninterval = \"1s\"\njitter = 0.0\n"
        );
        // `[health]` must come after the top-level keys and before `[webhook]`.
        let gw = Gateway::start(&config(engine, &sim.url(), &extra)).await;
        sim.control(&format!("/_sim/wabas/{W}/block"), &json!({}))
            .await;

        let r = gw.send(P1, &text_body()).await;
        assert_eq!(r.status(), 403);
        let c = wait_state(&gw, W, true, Duration::from_secs(10)).await;
        assert!(
            c["reason"].as_str().unwrap_or_default().contains("widened"),
            "{c}"
        );
        let reads = sim.requests("health", Some(P1)).await;
        assert!(
            !reads.is_empty(),
            "discovery read the phone number's health"
        );
        assert!(reads.iter().all(|r| r["authorization"] == true));

        let r = gw.send(P1, &text_body()).await;
        assert!(is_local(&r));
        assert_eq!(sim.sends(P1).await, 1);

        let (_, h) = sim.get(&format!("/v21.0/{W}?fields=health_status")).await;
        assert_eq!(h["health_status"]["can_send_message"], "BLOCKED", "{h}");
        sim.control(&format!("/_sim/wabas/{W}/unblock"), &json!({}))
            .await;
        let c = wait_state(&gw, W, false, Duration::from_secs(15)).await;
        assert_eq!(c["source"], "health", "{c}");
        assert!(!sim.requests("health", Some(W)).await.is_empty());
        let r = gw.send(P1, &text_body()).await;
        assert_eq!(r.status(), 200);
    })
    .await
}

/// The simulator's levels pace the gateway: P1 is read at STANDARD (80/s) at its first
/// send, by discovery's read (its WABA is not configured), in the same request; a `messages` webhook names its display number; the simulator upgrades it to HIGH
/// and sends Meta's THROUGHPUT_UPGRADE: the gateway reads the level again and paces P1 at
/// 1 000/s.
async fn the_simulators_throughput_upgrade_raises_the_pace(engine: Engine) {
    bounded(async {
        let sim = simulator().await;
        let extra = format!("[health]\naccess_token = \"{HEALTH_TOKEN}\"\n");
        let gw = Gateway::start(&config(engine, &sim.url(), &extra)).await;
        let hook = format!("{}/webhook", gw.url());
        let pace = || async {
            let r = gw
                .admin_get(&format!("/admin/pace/{P1}"), Some(ADMIN))
                .await;
            r.json::<Value>().await.unwrap()
        };
        let wait = |throughput: u64| async move {
            let t0 = std::time::Instant::now();
            loop {
                let p = pace().await;
                if p["throughput"] == throughput {
                    return p;
                }
                assert!(t0.elapsed() < Duration::from_secs(10), "{p}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        assert_eq!(gw.send(P1, &text_body()).await.status(), 200);
        let p = wait(80).await;
        assert_eq!(
            (&p["source"], &p["level"]),
            (&json!("meta"), &json!("STANDARD"))
        );
        // P1's WABA was not known: discovery's Health Status read asked for the level too
        // (one request), so there was no read of its own.
        assert_eq!(sim.requests("health", Some(P1)).await.len(), 1);
        assert_eq!(sim.requests("throughput", Some(P1)).await.len(), 0);
        sim.control(
            "/_sim/webhooks/messages",
            &json!({"url": hook, "phone_number_id": P1, "statuses": [{"status": "delivered"}]}),
        )
        .await;
        let v = sim
            .control(
                &format!("/_sim/phones/{P1}/throughput"),
                &json!({"level": "HIGH", "webhook": true, "url": hook}),
            )
            .await;
        assert_eq!(v["webhook"]["status"], 200, "{v}");
        assert_eq!(
            v["webhook"]["payload"]["entry"][0]["changes"][0]["value"]["event"],
            "THROUGHPUT_UPGRADE"
        );
        let p = wait(1000).await;
        assert_eq!(p["level"], "HIGH", "{p}");
        // HIGH at once from the event; the level is read again too.
        let t0 = std::time::Instant::now();
        while sim.requests("throughput", Some(P1)).await.is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(5), "no re-read");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(pace().await["throughput"], 1000);
        assert_eq!(sim.requests("throughput", Some(P1)).await.len(), 1);
    })
    .await
}

/// A `messages` webhook whose failed status carries 368 opens the WABA before any send
/// fails (the asynchronous answer to a send).
async fn a_failed_status_webhook_opens_the_waba(engine: Engine) {
    bounded(async {
        let sim = simulator().await;
        let gw = Gateway::start(&config(engine, &sim.url(), &accounts())).await;
        let d = sim
            .control(
                "/_sim/webhooks/messages",
                &json!({"url": format!("{}/webhook", gw.url()), "phone_number_id": P1,
                        "statuses": [{"status": "failed", "to": "+1 555 123 4567", "code": 368}]}),
            )
            .await;
        assert_eq!(d["status"], 200, "{d}");
        let v = &d["payload"]["entry"][0]["changes"][0]["value"];
        assert_eq!(
            d["payload"]["entry"][0]["id"], W,
            "the entry names the number's WABA"
        );
        assert_eq!(v["metadata"]["phone_number_id"], P1);
        assert_eq!(v["statuses"][0]["errors"][0]["code"], 368);
        let c = wait_state(&gw, W, true, Duration::from_secs(2)).await;
        assert_eq!(c["source"], "webhook", "{c}");
        let r = gw.send(P2, &text_body()).await;
        assert!(is_local(&r));
        assert_eq!(sim.sends(P2).await, 0);
    })
    .await
}

/// Errors queued on the simulator come back in Meta's envelope: rate limits pass through
/// untouched (no circuit), a locked account (131031) trips the WABA.
async fn metas_codes_on_demand_pass_through_or_trip(engine: Engine) {
    bounded(async {
        let sim = simulator().await;
        // This test is about Meta's codes reaching the app as Meta sent them. With the
        // shaping enforcing (the default) the first send's 131056 would hold the pair and the
        // next send to that recipient would be answered locally (tested in `shaping`), and
        // 131048 would halve the pace: observe forwards every send.
        let shaping = format!("{}\n[shaping]\nmode = \"observe\"\n", accounts());
        let gw = Gateway::start(&config(engine, &sim.url(), &shaping)).await;
        for code in [131056, 130429, 131048] {
            sim.control(
                "/_sim/errors",
                &json!({"code": code, "phone_number_id": P1, "to": "+1 (555) 123-4567"}),
            )
            .await;
            let r = gw.send(P1, &text_body()).await;
            assert_eq!(r.status(), 400, "{code}");
            assert!(!is_local(&r));
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], code, "{body}");
            assert!(body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("(#{code}) ")));
        }
        let (status, c) = gw.circuit(ADMIN, W).await;
        assert!(
            status == 200 && c["state"] == "closed",
            "rate limits trip nothing: {c}"
        );
        assert_eq!(
            gw.send(P1, &text_body()).await.status(),
            200,
            "each used once"
        );

        sim.control(
            "/_sim/errors",
            &json!({"code": 131031, "phone_number_id": P2}),
        )
        .await;
        let r = gw.send(P2, &text_body()).await;
        assert_eq!(r.status(), 403);
        let c = wait_state(&gw, W, true, Duration::from_secs(2)).await;
        assert_eq!(c["code"], 131031, "{c}");
        assert!(is_local(&gw.send(P1, &text_body()).await));
        assert_eq!(sim.requests("send", None).await.len(), 5);
    })
    .await
}

/// Health Status and throughput reads answer in Meta's shapes, straight from the simulator.
#[tokio::test]
async fn health_status_and_throughput_answer_in_metas_shapes() {
    bounded(async {
        let sim = simulator().await;
        let (status, h) = sim.get(&format!("/v21.0/{P1}?fields=health_status")).await;
        assert_eq!(status, 200);
        let e = h["health_status"]["entities"].as_array().unwrap().clone();
        let kinds: Vec<&str> = e
            .iter()
            .map(|x| x["entity_type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["PHONE_NUMBER", "WABA", "BUSINESS", "APP"]);
        assert_eq!(e[1]["id"], W, "a phone-number query names its parent WABA");
        assert_eq!(h["id"], P1);
        assert_eq!(h["health_status"]["can_send_message"], "AVAILABLE");

        let (_, h) = sim.get(&format!("/{W}?fields=health_status")).await;
        let kinds: Vec<&str> = h["health_status"]["entities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["entity_type"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["WABA", "BUSINESS", "APP"],
            "no PHONE_NUMBER for a WABA"
        );

        sim.control(
            &format!("/_sim/phones/{P1}/health"),
            &json!({"can_send_message": "LIMITED"}),
        )
        .await;
        let (_, h) = sim.get(&format!("/v21.0/{P1}?fields=health_status")).await;
        assert_eq!(h["health_status"]["can_send_message"], "LIMITED");
        assert!(h["health_status"]["entities"][0]["additional_info"].is_array());
        // SIP not configured: top-level BLOCKED while messaging is available, as in Meta's
        // own example.
        sim.control(
            &format!("/_sim/phones/{P2}/health"),
            &json!({"can_send_message": "AVAILABLE", "can_receive_call_sip": "BLOCKED"}),
        )
        .await;
        let (_, h) = sim.get(&format!("/v21.0/{P2}?fields=health_status")).await;
        assert_eq!(h["health_status"]["can_send_message"], "BLOCKED");
        assert_eq!(
            h["health_status"]["entities"][0]["can_send_message"],
            "AVAILABLE"
        );

        let (_, t) = sim.get(&format!("/v21.0/{P1}?fields=throughput")).await;
        assert_eq!(t["throughput"]["level"], "STANDARD");
        sim.control(
            &format!("/_sim/phones/{P1}/throughput"),
            &json!({"level": "high"}),
        )
        .await;
        let (_, t) = sim.get(&format!("/v21.0/{P1}?fields=throughput")).await;
        assert_eq!(t["throughput"]["level"], "HIGH");

        let (status, e) = sim.get("/v21.0/123456?fields=health_status").await;
        assert_eq!(status, 400);
        assert_eq!(e["error"]["code"], 100);
        assert_eq!(sim.requests("health", None).await.len(), 5);
        assert_eq!(sim.requests("throughput", None).await.len(), 2);
    })
    .await
}

/// Bad control requests are 400/404 with a reason and change nothing.
#[tokio::test]
async fn the_control_api_refuses_bad_input_and_changes_nothing() {
    bounded(async {
        let sim = simulator().await;
        let (_, before) = sim.get("/_sim/state").await;
        for (path, body) in [
            ("/_sim/wabas/not-an-id/block", json!({})),
            (&*format!("/_sim/wabas/{W}/block"), json!({"scope": "some"})),
            (&*format!("/_sim/wabas/{W}/block"), json!({"until": "tomorrow"})),
            ("/_sim/errors", json!({"code": "x"})),
            ("/_sim/errors", json!({"code": 368, "status": 200})),
            (&*format!("/_sim/phones/{P1}/throughput"), json!({"level": "FAST"})),
            ("/_sim/webhooks/account_update", json!({"waba_id": W})),
            ("/_sim/accounts", json!({"waba_id": "x"})),
        ] {
            let (status, v) = sim.post(path, &body).await;
            assert_eq!(status, 400, "{path} {body}: {v}");
            assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        }
        let (status, _) = sim.post("/_sim/webhooks/nope", &json!({})).await;
        assert_eq!(status, 404);
        let (status, _) = sim.post("/_sim/nothing", &json!({})).await;
        assert_eq!(status, 404);
        let (_, after) = sim.get("/_sim/state").await;
        assert_eq!(before, after);
        // A webhook to nowhere is a 502 that says so.
        let (status, v) = sim
            .post(
                "/_sim/webhooks/account_update",
                &json!({"url": format!("http://127.0.0.1:{}/webhook", free_port()), "waba_id": W, "event": "ACCOUNT_VIOLATION"}),
            )
            .await;
        assert_eq!(status, 502, "{v}");
    })
    .await
}

/// The contract: `wa-breaker simulate --help` lists its options.
#[test]
fn simulate_help_lists_its_options() {
    let out = Gateway::run_cli(&["simulate", "--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--listen",
        "--account",
        "--block",
        "--block-phone",
        "--webhook-url",
        "--app-secret",
        "--quiet",
    ] {
        assert!(help.contains(opt), "{opt} missing:\n{help}");
    }
}

/// The README's "Rehearse a block" script, run as written (the ports and the binary
/// through its own variables), so the documented rehearsal cannot rot.
#[test]
fn the_readme_rehearsal_script_passes() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let marker = "<!-- rehearsal script: tests/it/simulate.rs runs it -->";
    let at = readme.find(marker).expect("rehearsal marker in README.md");
    let rest = &readme[at + marker.len()..];
    let start = rest.find("```sh\n").expect("script block") + "```sh\n".len();
    let end = rest[start..].find("```").expect("end of script block") + start;
    let script = &rest[start..end];
    assert!(
        std::process::Command::new("curl")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "the rehearsal script needs curl (apt-get install curl)"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rehearse.sh");
    std::fs::write(&path, script).unwrap();
    let port = |_| free_port().to_string();
    let (sim, gw, admin) = (port(0), port(1), port(2));
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(&path)
        .env("WA_BREAKER", crate::support::gateway::bin())
        .env("SIM", format!("127.0.0.1:{sim}"))
        .env("GW", format!("127.0.0.1:{gw}"))
        .env("ADMIN", format!("127.0.0.1:{admin}"))
        .current_dir(dir.path());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("WA_BREAKER_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("rehearsal passed"),
        "the README's rehearsal script failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
}
