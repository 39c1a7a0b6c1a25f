//! The upstream side of one relayed exchange, over either transport: HTTP/1.1 bytes on a
//! pooled connection ([`crate::upstream::pool`]) or a stream on an HTTP/2 connection
//! ([`crate::upstream::http2`]). The exchange ([`super::exchange`]) takes the same steps in
//! the same order with either; only how the answer's bytes move differs, here.

use bytes::Bytes;
use h2::RecvStream;
use http::header::{HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, RETRY_AFTER};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Request, Uri};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::h1::body::BodyReader;
use super::h1::encode;
use super::h1::request::{Field, RequestHead};
use super::h1::response::ResponseHead;
use super::h1::{BadResponse, MAX_HEADERS};
use crate::policy::exchange::{Reading, Settle};
use crate::policy::framing::{content_length, Codings};
use crate::policy::{Answer, ForwardError, Policy};
use crate::upstream::http2::{H2Response, StreamSlot};
use crate::upstream::pool::{Conn, Pool};

/// An answer whose head is in, with its body still to come.
// The HTTP/1.1 variant is the hot path: boxed, it would cost every send an allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Upstream {
    /// On an HTTP/1.1 connection: its bytes are relayed as they came.
    H1 {
        conn: Conn,
        head: ResponseHead,
        reader: BodyReader,
    },
    /// On an HTTP/2 stream: re-framed for the HTTP/1.1 client.
    H2(Box<H2Answer>),
}

/// An HTTP/2 answer being relayed to an HTTP/1.1 client.
pub(super) struct H2Answer {
    status: u16,
    headers: HeaderMap,
    body: RecvStream,
    /// Counts the stream on its connection until the answer is relayed.
    _slot: StreamSlot,
    /// The client gets no body (HEAD, 204, 304).
    empty: bool,
    /// No `content-length` from the upstream: relayed `transfer-encoding: chunked`.
    chunked: bool,
    /// Body bytes already read (an error body read to be judged), relayed first.
    held: Vec<u8>,
    /// The stream's body has ended.
    ended: bool,
}

impl Upstream {
    /// The answer's status.
    pub(super) fn status(&self) -> u16 {
        match self {
            Upstream::H1 { head, .. } => head.status,
            Upstream::H2(a) => a.status,
        }
    }

    /// The declared body length, for [`crate::policy::Policy::inspect`].
    pub(super) fn content_length(&self) -> Option<u64> {
        match self {
            Upstream::H1 { head, .. } => head.content_length(),
            Upstream::H2(a) if a.empty => Some(0),
            Upstream::H2(a) => a
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| content_length(v.as_bytes())),
        }
    }

    /// Reads the body to judge it: `Ok(true)` when whole within `limit`, `Ok(false)` when
    /// larger (then relayed unjudged from what was read). `decoded` takes a chunked
    /// HTTP/1.1 body de-chunked.
    pub(super) async fn buffer(
        &mut self,
        limit: usize,
        decoded: &mut Vec<u8>,
    ) -> Result<bool, ForwardError> {
        match self {
            Upstream::H1 { conn, reader, .. } => reader
                .buffer(conn, limit, decoded)
                .await
                .map_err(|e| ForwardError::Broken(Box::new(e))),
            Upstream::H2(a) => {
                while !a.ended {
                    if a.held.len() > limit {
                        return Ok(false);
                    }
                    match a.body.data().await {
                        Some(Ok(data)) => {
                            a.held.extend_from_slice(&data);
                            // Held here now: the upstream may send more.
                            let _ = a.body.flow_control().release_capacity(data.len());
                        }
                        Some(Err(e)) => return Err(ForwardError::Broken(Box::new(e))),
                        None => a.ended = true,
                    }
                }
                Ok(a.held.len() <= limit)
            }
        }
    }

    /// The body is in ([`Upstream::buffer`] said whole): the policy judges the answer.
    pub(super) fn judge<P>(
        &self,
        reading: Reading<P>,
        policy: &Policy,
        decoded: &[u8],
        request: &[u8],
    ) -> Settle {
        match self {
            Upstream::H1 { head, reader, .. } => {
                let judged: &[u8] = if reader.chunked() {
                    decoded
                } else {
                    reader.framed()
                };
                let codings = Codings::collect(head.content_encoding(reader.head()));
                reading.judge(
                    policy,
                    Answer {
                        status: head.status,
                        content_encoding: codings.as_slice(),
                        retry_after: head.retry_after(reader.head()),
                        body: judged,
                        // The relay holds every request whole: judge reads it only for a
                        // template code.
                        request: Some(request),
                    },
                )
            }
            Upstream::H2(a) => {
                let codings = Codings::collect(
                    a.headers
                        .get_all(CONTENT_ENCODING)
                        .iter()
                        .map(|v| v.as_bytes()),
                );
                reading.judge(
                    policy,
                    Answer {
                        status: a.status,
                        content_encoding: codings.as_slice(),
                        retry_after: a.headers.get(RETRY_AFTER).map(|v| v.as_bytes()),
                        body: &a.held,
                        request: Some(request),
                    },
                )
            }
        }
    }

    /// Sends the client's head (in `out`) with the first piece of the body in one write,
    /// then the rest as it arrives.
    pub(super) async fn relay<W: AsyncWrite + Unpin>(
        &mut self,
        client: &mut W,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        match self {
            Upstream::H1 { conn, reader, .. } => relay_body(reader, conn, client, out).await,
            Upstream::H2(a) => a.relay(client, out).await,
        }
    }

    /// After the answer: whether the client's connection can carry another request
    /// (`relayed`: the body reached the client whole). An HTTP/1.1 connection goes back to
    /// the pool when it can be reused, `resp` gets its buffer back; an HTTP/2 stream ends
    /// here.
    pub(super) fn finish(self, relayed: bool, pool: &Pool, resp: &mut Vec<u8>) -> bool {
        match self {
            Upstream::H1 { conn, head, reader } => {
                let reusable = reader.reusable() && !head.close;
                *resp = reader.into_buffer();
                if relayed && reusable {
                    pool.put(conn);
                }
                reusable
            }
            Upstream::H2(_) => true,
        }
    }
}

/// Sends the client's head (in `out`) with the first piece of the body in one write, then
/// the rest as it arrives.
pub(super) async fn relay_body<R, W>(
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

impl H2Answer {
    /// An HTTP/2 answer's head is in: `out` gets the client's head — the status line, the
    /// answer's fields but hop-by-hop ones, `content-length` when the upstream gave one,
    /// else `transfer-encoding: chunked` (none when there is no body), and
    /// `connection: close` when `close`.
    pub(super) fn new(
        answer: H2Response,
        head_request: bool,
        close: bool,
        out: &mut Vec<u8>,
    ) -> Result<H2Answer, ForwardError> {
        let (parts, body) = answer.response.into_parts();
        let mut headers = parts.headers;
        crate::policy::hop::strip(&mut headers);
        let status = parts.status.as_u16();
        if status == 101 {
            return Err(ForwardError::Broken(Box::new(BadResponse::Upgrade)));
        }
        if headers.len() + 2 > MAX_HEADERS {
            return Err(ForwardError::Broken(Box::new(BadResponse::Malformed(
                "too many header fields",
            ))));
        }
        let lengths = headers.get_all(CONTENT_LENGTH).iter().count();
        if lengths > 1 {
            return Err(ForwardError::Broken(Box::new(BadResponse::Framing)));
        }
        let empty = head_request || status == 204 || status == 304;
        let chunked = !empty && lengths == 0;
        out.clear();
        encode::status_line(out, parts.status);
        for (name, value) in headers.iter() {
            encode::header(out, name.as_str().as_bytes(), value.as_bytes());
        }
        if chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let ended = body.is_end_stream();
        Ok(H2Answer {
            status,
            headers,
            body,
            _slot: answer.slot,
            empty,
            chunked,
            held: Vec::new(),
            ended,
        })
    }

    async fn relay<W: AsyncWrite + Unpin>(
        &mut self,
        client: &mut W,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        if self.empty {
            return client.write_all(out).await;
        }
        let held = std::mem::take(&mut self.held);
        self.frame(out, &held);
        // The head goes with the first piece of the body.
        let mut released = 0;
        if held.is_empty() && !self.ended {
            if let Some(data) = self.next().await? {
                self.frame(out, &data);
                released = data.len();
            }
        }
        let mut finished = self.ended;
        if finished {
            self.end(out);
        }
        client.write_all(out).await?;
        let _ = self.body.flow_control().release_capacity(released);
        while let Some(data) = self.next().await? {
            out.clear();
            self.frame(out, &data);
            finished = self.ended;
            if finished {
                self.end(out);
            }
            client.write_all(out).await?;
            // The client has it: the upstream may send as much again.
            let _ = self.body.flow_control().release_capacity(data.len());
        }
        if !finished && self.chunked {
            out.clear();
            self.end(out);
            client.write_all(out).await?;
        }
        Ok(())
    }

    /// The next piece of the body; `None` at its end.
    async fn next(&mut self) -> std::io::Result<Option<Bytes>> {
        while !self.ended {
            match self.body.data().await {
                Some(Ok(data)) => {
                    self.ended = self.body.is_end_stream();
                    if !data.is_empty() {
                        return Ok(Some(data));
                    }
                }
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => self.ended = true,
            }
        }
        Ok(None)
    }

    /// Appends `data` to `out`, as a chunk when relaying chunked.
    fn frame(&self, out: &mut Vec<u8>, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if self.chunked {
            encode::hex(out, data.len());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(data);
        }
    }

    /// The last chunk, when relaying chunked.
    fn end(&self, out: &mut Vec<u8>) {
        if self.chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
}

/// The HTTP/2 request for a relayed HTTP/1.1 one, and its body: `req` is the request as
/// the client sent it (head and body), `head` and `forward` what
/// [`super::h1::request::parse_head`] found in it — `:method`, `:path`, the fields to
/// forward (hop-by-hop ones and `host` already left out) — and `authority` the
/// `:authority` (`:scheme` is `https`).
///
/// The request is copied once, into one buffer, and the path, every field value and the
/// body are views of it: one allocation a send, and no second parse of the head (issue 24:
/// this re-framing, through httparse again and an allocation per field, was ~10 % of an
/// HTTP/2 send's instructions).
pub(super) fn h2_request(
    req: &[u8],
    head: &RequestHead,
    forward: &[Field],
    authority: &http::uri::Authority,
) -> Result<(Request<()>, Bytes), ForwardError> {
    let bad = |what: &'static str| ForwardError::Broken(Box::new(BadResponse::Malformed(what)));
    let buf = Bytes::copy_from_slice(req);
    let part = |(a, b): (usize, usize)| buf.slice(a..b);
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTPS);
    uri.authority = Some(authority.clone());
    uri.path_and_query = Some(
        PathAndQuery::from_maybe_shared(part(head.target)).map_err(|_| bad("request target"))?,
    );
    let mut headers = HeaderMap::with_capacity(forward.len());
    for f in forward {
        let name =
            HeaderName::from_bytes(&req[f.name.0..f.name.1]).map_err(|_| bad("request field"))?;
        let value =
            HeaderValue::from_maybe_shared(part(f.value)).map_err(|_| bad("request field"))?;
        headers.append(name, value);
    }
    let mut request = Request::new(());
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = Uri::from_parts(uri).map_err(|_| bad("request target"))?;
    *request.headers_mut() = headers;
    Ok((request, buf.slice(head.head_len..)))
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;
    use crate::relay::h1::request::{parse_head, Parsed};

    fn authority() -> http::uri::Authority {
        "graph.facebook.com".parse().unwrap()
    }

    /// `req` as the relay takes it, then as the HTTP/2 request.
    fn h2(req: &[u8]) -> Result<(Request<()>, Bytes), ForwardError> {
        let mut forward = Vec::new();
        let Parsed::Request(head) = parse_head(req, &mut forward) else {
            panic!("not taken: {:?}", String::from_utf8_lossy(req));
        };
        h2_request(req, &head, &forward, &authority())
    }

    /// The head becomes the pseudo-fields and fields, `host` and hop-by-hop fields left
    /// out, repeated fields kept in order, values as the client wrote them; the body
    /// follows whole.
    #[test]
    fn an_http1_request_becomes_the_http2_request() {
        let req = b"POST /v21.0/106540352242922/messages?debug=all HTTP/1.1\r\n\
            Host: gw.local:9001\r\ncontent-type: application/json\r\n\
            Authorization: Bearer EAAG\tx\r\nConnection: keep-alive, X-Hop\r\n\
            X-Hop: 1\r\nx-trace: a\r\nX-Trace: b\r\nTE: trailers\r\n\
            content-length: 7\r\n\r\n{\"a\":1}";
        let (req, body) = h2(req).unwrap();
        assert_eq!(req.method(), Method::POST);
        assert_eq!(
            req.uri().to_string(),
            "https://graph.facebook.com/v21.0/106540352242922/messages?debug=all"
        );
        assert_eq!(req.uri().query(), Some("debug=all"));
        let h = req.headers();
        for gone in ["host", "connection", "x-hop", "te"] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["authorization"], "Bearer EAAG\tx");
        let trace: Vec<_> = h.get_all("x-trace").iter().collect();
        assert_eq!(trace, ["a", "b"]);
        assert_eq!(h["content-length"], "7");
        assert_eq!(h.len(), 5);
        assert_eq!(&body[..], b"{\"a\":1}");
        let (get, empty) = h2(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        assert_eq!((get.method(), get.uri().path()), (&Method::GET, "/"));
        assert!(get.headers().is_empty() && empty.is_empty());
    }

    /// A field value HTTP/2 cannot carry (a byte httparse lets through in HTTP/1.1) is the
    /// gateway's error for this send, never a panic.
    #[test]
    fn a_field_http2_cannot_carry_is_an_error() {
        let mut forward = Vec::new();
        let req = b"GET /a HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n\r\n";
        let Parsed::Request(head) = parse_head(req, &mut forward) else {
            panic!()
        };
        // A field whose range names bytes no header value may hold (the request line).
        let bad = [Field {
            name: forward[0].name,
            value: (0, 16),
        }];
        assert!(h2_request(req, &head, &bad, &authority()).is_err());
    }
}
