//! Meta's webhook receiver, on the main listener at `webhook.path`.
//!
//! - `GET` answers Meta's subscription check (`hub.mode=subscribe`, `hub.verify_token`,
//!   `hub.challenge`): 200 with the challenge, else 403.
//! - `POST` verifies `X-Hub-Signature-256` against the raw body with every configured app
//!   secret (constant time), then applies each `account_update` change of the delivery to
//!   its WABA's circuit by event time (see [`plan`]), relays the delivery unchanged to
//!   `webhook.forward_url` when set, and answers 200 once the changes are durable and the
//!   relay succeeded — anything else is non-2xx so Meta delivers again (changes are
//!   idempotent: a redelivery is a no-op).
//!
//! | answer | when |
//! |---|---|
//! | 200 | applied (or nothing to apply), durable, relayed |
//! | 400 | valid signature, body not a webhook envelope (nothing changes, nothing relayed) |
//! | 401 | `X-Hub-Signature-256` missing, not `sha256=<64 hex>`, or matching no app secret |
//! | 413 | body over `webhook.max_body` |
//! | 502 | the relay to `forward_url` failed or answered non-2xx |
//! | 503 | no `app_secret` configured; or the changes were not durable in time |

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, KeyInit, Mac};
use http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri,
};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use sha2::Sha256;

use super::health::{HealthChecker, PollOutcome};
use crate::circuit::{Action, Change, Evidence, Scope, Source, Table};
use crate::config::{is_graph_id, Config, Secret};
use crate::graph::health::Verdict;
use crate::graph::webhook::{
    self as payload, AccountEvent, BanState, ChangeItem, Entry, RestrictionKind,
};
use crate::metrics::METRICS;
use crate::proxy::upstream::error_chain;
use crate::proxy::{Body, HttpClient};

/// The signature header Meta sets on every POST.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// How long a delivery waits for its changes to be durable before answering 503.
const DURABLE_WAIT: Duration = Duration::from_secs(5);

/// Graph error code local replies carry for circuits opened by a webhook.
const WEBHOOK_CODE: i64 = 368;

/// Headers relayed to `forward_url` besides the body.
const RELAYED: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    HeaderName::from_static(SIGNATURE_HEADER),
    HeaderName::from_static("x-hub-signature"),
    header::USER_AGENT,
];

/// The webhook receiver on the main listener.
pub struct Webhook {
    path: String,
    secrets: Vec<Secret>,
    verify_token: Option<Secret>,
    forward: Option<Uri>,
    forward_timeout: Duration,
    max_body: usize,
    violation_opens: bool,
    table: Arc<Table>,
    client: HttpClient,
    health: Option<Arc<HealthChecker>>,
    warned_unconfigured: AtomicBool,
}

impl Webhook {
    /// A receiver for `cfg.webhook`; `health` (from [`super::Signals::health`]) checks
    /// Health Status at once after an `ACCOUNT_VIOLATION`.
    pub fn new(
        cfg: &Config,
        table: Arc<Table>,
        client: HttpClient,
        health: Option<Arc<HealthChecker>>,
    ) -> Webhook {
        let w = &cfg.webhook;
        // Validated at load time; an unparsable URL here would be a bug, not a config error.
        let forward = w.forward_url.as_deref().and_then(|u| u.parse::<Uri>().ok());
        if w.app_secret.is_empty() {
            tracing::warn!(path = %w.path, "webhook.app_secret is not set: POSTs to the webhook path are refused (503) until it is");
        } else {
            tracing::info!(
                path = %w.path,
                app_secrets = w.app_secret.len(),
                relay = forward.is_some(),
                "webhook receiver ready"
            );
        }
        Webhook {
            path: w.path.clone(),
            secrets: w.app_secret.clone(),
            verify_token: w.verify_token.clone(),
            forward,
            forward_timeout: w.forward_timeout,
            max_body: w.max_body,
            violation_opens: w.violation_opens,
            table,
            client,
            health,
            warned_unconfigured: AtomicBool::new(false),
        }
    }

    /// True for requests to the webhook path.
    pub fn matches(&self, path: &str) -> bool {
        path == self.path
    }

    /// Handles one webhook request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        match *req.method() {
            Method::GET => self.challenge(req.uri().query().unwrap_or_default()),
            Method::POST => self.post(req).await,
            _ => {
                let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "GET or POST only\n");
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
                r
            }
        }
    }

    /// Meta's subscription check.
    fn challenge(&self, query: &str) -> Response<Body> {
        let Some(token) = &self.verify_token else {
            tracing::warn!("webhook subscription check refused: webhook.verify_token is not set");
            return text(StatusCode::FORBIDDEN, "verify_token is not configured\n");
        };
        let mode = query_param(query, "hub.mode");
        let given = query_param(query, "hub.verify_token");
        let challenge = query_param(query, "hub.challenge");
        let ok = mode.as_deref() == Some("subscribe")
            && given.as_deref().is_some_and(|g| token.matches(g))
            && challenge
                .as_deref()
                .is_some_and(|c| !c.is_empty() && c.len() <= 1024);
        match (ok, challenge) {
            (true, Some(c)) => {
                tracing::info!("webhook subscription verified");
                text(StatusCode::OK, &c)
            }
            _ => {
                tracing::warn!(
                    mode = mode.as_deref(),
                    "webhook subscription check refused (wrong mode, token or challenge)"
                );
                text(StatusCode::FORBIDDEN, "verification failed\n")
            }
        }
    }

    async fn post(&self, req: Request<Incoming>) -> Response<Body> {
        METRICS.webhooks.with_label_values(&["received"]).inc();
        if self.secrets.is_empty() {
            if !self.warned_unconfigured.swap(true, Ordering::Relaxed) {
                tracing::error!("webhook POST refused: webhook.app_secret is not configured, so Meta's signature cannot be verified (this is logged once)");
            }
            METRICS
                .webhooks
                .with_label_values(&["rejected_signature"])
                .inc();
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "webhook.app_secret is not configured\n",
            );
        }
        let Some(sig) = signature(req.headers()) else {
            METRICS
                .webhooks
                .with_label_values(&["rejected_signature"])
                .inc();
            tracing::warn!("webhook POST rejected: missing or malformed X-Hub-Signature-256");
            return text(
                StatusCode::UNAUTHORIZED,
                "missing or invalid X-Hub-Signature-256\n",
            );
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return too_large(self.max_body);
        }
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, self.max_body).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return too_large(self.max_body)
            }
            Err(e) => {
                tracing::debug!(error = %e, "webhook body aborted");
                return text(StatusCode::BAD_REQUEST, "body could not be read\n");
            }
        };
        if !verify(&self.secrets, &body, &sig) {
            METRICS
                .webhooks
                .with_label_values(&["rejected_signature"])
                .inc();
            tracing::warn!(
                bytes = body.len(),
                "webhook POST rejected: X-Hub-Signature-256 matches no configured app secret"
            );
            return text(StatusCode::UNAUTHORIZED, "invalid X-Hub-Signature-256\n");
        }
        let env = match payload::parse(&body) {
            Ok(env) => env,
            Err(e) => {
                METRICS.webhooks.with_label_values(&["invalid"]).inc();
                tracing::warn!(error = %e, "signed webhook POST is not a webhook envelope; nothing applied");
                return text(StatusCode::BAD_REQUEST, &format!("{e}\n"));
            }
        };

        let last_seq = self.apply(&env);
        let durable = async {
            match last_seq {
                Some(seq) => self.table.wait_durable(seq, DURABLE_WAIT).await,
                None => true,
            }
        };
        let relay = async {
            match &self.forward {
                Some(uri) => self.relay(uri, &parts.headers, body.clone()).await,
                None => Ok(()),
            }
        };
        let (durable, relayed) = tokio::join!(durable, relay);
        if !durable {
            tracing::warn!("webhook changes applied but not durable in time; answering 503 so Meta delivers again");
            return text(StatusCode::SERVICE_UNAVAILABLE, "state not yet durable\n");
        }
        if let Err(e) = relayed {
            METRICS.webhooks.with_label_values(&["relay_failed"]).inc();
            tracing::warn!(error = %e, "webhook relay to forward_url failed; answering 502 so Meta delivers again");
            return text(StatusCode::BAD_GATEWAY, "relay to forward_url failed\n");
        }
        text(StatusCode::OK, "ok\n")
    }

    /// Applies a delivery's changes; returns the sequence number of the last applied one.
    fn apply(&self, env: &payload::Envelope) -> Option<u64> {
        if env.skipped > 0 {
            tracing::info!(
                skipped = env.skipped,
                "webhook entries or changes without id/field skipped"
            );
        }
        if !env.object.is_empty() && env.object != payload::OBJECT_WABA {
            tracing::info!(object = %env.object, "webhook for another object: relayed only");
            return None;
        }
        let now = Utc::now();
        let has_token = self.health.is_some();
        let mut last = None;
        for entry in &env.entries {
            for ch in &entry.changes {
                let Some(step) = plan(entry, ch, now, self.violation_opens, has_token) else {
                    if ch.field == payload::FIELD_ACCOUNT_UPDATE {
                        tracing::info!(waba_id = %entry.id, event = ch.event_name(), "account_update event ignored (not about sending)");
                    } else {
                        tracing::debug!(waba_id = %entry.id, field = %ch.field, "webhook field not acted on");
                    }
                    continue;
                };
                let check = step.check_health.then(|| step.change.clone());
                if let Some((_, seq)) = self.table.apply(step.change) {
                    METRICS.webhooks.with_label_values(&["applied"]).inc();
                    last = Some(seq);
                }
                if let (Some(note), Some(checker)) = (check, &self.health) {
                    tokio::spawn(check_violation(
                        self.table.clone(),
                        checker.clone(),
                        note,
                        self.violation_opens,
                    ));
                }
            }
        }
        last
    }

    async fn relay(&self, uri: &Uri, headers: &HeaderMap, body: Bytes) -> Result<(), String> {
        let mut req = Request::post(uri.clone());
        if let Some(h) = req.headers_mut() {
            for name in RELAYED.iter() {
                for v in headers.get_all(name) {
                    h.append(name.clone(), v.clone());
                }
            }
        }
        let req = req.body(Body::full(body)).map_err(|e| e.to_string())?;
        let send = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| error_chain(&e))?;
            let status = resp.status();
            // Read (a bounded part of) the answer so the connection can be reused.
            let _ = Limited::new(resp.into_body(), 64 * 1024).collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("forward_url answered HTTP {}", status.as_u16()))
            }
        };
        match tokio::time::timeout(self.forward_timeout, send).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.forward_timeout)),
        }
    }
}

/// One circuit change planned from a webhook change.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub change: Change,
    /// An `ACCOUNT_VIOLATION` recorded as a note: check Health Status now.
    pub check_health: bool,
}

/// Maps one `changes[]` element of `entry` to a circuit change (pure; unit-tested).
/// `None` for fields and events that are not about sending, and for entries whose id is not
/// a WABA id.
///
/// - `ACCOUNT_RESTRICTION`: `RESTRICTED_CUSTOMER_INITIATED_MESSAGING` → open, all sends;
///   `RESTRICTED_BIZ_INITIATED_MESSAGING` → open, template sends; `until` = the latest
///   `expiration` of those (none if one has none). Other types only → a note.
/// - `DISABLED_UPDATE`: `DISABLE` → open (no `until`); `REINSTATE` → close;
///   `SCHEDULE_FOR_DISABLE` and anything else → a note.
/// - `ACCOUNT_VIOLATION` → a note, and a health check when a token is configured; opens
///   at once instead when `violation_opens` is set and there is no token.
/// - Lifecycle events → a note.
///
/// The event time is the change's own timestamp, else `entry.time`, else `now`.
pub fn plan(
    entry: &Entry,
    ch: &ChangeItem,
    now: DateTime<Utc>,
    violation_opens: bool,
    has_token: bool,
) -> Option<Step> {
    let event = ch.account_event()?;
    if !is_graph_id(&entry.id) {
        tracing::warn!(entry_id = %entry.id, "account_update for an id that is not a WABA id: ignored");
        return None;
    }
    let at = entry.event_time(ch, now);
    let name = ch.event_name().unwrap_or_default().to_string();
    let evidence = Some(Evidence::Webhook {
        entry_id: entry.id.clone(),
        field: ch.field.clone(),
        event: name.clone(),
        value: ch.value.clone(),
    });
    let step = |action: Action, reason: String, check_health: bool| Step {
        change: Change {
            waba_id: entry.id.clone(),
            action,
            source: Source::Webhook,
            at,
            reason,
            evidence: evidence.clone(),
        },
        check_health,
    };
    let open = |scope: Scope, until: Option<DateTime<Utc>>| Action::Open {
        scope,
        code: Some(WEBHOOK_CODE),
        until,
    };
    Some(match event {
        AccountEvent::Restriction(rs) => {
            let types: Vec<String> = rs
                .iter()
                .map(|r| match (r.expiration, r.bad_expiration) {
                    (Some(e), _) => format!("{} until {}", r.restriction_type, rfc3339(e)),
                    (None, true) => format!("{} (unreadable expiration)", r.restriction_type),
                    (None, false) => r.restriction_type.clone(),
                })
                .collect();
            let blocking: Vec<_> = rs
                .iter()
                .filter(|r| r.kind != RestrictionKind::Other)
                .collect();
            let listed = if types.is_empty() {
                "no restriction types".to_string()
            } else {
                types.join(", ")
            };
            if blocking.is_empty() {
                step(
                    Action::Note,
                    format!("account_update ACCOUNT_RESTRICTION: {listed} (not a send block)"),
                    false,
                )
            } else {
                let scope = if blocking
                    .iter()
                    .any(|r| r.kind == RestrictionKind::CustomerInitiated)
                {
                    Scope::AllSends
                } else {
                    Scope::BusinessInitiated
                };
                // Conservative: the circuit stays as wide as its widest restriction until
                // the last one ends.
                let until = blocking
                    .iter()
                    .map(|r| r.expiration)
                    .collect::<Option<Vec<_>>>()
                    .and_then(|v| v.into_iter().max());
                step(
                    open(scope, until),
                    format!("account_update ACCOUNT_RESTRICTION: {listed}"),
                    false,
                )
            }
        }
        AccountEvent::Disabled { state, date } => {
            let date = date
                .map(|d| format!(" (waba_ban_date {d})"))
                .unwrap_or_default();
            let reason = format!("account_update DISABLED_UPDATE: {}{date}", state.as_str());
            match state {
                BanState::Disable => step(open(Scope::AllSends, None), reason, false),
                BanState::Reinstate => step(Action::Close, reason, false),
                BanState::ScheduleForDisable => step(
                    Action::Note,
                    format!("{reason}: disablement scheduled, sends still work"),
                    false,
                ),
                BanState::Unknown(_) => step(
                    Action::Note,
                    format!("{reason}: unknown ban state, not acted on"),
                    false,
                ),
            }
        }
        AccountEvent::Violation { violation_type } => {
            let reason = format!(
                "account_update ACCOUNT_VIOLATION: {}",
                violation_type.as_deref().unwrap_or("unspecified")
            );
            if violation_opens && !has_token {
                step(open(Scope::AllSends, None), reason, false)
            } else {
                step(Action::Note, reason, has_token)
            }
        }
        AccountEvent::Lifecycle(e) => step(
            Action::Note,
            format!("account_update {e} (account lifecycle; not a send block)"),
            false,
        ),
        AccountEvent::Other(_) => return None,
    })
}

/// After an `ACCOUNT_VIOLATION`: one Health Status poll; BLOCKED opens the circuit with the
/// violation as evidence. A failed poll opens only when `violation_opens` is set.
async fn check_violation(
    table: Arc<Table>,
    checker: Arc<HealthChecker>,
    note: Change,
    violation_opens: bool,
) {
    let waba_id = note.waba_id.clone();
    let why = match checker.check(&waba_id).await {
        PollOutcome::Status {
            verdict: verdict @ Verdict::Blocked { .. },
            ..
        } => verdict.summary(),
        PollOutcome::Status { verdict, .. } => {
            tracing::info!(waba_id, health = %verdict.summary(), "violation recorded; Health Status does not say BLOCKED, the circuit is not opened");
            return;
        }
        PollOutcome::AuthError(e) | PollOutcome::Error(e) => {
            if !violation_opens {
                tracing::warn!(waba_id, error = %e, "violation recorded; the health check failed, the circuit is not opened");
                return;
            }
            format!("health check failed ({e}); webhook.violation_opens is set")
        }
    };
    table.apply(Change {
        action: Action::Open {
            scope: Scope::AllSends,
            code: Some(WEBHOOK_CODE),
            until: None,
        },
        // The violation is older; the block is what Meta says now.
        at: Utc::now().max(note.at),
        reason: format!("{}; {why}", note.reason),
        ..note
    });
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The 32 signature bytes of `X-Hub-Signature-256: sha256=<hex>`, if well-formed.
fn signature(h: &HeaderMap) -> Option<[u8; 32]> {
    let v = h.get(SIGNATURE_HEADER)?.to_str().ok()?.trim();
    let (algo, hex_sig) = v.split_once('=')?;
    if !algo.eq_ignore_ascii_case("sha256") {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_sig, &mut out).ok()?;
    Some(out)
}

/// True when `sig` is the HMAC-SHA256 of `body` under any of `secrets` (constant time).
pub fn verify(secrets: &[Secret], body: &[u8], sig: &[u8]) -> bool {
    let mut ok = false;
    for s in secrets {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(s.expose().as_bytes()) else {
            continue;
        };
        mac.update(body);
        // No early exit: every secret is tried.
        ok |= mac.verify_slice(sig).is_ok();
    }
    ok
}

/// The first value of `name` in a query string, percent-decoded (`+` is a space).
fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn too_large(max: usize) -> Response<Body> {
    METRICS.webhooks.with_label_values(&["invalid"]).inc();
    tracing::warn!(
        max_body = max,
        "webhook POST rejected: body over webhook.max_body"
    );
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("body over {max} bytes (webhook.max_body)\n"),
    )
}

fn text(status: StatusCode, s: &str) -> Response<Body> {
    let mut r = Response::new(Body::full(s.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::{json, Value};

    const WABA: &str = "102290129340398";
    const T: i64 = 1_900_000_000;

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(T + 100, 0).unwrap()
    }

    fn plan_value(value: Value, opens: bool, token: bool) -> Option<Step> {
        let body = json!({"object": "whatsapp_business_account", "entry": [
            {"id": WABA, "time": T, "changes": [{"field": "account_update", "value": value}]}]});
        let env = payload::parse(body.to_string().as_bytes()).unwrap();
        let e = &env.entries[0];
        plan(e, &e.changes[0], now(), opens, token)
    }

    fn planned(value: Value) -> Change {
        plan_value(value, false, false).expect("a step").change
    }

    fn restriction(types: &[(&str, Value)]) -> Value {
        let info: Vec<Value> = types
            .iter()
            .map(|(t, e)| json!({"restriction_type": t, "expiration": e}))
            .collect();
        json!({"event": "ACCOUNT_RESTRICTION", "restriction_info": info})
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    #[test]
    fn biz_initiated_restriction_opens_template_scope_until_expiration() {
        let c = planned(restriction(&[(
            "RESTRICTED_BIZ_INITIATED_MESSAGING",
            json!(T + 3600),
        )]));
        assert_eq!(
            c.action,
            Action::Open {
                scope: Scope::BusinessInitiated,
                code: Some(368),
                until: Some(at(T + 3600))
            }
        );
        assert_eq!(c.source, Source::Webhook);
        assert_eq!(c.at, at(T));
        assert_eq!(c.waba_id, WABA);
        assert!(c
            .reason
            .contains("RESTRICTED_BIZ_INITIATED_MESSAGING until"));
        let Some(Evidence::Webhook {
            entry_id,
            field,
            event,
            value,
        }) = c.evidence
        else {
            panic!()
        };
        assert_eq!(
            (entry_id.as_str(), field.as_str(), event.as_str()),
            (WABA, "account_update", "ACCOUNT_RESTRICTION")
        );
        assert_eq!(value["event"], "ACCOUNT_RESTRICTION");
    }

    #[test]
    fn iso_expiration_is_accepted() {
        let c = planned(restriction(&[(
            "RESTRICTED_CUSTOMER_INITIATED_MESSAGING",
            json!("2030-04-19T13:59:20+0000"),
        )]));
        let want = DateTime::parse_from_rfc3339("2030-04-19T13:59:20Z").unwrap();
        assert_eq!(
            c.action,
            Action::Open {
                scope: Scope::AllSends,
                code: Some(368),
                until: Some(want.with_timezone(&Utc))
            }
        );
    }

    #[test]
    fn widest_scope_and_last_expiration_win() {
        let c = planned(restriction(&[
            ("RESTRICTED_BIZ_INITIATED_MESSAGING", json!(T + 7200)),
            ("RESTRICTED_CUSTOMER_INITIATED_MESSAGING", json!(T + 3600)),
            ("RESTRICTED_ADD_PHONE_NUMBER_ACTION", json!(T + 99999)),
        ]));
        assert_eq!(
            c.action,
            Action::Open {
                scope: Scope::AllSends,
                code: Some(368),
                until: Some(at(T + 7200))
            }
        );
        // One blocking restriction without an end: no until.
        let c = planned(restriction(&[
            ("RESTRICTED_BIZ_INITIATED_MESSAGING", json!(T + 7200)),
            ("RESTRICTED_BIZ_INITIATED_MESSAGING", Value::Null),
        ]));
        assert!(matches!(
            c.action,
            Action::Open {
                until: None,
                scope: Scope::BusinessInitiated,
                ..
            }
        ));
        let c = planned(restriction(&[(
            "RESTRICTED_BIZ_INITIATED_MESSAGING",
            json!("soon"),
        )]));
        assert!(matches!(c.action, Action::Open { until: None, .. }));
        assert!(c.reason.contains("unreadable expiration"));
    }

    #[test]
    fn other_restrictions_are_notes() {
        let c = planned(restriction(&[
            ("RESTRICTED_ADD_PHONE_NUMBER_ACTION", json!(T + 10)),
            ("RESTRICTED_BIZ_INITIATED_CALLING", Value::Null),
        ]));
        assert_eq!(c.action, Action::Note);
        assert!(c.reason.contains("RESTRICTED_ADD_PHONE_NUMBER_ACTION"));
        assert!(c.reason.contains("not a send block"));
        let c = planned(json!({"event": "ACCOUNT_RESTRICTION", "restriction_info": []}));
        assert_eq!(c.action, Action::Note);
    }

    #[test]
    fn disabled_updates() {
        let c = planned(
            json!({"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": "DISABLE", "waba_ban_date": "April 17, 2025"}}),
        );
        assert_eq!(
            c.action,
            Action::Open {
                scope: Scope::AllSends,
                code: Some(368),
                until: None
            }
        );
        assert!(c.reason.contains("April 17, 2025"));
        let c = planned(
            json!({"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": ["DISABLE"]}}),
        );
        assert!(matches!(c.action, Action::Open { .. }));
        for s in [json!("REINSTATE"), json!(["REINSTATE"])] {
            let c = planned(json!({"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": s}}));
            assert_eq!(c.action, Action::Close);
        }
        let c = planned(
            json!({"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": "SCHEDULE_FOR_DISABLE"}}),
        );
        assert_eq!(c.action, Action::Note);
        assert!(c.reason.contains("SCHEDULE_FOR_DISABLE"));
        let c = planned(
            json!({"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": ["DISABLE", "REINSTATE"]}}),
        );
        assert_eq!(c.action, Action::Note);
    }

    #[test]
    fn violations() {
        let v =
            json!({"event": "ACCOUNT_VIOLATION", "violation_info": {"violation_type": "ADULT"}});
        // No token: a note; with the switch: open.
        let s = plan_value(v.clone(), false, false).unwrap();
        assert_eq!(
            (s.change.action.clone(), s.check_health),
            (Action::Note, false)
        );
        assert!(s.change.reason.ends_with("ADULT"));
        let s = plan_value(v.clone(), true, false).unwrap();
        assert!(matches!(
            s.change.action,
            Action::Open {
                scope: Scope::AllSends,
                until: None,
                ..
            }
        ));
        // Token: a note and a health check (the switch only matters if the check fails).
        for opens in [false, true] {
            let s = plan_value(v.clone(), opens, true).unwrap();
            assert_eq!((s.change.action, s.check_health), (Action::Note, true));
        }
    }

    #[test]
    fn lifecycle_notes_and_ignored_events() {
        for e in [
            "ACCOUNT_DELETED",
            "PARTNER_REMOVED",
            "ACCOUNT_OFFBOARDED",
            "PARTNER_APP_UNINSTALLED",
            "ACCOUNT_RECONNECTED",
        ] {
            let c = planned(json!({ "event": e }));
            assert_eq!(c.action, Action::Note, "{e}");
            assert!(c.reason.contains(e));
        }
        for e in ["VERIFIED_ACCOUNT", "MM_LITE_TERMS_SIGNED", "SOMETHING_NEW"] {
            assert!(
                plan_value(json!({ "event": e }), true, true).is_none(),
                "{e}"
            );
        }
        assert!(plan_value(json!({}), true, true).is_none());
    }

    #[test]
    fn other_fields_and_bad_ids_are_not_planned() {
        let body = json!({"entry": [
            {"id": WABA, "changes": [{"field": "messages", "value": {"event": "DISABLED_UPDATE"}}]},
            {"id": "not-a-waba", "time": T, "changes": [{"field": "account_update", "value": {"event": "ACCOUNT_DELETED"}}]}
        ]});
        let env = payload::parse(body.to_string().as_bytes()).unwrap();
        for e in &env.entries {
            assert!(plan(e, &e.changes[0], now(), true, true).is_none());
        }
    }

    #[test]
    fn event_time_falls_back_to_now() {
        let body = json!({"entry": [{"id": WABA, "changes": [{"field": "account_update", "value": {"event": "ACCOUNT_DELETED"}}]}]});
        let env = payload::parse(body.to_string().as_bytes()).unwrap();
        let e = &env.entries[0];
        assert_eq!(
            plan(e, &e.changes[0], now(), false, false)
                .unwrap()
                .change
                .at,
            now()
        );
    }

    #[test]
    fn signatures() {
        let secrets = vec![Secret::new("first"), Secret::new("second")];
        let body = br#"{"entry":[]}"#;
        let mac = |k: &str| {
            let mut m = Hmac::<Sha256>::new_from_slice(k.as_bytes()).unwrap();
            m.update(body);
            m.finalize().into_bytes().to_vec()
        };
        assert!(verify(&secrets, body, &mac("first")));
        assert!(verify(&secrets, body, &mac("second")));
        assert!(!verify(&secrets, body, &mac("third")));
        assert!(!verify(&secrets, b"other", &mac("first")));
        assert!(!verify(&[], body, &mac("first")));

        let mut h = HeaderMap::new();
        assert!(signature(&h).is_none());
        let hex_sig = hex::encode(mac("first"));
        h.insert(
            SIGNATURE_HEADER,
            format!("sha256={hex_sig}").parse().unwrap(),
        );
        assert_eq!(signature(&h).unwrap().to_vec(), mac("first"));
        h.insert(
            SIGNATURE_HEADER,
            format!("SHA256={}", hex_sig.to_uppercase())
                .parse()
                .unwrap(),
        );
        assert!(signature(&h).is_some());
        for bad in [
            format!("sha1={hex_sig}"),
            hex_sig.clone(),
            "sha256=".to_string(),
            "sha256=zz".to_string(),
            format!("sha256={}", &hex_sig[..62]),
            format!("sha256={hex_sig}00"),
        ] {
            h.insert(SIGNATURE_HEADER, bad.parse().unwrap());
            assert!(signature(&h).is_none(), "{bad}");
        }
    }

    #[test]
    fn query_params() {
        let q = "hub.mode=subscribe&hub.verify_token=a%20b%2Bc+d&hub.challenge=1158201444&x";
        assert_eq!(query_param(q, "hub.mode").as_deref(), Some("subscribe"));
        assert_eq!(
            query_param(q, "hub.verify_token").as_deref(),
            Some("a b+c d")
        );
        assert_eq!(
            query_param(q, "hub.challenge").as_deref(),
            Some("1158201444")
        );
        assert_eq!(query_param(q, "x").as_deref(), Some(""));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(
            query_param("hub%2Emode=subscribe", "hub.mode").as_deref(),
            Some("subscribe")
        );
        // Malformed escapes stay literal (they then simply don't match a token).
        assert_eq!(query_param("a=%zz", "a").as_deref(), Some("%zz"));
        assert!(Secret::new("tok").matches("tok"));
        assert!(!Secret::new("tok").matches("tok2"));
    }
}
