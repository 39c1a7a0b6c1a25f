//! A verified webhook body → circuit steps, as `signals::webhook` applies it: the envelope
//! parser, then for every change the planners it calls (account updates, message errors,
//! template status and quality) and the phone-number learning read. No panic, and every
//! step names a numeric WABA id.
//!
//! Input: byte 0 = flags (bit 0: violation_opens, bit 1: a health token is configured),
//! then the body.
#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use wa_breaker::graph::webhook::{parse, phone_of, FIELD_MESSAGES};
use wa_breaker::policy::plan::{message_errors, plan, plan_message_errors, Step};
use wa_breaker::policy::template::{plan_template, plan_template_quality, webhook_template};

/// The default trip codes.
const TRIP_CODES: &[i64] = &[368, 131031];

fn check(step: &Step) {
    let id = &step.change.waba_id;
    assert!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()),
        "a step for {id:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let [flags, body @ ..] = data else {
        return;
    };
    let Ok(env) = parse(body) else {
        return;
    };
    // A fixed clock, so a run is reproducible.
    let now = DateTime::<Utc>::from_timestamp(1_764_000_000, 0).expect("a valid instant");
    for entry in &env.entries {
        for ch in &entry.changes {
            if let Some(phone) = phone_of(ch) {
                assert!(phone.bytes().all(|b| b.is_ascii_digit()));
            }
            let _ = entry.event_time(ch, now);
            let _ = webhook_template(&ch.value);
            if ch.field == FIELD_MESSAGES {
                let errors = message_errors(ch);
                if let Some(s) = plan_message_errors(entry, ch, &errors, TRIP_CODES, now) {
                    check(&s);
                }
            }
            if let Some(s) = plan_template(entry, ch, now) {
                check(&s);
            }
            if let Some((s, _)) = plan_template_quality(entry, ch, now) {
                check(&s);
            }
            if let Some(s) = plan(entry, ch, now, flags & 1 == 1, flags & 2 == 2) {
                check(&s);
            }
        }
    }
});
