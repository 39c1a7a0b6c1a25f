//! The upstream, parsed once: where requests go (scheme, authority, TLS trust), the timeouts,
//! the one idle/reuse policy of every pool, the limit on requests in flight, and why a
//! forward failed.
//!
//! Both engines forward over pools that follow [`POOL_IDLE_TIMEOUT`] and [`POOL_MAX_IDLE`]:
//! the relay's per-worker HTTP/1.1 pool ([`pool`]) and HTTP/2 connections ([`http2`], for an
//! `https` upstream that selects `h2` by ALPN), and the hyper engine's two client pools per
//! worker, HTTP/1.1 and HTTP/2-only, chosen by what one connection learnt ([`alpn`],
//! [`Target::forward_clients`]); the gateway's own calls use [`Target::client`]. Both
//! engines learn the protocol the same way: while it is unknown, one connection per worker
//! and the other sends wait for it.
//! Neither retries a request once any of its bytes were written: a send must not reach Meta
//! twice (over HTTP/2, both engines send again only a stream the server refused or did not
//! process before its GOAWAY, which HTTP/2 guarantees it never saw: [`http2::unprocessed`]).
//! A pooled connection that turns out closed before the request is written is replaced by
//! another (the relay checks it before reuse; hyper retries such "canceled" requests, which
//! it only does when nothing was written).

pub mod alpn;
pub mod http2;
pub mod limit;
pub mod pool;

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;

use crate::common::Body;
use crate::config::Config;
pub use limit::{Limiter, Limits, OwnedPermit, Queue};

/// Idle upstream connections older than this are closed rather than reused (servers
/// commonly close at 60–75 s; reusing one they are about to close risks a lost send).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(55);
/// Idle connections kept per pool (one pool per worker and engine).
pub const POOL_MAX_IDLE: usize = 512;

/// The most an upstream HTTP/1.1 answer's body chunk can be: hyper's read buffer for the
/// connection (its default grows to ~400 KiB). A chunk is held while it waits for a slow
/// client, so this bounds what one streamed answer holds besides the client's send buffer.
pub const ANSWER_CHUNK_MAX: usize = 64 * 1024;

/// An upstream HTTP/2 stream's receive window. An answer's bytes count against the
/// connection's window until the client has taken them, so a few answers that clients
/// never read must not exhaust it: [`H2_CONN_WINDOW`] leaves room for 128 of these (the
/// large-answer budget, `upstream_large_concurrency`, is 64 by default) and small answers
/// are read whole at once (`crate::proxy::forward`).
pub const H2_STREAM_WINDOW: u32 = 256 * 1024;
/// See [`H2_STREAM_WINDOW`]: an upstream HTTP/2 connection's receive window.
pub const H2_CONN_WINDOW: u32 = 32 * 1024 * 1024;

/// The HTTP client type of the hyper engine, the health poller and the webhook relay.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Why the configured upstream cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// `upstream` is not a URL.
    #[error("upstream {url:?} is not a URL")]
    Url {
        /// The configured value.
        url: String,
        /// The parser's complaint.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// `upstream` has no host.
    #[error("upstream {0:?} has no host")]
    NoHost(String),
    /// The host is not a valid TLS server name.
    #[error("upstream host {host:?} is not a valid TLS server name")]
    ServerName {
        /// The host.
        host: String,
        /// rustls's complaint.
        #[source]
        source: tokio_rustls::rustls::pki_types::InvalidDnsNameError,
    },
    /// The trust store could not be built.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// The upstream, as every forwarder needs it.
#[derive(Clone, Debug)]
pub struct Target {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// `host[:port]` as configured: the `Host` sent upstream.
    pub authority: Authority,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The TLS server name, for `https`.
    pub(crate) tls_name: Option<ServerName<'static>>,
    /// Trusted roots (webpki's plus `upstream_ca_file`); no ALPN set: each user sets its own.
    pub(crate) trust: Arc<ClientConfig>,
    /// Offer `h2` by ALPN (`upstream_http2`); else HTTP/1.1 only.
    pub(crate) http2: bool,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Duration,
}

impl Target {
    /// Parses `cfg.upstream` (validated at load time) and builds its TLS trust.
    pub fn new(cfg: &Config) -> Result<Target, TargetError> {
        let uri: Uri = cfg.upstream.parse().map_err(|source| TargetError::Url {
            url: cfg.upstream.clone(),
            source,
        })?;
        let parts = uri.into_parts();
        let authority = parts
            .authority
            .ok_or_else(|| TargetError::NoHost(cfg.upstream.clone()))?;
        let scheme = parts.scheme.unwrap_or(Scheme::HTTPS);
        let https = scheme == Scheme::HTTPS;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls_name = if https {
            Some(
                ServerName::try_from(host.clone()).map_err(|source| TargetError::ServerName {
                    host: host.clone(),
                    source,
                })?,
            )
        } else {
            None
        };
        let trust = Arc::new(crate::tls::client_config(cfg.upstream_ca_file.as_deref())?);
        Ok(Target {
            scheme,
            authority,
            host,
            port,
            tls_name,
            trust,
            http2: cfg.upstream_http2,
            connect_timeout: cfg.connect_timeout,
        })
    }

    /// `scheme://authority`, for the gateway's own calls (`{base}/{version}/{node}…`).
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }

    /// A pooled hyper client (HTTP/1.1 and, over TLS, HTTP/2 by ALPN) with the shared pool
    /// policy. The trust store is the one configured; the client also reaches other URLs
    /// (the webhook relay) over it.
    pub fn client(&self) -> HttpClient {
        build_client(&self.trust, self.connect_timeout, self.http2)
    }

    /// The hyper engine's clients for this upstream (one set per worker: its own pools),
    /// learning whether it speaks `h2` from one connection ([`alpn`]).
    pub fn forward_clients(&self) -> alpn::Clients {
        let known = !(self.http2 && self.scheme == Scheme::HTTPS);
        alpn::Clients::new(
            connector(&self.trust, self.connect_timeout, self.http2),
            self.connect_timeout,
            known,
            pool_builder,
        )
    }
}

/// A pooled hyper client (`http://` and `https://` with `trust`, HTTP/2 by ALPN) with the
/// shared pool policy: the one client stack of the crate (the hyper engine, the gateway's
/// own Graph calls, the webhook relay, notifications, the admin CLI, the simulator's
/// webhooks).
pub fn http_client(trust: &ClientConfig, connect_timeout: Duration) -> HttpClient {
    build_client(trust, connect_timeout, true)
}

/// [`http_client`], offering `h2` by ALPN only when `http2`.
fn build_client(trust: &ClientConfig, connect_timeout: Duration, http2: bool) -> HttpClient {
    pool_builder(false).build(connector(trust, connect_timeout, http2))
}

/// TCP (no delay, `connect_timeout`), then TLS with `trust` for `https` (ALPN `h2` and
/// `http/1.1`, or only `http/1.1` unless `http2`).
fn connector(
    trust: &ClientConfig,
    connect_timeout: Duration,
    http2: bool,
) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(trust.clone())
        .https_or_http()
        .enable_http1();
    if http2 {
        https.enable_http2().wrap_connector(http)
    } else {
        https.wrap_connector(http)
    }
}

/// The one pool policy of hyper's clients; `http2_only` for the hyper engine's client of an
/// upstream that selected `h2` ([`alpn`]).
fn pool_builder(http2_only: bool) -> hyper_util::client::legacy::Builder {
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .http1_max_buf_size(ANSWER_CHUNK_MAX)
        .http2_initial_stream_window_size(H2_STREAM_WINDOW)
        .http2_initial_connection_window_size(H2_CONN_WINDOW)
        .http2_only(http2_only)
        // Only requests not yet written are retried (see the module docs).
        .retry_canceled_requests(true);
    b
}
