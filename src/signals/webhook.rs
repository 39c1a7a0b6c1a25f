//! Meta's webhook receiver (placeholder until the signals work lands).

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use std::sync::Arc;

use crate::circuit::Table;
use crate::config::Config;
use crate::proxy::HttpClient;
use crate::proxy::Body;

/// The webhook receiver on the main listener.
pub struct Webhook {
    path: String,
}

impl Webhook {
    /// A receiver for `cfg.webhook`.
    pub fn new(cfg: &Config, _table: Arc<Table>, _client: HttpClient) -> Webhook {
        Webhook {
            path: cfg.webhook.path.clone(),
        }
    }

    /// True for requests to the webhook path.
    pub fn matches(&self, path: &str) -> bool {
        path == self.path
    }

    /// Handles one webhook request.
    pub async fn handle(&self, _req: Request<Incoming>) -> Response<Body> {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    }
}
