//! Persistence behind the circuit table: an embedded store on disk (single instance) and
//! Redis keys + pub/sub (several replicas). Nothing here is on the hot path: the table
//! notifies the store of changes, and the store feeds remote changes back through `Table::merge`.
//!
//! - [`embedded`]: one redb file, `{state_dir}/circuits.redb`, always on. Loaded before the
//!   listeners bind; every change is committed (fsync) by a writer task that coalesces bursts,
//!   then reported with [`Table::mark_durable`].
//! - [`replica`]: when `redis_url` is set, `{prefix}:circuit:{waba_id}` keys written with a
//!   compare-and-set script that publishes on `{prefix}:changes`; reloaded with SCAN on every
//!   (re)connect. Redis being away never stops the gateway.
//! - [`rules`]: the pure part (key layout, ordering key, TTLs), unit-tested.
//!
//! See `docs/state.md` for the operator's view.

pub mod connect;
pub mod embedded;
pub mod replica;
pub mod rules;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::circuit::Table;
use crate::common::BoxError;
use crate::config::Config;

/// How long `start` waits for the first Redis sync before serving without it.
const REDIS_START_WAIT: Duration = Duration::from_secs(5);
/// How long `shutdown` waits for each store task to finish its last write.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Why state could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded store is unreadable.
    #[error(
        "state store {path} is corrupt or unreadable: {}. Nothing was changed. To keep a copy \
         and start with empty state, restart once with --move-aside-corrupt-state (the file is \
         renamed to {path}.corrupt-<timestamp>)", crate::common::error_chain(.cause.as_ref())
    )]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong with it (shown in the message, before the way out).
        cause: BoxError,
    },
    /// The state directory cannot be created or written.
    #[error("state_dir {path} cannot be created or written")]
    Dir {
        /// The directory.
        path: String,
        /// The file system's answer.
        #[source]
        source: std::io::Error,
    },
    /// The store file cannot be opened (permissions, read-only or full file system…).
    #[error("state store {path} cannot be opened")]
    Open {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// Another process has the store open.
    #[error(
        "state store {path} is in use by another process: each wa-breaker instance needs its \
         own state_dir (share state between replicas with redis_url)"
    )]
    InUse {
        /// The file.
        path: String,
    },
    /// `redis_url` cannot be used.
    #[error("redis_url cannot be used: {0}")]
    Redis(String),
}

/// The running store tasks.
pub struct StoreHandle {
    stop: watch::Sender<bool>,
    embedded: JoinHandle<embedded::Ended>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl StoreHandle {
    /// Flushes pending writes (embedded store, then the last Redis writes) before exit.
    /// Says whether every change reached the embedded store.
    pub async fn shutdown(self) -> embedded::Ended {
        let _ = self.stop.send(true);
        let ended = match tokio::time::timeout(SHUTDOWN_WAIT, self.embedded).await {
            Ok(Ok(ended)) => ended,
            Ok(Err(_)) | Err(_) => {
                tracing::error!("the state store writer did not finish in time: the last changes may not be durable");
                embedded::Ended::NotDurable(0)
            }
        };
        for (name, task) in self.tasks {
            if tokio::time::timeout(SHUTDOWN_WAIT, task).await.is_err() {
                tracing::warn!(task = name, "store task did not finish in time");
            }
        }
        ended
    }
}

/// Loads state into `table` (before the listeners accept traffic) and starts the writers.
pub async fn start(cfg: &Config, table: Arc<Table>) -> Result<StoreHandle, StoreError> {
    // Absolute, so every message names the file unambiguously.
    let dir = std::path::absolute(&cfg.state_dir).unwrap_or_else(|_| cfg.state_dir.clone());
    let path = dir.join(embedded::FILE_NAME).display().to_string();
    let move_aside = cfg.move_aside_corrupt_state;
    let (db, loaded) = tokio::task::spawn_blocking(move || embedded::open(&dir, move_aside))
        .await
        .map_err(|e| StoreError::Open {
            path: path.clone(),
            source: Box::new(e),
        })??;
    let open = loaded.circuits.iter().filter(|c| c.is_open()).count();
    let total = loaded.circuits.len();
    let records = loaded.mappings.len();
    // Past-due `until`s stay open here: the expiry task closes them right after start.
    for c in loaded.circuits {
        table.restore(c);
    }
    // Then mappings: a phone number's open circuit whose WABA is known (a widening a crash
    // cut short) widens now.
    for m in loaded.mappings {
        table.merge_mapping(m);
    }
    let (configured, learned) = table.directory().counts();
    tracing::info!(
        path = %path,
        circuits = total,
        open,
        phone_numbers_configured = configured,
        phone_numbers_learned = learned,
        account_records = records,
        "circuit state loaded"
    );

    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let rx = table.subscribe();
    let mappings = table.subscribe_mappings();
    let base = table.last_seq();
    let embedded = tokio::spawn(embedded::writer(
        db,
        path,
        table.clone(),
        rx,
        mappings,
        base,
        stop_rx.clone(),
    ));
    // Everything loaded is durable already.
    table.mark_durable(base);
    tasks.push(("prune", tokio::spawn(prune(table.clone(), stop_rx.clone()))));

    if let Some(url) = &cfg.redis_url {
        let tls = if url.expose().starts_with("rediss://")
            || url.expose().starts_with("rediss+sentinel://")
        {
            Some(std::sync::Arc::new(redis_tls(cfg).map_err(|e| {
                StoreError::Redis(crate::common::error_chain(&e))
            })?))
        } else {
            None
        };
        let (replica, mut status) = replica::Replica::new(
            url.expose(),
            tls,
            &cfg.redis_prefix,
            table.clone(),
            cfg.closed_retention(),
            cfg.redis_retry_max,
        )
        .map_err(StoreError::Redis)?;
        let notices = table.subscribe();
        let mappings = table.subscribe_mappings();
        tasks.push((
            "redis",
            tokio::spawn(replica.run(notices, mappings, stop_rx)),
        ));
        // Serve with Redis's state when it answers; never wait long when it does not.
        let first = tokio::time::timeout(
            REDIS_START_WAIT,
            status.wait_for(|s| *s != replica::Status::Connecting),
        )
        .await;
        if !matches!(first, Ok(Ok(s)) if *s == replica::Status::Up) {
            tracing::warn!(
                "starting without redis: state comes from the embedded store until it answers"
            );
        }
    }
    Ok(StoreHandle {
        stop,
        embedded,
        tasks,
    })
}

/// The rustls config for `rediss://`: Mozilla roots + `redis_ca_file`, and the client
/// certificate when `redis_client_cert` / `redis_client_key` are set.
pub(crate) fn redis_tls(
    cfg: &Config,
) -> Result<tokio_rustls::rustls::ClientConfig, crate::tls::TlsError> {
    let client = match (&cfg.redis_client_cert, &cfg.redis_client_key) {
        (Some(cert), Some(key)) => Some(crate::tls::ClientCert { cert, key }),
        _ => None,
    };
    crate::tls::client_config_with(cfg.redis_ca_file.as_deref(), client)
}

/// How often closed records past their retention (or over `max_circuits`) are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Drops old closed records now and then (the first pass right after start).
async fn prune(table: Arc<Table>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => { table.prune(chrono::Utc::now()); }
            _ = stop.changed() => return,
        }
    }
}
