//! wa-breaker: an outbound send gateway for the WhatsApp Cloud API that stops sending
//! for a WhatsApp Business Account as soon as Meta blocks it (HTTP 403, Graph error 368),
//! and starts again when a signal says the account may send.
//!
//! Data flows one way: [`proxy`] asks [`circuit`] and reports trips to it; [`signals`] and
//! [`admin`] change circuits too; [`circuit`] notifies listeners (stores) of every change.

pub mod admin;
pub mod circuit;
pub mod config;
pub mod graph;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod signals;
pub mod store;

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

    let main = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| RunError::Bind {
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

    let client = proxy::client(cfg.connect_timeout);
    let stack = proxy::stack(&cfg, table.clone(), client.clone())?;
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

    let (stop_tx, stop_rx) = watch::channel(false);
    let main_task = tokio::spawn(server::serve(
        "main",
        main,
        server::Edge::new(stack, webhook),
        stop_rx.clone(),
        cfg.drain_timeout,
    ));
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
        "wa-breaker ready"
    );

    server::shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    ready.store(false, Ordering::Release);
    let _ = stop_tx.send(true);
    let _ = main_task.await;
    let _ = admin_task.await;
    store.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
