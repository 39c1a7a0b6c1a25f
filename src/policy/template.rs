//! Template circuits, the decisions: when a template's circuit opens and closes — a send
//! answered 132015 / 132016 ([`from_answer`], called by the judge) and
//! `message_template_status_update` webhooks ([`plan_template`]) — and what a template's
//! quality update records ([`plan_template_quality`]). The mechanics (key, index, where a
//! send names its template) are [`crate::circuit::template`].

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::plan::Step;
use super::{Answer, Call};
use crate::circuit::template::{of_send, TemplateRef};
use crate::circuit::{Action, Change, Evidence, Scope, Source, Warning, WarningKind};
use crate::graph::codes;
use crate::graph::envelope;
use crate::graph::webhook::{ChangeItem, Entry};
use crate::graph::GraphId;

/// Meta's documented length of a first template pause (`FIRST_PAUSE`): the end of a
/// pause learned from a send answer that says nothing more (a later webhook corrects it).
pub const TEMPLATE_PAUSE: Duration = Duration::from_secs(3 * 3600);
/// The longest documented template pause (`SECOND_PAUSE`, 6 h): a `retry-after` on a
/// 132015 answer is believed up to this.
pub const TEMPLATE_PAUSE_MAX: Duration = Duration::from_secs(6 * 3600);

/// A send answered with a template code: the circuit of the send's template opens, as the
/// `message_template_status_update` webhook opens it (scope `business_initiated`, Meta's
/// code), with the answer as evidence. 132016 has no end; 132015 ends after the answer's
/// `retry-after` (at most [`TEMPLATE_PAUSE_MAX`]) or else Meta's first-pause length
/// ([`TEMPLATE_PAUSE`]). Nothing opens when the WABA is not known (the key needs it), when
/// the engine does not hold the send's body or it is larger than `cap` (forwarded unread,
/// as the guard does), or when it is not a template send. The body is parsed only here:
/// the hot path never parses a send for this.
pub fn from_answer(
    call: Call,
    cap: usize,
    answer: Answer<'_>,
    err: envelope::GraphError,
    now: DateTime<Utc>,
) -> Option<Change> {
    let account = call.account?;
    let template = answer
        .request
        .filter(|b| b.len() <= cap)
        .and_then(of_send)?;
    let until = if err.code == codes::TEMPLATE_PAUSED {
        let pause = answer
            .retry_after
            .and_then(|v| super::retry_after(v, now))
            .map_or(TEMPLATE_PAUSE, |d| {
                d.clamp(Duration::from_secs(1), TEMPLATE_PAUSE_MAX)
            });
        Some(now + chrono::Duration::from_std(pause).ok()?)
    } else {
        None
    };
    let reason = format!(
        "HTTP {}, Graph error {} to a send of template {} ({}){}",
        answer.status,
        err.code,
        template.name,
        template.language,
        if err.message.is_empty() {
            String::new()
        } else {
            format!(": {}", err.message)
        }
    );
    Some(Change {
        waba_id: account.waba.to_string(),
        phone_number_id: None,
        template: Some(template),
        country: None,
        recipient: None,
        action: Action::Open {
            scope: Scope::BusinessInitiated,
            code: Some(err.code),
            until,
        },
        source: Source::Send,
        at: now,
        reason,
        evidence: Some(super::send_evidence(call, err)),
    })
}

/// The field of template status changes.
pub const FIELD_TEMPLATE_STATUS: &str = "message_template_status_update";
/// The field of template quality changes.
pub const FIELD_TEMPLATE_QUALITY: &str = "message_template_quality_update";

/// The template a template webhook is about (`message_template_name`,
/// `message_template_language`), when both are there and well-formed.
pub fn webhook_template(value: &serde_json::Value) -> Option<TemplateRef> {
    let s = |k: &str| value.get(k).and_then(serde_json::Value::as_str);
    let t = TemplateRef {
        name: s("message_template_name")?.to_string(),
        language: s("message_template_language")?.to_string(),
    };
    t.is_valid().then_some(t)
}

/// Maps a `message_template_status_update` change to its template's circuit (pure):
///
/// - `PAUSED` → open, answered locally with 132015; the known end is the pause's
///   (`other_info.title` `FIRST_PAUSE` 3 h, `SECOND_PAUSE` 6 h). `RATE_LIMITING_PAUSE`
///   (paused during pacing) and any other title have no end: only Meta's unpause or an
///   operator closes them, never time.
/// - `DISABLED` → open with 132016, no end.
/// - `REINSTATED`, `APPROVED`, or `other_info.title` `UNPAUSE` (whatever the event) →
///   close (the template is sendable again). Meta documents no `UNPAUSED` event: the
///   unpause is the `UNPAUSE` title.
/// - Every other event Meta documents (`ARCHIVED`, `UNARCHIVED`, `DELETED`, `FLAGGED`,
///   `IN_APPEAL`, `LIMIT_EXCEEDED`, `LOCKED`, `PENDING`, `PENDING_DELETION`, `REJECTED`)
///   and any event or title it may add → a note (Meta answers those sends itself; an
///   appeal or a lock changes nothing the gateway holds).
///
/// `other_info` and the whole value are kept as evidence. `None` when the entry is not a
/// WABA or the template is not named.
pub fn plan_template(entry: &Entry, ch: &ChangeItem, now: DateTime<Utc>) -> Option<Step> {
    if ch.field != FIELD_TEMPLATE_STATUS || !GraphId::is_valid(&entry.id) {
        return None;
    }
    let template = webhook_template(&ch.value)?;
    let event = ch.event_name().unwrap_or_default().to_ascii_uppercase();
    let title = ch
        .value
        .get("other_info")
        .and_then(|o| o.get("title"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_ascii_uppercase();
    let at = entry.event_time(ch, now);
    let hours = |h: i64| Some(at + chrono::Duration::hours(h));
    let action = match (event.as_str(), title.as_str()) {
        (_, "UNPAUSE") | ("REINSTATED" | "APPROVED", _) => Action::Close,
        ("PAUSED", t) => Action::Open {
            scope: Scope::BusinessInitiated,
            code: Some(codes::TEMPLATE_PAUSED),
            until: match t {
                "FIRST_PAUSE" => hours(3),
                "SECOND_PAUSE" => hours(6),
                _ => None,
            },
        },
        ("DISABLED", _) => Action::Open {
            scope: Scope::BusinessInitiated,
            code: Some(codes::TEMPLATE_DISABLED),
            until: None,
        },
        _ => Action::Note,
    };
    let title_part = if title.is_empty() {
        String::new()
    } else {
        format!(" ({title})")
    };
    Some(Step {
        change: Change {
            waba_id: entry.id.clone(),
            phone_number_id: None,
            template: Some(template.clone()),
            country: None,
            recipient: None,
            action,
            source: Source::Webhook,
            at,
            reason: format!(
                "{FIELD_TEMPLATE_STATUS} {event}{title_part}: template {} ({})",
                template.name, template.language
            ),
            evidence: Some(Evidence::Webhook {
                entry_id: entry.id.clone(),
                field: ch.field.clone(),
                event,
                value: ch.value.clone(),
            }),
        },
        check_health: false,
        only_if_opened_by: None,
        only_known_waba: false,
    })
}

/// A `message_template_quality_update` as a note on the WABA's circuit (never a block) and
/// its new score (the metric label). `None` when the entry is not a WABA.
pub fn plan_template_quality(
    entry: &Entry,
    ch: &ChangeItem,
    now: DateTime<Utc>,
) -> Option<(Step, &'static str)> {
    if ch.field != FIELD_TEMPLATE_QUALITY || !GraphId::is_valid(&entry.id) {
        return None;
    }
    let s = |k: &str| {
        ch.value
            .get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
    };
    let new = s("new_quality_score").to_ascii_uppercase();
    let label = match new.as_str() {
        "GREEN" => "GREEN",
        "YELLOW" => "YELLOW",
        "RED" => "RED",
        "UNKNOWN" => "UNKNOWN",
        _ => "other",
    };
    let template = webhook_template(&ch.value);
    let name = template
        .as_ref()
        .map(|t| format!("{} ({})", t.name, t.language))
        .unwrap_or_else(|| "unnamed template".into());
    let previous = s("previous_quality_score");
    // YELLOW "may soon be paused or disabled", RED "in danger of being paused": a person
    // should act before Meta pauses it. Back to GREEN (or UNKNOWN) is recorded only.
    let action = match label {
        "YELLOW" | "RED" => Action::Warn(Warning {
            template,
            detail: Some(if previous.is_empty() {
                label.to_string()
            } else {
                format!("{label} (was {previous})")
            }),
            ..Warning::new(WarningKind::TemplateQuality)
        }),
        _ => Action::Note,
    };
    let step = Step::waba_record(
        entry,
        ch,
        action,
        format!(
            "{FIELD_TEMPLATE_QUALITY}: template {name} quality {previous} -> {label} (recorded, not a block)",
        ),
        label,
        now,
    );
    Some((step, label))
}

use super::cooldown::FIELD_TEMPLATE_CATEGORY;

/// A `template_category_update` as a record on the WABA (never a block): 24 h before
/// Meta re-categorises a template it sends `correct_category` (and
/// `category_update_timestamp`), then `previous_category` and `new_category` once moved.
/// A move to `MARKETING` — announced or made — is a warning (`template_category`: marketing
/// costs more and counts against each user's marketing limit, 131049); other moves are
/// notes. `None` when the entry is not a WABA or names no category.
pub fn plan_template_category(entry: &Entry, ch: &ChangeItem, now: DateTime<Utc>) -> Option<Step> {
    if ch.field != FIELD_TEMPLATE_CATEGORY || !GraphId::is_valid(&entry.id) {
        return None;
    }
    let s = |k: &str| {
        ch.value
            .get(k)
            .and_then(serde_json::Value::as_str)
            .map(str::to_ascii_uppercase)
    };
    let template = webhook_template(&ch.value);
    let name = template
        .as_ref()
        .map(|t| format!("{} ({})", t.name, t.language))
        .unwrap_or_else(|| "unnamed template".into());
    let (to, text, event) = match (s("new_category"), s("correct_category")) {
        (Some(new), _) => {
            let from = s("previous_category").unwrap_or_else(|| "unspecified".into());
            let text = format!("moved from {from} to {new}");
            (new, text, "MOVED")
        }
        (None, Some(correct)) => {
            let when = ch
                .value
                .get("category_update_timestamp")
                .and_then(crate::graph::webhook::unix_time)
                .map(|t| {
                    format!(
                        " on {}",
                        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    )
                })
                .unwrap_or_default();
            let text = format!("to be moved to {correct}{when}");
            (correct, text, "ANNOUNCED")
        }
        (None, None) => return None,
    };
    let action = if to == "MARKETING" {
        Action::Warn(Warning {
            template,
            detail: Some(text.clone()),
            ..Warning::new(WarningKind::TemplateCategory)
        })
    } else {
        Action::Note
    };
    Some(Step::waba_record(
        entry,
        ch,
        action,
        format!("{FIELD_TEMPLATE_CATEGORY}: template {name} {text} (recorded, not a block)"),
        event,
        now,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::webhook as payload;
    use chrono::TimeZone;
    use serde_json::{json, Value};

    const WABA: &str = "102290129340398";
    const T: i64 = 1_900_000_000;

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(T + 100, 0).unwrap()
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    #[test]
    fn template_status_updates() {
        let plan_t = |value: Value| {
            let body = json!({"entry": [{"id": WABA, "time": T, "changes": [{"field": FIELD_TEMPLATE_STATUS, "value": value}]}]});
            let env = payload::parse(body.to_string().as_bytes()).unwrap();
            let en = &env.entries[0];
            plan_template(en, &en.changes[0], now())
        };
        let v = |event: &str, title: Option<&str>| {
            let mut v = json!({"event": event, "message_template_id": 123,
                "message_template_name": "order_update", "message_template_language": "en_US"});
            if let Some(t) = title {
                v["other_info"] = json!({"title": t, "description": "paused"});
            }
            v
        };
        let open = |code: i64, until: Option<DateTime<Utc>>| Action::Open {
            scope: Scope::BusinessInitiated,
            code: Some(code),
            until,
        };
        let cases = [
            (
                v("PAUSED", Some("FIRST_PAUSE")),
                open(132015, Some(at(T + 3 * 3600))),
            ),
            (
                v("PAUSED", Some("SECOND_PAUSE")),
                open(132015, Some(at(T + 6 * 3600))),
            ),
            (v("PAUSED", Some("RATE_LIMITING_PAUSE")), open(132015, None)),
            (v("PAUSED", None), open(132015, None)),
            (v("DISABLED", None), open(132016, None)),
            (v("REINSTATED", None), Action::Close),
            (v("APPROVED", None), Action::Close),
            (v("REINSTATED", Some("UNPAUSE")), Action::Close),
            (v("FLAGGED", None), Action::Note),
            (v("DELETED", None), Action::Note),
        ];
        for (value, want) in cases {
            let s = plan_t(value.clone()).unwrap();
            assert_eq!(s.change.action, want, "{value}");
            assert_eq!(
                s.change.key(),
                format!("template:{WABA}:order_update:en_US")
            );
            let Some(Evidence::Webhook { value: ev, .. }) = &s.change.evidence else {
                panic!()
            };
            assert_eq!(ev, &value);
        }
        // No (usable) name: nothing.
        assert!(plan_t(json!({"event": "PAUSED"})).is_none());
        assert!(plan_t(json!({"event": "PAUSED", "message_template_name": "Bad Name", "message_template_language": "en"})).is_none());
    }

    /// Every `message_template_status_update` event Meta documents, and every
    /// `other_info.title`, against what the template's circuit does.
    #[test]
    fn every_documented_template_event_and_title() {
        let plan_t = |event: &str, title: Option<&str>| {
            let mut v = json!({"event": event, "message_template_id": 123,
                "message_template_name": "order_update", "message_template_language": "en_US",
                "message_template_category": "MARKETING", "reason": "NONE"});
            if let Some(t) = title {
                v["other_info"] = json!({"title": t, "description": "…"});
            }
            let body = json!({"entry": [{"id": WABA, "time": T, "changes": [{"field": FIELD_TEMPLATE_STATUS, "value": v}]}]});
            let env = payload::parse(body.to_string().as_bytes()).unwrap();
            let en = &env.entries[0];
            plan_template(en, &en.changes[0], now())
                .unwrap()
                .change
                .action
        };
        let paused = |until: Option<DateTime<Utc>>| Action::Open {
            scope: Scope::BusinessInitiated,
            code: Some(132015),
            until,
        };
        let events = [
            ("APPROVED", Action::Close),
            ("ARCHIVED", Action::Note),
            ("UNARCHIVED", Action::Note),
            ("DELETED", Action::Note),
            (
                "DISABLED",
                Action::Open {
                    scope: Scope::BusinessInitiated,
                    code: Some(132016),
                    until: None,
                },
            ),
            ("FLAGGED", Action::Note),
            ("IN_APPEAL", Action::Note),
            ("LIMIT_EXCEEDED", Action::Note),
            ("LOCKED", Action::Note),
            ("PAUSED", paused(None)),
            ("PENDING", Action::Note),
            ("REINSTATED", Action::Close),
            ("PENDING_DELETION", Action::Note),
            ("REJECTED", Action::Note),
            // Not documented (there is no UNPAUSED event) or new: a note, never an error.
            ("UNPAUSED", Action::Note),
            ("SOMETHING_NEW", Action::Note),
        ];
        for (event, want) in &events {
            assert_eq!(&plan_t(event, None), want, "{event}");
        }
        // The titles of PAUSED: how long, or no end at all.
        let titles = [
            ("FIRST_PAUSE", paused(Some(at(T + 3 * 3600)))),
            ("SECOND_PAUSE", paused(Some(at(T + 6 * 3600)))),
            ("RATE_LIMITING_PAUSE", paused(None)),
            ("SOME_NEW_PAUSE", paused(None)),
        ];
        for (title, want) in &titles {
            assert_eq!(&plan_t("PAUSED", Some(title)), want, "PAUSED {title}");
        }
        // UNPAUSE is the unpause signal, whatever event carries it.
        for (event, _) in &events {
            assert_eq!(
                plan_t(event, Some("UNPAUSE")),
                Action::Close,
                "{event} UNPAUSE"
            );
        }
        // Title DISABLED goes with the DISABLED event; alone it changes nothing.
        assert_eq!(plan_t("FLAGGED", Some("DISABLED")), Action::Note);
    }

    #[test]
    fn template_quality_yellow_or_red_is_a_warning() {
        let body = json!({"entry": [{"id": WABA, "time": T, "changes": [{"field": FIELD_TEMPLATE_QUALITY, "value": {
            "previous_quality_score": "GREEN", "new_quality_score": "RED", "message_template_id": 1,
            "message_template_name": "order_update", "message_template_language": "en_US"}}]}]});
        let env = payload::parse(body.to_string().as_bytes()).unwrap();
        let en = &env.entries[0];
        let (s, label) = plan_template_quality(en, &en.changes[0], now()).unwrap();
        assert_eq!(label, "RED");
        assert_eq!(
            s.change.action,
            Action::Warn(Warning {
                template: Some(TemplateRef {
                    name: "order_update".into(),
                    language: "en_US".into()
                }),
                detail: Some("RED (was GREEN)".into()),
                ..Warning::new(WarningKind::TemplateQuality)
            })
        );
        assert_eq!(s.change.template, None, "recorded on the WABA");
        assert!(s.change.reason.contains("GREEN -> RED"));
        for (new, warns) in [
            ("YELLOW", true),
            ("GREEN", false),
            ("UNKNOWN", false),
            ("", false),
        ] {
            let body = json!({"entry": [{"id": WABA, "time": T, "changes": [{"field": FIELD_TEMPLATE_QUALITY, "value": {
                "previous_quality_score": "RED", "new_quality_score": new,
                "message_template_name": "order_update", "message_template_language": "en_US"}}]}]});
            let env = payload::parse(body.to_string().as_bytes()).unwrap();
            let en = &env.entries[0];
            let (s, _) = plan_template_quality(en, &en.changes[0], now()).unwrap();
            assert_eq!(matches!(s.change.action, Action::Warn(_)), warns, "{new}");
        }
    }

    #[test]
    fn a_move_to_marketing_is_a_warning_and_other_moves_are_notes() {
        let plan_c = |value: Value| {
            let body = json!({"entry": [{"id": WABA, "time": T, "changes": [{"field": FIELD_TEMPLATE_CATEGORY, "value": value}]}]});
            let env = payload::parse(body.to_string().as_bytes()).unwrap();
            let en = &env.entries[0];
            plan_template_category(en, &en.changes[0], now())
        };
        let named = |mut v: Value| {
            v["message_template_name"] = json!("order_update");
            v["message_template_language"] = json!("en_US");
            v
        };
        let s = plan_c(named(
            json!({"correct_category": "MARKETING", "category_update_timestamp": T + 86_400}),
        ))
        .unwrap();
        match &s.change.action {
            Action::Warn(w) => {
                assert_eq!(w.kind, WarningKind::TemplateCategory);
                assert_eq!(
                    w.template.as_ref().map(|t| t.name.as_str()),
                    Some("order_update")
                );
                assert_eq!(
                    w.detail.as_deref(),
                    Some("to be moved to MARKETING on 2030-03-18T17:46:40Z")
                );
            }
            a => panic!("{a:?}"),
        }
        let s = plan_c(named(
            json!({"previous_category": "UTILITY", "new_category": "MARKETING"}),
        ))
        .unwrap();
        assert!(
            matches!(&s.change.action, Action::Warn(w) if w.detail.as_deref() == Some("moved from UTILITY to MARKETING"))
        );
        let s = plan_c(named(
            json!({"previous_category": "MARKETING", "new_category": "UTILITY"}),
        ))
        .unwrap();
        assert_eq!(s.change.action, Action::Note);
        // Unnamed templates still warn (the WABA is known); no category: nothing.
        assert!(matches!(
            plan_c(json!({"new_category": "MARKETING"}))
                .unwrap()
                .change
                .action,
            Action::Warn(_)
        ));
        assert!(plan_c(named(json!({}))).is_none());
    }
}
