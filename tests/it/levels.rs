//! Issue 14 — acting at the level Meta enforces, over real sockets against the built binary
//! and the fake Cloud API: restriction types mapped to the narrowest scope, ids from the
//! right field (PARTNER_*), account lifecycle events, errors that arrive only by webhook,
//! and the `fbtrace_id` of local replies. Everything a send goes through runs on both
//! engines.

use std::time::Duration;

use crate::signals_util::*;
use crate::support::*;
use serde_json::{json, Value};

const SEC: Duration = Duration::from_secs(3);

const BIZ: &str = "RESTRICTED_BIZ_INITIATED_MESSAGING";
const CUST: &str = "RESTRICTED_CUSTOMER_INITIATED_MESSAGING";
const UTILITY: &str = "RESTRICTED_DIRECT_SEND_UTILITY_TEMPLATES";
const ADD_PHONE: &str = "RESTRICTED_ADD_PHONE_NUMBER_ACTION";
const CALLING: &str = "RESTRICTED_BIZ_INITIATED_CALLING";
const UNKNOWN: &str = "RESTRICTED_SOMETHING_META_ADDS_LATER";
/// The calling types Meta lists today: none blocks a send the gateway guards.
const NOT_SENDS_TODAY: &[&str] = &[
    "RESTRICTED_BIZ_INITIATED_AND_USER_INITIATED_CALLING",
    "RESTRICTED_BUSINESS_INITIATED_CALLING",
    "RESTRICTED_USER_INITIATED_CALLING",
    "RESTRICTED_USER_INITIATED_CALLING_CALL_BUTTON_HIDDEN",
];

/// The partner's business portfolio id PARTNER_* events are delivered on.
const PORTFOLIO: &str = "506914307656634";

async fn gateway(engine: Engine, fake: &FakeCloud) -> Gateway {
    Gateway::start(&format!(
        "{}\n{}",
        engine.config_line(),
        config(&fake.url(), "", "")
    ))
    .await
}

/// Sends a template and a free-form text for `PHONE`; true where each was answered locally.
async fn blocked(gw: &Gateway) -> (bool, bool) {
    let mut out = [false; 2];
    for (i, body) in [TEMPLATE_BODY, TEXT_BODY].into_iter().enumerate() {
        let r = gw.send_str(PHONE, body).await;
        let local = r.headers().get("x-wa-breaker").is_some();
        assert_eq!(r.status(), if local { 403 } else { 200 }, "{body}");
        out[i] = local;
    }
    (out[0], out[1])
}

/// Each restriction type alone and in pairs, against the expected scope: what reaches the
/// fake and what is answered locally. (Every pair of every type is in the unit table of
/// `graph::plan`; here the scopes over the wire.)
async fn restriction_types_alone_and_in_pairs(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = gateway(engine, &fake).await;
    // (types, scope, template blocked, text blocked)
    let rows: &[(&[&str], &str, bool, bool)] = &[
        (&[BIZ], "business_initiated", true, false),
        (&[CUST], "customer_initiated", false, true),
        (&[BIZ, CUST], "all_sends", true, true),
        // Utility templates: held by category, and this template's is not known (so it
        // goes; `warnings::category_scopes…` holds a known UTILITY one).
        (&[UTILITY], "utility_templates", false, false),
        (&[ADD_PHONE], "closed", false, false),
        (&[CALLING], "closed", false, false),
        (&[UNKNOWN], "closed", false, false),
        (&[BIZ, ADD_PHONE], "business_initiated", true, false),
        (&[CUST, UNKNOWN], "customer_initiated", false, true),
        (&[UTILITY, BIZ], "business_initiated", true, false),
        (&[UTILITY, UNKNOWN], "utility_templates", false, false),
        (&[UTILITY, CUST], "customer_initiated", false, true),
        (&[CUST, CALLING], "customer_initiated", false, true),
        (NOT_SENDS_TODAY, "closed", false, false),
        (
            &[NOT_SENDS_TODAY[0], ADD_PHONE, BIZ],
            "business_initiated",
            true,
            false,
        ),
    ];
    let mut t = now_unix() - 1000;
    for (types, scope, tpl, text) in rows {
        t += 2;
        let body = account_update(WABA, t, restriction(types, json!(now_unix() + 3600)));
        assert_eq!(deliver(&gw, &body).await.status(), 200);
        let c = circuit(&gw, WABA).await;
        let got = if c["state"] == "open" {
            c["scope"].as_str().unwrap_or_default().to_string()
        } else {
            "closed".to_string()
        };
        assert_eq!(got, *scope, "{types:?} on {}", engine.name());
        let before = fake.count_for_phone(PHONE);
        let (b_tpl, b_text) = blocked(&gw).await;
        assert_eq!(
            (b_tpl, b_text),
            (*tpl, *text),
            "{types:?} on {}",
            engine.name()
        );
        let reached = 2 - usize::from(b_tpl) - usize::from(b_text);
        assert_eq!(fake.count_for_phone(PHONE) - before, reached, "{types:?}");
        if types.contains(&UNKNOWN) {
            let last = c["history"].as_array().unwrap().last().unwrap().clone();
            assert!(
                last["reason"]
                    .as_str()
                    .unwrap()
                    .contains("unknown restriction type"),
                "{last}"
            );
        }
        // Closed again for the next row.
        let r = deliver(&gw, &account_update(WABA, t + 1, disabled("REINSTATE"))).await;
        assert_eq!(r.status(), 200);
        assert_eq!(circuit(&gw, WABA).await["state"], "closed");
    }
}

/// A send answered 368 trips; the later local answers carry Meta's fbtrace_id of that
/// answer. A circuit opened by a webhook carries a gateway-made id, marked as such.
async fn local_reply_carries_fbtrace_id(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = gateway(engine, &fake).await;
    fake.on_phone(PHONE, Reply::blocked_368());
    let r = gw.send_str(PHONE, TEXT_BODY).await;
    assert_eq!(r.status(), 403);
    assert!(
        r.headers().get("x-wa-breaker").is_none(),
        "Meta's own answer"
    );
    let r = gw.send_str(PHONE, TEXT_BODY).await;
    assert_eq!(r.headers()["x-wa-breaker"], "open");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], 368);
    assert_eq!(v["error"]["fbtrace_id"], FBTRACE_ID, "{v}");
    let details = v["error"]["error_data"]["details"].as_str().unwrap();
    assert!(
        details.starts_with("wa-breaker answered locally"),
        "{details}"
    );
    assert_eq!(fake.count_for_phone(PHONE), 1);

    let r = deliver(&gw, &account_update(WABA2, now_unix(), disabled("DISABLE"))).await;
    assert_eq!(r.status(), 200);
    let r = gw.send_str(PHONE2, TEXT_BODY).await;
    assert_eq!(r.headers()["x-wa-breaker"], "open");
    let v: Value = r.json().await.unwrap();
    let id = v["error"]["fbtrace_id"].as_str().unwrap();
    assert!(id.starts_with("wa-breaker-"), "{v}");
    assert!(v["error"]["error_data"]["details"]
        .as_str()
        .unwrap()
        .contains("gateway's own"));
    assert_eq!(fake.count_for_phone(PHONE2), 0);
}

/// A `messages` webhook whose `statuses[].errors[]` holds 368 opens the WABA with no
/// further send; every code is counted; 131031 in `value.errors[]` is only a note.
async fn status_error_368_opens_without_a_send(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = gateway(engine, &fake).await;
    let t = now_unix();
    let statuses = change(
        "messages",
        json!({
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": PHONE},
            "statuses": [{
                "id": "wamid.HBgLMTU1NTEyMzQ1NjcVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA",
                "status": "failed", "timestamp": t.to_string(), "recipient_id": "15551234567",
                "errors": [{"code": 368, "title": "Temporarily blocked for policies violations",
                            "message": "Temporarily blocked for policies violations",
                            "error_data": {"details": "restricted"}}]
            }]
        }),
    );
    let locked = change(
        "messages",
        json!({"messaging_product": "whatsapp",
               "errors": [{"code": 131031, "title": "Account has been locked"},
                          {"code": 987654, "title": "Something new"}]}),
    );
    let body = envelope(vec![
        entry(WABA, t, vec![statuses]),
        entry(WABA2, t, vec![locked]),
    ]);
    assert_eq!(deliver(&gw, &body).await.status(), 200);
    let c = circuit(&gw, WABA).await;
    assert_eq!(c["state"], "open", "{c}");
    assert_eq!(c["scope"], "all_sends");
    assert_eq!(c["code"], 368);
    assert_eq!(c["source"], "webhook");
    let ev = &c["history"][0]["evidence"];
    assert_eq!(ev["field"], "messages");
    assert_eq!(ev["event"], "statuses[].errors[]");
    assert!(ev["value"].get("recipient_id").is_none(), "{ev}");
    assert_eq!(fake.count(), 0, "no send was needed");
    // Sends are answered locally with the code Meta reported.
    let r = gw.send_str(PHONE, TEMPLATE_BODY).await;
    assert_eq!(r.headers()["x-wa-breaker"], "open");
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], 368);
    assert_eq!(fake.count_for_phone(PHONE), 0);
    // 131031 outside a status: recorded, not a block.
    let c2 = circuit(&gw, WABA2).await;
    assert_eq!(c2["state"], "closed", "{c2}");
    assert!(notes(&c2)[0]["reason"].as_str().unwrap().contains("131031"));
    assert_eq!(gw.send_str(PHONE2, TEXT_BODY).await.status(), 200);
    let m = gw.metrics().await;
    for (code, site) in [("368", "status"), ("131031", "value"), ("other", "value")] {
        assert_eq!(
            metric(
                &m,
                "wa_breaker_webhook_errors_total",
                &[("code", code), ("site", site)]
            ),
            Some(1.0),
            "{code} {site}"
        );
    }
}

both_engines!(
    restriction_types_alone_and_in_pairs,
    local_reply_carries_fbtrace_id,
    status_error_368_opens_without_a_send,
    phone_level_code_trips_only_that_phone,
    paused_template_answers_only_that_template,
    template_answer_opens_that_template,
    maintenance_honours_retry_after,
);

/// PARTNER_* events are keyed by `waba_info.waba_id`: no circuit for the portfolio id.
#[tokio::test]
async fn partner_events_create_no_circuit_for_the_portfolio() {
    let fake = FakeCloud::start().await;
    let gw = gateway(Engine::Relay, &fake).await;
    let t = now_unix();
    let body = envelope(vec![entry(
        PORTFOLIO,
        t,
        vec![
            change(
                "account_update",
                json!({"event": "PARTNER_REMOVED",
                       "waba_info": {"waba_id": WABA, "owner_business_id": "1234567890"}}),
            ),
            change(
                "account_update",
                json!({"event": "PARTNER_APP_INSTALLED",
                       "waba_info": {"waba_id": WABA2, "owner_business_id": "1234567890", "partner_app_id": "42"}}),
            ),
            // Without waba_info: nothing to key it by.
            change("account_update", event("PARTNER_ADDED")),
        ],
    )]);
    assert_eq!(deliver(&gw, &body).await.status(), 200);
    assert_eq!(circuit(&gw, PORTFOLIO).await, Value::Null);
    let r = gw.admin_get("/admin/circuits", Some(ADMIN)).await;
    assert_eq!(r.status(), 200);
    let list: Value = r.json().await.unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["waba_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [WABA, WABA2], "no phantom circuit for the portfolio");
    for (waba, e) in [(WABA, "PARTNER_REMOVED"), (WABA2, "PARTNER_APP_INSTALLED")] {
        let c = circuit(&gw, waba).await;
        assert_eq!(c["state"], "closed");
        let n = notes(&c);
        assert_eq!(n.len(), 1, "{c}");
        assert!(n[0]["reason"].as_str().unwrap().contains(e));
        assert_eq!(n[0]["evidence"]["entry_id"], PORTFOLIO);
    }
    assert_eq!(gw.send_str(PHONE, TEXT_BODY).await.status(), 200);
}

/// ACCOUNT_DELETED and ACCOUNT_OFFBOARDED open; ACCOUNT_RECONNECTED closes what OFFBOARDED
/// opened, and nothing else.
#[tokio::test]
async fn offboarded_opens_and_reconnected_closes_only_that() {
    let fake = FakeCloud::start().await;
    let gw = gateway(Engine::Relay, &fake).await;
    let t = now_unix() - 100;
    let r = deliver(&gw, &account_update(WABA, t, event("ACCOUNT_OFFBOARDED"))).await;
    assert_eq!(r.status(), 200);
    let c = circuit(&gw, WABA).await;
    assert_eq!(
        (c["state"].as_str(), c["scope"].as_str()),
        (Some("open"), Some("all_sends"))
    );
    assert_eq!(gw.send_str(PHONE, TEMPLATE_BODY).await.status(), 403);
    let r = deliver(
        &gw,
        &account_update(WABA, t + 1, event("ACCOUNT_RECONNECTED")),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(circuit(&gw, WABA).await["state"], "closed");
    assert_eq!(gw.send_str(PHONE, TEMPLATE_BODY).await.status(), 200);

    // A policy block is not undone by a reconnection: recorded only.
    let r = deliver(&gw, &account_update(WABA, t + 2, disabled("DISABLE"))).await;
    assert_eq!(r.status(), 200);
    let r = deliver(
        &gw,
        &account_update(WABA, t + 3, event("ACCOUNT_RECONNECTED")),
    )
    .await;
    assert_eq!(r.status(), 200);
    let c = circuit(&gw, WABA).await;
    assert_eq!(c["state"], "open", "{c}");
    let last = c["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["note"], true);
    assert!(last["reason"]
        .as_str()
        .unwrap()
        .contains("not opened by ACCOUNT_OFFBOARDED"));

    // Deleted: open, no end.
    let r = deliver(&gw, &account_update(WABA2, t, event("ACCOUNT_DELETED"))).await;
    assert_eq!(r.status(), 200);
    let c = circuit(&gw, WABA2).await;
    assert_eq!(c["state"], "open");
    assert!(c["until"].is_null());
    assert_eq!(gw.send_str(PHONE2, TEXT_BODY).await.status(), 403);
    assert!(gw.wait_for_log("ACCOUNT_DELETED", SEC).await);
    assert_eq!(fake.count_for_phone(PHONE2), 0);
}

const PHONE3: &str = "106540352242924";

/// A phone-level code trips only that phone number, for its hold (retry-after); the WABA's
/// other phone number still sends; an operator closes it.
async fn phone_level_code_trips_only_that_phone(engine: Engine) {
    let fake = FakeCloud::start().await;
    let cfg = config(&fake.url(), "", "").replace(
        &format!("phone_number_ids = [\"{PHONE}\"]"),
        &format!("phone_number_ids = [\"{PHONE}\", \"{PHONE3}\"]"),
    );
    let gw = Gateway::start(&format!("{}\n{cfg}", engine.config_line())).await;
    for (code, hold) in [(133010, 600), (131057, 60)] {
        fake.on_phone(
            PHONE,
            Reply::graph_error(400, code, "phone number cannot send"),
        );
        let r = gw.send_str(PHONE, TEXT_BODY).await;
        assert_eq!(r.status(), 400, "Meta's own answer");
        assert!(r.headers().get("x-wa-breaker").is_none());
        let r = gw.send_str(PHONE, TEMPLATE_BODY).await;
        assert_eq!(r.status(), 403, "{code} on {}", engine.name());
        assert_eq!(r.headers()["x-wa-breaker"], "open");
        let retry: i64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((hold - 10..=hold).contains(&retry), "retry-after {retry}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code);
        assert_eq!(v["error"]["fbtrace_id"], FBTRACE_ID);
        assert!(v["error"]["error_data"]["details"]
            .as_str()
            .unwrap()
            .contains(&format!("phone number {PHONE}")));
        assert_eq!(fake.sends_for(PHONE).len(), 1);
        // The WABA's other phone number still reaches Meta; the WABA stays closed.
        assert_eq!(gw.send_str(PHONE3, TEXT_BODY).await.status(), 200);
        assert_eq!(fake.sends_for(PHONE3).len(), 1);
        fake.clear();
        assert_eq!(circuit(&gw, WABA).await["state"], "closed");
        let c = circuit(&gw, &format!("phone:{PHONE}")).await;
        assert_eq!(c["state"], "open", "{c}");
        assert_eq!(c["waba_id"], WABA);
        assert_eq!(c["code"], code);
        assert!(until(&c).is_some());
        let m = gw.metrics().await;
        assert_eq!(
            metric(
                &m,
                "wa_breaker_phone_circuit_open",
                &[("phone_number_id", PHONE)]
            ),
            Some(1.0)
        );
        // An operator closes it; the phone sends again.
        let r = gw
            .admin_post(
                &format!("/admin/circuits/phone:{PHONE}/close"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(r.status(), 200);
        fake.on_phone(PHONE, Reply::ok_send());
        assert_eq!(gw.send_str(PHONE, TEXT_BODY).await.status(), 200);
        fake.clear();
    }
    // Not from other calls: a /register answered 133010 trips nothing.
    fake.on_path(
        &format!("/{TEST_VERSION}/{PHONE}/register"),
        Reply::graph_error(400, 133010, "not registered"),
    );
    let r = gw
        .post(&format!("/{TEST_VERSION}/{PHONE}/register"), "{}")
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(gw.send_str(PHONE, TEXT_BODY).await.status(), 200);
}

fn template_status(event: &str, title: Option<&str>, name: &str, language: &str) -> Value {
    let mut v = json!({"event": event, "message_template_id": 594425479261596_i64,
        "message_template_name": name, "message_template_language": language, "reason": "NONE"});
    if let Some(t) = title {
        v["other_info"] = json!({"title": t, "description": "Your WhatsApp message template has been paused for 3 hours"});
    }
    v
}

/// A PAUSED webhook for template T: sends of T are answered locally with 132015; other
/// templates, other languages and free-form sends still reach the fake; REINSTATED closes
/// it; DISABLED answers 132016; a body too large to inspect is forwarded; quality updates
/// are counted, never a block; an approval of a template without a circuit records nothing.
async fn paused_template_answers_only_that_template(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = Gateway::start(&format!(
        "{}\nclassify_body_limit = 1024\n{}",
        engine.config_line(),
        config(&fake.url(), "", "")
    ))
    .await;
    let key = format!("template:{WABA}:order_update:en_US");
    let other = TEMPLATE_BODY.replace("order_update", "welcome_back");
    let other_lang = TEMPLATE_BODY.replace("en_US", "en_GB");
    let t = now_unix();
    let paused = change(
        "message_template_status_update",
        template_status("PAUSED", Some("FIRST_PAUSE"), "order_update", "en_US"),
    );
    assert_eq!(
        deliver(&gw, &envelope(vec![entry(WABA, t, vec![paused])]))
            .await
            .status(),
        200
    );
    let c = circuit(&gw, &key).await;
    assert_eq!(c["state"], "open", "{c}");
    assert_eq!(c["code"], 132015);
    assert_eq!(c["template"]["name"], "order_update");
    assert_eq!(until(&c).unwrap().timestamp(), t + 3 * 3600);
    assert_eq!(
        c["history"][0]["evidence"]["value"]["other_info"]["title"],
        "FIRST_PAUSE"
    );
    assert_eq!(circuit(&gw, WABA).await["state"], "closed");

    let r = gw.send_str(PHONE, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 403, "{}", engine.name());
    assert_eq!(r.headers()["x-wa-breaker"], "open");
    let retry: i64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3 * 3600 - 10..=3 * 3600).contains(&retry), "{retry}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], 132015);
    assert!(v["error"]["fbtrace_id"]
        .as_str()
        .unwrap()
        .starts_with("wa-breaker-"));
    assert!(v["error"]["error_data"]["details"]
        .as_str()
        .unwrap()
        .contains("template order_update (en_US)"));
    assert_eq!(fake.count_for_phone(PHONE), 0);
    for body in [other.as_str(), other_lang.as_str(), TEXT_BODY] {
        assert_eq!(gw.send_str(PHONE, body).await.status(), 200, "{body}");
    }
    assert_eq!(fake.count_for_phone(PHONE), 3);
    // Too large to inspect: forwarded, Meta decides.
    let big = TEMPLATE_BODY.replacen(
        "\"type\":\"template\"",
        &format!("\"pad\":\"{}\",\"type\":\"template\"", "x".repeat(2048)),
        1,
    );
    assert_eq!(gw.send_str(PHONE, &big).await.status(), 200);
    assert_eq!(fake.count_for_phone(PHONE), 4);
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "wa_breaker_template_circuit_open",
            &[
                ("waba_id", WABA),
                ("template", "order_update"),
                ("language", "en_US")
            ]
        ),
        Some(1.0)
    );

    // Quality updates: counted and recorded, never a block.
    let quality = change(
        "message_template_quality_update",
        json!({"previous_quality_score": "YELLOW", "new_quality_score": "RED",
               "message_template_id": 1, "message_template_name": "welcome_back",
               "message_template_language": "en_US"}),
    );
    assert_eq!(
        deliver(&gw, &envelope(vec![entry(WABA, t + 1, vec![quality])]))
            .await
            .status(),
        200
    );
    assert_eq!(gw.send_str(PHONE, &other).await.status(), 200);
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "wa_breaker_template_quality_total", &[("score", "RED")]),
        Some(1.0)
    );
    assert!(notes(&circuit(&gw, WABA).await)[0]["reason"]
        .as_str()
        .unwrap()
        .contains("YELLOW -> RED"));

    // REINSTATED closes it; the template reaches Meta again.
    let reinstated = change(
        "message_template_status_update",
        template_status("REINSTATED", Some("UNPAUSE"), "order_update", "en_US"),
    );
    assert_eq!(
        deliver(&gw, &envelope(vec![entry(WABA, t + 2, vec![reinstated])]))
            .await
            .status(),
        200
    );
    assert_eq!(circuit(&gw, &key).await["state"], "closed");
    assert_eq!(gw.send_str(PHONE, TEMPLATE_BODY).await.status(), 200);

    // DISABLED: 132016, no end.
    let disabled_t = change(
        "message_template_status_update",
        template_status("DISABLED", None, "order_update", "en_US"),
    );
    assert_eq!(
        deliver(&gw, &envelope(vec![entry(WABA, t + 3, vec![disabled_t])]))
            .await
            .status(),
        200
    );
    let r = gw.send_str(PHONE, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("retry-after").is_none());
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], 132016);
    // The store carries the template key: still open after a restart.
    gw.restart().await;
    let r = gw.send_str(PHONE, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], 132016);
    assert_eq!(gw.send_str(PHONE, &other).await.status(), 200);

    // An approval of a template that never had a circuit makes none.
    let approved = change(
        "message_template_status_update",
        template_status("APPROVED", None, "brand_new", "de"),
    );
    assert_eq!(
        deliver(&gw, &envelope(vec![entry(WABA, t + 4, vec![approved])]))
            .await
            .status(),
        200
    );
    assert_eq!(
        circuit(&gw, &format!("template:{WABA}:brand_new:de")).await,
        Value::Null
    );
}

/// A chunked send (no declared length) of `body` to `PHONE` over a raw connection.
async fn send_chunked(gw: &Gateway, body: &str) -> Answer {
    use tokio::io::AsyncWriteExt;
    let addr = gw.url().trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /{TEST_VERSION}/{PHONE}/messages HTTP/1.1\r\nHost: gateway.local\r\nAuthorization: Bearer {TEST_TOKEN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    read_answer(&mut s, &mut buf).await
}

/// A send of template T answered 132016 opens T's circuit: the next send of T is answered
/// locally with 132016 (and Meta's fbtrace_id), while a send of template U and a text of
/// the same WABA still reach the fake. 132015 does the same, ending after the answer's
/// `retry-after` or else Meta's first-pause length (3 h). A 132016 to a text, or to a
/// template body too large to inspect, opens nothing. A chunked send (no declared length)
/// is read up to the limit on both engines.
async fn template_answer_opens_that_template(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = Gateway::start(&format!(
        "{}\nclassify_body_limit = 1024\n{}",
        engine.config_line(),
        config(&fake.url(), "", "")
    ))
    .await;
    let tpl = |name: &str| TEMPLATE_BODY.replace("order_update", name);
    let key = |name: &str| format!("template:{WABA}:{name}:en_US");
    let local_code = |r: &reqwest::Response| {
        assert_eq!(r.status(), 403, "{}", engine.name());
        assert_eq!(r.headers()["x-wa-breaker"], "open");
        r.headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse::<i64>().unwrap())
    };

    // 132016: open, no end.
    fake.on_template("order_update", Reply::template_disabled());
    let r = gw.send_str(PHONE, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 400, "Meta's own answer");
    assert!(r.headers().get("x-wa-breaker").is_none());
    assert_eq!(fake.count_for_phone(PHONE), 1);
    let c = circuit(&gw, &key("order_update")).await;
    assert_eq!(c["state"], "open", "{c} on {}", engine.name());
    assert_eq!(c["code"], 132016);
    assert_eq!(c["scope"], "business_initiated");
    assert_eq!(c["source"], "send");
    assert!(c["until"].is_null(), "{c}");
    assert_eq!(c["history"][0]["evidence"]["fbtrace_id"], FBTRACE_ID, "{c}");
    let r = gw.send_str(PHONE, TEMPLATE_BODY).await;
    assert_eq!(local_code(&r), None);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], 132016);
    assert_eq!(v["error"]["fbtrace_id"], FBTRACE_ID, "{v}");
    assert_eq!(fake.count_for_phone(PHONE), 1, "answered locally");
    // Template U and a text of the WABA still reach Meta; the WABA stays closed.
    assert_eq!(gw.send_str(PHONE, &tpl("welcome_back")).await.status(), 200);
    assert_eq!(gw.send_str(PHONE, TEXT_BODY).await.status(), 200);
    assert_eq!(fake.count_for_phone(PHONE), 3);
    assert_ne!(circuit(&gw, WABA).await["state"], "open");

    // 132015 with retry-after: open until then.
    fake.on_template(
        "welcome_back",
        Reply::template_paused().with_header("retry-after", "120"),
    );
    let r = gw.send_str(PHONE, &tpl("welcome_back")).await;
    assert_eq!(r.status(), 400);
    let c = circuit(&gw, &key("welcome_back")).await;
    assert_eq!(c["code"], 132015, "{c}");
    let left = until(&c).unwrap().timestamp() - now_unix();
    assert!((110..=120).contains(&left), "until in {left}s");
    let r = gw.send_str(PHONE, &tpl("welcome_back")).await;
    let retry = local_code(&r).unwrap();
    assert!((110..=120).contains(&retry), "retry-after {retry}");
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], 132015);
    // 132015 without: Meta's first pause, 3 h.
    fake.on_template("third_one", Reply::template_paused());
    assert_eq!(gw.send_str(PHONE, &tpl("third_one")).await.status(), 400);
    let r = gw.send_str(PHONE, &tpl("third_one")).await;
    let retry = local_code(&r).unwrap();
    assert!((3 * 3600 - 10..=3 * 3600).contains(&retry), "{retry}");
    assert_eq!(fake.count_for_phone(PHONE), 5);
    assert_eq!(gw.send_str(PHONE, TEXT_BODY).await.status(), 200);
    assert_eq!(fake.count_for_phone(PHONE), 6);

    // A chunked send of a template (no declared length): read up to the limit, judged.
    fake.on_template("chunky", Reply::template_disabled());
    assert_eq!(send_chunked(&gw, &tpl("chunky")).await.status, 400);
    assert_eq!(circuit(&gw, &key("chunky")).await["state"], "open");
    let a = send_chunked(&gw, &tpl("chunky")).await;
    assert_eq!(
        (a.status, a.header("x-wa-breaker")),
        (403, Some("open".into()))
    );
    assert_eq!(fake.count_for_phone(PHONE), 7);

    // Nothing opens for a text, or for a template too large to inspect.
    fake.clear();
    fake.on_phone(PHONE, Reply::template_disabled());
    fake.on_template("big_one", Reply::template_disabled());
    let big = tpl("big_one").replacen(
        "\"type\":\"template\"",
        &format!("\"pad\":\"{}\",\"type\":\"template\"", "x".repeat(2048)),
        1,
    );
    for _ in 0..2 {
        assert_eq!(gw.send_str(PHONE, TEXT_BODY).await.status(), 400);
        assert_eq!(gw.send_str(PHONE, &big).await.status(), 400);
        assert_eq!(send_chunked(&gw, &big).await.status, 400);
    }
    assert_eq!(fake.count_for_phone(PHONE), 6, "all reached Meta");
    assert_eq!(circuit(&gw, &key("big_one")).await, Value::Null);
    assert_ne!(circuit(&gw, WABA).await["state"], "open");
    let m = gw.metrics().await;
    assert!(
        metric(
            &m,
            "wa_breaker_upstream_errors_total",
            &[("code", "132016")]
        )
        .is_some_and(|n| n >= 8.0),
        "counted"
    );
}

/// 131057 (maintenance) holds the phone number for the answer's `retry-after` (5 s here),
/// not the fixed minute: local answers say so, and the phone sends again after it.
async fn maintenance_honours_retry_after(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = gateway(engine, &fake).await;
    fake.on_phone(
        PHONE,
        Reply::graph_error(400, 131057, "Account in maintenance mode")
            .with_header("retry-after", "5"),
    );
    let r = gw.send_str(PHONE, TEXT_BODY).await;
    assert_eq!(r.status(), 400, "Meta's own answer");
    let tripped = std::time::Instant::now();
    fake.on_phone(PHONE, Reply::ok_send());
    let r = gw.send_str(PHONE, TEXT_BODY).await;
    assert_eq!(r.status(), 403, "{}", engine.name());
    assert_eq!(r.headers()["x-wa-breaker"], "open");
    let retry: i64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((4..=5).contains(&retry), "retry-after {retry}");
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], 131057);
    let c = circuit(&gw, &format!("phone:{PHONE}")).await;
    let left = until(&c).unwrap().timestamp() - now_unix();
    assert!((3..=5).contains(&left), "{c}");
    // The circuit ends after it: the next sends reach Meta again.
    let deadline = tripped + Duration::from_secs(10);
    loop {
        let r = gw.send_str(PHONE, TEXT_BODY).await;
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 403);
        assert!(
            std::time::Instant::now() < deadline,
            "still held after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        tripped.elapsed() >= Duration::from_secs(3),
        "{:?}",
        tripped.elapsed()
    );
    assert_eq!(fake.count_for_phone(PHONE), 2);
}

/// ACCOUNT_DELETED / ACCOUNT_OFFBOARDED open only for a WABA the gateway knows: a flood of
/// signed ones for ids nothing vouches for makes no circuit (counted as ignored), while a
/// configured WABA still opens.
#[tokio::test]
async fn lifecycle_opens_only_for_known_wabas() {
    let fake = FakeCloud::start().await;
    let gw = gateway(Engine::Relay, &fake).await;
    let t = now_unix();
    let strangers: Vec<String> = (0..20).map(|i| format!("77700011122{i:04}")).collect();
    let entries = strangers
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let e = if i % 2 == 0 {
                "ACCOUNT_DELETED"
            } else {
                "ACCOUNT_OFFBOARDED"
            };
            entry(id, t, vec![change("account_update", event(e))])
        })
        .collect();
    assert_eq!(deliver(&gw, &envelope(entries)).await.status(), 200);
    for id in &strangers {
        assert_eq!(circuit(&gw, id).await, Value::Null, "{id}");
    }
    let list: Value = gw
        .admin_get("/admin/circuits", Some(ADMIN))
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["waba_id"].as_str())
        .collect();
    assert!(
        strangers.iter().all(|s| !ids.contains(&s.as_str())),
        "{ids:?}"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "wa_breaker_events_ignored_total",
            &[("reason", "unknown_waba")]
        ),
        Some(20.0)
    );
    // A configured WABA still opens; the send is answered locally.
    let r = deliver(&gw, &account_update(WABA, t, event("ACCOUNT_DELETED"))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(circuit(&gw, WABA).await["state"], "open");
    assert_eq!(gw.send_str(PHONE, TEXT_BODY).await.status(), 403);
    assert_eq!(fake.count_for_phone(PHONE), 0);
}
