//! Typed configuration: TOML file + `WA_BREAKER_…` environment overrides,
//! layered by `figment`, validated once at start-up.
//!
//! Nested keys use a double underscore in the environment:
//! `WA_BREAKER_WEBHOOK__APP_SECRET`, `WA_BREAKER_HEALTH__INTERVAL`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::graph::GraphId;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "WA_BREAKER_";

/// A secret string: never printed by `Debug`/`Display`, masked when serialized.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// Constant-time comparison (both sides hashed first, so the length does not leak either).
    pub fn matches(&self, given: &str) -> bool {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let a = Sha256::digest(given.as_bytes());
        let b = Sha256::digest(self.0.as_bytes());
        a.as_slice().ct_eq(b.as_slice()).into()
    }

    /// The secret itself; call only where it is used (compare, sign, send).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// Accepts `"x"` or `["x", "y"]` (one app secret per Meta app).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Secret),
        Many(Vec<Secret>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    }
    .into_iter()
    .filter(|s| !s.expose().is_empty())
    .collect())
}

pub use crate::policy::Mode;

/// An `IP:port` listen address. A host name (`localhost:8080`) is refused with the value
/// echoed and the addresses meant spelled out: a listener binds an address, not a name.
fn socket_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.trim().parse::<SocketAddr>().map_err(|_| {
        let port = s
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .unwrap_or(8080);
        serde::de::Error::custom(format!(
            "{s:?} is not an IP address and port: write 127.0.0.1:{port} (this host only), \
             0.0.0.0:{port} (every IPv4 interface) or [::]:{port} (every interface)"
        ))
    })
}

/// Whether proxy worker threads are pinned to CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PinWorkers {
    /// Pin when there is one worker per CPU the process may run on (the whole machine or an
    /// exclusive cpuset); a worker count below that (a CPU quota) is left to the scheduler.
    #[default]
    Auto,
    /// Pin worker `i` to the `i`-th allowed CPU (wrapping around).
    Always,
    /// Never pin.
    Never,
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole configuration. See the README's configuration table.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Apps' send URL (HTTP/1.1 and h2c); also serves `webhook.path`.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// Let another process serve `listen` at the same time (`SO_REUSEPORT` across
    /// processes): only for a hand-over between two instances that share Redis. Off, a
    /// start refuses an address another process already serves.
    pub listen_shared: bool,
    /// `/admin`, `/metrics`, `/healthz`, `/readyz`.
    #[serde(deserialize_with = "socket_addr")]
    pub admin_listen: SocketAddr,
    /// Where requests go: `scheme://host[:port]`, no path.
    pub upstream: String,
    /// Extra CA certificates (PEM) trusted for an `https://` upstream.
    pub upstream_ca_file: Option<PathBuf>,
    /// Directory of the embedded circuit store (`circuits.redb`); one per instance.
    pub state_dir: PathBuf,
    /// Bearer token for `/admin` (at least 16 characters); absent, `/admin` is disabled.
    pub admin_token: Option<Secret>,
    /// Redis shared by replicas (may carry a password: never logged).
    pub redis_url: Option<Secret>,
    /// Extra CA certificates (PEM) trusted for `rediss://`, on top of the Mozilla roots.
    pub redis_ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) presented to a `rediss://` server that asks for one.
    pub redis_client_cert: Option<PathBuf>,
    /// The private key (PEM) of `redis_client_cert`.
    pub redis_client_key: Option<PathBuf>,
    /// Prefix of Redis keys and of the change channel.
    pub redis_prefix: String,
    /// TTL of a closed circuit's Redis key (open circuits: `until` + 1 h, or none).
    #[serde(with = "humantime_serde")]
    pub redis_closed_ttl: Duration,
    /// Cap of the exponential backoff between Redis reconnect attempts.
    #[serde(with = "humantime_serde")]
    pub redis_retry_max: Duration,
    /// Set by the `--move-aside-corrupt-state` flag only (not a config key): rename an
    /// unreadable state store to `<name>.corrupt-<timestamp>` and start empty.
    #[serde(skip)]
    pub move_aside_corrupt_state: bool,
    /// `enforce` answers open circuits locally; `observe` only records.
    pub mode: Mode,
    /// Graph error codes that open a WABA's circuit when a send is answered with one.
    pub trip_codes: Vec<i64>,
    /// Graph version of the gateway's own calls (health polls).
    pub graph_version: String,
    /// Log lines as text or JSON, on stderr.
    pub log_format: LogFormat,
    /// A `tracing` filter such as `info` or `warn,wa_breaker=debug`.
    pub log_level: String,
    /// TCP (and TLS) connect to the upstream.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// From forwarding to the upstream answer's head (then 504).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// On SIGTERM/SIGINT: how long in-flight requests may finish.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// A client's whole request head, from its first byte (then 408 and close).
    #[serde(with = "humantime_serde")]
    pub client_header_timeout: Duration,
    /// Between two reads of a client's request body (then 408 and close).
    #[serde(with = "humantime_serde")]
    pub client_body_timeout: Duration,
    /// A kept-alive client connection with no request under way is closed after this.
    #[serde(with = "humantime_serde")]
    pub client_idle_timeout: Duration,
    /// Client connections open at once on the main listener, per process; past it the
    /// listener stops accepting and the kernel queues new ones. `0`: half the process's
    /// open-file limit at start (the rest is for upstream connections, the store, admin).
    pub max_connections: usize,
    /// Requests in flight to the upstream, across workers; more wait.
    pub upstream_concurrency: usize,
    /// Proxy worker threads; `0` = one per CPU.
    pub workers: usize,
    /// Whether worker `i` is pinned to the `i`-th allowed CPU.
    pub pin_workers: PinWorkers,
    /// Serve plain HTTP/1.1 requests with the byte relay (see `src/relay`); `false` sends
    /// every request through the hyper stack.
    pub fast_path: bool,
    /// Bytes of a non-2xx answer read to judge it, and of a send body read to spot a template.
    pub classify_body_limit: usize,
    /// Transitions kept per circuit.
    pub history_limit: usize,
    /// An event dated later than now + this is ordered at that bound (so a wrong or forged
    /// future date cannot pin a circuit).
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Circuits (open and closed records) kept in memory, on disk and as metric series.
    pub max_circuits: usize,
    /// `[webhook]`.
    pub webhook: WebhookConfig,
    /// `[health]`.
    pub health: HealthConfig,
    /// `[discovery]`: learning which WABA owns a phone number.
    pub discovery: DiscoveryConfig,
    /// `[[accounts]]`: phone-number ids by WABA.
    pub accounts: Vec<Account>,
    /// `[[notify]]`: where circuit transitions are announced (Slack, signed JSON webhooks).
    pub notify: Vec<NotifyConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: ([0, 0, 0, 0], 8080).into(),
            listen_shared: false,
            admin_listen: ([127, 0, 0, 1], 9090).into(),
            upstream: "https://graph.facebook.com".into(),
            upstream_ca_file: None,
            state_dir: "./wa-breaker-state".into(),
            admin_token: None,
            redis_url: None,
            redis_ca_file: None,
            redis_client_cert: None,
            redis_client_key: None,
            redis_prefix: "wa-breaker".into(),
            redis_closed_ttl: Duration::from_secs(7 * 24 * 3600),
            redis_retry_max: Duration::from_secs(5),
            move_aside_corrupt_state: false,
            mode: Mode::Enforce,
            trip_codes: crate::graph::codes::DEFAULT_TRIP_CODES.to_vec(),
            graph_version: "v21.0".into(),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(15),
            client_header_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(60),
            client_idle_timeout: Duration::from_secs(60),
            max_connections: 0,
            upstream_concurrency: 1024,
            workers: 0,
            pin_workers: PinWorkers::Auto,
            fast_path: true,
            classify_body_limit: 64 * 1024,
            history_limit: 20,
            max_clock_skew: Duration::from_secs(300),
            max_circuits: 100_000,
            webhook: WebhookConfig::default(),
            health: HealthConfig::default(),
            discovery: DiscoveryConfig::default(),
            accounts: Vec::new(),
            notify: Vec::new(),
        }
    }
}

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

impl Config {
    /// Said at start (and by `check-config`) when nothing can tell the gateway which WABA a
    /// phone number belongs to: no `[[accounts]]`, no webhook secret, no way to read
    /// Health Status.
    pub fn protection_warning(&self) -> Option<&'static str> {
        let token = self
            .health
            .access_token
            .as_ref()
            .is_some_and(|t| !t.expose().is_empty());
        let can_read = self.discovery.health_reads && (token || self.discovery.use_caller_token);
        (self.accounts.is_empty() && self.webhook.app_secret.is_empty() && !can_read).then_some(
            "sends are forwarded but not protected by WABA: no [[accounts]], no webhook.app_secret and no health.access_token, so no phone number's WABA can be known — a blocked number stops only after its own first 368, and the WABA's other numbers keep sending. Fix: set webhook.app_secret (learns from Meta's webhooks), health.access_token (or discovery.use_caller_token = true), or list [[accounts]]",
        )
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
    /// Only these transitions (`open`, `closed`); empty: both.
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

/// A URL with everything after the authority (and any user info) replaced by `***`:
/// what logs, errors and `check-config` show of a secret URL.
pub fn mask_url(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(u) => match (u.scheme_str(), u.authority()) {
            (Some(scheme), Some(a)) => {
                let host = a.as_str().rsplit('@').next().unwrap_or_default();
                format!("{scheme}://{host}/***")
            }
            _ => "***".into(),
        },
        Err(_) => "***".into(),
    }
}

fn masked_url<S: serde::Serializer>(url: &Secret, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&mask_url(url.expose()))
}

/// A configuration that could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file does not exist.
    #[error("config file {0}: not found")]
    NotFound(PathBuf),
    /// The file or an environment variable does not parse (every problem listed).
    #[error("{0}")]
    Parse(String),
    /// A value is out of range or inconsistent.
    #[error("invalid config: `{key}`: {msg}")]
    Invalid {
        /// The key, as written in the file.
        key: String,
        /// What is wrong.
        msg: String,
    },
}

fn invalid(key: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        msg: msg.into(),
    }
}

impl Config {
    /// Loads defaults, then the file (if any), then `WA_BREAKER_…` variables, and validates.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::new();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::NotFound(path.to_path_buf()));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        let keys = top_level_keys();
        fig = fig.merge(
            Env::prefixed(ENV_PREFIX)
                .split("__")
                .filter(move |k| known_env_key(&keys, k.as_str())),
        );
        let cfg: Config = fig.extract().map_err(|e| {
            let msgs: Vec<String> = e.into_iter().map(describe).collect();
            ConfigError::Parse(format!("invalid config: {}", msgs.join("; ")))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The policy core's settings.
    pub fn policy_settings(&self) -> crate::policy::Settings {
        crate::policy::Settings {
            mode: self.mode,
            trip_codes: self.trip_codes.clone(),
            classify_body_limit: self.classify_body_limit,
            webhook_path: self.webhook.path.clone(),
            request_timeout: self.request_timeout,
        }
    }

    /// The circuit table this configuration describes: its limits, and a directory seeded
    /// with `[[accounts]]`; `origin` names this replica in the ordering tie-break.
    pub fn circuit_table(&self, origin: impl Into<String>) -> crate::circuit::Table {
        use crate::circuit::{Directory, Limits, Table};
        let limits = Limits {
            max_clock_skew: self.max_clock_skew,
            max_circuits: self.max_circuits,
            closed_ttl: self.redis_closed_ttl,
            widen_codes: self.trip_codes.clone(),
        };
        let directory = Directory::new(
            self.accounts
                .iter()
                .map(|a| (a.waba_id.as_str(), a.phone_number_ids.as_slice())),
            self.discovery.max_learned,
        );
        Table::with_limits(origin, self.history_limit, limits, directory)
    }

    /// `max_connections`, or its default from the open-file limit.
    pub fn connection_cap(&self) -> usize {
        if self.max_connections > 0 {
            return self.max_connections;
        }
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own and reads nothing else.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
        if ok && lim.rlim_cur != libc::RLIM_INFINITY {
            ((lim.rlim_cur / 2) as usize).max(16)
        } else {
            10_000
        }
    }

    /// Checks what serde cannot: URLs, ranges, duplicate ids.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let up: http::Uri = self
            .upstream
            .parse()
            .map_err(|e| invalid("upstream", format!("not a URL: {e}")))?;
        match up.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err(invalid("upstream", "must start with http:// or https://")),
        }
        if up.host().is_none() {
            return Err(invalid("upstream", "has no host"));
        }
        // The URI parser takes any digits as a port (and then reports none); a connect to
        // port 99999 could only fail.
        let port = up
            .authority()
            .and_then(|a| a.as_str().rsplit_once(':'))
            .map(|(_, p)| p)
            .filter(|p| !p.ends_with(']'));
        if let Some(port) = port {
            if !port.parse::<u16>().is_ok_and(|p| p > 0) {
                return Err(invalid(
                    "upstream",
                    format!(
                        "port {port} in {:?} is not a TCP port (1-65535)",
                        self.upstream
                    ),
                ));
            }
        }
        if up.path() != "/" && !up.path().is_empty() {
            return Err(invalid(
                "upstream",
                "must be scheme://host[:port] without a path",
            ));
        }
        if let Some(path) = &self.upstream_ca_file {
            crate::tls::read_ca_file(path)
                .map_err(|e| invalid("upstream_ca_file", crate::common::error_chain(&e)))?;
        }
        if let Some(t) = &self.admin_token {
            if t.expose().len() < 16 {
                return Err(invalid("admin_token", "must be at least 16 characters"));
            }
        }
        let tls = self.redis_url.as_ref().is_some_and(|u| {
            u.expose().starts_with("rediss://") || u.expose().starts_with("rediss+sentinel://")
        });
        if let Some(u) = &self.redis_url {
            let ok = [
                "redis://",
                "rediss://",
                "unix://",
                "redis+sentinel://",
                "rediss+sentinel://",
            ]
            .iter()
            .any(|p| u.expose().starts_with(p));
            if !ok {
                return Err(invalid(
                    "redis_url",
                    "must start with redis://, rediss:// (TLS), redis+sentinel://, rediss+sentinel:// or unix://",
                ));
            }
            // Parsed now so a bad URL stops the start; the message never quotes it.
            let tls_cfg = if tls {
                Some(std::sync::Arc::new(crate::store::redis_tls(self).map_err(
                    |e| invalid(tls_key(self), crate::common::error_chain(&e)),
                )?))
            } else {
                None
            };
            crate::store::connect::Endpoint::new(u.expose(), tls_cfg)
                .map_err(|e| invalid("redis_url", e))?;
        }
        if self.redis_client_cert.is_some() != self.redis_client_key.is_some() {
            return Err(invalid(
                "redis_client_cert",
                "redis_client_cert and redis_client_key go together",
            ));
        }
        if !tls {
            for (key, set) in [
                ("redis_ca_file", self.redis_ca_file.is_some()),
                ("redis_client_cert", self.redis_client_cert.is_some()),
            ] {
                if set {
                    return Err(invalid(
                        key,
                        "is used only with a rediss:// or rediss+sentinel:// redis_url",
                    ));
                }
            }
        }
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(char::is_whitespace) {
            return Err(invalid(
                "redis_prefix",
                "must be non-empty without whitespace",
            ));
        }
        if self.listen_shared && self.redis_url.is_none() {
            return Err(invalid(
                "listen_shared",
                "needs redis_url: two instances serving one address without shared circuits would each see only part of the sends",
            ));
        }
        if self.trip_codes.is_empty() {
            return Err(invalid(
                "trip_codes",
                "must list at least one code (default [368, 131031])",
            ));
        }
        if !self.graph_version.starts_with('v') || self.graph_version.contains('/') {
            return Err(invalid("graph_version", "must look like \"v21.0\""));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| invalid("log_level", e.to_string()))?;
        for (key, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("client_header_timeout", self.client_header_timeout),
            ("client_body_timeout", self.client_body_timeout),
            ("client_idle_timeout", self.client_idle_timeout),
            ("health.interval", self.health.interval),
            ("health.timeout", self.health.timeout),
            ("health.max_backoff", self.health.max_backoff),
            ("webhook.forward_timeout", self.webhook.forward_timeout),
            ("redis_closed_ttl", self.redis_closed_ttl),
            ("redis_retry_max", self.redis_retry_max),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        if self.redis_retry_max < Duration::from_millis(10) {
            return Err(invalid("redis_retry_max", "must be at least 10ms"));
        }
        if self.workers > 256 {
            return Err(invalid(
                "workers",
                "must be between 0 (one per CPU) and 256",
            ));
        }
        if self.upstream_concurrency == 0 {
            return Err(invalid("upstream_concurrency", "must be at least 1"));
        }
        if self.classify_body_limit < 1024 {
            return Err(invalid(
                "classify_body_limit",
                "must be at least 1024 bytes",
            ));
        }
        if self.discovery.max_concurrent == 0 {
            return Err(invalid("discovery.max_concurrent", "must be at least 1"));
        }
        if self.discovery.max_learned < 100 {
            return Err(invalid("discovery.max_learned", "must be at least 100"));
        }
        if self.discovery.retry_after.is_zero() {
            return Err(invalid(
                "discovery.retry_after",
                "must be greater than zero",
            ));
        }
        if self.max_circuits < 100 {
            return Err(invalid("max_circuits", "must be at least 100"));
        }
        if self.max_clock_skew > Duration::from_secs(24 * 3600) {
            return Err(invalid("max_clock_skew", "must be at most 24h"));
        }
        if self.history_limit == 0 {
            return Err(invalid("history_limit", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.health.jitter) {
            return Err(invalid("health.jitter", "must be between 0.0 and 1.0"));
        }
        if self.health.max_concurrent == 0 {
            return Err(invalid("health.max_concurrent", "must be at least 1"));
        }
        if let Some(lease) = self.health.lease {
            // Shorter than two intervals, the holder's claim lapses between its own polls
            // and the replicas take turns; a lease is also a dead holder's longest gap.
            if lease < self.health.interval.saturating_mul(2)
                || lease > Duration::from_secs(24 * 3600)
            {
                return Err(invalid(
                    "health.lease",
                    "must be at least twice health.interval and at most 24h",
                ));
            }
        }
        if self.health.hourly_budget == 0 {
            return Err(invalid("health.hourly_budget", "must be at least 1"));
        }
        if !self.webhook.path.starts_with('/') || self.webhook.path.contains('?') {
            return Err(invalid(
                "webhook.path",
                "must be an absolute path like \"/webhook\"",
            ));
        }
        if self.webhook.max_body < 1024 {
            return Err(invalid("webhook.max_body", "must be at least 1024 bytes"));
        }
        if let Some(u) = &self.webhook.forward_url {
            let uri: http::Uri = u
                .parse()
                .map_err(|e| invalid("webhook.forward_url", format!("not a URL: {e}")))?;
            if !matches!(uri.scheme_str(), Some("http") | Some("https")) {
                return Err(invalid(
                    "webhook.forward_url",
                    "must start with http:// or https://",
                ));
            }
        }
        self.validate_notify()?;
        let mut phones: HashMap<&str, &str> = HashMap::new();
        let mut wabas: HashSet<&str> = HashSet::new();
        for (i, a) in self.accounts.iter().enumerate() {
            let key = format!("accounts[{i}]");
            if !GraphId::is_valid(&a.waba_id) {
                return Err(invalid(&format!("{key}.waba_id"), "must be a numeric id"));
            }
            if !wabas.insert(&a.waba_id) {
                return Err(invalid(
                    &format!("{key}.waba_id"),
                    format!("WABA {} is listed twice", a.waba_id),
                ));
            }
            for p in &a.phone_number_ids {
                if !GraphId::is_valid(p) {
                    return Err(invalid(
                        &format!("{key}.phone_number_ids"),
                        format!("{p:?} is not a numeric id"),
                    ));
                }
                if let Some(other) = phones.insert(p, &a.waba_id) {
                    return Err(invalid(
                        &format!("{key}.phone_number_ids"),
                        format!("phone number {p} is already mapped to WABA {other}"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_notify(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for (i, n) in self.notify.iter().enumerate() {
            let key = |k: &str| format!("notify[{i}].{k}");
            // The parser's messages never quote the URL; ours name only its masked form.
            let uri: http::Uri = n
                .url
                .expose()
                .parse()
                .map_err(|e| invalid(&key("url"), format!("not a URL: {e}")))?;
            if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.host().is_none() {
                return Err(invalid(
                    &key("url"),
                    format!(
                        "{} must start with http:// or https:// and name a host",
                        mask_url(n.url.expose())
                    ),
                ));
            }
            if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
                return Err(invalid(
                    &key("url"),
                    "user info in the URL is not supported (use a path or query token)",
                ));
            }
            if n.kind == NotifyKind::Slack && n.secret.is_some() {
                return Err(invalid(
                    &key("secret"),
                    "only `kind = \"webhook\"` sinks are signed (a Slack URL is its own secret)",
                ));
            }
            if n.secret.as_ref().is_some_and(|s| s.expose().len() < 16) {
                return Err(invalid(&key("secret"), "must be at least 16 characters"));
            }
            for w in &n.waba_ids {
                if !GraphId::is_valid(w) {
                    return Err(invalid(
                        &key("waba_ids"),
                        format!("{w:?} is not a numeric id"),
                    ));
                }
            }
            for (k, d) in [
                ("timeout", n.timeout),
                ("retry_max", n.retry_max),
                ("retry_for", n.retry_for),
            ] {
                if d < Duration::from_millis(10) {
                    return Err(invalid(&key(k), "must be at least 10ms"));
                }
            }
            if n.queue == 0 || n.queue > 1_000_000 {
                return Err(invalid(&key("queue"), "must be between 1 and 1000000"));
            }
            let label = n.label(i);
            let label_ok = !label.is_empty()
                && label.len() <= 64
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !label_ok {
                return Err(invalid(
                    &key("name"),
                    "must be 1-64 characters of letters, digits, '-' and '_'",
                ));
            }
            if !names.insert(label.clone()) {
                return Err(invalid(&key("name"), format!("{label:?} names two sinks")));
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML, secrets masked (for `check-config`).
    pub fn to_masked_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# could not render config: {e}\n"))
    }
}

/// Which TLS key to blame when the Redis TLS config cannot be built.
fn tls_key(cfg: &Config) -> &'static str {
    if cfg.redis_client_cert.is_some() {
        "redis_ca_file / redis_client_cert / redis_client_key"
    } else {
        "redis_ca_file"
    }
}

/// Top-level keys, for the environment: other `WA_BREAKER_…` variables (such as the
/// service links Kubernetes injects for a Service named `wa-breaker`) are ignored.
/// Derived from the struct itself, so a new key never needs a second list.
fn top_level_keys() -> Vec<String> {
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// `WA_BREAKER_…` variables the binary reads itself (flags' environment forms), not config keys.
const FLAG_VARS: &[&str] = &[
    "config",
    "admin_url",
    "sim_listen",
    "sim_webhook_url",
    "sim_app_secret",
];

fn known_env_key(keys: &[String], key: &str) -> bool {
    let top = key.split('.').next().unwrap_or(key);
    let known = keys.iter().any(|k| k.eq_ignore_ascii_case(top));
    if !known && !FLAG_VARS.iter().any(|f| key.eq_ignore_ascii_case(f)) {
        eprintln!(
            "wa-breaker: ignoring environment variable {ENV_PREFIX}{}: not a config key",
            key.to_uppercase()
        );
    }
    known
}

/// One figment error as "key: problem (where)", naming the env variable when it came from one.
fn describe(e: figment::Error) -> String {
    let key = e.path.join(".");
    let from_env = e
        .metadata
        .as_ref()
        .is_some_and(|m| m.name.contains("environment"));
    let place = if from_env {
        format!("{ENV_PREFIX}{}", e.path.join("__").to_uppercase())
    } else {
        let src = e
            .metadata
            .as_ref()
            .and_then(|m| m.source.as_ref())
            .map(|s| s.to_string())
            .unwrap_or_else(|| "config".into());
        if key.is_empty() {
            src
        } else {
            format!("`{key}` in {src}")
        }
    };
    format!("{place}: {}", e.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_a_known_env_key() {
        let keys = top_level_keys();
        for k in [
            "listen",
            "admin_token",
            "redis_url",
            "redis_closed_ttl",
            "redis_retry_max",
            "workers",
            "webhook",
            "accounts",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
        assert!(!keys.iter().any(|x| x == "move_aside_corrupt_state"));
    }

    #[test]
    fn listen_addresses_are_ip_and_port_with_a_suggestion() {
        let parse = |toml: &str| {
            Figment::from(Toml::string(toml))
                .extract::<Config>()
                .map_err(|e| e.to_string())
        };
        let e = parse("listen = \"localhost:8080\"").unwrap_err();
        assert!(
            e.contains("\"localhost:8080\" is not an IP address and port"),
            "{e}"
        );
        assert!(
            e.contains("127.0.0.1:8080") && e.contains("0.0.0.0:8080") && e.contains("[::]:8080"),
            "{e}"
        );
        let e = parse("admin_listen = \"metrics.local:9191\"").unwrap_err();
        assert!(e.contains("127.0.0.1:9191"), "{e}");
        let c = parse("listen = \"[::]:8080\"\nadmin_listen = \"127.0.0.1:9091\"").unwrap();
        assert_eq!(c.listen.to_string(), "[::]:8080");
        assert_eq!(c.admin_listen.port(), 9091);
    }

    #[test]
    fn upstream_ports_must_be_tcp_ports() {
        let mut cfg = Config::default();
        for bad in [
            "http://127.0.0.1:99999",
            "http://127.0.0.1:0",
            "https://graph.facebook.com:70000",
        ] {
            cfg.upstream = bad.into();
            let e = cfg.validate().unwrap_err().to_string();
            assert!(
                e.contains("`upstream`") && e.contains("1-65535"),
                "{bad}: {e}"
            );
        }
        for good in [
            "http://127.0.0.1:9999",
            "https://graph.facebook.com",
            "http://[::1]:9999",
            "http://[::1]",
        ] {
            cfg.upstream = good.into();
            cfg.validate().unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }

    #[test]
    fn listen_shared_needs_redis() {
        let mut cfg = Config {
            listen_shared: true,
            ..Config::default()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(
            e.contains("listen_shared") && e.contains("redis_url"),
            "{e}"
        );
        cfg.redis_url = Some(Secret::new("redis://127.0.0.1:6379"));
        cfg.validate().unwrap();
    }

    #[test]
    fn health_lease_and_budget_defaults_and_bounds() {
        let mut cfg = Config::default();
        assert_eq!(cfg.health.lease(), Duration::from_secs(180));
        assert_eq!(cfg.health.hourly_budget, 60);
        cfg.validate().unwrap();
        let rejects = |c: &Config, key: &str| {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        };
        cfg.health.lease = Some(Duration::from_secs(90));
        rejects(&cfg, "health.lease");
        cfg.health.lease = Some(Duration::from_secs(25 * 3600));
        rejects(&cfg, "health.lease");
        cfg.health.lease = Some(Duration::from_secs(120));
        cfg.validate().unwrap();
        assert_eq!(cfg.health.lease(), Duration::from_secs(120));
        cfg.health.hourly_budget = 0;
        rejects(&cfg, "health.hourly_budget");
    }
}
