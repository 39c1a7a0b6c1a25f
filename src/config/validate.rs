//! What serde cannot check, checked once at load time: URLs, ranges, duplicate ids, the
//! Redis and notification settings. A bad value stops the start (and `check-config`) with
//! the key named and the secret never quoted.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::{invalid, mask_url, Config, ConfigError, NotifyKind};
use crate::graph::GraphId;

impl Config {
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
        if self
            .trip_codes
            .contains(&crate::graph::codes::COUNTRY_RESTRICTED)
        {
            return Err(invalid(
                "trip_codes",
                "must not list 130497: it opens a circuit of the WABA's sends to the recipient's country (see country_hold), never the whole WABA",
            ));
        }
        if self.country_hold < Duration::from_secs(1)
            || self.country_hold > Duration::from_secs(30 * 24 * 3600)
        {
            return Err(invalid("country_hold", "must be between 1s and 30 days"));
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
            ("upstream_queue_timeout", self.upstream_queue_timeout),
            ("max_event_age", self.max_event_age),
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
        if !(1..=10_000).contains(&self.client_h2_max_streams) {
            return Err(invalid("client_h2_max_streams", "must be 1 to 10000"));
        }
        if self.upstream_large_concurrency == 0 {
            return Err(invalid("upstream_large_concurrency", "must be at least 1"));
        }
        if self.admin_max_connections == 0 {
            return Err(invalid("admin_max_connections", "must be at least 1"));
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
        if self.max_unknown_circuits > self.max_circuits {
            return Err(invalid(
                "max_unknown_circuits",
                "must be at most max_circuits",
            ));
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
        self.validate_shaping()?;
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

    fn validate_shaping(&self) -> Result<(), ConfigError> {
        // Meta asks for at least 24 h; a week is the longest hold that still ends.
        const MAX_MARKETING_COOLDOWN: Duration = Duration::from_secs(7 * 24 * 3600);
        // The most pair holds kept (each a record in memory, on disk and in Redis).
        const MAX_PAIRS: usize = 10_000_000;
        use super::sections::MAX_THROUGHPUT;
        let s = &self.shaping;
        if !(1..=MAX_THROUGHPUT).contains(&s.throughput) {
            return Err(invalid(
                "shaping.throughput",
                format!("must be between 1 and {MAX_THROUGHPUT} messages/s"),
            ));
        }
        if s.max_delay > Duration::from_secs(60) {
            return Err(invalid("shaping.max_delay", "must be at most 60s"));
        }
        if s.pair_hold.is_zero() || s.pair_hold > crate::policy::pair::CAP {
            return Err(invalid(
                "shaping.pair_hold",
                "must be more than 0s and at most 15m",
            ));
        }
        let w = &self.warnings;
        if w.hold_marketing
            .contains(&crate::circuit::WarningKind::Other)
        {
            let known: Vec<&str> = crate::circuit::WarningKind::ALL
                .iter()
                .map(|k| k.as_str())
                .collect();
            return Err(invalid(
                "warnings.hold_marketing",
                format!("unknown warning kind; the kinds are {}", known.join(", ")),
            ));
        }
        if w.hold_for.is_zero() || w.hold_for > Duration::from_secs(30 * 24 * 3600) {
            return Err(invalid(
                "warnings.hold_for",
                "must be more than 0s and at most 30d",
            ));
        }
        let m = &self.messaging_limit;
        if !(1..=10_000_000).contains(&m.max_users) {
            return Err(invalid(
                "messaging_limit.max_users",
                "must be between 1 and 10000000",
            ));
        }
        for (id, n) in &m.limits {
            if !GraphId::is_valid(id) {
                return Err(invalid(
                    "messaging_limit.limits",
                    format!("{id:?} is not a WABA id (digits only)"),
                ));
            }
            if *n == 0 {
                return Err(invalid(
                    "messaging_limit.limits",
                    format!("the limit of {id} must be at least 1 unique user"),
                ));
            }
        }
        if s.spam_cooldown.is_zero() || s.spam_cooldown > Duration::from_secs(7 * 24 * 3600) {
            return Err(invalid(
                "shaping.spam_cooldown",
                "must be more than 0s and at most 7d",
            ));
        }
        if s.marketing_cooldown.is_zero() || s.marketing_cooldown > MAX_MARKETING_COOLDOWN {
            return Err(invalid(
                "shaping.marketing_cooldown",
                "must be more than 0s and at most 7d",
            ));
        }
        if s.max_cooldowns == 0 {
            return Err(invalid("shaping.max_cooldowns", "must be at least 1"));
        }
        if !(1..=MAX_PAIRS).contains(&s.max_pairs) {
            return Err(invalid(
                "shaping.max_pairs",
                format!("must be between 1 and {MAX_PAIRS}"),
            ));
        }
        for (id, n) in &s.phone_throughput {
            if !GraphId::is_valid(id) {
                return Err(invalid(
                    "shaping.phone_throughput",
                    format!("{id:?} is not a phone-number id (digits only)"),
                ));
            }
            if !(1..=MAX_THROUGHPUT).contains(n) {
                return Err(invalid(
                    "shaping.phone_throughput",
                    format!("{id}: must be between 1 and {MAX_THROUGHPUT} messages/s"),
                ));
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
}

/// Which TLS key to blame when the Redis TLS config cannot be built.
fn tls_key(cfg: &Config) -> &'static str {
    if cfg.redis_client_cert.is_some() {
        "redis_ca_file / redis_client_cert / redis_client_key"
    } else {
        "redis_ca_file"
    }
}
