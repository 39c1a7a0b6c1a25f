//! Pair holds (`shaping.pair_hold`): after Meta answers a send with 131056 (the
//! (business number, user) pair rate limit), later sends from that phone number to that
//! recipient are answered locally for the hold, four times longer for each repeat within
//! the hold's reach ([`Pairs::hit`]), capped at [`CAP`]; a delivered send for the pair ends
//! it ([`Pairs::delivered`]). A pure decision over a sharded map (a short lock on one shard,
//! never held across an await; no global lock). Sends of a phone number with no hold pay one
//! atomic load ([`Pairs::any`]) or one shard lookup ([`Pairs::has_holds`]) and their body
//! is not read.
//!
//! Recipients compare by their digits ([`recipient`]): `+1 555-765-4321` is `15557654321`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::graph::GraphId;

/// The longest hold.
pub const CAP: Duration = Duration::from_secs(15 * 60);
/// Each repeat within the hold's reach holds this many times longer (Meta: retry after 4^n s).
pub const FACTOR: u32 = 4;
/// Shards of the pair map (by phone number).
pub const SHARDS: usize = 16;

/// One pair's hold.
#[derive(Clone, Copy, Debug)]
struct Hold {
    /// Sends are held until then (ns since the epoch).
    until: i64,
    /// A 131056 up to then repeats the hold (four times longer); past it the pair is
    /// forgotten. The hold's end plus its length again.
    reach: i64,
    /// Repeats so far (0: the first hold).
    level: u32,
}

#[derive(Default)]
struct Shard {
    phones: HashMap<GraphId, HashMap<u64, Hold>>,
    pairs: usize,
}

impl Shard {
    /// Drops `phone`'s pairs past their reach.
    fn prune(&mut self, phone: &GraphId, now: i64) {
        let Some(m) = self.phones.get_mut(phone) else {
            return;
        };
        let before = m.len();
        m.retain(|_, h| h.reach > now);
        let gone = before - m.len();
        if m.is_empty() {
            self.phones.remove(phone);
        }
        self.pairs -= gone;
    }
}

/// What the pair step found for one send.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Check {
    /// No hold for the pair.
    Free,
    /// Held: answered locally for this long (or counted in observe mode).
    Held {
        /// Until the hold ends.
        retry_after: Duration,
        /// Its repeats so far.
        level: u32,
    },
}

/// Every (phone number, recipient) pair on hold. One per process, shared by every worker.
pub struct Pairs {
    hold: Duration,
    per_shard: usize,
    epoch: Instant,
    /// Pairs held or within reach, all shards together: 0 is the fast path.
    live: AtomicUsize,
    shards: Box<[Mutex<Shard>]>,
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl Pairs {
    /// Holds of `hold` first, at most `max_pairs` pairs tracked (idle ones evicted first).
    pub fn new(hold: Duration, max_pairs: usize) -> Pairs {
        Pairs {
            hold,
            per_shard: max_pairs.div_ceil(SHARDS).max(1),
            epoch: Instant::now(),
            live: AtomicUsize::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    fn at(&self, now: Instant) -> i64 {
        nanos(now.saturating_duration_since(self.epoch))
    }

    fn shard(&self, phone: &GraphId) -> std::sync::MutexGuard<'_, Shard> {
        let h = phone
            .as_bytes()
            .iter()
            .rev()
            .take(2)
            .fold(0usize, |h, b| h * 10 + *b as usize);
        match self.shards[h % SHARDS].lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn sync_live(&self, before: usize, after: usize) {
        if after > before {
            self.live.fetch_add(after - before, Ordering::Relaxed);
        } else if before > after {
            self.live.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// Whether any pair is tracked at all (one atomic load: the pass-through path).
    #[inline]
    pub fn any(&self) -> bool {
        self.live.load(Ordering::Relaxed) > 0
    }

    /// Whether `phone` has pairs held or within reach (its sends' bodies are read then).
    pub fn has_holds(&self, phone: &GraphId, now: Instant) -> bool {
        let now = self.at(now);
        let mut s = self.shard(phone);
        let before = s.pairs;
        s.prune(phone, now);
        let after = s.pairs;
        let has = s.phones.contains_key(phone);
        drop(s);
        self.sync_live(before, after);
        has
    }

    /// A send of `phone` to `to` (digits, [`recipient`]) at `now`.
    pub fn check(&self, phone: &GraphId, to: u64, now: Instant) -> Check {
        let at = self.at(now);
        let s = self.shard(phone);
        match s.phones.get(phone).and_then(|m| m.get(&to)) {
            Some(h) if h.until > at => Check::Held {
                retry_after: Duration::from_nanos((h.until - at) as u64),
                level: h.level,
            },
            _ => Check::Free,
        }
    }

    /// Meta answered a send of `phone` to `to` with 131056 at `now`: the pair is held for
    /// `pair_hold`, or four times the last hold when this comes within its reach (capped
    /// at [`CAP`]). Returns the hold and the idle pairs evicted to make room.
    pub fn hit(&self, phone: GraphId, to: u64, now: Instant) -> (Duration, usize) {
        let at = self.at(now);
        let mut s = self.shard(&phone);
        let before = s.pairs;
        s.prune(&phone, at);
        let level = s
            .phones
            .get(&phone)
            .and_then(|m| m.get(&to))
            .map_or(0, |h| h.level.saturating_add(1));
        let hold = (0..level)
            .try_fold(self.hold, |d, _| d.checked_mul(FACTOR))
            .unwrap_or(CAP)
            .min(CAP);
        let mut evicted = 0;
        let known = s.phones.get(&phone).is_some_and(|m| m.contains_key(&to));
        if !known && s.pairs >= self.per_shard {
            let pruned = s.pairs;
            for m in s.phones.values_mut() {
                m.retain(|_, h| h.reach > at);
            }
            s.phones.retain(|_, m| !m.is_empty());
            s.pairs = s.phones.values().map(HashMap::len).sum();
            if s.pairs >= self.per_shard {
                // All held: the one ending first goes.
                let first = s
                    .phones
                    .iter()
                    .flat_map(|(p, m)| m.iter().map(move |(t, h)| (h.reach, *p, *t)))
                    .min_by_key(|(reach, _, _)| *reach);
                if let Some((_, p, t)) = first {
                    if let Some(m) = s.phones.get_mut(&p) {
                        m.remove(&t);
                        if m.is_empty() {
                            s.phones.remove(&p);
                        }
                    }
                    s.pairs -= 1;
                }
            }
            evicted = pruned - s.pairs;
        }
        let len = nanos(hold);
        let until = at.saturating_add(len);
        let fresh = s
            .phones
            .entry(phone)
            .or_default()
            .insert(
                to,
                Hold {
                    until,
                    reach: until.saturating_add(len),
                    level,
                },
            )
            .is_none();
        if fresh {
            s.pairs += 1;
        }
        let after = s.pairs;
        drop(s);
        self.sync_live(before, after);
        (hold, evicted)
    }

    /// A send of `phone` to `to` was delivered (2xx), or an operator cleared the pair: it
    /// is forgotten. True when it was tracked.
    pub fn delivered(&self, phone: &GraphId, to: u64) -> bool {
        let mut s = self.shard(phone);
        let before = s.pairs;
        let mut found = false;
        if let Some(m) = s.phones.get_mut(phone) {
            if m.remove(&to).is_some() {
                found = true;
                if m.is_empty() {
                    s.phones.remove(phone);
                }
                s.pairs -= 1;
            }
        }
        let after = s.pairs;
        drop(s);
        self.sync_live(before, after);
        found
    }

    /// The pairs held at `now` (not those only within reach), for the admin API: phone
    /// number, recipient's digits, time left, repeats so far.
    pub fn held(&self, now: Instant) -> Vec<(GraphId, u64, Duration, u32)> {
        let at = self.at(now);
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let s = match shard.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            for (phone, m) in &s.phones {
                for (to, h) in m.iter().filter(|(_, h)| h.until > at) {
                    let left = Duration::from_nanos((h.until - at) as u64);
                    out.push((*phone, *to, left, h.level));
                }
            }
        }
        out
    }

    /// Pairs tracked now.
    pub fn tracked(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

/// The recipient of a send body: the top-level `"to"` string's digits (`+1 555-765-4321`
/// is `15557654321`), or `None` when there is none, it has no digits or more than 18, or the
/// body is not a JSON object. Parsed as JSON, as the template of a send is
/// (`circuit::template::of_send`), so a `"to"` inside a nested object or a string is never
/// taken for the recipient. Read only for numbers that have pair holds (off the common path).
pub fn recipient(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Msg<'a> {
        #[serde(borrow)]
        to: Option<std::borrow::Cow<'a, str>>,
    }
    let to = serde_json::from_slice::<Msg>(body).ok()?.to?;
    let mut n: u64 = 0;
    let mut digits = 0;
    for b in to.bytes().filter(u8::is_ascii_digit) {
        digits += 1;
        if digits > 18 {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    (digits > 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> GraphId {
        GraphId::new(s).unwrap()
    }

    #[test]
    fn recipients_compare_by_digits() {
        let a = recipient(br#"{"messaging_product":"whatsapp","to":"+1 555-765-4321"}"#);
        let b = recipient(br#"{"to" : "15557654321","type":"text"}"#);
        assert_eq!(a, Some(15557654321));
        assert_eq!(a, b);
        assert_eq!(
            recipient(br#"{"text":{"body":"to"},"to":"49 30"}"#),
            Some(4930)
        );
        assert_eq!(recipient(br#"{"to":""}"#), None);
        assert_eq!(recipient(br#"{"type":"text"}"#), None);
        assert_eq!(recipient(br#"{"to":"1234567890123456789"}"#), None);
        // Hostile shapes: a nested or quoted `"to"` is not the recipient; not JSON, none.
        assert_eq!(
            recipient(br#"{"context":{"to":"111"},"text":{"body":"\"to\":\"222\""},"to":"333"}"#),
            Some(333)
        );
        assert_eq!(recipient(br#"{"interactive":{"to":"111"}}"#), None);
        assert_eq!(recipient(br#"{"to":"15557654321""#), None);
        assert_eq!(recipient(b"\"to\":\"1\""), None);
    }

    #[test]
    fn a_hold_quadruples_within_its_reach_and_a_delivery_ends_it() {
        let p = Pairs::new(Duration::from_secs(4), 100);
        let t0 = Instant::now();
        let (phone, other) = (id("111"), id("222"));
        assert!(!p.any());
        assert_eq!(p.hit(phone, 15, t0).0, Duration::from_secs(4));
        assert!(p.any() && p.has_holds(&phone, t0) && !p.has_holds(&other, t0));
        assert!(matches!(
            p.check(&phone, 15, t0),
            Check::Held { level: 0, .. }
        ));
        assert_eq!(p.check(&phone, 16, t0), Check::Free);
        assert_eq!(p.check(&other, 15, t0), Check::Free);
        // Over, but within reach: the next 131056 holds 16 s, then 64 s …
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(p.check(&phone, 15, t1), Check::Free);
        assert_eq!(p.hit(phone, 15, t1).0, Duration::from_secs(16));
        assert_eq!(p.hit(phone, 15, t1).0, Duration::from_secs(64));
        for _ in 0..10 {
            p.hit(phone, 15, t1);
        }
        assert_eq!(p.hit(phone, 15, t1).0, CAP);
        p.delivered(&phone, 15);
        assert!(!p.any());
        assert_eq!(p.hit(phone, 15, t1).0, Duration::from_secs(4));
        // Past its reach the pair is forgotten: a first hold again.
        let t2 = t1 + Duration::from_secs(9);
        assert!(!p.has_holds(&phone, t2));
        assert!(!p.any());
        assert_eq!(p.hit(phone, 15, t2).0, Duration::from_secs(4));
    }

    #[test]
    fn memory_is_bounded() {
        let p = Pairs::new(Duration::from_secs(4), SHARDS);
        let t0 = Instant::now();
        let mut evicted = 0;
        for i in 0..1000u64 {
            evicted += p.hit(id(&(1000 + i).to_string()), i, t0).1;
        }
        assert!(p.tracked() <= SHARDS);
        assert!(evicted >= 1000 - SHARDS);
    }
}
