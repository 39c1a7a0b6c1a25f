//! Limit as a layer: holds one of the upstream limit's permits ([`Limiter`], shared with
//! the relay) from the inner call until its answer is classified. Unlike `tower::limit`,
//! the permit is taken inside the call, after the request is known, so the guard behind
//! this layer re-checks the circuit when a queued request gets its turn.
//!
//! Readiness is the inner service's: `poll_ready` drives the inner `poll_ready`; a request
//! that has to wait for a permit takes the service that was polled ready along with it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::upstream::{Limiter, OwnedPermit};

/// See module docs.
#[derive(Clone)]
pub struct LimitLayer {
    limiter: Arc<Limiter>,
}

impl LimitLayer {
    /// Counts against `limiter`.
    pub fn new(limiter: Arc<Limiter>) -> Self {
        LimitLayer { limiter }
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Limit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// See [`LimitLayer`].
#[derive(Clone)]
pub struct Limit<S> {
    inner: S,
    limiter: Arc<Limiter>,
}

type Acquire = Pin<Box<dyn Future<Output = OwnedPermit> + Send>>;

pin_project! {
    #[project = StateProj]
    enum State<F, S, R> {
        Waiting { acquire: Acquire, inner: Option<S>, req: Option<R> },
        Calling { #[pin] fut: F, permit: Option<OwnedPermit> },
    }
}

pin_project! {
    /// Waits for a permit, then calls the inner service holding it until its answer.
    pub struct ResponseFuture<F, S, R> {
        #[pin]
        state: State<F, S, R>,
    }
}

impl<S, R> Service<R> for Limit<S>
where
    S: Service<R> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Permits are per request, taken in `call`; readiness is the inner service's.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let state = match self.limiter.try_acquire_owned() {
            Some(permit) => State::Calling {
                fut: self.inner.call(req),
                permit: Some(permit),
            },
            None => {
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                State::Waiting {
                    acquire: Box::pin(self.limiter.clone().acquire_owned()),
                    inner: Some(ready),
                    req: Some(req),
                }
            }
        };
        ResponseFuture { state }
    }
}

impl<F, S, R, T, E> Future for ResponseFuture<F, S, R>
where
    F: Future<Output = Result<T, E>>,
    S: Service<R, Future = F, Response = T, Error = E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting {
                    acquire,
                    inner,
                    req,
                } => {
                    let permit = ready!(acquire.as_mut().poll(cx));
                    let (Some(mut inner), Some(req)) = (inner.take(), req.take()) else {
                        panic!("limit future polled after completion");
                    };
                    let fut = inner.call(req);
                    this.state.set(State::Calling {
                        fut,
                        permit: Some(permit),
                    });
                }
                StateProj::Calling { fut, .. } => return fut.poll(cx),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;
    use tower_test::{assert_request_eq, mock};

    #[tokio::test]
    async fn drives_inner_readiness_and_holds_the_permit_until_the_answer() {
        let limiter = Arc::new(Limiter::new(1));
        let (service, mut handle) = mock::pair::<&'static str, &'static str>();
        let mut svc = LimitLayer::new(limiter.clone()).layer(service);

        // Readiness is the inner service's.
        handle.allow(0);
        let mut task = tokio_test::task::spawn(());
        task.enter(|cx, _| assert!(svc.poll_ready(cx).is_pending()));
        handle.allow(2);
        task.enter(|cx, _| assert!(svc.poll_ready(cx).is_ready()));

        let first = svc.call("a");
        assert_eq!(limiter.in_flight(), 1);
        // The second request waits for the permit, with the service that was polled ready.
        svc.ready().await.unwrap();
        let mut second = tokio_test::task::spawn(svc.call("b"));
        assert!(second.poll().is_pending());

        let first = tokio::spawn(first);
        assert_request_eq!(handle, "a").send_response("A");
        assert_eq!(first.await.unwrap().unwrap(), "A");
        // The permit came back: the waiting request is called now.
        assert!(second.is_woken());
        assert!(second.poll().is_pending());
        assert_request_eq!(handle, "b").send_response("B");
        assert_eq!(second.await.unwrap(), "B");
        assert_eq!(limiter.in_flight(), 0);
    }
}
