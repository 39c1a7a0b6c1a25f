//! Issue 22 — the WABA-level codes 131042 (business eligibility payment issue) and 131064
//! (messaging limited for template classification violations), over real sockets against
//! the built binary and the fake Cloud API, on both engines: passed through by default;
//! listed in `trip_codes`, a send answered with one opens the WABA (every send of it
//! answered locally with that code) until Health Status says AVAILABLE. The gateway
//! decides by `code` alone, never by the HTTP status or `error_subcode`.

use std::time::Duration;

use crate::signals_util::*;
use crate::support::*;
use serde_json::Value;

const SEC: Duration = Duration::from_secs(3);

/// (code, Meta's message, an HTTP status, an `error_subcode`) — statuses and subcodes
/// differ on purpose: the gateway must not read them.
const CODES: &[(i64, &str, u16, Option<i64>)] = &[
    (
        131042,
        "(#131042) Business eligibility payment issue",
        400,
        Some(2494010),
    ),
    (
        131064,
        "(#131064) Messaging limited because of template classification violations",
        403,
        None,
    ),
];

fn answer(code: i64, message: &str, status: u16, subcode: Option<i64>) -> Reply {
    Reply::graph_error_full(
        status,
        code,
        message,
        subcode,
        Some("Message failed to send."),
    )
}

/// By default (`trip_codes = [368, 131031]`) both codes are Meta's answers to pass back:
/// the next send of the WABA still reaches Meta; nothing opens; each answer is counted.
async fn payment_and_classification_codes_pass_through_by_default(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = Gateway::start(&format!(
        "{}\n{}",
        engine.config_line(),
        config(&fake.url(), "", "")
    ))
    .await;
    for (code, message, status, subcode) in CODES {
        fake.on_phone(PHONE, answer(*code, message, *status, *subcode));
        for body in [TEMPLATE_BODY, TEXT_BODY] {
            let r = gw.send_str(PHONE, body).await;
            assert_eq!(r.status(), *status, "{code} on {}", engine.name());
            assert!(
                r.headers().get("x-wa-breaker").is_none(),
                "{code}: Meta's own answer"
            );
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], *code);
        }
        assert_ne!(circuit(&gw, WABA).await["state"], "open", "{code}");
        let m = gw.metrics().await;
        assert_eq!(
            metric(
                &m,
                "wa_breaker_upstream_errors_total",
                &[("code", &code.to_string())]
            ),
            Some(2.0),
            "{code}"
        );
    }
    assert_eq!(fake.count_for_phone(PHONE), 2 * CODES.len());
}

/// Listed in `trip_codes`, with a Health Status token: a send answered with the code opens
/// the WABA for every send (template and free-form alike), answered locally with that code
/// and Meta's title; Health Status BLOCKED holds it, AVAILABLE closes it and sends flow.
async fn listed_codes_open_the_waba_until_health_says_available(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = Gateway::start(&format!(
        "{}\ntrip_codes = [368, 131031, 131042, 131064]\n{}",
        engine.config_line(),
        config(&fake.url(), "", &health("150ms", "2s"))
    ))
    .await;
    for ((code, message, status, subcode), (waba, phone)) in
        CODES.iter().zip([(WABA, PHONE), (WABA2, PHONE2)])
    {
        fake.set_health(waba, health_json(waba, "BLOCKED"));
        fake.on_phone(phone, answer(*code, message, *status, *subcode));
        let r = gw.send_str(phone, TEXT_BODY).await;
        assert_eq!(r.status(), *status, "{code} on {}", engine.name());
        assert!(
            r.headers().get("x-wa-breaker").is_none(),
            "{code}: Meta's own answer"
        );
        let c = circuit(&gw, waba).await;
        assert_eq!(c["state"], "open", "{code}: {c:#}");
        assert_eq!(c["scope"], "all_sends");
        assert_eq!(c["source"], "send");
        // Every later send of the WABA is answered locally with the code.
        for body in [TEMPLATE_BODY, TEXT_BODY] {
            let r = gw.send_str(phone, body).await;
            assert_eq!(
                r.headers()["x-wa-breaker"],
                "open",
                "{code} on {}",
                engine.name()
            );
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], *code, "{v}");
            assert_eq!(v["error"]["message"], *message, "{v}");
        }
        assert_eq!(fake.count_for_phone(phone), 1, "{code}");
        // BLOCKED holds; AVAILABLE closes.
        assert!(fake.wait_health(waba, 2, SEC).await, "{code}: polled");
        assert_eq!(circuit(&gw, waba).await["state"], "open", "{code}");
        fake.set_health(waba, health_json(waba, "AVAILABLE"));
        let c = wait_state(&gw, waba, "closed", SEC).await;
        assert_eq!(c["source"], "health", "{code}");
        fake.on_phone(phone, Reply::ok_send());
        assert_eq!(gw.send_str(phone, TEXT_BODY).await.status(), 200, "{code}");
        assert_eq!(fake.count_for_phone(phone), 2, "{code}");
    }
}

both_engines!(
    payment_and_classification_codes_pass_through_by_default,
    listed_codes_open_the_waba_until_health_says_available,
);
