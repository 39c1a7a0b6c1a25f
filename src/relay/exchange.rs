//! One relayed request, the steps of [`crate::policy`] in order: guard → limit → guard →
//! forward → classify → respond, recorded once.

use std::time::Instant;

use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::h1::body::BodyReader;
use super::h1::request::RequestHead;
use super::h1::response::{parse_response, ResponseHead};
use super::h1::BadResponse;
use super::{Relay, Scratch};
use crate::policy::{Admit, Answer, Body, Call, Inspect, Outcome, Reply};
use crate::upstream::pool::Conn;
use crate::upstream::{error_chain, ForwardError};

impl Relay {
    /// Answers the request in `req` (`head` says where its parts are) on `client`.
    /// Returns whether the client connection can carry another request. A drain that
    /// starts while the request is in flight (`drain` flips) closes the connection after
    /// this answer, which says so (`connection: close`): the client's next send then goes
    /// to a fresh connection instead of being cut unanswered.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn exchange(
        &self,
        client: &mut TcpStream,
        call: Call,
        req: &[u8],
        head: &RequestHead,
        close: bool,
        drain: &watch::Receiver<bool>,
        s: &mut Scratch,
    ) -> bool {
        let policy = &self.shared.policy;
        let body = &req[head.head_len..];
        let closing = || close || *drain.borrow();
        let close = closing();
        if let Some(unacked) = self.answer_locally(call, body, close, s) {
            if let Some(seq) = unacked {
                policy.acknowledged(seq).await;
            }
            return send(client, close, s).await;
        }
        let limiter = &self.shared.limiter;
        let permit = match limiter.try_acquire() {
            Some(p) => p,
            None => limiter.acquire().await,
        };
        // Again: the circuit may have tripped while this send waited for a permit.
        let close = closing();
        if let Some(unacked) = self.answer_locally(call, body, close, s) {
            drop(permit);
            if let Some(seq) = unacked {
                policy.acknowledged(seq).await;
            }
            return send(client, close, s).await;
        }

        s.up.extend_from_slice(body);
        let start = Instant::now();
        let timeout = self.shared.request_timeout;
        let sent = tokio::time::timeout(
            timeout,
            self.forward(head.method == Method::HEAD, &closing, s),
        )
        .await;
        // What the answer head (or the failure) told the client.
        let close = closing();
        let (mut conn, rh) = match sent {
            Ok(Ok(ok)) => ok,
            Ok(Err(e)) => return self.failed(client, call, e, start, close, s).await,
            Err(_) => {
                let e = ForwardError::Timeout(timeout);
                return self.failed(client, call, e, start, close, s).await;
            }
        };
        let to_head = start.elapsed();

        let mut reader = BodyReader::new(rh.framing, std::mem::take(&mut s.resp), rh.head_len);
        let mut unacked = None;
        if let Inspect::Read { limit } = policy.inspect(rh.status, rh.content_length()) {
            // The error body is read within `request_timeout` of forwarding, like the
            // head: a stalled body must not hold the upstream permit past it.
            let left = timeout.saturating_sub(start.elapsed());
            let read = tokio::time::timeout(left, reader.buffer(&mut conn, limit, &mut s.decoded));
            let Ok(read) = read.await else {
                s.resp = reader.into_buffer();
                drop(permit);
                let e = ForwardError::Timeout(timeout);
                return self.failed(client, call, e, start, close, s).await;
            };
            match read {
                Ok(true) => {
                    let judged: &[u8] = if reader.chunked() {
                        &s.decoded
                    } else {
                        reader.framed()
                    };
                    let mut codings = [&[][..]; 5];
                    let mut n = 0;
                    for c in rh.content_encoding(reader.head()) {
                        codings[n] = c;
                        n += 1;
                    }
                    let answer = Answer {
                        status: rh.status,
                        content_encoding: &codings[..n],
                        retry_after: rh.retry_after(reader.head()),
                        body: judged,
                        // The relay holds every request whole: judge reads it only for a
                        // template code.
                        request: Some(body),
                    };
                    unacked = policy.classify(call, answer);
                }
                Ok(false) => {} // too large to judge: relayed as it comes
                Err(e) => {
                    s.resp = reader.into_buffer();
                    let e = ForwardError::Broken(Box::new(e));
                    return self.failed(client, call, e, start, close, s).await;
                }
            }
        }
        // The classifier has decided: queued sends may go (or be answered locally) now.
        drop(permit);
        // A tripping answer reaches the app only once the open is durable.
        if let Some(seq) = unacked {
            policy.acknowledged(seq).await;
        }
        policy.record(
            call,
            Outcome::Answered {
                status: rh.status,
                to_head,
            },
        );

        let relayed = relay_body(&mut reader, &mut conn, client, &mut s.out).await;
        let reusable = reader.reusable() && !rh.close;
        s.resp = reader.into_buffer();
        match relayed {
            Ok(()) if reusable => self.pool.put(conn),
            Ok(()) => {}
            Err(e) => {
                // The head is out: all that is left is to close the client's connection.
                tracing::debug!(error = %e, "answer body broke off mid-relay");
                return false;
            }
        }
        !close && reusable
    }

    /// The guard: when the send is in scope of an open circuit, puts the local answer in
    /// `s.out` and returns `Some` (with the change to wait for when it is not durable yet).
    /// Builds no response object: this path runs at the rate a blocked app retries.
    fn answer_locally(
        &self,
        call: Call,
        body: &[u8],
        close: bool,
        s: &mut Scratch,
    ) -> Option<Option<u64>> {
        let policy = &self.shared.policy;
        let out = &mut s.out;
        let local = policy.admit(call, Body::Read(body), |reply| {
            out.clear();
            reply.write_h1(close, out);
        });
        match local {
            Admit::Local { unacked, .. } => {
                policy.record(call, Outcome::Local);
                Some(unacked)
            }
            // The relay always has the whole body: the guard never asks to read it.
            Admit::Forward | Admit::Inspect { .. } => None,
        }
    }

    /// Writes `s.up` to an upstream connection and reads the answer's head into `s.resp`
    /// (the client's version of it into `s.out`).
    async fn forward(
        &self,
        head_request: bool,
        close: &impl Fn() -> bool,
        s: &mut Scratch,
    ) -> Result<(Conn, ResponseHead), ForwardError> {
        let mut conn = match self.pool.take() {
            Some(c) => c,
            None => self
                .shared
                .connector
                .connect()
                .await
                .map_err(|e| ForwardError::Connect(Box::new(e)))?,
        };
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
            if let Some(rh) = parse_response(&s.resp, head_request, close(), &mut s.out)
                .map_err(|e: BadResponse| ForwardError::Broken(Box::new(e)))?
            {
                return Ok((conn, rh));
            }
        }
    }

    /// A forward that failed before any answer byte reached the client: logged, recorded,
    /// answered with the gateway's 502/504.
    async fn failed(
        &self,
        client: &mut TcpStream,
        call: Call,
        e: ForwardError,
        start: Instant,
        close: bool,
        s: &mut Scratch,
    ) -> bool {
        tracing::warn!(error = %error_chain(&e), "upstream request failed");
        self.shared.policy.record(
            call,
            Outcome::Failed {
                after: start.elapsed(),
            },
        );
        s.out.clear();
        Reply::forward_failed(&e).write_h1(close, &mut s.out);
        send(client, close, s).await
    }
}

/// Writes `s.out`. Returns whether the connection stays open.
async fn send(client: &mut TcpStream, close: bool, s: &mut Scratch) -> bool {
    client.write_all(&s.out).await.is_ok() && !close
}

/// Sends the client's head (in `out`) with the first piece of the body in one write, then
/// the rest as it arrives.
async fn relay_body<R, W>(
    reader: &mut BodyReader,
    conn: &mut R,
    client: &mut W,
    out: &mut Vec<u8>,
) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    if let Some(first) = reader.next(conn).await? {
        out.extend_from_slice(first);
    }
    client.write_all(out).await?;
    while let Some(piece) = reader.next(conn).await? {
        client.write_all(piece).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::h1::Framing;

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
