//! An HTTP/2 upstream over TLS (ALPN `h2` only, the test CA's certificate) built on the
//! `h2` crate's server, for the gateway's HTTP/2 path to Graph: it records every stream it
//! processed (connection, `:path`, `:authority`, `authorization`, body), answers 200 with
//! the request's `to` echoed by default, and on demand refuses or resets a stream, holds
//! answers until released, goes away (graceful GOAWAY) after N streams on a connection,
//! closes the next N connections before TLS, or serves the next connection by hand
//! ([`H2Upstream::goaway_below_next`]): a GOAWAY whose last stream id is below streams it
//! received, which the `h2` crate's server never sends. It can also change protocol
//! ([`H2Upstream::speak_http1`]): new connections then select HTTP/1.1 and are served over
//! it (hyper's server), as an upstream whose ALPN changed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::Reason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::raw::tls_acceptor_alpn;

/// What the fake does with a stream whose request it has read.
#[derive(Clone, Debug)]
pub enum H2Action {
    /// 200, `{"ok":true,"to":…}` framed by `content-length`.
    Ok,
    /// 200, the same body without `content-length`, in two DATA frames.
    OkUnframed,
    /// This status and JSON body.
    Answer(u16, String),
    /// `RST_STREAM` with this code (recorded as processed unless `REFUSED_STREAM`).
    Reset(Reason),
    /// 200 once [`H2Upstream::release`] is called.
    Hold,
}

/// A stream the fake read.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Which TLS connection (1-based, in accept order).
    pub conn: usize,
    pub method: String,
    pub path: String,
    pub authority: String,
    pub authorization: Option<String>,
    pub body: String,
    /// Refused (`REFUSED_STREAM`) or above the last stream id of the server's GOAWAY: the
    /// server did not process it.
    pub refused: bool,
    /// Came over HTTP/1.1 ([`H2Upstream::speak_http1`]), not as an HTTP/2 stream.
    pub http1: bool,
}

impl Seen {
    /// A request received on connection `conn`, over HTTP/1.1 or as an HTTP/2 stream (its
    /// authority: `:authority`, else `host`).
    fn of(conn: usize, parts: &http::request::Parts, body: &[u8], http1: bool) -> Seen {
        let header = |k: &str| {
            parts
                .headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Seen {
            conn,
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            authority: parts
                .uri
                .authority()
                .map(|a| a.to_string())
                .or_else(|| header("host"))
                .unwrap_or_default(),
            authorization: header("authorization"),
            body: String::from_utf8_lossy(body).into_owned(),
            refused: false,
            http1,
        }
    }
}

type Responder = Arc<dyn Fn(&Seen) -> H2Action + Send + Sync>;

struct Inner {
    seen: Mutex<Vec<Seen>>,
    connections: AtomicUsize,
    responder: Mutex<Responder>,
    goaway_after: Mutex<Option<usize>>,
    released: watch::Sender<bool>,
    held: AtomicUsize,
    /// TCP connections still to close at once, before TLS.
    drop_next: AtomicUsize,
    /// Serve the next connection by hand: wait for this many streams, answer the first,
    /// then GOAWAY naming it as the last.
    goaway_below: Mutex<Option<usize>>,
    /// New connections select HTTP/1.1 (ALPN `http/1.1` only) and are served over it.
    http1: AtomicBool,
    /// HTTP/2 connections being served.
    h2_open: AtomicUsize,
}

/// The fake HTTP/2 upstream.
#[derive(Clone)]
pub struct H2Upstream {
    addr: SocketAddr,
    inner: Arc<Inner>,
}

/// The fake's default answer to a send to `to`: `{"ok":true,"to":…}`.
pub fn ok_body(to: &str) -> String {
    format!("{{\"ok\":true,\"to\":\"{to}\"}}")
}

/// The `to` of a JSON send body (the fake echoes it).
pub fn to_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["to"].as_str().map(str::to_string))
        .unwrap_or_default()
}

impl H2Upstream {
    /// Listens on 127.0.0.1 (TLS, ALPN `h2`), allowing `max_streams` concurrent streams per
    /// connection.
    pub async fn start(max_streams: u32) -> H2Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (released, _) = watch::channel(false);
        let up = H2Upstream {
            addr: l.local_addr().unwrap(),
            inner: Arc::new(Inner {
                seen: Mutex::new(Vec::new()),
                connections: AtomicUsize::new(0),
                responder: Mutex::new(Arc::new(|_: &Seen| H2Action::Ok)),
                goaway_after: Mutex::new(None),
                released,
                held: AtomicUsize::new(0),
                drop_next: AtomicUsize::new(0),
                goaway_below: Mutex::new(None),
                http1: AtomicBool::new(false),
                h2_open: AtomicUsize::new(0),
            }),
        };
        let h2 = tls_acceptor_alpn(&[b"h2"]);
        let h1 = tls_acceptor_alpn(&[b"http/1.1"]);
        let me = up.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let drop_it = me
                    .inner
                    .drop_next
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if drop_it {
                    drop(tcp);
                    continue;
                }
                let _ = tcp.set_nodelay(true);
                let http1 = me.inner.http1.load(Ordering::SeqCst);
                let acceptor = if http1 { h1.clone() } else { h2.clone() };
                let me = me.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let n = me.inner.connections.fetch_add(1, Ordering::SeqCst) + 1;
                    if http1 {
                        return me.serve_http1(tls, n).await;
                    }
                    let by_hand = me.inner.goaway_below.lock().unwrap().take();
                    match by_hand {
                        Some(streams) => me.goaway_below(tls, n, streams).await,
                        None => me.serve(tls, n, max_streams).await,
                    }
                });
            }
        });
        up
    }

    async fn serve<S>(self, io: S, conn: usize, max_streams: u32)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        /// Counts the connection in `h2_open` while it is served.
        struct Open(Arc<Inner>);
        impl Drop for Open {
            fn drop(&mut self) {
                self.0.h2_open.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.inner.h2_open.fetch_add(1, Ordering::SeqCst);
        let _open = Open(self.inner.clone());
        let Ok(mut c) = h2::server::Builder::new()
            .max_concurrent_streams(max_streams)
            .handshake::<_, Bytes>(io)
            .await
        else {
            return;
        };
        let goaway_after = *self.inner.goaway_after.lock().unwrap();
        let mut accepted = 0;
        while let Some(r) = c.accept().await {
            let Ok((req, respond)) = r else { return };
            accepted += 1;
            tokio::spawn(self.clone().stream(conn, req, respond));
            if Some(accepted) == goaway_after {
                // GOAWAY: the streams accepted so far are answered, later ones refused.
                c.graceful_shutdown();
            }
        }
    }

    /// HTTP/2 by hand (RFC 9113 framing; no HPACK decoding: the `to` comes from the body):
    /// reads until `streams` requests are complete (or 5 s pass), answers the lowest stream
    /// 200, sends GOAWAY (`NO_ERROR`) with that stream as the last, and closes once the
    /// client has gone or 2 s pass. The streams above it are recorded as not processed.
    async fn goaway_below<S>(self, mut io: S, conn: usize, streams: usize)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use super::h2_frame::{
            self, frame, ACK, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, SETTINGS,
        };
        let mut preface = [0u8; 24];
        if io.read_exact(&mut preface).await.is_err() {
            return;
        }
        if io.write_all(&frame(SETTINGS, 0, 0, &[])).await.is_err() {
            return;
        }
        // stream id → (body, complete)
        let mut open: std::collections::BTreeMap<u32, (Vec<u8>, bool)> = Default::default();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        while open.values().filter(|(_, done)| *done).count() < streams {
            let read = tokio::time::timeout_at(deadline, io.read(&mut chunk)).await;
            let Ok(Ok(n)) = read else { break };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Some(f) = h2_frame::take(&mut buf) {
                match f.kind {
                    // Acknowledge the client's SETTINGS.
                    SETTINGS
                        if f.flags & ACK == 0
                            && io.write_all(&frame(SETTINGS, ACK, 0, &[])).await.is_err() =>
                    {
                        return;
                    }
                    HEADERS => {
                        open.insert(f.stream, (Vec::new(), f.flags & END_STREAM != 0));
                    }
                    DATA => {
                        if let Some((body, done)) = open.get_mut(&f.stream) {
                            body.extend_from_slice(f.data());
                            *done |= f.flags & END_STREAM != 0;
                        }
                    }
                    _ => {}
                }
            }
        }
        let Some((&first, _)) = open.iter().find(|(_, (_, done))| *done) else {
            return;
        };
        for (id, (body, _)) in &open {
            self.inner.seen.lock().unwrap().push(Seen {
                conn,
                method: "POST".into(),
                path: String::new(),
                authority: String::new(),
                authorization: None,
                body: String::from_utf8_lossy(body).into_owned(),
                refused: *id != first,
                http1: false,
            });
        }
        let answer = ok_body(&to_of(&String::from_utf8_lossy(&open[&first].0)));
        // HPACK: `:status: 200` (static index 8), then `content-length` (static index 28)
        // as a literal without indexing.
        let len = answer.len().to_string();
        let mut block = vec![0x88, 0x0f, 28 - 15, len.len() as u8];
        block.extend_from_slice(len.as_bytes());
        let mut out = frame(HEADERS, END_HEADERS, first, &block);
        out.extend(frame(DATA, END_STREAM, first, answer.as_bytes()));
        let mut goaway = first.to_be_bytes().to_vec();
        goaway.extend_from_slice(&0u32.to_be_bytes());
        out.extend(frame(GOAWAY, 0, 0, &goaway));
        if io.write_all(&out).await.is_err() {
            return;
        }
        let _ = io.flush().await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while matches!(io.read(&mut chunk).await, Ok(n) if n > 0) {}
        })
        .await;
    }

    async fn stream(
        self,
        conn: usize,
        req: http::Request<h2::RecvStream>,
        mut respond: SendResponse<Bytes>,
    ) {
        let (parts, mut body) = req.into_parts();
        let mut bytes = Vec::new();
        while let Some(d) = body.data().await {
            let Ok(d) = d else { return };
            let _ = body.flow_control().release_capacity(d.len());
            bytes.extend_from_slice(&d);
        }
        let mut seen = Seen::of(conn, &parts, &bytes, false);
        let responder = self.inner.responder.lock().unwrap().clone();
        let action = responder(&seen);
        seen.refused = matches!(action, H2Action::Reset(Reason::REFUSED_STREAM));
        self.inner.seen.lock().unwrap().push(seen.clone());
        let ok_body = ok_body(&to_of(&seen.body));
        let (status, body, framed) = match action {
            H2Action::Reset(reason) => {
                respond.send_reset(reason);
                return;
            }
            H2Action::Ok => (200, ok_body, true),
            H2Action::OkUnframed => (200, ok_body, false),
            H2Action::Answer(status, body) => (status, body, true),
            H2Action::Hold => {
                self.inner.held.fetch_add(1, Ordering::SeqCst);
                let mut rx = self.inner.released.subscribe();
                let _ = rx.wait_for(|r| *r).await;
                (200, ok_body, true)
            }
        };
        let mut head = http::Response::builder()
            .status(status)
            .header("content-type", "application/json");
        if framed {
            head = head.header("content-length", body.len());
        }
        let Ok(mut send) = respond.send_response(head.body(()).unwrap(), false) else {
            return;
        };
        let body = Bytes::from(body);
        if framed {
            let _ = send.send_data(body, true);
        } else {
            let half = body.len() / 2;
            let _ = send.send_data(body.slice(..half), false);
            let _ = send.send_data(body.slice(half..), true);
        }
    }

    /// HTTP/1.1 (hyper's server) on a connection that selected it: each request is recorded
    /// and answered by the responder (`Answer`, else the default 200; resets and holds are
    /// HTTP/2's). Once the upstream speaks `h2` again, an answer says `connection: close`, so
    /// the client's next connection selects `h2`.
    async fn serve_http1<S>(self, io: S, conn: usize)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        use http_body_util::{BodyExt, Full};
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let me = self.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let seen = Seen::of(conn, &parts, &bytes, true);
                let responder = me.inner.responder.lock().unwrap().clone();
                let (status, body) = match responder(&seen) {
                    H2Action::Answer(status, body) => (status, body),
                    _ => (200, ok_body(&to_of(&seen.body))),
                };
                me.inner.seen.lock().unwrap().push(seen);
                let mut head = http::Response::builder()
                    .status(status)
                    .header("content-type", "application/json");
                if !me.inner.http1.load(Ordering::SeqCst) {
                    head = head.header("connection", "close");
                }
                Ok::<_, std::convert::Infallible>(head.body(Full::new(Bytes::from(body))).unwrap())
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
            .await;
    }

    /// While `on`, new connections select HTTP/1.1 (ALPN `http/1.1` only) and are served over
    /// it; open HTTP/2 connections go on (end them with [`H2Upstream::goaway_after`]). Off
    /// again, open HTTP/1.1 connections close after their next answer.
    pub fn speak_http1(&self, on: bool) {
        self.inner.http1.store(on, Ordering::SeqCst);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://localhost:{port}` (the certificate's name).
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Chooses the action for each stream from what it carried.
    pub fn respond_with(&self, f: impl Fn(&Seen) -> H2Action + Send + Sync + 'static) {
        *self.inner.responder.lock().unwrap() = Arc::new(f);
    }

    /// Connections accepted from now on go away (graceful GOAWAY) after `n` streams.
    pub fn goaway_after(&self, n: usize) {
        *self.inner.goaway_after.lock().unwrap() = Some(n);
    }

    /// The next connection is served by hand: once `streams` requests on it are complete,
    /// the first is answered and a GOAWAY names it as the last stream; the others are above
    /// it (not processed), and the client must send them again on another connection.
    pub fn goaway_below_next(&self, streams: usize) {
        *self.inner.goaway_below.lock().unwrap() = Some(streams);
    }

    /// Answers the held streams.
    pub fn release(&self) {
        self.inner.released.send_replace(true);
    }

    /// Holds answers again (after [`H2Upstream::release`]), counting held streams anew.
    pub fn rearm(&self) {
        self.inner.released.send_replace(false);
        self.inner.held.store(0, Ordering::SeqCst);
    }

    /// Streams held now or before.
    pub fn held(&self) -> usize {
        self.inner.held.load(Ordering::SeqCst)
    }

    /// Every stream read, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.inner.seen.lock().unwrap().clone()
    }

    /// Streams processed (read and not refused).
    pub fn processed(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| !s.refused).collect()
    }

    /// The next `n` TCP connections are closed at once, before TLS (not counted in
    /// [`H2Upstream::connections`]).
    pub fn drop_next(&self, n: usize) {
        self.inner.drop_next.store(n, Ordering::SeqCst);
    }

    /// HTTP/2 connections open now (served by the `h2` server; not those served by hand).
    pub fn h2_open(&self) -> usize {
        self.inner.h2_open.load(Ordering::SeqCst)
    }

    /// TLS connections accepted.
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::SeqCst)
    }
}

/// The `to` values that occur more than once among `seen`.
pub fn duplicates(seen: &[Seen]) -> Vec<String> {
    let mut once = HashSet::new();
    seen.iter()
        .map(|s| to_of(&s.body))
        .filter(|to| !once.insert(to.clone()))
        .collect()
}
