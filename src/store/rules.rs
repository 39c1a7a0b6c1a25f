//! The pure part of the Redis layout: key names, the ordering key the compare-and-set script
//! compares, TTLs, and which local circuits to write back after an outage. No I/O here.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::circuit::{Circuit, Mapping, State};

/// An open circuit with a known end keeps its Redis key this long past `until`.
pub const UNTIL_GRACE: Duration = Duration::from_secs(3600);

/// The shortest TTL ever set (a key that should already be gone lives this long).
const MIN_TTL: Duration = Duration::from_secs(1);

/// Name of the JSON field holding [`order_key`] in a Redis value.
pub const ORDER_FIELD: &str = "order_key";

/// Keys and channels under a prefix: `{prefix}:circuit:{waba_id}` and `{prefix}:changes`
/// for circuits, `{prefix}:account:{phone_number_id}` and `{prefix}:accounts` for phone →
/// WABA mappings; `{prefix}:poll:{circuit-key}` (+ `:last`) and
/// `{prefix}:poll-budget:{id}:{hour}` for the health pollers' leases and hourly budgets.
#[derive(Clone, Debug)]
pub struct Layout {
    prefix: String,
    key_prefix: String,
    channel: String,
    pattern: String,
    account_prefix: String,
    account_channel: String,
    account_pattern: String,
}

impl Layout {
    /// The layout for `redis_prefix`.
    pub fn new(prefix: &str) -> Layout {
        Layout {
            prefix: prefix.to_string(),
            key_prefix: format!("{prefix}:circuit:"),
            channel: format!("{prefix}:changes"),
            pattern: format!("{}*", glob_escape(&format!("{prefix}:circuit:"))),
            account_prefix: format!("{prefix}:account:"),
            account_channel: format!("{prefix}:accounts"),
            account_pattern: format!("{}*", glob_escape(&format!("{prefix}:account:"))),
        }
    }

    /// The key of one phone number's mapping.
    pub fn account_key(&self, phone: &str) -> String {
        format!("{}{phone}", self.account_prefix)
    }

    /// The phone-number id of a mapping key, if it is one.
    pub fn phone_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(&self.account_prefix)
    }

    /// The channel mapping changes are published on.
    pub fn account_channel(&self) -> &str {
        &self.account_channel
    }

    /// The `SCAN … MATCH` pattern of every mapping key.
    pub fn account_pattern(&self) -> &str {
        &self.account_pattern
    }

    /// The key of one WABA's circuit.
    pub fn key(&self, waba_id: &str) -> String {
        format!("{}{waba_id}", self.key_prefix)
    }

    /// The WABA id of a circuit key, if it is one.
    pub fn waba_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(&self.key_prefix)
    }

    /// The pub/sub channel changes are published on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The `SCAN … MATCH` pattern of every circuit key (the prefix glob-escaped).
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The health poll lease of a circuit (by its table key: WABA id, `phone:{id}`): holds
    /// the id of the replica that polls it.
    pub fn poll_lease_key(&self, circuit_key: &str) -> String {
        format!("{}:poll:{circuit_key}", self.prefix)
    }

    /// The last holder of a circuit's poll lease (outlives the lease, so a new holder
    /// can tell a takeover from a first claim).
    pub fn poll_holder_key(&self, circuit_key: &str) -> String {
        format!("{}:poll:{circuit_key}:last", self.prefix)
    }

    /// The count of health polls of `budget_id` (a WABA id, else a phone-number id) in
    /// clock hour `hour` (Unix seconds / 3600).
    pub fn poll_budget_key(&self, budget_id: &str, hour: u64) -> String {
        format!("{}:poll-budget:{budget_id}:{hour}", self.prefix)
    }
}

/// Escapes Redis glob metacharacters so a prefix matches literally.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// A string whose bytewise order is the replica merge order [`crate::circuit::newer`]:
/// `(updated_at, version, origin)`. Fixed-width decimal fields, then the origin.
pub fn order_key(c: &Circuit) -> String {
    // Flipping the sign bit maps i64 seconds onto u64 monotonically (pre-1970 times too).
    let secs = (c.updated_at.timestamp() as u64) ^ (1u64 << 63);
    // Up to 1_999_999_999 during a leap second: ten digits.
    let nanos = c.updated_at.timestamp_subsec_nanos();
    format!("{secs:020}.{nanos:010}|{:020}|{}", c.version, c.origin)
}

/// The Redis value of a circuit: its JSON plus [`ORDER_FIELD`]. Readers that deserialize a
/// [`Circuit`] ignore the extra field.
pub fn encode(c: &Circuit) -> Result<(String, String), serde_json::Error> {
    let key = order_key(c);
    let mut v = serde_json::to_value(c)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            ORDER_FIELD.to_string(),
            serde_json::Value::String(key.clone()),
        );
    }
    Ok((serde_json::to_string(&v)?, key))
}

/// The order key of a mapping, by [`crate::circuit::Mapping::newer_than`]: `(updated_at, origin)`.
pub fn mapping_order_key(m: &Mapping) -> String {
    let secs = (m.updated_at.timestamp() as u64) ^ (1u64 << 63);
    let nanos = m.updated_at.timestamp_subsec_nanos();
    format!("{secs:020}.{nanos:010}|{}", m.origin)
}

/// The Redis value of a mapping: its JSON plus [`ORDER_FIELD`], and its order key.
pub fn encode_mapping(m: &Mapping) -> Result<(String, String), serde_json::Error> {
    let key = mapping_order_key(m);
    let mut v = serde_json::to_value(m)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            ORDER_FIELD.to_string(),
            serde_json::Value::String(key.clone()),
        );
    }
    Ok((serde_json::to_string(&v)?, key))
}

/// How long a circuit's key lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttl {
    /// No TTL: an open circuit that only a signal or an operator closes.
    Persist,
    /// Expire after this many milliseconds.
    Millis(u64),
}

/// How long an ended marketing cooldown's key stays in Redis.
pub const CLOSED_COOLDOWN_TTL: Duration = Duration::from_secs(3600);

/// The TTL of a circuit's key written at `now`: open with `until` → `until` + [`UNTIL_GRACE`];
/// open until a signal → none; closed → `closed_ttl`, except a template record that keeps
/// the template's category (none: it stays true for months; `max_circuits` bounds them) and
/// an ended marketing cooldown or pair hold ([`CLOSED_COOLDOWN_TTL`]).
pub fn ttl_for(c: &Circuit, now: DateTime<Utc>, closed_ttl: Duration) -> Ttl {
    match (c.state, c.until) {
        (State::Open, None) => Ttl::Persist,
        (State::Closed, _) if c.category.is_some() => Ttl::Persist,
        // An ended marketing cooldown orders nothing a later status could change (its end
        // follows from the status's own time): kept an hour, for replicas catching up. An
        // ended pair hold likewise (its reach is minutes at most).
        (State::Closed, _) if c.is_hold() => {
            Ttl::Millis(closed_ttl.min(CLOSED_COOLDOWN_TTL).max(MIN_TTL).as_millis() as u64)
        }
        (State::Open, Some(until)) => {
            let left = (until - now)
                .to_std()
                .unwrap_or(Duration::ZERO)
                .saturating_add(UNTIL_GRACE);
            Ttl::Millis(left.max(MIN_TTL).as_millis() as u64)
        }
        (State::Closed, _) => Ttl::Millis(closed_ttl.max(MIN_TTL).as_millis() as u64),
    }
}

/// Whether a local circuit that Redis does not hold should be written back after an outage
/// or a restart: not when its key would already have expired.
pub fn worth_restoring(c: &Circuit, now: DateTime<Utc>, closed_ttl: Duration) -> bool {
    let end = match (c.state, c.until) {
        (State::Open, None) => return true,
        (State::Closed, _) if c.category.is_some() => return true,
        (State::Closed, _) if c.is_hold() => return false,
        (State::Open, Some(until)) => add(until, UNTIL_GRACE),
        (State::Closed, _) => add(c.last_activity(), closed_ttl),
    };
    end.is_some_and(|end| end > now)
}

fn add(t: DateTime<Utc>, d: Duration) -> Option<DateTime<Utc>> {
    t.checked_add_signed(chrono::Duration::from_std(d).ok()?)
}

/// The compare-and-set script. `KEYS[1]`: the circuit key; `ARGV[1]`: the new value;
/// `ARGV[2]`: its order key; `ARGV[3]`: the channel; `ARGV[4]`: TTL in ms (0: none).
/// Writes and publishes only when the new value is newer than the stored one (bytewise
/// order keys; a stored value without one, or not JSON, counts as older). Returns 1 when
/// written, 0 when the stored value is newer or the same.
pub const CAS_SCRIPT: &str = r#"
local function before(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, stored = pcall(cjson.decode, cur)
  if ok and type(stored) == 'table' and type(stored['order_key']) == 'string'
      and not before(stored['order_key'], ARGV[2]) then
    return 0
  end
end
local ttl = tonumber(ARGV[4])
if ttl and ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::newer;
    use chrono::TimeZone;

    fn at(secs: i64, nanos: u32) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, nanos).unwrap()
    }

    fn circuit(t: DateTime<Utc>, version: u64, origin: &str) -> Circuit {
        let mut c = Circuit::new("102290129340398", t);
        c.version = version;
        c.origin = origin.to_string();
        c
    }

    /// The order key sorts exactly like the merge rule, over edge cases of every field.
    #[test]
    fn order_key_matches_merge_rule() {
        let times = [
            DateTime::<Utc>::MIN_UTC,
            at(-5, 0),
            at(0, 0),
            at(0, 1),
            at(1_800_000_000, 0),
            at(1_800_000_000, 999_999_999),
            at(1_800_000_001, 0),
            at(1_800_057_599, 999_999_999),
            at(1_800_057_599, 1_500_000_000), // leap second (23:59:60.5)
            at(1_800_057_600, 0),
            DateTime::<Utc>::MAX_UTC,
        ];
        let versions = [0, 1, 9, 10, 123_456, u64::MAX];
        let origins = ["", "a", "a-1", "a-10", "a-2", "b", "host-99", "Z", "ä"];
        let mut all = Vec::new();
        for t in times {
            for v in versions {
                for o in origins {
                    all.push(circuit(t, v, o));
                }
            }
        }
        for a in &all {
            for b in all.iter().step_by(7) {
                assert_eq!(
                    order_key(a) > order_key(b),
                    newer(a, b),
                    "{} vs {}",
                    order_key(a),
                    order_key(b)
                );
            }
        }
    }

    #[test]
    fn encoded_value_is_a_circuit_with_its_order_key() {
        let c = circuit(at(1_800_000_000, 5), 3, "r1");
        let (json, key) = encode(&c).unwrap();
        let back: Circuit = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v[ORDER_FIELD], serde_json::Value::String(key));
    }

    #[test]
    fn layout_names_and_escapes() {
        let l = Layout::new("t");
        assert_eq!(l.key("1"), "t:circuit:1");
        assert_eq!(l.channel(), "t:changes");
        assert_eq!(l.pattern(), "t:circuit:*");
        assert_eq!(l.waba_of("t:circuit:42"), Some("42"));
        assert_eq!(l.waba_of("u:circuit:42"), None);
        assert_eq!(Layout::new("a*b[1]").pattern(), "a\\*b\\[1\\]:circuit:*");
        // Poll leases and budgets never match the circuit or account SCAN patterns.
        assert_eq!(l.poll_lease_key("phone:5"), "t:poll:phone:5");
        assert_eq!(l.poll_holder_key("1"), "t:poll:1:last");
        assert_eq!(l.poll_budget_key("1", 7), "t:poll-budget:1:7");
        assert_eq!(l.waba_of(&l.poll_lease_key("1")), None);
    }

    #[test]
    fn ttls() {
        let now = at(1_800_000_000, 0);
        let week = Duration::from_secs(7 * 86400);
        let mut c = circuit(now, 1, "a");
        assert_eq!(ttl_for(&c, now, week), Ttl::Millis(week.as_millis() as u64));
        c.state = State::Open;
        assert_eq!(ttl_for(&c, now, week), Ttl::Persist);
        c.until = Some(at(1_800_000_060, 0));
        assert_eq!(ttl_for(&c, now, week), Ttl::Millis((60 + 3600) * 1000));
        c.until = Some(at(1_700_000_000, 0));
        assert_eq!(ttl_for(&c, now, week), Ttl::Millis(3600 * 1000));
    }

    #[test]
    fn restoring_skips_what_would_have_expired() {
        let now = at(1_800_000_000, 0);
        let week = Duration::from_secs(7 * 86400);
        let mut c = circuit(at(1_800_000_000 - 8 * 86400, 0), 1, "a");
        assert!(!worth_restoring(&c, now, week));
        c.updated_at = at(1_800_000_000 - 86400, 0);
        assert!(worth_restoring(&c, now, week));
        c.state = State::Open;
        assert!(worth_restoring(&c, now, week));
        c.until = Some(at(1_800_000_000 - 7200, 0));
        assert!(!worth_restoring(&c, now, week));
        c.until = Some(at(1_800_000_000 - 60, 0));
        assert!(worth_restoring(&c, now, week));
        let ancient = circuit(DateTime::<Utc>::MIN_UTC, 0, "");
        assert!(!worth_restoring(&ancient, now, week));
    }

    #[test]
    fn a_template_record_with_a_category_has_no_ttl_and_is_always_restored() {
        let now = at(1_800_000_000, 0);
        let week = Duration::from_secs(7 * 86400);
        let mut c = circuit(at(1_800_000_000 - 30 * 86400, 0), 1, "a");
        assert!(matches!(ttl_for(&c, now, week), Ttl::Millis(_)));
        c.category = Some(Box::new(crate::circuit::cooldown::Category {
            current: Some("MARKETING".into()),
            coming: None,
            coming_at: None,
            at: c.updated_at,
            source: crate::circuit::Source::Webhook,
        }));
        assert!(matches!(ttl_for(&c, now, week), Ttl::Persist));
        assert!(worth_restoring(&c, now, week));
    }
}
