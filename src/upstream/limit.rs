//! The upstream limit (`upstream_concurrency`): at most that many requests in flight to the
//! upstream, across every worker and both engines.
//!
//! The count is one atomic: taking and returning a permit under the limit touches no lock
//! (a `tokio::sync::Semaphore` locks its wait list on every release, a lock every worker
//! would share). Waiting, only when the limit is reached, goes through a `Notify`; a newly
//! arriving request may take a freed permit before a waiter does (no strict FIFO).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// The process-wide upstream limit, shared by every worker's relay and stack.
#[derive(Debug)]
pub struct Limiter {
    max: usize,
    in_flight: AtomicUsize,
    waiting: AtomicUsize,
    freed: Notify,
}

/// One request's place upstream, borrowed from the limiter; returned on drop.
#[derive(Debug)]
pub struct Permit<'a>(&'a Limiter);

/// One request's place upstream, holding the limiter (for futures that must be `'static`).
#[derive(Debug)]
pub struct OwnedPermit(Arc<Limiter>);

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

    async fn take(&self) {
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
            if self.try_take() {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            freed.await;
            self.waiting.fetch_sub(1, Ordering::SeqCst);
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

    /// A permit, waiting for one if all are out.
    pub async fn acquire(&self) -> Permit<'_> {
        self.take().await;
        Permit(self)
    }

    /// An owned permit if one is free now.
    pub fn try_acquire_owned(self: &Arc<Self>) -> Option<OwnedPermit> {
        self.try_take().then(|| OwnedPermit(self.clone()))
    }

    /// An owned permit, waiting for one if all are out.
    pub async fn acquire_owned(self: Arc<Self>) -> OwnedPermit {
        self.take().await;
        OwnedPermit(self)
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
        let l = Arc::new(Limiter::new(3));
        let peak = Arc::new(AtomicUsize::new(0));
        let now = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..50 {
            let (l, peak, now) = (l.clone(), peak.clone(), now.clone());
            tasks.push(tokio::spawn(async move {
                // Borrowed and owned permits count against the same limit.
                let _p = if i % 2 == 0 {
                    l.clone().acquire_owned().await
                } else {
                    let _b = l.acquire().await;
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
}
