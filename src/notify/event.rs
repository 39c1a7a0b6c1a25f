//! What a notification says: the event built from a circuit after a transition, its JSON
//! body, its Slack text and its signature. Pure, unit-tested.

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::circuit::{Circuit, Evidence, Scope, Source, State, Warning};
use crate::config::NotifyOn;

/// The header that carries a `webhook` sink's signature.
pub const SIGNATURE_HEADER: &str = "x-wa-breaker-signature";

/// One transition as sinks receive it (the `webhook` body, field for field).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// `transition` (a circuit opened or closed) or `warning` (recorded, nothing blocked:
    /// see `warning`).
    pub event: &'static str,
    /// Stable id of this transition (`{key}:{version}:{replica}`): a receiver can drop a
    /// repeat delivered after a retry whose answer was lost.
    pub id: String,
    /// The WABA (empty for a phone-number circuit whose WABA is not known yet).
    pub waba_id: String,
    /// Set when the circuit is one phone number's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone_number_id: Option<String>,
    /// Set when the circuit is the WABA's sends to one country: its E.164 calling code
    /// (`"49"`; Meta's 130497).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// The new state: `open` or `closed`.
    pub to: State,
    /// What an open circuit answers locally: `all_sends` or `business_initiated`.
    pub scope: Scope,
    /// What made the change: `send`, `webhook`, `health`, `admin`, `expiry`.
    pub source: Source,
    /// The Graph error code local answers carry (when open).
    pub code: Option<i64>,
    /// The error message, webhook event or operator reason.
    pub reason: String,
    /// Event time of the change (RFC 3339).
    pub at: DateTime<Utc>,
    /// When the circuit opened (when open).
    pub since: Option<DateTime<Utc>>,
    /// The known end of the block, when there is one.
    pub until: Option<DateTime<Utc>>,
    /// What caused it: the send (code, message, fbtrace_id), the webhook event, the health
    /// snapshot, the operator's reason or the `until` that passed; `null` when none was kept.
    pub evidence: Option<Evidence>,
    /// The replica that made the change (the only one that notifies).
    pub replica: String,
    /// A warning's kind (`account_violation`, `template_quality`, …), the template or
    /// phone number it concerns and Meta's word for it; absent for transitions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<Warning>,
}

impl Event {
    /// The event for `c` right after a transition.
    pub fn from_circuit(c: &Circuit) -> Event {
        // The history entry of this change: the newest that set the current state.
        let last = c.last_transition_to(c.state);
        let open = c.is_open();
        Event {
            event: "transition",
            id: format!("{}:{}:{}", c.key(), c.version, c.origin),
            waba_id: c.waba_id.clone(),
            phone_number_id: c.phone_number_id.clone(),
            country: c.country.clone(),
            to: c.state,
            scope: c.scope,
            source: c.source,
            code: c.code,
            reason: c.reason.clone(),
            at: last.map_or(c.updated_at, |t| t.at),
            since: if open { c.opened_at } else { None },
            until: if open { c.until } else { None },
            evidence: last.and_then(|t| t.evidence.clone()),
            replica: c.origin.clone(),
            warning: None,
        }
    }

    /// The event for warning `w`, just recorded on `c` (its newest history entry). The
    /// circuit's state is unchanged: `to`, `scope`, `since` and `until` say what it is.
    pub fn from_warning(c: &Circuit, w: &Warning) -> Event {
        let entry = c
            .history
            .iter()
            .rev()
            .find(|t| t.warning.as_ref() == Some(w));
        let open = c.is_open();
        Event {
            event: "warning",
            warning: Some(w.clone()),
            reason: entry.map_or_else(String::new, |t| t.reason.clone()),
            at: entry.map_or(c.updated_at, |t| t.at),
            source: entry.map_or(c.source, |t| t.source),
            evidence: entry.and_then(|t| t.evidence.clone()),
            code: if open { c.code } else { None },
            ..Event::from_circuit(c)
        }
    }

    /// Which transition it is, for the sinks' filters.
    pub fn on(&self) -> NotifyOn {
        if self.warning.is_some() {
            return NotifyOn::Warning;
        }
        match self.to {
            State::Open => NotifyOn::Open,
            State::Closed => NotifyOn::Closed,
        }
    }

    /// The `webhook` body.
    pub fn json(&self) -> Vec<u8> {
        // A struct of strings, numbers and JSON values always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The Slack message: WABA, scope, code, source, since, until and the evidence (for a
    /// warning: its kind, what it concerns, Meta's word and the evidence).
    pub fn slack_text(&self) -> String {
        if let Some(w) = &self.warning {
            return self.warning_text(w);
        }
        let who = match (
            &self.phone_number_id,
            self.waba_id.is_empty(),
            &self.country,
        ) {
            (Some(p), true, _) => format!("phone number {p} (WABA not known yet)"),
            (Some(p), false, _) => format!("WABA {} (phone number {p})", self.waba_id),
            (None, _, Some(code)) => {
                let regions = crate::circuit::country::parse_code(code)
                    .map(crate::circuit::country::regions)
                    .filter(|r| !r.is_empty())
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                format!(
                    "WABA {} to country calling code +{code}{regions}",
                    self.waba_id
                )
            }
            (None, _, None) => format!("WABA {}", self.waba_id),
        };
        let time = |t: Option<DateTime<Utc>>| {
            t.map_or("—".to_string(), |t| {
                t.to_rfc3339_opts(SecondsFormat::Secs, true)
            })
        };
        let mut s = match self.to {
            State::Open => format!(
                ":rotating_light: *wa-breaker: {who} is blocked* — sends are answered locally\n\
                 • scope: {}\n• code: {}\n• source: {}\n• since: {}\n• until: {}\n",
                scope_text(self.scope),
                self.code.map_or("—".into(), |c| c.to_string()),
                self.source.as_str(),
                time(self.since.or(Some(self.at))),
                time(self.until),
            ),
            State::Closed => format!(
                ":white_check_mark: *wa-breaker: {who} may send again* — circuit closed\n\
                 • source: {}\n• at: {}\n",
                self.source.as_str(),
                time(Some(self.at)),
            ),
        };
        if !self.reason.is_empty() {
            s.push_str(&format!("• reason: {}\n", clip(&self.reason, 300)));
        }
        s.push_str(&format!(
            "• evidence: {}",
            evidence_text(self.evidence.as_ref())
        ));
        s
    }

    fn warning_text(&self, w: &Warning) -> String {
        let mut s = format!(
            ":warning: *wa-breaker: warning for WABA {}* — {}",
            if self.waba_id.is_empty() {
                "(not known yet)"
            } else {
                &self.waba_id
            },
            warning_title(w)
        );
        if let Some(d) = &w.detail {
            s.push_str(&format!(": {}", clip(d, 200)));
        }
        s.push_str("\nSends are not blocked; Meta's next step may be a block.\n");
        if let Some(t) = &w.template {
            s.push_str(&format!("• template: {} ({})\n", t.name, t.language));
        }
        if let Some(p) = &w.phone_number_id {
            s.push_str(&format!("• phone number: {p}\n"));
        }
        s.push_str(&format!(
            "• at: {}\n",
            self.at.to_rfc3339_opts(SecondsFormat::Secs, true)
        ));
        if !self.reason.is_empty() {
            s.push_str(&format!("• reason: {}\n", clip(&self.reason, 300)));
        }
        s.push_str(&format!(
            "• evidence: {}",
            evidence_text(self.evidence.as_ref())
        ));
        s
    }

    /// The Slack body.
    pub fn slack_json(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "text": self.slack_text() })).unwrap_or_default()
    }
}

/// A warning's kind as a person reads it.
fn warning_title(w: &Warning) -> &'static str {
    use crate::circuit::WarningKind as K;
    match w.kind {
        K::AccountViolation => "policy violation (ACCOUNT_VIOLATION)",
        K::DisableScheduled => "account scheduled for disablement",
        K::Restriction => "restriction on something other than sending",
        K::TemplateQuality => "template quality fell",
        K::TemplateCategory => "template moved to MARKETING",
        K::MessagingLimit => "messaging limit lowered",
        K::MessagingBudget => "template messages near the messaging limit",
        K::SpamRate => "spam rate limit (131048) on a phone number",
        K::Other => "warning",
    }
}

fn scope_text(s: Scope) -> &'static str {
    match s {
        Scope::AllSends => "all sends",
        Scope::BusinessInitiated => "business-initiated (template) sends",
        Scope::CustomerInitiated => "customer-initiated (reply) sends",
        Scope::MarketingTemplates => "MARKETING template sends",
        Scope::UtilityTemplates => "UTILITY template sends",
    }
}

fn evidence_text(e: Option<&Evidence>) -> String {
    match e {
        None => "none recorded".into(),
        Some(Evidence::Send {
            code,
            error_subcode,
            message,
            fbtrace_id,
            ..
        }) => {
            let mut s = format!("send answered with code {code}");
            if let Some(sub) = error_subcode {
                s.push_str(&format!(" (subcode {sub})"));
            }
            s.push_str(&format!(": {}", clip(message, 300)));
            if let Some(f) = fbtrace_id {
                s.push_str(&format!(" — fbtrace_id `{f}`"));
            }
            s
        }
        Some(Evidence::Webhook {
            entry_id,
            field,
            event,
            ..
        }) => format!("webhook {field} event {event} (entry {entry_id})"),
        Some(Evidence::Health { health_status }) => {
            format!("health snapshot {}", clip(&health_status.to_string(), 500))
        }
        Some(Evidence::Admin { reason }) => format!("operator: {}", clip(reason, 300)),
        Some(Evidence::Expiry { until }) => format!(
            "the known end {} passed",
            until.to_rfc3339_opts(SecondsFormat::Secs, true)
        ),
    }
}

/// At most `n` characters, with an ellipsis when cut.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut out: String = s.chars().take(n).collect();
    out.push('…');
    out
}

/// `sha256=<hex HMAC-SHA256 of body under secret>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::Transition;

    fn open_circuit() -> Circuit {
        let at: DateTime<Utc> = "2026-12-02T10:00:00Z".parse().unwrap();
        let mut c = Circuit::new("102290129340398", at);
        c.state = State::Open;
        c.code = Some(368);
        c.source = Source::Send;
        c.reason = "Temporarily blocked for policies violations".into();
        c.opened_at = Some(at);
        c.until = Some("2026-12-03T10:00:00Z".parse().unwrap());
        c.version = 3;
        c.origin = "gw-a-1".into();
        c.history.push(Transition {
            at,
            to: State::Open,
            source: Source::Send,
            note: false,
            reason: c.reason.clone(),
            evidence: Some(Evidence::Send {
                code: 368,
                error_subcode: Some(2494055),
                message: "Temporarily blocked for policies violations".into(),
                fbtrace_id: Some("AbCdEf123".into()),
                phone_number_id: Some("106540352242922".into()),
            }),
            clamped_from: None,
            warning: None,
        });
        c
    }

    #[test]
    fn json_carries_the_contract_fields() {
        let e = Event::from_circuit(&open_circuit());
        let v: serde_json::Value = serde_json::from_slice(&e.json()).unwrap();
        assert_eq!(v["waba_id"], "102290129340398");
        assert_eq!(v["to"], "open");
        assert_eq!(v["source"], "send");
        assert_eq!(v["code"], 368);
        assert_eq!(v["at"], "2026-12-02T10:00:00Z");
        assert_eq!(v["until"], "2026-12-03T10:00:00Z");
        assert_eq!(v["evidence"]["fbtrace_id"], "AbCdEf123");
        assert_eq!(v["id"], "102290129340398:3:gw-a-1");
        assert!(v.get("phone_number_id").is_none());
    }

    #[test]
    fn country_circuits_name_the_country() {
        let mut c = open_circuit();
        c.country = Some("49".into());
        c.code = Some(130497);
        let e = Event::from_circuit(&c);
        let v: serde_json::Value = serde_json::from_slice(&e.json()).unwrap();
        assert_eq!(v["country"], "49");
        assert_eq!(v["id"], "country:102290129340398:49:3:gw-a-1");
        assert!(e
            .slack_text()
            .contains("WABA 102290129340398 to country calling code +49 (DE) is blocked"));
        assert!(Event::from_circuit(&open_circuit())
            .json()
            .windows(9)
            .all(|w| w != b"\"country\""));
    }

    #[test]
    fn phone_circuits_name_the_phone_number() {
        let mut c = open_circuit();
        c.waba_id = String::new();
        c.phone_number_id = Some("106540352242922".into());
        let e = Event::from_circuit(&c);
        let v: serde_json::Value = serde_json::from_slice(&e.json()).unwrap();
        assert_eq!(v["phone_number_id"], "106540352242922");
        assert_eq!(v["waba_id"], "");
        assert!(e
            .slack_text()
            .contains("phone number 106540352242922 (WABA not known yet)"));
    }

    #[test]
    fn slack_text_has_what_a_person_needs() {
        let t = Event::from_circuit(&open_circuit()).slack_text();
        for want in [
            "WABA 102290129340398",
            "scope: all sends",
            "code: 368",
            "source: send",
            "since: 2026-12-02T10:00:00Z",
            "until: 2026-12-03T10:00:00Z",
            "fbtrace_id `AbCdEf123`",
            "subcode 2494055",
        ] {
            assert!(t.contains(want), "{want:?} missing from {t}");
        }
    }

    #[test]
    fn closed_events_have_no_since_or_until() {
        let mut c = open_circuit();
        let at: DateTime<Utc> = "2026-12-02T11:00:00Z".parse().unwrap();
        c.state = State::Closed;
        c.source = Source::Admin;
        c.updated_at = at;
        c.history.push(Transition {
            at,
            to: State::Closed,
            source: Source::Admin,
            note: false,
            reason: "appeal won".into(),
            evidence: Some(Evidence::Admin {
                reason: "appeal won".into(),
            }),
            clamped_from: None,
            warning: None,
        });
        let e = Event::from_circuit(&c);
        assert_eq!(e.on(), NotifyOn::Closed);
        assert_eq!(e.at, at);
        assert_eq!((e.since, e.until), (None, None));
        assert!(e.slack_text().contains("operator: appeal won"));
    }

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn long_texts_are_clipped() {
        assert_eq!(clip("abcdef", 3), "abc…");
        assert_eq!(clip("abc", 3), "abc");
    }
}
