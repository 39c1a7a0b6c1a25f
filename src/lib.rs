//! wa-breaker: an outbound send gateway for the WhatsApp Cloud API that stops sending for a
//! WhatsApp Business Account as soon as Meta blocks it (HTTP 403, Graph error 368), and
//! starts again when a signal says the account may send.
//!
//! The crate's map, in the order a request meets it:
//!
//! - `server` — listeners, accept loops, drains; hands each connection to an engine.
//! - engines, which move bytes and take the steps [`policy::exchange`] defines, in its
//!   order: the byte relay (`relay`, with its HTTP/1 codec [`h1`]) and the hyper + tower
//!   stack (`proxy`, one layer per step).
//! - the core, pure and importing nothing above it (`tests/architecture.rs` keeps it so):
//!   - [`policy`] — every decision on the request path (route, guard, pace, judge, the
//!     local reply, framing and hop-by-hop rules) and the exchange, plus what webhook events
//!     mean for a circuit (`plan`, `template`);
//!   - [`circuit`] — the circuit model, the ordering rule, the phone → WABA directory and
//!     the table the policy reads;
//!   - [`graph`] — what the gateway knows of Meta's API: routes, the id rule, error codes
//!     and envelopes, webhook and health payloads.
//! - `upstream` — the upstream parsed once, its pools, the in-flight limit.
//! - `signals` (webhooks, Health Status polls, discovery, expiry timers) and `admin` (the
//!   admin API and the console page) change circuits; `store` keeps them on disk and shares
//!   them through Redis; `notify` announces transitions to Slack / signed webhooks.
//! - [`config`] — the typed configuration; it builds each core component's settings.
//! - [`cli`] (the operator CLI) and [`simulate`] (a Cloud API simulator) are other faces of
//!   the same binary.
//!
//! Data flows one way: the engines ask [`policy`], which reads and changes [`circuit`];
//! signals and admin change circuits too; the table notifies the stores, and the stores feed
//! other replicas' changes back into it. Nothing on the request path waits for a store
//! (a trip's answer waits, at most a second, for its own change to be durable).
#![warn(missing_docs)]

pub(crate) mod admin;
pub mod circuit;
pub mod cli;
pub(crate) mod common;
pub mod config;
pub(crate) mod cpu;
pub mod graph;
pub(crate) mod metrics;
pub(crate) mod notify;
pub mod policy;
pub(crate) mod proxy;
pub(crate) mod relay;
pub(crate) mod server;
pub(crate) mod signals;
pub mod simulate;
pub(crate) mod store;
pub(crate) mod tls;
pub(crate) mod upstream;

pub use common::error_chain;
pub use relay::h1;
pub use store::StoreError;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::policy::Policy;
use crate::upstream::{Limits, Target};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Another process already serves a listener's address.
    #[error(
        "cannot listen on {addr} ({what}): the address is in use by another process (another \
         wa-breaker?). Stop it or choose another address{hint}"
    )]
    Taken {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        what: &'static str,
        /// How to hand over on purpose, for the main listener.
        hint: &'static str,
    },
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({what})")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        what: &'static str,
        /// The OS's answer.
        #[source]
        source: std::io::Error,
    },
    /// Circuit state could not be loaded.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The upstream cannot be used.
    #[error(transparent)]
    Upstream(#[from] upstream::TargetError),
    /// Stopped with circuit changes the embedded store could not commit: a restart would
    /// not know them (with Redis, other replicas may).
    #[error("stopped with {0} circuit changes not committed to the state store (the disk refused them); they are lost for this instance")]
    NotDurable(usize),
}

/// For `check-config`: phone numbers learned or operator-set in the state store under
/// `state_dir` (`None`: no store yet). Fails when the store is in use or unreadable.
pub fn count_learned(state_dir: &std::path::Path) -> Result<Option<usize>, store::StoreError> {
    store::embedded::count_learned(state_dir)
}

/// A name for this replica, used to break ordering ties between replicas.
fn replica_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!("{host}-{}", std::process::id())
}

/// Runs the gateway until SIGTERM/SIGINT, then drains.
pub async fn run(cfg: Config) -> Result<(), RunError> {
    // 1. State, loaded before any listener accepts traffic.
    let table = Arc::new(cfg.circuit_table(replica_id()));
    if cfg.redis_url.is_some() {
        metrics::METRICS.enable_redis_gauge();
    }
    let store = store::start(&cfg, table.clone()).await?;

    // 2. Listeners, so a taken port fails the start before anything else runs.
    let workers = worker_count(&cfg);
    let main =
        server::bind_workers(cfg.listen, workers, cfg.listen_shared).map_err(|e| match e {
            server::BindError::Taken => RunError::Taken {
                addr: cfg.listen,
                what: "listen",
                hint: " (a hand-over between two instances that share Redis: listen_shared = true on both)",
            },
            server::BindError::Io(source) => RunError::Bind {
                addr: cfg.listen,
                what: "listen",
                source,
            },
        })?;
    let admin_listener =
        TcpListener::bind(cfg.admin_listen)
            .await
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::AddrInUse => RunError::Taken {
                    addr: cfg.admin_listen,
                    what: "admin_listen",
                    hint: "",
                },
                _ => RunError::Bind {
                    addr: cfg.admin_listen,
                    what: "admin_listen",
                    source,
                },
            })?;

    // 3. What every worker shares: the policy core, the upstream, its limit, the signals.
    let target = Target::new(&cfg)?;
    // Subscribed before the signals start, so an expiry right after start is announced.
    notify::start(&cfg.notify, &table, target.client());
    let (levels, levels_rx) = signals::throughput::channel(&cfg).unzip();
    let signals = signals::start(&cfg, &target, table.clone(), levels.clone());
    let discovery = signals
        .discovery()
        .map(|h| Arc::new(h) as Arc<dyn policy::Discovery>);
    let policy = Arc::new(
        Policy::new(cfg.policy_settings(), table.clone())
            .with_discovery(discovery)
            .with_throughput_reads(
                levels
                    .clone()
                    .map(|l| Arc::new(l) as Arc<dyn policy::ThroughputReads>),
                signals::throughput::token(&cfg).is_some(),
            ),
    );
    if let Some(rx) = levels_rx {
        signals::throughput::start(
            &cfg,
            &target,
            policy.clone(),
            rx,
            signals.discovery().is_some(),
        );
    }
    if let Some(w) = cfg.shaping_level_warning() {
        tracing::warn!("{w}");
    }
    signals::replicas::start(&cfg, table.origin(), policy.clone());
    signals::replicas::start_gauges(&cfg, policy.clone());
    let limits = Limits::new(
        cfg.upstream_concurrency,
        cfg.upstream_large_concurrency,
        upstream::Queue {
            max: cfg.upstream_queue_max,
            timeout: cfg.upstream_queue_timeout,
        },
    );
    let webhook = Arc::new(signals::webhook::Webhook::new(
        &cfg,
        table.clone(),
        target.client(),
        signals.health(),
        signals.budget(),
        levels,
    ));
    let relay = cfg.fast_path.then(|| {
        relay::Relay::new(
            policy.clone(),
            limits.ready.clone(),
            &target,
            relay::ClientDeadlines::new(&cfg),
        )
    });

    // 4. Proxy workers, each with its own engines and upstream pools.
    let (stop_tx, stop_rx) = watch::channel(false);
    let pins = cpu::plan(workers, cfg.pin_workers, &cpu::allowed());
    let connections = Arc::new(tokio::sync::Semaphore::new(cfg.connection_cap()));
    let mut running = Vec::with_capacity(workers);
    for (i, listener) in main.into_iter().enumerate() {
        let stack = proxy::stack(
            policy.clone(),
            limits.clone(),
            &target,
            target.forward_clients(),
        );
        let engines = server::Engines {
            relay: relay.as_ref().map(relay::Relay::worker),
            edge: proxy::Edge::new(
                policy.clone(),
                stack,
                webhook.clone(),
                cfg.client_body_timeout,
            ),
            deadlines: relay::ClientDeadlines::new(&cfg),
            connections: connections.clone(),
            h2_max_streams: cfg.client_h2_max_streams,
        };
        running.push(spawn_worker(
            i,
            pins[i],
            listener,
            &cfg,
            engines,
            stop_rx.clone(),
        )?);
    }

    // 5. The admin listener, and ready.
    let ready = Arc::new(admin::Readiness::default());
    let admin = admin::AdminService(Arc::new(
        admin::Admin::new(
            table.clone(),
            cfg.admin_token.clone(),
            ready.clone(),
            cfg.accounts.iter().map(|a| a.waba_id.clone()).collect(),
        )
        .with_policy(policy.clone()),
    ));
    // The admin listener has its own stop: it keeps answering (`/readyz` 503) while the
    // main listener drains, and closes last.
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    drop(stop_rx);
    let admin_task = tokio::spawn(server::serve(
        "admin",
        admin_listener,
        admin,
        server::AdminLimits::new(&cfg),
        admin_stop_rx,
        cfg.drain_timeout,
    ));
    ready.set_ready();
    if let Some(w) = cfg.protection_warning() {
        if table.directory().counts().1 == 0 {
            tracing::warn!("{w}");
        }
    }
    let (configured, learned) = table.directory().counts();
    tracing::info!(
        listen = %cfg.listen,
        admin_listen = %cfg.admin_listen,
        upstream = %cfg.upstream,
        mode = %cfg.mode.as_str(),
        accounts = cfg.accounts.len(),
        phone_numbers_configured = configured,
        phone_numbers_learned = learned,
        discovery = signals.discovery().is_some(),
        workers,
        pinned = pins.iter().any(Option::is_some),
        fast_path = cfg.fast_path,
        max_connections = cfg.connection_cap(),
        "wa-breaker ready"
    );

    // 6. Until a signal, then drain and flush state.
    server::shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    ready.set_draining();
    let _ = stop_tx.send(true);
    for w in running {
        let _ = w.await;
    }
    let _ = admin_stop_tx.send(true);
    let _ = admin_task.await;
    if let store::embedded::Ended::NotDurable(n) = store.shutdown().await {
        return Err(RunError::NotDurable(n));
    }
    tracing::info!("stopped");
    Ok(())
}

fn worker_count(cfg: &Config) -> usize {
    if cfg.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cfg.workers
    }
}

/// Starts one proxy worker: a thread with its own single-threaded runtime, listener
/// (`SO_REUSEPORT`) and engines with their upstream pools, so a request never crosses
/// threads. The policy (circuit table, account map) and the upstream limit are shared.
/// Resolves when it has drained.
fn spawn_worker(
    i: usize,
    pin: Option<usize>,
    listener: std::net::TcpListener,
    cfg: &Config,
    engines: server::Engines,
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
                match TcpListener::from_std(listener) {
                    Ok(l) => server::serve_main(l, engines, stop, drain).await,
                    Err(e) => tracing::error!(worker = i, error = %e, "cannot register listener"),
                }
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
