//! HTTP/1.1 heads for the relay, as pure functions: which requests it takes (everything else
//! is handed to hyper), the request head as sent upstream, the framing of the upstream's
//! answer, and the gateway's own answers as bytes.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{Method, Response};

use crate::circuit::OpenGuard;
use crate::proxy::guard::{retry_after, LOCAL_REPLY_HEADERS};
use crate::proxy::upstream::HOP_BY_HOP;
use crate::proxy::Body;

/// Longest request or response head the relay reads; a longer one goes to hyper (431).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in a head the relay takes.
pub const MAX_HEADERS: usize = 64;
/// Largest request body the relay buffers; a larger one is streamed by hyper.
pub const MAX_BODY: usize = 64 * 1024;

/// Hop-by-hop headers: the same list the hyper stack strips.
fn hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_str()))
}

/// A `content-length` value: digits only (no sign, no list), else `None`.
fn content_length(value: &[u8]) -> Option<u64> {
    let v = std::str::from_utf8(value).ok()?.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// What the start of a client's buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// Something the relay does not take (HTTP/1.0, chunked or large bodies, `Expect`,
    /// upgrades, bad syntax, the webhook path…): hyper serves the connection from here on.
    Handoff,
    /// A request the relay takes.
    Request(RequestHead),
}

/// A request the relay takes: where its parts are in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// The method.
    pub method: Method,
    /// Byte range of the path (without the query) in the buffer.
    pub path: (usize, usize),
    /// Length of the head, including the blank line.
    pub head_len: usize,
    /// `content-length` (0 when absent).
    pub body_len: usize,
    /// The client asked to close after this answer.
    pub close: bool,
}

/// Parses a request head at the start of `buf`. On [`Parsed::Request`], `upstream` holds the
/// head to send upstream: same method, target and headers, but for hop-by-hop headers and
/// `host`, which becomes `authority`. `handoff_path` says which paths go to hyper.
pub fn parse_request(
    buf: &[u8],
    authority: &str,
    upstream: &mut Vec<u8>,
    handoff_path: impl Fn(&str) -> bool,
) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Parsed::Partial,
        // Too long, too many headers or malformed: hyper gives the precise answer.
        _ => return Parsed::Handoff,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Handoff;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Handoff;
    };
    if !target.starts_with('/') || method == Method::CONNECT {
        return Parsed::Handoff;
    }
    let path = target.split('?').next().unwrap_or(target);
    if handoff_path(path) {
        return Parsed::Handoff;
    }
    let mut body_len: Option<usize> = None;
    let mut close = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            match (content_length(h.value), body_len) {
                (Some(n), None) if n <= MAX_BODY as u64 => body_len = Some(n as usize),
                _ => return Parsed::Handoff, // invalid, repeated or large
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                    // Names other headers as hop-by-hop (or asks for an upgrade).
                    return Parsed::Handoff;
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Parsed::Handoff;
        }
    }

    upstream.clear();
    upstream.extend_from_slice(method.as_str().as_bytes());
    upstream.push(b' ');
    upstream.extend_from_slice(target.as_bytes());
    upstream.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    upstream.extend_from_slice(authority.as_bytes());
    upstream.extend_from_slice(b"\r\n");
    for h in req.headers.iter() {
        if hop_by_hop(h.name) || h.name.eq_ignore_ascii_case("host") {
            continue;
        }
        push_header(upstream, h.name.as_bytes(), h.value);
    }
    upstream.extend_from_slice(b"\r\n");

    let start = path.as_ptr() as usize - buf.as_ptr() as usize;
    Parsed::Request(RequestHead {
        method,
        path: (start, start + path.len()),
        head_len,
        body_len: body_len.unwrap_or(0),
        close,
    })
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How the upstream's answer body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304, or `content-length: 0`).
    Empty,
    /// `content-length`.
    Length(u64),
    /// `transfer-encoding: chunked`, relayed as is.
    Chunked,
    /// Read until the upstream closes.
    Close,
}

/// A parsed upstream answer head.
#[derive(Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Length of the head in the buffer.
    pub head_len: usize,
    /// How the body ends.
    pub framing: Framing,
    /// The upstream connection cannot be reused afterwards.
    pub close: bool,
}

/// Why an upstream answer cannot be relayed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadResponse {
    /// Syntax error in the head.
    #[error("malformed response head: {0}")]
    Malformed(String),
    /// Head over [`MAX_HEAD`].
    #[error("response head longer than {MAX_HEAD} bytes")]
    TooLong,
    /// Framing headers that contradict each other.
    #[error("ambiguous response framing")]
    Framing,
    /// `101 Switching Protocols` to a request that asked for no upgrade.
    #[error("unexpected protocol switch")]
    Upgrade,
}

/// Parses the upstream's answer head at the start of `buf` (interim 1xx answers are skipped:
/// their length is added to `head_len` and they are not relayed). `Ok(None)`: read more.
/// On success, `client` holds the head to send to the client: status line and headers but for
/// hop-by-hop ones (`transfer-encoding` is kept when chunked), plus `connection: close` when
/// `close_client`.
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    close_client: bool,
    client: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, BadResponse> {
    let mut skipped = 0;
    loop {
        let rest = &buf[skipped..];
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Ok(None),
            Ok(httparse::Status::Partial) => return Err(BadResponse::TooLong),
            Err(e) => return Err(BadResponse::Malformed(e.to_string())),
        };
        let status = resp.code.unwrap_or(0);
        if status == 101 {
            return Err(BadResponse::Upgrade);
        }
        if (100..200).contains(&status) {
            skipped += n;
            continue;
        }
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut close = resp.version != Some(1);
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                match (content_length(h.value), length) {
                    (Some(n), None) => length = Some(n),
                    (Some(n), Some(m)) if n == m => {}
                    _ => return Err(BadResponse::Framing),
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // Only a final `chunked` frames the body (RFC 9112 §6.3).
                let last = h.value.rsplit(|b| *b == b',').next().unwrap_or(b"");
                if !last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Err(BadResponse::Framing);
                }
                chunked = true;
            } else if h.name.eq_ignore_ascii_case("connection")
                && h.value
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            {
                close = true;
            }
        }
        if chunked && length.is_some() {
            return Err(BadResponse::Framing);
        }
        let framing = if head_request || status == 204 || status == 304 || length == Some(0) {
            Framing::Empty
        } else if chunked {
            Framing::Chunked
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            close = true;
            Framing::Close
        };

        client.clear();
        client.extend_from_slice(b"HTTP/1.1 ");
        client.extend_from_slice(itoa3(status).as_slice());
        client.push(b' ');
        client.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
        client.extend_from_slice(b"\r\n");
        for h in resp.headers.iter() {
            if hop_by_hop(h.name) && !(chunked && h.name.eq_ignore_ascii_case("transfer-encoding"))
            {
                continue;
            }
            push_header(client, h.name.as_bytes(), h.value);
        }
        if close_client || framing == Framing::Close {
            client.extend_from_slice(b"connection: close\r\n");
        }
        client.extend_from_slice(b"\r\n");
        return Ok(Some(ResponseHead {
            status,
            head_len: skipped + n,
            framing,
            close,
        }));
    }
}

fn itoa3(n: u16) -> [u8; 3] {
    let n = n.min(999);
    [
        b'0' + (n / 100) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]
}

/// Walks a chunked body as it arrives, to find its end (and, when asked, its data).
#[derive(Debug, Default)]
pub struct Chunks {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailer,
    /// The body is complete.
    Done,
}

impl Chunks {
    /// Consumes what it can of `buf`; returns the bytes consumed. Data bytes are appended to
    /// `data` when given. Call again with more bytes until [`Chunks::done`].
    pub fn advance(
        &mut self,
        buf: &[u8],
        mut data: Option<&mut Vec<u8>>,
    ) -> Result<usize, BadResponse> {
        let mut at = 0;
        loop {
            let rest = &buf[at..];
            match self.state {
                ChunkState::Done => return Ok(at),
                ChunkState::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((n, 0))) => {
                        at += n;
                        self.state = ChunkState::Trailer;
                    }
                    Ok(httparse::Status::Complete((n, size))) => {
                        at += n;
                        self.state = ChunkState::Data(size);
                    }
                    Ok(httparse::Status::Partial) => return Ok(at),
                    Err(_) => return Err(BadResponse::Malformed("bad chunk size".into())),
                },
                ChunkState::Data(left) => {
                    if rest.is_empty() {
                        return Ok(at);
                    }
                    let take = (left.min(rest.len() as u64)) as usize;
                    if let Some(d) = data.as_deref_mut() {
                        d.extend_from_slice(&rest[..take]);
                    }
                    at += take;
                    self.state = if take as u64 == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - take as u64)
                    };
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(at);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(BadResponse::Malformed(
                            "chunk data overruns its size".into(),
                        ));
                    }
                    at += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                        return Ok(at);
                    };
                    at += eol + 2;
                    if eol == 0 {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }

    /// The last chunk and the trailers have been seen.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// Encodes a gateway-made answer (local replies, gateway errors: buffered bodies) as HTTP/1.1.
pub fn encode_response(resp: &Response<Body>, close: bool, out: &mut Vec<u8>) {
    let body: &[u8] = match resp.body() {
        Body::Full { data: Some(d) } => d,
        _ => &[],
    };
    let status = resp.status();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in resp.headers() {
        push_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    finish(body, close, out);
}

/// Encodes an open circuit's local answer straight from its guard: the same status, headers
/// and body as [`crate::proxy::guard::local_reply`], without building a response.
pub fn encode_local(guard: &OpenGuard, close: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 403 Forbidden\r\n");
    for (name, value) in LOCAL_REPLY_HEADERS {
        push_header(out, name.as_bytes(), value.as_bytes());
    }
    if let Some(secs) = retry_after(guard) {
        out.extend_from_slice(b"retry-after: ");
        push_decimal(out, secs as u64);
        out.extend_from_slice(b"\r\n");
    }
    finish(&guard.body, close, out);
}

/// `content-length`, `date`, `connection: close` when closing, the blank line, the body.
fn finish(body: &[u8], close: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b"content-length: ");
    push_decimal(out, body.len() as u64);
    out.extend_from_slice(b"\r\ndate: ");
    with_date(|d| out.extend_from_slice(d));
    if close {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

thread_local! {
    // The `date` value, rendered once per second per thread (as hyper does).
    static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

fn with_date(f: impl FnOnce(&[u8])) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs || cached.1.is_empty() {
            *cached = (secs, httpdate::fmt_http_date(now));
        }
        f(cached.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &str) -> (Parsed, String) {
        let mut up = Vec::new();
        let p = parse_request(raw.as_bytes(), "up.example:9001", &mut up, |p| {
            p == "/webhook"
        });
        (p, String::from_utf8(up).unwrap())
    }

    #[test]
    fn takes_a_plain_send_and_rewrites_host_and_hop_by_hop() {
        let raw = "POST /v21.0/123/messages?x=1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer t\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        let (p, up) = req(raw);
        let Parsed::Request(h) = p else {
            panic!("{p:?}")
        };
        assert_eq!(h.method, Method::POST);
        assert_eq!(&raw[h.path.0..h.path.1], "/v21.0/123/messages");
        assert_eq!(h.body_len, 2);
        assert_eq!(h.head_len, raw.len() - 2);
        assert!(!h.close);
        assert_eq!(
            up,
            "POST /v21.0/123/messages?x=1 HTTP/1.1\r\nhost: up.example:9001\r\nAuthorization: Bearer t\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n"
        );
    }

    #[test]
    fn partial_then_complete() {
        assert_eq!(
            req("POST /v21.0/1/messages HTTP/1.1\r\nHost: x\r\n").0,
            Parsed::Partial
        );
        let (p, _) = req("GET /v21.0/1 HTTP/1.1\r\nConnection: close\r\n\r\n");
        let Parsed::Request(h) = p else { panic!() };
        assert!(h.close);
        assert_eq!(h.body_len, 0);
    }

    #[test]
    fn hands_off_what_it_does_not_take() {
        for raw in [
            "POST /a HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
            "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET /a HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            "POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "POST /a HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            "POST /a HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n",
            "POST /webhook HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "GET http://x/a HTTP/1.1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GARBAGE\r\n\r\n",
        ] {
            assert_eq!(req(raw).0, Parsed::Handoff, "{raw:?}");
        }
        let long = format!("GET /a HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(req(&long).0, Parsed::Handoff);
    }

    fn resp(
        raw: &str,
        head: bool,
        close: bool,
    ) -> (Result<Option<ResponseHead>, BadResponse>, String) {
        let mut out = Vec::new();
        let r = parse_response(raw.as_bytes(), head, close, &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_framing() {
        let (r, out) = resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nhello", false, false);
        let h = r.unwrap().unwrap();
        assert_eq!(
            (h.status, h.framing, h.close),
            (200, Framing::Length(5), false)
        );
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");

        let (r, out) = resp(
            "HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            false,
            true,
        );
        let h = r.unwrap().unwrap();
        assert_eq!((h.framing, h.close), (Framing::Chunked, true));
        assert_eq!(
            out,
            "HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\nconnection: close\r\n\r\n"
        );

        let h = resp("HTTP/1.1 200 OK\r\n\r\n", false, false)
            .0
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.close), (Framing::Close, true));
        let h = resp("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true, false)
            .0
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        let h = resp("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false, false)
            .0
            .unwrap()
            .unwrap();
        assert!(h.close);

        let raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let h = resp(raw, false, false).0.unwrap().unwrap();
        assert_eq!(
            (h.status, h.head_len, h.framing),
            (204, raw.len(), Framing::Empty)
        );

        assert_eq!(
            resp("HTTP/1.1 200 OK\r\nContent-Le", false, false).0,
            Ok(None)
        );
        assert_eq!(
            resp(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false,
                false
            )
            .0,
            Err(BadResponse::Framing)
        );
        assert_eq!(
            resp(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                false
            )
            .0,
            Err(BadResponse::Framing)
        );
        assert_eq!(
            resp("HTTP/1.1 101 Switching\r\n\r\n", false, false).0,
            Err(BadResponse::Upgrade)
        );
        assert!(matches!(
            resp("NOPE\r\n\r\n", false, false).0,
            Err(BadResponse::Malformed(_))
        ));
    }

    #[test]
    fn chunks_in_pieces() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 0..body.len() {
            let mut c = Chunks::default();
            let mut data = Vec::new();
            let mut buf = body[..split].to_vec();
            let n = c.advance(&buf, Some(&mut data)).unwrap();
            buf.drain(..n);
            buf.extend_from_slice(&body[split..]);
            let n = c.advance(&buf, Some(&mut data)).unwrap();
            assert_eq!(n, buf.len(), "split {split}");
            assert!(c.done());
            assert_eq!(data, b"hello world");
        }
        let mut c = Chunks::default();
        assert!(c.advance(b"3\r\nabcdef", None).is_err());
        assert!(Chunks::default().advance(b"zz\r\n", None).is_err());
    }

    #[test]
    fn local_answer_bytes_match_the_hyper_path() {
        let guard = OpenGuard {
            scope: crate::circuit::Scope::AllSends,
            until_unix: Some(i64::MAX / 2),
            body: bytes::Bytes::from_static(b"{\"error\":{}}"),
        };
        let mut direct = Vec::new();
        encode_local(&guard, false, &mut direct);
        let mut via_response = Vec::new();
        encode_response(
            &crate::proxy::guard::local_reply(&guard),
            false,
            &mut via_response,
        );
        assert_eq!(
            String::from_utf8(direct).unwrap(),
            String::from_utf8(via_response).unwrap()
        );
        let mut n = Vec::new();
        for v in [0u64, 7, 10, 1234567890123] {
            n.clear();
            push_decimal(&mut n, v);
            assert_eq!(n, v.to_string().as_bytes());
        }
    }

    #[test]
    fn encodes_local_answers() {
        let mut resp = Response::new(Body::full(&b"{}"[..]));
        *resp.status_mut() = http::StatusCode::FORBIDDEN;
        resp.headers_mut()
            .insert("x-wa-breaker", http::HeaderValue::from_static("open"));
        let mut out = Vec::new();
        encode_response(&resp, true, &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.starts_with(
                "HTTP/1.1 403 Forbidden\r\nx-wa-breaker: open\r\ncontent-length: 2\r\ndate: "
            ),
            "{s}"
        );
        assert!(s.ends_with(" GMT\r\nconnection: close\r\n\r\n{}"), "{s}");
    }
}
