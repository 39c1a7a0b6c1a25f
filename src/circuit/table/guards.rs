//! The hot path's view of the table: the open circuits' guards, by WABA, by phone number
//! by template and by country, each map with its own count so a send reads a map only while something
//! of its kind is open. Updated under the circuit's entry by the table ([`super::Table`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::circuit::cooldown::CooldownIndex;
use crate::circuit::guard::OpenGuard;
use crate::circuit::model::Circuit;
use crate::circuit::pair::PairIndex;
use crate::circuit::template::{TemplateIndex, TemplateRef};
use crate::graph::{GraphId, IdHasher};

/// See the module docs.
#[derive(Default)]
pub(super) struct Guards {
    open: DashMap<Arc<str>, Arc<OpenGuard>, IdHasher>,
    /// At least `open.len()`: lets the hot path skip the map with one plain load when
    /// nothing is open (`DashMap::is_empty` read-locks every shard, a write to lines every
    /// core shares).
    open_len: AtomicUsize,
    /// Open phone-number circuits, by phone number.
    phones: DashMap<GraphId, Arc<OpenGuard>, IdHasher>,
    phones_len: AtomicUsize,
    /// Open template circuits.
    templates: TemplateIndex,
    /// Open country circuits (the same kind of index: keyed under a WABA).
    countries: TemplateIndex,
    /// Open marketing cooldowns and template categories.
    pub(super) cooldowns: CooldownIndex,
    /// Pair holds' records.
    pub(super) pairs: PairIndex,
}

impl Guards {
    #[inline]
    pub(super) fn waba(&self, waba_id: &str) -> Option<Arc<OpenGuard>> {
        if self.open_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.open.get(waba_id).map(|g| Arc::clone(g.value()))
    }

    #[inline]
    pub(super) fn with_waba<R>(&self, waba_id: &str, f: impl FnOnce(&OpenGuard) -> R) -> Option<R> {
        if self.open_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.open.get(waba_id).map(|g| f(g.value()))
    }

    #[inline]
    pub(super) fn with_phone<R>(
        &self,
        phone: &GraphId,
        f: impl FnOnce(&OpenGuard) -> R,
    ) -> Option<R> {
        if self.phones_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.phones.get(phone).map(|g| f(g.value()))
    }

    #[inline]
    pub(super) fn has_templates(&self, waba_id: &str) -> bool {
        self.templates.has_open(waba_id)
    }

    pub(super) fn with_template<R>(
        &self,
        waba_id: &str,
        template: &TemplateRef,
        f: impl FnOnce(&OpenGuard) -> R,
    ) -> Option<R> {
        self.templates.with_guard(waba_id, template, f)
    }

    #[inline]
    pub(super) fn has_countries(&self, waba_id: &str) -> bool {
        self.countries.has_open(waba_id)
    }

    pub(super) fn with_country<R>(
        &self,
        waba_id: &str,
        code: u16,
        f: impl FnOnce(&OpenGuard) -> R,
    ) -> Option<R> {
        self.countries
            .with_key(waba_id, || crate::circuit::country::key(waba_id, code), f)
    }

    pub(super) fn count(&self) -> usize {
        self.open.len() + self.phones.len() + self.templates.len() + self.countries.len()
    }

    /// Forgets a record dropped from the table (a closed one, or an evicted cooldown).
    pub(super) fn forget(&self, key: &str, c: &Circuit) {
        if c.template.is_some() {
            self.cooldowns.forget_category(key);
        } else if c.is_pair() {
            self.pairs.sync(c, true);
        } else if c.is_cooldown() {
            self.cooldowns.sync(key, c, true);
        }
    }

    /// Makes the view agree with `c` (key `key`) after change `seq`: `Some(open)` when the
    /// circuit's open state in the view changed (it opened or it closed), `None` when not
    /// (the table sets the open gauges from it).
    pub(super) fn sync(&self, key: &Arc<str>, c: &Circuit, seq: u64) -> Option<bool> {
        if c.template.is_some() {
            self.cooldowns.sync_category(key, c);
            return self.templates.sync(key, c, seq);
        }
        if c.country.is_some() {
            return self.countries.sync(key, c, seq);
        }
        if c.is_cooldown() {
            // A hold, not a circuit: no open gauge of its own.
            self.cooldowns.sync(key, c, false);
            return None;
        }
        if c.is_pair() {
            self.pairs.sync(c, false);
            return None;
        }
        if let Some(phone) = c.phone_number_id.as_deref().and_then(GraphId::new) {
            if c.is_open() {
                self.phones_len.fetch_add(1, Ordering::AcqRel);
                let fresh = self
                    .phones
                    .insert(phone, Arc::new(OpenGuard::new(c, seq)))
                    .is_none();
                if !fresh {
                    self.phones_len.fetch_sub(1, Ordering::AcqRel);
                }
                return fresh.then_some(true);
            }
            if self.phones.remove(&phone).is_some() {
                self.phones_len.fetch_sub(1, Ordering::AcqRel);
                return Some(false);
            }
            return None;
        }
        // Count up before inserting and down after removing, so the count never reads low.
        if c.is_open() {
            self.open_len.fetch_add(1, Ordering::AcqRel);
            let fresh = self
                .open
                .insert(key.clone(), Arc::new(OpenGuard::new(c, seq)))
                .is_none();
            if !fresh {
                self.open_len.fetch_sub(1, Ordering::AcqRel);
            }
            fresh.then_some(true)
        } else if self.open.remove(key.as_ref()).is_some() {
            self.open_len.fetch_sub(1, Ordering::AcqRel);
            Some(false)
        } else {
            None
        }
    }
}
