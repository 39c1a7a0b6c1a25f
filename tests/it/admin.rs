//! Issue 23 — the admin API gaps a new user tripped on, over real TCP against the built
//! gateway: `{"for": "2h"}` beside `until` (and errors that name the field), circuits by
//! phone number (`?phone=`) and the hint when a phone number is asked for as a WABA, a
//! warning when an operator opens a WABA nothing routes to, operator opens and closes of
//! template circuits, and `/readyz` saying `draining` during a drain.
//!
//! These are admin requests, not sends: one engine serves them (the admin listener is the
//! same for both). The drain test holds a send in flight, so it runs on both engines.

use std::time::Duration;

use crate::support::*;
use serde_json::{json, Value};

const WABA: &str = "102290129340398";
const PHONE: &str = "106540352242922";
const PHONE_B: &str = "106540352242923";
const WABA2: &str = "102290129340777";
const PHONE2: &str = "106540352242777";
const ADMIN: &str = "admin-token-0123456789";

fn config(extra: &str) -> String {
    format!(
        r#"
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
upstream = "{{upstream}}"
state_dir = "{{state_dir}}"
admin_token = "{ADMIN}"
{extra}

[[accounts]]
waba_id = "{WABA}"
phone_number_ids = ["{PHONE}", "{PHONE_B}"]

[[accounts]]
waba_id = "{WABA2}"
phone_number_ids = ["{PHONE2}"]
"#
    )
}

async fn gateway(fake: &FakeCloud, extra: &str) -> Gateway {
    Gateway::builder(&config(extra))
        .var("upstream", &fake.url())
        .start()
        .await
}

/// POST a raw body to `{admin}{path}` with the token: (status, JSON body).
async fn post_raw(gw: &Gateway, path: &str, body: &str) -> (u16, Value) {
    let r = gw
        .client()
        .post(format!("{}{path}", gw.admin_url()))
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(gw: &Gateway, path: &str) -> (u16, Value) {
    let r = gw.admin_get(path, Some(ADMIN)).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn keys(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|c| match (&c["template"], &c["phone_number_id"]) {
            (Value::Object(t), _) => format!(
                "template:{}:{}:{}",
                c["waba_id"].as_str().unwrap(),
                t["name"].as_str().unwrap(),
                t["language"].as_str().unwrap()
            ),
            (_, Value::String(p)) => format!("phone:{p}"),
            _ => c["waba_id"].as_str().unwrap().to_string(),
        })
        .collect()
}

fn until_of(c: &Value) -> chrono::DateTime<chrono::Utc> {
    c["until"]
        .as_str()
        .unwrap_or_else(|| panic!("no until: {c}"))
        .parse()
        .unwrap()
}

/// `{"for": "2h"}` opens until two hours from now; the answers to wrong ends name the field
/// and the fix, never "invalid JSON" for valid JSON; none of them changes the circuit.
#[tokio::test]
async fn open_for_a_duration_and_clear_answers_for_wrong_ends() {
    let fake = FakeCloud::start().await;
    let gw = gateway(&fake, "").await;
    let open = format!("/admin/circuits/{WABA}/open");

    let cases: &[(&str, &[&str])] = &[
        (
            r#"{"until": "2h"}"#,
            &["until must be an RFC 3339 time", r#"{"for": "2h"}"#],
        ),
        (
            r#"{"until": "2099-01-01T00:00:00Z", "for": "2h"}"#,
            &["not both"],
        ),
        (
            r#"{"for": "soon"}"#,
            &["for must be a duration", "\"soon\""],
        ),
        (r#"{"for": 7200}"#, &["for must be a duration"]),
        (r#"{"until": "2001-01-01T00:00:00Z"}"#, &["in the future"]),
        (r#"{"reason": "x", "bogus": 1}"#, &["unknown field `bogus`"]),
        (
            r#"{"scope": "everything"}"#,
            &["unknown variant `everything`"],
        ),
    ];
    for (body, wants) in cases {
        let (status, v) = post_raw(&gw, &open, body).await;
        assert_eq!(status, 400, "{body}: {v}");
        let msg = v["error"].as_str().unwrap();
        for want in *wants {
            assert!(msg.contains(want), "{body}: {want:?} in {msg:?}");
        }
        assert!(!msg.contains("invalid JSON"), "{body}: {msg}");
    }
    // Broken JSON still says so.
    let (status, v) = post_raw(&gw, &open, r#"{"for": "2h""#).await;
    assert_eq!(status, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON body"),
        "{v}"
    );
    let (_, c) = get(&gw, &format!("/admin/circuits/{WABA}")).await;
    assert_eq!(c["state"], "closed", "bad input changed nothing: {c}");

    // `for`: until = now + 2h, and local replies count down to it.
    let before = chrono::Utc::now();
    let (status, c) = post_raw(&gw, &open, r#"{"for": "2h", "reason": "appeal pending"}"#).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["state"], "open");
    assert_eq!(c["reason"], "appeal pending");
    assert!(c.get("warning").is_none(), "a configured WABA: {c}");
    let until = until_of(&c);
    let two_hours = chrono::Duration::hours(2);
    assert!(
        until >= before + two_hours && until <= chrono::Utc::now() + two_hours,
        "until {until}"
    );
    let r = gw.send_str(PHONE, TEXT_BODY).await;
    assert_eq!(r.status(), 403);
    let retry: i64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((7190..=7200).contains(&retry), "retry-after {retry}");
    // `"for": "90m"` moves the end; an RFC 3339 `until` still works as before.
    let (_, c) = post_raw(&gw, &open, r#"{"for": "1h 30m"}"#).await;
    let left = until_of(&c) - chrono::Utc::now();
    assert!(left <= chrono::Duration::minutes(90) && left > chrono::Duration::minutes(89));
    let (status, c) = post_raw(&gw, &open, r#"{"until": "2099-01-02T03:04:05Z"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(c["until"], "2099-01-02T03:04:05Z");
    assert_eq!(fake.count_for_phone(PHONE), 0);
}

/// `?phone=` lists the circuits that guard one number: its own, its WABA's (closed when it
/// never opened) and its WABA's templates' — not other numbers' or other WABAs'. An
/// operator's `phone:{id}` open of a configured number holds that number alone.
#[tokio::test]
async fn circuits_by_phone_number() {
    let fake = FakeCloud::start().await;
    let gw = gateway(&fake, "").await;
    let q = |p: &str| format!("/admin/circuits?phone={p}");

    // Nothing open: the WABA's circuit shows as closed.
    let (status, list) = get(&gw, &q(PHONE)).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(keys(&list), [WABA]);
    assert_eq!(list[0]["state"], "closed");

    // An operator holds one configured number: that number alone, not its WABA.
    let (status, c) = post_raw(&gw, &format!("/admin/circuits/phone:{PHONE}/open"), "").await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(
        (&c["waba_id"], &c["phone_number_id"]),
        (&json!(WABA), &json!(PHONE))
    );
    let r = gw.send_str(PHONE, TEXT_BODY).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-wa-breaker"], "open");
    assert_eq!(gw.send_str(PHONE_B, TEXT_BODY).await.status(), 200);
    assert_eq!(
        get(&gw, &format!("/admin/circuits/{WABA}")).await.1["state"],
        "closed"
    );

    let template = format!("template:{WABA}:order_update:en_US");
    for id in [
        template.clone(),
        format!("phone:{PHONE_B}"),
        WABA2.to_string(),
    ] {
        let (status, v) = post_raw(&gw, &format!("/admin/circuits/{id}/open"), "").await;
        assert_eq!(status, 200, "{id}: {v}");
    }
    let (_, list) = get(&gw, &q(PHONE)).await;
    assert_eq!(
        keys(&list),
        [WABA.to_string(), format!("phone:{PHONE}"), template.clone()]
    );
    let (_, list) = get(&gw, &format!("{}&state=open", q(PHONE))).await;
    assert_eq!(keys(&list), [format!("phone:{PHONE}"), template.clone()]);
    let (_, list) = get(&gw, &q(PHONE2)).await;
    assert_eq!(keys(&list), [WABA2]);
    assert_eq!(list[0]["state"], "open");

    // A number nothing maps, with a circuit of its own (a trip before its WABA is known).
    let stray = "106540350000001";
    let (_, list) = get(&gw, &q(stray)).await;
    assert_eq!(list, json!([]));
    let (status, _) = post_raw(&gw, &format!("/admin/circuits/phone:{stray}/open"), "").await;
    assert_eq!(status, 200);
    let (_, list) = get(&gw, &q(stray)).await;
    assert_eq!(keys(&list), [format!("phone:{stray}")]);

    for bad in ["abc", "", "12%2034"] {
        let (status, v) = get(&gw, &q(bad)).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(v["error"].as_str().unwrap().contains("phone"), "{v}");
    }
}

/// A phone number's id where a WABA id belongs gets a 404 that names `?phone=`; an unknown
/// id keeps the plain 404.
#[tokio::test]
async fn a_phone_number_asked_for_as_a_waba_gets_a_hint() {
    let fake = FakeCloud::start().await;
    let gw = gateway(&fake, "").await;
    let (status, v) = get(&gw, &format!("/admin/circuits/{PHONE}")).await;
    assert_eq!(status, 404);
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("phone number") && msg.contains(&format!("?phone={PHONE}")),
        "{msg}"
    );
    let (status, v) = get(&gw, "/admin/circuits/999999999999").await;
    assert_eq!(status, 404);
    assert_eq!(v["error"], "no circuit for that WABA");
    let (status, v) = get(&gw, &format!("/admin/circuits/{WABA}")).await;
    assert_eq!((status, &v["state"]), (200, &json!("closed")));
}

/// An operator may hold a WABA before it is configured; the answer and the log say that no
/// send is routed to it yet. A phone number's id opened as a WABA says what to open instead.
#[tokio::test]
async fn opening_an_unknown_waba_works_with_a_warning() {
    let fake = FakeCloud::start().await;
    let gw = gateway(&fake, "").await;
    let unknown = "102290129349999";
    let (status, c) = post_raw(
        &gw,
        &format!("/admin/circuits/{unknown}/open"),
        r#"{"reason": "pre-emptive"}"#,
    )
    .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["state"], "open");
    assert_eq!(c["durable"], true);
    let warning = c["warning"].as_str().unwrap_or_else(|| panic!("{c}"));
    assert!(
        warning.contains(&format!("WABA {unknown} is not configured or learned"))
            && warning.contains("no send is routed to it yet"),
        "{warning}"
    );
    assert!(
        gw.wait_for_log("not configured or learned", Duration::from_secs(5))
            .await,
        "{}",
        gw.logs()
    );
    let line = gw
        .logs()
        .lines()
        .find(|l| l.contains("not configured or learned"))
        .unwrap()
        .to_string();
    assert!(line.contains("WARN") && line.contains(unknown), "{line}");
    // Once it has a circuit, it is no longer unknown.
    let (_, c) = post_raw(&gw, &format!("/admin/circuits/{unknown}/open"), "").await;
    assert!(c.get("warning").is_none(), "{c}");
    // Known WABAs: no warning.
    let (_, c) = post_raw(&gw, &format!("/admin/circuits/{WABA}/open"), "").await;
    assert!(c.get("warning").is_none(), "{c}");
    // A phone number's id: the warning says which circuit would hold that number.
    let (status, c) = post_raw(&gw, &format!("/admin/circuits/{PHONE2}/open"), "").await;
    assert_eq!(status, 200);
    let warning = c["warning"].as_str().unwrap();
    assert!(
        warning.contains(&format!("phone number of WABA {WABA2}"))
            && warning.contains(&format!("phone:{PHONE2}")),
        "{warning}"
    );
    // Closing needs no warning either way.
    let (status, c) = post_raw(&gw, "/admin/circuits/102290129340001/close", "").await;
    assert_eq!(status, 200);
    assert!(c.get("warning").is_none(), "{c}");
}

/// Operators open and close a template's circuit by its key, as the README promises; the
/// template's sends follow it.
#[tokio::test]
async fn operators_open_and_close_template_circuits() {
    let fake = FakeCloud::start().await;
    let gw = gateway(&fake, "").await;
    let key = format!("template:{WABA}:order_update:en_US");
    let (status, c) = post_raw(
        &gw,
        &format!("/admin/circuits/{key}/open"),
        r#"{"reason": "paused in Business Manager", "for": "3h"}"#,
    )
    .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["state"], "open");
    assert_eq!(c["scope"], "business_initiated");
    assert_eq!(
        c["template"],
        json!({"name": "order_update", "language": "en_US"})
    );
    let r = gw.send_str(PHONE, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-wa-breaker"], "open");
    assert_eq!(gw.send_str(PHONE, TEXT_BODY).await.status(), 200);
    let (status, c) = post_raw(&gw, &format!("/admin/circuits/{key}/close"), "").await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["state"], "closed");
    assert_eq!(gw.send_str(PHONE, TEMPLATE_BODY).await.status(), 200);
    assert_eq!(fake.count_for_phone(PHONE), 2);
    for bad in [
        format!("template:{WABA}:Order:en_US"),
        format!("template:{WABA}:order_update"),
        "template:x:order_update:en_US".to_string(),
    ] {
        let (status, v) = post_raw(&gw, &format!("/admin/circuits/{bad}/open"), "").await;
        assert_eq!(status, 400, "{bad}: {v}");
    }
}

/// While the main listener drains, `/readyz` answers 503 `draining` (not `loading state`).
async fn readyz_says_draining_during_a_drain(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = gateway(&fake, engine.config_line()).await;
    let r = gw.admin_get("/readyz", None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ready\n");
    fake.hold();
    let url = format!("{}/{TEST_VERSION}/{PHONE}/messages", gw.url());
    let client = gw.client();
    let in_flight = tokio::spawn(async move {
        client
            .post(url)
            .header("content-type", "application/json")
            .body(TEXT_BODY)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    assert!(fake.wait_in_flight(1, Duration::from_secs(5)).await);
    gw.signal("TERM");
    assert!(
        gw.wait_for_log("shutting down", Duration::from_secs(5))
            .await
    );
    let r = gw.admin_get("/readyz", None).await;
    assert_eq!(r.status(), 503, "{}", engine.name());
    assert_eq!(r.text().await.unwrap(), "draining\n", "{}", engine.name());
    fake.release();
    assert_eq!(in_flight.await.unwrap().unwrap(), 200);
    let status = gw.wait_exit(Duration::from_secs(20)).await.expect("exits");
    assert!(status.success(), "{status:?}");
}

both_engines!(readyz_says_draining_during_a_drain);
