//! Redis replication: every circuit is a key, every local change is written with a
//! compare-and-set script that also publishes it, and every replica applies what others
//! publish. One task owns the connections; any failure ends the session, and the next
//! session (after a capped, jittered backoff) reloads every key and writes back whatever
//! changed here meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use redis::{Msg, RedisError};
use tokio::sync::{mpsc, watch};
use tokio_rustls::rustls::ClientConfig;

use super::connect::{Con, Endpoint};
use super::rules::{encode, encode_mapping, ttl_for, worth_restoring, Layout, Ttl, CAS_SCRIPT};
use crate::circuit::{newer, Circuit, Mapping, MappingNotice, Notice, Origin, Table};
use crate::common::backoff::backoff_delay;
use crate::metrics::METRICS;

/// Connect and command timeouts: short, the hot path never waits on them anyway.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a live session checks both connections.
const PING_EVERY: Duration = Duration::from_secs(5);
/// Keys per SCAN / MGET round trip.
const SCAN_COUNT: usize = 500;
/// The first reconnect delay; doubles up to `redis_retry_max`.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// A session up this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// Time allowed at shutdown to write the last local changes.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// The replication state, for `start` to wait on the first sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// No attempt has finished yet.
    Connecting,
    /// Synced and following changes.
    Up,
    /// Away; retrying in the background.
    Down,
}

/// The Redis side of the store.
pub struct Replica {
    endpoint: Endpoint,
    table: Arc<Table>,
    layout: Layout,
    closed_ttl: Duration,
    retry_max: Duration,
    status: watch::Sender<Status>,
}

/// How a session ended.
enum End {
    Shutdown,
    Lost(String),
}

impl Replica {
    /// A replica for `url` (not yet connected; `tls` for `rediss://`). The URL is never
    /// logged: it may hold a password.
    pub fn new(
        url: &str,
        tls: Option<Arc<ClientConfig>>,
        prefix: &str,
        table: Arc<Table>,
        closed_ttl: Duration,
        retry_max: Duration,
    ) -> Result<(Replica, watch::Receiver<Status>), String> {
        // redis-rs's URL errors name the problem, never the URL (which may hold a password).
        let endpoint = Endpoint::new(url, tls)?;
        let (status, rx) = watch::channel(Status::Connecting);
        Ok((
            Replica {
                endpoint,
                table,
                layout: Layout::new(prefix),
                closed_ttl,
                retry_max,
                status,
            },
            rx,
        ))
    }

    /// Runs until shutdown: sessions, and backoff between them.
    pub async fn run(
        self,
        mut notices: mpsc::UnboundedReceiver<Notice>,
        mut mappings: mpsc::UnboundedReceiver<MappingNotice>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        METRICS.redis_connected.set(0);
        let mut attempt: u32 = 0;
        // Some(since) while Redis is away and the outage has been logged.
        let mut away: Option<Instant> = None;
        let mut ever_up = false;
        let mut up_since: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let end = self
                .session(
                    &mut notices,
                    &mut mappings,
                    &mut shutdown,
                    &mut away,
                    &mut ever_up,
                    &mut up_since,
                )
                .await;
            METRICS.redis_connected.set(0);
            match end {
                End::Shutdown => return,
                End::Lost(err) => {
                    self.status.send_replace(Status::Down);
                    if away.is_none() {
                        away = Some(Instant::now());
                        tracing::warn!(
                            channel = self.layout.channel(),
                            error = %err,
                            "redis is away: serving from memory and the embedded store, retrying in the background; local changes are written back when it returns"
                        );
                    } else {
                        tracing::debug!(error = %err, "redis still away");
                    }
                }
            }
            // A session that stayed up a while resets the backoff; one that fails right
            // after syncing (a flapping server) keeps growing it.
            if up_since
                .take()
                .is_some_and(|t| t.elapsed() >= STABLE_SESSION)
            {
                attempt = 0;
            }
            attempt = attempt.saturating_add(1);
            let delay = backoff_delay(attempt, self.retry_max.max(FIRST_RETRY)).max(FIRST_RETRY);
            // Local changes queued while away are not lost: the next session writes back
            // every local circuit newer than Redis's, so the queue itself can be dropped.
            let wake = tokio::time::sleep(delay);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    _ = &mut wake => break,
                    n = notices.recv() => if n.is_none() { return },
                    Some(_) = mappings.recv() => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    async fn session(
        &self,
        notices: &mut mpsc::UnboundedReceiver<Notice>,
        mappings: &mut mpsc::UnboundedReceiver<MappingNotice>,
        shutdown: &mut watch::Receiver<bool>,
        away: &mut Option<Instant>,
        ever_up: &mut bool,
        up_since: &mut Option<Instant>,
    ) -> End {
        let (mut con, pubsub) = match self.endpoint.connect(IO_TIMEOUT).await {
            Ok(c) => c,
            Err(e) => return End::Lost(e),
        };
        let (mut sink, mut stream) = pubsub.split();
        let channels = [self.layout.channel(), self.layout.account_channel()];
        match tokio::time::timeout(IO_TIMEOUT, sink.subscribe(&channels[..])).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return End::Lost(format!("subscribe: {e}")),
            Err(_) => return End::Lost("subscribe: timed out".into()),
        }
        let sha: String = match redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(CAS_SCRIPT)
            .query_async(&mut con)
            .await
        {
            Ok(s) => s,
            Err(e) => return End::Lost(format!("script load: {e}")),
        };

        // Subscribed first, then the full reload: a change published meanwhile is either in
        // the keys or queued on the subscription (applying it twice is a no-op).
        let started = Instant::now();
        let remote = match self.scan_all(&mut con).await {
            Ok(r) => r,
            Err(e) => return End::Lost(format!("reload: {e}")),
        };
        let mut merged = 0usize;
        for c in remote.values() {
            if self.table.merge(c.clone()) {
                merged += 1;
            }
        }
        // Whatever is queued now is in the table already: the snapshot below covers it.
        while notices.try_recv().is_ok() {}
        while mappings.try_recv().is_ok() {}
        let accounts = match self.sync_mappings(&mut con, &sha).await {
            Ok(n) => n,
            Err(e) => return End::Lost(format!("reload (accounts): {e}")),
        };
        tracing::debug!(
            account_keys = accounts,
            "phone number mappings reloaded from redis"
        );
        let now = chrono::Utc::now();
        let restore: Vec<Circuit> = self
            .table
            .list()
            .into_iter()
            .filter(|c| match remote.get(&c.key()) {
                Some(r) => newer(c, r),
                None => worth_restoring(c, now, self.closed_ttl),
            })
            .collect();
        let written = match self.write(&mut con, &sha, &restore).await {
            Ok(n) => n,
            Err(e) => return End::Lost(format!("write back: {e}")),
        };
        METRICS.redis_connected.set(1);
        self.status.send_replace(Status::Up);
        *up_since = Some(Instant::now());
        let took_ms = started.elapsed().as_millis() as u64;
        match away.take() {
            Some(since) => tracing::info!(
                away_ms = since.elapsed().as_millis() as u64,
                keys = remote.len(),
                merged,
                written_back = written,
                took_ms,
                "redis is back: reloaded every circuit and wrote back the local changes made meanwhile"
            ),
            None if !*ever_up => tracing::info!(
                keys = remote.len(),
                merged,
                written_back = written,
                took_ms,
                channel = self.layout.channel(),
                "redis connected: circuits shared with every replica"
            ),
            None => tracing::info!(
                keys = remote.len(),
                merged,
                written_back = written,
                "redis reconnected"
            ),
        }
        *ever_up = true;

        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(m) if m.get_channel_name() == self.layout.account_channel() => {
                        if let Some(fix) = self.apply_remote_mapping(&m) {
                            if let Err(e) = self.write_mappings(&mut con, &sha, &[fix]).await {
                                return End::Lost(format!("write: {e}"));
                            }
                        }
                    }
                    Some(m) => {
                        if let Some(fix) = self.apply_remote(&m) {
                            if let Err(e) = self.write(&mut con, &sha, &[fix]).await {
                                return End::Lost(format!("write: {e}"));
                            }
                        }
                    }
                    None => return End::Lost("subscription connection closed".into()),
                },
                n = notices.recv() => {
                    let Some(n) = n else { return End::Shutdown };
                    let mut batch = Batch::default();
                    batch.take(n);
                    while let Ok(n) = notices.try_recv() {
                        batch.take(n);
                    }
                    if let Err(e) = self.write(&mut con, &sha, &batch.circuits()).await {
                        return End::Lost(format!("write: {e}"));
                    }
                }
                Some(m) = mappings.recv() => {
                    let mut batch = MappingBatch::default();
                    batch.take(m);
                    while let Ok(m) = mappings.try_recv() {
                        batch.take(m);
                    }
                    if let Err(e) = self.write_mappings(&mut con, &sha, &batch.mappings()).await {
                        return End::Lost(format!("write: {e}"));
                    }
                }
                _ = ping.tick() => {
                    if let Err(e) = self.ping(&mut con, &mut sink).await {
                        return End::Lost(e);
                    }
                }
                _ = shutdown.changed() => {
                    let mut batch = Batch::default();
                    while let Ok(n) = notices.try_recv() {
                        batch.take(n);
                    }
                    let mut mb = MappingBatch::default();
                    while let Ok(m) = mappings.try_recv() {
                        mb.take(m);
                    }
                    let mb = mb.mappings();
                    if !mb.is_empty()
                        && !matches!(tokio::time::timeout(FINAL_FLUSH, self.write_mappings(&mut con, &sha, &mb)).await, Ok(Ok(_)))
                    {
                        tracing::warn!(mappings = mb.len(), "last phone number mappings not written to redis at shutdown; the next start writes them back");
                    }
                    let circuits = batch.circuits();
                    if !circuits.is_empty() {
                        match tokio::time::timeout(FINAL_FLUSH, self.write(&mut con, &sha, &circuits)).await {
                            Ok(Ok(_)) => {}
                            _ => tracing::warn!(
                                circuits = circuits.len(),
                                "last local changes not written to redis at shutdown; the next start writes them back"
                            ),
                        }
                    }
                    return End::Shutdown;
                }
            }
        }
    }

    async fn ping(&self, con: &mut Con, sink: &mut PubSubSink) -> Result<(), String> {
        let r: Result<redis::Value, RedisError> = redis::cmd("PING").query_async(con).await;
        r.map_err(|e| format!("ping: {e}"))?;
        // Behind Sentinel, a primary demoted by a failover keeps answering reads: end the
        // session so the next one asks the Sentinels for the new primary.
        if self.endpoint.follows_failover() && !super::connect::is_primary(con).await? {
            return Err(
                "the primary became a replica (sentinel failover): reconnecting to the new primary"
                    .into(),
            );
        }
        match tokio::time::timeout(IO_TIMEOUT, sink.ping::<redis::Value>()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("ping (pub/sub): {e}")),
            Err(_) => Err("ping (pub/sub): timed out".into()),
        }
    }

    /// Applies a change another replica published (our own are no-ops: not newer). When
    /// another replica publishes something older than what this one holds (say it was away
    /// longer than a closed key's TTL and wrote back a stale open), returns this replica's
    /// newer circuit so it is written back: Redis and the others converge on it.
    fn apply_remote(&self, m: &Msg) -> Option<Circuit> {
        let c = match serde_json::from_slice::<Circuit>(m.get_payload_bytes()) {
            Ok(c) if c.has_valid_ids() => c,
            Ok(c) => {
                tracing::warn!(key = %c.key(), "ignoring a published circuit with an invalid id");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a published message that is not a circuit");
                return None;
            }
        };
        if c.origin == self.table.origin() {
            // Our own write coming back (or older than a change of ours still queued).
            self.table.merge(c);
            return None;
        }
        let waba = c.key();
        if self.table.merge(c.clone()) {
            return None;
        }
        let local = self.table.get(&waba)?;
        if newer(&local, &c) {
            tracing::info!(
                waba_id = %waba,
                "a replica published an older circuit than this one holds: writing ours back"
            );
            return Some(local);
        }
        None
    }

    /// Every circuit key: SCAN (never KEYS), then MGET in chunks.
    async fn scan_all(&self, con: &mut Con) -> Result<HashMap<String, Circuit>, RedisError> {
        let keys = self.scan(con, self.layout.pattern()).await?;
        let mut out = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(SCAN_COUNT) {
            let values: Vec<Option<String>> =
                redis::cmd("MGET").arg(chunk).query_async(con).await?;
            for (key, value) in chunk.iter().zip(values) {
                // Gone since the SCAN (expired or deleted): nothing to load.
                let Some(value) = value else { continue };
                let Some(waba) = self.layout.waba_of(key) else {
                    continue;
                };
                match serde_json::from_str::<Circuit>(&value) {
                    Ok(c) if c.key() == waba && c.has_valid_ids() => {
                        out.insert(c.key(), c);
                    }
                    Ok(c) => {
                        tracing::warn!(key = %key, waba_id = %c.waba_id, "ignoring a redis key whose circuit belongs to another WABA")
                    }
                    Err(e) => {
                        tracing::warn!(key = %key, error = %e, "ignoring a redis key that is not a circuit")
                    }
                }
            }
        }
        Ok(out)
    }

    /// Writes circuits with the compare-and-set script (pipelined); returns how many were
    /// newer than what Redis held (and so were published).
    async fn write(
        &self,
        con: &mut Con,
        sha: &str,
        circuits: &[Circuit],
    ) -> Result<usize, RedisError> {
        if circuits.is_empty() {
            return Ok(0);
        }
        let now = chrono::Utc::now();
        let mut pipe = redis::pipe();
        let mut n = 0;
        for c in circuits {
            let (json, order) = match encode(c) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(waba_id = %c.waba_id, error = %e, "cannot encode circuit");
                    continue;
                }
            };
            let ttl = match ttl_for(c, now, self.closed_ttl) {
                Ttl::Persist => 0,
                Ttl::Millis(ms) => ms,
            };
            pipe.cmd("EVALSHA")
                .arg(sha)
                .arg(1)
                .arg(self.layout.key(&c.key()))
                .arg(json)
                .arg(order)
                .arg(self.layout.channel())
                .arg(ttl);
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        let results: Vec<i64> = pipe.query_async(con).await?;
        Ok(results.iter().filter(|r| **r == 1).count())
    }
}

/// Local changes queued since the last write: the latest circuit per WABA.
impl Replica {
    /// Reloads every mapping key, merges what is newer, and writes back the local records
    /// Redis lacks or holds older (changes made while it was away). Returns the keys read.
    async fn sync_mappings(&self, con: &mut Con, sha: &str) -> Result<usize, RedisError> {
        let keys = self.scan(con, self.layout.account_pattern()).await?;
        let mut remote: HashMap<String, Mapping> = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(SCAN_COUNT) {
            let values: Vec<Option<String>> =
                redis::cmd("MGET").arg(chunk).query_async(con).await?;
            for (key, value) in chunk.iter().zip(values) {
                let (Some(value), Some(phone)) = (value, self.layout.phone_of(key)) else {
                    continue;
                };
                match serde_json::from_str::<Mapping>(&value) {
                    Ok(m) if m.phone_number_id == phone && valid_mapping(&m) => {
                        remote.insert(m.phone_number_id.clone(), m);
                    }
                    Ok(_) => {
                        tracing::warn!(key = %key, "ignoring a redis key whose mapping is for another or an invalid phone number")
                    }
                    Err(e) => {
                        tracing::warn!(key = %key, error = %e, "ignoring a redis key that is not a phone number mapping")
                    }
                }
            }
        }
        for m in remote.values() {
            self.table.merge_mapping(m.clone());
        }
        let restore: Vec<Mapping> = self
            .table
            .directory()
            .records()
            .into_iter()
            .filter(|m| {
                remote
                    .get(&m.phone_number_id)
                    .is_none_or(|r| m.newer_than(r))
            })
            .filter(|m| {
                m.waba_id.is_some()
                    || m.updated_at
                        + chrono::Duration::from_std(self.closed_ttl)
                            .unwrap_or(chrono::Duration::MAX)
                        > chrono::Utc::now()
            })
            .collect();
        self.write_mappings(con, sha, &restore).await?;
        Ok(keys.len())
    }

    async fn scan(&self, con: &mut Con, pattern: &str) -> Result<Vec<String>, RedisError> {
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(con)
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// A mapping another replica published: merged when newer; ours written back when the
    /// published one is older than what we hold.
    fn apply_remote_mapping(&self, msg: &Msg) -> Option<Mapping> {
        let m = match serde_json::from_slice::<Mapping>(msg.get_payload_bytes()) {
            Ok(m) if valid_mapping(&m) => m,
            Ok(_) => {
                tracing::warn!("ignoring a published mapping with an invalid id");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a published message that is not a phone number mapping");
                return None;
            }
        };
        if m.origin == self.table.origin() || self.table.merge_mapping(m.clone()) {
            return None;
        }
        let local = self.table.directory().record(&m.phone_number_id)?;
        local.newer_than(&m).then_some(local)
    }

    /// Writes mappings with the compare-and-set script (publishing on the accounts channel):
    /// a live mapping has no TTL, a removal lives `redis_closed_ttl`.
    async fn write_mappings(
        &self,
        con: &mut Con,
        sha: &str,
        mappings: &[Mapping],
    ) -> Result<usize, RedisError> {
        if mappings.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        let mut n = 0;
        for m in mappings {
            let Ok((json, order)) = encode_mapping(m) else {
                continue;
            };
            let ttl = if m.waba_id.is_some() {
                0
            } else {
                self.closed_ttl.as_millis().max(1000) as u64
            };
            pipe.cmd("EVALSHA")
                .arg(sha)
                .arg(1)
                .arg(self.layout.account_key(&m.phone_number_id))
                .arg(json)
                .arg(order)
                .arg(self.layout.account_channel())
                .arg(ttl);
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        let results: Vec<i64> = pipe.query_async(con).await?;
        Ok(results.iter().filter(|r| **r == 1).count())
    }
}

/// Ids of a mapping from Redis are checked like a circuit's: numeric, bounded.
fn valid_mapping(m: &Mapping) -> bool {
    crate::graph::GraphId::new(&m.phone_number_id).is_some()
        && m.waba_id
            .as_deref()
            .is_none_or(|w| crate::graph::GraphId::new(w).is_some())
}

/// Local mapping changes waiting to be written, the latest per phone number.
#[derive(Default)]
struct MappingBatch {
    latest: HashMap<String, (u64, Mapping)>,
}

impl MappingBatch {
    fn take(&mut self, n: MappingNotice) {
        // Remote ones came from Redis; dropped records (evicted, old removals) are not
        // deleted there: removals expire by TTL, and learned entries stay shared.
        if n.origin != Origin::Local || n.removed {
            return;
        }
        let key = n.mapping.phone_number_id.clone();
        match self.latest.get(&key) {
            Some((s, _)) if *s > n.seq => {}
            _ => {
                self.latest.insert(key, (n.seq, n.mapping));
            }
        }
    }

    fn mappings(self) -> Vec<Mapping> {
        self.latest.into_values().map(|(_, m)| m).collect()
    }
}

#[derive(Default)]
struct Batch {
    latest: HashMap<String, (u64, Circuit)>,
}

impl Batch {
    fn take(&mut self, n: Notice) {
        // Remote changes came from Redis (or were loaded): never published again. A dropped
        // record's key expires in Redis by its own TTL.
        if n.origin != Origin::Local || n.removed {
            return;
        }
        let key = n.circuit.key();
        match self.latest.get(&key) {
            Some((s, _)) if *s > n.seq => {}
            _ => {
                self.latest.insert(key, (n.seq, n.circuit));
            }
        }
    }

    fn circuits(self) -> Vec<Circuit> {
        let mut v: Vec<(u64, Circuit)> = self.latest.into_values().collect();
        v.sort_by_key(|(s, _)| *s);
        v.into_iter().map(|(_, c)| c).collect()
    }
}
