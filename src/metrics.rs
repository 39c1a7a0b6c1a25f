//! Prometheus metrics. Hot-path counters are resolved once, so recording is an atomic add.

use std::sync::LazyLock;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Most `wa_breaker_shaping_pace` series at once (the slowest numbers).
pub const PACE_SERIES: usize = 1000;

/// Where a webhook-reported error sat in a `messages` delivery (the `site` label).
pub const WEBHOOK_ERROR_SITES: &[&str] = &["status", "value"];

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    pub circuit_open: IntGaugeVec,
    /// `wa_breaker_phone_circuit_open{phone_number_id}`: circuits of one phone number.
    pub phone_circuit_open: IntGaugeVec,
    /// `wa_breaker_template_circuit_open{waba_id, template, language}`: circuits of one
    /// template (paused or disabled by Meta).
    pub template_circuit_open: IntGaugeVec,
    /// `wa_breaker_country_circuit_open{waba_id, country}`: circuits of one WABA's sends to
    /// one country calling code (Meta's 130497); bounded by WABAs × assigned codes.
    pub country_circuit_open: IntGaugeVec,
    /// `wa_breaker_template_quality_total{score}`: `message_template_quality_update`
    /// webhooks by new score (GREEN, YELLOW, RED, UNKNOWN, else other).
    pub template_quality: IntCounterVec,
    /// `wa_breaker_warnings_total{kind}`: warnings recorded by this replica (one per event:
    /// a redelivery is not counted again), by kind.
    pub warnings: IntCounterVec,
    /// `wa_breaker_messaging_limit_users{waba_id}`: unique users template messages reached
    /// in the last 24 h (the fleet's with Redis).
    pub messaging_limit_users: IntGaugeVec,
    /// `wa_breaker_messaging_limit{waba_id}`: the WABA's messaging limit, when a finite one
    /// is known.
    pub messaging_limit: IntGaugeVec,
    /// `wa_breaker_fleet_replicas`: replicas sharing each phone number's pace.
    pub fleet_replicas: IntGauge,
    /// `wa_breaker_shaping_pace{phone_number_id}`: the pace of each number paced below its
    /// throughput now (a series only while lowered, at most [`PACE_SERIES`]).
    pub shaping_pace: GaugeVec,
    pub transitions: IntCounterVec,
    pub forwarded: IntCounter,
    pub answered_locally: IntCounter,
    pub upstream_error: IntCounter,
    pub unmapped: IntCounter,
    /// Requests whose exchange ended before it settled (the client went away, a drain cut
    /// it): `wa_breaker_requests_total{outcome="abandoned"}`.
    pub abandoned: IntCounter,
    /// Requests answered 503 `overloaded`: no upstream permit within `upstream_queue_max`
    /// / `upstream_queue_timeout`: `wa_breaker_requests_total{outcome="overloaded"}`.
    pub overloaded: IntCounter,
    /// Answers that went to the app before their circuit change was durable (after
    /// `policy::ACK_WAIT`).
    pub ack_timeouts: IntCounter,
    /// Children of `upstream_duration` by class: 2xx, 3xx, 4xx, 5xx, error.
    upstream_by_class: [Histogram; 5],
    upstream_errors: IntCounterVec,
    pub webhooks: IntCounterVec,
    pub health_polls: IntCounterVec,
    /// `wa_breaker_health_poll_skipped_total{reason}`: polls due but not made — `lease`
    /// (another replica holds the circuit's poll lease), `budget` (the WABA's hourly budget
    /// is spent).
    pub health_poll_skipped: IntCounterVec,
    /// `wa_breaker_health_lease_acquired_total{how}`: poll leases this replica took —
    /// `fresh` (no other holder before) or `takeover` (another replica's lease lapsed).
    pub health_lease_acquired: IntCounterVec,
    /// `wa_breaker_health_leases_held`: circuits whose poll lease this replica holds now.
    pub health_leases_held: IntGauge,
    pub redis_connected: IntGauge,
    /// 1 while every circuit change is committed to the embedded store (or being committed
    /// normally); 0 while commits fail.
    pub store_durable: IntGauge,
    /// Failed commits of the embedded store.
    pub store_commit_failures: IntCounter,
    /// Requests whose client body broke off or was malformed (400, not an upstream error).
    pub client_body_errors: IntCounter,
    /// Client connections cut by `client_header_timeout` or `client_body_timeout` (408), and
    /// HTTP/2 connections sent GOAWAY with no stream open by `client_header_timeout` or
    /// `client_idle_timeout`.
    pub client_timeouts: IntCounter,
    /// Circuit changes recorded nowhere, by why (`unknown_waba`, `over_cap`,
    /// `unknown_over_cap`: an open for a key a send chose past `max_unknown_circuits`).
    pub events_ignored: IntCounterVec,
    /// Phone → WABA mappings learned or set, by source (`webhook`, `health`, `admin`).
    pub mappings_learned: IntCounterVec,
    /// Phone numbers whose WABA is known, by kind (`configured`, `learned`).
    pub phone_numbers_known: IntGaugeVec,
    /// Discovery's Health Status reads of unmapped phone numbers, by result.
    pub discovery_lookups: IntCounterVec,
    /// `wa_breaker_shaping_throughput_reads_total{result}`: Meta's throughput level of a
    /// phone number, read or learned (`standard`, `high`, `unknown`, `error`, `auth_error`,
    /// `dropped`, `upgrade`, `upgrade_unknown_number`).
    pub throughput_reads: IntCounterVec,
    /// `wa_breaker_webhook_errors_total{code, site}`: Graph error codes Meta reported only by
    /// webhook (`messages` deliveries: `statuses[].errors[]`, `value.errors[]`).
    webhook_errors: IntCounterVec,
    /// `wa_breaker_notify_sent_total{sink}`: notifications a sink accepted (2xx).
    pub notify_sent: IntCounterVec,
    /// `wa_breaker_notify_failures_total{sink}`: delivery attempts that failed (retried).
    pub notify_failures: IntCounterVec,
    /// `wa_breaker_notify_dropped_total{sink,reason}`: notifications never delivered
    /// (`queue_full`, `gave_up` after `retry_for`).
    pub notify_dropped: IntCounterVec,
    /// `wa_breaker_shaped_total{reason}`: sends the shaping answered locally in Meta's
    /// place (`pace`, `pair`, `marketing`).
    shaped: IntCounterVec,
    /// `wa_breaker_shaping_observed_total{reason, action}`: what `observe` mode would have
    /// held (`wait`) or answered locally (`answer`), forwarded instead.
    shaping_observed: IntCounterVec,
    /// `wa_breaker_shaping_wait_seconds`: how long paced sends waited for their slot.
    pub shaping_wait: Histogram,
    /// `wa_breaker_shaping_evicted_total`: idle phone numbers dropped from the pacer's
    /// memory (`shaping` caps the numbers it tracks).
    pub shaping_evicted: IntCounter,
    /// `wa_breaker_shaping_pairs_evicted_total`: (phone number, recipient) pairs dropped
    /// (their records) to stay within `shaping.max_pairs`.
    pub shaping_pairs_evicted: IntCounter,
    /// `wa_breaker_shaping_pairs`: pair holds held (the fleet's, as this replica's table
    /// knows them).
    pub shaping_pairs: IntGauge,
    /// `wa_breaker_shaping_cooldowns`: marketing cooldowns held (the fleet's, as this
    /// replica's table knows them).
    pub shaping_cooldowns: IntGauge,
    /// `wa_breaker_shaping_cooldowns_evicted_total`: cooldowns dropped, soonest-ending
    /// first, to stay within `shaping.max_cooldowns`.
    pub shaping_cooldowns_evicted: IntCounter,
}

/// The `reason` labels of `wa_breaker_shaped_total`.
pub const SHAPED_REASONS: &[&str] = &["pace", "pair", "marketing"];

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let circuit_open = IntGaugeVec::new(
            Opts::new(
                "wa_breaker_circuit_open",
                "1 while the WABA's circuit is open",
            ),
            &["waba_id"],
        )
        .expect("valid metric");
        let phone_circuit_open = IntGaugeVec::new(
            Opts::new(
                "wa_breaker_phone_circuit_open",
                "1 while the circuit of one phone number is open (a phone-level code, or a trip while its WABA was not known)",
            ),
            &["phone_number_id"],
        )
        .expect("valid metric");
        let template_circuit_open = IntGaugeVec::new(
            Opts::new(
                "wa_breaker_template_circuit_open",
                "1 while the circuit of one message template (paused or disabled by Meta) is open",
            ),
            &["waba_id", "template", "language"],
        )
        .expect("valid metric");
        let country_circuit_open = IntGaugeVec::new(
            Opts::new(
                "wa_breaker_country_circuit_open",
                "1 while the circuit of one WABA's sends to one country calling code (Meta's 130497, restricted from messaging users in that country) is open",
            ),
            &["waba_id", "country"],
        )
        .expect("valid metric");
        let template_quality = IntCounterVec::new(
            Opts::new(
                "wa_breaker_template_quality_total",
                "message_template_quality_update webhooks by new quality score (recorded, never a block)",
            ),
            &["score"],
        )
        .expect("valid metric");
        let warnings = IntCounterVec::new(
            Opts::new(
                "wa_breaker_warnings_total",
                "Warnings recorded by this replica (Meta's first enforcement steps, never a block), by kind",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let messaging_limit_users = IntGaugeVec::new(
            Opts::new(
                "wa_breaker_messaging_limit_users",
                "Unique users the WABA's template messages reached in the last 24 h (from Meta's status webhooks; the fleet's count with Redis)",
            ),
            &["waba_id"],
        )
        .expect("valid metric");
        let messaging_limit = IntGaugeVec::new(
            Opts::new(
                "wa_breaker_messaging_limit",
                "The WABA's messaging limit (unique users per 24 h): the operator's, else Meta's last business_capability_update",
            ),
            &["waba_id"],
        )
        .expect("valid metric");
        let fleet_replicas = IntGauge::new(
            "wa_breaker_fleet_replicas",
            "Replicas alive (heartbeats over Redis) sharing each phone number's pace; 1 alone",
        )
        .expect("valid metric");
        let shaping_pace = GaugeVec::new(
            Opts::new(
                "wa_breaker_shaping_pace",
                "Messages/s this replica paces a phone number at, for numbers paced below their throughput now (after Meta's 130429 or 131048); the slowest first, at most 1000 series",
            ),
            &["phone_number_id"],
        )
        .expect("valid metric");
        let transitions = IntCounterVec::new(
            Opts::new(
                "wa_breaker_circuit_transitions_total",
                "Circuit state changes by WABA, new state and source",
            ),
            &["waba_id", "to", "source"],
        )
        .expect("valid metric");
        let requests = IntCounterVec::new(
            Opts::new("wa_breaker_requests_total", "Proxied requests by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "wa_breaker_upstream_duration_seconds",
                "Time to the upstream's response headers, by status class",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["class"],
        )
        .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "wa_breaker_upstream_errors_total",
                "Graph error codes seen in upstream answers (known codes, else other)",
            ),
            &["code"],
        )
        .expect("valid metric");
        let webhooks = IntCounterVec::new(
            Opts::new("wa_breaker_webhooks_total", "Webhook deliveries by result"),
            &["result"],
        )
        .expect("valid metric");
        let health_polls = IntCounterVec::new(
            Opts::new(
                "wa_breaker_health_polls_total",
                "Health Status polls by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let health_poll_skipped = IntCounterVec::new(
            Opts::new(
                "wa_breaker_health_poll_skipped_total",
                "Health Status polls due but not made, by reason (lease, budget)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let health_lease_acquired = IntCounterVec::new(
            Opts::new(
                "wa_breaker_health_lease_acquired_total",
                "Health poll leases taken by this replica (fresh, takeover)",
            ),
            &["how"],
        )
        .expect("valid metric");
        let health_leases_held = IntGauge::new(
            "wa_breaker_health_leases_held",
            "Circuits whose Health Status poll lease this replica holds",
        )
        .expect("valid metric");
        let redis_connected = IntGauge::new(
            "wa_breaker_redis_connected",
            "1 while the Redis connection is up (0 when away or not configured)",
        )
        .expect("valid metric");
        let ack_timeouts = IntCounter::new(
            "wa_breaker_ack_timeouts_total",
            "Answers sent before their circuit change was durable (the store did not commit within 1 s)",
        )
        .expect("valid metric");
        let store_durable = IntGauge::new(
            "wa_breaker_store_durable",
            "1 while the embedded state store commits normally, 0 while its commits fail",
        )
        .expect("valid metric");
        store_durable.set(1);
        let store_commit_failures = IntCounter::new(
            "wa_breaker_store_commit_failures_total",
            "Failed commits of the embedded state store",
        )
        .expect("valid metric");
        let client_body_errors = IntCounter::new(
            "wa_breaker_client_body_errors_total",
            "Requests answered 400 because the client's body broke off or was malformed (not counted as upstream errors)",
        )
        .expect("valid metric");
        let client_timeouts = IntCounter::new(
            "wa_breaker_client_timeouts_total",
            "Client connections answered 408 and closed: request head or body not in by client_header_timeout / client_body_timeout; HTTP/2 connections sent GOAWAY with no stream open by client_header_timeout / client_idle_timeout",
        )
        .expect("valid metric");
        let events_ignored = IntCounterVec::new(
            Opts::new(
                "wa_breaker_events_ignored_total",
                "Circuit changes recorded nowhere, by reason (unknown_waba, over_cap, unknown_over_cap)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for r in ["unknown_waba", "over_cap", "unknown_over_cap"] {
            events_ignored.with_label_values(&[r]);
        }
        let mappings_learned = IntCounterVec::new(
            Opts::new(
                "wa_breaker_mappings_learned_total",
                "Phone number to WABA mappings learned or set, by source",
            ),
            &["source"],
        )
        .expect("valid metric");
        for r in ["webhook", "health", "admin"] {
            mappings_learned.with_label_values(&[r]);
        }
        let phone_numbers_known = IntGaugeVec::new(
            Opts::new(
                "wa_breaker_phone_numbers_known",
                "Phone numbers whose WABA is known (configured, or learned/set at run time)",
            ),
            &["kind"],
        )
        .expect("valid metric");
        for r in ["configured", "learned"] {
            phone_numbers_known.with_label_values(&[r]);
        }
        let discovery_lookups = IntCounterVec::new(
            Opts::new(
                "wa_breaker_discovery_lookups_total",
                "Health Status reads of phone numbers whose WABA is not known, by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        for r in [
            "learned",
            "not_found",
            "error",
            "auth_error",
            "no_token",
            "dropped",
        ] {
            discovery_lookups.with_label_values(&[r]);
        }
        let throughput_reads = IntCounterVec::new(
            Opts::new(
                "wa_breaker_shaping_throughput_reads_total",
                "Meta's throughput level of phone numbers: reads by result, and THROUGHPUT_UPGRADE webhooks",
            ),
            &["result"],
        )
        .expect("valid metric");
        for r in [
            "standard",
            "high",
            "unknown",
            "error",
            "auth_error",
            "dropped",
            "upgrade",
            "upgrade_unknown_number",
        ] {
            throughput_reads.with_label_values(&[r]);
        }
        let webhook_errors = IntCounterVec::new(
            Opts::new(
                "wa_breaker_webhook_errors_total",
                "Graph error codes reported in messages webhooks (statuses[].errors[] and value.errors[]), by code (known codes, else other) and site",
            ),
            &["code", "site"],
        )
        .expect("valid metric");
        let notify_sent = IntCounterVec::new(
            Opts::new(
                "wa_breaker_notify_sent_total",
                "Transition notifications a sink accepted, by sink",
            ),
            &["sink"],
        )
        .expect("valid metric");
        let notify_failures = IntCounterVec::new(
            Opts::new(
                "wa_breaker_notify_failures_total",
                "Failed notification delivery attempts (each is retried), by sink",
            ),
            &["sink"],
        )
        .expect("valid metric");
        let notify_dropped = IntCounterVec::new(
            Opts::new(
                "wa_breaker_notify_dropped_total",
                "Transition notifications never delivered, by sink and reason (queue_full, gave_up)",
            ),
            &["sink", "reason"],
        )
        .expect("valid metric");
        let shaped = IntCounterVec::new(
            Opts::new(
                "wa_breaker_shaped_total",
                "Sends the shaping answered locally in Meta's place, by reason (pace, pair, marketing)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let shaping_observed = IntCounterVec::new(
            Opts::new(
                "wa_breaker_shaping_observed_total",
                "Sends observe mode forwarded that enforce would have held (action wait) or answered locally (action answer), by reason",
            ),
            &["reason", "action"],
        )
        .expect("valid metric");
        for r in SHAPED_REASONS {
            shaped.with_label_values(&[r]);
            for a in ["wait", "answer"] {
                shaping_observed.with_label_values(&[r, a]);
            }
        }
        let shaping_wait = Histogram::with_opts(
            HistogramOpts::new(
                "wa_breaker_shaping_wait_seconds",
                "How long sends over their phone number's pace waited for their slot before they were forwarded",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .expect("valid metric");
        let shaping_evicted = IntCounter::new(
            "wa_breaker_shaping_evicted_total",
            "Phone numbers dropped from the pacer's memory to stay within its cap",
        )
        .expect("valid metric");
        let shaping_pairs_evicted = IntCounter::new(
            "wa_breaker_shaping_pairs_evicted_total",
            "(Phone number, recipient) pair records dropped to stay within shaping.max_pairs",
        )
        .expect("valid metric");
        let shaping_pairs = IntGauge::new(
            "wa_breaker_shaping_pairs",
            "Pair holds (after Meta's 131056) held: the fleet's, as this replica knows them",
        )
        .expect("valid metric");
        let shaping_cooldowns = IntGauge::new(
            "wa_breaker_shaping_cooldowns",
            "Marketing cooldowns held (after Meta's 131049: MARKETING template sends to the recipient are answered locally)",
        )
        .expect("valid metric");
        let shaping_cooldowns_evicted = IntCounter::new(
            "wa_breaker_shaping_cooldowns_evicted_total",
            "Marketing cooldowns dropped, soonest-ending first, to stay within shaping.max_cooldowns",
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new("wa_breaker_build_info", "Build information"),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for c in [
            Box::new(circuit_open.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(transitions.clone()),
            Box::new(phone_circuit_open.clone()),
            Box::new(requests.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(webhooks.clone()),
            Box::new(health_polls.clone()),
            Box::new(health_poll_skipped.clone()),
            Box::new(health_lease_acquired.clone()),
            Box::new(health_leases_held.clone()),
            Box::new(build_info),
            Box::new(ack_timeouts.clone()),
            Box::new(store_durable.clone()),
            Box::new(store_commit_failures.clone()),
            Box::new(events_ignored.clone()),
            Box::new(mappings_learned.clone()),
            Box::new(phone_numbers_known.clone()),
            Box::new(discovery_lookups.clone()),
            Box::new(throughput_reads.clone()),
            Box::new(client_timeouts.clone()),
            Box::new(client_body_errors.clone()),
            Box::new(webhook_errors.clone()),
            Box::new(template_circuit_open.clone()),
            Box::new(country_circuit_open.clone()),
            Box::new(template_quality.clone()),
            Box::new(warnings.clone()),
            Box::new(messaging_limit_users.clone()),
            Box::new(messaging_limit.clone()),
            Box::new(fleet_replicas.clone()),
            Box::new(shaping_pace.clone()),
            Box::new(notify_sent.clone()),
            Box::new(notify_failures.clone()),
            Box::new(notify_dropped.clone()),
            Box::new(shaped.clone()),
            Box::new(shaping_observed.clone()),
            Box::new(shaping_wait.clone()),
            Box::new(shaping_evicted.clone()),
            Box::new(shaping_pairs_evicted.clone()),
            Box::new(shaping_pairs.clone()),
            Box::new(shaping_cooldowns.clone()),
            Box::new(shaping_cooldowns_evicted.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        for r in [
            "received",
            "rejected_signature",
            "invalid",
            "applied",
            "relay_failed",
            "stale",
        ] {
            webhooks.with_label_values(&[r]);
        }
        for r in ["lease", "budget"] {
            health_poll_skipped.with_label_values(&[r]);
        }
        for h in ["fresh", "takeover"] {
            health_lease_acquired.with_label_values(&[h]);
        }
        Metrics {
            forwarded: requests.with_label_values(&["forwarded"]),
            answered_locally: requests.with_label_values(&["answered_locally"]),
            upstream_error: requests.with_label_values(&["upstream_error"]),
            unmapped: requests.with_label_values(&["unmapped"]),
            abandoned: requests.with_label_values(&["abandoned"]),
            overloaded: requests.with_label_values(&["overloaded"]),
            registry,
            circuit_open,
            phone_circuit_open,
            template_circuit_open,
            country_circuit_open,
            template_quality,
            warnings,
            messaging_limit_users,
            messaging_limit,
            fleet_replicas,
            shaping_pace,
            transitions,
            upstream_by_class: ["2xx", "3xx", "4xx", "5xx", "error"]
                .map(|c| upstream_duration.with_label_values(&[c])),
            upstream_errors,
            webhooks,
            health_polls,
            health_poll_skipped,
            health_lease_acquired,
            health_leases_held,
            redis_connected,
            ack_timeouts,
            store_durable,
            store_commit_failures,
            events_ignored,
            mappings_learned,
            phone_numbers_known,
            discovery_lookups,
            throughput_reads,
            client_timeouts,
            client_body_errors,
            webhook_errors,
            notify_sent,
            notify_failures,
            notify_dropped,
            shaped,
            shaping_observed,
            shaping_wait,
            shaping_evicted,
            shaping_pairs_evicted,
            shaping_pairs,
            shaping_cooldowns,
            shaping_cooldowns_evicted,
        }
    }

    /// Counts a send the shaping answered locally (`reason`: one of [`SHAPED_REASONS`]).
    pub fn shaped(&self, reason: &'static str) {
        self.shaped.with_label_values(&[reason]).inc();
    }

    /// Counts a send `observe` mode forwarded that enforce would have held (`wait`) or
    /// answered locally (`answer`).
    pub fn shaping_observed(&self, reason: &'static str, action: &'static str) {
        self.shaping_observed
            .with_label_values(&[reason, action])
            .inc();
    }

    /// Exports `wa_breaker_redis_connected`: only when Redis is configured, so an alert on
    /// it never fires for a single instance.
    pub fn enable_redis_gauge(&self) {
        let _ = self
            .registry
            .register(Box::new(self.redis_connected.clone()));
    }

    /// Records the upstream's time to headers by status class (`error` for no answer).
    pub fn observe_upstream(&self, status: Option<u16>, secs: f64) {
        let class = match status {
            Some(200..=299) => 0,
            Some(300..=399) => 1,
            Some(400..=499) => 2,
            Some(_) => 3,
            None => 4,
        };
        self.upstream_by_class[class].observe(secs);
    }

    /// Counts a Graph error code seen upstream, bounded to the known set.
    pub fn upstream_code(&self, code: i64) {
        self.upstream_errors
            .with_label_values(&[&code_label(code)])
            .inc();
    }

    /// Counts a Graph error code a `messages` webhook reported at `site` (`status` or
    /// `value`), bounded to the known codes and sites.
    pub fn webhook_error(&self, code: i64, site: &str) {
        let site = if WEBHOOK_ERROR_SITES.contains(&site) {
            site
        } else {
            "value"
        };
        self.webhook_errors
            .with_label_values(&[&code_label(code), site])
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The label of a Graph code: itself when in the catalogue ([`crate::graph::codes`]), else
/// `other` (a bounded label set).
fn code_label(code: i64) -> String {
    if crate::graph::codes::lookup(code).is_some() {
        code.to_string()
    } else {
        "other".to_string()
    }
}
