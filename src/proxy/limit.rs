//! Limit: bounds the requests in flight to the upstream (`upstream_concurrency`).
//! Unlike `tower::limit`, the permit is taken inside the call, after the request is known,
//! so the guard behind this layer re-checks the circuit when a queued request gets its turn.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

/// See module docs.
#[derive(Clone)]
pub struct LimitLayer {
    sem: Arc<Semaphore>,
}

impl LimitLayer {
    /// At most `max` requests in flight through every service this layer makes.
    pub fn new(max: usize) -> Self {
        LimitLayer {
            sem: Arc::new(Semaphore::new(max)),
        }
    }
}

impl LimitLayer {
    /// The semaphore itself, shared with the relay so both paths count against one limit.
    pub fn semaphore(&self) -> Arc<Semaphore> {
        self.sem.clone()
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Limit {
            inner,
            sem: self.sem.clone(),
        }
    }
}

/// See [`LimitLayer`].
#[derive(Clone)]
pub struct Limit<S> {
    inner: S,
    sem: Arc<Semaphore>,
}

type Acquire = Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>;

pin_project! {
    #[project = StateProj]
    enum State<F, S, R> {
        Waiting { acquire: Acquire, inner: S, req: Option<R> },
        Calling { #[pin] fut: F, permit: Option<OwnedSemaphorePermit> },
    }
}

pin_project! {
    /// Waits for a permit (only when the limit is reached), then runs the inner call holding it.
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

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The inner services are always ready; waiting happens per request in the future.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: R) -> Self::Future {
        let state = match self.sem.clone().try_acquire_owned() {
            Ok(permit) => State::Calling {
                fut: self.inner.call(req),
                permit: Some(permit),
            },
            Err(_) => {
                let sem = self.sem.clone();
                State::Waiting {
                    acquire: Box::pin(async move { sem.acquire_owned().await.ok() }),
                    inner: self.inner.clone(),
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
                    let Some(req) = req.take() else {
                        panic!("limit future polled after completion");
                    };
                    let fut = inner.call(req);
                    this.state.set(State::Calling { fut, permit });
                }
                StateProj::Calling { fut, .. } => return fut.poll(cx),
            }
        }
    }
}
