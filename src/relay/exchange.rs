//! One relayed request, straight-line: the steps of [`crate::policy::exchange`] in their
//! order — guard → pace (a wait for the slot, and the guard again) → permit (and the guard
//! again) → forward → classify → settle → respond.

use std::pin::Pin;

use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Sleep;

use super::h1::body::BodyReader;
use super::h1::request::{write_upstream, RequestHead};
use super::h1::response::parse_response;
use super::h1::BadResponse;
use super::upstream::{h2_request, H2Answer, Upstream};
use super::{Relay, Scratch};
use crate::common::error_chain;
use crate::policy::exchange::{Admission, Answered, Guard, Pace, Routed, Settle};
use crate::policy::{Body, Call, ForwardError, Reply};
use crate::upstream::http2::{Failed, H2Pool, Pick, MAX_UNPROCESSED};
use crate::upstream::pool::{Conn, Connected};

/// Times one send may find a connection going away before its request left (each time
/// that connection is dropped from the set).
const MAX_NOT_SENT: usize = 4;

/// Where [`Relay::forward_h2`] sent the request.
enum Via {
    /// Answered on an HTTP/2 stream.
    H2(Box<H2Answer>),
    /// The upstream speaks HTTP/1.1: send on this connection (just opened), or a pooled one.
    H1(Option<Conn>),
}

impl Relay {
    /// Answers the request in `req` (`head` says where its parts are) on `client`, taking
    /// the exchange's steps in their order ([`crate::policy::exchange`]). Returns whether
    /// the client connection can carry another request. A drain that starts while the
    /// request is in flight (`drain` flips) closes the connection after this answer, which
    /// says so (`connection: close`): the client's next send then goes to a fresh
    /// connection instead of being cut unanswered.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn exchange(
        &self,
        client: &mut TcpStream,
        call: Call,
        req: &[u8],
        head: &RequestHead,
        close: bool,
        drain: &watch::Receiver<bool>,
        mut upstream_deadline: Pin<&mut Sleep>,
        s: &mut Scratch,
    ) -> bool {
        let policy = &*self.shared.policy;
        let body = &req[head.head_len..];
        let closing = || close || *drain.borrow();
        // Renders a local answer into `s.out` (no response object: this path runs at the
        // rate a blocked app retries).
        let close_now = closing();
        let out = &mut s.out;
        let local = |reply: Reply<'_>| {
            out.clear();
            super::render(&reply, close_now, out);
        };
        // The relay holds every request whole: the guard never asks to read it.
        let pacing = match Routed::new(call).admit(policy, Body::Read(body), local) {
            Guard::Go(g) => g,
            Guard::Local((), settle) => {
                return self.answer_local(client, settle, close_now, s).await
            }
            Guard::Read(routed, _) => routed.too_large(),
        };
        let out = &mut s.out;
        let local = |reply: Reply<'_>| {
            out.clear();
            super::render(&reply, close_now, out);
        };
        let guarded = match pacing.pace(policy, Body::Read(body), local) {
            Pace::Go(g) => g,
            Pace::Local((), settle) => {
                return self.answer_local(client, settle, close_now, s).await
            }
            Pace::Wait(waiting) => {
                tokio::time::sleep_until(tokio::time::Instant::from_std(waiting.until())).await;
                let close_now = closing();
                let out = &mut s.out;
                let local = |reply: Reply<'_>| {
                    out.clear();
                    super::render(&reply, close_now, out);
                };
                match waiting.waited(policy, Body::Read(body), local) {
                    Admission::Go(g) => g,
                    Admission::Local((), settle) => {
                        return self.answer_local(client, settle, close_now, s).await
                    }
                }
            }
        };
        let limiter = &self.shared.limiter;
        let admitted = match limiter.try_acquire() {
            Some(permit) => guarded.permitted_at_once(policy, permit),
            None => {
                // A client that goes away while it waits leaves the queue at once (the
                // exchange records `abandoned`).
                let waited = tokio::select! {
                    biased;
                    w = limiter.acquire() => w,
                    () = gone(client) => return false,
                };
                let close_now = closing();
                let Ok(permit) = waited else {
                    let out = &mut s.out;
                    let ((), settle) = guarded.overloaded(|reply| {
                        out.clear();
                        super::render(&reply, close_now, out);
                    });
                    return self.answer_local(client, settle, close_now, s).await;
                };
                let out = &mut s.out;
                let local = |reply: Reply<'_>| {
                    out.clear();
                    super::render(&reply, close_now, out);
                };
                match guarded.permitted(policy, permit, Body::Read(body), local) {
                    Admission::Go(a) => a,
                    Admission::Local((), settle) => {
                        return self.answer_local(client, settle, close_now, s).await
                    }
                }
            }
        };

        // The connection's upstream timer, moved on (see `Relay::connection`).
        upstream_deadline
            .as_mut()
            .reset(tokio::time::Instant::from_std(admitted.deadline()));
        // A client that goes away while the upstream has not answered gives its permit
        // back at once (issue 25: it was held until `request_timeout`).
        let sent = tokio::select! {
            biased;
            sent = self.forward(req, head, &closing, s) => Ok(sent),
            () = &mut upstream_deadline => Err(()),
            () = gone(client) => return false,
        };
        // What the answer head (or the failure) told the client.
        let close = closing();
        let mut up = match sent {
            Ok(Ok(up)) => up,
            Ok(Err(e)) => {
                admitted.failed(&e);
                return self.failed(client, e, close, s).await;
            }
            Err(_) => {
                let e = ForwardError::Timeout(admitted.timeout());
                admitted.failed(&e);
                return self.failed(client, e, close, s).await;
            }
        };

        let settle = match admitted.answered(policy, up.status(), up.content_length()) {
            Answered::Pass(settle) => settle,
            Answered::Read(reading) => {
                // The error body is read by the same deadline as the head: a stalled body
                // must not hold the upstream permit past it.
                let deadline = tokio::time::Instant::from_std(reading.deadline());
                let read = tokio::select! {
                    biased;
                    read = tokio::time::timeout_at(
                        deadline,
                        up.buffer(reading.limit(), &mut s.decoded),
                    ) => read,
                    () = gone(client) => return false,
                };
                match read {
                    Ok(Ok(true)) => up.judge(reading, policy, &s.decoded, body),
                    // Too large to judge: relayed as it comes.
                    Ok(Ok(false)) => reading.too_large(),
                    Ok(Err(e)) => {
                        up.finish(false, &self.pool, &mut s.resp);
                        reading.failed(&e);
                        return self.failed(client, e, close, s).await;
                    }
                    Err(_) => {
                        up.finish(false, &self.pool, &mut s.resp);
                        let e = ForwardError::Timeout(reading.timeout());
                        reading.failed(&e);
                        return self.failed(client, e, close, s).await;
                    }
                }
            }
        };
        // The permit is back; a tripping answer reaches the app once the open is durable.
        settle.done(policy).await;

        let relayed = up.relay(client, &mut s.out).await;
        let reusable = up.finish(relayed.is_ok(), &self.pool, &mut s.resp);
        if let Err(e) = relayed {
            // The head is out: all that is left is to close the client's connection.
            tracing::debug!(error = %e, "answer body broke off mid-relay");
            return false;
        }
        !close && reusable
    }

    /// Sends the local answer in `s.out` once it is settled (durable, recorded).
    async fn answer_local(
        &self,
        client: &mut TcpStream,
        settle: Settle,
        close: bool,
        s: &mut Scratch,
    ) -> bool {
        settle.done(&self.shared.policy).await;
        send(client, close, s).await
    }

    /// Forwards the request (`req`, its parts and fields to forward found by
    /// [`super::h1::request::parse_head`]) and reads the answer's head, whose client version
    /// goes into `s.out`: over HTTP/2 when the upstream speaks it, else on an HTTP/1.1
    /// connection (the head written into `s.up`, the answer's bytes read into `s.resp`).
    async fn forward(
        &self,
        req: &[u8],
        head: &RequestHead,
        close: &impl Fn() -> bool,
        s: &mut Scratch,
    ) -> Result<Upstream, ForwardError> {
        let head_request = head.method == Method::HEAD;
        let fresh = if self.shared.connector.may_speak_h2() {
            match self.forward_h2(req, head, close, s).await? {
                Via::H2(answer) => return Ok(Upstream::H2(answer)),
                Via::H1(conn) => conn,
            }
        } else {
            None
        };
        let mut conn = match fresh.or_else(|| self.pool.take()) {
            Some(c) => c,
            None => match self.shared.connector.connect().await {
                Ok(Connected::H1(c)) => c,
                // Only an `https` upstream selects h2, and those went above.
                Ok(Connected::H2(_)) => {
                    return Err(ForwardError::Broken("unexpected HTTP/2 connection".into()))
                }
                Err(e) => return Err(ForwardError::Connect(Box::new(e))),
            },
        };
        write_upstream(req, head, &s.forward, &self.shared.authority, &mut s.up);
        s.up.extend_from_slice(&req[head.head_len..]);
        let broken = |e: std::io::Error| ForwardError::Broken(Box::new(e));
        conn.write_all(&s.up).await.map_err(broken)?;
        s.resp.clear();
        loop {
            if s.resp.capacity() - s.resp.len() < 1024 {
                s.resp.reserve(4096);
            }
            let n = conn.read_buf(&mut s.resp).await.map_err(broken)?;
            if n == 0 {
                return Err(ForwardError::Broken(
                    "upstream closed the connection before answering".into(),
                ));
            }
            if let Some(head) = parse_response(&s.resp, head_request, close(), &mut s.out)
                .map_err(|e: BadResponse| ForwardError::Broken(Box::new(e)))?
            {
                let reader =
                    BodyReader::new(head.framing, std::mem::take(&mut s.resp), head.head_len);
                return Ok(Upstream::H1 { conn, head, reader });
            }
        }
    }

    /// Over HTTP/2 when this worker's upstream speaks it: a stream on an open connection
    /// (opening one when none has room), retried on another only when the server did not
    /// process it ([`Failed::Unprocessed`]). `Via::H1` when the upstream speaks HTTP/1.1
    /// (with the connection just opened, if one was).
    async fn forward_h2(
        &self,
        req: &[u8],
        head: &RequestHead,
        close: &impl Fn() -> bool,
        s: &mut Scratch,
    ) -> Result<Via, ForwardError> {
        let head_request = head.method == Method::HEAD;
        let connector = &self.shared.connector;
        let connect_failed = |e: std::io::Error| ForwardError::Connect(Box::new(e));
        let mut unprocessed = 0;
        let mut not_sent = 0;
        loop {
            match self.h2.pick() {
                Pick::Stream(lease) => {
                    let (request, body) =
                        h2_request(req, head, &s.forward, &self.shared.target_authority)?;
                    match H2Pool::send(lease, request, body).await {
                        Ok(answer) => {
                            let answer = H2Answer::new(answer, head_request, close(), &mut s.out)?;
                            return Ok(Via::H2(Box::new(answer)));
                        }
                        Err(Failed::Unprocessed(e)) if unprocessed < MAX_UNPROCESSED => {
                            tracing::debug!(error = %e, "upstream did not process a stream: sent again");
                            unprocessed += 1;
                        }
                        Err(Failed::NotSent(e)) if not_sent < MAX_NOT_SENT => {
                            tracing::debug!(error = %e, "upstream connection going away: sent on another");
                            not_sent += 1;
                        }
                        Err(Failed::NotSent(e) | Failed::Unprocessed(e) | Failed::Broken(e)) => {
                            return Err(ForwardError::Broken(Box::new(e)))
                        }
                    }
                }
                Pick::H1 => {
                    if let Some(conn) = self.pool.take() {
                        return Ok(Via::H1(Some(conn)));
                    }
                    match connector.connect().await.map_err(connect_failed)? {
                        Connected::H1(conn) => return Ok(Via::H1(Some(conn))),
                        // The upstream speaks h2 now: it serves from here on.
                        Connected::H2(tls) => {
                            let opening = self.h2.opening();
                            opening
                                .h2(tls)
                                .await
                                .map_err(|e| ForwardError::Connect(Box::new(e)))?;
                        }
                    }
                }
                Pick::Wait(changed) => changed.await,
                Pick::Open(opening) => match connector.connect().await.map_err(connect_failed)? {
                    Connected::H2(tls) => opening
                        .h2(tls)
                        .await
                        .map_err(|e| ForwardError::Connect(Box::new(e)))?,
                    Connected::H1(conn) => {
                        opening.h1();
                        return Ok(Via::H1(Some(conn)));
                    }
                },
            }
        }
    }

    /// A forward that failed before any answer byte reached the client (the exchange has
    /// recorded it): logged, answered with the gateway's 502/504.
    async fn failed(
        &self,
        client: &mut TcpStream,
        e: ForwardError,
        close: bool,
        s: &mut Scratch,
    ) -> bool {
        tracing::warn!(error = %error_chain(&e), "upstream request failed");
        s.out.clear();
        super::render(&Reply::forward_failed(&e), close, &mut s.out);
        send(client, close, s).await
    }
}

/// Resolves when the client closed its connection (or it broke) while its request is in
/// flight; never when it sent more (a pipelined request: it is still there).
///
/// `poll_peek` waits in the socket's reader slot (nothing reads the client meanwhile).
/// Watching costs every relayed send about 3 % more instructions (issue 25: the budget
/// re-recorded).
async fn gone(client: &TcpStream) {
    let mut byte = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut byte);
    match std::future::poll_fn(|cx| client.poll_peek(cx, &mut buf)).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Writes `s.out`. Returns whether the connection stays open.
async fn send(client: &mut TcpStream, close: bool, s: &mut Scratch) -> bool {
    client.write_all(&s.out).await.is_ok() && !close
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::h1::Framing;
    use crate::relay::upstream::relay_body;

    /// The answer relay through its caller: the head and body from an upstream that writes
    /// the answer in two pieces, split at every point, over an in-memory pipe.
    #[tokio::test]
    async fn answers_split_at_every_point_reach_the_client_whole() {
        let answers: [&[u8]; 2] = [
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5;x=1\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}",
        ];
        for answer in answers {
            for split in 1..answer.len() {
                let (mut up, mut conn) = tokio::io::duplex(32);
                let (a, b) = (answer[..split].to_vec(), answer[split..].to_vec());
                let writer = tokio::spawn(async move {
                    up.write_all(&a).await.unwrap();
                    tokio::task::yield_now().await;
                    up.write_all(&b).await.unwrap();
                    up
                });
                let mut resp = Vec::new();
                let mut out = Vec::new();
                let rh = loop {
                    conn.read_buf(&mut resp).await.unwrap();
                    if let Some(rh) = parse_response(&resp, false, false, &mut out).unwrap() {
                        break rh;
                    }
                };
                let mut reader = BodyReader::new(rh.framing, resp, rh.head_len);
                let (mut client_w, mut client_r) = tokio::io::duplex(4096);
                relay_body(&mut reader, &mut conn, &mut client_w, &mut out)
                    .await
                    .unwrap();
                drop(client_w);
                let mut got = Vec::new();
                client_r.read_to_end(&mut got).await.unwrap();
                assert_eq!(got, answer, "split {split}");
                assert!(reader.reusable(), "split {split}");
                assert!(matches!(rh.framing, Framing::Chunked | Framing::Length(7)));
                let _ = writer.await;
            }
        }
    }
}
