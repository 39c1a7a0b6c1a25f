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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::proxy::{Body, Edge};
use crate::relay::rewind::Rewind;
use crate::relay::Relay;

/// One worker's engines for the main listener.
pub struct Engines {
    /// The relay, when `fast_path` is on.
    pub relay: Option<Relay>,
    /// The hyper engine's service.
    pub edge: Edge,
}

/// Serves the main listener until `shutdown` flips, then drains for up to `drain`.
pub async fn serve_main(
    listener: TcpListener,
    engines: Engines,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    // Each relay connection holds a sender; all dropped = all drained.
    let (alive, mut drained) = mpsc::channel::<()>(1);
    if let Some(relay) = &engines.relay {
        tokio::spawn(relay.clone().sweep_idle(shutdown.clone()));
    }
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            stream = accept(&listener, "main") => {
                let hyper = Hyper { builder: builder.clone(), edge: engines.edge.clone(), watcher: graceful.watcher() };
                match &engines.relay {
                    Some(relay) => {
                        let (relay, stop, alive) = (relay.clone(), shutdown.clone(), alive.clone());
                        tokio::spawn(async move {
                            relay.connection(stream, |s, read| hyper.serve(s, read), stop).await;
                            drop(alive);
                        });
                    }
                    None => {
                        tokio::spawn(hyper.serve(stream, Vec::new()));
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
}

impl Hyper {
    /// Serves the rest of the connection with hyper, replaying `read` (bytes the relay
    /// already read) first.
    async fn serve(self, stream: TcpStream, read: Vec<u8>) {
        let io = TokioIo::new(Rewind::new(stream, read));
        let conn = self.builder.serve_connection(io, self.edge).into_owned();
        if let Err(e) = self.watcher.watch(conn).await {
            tracing::debug!(listener = "main", error = %e, "connection closed with error");
        }
    }
}

/// Serves `service` on `listener` (the admin listener) until `shutdown` flips, then drains
/// for up to `drain`.
pub async fn serve<S>(
    name: &'static str,
    listener: TcpListener,
    service: S,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            stream = accept(&listener, name) => {
                let conn = builder
                    .serve_connection(TokioIo::new(stream), service.clone())
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(listener = name, error = %e, "connection closed with error");
                    }
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

/// The next connection on `listener`, with `TCP_NODELAY` set. Accept errors (EMFILE and
/// friends) are logged and retried after a short pause instead of spinning.
pub async fn accept(listener: &TcpListener, name: &'static str) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(e) => {
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Binds `n` listening sockets on `addr` with `SO_REUSEPORT`, so each worker thread accepts
/// its own connections (the kernel spreads them). Port 0 binds once and reuses the port.
pub fn bind_workers(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Socket, Type};
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    let mut at = addr;
    for _ in 0..n.max(1) {
        let sock = Socket::new(Domain::for_address(at), Type::STREAM, None)?;
        sock.set_reuse_address(true)?;
        #[cfg(unix)]
        sock.set_reuse_port(true)?;
        sock.set_nonblocking(true)?;
        sock.bind(&at.into())?;
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
