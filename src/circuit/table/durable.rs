//! Durability, in one place: the table numbers every change, the embedded store reports how
//! far it has committed ([`Table::mark_durable`]), and whoever must not act on a change
//! before it is on disk waits for it ([`Table::wait_durable`]) — for as long as its kind of
//! waiter may ([`Waiter`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use super::Table;

/// Who waits for a change to become durable, and how long it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiter {
    /// A send's answer (a trip, or a local answer given right after one): it goes to the
    /// app anyway after [`Waiter::Send`]'s bound — the app must not stall on a slow disk —
    /// counted in `wa_breaker_ack_timeouts_total`.
    Send,
    /// A webhook delivery or an operator's change: after the bound the answer says the
    /// change is not durable yet (503, so Meta delivers again; 202 to an operator).
    Signal,
}

impl Waiter {
    /// The longest wait.
    pub const fn bound(self) -> Duration {
        match self {
            Waiter::Send => Duration::from_secs(1),
            Waiter::Signal => Duration::from_secs(5),
        }
    }
}

/// The durable watermark: every change up to it is committed to the embedded store.
pub(super) struct Durability {
    notify: watch::Sender<u64>,
    /// The same watermark, for the hot path (one load, no lock).
    seq: AtomicU64,
}

impl Default for Durability {
    fn default() -> Self {
        Durability {
            notify: watch::channel(0).0,
            seq: AtomicU64::new(0),
        }
    }
}

impl Table {
    /// The sequence number of the last notified change.
    pub fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Called by the store once every change up to `seq` is durable.
    pub fn mark_durable(&self, seq: u64) {
        self.durable.seq.fetch_max(seq, Ordering::AcqRel);
        self.durable.notify.send_if_modified(|d| {
            let newer = seq > *d;
            if newer {
                *d = seq;
            }
            newer
        });
    }

    /// Every change up to this sequence number is durable (committed to the embedded store).
    #[inline]
    pub fn durable_seq(&self) -> u64 {
        self.durable.seq.load(Ordering::Acquire)
    }

    /// Waits, at most `waiter`'s bound, until the change `seq` is durable; false when it is
    /// not by then (the change still applies).
    pub async fn wait_durable(&self, seq: u64, waiter: Waiter) -> bool {
        let mut rx = self.durable.notify.subscribe();
        tokio::time::timeout(waiter.bound(), rx.wait_for(|d| *d >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}
