//! Forward: send the request to the Cloud API unchanged (but for hop-by-hop headers)
//! over a pooled HTTP/1.1 + HTTP/2 client, TLS via rustls, with a deadline on the answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{header, HeaderMap, HeaderName, Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{self, Client};
use hyper_util::rt::TokioExecutor;
use pin_project_lite::pin_project;
use tower::Service;

use super::body::Body;
use super::error::ProxyError;
use super::route::Target;
use crate::config::Config;
use crate::graph::route::Kind;
use crate::metrics::METRICS;

/// The HTTP client type shared by the proxy, the health poller and the webhook relay.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Builds the pooled client (http and https, HTTP/2 by ALPN on TLS) over `tls`
/// (see [`crate::tls::client_config`]).
pub fn client(connect_timeout: Duration, tls: tokio_rustls::rustls::ClientConfig) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https)
}

/// The innermost service: forwards to `upstream`.
#[derive(Clone)]
pub struct Upstream {
    // Behind an Arc: the stack is cloned per request, and a client clone is a dozen Arcs.
    client: Arc<HttpClient>,
    scheme: Scheme,
    authority: Authority,
    timeout: Duration,
}

impl Upstream {
    /// A forwarder to the configured upstream (validated at load time).
    pub fn new(cfg: &Config, client: HttpClient) -> Result<Upstream, ProxyError> {
        let uri: Uri = cfg
            .upstream
            .parse()
            .map_err(|e| ProxyError::Connect(format!("bad upstream: {e}")))?;
        let parts = uri.into_parts();
        Ok(Upstream {
            client: Arc::new(client),
            scheme: parts.scheme.unwrap_or(Scheme::HTTPS),
            authority: parts
                .authority
                .ok_or_else(|| ProxyError::Connect("upstream has no host".into()))?,
            timeout: cfg.request_timeout,
        })
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), dropped in both directions (here and in the relay).
pub const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those named by `Connection`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Common case first: one pass over the few headers present, no removal.
    if !h.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    if let Some(conn) = h.get(header::CONNECTION) {
        if let Ok(list) = conn.to_str() {
            let named: Vec<HeaderName> = list
                .split(',')
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
                .collect();
            for n in named {
                h.remove(n);
            }
        }
    }
    for n in HOP_BY_HOP.iter() {
        h.remove(n);
    }
}

impl Service<Request<Body>> for Upstream {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let unmapped = parts
            .extensions
            .get::<Target>()
            .is_some_and(|t| t.kind == Kind::Send && t.resolved.is_none());
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(self.authority.clone());
        uri.path_and_query = parts.uri.path_and_query().cloned();
        parts.uri = Uri::from_parts(uri).unwrap_or_default();
        parts.version = http::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        parts.extensions = http::Extensions::new();
        ResponseFuture {
            inner: self.client.request(Request::from_parts(parts, body)),
            sleep: tokio::time::sleep(self.timeout),
            timeout: self.timeout,
            start: Instant::now(),
            unmapped,
        }
    }
}

pin_project! {
    /// The upstream answer, or a [`ProxyError`] when there is none in time.
    pub struct ResponseFuture {
        #[pin]
        inner: legacy::ResponseFuture,
        #[pin]
        sleep: tokio::time::Sleep,
        timeout: Duration,
        start: Instant,
        unmapped: bool,
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.inner.poll(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => {
                if this.sleep.poll(cx).is_ready() {
                    METRICS.upstream_error.inc();
                    METRICS.observe_upstream(None, this.start.elapsed().as_secs_f64());
                    tracing::warn!(timeout = ?this.timeout, "upstream request timed out");
                    return Poll::Ready(Err(ProxyError::Timeout(*this.timeout)));
                }
                return Poll::Pending;
            }
        };
        let elapsed = this.start.elapsed().as_secs_f64();
        match result {
            Ok(resp) => {
                METRICS.observe_upstream(Some(resp.status().as_u16()), elapsed);
                if *this.unmapped {
                    METRICS.unmapped.inc();
                } else {
                    METRICS.forwarded.inc();
                }
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Poll::Ready(Ok(Response::from_parts(parts, Body::stream(body))))
            }
            Err(e) => {
                METRICS.upstream_error.inc();
                METRICS.observe_upstream(None, elapsed);
                let detail = error_chain(&e);
                tracing::warn!(error = %detail, "upstream request failed");
                Poll::Ready(Err(if e.is_connect() {
                    ProxyError::Connect(detail)
                } else {
                    ProxyError::Broken(detail)
                }))
            }
        }
    }
}

/// An error and its sources, `a: b: c`, for one log line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
