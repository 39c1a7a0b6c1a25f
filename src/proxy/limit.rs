//! Limit as a layer: the exchange's permit step. Takes one of the upstream limit's permits
//! ([`Limiter`], shared with the relay) once the request is known, then hands it to
//! [`Guarded::permitted`], which admits the send again — a send that waited while its circuit
//! tripped is answered here — and carries the permit down to the classifier, which releases
//! it when the answer is judged. Unlike `tower::limit`, the permit is taken inside `call`, so
//! only the requests that reach this step wait, and each is re-checked when its turn comes.
//!
//! A request whose body streams (larger than the guard reads first, [`Guarded::large`])
//! counts against the large-body budget, every other one against the budget it shares with
//! the relay. A wait past the queue's bounds is answered 503 ([`Guarded::overloaded`]); a
//! client that goes away drops the future, and with it its place in the queue or its permit.
//!
//! Readiness is the inner service's: `poll_ready` drives the inner `poll_ready`; a request
//! that has to wait for a permit takes the service that was polled ready along with it.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Response;
use tower::{Layer, Service};

use super::guard::{known_body, local};
use super::step::StepFuture;
use super::{render, Body, Exchanging};
use crate::policy::exchange::{Admission, Admitted, Guarded};
use crate::policy::{ForwardError, Policy};
use crate::upstream::{Limits, OwnedPermit};

/// See module docs.
#[derive(Clone)]
pub struct LimitLayer {
    policy: Arc<Policy>,
    limits: Limits,
}

impl LimitLayer {
    /// Counts against `limits`, admitting again with `policy`.
    pub fn new(policy: Arc<Policy>, limits: Limits) -> Self {
        LimitLayer { policy, limits }
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Limit {
            inner,
            policy: self.policy.clone(),
            limits: self.limits.clone(),
        }
    }
}

/// See [`LimitLayer`].
#[derive(Clone)]
pub struct Limit<S> {
    inner: S,
    policy: Arc<Policy>,
    limits: Limits,
}

/// The request once its permit is in hand after a wait: the guard again, then the inner
/// call.
fn permitted<S>(
    policy: &Arc<Policy>,
    inner: &mut S,
    x: Exchanging<Guarded>,
    permit: OwnedPermit,
) -> StepFuture<S::Future, ForwardError>
where
    S: Service<Exchanging<Admitted<OwnedPermit>>, Response = Response<Body>, Error = ForwardError>,
{
    let Exchanging { req, state } = x;
    match state.permitted(policy, permit, known_body(&req), |r| render(&r)) {
        Admission::Go(state) => StepFuture::Inner {
            fut: inner.call(Exchanging { req, state }),
        },
        Admission::Local(response, settle) => local(policy, response, settle),
    }
}

impl<S> Service<Exchanging<Guarded>> for Limit<S>
where
    S: Service<Exchanging<Admitted<OwnedPermit>>, Response = Response<Body>, Error = ForwardError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ForwardError;
    type Future = StepFuture<S::Future, ForwardError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Permits are per request, taken in `call`; readiness is the inner service's.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, x: Exchanging<Guarded>) -> Self::Future {
        let limiter = if x.state.large() {
            &self.limits.large
        } else {
            &self.limits.ready
        };
        if let Some(permit) = limiter.try_acquire_owned() {
            let Exchanging { req, state } = x;
            let state = state.permitted_at_once(&self.policy, permit);
            return StepFuture::Inner {
                fut: self.inner.call(Exchanging { req, state }),
            };
        }
        // Every permit is out: wait, with the service that was polled ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (policy, limiter) = (self.policy.clone(), limiter.clone());
        StepFuture::Boxed {
            fut: Box::pin(async move {
                match limiter.acquire_owned().await {
                    Ok(permit) => permitted(&policy, &mut inner, x, permit).await,
                    Err(_) => {
                        let (response, settle) = x.state.overloaded(|r| render(&r));
                        settle.done(&policy).await;
                        Ok(response)
                    }
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::exchange::Routed;
    use crate::policy::testing::{self, open};
    use crate::policy::Mode;
    use tower::ServiceExt;
    use tower_test::mock;

    type Inner = tower::util::MapErr<
        mock::Mock<Exchanging<Admitted<OwnedPermit>>, Response<Body>>,
        fn(crate::common::BoxError) -> ForwardError,
    >;

    fn guarded(p: &Policy) -> Exchanging<Guarded> {
        let req = super::super::testing::request(
            p,
            http::Method::POST,
            "messages",
            Body::full(r#"{"type":"text"}"#),
        );
        let routed = Routed::new(super::super::route::Target::of(&req));
        let crate::policy::exchange::Guard::Go(pacing) =
            routed.admit(p, known_body(&req), |r| render(&r))
        else {
            panic!("a closed circuit lets the send go")
        };
        let crate::policy::exchange::Pace::Go(state) =
            pacing.pace(p, known_body(&req), |r| render(&r))
        else {
            panic!("within the pace")
        };
        Exchanging { req, state }
    }

    /// One permit: the second send waits for the first's answer; the circuit trips
    /// meanwhile, so when its turn comes it is answered here and never reaches the inner
    /// service, and the permit is back.
    #[tokio::test]
    async fn a_send_that_waited_is_guarded_again_and_the_permit_comes_back() {
        let p = Arc::new(testing::policy(Mode::Enforce, 64 * 1024));
        let limits = Limits::new(1, 1, crate::upstream::Queue::UNBOUNDED);
        let limiter = limits.ready.clone();
        let (inner, mut handle) = mock::pair::<Exchanging<Admitted<OwnedPermit>>, Response<Body>>();
        let inner: Inner = inner.map_err(ForwardError::Broken);
        let mut svc = LimitLayer::new(p.clone(), limits).layer(inner);

        // Readiness is the inner service's.
        handle.allow(0);
        let mut task = tokio_test::task::spawn(());
        task.enter(|cx, _| assert!(svc.poll_ready(cx).is_pending()));
        handle.allow(2);

        let first = tokio::spawn(svc.ready().await.unwrap().call(guarded(&p)));
        let (x, reply) = handle.next_request().await.unwrap();
        assert_eq!(limiter.in_flight(), 1);
        let mut second = tokio_test::task::spawn(svc.ready().await.unwrap().call(guarded(&p)));
        assert!(second.poll().is_pending());

        open(&p, crate::circuit::Scope::AllSends);
        // The classifier's step releases the permit with the state (here: dropped).
        drop(x);
        reply.send_response(Response::new(Body::full("ok")));
        assert_eq!(first.await.unwrap().unwrap().status(), 200);
        assert!(second.is_woken());
        let resp = second.await.unwrap();
        assert_eq!(resp.status(), 403);
        assert!(handle.poll_request().is_pending());
        assert_eq!(limiter.in_flight(), 0);
    }
}
