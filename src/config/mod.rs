//! Typed configuration: TOML file + `WA_BREAKER_…` environment overrides,
//! layered by `figment`, validated once at start-up.
//!
//! Nested keys use a double underscore in the environment:
//! `WA_BREAKER_WEBHOOK__APP_SECRET`, `WA_BREAKER_HEALTH__INTERVAL`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

mod file;
mod secret;
mod sections;
mod validate;

pub use secret::{mask_url, Secret};
pub use sections::{
    Account, DiscoveryConfig, HealthConfig, MessagingLimitConfig, NotifyConfig, NotifyKind,
    NotifyOn, ShapingConfig, WarningsConfig, WebhookConfig,
};

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "WA_BREAKER_";

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
    /// Offer `h2` by ALPN to an `https://` upstream (both engines); off, HTTP/1.1 only.
    pub upstream_http2: bool,
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
    /// Streams open at once on one HTTP/2 client connection (its `SETTINGS_MAX_CONCURRENT_STREAMS`);
    /// a client that opens more gets them refused (`RST_STREAM` `REFUSED_STREAM`).
    pub client_h2_max_streams: u32,
    /// Requests in flight to the upstream, across workers; more wait.
    pub upstream_concurrency: usize,
    /// Most requests waiting for an upstream permit at once; more are answered 503
    /// `overloaded`.
    pub upstream_queue_max: usize,
    /// Longest wait for an upstream permit (then 503 `overloaded`).
    #[serde(with = "humantime_serde")]
    pub upstream_queue_timeout: Duration,
    /// Requests in flight to the upstream whose body is larger than the gateway reads
    /// before the permit (64 KiB or `classify_body_limit`): a budget of their own.
    pub upstream_large_concurrency: usize,
    /// Client connections open at once on `admin_listen`, per process.
    pub admin_max_connections: usize,
    /// Webhook events dated longer ago than this are acknowledged and ignored (Meta
    /// redelivers for up to 7 days); closed records are kept at least this long.
    #[serde(with = "humantime_serde")]
    pub max_event_age: Duration,
    /// Proxy worker threads; `0` = one per CPU.
    pub workers: usize,
    /// Whether worker `i` is pinned to the `i`-th allowed CPU.
    pub pin_workers: PinWorkers,
    /// Serve plain HTTP/1.1 requests with the byte relay (see `src/relay`); `false` sends
    /// every request through the hyper stack.
    pub fast_path: bool,
    /// Bytes of a non-2xx answer read to judge it, and of a send body read to spot a template.
    pub classify_body_limit: usize,
    /// How long a country circuit (Meta's 130497 for a recipient's country) holds before
    /// one send probes again; an operator closes it sooner.
    #[serde(with = "humantime_serde")]
    pub country_hold: Duration,
    /// Transitions kept per circuit.
    pub history_limit: usize,
    /// An event dated later than now + this is ordered at that bound (so a wrong or forged
    /// future date cannot pin a circuit).
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Circuits (open and closed records) kept in memory, on disk and as metric series.
    pub max_circuits: usize,
    /// Open circuits for keys the gateway did not know (a send's unmapped phone number, a
    /// send's template name): past it, a new such open is not recorded (the answer still
    /// goes to the app). Known WABAs and mapped phone numbers are never counted.
    pub max_unknown_circuits: usize,
    /// `[webhook]`.
    pub webhook: WebhookConfig,
    /// `[health]`.
    pub health: HealthConfig,
    /// `[discovery]`: learning which WABA owns a phone number.
    pub discovery: DiscoveryConfig,
    /// `[shaping]`: the pace per phone number.
    pub shaping: ShapingConfig,
    /// `[messaging_limit]`: the messaging-limit budget (observe).
    pub messaging_limit: MessagingLimitConfig,
    /// `[warnings]`: the opt-in hold of MARKETING templates while a warning stands.
    pub warnings: WarningsConfig,
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
            upstream_http2: true,
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
            client_h2_max_streams: 100,
            upstream_concurrency: 1024,
            upstream_queue_max: 4096,
            upstream_queue_timeout: Duration::from_secs(5),
            upstream_large_concurrency: 64,
            admin_max_connections: 64,
            max_event_age: Duration::from_secs(7 * 24 * 3600),
            workers: 0,
            pin_workers: PinWorkers::Auto,
            fast_path: true,
            classify_body_limit: 64 * 1024,
            country_hold: crate::policy::country::DEFAULT_HOLD,
            history_limit: 20,
            max_clock_skew: Duration::from_secs(300),
            max_circuits: 100_000,
            max_unknown_circuits: 10_000,
            webhook: WebhookConfig::default(),
            health: HealthConfig::default(),
            discovery: DiscoveryConfig::default(),
            shaping: ShapingConfig::default(),
            messaging_limit: MessagingLimitConfig::default(),
            warnings: WarningsConfig::default(),
            accounts: Vec::new(),
            notify: Vec::new(),
        }
    }
}

impl Config {
    /// A non-empty `health.access_token` is set: the gateway can read Graph itself.
    fn has_health_token(&self) -> bool {
        self.health
            .access_token
            .as_ref()
            .is_some_and(|t| !t.expose().is_empty())
    }

    /// Said at start when `shaping.mode = "enforce"` and nothing can read Meta's throughput
    /// level of a phone number (no `health.access_token`, no `discovery.use_caller_token`).
    pub fn shaping_level_warning(&self) -> Option<&'static str> {
        let token = self.has_health_token();
        (self.shaping.mode == crate::policy::pace::ShapingMode::Enforce
            && !token
            && !self.discovery.use_caller_token)
            .then_some(
                "shaping.mode = \"enforce\" without health.access_token (nor discovery.use_caller_token): Meta's throughput level of a phone number cannot be read, so numbers are paced at shaping.throughput unless listed in [shaping.phone_throughput] (a number Meta upgraded to 1 000/s is held at the default; a THROUGHPUT_UPGRADE webhook still raises it)",
            )
    }

    /// Said at start (and by `check-config`) when nothing can tell the gateway which WABA a
    /// phone number belongs to: no `[[accounts]]`, no webhook secret, no way to read
    /// Health Status.
    pub fn protection_warning(&self) -> Option<&'static str> {
        let token = self.has_health_token();
        let can_read = self.discovery.health_reads && (token || self.discovery.use_caller_token);
        (self.accounts.is_empty() && self.webhook.app_secret.is_empty() && !can_read).then_some(
            "sends are forwarded but not protected by WABA: no [[accounts]], no webhook.app_secret and no health.access_token, so no phone number's WABA can be known — a blocked number stops only after its own first 368, and the WABA's other numbers keep sending. Fix: set webhook.app_secret (learns from Meta's webhooks), health.access_token (or discovery.use_caller_token = true), or list [[accounts]]",
        )
    }
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
    ///
    /// The file's `[[accounts]]` are deserialised outside figment (see `file`): the same
    /// result, without figment's value tree of 10 000 accounts at start-up.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::new();
        let mut file_accounts = None;
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::NotFound(path.to_path_buf()));
            }
            fig = match file::Split::read(path) {
                Some(split) => {
                    file_accounts = split.accounts;
                    fig.merge(file::Rest::new(path, split.rest))
                }
                // Unreadable, not TOML, or a bad `[[accounts]]`: the whole file through
                // figment, which reports it (every problem, with its key and the file).
                None => fig.merge(Toml::file_exact(path)),
            };
        }
        let keys = top_level_keys();
        fig = fig.merge(
            Env::prefixed(ENV_PREFIX)
                .split("__")
                .filter(move |k| known_env_key(&keys, k.as_str())),
        );
        let mut cfg: Config = fig.extract().map_err(|e| {
            let msgs: Vec<String> = e.into_iter().map(describe).collect();
            ConfigError::Parse(format!("invalid config: {}", msgs.join("; ")))
        })?;
        // As figment's merge would: `WA_BREAKER_ACCOUNTS`, when set, replaces the file's.
        if let Some(accounts) = file_accounts {
            if !fig.contains(file::ACCOUNTS) {
                cfg.accounts = accounts;
            }
        }
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
            country_hold: self.country_hold,
            shaping: self.shaping_settings(),
        }
    }

    /// The pacer's settings (`[shaping]`; ids checked by `validate`).
    pub fn shaping_settings(&self) -> crate::policy::pace::Settings {
        let s = &self.shaping;
        crate::policy::pace::Settings {
            mode: s.mode,
            throughput: s.throughput,
            max_delay: s.max_delay,
            pair_hold: s.pair_hold,
            spam_cooldown: s.spam_cooldown,
            phone_throughput: s
                .phone_throughput
                .iter()
                .filter_map(|(id, n)| crate::graph::GraphId::new(id).map(|id| (id, *n)))
                .collect(),
            ..crate::policy::pace::Settings::default()
        }
    }

    /// How long a closed record is kept: `redis_closed_ttl`, but never less than
    /// `max_event_age` (a record gone sooner would let a replayed old event re-open).
    pub fn closed_retention(&self) -> Duration {
        self.redis_closed_ttl.max(self.max_event_age)
    }

    /// The circuit table this configuration describes: its limits, and a directory seeded
    /// with `[[accounts]]`; `origin` names this replica in the ordering tie-break.
    pub fn circuit_table(&self, origin: impl Into<String>) -> crate::circuit::Table {
        use crate::circuit::{Directory, Limits, Table};
        let limits = Limits {
            max_clock_skew: self.max_clock_skew,
            max_circuits: self.max_circuits,
            max_unknown: self.max_unknown_circuits,
            closed_ttl: self.closed_retention(),
            keep_closed: self.max_event_age,
            widen_codes: self.trip_codes.clone(),
            max_cooldowns: self.shaping.max_cooldowns,
            max_pairs: self.shaping.max_pairs,
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

    /// The effective configuration as TOML, secrets masked (for `check-config`).
    pub fn to_masked_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# could not render config: {e}\n"))
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
    fn client_h2_max_streams_is_1_to_10000() {
        let mut cfg = Config::default();
        cfg.validate().unwrap_or_else(|e| panic!("default: {e}"));
        for bad in [0, 10_001] {
            cfg.client_h2_max_streams = bad;
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains("client_h2_max_streams"), "{bad}: {e}");
        }
        cfg.client_h2_max_streams = 1;
        cfg.validate().unwrap_or_else(|e| panic!("1: {e}"));
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
    fn country_hold_and_trip_codes() {
        let mut cfg = Config::default();
        assert_eq!(cfg.country_hold, Duration::from_secs(24 * 3600));
        cfg.validate().unwrap();
        let rejects = |c: &Config, key: &str| {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        };
        cfg.country_hold = Duration::ZERO;
        rejects(&cfg, "country_hold");
        cfg.country_hold = Duration::from_secs(31 * 24 * 3600);
        rejects(&cfg, "country_hold");
        cfg.country_hold = Duration::from_secs(2);
        cfg.validate().unwrap();
        assert_eq!(cfg.policy_settings().country_hold, Duration::from_secs(2));
        // 130497 never trips the WABA: it opens a country circuit.
        cfg.trip_codes = vec![368, 130497];
        rejects(&cfg, "130497");
    }

    #[test]
    fn shaping_defaults_and_bounds() {
        let mut cfg = Config::default();
        assert_eq!(cfg.shaping.mode, crate::policy::pace::ShapingMode::Enforce);
        assert_eq!(cfg.shaping.throughput, 80);
        cfg.validate().unwrap();
        let rejects = |c: &Config, key: &str| {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        };
        cfg.shaping.throughput = 0;
        rejects(&cfg, "shaping.throughput");
        cfg.shaping.throughput = 80;
        cfg.shaping.max_delay = Duration::from_secs(61);
        rejects(&cfg, "shaping.max_delay");
        cfg.shaping.max_delay = Duration::from_secs(1);
        assert_eq!(cfg.shaping.pair_hold, Duration::from_secs(4));
        cfg.shaping.pair_hold = Duration::ZERO;
        rejects(&cfg, "shaping.pair_hold");
        cfg.shaping.pair_hold = Duration::from_secs(16 * 60);
        rejects(&cfg, "shaping.pair_hold");
        cfg.shaping.pair_hold = Duration::from_secs(4);
        assert_eq!(
            cfg.shaping.marketing_cooldown,
            Duration::from_secs(24 * 3600)
        );
        cfg.shaping.marketing_cooldown = Duration::ZERO;
        rejects(&cfg, "shaping.marketing_cooldown");
        cfg.shaping.marketing_cooldown = Duration::from_secs(8 * 24 * 3600);
        rejects(&cfg, "shaping.marketing_cooldown");
        cfg.shaping.marketing_cooldown = Duration::from_secs(24 * 3600);
        cfg.shaping.max_cooldowns = 0;
        rejects(&cfg, "shaping.max_cooldowns");
        cfg.shaping.max_cooldowns = 100_000;
        cfg.shaping.max_pairs = 0;
        rejects(&cfg, "shaping.max_pairs");
        cfg.shaping.max_pairs = 10_000_001;
        rejects(&cfg, "shaping.max_pairs");
        cfg.shaping.max_pairs = 100_000;
        cfg.shaping.phone_throughput.insert("+1 555".into(), 20);
        rejects(&cfg, "shaping.phone_throughput");
        cfg.shaping.phone_throughput.clear();
        cfg.shaping
            .phone_throughput
            .insert("106540352242922".into(), 0);
        rejects(&cfg, "shaping.phone_throughput");
        cfg.shaping
            .phone_throughput
            .insert("106540352242922".into(), 20);
        cfg.validate().unwrap();
        let id = crate::graph::GraphId::new("106540352242922").unwrap();
        assert_eq!(cfg.shaping_settings().phone_throughput.get(&id), Some(&20));
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
