//! Notifications: every circuit transition and every warning recorded by THIS replica is
//! announced to the `[[notify]]` sinks (a Slack-compatible incoming webhook, or a JSON webhook signed with
//! HMAC-SHA256), off the hot path.
//!
//! - One dispatcher task reads the table's notices and keeps only local transitions
//!   (`Origin::Local`, `transition`): a change received from another replica over Redis
//!   was announced by the replica that made it, so N replicas notify once.
//! - Each sink has its own bounded queue and task: the dispatcher never waits (a full
//!   queue drops the new notification, counted and logged once per outage), and a sink
//!   that is down or hangs delays only its own queue.
//! - A delivery is retried with capped exponential backoff and jitter, each attempt under
//!   `timeout`, for at most `retry_for`; then it is dropped (counted, logged once).
//! - Sink URLs are secrets (a Slack webhook path is one): logs and errors show only
//!   `scheme://host/***`.

pub mod event;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Limited};
use tokio::sync::mpsc;

use crate::circuit::{Notice, Origin, Table};
use crate::common::Body;
use crate::common::{error_chain, BoxError};
use crate::config::{mask_url, NotifyConfig, NotifyKind, NotifyOn, Secret};
use crate::metrics::METRICS;
use crate::upstream::HttpClient;

pub use event::{signature, Event, SIGNATURE_HEADER};

/// Most of a sink's answer read (so the connection can be reused).
const MAX_ANSWER: usize = 16 * 1024;
/// The first retry delay; doubles up to the sink's `retry_max`.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The request could not be built.
    #[error("cannot build the request")]
    Request(#[source] http::Error),
    /// The sink could not be reached or its answer broke.
    #[error("unreachable")]
    Unreachable(#[source] BoxError),
    /// The sink answered non-2xx.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Starts the dispatcher and one task per sink; nothing when no sink is configured.
/// Tasks end when the table is dropped (the process exits).
pub fn start(sinks: &[NotifyConfig], table: &Table, client: HttpClient) {
    if sinks.is_empty() {
        return;
    }
    let mut queues = Vec::with_capacity(sinks.len());
    for (i, cfg) in sinks.iter().enumerate() {
        let sink = match Sink::new(i, cfg, client.clone()) {
            Ok(s) => s,
            Err(e) => {
                // Validated at load time; kept as a log line rather than a panic.
                tracing::error!(sink = %cfg.label(i), error = %e, "notification sink unusable: skipped");
                continue;
            }
        };
        let (tx, rx) = mpsc::channel(cfg.queue);
        queues.push(Queue {
            name: sink.name.clone(),
            filter: Filter::new(cfg),
            tx,
            full_logged: false,
        });
        tokio::spawn(sink.run(rx));
    }
    tracing::info!(
        sinks = queues.len(),
        "notifications on: transitions made by this replica are announced"
    );
    tokio::spawn(dispatch(table.subscribe(), queues));
}

/// Which events a sink hears of.
struct Filter {
    transitions: Vec<NotifyOn>,
    waba_ids: Vec<String>,
}

impl Filter {
    fn new(cfg: &NotifyConfig) -> Filter {
        Filter {
            transitions: cfg.transitions.clone(),
            waba_ids: cfg.waba_ids.clone(),
        }
    }

    fn wants(&self, e: &Event) -> bool {
        (self.transitions.is_empty() || self.transitions.contains(&e.on()))
            && (self.waba_ids.is_empty() || self.waba_ids.contains(&e.waba_id))
    }
}

/// The dispatcher's handle on one sink's queue.
struct Queue {
    name: String,
    filter: Filter,
    tx: mpsc::Sender<Arc<Event>>,
    /// Set once a drop on a full queue was logged; cleared when one fits again.
    full_logged: bool,
}

/// Only what this replica changed, and only transitions and warnings (not other notes,
/// not removals).
fn worth_announcing(n: &Notice) -> bool {
    // A marketing cooldown or a pair hold is a hold on one recipient, not a circuit: many
    // and routine (`wa_breaker_shaping_cooldowns`, `wa_breaker_shaping_pairs` count them).
    n.origin == Origin::Local
        && (n.transition || n.warning.is_some())
        && !n.removed
        && !n.circuit.is_hold()
}

async fn dispatch(mut notices: mpsc::UnboundedReceiver<Notice>, mut queues: Vec<Queue>) {
    while let Some(n) = notices.recv().await {
        if !worth_announcing(&n) {
            continue;
        }
        let event = Arc::new(match &n.warning {
            Some(w) if !n.transition => Event::from_warning(&n.circuit, w),
            _ => Event::from_circuit(&n.circuit),
        });
        for q in queues.iter_mut().filter(|q| q.filter.wants(&event)) {
            match q.tx.try_send(event.clone()) {
                Ok(()) => {
                    if q.full_logged {
                        q.full_logged = false;
                        tracing::info!(sink = %q.name, "notification queue has room again");
                    }
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    METRICS
                        .notify_dropped
                        .with_label_values(&[&q.name, "queue_full"])
                        .inc();
                    if !q.full_logged {
                        q.full_logged = true;
                        tracing::warn!(sink = %q.name, waba_id = %event.waba_id, "notification queue full: dropping new notifications for this sink (counted in wa_breaker_notify_dropped_total) until it drains");
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::error!(sink = %q.name, "notification sink task ended");
                }
            }
        }
    }
}

/// One sink: its request shape, its client and its retry policy.
struct Sink {
    name: String,
    kind: NotifyKind,
    uri: Uri,
    /// For logs: `scheme://host/***`.
    shown: String,
    secret: Option<Secret>,
    timeout: Duration,
    retry_max: Duration,
    retry_for: Duration,
    client: HttpClient,
}

impl Sink {
    fn new(i: usize, cfg: &NotifyConfig, client: HttpClient) -> Result<Sink, String> {
        let shown = mask_url(cfg.url.expose());
        // The parser's message never quotes the URL.
        let uri: Uri = cfg
            .url
            .expose()
            .parse()
            .map_err(|e| format!("{shown}: {e}"))?;
        let name = cfg.label(i);
        for r in ["queue_full", "gave_up"] {
            METRICS.notify_dropped.with_label_values(&[&name, r]);
        }
        METRICS.notify_sent.with_label_values(&[&name]);
        METRICS.notify_failures.with_label_values(&[&name]);
        Ok(Sink {
            name,
            kind: cfg.kind,
            uri,
            shown,
            secret: cfg.secret.clone(),
            timeout: cfg.timeout,
            retry_max: cfg.retry_max.max(FIRST_RETRY),
            retry_for: cfg.retry_for,
            client,
        })
    }

    async fn run(self, mut rx: mpsc::Receiver<Arc<Event>>) {
        // Some(n) while failing: the outage was logged and n notifications were dropped.
        let mut failing: Option<u64> = None;
        while let Some(event) = rx.recv().await {
            let body = Bytes::from(match self.kind {
                NotifyKind::Slack => event.slack_json(),
                NotifyKind::Webhook => event.json(),
            });
            let started = Instant::now();
            let mut attempt: u32 = 0;
            loop {
                attempt += 1;
                match self.deliver(body.clone()).await {
                    Ok(()) => {
                        METRICS.notify_sent.with_label_values(&[&self.name]).inc();
                        if let Some(dropped) = failing.take() {
                            tracing::info!(sink = %self.name, url = %self.shown, dropped, "notification sink reachable again");
                        }
                        tracing::debug!(sink = %self.name, id = %event.id, attempt, "notification delivered");
                        break;
                    }
                    Err(e) => {
                        METRICS
                            .notify_failures
                            .with_label_values(&[&self.name])
                            .inc();
                        if failing.is_none() {
                            failing = Some(0);
                            tracing::warn!(sink = %self.name, url = %self.shown, error = %error_chain(&e), "notification sink failing: retrying with backoff (sends are not affected)");
                        } else {
                            tracing::debug!(sink = %self.name, attempt, error = %error_chain(&e), "notification attempt failed");
                        }
                        let delay = crate::common::backoff::backoff_delay(attempt, self.retry_max)
                            .max(FIRST_RETRY / 2);
                        if started.elapsed() + delay > self.retry_for {
                            METRICS
                                .notify_dropped
                                .with_label_values(&[&self.name, "gave_up"])
                                .inc();
                            let n = failing.get_or_insert(0);
                            if *n == 0 {
                                tracing::warn!(sink = %self.name, url = %self.shown, waba_id = %event.waba_id, id = %event.id, retry_for = ?self.retry_for, "notification dropped after retrying (counted in wa_breaker_notify_dropped_total); further drops are not logged until the sink answers");
                            }
                            *n += 1;
                            break;
                        }
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
    }

    /// One attempt: POST the body, 2xx within `timeout`.
    async fn deliver(&self, body: Bytes) -> Result<(), DeliveryError> {
        let mut req = Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("wa-breaker/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(s) = &self.secret {
            req = req.header(SIGNATURE_HEADER, signature(s.expose().as_bytes(), &body));
        }
        let req = req.body(Body::full(body)).map_err(DeliveryError::Request)?;
        let send = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| DeliveryError::Unreachable(Box::new(e)))?;
            let status = resp.status();
            let _ = Limited::new(resp.into_body(), MAX_ANSWER).collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(DeliveryError::Status(status.as_u16()))
            }
        };
        match tokio::time::timeout(self.timeout, send).await {
            Ok(r) => r,
            Err(_) => Err(DeliveryError::Timeout(self.timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::{Circuit, State};

    fn event(waba: &str, to: State) -> Event {
        let mut c = Circuit::new(waba, chrono::Utc::now());
        c.state = to;
        Event::from_circuit(&c)
    }

    #[test]
    fn filters_by_transition_and_waba() {
        let f = Filter {
            transitions: vec![NotifyOn::Open],
            waba_ids: vec!["1".into()],
        };
        assert!(f.wants(&event("1", State::Open)));
        assert!(!f.wants(&event("1", State::Closed)));
        assert!(!f.wants(&event("2", State::Open)));
        let all = Filter {
            transitions: vec![],
            waba_ids: vec![],
        };
        assert!(all.wants(&event("2", State::Closed)));
    }

    #[test]
    fn only_local_transitions_are_announced() {
        let n = |origin, transition, removed| Notice {
            circuit: Circuit::new("1", chrono::Utc::now()),
            origin,
            seq: 1,
            transition,
            removed,
            warning: None,
        };
        assert!(worth_announcing(&n(Origin::Local, true, false)));
        assert!(!worth_announcing(&n(Origin::Remote, true, false)));
        assert!(!worth_announcing(&n(Origin::Local, false, false)));
        assert!(!worth_announcing(&n(Origin::Local, true, true)));
        let warned = |origin| Notice {
            warning: Some(Box::new(crate::circuit::Warning::new(
                crate::circuit::WarningKind::AccountViolation,
            ))),
            ..n(origin, false, false)
        };
        assert!(worth_announcing(&warned(Origin::Local)));
        assert!(!worth_announcing(&warned(Origin::Remote)));
    }
}
