//! Request heads: which requests the relay takes, and the head as sent upstream.

use http::Method;

use super::{encode, MAX_BODY, MAX_HEAD, MAX_HEADERS};
use crate::policy::framing::content_length;
use crate::policy::hop::HopByHop;

/// What the start of a client's buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// Something the relay does not take (HTTP/1.0, chunked or large bodies, `Expect`,
    /// upgrades, absolute targets, bad syntax…): hyper serves the connection from here on.
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
    /// Byte range of the whole target (path and query) in the buffer.
    pub target: (usize, usize),
    /// Length of the head, including the blank line.
    pub head_len: usize,
    /// `content-length` (0 when absent).
    pub body_len: usize,
    /// The client asked to close after this answer.
    pub close: bool,
}

/// A header field the relay forwards: byte ranges of its name and value in the buffer
/// (as the client wrote them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Byte range of the name.
    pub name: (usize, usize),
    /// Byte range of the value.
    pub value: (usize, usize),
}

/// Parses a request head at the start of `buf`. On [`Parsed::Request`], `forward` holds
/// the fields to send upstream, in order: all but hop-by-hop ones ([`crate::policy::hop`])
/// and `host`. Nothing is written yet — a request the gateway answers itself needs no
/// upstream head; [`write_upstream`] (HTTP/1.1) or the relay's HTTP/2 request (which
/// reads the fields in place) build it when the request is forwarded.
pub fn parse_head(buf: &[u8], forward: &mut Vec<Field>) -> Parsed {
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
    if !target.starts_with('/') || !plain_target(target) || method == Method::CONNECT {
        return Parsed::Handoff;
    }
    let mut body_len: Option<usize> = None;
    let mut hop = HopByHop::default();
    let mut hosts = 0;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            match (content_length(h.value), body_len) {
                (Some(n), None) if n <= MAX_BODY as u64 => body_len = Some(n as usize),
                _ => return Parsed::Handoff, // invalid, repeated or large
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            hop.connection(h.value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Parsed::Handoff;
        }
    }
    // A `Connection` header naming `content-length` would drop the body's framing from
    // the head sent upstream while the relay still sends the body: the upstream would read
    // it as a second request. hyper re-frames what it forwards, so it serves this one.
    if hop.upgrade() || !crate::policy::hop::host_ok(hosts) || hop.drops(b"content-length") {
        return Parsed::Handoff;
    }

    // httparse's slices point into `buf`: their offsets are the ranges.
    let at = |part: &[u8]| {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        (start, start + part.len())
    };
    forward.clear();
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if hop.drops(name) || name.eq_ignore_ascii_case(b"host") {
            continue;
        }
        forward.push(Field {
            name: at(name),
            value: at(h.value),
        });
    }

    let path = match target.bytes().position(|b| b == b'?') {
        Some(q) => &target[..q],
        None => target,
    };
    Parsed::Request(RequestHead {
        method,
        path: at(path.as_bytes()),
        target: at(target.as_bytes()),
        head_len,
        body_len: body_len.unwrap_or(0),
        close: hop.close(),
    })
}

/// Writes into `upstream` the head to send upstream over HTTP/1.1 for a request
/// [`parse_head`] took from `buf` (`head`, `forward`): the same method, target and
/// fields (names and values as the client wrote them), `host` = `authority` first.
pub fn write_upstream(
    buf: &[u8],
    head: &RequestHead,
    forward: &[Field],
    authority: &str,
    upstream: &mut Vec<u8>,
) {
    let part = |(a, b): (usize, usize)| &buf[a..b];
    upstream.clear();
    upstream.extend_from_slice(head.method.as_str().as_bytes());
    upstream.push(b' ');
    upstream.extend_from_slice(part(head.target));
    upstream.extend_from_slice(b" HTTP/1.1\r\n");
    encode::header(upstream, b"host", authority.as_bytes());
    for f in forward {
        encode::header(upstream, part(f.name), part(f.value));
    }
    upstream.extend_from_slice(b"\r\n");
}

/// [`parse_head`], then [`write_upstream`] when the request is taken: `upstream` holds
/// the head to send upstream. What the relay does for a request it forwards over
/// HTTP/1.1, in one call (tests, fuzzing, benchmarks).
pub fn parse_request(buf: &[u8], authority: &str, upstream: &mut Vec<u8>) -> Parsed {
    let mut forward = Vec::new();
    let parsed = parse_head(buf, &mut forward);
    if let Parsed::Request(head) = &parsed {
        write_upstream(buf, head, &forward, authority, upstream);
    }
    parsed
}

/// True when every byte of an origin-form target is one RFC 3986 allows there unescaped
/// (unreserved, `%`, sub-delims, `:`, `@`, `/`, `?`). Anything else — a `#` fragment, which
/// hyper strips before its guard looks and an upstream may ignore, quotes, braces, spaces,
/// non-ASCII — goes to hyper, so the guard and the upstream never read different paths.
fn plain_target(target: &str) -> bool {
    target.bytes().all(|b| PLAIN[usize::from(b)])
}

/// [`plain_target`]'s bytes as a table: one load per byte (a `contains` on the list ran a
/// memchr for every `/` and `.` of every path; issue 24).
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-._~%!$&'()*+,;=:@/?";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
};

/// The value of header `name` (lowercase) in a complete request head already accepted by
/// [`parse_request`]; `None` when absent or repeated. Off the common path: used only for
/// discovery's caller-token opt-in.
pub fn header_value<'b>(head: &'b [u8], name: &[u8]) -> Option<&'b [u8]> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(head).ok()?;
    let mut found = req
        .headers
        .iter()
        .filter(|h| h.name.as_bytes().eq_ignore_ascii_case(name))
        .map(|h| h.value);
    match (found.next(), found.next()) {
        (Some(v), None) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &str) -> (Parsed, String) {
        let mut up = Vec::new();
        let p = parse_request(raw.as_bytes(), "up.example:9001", &mut up);
        (p, String::from_utf8(up).unwrap())
    }

    #[test]
    fn takes_a_plain_send_and_rewrites_host_and_hop_by_hop() {
        let raw = "POST /v21.0/123/messages?x=1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer t\r\nConnection: keep-alive, X-Trace\r\nKeep-Alive: timeout=5\r\nX-Trace: 1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
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
    fn the_plain_table_is_the_rfc_3986_list() {
        for b in 0..=255u8 {
            let listed = b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:@/?".contains(&b);
            assert_eq!(PLAIN[usize::from(b)], listed, "byte {b:#x}");
        }
    }

    #[test]
    fn partial_then_complete() {
        assert_eq!(
            req("POST /v21.0/1/messages HTTP/1.1\r\nHost: x\r\n").0,
            Parsed::Partial
        );
        let (p, _) = req("GET /v21.0/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let Parsed::Request(h) = p else { panic!() };
        assert!(h.close);
        assert_eq!(h.body_len, 0);
    }

    #[test]
    fn every_split_point_of_a_head_is_partial_until_complete() {
        let raw = "POST /v21.0/1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
        let head = raw.len() - 2;
        for n in 0..head {
            assert_eq!(req(&raw[..n]).0, Parsed::Partial, "{n}");
        }
        for n in head..=raw.len() {
            assert!(matches!(req(&raw[..n]).0, Parsed::Request(_)), "{n}");
        }
    }

    #[test]
    fn hands_off_what_it_does_not_take() {
        for raw in [
            "POST /a HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
            "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /a HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET /a HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            "GET /a HTTP/1.1\r\nConnection: upgrade\r\n\r\n",
            "POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "POST /a HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            "POST /a HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n",
            "GET http://x/a HTTP/1.1\r\n\r\n",
            "POST /v21.0/1/messages#x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            "GET /a{b} HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /a HTTP/1.1\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "POST /a HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 1\r\n\r\nx",
            "POST /a HTTP/1.1\r\nHost: a\r\nConnection: close, Content-Length\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GARBAGE\r\n\r\n",
        ] {
            assert_eq!(req(raw).0, Parsed::Handoff, "{raw:?}");
        }
        let long = format!("GET /a HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(req(&long).0, Parsed::Handoff);
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: 1\r\n"))
            .collect();
        assert_eq!(
            req(&format!("GET /a HTTP/1.1\r\n{many}\r\n")).0,
            Parsed::Handoff
        );
    }
}
