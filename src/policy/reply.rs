//! The gateway's own answers, as one value each engine renders once: `proxy::render` to an
//! `http::Response`, `relay::render` to HTTP/1.1 bytes. The local answer for an open circuit
//! (its body prebuilt with the circuit's guard, [`crate::circuit::OpenGuard`]), the 502/504
//! for a failed forward, the 400 and the 408 are chosen here and nowhere else.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::StatusCode;

use super::ForwardError;
use crate::circuit::OpenGuard;
use crate::graph::envelope::{self, GATEWAY_TRACE_PREFIX};

/// The header that marks an answer the gateway made: `open` (a circuit answered locally),
/// `shaped` (the shaping answered in Meta's place) or `upstream-error` (the forward failed).
pub const MARKER: &str = "x-wa-breaker";

/// Gateway-specific Graph error code in 502/504 answers (Graph's "temporarily unavailable",
/// which Cloud API clients already treat as retryable); the subcode says which.
pub const GATEWAY_CODE: i64 = 2;

/// A gateway-made trace id for an answer with no circuit behind it (a failed forward).
fn request_trace_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{GATEWAY_TRACE_PREFIX}{nanos:x}")
}

/// A gateway-made answer.
#[derive(Debug)]
pub struct Reply<'a> {
    status: StatusCode,
    marker: &'static str,
    retry_after: Option<i64>,
    close: bool,
    body: ReplyBody<'a>,
}

#[derive(Debug)]
enum ReplyBody<'a> {
    /// The open circuit's prebuilt envelope (the hot path: no copy, no reference count).
    Borrowed(&'a Bytes),
    Owned(Bytes),
}

impl ReplyBody<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            ReplyBody::Borrowed(b) => b,
            ReplyBody::Owned(b) => b,
        }
    }
}

impl<'a> Reply<'a> {
    /// An open circuit's local answer: 403, the envelope with the code that opened it,
    /// `x-wa-breaker: open`, and `retry-after` (seconds, at least 1) when the end is known.
    pub fn open(guard: &'a OpenGuard) -> Reply<'a> {
        // The clock is read only when there is an end to count down to.
        Reply::open_at(guard, || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        })
    }

    /// [`Reply::open`] with the clock given (Unix seconds).
    pub fn open_at(guard: &'a OpenGuard, now_unix: impl FnOnce() -> i64) -> Reply<'a> {
        Reply {
            status: StatusCode::FORBIDDEN,
            marker: "open",
            retry_after: guard.until_unix.map(|u| (u - now_unix()).max(1)),
            close: false,
            body: ReplyBody::Borrowed(&guard.body),
        }
    }

    /// The shaping's local answer in Meta's place: 400, Meta's envelope with Meta's `code`
    /// and `message`, `details` saying that the gateway answered and why, `retry-after`
    /// (seconds, at least 1) and `x-wa-breaker: shaped`.
    pub fn shaped(
        code: i64,
        message: &str,
        details: &str,
        retry_after: Duration,
    ) -> Reply<'static> {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        Reply {
            status: StatusCode::BAD_REQUEST,
            marker: "shaped",
            retry_after: Some(i64::try_from(secs).unwrap_or(i64::MAX).max(1)),
            close: false,
            body: ReplyBody::Owned(envelope::build(
                code,
                None,
                "OAuthException",
                message,
                details,
                &request_trace_id(),
            )),
        }
    }

    /// The answer for a failed forward: 502 (unreachable, broken answer) or 504 (timeout)
    /// in the Cloud API envelope, `"code": 2`, `"error_subcode"` 502 / 504,
    /// `x-wa-breaker: upstream-error`. The text never carries request data.
    pub fn forward_failed(e: &ForwardError) -> Reply<'static> {
        match e {
            ForwardError::ClientBody(_) => {
                return Reply::bad_request("The request body broke off or was malformed.")
            }
            ForwardError::ClientTimeout => return Reply::request_timeout(),
            _ => {}
        }
        let (status, title, details) = match e {
            ForwardError::Connect(_) => (
                StatusCode::BAD_GATEWAY,
                "wa-breaker: upstream unreachable",
                "wa-breaker could not connect to the Cloud API; the request was not delivered. Retry later.",
            ),
            ForwardError::Timeout(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                "wa-breaker: upstream timeout",
                "The Cloud API did not answer in time; the request may or may not have been delivered.",
            ),
            ForwardError::Broken(_)
            | ForwardError::ClientBody(_)
            | ForwardError::ClientTimeout => (
                StatusCode::BAD_GATEWAY,
                "wa-breaker: bad upstream answer",
                "The Cloud API's answer was broken; the request may or may not have been delivered.",
            ),
        };
        Reply {
            status,
            marker: "upstream-error",
            retry_after: None,
            close: false,
            body: ReplyBody::Owned(envelope::build(
                GATEWAY_CODE,
                Some(status.as_u16() as i64),
                "WaBreakerException",
                title,
                details,
                &request_trace_id(),
            )),
        }
    }

    /// The answer to a request the gateway refuses as malformed (400, `"code": 100`,
    /// Graph's invalid-parameter code, `x-wa-breaker: bad-request`); `why` is a fixed text,
    /// never request data. The connection closes after it (its framing is not trusted).
    pub fn bad_request(why: &'static str) -> Reply<'static> {
        Reply {
            status: StatusCode::BAD_REQUEST,
            marker: "bad-request",
            retry_after: None,
            close: true,
            body: ReplyBody::Owned(envelope::build(
                100,
                None,
                "WaBreakerException",
                "wa-breaker: bad request",
                why,
                &request_trace_id(),
            )),
        }
    }

    /// The answer to a client whose request head or body missed its deadline
    /// (`client_header_timeout`, `client_body_timeout`): 408 in the envelope, `"code": 2`
    /// with `"error_subcode": 408` (nothing was delivered; a retry is safe),
    /// `x-wa-breaker: client-timeout`. Both engines close the connection after it.
    pub fn request_timeout() -> Reply<'static> {
        Reply {
            status: StatusCode::REQUEST_TIMEOUT,
            marker: "client-timeout",
            retry_after: None,
            close: true,
            body: ReplyBody::Owned(envelope::build(
                GATEWAY_CODE,
                Some(408),
                "WaBreakerException",
                "wa-breaker: request timeout",
                "The request did not arrive in time (client_header_timeout or client_body_timeout); it was not delivered.",
                &request_trace_id(),
            )),
        }
    }

    /// The answer to a request that found no upstream permit within the queue's bounds
    /// (`upstream_queue_max`, `upstream_queue_timeout`): 503 in the envelope, `"code": 2`
    /// with `"error_subcode": 503` (nothing was delivered; a retry is safe),
    /// `retry-after: 1`, `x-wa-breaker: overloaded`. The connection stays open.
    pub fn overloaded() -> Reply<'static> {
        Reply {
            status: StatusCode::SERVICE_UNAVAILABLE,
            marker: "overloaded",
            retry_after: Some(1),
            close: false,
            body: ReplyBody::Owned(envelope::build(
                GATEWAY_CODE,
                Some(503),
                "WaBreakerException",
                "wa-breaker: overloaded",
                "Too many requests are waiting for the Cloud API (upstream_queue_max or upstream_queue_timeout); this one was not delivered. Retry later.",
                &request_trace_id(),
            )),
        }
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `x-wa-breaker` value: `open`, `shaped`, `upstream-error`, `bad-request`,
    /// `client-timeout`, `overloaded`.
    pub fn marker(&self) -> &'static str {
        self.marker
    }

    /// `retry-after` in seconds (at least 1), when the end of the block is known.
    pub fn retry_after(&self) -> Option<i64> {
        self.retry_after
    }

    /// Whether the connection closes after this answer (`connection: close`).
    pub fn close(&self) -> bool {
        self.close
    }

    /// The body (a Cloud API error envelope, `content-type: application/json`).
    pub fn body(&self) -> &[u8] {
        self.body.bytes()
    }

    /// The body as shared bytes (no copy of an open circuit's prebuilt body).
    pub fn body_bytes(&self) -> Bytes {
        match &self.body {
            ReplyBody::Borrowed(b) => (*b).clone(),
            ReplyBody::Owned(b) => b.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::Scope;

    #[test]
    fn local_answers_count_down_to_the_end() {
        let guard = OpenGuard {
            scope: Scope::AllSends,
            until_unix: Some(1_000_000 + 3600),
            body: Bytes::from_static(b"{\"error\":{\"code\":368}}"),
            seq: 1,
        };
        let r = Reply::open_at(&guard, || 1_000_000);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.retry_after(), Some(3600));
        assert_eq!(r.marker(), "open");
        assert!(!r.close());
        // The end has passed: at least 1.
        assert_eq!(Reply::open_at(&guard, || 2_000_000).retry_after, Some(1));
        let no_end = OpenGuard {
            until_unix: None,
            ..guard
        };
        let r = Reply::open_at(&no_end, || panic!("no clock without an end"));
        assert_eq!(r.retry_after(), None);
    }

    #[test]
    fn shaped_answers_are_metas_envelope_with_retry_after() {
        let r = Reply::shaped(
            130429,
            "(#130429) Rate limit hit",
            "wa-breaker answered",
            Duration::from_millis(1200),
        );
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!((r.marker(), r.retry_after()), ("shaped", Some(2)));
        let env = envelope::parse(r.body()).unwrap();
        assert_eq!((env.code, env.kind.as_str()), (130429, "OAuthException"));
        let r = Reply::shaped(130429, "m", "d", Duration::from_millis(10));
        assert_eq!(r.retry_after(), Some(1));
    }

    #[test]
    fn forward_failures_are_the_gateway_envelope() {
        for (e, status) in [
            (ForwardError::Connect("refused".into()), 502),
            (
                ForwardError::Timeout(std::time::Duration::from_secs(1)),
                504,
            ),
            (ForwardError::Broken("eof".into()), 502),
        ] {
            let r = Reply::forward_failed(&e);
            assert_eq!(r.status().as_u16(), status);
            let env = envelope::parse(r.body()).unwrap();
            assert_eq!(env.code, GATEWAY_CODE);
            assert_eq!(env.error_subcode, Some(status as i64));
            assert_eq!(env.kind, "WaBreakerException");
            assert!(env.fbtrace_id.unwrap().starts_with(GATEWAY_TRACE_PREFIX));
            assert_eq!(r.marker(), "upstream-error");
            assert!(!r.close());
        }
        let r = Reply::forward_failed(&ForwardError::ClientTimeout);
        assert_eq!(
            (r.status().as_u16(), r.marker(), r.close()),
            (408, "client-timeout", true)
        );
        let r = Reply::forward_failed(&ForwardError::ClientBody("x".into()));
        assert_eq!(
            (r.status().as_u16(), r.marker(), r.close()),
            (400, "bad-request", true)
        );
    }
}
