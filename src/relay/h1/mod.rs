//! The relay's HTTP/1.1 codec, pure and allocation-free once its buffers are warm: which
//! requests the relay takes ([`request`]), the framing of the upstream's answer
//! ([`response`]), the answer's body as it arrives ([`body`]), and bytes out ([`encode`]).
//! The framing rules both directions share are here.

pub mod body;
pub mod encode;
pub mod request;
pub mod response;

/// Longest request or answer head the relay reads (a longer request goes to hyper: 431).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header fields in a head the relay takes.
pub const MAX_HEADERS: usize = 64;
/// Largest request body the relay buffers; a larger one is streamed by hyper.
pub const MAX_BODY: usize = 64 * 1024;

/// How a message body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304, or `content-length: 0`).
    Empty,
    /// `content-length`.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// Read until the upstream closes (answers only).
    Close,
}

/// Why an upstream answer cannot be relayed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadResponse {
    /// Syntax error in the head.
    #[error("malformed response head: {0}")]
    Malformed(&'static str),
    /// Head over [`MAX_HEAD`].
    #[error("response head longer than {MAX_HEAD} bytes")]
    TooLong,
    /// Framing headers that contradict each other.
    #[error("ambiguous response framing")]
    Framing,
    /// `101 Switching Protocols` to a request that asked for no upgrade.
    #[error("unexpected protocol switch")]
    Upgrade,
    /// A chunked body that breaks its own framing.
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
    /// The upstream closed before the body's end.
    #[error("upstream closed the connection mid-body")]
    Truncated,
}

/// A `content-length` value: digits only (no sign, no list), else `None` (RFC 9110 §8.6).
pub fn content_length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The final status codes the gateway relays: 200–599 (RFC 9110 §15 defines no others). A
/// `101 Switching Protocols` is refused too: the gateway never forwards an upgrade, so a
/// switch is an answer to something it did not send. Both engines check with this.
pub fn final_status(status: u16) -> Result<(), BadResponse> {
    match status {
        101 => Err(BadResponse::Upgrade),
        200..=599 => Ok(()),
        _ => Err(BadResponse::Malformed("status code out of range")),
    }
}

/// An answer that declares both a `content-length` and a `transfer-encoding` is refused by
/// both engines (RFC 9112 §6.3: a recipient may treat it as an error; relaying it lets the
/// two ends of the gateway disagree on where it ends — a response-smuggling shape).
pub fn ambiguous_framing(content_length: bool, transfer_encoding: bool) -> bool {
    content_length && transfer_encoding
}

/// True when the final coding of a `transfer-encoding` value is `chunked` — the only case
/// in which it frames the body (RFC 9112 §6.3).
pub fn chunked_last(value: &[u8]) -> bool {
    value
        .rsplit(|b| *b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_codings() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b" 42 "), Some(42));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1,1",
            b"0x10",
            b"1 2",
            b"99999999999999999999",
        ] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
        assert!(chunked_last(b"chunked"));
        assert!(chunked_last(b"gzip, Chunked "));
        assert!(!chunked_last(b"chunked, gzip"));
        assert!(!chunked_last(b""));
    }
}
