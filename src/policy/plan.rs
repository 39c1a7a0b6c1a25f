//! What a webhook event means for a circuit: each `account_update` change of a delivery
//! mapped to one circuit change (open with a scope and an end, close, or a note), at the
//! event's own time. Pure: the webhook receiver applies the plan.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::circuit::{Action, Change, Evidence, Scope, Source, Warning, WarningKind};
use crate::graph::codes::{self, POLICY_BLOCK};
use crate::graph::webhook::{
    waba_info_id, AccountEvent, BanState, ChangeItem, Entry, RestrictionKind, PARTNER_EVENTS,
};
use crate::graph::GraphId;

/// Graph error code local replies carry for circuits opened by a webhook: like a policy
/// block from Meta, so apps that handle 368 need no change.
pub const WEBHOOK_CODE: i64 = POLICY_BLOCK;

/// One circuit change planned from a webhook change.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// The circuit change.
    pub change: Change,
    /// An `ACCOUNT_VIOLATION` recorded as a note: check Health Status now.
    pub check_health: bool,
    /// A close that applies only when the circuit is open because of this event
    /// (`ACCOUNT_RECONNECTED` closes what `ACCOUNT_OFFBOARDED` opened, not a policy
    /// block); otherwise the receiver records it as a note.
    pub only_if_opened_by: Option<&'static str>,
    /// An open that applies only to a WABA this gateway knows (see [`known_only`]):
    /// `ACCOUNT_DELETED` / `ACCOUNT_OFFBOARDED`, which any signed delivery can name for any
    /// id.
    pub only_known_waba: bool,
}

impl Step {
    /// A record on the WABA of `entry` (a note or a warning, per `action`) for webhook
    /// change `ch`, at its event time, the change's value kept as evidence under `event`.
    pub fn waba_record(
        entry: &Entry,
        ch: &ChangeItem,
        action: Action,
        reason: String,
        event: &str,
        now: DateTime<Utc>,
    ) -> Step {
        Step {
            change: Change {
                waba_id: entry.id.clone(),
                phone_number_id: None,
                template: None,
                country: None,
                recipient: None,
                action,
                source: Source::Webhook,
                at: entry.event_time(ch, now),
                reason,
                evidence: Some(Evidence::Webhook {
                    entry_id: entry.id.clone(),
                    field: ch.field.clone(),
                    event: event.to_string(),
                    value: ch.value.clone(),
                }),
            },
            check_health: false,
            only_if_opened_by: None,
            only_known_waba: false,
        }
    }
}

/// The rule for opens that name a WABA nothing else vouches for (pure): `change` stays an
/// open when `known` — the WABA is configured, learned in the directory (a phone number
/// maps to it), or already has a circuit record — and becomes a note otherwise. The
/// table drops a note for a WABA it does not know and counts it
/// (`wa_breaker_events_ignored_total{reason="unknown_waba"}`), so a flood of signed
/// deletions for made-up ids grows no state; sends of such a WABA could not be guarded
/// anyway (no phone number maps to it).
pub fn known_only(mut change: Change, known: bool) -> Change {
    if !known && matches!(change.action, Action::Open { .. }) {
        change.action = Action::Note;
        change.reason = format!(
            "{} (a WABA this gateway does not know: recorded only)",
            change.reason
        );
    }
    change
}

/// The event whose open `ACCOUNT_RECONNECTED` undoes.
pub const OFFBOARDED: &str = "ACCOUNT_OFFBOARDED";

/// The scope of a set of restriction kinds: the union of what each blocks
/// (`None`: nothing blocked). Business-initiated alone blocks templates, customer-initiated
/// alone blocks the other sends, both block every send.
pub fn restriction_scope(kinds: impl IntoIterator<Item = RestrictionKind>) -> Option<Scope> {
    let (mut biz, mut cust, mut utility) = (false, false, false);
    for k in kinds {
        biz |= k == RestrictionKind::BusinessInitiated;
        cust |= k == RestrictionKind::CustomerInitiated;
        utility |= matches!(
            k,
            RestrictionKind::UtilityTemplates | RestrictionKind::DirectSendUtilityTemplates
        );
    }
    match (biz, cust, utility) {
        (true, true, _) => Some(Scope::AllSends),
        (true, false, _) => Some(Scope::BusinessInitiated),
        // A circuit has one scope: replies blocked and utility templates too would need a
        // union the model has not; the replies are held, utility templates go to Meta
        // (which answers them) rather than holding marketing ones by mistake.
        (false, true, _) => Some(Scope::CustomerInitiated),
        (false, false, true) => Some(Scope::UtilityTemplates),
        (false, false, false) => None,
    }
}

/// `PARTNER_REMOVED`'s `disconnection_info{reason, initiated_by}` as a reason suffix
/// (the whole value is kept as evidence anyway); empty without it.
fn disconnection(value: &serde_json::Value) -> String {
    let Some(d) = value.get("disconnection_info").filter(|d| d.is_object()) else {
        return String::new();
    };
    let s = |k: &str| {
        d.get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("unspecified")
    };
    format!(": disconnected by {} ({})", s("initiated_by"), s("reason"))
}

/// Maps one `changes[]` element of `entry` to a circuit change (pure; unit-tested).
/// `None` for fields and events that are not about sending, and for entries whose id is not
/// a WABA id.
///
/// - `ACCOUNT_RESTRICTION`: the narrowest scope that covers every blocking type
///   ([`restriction_scope`]): `RESTRICTED_BIZ_INITIATED_MESSAGING` → template sends,
///   `RESTRICTED_CUSTOMER_INITIATED_MESSAGING` → non-template sends, both → all sends;
///   `until` = the latest `expiration` of those (none if one has none). Other types only
///   (adding phone numbers, calling, utility templates — the send does not say a
///   template's category —, unknown types) → a warning (`restriction`); `remediation` is
///   in the reason.
/// - `DISABLED_UPDATE`: `DISABLE` → open (no `until`); `REINSTATE` → close;
///   `SCHEDULE_FOR_DISABLE` → a warning (`disable_scheduled`); anything else → a note.
/// - `ACCOUNT_VIOLATION` → a warning (`account_violation`, its `violation_type`), and a
///   health check when a token is configured; opens at once instead when
///   `violation_opens` is set and there is no token.
/// - `ACCOUNT_DELETED`, `ACCOUNT_OFFBOARDED` → open, all sends (no send can succeed);
///   `ACCOUNT_RECONNECTED` → close, only what `ACCOUNT_OFFBOARDED` opened
///   ([`Step::only_if_opened_by`]).
/// - `PARTNER_*` → a note on the WABA of `value.waba_info.waba_id` (`entry[].id` is the
///   partner's business portfolio there); none without it. `PARTNER_REMOVED`'s
///   `disconnection_info` is in the reason (and the evidence).
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
    // PARTNER_* events are delivered on the partner's business portfolio; their WABA is in
    // the value. Keying them by entry.id would make a phantom circuit for the portfolio.
    let partner =
        matches!(&event, AccountEvent::Lifecycle(e) if PARTNER_EVENTS.contains(&e.as_str()));
    let waba_id = if partner {
        let Some(id) = waba_info_id(&ch.value).filter(|id| GraphId::is_valid(id)) else {
            tracing::info!(entry_id = %entry.id, event = ch.event_name(), "partner event without waba_info.waba_id: not recorded");
            return None;
        };
        id
    } else {
        entry.id.clone()
    };
    if !GraphId::is_valid(&waba_id) {
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
            waba_id: waba_id.clone(),
            phone_number_id: None,
            template: None,
            country: None,
            recipient: None,
            action,
            source: Source::Webhook,
            at,
            reason,
            evidence: evidence.clone(),
        },
        check_health,
        only_if_opened_by: None,
        only_known_waba: false,
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
                .map(|r| {
                    let t = match (r.expiration, r.bad_expiration) {
                        (Some(e), _) => format!("{} until {}", r.restriction_type, rfc3339(e)),
                        (None, true) => format!("{} (unreadable expiration)", r.restriction_type),
                        (None, false) => r.restriction_type.clone(),
                    };
                    match &r.remediation {
                        Some(m) => format!("{t} (remediation: {m})"),
                        None => t,
                    }
                })
                .collect();
            let blocking: Vec<_> = rs.iter().filter(|r| r.kind.blocks_sends()).collect();
            let unknown: Vec<&str> = rs
                .iter()
                .filter(|r| r.kind == RestrictionKind::Unknown)
                .map(|r| r.restriction_type.as_str())
                .collect();
            let mut listed = if types.is_empty() {
                "no restriction types".to_string()
            } else {
                types.join(", ")
            };
            if !unknown.is_empty() {
                listed.push_str(&format!(
                    " [unknown restriction type {}: recorded, not a block]",
                    unknown.join(", ")
                ));
            }
            if let Some(scope) = restriction_scope(blocking.iter().map(|r| r.kind)) {
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
            } else {
                // Blocks nothing the gateway guards (adding numbers, calling, utility
                // templates, a type it does not know): a person hears of it.
                let kinds: Vec<&str> = rs.iter().map(|r| r.restriction_type.as_str()).collect();
                step(
                    Action::Warn(Warning {
                        detail: (!kinds.is_empty()).then(|| kinds.join(", ")),
                        ..Warning::new(WarningKind::Restriction)
                    }),
                    format!("account_update ACCOUNT_RESTRICTION: {listed} (not a send block)"),
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
                    Action::Warn(Warning::new(WarningKind::DisableScheduled)),
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
                let warn = Warning {
                    detail: violation_type,
                    ..Warning::new(WarningKind::AccountViolation)
                };
                step(Action::Warn(warn), reason, has_token)
            }
        }
        AccountEvent::Lifecycle(e) => match e.as_str() {
            "ACCOUNT_DELETED" | OFFBOARDED => Step {
                only_known_waba: true,
                ..step(
                    open(Scope::AllSends, None),
                    format!("account_update {e}: no send can succeed"),
                    false,
                )
            },
            "ACCOUNT_RECONNECTED" => Step {
                only_if_opened_by: Some(OFFBOARDED),
                ..step(
                    Action::Close,
                    format!("account_update {e}: reconnected after {OFFBOARDED}"),
                    false,
                )
            },
            _ => step(
                Action::Note,
                format!(
                    "account_update {e}{} (account lifecycle; not a send block)",
                    disconnection(&ch.value)
                ),
                false,
            ),
        },
        AccountEvent::Other(_) => return None,
    })
}

/// The field of message deliveries and statuses.
pub const FIELD_MESSAGES: &str = "messages";

/// One error Meta reported only by webhook, in a `messages` change.
#[derive(Clone, Debug, PartialEq)]
pub struct AsyncError {
    /// The Graph error code.
    pub code: i64,
    /// `status` for `statuses[].errors[]` (the asynchronous answer to one send), `value`
    /// for `value.errors[]` (not tied to a message).
    pub site: &'static str,
    /// What is kept as evidence: the status's `id`, `status`, `timestamp` and the error (no
    /// recipient), or the `value.errors[]` element.
    pub evidence: serde_json::Value,
    /// `statuses[].timestamp`, when readable.
    pub time: Option<DateTime<Utc>>,
    /// The country calling code of the status's `recipient_id`, when it has one (the
    /// recipient itself is not kept): what a 130497 is about.
    pub country: Option<u16>,
    /// `statuses[].recipient_id` (a status's error only): who the failed message was for.
    /// Not evidence: only a marketing cooldown's key uses it.
    pub recipient: Option<String>,
}

/// Every error of a `messages` change: `statuses[].errors[]` and `value.errors[]`
/// (elements without an integer `code` are skipped). Empty for other fields.
pub fn message_errors(ch: &ChangeItem) -> Vec<AsyncError> {
    use serde_json::{json, Value};
    let mut out = Vec::new();
    if ch.field != FIELD_MESSAGES {
        return out;
    }
    let code_of = |e: &Value| e.get("code").and_then(Value::as_i64);
    for st in ch
        .value
        .get("statuses")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        for e in st
            .get("errors")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let Some(code) = code_of(e) else { continue };
            out.push(AsyncError {
                code,
                site: "status",
                evidence: json!({
                    "id": st.get("id"),
                    "status": st.get("status"),
                    "timestamp": st.get("timestamp"),
                    "error": e,
                }),
                time: st
                    .get("timestamp")
                    .and_then(crate::graph::webhook::unix_time),
                country: st
                    .get("recipient_id")
                    .and_then(Value::as_str)
                    .and_then(crate::circuit::country::of_number),
                recipient: st
                    .get("recipient_id")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            });
        }
    }
    for e in ch
        .value
        .get("errors")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let Some(code) = code_of(e) else { continue };
        out.push(AsyncError {
            code,
            site: "value",
            evidence: e.clone(),
            time: None,
            country: None,
            recipient: None,
        });
    }
    out
}

/// Whether an error reported by webhook opens the WABA's circuit: a code in `trip_codes`
/// in `statuses[].errors[]` (the asynchronous answer to a send — the same signal as a send
/// answered with it); in `value.errors[]` (not tied to a send) every trip code but 131031,
/// which Meta also uses for unverifiable request data and so trips only from sends.
pub fn async_error_opens(trip_codes: &[i64], e: &AsyncError) -> bool {
    trip_codes.contains(&e.code) && (e.site == "status" || e.code != codes::ACCOUNT_LOCKED)
}

/// The circuit change for the errors of a `messages` change of `entry` (pure): the first
/// error that opens ([`async_error_opens`]) opens the WABA's circuit for all sends with its
/// code and the webhook as evidence; account-level codes that do not open (131031 in
/// `value.errors[]`) are recorded as a note. `None` when nothing concerns the account, or
/// `entry.id` is not a WABA id.
pub fn plan_message_errors(
    entry: &Entry,
    ch: &ChangeItem,
    errors: &[AsyncError],
    trip_codes: &[i64],
    now: DateTime<Utc>,
) -> Option<Step> {
    if !GraphId::is_valid(&entry.id) {
        return None;
    }
    let (e, opens) = match errors.iter().find(|e| async_error_opens(trip_codes, e)) {
        Some(e) => (e, true),
        None => (errors.iter().find(|e| trip_codes.contains(&e.code))?, false),
    };
    let at = e.time.or(ch.time).or(entry.time).unwrap_or(now);
    let message = e
        .evidence
        .get("error")
        .unwrap_or(&e.evidence)
        .get("message")
        .or_else(|| e.evidence.get("error").unwrap_or(&e.evidence).get("title"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string();
    let site = if e.site == "status" {
        "statuses[].errors[]"
    } else {
        "value.errors[]"
    };
    let (action, reason) = if opens {
        (
            Action::Open {
                scope: Scope::AllSends,
                code: Some(e.code),
                until: None,
            },
            format!("messages webhook {site}: Graph error {} {message}", e.code),
        )
    } else {
        (
            Action::Note,
            format!(
                "messages webhook {site}: Graph error {} {message} (not tied to a send: recorded, not a block)",
                e.code
            ),
        )
    };
    Some(Step {
        change: Change {
            waba_id: entry.id.clone(),
            phone_number_id: None,
            template: None,
            country: None,
            recipient: None,
            action,
            source: Source::Webhook,
            at,
            reason: reason.trim_end().to_string(),
            evidence: Some(Evidence::Webhook {
                entry_id: entry.id.clone(),
                field: ch.field.clone(),
                event: site.to_string(),
                value: e.evidence.clone(),
            }),
        },
        check_health: false,
        only_if_opened_by: None,
        only_known_waba: false,
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
                scope: Scope::CustomerInitiated,
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
    fn other_restrictions_are_warnings() {
        let c = planned(restriction(&[
            ("RESTRICTED_ADD_PHONE_NUMBER_ACTION", json!(T + 10)),
            ("RESTRICTED_BIZ_INITIATED_CALLING", Value::Null),
        ]));
        assert_eq!(
            c.action,
            Action::Warn(Warning {
                detail: Some(
                    "RESTRICTED_ADD_PHONE_NUMBER_ACTION, RESTRICTED_BIZ_INITIATED_CALLING".into()
                ),
                ..Warning::new(WarningKind::Restriction)
            })
        );
        assert!(c.reason.contains("RESTRICTED_ADD_PHONE_NUMBER_ACTION"));
        assert!(c.reason.contains("not a send block"));
        let c = planned(json!({"event": "ACCOUNT_RESTRICTION", "restriction_info": []}));
        assert_eq!(
            c.action,
            Action::Warn(Warning::new(WarningKind::Restriction))
        );
    }

    #[test]
    fn remediation_and_disconnection_info_are_kept() {
        let c = planned(json!({"event": "ACCOUNT_RESTRICTION", "restriction_info": [
            {"restriction_type": "RESTRICTED_USER_INITIATED_CALLING",
             "remediation": "Turn off calling for this number"}]}));
        assert!(matches!(c.action, Action::Warn(_)));
        assert!(
            c.reason
                .contains("(remediation: Turn off calling for this number)"),
            "{}",
            c.reason
        );
        let body = json!({"entry": [{"id": "506914307656634", "time": T, "changes": [{"field": "account_update",
            "value": {"event": "PARTNER_REMOVED", "waba_info": {"waba_id": WABA, "owner_business_id": "1"},
                      "disconnection_info": {"reason": "Business removed the partner", "initiated_by": "USER"}}}]}]});
        let env = payload::parse(body.to_string().as_bytes()).unwrap();
        let en = &env.entries[0];
        let c = plan(en, &en.changes[0], now(), false, false)
            .unwrap()
            .change;
        assert_eq!(c.action, Action::Note);
        assert!(
            c.reason
                .contains("PARTNER_REMOVED: disconnected by USER (Business removed the partner)"),
            "{}",
            c.reason
        );
        let Some(Evidence::Webhook { value, .. }) = &c.evidence else {
            panic!()
        };
        assert_eq!(value["disconnection_info"]["initiated_by"], "USER");
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
        assert_eq!(
            c.action,
            Action::Warn(Warning::new(WarningKind::DisableScheduled))
        );
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
        let warn = Action::Warn(Warning {
            detail: Some("ADULT".into()),
            ..Warning::new(WarningKind::AccountViolation)
        });
        // No token: a warning; with the switch: open.
        let s = plan_value(v.clone(), false, false).unwrap();
        assert_eq!(
            (s.change.action.clone(), s.check_health),
            (warn.clone(), false)
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
        // Token: a warning and a health check (the switch only matters if the check fails).
        for opens in [false, true] {
            let s = plan_value(v.clone(), opens, true).unwrap();
            assert_eq!((s.change.action, s.check_health), (warn.clone(), true));
        }
    }

    #[test]
    fn lifecycle_events() {
        for e in ["ACCOUNT_DELETED", "ACCOUNT_OFFBOARDED"] {
            let s = plan_value(json!({ "event": e }), false, false).unwrap();
            assert_eq!(
                s.change.action,
                Action::Open {
                    scope: Scope::AllSends,
                    code: Some(368),
                    until: None
                },
                "{e}"
            );
            assert!(s.change.reason.contains(e));
            assert_eq!(s.only_if_opened_by, None);
            assert!(s.only_known_waba, "{e}");
            // Known: still an open. Unknown: a note (dropped and counted by the table).
            assert_eq!(known_only(s.change.clone(), true), s.change);
            let n = known_only(s.change.clone(), false);
            assert_eq!(n.action, Action::Note);
            assert!(n.reason.contains("does not know"), "{}", n.reason);
        }
        let s = plan_value(json!({"event": "ACCOUNT_RECONNECTED"}), false, false).unwrap();
        assert!(!s.only_known_waba);
        assert_eq!(known_only(s.change.clone(), false).action, Action::Close);
        assert_eq!(s.change.action, Action::Close);
        assert_eq!(s.only_if_opened_by, Some(OFFBOARDED));
        for e in ["VERIFIED_ACCOUNT", "MM_LITE_TERMS_SIGNED", "SOMETHING_NEW"] {
            assert!(
                plan_value(json!({ "event": e }), true, true).is_none(),
                "{e}"
            );
        }
        assert!(plan_value(json!({}), true, true).is_none());
    }

    #[test]
    fn partner_events_are_keyed_by_waba_info() {
        const PORTFOLIO: &str = "506914307656634";
        for e in PARTNER_EVENTS {
            let body = json!({"entry": [{"id": PORTFOLIO, "time": T, "changes": [{"field": "account_update",
                "value": {"event": e, "waba_info": {"waba_id": WABA, "owner_business_id": "1234"}}}]}]});
            let env = payload::parse(body.to_string().as_bytes()).unwrap();
            let en = &env.entries[0];
            let s = plan(en, &en.changes[0], now(), false, false).unwrap();
            assert_eq!(s.change.waba_id, WABA, "{e}");
            assert_eq!(s.change.action, Action::Note);
            let Some(Evidence::Webhook { entry_id, .. }) = &s.change.evidence else {
                panic!()
            };
            assert_eq!(entry_id, PORTFOLIO);
            // Without waba_info (or with garbage) nothing is recorded for the portfolio.
            for value in [
                json!({ "event": e }),
                json!({"event": e, "waba_info": {"waba_id": "x"}}),
            ] {
                let body = json!({"entry": [{"id": PORTFOLIO, "changes": [{"field": "account_update", "value": value}]}]});
                let env = payload::parse(body.to_string().as_bytes()).unwrap();
                let en = &env.entries[0];
                assert!(plan(en, &en.changes[0], now(), false, false).is_none());
            }
        }
    }

    /// Every restriction type alone and in pairs, against the scope it must set.
    #[test]
    fn restriction_scopes_alone_and_in_pairs() {
        use Scope::*;
        const BIZ: &str = "RESTRICTED_BIZ_INITIATED_MESSAGING";
        const CUST: &str = "RESTRICTED_CUSTOMER_INITIATED_MESSAGING";
        let table: &[(&str, Option<Scope>)] = &[
            // Meta's list today: the two messaging types and the utility templates (by
            // their category, once known) block sends the gateway guards; calling and
            // adding numbers never open a send circuit.
            ("RESTRICTED_ADD_PHONE_NUMBER_ACTION", None),
            ("RESTRICTED_BIZ_INITIATED_AND_USER_INITIATED_CALLING", None),
            (BIZ, Some(BusinessInitiated)),
            ("RESTRICTED_BUSINESS_INITIATED_CALLING", None),
            (CUST, Some(CustomerInitiated)),
            (
                "RESTRICTED_DIRECT_SEND_UTILITY_TEMPLATES",
                Some(UtilityTemplates),
            ),
            ("RESTRICTED_USER_INITIATED_CALLING", None),
            ("RESTRICTED_USER_INITIATED_CALLING_CALL_BUTTON_HIDDEN", None),
            ("RESTRICTED_UTILITY_TEMPLATES", Some(UtilityTemplates)),
            // Older names, and one Meta may add.
            ("RESTRICTED_BIZ_INITIATED_CALLING", None),
            ("RESTRICTED_CUSTOMER_INITIATED_CALLING", None),
            ("RESTRICTED_SOMETHING_NEW", None),
        ];
        // One scope per circuit: template sends cover utility templates; replies with
        // utility templates keep the replies' scope (see `restriction_scope`).
        let union = |a: Option<Scope>, b: Option<Scope>| match (a, b) {
            (None, x) | (x, None) => x,
            (Some(x), Some(y)) if x == y => Some(x),
            (Some(UtilityTemplates), Some(x)) | (Some(x), Some(UtilityTemplates)) => Some(x),
            _ => Some(AllSends),
        };
        let want_of = |s: Option<Scope>| match s {
            Some(scope) => Action::Open {
                scope,
                code: Some(368),
                until: Some(at(T + 3600)),
            },
            None => Action::Note,
        };
        // A restriction that blocks nothing is a warning naming its types.
        let of = |a: Action| match a {
            Action::Warn(_) => Action::Note,
            a => a,
        };
        for (t, scope) in table {
            let c = planned(restriction(&[(t, json!(T + 3600))]));
            assert_eq!(of(c.action), want_of(*scope), "{t} alone");
            if *t == "RESTRICTED_SOMETHING_NEW" {
                assert!(
                    c.reason.contains("unknown restriction type"),
                    "{}",
                    c.reason
                );
            }
            for (u, other) in table {
                let c = planned(restriction(&[(t, json!(T + 3600)), (u, json!(T + 3600))]));
                assert_eq!(of(c.action), want_of(union(*scope, *other)), "{t} + {u}");
            }
        }
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
    fn errors_that_arrive_only_by_webhook() {
        let body = json!({"entry": [{"id": WABA, "time": T, "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"phone_number_id": "106540352242922"},
            "statuses": [
                {"id": "wamid.A", "status": "delivered", "timestamp": T},
                {"id": "wamid.B", "status": "failed", "timestamp": (T + 5).to_string(), "recipient_id": "15551234567",
                 "errors": [{"code": 131026, "title": "Message undeliverable"}, {"code": 368, "title": "Temporarily blocked for policies violations",
                             "error_data": {"details": "restricted"}}, {"title": "no code"}]}
            ],
            "errors": [{"code": 131031, "title": "Account has been locked"}]
        }}]}]});
        let env = payload::parse(body.to_string().as_bytes()).unwrap();
        let (en, ch) = (&env.entries[0], &env.entries[0].changes[0]);
        let errs = message_errors(ch);
        let codes: Vec<(i64, &str)> = errs.iter().map(|e| (e.code, e.site)).collect();
        assert_eq!(
            codes,
            [(131026, "status"), (368, "status"), (131031, "value")]
        );
        // The recipient is not kept.
        assert!(errs[1].evidence.get("recipient_id").is_none());
        let s = plan_message_errors(en, ch, &errs, &[368, 131031], now()).unwrap();
        assert_eq!(
            s.change.action,
            Action::Open {
                scope: Scope::AllSends,
                code: Some(368),
                until: None
            }
        );
        assert_eq!(s.change.at, at(T + 5));
        assert_eq!(s.change.source, Source::Webhook);
        let Some(Evidence::Webhook { event, value, .. }) = &s.change.evidence else {
            panic!()
        };
        assert_eq!(event, "statuses[].errors[]");
        assert_eq!(value["id"], "wamid.B");
        // 131031 in a status opens (a send's answer); in value.errors[] only a note.
        let status = |code: i64, site: &'static str| AsyncError {
            code,
            site,
            evidence: json!({"error": {"code": code}}),
            time: None,
            country: None,
            recipient: None,
        };
        let trips = [368, 131031];
        assert!(async_error_opens(&trips, &status(131031, "status")));
        assert!(!async_error_opens(&trips, &status(131031, "value")));
        assert!(async_error_opens(&trips, &status(368, "value")));
        assert!(!async_error_opens(&trips, &status(131026, "status")));
        let s = plan_message_errors(en, ch, &[status(131031, "value")], &trips, now()).unwrap();
        assert_eq!(s.change.action, Action::Note);
        assert!(plan_message_errors(en, ch, &[status(131026, "status")], &trips, now()).is_none());
        assert!(plan_message_errors(en, ch, &[], &trips, now()).is_none());
        // Other fields have no such errors.
        let other = ChangeItem {
            field: "account_update".into(),
            ..ch.clone()
        };
        assert!(message_errors(&other).is_empty());
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
