//! The circuit table: the one place circuits change. The hot path reads `open`;
//! every change goes through [`Table::apply`] (local) or [`Table::merge`] (a replica's).

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::directory::{Directory, Mapping, Resolved, Set};
use super::model::{Circuit, Evidence, Scope, Source, State};
use super::order::{decide, newer, Action, Change, Outcome};
use crate::graph::GraphId;
use crate::metrics::METRICS;

/// What the hot path needs to know about an open circuit, built once per opening.
#[derive(Debug)]
pub struct OpenGuard {
    /// Which sends are answered locally.
    pub scope: Scope,
    /// Known end, as Unix seconds, for `retry-after`.
    pub until_unix: Option<i64>,
    /// The local reply body (a Cloud API error envelope).
    pub body: Bytes,
    /// Sequence number of the change that made it (see [`Table::durable_seq`]): a local
    /// answer given before that change is durable waits for it.
    pub seq: u64,
}

/// Where a change came from, for the listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Made on this replica: persist and publish.
    Local,
    /// Received from another replica (or loaded): persist only.
    Remote,
}

/// Sent to listeners after every applied change.
#[derive(Clone, Debug)]
pub struct Notice {
    /// The circuit after the change.
    pub circuit: Circuit,
    /// Who made it.
    pub origin: Origin,
    /// Table-wide sequence number of this change; stores report durability by it.
    pub seq: u64,
    /// The circuit's state or scope changed (not only its record): what a person hears of.
    pub transition: bool,
    /// The circuit was dropped from the table (a closed record past its retention, or over
    /// `max_circuits`): stores delete it.
    pub removed: bool,
}

/// Sent to mapping listeners after every phone → WABA mapping change.
#[derive(Clone, Debug)]
pub struct MappingNotice {
    /// The mapping after the change (`waba_id: None`: removed).
    pub mapping: Mapping,
    /// Who made it.
    pub origin: Origin,
    /// Table-wide sequence number (shared with circuit notices).
    pub seq: u64,
    /// The record was dropped (an old tombstone, or a learned entry over
    /// `discovery.max_learned`): stores delete it.
    pub removed: bool,
}

/// What keeps the table bounded and its times honest.
#[derive(Clone, Debug)]
pub struct Limits {
    /// An event dated later than now + this is ordered as if at now + this.
    pub max_clock_skew: Duration,
    /// Circuits kept; past it, closed records are dropped oldest first and new records
    /// other than opens are refused (an open is never refused: that would forget a block).
    pub max_circuits: usize,
    /// How long a closed record is kept (it stops an older open delivered late).
    pub closed_ttl: Duration,
    /// Codes whose phone-number circuits widen to the whole WABA once its owner is known
    /// (the account-level trip codes).
    pub widen_codes: Vec<i64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_clock_skew: Duration::from_secs(300),
            max_circuits: 100_000,
            closed_ttl: Duration::from_secs(7 * 24 * 3600),
            widen_codes: vec![368, 131031],
        }
    }
}

/// Every WABA's circuit.
pub struct Table {
    circuits: DashMap<Arc<str>, Circuit>,
    open: DashMap<Arc<str>, Arc<OpenGuard>>,
    /// Open phone-number circuits, by phone number, with their own count: a send reads this
    /// map only while one is open.
    open_phones: DashMap<GraphId, Arc<OpenGuard>>,
    open_phones_len: AtomicUsize,
    /// Open template circuits by their key (`template:{waba}:{name}:{language}`), the WABAs
    /// that have any with how many, and their count: a send reads these only while one is
    /// open (and then only for a WABA that has one).
    open_templates: DashMap<String, Arc<OpenGuard>>,
    template_wabas: DashMap<String, usize>,
    open_templates_len: AtomicUsize,
    /// At least `open.len()`: lets the hot path skip the map with one plain load when nothing
    /// is open (`DashMap::is_empty` read-locks every shard, a write to lines every core shares).
    open_len: AtomicUsize,
    origin: String,
    history_limit: usize,
    listeners: RwLock<Vec<mpsc::UnboundedSender<Notice>>>,
    seq: AtomicU64,
    durable: watch::Sender<u64>,
    /// The same watermark as `durable`, for the hot path (one load, no lock).
    durable_seq: AtomicU64,
    limits: Limits,
    /// Which WABA owns each phone number. A WABA it knows (configured, or one a phone number
    /// maps to) gets its notes recorded before its circuit ever opened; notes about any other
    /// WABA without a circuit are not (a signed flood of them would grow state without bound).
    directory: Directory,
    mapping_listeners: RwLock<Vec<mpsc::UnboundedSender<MappingNotice>>>,
    /// Rate-limits the log lines of ignored events.
    quiet: std::sync::Mutex<Quiet>,
}

/// Ignored events since the last summary line.
#[derive(Default)]
struct Quiet {
    unknown: u64,
    over_cap: u64,
    last: Option<std::time::Instant>,
}

impl Table {
    /// An empty table; `origin` names this replica in the ordering tie-break.
    pub fn new(origin: impl Into<String>, history_limit: usize) -> Table {
        Table::with_limits(
            origin,
            history_limit,
            Limits::default(),
            Directory::new([], 100_000),
        )
    }

    /// A table for `cfg`: its limits, and a directory seeded with `[[accounts]]`.
    pub fn for_config(origin: impl Into<String>, cfg: &crate::config::Config) -> Table {
        let limits = Limits {
            max_clock_skew: cfg.max_clock_skew,
            max_circuits: cfg.max_circuits,
            closed_ttl: cfg.redis_closed_ttl,
            widen_codes: cfg.trip_codes.clone(),
        };
        let directory = Directory::new(
            cfg.accounts
                .iter()
                .map(|a| (a.waba_id.as_str(), a.phone_number_ids.as_slice())),
            cfg.discovery.max_learned,
        );
        Table::with_limits(origin, cfg.history_limit, limits, directory)
    }

    /// An empty table with `limits`, resolving phone numbers with `directory`.
    pub fn with_limits(
        origin: impl Into<String>,
        history_limit: usize,
        limits: Limits,
        directory: Directory,
    ) -> Table {
        Table {
            circuits: DashMap::new(),
            open: DashMap::new(),
            open_len: AtomicUsize::new(0),
            open_phones: DashMap::new(),
            open_phones_len: AtomicUsize::new(0),
            open_templates: DashMap::new(),
            template_wabas: DashMap::new(),
            open_templates_len: AtomicUsize::new(0),
            origin: origin.into(),
            history_limit,
            listeners: RwLock::new(Vec::new()),
            seq: AtomicU64::new(0),
            durable: watch::channel(0).0,
            durable_seq: AtomicU64::new(0),
            limits,
            directory,
            mapping_listeners: RwLock::new(Vec::new()),
            quiet: std::sync::Mutex::new(Quiet::default()),
        }
    }

    /// The phone → WABA directory.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The hot path's resolve step: the WABA of a phone-number id.
    #[inline]
    pub fn resolve(&self, phone: &str) -> Option<Resolved> {
        self.directory.resolve(phone)
    }

    /// Registers a listener for every phone → WABA mapping change (stores).
    pub fn subscribe_mappings(&self) -> mpsc::UnboundedReceiver<MappingNotice> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut l) = self.mapping_listeners.write() {
            l.push(tx);
        }
        rx
    }

    /// Records a phone → WABA mapping made here (learned, or an operator's) by the
    /// directory's precedence rules; returns its sequence number (see
    /// [`Table::wait_durable`]) when it changed anything. A phone number's open circuit
    /// widens to the WABA now known to own it.
    pub fn learn(&self, mut m: Mapping) -> Option<u64> {
        m.origin = self.origin.clone();
        self.set_mapping(m, Origin::Local)
    }

    /// Merges a mapping from another replica or a store: kept only if newer.
    pub fn merge_mapping(&self, m: Mapping) -> bool {
        self.set_mapping(m, Origin::Remote).is_some()
    }

    fn set_mapping(&self, m: Mapping, origin: Origin) -> Option<u64> {
        let phone = m.phone_number_id.clone();
        let moved = match self.directory.set(m.clone(), origin == Origin::Remote) {
            Set::Recorded { moved } => moved,
            Set::Unchanged => return None,
        };
        let seq = self.notify_mapping(&m, origin, false);
        for gone in self.directory.take_evicted() {
            self.notify_mapping(&gone, Origin::Local, true);
        }
        if moved {
            if let Some(r) = self.directory.resolve(&phone) {
                self.widen(&phone, &r.waba);
            }
        }
        Some(seq)
    }

    fn notify_mapping(&self, m: &Mapping, origin: Origin, removed: bool) -> u64 {
        let seq = self.next_seq();
        let (configured, learned) = self.directory.counts();
        METRICS
            .phone_numbers_known
            .with_label_values(&["configured"])
            .set(configured as i64);
        METRICS
            .phone_numbers_known
            .with_label_values(&["learned"])
            .set(learned as i64);
        if let Ok(listeners) = self.mapping_listeners.read() {
            for l in listeners.iter() {
                let _ = l.send(MappingNotice {
                    mapping: m.clone(),
                    origin,
                    seq,
                    removed,
                });
            }
        }
        seq
    }

    /// A phone number's circuit, opened by an account-level code while its WABA was not
    /// known, widens to that WABA: the WABA opens with the same scope, code and end, the
    /// phone number's circuit closes (every phone of the WABA is then answered locally).
    fn widen(&self, phone: &str, waba: &str) {
        let Some(pc) = self.get(&super::model::key("", Some(phone))) else {
            return;
        };
        if !pc.is_open()
            || !pc.waba_id.is_empty()
            || !pc
                .code
                .is_some_and(|c| self.limits.widen_codes.contains(&c))
        {
            return;
        }
        let evidence = pc
            .history
            .iter()
            .rev()
            .find(|t| !t.note && t.to == State::Open)
            .and_then(|t| t.evidence.clone());
        tracing::warn!(
            phone_number_id = phone,
            waba_id = waba,
            "phone number's circuit widened to its WABA, now known: every phone of the WABA is answered locally"
        );
        self.apply(Change {
            waba_id: waba.to_string(),
            phone_number_id: None,
            template: None,
            action: Action::Open {
                scope: pc.scope,
                code: pc.code,
                until: pc.until,
            },
            source: pc.source,
            at: Utc::now(),
            reason: format!("widened from phone number {phone}: {}", pc.reason),
            evidence,
        });
        self.apply(Change {
            waba_id: String::new(),
            phone_number_id: Some(phone.to_string()),
            template: None,
            action: Action::Close,
            source: pc.source,
            at: Utc::now(),
            reason: format!("widened to WhatsApp Business Account {waba}"),
            evidence: None,
        });
    }

    /// Number of circuits (open and closed records).
    pub fn len(&self) -> usize {
        self.circuits.len()
    }

    /// True when there is no circuit.
    pub fn is_empty(&self) -> bool {
        self.circuits.is_empty()
    }

    /// Counts an ignored event and logs a summary at most once a minute.
    fn ignored(&self, reason: &'static str, waba_id: &str) {
        METRICS.events_ignored.with_label_values(&[reason]).inc();
        tracing::debug!(waba_id, reason, "event ignored");
        let Ok(mut q) = self.quiet.lock() else { return };
        match reason {
            "unknown_waba" => q.unknown += 1,
            _ => q.over_cap += 1,
        }
        if q.last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            tracing::warn!(
                notes_for_unknown_wabas = q.unknown,
                over_max_circuits = q.over_cap,
                max_circuits = self.limits.max_circuits,
                "events not recorded: notes about WABAs this gateway does not know (not configured, never opened), or new closed records past max_circuits (wa_breaker_events_ignored_total; summarised once a minute)"
            );
            *q = Quiet {
                last: Some(std::time::Instant::now()),
                ..Quiet::default()
            };
        }
    }

    /// This replica's id.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Registers a listener for every applied change (stores, pollers, timers).
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Notice> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut l) = self.listeners.write() {
            l.push(tx);
        }
        rx
    }

    /// Hot path: the open guard for a WABA, if its circuit is open. No allocation.
    #[inline]
    pub fn guard(&self, waba_id: &str) -> Option<Arc<OpenGuard>> {
        if self.open_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.open.get(waba_id).map(|g| Arc::clone(g.value()))
    }

    /// Hot path without reference counting: runs `f` on the open guard of a WABA, if its
    /// circuit is open (the map's shard stays read-locked meanwhile: keep `f` short).
    #[inline]
    pub fn with_guard<R>(&self, waba_id: &str, f: impl FnOnce(&OpenGuard) -> R) -> Option<R> {
        if self.open_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.open.get(waba_id).map(|g| f(g.value()))
    }

    /// Hot path: runs `f` on the open guard of a phone number's own circuit, if one is open.
    #[inline]
    pub fn with_phone_guard<R>(
        &self,
        phone: &GraphId,
        f: impl FnOnce(&OpenGuard) -> R,
    ) -> Option<R> {
        if self.open_phones_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.open_phones.get(phone).map(|g| f(g.value()))
    }

    /// Hot path: true when the WABA has an open template circuit (the send's body then
    /// decides). One load when none is open anywhere.
    #[inline]
    pub fn has_open_templates(&self, waba_id: &str) -> bool {
        self.open_templates_len.load(Ordering::Acquire) > 0
            && self.template_wabas.contains_key(waba_id)
    }

    /// Hot path: runs `f` on the open guard of a template of a WABA, if its circuit is open.
    pub fn with_template_guard<R>(
        &self,
        waba_id: &str,
        template: &super::model::TemplateRef,
        f: impl FnOnce(&OpenGuard) -> R,
    ) -> Option<R> {
        if !self.has_open_templates(waba_id) {
            return None;
        }
        self.open_templates
            .get(&super::model::template_key(waba_id, template))
            .map(|g| f(g.value()))
    }

    /// One circuit.
    pub fn get(&self, waba_id: &str) -> Option<Circuit> {
        self.circuits.get(waba_id).map(|c| c.value().clone())
    }

    /// All circuits, sorted by WABA id.
    pub fn list(&self) -> Vec<Circuit> {
        let mut v: Vec<Circuit> = self.circuits.iter().map(|c| c.value().clone()).collect();
        v.sort_by_key(Circuit::key);
        v
    }

    /// The sequence number of the last notified change.
    pub fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Called by the store once every change up to `seq` is durable.
    pub fn mark_durable(&self, seq: u64) {
        self.durable_seq.fetch_max(seq, Ordering::AcqRel);
        self.durable.send_if_modified(|d| {
            let newer = seq > *d;
            if newer {
                *d = seq;
            }
            newer
        });
    }

    /// Every change up to this sequence number is durable (committed to the embedded store).
    #[inline]
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq.load(Ordering::Acquire)
    }

    /// Waits until the change `seq` is durable; false on timeout (the change still applies).
    pub async fn wait_durable(&self, seq: u64, timeout: Duration) -> bool {
        let mut rx = self.durable.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|d| *d >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Number of open circuits.
    pub fn open_count(&self) -> usize {
        self.open.len() + self.open_phones.len() + self.open_templates.len()
    }

    /// Applies a local change by the ordering rule. Returns the circuit and the change's
    /// sequence number (see [`Table::wait_durable`]) when it changed.
    pub fn apply(&self, mut change: Change) -> Option<(Circuit, u64)> {
        let now = Utc::now();
        let key: Arc<str> = Arc::from(change.key().as_str());
        // A new record other than an open: bounded (see `Limits`). Checked before taking
        // the entry, so the map is not locked while counting.
        if !self.circuits.contains_key(&key) && !matches!(change.action, Action::Open { .. }) {
            if change.action == Action::Note && !self.directory.knows_waba(&change.waba_id) {
                self.ignored("unknown_waba", &change.waba_id);
                return None;
            }
            if self.circuits.len() >= self.limits.max_circuits {
                self.ignored("over_cap", &change.waba_id);
                return None;
            }
        }
        let entry = self.circuits.entry(key.clone());
        let current = match &entry {
            dashmap::Entry::Occupied(o) => Some(o.get()),
            dashmap::Entry::Vacant(_) => None,
        };
        // An event dated past now + max_clock_skew is ordered at that bound, so it cannot
        // pin a circuit; its own time is kept on the record. The same event delivered again
        // (Meta redelivers for days) is recognised by that time, not re-applied later.
        let limit =
            now + chrono::Duration::from_std(self.limits.max_clock_skew).unwrap_or_default();
        let mut clamped_from = None;
        if change.at > limit {
            let redelivered = current.is_some_and(|c| {
                c.history
                    .iter()
                    .any(|t| t.clamped_from == Some(change.at) && t.reason == change.reason)
            });
            if redelivered {
                tracing::debug!(waba_id = %change.waba_id, "clamped event delivered again: ignored");
                return None;
            }
            tracing::warn!(
                waba_id = %change.waba_id,
                event_time = %change.at.to_rfc3339_opts(SecondsFormat::Secs, true),
                ordered_at = %limit.to_rfc3339_opts(SecondsFormat::Secs, true),
                "event dated later than this clock allows (max_clock_skew): ordered at the bound"
            );
            clamped_from = Some(change.at);
            change.at = limit;
        }
        let was_open = current.is_some_and(|c| c.is_open());
        let outcome = decide(current, &change, &self.origin, self.history_limit, now);
        let (mut circuit, transition) = match outcome {
            Outcome::Applied {
                circuit,
                transition,
            } => (circuit, transition),
            Outcome::Ignored(why) => {
                tracing::debug!(waba_id = %change.waba_id, source = change.source.as_str(), why, "change ignored");
                return None;
            }
        };
        if let Some(from) = clamped_from {
            if let Some(t) = circuit.history.last_mut().filter(|t| t.at == change.at) {
                t.clamped_from = Some(from);
            }
        }
        // Update the hot-path view while holding the entry, so guard and view never disagree for long.
        let seq = self.next_seq();
        self.sync_guard(&key, &circuit, seq);
        let held = entry.insert(circuit.clone());
        if transition {
            log_transition(&circuit, was_open);
            METRICS
                .transitions
                .with_label_values(&[
                    &circuit.key(),
                    state_str(circuit.state),
                    circuit.source.as_str(),
                ])
                .inc();
        } else if let Some(t) = circuit
            .history
            .last()
            .filter(|t| t.note && t.at == change.at)
        {
            tracing::warn!(waba_id = %circuit.waba_id, source = t.source.as_str(), reason = %t.reason, "circuit event recorded (no state change)");
        }
        // Notified while the entry is held, so one WABA's notices arrive in order.
        self.notify(&circuit, Origin::Local, seq, transition, false);
        drop(held);
        // A phone number's circuit opened while its WABA was not known: maybe it is by now.
        if let (Some(p), true) = (&circuit.phone_number_id, transition && circuit.is_open()) {
            if let Some(r) = self.directory.resolve(p) {
                self.widen(p, &r.waba);
            }
        }
        Some((circuit, seq))
    }

    /// Merges a circuit from another replica or a store: kept only if newer.
    pub fn merge(&self, incoming: Circuit) -> bool {
        let key: Arc<str> = Arc::from(incoming.key().as_str());
        // Counted before the entry is taken: `len` read-locks every shard.
        let over_cap = !incoming.is_open() && self.circuits.len() >= self.limits.max_circuits;
        let entry = self.circuits.entry(key.clone());
        let (was_open, was_scope) = match &entry {
            dashmap::Entry::Occupied(o) => {
                if !newer(&incoming, o.get()) {
                    return false;
                }
                (o.get().is_open(), Some(o.get().scope))
            }
            dashmap::Entry::Vacant(_) => {
                // A closed record from elsewhere past the cap is not worth a place.
                if over_cap {
                    drop(entry);
                    self.ignored("over_cap", &incoming.waba_id);
                    return false;
                }
                (false, None)
            }
        };
        let seq = self.next_seq();
        self.sync_guard(&key, &incoming, seq);
        let transition = was_open != incoming.is_open()
            || (incoming.is_open() && was_scope != Some(incoming.scope));
        if was_open != incoming.is_open() {
            log_transition(&incoming, was_open);
        }
        let held = entry.insert(incoming.clone());
        self.notify(&incoming, Origin::Remote, seq, transition, false);
        drop(held);
        true
    }

    fn sync_guard(&self, key: &Arc<str>, c: &Circuit, seq: u64) {
        if c.template.is_some() {
            self.sync_template_guard(key, c, seq);
            return;
        }
        if let Some(phone) = c.phone_number_id.as_deref().and_then(GraphId::new) {
            if c.is_open() {
                self.open_phones_len.fetch_add(1, Ordering::AcqRel);
                if self
                    .open_phones
                    .insert(phone, Arc::new(build_guard(c, seq)))
                    .is_some()
                {
                    self.open_phones_len.fetch_sub(1, Ordering::AcqRel);
                }
                open_gauge(c, 1);
            } else if self.open_phones.remove(&phone).is_some() {
                self.open_phones_len.fetch_sub(1, Ordering::AcqRel);
                open_gauge(c, 0);
            }
            return;
        }
        // Count up before inserting and down after removing, so the count never reads low.
        if c.is_open() {
            self.open_len.fetch_add(1, Ordering::AcqRel);
            if self
                .open
                .insert(key.clone(), Arc::new(build_guard(c, seq)))
                .is_some()
            {
                self.open_len.fetch_sub(1, Ordering::AcqRel);
            }
            open_gauge(c, 1);
        } else if self.open.remove(key.as_ref()).is_some() {
            self.open_len.fetch_sub(1, Ordering::AcqRel);
            open_gauge(c, 0);
        }
    }

    /// [`Table::sync_guard`] for a template circuit (a map of its own, counted per WABA).
    fn sync_template_guard(&self, key: &Arc<str>, c: &Circuit, seq: u64) {
        if c.is_open() {
            let fresh = self
                .open_templates
                .insert(key.to_string(), Arc::new(build_guard(c, seq)))
                .is_none();
            if fresh {
                *self.template_wabas.entry(c.waba_id.clone()).or_insert(0) += 1;
                self.open_templates_len.fetch_add(1, Ordering::AcqRel);
            }
            open_gauge(c, 1);
        } else if self.open_templates.remove(key.as_ref()).is_some() {
            self.open_templates_len.fetch_sub(1, Ordering::AcqRel);
            let zero = match self.template_wabas.get_mut(&c.waba_id) {
                Some(mut n) => {
                    *n = n.saturating_sub(1);
                    *n == 0
                }
                None => false,
            };
            if zero {
                self.template_wabas.remove_if(&c.waba_id, |_, n| *n == 0);
            }
            open_gauge(c, 0);
        }
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn notify(&self, c: &Circuit, origin: Origin, seq: u64, transition: bool, removed: bool) {
        if let Ok(listeners) = self.listeners.read() {
            for l in listeners.iter() {
                let _ = l.send(Notice {
                    circuit: c.clone(),
                    origin,
                    seq,
                    transition,
                    removed,
                });
            }
        }
    }

    /// Drops closed records older than `closed_ttl`, then, past `max_circuits`, the oldest
    /// closed records (never an open circuit); stores are told to delete them. Returns how
    /// many were dropped. Run now and then, off the hot path.
    pub fn prune(&self, now: DateTime<Utc>) -> usize {
        let ttl =
            chrono::Duration::from_std(self.limits.closed_ttl).unwrap_or(chrono::Duration::MAX);
        let mut closed: Vec<(DateTime<Utc>, Arc<str>)> = self
            .circuits
            .iter()
            .filter(|c| !c.is_open())
            .map(|c| (c.updated_at, c.key().clone()))
            .collect();
        closed.sort();
        let over = self.circuits.len().saturating_sub(self.limits.max_circuits);
        let mut dropped = 0;
        for (i, (at, key)) in closed.into_iter().enumerate() {
            let expired = now - at > ttl;
            if !expired && i >= over {
                break;
            }
            // Removed only if still closed and unchanged since the scan.
            let gone = self
                .circuits
                .remove_if(&key, |_, c| !c.is_open() && c.updated_at == at);
            if let Some((_, c)) = gone {
                dropped += 1;
                let seq = self.next_seq();
                forget_series(&c);
                self.notify(&c, Origin::Local, seq, false, true);
            }
        }
        // Removals of phone → WABA mappings are remembered as long as closed records.
        if let Some(before) = now.checked_sub_signed(ttl) {
            for m in self.directory.prune_tombstones(before) {
                self.notify_mapping(&m, Origin::Local, true);
            }
        }
        if dropped > 0 {
            tracing::info!(
                dropped,
                circuits = self.circuits.len(),
                "closed circuit records dropped (past redis_closed_ttl or over max_circuits)"
            );
        }
        dropped
    }
}

/// `wa_breaker_circuit_open{waba_id}` for a WABA's circuit,
/// `wa_breaker_phone_circuit_open{phone_number_id}` for a phone number's.
fn open_gauge(c: &Circuit, v: i64) {
    if let Some(t) = &c.template {
        METRICS
            .template_circuit_open
            .with_label_values(&[&c.waba_id, &t.name, &t.language])
            .set(v);
        return;
    }
    match &c.phone_number_id {
        Some(p) => METRICS.phone_circuit_open.with_label_values(&[p]).set(v),
        None => METRICS.circuit_open.with_label_values(&[&c.waba_id]).set(v),
    }
}

/// Removes a dropped circuit's per-WABA metric series, so their number stays bounded too.
fn forget_series(c: &Circuit) {
    let key = c.key();
    let waba_id = key.as_str();
    if let Some(t) = &c.template {
        let _ =
            METRICS
                .template_circuit_open
                .remove_label_values(&[&c.waba_id, &t.name, &t.language]);
    }
    match &c.phone_number_id {
        Some(p) => {
            let _ = METRICS.phone_circuit_open.remove_label_values(&[p]);
        }
        None => {
            let _ = METRICS.circuit_open.remove_label_values(&[waba_id]);
        }
    }
    for to in ["open", "closed"] {
        for source in [
            Source::Send,
            Source::Webhook,
            Source::Health,
            Source::Admin,
            Source::Expiry,
        ] {
            let _ = METRICS
                .transitions
                .remove_label_values(&[waba_id, to, source.as_str()]);
        }
    }
}

fn state_str(s: State) -> &'static str {
    match s {
        State::Open => "open",
        State::Closed => "closed",
    }
}

fn log_transition(c: &Circuit, was_open: bool) {
    let fbtrace_id = c.history.last().and_then(|t| match &t.evidence {
        Some(Evidence::Send { fbtrace_id, .. }) => fbtrace_id.clone(),
        _ => None,
    });
    let until = c
        .until
        .map(|u| u.to_rfc3339_opts(SecondsFormat::Secs, true));
    tracing::warn!(
        waba_id = %c.waba_id,
        from = if was_open { "open" } else { "closed" },
        to = state_str(c.state),
        source = c.source.as_str(),
        scope = ?c.scope,
        code = c.code,
        fbtrace_id = fbtrace_id.as_deref(),
        until = until.as_deref(),
        reason = %c.reason,
        "circuit transition"
    );
}

/// Builds the local reply for an open circuit once, not per request (the body is made by
/// [`crate::policy::reply::local_body`], the one place local answers are worded).
fn build_guard(c: &Circuit, seq: u64) -> OpenGuard {
    OpenGuard {
        scope: c.scope,
        until_unix: c.until.map(|u: DateTime<Utc>| u.timestamp()),
        body: crate::policy::reply::local_body(c),
        seq,
    }
}
