//! Pair holds (after Meta's 131056, the (business number, user) pair rate limit), the
//! mechanics. When it is decided: `policy::pair`. A pair hold is a record of the circuit
//! table keyed `pair:{phone_number_id}:{digits}` ([`key`]): open until its `until`, which
//! the expiry timer closes, with its [`Repeat`] (the level and the reach). So it is kept in
//! the embedded store across a restart, shared over Redis with every replica and ordered
//! like every record — but, unlike a WABA's trip, no send's answer waits for it to be
//! durable: a pair hold lost to a kill -9 costs one more 131056 from Meta, never a block.
//!
//! The rule ([`hit`]): the first 131056 holds the pair for `pair_hold`; another one within
//! the hold's **reach** (while it holds, or up to the hold's length again after it ended)
//! holds it [`FACTOR`] times longer, at most [`CAP`]; past its reach the pair starts again.
//! A delivered send (2xx) or an operator ends the hold and its reach ([`Repeat::reach`]
//! `None`). The level is read from the shared record, so a repeat on another replica
//! quadruples too.
//!
//! Two replicas that record a 131056 for the same pair at the same moment each compute from
//! what they held; the records merge by the ordering rule (event time, version, replica), and
//! when the newer of two open holds has the earlier end or the lower level, the replica that
//! receives it keeps the **later end and the higher level** and publishes that
//! ([`combine`]): every replica ends with the longer hold.
//!
//! The hot path's view ([`PairIndex`]): every pair record by phone number, then recipient,
//! in 16 shards (a short lock on one shard, never across an await). A send pays one atomic
//! load while no pair record exists anywhere, one shard lookup while its phone number has
//! none.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::model::Circuit;
use crate::graph::GraphId;

/// Prefix of pair hold keys.
pub const KEY_PREFIX: &str = "pair:";

/// The longest hold.
pub const CAP: Duration = Duration::from_secs(15 * 60);

/// Each repeat within the hold's reach holds this many times longer (Meta: retry after 4^n s).
pub const FACTOR: u32 = 4;

/// Shards of the index (by phone number); the cap is kept per shard.
pub const SHARDS: usize = 16;

/// The key of a pair hold: `pair:{phone_number_id}:{digits}`.
pub fn key(phone_number_id: &str, recipient: &str) -> String {
    format!("{KEY_PREFIX}{phone_number_id}:{recipient}")
}

/// A pair hold's repeat state, on its record ([`Circuit::pair`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repeat {
    /// Repeats so far (0: the first hold); the hold was [`FACTOR`] times longer for each.
    pub level: u32,
    /// A 131056 up to then repeats the hold: its end plus its length again. `None` once a
    /// delivery or an operator ended it (the next 131056 starts again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reach: Option<DateTime<Utc>>,
}

/// The hold at `level`: `base` × [`FACTOR`]^level, at most [`CAP`].
pub fn hold_len(base: Duration, level: u32) -> Duration {
    (0..level)
        .try_fold(base, |d, _| d.checked_mul(FACTOR))
        .unwrap_or(CAP)
        .min(CAP)
}

/// What a 131056 at `at` makes of a pair's record `cur` (pure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The hold's level.
    pub level: u32,
    /// Its end.
    pub until: DateTime<Utc>,
    /// Its reach.
    pub reach: DateTime<Utc>,
}

fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A 131056 at `at` for the pair whose record is `cur` (none yet: `None`), first hold
/// `base` (pure): held or within reach, one level up; else level 0. `None` when the
/// answer is older than the delivery or operator that ended the hold (it changes nothing).
/// The end is never earlier than an open hold's (two answers out of order extend, never
/// shorten).
pub fn hit(cur: Option<&Circuit>, at: DateTime<Utc>, base: Duration) -> Option<Hit> {
    let rep = cur.and_then(|c| c.pair);
    let open = cur.is_some_and(Circuit::is_open);
    if let Some(c) = cur {
        let ended = !open && rep.is_none_or(|r| r.reach.is_none());
        if ended && at < c.updated_at {
            return None;
        }
    }
    let within = open || rep.and_then(|r| r.reach).is_some_and(|r| at < r);
    let level = match rep {
        Some(r) if within => r.level.saturating_add(1),
        _ => 0,
    };
    let len = hold_len(base, level);
    let mut until = add(at, len);
    if open {
        if let Some(u) = cur.and_then(|c| c.until) {
            until = until.max(u);
        }
    }
    Some(Hit {
        level,
        until,
        reach: add(until, len),
    })
}

/// The merge of two pair records, `incoming` newer than `current` by the ordering rule
/// (pure): `Some` record to keep instead of `incoming` when both are open holds and
/// `current` ends later or has the higher level — the later end and the higher level win
/// (the caller orders it after both and publishes it). `None`: `incoming` as it is.
pub fn combine(incoming: &Circuit, current: &Circuit) -> Option<Circuit> {
    if !(incoming.is_pair() && current.is_pair() && incoming.is_open() && current.is_open()) {
        return None;
    }
    let (a, b) = (incoming.pair?, current.pair?);
    let later = current
        .until
        .is_some_and(|u| incoming.until.is_none_or(|i| u > i));
    if !later && b.level <= a.level {
        return None;
    }
    let mut c = incoming.clone();
    c.until = incoming.until.max(current.until);
    c.pair = Some(Repeat {
        level: a.level.max(b.level),
        reach: a.reach.max(b.reach),
    });
    c.opened_at = match (incoming.opened_at, current.opened_at) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    c.version = incoming.version.max(current.version) + 1;
    Some(c)
}

/// One pair's record as the hot path reads it (times in ns since the Unix epoch).
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Held until then (`i64::MIN`: not held, the record is closed).
    until: i64,
    /// Within reach until then (`i64::MIN`: no reach).
    reach: i64,
    /// Repeats so far.
    level: u32,
}

#[derive(Default)]
struct Shard {
    phones: HashMap<GraphId, HashMap<u64, Entry>>,
    count: usize,
}

fn ns(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
        i64::MIN + 1
    } else {
        i64::MAX
    })
}

/// A pair hold as the index lists it: phone number, recipient's digits, end, level.
pub type Listed = (GraphId, u64, DateTime<Utc>, u32);

/// The hot path's view of the pair records (see the module docs): one entry per record of
/// the table, open or closed, kept in step by the table under the record's entry.
pub struct PairIndex {
    /// Pair records in the table, all shards together: 0 is the fast path.
    records: AtomicUsize,
    /// Of them, open (held).
    held: AtomicUsize,
    shards: Box<[Mutex<Shard>]>,
}

impl Default for PairIndex {
    fn default() -> Self {
        PairIndex {
            records: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }
}

/// The phone number and recipient of a pair record.
fn ids(c: &Circuit) -> Option<(GraphId, u64)> {
    let phone = GraphId::new(c.phone_number_id.as_deref()?)?;
    let to = c.recipient.as_deref()?.parse().ok()?;
    Some((phone, to))
}

fn shard_of(phone: &GraphId) -> usize {
    phone
        .as_bytes()
        .iter()
        .rev()
        .take(2)
        .fold(0usize, |h, b| h * 10 + *b as usize)
        % SHARDS
}

impl PairIndex {
    fn shard(&self, phone: &GraphId) -> std::sync::MutexGuard<'_, Shard> {
        match self.shards[shard_of(phone)].lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// True when any pair record exists (one atomic load: the pass-through path).
    #[inline]
    pub fn any(&self) -> bool {
        self.records.load(Ordering::Acquire) > 0
    }

    /// True when `phone` has pair records (its sends' bodies are read then).
    pub fn has(&self, phone: &GraphId) -> bool {
        self.any() && self.shard(phone).phones.contains_key(phone)
    }

    /// The hold of `phone` to `to` at `now`, when one holds: its end and level.
    pub fn held(
        &self,
        phone: &GraphId,
        to: u64,
        now: DateTime<Utc>,
    ) -> Option<(DateTime<Utc>, u32)> {
        let at = ns(now);
        let s = self.shard(phone);
        let e = s.phones.get(phone)?.get(&to)?;
        (e.until > at).then(|| (DateTime::from_timestamp_nanos(e.until), e.level))
    }

    /// True when the pair is held or within reach at `now` (a delivery or an operator has
    /// something to end).
    pub fn active(&self, phone: &GraphId, to: u64, now: DateTime<Utc>) -> bool {
        let at = ns(now);
        let s = self.shard(phone);
        s.phones
            .get(phone)
            .and_then(|m| m.get(&to))
            .is_some_and(|e| e.until > at || e.reach > at)
    }

    /// Pair records (open or closed) in the table.
    pub fn len(&self) -> usize {
        self.records.load(Ordering::Acquire)
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Open pair holds.
    pub fn held_count(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Every open hold (for the admin API), in no order.
    pub fn list(&self) -> Vec<Listed> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let s = match shard.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            for (phone, m) in &s.phones {
                for (to, e) in m.iter().filter(|(_, e)| e.until != i64::MIN) {
                    out.push((
                        *phone,
                        *to,
                        DateTime::from_timestamp_nanos(e.until),
                        e.level,
                    ));
                }
            }
        }
        out
    }

    /// Makes the view agree with the pair record `c`, or forgets it (`removed`).
    pub fn sync(&self, c: &Circuit, removed: bool) {
        let Some((phone, to)) = ids(c) else {
            return;
        };
        let mut s = self.shard(&phone);
        let old = if removed {
            let old = s.phones.get_mut(&phone).and_then(|m| m.remove(&to));
            if s.phones.get(&phone).is_some_and(HashMap::is_empty) {
                s.phones.remove(&phone);
            }
            old
        } else {
            let rep = c.pair.unwrap_or(Repeat {
                level: 0,
                reach: None,
            });
            let e = Entry {
                until: match (c.is_open(), c.until) {
                    (true, Some(u)) => ns(u),
                    (true, None) => i64::MAX,
                    _ => i64::MIN,
                },
                reach: rep.reach.map_or(i64::MIN, ns),
                level: rep.level,
            };
            // Counted up before inserting, so `any` never reads low.
            self.records.fetch_add(1, Ordering::AcqRel);
            let old = s.phones.entry(phone).or_default().insert(to, e);
            if old.is_some() {
                self.records.fetch_sub(1, Ordering::AcqRel);
            } else {
                s.count += 1;
            }
            if e.until != i64::MIN {
                self.held.fetch_add(1, Ordering::AcqRel);
            }
            old
        };
        if let Some(o) = old {
            if o.until != i64::MIN {
                self.held.fetch_sub(1, Ordering::AcqRel);
            }
            if removed {
                s.count -= 1;
                self.records.fetch_sub(1, Ordering::AcqRel);
            }
        }
        drop(s);
        crate::metrics::METRICS
            .shaping_pairs
            .set(self.held_count() as i64);
    }

    /// The records to drop so a new pair of `phone` fits within `max_pairs` (kept per
    /// shard: `max_pairs` / [`SHARDS`], at least 1): none while its shard has room; else
    /// every one of the shard past its reach and no longer held, or — when none is —
    /// the one whose reach ends first. As (phone number, recipient).
    pub fn victims(
        &self,
        phone: &GraphId,
        max_pairs: usize,
        now: DateTime<Utc>,
    ) -> Vec<(GraphId, u64)> {
        let per_shard = max_pairs.div_ceil(SHARDS).max(1);
        let at = ns(now);
        let s = self.shard(phone);
        if s.count < per_shard {
            return Vec::new();
        }
        let all = s
            .phones
            .iter()
            .flat_map(|(p, m)| m.iter().map(move |(t, e)| (*p, *t, *e)));
        let idle: Vec<(GraphId, u64)> = all
            .clone()
            .filter(|(_, _, e)| e.until <= at && e.reach <= at)
            .map(|(p, t, _)| (p, t))
            .collect();
        if !idle.is_empty() {
            return idle;
        }
        all.min_by_key(|(_, _, e)| (e.reach.max(e.until), e.until))
            .map(|(p, t, _)| vec![(p, t)])
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::State;
    use chrono::TimeZone;

    const PHONE: &str = "106540352242922";

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_900_000_000 + s, 0).unwrap()
    }

    fn record(level: u32, until: i64, reach: Option<i64>, open: bool, updated: i64) -> Circuit {
        Circuit {
            phone_number_id: Some(PHONE.into()),
            recipient: Some("15557654321".into()),
            state: if open { State::Open } else { State::Closed },
            until: open.then(|| at(until)),
            pair: Some(Repeat {
                level,
                reach: reach.map(at),
            }),
            ..Circuit::new("", at(updated))
        }
    }

    const FOUR: Duration = Duration::from_secs(4);

    #[test]
    fn keys_and_lengths() {
        assert_eq!(
            key(PHONE, "15557654321"),
            "pair:106540352242922:15557654321"
        );
        let c = record(0, 4, Some(8), true, 0);
        assert_eq!(c.key(), "pair:106540352242922:15557654321");
        assert!(c.is_pair() && !c.is_cooldown() && c.is_hold() && c.has_valid_ids());
        let back: Circuit = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert_eq!(hold_len(FOUR, 0), FOUR);
        assert_eq!(hold_len(FOUR, 2), Duration::from_secs(64));
        assert_eq!(hold_len(FOUR, 5), CAP);
        assert_eq!(hold_len(FOUR, u32::MAX), CAP);
    }

    #[test]
    fn the_repeat_rule_reads_the_shared_record() {
        // The first: level 0, 4 s, reach 8 s after.
        assert_eq!(
            hit(None, at(0), FOUR),
            Some(Hit {
                level: 0,
                until: at(4),
                reach: at(8)
            })
        );
        // While held (a record another replica made): four times longer.
        let held = record(0, 4, Some(8), true, 0);
        assert_eq!(
            hit(Some(&held), at(1), FOUR).map(|h| (h.level, h.until)),
            Some((1, at(17)))
        );
        // Ended by its timer but within reach: still a repeat; past its reach: level 0.
        let ended = Circuit {
            updated_at: at(4),
            ..record(0, 4, Some(8), false, 4)
        };
        assert_eq!(hit(Some(&ended), at(6), FOUR).map(|h| h.level), Some(1));
        assert_eq!(hit(Some(&ended), at(9), FOUR).map(|h| h.level), Some(0));
        // Capped.
        let high = record(9, 900, Some(1800), true, 0);
        assert_eq!(
            hit(Some(&high), at(1), FOUR).map(|h| h.until),
            Some(at(1) + chrono::Duration::minutes(15))
        );
        // A delivery ended it at 10: an older answer changes nothing; a newer starts again.
        let delivered = record(1, 0, None, false, 10);
        assert_eq!(hit(Some(&delivered), at(9), FOUR), None);
        assert_eq!(
            hit(Some(&delivered), at(11), FOUR).map(|h| h.level),
            Some(0)
        );
        // An answer out of order never shortens an open hold.
        let long = record(2, 100, Some(164), true, 50);
        assert_eq!(
            hit(Some(&long), at(40), FOUR).map(|h| h.until),
            Some(at(296))
        );
        let longer = record(0, 500, Some(504), true, 50);
        assert_eq!(
            hit(Some(&longer), at(40), FOUR).map(|h| h.until),
            Some(at(500))
        );
    }

    #[test]
    fn the_later_end_and_the_higher_level_win() {
        // Two replicas held the pair at once: A at level 2 (until 64), B, newer, at level 1.
        let mut a = record(2, 64, Some(128), true, 1);
        a.origin = "a".into();
        a.version = 3;
        let mut b = record(1, 17, Some(33), true, 2);
        b.origin = "b".into();
        b.version = 2;
        assert!(crate::circuit::newer(&b, &a));
        let c = combine(&b, &a).expect("A's longer hold is kept");
        assert_eq!(c.until, Some(at(64)));
        assert_eq!(c.pair.map(|p| p.level), Some(2));
        assert_eq!(c.updated_at, b.updated_at);
        assert!(crate::circuit::newer(&c, &a) && crate::circuit::newer(&c, &b));
        // The newer one is at least as long and as high: taken as it is.
        assert_eq!(combine(&c, &b), None);
        let mut d = c.clone();
        d.version += 1;
        d.until = Some(at(70));
        assert_eq!(combine(&d, &c), None);
        // A close (a delivery, the timer) is never combined: it ends the hold.
        let closed = record(2, 0, None, false, 3);
        assert_eq!(combine(&closed, &a), None);
    }

    fn hit_change(phone: &str, to: u64, at: DateTime<Utc>) -> crate::circuit::Change {
        crate::circuit::Change {
            waba_id: String::new(),
            phone_number_id: Some(phone.into()),
            template: None,
            country: None,
            recipient: Some(to.to_string()),
            action: crate::circuit::Action::PairHit { hold: FOUR },
            source: crate::circuit::Source::Send,
            at,
            reason: "131056".into(),
            evidence: None,
        }
    }

    /// In the table: a newer record from another replica with a shorter hold is merged to
    /// the later end and the higher level, and published from here; holds count against
    /// their own caps (a replica's merges too), never `max_circuits` or
    /// `max_unknown_circuits`.
    #[test]
    fn the_table_merges_to_the_longer_hold_and_holds_have_their_own_cap() {
        use crate::circuit::{Directory, Limits, Origin, Table};
        let limits = Limits {
            max_circuits: 2,
            max_unknown: 1,
            max_pairs: 64,
            ..Limits::default()
        };
        let t = Table::with_limits("a", 5, limits, Directory::new([], 100));
        let mut notices = t.subscribe();
        let now = Utc::now();
        t.apply(hit_change(PHONE, 1, now)).unwrap();
        let (held, _) = t.apply(hit_change(PHONE, 1, now)).unwrap();
        assert_eq!(held.pair.map(|p| p.level), Some(1));
        // Replica b recorded level 0 a moment later, without having seen ours.
        let mut theirs = Circuit {
            origin: "b".into(),
            updated_at: now + chrono::Duration::milliseconds(5),
            version: 1,
            until: Some(now + chrono::Duration::seconds(4)),
            pair: Some(Repeat {
                level: 0,
                reach: Some(now + chrono::Duration::seconds(8)),
            }),
            ..held.clone()
        };
        theirs.opened_at = theirs.updated_at.into();
        while notices.try_recv().is_ok() {}
        assert!(t.merge(theirs.clone()));
        let kept = t.get(&held.key()).unwrap();
        assert_eq!(kept.until, held.until, "the later end");
        assert_eq!(kept.pair.map(|p| p.level), Some(1), "the higher level");
        assert_eq!(kept.origin, "a");
        assert!(crate::circuit::newer(&kept, &theirs));
        let n = notices.try_recv().unwrap();
        assert_eq!(n.origin, Origin::Local, "published from here");
        // Many pairs: not circuits, not unknown circuits.
        for i in 2..40 {
            t.apply(hit_change(PHONE, i, now)).unwrap();
        }
        assert_eq!(t.unknown_open_count(), 0);
        let close = crate::circuit::Change {
            waba_id: "102290129340398".into(),
            phone_number_id: None,
            recipient: None,
            action: crate::circuit::Action::Close,
            source: crate::circuit::Source::Webhook,
            ..hit_change(PHONE, 0, now)
        };
        assert!(t.apply(close).is_some(), "a WABA's close still finds room");
        // Merges from other replicas count against the cap: 64 / 16 = 4 per shard.
        for i in 100..140u64 {
            let mut c = theirs.clone();
            c.recipient = Some(i.to_string());
            t.merge(c);
        }
        assert!(t.pairs().len() <= 4, "{}", t.pairs().len());
    }

    #[test]
    fn the_index_follows_records_and_the_cap_picks_victims() {
        let idx = PairIndex::default();
        let phone = GraphId::new(PHONE).unwrap();
        assert!(!idx.any() && !idx.has(&phone));
        let c = record(1, 100, Some(200), true, 0);
        idx.sync(&c, false);
        idx.sync(&c, false);
        assert_eq!((idx.len(), idx.held_count()), (1, 1));
        assert!(idx.has(&phone));
        assert_eq!(idx.held(&phone, 15557654321, at(50)), Some((at(100), 1)));
        assert_eq!(idx.held(&phone, 15557654321, at(150)), None);
        assert!(idx.active(&phone, 15557654321, at(150)));
        assert!(!idx.active(&phone, 15557654321, at(250)));
        assert_eq!(idx.held(&phone, 15557654322, at(50)), None);
        assert_eq!(idx.list().len(), 1);
        // The timer closes it: no longer held, still a record within reach.
        let closed = record(1, 0, Some(200), false, 100);
        idx.sync(&closed, false);
        assert_eq!((idx.len(), idx.held_count()), (1, 0));
        assert!(idx.list().is_empty());
        // Past the cap (1 per shard): the idle one goes first, else the one ending first.
        assert_eq!(idx.victims(&phone, 1, at(250)), vec![(phone, 15557654321)]);
        assert_eq!(idx.victims(&phone, 1, at(150)), vec![(phone, 15557654321)]);
        assert!(idx.victims(&phone, 100, at(150)).is_empty());
        idx.sync(&closed, true);
        assert!(!idx.any() && !idx.has(&phone));
        assert_eq!(idx.len(), 0);
    }
}
