//! What the table tells people and Prometheus: the open gauges, the transition counter and
//! log line (values spelled as the configuration and JSON spell them), and the summary of
//! ignored events.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::SecondsFormat;
use dashmap::DashMap;

use super::Table;
use crate::circuit::model::{Circuit, Evidence, Source, Warning};
use crate::metrics::METRICS;

/// Every kind's series exists from the start (at 0), so an alert on its increase sees
/// the first one.
pub(super) fn register_warning_kinds() {
    for k in crate::circuit::model::WarningKind::ALL {
        METRICS.warnings.with_label_values(&[k.as_str()]);
    }
}

/// A warning this replica recorded: counted by kind and logged once (a redelivery is not
/// recorded again, so not logged again).
pub(super) fn warning(c: &Circuit, w: &Warning, reason: &str) {
    METRICS.warnings.with_label_values(&[w.kind.as_str()]).inc();
    tracing::warn!(
        waba_id = %c.waba_id,
        kind = w.kind.as_str(),
        template = w.template.as_ref().map(|t| t.name.as_str()),
        phone_number_id = w.phone_number_id.as_deref(),
        detail = w.detail.as_deref(),
        reason,
        "warning recorded (sends are not blocked)"
    );
}

/// Phone-number circuits of an unknown WABA and template circuits (keys a send chose) with
/// metric series of their own, at most; further ones are counted in the `other` series
/// (`phone_number_id="other"`, `waba_id,template,language="other"`, and
/// `wa_breaker_circuit_transitions_total{waba_id="other"}`).
pub const MAX_OWN_SERIES: usize = 1_000;

/// The label every circuit past [`MAX_OWN_SERIES`] shares.
const OTHER: &str = "other";

/// Which circuits have metric series of their own: a WABA's circuit and a phone number's
/// of a known WABA always; others (keys a send chose) while fewer than [`MAX_OWN_SERIES`]
/// have them. Decided once per circuit (so its open gauge is set and unset in one series)
/// and forgotten with the circuit.
#[derive(Default)]
pub(super) struct Series {
    decided: DashMap<Arc<str>, bool>,
    owned: AtomicUsize,
}

impl Series {
    /// True when `c` (key `key`) has series of its own.
    fn own(&self, key: &Arc<str>, c: &Circuit) -> bool {
        let chosen = c.template.is_some() || (c.phone_number_id.is_some() && c.waba_id.is_empty());
        if !chosen {
            return true;
        }
        if let Some(d) = self.decided.get(key.as_ref()) {
            return *d;
        }
        *self.decided.entry(key.clone()).or_insert_with(|| {
            self.owned
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < MAX_OWN_SERIES).then_some(n + 1)
                })
                .is_ok()
        })
    }

    /// The open gauge of `c` after its open state in the hot path's view changed to `open`:
    /// `wa_breaker_circuit_open{waba_id}` for a WABA's circuit,
    /// `wa_breaker_phone_circuit_open{phone_number_id}` for a phone number's,
    /// `wa_breaker_template_circuit_open{waba_id,template,language}` for a template's,
    /// `wa_breaker_country_circuit_open{waba_id,country}` for a country's — or
    /// the `other` series, which counts the open ones without a series of their own.
    pub(super) fn open_gauge(&self, key: &Arc<str>, c: &Circuit, open: bool) {
        let own = self.own(key, c);
        let set = |g: prometheus::IntGauge| {
            if own {
                g.set(i64::from(open));
            } else if open {
                g.inc();
            } else {
                g.dec();
            }
        };
        if let Some(t) = &c.template {
            let labels = if own {
                [c.waba_id.as_str(), &t.name, &t.language]
            } else {
                [OTHER; 3]
            };
            set(METRICS.template_circuit_open.with_label_values(&labels));
            return;
        }
        if let Some(code) = &c.country {
            set(METRICS
                .country_circuit_open
                .with_label_values(&[c.waba_id.as_str(), code]));
            return;
        }
        match &c.phone_number_id {
            Some(p) => {
                set(METRICS
                    .phone_circuit_open
                    .with_label_values(&[if own { p } else { OTHER }]))
            }
            None => set(METRICS.circuit_open.with_label_values(&[&c.waba_id])),
        }
    }

    /// A transition counted in `wa_breaker_circuit_transitions_total`.
    pub(super) fn transition(&self, key: &Arc<str>, c: &Circuit) {
        let label = if self.own(key, c) {
            key.as_ref()
        } else {
            OTHER
        };
        METRICS
            .transitions
            .with_label_values(&[label, c.state.as_str(), c.source.as_str()])
            .inc();
    }

    /// Removes a dropped circuit's metric series (and its place among those with series of
    /// their own), so their number stays bounded too.
    pub(super) fn forget(&self, key: &Arc<str>, c: &Circuit) {
        let own = match self.decided.remove(key.as_ref()) {
            Some((_, own)) => {
                if own {
                    self.owned.fetch_sub(1, Ordering::AcqRel);
                }
                own
            }
            None => self.own(key, c),
        };
        if !own {
            return;
        }
        if let Some(t) = &c.template {
            let _ = METRICS.template_circuit_open.remove_label_values(&[
                &c.waba_id,
                &t.name,
                &t.language,
            ]);
        }
        if let Some(code) = &c.country {
            let _ = METRICS
                .country_circuit_open
                .remove_label_values(&[c.waba_id.as_str(), code]);
        }
        match &c.phone_number_id {
            Some(p) => {
                let _ = METRICS.phone_circuit_open.remove_label_values(&[p]);
            }
            None => {
                let _ = METRICS.circuit_open.remove_label_values(&[key]);
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
                    .remove_label_values(&[key, to, source.as_str()]);
            }
        }
    }
}

/// Transition lines logged one by one in a [`BURST_WINDOW`], at most; past it, they are
/// counted and summarised in one line when the window ends.
pub const BURST_LINES: u32 = 20;

/// See [`BURST_LINES`].
pub const BURST_WINDOW: Duration = Duration::from_secs(10);

/// Transition lines of the current window.
#[derive(Default)]
pub(super) struct Bursts {
    since: Option<Instant>,
    lines: u32,
    held: u64,
}

impl Bursts {
    /// Starts a new window when the current one is over, logging the summary of the lines
    /// it held back.
    fn roll(&mut self, now: Instant) {
        if self
            .since
            .is_some_and(|s| now.duration_since(s) < BURST_WINDOW)
        {
            return;
        }
        if self.held > 0 {
            tracing::warn!(
                transitions = self.held,
                logged = self.lines,
                window_secs = BURST_WINDOW.as_secs(),
                "circuit transitions not logged one by one: more than {BURST_LINES} in the window (all counted in wa_breaker_circuit_transitions_total and listed by GET /admin/circuits)"
            );
        }
        *self = Bursts {
            since: Some(now),
            ..Bursts::default()
        };
    }
}

impl Table {
    /// A transition made here: counted, and logged (see [`Table::log_transition`]).
    pub(super) fn report_transition(&self, key: &Arc<str>, c: &Circuit, was_open: bool) {
        self.series.transition(key, c);
        self.log_transition(c, was_open);
    }

    /// The log line of a transition, unless more than [`BURST_LINES`] came in this window
    /// (then it is counted in the window's summary line).
    pub(super) fn log_transition(&self, c: &Circuit, was_open: bool) {
        if let Ok(mut b) = self.bursts.lock() {
            b.roll(Instant::now());
            if b.lines >= BURST_LINES {
                b.held += 1;
                return;
            }
            b.lines += 1;
        }
        log_transition(c, was_open);
    }

    /// Logs the summary of a burst that ended with no transition since (run now and then).
    pub(super) fn flush_bursts(&self) {
        if let Ok(mut b) = self.bursts.lock() {
            b.roll(Instant::now());
        }
    }
}

/// The log line of a transition (no metric: a replica's or the store's record).
fn log_transition(c: &Circuit, was_open: bool) {
    let fbtrace_id = c.history.last().and_then(|t| match &t.evidence {
        Some(Evidence::Send { fbtrace_id, .. }) => fbtrace_id.clone(),
        _ => None,
    });
    let until = c
        .until
        .map(|u| u.to_rfc3339_opts(SecondsFormat::Secs, true));
    // Values as the configuration and the JSON spell them, unquoted; ids only when known.
    use tracing::field::display;
    let waba_id = (!c.waba_id.is_empty()).then_some(display(&c.waba_id));
    let template = c
        .template
        .as_ref()
        .map(|t| display(format!("{}:{}", t.name, t.language)));
    tracing::warn!(
        waba_id,
        phone_number_id = c.phone_number_id.as_deref().map(display),
        template,
        country = c.country.as_deref().map(display),
        from = %if was_open { "open" } else { "closed" },
        to = %c.state.as_str(),
        source = %c.source.as_str(),
        scope = %c.scope.as_str(),
        code = c.code,
        fbtrace_id = fbtrace_id.as_deref().map(display),
        until = until.as_deref().map(display),
        reason = %c.reason,
        "circuit transition"
    );
}

/// Ignored events since the last summary line.
#[derive(Default)]
pub(super) struct Quiet {
    unknown: u64,
    over_cap: u64,
    unknown_over_cap: u64,
    last: Option<Instant>,
}

impl Table {
    /// Counts an ignored change and logs a summary at most once a minute.
    pub(super) fn ignored(&self, reason: &'static str, key: &str) {
        METRICS.events_ignored.with_label_values(&[reason]).inc();
        tracing::debug!(key, reason, "change ignored");
        let Ok(mut q) = self.quiet.lock() else { return };
        match reason {
            "unknown_waba" => q.unknown += 1,
            "unknown_over_cap" => q.unknown_over_cap += 1,
            _ => q.over_cap += 1,
        }
        if q.last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            tracing::warn!(
                notes_for_unknown_wabas = q.unknown,
                over_max_circuits = q.over_cap,
                max_circuits = self.limits.max_circuits,
                opens_over_max_unknown_circuits = q.unknown_over_cap,
                max_unknown_circuits = self.limits.max_unknown,
                "events not recorded: notes about WABAs this gateway does not know (not configured, never opened), new closed records past max_circuits, or opens for keys a send chose (unmapped phone numbers, template names) past max_unknown_circuits (wa_breaker_events_ignored_total; summarised once a minute)"
            );
            *q = Quiet {
                last: Some(Instant::now()),
                ..Quiet::default()
            };
        }
    }
}
