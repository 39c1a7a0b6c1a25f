//! Issue 25 item 5: state and metric series no client can grow without a bound, over real
//! sockets on both engines. Sends for thousands of phone-number ids nothing maps, each
//! answered 368, open circuits up to `max_unknown_circuits` and no further; metric series
//! of their own up to 1 000, the rest counted in `other`; `/admin/circuits` pages by
//! default (the CLI fetches every page); a known WABA still opens.
//!
//! Tests listed in `both_engines!` (at the end) run as `relay::…` and `hyper::…`.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use serde_json::Value;

use crate::support::*;

const WABA_A: &str = "102290129340398";
const PHONE_A1: &str = "106540352242922";
const ADMIN: &str = "test-admin-token-0123456789";

/// Distinct unmapped phone-number ids sent to.
const IDS: u64 = 5_000;
/// `max_unknown_circuits` in this test.
const CAP: usize = 1_500;
/// Metric series of their own for circuits of keys a send chose (`MAX_OWN_SERIES`).
const OWN_SERIES: usize = 1_000;
/// `GET /admin/circuits`'s page without `limit` (`DEFAULT_LIMIT`).
const PAGE: usize = 1_000;

fn config(engine: Engine) -> String {
    let engine_line = engine.config_line();
    format!(
        r#"
{engine_line}
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
state_dir = "{{state_dir}}"
upstream = "{{upstream}}"
admin_token = "{ADMIN}"
max_unknown_circuits = {CAP}
max_circuits = 2000

[[accounts]]
waba_id = "{WABA_A}"
phone_number_ids = ["{PHONE_A1}"]
"#
    )
}

fn unmapped(i: u64) -> String {
    (900_000_000_000_000 + i).to_string()
}

/// Every page of `GET /admin/circuits?{query}`, following `after` (the last key).
async fn all_pages(gw: &Gateway, query: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/admin/circuits?{query}&limit={PAGE}");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let r = gw.admin_get(&path, Some(ADMIN)).await;
        assert_eq!(r.status(), 200, "{path}");
        let page: Vec<Value> = r.json().await.unwrap();
        let full = page.len() == PAGE;
        after = page.last().map(|c| match c["phone_number_id"].as_str() {
            Some(p) => format!("phone:{p}"),
            None => c["waba_id"].as_str().unwrap().to_string(),
        });
        all.extend(page);
        if !full {
            return all;
        }
    }
}

async fn unknown_keys_stay_at_their_caps_and_a_known_waba_still_opens(engine: Engine) {
    let fake = FakeCloud::start().await;
    fake.set_default(Reply::blocked_368());
    let gw = Gateway::builder(&config(engine))
        .var("upstream", &fake.url())
        .start()
        .await;
    let client = gw.client();
    let url = gw.url();
    let statuses: Vec<u16> = stream::iter(0..IDS)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            async move {
                client
                    .post(format!("{url}/v21.0/{}/messages", unmapped(i)))
                    .bearer_auth(TEST_TOKEN)
                    .header("content-type", "application/json")
                    .body(TEXT_BODY)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == 403),
        "{}: every send answered by the upstream's 368 (403)",
        engine.name()
    );

    // Circuits: at the cap, the rest counted.
    let open = all_pages(&gw, "state=open").await;
    assert_eq!(open.len(), CAP, "{}: open circuits", engine.name());
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "wa_breaker_events_ignored_total",
            &[("reason", "unknown_over_cap")]
        ),
        Some((IDS as usize - CAP) as f64),
        "{}",
        engine.name()
    );
    assert!(
        gw.logs().contains("opens_over_max_unknown_circuits"),
        "{}: the summary line names the cap",
        engine.name()
    );

    // Series: 1 000 of their own, the other open ones in `other`.
    let lines: Vec<&str> = m.lines().filter(|l| !l.starts_with('#')).collect();
    let own_phone: HashSet<&str> = lines
        .iter()
        .filter(|l| l.starts_with("wa_breaker_phone_circuit_open{"))
        .filter(|l| !l.contains("\"other\""))
        .copied()
        .collect();
    assert_eq!(own_phone.len(), OWN_SERIES, "{}", engine.name());
    assert_eq!(
        metric(
            &m,
            "wa_breaker_phone_circuit_open",
            &[("phone_number_id", "other")]
        ),
        Some((CAP - OWN_SERIES) as f64),
        "{}",
        engine.name()
    );
    assert_eq!(
        metric(
            &m,
            "wa_breaker_circuit_transitions_total",
            &[("waba_id", "other"), ("to", "open"), ("source", "send")]
        ),
        Some((CAP - OWN_SERIES) as f64),
        "{}",
        engine.name()
    );
    assert!(
        lines.len() < 2 * OWN_SERIES + 300,
        "{}: /metrics has {} series",
        engine.name(),
        lines.len()
    );

    // The admin list pages by default; the CLI reads every page.
    let r = gw.admin_get("/admin/circuits", Some(ADMIN)).await;
    let first: Vec<Value> = r.json().await.unwrap();
    assert_eq!(first.len(), PAGE, "{}: default page", engine.name());
    let out = tokio::task::spawn_blocking({
        let admin_url = gw.admin_url();
        move || {
            Gateway::run_cli(
                &[
                    "circuits",
                    "list",
                    "--json",
                    "--state",
                    "open",
                    "--admin-url",
                    &admin_url,
                ],
                &[("WA_BREAKER_ADMIN_TOKEN", ADMIN)],
            )
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}: cli {:?}", engine.name(), out);
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), CAP, "{}: cli lists every page", engine.name());

    // A known WABA still opens, and then answers locally.
    assert_eq!(gw.send_str(PHONE_A1, TEXT_BODY).await.status(), 403);
    let (status, c) = gw.circuit(ADMIN, WABA_A).await;
    assert_eq!(status, 200);
    assert_eq!(c["state"], "open", "{}: {c}", engine.name());
    let before = fake.count_for_phone(PHONE_A1);
    let local = gw.send_str(PHONE_A1, TEXT_BODY).await;
    assert_eq!(
        local
            .headers()
            .get("x-wa-breaker")
            .map(|v| v.to_str().unwrap()),
        Some("open"),
        "{}",
        engine.name()
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(fake.count_for_phone(PHONE_A1), before);
}

both_engines!(unknown_keys_stay_at_their_caps_and_a_known_waba_still_opens);
