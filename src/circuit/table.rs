//! The circuit table: the one place circuits change. The hot path reads `open`;
//! every change goes through [`Table::apply`] (local) or [`Table::merge`] (a replica's).

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::model::{Circuit, Evidence, Scope, State};
use super::order::{decide, newer, Change, Outcome};
use crate::graph::envelope;
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
}

/// Every WABA's circuit.
pub struct Table {
    circuits: DashMap<Arc<str>, Circuit>,
    open: DashMap<Arc<str>, Arc<OpenGuard>>,
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
}

impl Table {
    /// An empty table; `origin` names this replica in the ordering tie-break.
    pub fn new(origin: impl Into<String>, history_limit: usize) -> Table {
        Table {
            circuits: DashMap::new(),
            open: DashMap::new(),
            open_len: AtomicUsize::new(0),
            origin: origin.into(),
            history_limit,
            listeners: RwLock::new(Vec::new()),
            seq: AtomicU64::new(0),
            durable: watch::channel(0).0,
            durable_seq: AtomicU64::new(0),
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

    /// One circuit.
    pub fn get(&self, waba_id: &str) -> Option<Circuit> {
        self.circuits.get(waba_id).map(|c| c.value().clone())
    }

    /// All circuits, sorted by WABA id.
    pub fn list(&self) -> Vec<Circuit> {
        let mut v: Vec<Circuit> = self.circuits.iter().map(|c| c.value().clone()).collect();
        v.sort_by(|a, b| a.waba_id.cmp(&b.waba_id));
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
        self.open.len()
    }

    /// Applies a local change by the ordering rule. Returns the circuit and the change's
    /// sequence number (see [`Table::wait_durable`]) when it changed.
    pub fn apply(&self, change: Change) -> Option<(Circuit, u64)> {
        let key: Arc<str> = Arc::from(change.waba_id.as_str());
        let entry = self.circuits.entry(key.clone());
        let current = match &entry {
            dashmap::Entry::Occupied(o) => Some(o.get()),
            dashmap::Entry::Vacant(_) => None,
        };
        let was_open = current.is_some_and(|c| c.is_open());
        let outcome = decide(
            current,
            &change,
            &self.origin,
            self.history_limit,
            Utc::now(),
        );
        let (circuit, transition) = match outcome {
            Outcome::Applied {
                circuit,
                transition,
            } => (circuit, transition),
            Outcome::Ignored(why) => {
                tracing::debug!(waba_id = %change.waba_id, source = change.source.as_str(), why, "change ignored");
                return None;
            }
        };
        // Update the hot-path view while holding the entry, so guard and view never disagree for long.
        let seq = self.next_seq();
        self.sync_guard(&key, &circuit, seq);
        let held = entry.insert(circuit.clone());
        if transition {
            log_transition(&circuit, was_open);
            METRICS
                .transitions
                .with_label_values(&[
                    &circuit.waba_id,
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
        self.notify(&circuit, Origin::Local, seq, transition);
        drop(held);
        Some((circuit, seq))
    }

    /// Merges a circuit from another replica or a store: kept only if newer.
    pub fn merge(&self, incoming: Circuit) -> bool {
        let key: Arc<str> = Arc::from(incoming.waba_id.as_str());
        let entry = self.circuits.entry(key.clone());
        let (was_open, was_scope) = match &entry {
            dashmap::Entry::Occupied(o) => {
                if !newer(&incoming, o.get()) {
                    return false;
                }
                (o.get().is_open(), Some(o.get().scope))
            }
            dashmap::Entry::Vacant(_) => (false, None),
        };
        let seq = self.next_seq();
        self.sync_guard(&key, &incoming, seq);
        let transition = was_open != incoming.is_open()
            || (incoming.is_open() && was_scope != Some(incoming.scope));
        if was_open != incoming.is_open() {
            log_transition(&incoming, was_open);
        }
        let held = entry.insert(incoming.clone());
        self.notify(&incoming, Origin::Remote, seq, transition);
        drop(held);
        true
    }

    fn sync_guard(&self, key: &Arc<str>, c: &Circuit, seq: u64) {
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
            METRICS.circuit_open.with_label_values(&[&c.waba_id]).set(1);
        } else if self.open.remove(key.as_ref()).is_some() {
            self.open_len.fetch_sub(1, Ordering::AcqRel);
            METRICS.circuit_open.with_label_values(&[&c.waba_id]).set(0);
        }
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn notify(&self, c: &Circuit, origin: Origin, seq: u64, transition: bool) {
        if let Ok(listeners) = self.listeners.read() {
            for l in listeners.iter() {
                let _ = l.send(Notice {
                    circuit: c.clone(),
                    origin,
                    seq,
                    transition,
                });
            }
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

/// Builds the local reply for an open circuit once, not per request.
fn build_guard(c: &Circuit, seq: u64) -> OpenGuard {
    let code = c.code.unwrap_or(368);
    let since = c
        .opened_at
        .unwrap_or(c.updated_at)
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    let until = c
        .until
        .map(|u| format!(" until {}", u.to_rfc3339_opts(SecondsFormat::Secs, true)))
        .unwrap_or_default();
    let details = format!(
        "wa-breaker answered locally; the request was not sent to Meta. The circuit for WhatsApp Business Account {} has been open since {since}{until} (source: {}).",
        c.waba_id,
        c.source.as_str()
    );
    OpenGuard {
        scope: c.scope,
        until_unix: c.until.map(|u: DateTime<Utc>| u.timestamp()),
        body: envelope::build(
            code,
            None,
            "OAuthException",
            envelope::title_for(code),
            &details,
        ),
        seq,
    }
}
