//! wa-breaker: an outbound send gateway for the WhatsApp Cloud API that stops sending
//! for a WhatsApp Business Account as soon as Meta blocks it (HTTP 403, Graph error 368),
//! and starts again when a signal says the account may send.
//!
//! Data flows one way: [`proxy`] asks [`circuit`] and reports trips to it; [`signals`] and
//! [`admin`] change circuits too; [`circuit`] notifies listeners (stores) of every change.

pub mod admin;
pub mod circuit;
pub mod config;
pub mod cpu;
pub mod graph;
pub mod metrics;
pub mod proxy;
pub mod relay;
pub mod server;
pub mod signals;
pub mod store;
pub mod tls;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::circuit::Table;
use crate::config::Config;

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    /// Circuit state could not be loaded.
    #[error("{0}")]
    Store(#[from] store::StoreError),
    /// The proxy could not be built.
    #[error("{0}")]
    Proxy(#[from] proxy::ProxyError),
    /// The upstream TLS settings are unusable.
    #[error("upstream TLS: {0}")]
    Tls(String),
}

/// A name for this replica, used to break ordering ties between replicas.
fn replica_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!("{host}-{}", std::process::id())
}

/// Runs the gateway until SIGTERM/SIGINT, then drains.
pub async fn run(cfg: Config) -> Result<(), RunError> {
    let table = Arc::new(Table::new(replica_id(), cfg.history_limit));
    let ready = Arc::new(AtomicBool::new(false));
    if cfg.redis_url.is_some() {
        metrics::METRICS.enable_redis_gauge();
    }
    // State is loaded before any listener accepts traffic.
    let store = store::start(&cfg, table.clone()).await?;

    let workers = if cfg.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cfg.workers
    };
    let main = server::bind_workers(cfg.listen, workers).map_err(|source| RunError::Bind {
        addr: cfg.listen,
        what: "listen",
        source,
    })?;
    let admin_l = TcpListener::bind(cfg.admin_listen)
        .await
        .map_err(|source| RunError::Bind {
            addr: cfg.admin_listen,
            what: "admin_listen",
            source,
        })?;

    let tls = tls::client_config(cfg.upstream_ca_file.as_deref()).map_err(RunError::Tls)?;
    let client = proxy::client(cfg.connect_timeout, tls.clone());
    let shared = proxy::Shared::new(&cfg);
    let signals = signals::start(&cfg, table.clone(), client.clone());
    let webhook = Arc::new(signals::webhook::Webhook::new(
        &cfg,
        table.clone(),
        client.clone(),
        signals.health(),
    ));
    let configured: HashSet<String> = cfg.accounts.iter().map(|a| a.waba_id.clone()).collect();
    let admin = admin::AdminService(Arc::new(admin::Admin::new(
        table.clone(),
        cfg.admin_token.clone(),
        ready.clone(),
        configured,
    )));

    let relay = if cfg.fast_path {
        Some(
            relay::RelayBuilder::new(&cfg, table.clone(), &shared, webhook.clone(), tls.clone())
                .map_err(RunError::Tls)?,
        )
    } else {
        None
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut main_tasks = Vec::new();
    let pins = cpu::plan(workers, cfg.pin_workers, &cpu::allowed());
    for (i, listener) in main.into_iter().enumerate() {
        // Each worker gets its own stack (and so its own hyper client pool) and relay pool.
        let stack = proxy::stack(
            &cfg,
            table.clone(),
            proxy::client(cfg.connect_timeout, tls.clone()),
            &shared,
        )?;
        main_tasks.push(spawn_worker(
            i,
            pins[i],
            listener,
            &cfg,
            server::Edge::new(stack, webhook.clone()),
            relay.as_ref().map(relay::RelayBuilder::worker),
            stop_rx.clone(),
        )?);
    }
    let admin_task = tokio::spawn(server::serve(
        "admin",
        admin_l,
        admin,
        stop_rx,
        cfg.drain_timeout,
    ));
    ready.store(true, Ordering::Release);
    tracing::info!(
        listen = %cfg.listen,
        admin_listen = %cfg.admin_listen,
        upstream = %cfg.upstream,
        mode = ?cfg.mode,
        accounts = cfg.accounts.len(),
        workers,
        pinned = pins.iter().any(Option::is_some),
        fast_path = cfg.fast_path,
        "wa-breaker ready"
    );

    server::shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    ready.store(false, Ordering::Release);
    let _ = stop_tx.send(true);
    for t in main_tasks {
        let _ = t.await;
    }
    let _ = admin_task.await;
    store.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Starts one proxy worker: a thread with its own single-threaded runtime, listener
/// (`SO_REUSEPORT`), relay and stack with their upstream pools, so a request never crosses
/// threads. The circuit table, account map and upstream limit are shared. Resolves when it
/// has drained.
fn spawn_worker(
    i: usize,
    pin: Option<usize>,
    listener: std::net::TcpListener,
    cfg: &Config,
    edge: server::Edge,
    relay: Option<relay::Relay>,
    stop: watch::Receiver<bool>,
) -> Result<tokio::sync::oneshot::Receiver<()>, RunError> {
    let drain = cfg.drain_timeout;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("wa-breaker-worker-{i}"))
        .spawn(move || {
            if let Some(cpu) = pin {
                match cpu::pin_current_thread(cpu) {
                    Ok(()) => tracing::debug!(worker = i, cpu, "worker pinned"),
                    Err(e) => tracing::warn!(worker = i, cpu, error = %e, "cannot pin worker; the scheduler places it"),
                }
            }
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(worker = i, error = %e, "cannot start a worker runtime");
                    return;
                }
            };
            rt.block_on(async move {
                let serving = tokio::spawn(async move {
                    match TcpListener::from_std(listener) {
                        Ok(l) => relay::serve(l, relay, edge, stop, drain).await,
                        Err(e) => {
                            tracing::error!(worker = i, error = %e, "cannot register listener")
                        }
                    }
                });
                let _ = serving.await;
            });
            let _ = done_tx.send(());
        })
        .map_err(|source| RunError::Bind {
            addr: cfg.listen,
            what: "listen (worker thread)",
            source,
        })?;
    Ok(done_rx)
}
