//! Everything that opens or closes circuits from outside the hot path:
//! Meta's webhooks ([`webhook`]), Health Status polls ([`health`]) and expiry timers
//! ([`expiry`]).
//!
//! [`start`] runs one supervisor task that follows every circuit change
//! ([`Table::subscribe`], including changes that arrive from other replicas) and keeps, per
//! open circuit, a health poll loop (when a token is configured) and an expiry timer (when
//! the circuit has an `until`). Closing a circuit, from any source, stops both; a new
//! `until` re-arms the timer. Circuits an operator opened are not polled: the operator's
//! decision stands until an operator, a webhook or its `until` ends it. Template circuits
//! are not polled either (Meta's template state, closed by its webhook). WABA circuits and
//! phone-number circuits (`phone:{id}`, polled on the phone-number node) are; with Redis,
//! one replica of the fleet polls each ([`fleet`]). Circuits loaded from the store before
//! start are scanned first, so a restriction whose end passed while the gateway was down
//! expires at once.

pub mod budget;
pub mod discovery;
pub mod expiry;
pub mod fleet;
pub mod health;
pub mod replicas;
pub mod throughput;
pub mod webhook;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;

use crate::circuit::{Circuit, Origin, Source, Table, WarningKind};
use crate::config::{Config, HealthConfig, WarningsConfig};
use crate::upstream::Target;
use health::HealthChecker;

/// The running signal tasks, and what the webhook receiver shares with them.
pub struct Signals {
    health: Option<Arc<HealthChecker>>,
    discovery: Option<discovery::Hints>,
    budget: Option<budget::Budget>,
}

impl Signals {
    /// The Health Status checker (with its global concurrency limit), when a token is set.
    pub fn health(&self) -> Option<Arc<HealthChecker>> {
        self.health.clone()
    }

    /// The hot path's handle on discovery, when it runs.
    pub fn discovery(&self) -> Option<discovery::Hints> {
        self.discovery.clone()
    }

    /// The messaging-limit count, when `messaging_limit.enabled`.
    pub fn budget(&self) -> Option<budget::Budget> {
        self.budget.clone()
    }
}

/// Starts the background signal tasks (health poller, expiry timers). Call after the
/// store has loaded state into `table`, inside the runtime.
pub fn start(
    cfg: &Config,
    target: &Target,
    table: Arc<Table>,
    levels: Option<throughput::Levels>,
) -> Signals {
    let checker = HealthChecker::new(cfg, target);
    if checker.is_none() {
        tracing::info!("no health.access_token: Health Status polling is off (webhooks, expiry and operators still close circuits)");
    }
    let discovery = discovery::start(cfg, target, table.clone(), levels);
    let budget = budget::Budget::start(cfg, table.clone());
    let mut rx = table.subscribe();
    let initial = table.list();
    let gate = fleet::PollGate::new(cfg, table.origin());
    if checker.is_some() {
        tracing::info!(
            fleet_wide = gate.is_shared(),
            lease_ms = cfg.health.lease().as_millis() as u64,
            hourly_budget = cfg.health.hourly_budget,
            "health polling: one replica per circuit through redis leases when fleet_wide, within hourly_budget polls per WABA"
        );
    }
    let holds = cfg.warnings.clone();
    let mut watchers = Watchers {
        table,
        checker: checker.clone(),
        gate,
        health: cfg.health.clone(),
        polls: HashMap::new(),
        timers: HashMap::new(),
    };
    tokio::spawn(async move {
        for c in &initial {
            watchers.update(c);
        }
        while let Some(notice) = rx.recv().await {
            if notice.removed {
                // Dropped from the table (pruned, or a hold evicted past its cap): no
                // timer or poller may outlive it.
                watchers.forget(&notice.circuit.key());
                continue;
            }
            watchers.update(&notice.circuit);
            if let (Origin::Local, Some(w)) = (notice.origin, &notice.warning) {
                hold_marketing(&watchers.table, &holds, &notice.circuit, w.kind);
            }
        }
    });
    Signals {
        health: checker,
        discovery,
        budget,
    }
}

/// The opt-in hold of a WABA's MARKETING templates after a warning this replica recorded
/// (`[warnings] hold_marketing`; once per fleet, as the warning is): only while the WABA's
/// circuit is closed — a wider block is never narrowed.
fn hold_marketing(table: &Table, cfg: &WarningsConfig, record: &Circuit, kind: WarningKind) {
    if !cfg.hold_marketing.contains(&kind) || record.waba_id.is_empty() {
        return;
    }
    if table.get(&record.waba_id).is_some_and(|c| c.is_open()) {
        tracing::info!(waba_id = %record.waba_id, kind = kind.as_str(), "warning with a marketing hold: the WABA's circuit is already open, left as it is");
        return;
    }
    let at = record
        .history
        .iter()
        .rev()
        .find(|t| t.warning.as_ref().is_some_and(|w| w.kind == kind))
        .map_or_else(Utc::now, |t| t.at);
    table.apply(crate::policy::warning::marketing_hold(
        &record.waba_id,
        kind,
        at,
        cfg.hold_for,
    ));
}

/// A spawned task, aborted when dropped.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Per-WABA poll loops and expiry timers; owned by the supervisor task alone.
struct Watchers {
    table: Arc<Table>,
    checker: Option<Arc<HealthChecker>>,
    gate: Arc<fleet::PollGate>,
    health: HealthConfig,
    polls: HashMap<String, Task>,
    /// The `until` each timer was armed for. A finished timer stays here so the same
    /// `until` is not armed twice (an expiry held open by BLOCKED is the poller's job).
    timers: HashMap<String, (DateTime<Utc>, Task)>,
}

impl Watchers {
    fn update(&mut self, c: &Circuit) {
        let key = c.key();
        let id = &key;
        if !c.is_open() {
            self.stop_polling(id);
            self.timers.remove(id);
            return;
        }
        match &self.checker {
            // An operator's open stands until an operator (or its `until`) ends it.
            // A template's circuit is Meta's template state, not the WABA's health: closed by
            // its webhook, its known end or an operator.
            // A country's circuit likewise: Health Status does not report countries.
            // A marketing cooldown or a pair hold is a hold with a known end: its timer
            // closes it.
            Some(_)
                if c.source == Source::Admin
                    || c.template.is_some()
                    || c.country.is_some()
                    || c.is_hold() =>
            {
                self.stop_polling(id);
            }
            Some(checker) if self.polls.get(id).is_none_or(|t| t.0.is_finished()) => {
                let task = tokio::spawn(health::poll_loop(
                    self.table.clone(),
                    checker.clone(),
                    self.gate.clone(),
                    self.health.clone(),
                    id.clone(),
                ));
                tracing::debug!(circuit = %id, "health polling started");
                self.polls.insert(id.clone(), Task(task));
            }
            _ => {}
        }
        match c.until {
            Some(until) if self.timers.get(id).is_some_and(|(u, _)| *u == until) => {}
            Some(until) => {
                let task = tokio::spawn(expiry::expire_at(
                    self.table.clone(),
                    self.checker.clone(),
                    id.clone(),
                    until,
                ));
                self.timers.insert(id.clone(), (until, Task(task)));
            }
            None => {
                self.timers.remove(id);
            }
        }
    }

    /// Forgets a record dropped from the table.
    fn forget(&mut self, key: &str) {
        self.stop_polling(key);
        self.timers.remove(key);
    }

    /// Stops `key`'s poll loop, if one runs, and drops its lease (when this replica
    /// holds it) so the fleet need not wait for it to lapse. (The loop also releases on
    /// its own way out; aborted mid-release, this one finishes the job.)
    fn stop_polling(&mut self, key: &str) {
        if self.polls.remove(key).is_some() && self.gate.is_shared() {
            let gate = self.gate.clone();
            let key = key.to_string();
            tokio::spawn(async move { gate.release(&key).await });
        }
    }
}
