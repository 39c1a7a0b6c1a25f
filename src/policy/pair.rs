//! Pair holds (`shaping.pair_hold`), the decisions: after Meta answers a send with 131056
//! (the (business number, user) pair rate limit), later sends from that phone number to
//! that recipient are answered locally for the hold, four times longer for each repeat
//! within the hold's reach, capped at [`CAP`] ([`hit`]); a delivered send for the pair ends
//! it ([`end`]). A hold is a record of the circuit table, shared over Redis and kept in the
//! embedded store; the rule and the hot path's index are [`crate::circuit::pair`]. Sends
//! of a phone number with no pair record pay one atomic load or one shard lookup and their
//! body is not read.
//!
//! Recipients compare by their digits ([`recipient`]): `+1 555-765-4321` is `15557654321`.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::circuit::{Action, Change, Evidence, Source};
use crate::graph::GraphId;

pub use crate::circuit::pair::{CAP, FACTOR};

/// Meta answered a send of `phone` to `to` (digits) with 131056 at `at`: the change that
/// holds the pair for `hold` at first (the table applies the repeat rule to the shared
/// record). No evidence is kept: the key names the recipient already, and the record must
/// stay small.
pub fn hit(phone: GraphId, to: u64, hold: Duration, at: DateTime<Utc>) -> Change {
    Change {
        waba_id: String::new(),
        phone_number_id: Some(phone.to_string()),
        template: None,
        country: None,
        recipient: Some(to.to_string()),
        action: Action::PairHit { hold },
        source: Source::Send,
        at,
        reason: "Meta answered 131056 (pair rate limit)".into(),
        evidence: None,
    }
}

/// The change that ends the hold of `phone` to `to` (and its reach): a delivered send
/// (`Source::Send`) or an operator (`Source::Admin`, ordered after everything the record
/// holds). It creates no record.
pub fn end(phone: &str, to: u64, source: Source, at: DateTime<Utc>) -> Change {
    let reason = match source {
        Source::Admin => "cleared by an operator",
        _ => "a send to the recipient was delivered (2xx)",
    };
    Change {
        waba_id: String::new(),
        phone_number_id: Some(phone.to_string()),
        template: None,
        country: None,
        recipient: Some(to.to_string()),
        action: Action::Close,
        source,
        at,
        reason: reason.into(),
        evidence: (source == Source::Admin).then(|| Evidence::Admin {
            reason: reason.into(),
        }),
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
    digits(&to)
}

/// A phone number as its digits (`+1 555-765-4321` is `15557654321`): `None` without
/// digits or with more than 18. How recipients compare everywhere (sends, webhooks).
pub fn digits(s: &str) -> Option<u64> {
    let mut n: u64 = 0;
    let mut count = 0;
    for b in s.bytes().filter(u8::is_ascii_digit) {
        count += 1;
        if count > 18 {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    (count > 0).then_some(n)
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
        use crate::circuit::Table;
        let t = Table::new("t", 5);
        let four = Duration::from_secs(4);
        let t0 = Utc::now();
        let (phone, other) = (id("106540352242922"), id("106540352242923"));
        let pairs = t.pairs();
        let until = |at| {
            t.apply(hit(phone, 15, four, at))
                .and_then(|(c, _)| c.until)
                .map(|u| (u - at).num_seconds())
        };
        assert!(!pairs.any());
        assert_eq!(until(t0), Some(4));
        assert!(pairs.any() && pairs.has(&phone) && !pairs.has(&other));
        assert_eq!(pairs.held(&phone, 15, t0).map(|h| h.1), Some(0));
        assert_eq!(pairs.held(&phone, 16, t0), None);
        assert_eq!(pairs.held(&other, 15, t0), None);
        // Over, but within reach: the next 131056 holds 16 s, then 64 s …
        let t1 = t0 + chrono::Duration::seconds(5);
        assert_eq!(pairs.held(&phone, 15, t1), None);
        assert_eq!(until(t1), Some(16));
        assert_eq!(until(t1), Some(64));
        for _ in 0..10 {
            until(t1);
        }
        assert_eq!(until(t1), Some(CAP.as_secs() as i64));
        // A delivery ends it, and its reach: a first hold again.
        let t2 = t1 + chrono::Duration::seconds(1);
        assert!(t.apply(end(phone.as_str(), 15, Source::Send, t2)).is_some());
        assert!(pairs.held(&phone, 15, t2).is_none());
        assert!(!pairs.active(&phone, 15, t2));
        // A delivery for a pair with no record creates none.
        assert!(t.apply(end(phone.as_str(), 99, Source::Send, t2)).is_none());
        assert_eq!(until(t2 + chrono::Duration::seconds(1)), Some(4));
        assert_eq!(pairs.len(), 1);
        // The record is not a circuit: not counted against max_unknown_circuits.
        assert_eq!(t.unknown_open_count(), 0);
        assert_eq!(t.open_count(), 0);
    }

    #[test]
    fn memory_is_bounded() {
        use crate::circuit::{Directory, Limits, Table};
        let shards = crate::circuit::pair::SHARDS;
        let limits = Limits {
            max_pairs: shards,
            ..Limits::default()
        };
        let t = Table::with_limits("t", 5, limits, Directory::new([], 100));
        let now = Utc::now();
        for i in 0..1000u64 {
            t.apply(hit(
                id(&(1000 + i).to_string()),
                i,
                Duration::from_secs(4),
                now,
            ));
        }
        assert!(t.pairs().len() <= shards, "{}", t.pairs().len());
        assert!(t.len() <= shards);
    }
}
