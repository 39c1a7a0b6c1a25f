//! Listeners: the main listener's hyper service (webhook path or proxy stack), the admin
//! listener's accept loop with graceful shutdown, socket binding and signals. The main
//! listener's accept loop is in [`crate::relay`], which hands connections here as needed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use pin_project_lite::pin_project;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::util::Oneshot;
use tower::ServiceExt;

use crate::proxy::{Body, ProxyError, Stack};
use crate::signals::webhook::Webhook;

/// The main listener's service: the webhook path goes to the receiver, everything else to the proxy.
#[derive(Clone)]
pub struct Edge {
    proxy: Stack,
    webhook: Arc<Webhook>,
}

impl Edge {
    /// Dispatches between `proxy` and `webhook`.
    pub fn new(proxy: Stack, webhook: Arc<Webhook>) -> Edge {
        Edge { proxy, webhook }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// The proxy's answer (errors converted to Cloud API envelopes here, once), or the webhook's.
    #[project = EdgeProj]
    pub enum EdgeFuture {
        Proxy { #[pin] fut: Oneshot<Stack, Request<Body>> },
        Webhook { fut: BoxFuture<Response<Body>> },
    }
}

impl Future for EdgeFuture {
    type Output = Result<Response<Body>, Infallible>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            EdgeProj::Proxy { fut } => Poll::Ready(Ok(match ready!(fut.poll(cx)) {
                Ok(resp) => resp,
                Err(e) => ProxyError::into_response(e),
            })),
            EdgeProj::Webhook { fut } => fut.as_mut().poll(cx).map(Ok),
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for Edge {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = EdgeFuture;

    fn call(&self, req: Request<Incoming>) -> EdgeFuture {
        if self.webhook.matches(req.uri().path()) {
            let wh = self.webhook.clone();
            return EdgeFuture::Webhook {
                fut: Box::pin(async move { wh.handle(req).await }),
            };
        }
        EdgeFuture::Proxy {
            fut: self.proxy.clone().oneshot(req.map(Body::stream)),
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
pub async fn accept(listener: &TcpListener, name: &'static str) -> tokio::net::TcpStream {
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
