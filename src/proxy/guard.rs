//! Guard as a layer: asks [`Policy::admit`] and answers locally when it says so, reading the
//! body first when the decision needs it (template sends of a `business_initiated`
//! circuit). A send body of a known WABA up to `classify_body_limit` is read before it is
//! forwarded and kept for the classifier ([`SendBody`], [`Policy::keep_send_body`]): a
//! 132015/132016 answer names no template, the send does. It runs twice in the stack:
//! before the upstream queue, and again right before forwarding, so sends that were waiting
//! for the upstream when a circuit tripped never leave.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::route::Target;
use crate::common::body::{self, Body};
use crate::policy::{self, Admit, Outcome, Policy};
use crate::upstream::ForwardError;

/// See module docs.
#[derive(Clone)]
pub struct GuardLayer {
    policy: Arc<Policy>,
}

impl GuardLayer {
    /// A guard deciding with `policy`.
    pub fn new(policy: Arc<Policy>) -> Self {
        GuardLayer { policy }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Guard {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// See [`GuardLayer`].
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    policy: Arc<Policy>,
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

/// A send's whole body, kept as a request extension for the classify layer (a refcount
/// clone of the forwarded bytes): Meta's 132015/132016 answer is judged against its template.
#[derive(Clone, Debug)]
pub struct SendBody(pub Bytes);

/// Keeps a buffered send body for the classifier ([`SendBody`]) when the policy says so.
fn keep_body(policy: &Policy, req: &mut Request<Body>) {
    let call = Target::of(req);
    if let Body::Full { data } = req.body() {
        let data = data.clone().unwrap_or_default();
        if policy
            .keep_send_body(call, Some(data.len() as u64))
            .is_some()
        {
            req.extensions_mut().insert(SendBody(data));
        }
    }
}

/// What the guard knows of a request body without reading it.
fn known_body(req: &Request<Body>) -> policy::Body<'_> {
    match req.body() {
        Body::Full { data } => policy::Body::Read(data.as_deref().unwrap_or_default()),
        _ => policy::Body::Unread(
            req.headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        ),
    }
}

impl<S> Service<Request<Body>> for Guard<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: From<ForwardError> + Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let call = Target::of(&req);
        let known = known_body(&req);
        let decision = match self.policy.admit(call, known, |r| r.to_response()) {
            // A send body worth keeping for the classifier is read first, as for an
            // inspection (a larger one turns out too large and streams on).
            Admit::Forward => match known {
                policy::Body::Unread(n) => self
                    .policy
                    .keep_send_body(call, n)
                    .map_or(Admit::Forward, |limit| Admit::Inspect { limit }),
                policy::Body::Read(_) => Admit::Forward,
            },
            decided => decided,
        };
        match decision {
            Admit::Forward => {
                keep_body(&self.policy, &mut req);
                ResponseFuture::Inner {
                    fut: self.inner.call(req),
                }
            }
            Admit::Local { answer, unacked } => {
                self.policy.record(call, Outcome::Local);
                match unacked {
                    None => ResponseFuture::Local {
                        response: Some(answer),
                    },
                    // Not durable yet: the answer waits for the commit (rare: right after a trip).
                    Some(seq) => {
                        let policy = self.policy.clone();
                        ResponseFuture::Inspect {
                            fut: Box::pin(async move {
                                policy.acknowledged(seq).await;
                                Ok(answer)
                            }),
                        }
                    }
                }
            }
            Admit::Inspect { limit } => {
                // The ready inner service goes with the future; a clone stays (tower's rule:
                // call the service that was polled ready).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let policy = self.policy.clone();
                ResponseFuture::Inspect {
                    fut: Box::pin(async move {
                        let (parts, body) = req.into_parts();
                        let body = match body::buffer(body, limit).await {
                            Ok(Ok(bytes)) => {
                                let mut req = Request::from_parts(parts, Body::full(bytes));
                                let call = Target::of(&req);
                                if let Admit::Local { answer, unacked } =
                                    policy.admit(call, known_body(&req), |r| r.to_response())
                                {
                                    policy.record(call, Outcome::Local);
                                    if let Some(seq) = unacked {
                                        policy.acknowledged(seq).await;
                                    }
                                    return Ok(answer);
                                }
                                keep_body(&policy, &mut req);
                                return inner.call(req).await;
                            }
                            // Too big to be a send we can judge: let Meta decide.
                            Ok(Err(body)) => body,
                            // The client's body broke off or stopped arriving: answered as
                            // a failed forward would be (400 or 408), by the edge.
                            Err(e) if e.is::<body::BodyTimeout>() => {
                                return Err(ForwardError::ClientTimeout.into());
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "client body aborted");
                                policy.record(call, Outcome::ClientBody);
                                return Err(ForwardError::ClientBody(e).into());
                            }
                        };
                        inner.call(Request::from_parts(parts, body)).await
                    }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::Scope;
    use crate::config::Mode;
    use crate::policy::testing::{self, open, PHONE};
    use tower::ServiceExt;
    use tower_test::mock;

    fn policy() -> Arc<Policy> {
        Arc::new(testing::policy(Mode::Enforce, 64 * 1024))
    }

    fn send(p: &Policy, body: &'static str) -> Request<Body> {
        testing::request(p, http::Method::POST, "messages", Body::full(body))
    }
    #[tokio::test]
    async fn forwards_when_closed_and_answers_locally_when_open() {
        let p = policy();
        let (inner, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let mut guard = GuardLayer::new(p.clone()).layer(inner);

        // Readiness is the inner service's.
        handle.allow(0);
        let mut task = tokio_test::task::spawn(());
        task.enter(|cx, _| assert!(guard.poll_ready(cx).is_pending()));
        handle.allow(1);

        let fut = guard
            .ready()
            .await
            .unwrap()
            .call(send(&p, r#"{"type":"text"}"#));
        let fut = tokio::spawn(fut);
        let (req, reply) = handle.next_request().await.unwrap();
        assert_eq!(req.uri().path(), format!("/v21.0/{PHONE}/messages"));
        // The send body is kept for the classifier (a 132015/132016 names its template).
        let kept = req.extensions().get::<SendBody>().map(|b| b.0.clone());
        assert_eq!(kept.as_deref(), Some(&br#"{"type":"text"}"#[..]));
        reply.send_response(Response::new(Body::full("ok")));
        assert_eq!(fut.await.unwrap().unwrap().status(), 200);

        // Open: answered here, the inner service never sees it.
        open(&p, Scope::AllSends);
        handle.allow(1);
        let resp = guard
            .ready()
            .await
            .unwrap()
            .call(send(&p, r#"{"type":"text"}"#))
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers()["x-wa-breaker"], "open");
        assert!(resp
            .extensions()
            .get::<crate::proxy::LocalReply>()
            .is_some());
        assert!(handle.poll_request().is_pending());
    }

    #[tokio::test]
    async fn template_scope_reads_the_buffered_body() {
        let p = policy();
        open(&p, Scope::BusinessInitiated);
        let (inner, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let mut guard = GuardLayer::new(p.clone()).layer(inner);
        handle.allow(2);
        let resp = guard
            .ready()
            .await
            .unwrap()
            .call(send(&p, r#"{"type":"template","template":{}}"#))
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        let fut = tokio::spawn(
            guard
                .ready()
                .await
                .unwrap()
                .call(send(&p, r#"{"type":"text"}"#)),
        );
        let (req, reply) = handle.next_request().await.unwrap();
        assert!(matches!(req.body(), Body::Full { .. }));
        reply.send_response(Response::new(Body::full("ok")));
        assert_eq!(fut.await.unwrap().unwrap().status(), 200);
    }
}
