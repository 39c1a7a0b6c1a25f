//! Issue 21, the pace at Meta's throughput level: with a health token the gateway reads each
//! phone number's `throughput` level once (`GET /{phone-number-id}?fields=throughput`) and
//! paces the number at it — `HIGH` 1 000/s, `STANDARD` 80/s — unless the operator listed the
//! number; a signed `THROUGHPUT_UPGRADE` (after a `messages` webhook taught its display
//! number) reads it again. Real sockets, both engines (`both_engines!` at the end).

use std::time::{Duration, Instant};

use crate::signals_util::{deliver, ADMIN, HEALTH_TOKEN, SECRET};
use crate::support::*;
use serde_json::{json, Value};

const WABA: &str = "102290129340398";
/// Meta says HIGH.
const PHONE_HIGH: &str = "106540352242922";
/// Meta says STANDARD.
const PHONE_STD: &str = "106540352242923";
/// The operator's entry (5/s); Meta would say HIGH.
const PHONE_OP: &str = "106540352242924";
/// Upgraded later by Meta.
const PHONE_UP: &str = "106540352242925";
const DISPLAY_UP: &str = "15550783881";

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
request_timeout = "5s"

[webhook]
app_secret = "{SECRET}"

[health]
access_token = "{HEALTH_TOKEN}"

# The default is far below Meta's levels, so which one paces a number shows.
[shaping]
mode = "enforce"
throughput = 5
max_delay = "100ms"

[shaping.phone_throughput]
"{PHONE_OP}" = 5

[[accounts]]
waba_id = "{WABA}"
phone_number_ids = ["{PHONE_HIGH}", "{PHONE_STD}", "{PHONE_OP}", "{PHONE_UP}"]
"#
    )
}

/// The fake answers `GET /v21.0/{phone}?fields=throughput` with `level`.
fn set_level(fake: &FakeCloud, phone: &str, level: &str) {
    fake.on_path(
        &format!("/v21.0/{phone}"),
        Reply::json(200, &json!({"throughput": {"level": level}, "id": phone})),
    );
}

/// Level reads of `phone` the fake received.
fn reads(fake: &FakeCloud, phone: &str) -> usize {
    fake.requests_to(&format!("/v21.0/{phone}"))
        .iter()
        .filter(|r| {
            r.method == "GET" && r.query.as_deref().is_some_and(|q| q.contains("throughput"))
        })
        .count()
}

async fn pace(gw: &Gateway, phone: &str) -> Value {
    let r = gw
        .admin_get(&format!("/admin/pace/{phone}"), Some(ADMIN))
        .await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Waits until `/admin/pace/{phone}` shows `throughput`.
async fn wait_pace(gw: &Gateway, phone: &str, throughput: u64) -> Value {
    let t0 = Instant::now();
    loop {
        let p = pace(gw, phone).await;
        if p["throughput"] == throughput {
            return p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{phone} never paced at {throughput}: {p}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` sends of `phone` at once: how many reached the fake (200) and how many were answered
/// locally with 130429.
async fn burst(gw: &Gateway, phone: &str, n: usize) -> (usize, usize) {
    let all = futures_util::future::join_all((0..n).map(|_| gw.send_str(phone, TEXT_BODY))).await;
    let mut ok = 0;
    let mut local = 0;
    for r in all {
        let shaped = r
            .headers()
            .get("x-wa-breaker")
            .is_some_and(|v| v == "shaped");
        match r.status().as_u16() {
            200 => ok += 1,
            400 if shaped => local += 1,
            s => panic!("{phone}: unexpected answer {s}"),
        }
    }
    (ok, local)
}

/// Meta says HIGH for one number and STANDARD for another: after each number's first send
/// the level is read (once) and paces it — 200 sends at once of the HIGH number all go, the
/// STANDARD number's burst stops near 80 (not at the default 5); `/admin/pace` says
/// `source: "meta"` with the level. The operator's entry wins (and is never read).
async fn meta_level_paces_a_number_and_the_operator_entry_still_wins(engine: Engine) {
    let fake = FakeCloud::start().await;
    let name = engine.name();
    set_level(&fake, PHONE_HIGH, "HIGH");
    set_level(&fake, PHONE_STD, "STANDARD");
    set_level(&fake, PHONE_OP, "HIGH");
    let gw = Gateway::builder(&config(engine))
        .var("upstream", &fake.url())
        .start()
        .await;

    for phone in [PHONE_HIGH, PHONE_STD, PHONE_OP] {
        assert_eq!(gw.send_str(phone, TEXT_BODY).await.status(), 200, "{name}");
    }
    let high = wait_pace(&gw, PHONE_HIGH, 1000).await;
    assert_eq!(high["source"], "meta", "{name}: {high}");
    assert_eq!(high["level"], "HIGH", "{name}: {high}");
    let std = wait_pace(&gw, PHONE_STD, 80).await;
    assert_eq!(std["source"], "meta", "{name}: {std}");
    assert_eq!(std["level"], "STANDARD", "{name}: {std}");
    let op = pace(&gw, PHONE_OP).await;
    assert_eq!(op["source"], "phone_throughput", "{name}: {op}");
    assert_eq!(op["throughput"], 5, "{name}: {op}");

    let (ok, local) = burst(&gw, PHONE_HIGH, 200).await;
    assert_eq!((ok, local), (200, 0), "{name}: HIGH, 200 at once");
    let (ok, local) = burst(&gw, PHONE_STD, 200).await;
    // A second's burst (80, one already spent) and a few more within max_delay (100 ms)
    // while the 200 arrive: near 80, far from the default's 5 and from 200.
    assert!(
        (75..=140).contains(&ok),
        "{name}: STANDARD forwarded {ok} of 200"
    );
    assert_eq!(ok + local, 200, "{name}");
    let (ok, _) = burst(&gw, PHONE_OP, 30).await;
    assert!(ok <= 7, "{name}: the operator's 5/s forwarded {ok}");

    // Once per number, not per send; the operator's number is not read at all.
    assert_eq!(reads(&fake, PHONE_HIGH), 1, "{name}");
    assert_eq!(reads(&fake, PHONE_STD), 1, "{name}");
    assert_eq!(reads(&fake, PHONE_OP), 0, "{name}");
    let read = fake.requests_to(&format!("/v21.0/{PHONE_HIGH}"));
    assert_eq!(
        read[0].header("authorization"),
        Some(format!("Bearer {HEALTH_TOKEN}").as_str()),
        "{name}: read with the health token"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "wa_breaker_shaping_throughput_reads_total",
            &[("result", "high")]
        ),
        Some(1.0),
        "{name}"
    );
    assert_eq!(
        metric(
            &m,
            "wa_breaker_shaping_throughput_reads_total",
            &[("result", "standard")]
        ),
        Some(1.0),
        "{name}"
    );
}

/// A `messages` webhook (a status) whose metadata names the display number and the id.
fn status_of(display: &str, phone: &str) -> Value {
    envelope(vec![entry(
        WABA,
        now_unix(),
        vec![change(
            "messages",
            json!({
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": display, "phone_number_id": phone},
                "statuses": [{"id": "wamid.X", "status": "delivered", "timestamp": now_unix().to_string(), "recipient_id": "15557654321"}],
            }),
        )],
    )])
}

fn upgrade(display: &str) -> Value {
    envelope(vec![entry(
        WABA,
        now_unix(),
        vec![change(
            "phone_number_quality_update",
            json!({"display_phone_number": display, "event": "THROUGHPUT_UPGRADE", "current_limit": "TIER_UNLIMITED"}),
        )],
    )])
}

/// A number at STANDARD; a `messages` webhook teaches its display number; Meta upgrades it
/// (the fake says HIGH from now) and announces it with a signed THROUGHPUT_UPGRADE: the level
/// is read again and the number's pace rises to 1 000/s. An upgrade of a display number no
/// webhook named changes nothing (counted).
async fn throughput_upgrade_reads_the_level_again_and_the_pace_rises(engine: Engine) {
    let fake = FakeCloud::start().await;
    let name = engine.name();
    set_level(&fake, PHONE_UP, "STANDARD");
    let gw = Gateway::builder(&config(engine))
        .var("upstream", &fake.url())
        .start()
        .await;
    assert_eq!(
        gw.send_str(PHONE_UP, TEXT_BODY).await.status(),
        200,
        "{name}"
    );
    wait_pace(&gw, PHONE_UP, 80).await;

    // Before any messages webhook the display number is not known.
    assert_eq!(deliver(&gw, &upgrade("15550000000")).await.status(), 200);
    assert_eq!(
        deliver(
            &gw,
            &status_of(&format!("+1 555-078-{}", &DISPLAY_UP[7..]), PHONE_UP)
        )
        .await
        .status(),
        200,
        "{name}"
    );
    set_level(&fake, PHONE_UP, "HIGH");
    assert_eq!(deliver(&gw, &upgrade(DISPLAY_UP)).await.status(), 200);
    let p = wait_pace(&gw, PHONE_UP, 1000).await;
    assert_eq!(p["source"], "meta", "{name}: {p}");
    assert_eq!(p["level"], "HIGH", "{name}: {p}");
    let t0 = Instant::now();
    while reads(&fake, PHONE_UP) < 2 {
        assert!(t0.elapsed() < Duration::from_secs(5), "{name}: no re-read");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ok, _) = burst(&gw, PHONE_UP, 200).await;
    assert_eq!(ok, 200, "{name}: paced at HIGH");
    assert_eq!(
        reads(&fake, PHONE_UP),
        2,
        "{name}: read at start and at the upgrade"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "wa_breaker_shaping_throughput_reads_total",
            &[("result", "upgrade")]
        ),
        Some(1.0),
        "{name}"
    );
    assert_eq!(
        metric(
            &m,
            "wa_breaker_shaping_throughput_reads_total",
            &[("result", "upgrade_unknown_number")]
        ),
        Some(1.0),
        "{name}"
    );
}

/// Without a token nothing is read: numbers are paced at `shaping.throughput` (and the start
/// says so in one WARN line); a THROUGHPUT_UPGRADE sets the number to HIGH directly.
async fn without_a_token_the_default_paces_and_an_upgrade_sets_high(engine: Engine) {
    let fake = FakeCloud::start().await;
    let name = engine.name();
    set_level(&fake, PHONE_UP, "STANDARD");
    let cfg = config(engine).replace(&format!("access_token = \"{HEALTH_TOKEN}\""), "");
    let gw = Gateway::builder(&cfg)
        .var("upstream", &fake.url())
        .start()
        .await;
    assert!(
        gw.wait_for_log(
            "paced at shaping.throughput unless listed in [shaping.phone_throughput]",
            Duration::from_secs(5)
        )
        .await,
        "{name}: the start-up warning"
    );
    assert_eq!(
        gw.send_str(PHONE_UP, TEXT_BODY).await.status(),
        200,
        "{name}"
    );
    let p = pace(&gw, PHONE_UP).await;
    assert_eq!(p["source"], "throughput", "{name}: {p}");
    assert_eq!(p["throughput"], 5, "{name}: {p}");
    deliver(&gw, &status_of(DISPLAY_UP, PHONE_UP)).await;
    deliver(&gw, &upgrade(DISPLAY_UP)).await;
    let p = wait_pace(&gw, PHONE_UP, 1000).await;
    assert_eq!(p["level"], "HIGH", "{name}: {p}");
    assert_eq!(reads(&fake, PHONE_UP), 0, "{name}: no token, no read");
}

both_engines!(
    meta_level_paces_a_number_and_the_operator_entry_still_wins,
    throughput_upgrade_reads_the_level_again_and_the_pace_rises,
    without_a_token_the_default_paces_and_an_upgrade_sets_high,
);
