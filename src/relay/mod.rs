//! The main listener's fast path: a byte relay for plain HTTP/1.1 requests.
//!
//! The tower stack in [`crate::proxy`] parses and re-encodes every request and answer twice
//! (server and client codec). Sends are small, framed by `content-length` and nearly always
//! answered 200, so the relay instead parses only the request head (httparse), runs the same
//! steps — route → resolve → guard → limit → guard → forward → classify → respond — on the
//! buffered request, writes the head (minus hop-by-hop headers, `host` rewritten) and body to
//! a pooled upstream connection, and relays the answer's bytes back, reading error bodies
//! to classify them first. See `BENCHMARKS.md` for what that saves.
//!
//! Anything else — HTTP/1.0, h2c, chunked or large request bodies, `Expect`, upgrades, the
//! webhook path, bad syntax — is handed to hyper with the bytes already read, and hyper
//! serves that connection from then on, through the same stack as with `fast_path = false`.

mod exchange;
pub mod http1;
pub mod pool;
pub mod rewind;

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::circuit::Table;
use crate::config::{Config, Mode};
use crate::proxy::Accounts;
use crate::server::Edge;
use crate::signals::webhook::Webhook;

/// What every worker's relay shares.
struct Shared {
    accounts: Accounts,
    table: Arc<Table>,
    mode: Mode,
    limit: &'static crate::proxy::limit::Limiter,
    trip_codes: Vec<i64>,
    classify_limit: usize,
    request_timeout: Duration,
    /// `host` sent upstream.
    authority: String,
    webhook: Arc<Webhook>,
    target: pool::Target,
}

/// One worker's relay: the shared parts and this worker's upstream pool.
#[derive(Clone)]
pub struct Relay {
    shared: Arc<Shared>,
    pool: pool::Pool,
}

/// Builds relays; one per worker comes from [`RelayBuilder::worker`].
pub struct RelayBuilder {
    shared: Arc<Shared>,
}

impl RelayBuilder {
    /// From the validated config; `proxy` supplies the account map and upstream limit
    /// shared with the tower stack.
    pub fn new(
        cfg: &Config,
        table: Arc<Table>,
        proxy: &crate::proxy::Shared,
        webhook: Arc<Webhook>,
        tls: tokio_rustls::rustls::ClientConfig,
    ) -> Result<RelayBuilder, String> {
        let uri: http::Uri = cfg.upstream.parse().map_err(|e| format!("{e}"))?;
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .ok_or("upstream has no host")?;
        Ok(RelayBuilder {
            shared: Arc::new(Shared {
                accounts: proxy.accounts().clone(),
                table,
                mode: cfg.mode,
                limit: proxy.limiter(),
                trip_codes: cfg.trip_codes.clone(),
                classify_limit: cfg.classify_body_limit,
                request_timeout: cfg.request_timeout,
                authority,
                webhook,
                target: pool::Target::new(&uri, cfg.connect_timeout, tls)?,
            }),
        })
    }

    /// A relay with its own upstream pool.
    pub fn worker(&self) -> Relay {
        Relay {
            shared: self.shared.clone(),
            pool: pool::Pool::default(),
        }
    }
}

/// Serves the main listener until `shutdown` flips, then drains for up to `drain`: with the
/// relay for what it takes when `relay` is set, else every connection with hyper.
pub async fn serve(
    listener: TcpListener,
    relay: Option<Relay>,
    edge: Edge,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    // Each relay connection holds a sender; all dropped = all drained.
    let (alive, mut drained) = mpsc::channel::<()>(1);
    if let Some(relay) = &relay {
        let pool = relay.pool.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(15));
            loop {
                tokio::select! {
                    _ = every.tick() => pool.sweep(),
                    _ = stop.changed() => break,
                }
            }
        });
    }
    loop {
        tokio::select! {
            stream = crate::server::accept(&listener, "main") => {
                let hyper = Hyper { builder: builder.clone(), edge: edge.clone(), watcher: graceful.watcher() };
                match &relay {
                    Some(relay) => {
                        let (relay, stop, alive) = (relay.clone(), shutdown.clone(), alive.clone());
                        tokio::spawn(async move {
                            connection(stream, relay, hyper, stop).await;
                            drop(alive);
                        });
                    }
                    None => {
                        tokio::spawn(hyper.serve(stream, Vec::new()));
                    }
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    drop(alive);
    let both = async {
        tokio::join!(graceful.shutdown(), drained.recv());
    };
    tokio::select! {
        _ = both => tracing::info!(listener = "main", "drained"),
        _ = tokio::time::sleep(drain) => tracing::warn!(listener = "main", ?drain, "drain timeout; closing remaining connections"),
    }
}

/// What a connection needs to be handed to hyper.
struct Hyper {
    builder: auto::Builder<TokioExecutor>,
    edge: Edge,
    watcher: Watcher,
}

impl Hyper {
    /// Serves the rest of the connection with hyper, replaying `read` first.
    async fn serve(self, stream: TcpStream, read: Vec<u8>) {
        let io = TokioIo::new(rewind::Rewind::new(stream, read));
        let conn = self.builder.serve_connection(io, self.edge).into_owned();
        if let Err(e) = self.watcher.watch(conn).await {
            tracing::debug!(listener = "main", error = %e, "connection closed with error");
        }
    }
}

/// Per-connection buffers, reused across requests.
#[derive(Default)]
struct Scratch {
    /// The request as sent upstream (head, then body).
    up: Vec<u8>,
    /// The upstream's answer as read.
    resp: Vec<u8>,
    /// What goes to the client.
    out: Vec<u8>,
    /// A chunked error body, decoded for the classifier.
    decoded: Vec<u8>,
}

/// One client connection: relays requests until one needs hyper, the client closes, or the
/// gateway drains (idle connections close at once; a request in flight is answered first).
async fn connection(
    mut stream: TcpStream,
    relay: Relay,
    hyper: Hyper,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut scratch = Scratch::default();
    let shared = relay.shared.clone();
    loop {
        if *shutdown.borrow() && buf.is_empty() {
            return;
        }
        let head = loop {
            if !buf.is_empty() {
                match http1::parse_request(&buf, &shared.authority, &mut scratch.up, |p| {
                    shared.webhook.matches(p)
                }) {
                    http1::Parsed::Partial => {}
                    http1::Parsed::Handoff => return hyper.serve(stream, buf).await,
                    http1::Parsed::Request(head) => break head,
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            let read = if buf.is_empty() {
                tokio::select! {
                    r = stream.read_buf(&mut buf) => r,
                    _ = shutdown.changed() => return,
                }
            } else {
                stream.read_buf(&mut buf).await
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let total = head.head_len + head.body_len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
        }
        while buf.len() < total {
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let close = head.close || *shutdown.borrow();
        let keep = relay
            .exchange(&mut stream, &buf[..total], &head, close, &mut scratch)
            .await;
        buf.drain(..total);
        if !keep {
            return;
        }
    }
}
