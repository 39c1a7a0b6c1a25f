//! Which WABA owns each phone number: configured (`[[accounts]]`, the seed), learned from
//! what Meta says (webhooks, Health Status), or set by an operator. The resolve step reads
//! it on every send, so the common case — a configured phone number — is a lookup in an
//! immutable map (no lock, no reference count); learned and operator entries are one
//! sharded-map read, taken only when the configured map misses.
//!
//! Precedence: an operator's entry > the configuration > what was learned. Among learned
//! entries the newest wins. A removal is kept as a record without a WABA (a tombstone), so
//! an older learning delivered later does not bring the mapping back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::graph::{GraphId, IdHasher};

/// A phone number and the WABA it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The phone-number id.
    pub phone: GraphId,
    /// Its WABA.
    pub waba: GraphId,
}

/// Where a mapping came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MappingSource {
    /// `[[accounts]]` in the configuration.
    Config,
    /// A verified webhook (`messages` metadata, `account_alerts`).
    Webhook,
    /// A Health Status read of the phone number.
    Health,
    /// An operator, through the admin API.
    Admin,
}

impl MappingSource {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            MappingSource::Config => "config",
            MappingSource::Webhook => "webhook",
            MappingSource::Health => "health",
            MappingSource::Admin => "admin",
        }
    }
}

/// One phone number's mapping, as listed by the admin API, stored and shared by replicas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mapping {
    /// The phone-number id.
    pub phone_number_id: String,
    /// Its WABA; `None` records that the mapping was removed.
    pub waba_id: Option<String>,
    /// Where it came from.
    pub source: MappingSource,
    /// When it was learned or set (orders updates from several replicas).
    pub updated_at: DateTime<Utc>,
    /// Replica that made the change (the tie-break).
    #[serde(default)]
    pub origin: String,
}

impl Mapping {
    /// Replica merge rule: last writer wins by (time, origin).
    pub fn newer_than(&self, other: &Mapping) -> bool {
        (self.updated_at, &self.origin) > (other.updated_at, &other.origin)
    }
}

/// What [`Directory::set`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Set {
    /// The mapping is recorded (and changes how the phone number resolves when `moved`).
    Recorded {
        /// The resolution of the phone number changed.
        moved: bool,
    },
    /// Nothing changed: the same mapping is held, or a configured or operator entry, or a
    /// newer one, wins over it.
    Unchanged,
}

/// The phone → WABA directory.
pub struct Directory {
    config: HashMap<GraphId, GraphId, IdHasher>,
    /// Operator entries for configured phone numbers (they win over the configuration);
    /// swapped whole, rarely.
    overrides: ArcSwap<HashMap<GraphId, GraphId, IdHasher>>,
    has_overrides: AtomicBool,
    /// Every entry other than the configuration's, tombstones included.
    entries: DashMap<GraphId, (Option<GraphId>, Mapping)>,
    /// Entries that resolve (not tombstones), so a miss in the configuration costs one load
    /// when nothing was learned.
    live: AtomicUsize,
    max_learned: usize,
    /// Configured WABAs and every WABA a phone number was mapped to.
    wabas: DashMap<GraphId, ()>,
    config_wabas: usize,
    evicted: AtomicUsize,
    /// Entries dropped over the cap, until the table tells the stores.
    dropped: std::sync::Mutex<Vec<Mapping>>,
}

impl Directory {
    /// A directory seeded with `accounts` (waba, phones), keeping at most `max_learned`
    /// learned entries (oldest dropped first; operator entries are never dropped).
    pub fn new<'a>(
        accounts: impl IntoIterator<Item = (&'a str, &'a [String])>,
        max_learned: usize,
    ) -> Directory {
        let mut config = HashMap::default();
        let wabas = DashMap::new();
        for (waba, phones) in accounts {
            let Some(w) = GraphId::new(waba) else {
                continue;
            };
            wabas.insert(w, ());
            for p in phones {
                if let Some(p) = GraphId::new(p) {
                    config.insert(p, w);
                }
            }
        }
        let config_wabas = wabas.len();
        Directory {
            config,
            overrides: ArcSwap::from_pointee(HashMap::default()),
            has_overrides: AtomicBool::new(false),
            entries: DashMap::new(),
            live: AtomicUsize::new(0),
            max_learned: max_learned.max(1),
            wabas,
            config_wabas,
            evicted: AtomicUsize::new(0),
            dropped: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The WABA of a phone-number id.
    #[inline]
    pub fn resolve(&self, phone: &str) -> Option<Resolved> {
        self.resolve_id(GraphId::new(phone)?)
    }

    /// The hot path: the WABA of a phone number whose id is already parsed.
    #[inline]
    pub fn resolve_id(&self, p: GraphId) -> Option<Resolved> {
        if self.has_overrides.load(Ordering::Acquire) {
            if let Some(w) = self.overrides.load().get(&p) {
                return Some(Resolved { phone: p, waba: *w });
            }
        }
        if let Some(w) = self.config.get(&p) {
            return Some(Resolved { phone: p, waba: *w });
        }
        if self.live.load(Ordering::Acquire) == 0 {
            return None;
        }
        let waba = self.entries.get(&p)?.0?;
        Some(Resolved { phone: p, waba })
    }

    /// True for a configured WABA or one a phone number maps to.
    pub fn knows_waba(&self, waba: &str) -> bool {
        GraphId::new(waba).is_some_and(|w| self.wabas.contains_key(&w))
    }

    /// True when the phone number is configured.
    pub fn is_configured(&self, phone: &str) -> bool {
        GraphId::new(phone).is_some_and(|p| self.config.contains_key(&p))
    }

    /// How many phone numbers are configured and how many entries resolve besides.
    pub fn counts(&self) -> (usize, usize) {
        (self.config.len(), self.live.load(Ordering::Acquire))
    }

    /// How many configured WABAs.
    pub fn configured_wabas(&self) -> usize {
        self.config_wabas
    }

    /// Records a mapping by the precedence rules (see the module docs). `merge` is for a
    /// record from a store or another replica: only the ordering rule applies, the sender
    /// applied precedence already.
    pub fn set(&self, m: Mapping, merge: bool) -> Set {
        let Some(p) = GraphId::new(&m.phone_number_id) else {
            return Set::Unchanged;
        };
        let w = match m.waba_id.as_deref() {
            Some(w) => match GraphId::new(w) {
                Some(w) => Some(w),
                None => return Set::Unchanged,
            },
            None => None,
        };
        if m.source == MappingSource::Config {
            return Set::Unchanged;
        }
        let configured = self.config.contains_key(&p);
        if !merge && configured && m.source != MappingSource::Admin {
            // The configuration wins over what was learned.
            return Set::Unchanged;
        }
        let before = self.resolve(&m.phone_number_id).map(|r| r.waba);
        let was_live;
        {
            let mut entry = self
                .entries
                .entry(p)
                .or_insert_with(|| (None, tombstone(&m)));
            let held = &entry.1;
            let fresh = held.updated_at == DateTime::<Utc>::MIN_UTC;
            if !fresh {
                if merge && !m.newer_than(held) {
                    return Set::Unchanged;
                }
                if !merge {
                    // An operator's entry stands against learning; learning the mapping
                    // it already holds changes nothing (no write per webhook).
                    if held.source == MappingSource::Admin
                        && m.source != MappingSource::Admin
                        && held.waba_id.is_some()
                    {
                        return Set::Unchanged;
                    }
                    if held.waba_id == m.waba_id && held.source == m.source {
                        return Set::Unchanged;
                    }
                    if m.updated_at < held.updated_at && m.source != MappingSource::Admin {
                        return Set::Unchanged;
                    }
                }
            }
            was_live = entry.0.is_some();
            *entry = (w, m.clone());
        }
        match (was_live, w.is_some()) {
            (false, true) => {
                self.live.fetch_add(1, Ordering::AcqRel);
            }
            (true, false) => {
                self.live.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        }
        if let Some(w) = w {
            self.wabas.insert(w, ());
        }
        if configured {
            self.rebuild_overrides();
        }
        if m.source != MappingSource::Admin && self.live.load(Ordering::Acquire) > self.max_learned
        {
            self.evict();
        }
        let after = self.resolve(&m.phone_number_id).map(|r| r.waba);
        Set::Recorded {
            moved: before != after,
        }
    }

    /// The operator entries of configured phone numbers, as the hot path reads them.
    fn rebuild_overrides(&self) {
        let map: HashMap<GraphId, GraphId, IdHasher> = self
            .entries
            .iter()
            .filter(|e| {
                e.value().1.source == MappingSource::Admin && self.config.contains_key(e.key())
            })
            .filter_map(|e| e.value().0.map(|w| (*e.key(), w)))
            .collect();
        self.has_overrides.store(!map.is_empty(), Ordering::Release);
        self.overrides.store(Arc::new(map));
    }

    /// Drops the oldest learned entries (1 % of the cap at a time; never an operator's).
    fn evict(&self) {
        let mut learned: Vec<(DateTime<Utc>, GraphId)> = self
            .entries
            .iter()
            .filter(|e| e.value().1.source != MappingSource::Admin && e.value().0.is_some())
            .map(|e| (e.value().1.updated_at, *e.key()))
            .collect();
        let n = (self.max_learned / 100).max(1);
        if learned.len() > n {
            learned.select_nth_unstable(n);
        }
        let mut dropped = 0;
        let mut gone = Vec::new();
        for (at, id) in learned.into_iter().take(n) {
            if let Some((_, (_, m))) = self
                .entries
                .remove_if(&id, |_, (w, m)| w.is_some() && m.updated_at == at)
            {
                self.live.fetch_sub(1, Ordering::AcqRel);
                dropped += 1;
                gone.push(m);
            }
        }
        if let Ok(mut d) = self.dropped.lock() {
            d.extend(gone);
        }
        let total = self.evicted.fetch_add(dropped, Ordering::AcqRel) + dropped;
        tracing::warn!(
            dropped,
            dropped_so_far = total,
            max_learned = self.max_learned,
            "learned phone numbers over discovery.max_learned: the oldest were dropped (they are learned again when Meta names them)"
        );
    }

    /// Every mapping: configured ones first (as records), then the others (tombstones left
    /// out), sorted by phone-number id.
    pub fn list(&self, since: DateTime<Utc>) -> Vec<Mapping> {
        let mut out: Vec<Mapping> = self
            .entries
            .iter()
            .filter(|e| e.value().0.is_some())
            .map(|e| e.value().1.clone())
            .collect();
        for (p, w) in &self.config {
            let overridden = out.iter().any(|m| m.phone_number_id == p.as_str());
            if !overridden {
                out.push(Mapping {
                    phone_number_id: p.to_string(),
                    waba_id: Some(w.to_string()),
                    source: MappingSource::Config,
                    updated_at: since,
                    origin: String::new(),
                });
            }
        }
        out.sort_by(|a, b| a.phone_number_id.cmp(&b.phone_number_id));
        out
    }

    /// Entries dropped over the cap since the last call (stores delete them).
    pub fn take_evicted(&self) -> Vec<Mapping> {
        self.dropped
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default()
    }

    /// Every record other than the configuration's, tombstones included (for stores).
    pub fn records(&self) -> Vec<Mapping> {
        self.entries.iter().map(|e| e.value().1.clone()).collect()
    }

    /// The record held for a phone number (not the configuration's).
    pub fn record(&self, phone: &str) -> Option<Mapping> {
        GraphId::new(phone).and_then(|p| self.entries.get(&p).map(|e| e.1.clone()))
    }

    /// Drops tombstones older than `before`; returns them (stores delete them).
    pub fn prune_tombstones(&self, before: DateTime<Utc>) -> Vec<Mapping> {
        let old: Vec<GraphId> = self
            .entries
            .iter()
            .filter(|e| e.value().0.is_none() && e.value().1.updated_at < before)
            .map(|e| *e.key())
            .collect();
        old.into_iter()
            .filter_map(|id| {
                self.entries
                    .remove_if(&id, |_, (w, m)| w.is_none() && m.updated_at < before)
                    .map(|(_, (_, m))| m)
            })
            .collect()
    }
}

fn tombstone(m: &Mapping) -> Mapping {
    Mapping {
        waba_id: None,
        updated_at: DateTime::<Utc>::MIN_UTC,
        ..m.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn m(phone: &str, waba: Option<&str>, source: MappingSource, at: i64) -> Mapping {
        Mapping {
            phone_number_id: phone.into(),
            waba_id: waba.map(str::to_owned),
            source,
            updated_at: t(at),
            origin: "a".into(),
        }
    }

    fn dir() -> Directory {
        let phones = vec!["1001".to_string()];
        Directory::new([("9001", phones.as_slice())], 100)
    }

    fn waba_of(d: &Directory, p: &str) -> Option<String> {
        d.resolve(p).map(|r| r.waba.to_string())
    }

    #[test]
    fn ids() {
        assert_eq!(
            GraphId::new("106540352242922").unwrap().as_str(),
            "106540352242922"
        );
        for bad in ["", "12a", &"1".repeat(33), "-1", " 1"] {
            assert!(GraphId::new(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn precedence_operator_then_config_then_learned() {
        let d = dir();
        assert_eq!(waba_of(&d, "1001").as_deref(), Some("9001"));
        // Learning cannot move a configured phone number.
        assert_eq!(
            d.set(m("1001", Some("9002"), MappingSource::Webhook, 1), false),
            Set::Unchanged
        );
        assert_eq!(waba_of(&d, "1001").as_deref(), Some("9001"));
        // An operator can; removing the operator's entry brings the configuration back.
        assert_eq!(
            d.set(m("1001", Some("9002"), MappingSource::Admin, 2), false),
            Set::Recorded { moved: true }
        );
        assert_eq!(waba_of(&d, "1001").as_deref(), Some("9002"));
        d.set(m("1001", None, MappingSource::Admin, 3), false);
        assert_eq!(waba_of(&d, "1001").as_deref(), Some("9001"));

        // An unknown phone number is learned; the operator's entry then stands against
        // learning, and the same learning twice changes nothing.
        assert_eq!(waba_of(&d, "2001"), None);
        assert_eq!(
            d.set(m("2001", Some("9003"), MappingSource::Webhook, 1), false),
            Set::Recorded { moved: true }
        );
        assert_eq!(
            d.set(m("2001", Some("9003"), MappingSource::Webhook, 5), false),
            Set::Unchanged
        );
        d.set(m("2001", Some("9004"), MappingSource::Admin, 6), false);
        assert_eq!(
            d.set(m("2001", Some("9003"), MappingSource::Health, 7), false),
            Set::Unchanged
        );
        assert_eq!(waba_of(&d, "2001").as_deref(), Some("9004"));
        assert!(d.knows_waba("9004") && d.knows_waba("9001") && !d.knows_waba("9999"));
    }

    #[test]
    fn a_removal_is_remembered_and_merges_order_by_time() {
        let d = dir();
        d.set(m("3001", Some("9005"), MappingSource::Webhook, 10), false);
        d.set(m("3001", None, MappingSource::Admin, 20), false);
        assert_eq!(waba_of(&d, "3001"), None);
        // An older learning delivered later does not bring it back; a newer one does.
        assert_eq!(
            d.set(m("3001", Some("9005"), MappingSource::Webhook, 15), false),
            Set::Unchanged
        );
        assert_eq!(
            d.set(m("3001", Some("9005"), MappingSource::Webhook, 15), true),
            Set::Unchanged
        );
        d.set(m("3001", Some("9006"), MappingSource::Health, 25), false);
        assert_eq!(waba_of(&d, "3001").as_deref(), Some("9006"));
        assert_eq!(d.counts(), (1, 1));
        assert_eq!(
            d.prune_tombstones(t(100)).len(),
            0,
            "a live entry is not a tombstone"
        );
    }

    #[test]
    fn the_learned_map_is_capped_oldest_first() {
        let d = dir();
        for i in 0..250 {
            d.set(
                m(
                    &format!("{}", 50_000 + i),
                    Some("9007"),
                    MappingSource::Webhook,
                    i,
                ),
                false,
            );
        }
        let (_, live) = d.counts();
        assert!(live <= 100, "{live}");
        // The newest are kept.
        assert!(d.resolve("50249").is_some());
        assert!(d.resolve("50000").is_none());
        // Operator entries are never dropped.
        d.set(m("7001", Some("9008"), MappingSource::Admin, -1000), false);
        for i in 0..300 {
            d.set(
                m(
                    &format!("{}", 60_000 + i),
                    Some("9007"),
                    MappingSource::Webhook,
                    500 + i,
                ),
                false,
            );
        }
        assert_eq!(waba_of(&d, "7001").as_deref(), Some("9008"));
    }
}
