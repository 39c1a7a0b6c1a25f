//! The relay's HTTP/1.1 codec, pure and allocation-free once its buffers are warm: which
//! requests the relay takes ([`request`]), the framing of the upstream's answer
//! ([`response`]), the answer's body as it arrives ([`body`]), and bytes out ([`encode`]).
//! The framing rules both engines share are in [`crate::policy::framing`].

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

impl From<crate::policy::framing::Refused> for BadResponse {
    fn from(r: crate::policy::framing::Refused) -> BadResponse {
        use crate::policy::framing::Refused;
        match r {
            Refused::Upgrade => BadResponse::Upgrade,
            Refused::Status => BadResponse::Malformed("status code out of range"),
            Refused::Framing => BadResponse::Framing,
        }
    }
}
