//! Issue 22, country restrictions — Meta's 130497 ("Business account is restricted from
//! messaging users in this country") over real sockets, on both engines: a circuit of the
//! WABA's sends to the recipient's country calling code, never the WABA's; opened by a
//! send's answer or a failed status, closed by an operator or when `country_hold` passes,
//! kept across a restart, forwarded in observe mode.

use std::time::Duration;

use crate::signals_util::*;
use crate::support::*;
use serde_json::{json, Value};

/// The WABA's second phone number.
const PHONE_B: &str = "106540352242924";
/// A phone number no account maps.
const UNMAPPED: &str = "106540352242977";
const MESSAGE: &str = "Business account is restricted from messaging users in this country";
/// The circuit of `WABA`'s sends to Germany (+49).
fn key49() -> String {
    format!("country:{WABA}:49")
}

fn text_to(to: &str) -> String {
    json!({"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": "hello"}})
        .to_string()
}

fn template_to(to: &str) -> String {
    TEMPLATE_BODY.replace("15551234567", to)
}

async fn gateway(engine: Engine, fake: &FakeCloud, extra: &str) -> Gateway {
    gateway_with(engine, fake, extra, "").await
}

async fn gateway_with(engine: Engine, fake: &FakeCloud, extra: &str, health: &str) -> Gateway {
    let cfg = config(&fake.url(), "", health).replace(
        &format!("phone_number_ids = [\"{PHONE}\"]"),
        &format!("phone_number_ids = [\"{PHONE}\", \"{PHONE_B}\"]"),
    );
    Gateway::start(&format!("{}\n{extra}\n{cfg}", engine.config_line())).await
}

/// Asserts `r` is the gateway's own 130497 and returns its `retry-after`.
async fn local_130497(r: reqwest::Response, engine: Engine) -> i64 {
    assert_eq!(r.status(), 403, "on {}", engine.name());
    assert_eq!(r.headers()["x-wa-breaker"], "open");
    let retry = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], 130497, "{v}");
    let details = v["error"]["error_data"]["details"].as_str().unwrap();
    assert!(
        details.starts_with("wa-breaker answered locally"),
        "{details}"
    );
    assert!(details.contains("+49 (DE)"), "{details}");
    retry
}

/// A send from one phone number answered 130497 for a German recipient: sends to Germany
/// from the WABA's other number (spelled with `+`, spaces and dashes) are answered
/// locally; other countries flow (text and template); the WABA stays closed; the circuit
/// is visible (admin API, metric), survives a restart, and an operator closes it. A large
/// body is forwarded; a 130497 for an unmapped phone number opens nothing.
async fn restricted_country_answers_only_that_country(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = gateway(engine, &fake, "classify_body_limit = 1024").await;
    fake.queue_phone(PHONE, vec![Reply::graph_error(403, 130497, MESSAGE)]);
    let r = gw.send_str(PHONE, &text_to("+49 151 2345 6789")).await;
    assert_eq!(r.status(), 403, "Meta's own answer");
    assert!(r.headers().get("x-wa-breaker").is_none());
    let c = circuit(&gw, &key49()).await;
    assert_eq!(c["state"], "open", "{c} on {}", engine.name());
    assert_eq!(c["country"], "49");
    assert_eq!(c["country_regions"], "DE");
    assert_eq!(c["code"], 130497);
    assert_eq!(c["source"], "send");
    let hold = until(&c).unwrap().timestamp() - now_unix();
    assert!((24 * 3600 - 10..=24 * 3600).contains(&hold), "held {hold}s");
    assert_eq!(c["history"][0]["evidence"]["fbtrace_id"], FBTRACE_ID, "{c}");
    assert!(
        !c.to_string().contains("2345"),
        "the recipient is not kept: {c}"
    );

    // The other number, to Germany, however spelled: local, never upstream.
    for to in ["+49 1512 345-6789", "4915123456789", "+49-30-1234567"] {
        let r = gw.send_str(PHONE_B, &text_to(to)).await;
        let retry = local_130497(r, engine).await;
        assert!(retry > 24 * 3600 - 20, "{retry}");
    }
    let r = gw
        .send_str(PHONE_B, &template_to("+49 151 2345 6789"))
        .await;
    local_130497(r, engine).await;
    assert_eq!(
        fake.sends_for(PHONE_B).len(),
        0,
        "held sends never reach Meta"
    );

    // Other countries flow from both numbers, free-form and template.
    for (phone, body) in [
        (PHONE_B, text_to("+44 7700 900123")),
        (PHONE_B, template_to("+44 7700 900123")),
        (PHONE, text_to("+33 6 12 34 56 78")),
        (PHONE, TEMPLATE_BODY.to_string()),
    ] {
        let r = gw.send_str(phone, &body).await;
        assert_eq!(r.status(), 200, "{body}");
    }
    assert_eq!(fake.sends_for(PHONE_B).len(), 2);
    assert_eq!(
        circuit(&gw, WABA).await["state"],
        "closed",
        "the WABA stays closed"
    );
    // A body larger than classify_body_limit is forwarded (too large to judge).
    let big = text_to("+49 151 2345 6789").replacen(
        "\"type\"",
        &format!("\"pad\":\"{}\",\"type\"", "x".repeat(2048)),
        1,
    );
    assert_eq!(gw.send_str(PHONE_B, &big).await.status(), 200);
    assert_eq!(fake.sends_for(PHONE_B).len(), 3);

    // Visible: the open list and the metric.
    let open: Value = gw
        .admin_get("/admin/circuits?state=open", Some(ADMIN))
        .await
        .json()
        .await
        .unwrap();
    let keys: Vec<&Value> = open.as_array().unwrap().iter().collect();
    assert_eq!(keys.len(), 1, "{open}");
    assert_eq!(keys[0]["country"], "49");
    let gauge = |m: &str| {
        metric(
            m,
            "wa_breaker_country_circuit_open",
            &[("waba_id", WABA), ("country", "49")],
        )
    };
    assert_eq!(gauge(&gw.metrics().await), Some(1.0));

    // A phone number of no known WABA answered 130497: passed through, nothing opens.
    fake.queue_phone(UNMAPPED, vec![Reply::graph_error(403, 130497, MESSAGE)]);
    assert_eq!(
        gw.send_str(UNMAPPED, &text_to("+49 151 2345 6789"))
            .await
            .status(),
        403
    );
    assert_eq!(
        circuit(&gw, &format!("phone:{UNMAPPED}")).await,
        Value::Null
    );
    assert_eq!(
        gw.send_str(UNMAPPED, &text_to("+49 151 2345 6789"))
            .await
            .status(),
        200,
        "forwarded"
    );

    // Durable: a restart keeps it.
    gw.restart().await;
    let r = gw.send_str(PHONE_B, &text_to("+49 151 2345 6789")).await;
    local_130497(r, engine).await;
    assert_eq!(fake.sends_for(PHONE_B).len(), 3);

    // An operator closes it; Germany flows again.
    let r = gw
        .admin_post(
            &format!("/admin/circuits/{}/close", key49()),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        gw.send_str(PHONE_B, &text_to("+49 151 2345 6789"))
            .await
            .status(),
        200
    );
    assert_eq!(fake.sends_for(PHONE_B).len(), 4);
    assert_eq!(gauge(&gw.metrics().await), Some(0.0));
}

/// 130497 as a failed status of a `messages` webhook opens the same circuit (the recipient
/// not kept); with `country_hold = "2s"` it closes by itself, and the next send probes.
/// Health Status says nothing about countries: with a health token, the country circuit is
/// neither polled nor its end confirmed by a poll.
async fn failed_status_opens_and_the_hold_ends_it(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = gateway_with(
        engine,
        &fake,
        "country_hold = \"2s\"",
        &health("200ms", "1s"),
    )
    .await;
    let t = now_unix();
    let body = envelope(vec![entry(
        WABA,
        t,
        vec![change(
            "messages",
            json!({
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550000000", "phone_number_id": PHONE},
                "statuses": [{
                    "id": "wamid.HBgLNDkxNTEyMzQ1Njc4ORUCABEYEjlBM0NBNUIzRDRDRDZFNjdFNwA=",
                    "status": "failed", "timestamp": t.to_string(),
                    "recipient_id": "4915123456789",
                    "errors": [{"code": 130497, "title": MESSAGE, "message": MESSAGE}]
                }]
            }),
        )],
    )]);
    assert_eq!(deliver(&gw, &body).await.status(), 200);
    let c = circuit(&gw, &key49()).await;
    assert_eq!(c["state"], "open", "{c}");
    assert_eq!(c["source"], "webhook");
    assert_eq!(c["code"], 130497);
    assert!(!c.to_string().contains("4915123456789"), "{c}");
    let r = gw.send_str(PHONE_B, &text_to("+49 151 2345 6789")).await;
    let retry = local_130497(r, engine).await;
    assert!((0..=2).contains(&retry), "{retry}");
    assert_eq!(circuit(&gw, WABA).await["state"], "closed");
    assert_eq!(
        gw.send_str(PHONE, &text_to("+44 7700 900123"))
            .await
            .status(),
        200
    );
    let c = wait_state(&gw, &key49(), "closed", Duration::from_secs(6)).await;
    assert_eq!(c["source"], "expiry", "{c}");
    let polls = fake
        .requests()
        .iter()
        .filter(|r| r.path_and_query().contains("health_status"))
        .count();
    assert_eq!(polls, 0, "a country circuit is not health-polled");
    // The next send to Germany probes Meta.
    assert_eq!(
        gw.send_str(PHONE_B, &text_to("+49 151 2345 6789"))
            .await
            .status(),
        200
    );
    assert_eq!(fake.sends_for(PHONE_B).len(), 1);
}

/// In observe mode a 130497 is recorded (the circuit opens) and every send is forwarded.
async fn observe_mode_forwards_restricted_countries(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = gateway(engine, &fake, "mode = \"observe\"").await;
    fake.queue_phone(PHONE, vec![Reply::graph_error(403, 130497, MESSAGE)]);
    assert_eq!(
        gw.send_str(PHONE, &text_to("+49 151 2345 6789"))
            .await
            .status(),
        403
    );
    assert_eq!(circuit(&gw, &key49()).await["state"], "open");
    let r = gw.send_str(PHONE_B, &text_to("+49 151 2345 6789")).await;
    assert_eq!(r.status(), 200, "on {}", engine.name());
    assert!(r.headers().get("x-wa-breaker").is_none());
    assert_eq!(fake.sends_for(PHONE_B).len(), 1);
}

both_engines!(
    restricted_country_answers_only_that_country,
    failed_status_opens_and_the_hold_ends_it,
    observe_mode_forwards_restricted_countries,
);
