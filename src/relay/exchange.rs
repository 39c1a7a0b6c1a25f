//! One relayed request: route → resolve → guard → limit → guard → forward → classify →
//! respond, the same steps and metrics as the tower stack in [`crate::proxy`].

use std::time::Instant;

use http::{Method, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::http1::{self, BadResponse, Chunks, Framing, RequestHead, ResponseHead};
use super::pool::Conn;
use super::{Relay, Scratch};
use crate::circuit::Scope;
use crate::config::Mode;
use crate::graph::route::{self, Kind};
use crate::metrics::METRICS;
use crate::proxy::guard::is_template;
use crate::proxy::route::Resolved;
use crate::proxy::{classify, upstream::error_chain, Body, ProxyError};

/// Why forwarding failed, before any answer byte reached the client.
enum Failed {
    Connect(std::io::Error),
    Io(std::io::Error),
    Bad(BadResponse),
}

impl Relay {
    /// Answers the request in `req` (`head` says where its parts are) on `client`.
    /// Returns whether the client connection can carry another request.
    pub(super) async fn exchange(
        &self,
        client: &mut TcpStream,
        req: &[u8],
        head: &RequestHead,
        close: bool,
        s: &mut Scratch,
    ) -> bool {
        let path = std::str::from_utf8(&req[head.path.0..head.path.1]).unwrap_or("");
        let body = &req[head.head_len..];
        let (kind, resolved) = match route::parse(&head.method, path) {
            Some(r) => (r.kind, self.shared.accounts.resolve(r.node)),
            None => (Kind::Read, None),
        };

        if self.answer_locally(kind, resolved, body, close, s) {
            return send(client, close, s).await;
        }
        let limit = self.shared.limit;
        let permit = match limit.try_acquire() {
            Some(p) => p,
            None => limit.acquire().await,
        };
        // Again: the circuit may have tripped while this send waited for a permit.
        if self.answer_locally(kind, resolved, body, close, s) {
            drop(permit);
            return send(client, close, s).await;
        }

        s.up.extend_from_slice(body);
        let start = Instant::now();
        let timeout = self.shared.request_timeout;
        let sent =
            tokio::time::timeout(timeout, self.forward(head.method == Method::HEAD, close, s))
                .await;
        let elapsed = start.elapsed().as_secs_f64();
        let (mut conn, rh) = match sent {
            Ok(Ok(ok)) => ok,
            Ok(Err(failed)) => {
                METRICS.upstream_error.inc();
                METRICS.observe_upstream(None, elapsed);
                let err = match failed {
                    Failed::Connect(e) => ProxyError::Connect(error_chain(&e)),
                    Failed::Io(e) => ProxyError::Broken(error_chain(&e)),
                    Failed::Bad(e) => ProxyError::Broken(e.to_string()),
                };
                tracing::warn!(error = %err, "upstream request failed");
                return answer(client, err.into_response(), close, s).await;
            }
            Err(_) => {
                METRICS.upstream_error.inc();
                METRICS.observe_upstream(None, elapsed);
                tracing::warn!(timeout = ?timeout, "upstream request timed out");
                let resp = ProxyError::Timeout(timeout).into_response();
                return answer(client, resp, close, s).await;
            }
        };
        METRICS.observe_upstream(Some(rh.status), elapsed);
        if kind == Kind::Send && resolved.is_none() {
            METRICS.unmapped.inc();
        } else {
            METRICS.forwarded.inc();
        }

        if !(200..300).contains(&rh.status) {
            if let Err(e) = self.classify(&mut conn, &rh, resolved, s).await {
                METRICS.upstream_error.inc();
                tracing::warn!(error = %error_chain(&e), "upstream error body broke off");
                let resp = ProxyError::Broken(e.to_string()).into_response();
                return answer(client, resp, close, s).await;
            }
        }
        // The classifier has decided: queued sends may go (or be answered locally) now.
        drop(permit);

        match relay_body(&mut conn, client, &rh, s).await {
            Ok(true) if !rh.close => self.pool.put(conn),
            Ok(_) => {}
            Err(_) => return false,
        }
        !close && rh.framing != Framing::Close
    }

    /// The guard: when the send is in scope of an open circuit, puts the local answer in
    /// `s.out` and returns true. Borrows the circuit's guard (no reference counting) and
    /// builds no response object: this path runs at the rate a blocked app retries.
    fn answer_locally(
        &self,
        kind: Kind,
        resolved: Option<&Resolved>,
        body: &[u8],
        close: bool,
        s: &mut Scratch,
    ) -> bool {
        if self.shared.mode == Mode::Observe || kind != Kind::Send {
            return false;
        }
        let Some(resolved) = resolved else {
            return false;
        };
        self.shared
            .table
            .with_guard(&resolved.waba, |guard| {
                let in_scope = match guard.scope {
                    Scope::AllSends => true,
                    Scope::BusinessInitiated => is_template(body),
                };
                if in_scope {
                    METRICS.answered_locally.inc();
                    s.out.clear();
                    http1::encode_local(guard, close, &mut s.out);
                }
                in_scope
            })
            .unwrap_or(false)
    }

    /// Writes `s.up` to an upstream connection and reads the answer's head into `s.resp`
    /// (the client's version of it into `s.out`).
    async fn forward(
        &self,
        head_request: bool,
        close: bool,
        s: &mut Scratch,
    ) -> Result<(Conn, ResponseHead), Failed> {
        let mut conn = match self.pool.take() {
            Some(c) => c,
            None => self
                .shared
                .target
                .connect()
                .await
                .map_err(Failed::Connect)?,
        };
        conn.write_all(&s.up).await.map_err(Failed::Io)?;
        s.resp.clear();
        loop {
            if s.resp.capacity() - s.resp.len() < 1024 {
                s.resp.reserve(4096);
            }
            let n = conn.read_buf(&mut s.resp).await.map_err(Failed::Io)?;
            if n == 0 {
                return Err(Failed::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "upstream closed the connection before answering",
                )));
            }
            if let Some(rh) = http1::parse_response(&s.resp, head_request, close, &mut s.out)
                .map_err(Failed::Bad)?
            {
                return Ok((conn, rh));
            }
        }
    }

    /// Reads a non-2xx answer's body (up to `classify_body_limit`) and lets the classifier
    /// judge it; a body too large to judge passes unjudged, as in the tower stack.
    async fn classify(
        &self,
        conn: &mut Conn,
        rh: &ResponseHead,
        resolved: Option<&Resolved>,
        s: &mut Scratch,
    ) -> std::io::Result<()> {
        let limit = self.shared.classify_limit;
        let judged: &[u8] = match rh.framing {
            Framing::Empty => return Ok(()),
            Framing::Length(n) if n as usize > limit => return Ok(()),
            Framing::Length(n) => {
                let end = rh.head_len + n as usize;
                while s.resp.len() < end {
                    read_more(conn, &mut s.resp).await?;
                }
                &s.resp[rh.head_len..end]
            }
            Framing::Chunked => {
                s.decoded.clear();
                let mut chunks = Chunks::default();
                let mut at = rh.head_len;
                loop {
                    at += chunks
                        .advance(&s.resp[at..], Some(&mut s.decoded))
                        .map_err(std::io::Error::other)?;
                    if chunks.done() {
                        break;
                    }
                    if s.decoded.len() > limit || s.resp.len() - rh.head_len > 4 * limit {
                        return Ok(());
                    }
                    read_more(conn, &mut s.resp).await?;
                }
                &s.decoded
            }
            Framing::Close => {
                loop {
                    if s.resp.len() - rh.head_len > limit {
                        return Ok(());
                    }
                    s.resp.reserve(4096);
                    if conn.read_buf(&mut s.resp).await? == 0 {
                        break;
                    }
                }
                &s.resp[rh.head_len..]
            }
        };
        classify::judge(
            &self.shared.table,
            &self.shared.trip_codes,
            rh.status,
            judged,
            resolved,
        );
        Ok(())
    }
}

async fn read_more<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.reserve(4096);
    match r.read_buf(buf).await? {
        0 => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "upstream closed the connection mid-body",
        )),
        _ => Ok(()),
    }
}

/// Writes a gateway-made answer. Returns whether the connection stays open.
async fn answer(
    client: &mut TcpStream,
    resp: Response<Body>,
    close: bool,
    s: &mut Scratch,
) -> bool {
    s.out.clear();
    http1::encode_response(&resp, close, &mut s.out);
    send(client, close, s).await
}

/// Writes `s.out`. Returns whether the connection stays open.
async fn send(client: &mut TcpStream, close: bool, s: &mut Scratch) -> bool {
    client.write_all(&s.out).await.is_ok() && !close
}

/// Sends the client head (in `s.out`) and the body: what is in `s.resp` first, then the rest
/// as it arrives. `Ok(true)` when the upstream connection ended cleanly and can be reused.
async fn relay_body<W: AsyncWrite + Unpin>(
    conn: &mut Conn,
    client: &mut W,
    rh: &ResponseHead,
    s: &mut Scratch,
) -> std::io::Result<bool> {
    let mut chunks = Chunks::default();
    let mut have = &s.resp[rh.head_len..];
    // Bytes of the body still to come (Length), or None for Chunked/Close.
    let mut left: Option<u64> = match rh.framing {
        Framing::Empty => Some(0),
        Framing::Length(n) => Some(n),
        _ => None,
    };
    let mut first = true;
    loop {
        let (take, done) = match (rh.framing, left) {
            (Framing::Chunked, _) => {
                let n = chunks.advance(have, None).map_err(std::io::Error::other)?;
                (n, chunks.done())
            }
            (_, Some(l)) => {
                let n = l.min(have.len() as u64);
                left = Some(l - n);
                (n as usize, l == n)
            }
            (_, None) => (have.len(), false),
        };
        // Bytes past the end of the answer: the connection is out of step, do not reuse.
        let clean = take == have.len();
        if first {
            s.out.extend_from_slice(&have[..take]);
            client.write_all(&s.out).await?;
            first = false;
        } else if take > 0 {
            client.write_all(&have[..take]).await?;
        }
        if done {
            return Ok(clean);
        }
        s.resp.clear();
        s.resp.reserve(16 * 1024);
        if conn.read_buf(&mut s.resp).await? == 0 {
            return match rh.framing {
                Framing::Close => Ok(false),
                _ => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "upstream closed the connection mid-body",
                )),
            };
        }
        have = &s.resp[..];
    }
}
