//! Warnings that are not about one template or one account event (those are planned in
//! [`super::plan`] and [`super::template`]): a lowered messaging limit
//! (`business_capability_update`) and an episode of 131048 spam-rate answers. Pure: the
//! webhook receiver and the classify step apply what these return.
//!
//! A warning is a note on the WABA's record that the sinks hear of
//! ([`crate::circuit::Action::Warn`]); it blocks nothing.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::plan::Step;
use crate::circuit::{Action, Change, Circuit, Evidence, Source, Warning, WarningKind};
use crate::graph::webhook::{ChangeItem, Entry};
use crate::graph::GraphId;

/// The field of capability changes.
pub const FIELD_CAPABILITY: &str = "business_capability_update";

/// The messaging limit a `business_capability_update` value gives, as a number of unique
/// users per 24 h (`u64::MAX`: unlimited), with Meta's spelling of it. Meta types
/// `max_daily_conversations_per_business` as an integer but lists `TIER_250` …
/// `TIER_UNLIMITED` (and shows `2000`): both are read; the older
/// `max_daily_conversation_per_phone` (-1: unlimited) when it is the only one.
pub fn messaging_limit(value: &Value) -> Option<(u64, String)> {
    let v = value
        .get("max_daily_conversations_per_business")
        .or_else(|| value.get("max_daily_conversation_per_phone"))?;
    let n = match v {
        Value::Number(n) => match n.as_i64()? {
            -1 => u64::MAX,
            n => u64::try_from(n).ok()?,
        },
        Value::String(s) => tier(s)?,
        _ => return None,
    };
    let spelled = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Some((n, spelled))
}

/// `TIER_250`, `TIER_2K`, `TIER_10K`, `TIER_100K`, `TIER_UNLIMITED` (any case), or digits.
fn tier(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.strip_prefix("TIER_").unwrap_or(&t);
    if t == "UNLIMITED" {
        return Some(u64::MAX);
    }
    let (digits, scale) = match t.strip_suffix('K') {
        Some(d) => (d, 1_000),
        None => match t.strip_suffix('M') {
            Some(d) => (d, 1_000_000),
            None => (t, 1),
        },
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

/// The limit the WABA's record last heard of (the newest `business_capability_update` in
/// its history), to tell a lowered limit from a raised one.
pub fn previous_limit(record: Option<&Circuit>) -> Option<(u64, String)> {
    record?
        .history
        .iter()
        .rev()
        .find_map(|t| match &t.evidence {
            Some(Evidence::Webhook { field, value, .. }) if field == FIELD_CAPABILITY => {
                messaging_limit(value)
            }
            _ => None,
        })
}

/// A `business_capability_update` (pure): a warning (`messaging_limit`) when the limit is
/// lower than the one last recorded for the WABA (`previous`), else a note (the first one
/// heard of, a raise, the same). `None` when the entry is not a WABA or the value names no
/// limit.
pub fn plan_capability(
    entry: &Entry,
    ch: &ChangeItem,
    previous: Option<(u64, String)>,
    now: DateTime<Utc>,
) -> Option<Step> {
    if ch.field != FIELD_CAPABILITY || !GraphId::is_valid(&entry.id) {
        return None;
    }
    let (limit, spelled) = messaging_limit(&ch.value)?;
    let (action, text) = match previous {
        Some((before, was)) if limit < before => (
            Action::Warn(Warning {
                detail: Some(format!("{was} -> {spelled}")),
                ..Warning::new(WarningKind::MessagingLimit)
            }),
            format!("messaging limit lowered from {was} to {spelled}"),
        ),
        Some((_, was)) => (Action::Note, format!("messaging limit {was} -> {spelled}")),
        None => (Action::Note, format!("messaging limit {spelled}")),
    };
    Some(Step::waba_record(
        entry,
        ch,
        action,
        format!("{FIELD_CAPABILITY}: {text} (recorded, not a block)"),
        &spelled,
        now,
    ))
}

/// The warning for the first 131048 of an episode on `phone` (its WABA `waba_id`, empty
/// when not known: the record is then the phone number's), with the send's answer as
/// evidence. `cooldown` is how long the number's pace stays halved.
pub fn spam_rate(
    waba_id: &str,
    phone: GraphId,
    evidence: Evidence,
    cooldown: std::time::Duration,
    now: DateTime<Utc>,
) -> Change {
    let mins = cooldown.as_secs().div_ceil(60);
    Change {
        waba_id: waba_id.to_string(),
        phone_number_id: waba_id.is_empty().then(|| phone.to_string()),
        template: None,
        recipient: None,
        country: None,
        action: Action::Warn(Warning {
            phone_number_id: Some(phone.to_string()),
            detail: Some(format!("pace halved for {mins} min")),
            ..Warning::new(WarningKind::SpamRate)
        }),
        source: Source::Send,
        at: now,
        reason: format!(
            "131048 spam rate limit hit on phone number {phone}: Meta says too many of its messages were blocked or reported; its pace is halved for {mins} min (check the number's quality rating)"
        ),
        evidence: Some(evidence),
    }
}

/// The opt-in hold after a warning of `kind` recorded at `at` (`[warnings]
/// hold_marketing`): the WABA's circuit opens for MARKETING template sends until
/// `at + hold_for`, answered locally with 368 like a policy block. Applied only while the
/// WABA's circuit is closed (a wider block stays as it is).
pub fn marketing_hold(
    waba_id: &str,
    kind: WarningKind,
    at: DateTime<Utc>,
    hold_for: std::time::Duration,
) -> Change {
    let until = at + chrono::Duration::from_std(hold_for).unwrap_or(chrono::Duration::MAX);
    Change {
        waba_id: waba_id.to_string(),
        phone_number_id: None,
        template: None,
        country: None,
        recipient: None,
        action: Action::Open {
            scope: crate::circuit::Scope::MarketingTemplates,
            code: Some(crate::graph::codes::POLICY_BLOCK),
            until: Some(until),
        },
        source: Source::Admin,
        at,
        reason: format!(
            "MARKETING templates held after a {} warning (warnings.hold_marketing), for {} min",
            kind.as_str(),
            hold_for.as_secs().div_ceil(60)
        ),
        evidence: Some(Evidence::Admin {
            reason: format!("warnings.hold_marketing includes {}", kind.as_str()),
        }),
    }
}

/// True when `record` (the WABA's, or the phone number's) already holds a spam-rate
/// warning for `phone` at or after `since`: another replica announced this episode.
pub fn spam_announced(record: Option<&Circuit>, phone: &str, since: DateTime<Utc>) -> bool {
    record.is_some_and(|c| {
        c.history.iter().rev().any(|t| {
            t.at >= since
                && t.warning.as_ref().is_some_and(|w| {
                    w.kind == WarningKind::SpamRate && w.phone_number_id.as_deref() == Some(phone)
                })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::webhook as payload;
    use chrono::TimeZone;
    use serde_json::json;

    const WABA: &str = "102290129340398";

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_900_000_100, 0).unwrap()
    }

    fn capability(value: Value, previous: Option<(u64, String)>) -> Option<Step> {
        let body = json!({"entry": [{"id": WABA, "time": 1_900_000_000, "changes": [{"field": FIELD_CAPABILITY, "value": value}]}]});
        let env = payload::parse(body.to_string().as_bytes()).unwrap();
        let en = &env.entries[0];
        plan_capability(en, &en.changes[0], previous, now())
    }

    #[test]
    fn limits_in_every_spelling() {
        for (v, n) in [
            (
                json!({"max_daily_conversations_per_business": "TIER_250"}),
                250,
            ),
            (
                json!({"max_daily_conversations_per_business": "TIER_2K"}),
                2_000,
            ),
            (
                json!({"max_daily_conversations_per_business": "tier_10k"}),
                10_000,
            ),
            (
                json!({"max_daily_conversations_per_business": "TIER_100K"}),
                100_000,
            ),
            (
                json!({"max_daily_conversations_per_business": "TIER_UNLIMITED"}),
                u64::MAX,
            ),
            (json!({"max_daily_conversations_per_business": 2000}), 2_000),
            (json!({"max_daily_conversation_per_phone": -1}), u64::MAX),
            (json!({"max_daily_conversation_per_phone": 1000}), 1_000),
        ] {
            assert_eq!(messaging_limit(&v).map(|l| l.0), Some(n), "{v}");
        }
        for v in [
            json!({}),
            json!({"max_daily_conversations_per_business": "TIER_"}),
            json!({"max_daily_conversations_per_business": "LOTS"}),
            json!({"max_daily_conversations_per_business": -5}),
            json!({"max_daily_conversations_per_business": [1]}),
        ] {
            assert_eq!(messaging_limit(&v), None, "{v}");
        }
    }

    #[test]
    fn a_lowered_limit_warns_and_a_raise_or_first_one_is_a_note() {
        let v = json!({"max_daily_conversations_per_business": "TIER_250"});
        let s = capability(v.clone(), Some((2_000, "TIER_2K".into()))).unwrap();
        match &s.change.action {
            Action::Warn(w) => {
                assert_eq!(w.kind, WarningKind::MessagingLimit);
                assert_eq!(w.detail.as_deref(), Some("TIER_2K -> TIER_250"));
            }
            other => panic!("{other:?}"),
        }
        assert!(s.change.reason.contains("lowered from TIER_2K to TIER_250"));
        assert_eq!(
            capability(v.clone(), None).unwrap().change.action,
            Action::Note
        );
        assert_eq!(
            capability(v, Some((250, "TIER_250".into())))
                .unwrap()
                .change
                .action,
            Action::Note
        );
        let up = json!({"max_daily_conversations_per_business": "TIER_10K"});
        assert_eq!(
            capability(up, Some((2_000, "TIER_2K".into())))
                .unwrap()
                .change
                .action,
            Action::Note
        );
        assert!(capability(json!({"other": 1}), None).is_none());
    }

    #[test]
    fn the_previous_limit_is_the_newest_recorded() {
        let mut c = Circuit::new(WABA, now());
        for (i, tier) in ["TIER_250", "TIER_10K"].iter().enumerate() {
            let s =
                capability(json!({"max_daily_conversations_per_business": tier}), None).unwrap();
            c.history.push(crate::circuit::Transition {
                at: now() + chrono::Duration::seconds(i as i64),
                to: crate::circuit::State::Closed,
                source: Source::Webhook,
                note: true,
                reason: s.change.reason,
                evidence: s.change.evidence,
                clamped_from: None,
                warning: None,
            });
        }
        assert_eq!(previous_limit(Some(&c)), Some((10_000, "TIER_10K".into())));
        assert_eq!(previous_limit(None), None);
    }

    #[test]
    fn a_spam_episode_is_announced_once_per_record() {
        let phone = GraphId::new("106540352242922").unwrap();
        let ev = Evidence::Send {
            code: 131048,
            error_subcode: None,
            message: "Spam rate limit hit".into(),
            fbtrace_id: None,
            phone_number_id: Some(phone.to_string()),
        };
        let ch = spam_rate(
            WABA,
            phone,
            ev.clone(),
            std::time::Duration::from_secs(3600),
            now(),
        );
        assert_eq!(ch.key(), WABA);
        let unknown = spam_rate("", phone, ev, std::time::Duration::from_secs(90), now());
        assert_eq!(unknown.key(), "phone:106540352242922");
        assert!(unknown.reason.contains("2 min"));
        let out = crate::circuit::decide(None, &ch, "t", 20, now());
        let crate::circuit::Outcome::Applied { circuit, .. } = out else {
            panic!("applied");
        };
        let since = now() - chrono::Duration::seconds(60);
        assert!(spam_announced(Some(&circuit), "106540352242922", since));
        assert!(!spam_announced(Some(&circuit), "106540352242923", since));
        assert!(!spam_announced(
            Some(&circuit),
            "106540352242922",
            now() + chrono::Duration::seconds(1)
        ));
    }
}
