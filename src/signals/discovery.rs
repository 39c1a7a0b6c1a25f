//! Discovery: which WABA owns a phone number that nothing mapped yet.
//!
//! A send for a phone number whose WABA is not known is forwarded as usual (never blocked
//! by guesswork); the engines hand its id to [`Hints::hint`] — a non-blocking `try_send`
//! into a bounded queue, dropped (and counted) when the queue is full. One task reads the
//! queue and, at most once per unknown id (retried with doubling backoff after a failure),
//! asks Health Status about the phone number: `GET /{version}/{phone-id}?fields=health_status`,
//! whose `entities` list names the parent WABA. The answer is learned
//! ([`crate::circuit::MappingSource::Health`]) into the circuit table, which shares it with
//! the stores and widens an open phone-number circuit to its WABA.
//!
//! **Token rule.** The read uses `health.access_token`. Without one it is made only when
//! `discovery.use_caller_token = true`, with the bearer token of the send that named the
//! phone number — the same token the app uses for that number, held in memory for that one
//! read and dropped; it is never stored, logged or exported. Otherwise there is no read, and
//! phone numbers are learned from webhooks and operators only.
//!
//! **Throughput.** With the shaping on ([`super::throughput`]) the read asks
//! `fields=health_status,throughput` — one request for both — and reports the number's
//! throughput level to the level task, which then need not read it again.
//!
//! Phone-number circuits that open while their WABA is unknown (see the policy core) are
//! followed too, so the widening does not wait for the next send.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use http::StatusCode;
use tokio::sync::{mpsc, Semaphore};

use super::health;
use crate::circuit::{Mapping, MappingSource, Table};
use crate::config::{Config, Secret};
use crate::graph::GraphId;
use crate::graph::{envelope, health as graph_health};
use crate::metrics::METRICS;
use crate::upstream::{HttpClient, Target};

/// Hints queued for the discovery task; past it, hints are dropped (sends never wait).
const QUEUE: usize = 1024;
/// Longest wait before asking again about a phone number (the backoff's cap).
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// A phone number seen in a send, with the caller's token when the configuration allows
/// using it.
struct Hint {
    phone: GraphId,
    token: Option<Secret>,
}

/// The hot path's handle on discovery (cheap to clone).
#[derive(Clone)]
pub struct Hints {
    tx: mpsc::Sender<Hint>,
    caller_token: bool,
}

impl crate::policy::Discovery for Hints {
    /// Whether [`Hints::hint`] wants the send's `Authorization` header.
    fn wants_caller_token(&self) -> bool {
        self.caller_token
    }

    /// Queues `phone` for a lookup; never waits. `authorization` is the send's header value,
    /// read only when [`Hints::wants_caller_token`].
    fn hint(&self, phone: GraphId, authorization: Option<&[u8]>) {
        let token = self.caller_token.then(|| bearer(authorization?)).flatten();
        if self.tx.try_send(Hint { phone, token }).is_err() {
            METRICS
                .discovery_lookups
                .with_label_values(&["dropped"])
                .inc();
        }
    }
}

/// The token of `Bearer <token>`, when it is one.
fn bearer(v: &[u8]) -> Option<Secret> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let t = s
        .strip_prefix("Bearer ")
        .or_else(|| s.strip_prefix("bearer "))?
        .trim();
    (!t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic())).then(|| Secret::new(t))
}

/// Starts discovery, or says why it is off (`None`).
pub fn start(
    cfg: &Config,
    target: &Target,
    table: Arc<Table>,
    levels: Option<super::throughput::Levels>,
) -> Option<Hints> {
    let d = &cfg.discovery;
    if !d.health_reads {
        tracing::info!("discovery.health_reads = false: phone numbers are learned from webhooks and operators only");
        return None;
    }
    let token = cfg
        .health
        .access_token
        .clone()
        .filter(|t| !t.expose().is_empty());
    if token.is_none() && !d.use_caller_token {
        tracing::info!("no health.access_token and discovery.use_caller_token = false: no Health Status reads of unmapped phone numbers (they are learned from webhooks and operators)");
        return None;
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    let task = Task {
        table: table.clone(),
        lookup: Arc::new(Lookup {
            client: target.client(),
            base: format!("{}/{}/", target.base_url(), cfg.graph_version),
            timeout: cfg.health.timeout,
            permits: Arc::new(Semaphore::new(d.max_concurrent.max(1))),
            levels,
        }),
        token,
        retry_after: d.retry_after,
        cap: d.max_learned.max(1),
        tried: HashMap::new(),
    };
    tracing::info!(
        token = if task.token.is_some() {
            "health.access_token"
        } else {
            "the caller's (discovery.use_caller_token)"
        },
        max_concurrent = d.max_concurrent,
        "discovery on: the WABA of an unmapped phone number is read from its Health Status"
    );
    tokio::spawn(task.run(rx, table.subscribe()));
    Some(Hints {
        tx,
        caller_token: d.use_caller_token,
    })
}

/// What is known of a phone number's lookups.
struct Tried {
    /// A read is running.
    running: bool,
    failures: u32,
    /// Not asked again before this.
    next: Instant,
}

struct Task {
    table: Arc<Table>,
    lookup: Arc<Lookup>,
    token: Option<Secret>,
    retry_after: Duration,
    /// Phone numbers remembered at once (bounded under a flood of random ids).
    cap: usize,
    tried: HashMap<GraphId, Tried>,
}

/// How a lookup ended.
enum Found {
    Waba(GraphId),
    Unknown(String),
    AuthError(String),
    Error(String),
}

impl Task {
    async fn run(
        mut self,
        mut hints: mpsc::Receiver<Hint>,
        mut circuits: mpsc::UnboundedReceiver<crate::circuit::Notice>,
    ) {
        let (done_tx, mut done) = mpsc::unbounded_channel::<(GraphId, Found)>();
        loop {
            tokio::select! {
                h = hints.recv() => match h {
                    Some(h) => self.consider(h, &done_tx),
                    None => return,
                },
                Some(n) = circuits.recv() => {
                    // A phone number's circuit opened while its WABA is unknown.
                    let c = &n.circuit;
                    if c.is_open() && c.waba_id.is_empty() && !c.is_hold() {
                        if let Some(phone) = c.phone_number_id.as_deref().and_then(GraphId::new) {
                            self.consider(Hint { phone, token: None }, &done_tx);
                        }
                    }
                }
                Some((phone, found)) = done.recv() => self.finished(phone, found),
            }
        }
    }

    fn consider(&mut self, h: Hint, done: &mpsc::UnboundedSender<(GraphId, Found)>) {
        if self.table.resolve(&h.phone).is_some() {
            self.tried.remove(&h.phone);
            return;
        }
        let now = Instant::now();
        if let Some(t) = self.tried.get(&h.phone) {
            if t.running || now < t.next {
                return;
            }
        }
        let Some(token) = self.token.clone().or(h.token) else {
            // Caller-token mode, and this hint carries none (a circuit notice, or a send
            // without a bearer token): the next send with one asks.
            METRICS
                .discovery_lookups
                .with_label_values(&["no_token"])
                .inc();
            return;
        };
        if self.tried.len() >= self.cap && !self.tried.contains_key(&h.phone) {
            self.tried.retain(|_, t| t.running || t.next > now);
            if self.tried.len() >= self.cap {
                METRICS
                    .discovery_lookups
                    .with_label_values(&["dropped"])
                    .inc();
                return;
            }
        }
        // No free permit: not started; the phone number's next send asks again.
        let Ok(permit) = self.lookup.permits.clone().try_acquire_owned() else {
            return;
        };
        let failures = self.tried.get(&h.phone).map_or(0, |t| t.failures);
        self.tried.insert(
            h.phone,
            Tried {
                running: true,
                failures,
                next: now,
            },
        );
        let lookup = self.lookup.clone();
        let done = done.clone();
        let phone = h.phone;
        tokio::spawn(async move {
            let found = lookup.read(&phone, &token).await;
            drop(token);
            drop(permit);
            let _ = done.send((phone, found));
        });
    }

    fn finished(&mut self, phone: GraphId, found: Found) {
        let (label, failed) = match found {
            Found::Waba(waba) => {
                self.tried.remove(&phone);
                let learned = self.table.learn(Mapping {
                    phone_number_id: phone.to_string(),
                    waba_id: Some(waba.to_string()),
                    source: MappingSource::Health,
                    updated_at: Utc::now(),
                    origin: String::new(),
                });
                if learned.is_some() {
                    METRICS
                        .mappings_learned
                        .with_label_values(&["health"])
                        .inc();
                    tracing::info!(phone_number_id = %phone, waba_id = %waba, "phone number's WABA learned from its Health Status");
                }
                ("learned", None)
            }
            Found::Unknown(why) => ("not_found", Some(why)),
            Found::AuthError(why) => ("auth_error", Some(why)),
            Found::Error(why) => ("error", Some(why)),
        };
        METRICS.discovery_lookups.with_label_values(&[label]).inc();
        let Some(why) = failed else { return };
        let t = self.tried.entry(phone).or_insert(Tried {
            running: false,
            failures: 0,
            next: Instant::now(),
        });
        t.running = false;
        t.failures = t.failures.saturating_add(1);
        let wait = self
            .retry_after
            .saturating_mul(1u32 << (t.failures - 1).min(16))
            .min(MAX_BACKOFF);
        t.next = Instant::now() + wait;
        // One line per failed phone number and attempt; errors never carry the token.
        tracing::info!(phone_number_id = %phone, result = label, error = %why, retry_in_s = wait.as_secs(), "discovery could not learn the phone number's WABA");
    }
}

/// The Health Status read of a phone number.
struct Lookup {
    client: HttpClient,
    base: String,
    timeout: Duration,
    permits: Arc<Semaphore>,
    /// The throughput level task, told the level read along (`None`: shaping off).
    levels: Option<super::throughput::Levels>,
}

impl Lookup {
    async fn read(&self, phone: &GraphId, token: &Secret) -> Found {
        let fields = if self.levels.is_some() {
            "health_status,throughput"
        } else {
            "health_status"
        };
        let uri = format!("{}{phone}?fields={fields}", self.base);
        match health::fetch(&self.client, &uri, token, self.timeout).await {
            Err(e) => Found::Error(e),
            Ok((status, body)) => {
                if let (Some(levels), true) = (&self.levels, status.is_success()) {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                        levels.learned(*phone, crate::graph::throughput::level_of(&v));
                    }
                }
                owner(status, &body)
            }
        }
    }
}

/// Reads the owning WABA from a phone number's Health Status answer (pure).
fn owner(status: StatusCode, body: &[u8]) -> Found {
    if !status.is_success() {
        let f = envelope::failure(status.as_u16(), body);
        return if f.auth {
            Found::AuthError(f.what)
        } else if status.is_client_error() {
            Found::Unknown(f.what)
        } else {
            Found::Error(f.what)
        };
    }
    let hs = match graph_health::parse(body) {
        Ok(hs) => hs,
        Err(e) => return Found::Error(e.to_string()),
    };
    let mut wabas = hs
        .entities
        .iter()
        .filter(|e| e.entity_type == "WABA")
        .filter_map(|e| GraphId::new(&e.id));
    match (wabas.next(), wabas.next()) {
        (Some(w), None) => Found::Waba(w),
        (Some(_), Some(_)) => Found::Unknown("the answer names more than one WABA".into()),
        (None, _) => Found::Unknown("the answer names no WABA entity".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_the_single_waba_entity() {
        let body = br#"{"health_status":{"can_send_message":"AVAILABLE","entities":[
            {"entity_type":"PHONE_NUMBER","id":"106540352242922","can_send_message":"AVAILABLE"},
            {"entity_type":"WABA","id":"102290129340398","can_send_message":"AVAILABLE"},
            {"entity_type":"BUSINESS","id":"5","can_send_message":"AVAILABLE"}]},"id":"106540352242922"}"#;
        assert!(
            matches!(owner(StatusCode::OK, body), Found::Waba(w) if w.as_str() == "102290129340398")
        );
        let none = br#"{"health_status":{"can_send_message":"AVAILABLE","entities":[]}}"#;
        assert!(matches!(owner(StatusCode::OK, none), Found::Unknown(_)));
        let unknown = br#"{"error":{"message":"Unsupported get request","type":"GraphMethodException","code":100}}"#;
        assert!(matches!(
            owner(StatusCode::BAD_REQUEST, unknown),
            Found::Unknown(_)
        ));
        let auth = br#"{"error":{"message":"bad token","type":"OAuthException","code":190}}"#;
        assert!(matches!(
            owner(StatusCode::BAD_REQUEST, auth),
            Found::AuthError(_)
        ));
        assert!(matches!(
            owner(StatusCode::BAD_GATEWAY, b""),
            Found::Error(_)
        ));
        assert!(matches!(owner(StatusCode::OK, b"nope"), Found::Error(_)));
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(
            bearer(b"Bearer abc").map(|s| s.expose().to_string()),
            Some("abc".into())
        );
        assert!(bearer(b"Basic abc").is_none());
        assert!(bearer(b"Bearer ").is_none());
        assert!(bearer(b"Bearer a\x01b").is_none());
    }
}
