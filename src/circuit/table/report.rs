//! What the table tells people and Prometheus: the open gauges, the transition counter and
//! log line (values spelled as the configuration and JSON spell them), and the summary of
//! ignored events.

use std::time::{Duration, Instant};

use chrono::SecondsFormat;

use super::Table;
use crate::circuit::model::{Circuit, Evidence, Source};
use crate::metrics::METRICS;

/// `wa_breaker_circuit_open{waba_id}` for a WABA's circuit,
/// `wa_breaker_phone_circuit_open{phone_number_id}` for a phone number's,
/// `wa_breaker_template_circuit_open{waba_id,template,language}` for a template's.
pub(super) fn open_gauge(c: &Circuit, v: i64) {
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

/// Removes a dropped circuit's metric series, so their number stays bounded too.
pub(super) fn forget_series(c: &Circuit) {
    let key = c.key();
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
            let _ = METRICS.circuit_open.remove_label_values(&[&key]);
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
                .remove_label_values(&[&key, to, source.as_str()]);
        }
    }
}

/// A transition: counted, and one WARN line naming the circuit by what it is — a WABA's, a
/// phone number's (and its WABA once known), or a template's.
pub(super) fn transition(c: &Circuit, was_open: bool) {
    METRICS
        .transitions
        .with_label_values(&[&c.key(), c.state.as_str(), c.source.as_str()])
        .inc();
    log_transition(c, was_open);
}

/// The log line of a transition (no metric: a replica's or the store's record).
pub(super) fn log_transition(c: &Circuit, was_open: bool) {
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
    last: Option<Instant>,
}

impl Table {
    /// Counts an ignored event and logs a summary at most once a minute.
    pub(super) fn ignored(&self, reason: &'static str, waba_id: &str) {
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
                last: Some(Instant::now()),
                ..Quiet::default()
            };
        }
    }
}
