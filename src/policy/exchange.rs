//! One request's steps and their obligations, written once for both engines as types: each
//! step consumes the state of the step before and returns the next, so an engine cannot
//! skip a step, reorder two, release the upstream permit before the classifier has decided,
//! or record an outcome twice (or never: a state dropped unfinished records `abandoned`).
//!
//! ```text
//!  Policy::route ─▶ Routed ──admit──▶ Pacing ──pace──▶ Guarded ──permitted(permit)──▶ Admitted ──answered──▶ Pass ─┐
//!                     │  ▲              │   └─ Waiting ─waited (guard again)─┘ (guard again after the wait)         │
//!                     │  └─ Read: body first (hyper)   │                                 │          Reading ──judge─┤
//!                     └──────────── Local ◀────────────┴─────────────────────────────────┘             │            ▼
//!                                     │                                     failed ◀────────────────────┘        Settle
//!                                     └──────────────────────────────────────────────────────────────────────▶ (ack, record)
//! ```
//!
//! The obligations, and the behaviour chosen where the two engines once differed:
//!
//! - **The pace** ([`Pacing::pace`], `[shaping]`): after the guard, before the upstream
//!   permit, a send over its phone number's pace waits for its slot — a timer the engine
//!   sleeps on, no permit held meanwhile — and is guarded again when the slot comes
//!   ([`Waiting::waited`]); past `max_delay` it is answered locally with Meta's 130429.
//! - **The upstream permit** (the engine takes it from `upstream::Limiter`) is handed
//!   to [`Guarded::permitted`] after a wait, which admits the send again — a circuit may have
//!   tripped while it waited — or to [`Guarded::permitted_at_once`] when it was free (nothing
//!   ran since the guard, so it is not asked again); it travels with the request until the answer is judged: [`Reading::judge`]
//!   (or [`Admitted::answered`] for an answer that is not read) drops it. So no queued send
//!   slips out between Meta's 368 and the trip it causes, and the permit is **not** held while
//!   the trip waits to become durable (that wait is disk, not upstream capacity).
//! - **The error body** is read within [`Reading::deadline`], the same `request_timeout` that
//!   bounds the answer's head ([`Admitted::deadline`]), so a stalled body never holds a permit.
//! - **Durability**: an answer that tripped (or a local answer given for a trip not yet
//!   committed) reaches the app only after [`Settle::done`] waited for the store
//!   ([`Policy::acknowledged`], at most [`super::ACK_WAIT`]).
//! - **The record step**: every request's outcome is counted once, in [`Settle::done`] after
//!   the acknowledgement, right before the answer goes out; failures (upstream, client body,
//!   client timeouts) are recorded by the `failed` step of the state they happen in, and
//!   timeouts before a request is routed by [`client_timed_out`]. A state dropped before it
//!   finished (the client went away, a drain cut it) records `abandoned`.
//! - **Requests that are ready** (issue 25): a body up to [`Policy::read_first_limit`]
//!   (at least 64 KiB) is read whole by the guard step, before the permit, so a client
//!   dripping its body holds no permit; a larger one streams and is [`Guarded::large`] (its
//!   permit comes from a budget of its own). No permit within the queue's bounds is
//!   [`Guarded::overloaded`]: a local 503.
//! - **Replies** are values ([`Reply`]) each engine renders once (`proxy::render`,
//!   `relay::render`): the local answer, the 502/504, the 400 and the 408.

use std::time::{Duration, Instant};

use super::{Admit, Body, Call, Outcome, Paced, Paired, Policy, Reply};
use crate::common::error::BoxError;

/// Why a request could not be forwarded; rendered once by the engine as
/// [`Reply::forward_failed`].
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// TCP connect or TLS handshake failed.
    #[error("upstream unreachable")]
    Connect(#[source] BoxError),
    /// No answer head within `request_timeout`.
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The upstream closed or sent something that is not HTTP.
    #[error("upstream answer broken")]
    Broken(#[source] BoxError),
    /// The client's request body broke off or was malformed while it was forwarded.
    #[error("client request body broken")]
    ClientBody(#[source] BoxError),
    /// The client sent nothing of its request body for `client_body_timeout` while it
    /// was forwarded (answered 408, the connection closes).
    #[error("client request body not in within client_body_timeout")]
    ClientTimeout,
}

impl ForwardError {
    /// What the record step counts for this failure.
    fn outcome(&self, after: Duration) -> Outcome {
        match self {
            ForwardError::ClientBody(_) => Outcome::ClientBody,
            ForwardError::ClientTimeout => Outcome::ClientTimeout,
            _ => Outcome::Failed { after },
        }
    }
}

/// The one record of a request's outcome: consumed by [`Settle::done`]; dropped unconsumed,
/// it records [`Outcome::Abandoned`].
#[derive(Debug)]
struct Record {
    call: Call,
    /// The recipient's digits, when the pair step read them (its phone number had pair
    /// holds): a delivery ends the pair's hold ([`Policy::delivered`]).
    to: Option<u64>,
    done: bool,
}

impl Record {
    fn new(call: Call) -> Record {
        Record {
            call,
            to: None,
            done: false,
        }
    }

    fn record(mut self, outcome: Outcome) {
        self.done = true;
        super::record(self.call, outcome);
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if !self.done {
            super::record(self.call, Outcome::Abandoned);
        }
    }
}

/// A 408 for a client whose request head or body missed its deadline before the request
/// was routed (or outside a send: a webhook delivery): recorded once, answered with
/// [`Reply::request_timeout`] (the engine closes the connection after it).
pub fn client_timed_out() -> Reply<'static> {
    super::record(Call::READ, Outcome::ClientTimeout);
    Reply::request_timeout()
}

/// One warning per second at most while requests are answered `overloaded` (the metric
/// counts each).
fn overload_logged() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST.swap(now, Ordering::Relaxed) != now {
        tracing::warn!(
            "no upstream permit within upstream_queue_max / upstream_queue_timeout: answered 503 overloaded (at most one line per second)"
        );
    }
}

/// The end of every path: the outcome to record and, for an answer that tripped a circuit
/// not yet durable, the change to wait for first.
#[must_use = "a request's outcome is recorded when it settles"]
#[derive(Debug)]
pub struct Settle {
    rec: Record,
    outcome: Outcome,
    unacked: Option<u64>,
}

impl Settle {
    /// Waits for the durable acknowledgement when one is due, then records the outcome.
    /// The answer goes to the client after this.
    pub async fn done(self, policy: &Policy) {
        if let Some(seq) = self.unacked {
            policy.acknowledged(seq).await;
        }
        self.rec.record(self.outcome);
    }

    /// Records at once when no acknowledgement is due (the common case, no future to
    /// poll); otherwise gives the settlement back to be [`Settle::done`] asynchronously.
    pub fn now(self) -> Option<Settle> {
        match self.unacked {
            None => {
                self.rec.record(self.outcome);
                None
            }
            Some(_) => Some(self),
        }
    }
}

/// What the guard decided.
#[derive(Debug)]
pub enum Admission<N, R> {
    /// On to the next step.
    Go(N),
    /// Answered locally: the engine's rendering of the reply, sent once settled.
    Local(R, Settle),
}

/// What the first guard decided (it may ask for the body first).
#[derive(Debug)]
pub enum Guard<R> {
    /// On to the pace.
    Go(Pacing),
    /// Read the body (at most `limit` bytes; a larger one is forwarded unread) and admit
    /// again with it.
    Read(Routed, usize),
    /// Answered locally.
    Local(R, Settle),
}

/// A routed Graph call, not yet guarded.
#[derive(Debug)]
pub struct Routed {
    rec: Record,
}

impl Routed {
    /// The request `call` (from [`Policy::route`]) starts its exchange.
    pub fn new(call: Call) -> Routed {
        Routed {
            rec: Record::new(call),
        }
    }

    /// The call.
    pub fn call(&self) -> Call {
        self.rec.call
    }

    /// The guard ([`Policy::admit`]): a send in scope of an open circuit is answered
    /// locally (`render` turns the [`Reply`] into what the engine sends); a decision that
    /// needs the body, or a body not yet read that is small enough to read before the
    /// permit ([`Policy::read_first`]), asks for it first; anything else goes on.
    pub fn admit<R>(
        self,
        policy: &Policy,
        body: Body<'_>,
        render: impl FnOnce(Reply<'_>) -> R,
    ) -> Guard<R> {
        let call = self.rec.call;
        match policy.admit(call, body, render) {
            Admit::Local { answer, unacked } => Guard::Local(answer, self.local(unacked)),
            Admit::Inspect { limit } => Guard::Read(self, limit.max(policy.read_first_limit())),
            Admit::Forward => match body {
                Body::Unread(n) => match policy.read_first(n) {
                    Some(limit) => Guard::Read(self, limit),
                    None => Guard::Go(Pacing {
                        rec: self.rec,
                        large: true,
                    }),
                },
                Body::Read(_) => Guard::Go(Pacing {
                    rec: self.rec,
                    large: false,
                }),
            },
        }
    }

    /// The body the guard asked for is larger than it reads: it goes on unjudged (too
    /// large to be a send the gateway can judge; Meta decides), as [`Policy::admit`] does
    /// for a body declared that large, and its permit comes from the large budget
    /// ([`Guarded::large`]).
    pub fn too_large(self) -> Pacing {
        Pacing {
            rec: self.rec,
            large: true,
        }
    }

    /// The request failed before it was forwarded (its body broke off or timed out while
    /// the guard read it).
    pub fn failed(self, e: &ForwardError) {
        self.rec.record(e.outcome(Duration::ZERO));
    }

    fn local(self, unacked: Option<u64>) -> Settle {
        Settle {
            rec: self.rec,
            outcome: Outcome::Local,
            unacked,
        }
    }
}

/// Guarded, not yet paced.
#[derive(Debug)]
pub struct Pacing {
    rec: Record,
    large: bool,
}

/// What the pace step decided.
#[derive(Debug)]
pub enum Pace<R> {
    /// On to the upstream permit now.
    Go(Guarded),
    /// Sleep until [`Waiting::until`], then [`Waiting::waited`].
    Wait(Waiting),
    /// Answered locally (Meta's 130429, `x-wa-breaker: shaped`).
    Local(R, Settle),
}

impl Pacing {
    /// The call.
    pub fn call(&self) -> Call {
        self.rec.call
    }

    /// The marketing cooldowns ([`Policy::cooldown`]: a MARKETING template to a recipient
    /// its WABA holds after Meta's 131049 is answered locally), the pair holds
    /// ([`Policy::pair`]: a send to a recipient its phone number holds
    /// after Meta's 131056 is answered locally; `body` is read only when the number has
    /// holds), then the pace ([`Policy::pace`]): a send within its phone number's pace goes
    /// on; one over it waits for its slot (at most `max_delay`), or is answered locally
    /// (`render` turns the [`Reply`] into what the engine sends).
    #[inline]
    pub fn pace<R>(
        mut self,
        policy: &Policy,
        body: Body<'_>,
        render: impl FnOnce(Reply<'_>) -> R,
    ) -> Pace<R> {
        if let Some(reply) = policy.cooldown(self.rec.call, body) {
            return Pace::Local(
                render(reply),
                Settle {
                    rec: self.rec,
                    outcome: Outcome::Local,
                    unacked: None,
                },
            );
        }
        match policy.pair(self.rec.call, body) {
            Paired::Go(to) => self.rec.to = to,
            Paired::Local(reply) => {
                return Pace::Local(
                    render(reply),
                    Settle {
                        rec: self.rec,
                        outcome: Outcome::Local,
                        unacked: None,
                    },
                )
            }
        }
        match policy.pace(self.rec.call) {
            Paced::Go(at) => Pace::Go(Guarded {
                rec: self.rec,
                at,
                large: self.large,
            }),
            Paced::Wait(until) => Pace::Wait(Waiting {
                rec: self.rec,
                large: self.large,
                until,
            }),
            Paced::Local(reply) => Pace::Local(
                render(reply),
                Settle {
                    rec: self.rec,
                    outcome: Outcome::Local,
                    unacked: None,
                },
            ),
        }
    }
}

/// A send waiting for its slot in its phone number's pace (no permit held).
#[derive(Debug)]
pub struct Waiting {
    rec: Record,
    large: bool,
    until: Instant,
}

impl Waiting {
    /// When the slot comes.
    pub fn until(&self) -> Instant {
        self.until
    }

    /// The slot has come: the guard again (a circuit may have tripped during the wait),
    /// then on to the upstream permit. `body` is what the engine holds now.
    pub fn waited<R>(
        self,
        policy: &Policy,
        body: Body<'_>,
        render: impl FnOnce(Reply<'_>) -> R,
    ) -> Admission<Guarded, R> {
        match policy.admit(self.rec.call, body, render) {
            Admit::Local { answer, unacked } => Admission::Local(
                answer,
                Settle {
                    rec: self.rec,
                    outcome: Outcome::Local,
                    unacked,
                },
            ),
            // The first guard read every body a decision needs.
            Admit::Forward | Admit::Inspect { .. } => Admission::Go(Guarded {
                rec: self.rec,
                at: None,
                large: self.large,
            }),
        }
    }

    /// The request failed while it waited (its body broke off).
    pub fn failed(self, e: &ForwardError) {
        self.rec.record(e.outcome(Duration::ZERO));
    }
}

/// Guarded and paced, waiting for an upstream permit. Its body is all in (read before the
/// permit, issue 25) unless it is [`Guarded::large`].
#[derive(Debug)]
pub struct Guarded {
    rec: Record,
    /// When the pace was checked, if it was, just before: the start when the permit is
    /// free at once (one clock read per send).
    at: Option<Instant>,
    large: bool,
}

impl Guarded {
    /// The call.
    pub fn call(&self) -> Call {
        self.rec.call
    }

    /// The body is larger than the gateway reads before the permit
    /// ([`Policy::read_first_limit`]) and streams upstream as it arrives: its permit comes
    /// from the large-body budget (`upstream_large_concurrency`), so a client dripping one
    /// never holds a permit that sends need.
    pub fn large(&self) -> bool {
        self.large
    }

    /// No permit within the queue's bounds (`upstream_queue_max`, `upstream_queue_timeout`):
    /// answered locally with [`Reply::overloaded`] (`render` makes the engine's answer),
    /// counted as `overloaded`. Nothing was sent upstream.
    pub fn overloaded<R>(self, render: impl FnOnce(Reply<'_>) -> R) -> (R, Settle) {
        overload_logged();
        (
            render(Reply::overloaded()),
            Settle {
                rec: self.rec,
                outcome: Outcome::Overloaded,
                unacked: None,
            },
        )
    }

    /// With a `permit` taken at once, without waiting: forward now. Nothing ran between
    /// the guard (or the guard after the pace's wait) and this step, so it is not asked
    /// again.
    pub fn permitted_at_once<P>(self, policy: &Policy, permit: P) -> Admitted<P> {
        Admitted {
            rec: self.rec,
            permit,
            start: self.at.unwrap_or_else(Instant::now),
            timeout: policy.request_timeout,
        }
    }

    /// With the upstream `permit` in hand after a wait: the guard again (a send that waited
    /// while its circuit tripped is answered locally, and its permit given back at once),
    /// then forward. `body` is what the engine holds now; the first guard already read what
    /// a decision needs.
    pub fn permitted<P, R>(
        self,
        policy: &Policy,
        permit: P,
        body: Body<'_>,
        render: impl FnOnce(Reply<'_>) -> R,
    ) -> Admission<Admitted<P>, R> {
        match policy.admit(self.rec.call, body, render) {
            Admit::Local { answer, unacked } => {
                drop(permit);
                Admission::Local(
                    answer,
                    Settle {
                        rec: self.rec,
                        outcome: Outcome::Local,
                        unacked,
                    },
                )
            }
            // The first guard read every body a decision needs; one it could not (too
            // large) is forwarded unjudged, as there.
            Admit::Forward | Admit::Inspect { .. } => Admission::Go(Admitted {
                rec: self.rec,
                permit,
                start: Instant::now(),
                timeout: policy.request_timeout,
            }),
        }
    }

    /// The request failed while it waited for its permit (its body broke off).
    pub fn failed(self, e: &ForwardError) {
        self.rec.record(e.outcome(Duration::ZERO));
    }
}

/// Admitted: holds an upstream permit; the engine forwards now and reads the answer's head
/// by [`Admitted::deadline`].
#[derive(Debug)]
pub struct Admitted<P> {
    rec: Record,
    permit: P,
    start: Instant,
    timeout: Duration,
}

/// What to do with an answer once its head is in.
#[derive(Debug)]
pub enum Answered<P> {
    /// Relay it as it comes (2xx, or declared too large to judge); the permit is released.
    Pass(Settle),
    /// Read its body, then [`Reading::judge`] it.
    Read(Reading<P>),
}

impl<P> Admitted<P> {
    /// The call.
    pub fn call(&self) -> Call {
        self.rec.call
    }

    /// `request_timeout` after forwarding: the answer's head (and an error body) must be in
    /// by then, else the request fails with 504.
    pub fn deadline(&self) -> Instant {
        self.start + self.timeout
    }

    /// `request_timeout`, as configured.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The answer's head is in: a non-2xx answer is read to be judged
    /// ([`Policy::inspect`]); anything else passes, releasing the permit.
    pub fn answered(
        self,
        policy: &Policy,
        status: u16,
        content_length: Option<u64>,
    ) -> Answered<P> {
        let to_head = self.start.elapsed();
        if let Some(to) = self.rec.to {
            if (200..300).contains(&status) {
                policy.delivered(self.rec.call, to);
            }
        }
        match policy.inspect(status, content_length) {
            super::Inspect::Pass => Answered::Pass(Settle {
                rec: self.rec,
                outcome: Outcome::Answered { status, to_head },
                unacked: None,
            }),
            super::Inspect::Read { limit } => Answered::Read(Reading {
                rec: self.rec,
                permit: self.permit,
                start: self.start,
                deadline: self.start + self.timeout,
                timeout: self.timeout,
                limit,
                status,
                to_head,
            }),
        }
    }

    /// The forward failed: no answer, a broken one, a timeout, or the client's body broke
    /// off while it was sent. The permit is released; the engine answers
    /// [`Reply::forward_failed`].
    pub fn failed(self, e: &ForwardError) {
        let after = self.start.elapsed();
        drop(self.permit);
        self.rec.record(e.outcome(after));
    }
}

/// An error answer whose body is being read for the classifier (the permit still held).
#[derive(Debug)]
pub struct Reading<P> {
    rec: Record,
    permit: P,
    start: Instant,
    deadline: Instant,
    timeout: Duration,
    limit: usize,
    status: u16,
    to_head: Duration,
}

impl<P> Reading<P> {
    /// The most bytes worth reading (`classify_body_limit`): a larger body passes unjudged.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// When the body must be in (`request_timeout` after forwarding).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// `request_timeout`, for the failure a missed deadline is.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The body is in: [`Policy::classify`] judges it (a trip applies now) and the permit
    /// is released — queued sends may go, or be answered locally, from here on.
    pub fn judge(self, policy: &Policy, answer: super::Answer<'_>) -> Settle {
        let unacked = policy.classify(self.rec.call, answer);
        self.answered(unacked)
    }

    /// The body is larger than [`Reading::limit`]: relayed unjudged.
    pub fn too_large(self) -> Settle {
        self.answered(None)
    }

    /// Releases the permit; the answer settles (after `unacked`, when a trip is pending).
    fn answered(self, unacked: Option<u64>) -> Settle {
        drop(self.permit);
        Settle {
            rec: self.rec,
            outcome: Outcome::Answered {
                status: self.status,
                to_head: self.to_head,
            },
            unacked,
        }
    }

    /// The body broke off or missed the deadline: the request fails as a forward does.
    pub fn failed(self, e: &ForwardError) {
        drop(self.permit);
        self.rec.record(e.outcome(self.start.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::circuit::Scope;
    use crate::metrics::METRICS;
    use crate::policy::testing::{open, policy, PHONE};
    use crate::policy::{Answer, Mode, Route};

    const BLOCKED: &[u8] = br#"{"error":{"message":"(#368) Temporarily blocked for policies violations","type":"OAuthException","code":368,"fbtrace_id":"AbC"}}"#;

    /// A permit that counts itself, as the upstream limiter's do.
    struct Permit(Arc<AtomicUsize>);
    impl Permit {
        fn take(n: &Arc<AtomicUsize>) -> Permit {
            n.fetch_add(1, Ordering::SeqCst);
            Permit(n.clone())
        }
    }
    impl Drop for Permit {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn send(p: &Policy) -> Routed {
        match p.route(&http::Method::POST, &format!("/v21.0/{PHONE}/messages")) {
            Route::Graph(call) => Routed::new(call),
            Route::Webhook => panic!("webhook"),
        }
    }

    fn guarded(p: &Policy) -> Guarded {
        let Guard::Go(g) = send(p).admit(p, Body::Read(b"{}"), |_| ()) else {
            panic!("closed: go")
        };
        match g.pace(p, Body::Read(b"{}"), |_| ()) {
            Pace::Go(g) => g,
            _ => panic!("within the pace: go"),
        }
    }

    fn admitted(p: &Policy, permits: &Arc<AtomicUsize>) -> Admitted<Permit> {
        let g = guarded(p);
        match g.permitted(p, Permit::take(permits), Body::Read(b"{}"), |_| ()) {
            Admission::Go(a) => a,
            Admission::Local(..) => panic!("closed: go"),
        }
    }

    /// The permit goes back when the answer is judged, before the trip it caused is durable
    /// (nothing marks it durable here, so the settlement waits out `ACK_WAIT`).
    #[tokio::test(start_paused = true)]
    async fn the_permit_is_released_at_judgement_and_the_answer_waits_for_durability() {
        let p = policy(Mode::Enforce, 64 * 1024);
        let permits = Arc::new(AtomicUsize::new(0));
        let a = admitted(&p, &permits);
        assert_eq!(permits.load(Ordering::SeqCst), 1);
        let Answered::Read(reading) = a.answered(&p, 403, None) else {
            panic!("an error answer is read")
        };
        assert_eq!(
            permits.load(Ordering::SeqCst),
            1,
            "held while the body is read"
        );
        let settle = reading.judge(&p, Answer::new(403, BLOCKED));
        assert_eq!(permits.load(Ordering::SeqCst), 0, "released once judged");
        assert!(p
            .table()
            .with_guard(crate::policy::testing::WABA, |_| ())
            .is_some());
        // Not durable: the settlement waits (at most ACK_WAIT), then records.
        let settle = settle.now().expect("an acknowledgement is due");
        let start = tokio::time::Instant::now();
        settle.done(&p).await;
        assert!(start.elapsed() >= crate::policy::ACK_WAIT);
    }

    /// A send that waited for its permit while its circuit tripped is answered locally and
    /// gives the permit back at once; 2xx answers pass and release it at the head.
    #[test]
    fn the_second_guard_and_passes_release_the_permit() {
        let p = policy(Mode::Enforce, 64 * 1024);
        let permits = Arc::new(AtomicUsize::new(0));
        let g = guarded(&p);
        open(&p, Scope::AllSends);
        match g.permitted(&p, Permit::take(&permits), Body::Read(b"{}"), |r| {
            r.status()
        }) {
            Admission::Local(status, settle) => {
                assert_eq!(status, 403);
                // Nothing commits in this test: the local answer would wait for it.
                assert!(settle.now().is_some());
            }
            Admission::Go(_) => panic!("open: local"),
        }
        assert_eq!(permits.load(Ordering::SeqCst), 0);

        let p = policy(Mode::Enforce, 64 * 1024);
        let a = admitted(&p, &permits);
        let Answered::Pass(settle) = a.answered(&p, 200, Some(10)) else {
            panic!("2xx passes")
        };
        assert_eq!(permits.load(Ordering::SeqCst), 0);
        assert!(settle.now().is_none());
    }

    /// `enforce` at 1/s with a 3 s `max_delay`: the first send goes, the next ones wait for
    /// their slots and are guarded again when it comes (a circuit opened meanwhile answers
    /// them locally); one whose slot is further than `max_delay` is answered 130429 now.
    #[test]
    fn a_paced_send_waits_and_is_guarded_again() {
        let p = crate::policy::testing::with_settings(crate::policy::Settings {
            shaping: crate::policy::pace::Settings {
                mode: crate::policy::pace::ShapingMode::Enforce,
                throughput: 1,
                max_delay: Duration::from_secs(3),
                ..Default::default()
            },
            ..Default::default()
        });
        let _first = guarded(&p);
        let mut waiting = Vec::new();
        for _ in 0..3 {
            let Guard::Go(g) = send(&p).admit(&p, Body::Read(b"{}"), |_| ()) else {
                panic!("closed: go")
            };
            match g.pace(&p, Body::Read(b"{}"), |_| ()) {
                Pace::Wait(w) => waiting.push(w),
                _ => panic!("over the pace, within max_delay: wait"),
            }
        }
        assert!(waiting[0].until() > Instant::now());
        assert!(waiting[0].until() < waiting[1].until());
        let Guard::Go(g) = send(&p).admit(&p, Body::Read(b"{}"), |_| ()) else {
            panic!("closed: go")
        };
        match g.pace(&p, Body::Read(b"{}"), |r| {
            (r.status().as_u16(), r.marker(), r.retry_after())
        }) {
            Pace::Local((400, "shaped", Some(secs)), _) => assert!(secs >= 1),
            other => panic!("past max_delay: a local 130429, got {other:?}"),
        }
        let w = waiting.remove(0);
        assert!(matches!(
            w.waited(&p, Body::Read(b"{}"), |_| ()),
            Admission::Go(_)
        ));
        open(&p, Scope::AllSends);
        let w = waiting.remove(0);
        match w.waited(&p, Body::Read(b"{}"), |r| r.status()) {
            Admission::Local(status, _) => assert_eq!(status, 403),
            Admission::Go(_) => panic!("a circuit opened during the wait: local"),
        }
    }

    /// A state dropped before it settled (the client went away) records `abandoned`, and
    /// its permit goes back.
    #[test]
    fn an_unfinished_exchange_records_abandoned() {
        let p = policy(Mode::Enforce, 64 * 1024);
        let permits = Arc::new(AtomicUsize::new(0));
        let before = METRICS.abandoned.get();
        drop(admitted(&p, &permits));
        assert_eq!(permits.load(Ordering::SeqCst), 0);
        assert!(METRICS.abandoned.get() > before);
    }

    /// Failures are recorded by the step they happen in; a client timeout is not an
    /// upstream error.
    #[test]
    fn failures_release_the_permit() {
        let p = policy(Mode::Enforce, 64 * 1024);
        let permits = Arc::new(AtomicUsize::new(0));
        let timeouts = METRICS.client_timeouts.get();
        admitted(&p, &permits).failed(&ForwardError::ClientTimeout);
        assert_eq!(permits.load(Ordering::SeqCst), 0);
        assert!(METRICS.client_timeouts.get() > timeouts);
        let a = admitted(&p, &permits);
        let Answered::Read(r) = a.answered(&p, 500, None) else {
            panic!("read")
        };
        r.failed(&ForwardError::Timeout(Duration::from_secs(1)));
        assert_eq!(permits.load(Ordering::SeqCst), 0);
    }
}
