//! The upstream limit (`upstream_concurrency`): at most that many requests in flight to the
//! upstream, across every worker and both engines.
//!
//! The count is one atomic: taking and returning a permit under the limit touches no lock
//! (a `tokio::sync::Semaphore` locks its wait list on every release, a lock every worker
//! would share). Waiting, only when the limit is reached, goes through a `Notify`; a newly
//! arriving request may take a freed permit before a waiter does (no strict FIFO).
//!
//! The wait is bounded (issue 25): at most `upstream_queue_max` requests wait at once and
//! each for at most `upstream_queue_timeout`; past either, [`Overloaded`] (the exchange
//! answers 503 `overloaded`). A waiter dropped (its client went away) leaves the queue at
//! once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use std::time::Duration;

use tokio::sync::Notify;

/// The wait for a permit is over: the queue was full, or the wait reached its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no upstream permit: the queue is full or the wait timed out")]
pub struct Overloaded;

/// How long and how many requests may wait for a permit.
#[derive(Debug, Clone, Copy)]
pub struct Queue {
    /// Most requests waiting at once (`upstream_queue_max`); `0`: none waits.
    pub max: usize,
    /// Longest wait (`upstream_queue_timeout`).
    pub timeout: Duration,
}

#[cfg(test)]
impl Queue {
    /// No bound (tests of the limit alone).
    pub const UNBOUNDED: Queue = Queue {
        max: usize::MAX,
        timeout: Duration::from_secs(365 * 24 * 3600),
    };
}

/// The process-wide upstream limit, shared by every worker's relay and stack.
#[derive(Debug)]
pub struct Limiter {
    max: usize,
    queue: Queue,
    in_flight: AtomicUsize,
    waiting: AtomicUsize,
    /// Requests in the queue (from their first failed try to a permit or [`Overloaded`]).
    queued: AtomicUsize,
    freed: Notify,
}

/// Decrements a counter when dropped: the wait's bookkeeping survives a cancelled future.
struct Count<'a>(&'a AtomicUsize);

impl Drop for Count<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The upstream budgets: `ready` for requests whose body is all in (nearly every one),
/// `large` for those whose body streams as it arrives (larger than the gateway reads before
/// the permit), so a client dripping a large body never holds a permit a send needs.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `upstream_concurrency`.
    pub ready: Arc<Limiter>,
    /// `upstream_large_concurrency`.
    pub large: Arc<Limiter>,
    /// Answers too large to read whole (larger than 64 KiB or `classify_body_limit`) while
    /// they stream to the client: as many as `upstream_large_concurrency`, a budget of
    /// their own, so the upstream connections that slow readers keep busy are bounded
    /// (held from the answer's head until its body is done or dropped).
    pub answers: Arc<Limiter>,
}

impl Limits {
    /// From the validated settings: `upstream_concurrency`, `upstream_large_concurrency`,
    /// and the queue bounds both share.
    pub fn new(ready: usize, large: usize, queue: Queue) -> Limits {
        Limits {
            ready: Arc::new(Limiter::new(ready, queue)),
            large: Arc::new(Limiter::new(large, queue)),
            answers: Arc::new(Limiter::new(large, queue)),
        }
    }
}

/// One request's place upstream, borrowed from the limiter; returned on drop.
#[derive(Debug)]
pub struct Permit<'a>(&'a Limiter);

/// One request's place upstream, holding the limiter (for futures that must be `'static`).
#[derive(Debug)]
pub struct OwnedPermit(Arc<Limiter>);

impl Limiter {
    /// At most `max` permits out at once (`max` ≥ 1, validated with the config), waiters
    /// bounded by `queue`.
    pub fn new(max: usize, queue: Queue) -> Limiter {
        Limiter {
            max: max.max(1),
            queue,
            in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    fn try_take(&self) -> bool {
        let mut cur = self.in_flight.load(Ordering::Relaxed);
        loop {
            if cur >= self.max {
                return false;
            }
            match self.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    async fn take(&self) -> Result<(), Overloaded> {
        if self.try_take() {
            return Ok(());
        }
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.queue.max {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Overloaded);
        }
        let _queued = Count(&self.queued);
        tokio::time::timeout(self.queue.timeout, self.wait())
            .await
            .map_err(|_| Overloaded)
    }

    async fn wait(&self) {
        loop {
            if self.try_take() {
                return;
            }
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before counting as waiting and retrying, so a release in between
            // cannot be missed.
            freed.as_mut().enable();
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let _waiting = Count(&self.waiting);
            if self.try_take() {
                return;
            }
            freed.await;
        }
    }

    fn give_back(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_one();
        }
    }

    /// A permit if one is free now.
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        self.try_take().then(|| Permit(self))
    }

    /// A permit, waiting for one if all are out (within the queue's bounds).
    pub async fn acquire(&self) -> Result<Permit<'_>, Overloaded> {
        self.take().await?;
        Ok(Permit(self))
    }

    /// An owned permit if one is free now.
    pub fn try_acquire_owned(self: &Arc<Self>) -> Option<OwnedPermit> {
        self.try_take().then(|| OwnedPermit(self.clone()))
    }

    /// An owned permit, waiting for one if all are out (within the queue's bounds).
    pub async fn acquire_owned(self: Arc<Self>) -> Result<OwnedPermit, Overloaded> {
        self.take().await?;
        Ok(OwnedPermit(self))
    }

    /// Permits out now.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.give_back();
    }
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        self.0.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn never_more_than_max_and_waiters_get_freed_permits() {
        let l = Arc::new(Limiter::new(3, Queue::UNBOUNDED));
        let peak = Arc::new(AtomicUsize::new(0));
        let now = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..50 {
            let (l, peak, now) = (l.clone(), peak.clone(), now.clone());
            tasks.push(tokio::spawn(async move {
                // Borrowed and owned permits count against the same limit.
                let _p = if i % 2 == 0 {
                    l.clone().acquire_owned().await.unwrap()
                } else {
                    let _b = l.acquire().await.unwrap();
                    std::mem::forget(_b);
                    OwnedPermit(l.clone())
                };
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
        assert_eq!(l.in_flight(), 0);
        let held: Vec<_> = (0..3).map(|_| l.try_acquire().unwrap()).collect();
        assert!(l.try_acquire().is_none());
        assert!(l.try_acquire_owned().is_none());
        drop(held);
        assert!(l.try_acquire_owned().is_some());
        assert_eq!(l.in_flight(), 0);
    }

    /// Past the queue's cap a request is refused at once; past its deadline a waiter gives
    /// up; a waiter dropped leaves the queue, so its place is free again.
    #[tokio::test(start_paused = true)]
    async fn the_queue_has_a_cap_and_a_deadline() {
        let q = Queue {
            max: 1,
            timeout: Duration::from_secs(5),
        };
        let l = Arc::new(Limiter::new(1, q));
        let held = l.try_acquire().unwrap();
        let mut first = tokio_test::task::spawn(l.acquire());
        assert!(first.poll().is_pending());
        assert_eq!(l.acquire().await.unwrap_err(), Overloaded, "cap reached");
        drop(first);
        let start = tokio::time::Instant::now();
        assert_eq!(l.acquire().await.unwrap_err(), Overloaded, "deadline");
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(l.queued.load(Ordering::SeqCst), 0);
        assert_eq!(l.waiting.load(Ordering::SeqCst), 0);
        drop(held);
        assert!(l.acquire().await.is_ok());
    }
}
