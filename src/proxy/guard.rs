//! Guard: answers in-scope requests of an open circuit locally, without touching the upstream.
//! It runs twice in the stack: before the upstream queue, and again right before forwarding,
//! so sends that were waiting for the upstream when a circuit tripped never leave.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{header, HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::body::{self, Body};
use super::route::Target;
use crate::circuit::{OpenGuard, Scope, Table};
use crate::config::Mode;
use crate::graph::route::Kind;
use crate::metrics::METRICS;

/// Marks a response the gateway made itself (the classifier skips it).
#[derive(Clone, Copy, Debug)]
pub struct LocalReply;

/// Remembers that a send's body was inspected: `true` for a template send.
#[derive(Clone, Copy, Debug)]
struct Template(bool);

/// See module docs.
#[derive(Clone)]
pub struct GuardLayer {
    table: Arc<Table>,
    mode: Mode,
    body_limit: usize,
}

impl GuardLayer {
    /// A guard over `table`; `body_limit` caps the body read to spot template sends.
    pub fn new(table: Arc<Table>, mode: Mode, body_limit: usize) -> Self {
        GuardLayer {
            table,
            mode,
            body_limit,
        }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Guard {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`GuardLayer`].
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    layer: GuardLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// The guard's future: a local answer, the inner call, or a body inspection first.
    #[project = GuardProj]
    pub enum ResponseFuture<F, E> {
        Local { response: Option<Response<Body>> },
        Inner { #[pin] fut: F },
        Inspect { fut: BoxFuture<Result<Response<Body>, E>> },
    }
}

impl<F, E> Future for ResponseFuture<F, E>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GuardProj::Local { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => panic!("guard future polled after completion"),
            },
            GuardProj::Inner { fut } => fut.poll(cx),
            GuardProj::Inspect { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<S> Service<Request<Body>> for Guard<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let guard = match self.open_guard_for(&req) {
            Some(g) => g,
            None => {
                return ResponseFuture::Inner {
                    fut: self.inner.call(req),
                }
            }
        };
        match (guard.scope, req.extensions().get::<Template>()) {
            (Scope::AllSends, _) | (Scope::BusinessInitiated, Some(Template(true))) => {
                ResponseFuture::Local {
                    response: Some(local_reply(&guard)),
                }
            }
            (Scope::BusinessInitiated, Some(Template(false))) => ResponseFuture::Inner {
                fut: self.inner.call(req),
            },
            (Scope::BusinessInitiated, None) => {
                // Only template sends are blocked: read the (small) send body to tell.
                let limit = self.layer.body_limit;
                let mut inner = self.inner.clone();
                std::mem::swap(&mut inner, &mut self.inner);
                ResponseFuture::Inspect {
                    fut: Box::pin(async move {
                        let (mut parts, body) = req.into_parts();
                        let body = match body::buffer(body, limit).await {
                            Ok(Ok(bytes)) => {
                                let template = is_template(&bytes);
                                parts.extensions.insert(Template(template));
                                if template {
                                    return Ok(local_reply(&guard));
                                }
                                Body::full(bytes)
                            }
                            // Too big to be a send we can judge: let Meta decide.
                            Ok(Err(body)) => body,
                            Err(e) => {
                                tracing::debug!(error = %e, "client body aborted");
                                return Ok(Response::builder()
                                    .status(StatusCode::BAD_REQUEST)
                                    .body(Body::empty())
                                    .unwrap_or_default());
                            }
                        };
                        inner.call(Request::from_parts(parts, body)).await
                    }),
                }
            }
        }
    }
}

impl<S> Guard<S> {
    fn open_guard_for(&self, req: &Request<Body>) -> Option<Arc<OpenGuard>> {
        if self.layer.mode == Mode::Observe {
            return None;
        }
        let target = req.extensions().get::<Target>()?;
        if target.kind != Kind::Send {
            return None;
        }
        self.layer.table.guard(target.waba()?)
    }
}

/// True when a send body is a template message (`"type": "template"`).
pub fn is_template(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Msg<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Msg>(body)
        .ok()
        .and_then(|m| m.kind)
        .is_some_and(|k| k == "template")
}

/// The headers of every local answer, besides `retry-after` (the relay writes the same).
pub const LOCAL_REPLY_HEADERS: [(&str, &str); 2] = [
    ("content-type", "application/json"),
    ("x-wa-breaker", "open"),
];

/// Seconds until a known restriction end (at least 1), for `retry-after`.
pub fn retry_after(guard: &OpenGuard) -> Option<i64> {
    let until = guard.until_unix?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Some((until - now).max(1))
}

/// The local answer for an open circuit: 403, the envelope, `x-wa-breaker: open`, `retry-after` when known.
pub fn local_reply(guard: &OpenGuard) -> Response<Body> {
    METRICS.answered_locally.inc();
    let mut resp = Response::new(Body::full(guard.body.clone()));
    *resp.status_mut() = StatusCode::FORBIDDEN;
    let h = resp.headers_mut();
    for (name, value) in LOCAL_REPLY_HEADERS {
        h.insert(name, HeaderValue::from_static(value));
    }
    if let Some(secs) = retry_after(guard) {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp.extensions_mut().insert(LocalReply);
    resp
}

#[cfg(test)]
mod tests {
    use super::is_template;

    #[test]
    fn spots_templates() {
        assert!(is_template(
            br#"{"messaging_product":"whatsapp","type":"template","template":{}}"#
        ));
        assert!(!is_template(
            br#"{"type":"text","text":{"body":"template"}}"#
        ));
        assert!(!is_template(br#"{"messaging_product":"whatsapp"}"#));
        assert!(!is_template(b"not json"));
    }
}
