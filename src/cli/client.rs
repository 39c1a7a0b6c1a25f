//! The admin API over HTTP: one request, its answer, and what went wrong, with the
//! crate's own client stack ([`crate::upstream::http_client`]).

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::BodyExt;

use crate::common::Body;
use crate::config::Secret;
use crate::upstream::HttpClient;

/// Connect timeout to the admin listener.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Whole request, answer body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest answer read (a full circuit list of a big fleet is a few MB).
const MAX_ANSWER: usize = 256 * 1024 * 1024;

/// Why a request got no answer. The messages never carry the token.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP connect, TLS or the exchange failed.
    #[error("cannot reach the admin API at {url}: {cause}")]
    Unreachable {
        /// The admin base URL.
        url: String,
        /// What failed.
        cause: String,
    },
    /// No answer in time.
    #[error("the admin API at {url} did not answer within {after:?}")]
    Timeout {
        /// The admin base URL.
        url: String,
        /// How long it waited.
        after: Duration,
    },
    /// The TLS trust store could not be built.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// An answer: its status and body.
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body as sent.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The `error` text of a JSON error body, else the body as text.
    pub fn error_text(&self) -> String {
        match self.json().get("error").and_then(|e| e.as_str()) {
            Some(e) => e.to_string(),
            None => String::from_utf8_lossy(&self.body).trim().to_string(),
        }
    }
}

/// The admin API of one gateway.
pub struct AdminClient {
    base: String,
    token: Option<Secret>,
    http: HttpClient,
}

impl AdminClient {
    /// `base` is `http://host:port` (a trailing `/` is dropped).
    pub fn new(base: &str, token: Option<Secret>) -> Result<AdminClient, ClientError> {
        let trust = crate::tls::client_config(None)?;
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: crate::upstream::http_client(&trust, CONNECT_TIMEOUT),
        })
    }

    /// The base URL, for messages.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `method path` (with `Authorization: Bearer` when a token is set) and reads
    /// the whole answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, ClientError> {
        let unreachable = |cause: String| ClientError::Unreachable {
            url: self.base.clone(),
            cause,
        };
        let uri: Uri = format!("{}{}", self.base, path)
            .parse()
            .map_err(|e: http::uri::InvalidUri| unreachable(format!("not a URL: {e}")))?;
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = &self.token {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", t.expose()))
                .map_err(|_| unreachable("the token holds characters a header cannot".into()))?;
            v.set_sensitive(true);
            req = req.header(header::AUTHORIZATION, v);
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::full(b.to_string())),
            None => req.body(Body::empty()),
        }
        .map_err(|e| unreachable(e.to_string()))?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| unreachable(crate::common::error_chain(&e)))?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| unreachable(format!("answer broken: {e}")))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                url: self.base.clone(),
                after: REQUEST_TIMEOUT,
            })?
    }
}
