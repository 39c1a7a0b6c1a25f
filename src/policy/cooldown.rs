//! Marketing cooldowns and template categories, the decisions. Meta reports the user's
//! marketing limit only by webhook: a `messages` status `failed` with 131049 and the
//! `recipient_id`, and asks to wait at least 24 h before sending that user marketing again
//! (sooner can make them unreachable another 24 h). So the WABA's sends of MARKETING
//! templates to that recipient are answered locally with 131049 for
//! `shaping.marketing_cooldown` ([`from_status`], [`check`]). A template's category is
//! learned from `message_template_status_update` (`message_template_category`) and
//! `template_category_update` (`new_category`; the advance notice `correct_category` is
//! recorded) ([`plan_category`]). A template of unknown category is forwarded — never held
//! by guesswork; utility and authentication templates and free-form sends always flow.
//! The mechanics (keys, the hot path's index) are [`crate::circuit::cooldown`].

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::plan::{AsyncError, Step};
use super::template::webhook_template;
use crate::circuit::cooldown::{self, MARKETING};
use crate::circuit::template::of_send;
use crate::circuit::{Action, Change, Evidence, Scope, Source, Table};
use crate::graph::codes::MARKETING_LIMIT;
use crate::graph::webhook::{ChangeItem, Entry};
use crate::graph::GraphId;

/// The field of Meta's template re-categorisations.
pub const FIELD_TEMPLATE_CATEGORY: &str = "template_category_update";

/// A recipient's digits as a cooldown keys them: the pair holds' rule
/// (`+1 555-765-4321` is `15557654321`).
pub use super::pair::digits;

/// A `messages` status error reported for WABA `waba_id` (pure): a 131049 with a
/// `recipient_id` opens that recipient's cooldown from the status's time (else `at`) for
/// `cooldown`. `None` for anything else.
pub fn from_status(
    waba_id: &str,
    e: &AsyncError,
    cooldown: Duration,
    at: DateTime<Utc>,
) -> Option<Change> {
    if e.code != MARKETING_LIMIT || e.site != "status" || !GraphId::is_valid(waba_id) {
        return None;
    }
    let to = digits(e.recipient.as_deref()?)?;
    let at = e.time.unwrap_or(at);
    let until = at.checked_add_signed(chrono::Duration::from_std(cooldown).ok()?)?;
    Some(Change {
        waba_id: waba_id.to_string(),
        phone_number_id: None,
        template: None,
        recipient: Some(to.to_string()),
        country: None,
        action: Action::Open {
            scope: Scope::BusinessInitiated,
            code: Some(MARKETING_LIMIT),
            until: Some(until),
        },
        source: Source::Webhook,
        at,
        reason: "messages status failed with 131049 (the user's marketing limit): MARKETING templates to this recipient are held".into(),
        // The status's id, time and error; never the recipient (it is the key).
        evidence: Some(Evidence::Webhook {
            entry_id: waba_id.to_string(),
            field: super::plan::FIELD_MESSAGES.into(),
            event: "statuses[].errors[]".into(),
            value: e.evidence.clone(),
        }),
    })
}

/// A `message_template_status_update` that names the template's category
/// (`message_template_category`), or a `template_category_update` (`new_category`, and the
/// advance notice `correct_category` with `category_update_timestamp`), as a category
/// change on the template's record (pure). `None` when the entry is not a WABA, the
/// template is not named, or no category is given.
pub fn plan_category(entry: &Entry, ch: &ChangeItem, now: DateTime<Utc>) -> Option<Step> {
    let status = ch.field == super::template::FIELD_TEMPLATE_STATUS;
    if !(status || ch.field == FIELD_TEMPLATE_CATEGORY) || !GraphId::is_valid(&entry.id) {
        return None;
    }
    let template = webhook_template(&ch.value)?;
    let s = |k: &str| {
        ch.value
            .get(k)
            .and_then(serde_json::Value::as_str)
            .and_then(cooldown::normalize)
    };
    let (category, coming) = if status {
        (s("message_template_category"), None)
    } else {
        let when = ch
            .value
            .get("category_update_timestamp")
            .and_then(crate::graph::webhook::unix_time);
        (s("new_category"), s("correct_category").map(|c| (c, when)))
    };
    if category.is_none() && coming.is_none() {
        return None;
    }
    let what = match (&category, &coming) {
        (Some(c), _) => format!("category {c}"),
        (None, Some((c, _))) => format!("Meta will move it to category {c} (advance notice)"),
        (None, None) => return None,
    };
    Some(Step {
        change: Change {
            waba_id: entry.id.clone(),
            phone_number_id: None,
            template: Some(template.clone()),
            recipient: None,
            country: None,
            action: Action::Categorize { category, coming },
            source: Source::Webhook,
            at: entry.event_time(ch, now),
            reason: format!(
                "{}: template {} ({}) {what}",
                ch.field, template.name, template.language
            ),
            evidence: Some(Evidence::Webhook {
                entry_id: entry.id.clone(),
                field: ch.field.clone(),
                event: ch.event_name().unwrap_or("category").to_string(),
                value: ch.value.clone(),
            }),
        },
        check_health: false,
        only_if_opened_by: None,
        only_known_waba: false,
    })
}

/// What the cooldown step found for a send.
#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    /// Not held: a free-form send, a template not known to be MARKETING, no cooldown.
    Free,
    /// A MARKETING template to a recipient in cooldown, until `until`.
    Held {
        /// The cooldown's end.
        until: DateTime<Utc>,
        /// The template's name (for the answer's details).
        template: String,
    },
}

/// A send of `waba_id` with body `body` at `now` (the caller has checked that the WABA
/// holds cooldowns): held when it is a template whose known category is MARKETING, to a
/// recipient in cooldown.
pub fn check(table: &Table, waba_id: &str, body: &[u8], now: DateTime<Utc>) -> Check {
    let idx = table.cooldowns();
    let Some(t) = of_send(body) else {
        return Check::Free;
    };
    if idx
        .category(waba_id, &t)
        .is_none_or(|c| c.as_ref() != MARKETING)
    {
        return Check::Free;
    }
    let Some(to) = super::pair::recipient(body) else {
        return Check::Free;
    };
    match idx.held(waba_id, to) {
        Some(h) if h.until > now => Check::Held {
            until: h.until,
            template: t.name,
        },
        _ => Check::Free,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::{Circuit, Directory, Limits, State};
    use crate::graph::webhook as payload;
    use chrono::TimeZone;
    use serde_json::{json, Value};

    const WABA: &str = "102290129340398";
    const T: i64 = 1_900_000_000;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(T + s, 0).unwrap()
    }

    fn status(code: i64, recipient: Option<&str>, site: &'static str) -> AsyncError {
        AsyncError {
            code,
            site,
            evidence: json!({"id": "wamid.X", "error": {"code": code}}),
            time: Some(at(0)),
            recipient: recipient.map(str::to_string),
            country: None,
        }
    }

    #[test]
    fn a_131049_status_for_a_recipient_opens_their_cooldown_from_the_status_time() {
        let day = Duration::from_secs(86_400);
        let c = from_status(
            WABA,
            &status(131049, Some("+1 555-765-4321"), "status"),
            day,
            at(50),
        )
        .unwrap();
        assert_eq!(c.key(), "cooldown:102290129340398:15557654321");
        assert_eq!(c.at, at(0), "the status's own time");
        assert_eq!(
            c.action,
            Action::Open {
                scope: Scope::BusinessInitiated,
                code: Some(131049),
                until: Some(at(86_400)),
            }
        );
        let Some(Evidence::Webhook { value, .. }) = &c.evidence else {
            panic!()
        };
        assert!(
            !value.to_string().contains("15557654321"),
            "no recipient in evidence"
        );
        // Other codes, no recipient, value.errors[], a WABA that is not an id: nothing.
        for e in [
            status(131050, Some("15557654321"), "status"),
            status(131049, None, "status"),
            status(131049, Some("no digits"), "status"),
            status(131049, Some("15557654321"), "value"),
        ] {
            assert!(from_status(WABA, &e, day, at(0)).is_none(), "{e:?}");
        }
        assert!(from_status("", &status(131049, Some("1"), "status"), day, at(0)).is_none());
    }

    fn parse(field: &str, value: Value) -> payload::Envelope {
        let body = json!({"object": "whatsapp_business_account", "entry": [
            {"id": WABA, "time": T, "changes": [{"field": field, "value": value}]}]});
        payload::parse(body.to_string().as_bytes()).unwrap()
    }

    fn categorize_of(env: &payload::Envelope) -> Option<Action> {
        let e = &env.entries[0];
        plan_category(e, &e.changes[0], at(0)).map(|s| s.change.action)
    }

    #[test]
    fn categories_come_from_status_updates_and_category_updates() {
        let tpl = |extra: Value| {
            let mut v = json!({"message_template_name": "promo_offer", "message_template_language": "en_US"});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v
        };
        let approved = parse(
            "message_template_status_update",
            tpl(json!({"event": "APPROVED", "message_template_category": "marketing"})),
        );
        assert_eq!(
            categorize_of(&approved),
            Some(Action::Categorize {
                category: Some("MARKETING".into()),
                coming: None
            })
        );
        let notice = parse(
            "template_category_update",
            tpl(json!({"correct_category": "MARKETING", "category_update_timestamp": T + 86_400})),
        );
        assert_eq!(
            categorize_of(&notice),
            Some(Action::Categorize {
                category: None,
                coming: Some(("MARKETING".into(), Some(at(86_400))))
            })
        );
        let moved = parse(
            "template_category_update",
            tpl(json!({"previous_category": "UTILITY", "new_category": "MARKETING"})),
        );
        assert_eq!(
            categorize_of(&moved),
            Some(Action::Categorize {
                category: Some("MARKETING".into()),
                coming: None
            })
        );
        // No category, or no template name: nothing.
        let none = parse(
            "message_template_status_update",
            tpl(json!({"event": "PAUSED"})),
        );
        assert_eq!(categorize_of(&none), None);
        let unnamed = parse(
            "template_category_update",
            json!({"new_category": "MARKETING"}),
        );
        assert_eq!(categorize_of(&unnamed), None);
    }

    fn table(max_cooldowns: usize) -> Table {
        let limits = Limits {
            max_cooldowns,
            ..Limits::default()
        };
        Table::with_limits("t", 5, limits, Directory::new([], 100))
    }

    fn cooldown(to: &str, until: DateTime<Utc>) -> Change {
        Change {
            waba_id: WABA.into(),
            phone_number_id: None,
            template: None,
            recipient: Some(to.into()),
            country: None,
            action: Action::Open {
                scope: Scope::BusinessInitiated,
                code: Some(131049),
                until: Some(until),
            },
            source: Source::Webhook,
            at: Utc::now(),
            reason: "131049".into(),
            evidence: None,
        }
    }

    fn categorized(t: &Table, name: &str, category: &str) {
        t.apply(Change {
            waba_id: WABA.into(),
            phone_number_id: None,
            template: Some(crate::circuit::TemplateRef {
                name: name.into(),
                language: "en_US".into(),
            }),
            recipient: None,
            country: None,
            action: Action::Categorize {
                category: Some(category.into()),
                coming: None,
            },
            source: Source::Webhook,
            at: Utc::now(),
            reason: "category".into(),
            evidence: None,
        })
        .unwrap();
    }

    fn send(name: &str, to: &str) -> Vec<u8> {
        json!({"to": to, "type": "template", "template": {"name": name, "language": {"code": "en_US"}}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn only_marketing_templates_to_the_recipient_are_held_and_the_cap_evicts_the_soonest() {
        let t = table(2);
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);
        categorized(&t, "promo", "MARKETING");
        categorized(&t, "receipt", "UTILITY");
        t.apply(cooldown("15557654321", now + hour)).unwrap();
        let held = |name: &str, to: &str| check(&t, WABA, &send(name, to), now);
        assert!(
            matches!(held("promo", "+1 (555) 765-4321"), Check::Held { until, .. } if until == now + hour)
        );
        assert_eq!(held("promo", "15550001111"), Check::Free);
        assert_eq!(held("receipt", "15557654321"), Check::Free);
        assert_eq!(held("unknown", "15557654321"), Check::Free);
        let text = json!({"to": "15557654321", "type": "text", "text": {"body": "x"}}).to_string();
        assert_eq!(check(&t, WABA, text.as_bytes(), now), Check::Free);
        // Categories stay on closed template records; cooldowns are not circuits' gauges.
        let rec = t.get("template:102290129340398:promo:en_US").unwrap();
        assert_eq!(rec.state, State::Closed);
        assert!(rec.category.is_some());

        // The cap: a third cooldown evicts the one ending first.
        t.apply(cooldown("15550000002", now + hour * 3)).unwrap();
        t.apply(cooldown("15550000003", now + hour * 2)).unwrap();
        assert_eq!(t.cooldowns().len(), 2);
        assert!(
            t.get("cooldown:102290129340398:15557654321").is_none(),
            "the soonest went"
        );
        assert_eq!(held("promo", "15557654321"), Check::Free);
        assert!(matches!(held("promo", "15550000003"), Check::Held { .. }));

        // Closed (the expiry, an operator): free again.
        let mut close = cooldown("15550000003", now);
        close.action = Action::Close;
        t.apply(close).unwrap();
        assert_eq!(held("promo", "15550000003"), Check::Free);
        assert_eq!(t.cooldowns().len(), 1);
        let c: Circuit = t.get("cooldown:102290129340398:15550000003").unwrap();
        assert!(c.is_cooldown() && !c.is_open() && c.has_valid_ids());

        // Pruning drops the ended cooldown at once; categories outlive `closed_ttl`.
        t.prune(Utc::now() + chrono::Duration::days(30));
        assert!(t.get("cooldown:102290129340398:15550000003").is_none());
        assert!(
            t.get("cooldown:102290129340398:15550000002").is_some(),
            "still held"
        );
        assert!(t.get("template:102290129340398:promo:en_US").is_some());
        assert_eq!(
            t.cooldowns()
                .category(
                    WABA,
                    &crate::circuit::TemplateRef {
                        name: "promo".into(),
                        language: "en_US".into()
                    }
                )
                .as_deref(),
            Some(MARKETING)
        );
    }
}
