//! Pace per phone number (`[shaping]`): each phone number's sends leave no faster than its
//! throughput, with a burst of at most one second's worth. A pure decision over per-number
//! state in a sharded map (a short lock on one of [`SHARDS`] shards, never held across an
//! await; no global lock); the wait itself is the exchange's pace step
//! ([`super::exchange::Pacing::pace`]), a timer the engine sleeps on.
//!
//! The rule is GCRA with reservations. For a number paced at `r` messages/s the emission
//! interval is `T = 1/r` and the burst `b = max(1, floor(r))`. Each number keeps its
//! theoretical arrival time `tat`; a send at `now` takes the slot `max(tat, now) - (b-1)·T`:
//! at once when that is not in the future, after a wait when it is (the send reserves its
//! slot, `tat` moves on by `T`), and answered locally when the wait would be longer than
//! `max_delay` (nothing is reserved). So in any one second at most `b + r` sends leave.
//!
//! Meta's own 130429 for a number (inbound traffic counts against the same throughput)
//! lowers its pace: it halves (at most once per [`CUT_EVERY`], never below
//! [`FLOOR`] of the throughput), and each [`RECOVER_STEP`] without another 130429 gives
//! back [`RECOVER_SHARE`] of the throughput until the pace is whole again.
//!
//! Meta's 131048 (spam rate limit: too many of the number's messages were blocked or
//! reported) halves the number's pace for `shaping.spam_cooldown`, on top of any 130429 cut;
//! another 131048 meanwhile extends it. The first one of such an episode is a warning
//! (`spam_rate`, see [`super::warning`]).
//!
//! **Meta's level.** A number's throughput is, first found: the operator's
//! `[shaping.phone_throughput]`, Meta's level of the number ([`Pacer::set_level`]: the
//! signals side reads `GET /{phone-number-id}?fields=throughput` once per number and again
//! on `THROUGHPUT_UPGRADE`; `STANDARD` is [`crate::graph::throughput::STANDARD_MPS`], `HIGH`
//! [`crate::graph::throughput::HIGH_MPS`]), else `shaping.throughput`. While the first read
//! of a number is in flight ([`Pacer::expect_levels`], at most [`PENDING_MAX`]) it is paced at
//! the highest level Meta grants (or `shaping.throughput` when that is higher), so a number
//! Meta has upgraded is never held at the default meanwhile; a failed or unknown read ends
//! that at once (the default). A change of throughput carries the number's backlog over
//! (the sends already reserved, at most one second's worth at the new rate), so it takes
//! effect for the number's next sends; the 130429 and 131048 cuts apply on top.
//!
//! With several replicas each paces at its share: the rate divided by the replicas alive
//! ([`Pacer::set_replicas`], counted with heartbeats over Redis by `signals::replicas`),
//! so the fleet together keeps the number's throughput. Alone (no Redis) the share is 1.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::graph::throughput::{Level, HIGH_MPS};
use crate::graph::{GraphId, IdHasher};

/// Shards of the per-number map.
pub const SHARDS: usize = 16;
/// Meta's 130429 halves a number's pace at most once per this (in-flight sends answered
/// together are one signal).
pub const CUT_EVERY: Duration = Duration::from_secs(1);
/// The lowest share of its throughput a number is paced at after 130429s.
pub const FLOOR: f64 = 0.125;
/// How often a lowered pace recovers a step.
pub const RECOVER_STEP: Duration = Duration::from_secs(10);
/// The share of the throughput one recovery step gives back.
pub const RECOVER_SHARE: f64 = 0.1;
/// The longest a number is paced at the highest level while its first level read is in
/// flight; past it (a read lost or slow) it is paced at `shaping.throughput` until the read
/// answers.
pub const PENDING_MAX: Duration = Duration::from_secs(10);

/// `shaping.mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShapingMode {
    /// Sends over the pace wait, or are answered locally past `max_delay` (the default).
    #[default]
    Enforce,
    /// Count and log what would have been held; forward everything.
    Observe,
    /// No pacing at all.
    Off,
}

impl ShapingMode {
    /// As the configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ShapingMode::Enforce => "enforce",
            ShapingMode::Observe => "observe",
            ShapingMode::Off => "off",
        }
    }
}

/// The pacer's settings (built from `[shaping]` at start-up).
#[derive(Clone, Debug)]
pub struct Settings {
    /// `shaping.mode`.
    pub mode: ShapingMode,
    /// `shaping.throughput`: messages/s of a number nothing better is known of.
    pub throughput: u32,
    /// `shaping.max_delay`: the longest wait before a local 130429.
    pub max_delay: Duration,
    /// `[shaping.phone_throughput]`: the operator's word per phone-number id.
    pub phone_throughput: HashMap<GraphId, u32>,
    /// Phone numbers tracked at once (idle ones are evicted past it).
    pub max_numbers: usize,
    /// `shaping.pair_hold`: the first hold of a (phone number, recipient) pair after
    /// Meta's 131056 ([`super::pair`]).
    pub pair_hold: Duration,
    /// `shaping.spam_cooldown`: how long Meta's 131048 halves a number's pace.
    pub spam_cooldown: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: ShapingMode::Enforce,
            throughput: 80,
            max_delay: Duration::from_secs(1),
            phone_throughput: HashMap::new(),
            max_numbers: 100_000,
            pair_hold: Duration::from_secs(4),
            spam_cooldown: Duration::from_secs(3600),
        }
    }
}

/// What the pace says of one send.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    /// Within the pace: now.
    Go,
    /// Its slot is this far ahead (at most `max_delay`).
    Wait(Duration),
    /// The slot is further than `max_delay`: answered locally.
    Over {
        /// When a send would be within `max_delay` again.
        retry_after: Duration,
        /// The number's pace now, messages/s.
        rate: f64,
    },
}

/// Where a number's throughput comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The operator's `[shaping.phone_throughput]`.
    PhoneThroughput,
    /// Meta's level of the number (the `throughput` field).
    Meta,
    /// Its first level read is in flight: paced at the highest level meanwhile.
    Pending,
    /// `shaping.throughput`: nothing better is known.
    Throughput,
}

impl Source {
    /// As `GET /admin/pace` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::PhoneThroughput => "phone_throughput",
            Source::Meta => "meta",
            Source::Pending => "pending",
            Source::Throughput => "throughput",
        }
    }
}

/// A number's pace as the pacer holds it (for the admin API and logs).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PaceView {
    /// The number's throughput (the operator's, else Meta's level, else the default),
    /// messages/s.
    pub throughput: u32,
    /// Where it comes from.
    pub source: Source,
    /// Meta's level of the number, when it was read (shown even when the operator's entry
    /// wins).
    pub level: Option<Level>,
    /// Its pace now on this replica (lowered after Meta's 130429 and 131048, divided
    /// among the replicas), messages/s.
    pub rate: f64,
    /// Replicas sharing the number's pace (1 alone).
    pub replicas: u32,
    /// How far ahead its next free slot is, seconds (0: a send goes at once).
    pub backlog_secs: f64,
}

/// One number's state.
#[derive(Clone, Copy, Debug)]
struct Cell {
    /// Theoretical arrival time, ns since the pacer's epoch.
    tat: i64,
    /// Throughput, messages/s.
    throughput: u32,
    /// When Meta's last 130429 cut the pace (ns since the epoch).
    cut_at: i64,
    /// The share of the throughput right after that cut (1.0: never cut).
    cut_to: f64,
    /// Over the pace since the last send within it (one log line per episode).
    over: bool,
    /// The pace is halved until then after Meta's 131048 (ns since the epoch; 0: never).
    spam_until: i64,
    /// Meta's level of the number, once read.
    level: Option<Level>,
    /// Its first level read is in flight until then at the latest (ns since the epoch; 0:
    /// none): paced at the highest level meanwhile.
    pending_until: i64,
}

impl Cell {
    fn new(throughput: u32) -> Cell {
        Cell {
            tat: i64::MIN,
            throughput,
            cut_at: 0,
            cut_to: 1.0,
            over: false,
            spam_until: 0,
            level: None,
            pending_until: 0,
        }
    }

    /// The number's throughput becomes `throughput` at `now`: the sends already reserved
    /// carry over (at most one second's worth at the new rate), so the next sends follow
    /// the new rate at once — a raise frees slots, a cut makes the number full rather than
    /// owing more than a second.
    fn retarget(&mut self, throughput: u32, now: i64, replicas: u32) {
        if throughput == self.throughput {
            return;
        }
        let old = self.rate(now, replicas);
        self.throughput = throughput.max(1);
        if self.tat <= now {
            return;
        }
        let new = self.rate(now, replicas);
        let owed = ((self.tat - now) as f64 * old / 1e9).min(new.floor().max(1.0));
        self.tat = now + (owed * 1e9 / new) as i64;
    }

    /// The share of the throughput the number is paced at `now`.
    fn share(&self, now: i64) -> f64 {
        if self.cut_to >= 1.0 {
            return 1.0;
        }
        let steps = (now - self.cut_at).max(0) / nanos(RECOVER_STEP);
        (self.cut_to + steps as f64 * RECOVER_SHARE).min(1.0)
    }

    /// The number's pace at `now` on this replica, one of `replicas` sharing it.
    fn rate(&self, now: i64, replicas: u32) -> f64 {
        let spam = if now < self.spam_until { 0.5 } else { 1.0 };
        (self.throughput as f64 * self.share(now) * spam / f64::from(replicas.max(1)))
            .max(f64::MIN_POSITIVE)
    }

    /// The GCRA decision (see the module docs); reserves the slot unless `Over`.
    fn decide(&mut self, now: i64, max_delay: i64, replicas: u32) -> Decision {
        let rate = self.rate(now, replicas);
        let interval = (1e9 / rate) as i64;
        let burst = (rate.floor() as i64).max(1);
        let tat = self.tat.max(now);
        let wait = tat - interval.saturating_mul(burst - 1) - now;
        if wait > max_delay {
            return Decision::Over {
                retry_after: Duration::from_nanos((wait - max_delay) as u64),
                rate,
            };
        }
        self.tat = tat + interval;
        if wait <= 0 {
            Decision::Go
        } else {
            Decision::Wait(Duration::from_nanos(wait as u64))
        }
    }

    /// Meta answered 130429: halve the pace (see the module docs).
    fn cut(&mut self, now: i64) {
        if self.cut_to < 1.0 && now - self.cut_at < nanos(CUT_EVERY) {
            return;
        }
        self.cut_to = (self.share(now) / 2.0).max(FLOOR);
        self.cut_at = now;
    }

    /// Nothing worth keeping: no reservation ahead, pace whole.
    fn idle(&self, now: i64) -> bool {
        self.tat <= now && self.share(now) >= 1.0 && self.spam_until <= now
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// What one pace check found, with whether it starts an episode over the pace (worth one
/// log line).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Checked {
    /// The decision.
    pub decision: Decision,
    /// The first send over the pace since the number was last within it.
    pub episode_starts: bool,
    /// Idle numbers dropped to make room for this one.
    pub evicted: usize,
    /// The number was not tracked and has no operator entry: worth asking Meta's level.
    pub fresh: bool,
    /// The number's throughput (for the local reply's details and the log line).
    pub throughput: u32,
}

// Keys are request-chosen digit strings: the hasher is seeded per process, and each shard
// is capped anyway.
type Shard = Mutex<HashMap<GraphId, Cell, IdHasher>>;

/// Every phone number's pace. One per process, shared by every worker.
pub struct Pacer {
    mode: ShapingMode,
    throughput: u32,
    max_delay: i64,
    spam_cooldown: i64,
    phone_throughput: HashMap<GraphId, u32>,
    /// Meta's levels are read ([`Pacer::expect_levels`]): a new number is pending.
    levels_read: bool,
    per_shard: usize,
    epoch: Instant,
    shards: Box<[Shard]>,
    /// Replicas alive in the fleet (each paces at this share of the rate).
    replicas: AtomicU32,
}

impl Pacer {
    /// A pacer with `settings`.
    pub fn new(settings: Settings) -> Pacer {
        Pacer {
            mode: settings.mode,
            throughput: settings.throughput.max(1),
            max_delay: nanos(settings.max_delay),
            spam_cooldown: nanos(settings.spam_cooldown),
            phone_throughput: settings.phone_throughput,
            levels_read: false,
            per_shard: settings.max_numbers.div_ceil(SHARDS).max(1),
            epoch: Instant::now(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            replicas: AtomicU32::new(1),
        }
    }

    /// `n` replicas share every number's pace from now on (at least 1).
    pub fn set_replicas(&self, n: u32) {
        self.replicas.store(n.max(1), Ordering::Relaxed);
    }

    /// Replicas sharing every number's pace.
    pub fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::Relaxed).max(1)
    }

    /// `shaping.mode`.
    pub fn mode(&self) -> ShapingMode {
        self.mode
    }

    /// `shaping.max_delay`.
    pub fn max_delay(&self) -> Duration {
        Duration::from_nanos(self.max_delay.max(0) as u64)
    }

    /// Meta's level of each number will be read (a token is configured): a number seen for
    /// the first time is paced at the highest level until its read answers ([`Pacer::set_level`],
    /// at most [`PENDING_MAX`]). Called once, before the pacer is shared.
    pub fn expect_levels(&mut self) {
        self.levels_read = true;
    }

    /// The throughput of a number the pacer does not track yet: the operator's, else the
    /// default.
    fn base(&self, phone: &GraphId) -> u32 {
        self.phone_throughput
            .get(phone)
            .copied()
            .unwrap_or(self.throughput)
    }

    /// The throughput a number whose level is being read is paced at meanwhile.
    fn pending_throughput(&self) -> u32 {
        self.throughput.max(HIGH_MPS)
    }

    /// A number's throughput now: the operator's, else Meta's level, else the default.
    pub fn throughput(&self, phone: &GraphId) -> u32 {
        self.view(phone, Instant::now()).throughput
    }

    /// Meta's level of `phone`, read at `now` (`None`: the read failed or named no level
    /// known here — keep what is known). Unless the operator set the number's throughput,
    /// it becomes the level's from its next send; a pending first read ends either way.
    /// Only a tracked number changes (an untracked one is asked again at its first send).
    /// True when the number is tracked.
    pub fn set_level(&self, phone: &GraphId, level: Option<Level>, now: Instant) -> bool {
        let now = self.at(now);
        let operator = self.phone_throughput.contains_key(phone);
        let replicas = self.replicas();
        let mut shard = match self.shard(phone).lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some(cell) = shard.get_mut(phone) else {
            return false;
        };
        if level.is_some() {
            cell.level = level;
        }
        cell.pending_until = 0;
        if !operator {
            let t = cell.level.map_or(self.throughput, Level::mps);
            cell.retarget(t, now, replicas);
        }
        true
    }

    /// A number's shard, by its last two digits (spread evenly enough, two additions).
    fn shard(&self, phone: &GraphId) -> &Shard {
        let d = phone.as_bytes();
        let h = d
            .iter()
            .rev()
            .take(2)
            .fold(0usize, |h, b| h * 10 + *b as usize);
        &self.shards[h % SHARDS]
    }

    fn at(&self, now: Instant) -> i64 {
        nanos(now.saturating_duration_since(self.epoch))
    }

    /// A send of `phone` at `now`: its decision (the slot reserved unless over).
    pub fn check(&self, phone: GraphId, now: Instant) -> Checked {
        let now = self.at(now);
        let mut shard = match self.shard(&phone).lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut evicted = 0;
        if shard.len() >= self.per_shard && !shard.contains_key(&phone) {
            let before = shard.len();
            shard.retain(|_, c| !c.idle(now));
            if shard.len() >= self.per_shard {
                // All busy: the one furthest behind goes (it holds the least reservation).
                if let Some(k) = shard.iter().min_by_key(|(_, c)| c.tat).map(|(k, _)| *k) {
                    shard.remove(&k);
                }
            }
            evicted = before - shard.len();
        }
        let mut fresh = false;
        let replicas = self.replicas();
        let cell = shard
            .entry(phone)
            .or_insert_with(|| match self.phone_throughput.get(&phone) {
                Some(t) => Cell::new(*t),
                None => {
                    fresh = true;
                    if self.levels_read {
                        let mut c = Cell::new(self.pending_throughput());
                        c.pending_until = now.saturating_add(nanos(PENDING_MAX)).max(1);
                        c
                    } else {
                        Cell::new(self.throughput)
                    }
                }
            });
        if cell.pending_until != 0 && now >= cell.pending_until {
            // The read did not answer in time: the default until it does.
            cell.pending_until = 0;
            cell.retarget(self.throughput, now, replicas);
        }
        let decision = cell.decide(now, self.max_delay, replicas);
        let over = decision != Decision::Go;
        let episode_starts = over && !cell.over;
        cell.over = over;
        Checked {
            decision,
            episode_starts,
            evicted,
            fresh,
            throughput: cell.throughput,
        }
    }

    /// Meta answered a send of `phone` with 130429 at `now`: its pace is lowered.
    pub fn throttled(&self, phone: GraphId, now: Instant) {
        let now = self.at(now);
        let throughput = self.base(&phone);
        let mut shard = match self.shard(&phone).lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        shard
            .entry(phone)
            .or_insert_with(|| Cell::new(throughput))
            .cut(now);
    }

    /// Meta answered a send of `phone` with 131048 at `now`: its pace is halved for the
    /// spam cool-down (extended by each one). True when this starts an episode (the pace
    /// was not halved for it already): worth one warning.
    pub fn spam_limited(&self, phone: GraphId, now: Instant) -> bool {
        let now = self.at(now);
        let throughput = self.base(&phone);
        let mut shard = match self.shard(&phone).lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let cell = shard.entry(phone).or_insert_with(|| Cell::new(throughput));
        let starts = cell.spam_until <= now;
        cell.spam_until = now.saturating_add(self.spam_cooldown);
        starts
    }

    /// `shaping.spam_cooldown`.
    pub fn spam_cooldown(&self) -> Duration {
        Duration::from_nanos(self.spam_cooldown.max(0) as u64)
    }

    /// A number's pace at `now`.
    pub fn view(&self, phone: &GraphId, now: Instant) -> PaceView {
        let at = self.at(now);
        let throughput = self.base(phone);
        let shard = match self.shard(phone).lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut cell = shard.get(phone).copied().unwrap_or(Cell::new(throughput));
        drop(shard);
        let pending = cell.pending_until != 0 && at < cell.pending_until;
        if cell.pending_until != 0 && !pending {
            cell.throughput = self.throughput;
        }
        let source = if self.phone_throughput.contains_key(phone) {
            Source::PhoneThroughput
        } else if cell.level.is_some() {
            Source::Meta
        } else if pending {
            Source::Pending
        } else {
            Source::Throughput
        };
        let replicas = self.replicas();
        let rate = cell.rate(at, replicas);
        let burst = (rate.floor() as i64).max(1);
        let slot = cell.tat.max(at) - ((1e9 / rate) as i64).saturating_mul(burst - 1);
        PaceView {
            throughput: cell.throughput,
            source,
            level: cell.level,
            rate,
            replicas,
            backlog_secs: (slot - at).max(0) as f64 / 1e9,
        }
    }

    /// The numbers paced below their throughput's share at `now` (after Meta's 130429 or
    /// 131048) with their pace on this replica, slowest first, at most `max` (a bounded label
    /// set for the per-number gauge).
    pub fn lowered(&self, now: Instant, max: usize) -> Vec<(GraphId, f64)> {
        let at = self.at(now);
        let replicas = self.replicas();
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = match shard.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            out.extend(shard.iter().filter_map(|(phone, cell)| {
                let rate = cell.rate(at, replicas);
                let whole = f64::from(cell.throughput) / f64::from(replicas);
                (rate + 1e-9 < whole).then_some((*phone, rate))
            }));
        }
        out.sort_by(|a, b| a.1.total_cmp(&b.1));
        out.truncate(max);
        out
    }

    /// Numbers tracked now.
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or_else(|p| p.into_inner().len(), |g| g.len()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn id(s: &str) -> GraphId {
        GraphId::new(s).unwrap()
    }

    /// 5/s with a 1 s `max_delay`: 30 sends at once — 5 go now, 5 more wait up to 1 s
    /// (one every 200 ms), 20 are over; no second sees more than 10.

    #[test]
    fn a_burst_of_one_second_then_the_pace_then_over() {
        let mut c = Cell::new(5);
        let decisions: Vec<_> = (0..30).map(|_| c.decide(0, S, 1)).collect();
        assert!(decisions[..5].iter().all(|d| *d == Decision::Go));
        for (i, d) in decisions[5..10].iter().enumerate() {
            assert_eq!(
                *d,
                Decision::Wait(Duration::from_millis(200 * (i as u64 + 1)))
            );
        }
        for d in &decisions[10..] {
            let Decision::Over { retry_after, rate } = d else {
                panic!("{d:?}")
            };
            assert!(*retry_after > Duration::ZERO && *retry_after <= Duration::from_millis(200));
            assert_eq!(*rate, 5.0);
        }
        // A second later the next slot is 200 ms ahead again.
        assert_eq!(
            c.decide(S, S, 1),
            Decision::Wait(Duration::from_millis(200))
        );
    }

    #[test]
    fn sends_within_the_pace_go_at_once() {
        let mut c = Cell::new(10);
        for i in 0..100 {
            assert_eq!(c.decide(i * S / 10, 0, 1), Decision::Go, "send {i}");
        }
        // max_delay 0: the eleventh at once is over, not delayed.
        let mut c = Cell::new(10);
        for _ in 0..10 {
            assert_eq!(c.decide(0, 0, 1), Decision::Go);
        }
        assert!(matches!(c.decide(0, 0, 1), Decision::Over { .. }));
    }

    #[test]
    fn meta_130429_halves_the_pace_and_it_recovers_in_steps() {
        let mut c = Cell::new(80);
        c.cut(0);
        assert_eq!(c.rate(0, 1), 40.0);
        // A second cut within CUT_EVERY is the same signal.
        c.cut(S / 2);
        assert_eq!(c.rate(S / 2, 1), 40.0);
        c.cut(2 * S);
        assert_eq!(c.rate(2 * S, 1), 20.0);
        for _ in 0..5 {
            c.cut(100 * S);
            c.cut_at -= 2 * S;
        }
        assert_eq!(c.rate(100 * S - 10 * S, 1), 80.0 * FLOOR);
        let at = c.cut_at;
        assert_eq!(c.rate(at + 10 * S, 1), 80.0 * (FLOOR + RECOVER_SHARE));
        assert_eq!(c.rate(at + 100 * S, 1), 80.0);
        assert!(c.idle(at + 100 * S));
    }

    #[test]
    fn meta_131048_halves_the_pace_for_the_cooldown_and_starts_one_episode() {
        let p = Pacer::new(Settings {
            spam_cooldown: Duration::from_secs(60),
            ..Settings::default()
        });
        let (a, b) = (id("106540352242922"), id("106540352242923"));
        let t0 = p.epoch;
        assert!(p.spam_limited(a, t0), "the first one starts an episode");
        assert!(
            !p.spam_limited(a, t0 + Duration::from_secs(30)),
            "the same episode"
        );
        assert_eq!(p.view(&a, t0 + Duration::from_secs(31)).rate, 40.0);
        assert_eq!(
            p.view(&b, t0 + Duration::from_secs(31)).rate,
            80.0,
            "other numbers keep theirs"
        );
        // Extended by the second one: halved until 90 s, whole after.
        assert_eq!(p.view(&a, t0 + Duration::from_secs(89)).rate, 40.0);
        assert_eq!(p.view(&a, t0 + Duration::from_secs(91)).rate, 80.0);
        assert!(
            p.spam_limited(a, t0 + Duration::from_secs(91)),
            "a new episode"
        );
        // With a 130429 cut on top, both apply; a number in a cool-down is not idle.
        p.throttled(a, t0 + Duration::from_secs(92));
        assert_eq!(p.view(&a, t0 + Duration::from_secs(92)).rate, 20.0);
        let at = p.at(t0 + Duration::from_secs(145));
        let shard = p.shard(&a).lock().unwrap();
        assert!(!shard[&a].idle(at), "still halved at 145 s");
        assert!(shard[&a].idle(p.at(t0 + Duration::from_secs(300))));
    }

    #[test]
    fn replicas_share_the_pace() {
        let mut c = Cell::new(10);
        // Two replicas: 5/s each, a burst of 5.
        let d: Vec<_> = (0..12).map(|_| c.decide(0, S, 2)).collect();
        assert!(d[..5].iter().all(|d| *d == Decision::Go));
        assert_eq!(d[5], Decision::Wait(Duration::from_millis(200)));
        assert!(matches!(d[10], Decision::Over { rate, .. } if rate == 5.0));
        let p = Pacer::new(Settings::default());
        let a = id("106540352242922");
        assert_eq!(p.view(&a, p.epoch).rate, 80.0);
        p.set_replicas(4);
        assert_eq!(p.view(&a, p.epoch).rate, 20.0);
        assert_eq!(p.view(&a, p.epoch).replicas, 4);
        p.set_replicas(0);
        assert_eq!(p.replicas(), 1, "never below one");
    }

    #[test]
    fn numbers_are_paced_apart_and_operator_throughput_wins() {
        let mut phones = HashMap::new();
        phones.insert(id("111"), 2);
        let p = Pacer::new(Settings {
            mode: ShapingMode::Enforce,
            throughput: 80,
            max_delay: Duration::ZERO,
            phone_throughput: phones,
            max_numbers: 100,
            ..Settings::default()
        });
        let now = Instant::now();
        assert_eq!(p.check(id("111"), now).decision, Decision::Go);
        assert_eq!(p.check(id("111"), now).decision, Decision::Go);
        let third = p.check(id("111"), now);
        assert!(matches!(third.decision, Decision::Over { .. }));
        assert!(third.episode_starts);
        assert!(!p.check(id("111"), now).episode_starts);
        for _ in 0..80 {
            assert_eq!(p.check(id("222"), now).decision, Decision::Go);
        }
        assert_eq!(p.view(&id("222"), now).throughput, 80);
        assert!(p.view(&id("111"), now).backlog_secs > 0.0);
    }

    #[test]
    fn memory_is_bounded_idle_numbers_go_first() {
        let p = Pacer::new(Settings {
            max_numbers: SHARDS,
            ..Settings::default()
        });
        let t0 = Instant::now();
        let mut evicted = 0;
        for i in 0..1000u32 {
            evicted += p.check(id(&(1000 + i).to_string()), t0).evicted;
        }
        assert!(p.tracked() <= SHARDS);
        assert!(evicted >= 1000 - SHARDS);
    }

    #[test]
    fn lowered_numbers_are_listed_lowest_first() {
        let p = Pacer::new(Settings {
            mode: ShapingMode::Enforce,
            throughput: 80,
            ..Settings::default()
        });
        let t0 = Instant::now();
        let a = id("111");
        let b = id("222");
        let c = id("333");
        p.check(c, t0);
        p.throttled(a, t0);
        p.throttled(b, t0);
        p.throttled(b, t0 + Duration::from_secs(2));
        let now = t0 + Duration::from_secs(3);
        let low = p.lowered(now, 10);
        assert_eq!(
            low.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![b, a]
        );
        assert!(
            (low[0].1 - 20.0).abs() < 1e-6 && (low[1].1 - 40.0).abs() < 1e-6,
            "{low:?}"
        );
        assert_eq!(p.lowered(now, 1).len(), 1);
        // Whole again after the recovery: no longer listed.
        assert!(p.lowered(t0 + Duration::from_secs(120), 10).is_empty());
    }

    /// With levels read: a new number is pending (paced at HIGH, not held at the default),
    /// Meta's level then paces it, the operator's entry wins over it, an unknown answer
    /// keeps what is known, and a read that never answers ends at PENDING_MAX.
    #[test]
    fn meta_level_paces_a_number_between_the_operator_and_the_default() {
        let mut phones = HashMap::new();
        phones.insert(id("111"), 2);
        let mut p = Pacer::new(Settings {
            mode: ShapingMode::Enforce,
            throughput: 5,
            max_delay: Duration::ZERO,
            phone_throughput: phones,
            ..Settings::default()
        });
        p.expect_levels();
        let t0 = p.epoch + Duration::from_secs(1);
        let first = p.check(id("222"), t0);
        assert!(first.fresh, "a new number is worth a read");
        assert_eq!(first.throughput, HIGH_MPS, "pending: the highest level");
        assert_eq!(p.view(&id("222"), t0).source, Source::Pending);
        for _ in 0..200 {
            assert_eq!(p.check(id("222"), t0).decision, Decision::Go);
        }
        assert!(!p.check(id("222"), t0).fresh, "once");
        assert!(
            !p.check(id("111"), t0).fresh,
            "the operator's number is not read"
        );

        // STANDARD answers: 80/s; the 202 sends reserved at 1 000/s carry over as one
        // second's worth at 80/s (the number is full, it does not owe 2.5 s).
        assert!(p.set_level(&id("222"), Some(Level::Standard), t0));
        let v = p.view(&id("222"), t0);
        assert_eq!(
            (v.throughput, v.source, v.level),
            (80, Source::Meta, Some(Level::Standard))
        );
        assert!(v.backlog_secs <= 1.0, "{v:?}");
        assert!(matches!(
            p.check(id("222"), t0).decision,
            Decision::Over { .. }
        ));
        // Two seconds on, a whole burst of 80 again.
        let t2 = t0 + Duration::from_secs(2);
        for _ in 0..80 {
            assert_eq!(p.check(id("222"), t2).decision, Decision::Go);
        }
        assert!(matches!(
            p.check(id("222"), t2).decision,
            Decision::Over { .. }
        ));
        // Upgraded: HIGH frees the slots at once.
        p.set_level(&id("222"), Some(Level::High), t2);
        for _ in 0..900 {
            assert_eq!(p.check(id("222"), t2).decision, Decision::Go);
        }
        // An unknown answer keeps what is known; a 130429 halves on top.
        p.set_level(&id("222"), None, t2);
        assert_eq!(p.view(&id("222"), t2).throughput, 1000);
        p.throttled(id("222"), t2);
        assert_eq!(p.view(&id("222"), t2).rate, 500.0);

        // The operator's entry wins over Meta's level (shown, not used).
        p.check(id("111"), t0);
        p.set_level(&id("111"), Some(Level::High), t0);
        let v = p.view(&id("111"), t0);
        assert_eq!(
            (v.throughput, v.source, v.level),
            (2, Source::PhoneThroughput, Some(Level::High))
        );

        // A read that never answers: the default after PENDING_MAX; an untracked number is
        // not created by a level.
        p.check(id("333"), t0);
        let late = t0 + PENDING_MAX + Duration::from_millis(1);
        assert_eq!(p.check(id("333"), late).throughput, 5);
        assert_eq!(p.view(&id("333"), late).source, Source::Throughput);
        assert!(!p.set_level(&id("444"), Some(Level::High), t0));
        assert_eq!(p.view(&id("444"), t0).source, Source::Throughput);

        // Without levels read, a new number is paced at the default at once.
        let q = Pacer::new(Settings {
            throughput: 5,
            ..Settings::default()
        });
        let c = q.check(id("222"), t0);
        assert!(c.fresh);
        assert_eq!(c.throughput, 5);
    }
}
