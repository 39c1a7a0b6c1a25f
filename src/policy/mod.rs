//! The policy core: every decision on the request path, and the order of a request's steps,
//! called by both engines — the byte relay (`relay`) and the hyper + tower stack
//! (`proxy`). The engines move bytes and wait; this module decides. It does no I/O:
//! its only waits are the ones [`exchange`] hands the engines (a durable acknowledgement).
//!
//! A request's path, in the order [`exchange`] makes the engines take it:
//!
//! | step | call | what is decided |
//! |---|---|---|
//! | route + resolve | [`Policy::route`], [`Policy::discover`] | webhook or Graph call; a send or not; the phone number's WABA (the circuit directory); unmapped sends reported to discovery |
//! | guard | [`exchange::Routed::admit`] → [`Policy::admit`] | forward, read the body first (template sends; the recipient's country while the WABA has a country circuit, [`country`]), or answer locally ([`Reply::open`]) |
//! | pace | [`exchange::Pacing::pace`] → [`Policy::pair`] ([`pair`]), then [`Policy::pace`] ([`pace`]) | a send to a recipient its phone number holds after Meta's 131056 is answered locally with 131056; then a send over its phone number's pace waits for its slot (then the guard again, [`exchange::Waiting::waited`]) or is answered locally with Meta's 130429 |
//! | guard | [`exchange::Routed::admit`] → [`Policy::admit`] | forward, read the body first (template sends), or answer locally ([`Reply::open`]) |
//! | pace | [`exchange::Pacing::pace`] → [`Policy::cooldown`] ([`cooldown`]), [`Policy::pair`] ([`pair`]), then [`Policy::pace`] ([`pace`]) | a MARKETING template to a recipient its WABA holds after Meta's 131049 is answered locally with 131049; a send to a recipient its phone number holds after Meta's 131056 is answered locally with 131056; then a send over its phone number's pace waits for its slot (then the guard again, [`exchange::Waiting::waited`]) or is answered locally with Meta's 130429 |
//! | permit + guard again | the engine waits for an upstream permit (`upstream::Limiter`), then [`exchange::Guarded::permitted`] | a send queued while a circuit tripped is answered locally |
//! | forward | engines; request headers filtered by [`hop`], framing by [`framing`] | — |
//! | classify | [`exchange::Admitted::answered`] → [`Policy::inspect`] (a 2xx ends a pair hold the pair step read, [`Policy::delivered`]), then [`exchange::Reading::judge`] → [`Policy::classify`] ([`Answer`], [`judge`], [`decode`]) | whether to read the body; whether it trips the WABA's, the phone number's, the send template's or the recipient country's circuit, and until when |
//! | settle | [`exchange::Settle::done`] | wait until a trip is durable ([`Policy::acknowledged`]); record the outcome, once |
//! | respond | engines render the answer or a [`Reply`] | — |
//!
//! Signals use the same vocabulary: [`plan`] maps webhook events to circuit changes.

pub mod budget;
pub mod cooldown;
pub mod country;
pub mod decode;
pub mod exchange;
pub mod framing;
pub mod hop;
pub mod pace;
pub mod pair;
pub mod plan;
pub mod reply;
pub mod template;
pub mod warning;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use http::Method;
use serde::{Deserialize, Serialize};

pub use crate::circuit::Resolved;
use crate::circuit::{Action, Change, Evidence, Scope, Source, Table};
use crate::graph::envelope;
use crate::graph::route::{self, Kind};
pub use crate::graph::GraphId;
use crate::metrics::METRICS;
pub use exchange::ForwardError;
pub use reply::Reply;

use crate::graph::codes::MAINTENANCE;
pub use crate::graph::codes::{PHONE_CODES, TEMPLATE_CODES};

/// `enforce` answers open circuits locally; `observe` only records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Answer in-scope sends of open circuits locally.
    #[default]
    Enforce,
    /// Trip and record circuits, but forward everything.
    Observe,
}

impl Mode {
    /// As the configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Observe => "observe",
        }
    }
}

/// The policy's own settings (built from the configuration at start-up).
#[derive(Clone, Debug)]
pub struct Settings {
    /// `mode`.
    pub mode: Mode,
    /// `trip_codes`: codes that open a WABA's circuit when a send is answered with one.
    pub trip_codes: Vec<i64>,
    /// `classify_body_limit`: bytes of an error answer (and of a send body) read to judge it.
    pub classify_body_limit: usize,
    /// `webhook.path`: requests to it are Meta's deliveries, not Graph calls.
    pub webhook_path: String,
    /// `request_timeout`: from forwarding to the answer's head, and to an error body's end.
    pub request_timeout: Duration,
    /// `country_hold`: how long a country circuit (130497) holds before one send probes.
    pub country_hold: Duration,
    /// `[shaping]`: the pace per phone number.
    pub shaping: pace::Settings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Enforce,
            trip_codes: crate::graph::codes::DEFAULT_TRIP_CODES.to_vec(),
            classify_body_limit: 64 * 1024,
            webhook_path: "/webhook".into(),
            request_timeout: Duration::from_secs(30),
            country_hold: country::DEFAULT_HOLD,
            shaping: pace::Settings::default(),
        }
    }
}

/// Where the route step reports sends of phone numbers whose WABA is not known (the
/// discovery task implements it with a non-blocking queue push).
pub trait Discovery: Send + Sync {
    /// Whether the send's own `Authorization` may be used for the lookup.
    fn wants_caller_token(&self) -> bool;
    /// Reports `phone`, with the caller's `Authorization` value when it is wanted.
    fn hint(&self, phone: GraphId, authorization: Option<&[u8]>);
}

/// Where the pace step reports a phone number it sees for the first time, so its
/// throughput level is asked of Meta off the hot path (the signals side implements it with a
/// non-blocking queue push and answers through [`pace::Pacer::set_level`]).
pub trait ThroughputReads: Send + Sync {
    /// `phone` is new to the pacer (and has no operator entry).
    fn want(&self, phone: GraphId);
}

/// The hold of a 131057 (maintenance) answer without a usable `retry-after`.
pub const MAINTENANCE_HOLD: Duration = Duration::from_secs(60);
/// Bounds of a 131057 answer's `retry-after`: a value outside is clamped (a zero or past
/// one still holds a second; a huge one at most a quarter of an hour).
pub const MAINTENANCE_HOLD_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(15 * 60));

/// How long a phone-level code holds its phone number's circuit: for maintenance the
/// answer's `retry-after` (clamped to [`MAINTENANCE_HOLD_RANGE`]), else a minute (Meta:
/// "up to ~1 minute"); ten minutes for the others — then one send probes again (an
/// operator or a matching signal closes it earlier).
pub fn phone_hold(code: i64, retry_after: Option<Duration>) -> Duration {
    if code == MAINTENANCE {
        let (lo, hi) = MAINTENANCE_HOLD_RANGE;
        retry_after.map_or(MAINTENANCE_HOLD, |d| d.clamp(lo, hi))
    } else {
        Duration::from_secs(600)
    }
}

/// Parses an answer's `retry-after` value (pure; the one parse both engines use): delay
/// seconds (`120`) or an HTTP-date (`Wed, 21 Oct 2026 07:28:00 GMT`, read against `now`; a
/// past date is zero). `None` for anything else — the caller's default applies.
pub fn retry_after(value: &[u8], now: DateTime<Utc>) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only: a count of seconds (absurdly long ones saturate, then clamp).
        return Some(Duration::from_secs(text.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::from(now))
            .unwrap_or(Duration::ZERO),
    )
}

/// Longest wait for a trip to be durable before its answer goes to the app anyway.
pub const ACK_WAIT: Duration = crate::circuit::Waiter::Send.bound();

/// What the route step found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The webhook path: Meta's deliveries, served by the webhook receiver (`signals::webhook`).
    Webhook,
    /// A Graph API call, forwarded (or answered locally).
    Graph(Call),
}

/// A Graph call as the policy sees it (its ids inline: `Copy`, no allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    /// Send, other write, or read.
    pub kind: Kind,
    /// The phone number and its WABA, when the node is a known phone number.
    pub account: Option<Resolved>,
    /// The phone-number id of a send (known or not): its own circuit, and what discovery
    /// asks about when its WABA is not known.
    pub phone: Option<GraphId>,
}

impl Call {
    /// A call nothing is decided for.
    pub const READ: Call = Call {
        kind: Kind::Read,
        account: None,
        phone: None,
    };

    /// A send whose phone number is not mapped to a WABA (forwarded unprotected).
    pub fn unmapped_send(&self) -> bool {
        self.kind == Kind::Send && self.account.is_none()
    }
}

/// What the engine has of the request body when it asks [`Policy::admit`].
#[derive(Clone, Copy, Debug)]
pub enum Body<'b> {
    /// Not read yet; its declared length when known.
    Unread(Option<u64>),
    /// The whole body.
    Read(&'b [u8]),
}

/// The guard's decision.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<R> {
    /// Forward the request.
    Forward,
    /// Read the body (at most `limit` bytes; a larger one is forwarded) and ask again.
    Inspect {
        /// Largest body worth reading.
        limit: usize,
    },
    /// Answered locally: `answer` is what the engine's closure made of the [`Reply`]. When
    /// the open is not durable yet, `unacked` is its sequence number: the engine passes the
    /// answer on after [`Policy::acknowledged`] (a kill -9 then never forgets a block the
    /// app has heard of).
    Local {
        /// The engine's rendering of the reply.
        answer: R,
        /// The change to wait for, when not yet durable.
        unacked: Option<u64>,
    },
}

/// Request bodies up to this many bytes (or `classify_body_limit`, when larger) are read
/// whole before the upstream permit is taken, on both engines (the relay's own limit,
/// `relay::h1::MAX_BODY`, is the same).
pub const READ_FIRST: usize = 64 * 1024;

/// What to do with an upstream answer's body before relaying it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inspect {
    /// Relay it as it comes (2xx answers are never read or decoded).
    Pass,
    /// Read up to `limit` bytes (a larger body passes unjudged), then [`Policy::classify`].
    Read {
        /// Largest body read.
        limit: usize,
    },
}

/// How a request ended, for the record step (once per request, by [`exchange`]).
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    /// Answered locally by an open circuit.
    Local,
    /// The upstream answered with `status`; `to_head` is the time to the answer's head.
    Answered {
        /// The answer's status code.
        status: u16,
        /// From forwarding to the answer head.
        to_head: Duration,
    },
    /// The client's request body broke off or was malformed (answered 400; not the
    /// upstream's fault).
    ClientBody,
    /// The forward failed (no answer, a broken one, a timeout).
    Failed {
        /// Time until the failure was seen.
        after: Duration,
    },
    /// The client's request head or body missed its deadline (answered 408; not the
    /// upstream's fault).
    ClientTimeout,
    /// The exchange ended before it settled: the client went away, or a drain cut it.
    Abandoned,
    /// No upstream permit within the queue's bounds (answered 503 `overloaded`).
    Overloaded,
}

/// An upstream error answer as [`Policy::classify`] and [`judge`] read it, with the send
/// it answers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Answer<'a> {
    /// The answer's status code.
    pub status: u16,
    /// Its `content-encoding` values, in order.
    pub content_encoding: &'a [&'a [u8]],
    /// Its `retry-after` value (the first), when it has one.
    pub retry_after: Option<&'a [u8]>,
    /// Its body as read (at most `classify_body_limit`).
    pub body: &'a [u8],
    /// The request's body, when the engine holds it whole: read (for its template) only
    /// when the answer is a template code.
    pub request: Option<&'a [u8]>,
}

impl<'a> Answer<'a> {
    /// An answer with `status` and `body`, nothing else.
    pub fn new(status: u16, body: &'a [u8]) -> Answer<'a> {
        Answer {
            status,
            body,
            ..Answer::default()
        }
    }
}

/// What [`judge`] makes of an error answer.
#[derive(Debug, PartialEq)]
pub struct Judgement {
    /// The Graph error code, when the body is an error envelope.
    pub code: Option<i64>,
    /// The circuit change it causes, if any.
    pub change: Option<Change>,
    /// Why the body could not be read (it passes on unjudged).
    pub unreadable: Option<String>,
    /// A send answered 131048 (spam rate limit): the answer as evidence, for the warning
    /// that starts an episode ([`warning::spam_rate`]).
    pub spam: Option<Evidence>,
}

/// The decisions, with what they read: the account map, the circuit table and the
/// configured mode, trip codes and inspection cap. One per process, shared by every worker.
pub struct Policy {
    table: Arc<Table>,
    mode: Mode,
    trip_codes: Vec<i64>,
    classify_limit: usize,
    country_hold: Duration,
    webhook_path: String,
    request_timeout: Duration,
    /// A late acknowledgement was logged and none has been on time since.
    ack_late_logged: AtomicBool,
    /// Where sends of unmapped phone numbers are reported (see [`Policy::discover`]).
    discovery: Option<Arc<dyn Discovery>>,
    /// Where numbers new to the pacer are reported (see [`ThroughputReads`]).
    throughput_reads: Option<Arc<dyn ThroughputReads>>,
    /// Every phone number's pace (`[shaping]`).
    pacer: pace::Pacer,
    /// `shaping.pair_hold`: the first hold of a (phone number, recipient) pair after
    /// Meta's 131056 (the holds are records of the table, [`pair`]).
    pair_hold: Duration,
}

/// What the pair step ([`Policy::pair`]) decided for a send.
#[derive(Debug)]
pub enum Paired {
    /// No hold for its pair: on. The recipient's digits, when its phone number has holds
    /// (its body was read): a delivery ends the pair's reach ([`Policy::delivered`]).
    Go(Option<u64>),
    /// Held: answered locally with Meta's 131056.
    Local(Reply<'static>),
}

/// What the pace step ([`Policy::pace`]) decided for a send.
#[derive(Debug)]
pub enum Paced {
    /// Within its number's pace (or not paced): on at once. The instant the pace was
    /// checked at, when it was: the exchange's start, so a send reads the clock once.
    Go(Option<Instant>),
    /// Its slot is at this instant (at most `max_delay` ahead): wait, then on.
    Wait(Instant),
    /// Past `max_delay`: answered locally with Meta's 130429.
    Local(Reply<'static>),
}

impl Policy {
    /// A policy with `settings`, reading and changing `table`.
    pub fn new(settings: Settings, table: Arc<Table>) -> Policy {
        let pair_hold = settings.shaping.pair_hold;
        Policy {
            table,
            mode: settings.mode,
            trip_codes: settings.trip_codes,
            classify_limit: settings.classify_body_limit,
            country_hold: settings.country_hold,
            webhook_path: settings.webhook_path,
            request_timeout: settings.request_timeout,
            ack_late_logged: AtomicBool::new(false),
            discovery: None,
            throughput_reads: None,
            pacer: pace::Pacer::new(settings.shaping),
            pair_hold,
        }
    }

    /// With discovery: sends of unmapped phone numbers are reported to it.
    pub fn with_discovery(mut self, discovery: Option<Arc<dyn Discovery>>) -> Policy {
        self.discovery = discovery;
        self
    }

    /// With Meta's throughput levels: numbers new to the pacer are reported to `reads`;
    /// `reading` says a token reads them (a new number is then paced at the highest level
    /// until its read answers, see [`pace::Pacer::expect_levels`]).
    pub fn with_throughput_reads(
        mut self,
        reads: Option<Arc<dyn ThroughputReads>>,
        reading: bool,
    ) -> Policy {
        if reads.is_some() && reading {
            self.pacer.expect_levels();
        }
        self.throughput_reads = reads;
        self
    }

    /// Route step, after [`Policy::route`]: a send whose phone number's WABA is not known is
    /// reported to discovery (a non-blocking queue push). `authorization` gives the send's
    /// `Authorization` header; it is called only when `discovery.use_caller_token` is set.
    #[inline]
    pub fn discover<'a>(&self, call: Call, authorization: impl FnOnce() -> Option<&'a [u8]>) {
        if !call.unmapped_send() {
            return;
        }
        let (Some(d), Some(phone)) = (&self.discovery, call.phone) else {
            return;
        };
        let auth = if d.wants_caller_token() {
            authorization()
        } else {
            None
        };
        d.hint(phone, auth);
    }

    /// The circuit table the policy reads.
    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    /// Every phone number's pace.
    pub fn pacer(&self) -> &pace::Pacer {
        &self.pacer
    }

    /// The cooldown step, after the guard and before the pair holds: a send of a MARKETING
    /// template to a recipient its WABA holds in a marketing cooldown (after Meta's 131049)
    /// is answered locally with Meta's 131049 envelope (`enforce`); `observe` counts it and
    /// lets it go. Every send pays one atomic load while no cooldown is held anywhere; the
    /// body is read (its template and `to`) only when the send's WABA holds one.
    #[inline]
    pub fn cooldown(&self, call: Call, body: Body<'_>) -> Option<Reply<'static>> {
        if !self.table.cooldowns().any() || call.kind != Kind::Send {
            return None;
        }
        self.cooldown_held(call, body)
    }

    /// A send while some WABA holds a cooldown (off the common path).
    #[cold]
    fn cooldown_held(&self, call: Call, body: Body<'_>) -> Option<Reply<'static>> {
        let mode = self.pacer.mode();
        let account = call.account?;
        if mode == pace::ShapingMode::Off || !self.table.cooldowns().has(&account.waba) {
            return None;
        }
        // A body the engine does not hold whole (over the read-first limit) is forwarded.
        let Body::Read(b) = body else {
            return None;
        };
        let now = Utc::now();
        let (until, template) = match cooldown::check(&self.table, &account.waba, b, now) {
            cooldown::Check::Free => return None,
            cooldown::Check::Held { until, template } => (until, template),
        };
        if mode == pace::ShapingMode::Observe {
            METRICS.shaping_observed("marketing", "answer");
            return None;
        }
        METRICS.shaped("marketing");
        let left = (until - now).to_std().unwrap_or(Duration::from_secs(1));
        let details = format!(
            "wa-breaker answered this send locally, it did not reach Meta: Meta reported 131049 (the user's marketing limit) for this recipient of WABA {}, and MARKETING templates to them are held until {} (marketing_cooldown; Meta asks to wait at least 24 h, sooner can make the user unreachable another 24 h). Template {template} is MARKETING; utility and authentication templates and free-form messages to this recipient are forwarded. Retry after retry-after.",
            account.waba.as_str(),
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        Some(Reply::shaped(
            crate::graph::codes::MARKETING_LIMIT,
            "(#131049) This message was not delivered to maintain healthy ecosystem engagement",
            &details,
            left,
        ))
    }

    /// The pair step, after the guard and before the pace: a send to a recipient its
    /// phone number is holding after Meta's 131056 (on any replica: the holds are records
    /// of the table) is answered locally with Meta's 131056 envelope (`enforce`);
    /// `observe` counts it and lets it go. The body is read (for its `to`) only when the
    /// phone number has pair records: every other send pays one atomic load.
    #[inline]
    pub fn pair(&self, call: Call, body: Body<'_>) -> Paired {
        if !self.table.pairs().any() || call.kind != Kind::Send {
            return Paired::Go(None);
        }
        match (call.phone, body) {
            (Some(phone), Body::Read(b)) => self.pair_held(phone, b),
            _ => Paired::Go(None),
        }
    }

    /// A send of a phone number that has pair holds (off the common path).
    #[cold]
    fn pair_held(&self, phone: GraphId, body: &[u8]) -> Paired {
        let mode = self.pacer.mode();
        let pairs = self.table.pairs();
        if mode == pace::ShapingMode::Off || !pairs.has(&phone) {
            return Paired::Go(None);
        }
        let Some(to) = pair::recipient(body) else {
            return Paired::Go(None);
        };
        let now = Utc::now();
        match pairs.held(&phone, to, now) {
            None => Paired::Go(Some(to)),
            Some(_) if mode == pace::ShapingMode::Observe => {
                METRICS.shaping_observed("pair", "answer");
                Paired::Go(Some(to))
            }
            Some((until, level)) => {
                METRICS.shaped("pair");
                let retry_after = (until - now).to_std().unwrap_or(Duration::from_secs(1));
                let details = format!(
                    "wa-breaker answered this send locally, it did not reach Meta: Meta answered an earlier send from phone number {} to this recipient with 131056 (pair rate limit), and the pair is held for {} more second(s) (hold {} after {} repeat(s)). Retry after retry-after.",
                    phone.as_str(),
                    retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
                    level + 1,
                    level,
                );
                Paired::Local(Reply::shaped(
                    crate::graph::codes::PAIR_RATE,
                    "(#131056) (Business Account, Consumer Account) pair rate limit hit",
                    &details,
                    retry_after,
                ))
            }
        }
    }

    /// A send whose pair step read its recipient `to` was delivered (2xx): the pair's hold
    /// and reach end, for the whole fleet (a record change, when the pair is held or within
    /// reach; nothing otherwise). The answer does not wait for it to be stored.
    #[cold]
    pub fn delivered(&self, call: Call, to: u64) {
        let Some(phone) = call.phone else {
            return;
        };
        let now = Utc::now();
        if self.table.pairs().active(&phone, to, now) {
            self.table
                .apply(pair::end(phone.as_str(), to, Source::Send, now));
        }
    }

    /// Meta answered a send of `phone` with 131056: its pair (the recipient read from the
    /// request) is held (see [`pair`]), a record of the table at the level the shared
    /// record gives; once per 131056, logged. Unlike a trip, the answer does not wait for
    /// the record to be durable: a hold lost to a kill -9 costs one more 131056, never a
    /// block, and the app must not wait for a disk for it.
    #[cold]
    fn pair_rate_hit(&self, phone: GraphId, request: Option<&[u8]>) {
        if self.pacer.mode() == pace::ShapingMode::Off {
            return;
        }
        let Some(to) = request.and_then(pair::recipient) else {
            return;
        };
        let now = Utc::now();
        let Some((c, _)) = self.table.apply(pair::hit(phone, to, self.pair_hold, now)) else {
            return;
        };
        tracing::info!(
            phone_number_id = %phone.as_str(),
            hold_secs = c.until.map_or(0, |u| (u - now).num_seconds()),
            level = c.pair.map_or(0, |p| p.level),
            shaping = self.pacer.mode().as_str(),
            "Meta answered 131056 (pair rate limit): sends from this phone number to this recipient are held for the hold"
        );
    }

    /// The pace step, after the guard: a send of a phone number over its pace waits for
    /// its slot (at most `max_delay`), else is answered locally with Meta's 130429 envelope
    /// (`enforce`); `observe` counts and logs what would have been held and lets it go;
    /// `off`, reads and other calls go at once.
    #[inline]
    pub fn pace(&self, call: Call) -> Paced {
        let mode = self.pacer.mode();
        if mode == pace::ShapingMode::Off || call.kind != Kind::Send {
            return Paced::Go(None);
        }
        let Some(phone) = call.phone else {
            return Paced::Go(None);
        };
        let now = Instant::now();
        let checked = self.pacer.check(phone, now);
        if checked.evicted > 0 {
            METRICS.shaping_evicted.inc_by(checked.evicted as u64);
        }
        if checked.fresh {
            if let Some(r) = &self.throughput_reads {
                r.want(phone);
            }
        }
        match checked.decision {
            pace::Decision::Go => Paced::Go(Some(now)),
            _ => self.over_pace(phone, checked, now),
        }
    }

    /// A send over its number's pace (off the common path).
    #[cold]
    fn over_pace(&self, phone: GraphId, checked: pace::Checked, now: Instant) -> Paced {
        let mode = self.pacer.mode();
        let throughput = checked.throughput;
        if checked.episode_starts {
            tracing::info!(
                phone_number_id = %phone.as_str(),
                throughput,
                max_delay_ms = self.pacer.max_delay().as_millis() as u64,
                shaping = mode.as_str(),
                "sends of a phone number are over its pace: {}",
                match mode {
                    pace::ShapingMode::Observe => "observe mode forwards them (they would wait, or be answered 130429 past max_delay)",
                    _ => "they wait for their slot, or are answered 130429 past max_delay",
                }
            );
        }
        let observe = mode == pace::ShapingMode::Observe;
        match checked.decision {
            pace::Decision::Go => Paced::Go(Some(now)),
            pace::Decision::Wait(_) if observe => {
                METRICS.shaping_observed("pace", "wait");
                Paced::Go(Some(now))
            }
            pace::Decision::Over { .. } if observe => {
                METRICS.shaping_observed("pace", "answer");
                Paced::Go(Some(now))
            }
            pace::Decision::Wait(w) => {
                METRICS.shaping_wait.observe(w.as_secs_f64());
                Paced::Wait(now + w)
            }
            pace::Decision::Over { retry_after, rate } => {
                METRICS.shaped("pace");
                let details = format!(
                    "wa-breaker answered this send locally, it did not reach Meta: phone number {} is paced at {rate:.1} messages/s (throughput {throughput}), and this send would have waited longer than max_delay ({} ms) for its slot. Retry after retry-after.",
                    phone.as_str(),
                    self.pacer.max_delay().as_millis(),
                );
                Paced::Local(Reply::shaped(
                    crate::graph::codes::THROUGHPUT,
                    "(#130429) Rate limit hit",
                    &details,
                    retry_after,
                ))
            }
        }
    }

    /// Route + resolve: the webhook path, or a Graph call with its kind and account.
    /// `path` is without the query.
    pub fn route(&self, method: &Method, path: &str) -> Route {
        if path == self.webhook_path {
            return Route::Webhook;
        }
        Route::Graph(match route::parse(method, path) {
            Some(r) => {
                // The node parsed once: resolved, and kept as a send's phone number.
                let node = GraphId::new(&r.node);
                Call {
                    kind: r.kind,
                    account: node.and_then(|p| self.table.resolve_id(p)),
                    phone: node.filter(|_| r.kind == Kind::Send),
                }
            }
            None => Call::READ,
        })
    }

    /// The guard. A send of a WABA whose circuit is open is answered locally when it is in
    /// the circuit's scope: every send for `all_sends`, template sends for
    /// `business_initiated`, non-template sends for `customer_initiated` (the partial
    /// scopes need the body; one over `classify_body_limit` is forwarded — too large to
    /// judge, Meta decides). A send to a recipient whose country the WABA's country
    /// circuit holds (Meta's 130497) is answered locally too: the body is read for its
    /// `to` only while that WABA has a country circuit open. Reads and other calls always
    /// pass, and so does everything in observe mode. `local` turns the reply into what the engine
    /// sends, while the circuit is read-locked: keep it short.
    pub fn admit<R>(
        &self,
        call: Call,
        body: Body<'_>,
        local: impl FnOnce(Reply<'_>) -> R,
    ) -> Admit<R> {
        if self.mode == Mode::Observe || call.kind != Kind::Send {
            return Admit::Forward;
        }
        let limit = self.classify_limit;
        let mut local = Some(local);
        let waba = call.account.map(|a| a.waba);
        let mut judge = |guard: &crate::circuit::OpenGuard| -> Admit<R> {
            // Partial scopes need the body: a template or not. One too large to read is
            // forwarded either way (Meta decides).
            let in_scope = match (guard.scope, body) {
                (Scope::AllSends, _) => Some(true),
                (_, Body::Unread(Some(n))) if n > limit as u64 => Some(false),
                (_, Body::Unread(_)) => None,
                (_, Body::Read(b)) if b.len() > limit => Some(false),
                (Scope::BusinessInitiated, Body::Read(b)) => {
                    Some(crate::circuit::template::is_template(b))
                }
                (Scope::CustomerInitiated, Body::Read(b)) => {
                    Some(!crate::circuit::template::is_template(b))
                }
                // A category scope holds only templates whose category is known to be it:
                // one of unknown category is forwarded, never blocked by guesswork.
                (s @ (Scope::MarketingTemplates | Scope::UtilityTemplates), Body::Read(b)) => {
                    let want = match s {
                        Scope::MarketingTemplates => "MARKETING",
                        _ => "UTILITY",
                    };
                    let category = waba
                        .zip(crate::circuit::template::of_send(b))
                        .and_then(|(w, t)| self.table.cooldowns().category(w.as_str(), &t));
                    Some(category.is_some_and(|c| &*c == want))
                }
            };
            match (in_scope, local.take()) {
                (Some(true), Some(f)) => Admit::Local {
                    answer: f(Reply::open(guard)),
                    unacked: (guard.seq > self.table.durable_seq()).then_some(guard.seq),
                },
                (None, _) => Admit::Inspect { limit },
                _ => Admit::Forward,
            }
        };
        // The WABA's circuit first, then the template's (paused or disabled by Meta), then
        // the recipient country's, then the phone number's own (a phone number of unknown WABA that tripped, or one
        // blocked on its own).
        if let Some(a) = call.account {
            match self.table.with_guard(&a.waba, &mut judge) {
                Some(Admit::Forward) | None => {}
                Some(decided) => return decided,
            }
            if self.table.has_open_templates(&a.waba) {
                match body {
                    // Too large to read: forwarded (Meta decides).
                    Body::Unread(Some(n)) if n > limit as u64 => {}
                    Body::Unread(_) => return Admit::Inspect { limit },
                    Body::Read(b) if b.len() > limit => {}
                    Body::Read(b) => {
                        if let Some(t) = crate::circuit::template::of_send(b) {
                            match self.table.with_template_guard(&a.waba, &t, &mut judge) {
                                Some(Admit::Forward) | None => {}
                                Some(decided) => return decided,
                            }
                        }
                    }
                }
            }
        }
        // The WABA's sends to one country (Meta's 130497): the recipient decides, read
        // from the body only while the WABA has such a circuit open.
        if let Some(a) = call.account {
            if self.table.has_open_countries(&a.waba) {
                match body {
                    // Too large to read: forwarded (Meta decides).
                    Body::Unread(Some(n)) if n > limit as u64 => {}
                    Body::Unread(_) => return Admit::Inspect { limit },
                    Body::Read(b) if b.len() > limit => {}
                    Body::Read(b) => {
                        if let Some(code) = country::of_send(b) {
                            match self.table.with_country_guard(&a.waba, code, &mut judge) {
                                Some(Admit::Forward) | None => {}
                                Some(decided) => return decided,
                            }
                        }
                    }
                }
            }
        }
        match call.phone {
            Some(p) => self
                .table
                .with_phone_guard(&p, &mut judge)
                .unwrap_or(Admit::Forward),
            None => Admit::Forward,
        }
    }

    /// Whether an engine that streams request bodies (hyper) reads a body whole before the
    /// upstream permit, and up to how many bytes: one whose declared length (`None`:
    /// chunked or unknown) is at most [`Policy::read_first_limit`], as nginx's
    /// `proxy_request_buffering` (issue 25: a client dripping its body must not hold a
    /// permit), and as the relay, which holds every request whole. It also lets
    /// [`Policy::classify`] find a send's template if Meta answers 132015/132016. A longer
    /// body streams (its permit from the large-body budget) and is judged without it.
    pub fn read_first(&self, declared: Option<u64>) -> Option<usize> {
        let limit = self.read_first_limit();
        declared.is_none_or(|n| n <= limit as u64).then_some(limit)
    }

    /// The largest body read whole before the upstream permit: [`READ_FIRST`] or
    /// `classify_body_limit`, the larger.
    pub fn read_first_limit(&self) -> usize {
        self.classify_limit.max(READ_FIRST)
    }

    /// On an answer's head: a non-2xx answer is read (up to `classify_body_limit`) to be
    /// judged; a 2xx, or one that declares a larger body, passes as it comes.
    pub fn inspect(&self, status: u16, content_length: Option<u64>) -> Inspect {
        if (200..300).contains(&status)
            || content_length.is_some_and(|n| n > self.classify_limit as u64)
        {
            Inspect::Pass
        } else {
            Inspect::Read {
                limit: self.classify_limit,
            }
        }
    }

    /// Judges an error answer's body (see [`judge`]), counts its Graph code and applies the
    /// circuit change. When the answer is an enforcement error for a send whose circuit is
    /// open but not yet durable (this trip, or a concurrent one), returns the sequence number
    /// to wait for with [`Policy::acknowledged`] before the answer goes to the app.
    pub fn classify(&self, call: Call, answer: Answer<'_>) -> Option<u64> {
        let status = answer.status;
        let request = answer.request;
        let mut j = judge_with(
            &self.trip_codes,
            self.classify_limit,
            self.country_hold,
            call,
            answer,
            Utc::now(),
        );
        if let Some(code) = j.code {
            METRICS.upstream_code(code);
            // Meta's own throughput answer for a send: that number's pace is lowered
            // (inbound traffic counts against it too).
            if code == crate::graph::codes::THROUGHPUT && call.kind == Kind::Send {
                if let Some(phone) = call.phone {
                    self.pacer.throttled(phone, Instant::now());
                }
            }
            if code == crate::graph::codes::PAIR_RATE && call.kind == Kind::Send {
                if let Some(phone) = call.phone {
                    self.pair_rate_hit(phone, request);
                }
            }
        }
        if let (Some(evidence), Some(phone)) = (j.spam.take(), call.phone) {
            self.spam_limited(call, phone, evidence);
        }
        if let Some(why) = &j.unreadable {
            tracing::debug!(status, reason = %why, "error answer not judged");
        }
        let change = j.change?;
        let phone_circuit = change.phone_number_id.is_some();
        let waba = change.waba_id.clone();
        let template = change.template.clone();
        let country = change
            .country
            .as_deref()
            .and_then(crate::circuit::country::parse_code);
        self.table.apply(change);
        let durable = self.table.durable_seq();
        if let Some(code) = country {
            return self
                .table
                .with_country_guard(&waba, code, |g| g.seq)
                .filter(|seq| *seq > durable);
        }
        let seq = match (template, phone_circuit, call.phone) {
            (Some(t), _, _) => self.table.with_template_guard(&waba, &t, |g| g.seq),
            (None, true, Some(p)) => self.table.with_phone_guard(&p, |g| g.seq),
            _ => self.table.with_guard(&waba, |g| g.seq),
        };
        seq.filter(|seq| *seq > durable)
    }

    /// Meta answered a send of `phone` with 131048: its pace is halved for
    /// `shaping.spam_cooldown` ([`pace`]); the first one of an episode — on this replica,
    /// and not announced by another within the cool-down (the record is shared) — is a
    /// warning ([`warning::spam_rate`]).
    fn spam_limited(&self, call: Call, phone: GraphId, evidence: Evidence) {
        if !self.pacer.spam_limited(phone, Instant::now()) {
            return;
        }
        let waba = call.account.map(|a| a.waba.to_string()).unwrap_or_default();
        let key = crate::circuit::key(&waba, waba.is_empty().then_some(phone.as_str()));
        let cooldown = self.pacer.spam_cooldown();
        let now = Utc::now();
        let since = now - chrono::Duration::from_std(cooldown).unwrap_or_default();
        if warning::spam_announced(self.table.get(&key).as_ref(), phone.as_str(), since) {
            tracing::info!(phone_number_id = %phone, "131048 spam rate limit: pace halved; the episode was announced by another replica");
            return;
        }
        self.table
            .apply(warning::spam_rate(&waba, phone, evidence, cooldown, now));
    }

    /// Waits (at most [`ACK_WAIT`]) until the change `seq` is committed to the embedded
    /// store. Past the bound the answer goes anyway: counted in
    /// `wa_breaker_ack_timeouts_total` and logged once per stretch of timeouts.
    pub async fn acknowledged(&self, seq: u64) {
        if self
            .table
            .wait_durable(seq, crate::circuit::Waiter::Send)
            .await
        {
            self.ack_late_logged.store(false, Ordering::Relaxed);
            return;
        }
        METRICS.ack_timeouts.inc();
        if !self.ack_late_logged.swap(true, Ordering::Relaxed) {
            tracing::error!(
                wait_ms = ACK_WAIT.as_millis() as u64,
                "a circuit change was not durable in time: answering anyway (a kill -9 now could forget it; see wa_breaker_store_durable)"
            );
        }
    }
}

/// The record step: counts how a request ended in the metrics. Called once per request,
/// only by [`exchange`] (its states make a second call, or none, impossible).
fn record(call: Call, outcome: Outcome) {
    match outcome {
        Outcome::Local => METRICS.answered_locally.inc(),
        Outcome::Answered { status, to_head } => {
            METRICS.observe_upstream(Some(status), to_head.as_secs_f64());
            if call.unmapped_send() {
                METRICS.unmapped.inc();
            } else {
                METRICS.forwarded.inc();
            }
        }
        Outcome::Failed { after } => {
            METRICS.observe_upstream(None, after.as_secs_f64());
            METRICS.upstream_error.inc();
        }
        Outcome::ClientBody => METRICS.client_body_errors.inc(),
        Outcome::ClientTimeout => METRICS.client_timeouts.inc(),
        Outcome::Abandoned => METRICS.abandoned.inc(),
        Outcome::Overloaded => METRICS.overloaded.inc(),
    }
}

/// Judges a non-2xx answer's body (pure): decodes it as `content-encoding` says (capped at
/// `cap` decoded bytes), reads the Graph error envelope, and — for a **send** of a known
/// phone number answered with a code in `trip_codes` — opens the WABA's circuit for all
/// sends, with the answer as evidence. A send answered with a template code
/// ([`TEMPLATE_CODES`]) opens its template's circuit instead ([`template::from_answer`]), one
/// answered with a phone-level code its phone number's ([`PHONE_CODES`]). Any other call
/// (a `/register` with a wrong PIN answered 131031, a `GET`, a media upload) never trips:
/// only sends are enforcement signals. Unreadable bodies (not an envelope, unknown or
/// corrupt encoding, too large decoded) trip nothing.
pub fn judge(
    trip_codes: &[i64],
    cap: usize,
    call: Call,
    answer: Answer<'_>,
    now: DateTime<Utc>,
) -> Judgement {
    judge_with(trip_codes, cap, country::DEFAULT_HOLD, call, answer, now)
}

/// [`judge`] with the hold of a country circuit (`country_hold`): a send answered 130497
/// opens the circuit of its WABA's sends to the recipient's country
/// ([`country::from_answer`]), never the WABA's, whatever `trip_codes` says.
pub fn judge_with(
    trip_codes: &[i64],
    cap: usize,
    country_hold: Duration,
    call: Call,
    answer: Answer<'_>,
    now: DateTime<Utc>,
) -> Judgement {
    let Answer {
        status,
        content_encoding,
        body,
        ..
    } = answer;
    let mut j = Judgement {
        code: None,
        change: None,
        unreadable: None,
        spam: None,
    };
    let body = match decode::decode(content_encoding, body, cap) {
        Ok(b) => b,
        Err(e) => {
            j.unreadable = Some(crate::common::error::error_chain(&e));
            return j;
        }
    };
    let Some(err) = envelope::parse(&body) else {
        j.unreadable = Some("not a Graph error envelope".into());
        return j;
    };
    j.code = Some(err.code);
    if call.kind != Kind::Send {
        return j;
    }
    if err.code == crate::graph::codes::SPAM_RATE && !trip_codes.contains(&err.code) {
        j.spam = Some(send_evidence(call, err));
        return j;
    }
    // A template code is about one template, whatever `trip_codes` says: the WABA's other
    // sends still work.
    if TEMPLATE_CODES.contains(&err.code) {
        j.change = template::from_answer(call, cap, answer, err, now);
        return j;
    }
    // A country restriction is about the recipient's country: the WABA's sends to other
    // countries still work.
    if err.code == crate::graph::codes::COUNTRY_RESTRICTED {
        j.change = country::from_answer(call, cap, answer, err, country_hold, now);
        return j;
    }
    if !trip_codes.contains(&err.code) {
        if PHONE_CODES.contains(&err.code) {
            let retry = answer.retry_after.and_then(|v| retry_after(v, now));
            j.change = phone_level(call, status, err, retry, now);
        }
        return j;
    }
    // A known phone number trips its WABA; one whose WABA is not known yet trips its own
    // circuit, widened to the WABA once the owner is learned (never a guess).
    let (waba_id, phone_number_id) = match (call.account, call.phone) {
        (Some(a), _) => (a.waba.to_string(), None),
        (None, Some(p)) => (String::new(), Some(p.to_string())),
        (None, None) => return j,
    };
    let reason = if err.message.is_empty() {
        format!("HTTP {status}, Graph error {}", err.code)
    } else {
        err.message.clone()
    };
    j.change = Some(Change {
        waba_id,
        phone_number_id,
        template: None,
        country: None,
        recipient: None,
        action: Action::Open {
            scope: Scope::AllSends,
            code: Some(err.code),
            until: None,
        },
        source: Source::Send,
        at: now,
        reason,
        evidence: Some(send_evidence(call, err)),
    });
    j
}

/// A send's answer as evidence (the recipient is never kept).
pub(crate) fn send_evidence(call: Call, err: envelope::GraphError) -> Evidence {
    Evidence::Send {
        code: err.code,
        error_subcode: err.error_subcode,
        message: err.message,
        fbtrace_id: err.fbtrace_id,
        phone_number_id: call.phone.map(|p| p.to_string()),
    }
}

/// A send answered with a phone-level code: its phone number's own circuit opens (known
/// WABA or not) for [`phone_hold`], with the answer as evidence.
fn phone_level(
    call: Call,
    status: u16,
    err: envelope::GraphError,
    retry_after: Option<Duration>,
    now: DateTime<Utc>,
) -> Option<Change> {
    let phone = call.phone?;
    let hold = chrono::Duration::from_std(phone_hold(err.code, retry_after)).ok()?;
    let reason = if err.message.is_empty() {
        format!(
            "HTTP {status}, Graph error {} (phone number level)",
            err.code
        )
    } else {
        format!("{} (phone number level)", err.message)
    };
    Some(Change {
        waba_id: call.account.map(|a| a.waba.to_string()).unwrap_or_default(),
        phone_number_id: Some(phone.to_string()),
        template: None,
        country: None,
        recipient: None,
        action: Action::Open {
            scope: Scope::AllSends,
            code: Some(err.code),
            until: Some(now + hold),
        },
        source: Source::Send,
        at: now,
        reason,
        evidence: Some(send_evidence(call, err)),
    })
}

#[cfg(test)]
mod tests;

/// Test helpers shared by the crate's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use super::{Mode, Policy, Settings};
    use crate::circuit::{Directory, Limits, Scope, Source, Table};

    /// The WABA of [`policy`]'s one account.
    pub const WABA: &str = "102290129340398";
    /// Its phone number.
    pub const PHONE: &str = "106540352242922";

    /// A policy over an empty table with one account (`WABA`: `PHONE`).
    pub fn policy(mode: Mode, classify_body_limit: usize) -> Policy {
        with_settings(Settings {
            mode,
            classify_body_limit,
            ..Settings::default()
        })
    }

    /// [`policy`] with `settings`.
    pub fn with_settings(settings: Settings) -> Policy {
        let phones = [PHONE.to_string()];
        let directory = Directory::new([(WABA, &phones[..])], 100_000);
        let table = Table::with_limits("test", 20, Limits::default(), directory);
        Policy::new(settings, Arc::new(table))
    }

    /// Opens `WABA`'s circuit with `scope`.
    pub fn open(p: &Policy, scope: Scope) {
        p.table().apply(crate::circuit::testing::open(
            WABA,
            scope,
            None,
            Source::Admin,
        ));
    }
}
