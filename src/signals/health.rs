//! Health Status polling: while a WABA's circuit is open (and a token is configured), ask
//! `GET {upstream}/{graph_version}/{waba_id}?fields=health_status` every `health.interval`
//! (± `health.jitter`), back off exponentially on errors up to `health.max_backoff`, and
//! never run more than `health.max_concurrent` polls at once. A phone number's circuit
//! (`phone:{id}`) is polled the same way on the phone-number node,
//! `GET …/{phone-number-id}?fields=health_status`, and judged by its PHONE_NUMBER entity
//! ([`Verdict`] from `verdict_for_phone`).
//!
//! Which replica polls, and how often per WABA, is the [`PollGate`]'s decision (one poller
//! per circuit across the fleet with Redis, an hourly budget per WABA; see
//! [`super::fleet`]).
//!
//! What an answer does (see [`record`]):
//! - **AVAILABLE** → close, source `health`, the answer as evidence;
//! - **BLOCKED** → stay open; the errors are recorded once as a note (a steady BLOCKED
//!   adds nothing);
//! - **LIMITED** → stay open with the scope the circuit has (recorded once as a note) —
//!   unless the circuit's known `until` has passed, then it expires;
//! - 401 / code 190 → logged once per circuit, counted `auth_error`, back off; never trips
//!   or closes anything. Other failures → counted `error`, back off.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use tokio::sync::Semaphore;

use super::fleet::{self, Decision, PollGate};
use crate::circuit::{Action, Change, Circuit, Evidence, Source, Table};
use crate::common::Body;
use crate::config::{Config, HealthConfig, Secret};
use crate::graph::envelope;
use crate::graph::health::{self, Verdict};
use crate::graph::GraphId;
use crate::metrics::METRICS;
use crate::upstream::{HttpClient, Target};

/// Largest Health Status answer read.
const MAX_ANSWER: usize = 256 * 1024;

/// The node a poll reads, and so which entity of the answer decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node<'a> {
    /// A WABA: `GET /{waba_id}`, judged by its WABA entity.
    Waba(&'a str),
    /// A phone number: `GET /{phone_number_id}`, judged by its PHONE_NUMBER entity.
    Phone(&'a str),
}

impl<'a> Node<'a> {
    /// The node's Graph id.
    pub fn id(self) -> &'a str {
        match self {
            Node::Waba(id) | Node::Phone(id) => id,
        }
    }

    /// The node that tells whether circuit `c` can close: its phone number for a
    /// phone-number circuit, else its WABA.
    pub fn of(c: &'a Circuit) -> Node<'a> {
        match c.phone_number_id.as_deref() {
            Some(p) => Node::Phone(p),
            None => Node::Waba(&c.waba_id),
        }
    }
}

/// The result of one poll.
#[derive(Debug)]
pub enum PollOutcome {
    /// Meta answered with a health status.
    Status {
        verdict: Verdict,
        /// The `health_status` object, kept as evidence.
        raw: Value,
    },
    /// The token was refused (HTTP 401 or Graph code 190).
    AuthError(String),
    /// Anything else: unreachable, timeout, 5xx, an unreadable answer, another Graph error.
    Error(String),
}

/// Polls one node's health status with the configured token, bounded by a global semaphore.
pub struct HealthChecker {
    client: HttpClient,
    base: String,
    token: Secret,
    timeout: Duration,
    permits: Semaphore,
}

impl HealthChecker {
    /// A checker for `cfg`, or `None` when no `health.access_token` is configured.
    pub fn new(cfg: &Config, target: &Target) -> Option<Arc<HealthChecker>> {
        let token = cfg
            .health
            .access_token
            .clone()
            .filter(|t| !t.expose().is_empty())?;
        Some(Arc::new(HealthChecker {
            client: target.client(),
            base: format!("{}/{}/", target.base_url(), cfg.graph_version),
            token,
            timeout: cfg.health.timeout,
            permits: Semaphore::new(cfg.health.max_concurrent.max(1)),
        }))
    }

    /// One poll of `waba_id`, counted in `wa_breaker_health_polls_total`.
    pub async fn check(&self, waba_id: &str) -> PollOutcome {
        self.check_node(Node::Waba(waba_id)).await
    }

    /// One poll of `node` (a WABA or a phone number), counted in
    /// `wa_breaker_health_polls_total`.
    pub async fn check_node(&self, node: Node<'_>) -> PollOutcome {
        let outcome = self.check_inner(node).await;
        let label = match &outcome {
            PollOutcome::Status { verdict, .. } => verdict.as_str(),
            PollOutcome::AuthError(_) => "auth_error",
            PollOutcome::Error(_) => "error",
        };
        METRICS.health_polls.with_label_values(&[label]).inc();
        outcome
    }

    async fn check_inner(&self, node: Node<'_>) -> PollOutcome {
        let id = node.id();
        if !GraphId::is_valid(id) {
            return PollOutcome::Error(format!("{id:?} is not a Graph id"));
        }
        let Ok(_permit) = self.permits.acquire().await else {
            return PollOutcome::Error("poller is shutting down".into());
        };
        let uri = format!("{}{id}?fields=health_status", self.base);
        match fetch(&self.client, &uri, &self.token, self.timeout).await {
            Err(e) => PollOutcome::Error(e),
            Ok((status, body)) => classify(node, status, &body),
        }
    }
}

/// One Health Status `GET` of `uri` with `token` (marked sensitive: never logged), its body
/// capped at [`MAX_ANSWER`], all within `timeout`. Errors never contain the token.
pub async fn fetch(
    client: &HttpClient,
    uri: &str,
    token: &Secret,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), String> {
    let Ok(mut auth) = HeaderValue::from_str(&format!("Bearer {}", token.expose())) else {
        return Err("the token is not a valid header value".into());
    };
    auth.set_sensitive(true);
    let req = Request::get(uri)
        .header(header::AUTHORIZATION, auth)
        .header(header::ACCEPT, "application/json")
        .header(
            header::USER_AGENT,
            concat!("wa-breaker/", env!("CARGO_PKG_VERSION")),
        )
        .body(Body::empty())
        .map_err(|e| format!("bad health URL {uri}: {e}"))?;
    let fetch = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok::<(StatusCode, Bytes), String>((status, body))
    };
    match tokio::time::timeout(timeout, fetch).await {
        Err(_) => Err(format!("no answer within {timeout:?}")),
        Ok(r) => r,
    }
}

/// Reads a Health Status answer of `node` (pure; unit-tested).
pub fn classify(node: Node<'_>, status: StatusCode, body: &[u8]) -> PollOutcome {
    if status.is_success() {
        return match health::parse(body) {
            Ok(hs) => PollOutcome::Status {
                verdict: match node {
                    Node::Waba(id) => hs.verdict_for_waba(id),
                    Node::Phone(id) => hs.verdict_for_phone(id),
                },
                raw: hs.raw,
            },
            Err(e) => PollOutcome::Error(format!("HTTP {}: {e}", status.as_u16())),
        };
    }
    let f = envelope::failure(status.as_u16(), body);
    if f.auth {
        PollOutcome::AuthError(f.what)
    } else {
        PollOutcome::Error(f.what)
    }
}

/// Applies a poll's verdict to the circuit with table key `key` (a WABA id, or
/// `phone:{id}`). Returns true when the circuit is closed afterwards (polling stops).
pub fn record(table: &Table, key: &str, verdict: &Verdict, raw: Value) -> bool {
    let Some(cur) = table.get(key) else {
        return true;
    };
    if !cur.is_open() {
        return true;
    }
    let now = Utc::now();
    let evidence = Some(Evidence::Health { health_status: raw });
    let summary = verdict.summary();
    let change = |action, source, reason| Change {
        waba_id: cur.waba_id.clone(),
        phone_number_id: cur.phone_number_id.clone(),
        template: None,
        country: None,
        recipient: None,
        action,
        source,
        at: now,
        reason,
        evidence: evidence.clone(),
    };
    let change = match verdict {
        Verdict::Available => change(Action::Close, Source::Health, summary),
        // The known end has passed and Meta does not say BLOCKED: the restriction is over.
        Verdict::Limited { .. } if cur.until.is_some_and(|u| u <= now) => change(
            Action::Expire {
                until: cur.until.unwrap_or(now),
            },
            Source::Expiry,
            format!("restriction ended; {summary}"),
        ),
        Verdict::Limited { .. } | Verdict::Blocked { .. } => {
            if last_health_note(&cur) == Some(summary.as_str()) {
                return false;
            }
            change(Action::Note, Source::Health, summary)
        }
    };
    table.apply(change);
    table.get(key).is_none_or(|c| !c.is_open())
}

/// The reason of the newest health note recorded since the circuit last changed state.
fn last_health_note(c: &Circuit) -> Option<&str> {
    c.history
        .iter()
        .rev()
        .take_while(|t| t.note)
        .find(|t| t.note && t.source == Source::Health)
        .map(|t| t.reason.as_str())
}

/// `base` ± `jitter` (a fraction), at least 1 ms.
pub fn jittered(base: Duration, jitter: f64) -> Duration {
    let f = if jitter > 0.0 {
        1.0 + jitter * rand::random_range(-1.0..=1.0)
    } else {
        1.0
    };
    base.mul_f64(f.max(0.0)).max(Duration::from_millis(1))
}

/// The wait before the next poll after `failures` failures in a row:
/// `interval · 2^failures`, capped at `max_backoff` (never below `interval`).
pub fn next_delay(h: &HealthConfig, failures: u32) -> Duration {
    let base = if failures == 0 {
        h.interval
    } else {
        let cap = h.max_backoff.max(h.interval);
        h.interval
            .checked_mul(1u32 << failures.min(20))
            .map_or(cap, |d| d.min(cap))
    };
    jittered(base, h.jitter)
}

/// True while `c` is polled: open, and not held open by an operator (nor a template's or a
/// country's circuit: Health Status reports neither).
fn pollable(c: &Circuit) -> bool {
    c.is_open() && c.source != Source::Admin && c.template.is_none() && c.country.is_none()
}

/// The per-circuit poll loop (`key`: a WABA id or `phone:{id}`); ends when the circuit is
/// closed (by any source) or is held open by an operator.
///
/// It wakes every `interval` (± jitter) — more often while backing off with a shared
/// gate, so the lease is renewed — and asks `gate` at each wake: poll (this replica holds
/// the lease and the budget allows it), skip, or nothing due.
pub async fn poll_loop(
    table: Arc<Table>,
    checker: Arc<HealthChecker>,
    gate: Arc<PollGate>,
    cfg: HealthConfig,
    key: String,
) {
    let mut failures: u32 = 0;
    let mut auth_logged = false;
    // The first poll is due at the first wake, one interval after the circuit opened.
    let mut due_at = tokio::time::Instant::now();
    loop {
        let until_due = due_at.saturating_duration_since(tokio::time::Instant::now());
        let nap = if until_due.is_zero() {
            jittered(cfg.interval, cfg.jitter)
        } else {
            gate.renew_every().map_or(until_due, |r| r.min(until_due))
        };
        tokio::time::sleep(nap).await;
        let Some(cur) = table.get(&key).filter(pollable) else {
            gate.release(&key).await;
            return;
        };
        let due = tokio::time::Instant::now() >= due_at;
        match gate
            .decide(&key, &fleet::budget_id(&table, &cur), due)
            .await
        {
            Decision::Poll => {}
            // Not due, or another replica polls (a standby is due at every wake), or the
            // budget is spent (due again next wake: the window may have turned).
            Decision::Idle | Decision::Skip(_) => continue,
        }
        match checker.check_node(Node::of(&cur)).await {
            PollOutcome::Status { verdict, raw } => {
                failures = 0;
                due_at = tokio::time::Instant::now();
                tracing::debug!(circuit = %key, verdict = verdict.as_str(), "health poll");
                if record(&table, &key, &verdict, raw) {
                    gate.release(&key).await;
                    return;
                }
            }
            PollOutcome::AuthError(what) => {
                failures = failures.saturating_add(1);
                due_at = tokio::time::Instant::now() + next_delay(&cfg, failures);
                if !auth_logged {
                    auth_logged = true;
                    tracing::error!(
                        circuit = %key,
                        error = %what,
                        "health poll refused the access token (health.access_token expired or without access to this WABA); backing off — the circuit stays as it is"
                    );
                }
            }
            PollOutcome::Error(what) => {
                failures = failures.saturating_add(1);
                due_at = tokio::time::Instant::now() + next_delay(&cfg, failures);
                tracing::warn!(circuit = %key, error = %what, failures, "health poll failed; backing off");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::Scope;
    use chrono::Duration as Cd;
    use serde_json::json;

    const WABA: &str = "102290129340398";

    fn hcfg(interval_ms: u64, max_ms: u64, jitter: f64) -> HealthConfig {
        HealthConfig {
            interval: Duration::from_millis(interval_ms),
            max_backoff: Duration::from_millis(max_ms),
            jitter,
            ..HealthConfig::default()
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let h = hcfg(100, 1000, 0.0);
        let ms = |f| next_delay(&h, f).as_millis();
        assert_eq!(
            [ms(0), ms(1), ms(2), ms(3), ms(4), ms(40)],
            [100, 200, 400, 800, 1000, 1000]
        );
        // A cap below the interval never makes failures poll faster.
        assert_eq!(next_delay(&hcfg(500, 100, 0.0), 3).as_millis(), 500);
    }

    #[test]
    fn jitter_stays_in_bounds() {
        for _ in 0..200 {
            let d = jittered(Duration::from_millis(1000), 0.2).as_millis();
            assert!((800..=1200).contains(&d), "{d}");
        }
        assert_eq!(jittered(Duration::from_millis(7), 0.0).as_millis(), 7);
        assert!(jittered(Duration::ZERO, 1.0) >= Duration::from_millis(1));
    }

    #[test]
    fn classifies_answers() {
        let ok = json!({"health_status": {"can_send_message": "AVAILABLE", "entities": [
            {"entity_type": "WABA", "id": WABA, "can_send_message": "AVAILABLE"}]}});
        let PollOutcome::Status { verdict, raw } =
            classify(Node::Waba(WABA), StatusCode::OK, ok.to_string().as_bytes())
        else {
            panic!()
        };
        assert_eq!(verdict, Verdict::Available);
        assert_eq!(raw["can_send_message"], "AVAILABLE");

        let expired = br#"{"error":{"message":"Error validating access token","type":"OAuthException","code":190}}"#;
        assert!(matches!(
            classify(Node::Waba(WABA), StatusCode::UNAUTHORIZED, expired),
            PollOutcome::AuthError(_)
        ));
        assert!(matches!(
            classify(Node::Waba(WABA), StatusCode::BAD_REQUEST, expired),
            PollOutcome::AuthError(_)
        ));
        assert!(matches!(
            classify(Node::Waba(WABA), StatusCode::UNAUTHORIZED, b""),
            PollOutcome::AuthError(_)
        ));
        assert!(matches!(
            classify(Node::Waba(WABA), StatusCode::INTERNAL_SERVER_ERROR, b"oops"),
            PollOutcome::Error(_)
        ));
        let perm = br#"{"error":{"message":"no permission","code":200}}"#;
        assert!(matches!(
            classify(Node::Waba(WABA), StatusCode::FORBIDDEN, perm),
            PollOutcome::Error(_)
        ));
        assert!(matches!(
            classify(Node::Waba(WABA), StatusCode::OK, b"{}"),
            PollOutcome::Error(_)
        ));
    }

    fn open_table(until: Option<chrono::DateTime<Utc>>) -> Table {
        let t = Table::new("test", 20);
        t.apply(Change {
            waba_id: WABA.into(),
            phone_number_id: None,
            template: None,
            country: None,
            recipient: None,
            action: Action::Open {
                scope: Scope::AllSends,
                code: Some(368),
                until,
            },
            source: Source::Send,
            at: Utc::now() - Cd::seconds(10),
            reason: "368".into(),
            evidence: None,
        });
        t
    }

    fn blocked() -> Verdict {
        Verdict::Blocked {
            errors: vec![(
                "WABA".into(),
                health::HealthError {
                    error_code: Some(141006),
                    error_description: Some("restricted".into()),
                    possible_solution: None,
                },
            )],
        }
    }

    #[test]
    fn available_closes() {
        let t = open_table(None);
        assert!(record(
            &t,
            WABA,
            &Verdict::Available,
            json!({"can_send_message": "AVAILABLE"})
        ));
        let c = t.get(WABA).unwrap();
        assert!(!c.is_open());
        assert_eq!(c.source, Source::Health);
        assert!(matches!(
            c.history.last().unwrap().evidence,
            Some(Evidence::Health { .. })
        ));
    }

    #[test]
    fn steady_blocked_is_recorded_once() {
        let t = open_table(None);
        for _ in 0..3 {
            assert!(!record(&t, WABA, &blocked(), json!({})));
        }
        let c = t.get(WABA).unwrap();
        assert!(c.is_open());
        let notes: Vec<_> = c.history.iter().filter(|h| h.note).collect();
        assert_eq!(notes.len(), 1);
        assert_eq!(
            notes[0].reason,
            "health_status: BLOCKED (WABA 141006: restricted)"
        );
        // A different answer is recorded; going back is recorded again.
        let limited = Verdict::Limited { info: vec![] };
        assert!(!record(&t, WABA, &limited, json!({})));
        assert!(!record(&t, WABA, &limited, json!({})));
        assert!(!record(&t, WABA, &blocked(), json!({})));
        let c = t.get(WABA).unwrap();
        assert_eq!(c.history.iter().filter(|h| h.note).count(), 3);
        assert!(c.is_open());
    }

    #[test]
    fn limited_keeps_open_until_the_known_end_passed() {
        let t = open_table(Some(Utc::now() + Cd::hours(1)));
        assert!(!record(
            &t,
            WABA,
            &Verdict::Limited { info: vec![] },
            json!({})
        ));
        assert!(t.get(WABA).unwrap().is_open());

        // An until in the past (e.g. held by a BLOCKED poll at expiry): LIMITED expires it.
        let t = Table::new("test", 20);
        let until = Utc::now() + Cd::milliseconds(50);
        t.apply(crate::circuit::testing::open(
            WABA,
            Scope::BusinessInitiated,
            Some(until),
            Source::Webhook,
        ));
        std::thread::sleep(Duration::from_millis(80));
        assert!(!record(&t, WABA, &blocked(), json!({})));
        assert!(t.get(WABA).unwrap().is_open());
        assert!(record(
            &t,
            WABA,
            &Verdict::Limited { info: vec![] },
            json!({})
        ));
        assert_eq!(t.get(WABA).unwrap().source, Source::Expiry);
    }

    #[test]
    fn closed_or_unknown_circuits_stop_polling() {
        let t = Table::new("test", 20);
        assert!(record(&t, WABA, &blocked(), json!({})));
        assert!(t.get(WABA).is_none());
    }
}
