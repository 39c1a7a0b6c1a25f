//! Meta's webhook payloads: the envelope every WhatsApp webhook shares, and the
//! `account_update` events that concern sending. Pure: no I/O, no circuit logic.
//!
//! Parsing is tolerant by design: Meta adds fields and events over time, and shapes seen in
//! the wild differ from the reference (`expiration` as Unix seconds or an ISO-8601 string,
//! `waba_ban_state` as a string or a one-element array). Only a body that is not a JSON
//! object with an `entry` array is an error; anything inside that cannot be read is skipped
//! or kept as [`AccountEvent::Other`].
//!
//! ```
//! use wa_breaker::graph::webhook::{parse, AccountEvent};
//! let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398",
//!   "time":1731617831,"changes":[{"field":"account_update",
//!   "value":{"event":"DISABLED_UPDATE","ban_info":{"waba_ban_state":"REINSTATE"}}}]}]}"#;
//! let env = parse(body).unwrap();
//! let ch = &env.entries[0].changes[0];
//! assert_eq!(env.entries[0].id, "102290129340398");
//! assert!(matches!(ch.account_event(), Some(AccountEvent::Disabled { .. })));
//! ```

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_json::Value;

/// `object` of WhatsApp Business Account webhooks.
pub const OBJECT_WABA: &str = "whatsapp_business_account";

/// The field of the events this module interprets.
pub const FIELD_ACCOUNT_UPDATE: &str = "account_update";

/// Why a body is not a webhook envelope.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all.
    #[error("body is not JSON: {0}")]
    Json(String),
    /// JSON, but not `{"object": …, "entry": [ … ]}`.
    #[error("not a webhook envelope: {0}")]
    Shape(&'static str),
}

/// One webhook delivery.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    /// `object` (`whatsapp_business_account` for everything wa-breaker acts on).
    pub object: String,
    /// `entry[]`, in order; unreadable entries are left out (see [`Envelope::skipped`]).
    pub entries: Vec<Entry>,
    /// How many `entry[]` / `changes[]` elements were skipped as unreadable.
    pub skipped: usize,
}

/// One `entry[]`: the changes of one WhatsApp Business Account.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// `entry[].id`: the WABA id (a string in Meta's payloads; a number is accepted).
    pub id: String,
    /// `entry[].time`, when present and readable.
    pub time: Option<DateTime<Utc>>,
    /// `entry[].changes[]`, in order.
    pub changes: Vec<ChangeItem>,
}

/// One `changes[]` element.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeItem {
    /// `field` (`account_update`, `messages`, …).
    pub field: String,
    /// `value`, as sent.
    pub value: Value,
    /// The change's own timestamp (`changes[].timestamp`/`time`, or `value.timestamp`), if any.
    pub time: Option<DateTime<Utc>>,
}

impl Envelope {
    /// Replays change nothing (issue 25): drops every change dated before `oldest` (now
    /// minus `max_event_age`; Meta redelivers for up to 7 days, so an older delivery is a
    /// replay) and dates a change with no time of its own or of its entry at `oldest`, so
    /// it orders before every record an accepted event could have made (a time-less
    /// replay never undoes a later close). Returns how many changes were dropped.
    pub fn bound_age(&mut self, oldest: DateTime<Utc>) -> usize {
        let mut stale = 0;
        for entry in &mut self.entries {
            let entry_time = entry.time;
            entry.changes.retain_mut(|ch| match ch.time.or(entry_time) {
                Some(t) if t < oldest => {
                    stale += 1;
                    false
                }
                Some(_) => true,
                None => {
                    ch.time = Some(oldest);
                    true
                }
            });
        }
        stale
    }
}

impl Entry {
    /// The event time of `change`: its own timestamp, else `entry.time`, else `now`.
    pub fn event_time(&self, change: &ChangeItem, now: DateTime<Utc>) -> DateTime<Utc> {
        change.time.or(self.time).unwrap_or(now)
    }
}

impl ChangeItem {
    /// The `account_update` event of this change; `None` for other fields.
    pub fn account_event(&self) -> Option<AccountEvent> {
        (self.field == FIELD_ACCOUNT_UPDATE).then(|| AccountEvent::from_value(&self.value))
    }

    /// `value.event`, when it is a string.
    pub fn event_name(&self) -> Option<&str> {
        self.value.get("event").and_then(Value::as_str)
    }
}

/// Field of message and status notifications (carries `value.metadata.phone_number_id`).
pub const FIELD_MESSAGES: &str = "messages";
/// Field of account alerts (may name a `PHONE_NUMBER` entity).
pub const FIELD_ACCOUNT_ALERTS: &str = "account_alerts";

/// Field of a phone number's throughput changes (`event: THROUGHPUT_UPGRADE`).
pub const FIELD_PHONE_QUALITY: &str = "phone_number_quality_update";
/// The `phone_number_quality_update` event of a throughput upgrade.
pub const EVENT_THROUGHPUT_UPGRADE: &str = "THROUGHPUT_UPGRADE";

/// A `messages` change's `value.metadata`: its `display_phone_number` and numeric
/// `phone_number_id` (how a display number, all a `THROUGHPUT_UPGRADE` names, maps to an id).
pub fn display_of(change: &ChangeItem) -> Option<(&str, &str)> {
    if change.field != FIELD_MESSAGES {
        return None;
    }
    let m = change.value.get("metadata")?;
    let display = m.get("display_phone_number")?.as_str()?;
    let id = m.get("phone_number_id")?.as_str()?;
    super::GraphId::is_valid(id).then_some((display, id))
}

/// The `display_phone_number` of a `phone_number_quality_update` `THROUGHPUT_UPGRADE`
/// change (the event names no phone-number id).
pub fn throughput_upgrade(change: &ChangeItem) -> Option<&str> {
    if change.field != FIELD_PHONE_QUALITY || change.event_name() != Some(EVENT_THROUGHPUT_UPGRADE)
    {
        return None;
    }
    change.value.get("display_phone_number")?.as_str()
}

/// The phone-number id that `change` of a WABA's `entry` says belongs to that WABA: the
/// `messages` field's `value.metadata.phone_number_id`, or an `account_alerts` change about a
/// `PHONE_NUMBER` entity (`value.entity_id`). Only numeric ids are returned.
pub fn phone_of(change: &ChangeItem) -> Option<&str> {
    let v = &change.value;
    let id = match change.field.as_str() {
        FIELD_MESSAGES => v.get("metadata")?.get("phone_number_id")?.as_str()?,
        FIELD_ACCOUNT_ALERTS
            if v.get("entity_type").and_then(Value::as_str) == Some("PHONE_NUMBER") =>
        {
            v.get("entity_id")?.as_str()?
        }
        _ => return None,
    };
    super::GraphId::is_valid(id).then_some(id)
}

/// Parses a webhook body. Errors only when it is not a JSON object with an `entry` array.
pub fn parse(body: &[u8]) -> Result<Envelope, ParseError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or(ParseError::Shape("not a JSON object"))?;
    let entries = obj
        .get("entry")
        .ok_or(ParseError::Shape("no `entry`"))?
        .as_array()
        .ok_or(ParseError::Shape("`entry` is not an array"))?;
    let object = obj
        .get("object")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut env = Envelope {
        object,
        entries: Vec::with_capacity(entries.len()),
        skipped: 0,
    };
    for e in entries {
        let Some(id) = e.get("id").and_then(id_string) else {
            env.skipped += 1;
            continue;
        };
        let time = e.get("time").and_then(unix_time);
        let mut changes = Vec::new();
        for c in e
            .get("changes")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let Some(field) = c.get("field").and_then(Value::as_str) else {
                env.skipped += 1;
                continue;
            };
            let value = c.get("value").cloned().unwrap_or(Value::Null);
            let time = c
                .get("timestamp")
                .or_else(|| c.get("time"))
                .or_else(|| value.get("timestamp"))
                .and_then(unix_time);
            changes.push(ChangeItem {
                field: field.to_string(),
                value,
                time,
            });
        }
        env.entries.push(Entry { id, time, changes });
    }
    Ok(env)
}

fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => n.as_u64().map(|n| n.to_string()),
        _ => None,
    }
}

/// A Unix timestamp in seconds (a number or a digit string). Values that can only be
/// milliseconds (13+ digits) are read as such. `None` for zero, negatives and garbage.
pub fn unix_time(v: &Value) -> Option<DateTime<Utc>> {
    let n = match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64))?,
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<i64>().ok()?
        }
        _ => return None,
    };
    from_unix(n)
}

fn from_unix(n: i64) -> Option<DateTime<Utc>> {
    if n <= 0 {
        return None;
    }
    let secs = if n >= 100_000_000_000 { n / 1000 } else { n };
    Utc.timestamp_opt(secs, 0).single()
}

/// A restriction's `expiration`: Unix seconds (number or digit string), RFC 3339
/// (`2026-04-19T13:59:20Z`, `…+00:00`), or ISO 8601 with a colon-less offset as relays
/// send it (`2026-04-19T13:59:20+0000`). `None` when absent or unreadable.
pub fn parse_expiration(v: &Value) -> Option<DateTime<Utc>> {
    if let Some(t) = unix_time(v) {
        return Some(t);
    }
    let s = v.as_str()?.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S%.f%z"] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    // No offset at all: Meta's times are UTC.
    for fmt in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    None
}

/// What an `account_update` change announces.
#[derive(Clone, Debug, PartialEq)]
pub enum AccountEvent {
    /// `ACCOUNT_RESTRICTION` with its `restriction_info[]`.
    Restriction(Vec<Restriction>),
    /// `DISABLED_UPDATE` with `ban_info`.
    Disabled {
        /// `ban_info.waba_ban_state`.
        state: BanState,
        /// `waba_ban_date`: a display string, not a timestamp.
        date: Option<String>,
    },
    /// `ACCOUNT_VIOLATION` with `violation_info.violation_type`.
    Violation {
        /// `violation_info.violation_type` (e.g. `ADULT`).
        violation_type: Option<String>,
    },
    /// `ACCOUNT_DELETED`, `PARTNER_REMOVED`, … : the account's relation to the app changed.
    Lifecycle(String),
    /// Any other event (or none): not about sending.
    Other(Option<String>),
}

/// Lifecycle events: logged and shown on the circuit, never a block.
pub const LIFECYCLE_EVENTS: &[&str] = &[
    "ACCOUNT_DELETED",
    "PARTNER_REMOVED",
    "PARTNER_ADDED",
    "PARTNER_APP_INSTALLED",
    "PARTNER_APP_UNINSTALLED",
    "ACCOUNT_OFFBOARDED",
    "ACCOUNT_RECONNECTED",
];

/// The `PARTNER_*` events: `entry[].id` is then the partner's business portfolio, and the
/// WABA is `value.waba_info.waba_id`.
pub const PARTNER_EVENTS: &[&str] = &[
    "PARTNER_ADDED",
    "PARTNER_REMOVED",
    "PARTNER_APP_INSTALLED",
    "PARTNER_APP_UNINSTALLED",
];

/// `value.waba_info.waba_id`, when it is an id (string or number).
pub fn waba_info_id(value: &Value) -> Option<String> {
    value
        .get("waba_info")
        .and_then(|w| w.get("waba_id"))
        .and_then(id_string)
}

impl AccountEvent {
    /// Interprets an `account_update` value.
    pub fn from_value(value: &Value) -> AccountEvent {
        let event = value.get("event").and_then(Value::as_str);
        match event {
            Some("ACCOUNT_RESTRICTION") => AccountEvent::Restriction(
                value
                    .get("restriction_info")
                    .map(one_or_many)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(Restriction::from_value)
                    .collect(),
            ),
            Some("DISABLED_UPDATE") => {
                let ban = value.get("ban_info");
                let state = ban
                    .and_then(|b| b.get("waba_ban_state"))
                    .map(BanState::from_value)
                    .unwrap_or(BanState::Unknown(String::new()));
                let date = ban
                    .and_then(|b| b.get("waba_ban_date"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                AccountEvent::Disabled { state, date }
            }
            Some("ACCOUNT_VIOLATION") => AccountEvent::Violation {
                violation_type: value
                    .get("violation_info")
                    .and_then(|v| v.get("violation_type"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            },
            Some(e) if LIFECYCLE_EVENTS.contains(&e) => AccountEvent::Lifecycle(e.to_string()),
            other => AccountEvent::Other(other.map(str::to_owned)),
        }
    }
}

/// A value that is either one object/string or an array of them.
fn one_or_many(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

/// The restriction types wa-breaker tells apart, each mapped to what it blocks (see
/// [`RestrictionKind::of`], [`RESTRICTION_TYPES`] and the README's webhook table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestrictionKind {
    /// `RESTRICTED_BIZ_INITIATED_MESSAGING`: cannot start conversations (template sends).
    BusinessInitiated,
    /// `RESTRICTED_CUSTOMER_INITIATED_MESSAGING`: cannot answer customers (free-form
    /// sends inside the service window); templates still go.
    CustomerInitiated,
    /// `RESTRICTED_DIRECT_SEND_UTILITY_TEMPLATES`: utility templates by direct send. The
    /// send body names the template, not its category, so the gateway cannot tell a
    /// utility template from another: recorded, never a block (Meta answers those sends).
    DirectSendUtilityTemplates,
    /// `RESTRICTED_UTILITY_TEMPLATES`: utility templates. As for direct-send utility
    /// templates, the send does not say a template's category: recorded, never a block.
    UtilityTemplates,
    /// Calling (`RESTRICTED_*_CALLING*`): the gateway guards no call; never a block.
    Calling,
    /// Adding phone numbers (`RESTRICTED_ADD_PHONE_NUMBER_ACTION`) and older non-sending
    /// types (template creation): never a block.
    NotSending,
    /// A type the gateway does not know: recorded, never a block.
    Unknown,
}

/// Every restriction type Meta lists today (the `account_update` reference) with its kind,
/// plus older names still accepted. A table test and the README's webhook table follow it.
pub const RESTRICTION_TYPES: &[(&str, RestrictionKind)] = &[
    (
        "RESTRICTED_ADD_PHONE_NUMBER_ACTION",
        RestrictionKind::NotSending,
    ),
    (
        "RESTRICTED_BIZ_INITIATED_AND_USER_INITIATED_CALLING",
        RestrictionKind::Calling,
    ),
    (
        "RESTRICTED_BIZ_INITIATED_MESSAGING",
        RestrictionKind::BusinessInitiated,
    ),
    (
        "RESTRICTED_BUSINESS_INITIATED_CALLING",
        RestrictionKind::Calling,
    ),
    (
        "RESTRICTED_CUSTOMER_INITIATED_MESSAGING",
        RestrictionKind::CustomerInitiated,
    ),
    (
        "RESTRICTED_DIRECT_SEND_UTILITY_TEMPLATES",
        RestrictionKind::DirectSendUtilityTemplates,
    ),
    (
        "RESTRICTED_USER_INITIATED_CALLING",
        RestrictionKind::Calling,
    ),
    (
        "RESTRICTED_USER_INITIATED_CALLING_CALL_BUTTON_HIDDEN",
        RestrictionKind::Calling,
    ),
    (
        "RESTRICTED_UTILITY_TEMPLATES",
        RestrictionKind::UtilityTemplates,
    ),
    // Older names, no longer in Meta's list.
    ("RESTRICTED_BIZ_INITIATED_CALLING", RestrictionKind::Calling),
    (
        "RESTRICTED_CUSTOMER_INITIATED_CALLING",
        RestrictionKind::Calling,
    ),
    ("RESTRICTED_TEMPLATE_CREATION", RestrictionKind::NotSending),
];

impl RestrictionKind {
    /// The kind of a `restriction_type` (case as Meta sends it; unknown → `Unknown`).
    pub fn of(restriction_type: &str) -> RestrictionKind {
        RESTRICTION_TYPES
            .iter()
            .find(|(t, _)| *t == restriction_type)
            .map_or(RestrictionKind::Unknown, |(_, k)| *k)
    }

    /// True for the kinds that block sends (utility templates: once their category is
    /// known, see `Scope::UtilityTemplates`).
    pub fn blocks_sends(self) -> bool {
        matches!(
            self,
            RestrictionKind::BusinessInitiated
                | RestrictionKind::CustomerInitiated
                | RestrictionKind::UtilityTemplates
                | RestrictionKind::DirectSendUtilityTemplates
        )
    }
}

/// One `restriction_info[]` element.
#[derive(Clone, Debug, PartialEq)]
pub struct Restriction {
    /// What it restricts.
    pub kind: RestrictionKind,
    /// `restriction_type` as sent.
    pub restriction_type: String,
    /// `expiration`, when present and readable.
    pub expiration: Option<DateTime<Utc>>,
    /// True when `expiration` was present but could not be read.
    pub bad_expiration: bool,
    /// `remediation`, as text (a string, or the JSON of whatever else was sent), when
    /// present: kept as evidence and shown in the note's reason.
    pub remediation: Option<String>,
}

impl Restriction {
    fn from_value(v: &Value) -> Option<Restriction> {
        let restriction_type = match v {
            Value::String(s) => s.clone(),
            _ => v.get("restriction_type")?.as_str()?.to_string(),
        };
        let kind = RestrictionKind::of(&restriction_type);
        let raw = v.get("expiration").filter(|e| !e.is_null());
        let expiration = raw.and_then(parse_expiration);
        let remediation = match v.get("remediation") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) => Some(s.trim().to_string()),
            Some(other) => Some(other.to_string()),
        };
        Some(Restriction {
            kind,
            restriction_type,
            expiration,
            bad_expiration: raw.is_some() && expiration.is_none(),
            remediation,
        })
    }
}

/// `ban_info.waba_ban_state`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BanState {
    /// Disablement announced; sends still work.
    ScheduleForDisable,
    /// Disabled: no sends.
    Disable,
    /// Reinstated: sends work again.
    Reinstate,
    /// Anything else, including an array of several states (Meta's reference example
    /// lists all possible values that way, which says nothing about this account).
    Unknown(String),
}

impl BanState {
    /// Reads a string or a one-element array of strings.
    pub fn from_value(v: &Value) -> BanState {
        let s = match v {
            Value::String(s) => s.as_str(),
            Value::Array(a) if a.len() == 1 => a[0].as_str().unwrap_or_default(),
            other => return BanState::Unknown(other.to_string()),
        };
        match s.trim().to_ascii_uppercase().as_str() {
            "SCHEDULE_FOR_DISABLE" => BanState::ScheduleForDisable,
            "DISABLE" | "DISABLED" => BanState::Disable,
            "REINSTATE" | "REINSTATED" => BanState::Reinstate,
            _ => BanState::Unknown(s.to_string()),
        }
    }

    /// The state's name as Meta spells it.
    pub fn as_str(&self) -> &str {
        match self {
            BanState::ScheduleForDisable => "SCHEDULE_FOR_DISABLE",
            BanState::Disable => "DISABLE",
            BanState::Reinstate => "REINSTATE",
            BanState::Unknown(s) => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ts(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn one(value: Value) -> AccountEvent {
        AccountEvent::from_value(&value)
    }

    #[test]
    fn envelope_with_batched_entries_and_changes() {
        let body = json!({
            "object": "whatsapp_business_account",
            "entry": [
                {"id": "111", "time": 1731617831, "changes": [
                    {"field": "account_update", "value": {"event": "ACCOUNT_VIOLATION"}},
                    {"field": "messages", "value": {"messaging_product": "whatsapp", "statuses": []}}
                ]},
                {"id": 222, "time": "1731617900", "changes": [
                    {"field": "account_update", "value": {"event": "X"}, "timestamp": 1731617999}
                ]}
            ]
        });
        let env = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(env.object, OBJECT_WABA);
        assert_eq!(env.entries.len(), 2);
        assert_eq!(env.skipped, 0);
        let (a, b) = (&env.entries[0], &env.entries[1]);
        assert_eq!(a.id, "111");
        assert_eq!(a.time, Utc.timestamp_opt(1731617831, 0).single());
        assert_eq!(a.changes.len(), 2);
        assert_eq!(a.changes[1].field, "messages");
        assert!(a.changes[1].account_event().is_none());
        assert_eq!(b.id, "222");
        let now = Utc::now();
        // The change's own timestamp wins over entry.time; entry.time over now.
        assert_eq!(b.event_time(&b.changes[0], now).timestamp(), 1731617999);
        assert_eq!(a.event_time(&a.changes[0], now).timestamp(), 1731617831);
        let bare = Entry {
            id: "1".into(),
            time: None,
            changes: vec![],
        };
        let ch = ChangeItem {
            field: "x".into(),
            value: Value::Null,
            time: None,
        };
        assert_eq!(bare.event_time(&ch, now), now);
    }

    #[test]
    fn value_timestamp_counts_as_the_change_time() {
        let body = br#"{"entry":[{"id":"1","time":100000000,"changes":[{"field":"account_update","value":{"event":"E","timestamp":"1731617999"}}]}]}"#;
        let env = parse(body).unwrap();
        assert_eq!(env.object, "");
        assert_eq!(
            env.entries[0].changes[0].time.unwrap().timestamp(),
            1731617999
        );
    }

    #[test]
    fn unreadable_parts_are_skipped_not_fatal() {
        let body = br#"{"object":"whatsapp_business_account","unknown":1,"entry":[
            {"time":1},
            {"id":"","changes":[]},
            {"id":"5","time":"soon","changes":[{"value":{}},{"field":"account_update"},7]},
            {"id":"6"}
        ]}"#;
        let env = parse(body).unwrap();
        assert_eq!(env.entries.len(), 2);
        assert_eq!(env.skipped, 4);
        let e = &env.entries[0];
        assert_eq!(e.id, "5");
        assert_eq!(e.time, None);
        assert_eq!(e.changes.len(), 1);
        assert_eq!(e.changes[0].value, Value::Null);
        assert_eq!(
            e.changes[0].account_event(),
            Some(AccountEvent::Other(None))
        );
        assert!(env.entries[1].changes.is_empty());
    }

    #[test]
    fn non_envelopes_are_errors() {
        assert!(matches!(parse(b"not json"), Err(ParseError::Json(_))));
        assert!(matches!(parse(b""), Err(ParseError::Json(_))));
        assert_eq!(parse(b"[1]"), Err(ParseError::Shape("not a JSON object")));
        assert_eq!(parse(b"{}"), Err(ParseError::Shape("no `entry`")));
        assert_eq!(
            parse(br#"{"entry":{}}"#),
            Err(ParseError::Shape("`entry` is not an array"))
        );
        assert!(parse(br#"{"entry":[]}"#).unwrap().entries.is_empty());
    }

    #[test]
    fn unix_times() {
        assert_eq!(
            unix_time(&json!(1764003000)).unwrap().timestamp(),
            1764003000
        );
        assert_eq!(
            unix_time(&json!("1764003000")).unwrap().timestamp(),
            1764003000
        );
        assert_eq!(
            unix_time(&json!(1764003000123_i64)).unwrap().timestamp(),
            1764003000
        );
        assert_eq!(
            unix_time(&json!(1764003000.7)).unwrap().timestamp(),
            1764003000
        );
        assert_eq!(unix_time(&json!(0)), None);
        assert_eq!(unix_time(&json!(-5)), None);
        assert_eq!(unix_time(&json!("")), None);
        assert_eq!(unix_time(&json!("12a")), None);
        assert_eq!(unix_time(&json!(null)), None);
        assert_eq!(unix_time(&json!(true)), None);
    }

    #[test]
    fn expirations_in_every_shape() {
        let want = ts("2026-04-19T13:59:20Z");
        for v in [
            json!(want.timestamp()),
            json!(want.timestamp().to_string()),
            json!("2026-04-19T13:59:20+0000"),
            json!("2026-04-19T13:59:20Z"),
            json!("2026-04-19T13:59:20+00:00"),
            json!("2026-04-19T15:59:20+0200"),
            json!("2026-04-19T15:59:20+02:00"),
            json!("2026-04-19T13:59:20.000+0000"),
            json!("2026-04-19T13:59:20"),
            json!(" 2026-04-19 13:59:20 "),
        ] {
            assert_eq!(parse_expiration(&v), Some(want), "{v}");
        }
        for v in [json!("April 19, 2026"), json!(null), json!({}), json!("")] {
            assert_eq!(parse_expiration(&v), None, "{v}");
        }
    }

    #[test]
    fn restriction_types_and_expirations() {
        let ev = one(json!({"event": "ACCOUNT_RESTRICTION", "restriction_info": [
            {"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expiration": 1764003000},
            {"restriction_type": "RESTRICTED_CUSTOMER_INITIATED_MESSAGING", "expiration": "2026-04-19T13:59:20+0000"},
            {"restriction_type": "RESTRICTED_ADD_PHONE_NUMBER_ACTION"},
            {"restriction_type": "RESTRICTED_BIZ_INITIATED_CALLING", "expiration": "whenever"},
            {"no_type": true},
            "RESTRICTED_UTILITY_TEMPLATE_SENDING"
        ]}));
        let AccountEvent::Restriction(r) = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(r.len(), 5);
        assert_eq!(r[0].kind, RestrictionKind::BusinessInitiated);
        assert_eq!(r[0].expiration.unwrap().timestamp(), 1764003000);
        assert_eq!(r[1].kind, RestrictionKind::CustomerInitiated);
        assert_eq!(r[1].expiration, Some(ts("2026-04-19T13:59:20Z")));
        assert_eq!(r[2].kind, RestrictionKind::NotSending);
        assert_eq!(r[2].expiration, None);
        assert!(!r[2].bad_expiration);
        assert_eq!(r[3].kind, RestrictionKind::Calling);
        assert!(r[3].bad_expiration);
        assert_eq!(r[4].restriction_type, "RESTRICTED_UTILITY_TEMPLATE_SENDING");
        assert_eq!(r[4].kind, RestrictionKind::Unknown);
        assert_eq!(
            RestrictionKind::of("RESTRICTED_DIRECT_SEND_UTILITY_TEMPLATES"),
            RestrictionKind::DirectSendUtilityTemplates
        );
    }

    #[test]
    fn every_restriction_type_meta_lists_today() {
        use RestrictionKind::*;
        // Meta's current list (the account_update reference), each with what it blocks.
        let today = [
            ("RESTRICTED_ADD_PHONE_NUMBER_ACTION", NotSending, false),
            (
                "RESTRICTED_BIZ_INITIATED_AND_USER_INITIATED_CALLING",
                Calling,
                false,
            ),
            (
                "RESTRICTED_BIZ_INITIATED_MESSAGING",
                BusinessInitiated,
                true,
            ),
            ("RESTRICTED_BUSINESS_INITIATED_CALLING", Calling, false),
            (
                "RESTRICTED_CUSTOMER_INITIATED_MESSAGING",
                CustomerInitiated,
                true,
            ),
            (
                "RESTRICTED_DIRECT_SEND_UTILITY_TEMPLATES",
                DirectSendUtilityTemplates,
                true,
            ),
            ("RESTRICTED_USER_INITIATED_CALLING", Calling, false),
            (
                "RESTRICTED_USER_INITIATED_CALLING_CALL_BUTTON_HIDDEN",
                Calling,
                false,
            ),
            ("RESTRICTED_UTILITY_TEMPLATES", UtilityTemplates, true),
        ];
        for (t, kind, blocks) in today {
            let ev = one(json!({"event": "ACCOUNT_RESTRICTION", "restriction_info": [
                {"restriction_type": t, "expiration": 1764003000,
                 "remediation": "Review the WhatsApp Business Messaging Policy"}]}));
            let AccountEvent::Restriction(r) = ev else {
                panic!("{t}: {ev:?}")
            };
            assert_eq!(r[0].kind, kind, "{t}");
            assert_eq!(r[0].kind.blocks_sends(), blocks, "{t}");
            assert_eq!(r[0].expiration.unwrap().timestamp(), 1764003000, "{t}");
            assert_eq!(
                r[0].remediation.as_deref(),
                Some("Review the WhatsApp Business Messaging Policy")
            );
        }
        assert_eq!(
            RESTRICTION_TYPES.len(),
            today.len() + 3,
            "the table lists Meta's types and three older names"
        );
        // Unknown or oddly spelled types parse, block nothing; a remediation of another
        // shape is kept as its JSON.
        let ev = one(json!({"event": "ACCOUNT_RESTRICTION", "restriction_info": [
            {"restriction_type": "RESTRICTED_SOMETHING_NEW", "remediation": {"url": "x"}},
            {"restriction_type": "restricted_biz_initiated_messaging", "remediation": " "}]}));
        let AccountEvent::Restriction(r) = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(r[0].kind, Unknown);
        assert_eq!(r[0].remediation.as_deref(), Some(r#"{"url":"x"}"#));
        assert_eq!(r[1].kind, Unknown);
        assert_eq!(r[1].remediation, None);
        assert!(!Unknown.blocks_sends());
    }

    #[test]
    fn account_alerts_entities() {
        let ch = |entity_type: &str| ChangeItem {
            field: FIELD_ACCOUNT_ALERTS.into(),
            value: json!({"entity_type": entity_type, "entity_id": "106540352242922",
                "alert_info": {"alert_severity": "INFORMATIONAL", "alert_type": "OBA_APPROVED"}}),
            time: None,
        };
        // Only a PHONE_NUMBER entity names a phone number; CURRENT_STATUS_ID and BUSINESS
        // are read and name none.
        assert_eq!(phone_of(&ch("PHONE_NUMBER")), Some("106540352242922"));
        for other in ["CURRENT_STATUS_ID", "BUSINESS", "SOMETHING_NEW"] {
            assert_eq!(phone_of(&ch(other)), None, "{other}");
            assert_eq!(ch(other).account_event(), None);
        }
        let body = json!({"object": OBJECT_WABA, "entry": [{"id": "102290129340398", "time": 1731617831,
            "changes": [{"field": "account_alerts", "value": {"entity_type": "CURRENT_STATUS_ID",
            "entity_id": 5, "alert_info": {"alert_severity": "CRITICAL"}}}]}]});
        let env = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(env.skipped, 0);
        assert_eq!(phone_of(&env.entries[0].changes[0]), None);
    }

    #[test]
    fn restriction_info_as_one_object_or_missing() {
        let ev = one(json!({"event": "ACCOUNT_RESTRICTION", "restriction_info":
            {"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING"}}));
        assert!(matches!(ev, AccountEvent::Restriction(ref r) if r.len() == 1));
        assert_eq!(
            one(json!({"event": "ACCOUNT_RESTRICTION"})),
            AccountEvent::Restriction(vec![])
        );
    }

    #[test]
    fn ban_states_as_string_or_array() {
        let cases = [
            (json!("DISABLE"), BanState::Disable),
            (json!(["DISABLE"]), BanState::Disable),
            (json!("REINSTATE"), BanState::Reinstate),
            (json!(["REINSTATE"]), BanState::Reinstate),
            (json!("SCHEDULE_FOR_DISABLE"), BanState::ScheduleForDisable),
            (
                json!(["SCHEDULE_FOR_DISABLE"]),
                BanState::ScheduleForDisable,
            ),
            (json!("disable"), BanState::Disable),
            (json!("LIMBO"), BanState::Unknown("LIMBO".into())),
        ];
        for (v, want) in cases {
            assert_eq!(BanState::from_value(&v), want, "{v}");
        }
        // Meta's reference example lists every possible value: not a state.
        assert!(matches!(
            BanState::from_value(&json!(["SCHEDULE_FOR_DISABLE", "DISABLE", "REINSTATE"])),
            BanState::Unknown(_)
        ));
        assert!(matches!(
            BanState::from_value(&json!([])),
            BanState::Unknown(_)
        ));
        assert!(matches!(
            BanState::from_value(&json!(3)),
            BanState::Unknown(_)
        ));
        assert_eq!(BanState::Disable.as_str(), "DISABLE");
    }

    #[test]
    fn disabled_update() {
        let ev = one(json!({"event": "DISABLED_UPDATE",
            "ban_info": {"waba_ban_state": ["DISABLE"], "waba_ban_date": "April 17, 2025"}}));
        assert_eq!(
            ev,
            AccountEvent::Disabled {
                state: BanState::Disable,
                date: Some("April 17, 2025".into())
            }
        );
        let ev = one(json!({"event": "DISABLED_UPDATE"}));
        assert!(matches!(
            ev,
            AccountEvent::Disabled {
                state: BanState::Unknown(_),
                date: None
            }
        ));
    }

    #[test]
    fn violation_lifecycle_and_others() {
        assert_eq!(
            one(
                json!({"event": "ACCOUNT_VIOLATION", "violation_info": {"violation_type": "ADULT"}})
            ),
            AccountEvent::Violation {
                violation_type: Some("ADULT".into())
            }
        );
        assert_eq!(
            one(json!({"event": "ACCOUNT_VIOLATION"})),
            AccountEvent::Violation {
                violation_type: None
            }
        );
        for e in LIFECYCLE_EVENTS {
            assert_eq!(
                one(json!({ "event": e })),
                AccountEvent::Lifecycle(e.to_string())
            );
        }
        assert_eq!(
            one(json!({"event": "VERIFIED_ACCOUNT"})),
            AccountEvent::Other(Some("VERIFIED_ACCOUNT".into()))
        );
        assert_eq!(one(json!({"event": 5})), AccountEvent::Other(None));
        assert_eq!(one(json!("text")), AccountEvent::Other(None));
    }

    #[test]
    fn throughput_upgrade_and_display_numbers() {
        let ch = |field: &str, value: serde_json::Value| ChangeItem {
            field: field.into(),
            value,
            time: None,
        };
        let up = ch(
            FIELD_PHONE_QUALITY,
            serde_json::json!({"display_phone_number": "15550783881", "event": "THROUGHPUT_UPGRADE"}),
        );
        assert_eq!(throughput_upgrade(&up), Some("15550783881"));
        let flagged = ch(
            FIELD_PHONE_QUALITY,
            serde_json::json!({"display_phone_number": "15550783881", "event": "FLAGGED"}),
        );
        assert_eq!(throughput_upgrade(&flagged), None);
        assert_eq!(
            throughput_upgrade(&ch(
                FIELD_PHONE_QUALITY,
                serde_json::json!({"event": "THROUGHPUT_UPGRADE"})
            )),
            None
        );
        let msg = ch(
            FIELD_MESSAGES,
            serde_json::json!({"metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"}}),
        );
        assert_eq!(display_of(&msg), Some(("15550783881", "106540352242922")));
        let bad = ch(
            FIELD_MESSAGES,
            serde_json::json!({"metadata": {"display_phone_number": "1", "phone_number_id": "abc"}}),
        );
        assert_eq!(display_of(&bad), None);
    }
}
