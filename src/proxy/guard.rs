//! Guard as a layer: the exchange's guard step ([`Routed::admit`]). A send in scope of an
//! open circuit is answered here; a decision that needs the body, or a send body the
//! classifier should keep (a 132015/132016 answer names no template, the send does), reads
//! it first; everything else goes to the pace layer as [`Exchanging<Pacing>`].

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, Request, Response};
use tower::{Layer, Service};

use super::body::{self, Body};
use super::route::Target;
use super::step::StepFuture;
use super::{render, Exchanging};
use crate::policy::exchange::{Guard as Admission, Pacing, Routed, Settle};
use crate::policy::framing::content_length;
use crate::policy::{self, ForwardError, Policy};

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

/// What the engine knows of a request body without reading it (its declared length, by
/// the one `content-length` parse of both engines).
pub(crate) fn known_body(req: &Request<Body>) -> policy::Body<'_> {
    match req.body() {
        Body::Full { data } => policy::Body::Read(data.as_deref().unwrap_or_default()),
        // No body at all (a GET): nothing to read before the permit.
        b if http_body::Body::is_end_stream(b) => policy::Body::Read(&[]),
        _ => policy::Body::Unread(
            req.headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| content_length(v.as_bytes())),
        ),
    }
}

/// A local answer, sent once its circuit change is durable (at once, nearly always).
pub(crate) fn local<F, E: Send + 'static>(
    policy: &Arc<Policy>,
    response: Response<Body>,
    settle: Settle,
) -> StepFuture<F, E> {
    match settle.now() {
        None => StepFuture::Ready {
            response: Some(response),
        },
        Some(settle) => {
            let policy = policy.clone();
            StepFuture::Boxed {
                fut: Box::pin(async move {
                    settle.done(&policy).await;
                    Ok(response)
                }),
            }
        }
    }
}

impl<S> Service<Request<Body>> for Guard<S>
where
    S: Service<Exchanging<Pacing>, Response = Response<Body>, Error = ForwardError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ForwardError;
    type Future = StepFuture<S::Future, ForwardError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let routed = Routed::new(Target::of(&req));
        match routed.admit(&self.policy, known_body(&req), |r| render(&r)) {
            Admission::Go(state) => StepFuture::Inner {
                fut: self.inner.call(Exchanging { req, state }),
            },
            Admission::Local(response, settle) => local(&self.policy, response, settle),
            Admission::Read(routed, limit) => {
                // The ready inner service goes with the future; a clone stays (tower's rule:
                // call the service that was polled ready).
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                StepFuture::Boxed {
                    fut: Box::pin(read_first(self.policy.clone(), inner, req, routed, limit)),
                }
            }
        }
    }
}

/// Reads the body (at most `limit`), then the guard again with it; a body too large to
/// judge goes on unread (Meta decides), one that breaks off fails the request.
async fn read_first<S>(
    policy: Arc<Policy>,
    mut inner: S,
    req: Request<Body>,
    routed: Routed,
    limit: usize,
) -> Result<Response<Body>, ForwardError>
where
    S: Service<Exchanging<Pacing>, Response = Response<Body>, Error = ForwardError>,
{
    let (parts, body) = req.into_parts();
    let (req, state) = match body::buffer(body, limit).await {
        Ok(Ok(bytes)) => {
            let req = Request::from_parts(parts, Body::full(bytes));
            match routed.admit(&policy, known_body(&req), |r| render(&r)) {
                Admission::Go(state) => (req, state),
                Admission::Local(response, settle) => {
                    settle.done(&policy).await;
                    return Ok(response);
                }
                // The whole body is in: nothing more to read.
                Admission::Read(routed, _) => (req, routed.too_large()),
            }
        }
        Ok(Err(rest)) => (Request::from_parts(parts, rest), routed.too_large()),
        Err(e) => {
            let e = if e.is::<body::BodyTimeout>() {
                ForwardError::ClientTimeout
            } else {
                tracing::debug!(error = %e, "client body aborted");
                ForwardError::ClientBody(e)
            };
            routed.failed(&e);
            return Err(e);
        }
    };
    inner.call(Exchanging { req, state }).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::Scope;
    use crate::policy::testing::{self, open, PHONE};
    use crate::policy::Mode;
    use tower::ServiceExt;
    use tower_test::mock;

    fn policy() -> Arc<Policy> {
        Arc::new(testing::policy(Mode::Enforce, 64 * 1024))
    }

    fn send(p: &Policy, body: &'static str) -> Request<Body> {
        super::super::testing::request(p, http::Method::POST, "messages", Body::full(body))
    }

    type Inner = tower::util::MapErr<
        mock::Mock<Exchanging<Pacing>, Response<Body>>,
        fn(crate::common::BoxError) -> ForwardError,
    >;

    type Handle = mock::Handle<Exchanging<Pacing>, Response<Body>>;

    fn guard() -> (Guard<Inner>, Handle, Arc<Policy>) {
        let p = policy();
        let (inner, handle) = mock::pair::<Exchanging<Pacing>, Response<Body>>();
        let inner: Inner = inner.map_err(ForwardError::Broken);
        (GuardLayer::new(p.clone()).layer(inner), handle, p)
    }

    #[tokio::test]
    async fn forwards_when_closed_and_answers_locally_when_open() {
        let (mut guard, mut handle, p) = guard();

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
        let (x, reply) = handle.next_request().await.unwrap();
        assert_eq!(x.req.uri().path(), format!("/v21.0/{PHONE}/messages"));
        // The send body stays whole for the classifier (a 132015/132016 names its template).
        assert!(matches!(x.req.body(), Body::Full { .. }));
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
        assert!(handle.poll_request().is_pending());
    }

    #[tokio::test]
    async fn template_scope_reads_the_buffered_body() {
        let (mut guard, mut handle, p) = guard();
        open(&p, Scope::BusinessInitiated);
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
        let (x, reply) = handle.next_request().await.unwrap();
        assert!(matches!(x.req.body(), Body::Full { .. }));
        reply.send_response(Response::new(Body::full("ok")));
        assert_eq!(fut.await.unwrap().unwrap().status(), 200);
    }
}
