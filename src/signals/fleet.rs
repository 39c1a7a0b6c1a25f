//! Who in the fleet polls an open circuit's Health Status, and how often per WABA.
//!
//! Meta counts `GET /{node}?fields=health_status` reads against about 200 per hour per app
//! per WABA, so N replicas must not each poll every open circuit. Before each poll (and at
//! every wake of a poll loop, see [`super::health::poll_loop`]) the loop asks the
//! [`PollGate`]:
//!
//! - **With Redis**: one Lua script, atomic, decides. The lease
//!   `{prefix}:poll:{circuit-key}` holds the id of the one replica that polls the circuit,
//!   with a `PX` expiry of `health.lease`: taken when free, renewed when ours, left alone
//!   when another replica's (a lease skip). A holder that dies stops renewing; the lease
//!   lapses and the next replica to wake takes it over (within one lease plus one
//!   interval). The holder then counts the poll in `{prefix}:poll-budget:{id}:{hour}`
//!   (one counter per WABA, or phone number of unknown WABA, per clock hour) and polls only
//!   while the count is below `health.hourly_budget` (else a budget skip) — so the budget
//!   holds whatever the replica count.
//! - **Without Redis**: every poll is this replica's; the same hourly budget is kept in
//!   memory.
//! - **Redis away** (an error or no answer within [`IO_TIMEOUT`]): one warning, then each
//!   replica polls on its own within its local budget — a circuit is never left unpolled
//!   because Redis is down — and one info line when Redis answers again (the leases are
//!   claimed afresh; a lease this replica held may meanwhile have gone to another).
//!
//! Nothing here is on the hot path: only poll loops call it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Script;

use crate::circuit::{Circuit, Table};
use crate::config::Config;
use crate::metrics::METRICS;
use crate::store::connect::{Con, Endpoint};
use crate::store::rules::Layout;

/// Longest wait on one Redis round trip (connect included) before falling back locally.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed round trip, Redis is not tried again for this long (every loop decides
/// locally meanwhile, without waiting).
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long the last holder of a lease is remembered (to tell a takeover from a first claim).
const LAST_HOLDER_TTL: Duration = Duration::from_secs(3600);
/// Length of a budget window: a clock hour.
const WINDOW_SECS: u64 = 3600;

/// Takes, renews or reports a poll lease, and spends the hourly budget when asked.
///
/// KEYS: lease, last holder, budget counter. ARGV: replica id, lease ms, spend (0|1),
/// budget, budget key TTL ms, last-holder TTL ms. Returns `{code, detail}`:
/// `{0, holder}` another replica holds it; `{1, how}` ours, nothing spent;
/// `{2, how}` ours, budget spent; `{3, how}` ours, one poll counted. `how`: `renewed`,
/// `fresh`, `takeover`.
const CLAIM_SCRIPT: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return {0, holder} end
local how = 'renewed'
if not holder then
  local last = redis.call('GET', KEYS[2])
  if last and last ~= ARGV[1] then how = 'takeover' else how = 'fresh' end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[6])
if ARGV[3] == '0' then return {1, how} end
local n = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
if n >= tonumber(ARGV[4]) then return {2, how} end
redis.call('INCR', KEYS[3])
if n == 0 then redis.call('PEXPIRE', KEYS[3], ARGV[5]) end
return {3, how}
"#;

/// Drops a lease (and its last-holder record) only when this replica holds it.
const RELEASE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
"#;

/// What a poll loop does at a wake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Poll now (the budget is counted).
    Poll,
    /// Nothing was due (the lease, if any, was kept).
    Idle,
    /// A poll was due but is not made.
    Skip(SkipReason),
}

/// Why a due poll is not made (the `reason` of `wa_breaker_health_poll_skipped_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Another replica holds the circuit's poll lease.
    Lease,
    /// The hourly budget of the circuit's WABA is spent.
    Budget,
}

impl SkipReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Lease => "lease",
            SkipReason::Budget => "budget",
        }
    }
}

/// The fleet-wide (Redis) or local arbiter of health polls; shared by every poll loop.
pub struct PollGate {
    replica: String,
    lease: Duration,
    budget: u32,
    /// Budget id → (window, polls counted in it): without Redis, or while it is away.
    local: Mutex<HashMap<String, (u64, u32)>>,
    /// Circuit keys whose lease this replica holds (the `leases_held` gauge).
    held: Mutex<HashSet<String>>,
    redis: Option<Shared>,
}

struct Shared {
    endpoint: Endpoint,
    layout: Layout,
    claim: Script,
    release: Script,
    link: tokio::sync::Mutex<Link>,
    /// Set while Redis is away (and that was logged once).
    away: AtomicBool,
}

#[derive(Default)]
struct Link {
    con: Option<Con>,
    /// Not tried again before this, after a failure.
    retry_at: Option<Instant>,
}

/// The outcome of one claim script run.
enum Claimed {
    Other,
    Ours { spent: Option<bool>, how: String },
}

impl PollGate {
    /// The gate for `cfg`: fleet-wide when `redis_url` is set (and usable), else local.
    /// `replica` is this process's id (the table's origin, also the `replica` of
    /// notifications).
    pub fn new(cfg: &Config, replica: &str) -> Arc<PollGate> {
        let redis = cfg.redis_url.as_ref().and_then(|url| {
            let url = url.expose();
            let tls = if url.starts_with("rediss://") || url.starts_with("rediss+sentinel://") {
                match crate::store::redis_tls(cfg) {
                    Ok(t) => Some(Arc::new(t)),
                    Err(e) => {
                        tracing::warn!(error = %crate::common::error_chain(&e), "health poll leases cannot use redis (TLS): each replica polls within its own health.hourly_budget");
                        return None;
                    }
                }
            } else {
                None
            };
            match Endpoint::new(url, tls) {
                Ok(endpoint) => Some(Shared {
                    endpoint,
                    layout: Layout::new(&cfg.redis_prefix),
                    claim: Script::new(CLAIM_SCRIPT),
                    release: Script::new(RELEASE_SCRIPT),
                    link: tokio::sync::Mutex::new(Link::default()),
                    away: AtomicBool::new(false),
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "health poll leases cannot use redis_url: each replica polls within its own health.hourly_budget");
                    None
                }
            }
        });
        Arc::new(PollGate {
            replica: replica.to_string(),
            lease: cfg.health.lease(),
            budget: cfg.health.hourly_budget,
            local: Mutex::new(HashMap::new()),
            held: Mutex::new(HashSet::new()),
            redis,
        })
    }

    /// True when polls are arbitrated across the fleet (Redis configured).
    pub fn is_shared(&self) -> bool {
        self.redis.is_some()
    }

    /// The longest a poll loop may sleep while its poll is not due: a holder renews its
    /// lease well before it lapses.
    pub fn renew_every(&self) -> Option<Duration> {
        self.redis
            .as_ref()
            .map(|_| (self.lease / 3).max(Duration::from_millis(10)))
    }

    /// Decides one wake of `key`'s poll loop (`due`: a poll is due now). Counts skips and
    /// lease acquisitions.
    pub async fn decide(&self, key: &str, budget_id: &str, due: bool) -> Decision {
        let d = match &self.redis {
            None => self.local_decision(budget_id, due),
            Some(r) => match self.claim(r, key, budget_id, due).await {
                Ok(Claimed::Other) => {
                    self.set_held(key, false);
                    if due {
                        Decision::Skip(SkipReason::Lease)
                    } else {
                        Decision::Idle
                    }
                }
                Ok(Claimed::Ours { spent, how }) => {
                    if how != "renewed" {
                        let how = if how == "takeover" {
                            "takeover"
                        } else {
                            "fresh"
                        };
                        METRICS
                            .health_lease_acquired
                            .with_label_values(&[how])
                            .inc();
                        tracing::info!(
                            circuit = key,
                            how,
                            "health poll lease taken: this replica polls the circuit"
                        );
                    }
                    self.set_held(key, true);
                    match spent {
                        None => Decision::Idle,
                        Some(true) => Decision::Poll,
                        Some(false) => Decision::Skip(SkipReason::Budget),
                    }
                }
                Err(e) => {
                    if !r.away.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "redis is away for the health poll leases: each replica polls on its own, within its own health.hourly_budget, until redis answers again");
                    }
                    self.set_held(key, false);
                    self.local_decision(budget_id, due)
                }
            },
        };
        if let Decision::Skip(why) = d {
            METRICS
                .health_poll_skipped
                .with_label_values(&[why.as_str()])
                .inc();
        }
        d
    }

    /// Drops `key`'s lease when this replica holds it (its circuit closed or stopped being
    /// polled), so another replica need not wait for it to lapse if the circuit opens again.
    pub async fn release(&self, key: &str) {
        self.set_held(key, false);
        // Asked even when the bookkeeping says not held: the poll loop may have been
        // stopped between forgetting its lease and releasing it. The script checks the
        // holder, so a replica never drops another's lease.
        let Some(r) = &self.redis else { return };
        let lease = r.layout.poll_lease_key(key);
        let last = r.layout.poll_holder_key(key);
        let mut inv = r.release.key(lease);
        inv.key(last).arg(&self.replica);
        // Best effort: a lease not released lapses by itself.
        let _ = self.run::<i64>(r, &inv).await;
    }

    /// Records whether this replica holds `key`'s lease; returns whether it did.
    fn set_held(&self, key: &str, held: bool) -> bool {
        let Ok(mut h) = self.held.lock() else {
            return false;
        };
        let was = if held {
            !h.insert(key.to_string())
        } else {
            h.remove(key)
        };
        METRICS.health_leases_held.set(h.len() as i64);
        was
    }

    fn local_decision(&self, budget_id: &str, due: bool) -> Decision {
        if !due {
            return Decision::Idle;
        }
        let window = window_now();
        let Ok(mut m) = self.local.lock() else {
            return Decision::Poll;
        };
        // Old windows are dropped as they pass (bounded by the open circuits).
        m.retain(|_, (w, _)| *w == window);
        let spent = m.entry(budget_id.to_string()).or_insert((window, 0));
        if spend(&mut spent.1, self.budget) {
            Decision::Poll
        } else {
            Decision::Skip(SkipReason::Budget)
        }
    }

    async fn claim(
        &self,
        r: &Shared,
        key: &str,
        budget_id: &str,
        due: bool,
    ) -> Result<Claimed, String> {
        let now = unix_now();
        let window = now / WINDOW_SECS;
        // The counter lives to its window's end, plus a margin for clock skew.
        let budget_ttl_ms = ((window + 1) * WINDOW_SECS - now + 60) * 1000;
        let mut inv = r.claim.key(r.layout.poll_lease_key(key));
        inv.key(r.layout.poll_holder_key(key))
            .key(r.layout.poll_budget_key(budget_id, window))
            .arg(&self.replica)
            .arg(self.lease.as_millis().max(1) as u64)
            .arg(if due { 1 } else { 0 })
            .arg(self.budget)
            .arg(budget_ttl_ms)
            .arg(LAST_HOLDER_TTL.as_millis() as u64);
        let (code, detail): (i64, String) = self.run(r, &inv).await?;
        Ok(match code {
            0 => Claimed::Other,
            1 => Claimed::Ours {
                spent: None,
                how: detail,
            },
            2 => Claimed::Ours {
                spent: Some(false),
                how: detail,
            },
            3 => Claimed::Ours {
                spent: Some(true),
                how: detail,
            },
            other => return Err(format!("unexpected claim script answer {other}")),
        })
    }

    /// Runs a script on the shared connection (connecting first when needed), bounded by
    /// [`IO_TIMEOUT`]; any failure drops the connection and pauses Redis for
    /// [`RETRY_AFTER`].
    async fn run<T: redis::FromRedisValue>(
        &self,
        r: &Shared,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, String> {
        let mut link = r.link.lock().await;
        if link.retry_at.is_some_and(|t| Instant::now() < t) {
            return Err("redis unreachable (retrying shortly)".into());
        }
        let attempt = async {
            if link.con.is_none() {
                link.con = Some(r.endpoint.commands(IO_TIMEOUT).await?);
            }
            let Some(con) = link.con.as_mut() else {
                return Err("no connection".to_string());
            };
            inv.invoke_async::<T>(con)
                .await
                .map_err(|e| format!("health lease script: {e}"))
        };
        let res = match tokio::time::timeout(IO_TIMEOUT, attempt).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer from redis within {IO_TIMEOUT:?}")),
        };
        match &res {
            Ok(_) => {
                link.retry_at = None;
                if r.away.swap(false, Ordering::Relaxed) {
                    tracing::info!("redis is back for the health poll leases: one replica polls each circuit again");
                }
            }
            Err(_) => {
                link.con = None;
                link.retry_at = Some(Instant::now() + RETRY_AFTER);
            }
        }
        res
    }
}

/// Counts one poll against `budget` when there is room (pure).
fn spend(spent: &mut u32, budget: u32) -> bool {
    if *spent >= budget {
        return false;
    }
    *spent += 1;
    true
}

/// Whose hourly budget a circuit's polls count against: its WABA when known (also for a
/// phone number's circuit: Meta's limit is per WABA), else the phone number's id.
pub fn budget_id(table: &Table, c: &Circuit) -> String {
    if !c.waba_id.is_empty() {
        return c.waba_id.clone();
    }
    let phone = c.phone_number_id.clone().unwrap_or_default();
    table.resolve(&phone).map_or(phone, |r| r.waba.to_string())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn window_now() -> u64 {
    unix_now() / WINDOW_SECS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(budget: u32) -> Arc<PollGate> {
        let mut cfg = Config::default();
        cfg.health.hourly_budget = budget;
        PollGate::new(&cfg, "r1")
    }

    #[test]
    fn spending_stops_at_the_budget() {
        let mut n = 0;
        assert!(spend(&mut n, 2));
        assert!(spend(&mut n, 2));
        assert!(!spend(&mut n, 2));
        assert_eq!(n, 2);
    }

    #[tokio::test]
    async fn without_redis_every_due_poll_is_ours_within_the_local_budget() {
        let g = local(3);
        assert!(!g.is_shared());
        assert_eq!(g.renew_every(), None);
        assert_eq!(g.decide("1", "1", false).await, Decision::Idle);
        for _ in 0..3 {
            assert_eq!(g.decide("1", "1", true).await, Decision::Poll);
        }
        assert_eq!(
            g.decide("1", "1", true).await,
            Decision::Skip(SkipReason::Budget)
        );
        // Budgets are per WABA: another WABA still polls; a phone circuit of the first
        // WABA shares its budget.
        assert_eq!(g.decide("2", "2", true).await, Decision::Poll);
        assert_eq!(
            g.decide("phone:5", "1", true).await,
            Decision::Skip(SkipReason::Budget)
        );
    }

    #[test]
    fn budget_ids() {
        let t = Table::new("t", 20);
        let mut c = crate::circuit::testing::open(
            "102290129340398",
            crate::circuit::Scope::AllSends,
            None,
            crate::circuit::Source::Send,
        );
        t.apply(c.clone());
        let waba = t.get("102290129340398").unwrap();
        assert_eq!(budget_id(&t, &waba), "102290129340398");
        c.waba_id = String::new();
        c.phone_number_id = Some("106540352242922".into());
        t.apply(c);
        let phone = t.get("phone:106540352242922").unwrap();
        assert_eq!(budget_id(&t, &phone), "106540352242922");
    }
}
