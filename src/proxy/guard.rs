//! Guard as a layer: asks [`Policy::admit`] and answers locally when it says so, reading the
//! body first when the decision needs it (template sends of a `business_initiated`
//! circuit). It runs twice in the stack: before the upstream queue, and again right before
//! forwarding, so sends that were waiting for the upstream when a circuit tripped never
//! leave.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::body::{self, Body};
use super::route::Target;
use crate::policy::{self, Admit, Outcome, Policy};

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
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let call = Target::of(&req);
        let decision = self
            .policy
            .admit(call, known_body(&req), |r| r.to_response());
        match decision {
            Admit::Forward => ResponseFuture::Inner {
                fut: self.inner.call(req),
            },
            Admit::Local(response) => {
                self.policy.record(call, Outcome::Local);
                ResponseFuture::Local {
                    response: Some(response),
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
                                let req = Request::from_parts(parts, Body::full(bytes));
                                let call = Target::of(&req);
                                if let Admit::Local(resp) =
                                    policy.admit(call, known_body(&req), |r| r.to_response())
                                {
                                    policy.record(call, Outcome::Local);
                                    return Ok(resp);
                                }
                                return inner.call(req).await;
                            }
                            // Too big to be a send we can judge: let Meta decide.
                            Ok(Err(body)) => body,
                            Err(e) => {
                                tracing::debug!(error = %e, "client body aborted");
                                let mut r = Response::new(Body::empty());
                                *r.status_mut() = StatusCode::BAD_REQUEST;
                                return Ok(r);
                            }
                        };
                        inner.call(Request::from_parts(parts, body)).await
                    }),
                }
            }
        }
    }
}
