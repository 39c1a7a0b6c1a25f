//! Errors of the forward path and their one conversion to the Cloud API envelope.

use http::{header, HeaderValue, Response, StatusCode};

use super::body::Body;
use super::guard::LocalReply;
use crate::graph::envelope;

/// Gateway-specific Graph error code in 502/504 answers (Graph's "temporarily unavailable",
/// which Cloud API clients already treat as retryable); the subcode says which.
pub const GATEWAY_CODE: i64 = 2;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// TCP connect or TLS handshake failed.
    #[error("upstream unreachable: {0}")]
    Connect(String),
    /// No response headers within `request_timeout`.
    #[error("upstream did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The upstream closed or sent something that is not HTTP.
    #[error("upstream answer broken: {0}")]
    Broken(String),
}

impl ProxyError {
    /// The HTTP status the app sees.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// Builds the Cloud-API-shaped answer. The message never carries request data.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let (title, details) = match &self {
            ProxyError::Connect(_) => (
                "wa-breaker: upstream unreachable",
                "wa-breaker could not connect to the Cloud API; the request was not delivered. Retry later.",
            ),
            ProxyError::Timeout(_) => (
                "wa-breaker: upstream timeout",
                "The Cloud API did not answer in time; the request may or may not have been delivered.",
            ),
            ProxyError::Broken(_) => (
                "wa-breaker: bad upstream answer",
                "The Cloud API's answer was broken; the request may or may not have been delivered.",
            ),
        };
        let body = envelope::build(
            GATEWAY_CODE,
            Some(status.as_u16() as i64),
            "WaBreakerException",
            title,
            details,
        );
        let mut resp = Response::new(Body::full(body));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert("x-wa-breaker", HeaderValue::from_static("upstream-error"));
        resp.extensions_mut().insert(LocalReply);
        resp
    }
}
