//! The admin listener: `/healthz`, `/readyz`, `/metrics`, the on-call console page (`/`) and
//! the bearer-protected `/admin` API.
//!
//! - [`circuits`]: `/admin/circuits…` (list, one, by phone number, open, close);
//! - [`accounts`]: `/admin/accounts…` (the phone → WABA directory);
//! - [`warnings`]: `/admin/warnings…` (warnings recorded per WABA, with their evidence);
//! - [`holds`]: `/admin/holds…` (marketing cooldowns and pair holds),
//!   `/admin/templates/…/category` and `/admin/pace/{phone_number_id}`;
//! - [`console`]: the page and its embedded assets, with their security headers.

mod accounts;
mod circuits;
mod console;
mod holds;
mod warnings;

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::circuit::Table;
use crate::common::Body;
use crate::config::Secret;
use crate::metrics::METRICS;

const MAX_BODY: usize = 64 * 1024;

/// What `/readyz` answers: 503 `loading state` until state is loaded, 200 `ready`, then 503
/// `draining` once a shutdown began (the admin listener outlives the main one).
#[derive(Debug, Default)]
pub struct Readiness(AtomicU8);

impl Readiness {
    // 0 (the default) is "loading".
    const READY: u8 = 1;
    const DRAINING: u8 = 2;

    /// State is loaded and the listeners serve.
    pub fn set_ready(&self) {
        self.0.store(Self::READY, Ordering::Release);
    }

    /// A shutdown began: the main listener drains.
    pub fn set_draining(&self) {
        self.0.store(Self::DRAINING, Ordering::Release);
    }

    fn answer(&self) -> (StatusCode, &'static str) {
        match self.0.load(Ordering::Acquire) {
            Self::READY => (StatusCode::OK, "ready\n"),
            Self::DRAINING => (StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "loading state\n"),
        }
    }
}

/// Shared state of the admin listener.
pub struct Admin {
    table: Arc<Table>,
    token: Option<Secret>,
    ready: Arc<Readiness>,
    configured: HashSet<String>,
    /// When the configuration was loaded: the `updated_at` of configured mappings.
    started: DateTime<Utc>,
    /// The policy, for the numbers' pace on this replica (`/admin/pace`).
    policy: Option<Arc<crate::policy::Policy>>,
}

impl Admin {
    /// `ready` says what `/readyz` answers; `configured` holds the `[[accounts]]` WABA ids.
    pub fn new(
        table: Arc<Table>,
        token: Option<Secret>,
        ready: Arc<Readiness>,
        configured: HashSet<String>,
    ) -> Admin {
        Admin {
            table,
            token,
            ready,
            configured,
            started: Utc::now(),
            policy: None,
        }
    }

    /// With the policy whose pacer `/admin/pace` reads.
    pub fn with_policy(mut self, policy: Arc<crate::policy::Policy>) -> Admin {
        self.policy = Some(policy);
        self
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => {
                let (status, body) = self.ready.answer();
                text(status, body)
            }
            (&Method::GET, "/metrics") => {
                let mut r = text(StatusCode::OK, &METRICS.render());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            (_, p) if p == "/admin" || p.starts_with("/admin/") => self.admin(req, p).await,
            (m, p) => console::serve(m, p)
                .unwrap_or_else(|| json_error(StatusCode::NOT_FOUND, "not found")),
        }
    }

    async fn admin(&self, req: Request<Incoming>, path: &str) -> Response<Body> {
        let Some(token) = &self.token else {
            return json_error(
                StatusCode::NOT_FOUND,
                "the admin API is disabled: set admin_token to enable it",
            );
        };
        if !authorized(req.headers().get(header::AUTHORIZATION), token) {
            let mut r = json_error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"wa-breaker\""),
            );
            return r;
        }
        let segs: Vec<&str> = path
            .trim_start_matches("/admin")
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        match (req.method().clone(), segs.as_slice()) {
            (Method::GET, ["circuits"]) => self.list_circuits(req.uri().query()),
            (Method::GET, ["circuits", id]) => self.get_circuit(id),
            (Method::POST, ["circuits", id, op @ ("open" | "close")]) => {
                self.operate_request(id, op, req.into_body()).await
            }
            (Method::GET, ["warnings"]) => self.list_warnings(req.uri().query()),
            (Method::GET, ["warnings", id]) => self.waba_warnings(id),
            (Method::GET, ["holds"]) => self.list_holds(),
            (Method::GET, ["pace", id]) => self.pace(id),
            (Method::DELETE, ["holds", kind @ ("marketing" | "pair"), id, to]) => {
                self.clear_hold(kind, id, to).await
            }
            (Method::POST, ["templates", waba, name, language, "category"]) => {
                let body = match read_json(req.into_body()).await {
                    Ok(b) => b,
                    Err(resp) => return resp,
                };
                self.set_category(waba, name, language, body).await
            }
            (_, ["warnings"])
            | (_, ["warnings", _])
            | (_, ["holds"])
            | (_, ["holds", _, _, _])
            | (_, ["pace", _])
            | (_, ["templates", _, _, _, "category"]) => {
                json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            (Method::GET, ["accounts"]) => self.list_accounts(),
            (Method::PUT, ["accounts", "phones", id]) => {
                let body = match read_json(req.into_body()).await {
                    Ok(b) => b,
                    Err(resp) => return resp,
                };
                self.put_account(id, body).await
            }
            (Method::DELETE, ["accounts", "phones", id]) => self.delete_account(id).await,
            (_, ["accounts"]) | (_, ["accounts", "phones", _]) => {
                json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            (_, ["circuits"]) | (_, ["circuits", _]) | (_, ["circuits", _, "open" | "close"]) => {
                json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => json_error(StatusCode::NOT_FOUND, "not found"),
        }
    }
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes (empty → `T::default()`). Malformed JSON
/// is "invalid JSON"; well-formed JSON of the wrong shape (an unknown field, a wrong type)
/// names what is wrong instead.
async fn read_json<T: serde::de::DeserializeOwned + Default>(
    body: Incoming,
) -> Result<T, Response<Body>> {
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return Err(json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large or broken",
            ))
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        let msg = match e.classify() {
            serde_json::error::Category::Data => format!("bad request body: {e}"),
            _ => format!("invalid JSON body: {e}"),
        };
        json_error(StatusCode::BAD_REQUEST, &msg)
    })
}

/// Bearer check, in constant time (see [`Secret::matches`]).
fn authorized(header: Option<&HeaderValue>, token: &Secret) -> bool {
    let Some(given) = header
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
    else {
        return false;
    };
    token.matches(given.trim())
}

fn text(status: StatusCode, s: &str) -> Response<Body> {
    let mut r = Response::new(Body::full(s.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<Body> {
    match serde_json::to_vec_pretty(v) {
        Ok(b) => {
            let mut r = Response::new(Body::full(b));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "serialization failed\n"),
    }
}

fn json_error(status: StatusCode, msg: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": msg }))
}

/// The admin listener's hyper service.
#[derive(Clone)]
pub struct AdminService(pub Arc<Admin>);

impl hyper::service::Service<Request<Incoming>> for AdminService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let admin = self.0.clone();
        Box::pin(async move { Ok(admin.handle(req).await) })
    }
}
