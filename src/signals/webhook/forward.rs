//! The relay of every verified delivery to the app's own webhook (`webhook.forward_url`):
//! the same body bytes and Meta's signature headers, so the app's own check keeps working.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, Request, Uri};
use http_body_util::{BodyExt, Limited};

use crate::common::Body;
use crate::common::BoxError;
use crate::upstream::HttpClient;

/// Headers relayed besides the body.
const RELAYED: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    HeaderName::from_static(super::SIGNATURE_HEADER),
    HeaderName::from_static("x-hub-signature"),
    header::USER_AGENT,
];

/// Most of the app's answer read (so the connection can be reused).
const MAX_ANSWER: usize = 64 * 1024;

/// Why a relay failed (Meta is then answered non-2xx and delivers again).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The request could not be built.
    #[error("cannot build the relay request")]
    Request(#[source] http::Error),
    /// The app could not be reached or its answer broke.
    #[error("forward_url unreachable")]
    Unreachable(#[source] BoxError),
    /// The app answered non-2xx.
    #[error("forward_url answered HTTP {0}")]
    Status(u16),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Relays deliveries to one URL.
pub struct Forwarder {
    uri: Uri,
    timeout: Duration,
    client: HttpClient,
}

impl Forwarder {
    /// A relay to `uri` with `timeout`.
    pub fn new(uri: Uri, timeout: Duration, client: HttpClient) -> Forwarder {
        Forwarder {
            uri,
            timeout,
            client,
        }
    }

    /// Relays one delivery; `Ok` when the app answered 2xx in time.
    pub async fn forward(&self, headers: &HeaderMap, body: Bytes) -> Result<(), ForwardError> {
        let mut req = Request::post(self.uri.clone());
        if let Some(h) = req.headers_mut() {
            for name in RELAYED.iter() {
                for v in headers.get_all(name) {
                    h.append(name.clone(), v.clone());
                }
            }
        }
        let req = req.body(Body::full(body)).map_err(ForwardError::Request)?;
        let send = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| ForwardError::Unreachable(Box::new(e)))?;
            let status = resp.status();
            let _ = Limited::new(resp.into_body(), MAX_ANSWER).collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(ForwardError::Status(status.as_u16()))
            }
        };
        match tokio::time::timeout(self.timeout, send).await {
            Ok(r) => r,
            Err(_) => Err(ForwardError::Timeout(self.timeout)),
        }
    }
}
