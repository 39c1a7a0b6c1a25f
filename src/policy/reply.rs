//! The gateway's own answers, as one value that both engines render: to an
//! `http::Response` (the hyper engine) and to HTTP/1.1 bytes (the relay). The local answer
//! for an open circuit and the 502/504 for a failed forward are built here and nowhere else.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use chrono::SecondsFormat;

use crate::circuit::{Circuit, Evidence, OpenGuard, State};
use crate::common::Body;
use crate::graph::envelope;
use crate::relay::h1::encode;
use crate::upstream::ForwardError;

/// The header that marks an answer the gateway made: `open` (a circuit answered locally)
/// or `upstream-error` (the forward failed).
pub const MARKER: &str = "x-wa-breaker";

/// Gateway-specific Graph error code in 502/504 answers (Graph's "temporarily unavailable",
/// which Cloud API clients already treat as retryable); the subcode says which.
pub const GATEWAY_CODE: i64 = 2;

/// Prefix of the `fbtrace_id` of an answer the gateway made itself (no Meta trace exists):
/// typed clients that require the field parse it, and support can tell it from Meta's.
pub const GATEWAY_TRACE_PREFIX: &str = "wa-breaker-";

/// The `fbtrace_id` a local answer carries: the tripping answer's (what Meta support asks
/// for), else a gateway-made id for this opening, marked with [`GATEWAY_TRACE_PREFIX`].
pub fn local_trace_id(c: &Circuit) -> String {
    let opening = c
        .history
        .iter()
        .rev()
        .find(|t| !t.note && t.to == State::Open);
    if let Some(Evidence::Send {
        fbtrace_id: Some(id),
        ..
    }) = opening.and_then(|t| t.evidence.as_ref())
    {
        // Meta's ids are short base64-ish tokens; anything else is not echoed.
        if !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'/' | b'+' | b'='))
        {
            return id.clone();
        }
    }
    let opened = c.opened_at.unwrap_or(c.updated_at).timestamp();
    format!("{GATEWAY_TRACE_PREFIX}local-{opened:x}-{:x}", c.version)
}

/// The body of an open circuit's local answer: Meta's envelope with the code that opened
/// it, `error_data.details` saying the gateway answered (and since when, until when, why),
/// and `fbtrace_id` from [`local_trace_id`].
pub fn local_body(c: &Circuit) -> Bytes {
    let code = c.code.unwrap_or(crate::graph::codes::POLICY_BLOCK);
    let since = c
        .opened_at
        .unwrap_or(c.updated_at)
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    let until = c
        .until
        .map(|u| format!(" until {}", u.to_rfc3339_opts(SecondsFormat::Secs, true)))
        .unwrap_or_default();
    let whose = match (&c.template, &c.phone_number_id) {
        (Some(t), _) => format!(
            "template {} ({}) of WhatsApp Business Account {}",
            t.name, t.language, c.waba_id
        ),
        (None, Some(p)) => format!("phone number {p}"),
        (None, None) => format!("WhatsApp Business Account {}", c.waba_id),
    };
    let trace = local_trace_id(c);
    let trace_note = if trace.starts_with(GATEWAY_TRACE_PREFIX) {
        " fbtrace_id is the gateway's own (no Meta trace)."
    } else {
        " fbtrace_id is that of Meta's answer that opened it."
    };
    let details = format!(
        "wa-breaker answered locally; the request was not sent to Meta. The circuit for {whose} has been open since {since}{until} (source: {}).{trace_note}",
        c.source.as_str()
    );
    envelope::build(
        code,
        None,
        "OAuthException",
        crate::graph::codes::title(code),
        &details,
        &trace,
    )
}

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
            body: ReplyBody::Borrowed(&guard.body),
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
    /// never request data.
    pub fn bad_request(why: &'static str) -> Reply<'static> {
        Reply {
            status: StatusCode::BAD_REQUEST,
            marker: "bad-request",
            retry_after: None,
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

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        self.body.bytes()
    }

    /// As a response for the hyper engine (hyper adds `content-length` and `date`).
    pub fn to_response(&self) -> Response<Body> {
        let body = match &self.body {
            ReplyBody::Borrowed(b) => (*b).clone(),
            ReplyBody::Owned(b) => b.clone(),
        };
        let mut resp = Response::new(Body::full(body));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(MARKER, HeaderValue::from_static(self.marker));
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp.extensions_mut().insert(crate::proxy::LocalReply);
        resp
    }

    /// As HTTP/1.1 bytes for the relay, appended to `out`: the same status, headers and
    /// body as [`Reply::to_response`] plus `content-length`, `date` and, when `close`,
    /// `connection: close`.
    pub fn write_h1(&self, close: bool, out: &mut Vec<u8>) {
        encode::status_line(out, self.status);
        encode::header(out, b"content-type", b"application/json");
        encode::header(out, MARKER.as_bytes(), self.marker.as_bytes());
        if let Some(secs) = self.retry_after {
            encode::header_decimal(out, b"retry-after", secs as u64);
        }
        encode::finish(out, self.body.bytes(), close);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::Scope;

    /// Parses what `write_h1` wrote: status, headers (lowercase, without content-length,
    /// date and connection, which hyper adds itself), body.
    fn parse_h1(raw: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(n) = r.parse(raw).unwrap() else {
            panic!("partial")
        };
        let hs = r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .filter(|(n, _)| !matches!(n.as_str(), "content-length" | "date" | "connection"))
            .collect();
        (r.code.unwrap(), hs, raw[n..].to_vec())
    }

    fn from_response(r: &Response<Body>) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let hs = r
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        let body = match r.body() {
            Body::Full { data } => data.clone().unwrap_or_default().to_vec(),
            _ => panic!("buffered"),
        };
        (r.status().as_u16(), hs, body)
    }

    fn same_both_ways(reply: &Reply<'_>) {
        let mut raw = Vec::new();
        reply.write_h1(false, &mut raw);
        assert_eq!(parse_h1(&raw), from_response(&reply.to_response()));
        let text = String::from_utf8(raw.clone()).unwrap();
        assert!(text.contains(&format!("\r\ncontent-length: {}\r\n", reply.body().len())));
        assert!(!text.contains("connection: close"));
        raw.clear();
        reply.write_h1(true, &mut raw);
        assert!(String::from_utf8(raw)
            .unwrap()
            .contains("\r\nconnection: close\r\n"));
    }

    #[test]
    fn local_answers_render_the_same_on_both_engines() {
        let guard = OpenGuard {
            scope: Scope::AllSends,
            until_unix: Some(1_000_000 + 3600),
            body: Bytes::from_static(b"{\"error\":{\"code\":368}}"),
            seq: 1,
        };
        let r = Reply::open_at(&guard, || 1_000_000);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        same_both_ways(&r);
        let resp = r.to_response();
        assert_eq!(resp.headers()["retry-after"], "3600");
        assert_eq!(resp.headers()["x-wa-breaker"], "open");
        // The end has passed: at least 1.
        assert_eq!(Reply::open_at(&guard, || 2_000_000).retry_after, Some(1));
        let no_end = OpenGuard {
            until_unix: None,
            ..guard
        };
        let r = Reply::open_at(&no_end, || panic!("no clock without an end"));
        same_both_ways(&r);
        assert!(r.to_response().headers().get("retry-after").is_none());
    }

    fn circuit_with(evidence: Option<Evidence>) -> Circuit {
        let now = chrono::Utc::now();
        let mut c = Circuit::new("102290129340398", now);
        c.state = State::Open;
        c.code = Some(131031);
        c.opened_at = Some(now);
        c.version = 3;
        c.history.push(crate::circuit::Transition {
            at: now,
            to: State::Open,
            source: crate::circuit::Source::Send,
            note: false,
            reason: "locked".into(),
            evidence,
            clamped_from: None,
        });
        c
    }

    #[test]
    fn local_body_carries_the_tripping_trace_or_a_marked_one() {
        let send = |id: Option<&str>| Evidence::Send {
            code: 131031,
            error_subcode: None,
            message: "locked".into(),
            fbtrace_id: id.map(str::to_owned),
            phone_number_id: None,
        };
        let e =
            envelope::parse(&local_body(&circuit_with(Some(send(Some("AbCdEfGhIjK")))))).unwrap();
        assert_eq!(e.code, 131031);
        assert_eq!(e.fbtrace_id.as_deref(), Some("AbCdEfGhIjK"));
        assert!(e
            .details
            .unwrap()
            .starts_with("wa-breaker answered locally"));
        // No trace from Meta (webhook, operator) or one not fit to echo: the gateway's own.
        for ev in [
            None,
            Some(send(None)),
            Some(send(Some("bad\"id\r\n"))),
            Some(Evidence::Admin { reason: "x".into() }),
        ] {
            let e = envelope::parse(&local_body(&circuit_with(ev))).unwrap();
            let id = e.fbtrace_id.unwrap();
            assert!(id.starts_with(GATEWAY_TRACE_PREFIX), "{id}");
            assert!(e.details.unwrap().contains("gateway's own"));
        }
    }

    #[test]
    fn forward_failures_render_the_same_on_both_engines() {
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
            same_both_ways(&r);
            let env = envelope::parse(r.body()).unwrap();
            assert_eq!(env.code, GATEWAY_CODE);
            assert_eq!(env.error_subcode, Some(status as i64));
            assert_eq!(env.kind, "WaBreakerException");
            assert!(env.fbtrace_id.unwrap().starts_with(GATEWAY_TRACE_PREFIX));
            assert_eq!(r.to_response().headers()[MARKER], "upstream-error");
        }
    }
}
