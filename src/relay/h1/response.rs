//! Answer heads: the framing of the upstream's answer, and the head as sent to the client.

use http::StatusCode;

use super::{encode, BadResponse, Framing, MAX_HEAD, MAX_HEADERS};
use crate::policy::framing::{self, chunked_last, content_length, MAX_CODINGS};
use crate::policy::hop::HopByHop;

/// A parsed upstream answer head.
#[derive(Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Length of the head in the buffer (interim 1xx answers included).
    pub head_len: usize,
    /// How the body ends.
    pub framing: Framing,
    /// The upstream connection cannot be reused afterwards.
    pub close: bool,
    /// Byte ranges of the `content-encoding` values in the buffer.
    codings: [(usize, usize); MAX_CODINGS],
    n_codings: usize,
    /// Byte range of the first `retry-after` value in the buffer.
    retry_after: Option<(usize, usize)>,
}

impl ResponseHead {
    /// The `content-encoding` values, read from `buf` (the buffer the head was parsed from).
    /// More lines than the relay remembers read as one unsupported coding: such a body is
    /// passed on unjudged.
    pub fn content_encoding<'b>(
        &self,
        buf: &'b [u8],
    ) -> impl Iterator<Item = &'b [u8]> + use<'b, '_> {
        let too_many: &'b [u8] = b"too-many-codings";
        let overflow = self.n_codings > MAX_CODINGS;
        self.codings[..self.n_codings.min(MAX_CODINGS)]
            .iter()
            .map(move |(a, b)| &buf[*a..*b])
            .chain(overflow.then_some(too_many))
    }

    /// The first `retry-after` value, read from `buf` (the buffer the head was parsed
    /// from), for [`crate::policy::Policy::classify`].
    pub fn retry_after<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        self.retry_after.map(|(a, b)| &buf[a..b])
    }

    /// The declared body length, for [`crate::policy::Policy::inspect`].
    pub fn content_length(&self) -> Option<u64> {
        match self.framing {
            Framing::Empty => Some(0),
            Framing::Length(n) => Some(n),
            Framing::Chunked | Framing::Close => None,
        }
    }
}

/// Parses the upstream's answer head at the start of `buf` (interim 1xx answers are
/// skipped: their length is added to `head_len` and they are not relayed). `Ok(None)`: read
/// more. On success `client` holds the head for the client: the status line and header
/// fields but for hop-by-hop ones ([`crate::policy::hop`]; `transfer-encoding` is kept when
/// the body is relayed chunked), plus `connection: close` when `close_client` or when the
/// body ends with the connection.
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
            Err(httparse::Error::TooManyHeaders) => {
                return Err(BadResponse::Malformed("too many header fields"))
            }
            Err(_) => return Err(BadResponse::Malformed("not an HTTP/1 answer head")),
        };
        let status = resp.code.unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            skipped += n;
            continue;
        }
        let Ok(code) = StatusCode::from_u16(status) else {
            return Err(BadResponse::Malformed("status code out of range"));
        };
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut close = resp.version != Some(1);
        let mut hop = HopByHop::default();
        let mut codings = [(0, 0); MAX_CODINGS];
        let mut n_codings = 0;
        let mut retry_after = None;
        for h in resp.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                match (content_length(h.value), length) {
                    (Some(n), None) => length = Some(n),
                    (Some(n), Some(m)) if n == m => {}
                    _ => return Err(BadResponse::Framing),
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                // HTTP/1.0 has no transfer codings (RFC 9112 §6.1): an HTTP/1.0 answer
                // that declares one is faulty, and hyper refuses it too.
                if !chunked_last(h.value) || resp.version != Some(1) {
                    return Err(BadResponse::Framing);
                }
                chunked = true;
            } else if name.eq_ignore_ascii_case(b"connection") {
                hop.connection(h.value);
            } else if name.eq_ignore_ascii_case(b"content-encoding") {
                if n_codings < MAX_CODINGS {
                    let at = skipped + (h.value.as_ptr() as usize - rest.as_ptr() as usize);
                    codings[n_codings] = (at, at + h.value.len());
                }
                n_codings += 1;
            } else if name.eq_ignore_ascii_case(b"retry-after") && retry_after.is_none() {
                let at = skipped + (h.value.as_ptr() as usize - rest.as_ptr() as usize);
                retry_after = Some((at, at + h.value.len()));
            }
        }
        close |= hop.close();
        framing::answer_head(status, length.is_some(), chunked)?;
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
        encode::status_line_with(client, code, resp.reason.unwrap_or(""));
        let mut written = 0;
        for h in resp.headers.iter() {
            let name = h.name.as_bytes();
            // The relay sends the body's bytes unchanged, so the field that frames them
            // crosses with them even when `Connection` names it (dropped, the client would
            // read the body until the close, and the next answer as part of it).
            let framing_kept = (framing == Framing::Chunked
                && name.eq_ignore_ascii_case(b"transfer-encoding"))
                || name.eq_ignore_ascii_case(b"content-length");
            if hop.drops(name) && !framing_kept {
                continue;
            }
            encode::header(client, name, h.value);
            written += 1;
        }
        let add_close = close_client || framing == Framing::Close;
        // The head the client gets must fit the same limit (found by fuzzing: 64 fields
        // plus `connection: close` made a head the relay itself would refuse).
        if written + usize::from(add_close) > MAX_HEADERS {
            return Err(BadResponse::Malformed("too many header fields"));
        }
        if add_close {
            client.extend_from_slice(b"connection: close\r\n");
        }
        client.extend_from_slice(b"\r\n");
        return Ok(Some(ResponseHead {
            status,
            head_len: skipped + n,
            framing,
            close,
            codings,
            n_codings,
            retry_after,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(
        raw: &str,
        head: bool,
        close: bool,
    ) -> (Result<Option<ResponseHead>, BadResponse>, String) {
        let mut out = Vec::new();
        let r = parse_response(raw.as_bytes(), head, close, &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    fn head(raw: &str) -> ResponseHead {
        resp(raw, false, false).0.unwrap().unwrap()
    }

    #[test]
    fn framing_and_the_client_head() {
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

        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.close), (Framing::Close, true));
        let h = resp("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true, false)
            .0
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        assert!(head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").close);

        let raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let h = head(raw);
        assert_eq!(
            (h.status, h.head_len, h.framing),
            (204, raw.len(), Framing::Empty)
        );
    }

    #[test]
    fn the_client_head_fits_the_header_limit() {
        let mut head = String::from("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n");
        for i in 1..MAX_HEADERS {
            head.push_str(&format!("x-{i}: v\r\n"));
        }
        head.push_str("\r\n");
        let mut client = Vec::new();
        // 64 fields kept alive: relayed as they are.
        assert!(matches!(
            parse_response(head.as_bytes(), false, false, &mut client),
            Ok(Some(_))
        ));
        let mut again = Vec::new();
        assert!(matches!(
            parse_response(&client, false, false, &mut again),
            Ok(Some(_))
        ));
        // With `connection: close` added it would be 65: refused, not relayed unparseable.
        assert!(matches!(
            parse_response(head.as_bytes(), false, true, &mut client),
            Err(BadResponse::Malformed(_))
        ));
    }

    #[test]
    fn connection_named_fields_are_dropped() {
        let (_, out) = resp(
            "HTTP/1.1 200 OK\r\nConnection: x-foo\r\nX-Foo: bar\r\nX-Keep: 1\r\nContent-Length: 0\r\n\r\n",
            false,
            false,
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nX-Keep: 1\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn the_framing_field_crosses_even_when_connection_names_it() {
        let (r, out) = resp(
            "HTTP/1.1 200 OK\r\nConnection: content-length, x-foo\r\nX-Foo: 1\r\nContent-Length: 2\r\n\r\n{}",
            false,
            false,
        );
        assert_eq!(r.unwrap().unwrap().framing, Framing::Length(2));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
        let (r, out) = resp(
            "HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 0\r\n\r\n",
            false,
            false,
        );
        assert_eq!(r.unwrap().unwrap().framing, Framing::Empty);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    }

    #[test]
    fn content_encodings_are_found() {
        let raw = "HTTP/1.1 403 Forbidden\r\nContent-Encoding: gzip\r\ncontent-encoding: br\r\nContent-Length: 1\r\n\r\nx";
        let h = head(raw);
        let got: Vec<&[u8]> = h.content_encoding(raw.as_bytes()).collect();
        assert_eq!(got, vec![&b"gzip"[..], b"br"]);
        let raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 403 Forbidden\r\nContent-Encoding: gzip\r\nContent-Length: 1\r\n\r\nx";
        let h = head(raw);
        assert_eq!(
            h.content_encoding(raw.as_bytes()).collect::<Vec<_>>(),
            vec![&b"gzip"[..]]
        );
        let many: String = (0..6).map(|_| "Content-Encoding: gzip\r\n").collect();
        let raw = format!("HTTP/1.1 403 Forbidden\r\n{many}Content-Length: 1\r\n\r\nx");
        let h = head(&raw);
        assert_eq!(h.content_encoding(raw.as_bytes()).count(), MAX_CODINGS + 1);
    }

    #[test]
    fn the_first_retry_after_is_found() {
        let raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad Request\r\nRetry-After: 5\r\nretry-after: 9\r\nContent-Length: 1\r\n\r\nx";
        let h = head(raw);
        assert_eq!(h.retry_after(raw.as_bytes()), Some(&b"5"[..]));
        let raw = "HTTP/1.1 400 Bad Request\r\nContent-Length: 1\r\n\r\nx";
        assert_eq!(head(raw).retry_after(raw.as_bytes()), None);
    }

    #[test]
    fn every_split_point_is_partial_until_complete() {
        let raw =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        let head_len = raw.len() - 2;
        for n in 0..head_len {
            assert_eq!(resp(&raw[..n], false, false).0, Ok(None), "{n}");
        }
        assert!(resp(&raw[..head_len], false, false).0.unwrap().is_some());
    }

    #[test]
    fn broken_heads_are_errors() {
        for (raw, want) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                BadResponse::Framing,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                BadResponse::Framing,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                BadResponse::Framing,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                BadResponse::Framing,
            ),
            (
                "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                BadResponse::Framing,
            ),
            ("HTTP/1.1 101 Switching\r\n\r\n", BadResponse::Upgrade),
            (
                "HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n",
                BadResponse::Malformed("status code out of range"),
            ),
            (
                "HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n",
                BadResponse::Malformed("status code out of range"),
            ),
        ] {
            assert_eq!(resp(raw, false, false).0, Err(want), "{raw:?}");
        }
        assert!(matches!(
            resp("NOPE\r\n\r\n", false, false).0,
            Err(BadResponse::Malformed(_))
        ));
        let long = format!("HTTP/1.1 200 OK\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(resp(&long, false, false).0, Err(BadResponse::TooLong));
    }
}
