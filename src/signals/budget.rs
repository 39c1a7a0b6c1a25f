//! The messaging-limit budget's task (observe only): counts the unique users each WABA's
//! template messages reached in a moving 24 h, from Meta's `messages` status webhooks
//! ([`crate::policy::budget::reached`]), sets the gauges and records a warning at 80 % and
//! at 100 % of the WABA's limit — the operator's `[messaging_limit.limits]`, else the last
//! `business_capability_update` recorded for it; none known or unlimited: counted only.
//!
//! - **One task owns the counts**: the webhook receiver hands it what a delivery reports
//!   ([`Budget::record`], never waiting; a full queue drops, counted and logged once).
//! - **Shared over Redis**: webhooks of one WABA reach any replica, so with `redis_url` the
//!   count is the fleet's — a sorted set per WABA (`{prefix}:budget:{waba}`, each user
//!   scored by the last time reached, older than 24 h trimmed, at most `max_users` kept,
//!   expiring a day after its last write). Redis away: each replica counts what it hears
//!   (one warning line, one line when Redis is back).
//! - **Bounded**: only WABAs the gateway knows are counted, at most `max_users` users each
//!   (the count saturates there: every finite tier is at most 100 000).
//! - **Once per fleet**: a level already recorded on the WABA's record within 24 h is not
//!   recorded again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::mpsc;

use crate::circuit::Table;
use crate::config::Config;
use crate::metrics::METRICS;
use crate::policy::budget::{announced, level, warning, Reached, Window, WINDOW_SECS};
use crate::policy::warning::previous_limit;
use crate::store::connect::{Con, Endpoint};

/// Deliveries waiting for the task; past it they are dropped (counted).
const QUEUE: usize = 4096;
/// Statuses counted in one round at most (one Redis round trip per WABA).
const MAX_BATCH: usize = 5_000;
/// Longest wait on one Redis round trip before counting locally.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed round trip, Redis is not tried again for this long.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Adds users (scored by time), trims the window and the cap, keeps the key a day, and
/// answers the count. KEYS: the WABA's set. ARGV: oldest kept (Unix s), cap, TTL (s), then
/// score/member pairs.
const COUNT_SCRIPT: &str = r#"
for i = 4, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], 'GT', ARGV[i], ARGV[i + 1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local n = redis.call('ZCARD', KEYS[1])
local cap = tonumber(ARGV[2])
if n > cap then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - cap - 1)
  n = cap
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return n
"#;

/// What a delivery reported for one WABA.
struct Batch {
    waba_id: String,
    reached: Vec<Reached>,
}

/// The webhook receiver's handle on the task.
#[derive(Clone)]
pub struct Budget {
    tx: mpsc::Sender<Batch>,
    full_logged: Arc<AtomicBool>,
}

impl Budget {
    /// Starts the task for `cfg` (`None` when `messaging_limit.enabled` is off).
    pub fn start(cfg: &Config, table: Arc<Table>) -> Option<Budget> {
        let m = &cfg.messaging_limit;
        if !m.enabled {
            tracing::info!("messaging_limit.enabled is off: template reach is not counted");
            return None;
        }
        let redis = cfg.redis_url.as_ref().and_then(|url| {
            let url = url.expose();
            let tls = if url.starts_with("rediss://") || url.starts_with("rediss+sentinel://") {
                crate::store::redis_tls(cfg).ok().map(Arc::new)
            } else {
                None
            };
            match Endpoint::new(url, tls) {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(error = %e, "messaging-limit counts cannot use redis_url: each replica counts what it hears");
                    None
                }
            }
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let counter = Counter {
            table,
            max_users: m.max_users,
            limits: m.limits.clone().into_iter().collect(),
            windows: HashMap::new(),
            redis: redis.map(|endpoint| Shared {
                endpoint,
                prefix: cfg.redis_prefix.clone(),
                script: redis::Script::new(COUNT_SCRIPT),
                con: None,
                retry_at: None,
                away: false,
            }),
        };
        tokio::spawn(counter.run(rx));
        Some(Budget {
            tx,
            full_logged: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Hands the task what one `messages` change of `waba_id` reports (never waits).
    pub fn record(&self, waba_id: &str, reached: Vec<Reached>) {
        if reached.is_empty() {
            return;
        }
        let batch = Batch {
            waba_id: waba_id.to_string(),
            reached,
        };
        match self.tx.try_send(batch) {
            Ok(()) => {
                self.full_logged.store(false, Ordering::Relaxed);
            }
            Err(_) => {
                METRICS
                    .events_ignored
                    .with_label_values(&["budget_queue_full"])
                    .inc();
                if !self.full_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!("messaging-limit count queue full: statuses dropped (counted in wa_breaker_events_ignored_total{{reason=\"budget_queue_full\"}})");
                }
            }
        }
    }
}

struct Shared {
    endpoint: Endpoint,
    prefix: String,
    script: redis::Script,
    con: Option<Con>,
    retry_at: Option<Instant>,
    away: bool,
}

struct Counter {
    table: Arc<Table>,
    max_users: usize,
    limits: HashMap<String, u64>,
    windows: HashMap<String, Window>,
    redis: Option<Shared>,
}

impl Counter {
    async fn run(mut self, mut rx: mpsc::Receiver<Batch>) {
        while let Some(first) = rx.recv().await {
            // What queued meanwhile goes in the same round trip per WABA (statuses come
            // three per message at busy times).
            let mut by_waba: HashMap<String, Vec<Reached>> = HashMap::new();
            let mut n = first.reached.len();
            by_waba
                .entry(first.waba_id)
                .or_default()
                .extend(first.reached);
            while n < MAX_BATCH {
                let Ok(b) = rx.try_recv() else { break };
                n += b.reached.len();
                by_waba.entry(b.waba_id).or_default().extend(b.reached);
            }
            for (waba, reached) in by_waba {
                self.count(waba, reached).await;
            }
        }
    }

    async fn count(&mut self, waba: String, reached: Vec<Reached>) {
        // Only WABAs something vouches for: a signed flood of made-up ids grows nothing.
        if !self.table.directory().knows_waba(&waba) && !self.limits.contains_key(&waba) {
            METRICS
                .events_ignored
                .with_label_values(&["budget_unknown_waba"])
                .inc();
            return;
        }
        let now = Utc::now();
        let secs = now.timestamp();
        let window = self
            .windows
            .entry(waba.clone())
            .or_insert_with(|| Window::new(self.max_users));
        for r in &reached {
            window.add(*r, secs);
        }
        let local = window.count(secs) as u64;
        let count = match self.shared_count(&waba, &reached, secs).await {
            Some(n) => n,
            None => local,
        };
        METRICS
            .messaging_limit_users
            .with_label_values(&[&waba])
            .set(count as i64);
        let record = self.table.get(&waba);
        let limit = match self.limits.get(&waba) {
            Some(n) => Some((*n, n.to_string())),
            None => previous_limit(record.as_ref()),
        };
        let Some((n, spelled)) = limit else {
            return;
        };
        if n != u64::MAX {
            METRICS
                .messaging_limit
                .with_label_values(&[&waba])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let Some(lvl) = level(count, n) else {
            return;
        };
        let since = now - chrono::Duration::seconds(WINDOW_SECS);
        if announced(record.as_ref(), lvl, since) {
            return;
        }
        self.table
            .apply(warning(&waba, lvl, count, (n, &spelled), now));
    }

    /// The fleet's count of `waba` after adding `reached` (`None`: no Redis, or away).
    async fn shared_count(&mut self, waba: &str, reached: &[Reached], now: i64) -> Option<u64> {
        let r = self.redis.as_mut()?;
        if r.retry_at.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        let key = format!("{}:budget:{waba}", r.prefix);
        let mut inv = r.script.key(key);
        inv.arg(now - WINDOW_SECS)
            .arg(self.max_users)
            .arg(WINDOW_SECS + 3600);
        for x in reached {
            inv.arg(x.at).arg(x.user);
        }
        let attempt = async {
            if r.con.is_none() {
                r.con = Some(r.endpoint.commands(IO_TIMEOUT).await?);
            }
            let Some(con) = r.con.as_mut() else {
                return Err("no connection".to_string());
            };
            inv.invoke_async::<u64>(con)
                .await
                .map_err(|e| format!("messaging-limit count script: {e}"))
        };
        let res = match tokio::time::timeout(IO_TIMEOUT, attempt).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer from redis within {IO_TIMEOUT:?}")),
        };
        match res {
            Ok(n) => {
                r.retry_at = None;
                if std::mem::take(&mut r.away) {
                    tracing::info!(
                        "redis is back for the messaging-limit counts: the fleet's count again"
                    );
                }
                Some(n)
            }
            Err(e) => {
                r.con = None;
                r.retry_at = Some(Instant::now() + RETRY_AFTER);
                if !std::mem::replace(&mut r.away, true) {
                    tracing::warn!(error = %e, "redis unreachable for the messaging-limit counts: each replica counts what it hears until it is back");
                }
                None
            }
        }
    }
}
