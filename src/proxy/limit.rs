//! Limit: bounds the requests in flight to the upstream (`upstream_concurrency`).
//! Unlike `tower::limit`, the permit is taken inside the call, after the request is known,
//! so the guard behind this layer re-checks the circuit when a queued request gets its turn.
//!
//! The count is one atomic: taking and returning a permit under the limit touches no lock
//! (a `tokio::sync::Semaphore` locks its wait list on every release, a lock every worker
//! would share). Waiting, only when the limit is reached, goes through a `Notify`; a newly
//! arriving request may take a freed permit before a waiter does (no strict FIFO).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tower::{Layer, Service};

/// The process-wide upstream limit, shared by every worker's stack and relay.
#[derive(Debug)]
pub struct Limiter {
    max: usize,
    in_flight: AtomicUsize,
    waiting: AtomicUsize,
    freed: Notify,
}

/// One request's place upstream; returned on drop.
#[derive(Debug)]
pub struct Permit<'a>(&'a Limiter);

impl Limiter {
    /// At most `max` permits out at once (`max` ≥ 1, validated with the config).
    pub fn new(max: usize) -> Limiter {
        Limiter {
            max: max.max(1),
            in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// A permit if one is free now.
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        let mut cur = self.in_flight.load(Ordering::Relaxed);
        loop {
            if cur >= self.max {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Permit(self)),
                Err(now) => cur = now,
            }
        }
    }

    /// A permit, waiting for one if all are out.
    pub async fn acquire(&self) -> Permit<'_> {
        loop {
            if let Some(p) = self.try_acquire() {
                return p;
            }
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before counting as waiting and retrying, so a release in between
            // cannot be missed.
            freed.as_mut().enable();
            self.waiting.fetch_add(1, Ordering::SeqCst);
            if let Some(p) = self.try_acquire() {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                return p;
            }
            freed.await;
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.0.waiting.load(Ordering::SeqCst) > 0 {
            self.0.freed.notify_one();
        }
    }
}

/// See module docs.
#[derive(Clone)]
pub struct LimitLayer {
    limiter: &'static Limiter,
}

impl LimitLayer {
    /// At most `max` requests in flight upstream. The limiter lives as long as the process
    /// (one per run), so permits need no reference count.
    pub fn new(max: usize) -> Self {
        LimitLayer {
            limiter: Box::leak(Box::new(Limiter::new(max))),
        }
    }

    /// The limiter itself, shared with the relay so both paths count against one limit.
    pub fn limiter(&self) -> &'static Limiter {
        self.limiter
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Limit {
            inner,
            limiter: self.limiter,
        }
    }
}

/// See [`LimitLayer`].
#[derive(Clone)]
pub struct Limit<S> {
    inner: S,
    limiter: &'static Limiter,
}

type Acquire = Pin<Box<dyn Future<Output = Permit<'static>> + Send>>;

pin_project! {
    #[project = StateProj]
    enum State<F, S, R> {
        Waiting { acquire: Acquire, inner: S, req: Option<R> },
        Calling { #[pin] fut: F, permit: Option<Permit<'static>> },
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

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is decided per request, inside the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: R) -> Self::Future {
        let state = match self.limiter.try_acquire() {
            Some(permit) => State::Calling {
                fut: self.inner.call(req),
                permit: Some(permit),
            },
            None => State::Waiting {
                acquire: Box::pin(self.limiter.acquire()),
                inner: self.inner.clone(),
                req: Some(req),
            },
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
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn never_more_than_max_and_waiters_get_freed_permits() {
        let l: &'static Limiter = Box::leak(Box::new(Limiter::new(3)));
        let peak = Arc::new(AtomicUsize::new(0));
        let now = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (peak, now) = (peak.clone(), now.clone());
            tasks.push(tokio::spawn(async move {
                let _p = l.acquire().await;
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                now.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        assert_eq!(l.in_flight.load(Ordering::SeqCst), 0);
        let held: Vec<_> = (0..3).map(|_| l.try_acquire().unwrap()).collect();
        assert!(l.try_acquire().is_none());
        drop(held);
        assert!(l.try_acquire().is_some());
    }
}
