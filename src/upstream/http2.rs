//! The relay's HTTP/2 upstream connections: per worker, a small set of connections to an
//! `https` upstream that selected `h2` by ALPN — normally one, another opened only when
//! the open ones carry the server's `max_concurrent_streams` — with sends multiplexed as
//! streams (the `h2` crate: one driver task per connection on the worker's own runtime).
//!
//! Concurrency: like [`super::pool::Pool`], a set is touched only by its own worker's tasks
//! (a single-threaded runtime), so its lock is never contended.
//!
//! A send must not reach Meta twice: [`H2Pool::send`] says a failed stream was
//! [`Failed::Unprocessed`] only when HTTP/2 guarantees the server did not process it — the
//! server refused the stream (`RST_STREAM` `REFUSED_STREAM`), the stream is above the last
//! stream id of the server's GOAWAY, or the request never left (the connection was already
//! going away or closed). Anything else after the request went out is [`Failed::Broken`].

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, RecvStream};
use http::{Request, Response};
use tokio::net::TcpStream;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;
use tokio_rustls::client::TlsStream;

use super::{H2_CONN_WINDOW, H2_STREAM_WINDOW, POOL_IDLE_TIMEOUT};

/// Streams a connection is assumed to allow until the server's SETTINGS say otherwise
/// (RFC 9113 recommends servers allow at least 100).
const INITIAL_MAX_STREAMS: usize = 100;

/// What the worker has learnt the upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    /// No connection opened yet.
    Unknown,
    /// The last connection opened selected HTTP/1.1: the HTTP/1.1 pool serves.
    H1,
    /// The last connection opened selected `h2`.
    H2,
}

/// One HTTP/2 connection.
struct H2Conn {
    send: SendRequest<Bytes>,
    /// Streams open on it (this worker's sends in flight there).
    streams: Arc<AtomicUsize>,
    /// Set when the server sent GOAWAY (seen by a send) or the connection ended.
    closed: Arc<AtomicBool>,
    /// When its last stream ended.
    idle_since: Instant,
}

impl H2Conn {
    fn usable(&self) -> bool {
        !self.closed.load(Ordering::Relaxed)
            && self.streams.load(Ordering::Relaxed) < self.send.current_max_send_streams()
    }

    /// A stream slot on this connection, counted until the lease's answer is relayed.
    fn lease(&self) -> Lease {
        self.streams.fetch_add(1, Ordering::Relaxed);
        Lease {
            send: self.send.clone(),
            closed: self.closed.clone(),
            _stream: StreamSlot(self.streams.clone()),
        }
    }
}

struct Inner {
    conns: Vec<H2Conn>,
    proto: Proto,
    /// A send is opening a connection: the others wait for it rather than open their own.
    opening: bool,
}

/// One worker's HTTP/2 upstream connections.
#[derive(Clone)]
pub struct H2Pool {
    // Only this worker's tasks touch it: the lock is never contended.
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
}

impl Default for H2Pool {
    fn default() -> H2Pool {
        H2Pool {
            inner: Arc::new(Mutex::new(Inner {
                conns: Vec::new(),
                proto: Proto::Unknown,
                opening: false,
            })),
            changed: Arc::new(Notify::new()),
        }
    }
}

/// Where a send goes next.
pub enum Pick {
    /// A stream on an open HTTP/2 connection.
    Stream(Lease),
    /// The upstream speaks HTTP/1.1: the HTTP/1.1 pool serves.
    H1,
    /// Open a connection (this send is the one opening it), then report what it became
    /// through the [`Opening`].
    Open(Opening),
    /// Another send is opening a connection: wait for it, then pick again.
    Wait(OwnedNotified),
}

/// A stream slot on a connection: counted until dropped (after the answer's body).
pub struct Lease {
    send: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
    _stream: StreamSlot,
}

/// Counts one stream on a connection while it lives.
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a stream failed.
#[derive(Debug)]
pub enum Failed {
    /// The connection was going away or closed before the request was queued: nothing
    /// was sent; it goes on another connection.
    NotSent(h2::Error),
    /// The server did not process the request (refused, above its GOAWAY, or never sent):
    /// it may go on another connection.
    Unprocessed(h2::Error),
    /// The request may have reached the server: the send fails (502/504), never retried.
    Broken(h2::Error),
}

/// An answer's head is in; its body follows on `body`.
pub struct H2Response {
    /// The answer (its body: the stream's data, flow-controlled).
    pub response: Response<RecvStream>,
    /// Holds the stream's slot until the answer is relayed.
    pub slot: StreamSlot,
}

impl H2Pool {
    /// Where the next send goes: see [`Pick`].
    pub fn pick(&self) -> Pick {
        let Ok(mut inner) = self.inner.lock() else {
            return Pick::H1;
        };
        match inner.proto {
            Proto::H1 => return Pick::H1,
            Proto::Unknown | Proto::H2 => {}
        }
        inner.conns.retain(|c| !c.closed.load(Ordering::Relaxed));
        if let Some(c) = inner.conns.iter().find(|c| c.usable()) {
            return Pick::Stream(c.lease());
        }
        if inner.opening {
            // Every open connection is at the server's limit and another is being opened
            // (TCP, TLS, the preface: ~3 round trips). Queue on the least busy open one
            // instead — h2 holds the stream until one of its slots frees, usually long
            // before — so a burst past the limit does not wait for a handshake (the p99
            // tail of a WAN run's start, issue 24).
            if let Some(c) = inner
                .conns
                .iter()
                .min_by_key(|c| c.streams.load(Ordering::Relaxed))
            {
                return Pick::Stream(c.lease());
            }
            return Pick::Wait(self.changed.clone().notified_owned());
        }
        inner.opening = true;
        Pick::Open(Opening {
            pool: Some(self.clone()),
        })
    }

    /// This send opens a connection whatever the others do (it found the upstream speaking
    /// `h2` where it expected HTTP/1.1).
    pub fn opening(&self) -> Opening {
        if let Ok(mut inner) = self.inner.lock() {
            inner.opening = true;
        }
        Opening {
            pool: Some(self.clone()),
        }
    }

    /// Sends `request` with `body` on the leased stream and waits for the answer's head.
    pub async fn send(
        lease: Lease,
        request: Request<()>,
        body: Bytes,
    ) -> Result<H2Response, Failed> {
        let Lease {
            send,
            closed,
            _stream: slot,
        } = lease;
        // Not ready: the connection is going away (GOAWAY) or closed; nothing was sent.
        let mut send = match send.ready().await {
            Ok(s) => s,
            Err(e) => {
                closed.store(true, Ordering::Relaxed);
                return Err(Failed::NotSent(e));
            }
        };
        let end = body.is_empty();
        let (answer, mut out) = match send.send_request(request, end) {
            Ok(r) => r,
            Err(e) => {
                closed.store(true, Ordering::Relaxed);
                return Err(Failed::NotSent(e));
            }
        };
        if !end {
            // Within the relay's request size (64 KiB); h2 sends it as the windows allow.
            if let Err(e) = out.send_data(body, true) {
                return Err(judge(e, &closed));
            }
        }
        match answer.await {
            Ok(response) => Ok(H2Response { response, slot }),
            Err(e) => Err(judge(e, &closed)),
        }
    }

    /// Drops connections that ended, and those idle past [`POOL_IDLE_TIMEOUT`] (their
    /// driver then closes them). Run now and then by the worker.
    pub fn sweep(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            let now = Instant::now();
            for c in inner.conns.iter_mut() {
                if c.streams.load(Ordering::Relaxed) > 0 {
                    c.idle_since = now;
                }
            }
            inner.conns.retain(|c| {
                !c.closed.load(Ordering::Relaxed)
                    && now.duration_since(c.idle_since) < POOL_IDLE_TIMEOUT
            });
        }
    }
}

/// The one connection a worker is opening: the other sends wait for it. Dropped without a
/// report (the connect failed, or the send opening it was cancelled), the waiting sends
/// pick again and one of them tries.
pub struct Opening {
    pool: Option<H2Pool>,
}

impl Opening {
    /// The connection selected `h2`: the HTTP/2 handshake, then it joins the set and the
    /// sends waiting for it pick again.
    pub async fn h2(mut self, tls: Box<TlsStream<TcpStream>>) -> Result<(), h2::Error> {
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONN_WINDOW)
            .initial_max_send_streams(INITIAL_MAX_STREAMS)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let ended = closed.clone();
        // The connection's driver, on this worker's runtime: reads frames, writes queued
        // ones, and ends with the connection (or once no handle and no stream is left).
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
            ended.store(true, Ordering::Relaxed);
        });
        if let Some(pool) = self.pool.take() {
            if let Ok(mut inner) = pool.inner.lock() {
                inner.proto = Proto::H2;
                inner.opening = false;
                inner.conns.push(H2Conn {
                    send,
                    streams: Arc::new(AtomicUsize::new(0)),
                    closed,
                    idle_since: Instant::now(),
                });
            }
            pool.changed.notify_waiters();
        }
        Ok(())
    }

    /// The connection selected HTTP/1.1: from now on the HTTP/1.1 pool serves this
    /// worker's sends.
    pub fn h1(mut self) {
        if let Some(pool) = self.pool.take() {
            if let Ok(mut inner) = pool.inner.lock() {
                inner.proto = Proto::H1;
                inner.opening = false;
            }
            pool.changed.notify_waiters();
        }
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            if let Ok(mut inner) = pool.inner.lock() {
                inner.opening = false;
            }
            pool.changed.notify_waiters();
        }
    }
}

/// Times one send may go on another HTTP/2 stream after the server did not process it
/// ([`unprocessed`]), on both engines.
pub const MAX_UNPROCESSED: usize = 2;

/// Whether HTTP/2 guarantees the server did not process a stream that failed with `e`:
/// the server refused it (`RST_STREAM` `REFUSED_STREAM`), or it is above the last stream id
/// of the server's GOAWAY (h2 fails exactly those streams with the remote GOAWAY; streams
/// below it that break get an I/O error). Only such a stream is sent again, by either
/// engine: the relay here, the hyper engine in `crate::proxy::forward`.
pub fn unprocessed(e: &h2::Error) -> bool {
    let refused = e.is_reset() && e.is_remote() && e.reason() == Some(Reason::REFUSED_STREAM);
    let above_goaway = e.is_go_away() && e.is_remote();
    refused || above_goaway
}

/// A stream's failure after its request was queued: [`Failed::Unprocessed`] by the rule of
/// [`unprocessed`], else [`Failed::Broken`].
fn judge(e: h2::Error, closed: &AtomicBool) -> Failed {
    if e.is_go_away() || e.is_io() {
        closed.store(true, Ordering::Relaxed);
    }
    if unprocessed(&e) {
        Failed::Unprocessed(e)
    } else {
        Failed::Broken(e)
    }
}
