//! Issue 23 — the on-call console (`GET /` on `admin_listen`) in a real browser: Debian's
//! headless Chromium over WebDriver against the built gateway and the fake Cloud API.
//!
//! The page is admin-side (it calls only the admin API, which both engines share), so these
//! tests run one engine, the default; the send that trips the circuit is an ordinary send
//! whose handling both engines already prove in `tests/it/proxy.rs` and `tests/it/relay.rs`.
//!
//! Screenshots of each state land in `target/console-screenshots/` (`docs/console.png` is
//! a copy of `3-circuit-open.png`).

use std::time::{Duration, Instant};

use crate::browser_util::Browser;
use crate::support::*;
use serde_json::{json, Value};

const WABA: &str = "102290129340398";
const PHONE: &str = "106540352242922";
const PHONE_B: &str = "106540352242923";
const WABA2: &str = "102290129340777";
const PHONE2: &str = "106540352242777";
const ADMIN: &str = "console-admin-token-0123456789";
const WAIT: Duration = Duration::from_secs(10);

/// One browser at a time: Chromium is heavy for a 2-core machine.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(token: bool) -> String {
    let token = if token {
        format!("admin_token = \"{ADMIN}\"")
    } else {
        String::new()
    };
    format!(
        r#"
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
upstream = "{{upstream}}"
state_dir = "{{state_dir}}"
{token}

[[accounts]]
waba_id = "{WABA}"
phone_number_ids = ["{PHONE}", "{PHONE_B}"]

[[accounts]]
waba_id = "{WABA2}"
phone_number_ids = ["{PHONE2}"]
"#
    )
}

async fn gateway(fake: &FakeCloud, token: bool) -> Gateway {
    Gateway::builder(&config(token))
        .var("upstream", &fake.url())
        .start()
        .await
}

/// The row of a circuit in the page's table.
fn row(key: &str) -> String {
    format!("#circuit-rows tr[data-key=\"{key}\"]")
}

/// Console entries that are errors: a refused script or style (the policy), a script
/// error, a failed call — but for the answers the page asks for on purpose: the first
/// probe without a token (401, or 404 when the API is disabled) and the optional sections'
/// endpoints this version does not have (404).
fn errors(log: &[Value]) -> Vec<String> {
    let expected = |m: &str| {
        (m.contains("/admin/circuits?state=open&limit=1 ")
            && (m.contains("status of 401") || m.contains("status of 404")))
            || ((m.contains("/admin/warnings ") || m.contains("/admin/holds "))
                && m.contains("status of 404"))
    };
    log.iter()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .filter(|m| !expected(m))
        .collect()
}

async fn circuit(gw: &Gateway, id: &str) -> Value {
    let (status, v) = gw.circuit(ADMIN, id).await;
    assert_eq!(status, 200, "GET /admin/circuits/{id}: {v}");
    v
}

/// The walk-through of issue 23: enter the token, see a trip appear within two seconds with
/// its evidence, open another circuit for a duration, close the first with the button, and
/// see the next send reach the fake.
#[tokio::test]
async fn a_trip_appears_with_its_evidence_and_the_close_button_lets_sends_through() {
    let _one = ONE_BROWSER.lock().await;
    let t0 = Instant::now();
    let fake = FakeCloud::start().await;
    fake.on_phone(PHONE, Reply::blocked_368());
    let gw = gateway(&fake, true).await;
    let b = Browser::start().await;
    let started = t0.elapsed();
    let page = format!("{}/", gw.admin_url());

    // The token, entered once.
    b.goto(&page).await;
    assert!(b.wait_visible("#login", true, WAIT).await, "token prompt");
    assert!(!b.visible("#console").await);
    b.screenshot("1-token-prompt").await;
    b.type_into("#token", ADMIN).await;
    b.click("#connect").await;
    b.wait_text("#live-text", "live", WAIT).await.unwrap();
    b.wait_text("#account-rows", PHONE_B, WAIT).await.unwrap();
    assert_eq!(b.text("#open-count").await.as_deref(), Some("0"));
    let kept = b
        .script(
            "return [sessionStorage.getItem('wa-breaker.admin-token'), localStorage.length, document.cookie];",
            json!([]),
        )
        .await;
    assert_eq!(
        kept,
        json!([ADMIN, 0, ""]),
        "the token lives in sessionStorage only"
    );
    b.screenshot("2-all-clear").await;

    // Meta answers a send 403/368: the circuit trips, and the page shows it by itself.
    let r = gw.send_str(PHONE, TEXT_BODY).await;
    assert_eq!(r.status(), 403);
    assert!(
        r.headers().get("x-wa-breaker").is_none(),
        "Meta's own answer"
    );
    let tripped = Instant::now();
    let shown = b.wait_text(&row(WABA), FBTRACE_ID, WAIT).await;
    let seen_after = tripped.elapsed();
    let shown = shown.unwrap_or_else(|last| panic!("the trip never showed: {last}"));
    assert!(
        seen_after < Duration::from_secs(2),
        "the trip showed after {seen_after:?} (page polls every second)"
    );
    assert!(
        b.visible(&format!("{}[data-state=\"open\"]", row(WABA)))
            .await
    );
    let text = b.text(&row(WABA)).await.unwrap();
    for want in ["368", "all sends", "Temporarily blocked", PHONE] {
        assert!(text.contains(want), "{want:?} in the row: {text}");
    }
    assert_eq!(b.text("#open-count").await.as_deref(), Some("1"));
    b.wait_text(
        &format!("#account-rows tr[data-phone=\"{PHONE_B}\"]"),
        "WABA circuit open",
        WAIT,
    )
    .await
    .unwrap();

    // A reload keeps the token (same tab) and shows the same state.
    b.goto(&page).await;
    b.wait_text(&row(WABA), FBTRACE_ID, WAIT).await.unwrap();
    assert!(!b.visible("#login").await);

    // An operator holds the second WABA for two hours from the dialog.
    b.click("#open-new").await;
    assert!(b.wait_visible("#open-dialog", true, WAIT).await);
    b.type_into("#o-id", WABA2).await;
    b.type_into("#o-reason", "appeal pending, ticket 4711")
        .await;
    b.click("input[name=\"o-end\"][value=\"for\"]").await;
    b.type_into("#o-for", "2h").await;
    b.click("#o-submit").await;
    assert!(b.wait_visible("#open-dialog", false, WAIT).await);
    b.wait_text(&row(WABA2), "in 1h 59m", WAIT).await.unwrap();
    let c = circuit(&gw, WABA2).await;
    assert_eq!(c["state"], "open");
    assert_eq!(c["reason"], "appeal pending, ticket 4711");
    let until: chrono::DateTime<chrono::Utc> = c["until"].as_str().unwrap().parse().unwrap();
    let left = until - chrono::Utc::now();
    assert!(
        left > chrono::Duration::minutes(118) && left <= chrono::Duration::minutes(120),
        "until {until} is not two hours ahead"
    );
    // Open circuits come first: the newest open on top, then the trip.
    let order = b
        .script(
            "return Array.from(document.querySelectorAll('#circuit-rows tr[data-key]')).map(r => r.dataset.key);",
            json!([]),
        )
        .await;
    assert_eq!(order, json!([WABA2, WABA]));

    // The history, with the evidence to paste into Meta's appeal.
    b.click(&format!("{} button[data-action=\"history\"]", row(WABA)))
        .await;
    let history = format!("#circuit-rows tr[data-history-for=\"{WABA}\"]");
    b.wait_text(&history, "\"fbtrace_id\": \"AbCdEfGhIjK\"", WAIT)
        .await
        .unwrap();
    b.screenshot("3-circuit-open").await;

    // Close it with the button; the fake now accepts sends.
    fake.on_phone(PHONE, Reply::ok_send());
    b.click(&format!("{} button[data-action=\"close\"]", row(WABA)))
        .await;
    assert!(b.wait_visible("#close-dialog", true, WAIT).await);
    b.type_into("#c-reason", "appeal granted, case 4711").await;
    b.screenshot("4-close-dialog").await;
    b.click("#c-submit").await;
    let closed = format!("{}[data-state=\"closed\"]", row(WABA));
    assert!(
        b.wait_visible(&closed, true, WAIT).await,
        "closed in the page"
    );
    b.wait_text("#banner", &format!("Closed {WABA}"), WAIT)
        .await
        .unwrap();
    b.screenshot("5-closed").await;
    let c = circuit(&gw, WABA).await;
    assert_eq!(c["state"], "closed");
    let last = c["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["source"], "admin");
    assert_eq!(last["evidence"]["reason"], "appeal granted, case 4711");

    // The next send reaches the fake.
    assert_eq!(fake.count_for_phone(PHONE), 1);
    assert_eq!(gw.send_str(PHONE, TEXT_BODY).await.status(), 200);
    assert_eq!(fake.count_for_phone(PHONE), 2);

    // A template's circuit, opened from the dialog with a reason that is markup: shown as
    // text, never parsed (no element made, no script run), and closed with its button.
    let template = format!("template:{WABA}:order_update:en_US");
    let hostile = "<img src=x onerror=\"window.pwned=1\"><b>bold</b>";
    b.click("#open-new").await;
    assert!(b.wait_visible("#open-dialog", true, WAIT).await);
    b.type_into("#o-id", &template).await;
    b.type_into("#o-reason", hostile).await;
    b.click("#o-submit").await;
    b.wait_text(&row(&template), hostile, WAIT).await.unwrap();
    let text = b.text(&row(&template)).await.unwrap();
    assert!(
        text.contains("order_update (en_US)") && text.contains("business initiated"),
        "{text}"
    );
    let made = b
        .script(
            "return [document.querySelectorAll(arguments[0]).length, window.pwned === undefined];",
            json!([format!("{0} img, {0} b", row(&template))]),
        )
        .await;
    assert_eq!(made, json!([0, true]), "the reason was parsed as HTML");
    b.click(&format!("{} button[data-action=\"close\"]", row(&template)))
        .await;
    assert!(b.wait_visible("#close-dialog", true, WAIT).await);
    b.click("#c-submit").await;
    let closed = format!("{}[data-state=\"closed\"]", row(&template));
    assert!(
        b.wait_visible(&closed, true, WAIT).await,
        "template closed in the page"
    );
    assert_eq!(circuit(&gw, &template).await["state"], "closed");

    let log = b.console_log().await;
    assert!(errors(&log).is_empty(), "browser console: {log:?}");
    b.quit().await;
    eprintln!(
        "console walk-through: {:?} in all ({started:?} to start the fake, the gateway and the browser; trip shown {shown:?} after the send answered)",
        t0.elapsed()
    );
}

/// Without an `admin_token` the page still loads and says the admin API is disabled.
#[tokio::test]
async fn without_an_admin_token_the_page_says_the_api_is_disabled() {
    let _one = ONE_BROWSER.lock().await;
    let t0 = Instant::now();
    let fake = FakeCloud::start().await;
    let gw = gateway(&fake, false).await;
    let b = Browser::start().await;
    b.goto(&format!("{}/", gw.admin_url())).await;
    b.wait_text("#disabled", "The admin API is disabled", WAIT)
        .await
        .unwrap();
    assert!(!b.visible("#login").await);
    assert!(!b.visible("#console").await);
    assert_eq!(
        b.text("#live-text").await.as_deref(),
        Some("admin API disabled")
    );
    b.screenshot("6-admin-api-disabled").await;
    let log = b.console_log().await;
    assert!(errors(&log).is_empty(), "browser console: {log:?}");

    // The browser enforces the page's policy: a script element with inline code (what an
    // injection would add) does not run, and the refusal is reported.
    let ran = b
        .script(
            "const s = document.createElement('script'); s.textContent = 'window.injected = 1;'; \
             document.body.append(s); return window.injected === 1;",
            json!([]),
        )
        .await;
    assert_eq!(ran, false, "inline script ran despite the policy");
    let log = b.console_log().await;
    assert!(
        errors(&log)
            .iter()
            .any(|m| m.contains("Content Security Policy")),
        "no CSP report: {log:?}"
    );
    b.quit().await;
    eprintln!("disabled page: {:?}", t0.elapsed());
}

/// A wrong token is refused with a message, and not kept.
#[tokio::test]
async fn a_wrong_token_shows_unauthorized() {
    let _one = ONE_BROWSER.lock().await;
    let t0 = Instant::now();
    let fake = FakeCloud::start().await;
    let gw = gateway(&fake, true).await;
    let b = Browser::start().await;
    b.goto(&format!("{}/", gw.admin_url())).await;
    assert!(b.wait_visible("#login", true, WAIT).await);
    b.type_into("#token", "wrong-token-0123456789").await;
    b.click("#connect").await;
    b.wait_text("#banner", "Unauthorized", WAIT).await.unwrap();
    assert!(b.visible("#login").await);
    assert!(!b.visible("#console").await);
    let kept = b
        .script(
            "return sessionStorage.getItem('wa-breaker.admin-token');",
            json!([]),
        )
        .await;
    assert_eq!(kept, Value::Null, "a refused token is not kept");
    b.screenshot("7-unauthorized").await;
    let log = b.console_log().await;
    assert!(errors(&log).is_empty(), "browser console: {log:?}");
    b.quit().await;
    eprintln!("unauthorized page: {:?}", t0.elapsed());
}

/// The page and its assets over plain HTTP: types and the security headers, with or
/// without a token configured; nothing else answers there.
#[tokio::test]
async fn the_page_and_its_assets_carry_their_security_headers() {
    let fake = FakeCloud::start().await;
    for token in [true, false] {
        let gw = gateway(&fake, token).await;
        for (path, ctype) in [
            ("/", "text/html; charset=utf-8"),
            ("/ui/app.js", "text/javascript; charset=utf-8"),
            ("/ui/app.css", "text/css; charset=utf-8"),
            ("/ui/icon.svg", "image/svg+xml"),
        ] {
            let r = gw.admin_get(path, None).await;
            assert_eq!(r.status(), 200, "{path}");
            let h = r.headers();
            assert_eq!(h["content-type"], ctype, "{path}");
            let csp = h["content-security-policy"].to_str().unwrap();
            for want in [
                "default-src 'none'",
                "script-src 'self'",
                "style-src 'self'",
                "connect-src 'self'",
                "frame-ancestors 'none'",
            ] {
                assert!(csp.contains(want), "{path}: {want} in {csp}");
            }
            assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
            assert_eq!(h["x-content-type-options"], "nosniff");
            assert_eq!(h["referrer-policy"], "no-referrer");
            assert!(h.get("set-cookie").is_none());
        }
        let html = gw.admin_get("/", None).await.text().await.unwrap();
        assert!(html.contains("<script src=\"/ui/app.js\" defer></script>"));
        let r = gw.admin_post("/", Some(ADMIN), Some(&json!({}))).await;
        assert_eq!(r.status(), 405);
        assert_eq!(gw.admin_get("/ui/nope.js", None).await.status(), 404);
        assert_eq!(gw.admin_get("/index.html", None).await.status(), 404);
    }
}
