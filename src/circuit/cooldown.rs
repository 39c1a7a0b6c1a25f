//! Marketing cooldowns and template categories, the mechanics. After Meta reports a
//! `messages` status `failed` with 131049 (the user's marketing limit) for a recipient,
//! the WABA's sends of MARKETING templates to that recipient are held for
//! `shaping.marketing_cooldown` (when it is decided: `policy::cooldown`). A cooldown is a
//! record in the circuit table keyed `cooldown:{waba}:{digits}` ([`key`]): open until its
//! `until`, which the expiry timer closes; so it is durable in the embedded store, shared
//! over Redis and ordered like every circuit. A template's category is kept on its
//! template record ([`Category`], [`super::Circuit::category`]).
//!
//! The hot path's view ([`CooldownIndex`]): the open cooldowns by (WABA, recipient), the
//! WABAs that have any with their count, and the templates' categories. A send pays one
//! atomic load when no cooldown is held anywhere; its body is read only when its WABA
//! holds one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use super::model::{Circuit, Source};
use super::order::Change;
use super::template::TemplateRef;

/// Prefix of cooldown keys.
pub const KEY_PREFIX: &str = "cooldown:";

/// The category whose sends a cooldown holds.
pub const MARKETING: &str = "MARKETING";

/// The key of a cooldown: `cooldown:{waba}:{digits}`.
pub fn key(waba_id: &str, recipient: &str) -> String {
    format!("{KEY_PREFIX}{waba_id}:{recipient}")
}

/// A recipient as a cooldown keeps it: 1 to 19 ASCII digits (what
/// `policy::pair::recipient` makes of a `to`, and Meta's `recipient_id`).
pub fn recipient_is_valid(r: &str) -> bool {
    (1..=19).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_digit()) && r.parse::<u64>().is_ok()
}

/// A category as the gateway keeps it: Meta's word, uppercase (`MARKETING`, `UTILITY`,
/// `AUTHENTICATION`; another word is kept as given, and only `MARKETING` is held).
pub fn normalize(category: &str) -> Option<String> {
    let c = category.trim().to_ascii_uppercase();
    (!c.is_empty() && c.len() <= 32 && c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
        .then_some(c)
}

/// A template's category, on its template record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Category {
    /// What it is now (`MARKETING`, `UTILITY`, `AUTHENTICATION`, …); `None` while only
    /// Meta's advance notice is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Meta's advance notice (`template_category_update`'s `correct_category`): the
    /// category it will move to. Recorded only; the template's sends follow `current`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coming: Option<String>,
    /// When Meta said the move is due (`category_update_timestamp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coming_at: Option<DateTime<Utc>>,
    /// Event time of the last category change: an older event never overwrites it.
    pub at: DateTime<Utc>,
    /// What set it (`webhook` or `admin`).
    pub source: Source,
}

/// The category after `change` (an `Action::Categorize` with `category` and `coming`)
/// over `cur` (pure): `None` when the change is older than what is kept (an operator's
/// word always applies) or changes nothing.
pub fn categorize(
    cur: Option<&Category>,
    change: &Change,
    category: &Option<String>,
    coming: &Option<(String, Option<DateTime<Utc>>)>,
) -> Option<Category> {
    if let Some(c) = cur {
        if change.at < c.at && change.source != Source::Admin {
            return None;
        }
    }
    let mut next = cur.cloned().unwrap_or(Category {
        current: None,
        coming: None,
        coming_at: None,
        at: change.at,
        source: change.source,
    });
    if let Some(c) = category {
        next.current = Some(c.clone());
        // The move announced has happened (or another one did): the notice is spent.
        next.coming = None;
        next.coming_at = None;
    }
    if let Some((c, at)) = coming {
        next.coming = Some(c.clone());
        next.coming_at = *at;
    }
    if cur.is_some_and(|c| c.current == next.current && c.coming == next.coming) {
        return None;
    }
    next.at = cur.map_or(change.at, |c| c.at.max(change.at));
    next.source = change.source;
    Some(next)
}

/// One open cooldown as the hot path reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// Its end.
    pub until: DateTime<Utc>,
}

/// The hot path's view of cooldowns and categories (see the module docs).
#[derive(Default)]
pub struct CooldownIndex {
    /// Open cooldowns by key.
    open: DashMap<String, Held>,
    /// WABAs with open cooldowns, and how many.
    wabas: DashMap<String, usize>,
    /// `open.len()`, one load for the pass-through path.
    len: AtomicUsize,
    /// Template categories by template key (`template:{waba}:{name}:{language}`).
    categories: DashMap<String, Arc<str>>,
}

impl CooldownIndex {
    /// True when any cooldown is held anywhere (one atomic load).
    #[inline]
    pub fn any(&self) -> bool {
        self.len.load(Ordering::Acquire) > 0
    }

    /// True when `waba_id` holds a cooldown.
    pub fn has(&self, waba_id: &str) -> bool {
        self.any() && self.wabas.contains_key(waba_id)
    }

    /// The open cooldown of `waba_id` for recipient `digits`, if one is held.
    pub fn held(&self, waba_id: &str, digits: u64) -> Option<Held> {
        if !self.has(waba_id) {
            return None;
        }
        self.open
            .get(&key(waba_id, &digits.to_string()))
            .map(|h| *h.value())
    }

    /// The category of `template` of `waba_id`, when one is known.
    pub fn category(&self, waba_id: &str, template: &TemplateRef) -> Option<Arc<str>> {
        self.categories
            .get(&super::template::key(waba_id, template))
            .map(|c| c.value().clone())
    }

    /// Open cooldowns.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Templates with a known category.
    pub fn categories(&self) -> usize {
        self.categories.len()
    }

    /// The open cooldown that ends first (what makes room past the cap).
    pub fn soonest(&self) -> Option<(String, DateTime<Utc>)> {
        self.open
            .iter()
            .min_by_key(|e| e.value().until)
            .map(|e| (e.key().clone(), e.value().until))
    }

    /// Makes the view agree with a template record (its category).
    pub fn sync_category(&self, key: &str, c: &Circuit) {
        match c.category.as_ref().and_then(|k| k.current.as_deref()) {
            Some(cat) => {
                let fresh = self
                    .categories
                    .get(key)
                    .is_none_or(|old| old.as_ref() != cat);
                if fresh {
                    self.categories.insert(key.to_string(), Arc::from(cat));
                }
            }
            None => {
                self.categories.remove(key);
            }
        }
    }

    /// Forgets a dropped template record's category.
    pub fn forget_category(&self, key: &str) {
        self.categories.remove(key);
    }

    /// Makes the view agree with the cooldown record `c` (key `key`), or forgets it
    /// (`removed`).
    pub fn sync(&self, key: &str, c: &Circuit, removed: bool) {
        let live = !removed && c.is_open();
        if live {
            let until = c.until.unwrap_or(DateTime::<Utc>::MAX_UTC);
            // Counted up before inserting, so the count never reads low.
            self.len.fetch_add(1, Ordering::AcqRel);
            let fresh = self.open.insert(key.to_string(), Held { until }).is_none();
            if fresh {
                *self.wabas.entry(c.waba_id.clone()).or_insert(0) += 1;
            } else {
                self.len.fetch_sub(1, Ordering::AcqRel);
            }
        } else if self.open.remove(key).is_some() {
            let zero = match self.wabas.get_mut(&c.waba_id) {
                Some(mut n) => {
                    *n = n.saturating_sub(1);
                    *n == 0
                }
                None => false,
            };
            if zero {
                self.wabas.remove_if(&c.waba_id, |_, n| *n == 0);
            }
            self.len.fetch_sub(1, Ordering::AcqRel);
        }
        crate::metrics::METRICS
            .shaping_cooldowns
            .set(self.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::{Action, State};
    use chrono::TimeZone;

    const WABA: &str = "102290129340398";

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_900_000_000 + s, 0).unwrap()
    }

    fn change(s: i64, source: Source) -> Change {
        Change {
            waba_id: WABA.into(),
            phone_number_id: None,
            template: None,
            recipient: None,
            country: None,
            action: Action::Note,
            source,
            at: at(s),
            reason: String::new(),
            evidence: None,
        }
    }

    #[test]
    fn categories_order_by_event_time_and_notices_are_spent_by_the_move() {
        let m = Some("MARKETING".to_string());
        let u = Some("UTILITY".to_string());
        let first = categorize(None, &change(10, Source::Webhook), &u, &None).unwrap();
        assert_eq!(first.current.as_deref(), Some("UTILITY"));
        // The same again: nothing changes.
        assert!(categorize(Some(&first), &change(10, Source::Webhook), &u, &None).is_none());
        // Meta's notice: recorded, the current category unchanged.
        let notice = Some(("MARKETING".to_string(), Some(at(86_400))));
        let noticed =
            categorize(Some(&first), &change(20, Source::Webhook), &None, &notice).unwrap();
        assert_eq!(noticed.current.as_deref(), Some("UTILITY"));
        assert_eq!(noticed.coming.as_deref(), Some("MARKETING"));
        // An older event does not overwrite; an operator's word does.
        assert!(categorize(Some(&noticed), &change(5, Source::Webhook), &m, &None).is_none());
        let moved = categorize(Some(&noticed), &change(30, Source::Webhook), &m, &None).unwrap();
        assert_eq!(moved.current.as_deref(), Some("MARKETING"));
        assert_eq!(moved.coming, None, "the notice is spent by the move");
        let admin = categorize(Some(&moved), &change(1, Source::Admin), &u, &None).unwrap();
        assert_eq!(admin.current.as_deref(), Some("UTILITY"));
        assert_eq!(admin.source, Source::Admin);
        assert_eq!(admin.at, at(30), "ordered after what it overrode");
    }

    #[test]
    fn keys_recipients_and_categories_are_checked() {
        assert_eq!(
            key(WABA, "15557654321"),
            "cooldown:102290129340398:15557654321"
        );
        assert!(recipient_is_valid("15557654321"));
        for bad in ["", "+1555", "1 555", "12345678901234567890", "abc"] {
            assert!(!recipient_is_valid(bad), "{bad}");
        }
        assert_eq!(normalize(" marketing ").as_deref(), Some("MARKETING"));
        assert_eq!(normalize("").as_deref(), None);
        assert_eq!(normalize("MARKETING:x").as_deref(), None);
    }

    #[test]
    fn the_index_follows_open_and_closed_cooldowns() {
        let idx = CooldownIndex::default();
        assert!(!idx.any());
        let mut c = Circuit {
            recipient: Some("15557654321".into()),
            state: State::Open,
            until: Some(at(100)),
            ..Circuit::new(WABA, at(0))
        };
        let k = c.key();
        idx.sync(&k, &c, false);
        idx.sync(&k, &c, false);
        assert_eq!(idx.len(), 1);
        assert!(idx.has(WABA) && !idx.has("102290129340399"));
        assert_eq!(idx.held(WABA, 15557654321).map(|h| h.until), Some(at(100)));
        assert_eq!(idx.held(WABA, 15557654322), None);
        assert_eq!(idx.soonest().map(|s| s.1), Some(at(100)));
        c.state = State::Closed;
        idx.sync(&k, &c, false);
        assert!(!idx.any() && !idx.has(WABA));
        assert_eq!(idx.held(WABA, 15557654321), None);
    }
}
