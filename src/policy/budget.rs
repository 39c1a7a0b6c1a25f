//! The messaging-limit budget (observe only, never a block): Meta limits how many unique
//! users a business reaches with template messages (outside a service window) in a moving
//! 24 h — 250, 2 000, 10 000, 100 000 or unlimited. The gateway counts them from Meta's own
//! `messages` status webhooks (each `sent`/`delivered`/`read` status of a message Meta
//! prices as `marketing`, `utility` or `authentication` names its `recipient_id`), per
//! WABA, and warns at 80 % and at 100 % of the limit. Pure: the counting task
//! (`signals::budget`) feeds and reads these.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::circuit::{Action, Change, Circuit, Evidence, Source, Warning, WarningKind};
use crate::graph::webhook::ChangeItem;

/// The moving window Meta counts over.
pub const WINDOW_SECS: i64 = 24 * 3600;

/// One status of a template message: who it reached and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reached {
    /// The recipient's digits.
    pub user: u64,
    /// The status's time, Unix seconds.
    pub at: i64,
}

/// The template messages a `messages` change reports reaching a user: statuses `sent`,
/// `delivered` or `read` whose `pricing.category` (else `conversation.origin.type`) is a
/// template category — not `service` (replies in a service window) or a free entry point
/// — with a `recipient_id` of digits; group recipients are skipped. A status without a
/// category says nothing about the limit and is skipped too.
pub fn reached(ch: &ChangeItem, now: DateTime<Utc>) -> Vec<Reached> {
    if ch.field != super::plan::FIELD_MESSAGES {
        return Vec::new();
    }
    let s = |v: &Value, path: &[&str]| -> Option<String> {
        let mut v = v;
        for p in path {
            v = v.get(*p)?;
        }
        v.as_str().map(str::to_ascii_lowercase)
    };
    ch.value
        .get("statuses")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|st| {
            matches!(
                s(st, &["status"]).as_deref(),
                Some("sent" | "delivered" | "read")
            ) && s(st, &["recipient_type"]).as_deref() != Some("group")
        })
        .filter(|st| {
            let category = s(st, &["pricing", "category"])
                .or_else(|| s(st, &["conversation", "origin", "type"]));
            matches!(
                category.as_deref(),
                Some(
                    "marketing"
                        | "marketing_lite"
                        | "utility"
                        | "authentication"
                        | "authentication_international"
                        | "business_initiated"
                )
            )
        })
        .filter_map(|st| {
            let user = super::pair::digits(st.get("recipient_id")?.as_str()?)?;
            let at = st
                .get("timestamp")
                .and_then(crate::graph::webhook::unix_time)
                .unwrap_or(now)
                .min(now)
                .timestamp();
            Some(Reached { user, at })
        })
        .collect()
}

/// One WABA's users reached in the moving window: exact, each user's latest time, at most
/// `cap` of them (past it the count saturates at `cap` and says so).
#[derive(Debug, Default)]
pub struct Window {
    seen: HashMap<u64, i64>,
    cap: usize,
    /// Users were not counted because the window was full.
    pub saturated: bool,
}

impl Window {
    /// An empty window holding at most `cap` users.
    pub fn new(cap: usize) -> Window {
        Window {
            seen: HashMap::new(),
            cap: cap.max(1),
            saturated: false,
        }
    }

    /// Counts `r` at `now` (Unix seconds); one older than the window is ignored.
    pub fn add(&mut self, r: Reached, now: i64) {
        let oldest = now - WINDOW_SECS;
        if r.at <= oldest {
            return;
        }
        if let Some(t) = self.seen.get_mut(&r.user) {
            *t = (*t).max(r.at);
            return;
        }
        if self.seen.len() >= self.cap {
            self.seen.retain(|_, t| *t > oldest);
            if self.seen.len() >= self.cap {
                self.saturated = true;
                return;
            }
        }
        self.seen.insert(r.user, r.at);
    }

    /// Users reached within the window ending `now` (older ones are dropped).
    pub fn count(&mut self, now: i64) -> usize {
        let oldest = now - WINDOW_SECS;
        self.seen.retain(|_, t| *t > oldest);
        if self.seen.len() < self.cap {
            self.saturated = false;
        }
        self.seen.len()
    }

    /// No user in it: the window can go.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// The share of `limit` that `count` reached, as the warning levels: `100` at or past the
/// limit, `80` from 80 %, else `None`. An unlimited (`u64::MAX`) or zero limit: `None`.
pub fn level(count: u64, limit: u64) -> Option<u8> {
    if limit == 0 || limit == u64::MAX {
        return None;
    }
    if count >= limit {
        Some(100)
    } else if count.saturating_mul(5) >= limit.saturating_mul(4) {
        Some(80)
    } else {
        None
    }
}

/// True when `record` (the WABA's) holds a budget warning of `level` at or after `since`:
/// this level was announced in the last window (by this replica or another).
pub fn announced(record: Option<&Circuit>, level: u8, since: DateTime<Utc>) -> bool {
    let tag = level_tag(level);
    record.is_some_and(|c| {
        c.history.iter().rev().any(|t| {
            t.at >= since
                && t.warning.as_ref().is_some_and(|w| {
                    w.kind == WarningKind::MessagingBudget
                        && w.detail.as_deref().is_some_and(|d| d.starts_with(&tag))
                })
        })
    })
}

fn level_tag(level: u8) -> String {
    format!("{level}% of ")
}

/// The warning that `waba_id`'s template sends reached `level` % of its messaging limit
/// (`limit`, as Meta or the operator spelled it).
pub fn warning(
    waba_id: &str,
    level: u8,
    count: u64,
    limit: (u64, &str),
    now: DateTime<Utc>,
) -> Change {
    let (n, spelled) = limit;
    let detail = format!(
        "{}{spelled}: {count} of {n} unique users in 24 h",
        level_tag(level)
    );
    let what = if level >= 100 { "reached" } else { "is near" };
    Change {
        waba_id: waba_id.to_string(),
        phone_number_id: None,
        template: None,
        recipient: None,
        country: None,
        action: Action::Warn(Warning {
            detail: Some(detail),
            ..Warning::new(WarningKind::MessagingBudget)
        }),
        source: Source::Webhook,
        at: now,
        reason: format!(
            "template messages reached {count} unique users in the last 24 h: the messaging limit {spelled} ({n}) {what} ({level}%); past it Meta does not deliver template messages to new users until the window moves (counted from Meta's status webhooks; never a block)"
        ),
        evidence: Some(Evidence::Webhook {
            entry_id: waba_id.to_string(),
            field: super::plan::FIELD_MESSAGES.to_string(),
            event: format!("BUDGET_{level}"),
            value: json!({"unique_users_24h": count, "limit": n, "limit_spelled": spelled}),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::webhook as payload;
    use chrono::TimeZone;

    const WABA: &str = "102290129340398";
    const T: i64 = 1_900_000_000;

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(T + 100, 0).unwrap()
    }

    fn reached_of(statuses: Value) -> Vec<Reached> {
        let body = json!({"entry": [{"id": WABA, "time": T, "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp", "metadata": {"phone_number_id": "106540352242922"},
            "statuses": statuses}}]}]});
        let env = payload::parse(body.to_string().as_bytes()).unwrap();
        reached(&env.entries[0].changes[0], now())
    }

    #[test]
    fn template_statuses_count_and_the_rest_do_not() {
        let st = |status: &str, who: &str, pricing: Value| json!({"id": "wamid.X", "status": status, "timestamp": T.to_string(), "recipient_id": who, "pricing": pricing});
        let priced = |c: &str| json!({"billable": true, "pricing_model": "PMP", "category": c});
        let got = reached_of(json!([
            st("sent", "15551234567", priced("marketing")),
            st("delivered", "+1 555 123 4567", priced("utility")),
            st("read", "4915123456789", priced("AUTHENTICATION")),
            st("sent", "447700900123", priced("service")),
            st("failed", "447700900124", priced("marketing")),
            st("sent", "447700900125", Value::Null),
            {"status": "sent", "recipient_id": "447700900126", "timestamp": T,
             "conversation": {"origin": {"type": "marketing"}}},
            {"status": "sent", "recipient_id": "120363000000000000", "recipient_type": "group",
             "pricing": priced("marketing")},
            {"status": "sent", "recipient_id": "not digits", "pricing": priced("marketing")},
        ]));
        let users: Vec<u64> = got.iter().map(|r| r.user).collect();
        assert_eq!(
            users,
            [15551234567, 15551234567, 4915123456789, 447700900126]
        );
        assert!(got.iter().all(|r| r.at == T));
        // A status dated in the future counts at now.
        let got = reached_of(json!([st("sent", "1", priced("marketing"))
            .as_object()
            .map(|o| {
                let mut o = o.clone();
                o.insert("timestamp".into(), json!(T + 10_000));
                Value::Object(o)
            })]));
        assert_eq!(got[0].at, T + 100);
    }

    #[test]
    fn the_window_moves_and_is_bounded() {
        let mut w = Window::new(3);
        w.add(Reached { user: 1, at: T }, T);
        w.add(
            Reached {
                user: 1,
                at: T + 10,
            },
            T + 10,
        );
        w.add(
            Reached {
                user: 2,
                at: T + 20,
            },
            T + 20,
        );
        w.add(
            Reached {
                user: 3,
                at: T - WINDOW_SECS,
            },
            T + 20,
        );
        assert_eq!(
            w.count(T + 20),
            2,
            "repeats and stale statuses are not new users"
        );
        w.add(
            Reached {
                user: 3,
                at: T + 30,
            },
            T + 30,
        );
        w.add(
            Reached {
                user: 4,
                at: T + 40,
            },
            T + 40,
        );
        assert!(w.saturated);
        assert_eq!(w.count(T + 40), 3);
        // User 1 was last seen at T + 10: gone when the window has moved past it.
        assert_eq!(w.count(T + 10 + WINDOW_SECS), 2);
        assert!(!w.saturated);
        w.add(
            Reached {
                user: 4,
                at: T + WINDOW_SECS + 11,
            },
            T + WINDOW_SECS + 11,
        );
        assert_eq!(w.count(T + WINDOW_SECS + 11), 3);
        assert_eq!(w.count(T + 3 * WINDOW_SECS), 0);
        assert!(w.is_empty());
    }

    #[test]
    fn levels_and_their_warnings() {
        assert_eq!(level(199, 250), None);
        assert_eq!(level(200, 250), Some(80));
        assert_eq!(level(249, 250), Some(80));
        assert_eq!(level(250, 250), Some(100));
        assert_eq!(level(10_000, u64::MAX), None);
        assert_eq!(level(5, 0), None);
        let c = warning(WABA, 80, 200, (250, "TIER_250"), now());
        let Action::Warn(w) = &c.action else {
            panic!("{c:?}")
        };
        assert_eq!(w.kind, WarningKind::MessagingBudget);
        assert_eq!(
            w.detail.as_deref(),
            Some("80% of TIER_250: 200 of 250 unique users in 24 h")
        );
        let out = crate::circuit::decide(None, &c, "t", 20, now());
        let crate::circuit::Outcome::Applied { circuit, .. } = out else {
            panic!()
        };
        let day_ago = now() - chrono::Duration::seconds(WINDOW_SECS);
        assert!(announced(Some(&circuit), 80, day_ago));
        assert!(!announced(Some(&circuit), 100, day_ago));
        assert!(!announced(
            Some(&circuit),
            80,
            now() + chrono::Duration::seconds(1)
        ));
    }
}
