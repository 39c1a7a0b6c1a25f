//! Country circuits, the decisions: Meta's 130497 ("Business account is restricted from
//! messaging users in this country") opens a circuit of the WABA's sends to the
//! recipient's country — never the WABA's — whether it answers a send ([`from_answer`],
//! called by the judge) or arrives as a failed status of a `messages` webhook
//! ([`plan_status_errors`]). The mechanics (calling code, key, index) are
//! [`crate::circuit::country`].
//!
//! Closing: Meta's reference names no signal that lifts the restriction (Health Status
//! does not report countries, no webhook announces it; Meta points at the messaging
//! policy's allowed countries for the business's category), so the circuit holds for
//! `country_hold` (24 h by default) and then closes: the next send to that country probes,
//! and a 130497 to it opens the circuit again. An operator closes it sooner
//! (`POST /admin/circuits/country:{waba}:{code}/close`).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::plan::{AsyncError, Step};
use super::{Answer, Call};
use crate::circuit::country;
use crate::circuit::{Action, Change, Evidence, Scope, Source};
use crate::graph::codes::COUNTRY_RESTRICTED;
use crate::graph::envelope;
use crate::graph::webhook::{ChangeItem, Entry};
use crate::graph::GraphId;

/// `country_hold` when not configured: a day, after which one send probes again.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(24 * 3600);

/// The country calling code of a send body's recipient (`to`, read by its digits; see
/// [`country::of_number`]). `None` when the body is not JSON, has no `to`, or its `to`
/// has no country to read.
pub fn of_send(body: &[u8]) -> Option<u16> {
    #[derive(serde::Deserialize)]
    struct Msg<'a> {
        #[serde(borrow)]
        to: Option<std::borrow::Cow<'a, str>>,
    }
    country::of_number(&serde_json::from_slice::<Msg>(body).ok()?.to?)
}

/// The change that opens the circuit of `waba_id`'s sends to calling code `code` for
/// `hold`, from event time `at`.
fn open(
    waba_id: &str,
    code: u16,
    hold: Duration,
    at: DateTime<Utc>,
    reason: String,
    source: Source,
    evidence: Evidence,
) -> Option<Change> {
    Some(Change {
        waba_id: waba_id.to_string(),
        phone_number_id: None,
        template: None,
        recipient: None,
        country: Some(code.to_string()),
        action: Action::Open {
            scope: Scope::AllSends,
            code: Some(COUNTRY_RESTRICTED),
            until: Some(at + chrono::Duration::from_std(hold).ok()?),
        },
        source,
        at,
        reason,
        evidence: Some(evidence),
    })
}

/// A send answered 130497: the circuit of its WABA's sends to the recipient's calling code
/// opens for `hold`, with the answer as evidence (the recipient is never kept, only its
/// calling code). Nothing opens when the phone number's WABA is not known (a country
/// circuit is keyed by the WABA, and a WABA-wide or phone-wide guess would block healthy
/// countries: the answer passes through and is counted), when the engine does not hold the
/// send's body or it is larger than `cap`, or when its `to` has no country to read.
pub fn from_answer(
    call: Call,
    cap: usize,
    answer: Answer<'_>,
    err: envelope::GraphError,
    hold: Duration,
    now: DateTime<Utc>,
) -> Option<Change> {
    let account = call.account?;
    let code = answer
        .request
        .filter(|b| b.len() <= cap)
        .and_then(of_send)?;
    let reason = format!(
        "HTTP {}, Graph error {} to a send to calling code +{code}{}",
        answer.status,
        err.code,
        if err.message.is_empty() {
            String::new()
        } else {
            format!(": {}", err.message)
        }
    );
    open(
        &account.waba.to_string(),
        code,
        hold,
        now,
        reason,
        Source::Send,
        super::send_evidence(call, err),
    )
}

/// The country circuits a `messages` change of `entry` opens: one per calling code whose
/// failed status (`statuses[].errors[]`) carries 130497 with a `recipient_id` that has a
/// country, each for `hold` from the status's time. Empty when `entry.id` is not a WABA id.
pub fn plan_status_errors(
    entry: &Entry,
    ch: &ChangeItem,
    errors: &[AsyncError],
    hold: Duration,
    now: DateTime<Utc>,
) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    if !GraphId::is_valid(&entry.id) {
        return out;
    }
    for e in errors {
        let (COUNTRY_RESTRICTED, "status", Some(code)) = (e.code, e.site, e.country) else {
            continue;
        };
        if out
            .iter()
            .any(|s| s.change.country.as_deref() == Some(&code.to_string()))
        {
            continue;
        }
        let at = e.time.or(ch.time).or(entry.time).unwrap_or(now);
        let reason = format!(
            "messages webhook statuses[].errors[]: Graph error {} for a recipient of calling code +{code}",
            e.code
        );
        let evidence = Evidence::Webhook {
            entry_id: entry.id.clone(),
            field: ch.field.clone(),
            event: "statuses[].errors[]".into(),
            value: e.evidence.clone(),
        };
        if let Some(change) = open(&entry.id, code, hold, at, reason, Source::Webhook, evidence) {
            out.push(Step {
                change,
                check_health: false,
                only_if_opened_by: None,
                only_known_waba: false,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_names_its_recipients_country() {
        assert_eq!(
            of_send(br#"{"messaging_product":"whatsapp","to":"+49 151 2345 6789","type":"text"}"#),
            Some(49)
        );
        assert_eq!(of_send(br#"{"to":"447700900123"}"#), Some(44));
        // Hostile and empty shapes: a nested "to" is not the recipient; no `to`, none.
        for body in [
            &br#"{"text":{"to":"+49 151 2345 6789"},"type":"text"}"#[..],
            br#"{"type":"text"}"#,
            br#"{"to":""}"#,
            br#"{"to":"0151 2345 6789"}"#,
            br#"not json "to":"4915123456789""#,
        ] {
            assert_eq!(of_send(body), None, "{}", String::from_utf8_lossy(body));
        }
    }
}
