//! What a webhook event means for a circuit: each `account_update` change of a delivery
//! mapped to one circuit change (open with a scope and an end, close, or a note), at the
//! event's own time. Pure: the receiver ([`crate::signals::webhook`]) applies the plan.

use chrono::{DateTime, SecondsFormat, Utc};

use super::webhook::{AccountEvent, BanState, ChangeItem, Entry, RestrictionKind};
use crate::circuit::{Action, Change, Evidence, Scope, Source};
use crate::config::is_graph_id;
use crate::policy::CODE_POLICY_BLOCK;

/// Graph error code local replies carry for circuits opened by a webhook: like a policy
/// block from Meta, so apps that handle 368 need no change.
pub const WEBHOOK_CODE: i64 = CODE_POLICY_BLOCK;

/// One circuit change planned from a webhook change.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// The circuit change.
    pub change: Change,
    /// An `ACCOUNT_VIOLATION` recorded as a note: check Health Status now.
    pub check_health: bool,
}

/// Maps one `changes[]` element of `entry` to a circuit change (pure; unit-tested).
/// `None` for fields and events that are not about sending, and for entries whose id is not
/// a WABA id.
///
/// - `ACCOUNT_RESTRICTION`: `RESTRICTED_CUSTOMER_INITIATED_MESSAGING` → open, all sends;
///   `RESTRICTED_BIZ_INITIATED_MESSAGING` → open, template sends; `until` = the latest
///   `expiration` of those (none if one has none). Other types only → a note.
/// - `DISABLED_UPDATE`: `DISABLE` → open (no `until`); `REINSTATE` → close;
///   `SCHEDULE_FOR_DISABLE` and anything else → a note.
/// - `ACCOUNT_VIOLATION` → a note, and a health check when a token is configured; opens
///   at once instead when `violation_opens` is set and there is no token.
/// - Lifecycle events → a note.
///
/// The event time is the change's own timestamp, else `entry.time`, else `now`.
pub fn plan(
    entry: &Entry,
    ch: &ChangeItem,
    now: DateTime<Utc>,
    violation_opens: bool,
    has_token: bool,
) -> Option<Step> {
    let event = ch.account_event()?;
    if !is_graph_id(&entry.id) {
        tracing::warn!(entry_id = %entry.id, "account_update for an id that is not a WABA id: ignored");
        return None;
    }
    let at = entry.event_time(ch, now);
    let name = ch.event_name().unwrap_or_default().to_string();
    let evidence = Some(Evidence::Webhook {
        entry_id: entry.id.clone(),
        field: ch.field.clone(),
        event: name.clone(),
        value: ch.value.clone(),
    });
    let step = |action: Action, reason: String, check_health: bool| Step {
        change: Change {
            waba_id: entry.id.clone(),
            phone_number_id: None,
            action,
            source: Source::Webhook,
            at,
            reason,
            evidence: evidence.clone(),
        },
        check_health,
    };
    let open = |scope: Scope, until: Option<DateTime<Utc>>| Action::Open {
        scope,
        code: Some(WEBHOOK_CODE),
        until,
    };
    Some(match event {
        AccountEvent::Restriction(rs) => {
            let types: Vec<String> = rs
                .iter()
                .map(|r| match (r.expiration, r.bad_expiration) {
                    (Some(e), _) => format!("{} until {}", r.restriction_type, rfc3339(e)),
                    (None, true) => format!("{} (unreadable expiration)", r.restriction_type),
                    (None, false) => r.restriction_type.clone(),
                })
                .collect();
            let blocking: Vec<_> = rs
                .iter()
                .filter(|r| r.kind != RestrictionKind::Other)
                .collect();
            let listed = if types.is_empty() {
                "no restriction types".to_string()
            } else {
                types.join(", ")
            };
            if blocking.is_empty() {
                step(
                    Action::Note,
                    format!("account_update ACCOUNT_RESTRICTION: {listed} (not a send block)"),
                    false,
                )
            } else {
                let scope = if blocking
                    .iter()
                    .any(|r| r.kind == RestrictionKind::CustomerInitiated)
                {
                    Scope::AllSends
                } else {
                    Scope::BusinessInitiated
                };
                // Conservative: the circuit stays as wide as its widest restriction until
                // the last one ends.
                let until = blocking
                    .iter()
                    .map(|r| r.expiration)
                    .collect::<Option<Vec<_>>>()
                    .and_then(|v| v.into_iter().max());
                step(
                    open(scope, until),
                    format!("account_update ACCOUNT_RESTRICTION: {listed}"),
                    false,
                )
            }
        }
        AccountEvent::Disabled { state, date } => {
            let date = date
                .map(|d| format!(" (waba_ban_date {d})"))
                .unwrap_or_default();
            let reason = format!("account_update DISABLED_UPDATE: {}{date}", state.as_str());
            match state {
                BanState::Disable => step(open(Scope::AllSends, None), reason, false),
                BanState::Reinstate => step(Action::Close, reason, false),
                BanState::ScheduleForDisable => step(
                    Action::Note,
                    format!("{reason}: disablement scheduled, sends still work"),
                    false,
                ),
                BanState::Unknown(_) => step(
                    Action::Note,
                    format!("{reason}: unknown ban state, not acted on"),
                    false,
                ),
            }
        }
        AccountEvent::Violation { violation_type } => {
            let reason = format!(
                "account_update ACCOUNT_VIOLATION: {}",
                violation_type.as_deref().unwrap_or("unspecified")
            );
            if violation_opens && !has_token {
                step(open(Scope::AllSends, None), reason, false)
            } else {
                step(Action::Note, reason, has_token)
            }
        }
        AccountEvent::Lifecycle(e) => step(
            Action::Note,
            format!("account_update {e} (account lifecycle; not a send block)"),
            false,
        ),
        AccountEvent::Other(_) => return None,
    })
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
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

    fn plan_value(value: Value, opens: bool, token: bool) -> Option<Step> {
        let body = json!({"object": "whatsapp_business_account", "entry": [
            {"id": WABA, "time": T, "changes": [{"field": "account_update", "value": value}]}]});
        let env = payload::parse(body.to_string().as_bytes()).unwrap();
        let e = &env.entries[0];
        plan(e, &e.changes[0], now(), opens, token)
    }

    fn planned(value: Value) -> Change {
        plan_value(value, false, false).expect("a step").change
    }

    fn restriction(types: &[(&str, Value)]) -> Value {
        let info: Vec<Value> = types
            .iter()
            .map(|(t, e)| json!({"restriction_type": t, "expiration": e}))
            .collect();
        json!({"event": "ACCOUNT_RESTRICTION", "restriction_info": info})
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    #[test]
    fn biz_initiated_restriction_opens_template_scope_until_expiration() {
        let c = planned(restriction(&[(
            "RESTRICTED_BIZ_INITIATED_MESSAGING",
            json!(T + 3600),
        )]));
        assert_eq!(
            c.action,
            Action::Open {
                scope: Scope::BusinessInitiated,
                code: Some(368),
                until: Some(at(T + 3600))
            }
        );
        assert_eq!(c.source, Source::Webhook);
        assert_eq!(c.at, at(T));
        assert_eq!(c.waba_id, WABA);
        assert!(c
            .reason
            .contains("RESTRICTED_BIZ_INITIATED_MESSAGING until"));
        let Some(Evidence::Webhook {
            entry_id,
            field,
            event,
            value,
        }) = c.evidence
        else {
            panic!()
        };
        assert_eq!(
            (entry_id.as_str(), field.as_str(), event.as_str()),
            (WABA, "account_update", "ACCOUNT_RESTRICTION")
        );
        assert_eq!(value["event"], "ACCOUNT_RESTRICTION");
    }

    #[test]
    fn iso_expiration_is_accepted() {
        let c = planned(restriction(&[(
            "RESTRICTED_CUSTOMER_INITIATED_MESSAGING",
            json!("2030-04-19T13:59:20+0000"),
        )]));
        let want = DateTime::parse_from_rfc3339("2030-04-19T13:59:20Z").unwrap();
        assert_eq!(
            c.action,
            Action::Open {
                scope: Scope::AllSends,
                code: Some(368),
                until: Some(want.with_timezone(&Utc))
            }
        );
    }

    #[test]
    fn widest_scope_and_last_expiration_win() {
        let c = planned(restriction(&[
            ("RESTRICTED_BIZ_INITIATED_MESSAGING", json!(T + 7200)),
            ("RESTRICTED_CUSTOMER_INITIATED_MESSAGING", json!(T + 3600)),
            ("RESTRICTED_ADD_PHONE_NUMBER_ACTION", json!(T + 99999)),
        ]));
        assert_eq!(
            c.action,
            Action::Open {
                scope: Scope::AllSends,
                code: Some(368),
                until: Some(at(T + 7200))
            }
        );
        // One blocking restriction without an end: no until.
        let c = planned(restriction(&[
            ("RESTRICTED_BIZ_INITIATED_MESSAGING", json!(T + 7200)),
            ("RESTRICTED_BIZ_INITIATED_MESSAGING", Value::Null),
        ]));
        assert!(matches!(
            c.action,
            Action::Open {
                until: None,
                scope: Scope::BusinessInitiated,
                ..
            }
        ));
        let c = planned(restriction(&[(
            "RESTRICTED_BIZ_INITIATED_MESSAGING",
            json!("soon"),
        )]));
        assert!(matches!(c.action, Action::Open { until: None, .. }));
        assert!(c.reason.contains("unreadable expiration"));
    }

    #[test]
    fn other_restrictions_are_notes() {
        let c = planned(restriction(&[
            ("RESTRICTED_ADD_PHONE_NUMBER_ACTION", json!(T + 10)),
            ("RESTRICTED_BIZ_INITIATED_CALLING", Value::Null),
        ]));
        assert_eq!(c.action, Action::Note);
        assert!(c.reason.contains("RESTRICTED_ADD_PHONE_NUMBER_ACTION"));
        assert!(c.reason.contains("not a send block"));
        let c = planned(json!({"event": "ACCOUNT_RESTRICTION", "restriction_info": []}));
        assert_eq!(c.action, Action::Note);
    }

    #[test]
    fn disabled_updates() {
        let c = planned(
            json!({"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": "DISABLE", "waba_ban_date": "April 17, 2025"}}),
        );
        assert_eq!(
            c.action,
            Action::Open {
                scope: Scope::AllSends,
                code: Some(368),
                until: None
            }
        );
        assert!(c.reason.contains("April 17, 2025"));
        let c = planned(
            json!({"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": ["DISABLE"]}}),
        );
        assert!(matches!(c.action, Action::Open { .. }));
        for s in [json!("REINSTATE"), json!(["REINSTATE"])] {
            let c = planned(json!({"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": s}}));
            assert_eq!(c.action, Action::Close);
        }
        let c = planned(
            json!({"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": "SCHEDULE_FOR_DISABLE"}}),
        );
        assert_eq!(c.action, Action::Note);
        assert!(c.reason.contains("SCHEDULE_FOR_DISABLE"));
        let c = planned(
            json!({"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": ["DISABLE", "REINSTATE"]}}),
        );
        assert_eq!(c.action, Action::Note);
    }

    #[test]
    fn violations() {
        let v =
            json!({"event": "ACCOUNT_VIOLATION", "violation_info": {"violation_type": "ADULT"}});
        // No token: a note; with the switch: open.
        let s = plan_value(v.clone(), false, false).unwrap();
        assert_eq!(
            (s.change.action.clone(), s.check_health),
            (Action::Note, false)
        );
        assert!(s.change.reason.ends_with("ADULT"));
        let s = plan_value(v.clone(), true, false).unwrap();
        assert!(matches!(
            s.change.action,
            Action::Open {
                scope: Scope::AllSends,
                until: None,
                ..
            }
        ));
        // Token: a note and a health check (the switch only matters if the check fails).
        for opens in [false, true] {
            let s = plan_value(v.clone(), opens, true).unwrap();
            assert_eq!((s.change.action, s.check_health), (Action::Note, true));
        }
    }

    #[test]
    fn lifecycle_notes_and_ignored_events() {
        for e in [
            "ACCOUNT_DELETED",
            "PARTNER_REMOVED",
            "ACCOUNT_OFFBOARDED",
            "PARTNER_APP_UNINSTALLED",
            "ACCOUNT_RECONNECTED",
        ] {
            let c = planned(json!({ "event": e }));
            assert_eq!(c.action, Action::Note, "{e}");
            assert!(c.reason.contains(e));
        }
        for e in ["VERIFIED_ACCOUNT", "MM_LITE_TERMS_SIGNED", "SOMETHING_NEW"] {
            assert!(
                plan_value(json!({ "event": e }), true, true).is_none(),
                "{e}"
            );
        }
        assert!(plan_value(json!({}), true, true).is_none());
    }

    #[test]
    fn other_fields_and_bad_ids_are_not_planned() {
        let body = json!({"entry": [
            {"id": WABA, "changes": [{"field": "messages", "value": {"event": "DISABLED_UPDATE"}}]},
            {"id": "not-a-waba", "time": T, "changes": [{"field": "account_update", "value": {"event": "ACCOUNT_DELETED"}}]}
        ]});
        let env = payload::parse(body.to_string().as_bytes()).unwrap();
        for e in &env.entries {
            assert!(plan(e, &e.changes[0], now(), true, true).is_none());
        }
    }

    #[test]
    fn event_time_falls_back_to_now() {
        let body = json!({"entry": [{"id": WABA, "changes": [{"field": "account_update", "value": {"event": "ACCOUNT_DELETED"}}]}]});
        let env = payload::parse(body.to_string().as_bytes()).unwrap();
        let e = &env.entries[0];
        assert_eq!(
            plan(e, &e.changes[0], now(), false, false)
                .unwrap()
                .change
                .at,
            now()
        );
    }
}
