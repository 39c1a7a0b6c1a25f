//! Engine 1: the byte relay for plain HTTP/1.1 requests (`fast_path = true`, the default).
//!
//! Sends are small, framed by `content-length` and nearly always answered 200, so instead of
//! parsing and re-encoding every request and answer twice (hyper's server and client
//! codecs), the relay parses only the request head ([`h1`]), asks the policy core
//! ([`crate::policy`]) at every step, writes the head (hop-by-hop fields dropped, `host`
//! rewritten) and body to a pooled upstream connection ([`crate::upstream::pool`]) and
//! relays the answer's bytes back, reading error bodies first so the classifier can judge
//! them. To an `https` upstream that selects `h2` by ALPN, the send goes as a stream on one
//! of a few HTTP/2 connections per worker ([`crate::upstream::http2`]) and the answer is
//! re-framed for the HTTP/1.1 client ([`upstream`]). See `BENCHMARKS.md` for what that saves.
//!
//! Anything else — HTTP/1.0, h2c, chunked or large request bodies, `Expect`, upgrades, the
//! webhook path, bad syntax — is handed to the hyper engine with the bytes already read
//! ([`rewind`]), and hyper serves that connection from then on.

mod exchange;
pub mod h1;
pub mod rewind;
mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::policy::{Policy, Route};
use crate::upstream::http2::H2Pool;
use crate::upstream::pool::{Connector, Pool};
use crate::upstream::{Limiter, Target};
use h1::request::{self, Parsed};

/// How often a worker closes idle upstream connections that went stale.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// What every worker's relay shares.
struct Shared {
    policy: Arc<Policy>,
    limiter: Arc<Limiter>,
    connector: Connector,
    /// `host` sent upstream.
    authority: String,
    /// `:authority` sent upstream over HTTP/2.
    target_authority: http::uri::Authority,
    deadlines: ClientDeadlines,
}

/// The client-side deadlines of the main listener (`client_*_timeout`), the same on both
/// engines.
#[derive(Clone, Copy, Debug)]
pub struct ClientDeadlines {
    /// The whole request head, from its first byte: then 408 and close.
    pub header: Duration,
    /// Between two reads of the body: then 408 and close.
    pub body: Duration,
    /// A kept-alive connection waiting for its next request: then closed.
    pub idle: Duration,
}

impl ClientDeadlines {
    /// From the validated config.
    pub fn new(cfg: &crate::config::Config) -> ClientDeadlines {
        ClientDeadlines {
            header: cfg.client_header_timeout,
            body: cfg.client_body_timeout,
            idle: cfg.client_idle_timeout,
        }
    }
}

/// One worker's relay: the shared parts and this worker's upstream connections.
#[derive(Clone)]
pub struct Relay {
    shared: Arc<Shared>,
    pool: Pool,
    h2: H2Pool,
}

impl Relay {
    /// A relay to `target` deciding with `policy`, counting against `limiter` (shared with
    /// the hyper engine). Clone it per worker with [`Relay::worker`].
    pub fn new(
        policy: Arc<Policy>,
        limiter: Arc<Limiter>,
        target: &Target,
        deadlines: ClientDeadlines,
    ) -> Relay {
        Relay {
            shared: Arc::new(Shared {
                policy,
                limiter,
                connector: Connector::new(target),
                authority: target.authority.to_string(),
                target_authority: target.authority.clone(),
                deadlines,
            }),
            pool: Pool::default(),
            h2: H2Pool::default(),
        }
    }

    /// The same relay with its own upstream connections, for another worker.
    pub fn worker(&self) -> Relay {
        Relay {
            shared: self.shared.clone(),
            pool: Pool::default(),
            h2: H2Pool::default(),
        }
    }

    /// Closes this worker's stale idle upstream connections now and then, until `stop`.
    pub async fn sweep_idle(self, mut stop: watch::Receiver<bool>) {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = every.tick() => {
                    self.pool.sweep();
                    self.h2.sweep();
                }
                _ = stop.changed() => return,
            }
        }
    }

    /// Serves one client connection: relays requests until one needs hyper (then
    /// `handoff(stream, bytes_read)` serves the rest), the client closes, or the gateway
    /// drains (idle connections close at once; a request in flight is answered first).
    pub async fn connection<H, F>(
        self,
        mut stream: TcpStream,
        handoff: H,
        shutdown: watch::Receiver<bool>,
    ) where
        H: FnOnce(TcpStream, Vec<u8>) -> F,
        F: Future<Output = ()>,
    {
        let mut buf: Vec<u8> = Vec::new();
        let mut scratch = Scratch::default();
        let shared = self.shared.clone();
        let deadlines = shared.deadlines;
        // One timer per connection for the idle deadline and one for the upstream's, each
        // moved on with every request, and one wait for the drain: a `timeout` per request
        // put a timer into the runtime's wheel and took it out again, and a `changed()` per
        // request joined and left the drain's waiter list, ~1 700 instructions a send
        // (issue 24). A timer moved later costs one atomic store until it fires.
        let idle = tokio::time::sleep(deadlines.idle);
        let upstream = tokio::time::sleep(deadlines.idle);
        let mut drain = shutdown.clone();
        let drained = async move {
            let _ = drain.changed().await;
        };
        tokio::pin!(idle, upstream, drained);
        loop {
            if *shutdown.borrow() && buf.is_empty() {
                return;
            }
            // Set when the head's first byte is in (pipelined bytes count as in).
            let mut head_deadline: Option<tokio::time::Instant> = None;
            let (head, call) = loop {
                if !buf.is_empty() {
                    match request::parse_head(&buf, &mut scratch.forward) {
                        Parsed::Partial => {}
                        Parsed::Handoff => return handoff(stream, buf).await,
                        Parsed::Request(head) => {
                            let path =
                                std::str::from_utf8(&buf[head.path.0..head.path.1]).unwrap_or("");
                            match shared.policy.route(&head.method, path) {
                                Route::Webhook => return handoff(stream, buf).await,
                                Route::Graph(call) => {
                                    shared.policy.discover(call, || {
                                        request::header_value(
                                            &buf[..head.head_len],
                                            b"authorization",
                                        )
                                    });
                                    break (head, call);
                                }
                            }
                        }
                    }
                }
                let read = if buf.is_empty() {
                    // Idle between requests: wait for the next one without holding any
                    // buffer (per-connection memory of idle keep-alive connections), then
                    // read into a fresh one.
                    scratch.release();
                    spare::give(std::mem::take(&mut buf));
                    idle.as_mut()
                        .reset(tokio::time::Instant::now() + deadlines.idle);
                    tokio::select! {
                        biased;
                        r = stream.readable() => if r.is_err() { return },
                        () = &mut drained => return,
                        () = &mut idle => return, // idle keep-alive: closed quietly
                    }
                    buf = spare::take();
                    // One poll of `read_buf`, not `try_read_buf`: the poll path forgets the
                    // socket's readiness after a short read, `try_read_buf` keeps it until
                    // a read fails with `WouldBlock`. With `try_read_buf`, the wait above
                    // returned at once after every request and the next read found nothing:
                    // one `recvfrom` per request for nothing (issue 24).
                    match stream.read_buf(&mut buf).now_or_never() {
                        // Readiness was spurious: wait again, holding no buffer.
                        None => continue,
                        Some(r) => r,
                    }
                } else {
                    if buf.capacity() - buf.len() < 1024 {
                        buf.reserve(4096);
                    }
                    let at = *head_deadline
                        .get_or_insert_with(|| tokio::time::Instant::now() + deadlines.header);
                    match tokio::time::timeout_at(at, stream.read_buf(&mut buf)).await {
                        Ok(r) => r,
                        Err(_) => return timed_out(&mut stream).await,
                    }
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
                match tokio::time::timeout(deadlines.body, stream.read_buf(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return,
                    Ok(Ok(_)) => {}
                    Err(_) => return timed_out(&mut stream).await,
                }
            }
            let close = head.close || *shutdown.borrow();
            let keep = self
                .exchange(
                    &mut stream,
                    call,
                    &buf[..total],
                    &head,
                    close,
                    &shutdown,
                    upstream.as_mut(),
                    &mut scratch,
                )
                .await;
            buf.drain(..total);
            if !keep {
                return;
            }
        }
    }
}

/// Answers 408 to a client whose head or body missed its deadline; the connection closes.
async fn timed_out(stream: &mut TcpStream) {
    use tokio::io::AsyncWriteExt;
    let mut out = Vec::with_capacity(512);
    render(&crate::policy::exchange::client_timed_out(), true, &mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

/// The relay's rendering of a gateway-made answer ([`h1::encode::reply`]).
pub use h1::encode::reply as render;

/// The read buffers of a worker's connections: a connection gives its buffer back while it
/// waits for its next request and takes one when that request arrives, so an idle
/// keep-alive connection holds none (issue 12) and a busy one does not `malloc` and `free`
/// 4 KiB per request (issue 24: ~420 instructions per send, glibc's tcache stops at 1 KiB).
/// Each worker is one thread: the free list is thread-local, never shared or locked.
mod spare {
    use std::cell::RefCell;

    /// The size a read buffer starts with (requests above it grow theirs, which is then
    /// not kept).
    pub const SIZE: usize = 4096;
    /// Most buffers a worker keeps free (1 MiB): what is above is freed.
    const KEEP: usize = 256;

    thread_local! {
        static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty buffer of at least [`SIZE`] bytes.
    pub fn take() -> Vec<u8> {
        FREE.with(|f| f.borrow_mut().pop())
            .unwrap_or_else(|| Vec::with_capacity(SIZE))
    }

    /// Gives `buf` back for the next request of any connection of this worker.
    pub fn give(mut buf: Vec<u8>) {
        if buf.capacity() != SIZE {
            return; // never allocated, or grown for a large request: dropped
        }
        buf.clear();
        FREE.with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < KEEP {
                f.push(buf);
            }
        });
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn free_len() -> usize {
            FREE.with(|f| f.borrow().len())
        }

        #[test]
        fn buffers_are_reused_and_only_plain_ones_kept() {
            FREE.with(|f| f.borrow_mut().clear());
            let a = take();
            assert!(a.capacity() >= SIZE && a.is_empty());
            let ptr = a.as_ptr();
            give(a);
            assert_eq!(free_len(), 1);
            let mut b = take();
            assert_eq!(
                b.as_ptr(),
                ptr,
                "the buffer given back is the next one taken"
            );
            assert_eq!(free_len(), 0);
            b.extend_from_slice(&[0u8; SIZE + 1]);
            give(b);
            assert_eq!(
                free_len(),
                0,
                "a buffer grown for a large request is not kept"
            );
            give(Vec::new());
            assert_eq!(free_len(), 0, "nor one never allocated");
            for _ in 0..KEEP + 10 {
                give(Vec::with_capacity(SIZE));
            }
            assert_eq!(free_len(), KEEP, "at most KEEP are kept");
            assert!(take().is_empty());
        }
    }
}

/// Largest capacity a per-connection buffer keeps while the connection is idle.
const IDLE_KEEP: usize = 1024;

/// Per-connection buffers, reused across requests.
#[derive(Default)]
struct Scratch {
    /// Where the request's fields to forward are in its buffer (written by
    /// [`request::parse_head`]).
    forward: Vec<request::Field>,
    /// The request as sent upstream over HTTP/1.1 (head, then body).
    up: Vec<u8>,
    /// The upstream's answer as read (owned by the body reader while it relays).
    resp: Vec<u8>,
    /// What goes to the client.
    out: Vec<u8>,
    /// A chunked error body, de-chunked for the classifier.
    decoded: Vec<u8>,
}

impl Scratch {
    /// Between requests: gives back capacity beyond [`IDLE_KEEP`] (an error body read for
    /// the classifier can grow `resp` and `decoded` to `classify_body_limit`), so an idle
    /// keep-alive connection holds little.
    fn release(&mut self) {
        for v in [
            &mut self.up,
            &mut self.resp,
            &mut self.out,
            &mut self.decoded,
        ] {
            v.clear();
            if v.capacity() > IDLE_KEEP {
                v.shrink_to(IDLE_KEEP);
            }
        }
        // The same bound for the field list (a request with many fields grew it).
        const FIELDS_KEEP: usize = IDLE_KEEP / std::mem::size_of::<request::Field>();
        self.forward.clear();
        if self.forward.capacity() > FIELDS_KEEP {
            self.forward.shrink_to(FIELDS_KEEP);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::render;
    use crate::circuit::{OpenGuard, Scope};
    use crate::common::Body;
    use crate::policy::{ForwardError, Reply};
    use bytes::Bytes;
    use http::Response;

    /// Parses what `render` wrote: status, headers (lowercase, without content-length,
    /// date and connection, which hyper adds itself), body.
    fn parse_h1(raw: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(n) = r.parse(raw).unwrap() else {
            panic!("partial")
        };
        let hs = r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .filter(|(n, _)| !matches!(n.as_str(), "content-length" | "date" | "connection"))
            .collect();
        (r.code.unwrap(), hs, raw[n..].to_vec())
    }

    fn from_response(r: &Response<Body>) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let hs = r
            .headers()
            .iter()
            .filter(|(n, _)| *n != http::header::CONNECTION)
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        let body = match r.body() {
            Body::Full { data } => data.clone().unwrap_or_default().to_vec(),
            _ => panic!("buffered"),
        };
        (r.status().as_u16(), hs, body)
    }

    /// Both engines render a reply alike: the same status, headers and body, and
    /// `connection: close` exactly when the reply (or the relay's connection) closes.
    fn same_on_both_engines(reply: &Reply<'_>) {
        let mut raw = Vec::new();
        render(reply, false, &mut raw);
        let resp = crate::proxy::render(reply);
        assert_eq!(parse_h1(&raw), from_response(&resp));
        let text = String::from_utf8(raw.clone()).unwrap();
        assert!(text.contains(&format!("\r\ncontent-length: {}\r\n", reply.body().len())));
        assert_eq!(text.contains("connection: close"), reply.close());
        assert_eq!(
            resp.headers().contains_key(http::header::CONNECTION),
            reply.close()
        );
        raw.clear();
        render(reply, true, &mut raw);
        assert!(String::from_utf8(raw)
            .unwrap()
            .contains("\r\nconnection: close\r\n"));
    }

    #[test]
    fn gateway_answers_render_the_same_on_both_engines() {
        let guard = OpenGuard {
            scope: Scope::AllSends,
            until_unix: Some(1_000_000 + 3600),
            body: Bytes::from_static(b"{\"error\":{\"code\":368}}"),
            seq: 1,
        };
        let r = Reply::open_at(&guard, || 1_000_000);
        same_on_both_engines(&r);
        assert_eq!(crate::proxy::render(&r).headers()["retry-after"], "3600");
        let no_end = OpenGuard {
            until_unix: None,
            ..guard
        };
        same_on_both_engines(&Reply::open_at(&no_end, || 0));
        for e in [
            ForwardError::Connect("refused".into()),
            ForwardError::Timeout(std::time::Duration::from_secs(1)),
            ForwardError::Broken("eof".into()),
            ForwardError::ClientBody("cut".into()),
            ForwardError::ClientTimeout,
        ] {
            same_on_both_engines(&Reply::forward_failed(&e));
        }
        same_on_both_engines(&Reply::bad_request("no"));
        same_on_both_engines(&Reply::overloaded());
    }
}
