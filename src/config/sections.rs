//! The configuration's sections: `[webhook]`, `[health]`, `[discovery]`, `[shaping]`,
//! `[[accounts]]`, `[[notify]]` — each with its serde defaults (documented in the README's configuration
//! table).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::secret::{masked_url, one_or_many, Secret};

/// `[webhook]`: Meta's webhook receiver on the main listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Webhook callback path on `listen`.
    pub path: String,
    /// Meta app secrets verifying `X-Hub-Signature-256` (one per app).
    #[serde(deserialize_with = "one_or_many")]
    pub app_secret: Vec<Secret>,
    /// Answers Meta's subscription challenge.
    pub verify_token: Option<Secret>,
    /// Relays every verified delivery to the app unchanged.
    pub forward_url: Option<String>,
    /// Timeout of that relay.
    #[serde(with = "humantime_serde")]
    pub forward_timeout: Duration,
    /// Largest webhook body accepted (413 beyond).
    pub max_body: usize,
    /// Open on `ACCOUNT_VIOLATION` without a health check.
    pub violation_opens: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            path: "/webhook".into(),
            app_secret: Vec::new(),
            verify_token: None,
            forward_url: None,
            forward_timeout: Duration::from_secs(5),
            max_body: 1024 * 1024,
            violation_opens: false,
        }
    }
}

/// `[health]`: Health Status polling while a circuit is open.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Token for Health Status polls; absent, nothing is polled.
    pub access_token: Option<Secret>,
    /// Poll interval while a circuit is open.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// ± fraction of the interval added at random.
    pub jitter: f64,
    /// One poll's timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest wait after repeated poll errors.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Polls in flight at once, across all circuits.
    pub max_concurrent: usize,
    /// With Redis: how long one replica's claim to poll a circuit lasts without renewal
    /// (the holder renews it at every wake; a dead holder's claim is taken over when it
    /// lapses). Absent: 3 × `interval`.
    #[serde(default, with = "humantime_serde::option")]
    pub lease: Option<Duration>,
    /// Health Status polls of one WABA per clock hour: across the fleet with Redis, per
    /// replica without (or while Redis is away). Meta allows about 200 per app per WABA.
    pub hourly_budget: u32,
}

impl HealthConfig {
    /// The poll lease: `lease`, or 3 × `interval` when not set.
    pub fn lease(&self) -> Duration {
        self.lease
            .unwrap_or_else(|| self.interval.saturating_mul(3))
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            access_token: None,
            interval: Duration::from_secs(60),
            jitter: 0.1,
            timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(900),
            max_concurrent: 4,
            lease: None,
            hourly_budget: 60,
        }
    }
}

/// `[discovery]`: learning which WABA owns a phone number that `[[accounts]]` does not list.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Ask Health Status about a phone number of unknown WABA (its answer names the WABA).
    pub health_reads: bool,
    /// With no `health.access_token`, make that one read with the bearer token of the send
    /// that named the phone number (held only for the read, never stored or logged).
    pub use_caller_token: bool,
    /// Discovery reads in flight at once.
    pub max_concurrent: usize,
    /// Wait before asking again about a phone number whose read failed (doubling, up to 1 h).
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Learned phone numbers kept (the oldest are dropped past it; operator entries never).
    pub max_learned: usize,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            health_reads: true,
            use_caller_token: false,
            max_concurrent: 4,
            retry_after: Duration::from_secs(60),
            max_learned: 250_000,
        }
    }
}

/// `[shaping]`: sends shaped before Meta refuses them (the pace per phone number).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShapingConfig {
    /// `enforce`, `observe` (count and log what would be held, forward all) or `off`.
    pub mode: crate::policy::pace::ShapingMode,
    /// Messages/s per phone number when nothing better is known.
    pub throughput: u32,
    /// Longest wait for the number's pace before a local 130429.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// The first hold of a (phone number, recipient) pair after Meta's 131056.
    #[serde(with = "humantime_serde")]
    pub pair_hold: Duration,
    /// How long Meta's 131048 (spam rate limit) halves a phone number's pace.
    #[serde(with = "humantime_serde")]
    pub spam_cooldown: Duration,
    /// After Meta's 131049 for a recipient, how long the WABA's MARKETING template sends
    /// to them are held.
    #[serde(with = "humantime_serde")]
    pub marketing_cooldown: Duration,
    /// Marketing cooldowns held at once; past it, the one ending first is dropped.
    pub max_cooldowns: usize,
    /// Pair holds (records of a (phone number, recipient) pair after Meta's 131056) kept
    /// at once; past it, those past their reach are dropped first, then the one ending first.
    pub max_pairs: usize,
    /// `[shaping.phone_throughput]`: messages/s per phone-number id (the operator's word wins).
    pub phone_throughput: BTreeMap<String, u32>,
}

impl Default for ShapingConfig {
    fn default() -> Self {
        ShapingConfig {
            mode: crate::policy::pace::ShapingMode::Enforce,
            throughput: 80,
            max_delay: Duration::from_secs(1),
            pair_hold: Duration::from_secs(4),
            spam_cooldown: Duration::from_secs(3600),
            marketing_cooldown: Duration::from_secs(24 * 3600),
            max_cooldowns: 100_000,
            max_pairs: 100_000,
            phone_throughput: BTreeMap::new(),
        }
    }
}

/// `[messaging_limit]`: unique users reached with template messages per WABA over a moving
/// 24 h, against the messaging limit (observe only: warnings, never a block).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessagingLimitConfig {
    /// Count (from Meta's `messages` status webhooks) and warn at 80 % and 100 %.
    pub enabled: bool,
    /// Users counted per WABA at most (exact up to it; the count saturates there).
    pub max_users: usize,
    /// `[messaging_limit.limits]`: the limit per WABA id (unique users per 24 h); the
    /// operator's word wins over Meta's `business_capability_update`.
    pub limits: BTreeMap<String, u64>,
}

impl Default for MessagingLimitConfig {
    fn default() -> Self {
        MessagingLimitConfig {
            enabled: true,
            max_users: 100_000,
            limits: BTreeMap::new(),
        }
    }
}

/// `[warnings]`: what a warning does besides being recorded and announced (nothing, by
/// default).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarningsConfig {
    /// Warning kinds that hold the WABA's MARKETING template sends while they stand
    /// (opt-in; empty: warnings block nothing).
    pub hold_marketing: Vec<crate::circuit::WarningKind>,
    /// How long a warning stands for that hold.
    #[serde(with = "humantime_serde")]
    pub hold_for: Duration,
}

impl Default for WarningsConfig {
    fn default() -> Self {
        WarningsConfig {
            hold_marketing: Vec::new(),
            hold_for: Duration::from_secs(24 * 3600),
        }
    }
}

/// Most messages/s a phone number may be given (Meta's highest level is 1 000).
pub const MAX_THROUGHPUT: u32 = 100_000;

/// `[[accounts]]`: one WABA and its phone numbers.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// The WhatsApp Business Account id.
    pub waba_id: String,
    /// Its phone-number ids.
    pub phone_number_ids: Vec<String>,
}

/// What a `[[notify]]` sink speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyKind {
    /// A Slack-compatible incoming webhook: `{"text": "…"}`.
    Slack,
    /// The JSON event, signed with `secret` in `X-Wa-Breaker-Signature` when one is set.
    Webhook,
}

/// Which transitions a sink hears of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyOn {
    /// A circuit opened (or, while open, changed scope).
    Open,
    /// A circuit closed.
    Closed,
    /// A warning was recorded (nothing blocked).
    Warning,
}

/// `[[notify]]`: one place transitions are announced, off the hot path.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// `slack` or `webhook`.
    pub kind: NotifyKind,
    /// Where to POST. A secret (Slack webhook paths are): logs and `check-config` show only
    /// `scheme://host[:port]/***`.
    #[serde(serialize_with = "masked_url")]
    pub url: Secret,
    /// `webhook` only: HMAC-SHA256 key of `X-Wa-Breaker-Signature: sha256=<hex>`.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Name in logs and metric labels; default `{kind}-{index}`.
    #[serde(default)]
    pub name: Option<String>,
    /// Only these events (`open`, `closed`, `warning`); empty: all of them.
    #[serde(default)]
    pub transitions: Vec<NotifyOn>,
    /// Only circuits of these WABAs; empty: every WABA (and phone-number circuits).
    #[serde(default)]
    pub waba_ids: Vec<String>,
    /// One delivery attempt's timeout (connect to answer).
    #[serde(default = "notify_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Cap of the exponential backoff between attempts (jittered).
    #[serde(default = "notify_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// How long one notification is retried before it is dropped (counted and logged).
    #[serde(default = "notify_retry_for", with = "humantime_serde")]
    pub retry_for: Duration,
    /// Notifications waiting for this sink; past it new ones are dropped (counted and logged).
    #[serde(default = "notify_queue")]
    pub queue: usize,
}

fn notify_timeout() -> Duration {
    Duration::from_secs(5)
}
fn notify_retry_max() -> Duration {
    Duration::from_secs(60)
}
fn notify_retry_for() -> Duration {
    Duration::from_secs(15 * 60)
}
fn notify_queue() -> usize {
    1000
}

impl NotifyConfig {
    /// Its name in logs and metrics.
    pub fn label(&self, index: usize) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!("{}-{index}", self.kind_str()),
        }
    }

    fn kind_str(&self) -> &'static str {
        match self.kind {
            NotifyKind::Slack => "slack",
            NotifyKind::Webhook => "webhook",
        }
    }
}
