//! How many replicas share each phone number's pace: with Redis, every replica beats a
//! heartbeat into one sorted set (`{prefix}:replicas`, each replica scored by the Redis
//! server's clock, so replicas' clocks need not agree) every [`BEAT_EVERY`]; the replicas
//! that beat within [`LIVE_FOR`] are alive, and the pacer divides every number's rate
//! among them ([`crate::policy::pace::Pacer::set_replicas`]). A replica that joins is
//! counted at its first beat; one that stops is dropped within [`LIVE_FOR`], and the
//! others take its share at their next beat. Redis away: the last count stands (the fleet
//! stays within the throughput; a replica does not take the whole rate because it cannot
//! see the others), logged once. Without Redis a replica paces alone at the full rate.
//!
//! Off the hot path: the hot path reads one atomic.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use crate::config::Config;
use crate::metrics::METRICS;
use crate::policy::Policy;
use crate::store::connect::Endpoint;

/// How often a replica beats.
pub const BEAT_EVERY: Duration = Duration::from_secs(2);
/// A replica that has not beaten for this long is gone.
pub const LIVE_FOR: Duration = Duration::from_secs(6);
/// Longest wait on one round trip.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Beats (KEYS: the set; ARGV: replica id, live ms) and answers the replicas alive.
const BEAT_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 10)
return redis.call('ZCARD', KEYS[1])
"#;

/// Starts the heartbeat for `cfg` (nothing without `redis_url` or with shaping off);
/// `replica` is this process's id.
pub fn start(cfg: &Config, replica: &str, policy: Arc<Policy>) {
    if cfg.shaping.mode == crate::policy::pace::ShapingMode::Off {
        return;
    }
    let Some(url) = cfg.redis_url.as_ref() else {
        METRICS.fleet_replicas.set(1);
        return;
    };
    let url = url.expose();
    let tls = if url.starts_with("rediss://") || url.starts_with("rediss+sentinel://") {
        crate::store::redis_tls(cfg).ok().map(Arc::new)
    } else {
        None
    };
    let endpoint = match Endpoint::new(url, tls) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "the pace cannot be shared over redis_url: this replica paces at the full throughput");
            return;
        }
    };
    let key = format!("{}:replicas", cfg.redis_prefix);
    let replica = replica.to_string();
    METRICS.fleet_replicas.set(1);
    tokio::spawn(async move {
        let script = Script::new(BEAT_SCRIPT);
        let mut con = None;
        let mut away = false;
        let mut tick = tokio::time::interval(BEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let beat = async {
                if con.is_none() {
                    con = Some(endpoint.commands(IO_TIMEOUT).await?);
                }
                let Some(c) = con.as_mut() else {
                    return Err("no connection".to_string());
                };
                script
                    .key(&key)
                    .arg(&replica)
                    .arg(LIVE_FOR.as_millis() as u64)
                    .invoke_async::<u32>(c)
                    .await
                    .map_err(|e| format!("replica heartbeat: {e}"))
            };
            match tokio::time::timeout(IO_TIMEOUT, beat).await {
                Ok(Ok(n)) => {
                    let n = n.max(1);
                    if std::mem::take(&mut away) {
                        tracing::info!(
                            replicas = n,
                            "redis is back: the pace is shared by the replicas alive again"
                        );
                    }
                    let before = policy.pacer().replicas();
                    if before != n {
                        tracing::info!(
                            replicas = n,
                            before,
                            "replicas sharing each phone number's pace changed"
                        );
                    }
                    policy.pacer().set_replicas(n);
                    METRICS.fleet_replicas.set(i64::from(n));
                }
                Ok(Err(e)) => {
                    con = None;
                    if !std::mem::replace(&mut away, true) {
                        tracing::warn!(error = %e, replicas = policy.pacer().replicas(), "redis unreachable for the replica heartbeat: the last count of replicas stands");
                    }
                }
                Err(_) => {
                    con = None;
                    if !std::mem::replace(&mut away, true) {
                        tracing::warn!(replicas = policy.pacer().replicas(), "no answer from redis within {IO_TIMEOUT:?} for the replica heartbeat: the last count of replicas stands");
                    }
                }
            }
        }
    });
}

/// How often the per-number pace gauge is refreshed.
const GAUGE_EVERY: Duration = Duration::from_secs(5);

/// Keeps `wa_breaker_shaping_pace` current: every [`GAUGE_EVERY`], one series per number
/// paced below its throughput (the slowest [`crate::metrics::PACE_SERIES`]), none for the
/// others — so the label set stays small and says which numbers Meta is pushing back on.
/// Nothing with shaping off.
pub fn start_gauges(cfg: &Config, policy: Arc<Policy>) {
    if cfg.shaping.mode == crate::policy::pace::ShapingMode::Off {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(GAUGE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let lowered = policy
                .pacer()
                .lowered(std::time::Instant::now(), crate::metrics::PACE_SERIES);
            METRICS.shaping_pace.reset();
            for (phone, rate) in lowered {
                METRICS
                    .shaping_pace
                    .with_label_values(&[phone.as_str()])
                    .set(rate);
            }
        }
    });
}
