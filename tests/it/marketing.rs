//! Issue 21, marketing cooldowns: a template's category learned from webhooks (or set by
//! an operator), Meta's 131049 status for a recipient, then MARKETING templates to that
//! recipient answered locally — across a kill -9 and a second replica on one Redis — and
//! everything else forwarded. Real sockets, both engines (`both_engines!` at the end).

use std::time::Duration;

use crate::signals_util::{deliver, ADMIN, SECRET};
use crate::support::*;
use serde_json::{json, Value};

const WABA: &str = "102290129340398";
const PHONE: &str = "106540352242922";
/// The recipient, as Meta's `recipient_id` spells it.
const R: &str = "15557654321";
const OTHER: &str = "15550001111";

fn config(engine: Engine, mode: &str, extra: &str) -> String {
    config_shaping(engine, mode, extra, "")
}

fn config_shaping(engine: Engine, mode: &str, extra: &str, shaping: &str) -> String {
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
{extra}

[webhook]
app_secret = "{SECRET}"

[shaping]
mode = "{mode}"
{shaping}

[[accounts]]
waba_id = "{WABA}"
phone_number_ids = ["{PHONE}"]
"#
    )
}

/// A template send of `name` (en_US) to `to`.
fn template_to(name: &str, to: &str) -> String {
    json!({
        "messaging_product": "whatsapp",
        "to": to,
        "type": "template",
        "template": {"name": name, "language": {"code": "en_US"}},
    })
    .to_string()
}

fn text_to(to: &str) -> String {
    json!({"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": "hi"}})
        .to_string()
}

/// `message_template_status_update` APPROVED for `name` (en_US) with its category.
fn approved(name: &str, category: &str) -> Value {
    change(
        "message_template_status_update",
        json!({
            "event": "APPROVED",
            "message_template_id": 12345678,
            "message_template_name": name,
            "message_template_language": "en_US",
            "message_template_category": category,
            "reason": "NONE",
        }),
    )
}

/// A `messages` status `failed` with 131049 for `to`.
fn marketing_limited(to: &str, t: i64) -> Value {
    change(
        "messages",
        json!({
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": PHONE},
            "statuses": [{
                "id": "wamid.HBgLMTU1NTc2NTQzMjEVAgARGBI",
                "status": "failed",
                "timestamp": t.to_string(),
                "recipient_id": to,
                "errors": [{
                    "code": 131049,
                    "title": "This message was not delivered to maintain healthy ecosystem engagement.",
                    "error_data": {"details": "In order to maintain healthy ecosystem engagement, the message failed to be delivered."},
                }],
            }],
        }),
    )
}

/// Status, `x-wa-breaker`, `retry-after`, Graph code and details of a send.
async fn send(gw: &Gateway, body: &str) -> (u16, Option<String>, Option<i64>, Option<i64>, String) {
    let r = gw.send_str(PHONE, body).await;
    let h = |k: &str| {
        r.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (status, marker, retry) = (
        r.status().as_u16(),
        h("x-wa-breaker"),
        h("retry-after").and_then(|v| v.parse().ok()),
    );
    let v: Value = r.json().await.unwrap_or_default();
    (
        status,
        marker,
        retry,
        v["error"]["code"].as_i64(),
        v["error"]["error_data"]["details"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// Signs and delivers: the categories of `promo_offer` (MARKETING) and `order_update`
/// (UTILITY), then Meta's 131049 for R.
async fn learn_and_limit(gw: &Gateway) {
    let t = now_unix();
    let cats = envelope(vec![entry(
        WABA,
        t,
        vec![
            approved("promo_offer", "MARKETING"),
            approved("order_update", "UTILITY"),
        ],
    )]);
    assert_eq!(deliver(gw, &cats).await.status(), 200);
    let limited = envelope(vec![entry(WABA, t, vec![marketing_limited(R, t)])]);
    assert_eq!(deliver(gw, &limited).await.status(), 200);
}

async fn holds(gw: &Gateway) -> Vec<Value> {
    let r = gw.admin_get("/admin/holds", Some(ADMIN)).await;
    assert_eq!(r.status(), 200);
    r.json::<Vec<Value>>().await.unwrap()
}

/// Asserts a MARKETING template to R (spelled as a send spells it) is answered locally.
async fn assert_held(gw: &Gateway, name: &str) {
    let (status, marker, retry, code, details) =
        send(gw, &template_to("promo_offer", "+1 555-765-4321")).await;
    assert_eq!(status, 400, "{name}");
    assert_eq!(marker.as_deref(), Some("shaped"), "{name}");
    assert_eq!(code, Some(131049), "{name}");
    assert!(
        retry.is_some_and(|s| (86_400 - 120..=86_400).contains(&s)),
        "{name}: retry-after {retry:?}"
    );
    assert!(
        details.contains("wa-breaker answered") && details.contains("131049"),
        "{name}: {details}"
    );
}

/// The issue's test: categories learned from webhooks, a 131049 status for R; a MARKETING
/// template to R is answered locally (131049, `retry-after`, `x-wa-breaker: shaped`), to
/// another recipient forwarded; a UTILITY template, a template of unknown category and a
/// free-form message to R forwarded; still held after kill -9 and a restart; listed by
/// `GET /admin/holds` and cleared by `DELETE`; an operator's and Meta's re-categorisation
/// apply.
async fn a_marketing_template_to_a_recipient_meta_limited_is_held(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = Gateway::builder(&config(engine, "enforce", ""))
        .var("upstream", &fake.url())
        .start()
        .await;
    let name = engine.name();
    learn_and_limit(&gw).await;

    assert_held(&gw, name).await;
    assert_eq!(
        fake.count_for_phone(PHONE),
        0,
        "{name}: nothing reached Meta"
    );
    for (what, body) in [
        (
            "marketing to another recipient",
            template_to("promo_offer", OTHER),
        ),
        ("utility template", template_to("order_update", R)),
        ("unknown category", template_to("welcome_back", R)),
        ("free-form", text_to(R)),
    ] {
        let (status, marker, ..) = send(&gw, &body).await;
        assert_eq!((status, marker), (200, None), "{name}: {what} forwarded");
    }
    assert_eq!(fake.count_for_phone(PHONE), 4, "{name}");

    let listed = holds(&gw).await;
    assert_eq!(listed.len(), 1, "{name}: {listed:?}");
    assert_eq!(listed[0]["kind"], "marketing");
    assert_eq!(listed[0]["waba_id"], WABA);
    assert_eq!(listed[0]["recipient"], R);
    assert!(listed[0]["until"]
        .as_str()
        .is_some_and(|u| u.ends_with('Z')));
    // Holds are not circuits; the category is on the template's (closed) record.
    let r = gw.admin_get("/admin/circuits", Some(ADMIN)).await;
    let all: Vec<Value> = r.json().await.unwrap();
    assert!(
        all.iter().all(|c| c["recipient"].is_null()),
        "{name}: {all:?}"
    );
    let (status, promo) = gw
        .circuit(ADMIN, &format!("template:{WABA}:promo_offer:en_US"))
        .await;
    assert_eq!(status, 200, "{name}");
    assert_eq!(promo["state"], "closed", "{name}");
    assert_eq!(promo["category"]["current"], "MARKETING", "{name}: {promo}");
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "wa_breaker_shaped_total", &[("reason", "marketing")]),
        Some(1.0)
    );
    assert_eq!(metric(&m, "wa_breaker_shaping_cooldowns", &[]), Some(1.0));

    // kill -9 and a restart on the same state_dir: still held (the categories too).
    gw.kill9();
    gw.restart().await;
    assert_held(&gw, name).await;
    assert_eq!(
        fake.count_for_phone(PHONE),
        4,
        "{name}: held after the restart"
    );

    // An operator says welcome_back is MARKETING; Meta moves order_update to MARKETING.
    let r = gw
        .admin_post(
            &format!("/admin/templates/{WABA}/welcome_back/en_US/category"),
            Some(ADMIN),
            Some(&json!({"category": "marketing"})),
        )
        .await;
    assert_eq!(r.status(), 200, "{name}");
    let t = now_unix();
    let moved = change(
        "template_category_update",
        json!({
            "message_template_id": 12345679,
            "message_template_name": "order_update",
            "message_template_language": "en_US",
            "previous_category": "UTILITY",
            "new_category": "MARKETING",
        }),
    );
    assert_eq!(
        deliver(&gw, &envelope(vec![entry(WABA, t, vec![moved])]))
            .await
            .status(),
        200
    );
    for t in ["welcome_back", "order_update"] {
        let (status, marker, _, code, _) = send(&gw, &template_to(t, R)).await;
        assert_eq!(
            (status, marker.as_deref(), code),
            (400, Some("shaped"), Some(131049)),
            "{name}: {t}"
        );
    }

    // Cleared by an operator: MARKETING to R flows again.
    let url = format!("{}/admin/holds/marketing/{WABA}/{R}", gw.admin_url());
    let r = client()
        .delete(&url)
        .header("authorization", format!("Bearer {ADMIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{name}");
    assert!(holds(&gw).await.is_empty(), "{name}");
    let (status, marker, ..) = send(&gw, &template_to("promo_offer", R)).await;
    assert_eq!(
        (status, marker),
        (200, None),
        "{name}: forwarded once cleared"
    );
    assert_eq!(fake.count_for_phone(PHONE), 5, "{name}");
}

/// `shaping.mode = "observe"`: the MARKETING template to R is forwarded and counted.
async fn observe_mode_forwards_a_marketing_send_in_cooldown_and_counts_it(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = Gateway::builder(&config(engine, "observe", ""))
        .var("upstream", &fake.url())
        .start()
        .await;
    let name = engine.name();
    learn_and_limit(&gw).await;
    let (status, marker, ..) = send(&gw, &template_to("promo_offer", R)).await;
    assert_eq!((status, marker), (200, None), "{name}");
    assert_eq!(fake.count_for_phone(PHONE), 1, "{name}");
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "wa_breaker_shaping_observed_total",
            &[("reason", "marketing"), ("action", "answer")]
        ),
        Some(1.0),
        "{name}"
    );
    assert_eq!(
        metric(&m, "wa_breaker_shaped_total", &[("reason", "marketing")]),
        Some(0.0)
    );
}

/// Two replicas on one test-started Redis: the 131049 and the categories delivered to one
/// hold the MARKETING send on the other too.
async fn a_cooldown_is_shared_with_a_second_replica(engine: Engine) {
    let redis = RedisServer::start();
    let fake = FakeCloud::start().await;
    let cfg = config(
        engine,
        "enforce",
        &format!("redis_url = \"{}\"\nredis_prefix = \"mk\"", redis.url()),
    );
    let a = Gateway::builder(&cfg)
        .var("upstream", &fake.url())
        .start()
        .await;
    let b = Gateway::builder(&cfg)
        .var("upstream", &fake.url())
        .start()
        .await;
    let name = engine.name();
    learn_and_limit(&a).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while holds(&b).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: the cooldown did not reach B"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_held(&b, name).await;
    assert_eq!(fake.count_for_phone(PHONE), 0, "{name}");
    let (status, ..) = send(&b, &template_to("order_update", R)).await;
    assert_eq!(status, 200, "{name}: B knows order_update is UTILITY");
}

/// `marketing_cooldown = "3s"`: held, then — the expiry timer closes it — forwarded again.
async fn a_cooldown_ends_by_itself(engine: Engine) {
    let fake = FakeCloud::start().await;
    let cfg = config_shaping(engine, "enforce", "", "marketing_cooldown = \"3s\"");
    let gw = Gateway::builder(&cfg)
        .var("upstream", &fake.url())
        .start()
        .await;
    let name = engine.name();
    learn_and_limit(&gw).await;
    let (status, marker, retry, ..) = send(&gw, &template_to("promo_offer", R)).await;
    assert_eq!((status, marker.as_deref()), (400, Some("shaped")), "{name}");
    assert!(
        retry.is_some_and(|s| (1..=3).contains(&s)),
        "{name}: {retry:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    while !holds(&gw).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: the cooldown did not end"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, marker, ..) = send(&gw, &template_to("promo_offer", R)).await;
    assert_eq!(
        (status, marker),
        (200, None),
        "{name}: forwarded after the end"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "wa_breaker_shaping_cooldowns", &[]),
        Some(0.0),
        "{name}"
    );
}

/// A pair hold (after Meta's 131056) is listed by `GET /admin/holds` as this replica's and
/// cleared by `DELETE /admin/holds/pair/…`: the pair's next send is forwarded.
async fn a_pair_hold_is_listed_and_cleared_by_an_operator(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = Gateway::builder(&config_shaping(
        engine,
        "enforce",
        "",
        "pair_hold = \"60s\"",
    ))
    .var("upstream", &fake.url())
    .start()
    .await;
    let name = engine.name();
    fake.queue_phone(
        PHONE,
        vec![Reply::graph_error(
            400,
            131056,
            "(#131056) (Business Account, Consumer Account) pair rate limit hit",
        )],
    );
    let (_, _, _, code, _) = send(&gw, &text_to(R)).await;
    assert_eq!(code, Some(131056), "{name}");
    let (status, marker, ..) = send(&gw, &text_to(R)).await;
    assert_eq!((status, marker.as_deref()), (400, Some("shaped")), "{name}");
    let listed = holds(&gw).await;
    assert_eq!(listed.len(), 1, "{name}: {listed:?}");
    assert_eq!(listed[0]["kind"], "pair");
    assert_eq!(listed[0]["phone_number_id"], PHONE);
    assert_eq!(listed[0]["recipient"], R);
    assert_eq!(listed[0]["level"], 0);
    let admin = gw.admin_url();
    let delete = |path: String| {
        let url = format!("{admin}{path}");
        async move {
            client()
                .delete(url)
                .header("authorization", format!("Bearer {ADMIN}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let path = format!("/admin/holds/pair/{PHONE}/%2B1%20555-765-4321");
    assert_eq!(delete(path.clone()).await, 200, "{name}");
    assert_eq!(delete(path).await, 404, "{name}: gone");
    assert!(holds(&gw).await.is_empty(), "{name}");
    let (status, marker, ..) = send(&gw, &text_to(R)).await;
    assert_eq!(
        (status, marker),
        (200, None),
        "{name}: forwarded once cleared"
    );
    assert_eq!(fake.count_for_phone(PHONE), 2, "{name}");
    // The number's pace on this replica.
    let r = gw
        .admin_get(&format!("/admin/pace/{PHONE}"), Some(ADMIN))
        .await;
    assert_eq!(r.status(), 200, "{name}");
    let pace: Value = r.json().await.unwrap();
    assert_eq!(pace["throughput"], 80, "{name}: {pace}");
    assert_eq!(pace["source"], "throughput", "{name}");
    assert_eq!(pace["mode"], "enforce", "{name}");
    assert_eq!(pace["lowered"], false, "{name}");
    let r = gw.admin_get("/admin/pace/not-a-number", Some(ADMIN)).await;
    assert_eq!(r.status(), 400, "{name}");
    // Without the token: 401.
    let r = client()
        .get(format!("{}/admin/holds", gw.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "{name}");
}

both_engines!(
    a_cooldown_ends_by_itself,
    a_pair_hold_is_listed_and_cleared_by_an_operator,
    a_marketing_template_to_a_recipient_meta_limited_is_held,
    observe_mode_forwards_a_marketing_send_in_cooldown_and_counts_it,
    a_cooldown_is_shared_with_a_second_replica,
);
