//! The circuit table: the one place circuits change. Every change goes through
//! [`Table::apply`] (made here) or [`Table::merge`] (a replica's or the store's), under the
//! ordering rule ([`super::order`]); listeners (stores, pollers, timers, notifications) hear
//! of each. The parts, by reason to change:
//!
//! - [`guards`]: the hot path's view, the open circuits' guards (what a send reads);
//! - [`durable`]: the durable watermark and the bounded waits for it;
//! - [`mappings`]: phone → WABA learning and the widening it causes;
//! - [`report`]: gauges, the transition counter and log line, ignored-event summaries.

mod durable;
mod guards;
mod mappings;
mod report;

pub use durable::Waiter;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use dashmap::{DashMap, DashSet};
use tokio::sync::mpsc;

use super::cooldown::CooldownIndex;
use super::directory::{Directory, Mapping, Resolved};
use super::guard::OpenGuard;
use super::model::{Circuit, Source, Transition};
use super::order::{decide, newer, Action, Change, Outcome};
use super::pair::PairIndex;
use super::template::TemplateRef;
use crate::graph::GraphId;

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
    /// The change recorded this warning (a local [`Action::Warn`] that applied): what the
    /// notification sinks announce besides transitions.
    pub warning: Option<Box<super::model::Warning>>,
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
    /// Open circuits for keys a send chose — a phone number no WABA is known for, a template
    /// name — at most (`max_unknown_circuits`): past it, such an open for a circuit not open
    /// yet is refused (counted, summarised in the ignored-changes line). Opens of known
    /// WABAs and mapped phone numbers, and any signal's or operator's, never count.
    pub max_unknown: usize,
    /// How long a closed record is kept (it stops an older open delivered late).
    pub closed_ttl: Duration,
    /// A closed record younger than this is kept even past `max_circuits` (`max_event_age`:
    /// an event as old as this is still accepted, and must find the close that follows it).
    pub keep_closed: Duration,
    /// Codes whose phone-number circuits widen to the whole WABA once its owner is known
    /// (the account-level trip codes).
    pub widen_codes: Vec<i64>,
    /// Marketing cooldowns held at once (`shaping.max_cooldowns`): past it, a new one
    /// evicts the one that ends first (counted).
    pub max_cooldowns: usize,
    /// Pair hold records kept at once (`shaping.max_pairs`, kept per shard of the pair
    /// index): past it, a new pair evicts those past their reach, else the one whose reach
    /// ends first (counted).
    pub max_pairs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_clock_skew: Duration::from_secs(300),
            max_circuits: 100_000,
            max_unknown: 10_000,
            closed_ttl: Duration::from_secs(7 * 24 * 3600),
            keep_closed: Duration::from_secs(7 * 24 * 3600),
            widen_codes: crate::graph::codes::DEFAULT_TRIP_CODES.to_vec(),
            max_cooldowns: 100_000,
            max_pairs: 100_000,
        }
    }
}

/// Every circuit: WABAs', phone numbers', templates' and countries'.
pub struct Table {
    circuits: DashMap<Arc<str>, Circuit>,
    /// What the hot path reads.
    guards: guards::Guards,
    origin: String,
    history_limit: usize,
    listeners: RwLock<Vec<mpsc::UnboundedSender<Notice>>>,
    seq: AtomicU64,
    durable: durable::Durability,
    limits: Limits,
    /// Which WABA owns each phone number. A WABA it knows (configured, or one a phone number
    /// maps to) gets its notes recorded before its circuit ever opened; notes about any other
    /// WABA without a circuit are not (a signed flood of them would grow state without bound).
    directory: Directory,
    mapping_listeners: RwLock<Vec<mpsc::UnboundedSender<MappingNotice>>>,
    /// Rate-limits the log lines of ignored events.
    quiet: Mutex<report::Quiet>,
    /// Open circuits of keys a send chose (see [`Limits::max_unknown`]).
    unknown: DashSet<Arc<str>>,
    /// Which circuits have metric series of their own.
    series: report::Series,
    /// Rate-limits transition lines.
    bursts: Mutex<report::Bursts>,
}

/// True for a circuit whose key a send chose: a send's phone number of no known WABA, or a
/// send's template (see [`Limits::max_unknown`]). Not a pair hold (`recipient`): those
/// have their own cap (`max_pairs`).
fn chosen_by_send(
    source: Source,
    waba_id: &str,
    phone: Option<&str>,
    template: bool,
    recipient: bool,
) -> bool {
    source == Source::Send && !recipient && (template || (phone.is_some() && waba_id.is_empty()))
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

    /// An empty table with `limits`, resolving phone numbers with `directory`.
    pub fn with_limits(
        origin: impl Into<String>,
        history_limit: usize,
        limits: Limits,
        directory: Directory,
    ) -> Table {
        report::register_warning_kinds();
        Table {
            circuits: DashMap::new(),
            guards: guards::Guards::default(),
            origin: origin.into(),
            history_limit,
            listeners: RwLock::new(Vec::new()),
            seq: AtomicU64::new(0),
            durable: durable::Durability::default(),
            limits,
            directory,
            mapping_listeners: RwLock::new(Vec::new()),
            quiet: Mutex::new(report::Quiet::default()),
            unknown: DashSet::new(),
            series: report::Series::default(),
            bursts: Mutex::new(report::Bursts::default()),
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

    /// The hot path's resolve step, for an id the route step parsed once.
    #[inline]
    pub fn resolve_id(&self, phone: GraphId) -> Option<Resolved> {
        self.directory.resolve_id(phone)
    }

    /// Number of circuits (open and closed records).
    pub fn len(&self) -> usize {
        self.circuits.len()
    }

    /// True when there is no circuit.
    pub fn is_empty(&self) -> bool {
        self.circuits.is_empty()
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
        self.guards.waba(waba_id)
    }

    /// Hot path without reference counting: runs `f` on the open guard of a WABA, if its
    /// circuit is open (the map's shard stays read-locked meanwhile: keep `f` short).
    #[inline]
    pub fn with_guard<R>(&self, waba_id: &str, f: impl FnOnce(&OpenGuard) -> R) -> Option<R> {
        self.guards.with_waba(waba_id, f)
    }

    /// Hot path: runs `f` on the open guard of a phone number's own circuit, if one is open.
    #[inline]
    pub fn with_phone_guard<R>(
        &self,
        phone: &GraphId,
        f: impl FnOnce(&OpenGuard) -> R,
    ) -> Option<R> {
        self.guards.with_phone(phone, f)
    }

    /// Hot path: true when the WABA has an open template circuit (the send's body then
    /// decides). One load when none is open anywhere.
    #[inline]
    pub fn has_open_templates(&self, waba_id: &str) -> bool {
        self.guards.has_templates(waba_id)
    }

    /// Hot path: runs `f` on the open guard of a template of a WABA, if its circuit is open.
    pub fn with_template_guard<R>(
        &self,
        waba_id: &str,
        template: &TemplateRef,
        f: impl FnOnce(&OpenGuard) -> R,
    ) -> Option<R> {
        self.guards.with_template(waba_id, template, f)
    }

    /// Hot path: true when the WABA has an open country circuit (the send's recipient then
    /// decides). One load when none is open anywhere.
    #[inline]
    pub fn has_open_countries(&self, waba_id: &str) -> bool {
        self.guards.has_countries(waba_id)
    }

    /// Hot path: runs `f` on the open guard of a WABA's sends to calling code `code`, if
    /// that country circuit is open.
    pub fn with_country_guard<R>(
        &self,
        waba_id: &str,
        code: u16,
        f: impl FnOnce(&OpenGuard) -> R,
    ) -> Option<R> {
        self.guards.with_country(waba_id, code, f)
    }

    /// Hot path: the open marketing cooldowns and the templates' categories.
    #[inline]
    pub fn cooldowns(&self) -> &CooldownIndex {
        &self.guards.cooldowns
    }

    /// Hot path: the pair holds' records.
    #[inline]
    pub fn pairs(&self) -> &PairIndex {
        &self.guards.pairs
    }

    /// Records that count against `max_circuits`: every one but the holds (marketing
    /// cooldowns and pair holds have caps of their own, so a flood of them never pushes
    /// out a circuit's record). A closed cooldown not yet pruned counts for a minute.
    fn circuit_count(&self) -> usize {
        self.circuits
            .len()
            .saturating_sub(self.cooldowns().len() + self.pairs().len())
    }

    /// Past `max_pairs` (per shard of the pair index), the pair records past their reach
    /// are dropped, else the one whose reach ends first (stores delete them), to make room
    /// for the new pair `key` of `phone`. Returns how many were dropped.
    fn make_room_for_pair(&self, key: &str, phone: Option<&str>) -> usize {
        let Some(phone) = phone.and_then(GraphId::new) else {
            return 0;
        };
        if self.circuits.contains_key(key) {
            return 0;
        }
        let now = Utc::now();
        let mut evicted = 0;
        for (p, to) in self.pairs().victims(&phone, self.limits.max_pairs, now) {
            let victim = super::pair::key(p.as_str(), &to.to_string());
            let gone = self.circuits.remove_if(victim.as_str(), |_, c| c.is_pair());
            if let Some((k, c)) = gone {
                self.guards.forget(&k, &c);
                let seq = self.next_seq();
                self.notify(&c, Origin::Local, seq, false, true, None);
                evicted += 1;
            }
        }
        if evicted > 0 {
            crate::metrics::METRICS
                .shaping_pairs_evicted
                .inc_by(evicted as u64);
            tracing::debug!(
                evicted,
                max_pairs = self.limits.max_pairs,
                "pair holds dropped to stay within shaping.max_pairs"
            );
        }
        evicted
    }

    /// Past `max_cooldowns`, the open cooldown that ends first is dropped (stores delete
    /// it) to make room for a new one (key `key`). Returns how many were dropped.
    fn make_room_for_cooldown(&self, key: &str) -> usize {
        let idx = self.cooldowns();
        let mut evicted = 0;
        while idx.len() >= self.limits.max_cooldowns.max(1)
            && self.circuits.get(key).is_none_or(|c| !c.is_open())
        {
            let Some((victim, until)) = idx.soonest() else {
                break;
            };
            let gone = self.circuits.remove_if(victim.as_str(), |_, c| {
                c.is_open() && c.until == Some(until)
            });
            match gone {
                Some((k, c)) => {
                    self.guards.forget(&k, &c);
                    let seq = self.next_seq();
                    self.notify(&c, Origin::Local, seq, false, true, None);
                    evicted += 1;
                }
                // Changed since the scan (a race with another change): this one goes
                // over the cap; the next makes room.
                None => break,
            }
        }
        if evicted > 0 {
            crate::metrics::METRICS
                .shaping_cooldowns_evicted
                .inc_by(evicted as u64);
            tracing::info!(
                evicted,
                max_cooldowns = self.limits.max_cooldowns,
                "marketing cooldowns dropped (soonest-ending first) to stay within shaping.max_cooldowns"
            );
        }
        evicted
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

    /// The warnings the records hold (see [`super::model::Warning`]), newest first, with
    /// the WABA of each record (`waba_id`: only that WABA's). A record keeps its last
    /// `history_limit` entries, and a closed record lives `closed_ttl`: so do its warnings.
    pub fn warnings(&self, waba_id: Option<&str>) -> Vec<(String, Transition)> {
        let mut v: Vec<(String, Transition)> = self
            .circuits
            .iter()
            .filter(|c| waba_id.is_none_or(|w| c.waba_id == w))
            .flat_map(|c| {
                let waba = c.waba_id.clone();
                c.history
                    .iter()
                    .filter(|t| t.warning.is_some())
                    .map(move |t| (waba.clone(), t.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        v.sort_by(|a, b| b.1.at.cmp(&a.1.at).then_with(|| a.0.cmp(&b.0)));
        v
    }

    /// Number of open circuits.
    pub fn open_count(&self) -> usize {
        self.guards.count()
    }

    /// Number of open circuits whose key a send chose (see [`Limits::max_unknown`]).
    pub fn unknown_open_count(&self) -> usize {
        self.unknown.len()
    }

    /// Keeps the set of open circuits of keys a send chose in step with `c`.
    fn track_unknown(&self, key: &Arc<str>, c: &Circuit) {
        let chosen = chosen_by_send(
            c.source,
            &c.waba_id,
            c.phone_number_id.as_deref(),
            c.template.is_some(),
            c.recipient.is_some(),
        );
        if chosen && c.is_open() {
            self.unknown.insert(key.clone());
        } else {
            self.unknown.remove(key.as_ref());
        }
    }

    /// Applies a local change by the ordering rule. Returns the circuit and the change's
    /// sequence number (see [`Table::wait_durable`]) when it changed.
    pub fn apply(&self, mut change: Change) -> Option<(Circuit, u64)> {
        let now = Utc::now();
        let key: Arc<str> = Arc::from(change.key().as_str());
        // An open for a key a send chose, past `max_unknown` such open circuits: refused (the
        // send's answer still goes to the app), so no client grows the table by the ids it
        // makes up.
        // The slot is reserved before counting, so opens racing for the last slot cannot
        // both take it (each insert is seen by at least one of the counts); a reservation
        // the change does not use is given back below.
        let mut reserved = false;
        if matches!(change.action, Action::Open { .. })
            && chosen_by_send(
                change.source,
                &change.waba_id,
                change.phone_number_id.as_deref(),
                change.template.is_some(),
                change.recipient.is_some(),
            )
            && self.unknown.insert(key.clone())
        {
            if self.unknown.len() > self.limits.max_unknown {
                self.unknown.remove(key.as_ref());
                self.ignored("unknown_over_cap", &key);
                return None;
            }
            reserved = true;
        }
        let release = |key: &Arc<str>| {
            if reserved {
                self.unknown.remove(key.as_ref());
            }
        };
        // A new record other than an open: bounded (see `Limits`). Checked before taking
        // the entry, so the map is not locked while counting.
        if !self.circuits.contains_key(&key) && !matches!(change.action, Action::Open { .. }) {
            // Notes and warnings alike: any signed delivery can name any id, so only a
            // WABA something vouches for gets a record.
            if matches!(change.action, Action::Note | Action::Warn(_))
                && !self.directory.knows_waba(&change.waba_id)
            {
                self.ignored("unknown_waba", &change.waba_id);
                return None;
            }
            if change.recipient.is_none() && self.circuit_count() >= self.limits.max_circuits {
                self.ignored("over_cap", &change.waba_id);
                return None;
            }
        }
        if change.recipient.is_some()
            && change.template.is_none()
            && change.phone_number_id.is_none()
            && matches!(change.action, Action::Open { .. })
        {
            self.make_room_for_cooldown(&key);
        }
        if matches!(change.action, Action::PairHit { .. }) {
            self.make_room_for_pair(&key, change.phone_number_id.as_deref());
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
                drop(entry);
                release(&key);
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
        let warning = match &change.action {
            Action::Warn(w) => Some(Box::new(w.clone())),
            _ => None,
        };
        let (mut circuit, transition) = match outcome {
            Outcome::Applied {
                circuit,
                transition,
            } => (circuit, transition),
            Outcome::Ignored(why) => {
                tracing::debug!(waba_id = %change.waba_id, source = change.source.as_str(), why, "change ignored");
                drop(entry);
                release(&key);
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
        if let Some(open) = self.guards.sync(&key, &circuit, seq) {
            self.series.open_gauge(&key, &circuit, open);
        }
        self.track_unknown(&key, &circuit);
        let held = entry.insert(circuit.clone());
        if circuit.is_hold() || matches!(change.action, Action::Categorize { .. }) {
            // Holds and categories are many and routine: no transition line or counter
            // per recipient (`wa_breaker_shaping_cooldowns` and `wa_breaker_shaping_pairs`
            // count them). The key is not logged: a hold's names a recipient.
            tracing::debug!(waba_id = %circuit.waba_id, state = circuit.state.as_str(), reason = %circuit.reason, "hold or category recorded");
        } else if transition {
            self.report_transition(&key, &circuit, was_open);
        } else if let Some(w) = &warning {
            report::warning(&circuit, w, &change.reason);
        } else if let Some(t) = circuit
            .history
            .last()
            .filter(|t| t.note && t.at == change.at)
        {
            tracing::warn!(waba_id = %circuit.waba_id, source = t.source.as_str(), reason = %t.reason, "circuit event recorded (no state change)");
        }
        // Notified while the entry is held, so one WABA's notices arrive in order.
        self.notify(&circuit, Origin::Local, seq, transition, false, warning);
        drop(held);
        // A phone number's circuit opened while its WABA was not known: maybe it is by now.
        let widens = transition && circuit.is_open() && !circuit.is_hold();
        if let (Some(p), true) = (&circuit.phone_number_id, widens) {
            if let Some(r) = self.directory.resolve(p) {
                self.widen(p, &r.waba);
            }
        }
        Some((circuit, seq))
    }

    /// Merges a circuit from another replica or a store: kept only if newer.
    pub fn merge(&self, incoming: Circuit) -> bool {
        self.merge_logged(incoming, true)
    }

    /// [`Table::merge`] for a record the embedded store kept across a restart: not logged
    /// as a transition (nothing changed; the store logs one summary line of what it loaded).
    pub fn restore(&self, incoming: Circuit) -> bool {
        self.merge_logged(incoming, false)
    }

    fn merge_logged(&self, incoming: Circuit, log: bool) -> bool {
        let key: Arc<str> = Arc::from(incoming.key().as_str());
        // Counted before the entry is taken: `len` read-locks every shard.
        let over_cap = !incoming.is_open()
            && !incoming.is_hold()
            && self.circuit_count() >= self.limits.max_circuits;
        // A pair hold from another replica counts against this replica's cap too.
        if incoming.is_pair() {
            self.make_room_for_pair(&key, incoming.phone_number_id.as_deref());
        }
        let mut incoming = incoming;
        let mut origin = Origin::Remote;
        let entry = self.circuits.entry(key.clone());
        let (was_open, was_scope) = match &entry {
            dashmap::Entry::Occupied(o) => {
                if !newer(&incoming, o.get()) {
                    return false;
                }
                // Two pair holds recorded at once on two replicas: the later end and the
                // higher level win, ordered after both and published from here.
                if let Some(mut c) = super::pair::combine(&incoming, o.get()) {
                    c.origin = self.origin.clone();
                    incoming = c;
                    origin = Origin::Local;
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
        if let Some(open) = self.guards.sync(&key, &incoming, seq) {
            self.series.open_gauge(&key, &incoming, open);
        }
        self.track_unknown(&key, &incoming);
        let transition = was_open != incoming.is_open()
            || (incoming.is_open() && was_scope != Some(incoming.scope));
        if log && was_open != incoming.is_open() && !incoming.is_hold() {
            self.log_transition(&incoming, was_open);
        }
        let held = entry.insert(incoming.clone());
        self.notify(&incoming, origin, seq, transition, false, None);
        drop(held);
        true
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn notify(
        &self,
        c: &Circuit,
        origin: Origin,
        seq: u64,
        transition: bool,
        removed: bool,
        warning: Option<Box<super::model::Warning>>,
    ) {
        if let Ok(listeners) = self.listeners.read() {
            for l in listeners.iter() {
                let _ = l.send(Notice {
                    circuit: c.clone(),
                    origin,
                    seq,
                    transition,
                    removed,
                    warning: warning.clone(),
                });
            }
        }
    }

    /// Drops closed records older than `closed_ttl`, then, past `max_circuits`, the oldest
    /// closed records older than `keep_closed` (never an open circuit, never a close an
    /// accepted event could still precede); stores are told to delete them. Returns how
    /// many were dropped. Run now and then, off the hot path.
    pub fn prune(&self, now: DateTime<Utc>) -> usize {
        let ttl =
            chrono::Duration::from_std(self.limits.closed_ttl).unwrap_or(chrono::Duration::MAX);
        let keep =
            chrono::Duration::from_std(self.limits.keep_closed).unwrap_or(chrono::Duration::MAX);
        let mut closed: Vec<(DateTime<Utc>, Arc<str>, bool, bool)> = self
            .circuits
            .iter()
            .filter(|c| !c.is_open())
            // A closed pair hold within its reach stays: the next 131056 repeats it.
            .filter(|c| !c.is_pair() || c.pair.and_then(|p| p.reach).is_none_or(|r| r <= now))
            .map(|c| {
                let key = c.key().clone();
                (c.last_activity(), key, c.category.is_some(), c.is_hold())
            })
            .collect();
        closed.sort();
        let over = self
            .circuit_count()
            .saturating_sub(self.limits.max_circuits);
        let mut dropped = 0;
        for (i, (at, key, categorized, hold)) in closed.into_iter().enumerate() {
            // A template's category outlives `closed_ttl` (it stays true for months);
            // only `max_circuits` drops such a record. An ended marketing cooldown goes at
            // once: a late status cannot re-open it (its end follows from the status's own
            // time, already past), and thousands of them must not crowd `max_circuits`. So
            // does an ended pair hold past its reach (or ended by a delivery): a late
            // 131056 starts a first hold again, which is the rule past the reach.
            let expired = (now - at > ttl && !categorized) || hold;
            if !expired && (i >= over || now - at <= keep) {
                // Not this one; a newer ended cooldown may still go.
                continue;
            }
            // Removed only if still closed and unchanged since the scan.
            let gone = self
                .circuits
                .remove_if(&key, |_, c| !c.is_open() && c.last_activity() == at);
            if let Some((_, c)) = gone {
                dropped += 1;
                let seq = self.next_seq();
                self.unknown.remove(key.as_ref());
                self.guards.forget(&key, &c);
                if !c.is_hold() {
                    self.series.forget(&key, &c);
                }
                self.notify(&c, Origin::Local, seq, false, true, None);
            }
        }
        // Removals of phone → WABA mappings are remembered as long as closed records.
        if let Some(before) = now.checked_sub_signed(ttl) {
            for m in self.directory.prune_tombstones(before) {
                self.notify_mapping(&m, Origin::Local, true);
            }
        }
        self.flush_bursts();
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

#[cfg(test)]
mod tests {
    use super::{Action, Change, Directory, Limits, Table};
    use crate::circuit::testing::open;
    use crate::circuit::{Scope, Source};

    const WABA: &str = "102290129340398";
    const PHONE: &str = "106540352242922";

    fn table(max_unknown: usize) -> Table {
        let phones = [PHONE.to_string()];
        let limits = Limits {
            max_unknown,
            ..Limits::default()
        };
        Table::with_limits("t", 5, limits, Directory::new([(WABA, &phones[..])], 100))
    }

    /// A send's open for a phone number of no known WABA.
    fn unknown_phone(p: &str, action: Action) -> Change {
        Change {
            phone_number_id: Some(p.into()),
            action,
            ..open("", Scope::AllSends, None, Source::Send)
        }
    }

    #[test]
    fn opens_for_keys_a_send_chose_stop_at_their_cap_and_known_ones_do_not() {
        let t = table(2);
        let open_action = open("", Scope::AllSends, None, Source::Send).action;
        for p in ["900000000000001", "900000000000002", "900000000000003"] {
            t.apply(unknown_phone(p, open_action.clone()));
        }
        assert_eq!(t.unknown_open_count(), 2);
        assert!(
            t.get("phone:900000000000003").is_none(),
            "refused past the cap"
        );
        // A known WABA, and an operator's open of any phone number, still open.
        assert!(t
            .apply(open(WABA, Scope::AllSends, None, Source::Send))
            .is_some());
        let admin = Change {
            source: Source::Admin,
            ..unknown_phone("900000000000004", open_action.clone())
        };
        assert!(t.apply(admin).is_some());
        // A close frees a place.
        t.apply(unknown_phone("900000000000001", Action::Close));
        assert_eq!(t.unknown_open_count(), 1);
        assert!(t
            .apply(unknown_phone("900000000000003", open_action))
            .is_some());
        assert_eq!(t.unknown_open_count(), 2);
    }

    /// Opens racing for the last places never take more than the cap (the integration test
    /// `bounds::…` saw 1 501 of 1 500 under load before the slot was reserved first).
    #[test]
    fn racing_opens_never_pass_the_cap() {
        for _ in 0..20 {
            let t = table(50);
            let open_action = open("", Scope::AllSends, None, Source::Send).action;
            std::thread::scope(|s| {
                for w in 0..8u64 {
                    let (t, open_action) = (&t, open_action.clone());
                    s.spawn(move || {
                        for i in 0..40u64 {
                            let p = format!("9{:014}", w * 1000 + i);
                            t.apply(unknown_phone(&p, open_action.clone()));
                        }
                    });
                }
            });
            assert_eq!(t.unknown_open_count(), 50);
            assert_eq!(t.open_count(), 50);
        }
    }
}

#[cfg(test)]
mod retention {
    use super::{Action, Change, Directory, Limits, Table};
    use crate::circuit::testing::open;
    use crate::circuit::{Scope, Source, Warning, WarningKind};
    use chrono::Utc;

    const WABA: &str = "102290129340398";

    /// A record that only holds notes or warnings (its circuit never opened) is kept as long
    /// as a closed record is, counted from its newest entry — not dropped at the next prune
    /// because its ordering time never moved.
    #[test]
    fn a_record_of_notes_lives_as_long_as_a_closed_one() {
        let phones = ["106540352242922".to_string()];
        let t = Table::with_limits(
            "t",
            5,
            Limits::default(),
            Directory::new([(WABA, &phones[..])], 100),
        );
        let now = Utc::now();
        for (i, action) in [
            Action::Note,
            Action::Warn(Warning::new(WarningKind::AccountViolation)),
        ]
        .into_iter()
        .enumerate()
        {
            t.apply(Change {
                action,
                at: now,
                reason: format!("event {i}"),
                ..open(WABA, Scope::AllSends, None, Source::Webhook)
            });
            assert_eq!(t.prune(now + chrono::Duration::seconds(60)), 0);
            assert_eq!(t.get(WABA).map(|c| c.history.len()), Some(i + 1), "kept");
        }
        assert_eq!(t.warnings(Some(WABA)).len(), 1);
        // Past closed_ttl (7 days) after its newest entry, it goes.
        assert_eq!(t.prune(now + chrono::Duration::days(8)), 1);
        assert!(t.get(WABA).is_none());
    }
}
