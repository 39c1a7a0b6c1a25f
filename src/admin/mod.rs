//! The admin listener: `/healthz`, `/readyz`, `/metrics`, and the bearer-protected `/admin` API.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use crate::circuit::{
    Action, Change, Circuit, Evidence, Mapping, MappingSource, Scope, Source, Table,
    PHONE_KEY_PREFIX,
};
use crate::config::{is_graph_id, Secret};
use crate::metrics::METRICS;
use crate::proxy::Body;

const MAX_BODY: usize = 64 * 1024;
const DURABLE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Shared state of the admin listener.
pub struct Admin {
    table: Arc<Table>,
    token: Option<Secret>,
    ready: Arc<AtomicBool>,
    configured: HashSet<String>,
    /// When the configuration was loaded: the `updated_at` of configured mappings.
    started: DateTime<Utc>,
}

/// One phone number's mapping as `GET /admin/accounts` lists it.
#[derive(serde::Serialize)]
struct AccountView<'a> {
    phone_number_id: &'a str,
    waba_id: Option<&'a str>,
    source: MappingSource,
    updated_at: DateTime<Utc>,
}

impl<'a> From<&'a Mapping> for AccountView<'a> {
    fn from(m: &'a Mapping) -> Self {
        AccountView {
            phone_number_id: &m.phone_number_id,
            waba_id: m.waba_id.as_deref(),
            source: m.source,
            updated_at: m.updated_at,
        }
    }
}

/// Body of `PUT /admin/accounts/phones/{id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutAccount {
    waba_id: Option<String>,
}

impl Admin {
    /// `ready` flips to true once state is loaded.
    pub fn new(
        table: Arc<Table>,
        token: Option<Secret>,
        ready: Arc<AtomicBool>,
        configured: HashSet<String>,
    ) -> Admin {
        Admin {
            table,
            token,
            ready,
            configured,
            started: Utc::now(),
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => {
                if self.ready.load(Ordering::Acquire) {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "loading state\n")
                }
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
            _ => json_error(StatusCode::NOT_FOUND, "not found"),
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
            (Method::GET, ["circuits"]) => match ListQuery::parse(req.uri().query()) {
                Ok(q) => json(StatusCode::OK, &q.apply(self.table.list())),
                Err(msg) => json_error(StatusCode::BAD_REQUEST, &msg),
            },
            (Method::GET, ["circuits", id]) => match self.view(id) {
                Some(c) => json(StatusCode::OK, &c),
                None => json_error(StatusCode::NOT_FOUND, "no circuit for that WABA"),
            },
            (Method::POST, ["circuits", id, op @ ("open" | "close")]) => {
                // A WABA id, or `phone:{id}` for a phone number's own circuit.
                let phone = id.strip_prefix(PHONE_KEY_PREFIX);
                if !is_graph_id(phone.unwrap_or(id)) {
                    return json_error(
                        StatusCode::BAD_REQUEST,
                        "the id must be a numeric WABA id or phone:{phone_number_id}",
                    );
                }
                let body = match read_json::<OpRequest>(req.into_body()).await {
                    Ok(b) => b,
                    Err(resp) => return resp,
                };
                self.operate(id, op, body).await
            }
            (Method::GET, ["accounts"]) => {
                let all = self.table.directory().list(self.started);
                let views: Vec<AccountView<'_>> = all.iter().map(AccountView::from).collect();
                json(StatusCode::OK, &views)
            }
            (Method::PUT, ["accounts", "phones", id]) => {
                let body = match read_json::<PutAccount>(req.into_body()).await {
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

    /// Adds or moves one phone number (an operator's entry wins over the configuration and
    /// over anything learned).
    async fn put_account(&self, phone: &str, body: PutAccount) -> Response<Body> {
        if !is_graph_id(phone) {
            return json_error(
                StatusCode::BAD_REQUEST,
                "phone_number_id must be a numeric id",
            );
        }
        let Some(waba) = body.waba_id.filter(|w| is_graph_id(w)) else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "body must be {\"waba_id\": \"<numeric id>\"}",
            );
        };
        let m = Mapping {
            phone_number_id: phone.to_string(),
            waba_id: Some(waba.clone()),
            source: MappingSource::Admin,
            updated_at: Utc::now(),
            origin: String::new(),
        };
        tracing::info!(phone_number_id = phone, waba_id = %waba, "admin request: map phone number");
        let seq = self.table.learn(m);
        if seq.is_some() {
            METRICS.mappings_learned.with_label_values(&["admin"]).inc();
        }
        let held = self
            .table
            .directory()
            .record(phone)
            .filter(|r| r.waba_id.as_deref() == Some(waba.as_str()));
        match held {
            Some(r) => self.answer_durable(seq, &r).await,
            None => json_error(StatusCode::CONFLICT, "the mapping did not take effect"),
        }
    }

    /// Removes a learned or operator-set mapping; a configured one is the config file's.
    async fn delete_account(&self, phone: &str) -> Response<Body> {
        if !is_graph_id(phone) {
            return json_error(
                StatusCode::BAD_REQUEST,
                "phone_number_id must be a numeric id",
            );
        }
        let dir = self.table.directory();
        let held = dir.record(phone).filter(|r| r.waba_id.is_some());
        let Some(held) = held else {
            return if dir.is_configured(phone) {
                json_error(
                    StatusCode::CONFLICT,
                    "this phone number is configured under [[accounts]]: change the configuration file (or PUT an operator mapping, which wins over it)",
                )
            } else {
                json_error(StatusCode::NOT_FOUND, "no mapping for that phone number")
            };
        };
        tracing::info!(phone_number_id = phone, waba_id = ?held.waba_id, "admin request: remove phone number mapping");
        let gone = Mapping {
            waba_id: None,
            source: MappingSource::Admin,
            updated_at: Utc::now().max(held.updated_at),
            ..held
        };
        let seq = self.table.learn(gone.clone());
        match dir.record(phone) {
            Some(r) if r.waba_id.is_none() => self.answer_durable(seq, &r).await,
            _ => json_error(StatusCode::CONFLICT, "the removal did not take effect"),
        }
    }

    /// 200 with the record once durable, 202 (with `durable: false`) when not yet stored.
    async fn answer_durable(&self, seq: Option<u64>, m: &Mapping) -> Response<Body> {
        let durable = match seq {
            Some(seq) => self.table.wait_durable(seq, DURABLE_WAIT).await,
            None => true,
        };
        let mut body = serde_json::to_value(AccountView::from(m)).unwrap_or_default();
        if let Some(obj) = body.as_object_mut() {
            obj.insert("durable".into(), durable.into());
            if !durable {
                obj.insert(
                    "warning".into(),
                    "applied in memory but not yet stored: the state store is not committing (see wa_breaker_store_durable)".into(),
                );
            }
        }
        json(
            if durable {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            },
            &body,
        )
    }

    fn view(&self, id: &str) -> Option<Circuit> {
        self.table.get(id).or_else(|| {
            self.configured
                .contains(id)
                .then(|| Circuit::new(id, Utc::now()))
        })
    }

    async fn operate(&self, id: &str, op: &str, body: OpRequest) -> Response<Body> {
        let now = Utc::now();
        let reason = body.reason.unwrap_or_else(|| format!("{op} by operator"));
        if reason.len() > 1024 {
            return json_error(StatusCode::BAD_REQUEST, "reason is longer than 1024 bytes");
        }
        let action = if op == "open" {
            if let Some(u) = body.until {
                if u <= now {
                    return json_error(StatusCode::BAD_REQUEST, "until must be in the future");
                }
            }
            Action::Open {
                scope: body.scope.unwrap_or(Scope::AllSends),
                code: Some(body.code.unwrap_or(368)),
                until: body.until,
            }
        } else {
            Action::Close
        };
        tracing::info!(waba_id = id, op, "admin request");
        let want_open = op == "open";
        // A phone number's circuit keeps the WABA it was recorded with.
        let (waba_id, phone_number_id) = match id.strip_prefix(PHONE_KEY_PREFIX) {
            Some(p) => (
                self.table.get(id).map(|c| c.waba_id).unwrap_or_default(),
                Some(p.to_string()),
            ),
            None => (id.to_string(), None),
        };
        let applied = self.table.apply(Change {
            waba_id,
            phone_number_id,
            template: None,
            action,
            source: Source::Admin,
            at: now,
            reason: reason.clone(),
            evidence: Some(Evidence::Admin { reason }),
        });
        // An operator's change orders after everything the circuit holds, so it always takes
        // effect; say so only when the circuit is in the asked state.
        let after = self.view(id).unwrap_or_else(|| Circuit::new(id, now));
        if after.is_open() != want_open {
            tracing::error!(waba_id = id, op, "admin change did not take effect");
            return json_error(
                StatusCode::CONFLICT,
                &format!(
                    "the circuit is still {}: the change did not take effect",
                    if after.is_open() { "open" } else { "closed" }
                ),
            );
        }
        // 200 once the change is durable; 202 if it is applied but not yet stored.
        let durable = match applied {
            Some((_, seq)) => self.table.wait_durable(seq, DURABLE_WAIT).await,
            None => true,
        };
        let mut body = serde_json::to_value(&after).unwrap_or_default();
        if let Some(obj) = body.as_object_mut() {
            obj.insert("durable".into(), durable.into());
            if !durable {
                obj.insert(
                    "warning".into(),
                    "applied in memory but not yet stored: the state store is not committing (see wa_breaker_store_durable); it is retried, and a restart before then would forget this change".into(),
                );
            }
        }
        if durable {
            json(StatusCode::OK, &body)
        } else {
            tracing::warn!(waba_id = id, "admin change applied but not yet durable");
            json(StatusCode::ACCEPTED, &body)
        }
    }
}

/// `GET /admin/circuits` filters: `state=open|closed`, `limit=N` (at most [`MAX_LIMIT`]) and
/// `after=WABA_ID` (the list is sorted by WABA id as text: pass the last id of a page for the next).
#[derive(Debug, Default)]
struct ListQuery {
    state: Option<bool>,
    limit: Option<usize>,
    after: Option<String>,
}

/// Largest page of `GET /admin/circuits`.
const MAX_LIMIT: usize = 10_000;

impl ListQuery {
    fn parse(query: Option<&str>) -> Result<ListQuery, String> {
        let mut q = ListQuery::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*k {
                "state" => {
                    q.state = Some(match &*v {
                        "open" => true,
                        "closed" => false,
                        _ => return Err("state must be open or closed".into()),
                    })
                }
                "limit" => {
                    q.limit = Some(
                        v.parse::<usize>()
                            .ok()
                            .filter(|n| (1..=MAX_LIMIT).contains(n))
                            .ok_or(format!("limit must be between 1 and {MAX_LIMIT}"))?,
                    )
                }
                "after" if is_graph_id(&v) => q.after = Some(v.into_owned()),
                "after" => return Err("after must be a numeric WABA id".into()),
                other => return Err(format!("unknown parameter {other:?} (state, limit, after)")),
            }
        }
        Ok(q)
    }

    /// The page of `all` (sorted by WABA id).
    fn apply(&self, all: Vec<Circuit>) -> Vec<Circuit> {
        all.into_iter()
            .filter(|c| self.state.is_none_or(|open| c.is_open() == open))
            .filter(|c| self.after.as_deref().is_none_or(|a| c.waba_id.as_str() > a))
            .take(self.limit.unwrap_or(usize::MAX))
            .collect()
    }
}

/// Body of `POST /admin/circuits/{id}/open|close` (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpRequest {
    reason: Option<String>,
    until: Option<DateTime<Utc>>,
    scope: Option<Scope>,
    code: Option<i64>,
}

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
    serde_json::from_slice(&bytes)
        .map_err(|e| json_error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")))
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
