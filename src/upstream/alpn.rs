//! The hyper engine's upstream clients for an `https` upstream that may select `h2` by ALPN:
//! one connection learns the protocol, and it goes to the client that speaks it.
//!
//! Why: hyper's pool learns a connection's protocol only when its TLS handshake ends, so a
//! burst of sends with no connection open starts one TCP + TLS handshake per send and keeps
//! one of them once ALPN says `h2` (issue 24's WAN run: 44–49 handshakes at the start of
//! every round, against the relay's 1–2; hyper issue #1485 names the trade-off). Here, as
//! in the relay ([`super::http2::H2Pool`]): while the protocol is unknown one connection is
//! opened — by [`Learner`], not by a send — and the sends wait for it. Once it is known:
//! - `h2`: sends go to a client that speaks only HTTP/2 (`http2_only`), whose pool opens
//!   one connection at a time and shares it (also when a connection is replaced after a
//!   GOAWAY or an idle close, with no burst); the learning connection is its first.
//! - HTTP/1.1: sends go to the usual client and open connections side by side, as an
//!   HTTP/1.1 pool must; the learning connection is its first.
//!
//! A connection opened later tells again: the HTTP/2 client's connection that selects
//! HTTP/1.1 (the upstream changed) fails its connect with [`NoLongerH2`] — nothing was
//! written — and is parked for the HTTP/1.1 client, where the send goes instead
//! (`crate::proxy::forward`), as do the sends that waited for that connection and the
//! next ones; the HTTP/2 client opens no other connection meanwhile. The HTTP/1.1
//! client's connection that selects `h2` serves its send over HTTP/2 (hyper's pool does)
//! and moves the next sends to the HTTP/2 client. So the send that finds the change is not
//! failed for it, on either engine.
//!
//! If the learning connection fails (it has `connect_timeout` for TCP and TLS, as the
//! relay's), the send that started it fails with its error (502, nothing sent) and the
//! sends that waited for it start the next one, as the relay's do: an upstream that is
//! down sees one attempt per worker at a time, not one per send.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Uri;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;
use tower::{Service, ServiceExt};

use crate::common::error::error_chain;
use crate::common::Body;

/// What hyper's clients get from the connector.
type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A learning connection not taken within this long is closed, not used (its server may
/// have closed it meanwhile).
const PARKED_MAX_AGE: Duration = Duration::from_secs(5);

const UNKNOWN: u8 = 0;
const H1: u8 = 1;
const H2: u8 = 2;

/// The client a send goes to.
pub enum Route {
    /// The upstream speaks HTTP/1.1 (or is plain `http`): the usual client.
    H1,
    /// The upstream selected `h2`: the HTTP/2-only client.
    H2,
    /// The protocol is being learnt: wait for [`Wait`], then ask again.
    Wait(Wait),
    /// The learning connection this send started failed: so does the send.
    Failed(LearnFailed),
}

/// The learning connection failed (the message: its error chain).
#[derive(Clone, Debug, thiserror::Error)]
#[error("connecting to the upstream failed: {0}")]
pub struct LearnFailed(Arc<str>);

/// A send waiting for the learning connection.
pub struct Wait {
    notified: Pin<Box<OwnedNotified>>,
    /// [`Slow::failures`] when the wait began: a change means the learning connection failed.
    failures: u64,
    /// This send started the learning connection: its failure is this send's.
    owner: bool,
}

impl Wait {
    /// Ready when the learning connection is open or failed.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.notified.as_mut().poll(cx)
    }
}

/// The part touched only while the protocol is unknown.
struct Slow {
    /// The learning connection is being opened.
    learning: bool,
    /// Learning connections that failed, and the last one's error.
    failures: u64,
    failure: Option<LearnFailed>,
    /// The learning connection, waiting for the first connect of the client that speaks
    /// its protocol.
    parked: Option<(Instant, bool, Stream)>,
}

/// One worker's knowledge of the upstream's protocol (see the module docs).
#[derive(Clone)]
pub struct Learner {
    shared: Arc<Shared>,
}

struct Shared {
    proto: AtomicU8,
    slow: Mutex<Slow>,
    changed: Arc<Notify>,
    /// Opens the learning connection.
    connector: HttpsConnector<HttpConnector>,
    /// Bounds the learning connection's TCP and TLS handshakes.
    timeout: Duration,
}

impl Learner {
    /// A learner that opens connections with `connector`; `known` when there is nothing to
    /// learn (a plain `http` upstream, or `upstream_http2 = false`: HTTP/1.1).
    fn new(connector: HttpsConnector<HttpConnector>, timeout: Duration, known: bool) -> Self {
        Learner {
            shared: Arc::new(Shared {
                proto: AtomicU8::new(if known { H1 } else { UNKNOWN }),
                slow: Mutex::new(Slow {
                    learning: false,
                    failures: 0,
                    failure: None,
                    parked: None,
                }),
                changed: Arc::new(Notify::new()),
                connector,
                timeout,
            }),
        }
    }

    /// Where a send to `dst` goes: one atomic load once the protocol is known.
    pub fn route(&self, dst: &Uri) -> Route {
        if let Some(r) = self.known() {
            return r;
        }
        let Ok(mut slow) = self.shared.slow.lock() else {
            return Route::H1;
        };
        // Learnt while this send waited for the lock.
        if let Some(r) = self.known() {
            return r;
        }
        // Made under the lock: the wake-up of a learning connection that ends after it is
        // not missed.
        let wait = Wait {
            notified: Box::pin(self.shared.changed.clone().notified_owned()),
            failures: slow.failures,
            owner: !slow.learning,
        };
        if !slow.learning {
            slow.learning = true;
            tokio::spawn(self.clone().learn(dst.clone()));
        }
        Route::Wait(wait)
    }

    /// After a [`Wait`]: where the send goes now, or the failure of the learning
    /// connection it started. (Another's failed: it waits for, or starts, the next.)
    pub fn route_after(&self, wait: &Wait, dst: &Uri) -> Route {
        if let Some(r) = self.known() {
            return r;
        }
        let failed = match self.shared.slow.lock() {
            Ok(s) if wait.owner && s.failures != wait.failures => s.failure.clone(),
            Ok(_) => None,
            Err(_) => return Route::H1,
        };
        match failed {
            Some(f) => Route::Failed(f),
            None => self.route(dst),
        }
    }

    /// The last connection opened selected HTTP/1.1 (or there is nothing to learn).
    pub fn speaks_http1(&self) -> bool {
        self.shared.proto.load(Ordering::Acquire) == H1
    }

    fn known(&self) -> Option<Route> {
        match self.shared.proto.load(Ordering::Acquire) {
            H1 => Some(Route::H1),
            H2 => Some(Route::H2),
            _ => None,
        }
    }

    /// A connection opened by a client selected `h2` (or not): later sends go to the client
    /// that speaks it.
    fn saw(&self, h2: bool) {
        self.shared
            .proto
            .store(if h2 { H2 } else { H1 }, Ordering::Release);
    }

    /// The learning connection, if it speaks `h2` (or HTTP/1.1) and is fresh.
    fn take_parked(&self, h2: bool) -> Option<Stream> {
        let mut slow = self.shared.slow.lock().ok()?;
        let (at, is_h2, _) = slow.parked.as_ref()?;
        if at.elapsed() >= PARKED_MAX_AGE {
            slow.parked = None;
            return None;
        }
        if *is_h2 != h2 {
            // Kept for the other client.
            return None;
        }
        slow.parked.take().map(|(_, _, s)| s)
    }

    /// Parks `stream` (a connection whose protocol is known) for the first connect of the
    /// client that speaks it.
    fn park(&self, h2: bool, stream: Stream) {
        if let Ok(mut slow) = self.shared.slow.lock() {
            slow.parked = Some((Instant::now(), h2, stream));
        }
    }

    /// Opens the learning connection to `dst`, records what it selected, and parks it for
    /// the client that speaks that.
    async fn learn(self, dst: Uri) {
        let connector = self.shared.connector.clone();
        let t = self.shared.timeout;
        let opened = match tokio::time::timeout(t, connector.oneshot(dst)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(error_chain(e.as_ref())),
            Err(_) => Err(format!("connect timed out after {t:?}")),
        };
        if let Ok(mut slow) = self.shared.slow.lock() {
            slow.learning = false;
            match opened {
                Ok(stream) => {
                    let h2 = stream.connected().is_negotiated_h2();
                    self.saw(h2);
                    slow.parked = Some((Instant::now(), h2, stream));
                }
                // The send that started it logs it (`upstream request failed`).
                Err(e) => {
                    slow.failures += 1;
                    slow.failure = Some(LearnFailed(e.into()));
                }
            }
        }
        // Always: no send is left waiting.
        self.shared.changed.notify_waiters();
    }
}

/// The connector of both clients: takes the learning connection when it speaks the
/// client's protocol, and tells the [`Learner`] what every connection it opens selected.
#[derive(Clone)]
pub struct Learning {
    inner: HttpsConnector<HttpConnector>,
    learner: Learner,
    /// This client speaks only HTTP/2.
    h2: bool,
}

/// The HTTP/2-only client's new connection selected HTTP/1.1: nothing was written on it.
#[derive(Debug, thiserror::Error)]
#[error("the upstream selected HTTP/1.1 on a new connection, where it had selected h2")]
pub struct NoLongerH2;

impl Service<Uri> for Learning {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        if let Some(s) = self.learner.take_parked(self.h2) {
            return Box::pin(std::future::ready(Ok(s)));
        }
        if self.h2 && self.learner.speaks_http1() {
            // Routed here before a connection selected HTTP/1.1: no handshake to learn it
            // again (a burst at the change would open one connection per send).
            return Box::pin(std::future::ready(Err(NoLongerH2.into())));
        }
        let (learner, h2_only) = (self.learner.clone(), self.h2);
        let connecting = self.inner.call(dst);
        Box::pin(async move {
            let stream = connecting.await?;
            let h2 = stream.connected().is_negotiated_h2();
            learner.saw(h2);
            if h2_only && !h2 {
                // The HTTP/1.1 client takes it.
                learner.park(false, stream);
                return Err(NoLongerH2.into());
            }
            Ok(stream)
        })
    }
}

/// The hyper engine's clients for the upstream: the usual one (HTTP/1.1, and `h2` by ALPN
/// as hyper's pool handles it) and, for an `https` upstream with `upstream_http2`, one that
/// speaks only HTTP/2, chosen by the [`Learner`].
pub struct Clients {
    /// HTTP/1.1 (and whatever ALPN selects on its connections).
    pub h1: Client<Learning, Body>,
    /// HTTP/2 only: one connection opened at a time.
    pub h2: Client<Learning, Body>,
    /// Which of the two a send goes to.
    pub learner: Learner,
}

impl Clients {
    /// The clients over `https` (see [`super::build_client`] for the pool policy), learning
    /// unless `known` (nothing to learn: HTTP/1.1).
    pub(super) fn new(
        https: HttpsConnector<HttpConnector>,
        timeout: Duration,
        known: bool,
        build: impl Fn(bool) -> hyper_util::client::legacy::Builder,
    ) -> Clients {
        let learner = Learner::new(https.clone(), timeout, known);
        let connector = |h2| Learning {
            inner: https.clone(),
            learner: learner.clone(),
            h2,
        };
        Clients {
            h1: build(false).build(connector(false)),
            h2: build(true).build(connector(true)),
            learner,
        }
    }
}
