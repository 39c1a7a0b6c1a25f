//! Listeners: binding, accept loops, graceful drains, signals. The main listener's accept
//! loop hands each connection to an engine — the byte relay ([`crate::relay`]) when
//! `fast_path` is on, which passes what it does not take to hyper, or hyper with the proxy
//! stack ([`crate::proxy`]) for every connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::proxy::{Body, Edge};
use crate::relay::rewind::Rewind;
use crate::relay::Relay;

/// One worker's engines for the main listener.
pub struct Engines {
    /// The relay, when `fast_path` is on.
    pub relay: Option<Relay>,
    /// The hyper engine's service.
    pub edge: Edge,
    /// The client deadlines (the relay has its own copy).
    pub deadlines: crate::relay::ClientDeadlines,
    /// `max_connections`: one permit per open client connection, shared by every worker.
    pub connections: Arc<Semaphore>,
    /// `client_h2_max_streams`: streams open at once on one HTTP/2 connection.
    pub h2_max_streams: u32,
}

/// What one HTTP/2 stream's answer may buffer on its way to a client that reads slowly:
/// h2 stops polling the answer's body once this much waits to be written (hyper's default
/// is ~400 KiB). With [`crate::upstream::ANSWER_CHUNK_MAX`], the chunk in hand, a stream
/// holds at most about 128 KiB of its answer.
pub const H2_SEND_BUF: usize = 64 * 1024;

/// An HTTP/2 client's request bodies: the window per stream and per connection (hyper's
/// defaults, set here so the bound does not move with hyper). What a connection's streams
/// have sent and the gateway has not yet forwarded is at most the connection window.
pub const H2_STREAM_WINDOW: u32 = 1024 * 1024;
/// See [`H2_STREAM_WINDOW`].
pub const H2_CONN_WINDOW: u32 = 1024 * 1024;
/// An HTTP/2 request's header list (`SETTINGS_MAX_HEADER_LIST_SIZE`; hyper's default).
pub const H2_MAX_HEADER_LIST: u32 = 16 * 1024;

/// Applies the HTTP/2 bounds to `builder`: `client_h2_max_streams` concurrent streams, the
/// send buffer per stream, the receive windows and the header list (see README "Edges").
fn bound_h2(builder: &mut auto::Builder<TokioExecutor>, max_streams: u32) {
    builder
        .http2()
        .max_concurrent_streams(max_streams)
        .max_send_buf_size(H2_SEND_BUF)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .max_header_list_size(H2_MAX_HEADER_LIST);
}

/// Serves the main listener until `shutdown` flips, then drains for up to `drain`.
pub async fn serve_main(
    listener: TcpListener,
    engines: Engines,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper starts the head's clock when it waits for a request, so on this engine the
    // header deadline also bounds a kept-alive connection's idle time.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(engines.deadlines.header.min(engines.deadlines.idle));
    bound_h2(&mut builder, engines.h2_max_streams);
    let graceful = GracefulShutdown::new();
    // Each relay connection holds a sender; all dropped = all drained.
    let (alive, mut drained) = mpsc::channel::<()>(1);
    if let Some(relay) = &engines.relay {
        tokio::spawn(relay.clone().sweep_idle(shutdown.clone()));
    }
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            (permit, stream) = accept_capped(&listener, &engines.connections, "main") => {
                let hyper = Hyper {
                    builder: builder.clone(),
                    edge: engines.edge.clone(),
                    watcher: graceful.watcher(),
                    idle: engines.deadlines.idle,
                    header: engines.deadlines.header,
                    stop: shutdown.clone(),
                };
                match &engines.relay {
                    Some(relay) => {
                        let (relay, stop, alive) = (relay.clone(), shutdown.clone(), alive.clone());
                        tokio::spawn(async move {
                            relay.connection(stream, |s, read| hyper.serve(s, read), stop).await;
                            drop(alive);
                            drop(permit);
                        });
                    }
                    None => {
                        tokio::spawn(async move {
                            hyper.serve(stream, Vec::new()).await;
                            drop(permit);
                        });
                    }
                }
            }
            _ = stop.changed() => break,
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

/// What a connection needs to be served by hyper.
struct Hyper {
    builder: auto::Builder<TokioExecutor>,
    edge: Edge,
    watcher: Watcher,
    /// `client_idle_timeout`, for a fresh connection's first byte, and an HTTP/2
    /// connection's time with no stream open.
    idle: Duration,
    /// `client_header_timeout`, for a fresh HTTP/2 connection's first request.
    header: Duration,
    /// Flips when the process drains (an HTTP/2 connection then gets GOAWAY at once).
    stop: watch::Receiver<bool>,
}

impl Hyper {
    /// Serves the rest of the connection with hyper, replaying `read` (bytes the relay
    /// already read) first.
    async fn serve(self, stream: TcpStream, read: Vec<u8>) {
        // hyper-util's auto builder waits for a fresh connection's first bytes (HTTP/1 or
        // HTTP/2?) with no deadline of its own: a connection that never sends one is
        // closed at `client_idle_timeout`, like on the relay.
        let h2 = if read.is_empty() {
            match tokio::time::timeout(self.idle, starts_h2(&stream)).await {
                Ok(h2) => h2,
                Err(_) => return,
            }
        } else {
            read.starts_with(PRI)
        };
        if h2 {
            return self.serve_h2(stream, read).await;
        }
        let (io, handle) = Rewind::new(stream, read);
        let conn = self
            .builder
            .serve_connection(TokioIo::new(io), self.edge)
            .into_owned();
        if let Err(e) = self.watcher.watch(conn).await {
            // hyper gives up a head that misses its deadline without answering; the relay
            // answers 408, and so does this engine — unless nothing of a request came
            // (an idle kept-alive connection closes silently on both).
            let head_timeout = e
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_timeout);
            if head_timeout && handle.request_started() {
                let mut out = Vec::with_capacity(512);
                crate::relay::render(&crate::policy::exchange::client_timed_out(), true, &mut out);
                handle.answer_and_close(&out).await;
                return;
            }
            tracing::debug!(listener = "main", error = %e, "connection closed with error");
        }
    }
}

impl Hyper {
    /// Serves an HTTP/2 connection (prior knowledge; the relay hands these over too).
    /// hyper has no HTTP/2 idle or head deadline of its own, so the connection counts its
    /// open streams and gets GOAWAY (hyper's graceful shutdown) once none has been open
    /// for `client_idle_timeout` — or, before its first request, for the smaller of
    /// `client_header_timeout` and `client_idle_timeout`. A HEADERS block never finished
    /// is no stream, so the same deadline cuts it. A drain sends GOAWAY at once. Streams
    /// still open finish; once none is open, the connection is closed after
    /// [`H2_GOAWAY_GRACE`] even if the client never acknowledges the GOAWAY.
    async fn serve_h2(self, stream: TcpStream, read: Vec<u8>) {
        let (count, mut open) = watch::channel(0usize);
        let service = Streams {
            inner: self.edge,
            count: Arc::new(count),
        };
        let (io, _handle) = Rewind::new(stream, read);
        let conn = self
            .builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let mut conn = std::pin::pin!(conn);
        let mut stop = self.stop;
        let first = self.header.min(self.idle);
        let mut shut = false;
        loop {
            let quiet = if shut {
                (H2_GOAWAY_GRACE, H2_GOAWAY_GRACE)
            } else {
                (first, self.idle)
            };
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(listener = "main", error = %e, "connection closed with error");
                    }
                    break;
                }
                _ = no_stream_for(&mut open, quiet.0, quiet.1) => {
                    if shut {
                        break;
                    }
                    crate::metrics::METRICS.client_timeouts.inc();
                    conn.as_mut().graceful_shutdown();
                    shut = true;
                }
                _ = drain_started(&mut stop), if !shut => {
                    conn.as_mut().graceful_shutdown();
                    shut = true;
                }
            }
        }
        // Held until here, so a drain waits for this connection (up to its bound).
        drop(self.watcher);
    }
}

/// The start of the HTTP/2 connection preface (`PRI * HTTP/2.0`), which no HTTP/1 method
/// spells.
const PRI: &[u8] = b"PRI ";

/// How long an HTTP/2 connection that was sent GOAWAY stays open once no stream is open
/// (for the client to read the GOAWAY); then it is closed.
const H2_GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// Whether a fresh connection's first bytes are the HTTP/2 preface's (waits for the
/// first byte, and for more only while what came is a prefix of `PRI `). A closed or
/// failed connection is left to hyper.
async fn starts_h2(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 4];
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 || buf[..n] != PRI[..n] {
            return false;
        }
        if n == PRI.len() {
            return true;
        }
        // "P" or "PR" so far: rare, wait for the rest.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Completes once no stream has been open for `first` (before any stream opened) or
/// `then` (after).
async fn no_stream_for(open: &mut watch::Receiver<usize>, first: Duration, then: Duration) {
    let mut quiet = first;
    loop {
        if open.wait_for(|n| *n == 0).await.is_err() {
            return std::future::pending().await;
        }
        tokio::select! {
            _ = tokio::time::sleep(quiet) => return,
            r = open.changed() => {
                if r.is_err() {
                    return std::future::pending().await;
                }
                quiet = then;
            }
        }
    }
}

/// Completes when the drain starts (never if the sender is gone).
async fn drain_started(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// An HTTP/2 connection's service: the hyper engine's, counting open streams (from the
/// request until its answer's body is done or dropped).
#[derive(Clone)]
struct Streams {
    inner: Edge,
    count: Arc<watch::Sender<usize>>,
}

/// One open stream; dropping it counts it closed.
struct Open(Arc<watch::Sender<usize>>);

impl Open {
    fn new(count: &Arc<watch::Sender<usize>>) -> Open {
        count.send_modify(|n| *n += 1);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl hyper::service::Service<Request<Incoming>> for Streams {
    type Response = Response<Counted>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Counted>, Infallible>> + Send>,
    >;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let open = Open::new(&self.count);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|inner| Counted { inner, _open: open }))
        })
    }
}

pin_project_lite::pin_project! {
    /// An HTTP/2 answer's body, holding its stream's place in the count.
    struct Counted {
        #[pin]
        inner: Body,
        _open: Open,
    }
}

impl http_body::Body for Counted {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The admin listener's limits: the main listener's head and idle deadlines
/// (`client_header_timeout`, `client_idle_timeout`) and its own connection cap
/// (`admin_max_connections`), so partial heads cannot pile up on it (issue 25).
#[derive(Clone, Copy, Debug)]
pub struct AdminLimits {
    /// A request head, from when the connection waits for one (then closed).
    pub header: Duration,
    /// A fresh connection's first byte (then closed).
    pub idle: Duration,
    /// Connections open at once; at the cap the listener stops accepting.
    pub max_connections: usize,
}

impl AdminLimits {
    /// From the validated config.
    pub fn new(cfg: &crate::config::Config) -> AdminLimits {
        AdminLimits {
            header: cfg.client_header_timeout,
            idle: cfg.client_idle_timeout,
            max_connections: cfg.admin_max_connections,
        }
    }
}

/// Serves `service` on `listener` (the admin listener) within `limits` until `shutdown`
/// flips, then drains for up to `drain`.
pub async fn serve<S>(
    name: &'static str,
    listener: TcpListener,
    service: S,
    limits: AdminLimits,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    // HTTP/1 only: probes, scrapes, the CLI and the console speak it, and hyper has no
    // HTTP/2 idle or head deadline — an h2c preface is refused at once instead of holding
    // a place under the cap.
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    // As on the main listener's hyper engine: the head's clock starts when the connection
    // waits for a request, so it also bounds a kept-alive connection's idle time.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header.min(limits.idle));
    let graceful = GracefulShutdown::new();
    let cap = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        tokio::select! {
            (permit, stream) = accept_capped(&listener, &cap, name) => {
                let (builder, service, watcher) = (builder.clone(), service.clone(), graceful.watcher());
                tokio::spawn(async move {
                    // The first byte within `client_idle_timeout` (the auto builder waits
                    // for it with no deadline of its own); the connection holds its place
                    // under the cap until it closes.
                    if tokio::time::timeout(limits.idle, stream.peek(&mut [0u8; 1]))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(listener = name, error = %e, "connection closed with error");
                    }
                    drop(permit);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!(listener = name, "drained"),
        _ = tokio::time::sleep(drain) => tracing::warn!(listener = name, ?drain, "drain timeout; closing remaining connections"),
    }
}

/// The next connection on the main listener once fewer than `max_connections` are open:
/// at the cap the listener stops accepting and the kernel queues new connections (their
/// clients wait; none is refused or closed by the gateway).
async fn accept_capped(
    listener: &TcpListener,
    cap: &Arc<Semaphore>,
    name: &'static str,
) -> (OwnedSemaphorePermit, TcpStream) {
    let permit = match cap.clone().acquire_owned().await {
        Ok(p) => p,
        // The semaphore is never closed.
        Err(_) => std::future::pending().await,
    };
    (permit, accept(listener, name).await)
}

/// Longest pause between accept attempts while they fail.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(200);

/// The next connection on `listener`, with `TCP_NODELAY` set. Accept errors (EMFILE and
/// friends) back off (10 ms, doubling, at most [`ACCEPT_BACKOFF_MAX`]) instead of
/// spinning, and are logged once per burst: one line when the burst starts, one with the
/// count when accepting works again. The connection that could not be accepted stays in
/// the kernel's queue and is taken as soon as a descriptor is free.
pub async fn accept(listener: &TcpListener, name: &'static str) -> TcpStream {
    let mut failed: u64 = 0;
    let mut pause = Duration::from_millis(10);
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                if failed > 0 {
                    tracing::warn!(
                        listener = name,
                        failed,
                        "accepting again after accept errors"
                    );
                }
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(e) => {
                if failed == 0 {
                    tracing::warn!(listener = name, error = %e, "accept failed; backing off (one line per burst)");
                }
                failed += 1;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// Why a listener could not bind.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another socket already listens on the address: another wa-breaker (its
    /// `SO_REUSEPORT` group would otherwise take half the sends) or any other server.
    #[error("the address is in use by another process")]
    Taken,
    /// Anything else the OS refused.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl BindError {
    fn from_bind(e: std::io::Error) -> BindError {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            BindError::Taken
        } else {
            BindError::Io(e)
        }
    }
}

/// Binds `n` listening sockets on `addr` with `SO_REUSEPORT`, so each worker thread accepts
/// its own connections (the kernel spreads them). Port 0 binds once and reuses the port.
///
/// `SO_REUSEPORT` lets any process of the same user join the group, and a second gateway
/// on the same address would silently take about half the sends, each with its own
/// circuits. So unless `shared` (the `listen_shared` hand-over), a probe socket without
/// `SO_REUSEPORT` binds the address first: the kernel refuses it while any socket listens
/// there, ours excepted since none is bound yet. (Two instances started in the same
/// instant could both pass the probe; a start that finds the address served never does.)
pub fn bind_workers(
    addr: SocketAddr,
    n: usize,
    shared: bool,
) -> Result<Vec<std::net::TcpListener>, BindError> {
    use socket2::{Domain, Socket, Type};
    if !shared && addr.port() != 0 {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        // TIME_WAIT connections of a previous run do not count as a server.
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into()).map_err(BindError::from_bind)?;
    }
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    let mut at = addr;
    for _ in 0..n.max(1) {
        let sock = Socket::new(Domain::for_address(at), Type::STREAM, None)?;
        sock.set_reuse_address(true)?;
        #[cfg(unix)]
        sock.set_reuse_port(true)?;
        sock.set_nonblocking(true)?;
        sock.bind(&at.into()).map_err(BindError::from_bind)?;
        sock.listen(1024)?;
        let l: std::net::TcpListener = sock.into();
        at = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
