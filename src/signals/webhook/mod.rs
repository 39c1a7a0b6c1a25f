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

pub mod forward;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::Utc;
use hmac::{Hmac, KeyInit, Mac};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use sha2::Sha256;

use super::health::{HealthChecker, PollOutcome};
use crate::circuit::{Action, Change, Evidence, Scope, Table};
use crate::common::error_chain;
use crate::common::Body;
use crate::config::{Config, Secret};
use crate::graph::health::Verdict;
use crate::graph::webhook as payload;
use crate::metrics::METRICS;
use crate::policy::cooldown::{self, plan_category, FIELD_TEMPLATE_CATEGORY};
use crate::policy::country::plan_status_errors;
use crate::policy::plan::{
    known_only, message_errors, plan, plan_message_errors, FIELD_MESSAGES, WEBHOOK_CODE,
};
use crate::policy::template::{
    plan_template, plan_template_category, plan_template_quality, FIELD_TEMPLATE_QUALITY,
    FIELD_TEMPLATE_STATUS,
};
use crate::policy::warning::{plan_capability, previous_limit, FIELD_CAPABILITY};
use crate::upstream::HttpClient;
use forward::Forwarder;

/// The signature header Meta sets on every POST.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// The webhook receiver on the main listener.
pub struct Webhook {
    secrets: Vec<Secret>,
    verify_token: Option<Secret>,
    forward: Option<Forwarder>,
    max_body: usize,
    violation_opens: bool,
    /// Codes that open a WABA when a `messages` webhook reports them (`trip_codes`).
    trip_codes: Vec<i64>,
    /// How long a country circuit opened by a failed status (130497) holds (`country_hold`).
    country_hold: std::time::Duration,
    table: Arc<Table>,
    health: Option<Arc<HealthChecker>>,
    warned_unconfigured: AtomicBool,
    /// `max_event_age`: older events are acknowledged and ignored.
    max_event_age: chrono::Duration,
    /// The messaging-limit count (`messages` statuses of template messages).
    budget: Option<super::budget::Budget>,
    /// `shaping.marketing_cooldown`, or `None` with `shaping.mode = "off"` (131049 statuses
    /// then hold nothing).
    marketing_cooldown: Option<std::time::Duration>,
    /// Meta's throughput levels (`None` with `shaping.mode = "off"`): `messages` metadata
    /// teaches display numbers, `THROUGHPUT_UPGRADE` raises one.
    levels: Option<super::throughput::Levels>,
}

impl Webhook {
    /// A receiver for `cfg.webhook`; `health` (from [`super::Signals::health`]) checks
    /// Health Status at once after an `ACCOUNT_VIOLATION`.
    pub fn new(
        cfg: &Config,
        table: Arc<Table>,
        client: HttpClient,
        health: Option<Arc<HealthChecker>>,
        budget: Option<super::budget::Budget>,
        levels: Option<super::throughput::Levels>,
    ) -> Webhook {
        let w = &cfg.webhook;
        // Validated at load time; an unparsable URL here would be a bug, not a config error.
        let forward = w
            .forward_url
            .as_deref()
            .and_then(|u| u.parse::<Uri>().ok())
            .map(|uri| Forwarder::new(uri, w.forward_timeout, client));
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
            secrets: w.app_secret.clone(),
            verify_token: w.verify_token.clone(),
            forward,
            max_body: w.max_body,
            violation_opens: w.violation_opens,
            trip_codes: cfg.trip_codes.clone(),
            country_hold: cfg.country_hold,
            table,
            health,
            warned_unconfigured: AtomicBool::new(false),
            max_event_age: chrono::Duration::from_std(cfg.max_event_age)
                .unwrap_or(chrono::Duration::MAX),
            budget,
            marketing_cooldown: (cfg.shaping.mode != crate::policy::pace::ShapingMode::Off)
                .then_some(cfg.shaping.marketing_cooldown),
            levels,
        }
    }

    /// Handles one webhook request.
    pub async fn handle(self: &Arc<Self>, req: Request<Body>) -> Response<Body> {
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

    async fn post(self: &Arc<Self>, req: Request<Body>) -> Response<Body> {
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
        // A large delivery (Meta batches up to about 1 000 changes; `max_body` may allow far
        // more) is checked, parsed and applied on the blocking pool: done inline, a batch of
        // 100 000 entries held this worker's other connections for seconds.
        let accepted = if body.len() > INLINE_BODY {
            let (this, body) = (Arc::clone(self), body.clone());
            match tokio::task::spawn_blocking(move || this.accept(&body, &sig)).await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::error!(error = %e, "webhook delivery could not be applied (task failed); answering 500 so Meta delivers again");
                    return text(StatusCode::INTERNAL_SERVER_ERROR, "not applied\n");
                }
            }
        } else {
            self.accept(&body, &sig)
        };
        let last_seq = match accepted {
            Ok(seq) => seq,
            Err(Refused::Signature) => {
                return text(StatusCode::UNAUTHORIZED, "invalid X-Hub-Signature-256\n")
            }
            Err(Refused::Invalid(e)) => return text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
        };
        let durable = async {
            match last_seq {
                Some(seq) => {
                    self.table
                        .wait_durable(seq, crate::circuit::Waiter::Signal)
                        .await
                }
                None => true,
            }
        };
        let relay = async {
            match &self.forward {
                Some(f) => f.forward(&parts.headers, body.clone()).await,
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
            tracing::warn!(error = %error_chain(&e), "webhook relay to forward_url failed; answering 502 so Meta delivers again");
            return text(StatusCode::BAD_GATEWAY, "relay to forward_url failed\n");
        }
        text(StatusCode::OK, "ok\n")
    }

    /// Verifies, parses and applies one delivery's `body` signed `sig`: the sequence number
    /// of its last applied change, or why it was refused. Synchronous (CPU only).
    fn accept(&self, body: &[u8], sig: &[u8; 32]) -> Result<Option<u64>, Refused> {
        if !verify(&self.secrets, body, sig) {
            METRICS
                .webhooks
                .with_label_values(&["rejected_signature"])
                .inc();
            tracing::warn!(
                bytes = body.len(),
                "webhook POST rejected: X-Hub-Signature-256 matches no configured app secret"
            );
            return Err(Refused::Signature);
        }
        let mut env = match payload::parse(body) {
            Ok(env) => env,
            Err(e) => {
                METRICS.webhooks.with_label_values(&["invalid"]).inc();
                tracing::warn!(error = %e, "signed webhook POST is not a webhook envelope; nothing applied");
                return Err(Refused::Invalid(e.to_string()));
            }
        };

        let oldest = Utc::now()
            .checked_sub_signed(self.max_event_age)
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        let stale = env.bound_age(oldest);
        if stale > 0 {
            METRICS
                .webhooks
                .with_label_values(&["stale"])
                .inc_by(stale as u64);
            tracing::info!(
                stale,
                oldest = %oldest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "webhook events older than max_event_age ignored (a replay: Meta redelivers for up to 7 days); acknowledged"
            );
        }
        Ok(self.apply(&env))
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
                if let Some(seq) = self.learn(entry, ch, now) {
                    last = Some(last.map_or(seq, |l: u64| l.max(seq)));
                }
                if let Some(levels) = &self.levels {
                    if let Some((display, id)) = payload::display_of(ch) {
                        levels.seen(display, id);
                    }
                    if let Some(display) = payload::throughput_upgrade(ch) {
                        levels.upgraded(display);
                        continue;
                    }
                }
                let own = match ch.field.as_str() {
                    FIELD_MESSAGES => Some(self.apply_message_errors(entry, ch, now)),
                    FIELD_TEMPLATE_STATUS | FIELD_TEMPLATE_QUALITY | FIELD_TEMPLATE_CATEGORY => {
                        Some(self.apply_template(entry, ch, now))
                    }
                    FIELD_CAPABILITY => Some(self.apply_record(entry, ch, now)),
                    _ => None,
                };
                if let Some(seq) = own {
                    last = seq.or(last);
                    continue;
                }
                let Some(step) = plan(entry, ch, now, self.violation_opens, has_token) else {
                    if ch.field == payload::FIELD_ACCOUNT_UPDATE {
                        tracing::info!(waba_id = %entry.id, event = ch.event_name(), "account_update event ignored (not about sending)");
                    } else {
                        tracing::debug!(waba_id = %entry.id, field = %ch.field, "webhook field not acted on");
                    }
                    continue;
                };
                let check = step.check_health.then(|| step.change.clone());
                let mut change =
                    conditional_close(&self.table, step.change, step.only_if_opened_by);
                if step.only_known_waba {
                    // Any signed delivery can name any id: only a WABA something else
                    // vouches for gets a circuit (the rest is dropped and counted).
                    let known = self.table.directory().knows_waba(&change.waba_id)
                        || self.table.get(&change.key()).is_some();
                    change = known_only(change, known);
                }
                if let Some((_, seq)) = self.table.apply(change) {
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
}

impl Webhook {
    /// Errors Meta reported only by webhook (`messages`: `statuses[].errors[]`,
    /// `value.errors[]`): every code counted; an account-level one opens the WABA like a
    /// send answered with it (see [`plan_message_errors`]). Returns the change's sequence
    /// number when one applied.
    fn apply_message_errors(
        &self,
        entry: &payload::Entry,
        ch: &payload::ChangeItem,
        now: chrono::DateTime<Utc>,
    ) -> Option<u64> {
        if let Some(b) = &self.budget {
            b.record(&entry.id, crate::policy::budget::reached(ch, now));
        }
        let errors = message_errors(ch);
        if errors.is_empty() {
            return None;
        }
        for e in &errors {
            METRICS.webhook_error(e.code, e.site);
        }
        tracing::debug!(waba_id = %entry.id, errors = errors.len(), "messages webhook reports errors");
        // 130497 in a failed status: the circuit of the WABA's sends to that recipient's
        // country (never the WABA's).
        let mut last = None;
        for step in plan_status_errors(entry, ch, &errors, self.country_hold, now) {
            if let Some((_, seq)) = self.table.apply(step.change) {
                METRICS.webhooks.with_label_values(&["applied"]).inc();
                last = Some(last.map_or(seq, |l: u64| l.max(seq)));
            }
        }
        // 131049 for a recipient: their marketing cooldown (see `policy::cooldown`).
        if let Some(hold) = self.marketing_cooldown {
            let at = entry.event_time(ch, now);
            for change in errors
                .iter()
                .filter_map(|e| cooldown::from_status(&entry.id, e, hold, at))
            {
                if let Some((c, seq)) = self.table.apply(change) {
                    METRICS.webhooks.with_label_values(&["applied"]).inc();
                    if c.is_open() {
                        tracing::info!(waba_id = %entry.id, until = ?c.until, "Meta reported 131049 (the user's marketing limit): MARKETING templates to this recipient are held (marketing_cooldown)");
                    }
                    last = Some(last.map_or(seq, |l: u64| l.max(seq)));
                }
            }
        }
        let Some(step) = plan_message_errors(entry, ch, &errors, &self.trip_codes, now) else {
            return last;
        };
        let Some((_, seq)) = self.table.apply(step.change) else {
            return last;
        };
        METRICS.webhooks.with_label_values(&["applied"]).inc();
        Some(last.map_or(seq, |l: u64| l.max(seq)))
    }
}

impl Webhook {
    /// `message_template_status_update` → the template's circuit (see [`plan_template`]);
    /// a close or note for a template that has no circuit records nothing (Meta announces
    /// every approval; only pauses and disables make circuits) — but its
    /// `message_template_category`, like `template_category_update`, is recorded on the
    /// template's record, created closed when needed (see [`plan_category`]).
    /// `message_template_quality_update` → a note on the WABA and
    /// `wa_breaker_template_quality_total`, never a block.
    fn apply_template(
        &self,
        entry: &payload::Entry,
        ch: &payload::ChangeItem,
        now: chrono::DateTime<Utc>,
    ) -> Option<u64> {
        // The template's category (`message_template_category`, `template_category_update`):
        // recorded on its template record, created closed when there is none.
        let mut last = None;
        if let Some(step) = plan_category(entry, ch, now) {
            if let Some((_, seq)) = self.table.apply(step.change) {
                METRICS.webhooks.with_label_values(&["applied"]).inc();
                last = Some(seq);
            }
        }
        if ch.field == FIELD_TEMPLATE_CATEGORY {
            // And on the WABA's record: a move to MARKETING is a warning.
            return self.apply_record(entry, ch, now).or(last);
        }
        let step = if ch.field == FIELD_TEMPLATE_QUALITY {
            let (step, label) = plan_template_quality(entry, ch, now)?;
            METRICS.template_quality.with_label_values(&[label]).inc();
            step
        } else {
            let Some(step) = plan_template(entry, ch, now) else {
                tracing::info!(waba_id = %entry.id, event = ch.event_name(), "template status update without a usable template name and language: not recorded");
                return None;
            };
            let exists = self.table.get(&step.change.key()).is_some();
            if !matches!(step.change.action, Action::Open { .. }) && !exists {
                tracing::debug!(waba_id = %entry.id, reason = %step.change.reason, "template event for a template without a circuit: not recorded");
                return last;
            }
            step
        };
        let Some((_, seq)) = self.table.apply(step.change) else {
            return last;
        };
        METRICS.webhooks.with_label_values(&["applied"]).inc();
        Some(seq)
    }
}

impl Webhook {
    /// `template_category_update` and `business_capability_update`: a record on the WABA,
    /// a warning when a template moves to MARKETING or the messaging limit is lowered
    /// (see [`plan_template_category`], [`plan_capability`]); never a block.
    fn apply_record(
        &self,
        entry: &payload::Entry,
        ch: &payload::ChangeItem,
        now: chrono::DateTime<Utc>,
    ) -> Option<u64> {
        let step = if ch.field == FIELD_TEMPLATE_CATEGORY {
            plan_template_category(entry, ch, now)
        } else {
            let previous = previous_limit(self.table.get(&entry.id).as_ref());
            plan_capability(entry, ch, previous, now)
        };
        let Some(step) = step else {
            tracing::info!(waba_id = %entry.id, field = %ch.field, "webhook change without what it is about (template category or messaging limit): not recorded");
            return None;
        };
        let (_, seq) = self.table.apply(step.change)?;
        METRICS.webhooks.with_label_values(&["applied"]).inc();
        Some(seq)
    }
}

/// A close that undoes one event only (`ACCOUNT_RECONNECTED` → what `ACCOUNT_OFFBOARDED`
/// opened): kept when the circuit's last opening was that event, else turned into a note —
/// a reconnection says nothing about a policy block opened since.
fn conditional_close(table: &Table, mut change: Change, opened_by: Option<&str>) -> Change {
    let Some(event) = opened_by else {
        return change;
    };
    let opened_by_event = table.get(&change.key()).is_some_and(|c| {
        c.is_open()
            && c.last_opening().is_some_and(
                |t| matches!(&t.evidence, Some(Evidence::Webhook { event: e, .. }) if e == event),
            )
    });
    if !opened_by_event {
        change.action = Action::Note;
        change.reason = format!(
            "{} (the circuit was not opened by {event}: recorded only)",
            change.reason
        );
    }
    change
}

impl Webhook {
    /// Learns which WABA owns a phone number from a verified delivery that names both (a
    /// `messages` change's metadata, an `account_alerts` change about a phone number).
    fn learn(
        &self,
        entry: &payload::Entry,
        ch: &payload::ChangeItem,
        now: chrono::DateTime<Utc>,
    ) -> Option<u64> {
        let phone = payload::phone_of(ch)?;
        crate::graph::GraphId::new(&entry.id)?;
        // Already known as this WABA's: nothing to write (the common case, one read).
        if self
            .table
            .resolve(phone)
            .is_some_and(|r| r.waba.as_str() == entry.id)
        {
            return None;
        }
        let phone_key = crate::circuit::key("", Some(phone));
        let phone_open = |t: &Table| t.get(&phone_key).is_some_and(|c| c.is_open());
        let was_open = phone_open(&self.table);
        let seq = self.table.learn(crate::circuit::Mapping {
            phone_number_id: phone.to_string(),
            waba_id: Some(entry.id.clone()),
            source: crate::circuit::MappingSource::Webhook,
            updated_at: entry.event_time(ch, now).min(now),
            origin: String::new(),
        })?;
        METRICS
            .mappings_learned
            .with_label_values(&["webhook"])
            .inc();
        tracing::info!(phone_number_id = phone, waba_id = %entry.id, field = %ch.field, "phone number's WABA learned from a webhook");
        if was_open && !phone_open(&self.table) {
            // The mapping widened the phone number's circuit to its WABA: a circuit change
            // this delivery applied. Its changes come after the mapping's, so the answer
            // waits for the last of them to be durable.
            METRICS.webhooks.with_label_values(&["applied"]).inc();
            return Some(self.table.last_seq().max(seq));
        }
        Some(seq)
    }
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

/// Why a delivery was refused after its body was read (logged and counted where found).
enum Refused {
    /// `X-Hub-Signature-256` matches no configured app secret.
    Signature,
    /// Signed, but not a webhook envelope: the parser's message.
    Invalid(String),
}

/// Deliveries larger than this are verified, parsed and applied on the blocking pool.
const INLINE_BODY: usize = 256 * 1024;

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
