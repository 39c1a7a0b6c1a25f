//! A phone number's throughput level as Meta states it: `GET /{phone-number-id}?fields=throughput`
//! answers `{"throughput": {"level": "STANDARD" | "HIGH"}, "id": …}`. Pure: no I/O.
//!
//! Meta documents two levels: `STANDARD` (80 messages/s, every number's default) and `HIGH`
//! (1 000 messages/s after Meta's automatic upgrade). Anything else — a level Meta adds
//! later, a missing `throughput` object, a level that is not a string — is
//! [`Read::Unknown`]: never a parse error, and the caller keeps what it knew.
//!
//! ```
//! use wa_breaker::graph::throughput::{parse, Level, Read};
//! let body = br#"{"throughput":{"level":"HIGH"},"id":"106540352242922"}"#;
//! assert_eq!(parse(body), Ok(Read::Level(Level::High)));
//! assert_eq!(Level::High.mps(), 1000);
//! ```

use serde::Serialize;
use serde_json::Value;

/// Messages/s of a number at Meta's `STANDARD` level (every number's default).
pub const STANDARD_MPS: u32 = 80;
/// Messages/s of a number at Meta's `HIGH` level (after Meta's automatic upgrade).
pub const HIGH_MPS: u32 = 1000;

/// A throughput level Meta documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// `STANDARD`: [`STANDARD_MPS`].
    Standard,
    /// `HIGH`: [`HIGH_MPS`].
    High,
}

impl Level {
    /// The level's messages/s.
    pub fn mps(self) -> u32 {
        match self {
            Level::Standard => STANDARD_MPS,
            Level::High => HIGH_MPS,
        }
    }

    /// As Meta spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Standard => "STANDARD",
            Level::High => "HIGH",
        }
    }
}

/// What an answer says of the number's level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    /// A level Meta documents.
    Level(Level),
    /// No level known here: what the answer held instead (for a log line).
    Unknown(String),
}

/// The level in a node's JSON answer (the root object, which may carry other fields read
/// in the same request, e.g. `health_status`).
pub fn level_of(v: &Value) -> Read {
    let Some(t) = v.get("throughput") else {
        return Read::Unknown("no throughput field".into());
    };
    match t.get("level").and_then(Value::as_str) {
        Some("STANDARD") => Read::Level(Level::Standard),
        Some("HIGH") => Read::Level(Level::High),
        Some(other) => Read::Unknown(format!(
            "level {:?}",
            other.chars().take(40).collect::<String>()
        )),
        None => Read::Unknown("throughput without a level".into()),
    }
}

/// Parses a `?fields=throughput` answer's body. An error only when it is not JSON.
pub fn parse(body: &[u8]) -> Result<Read, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    Ok(level_of(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_levels() {
        assert_eq!(
            parse(br#"{"throughput":{"level":"STANDARD"},"id":"1"}"#),
            Ok(Read::Level(Level::Standard))
        );
        assert_eq!(
            parse(br#"{"health_status":{},"throughput":{"level":"HIGH"}}"#),
            Ok(Read::Level(Level::High))
        );
        assert_eq!(Level::Standard.mps(), 80);
        assert_eq!(Level::High.mps(), 1000);
    }

    #[test]
    fn unknown_levels_and_missing_fields_never_fail() {
        for body in [
            &br#"{"throughput":{"level":"NOT_APPLICABLE"}}"#[..],
            br#"{"throughput":{"level":"high"}}"#,
            br#"{"throughput":{"level":1000}}"#,
            br#"{"throughput":{}}"#,
            br#"{"throughput":"HIGH"}"#,
            br#"{"id":"1"}"#,
            br#"[]"#,
            br#"{"messages":[{"id":"wamid.x"}]}"#,
        ] {
            assert!(
                matches!(parse(body), Ok(Read::Unknown(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(parse(b"nope").is_err());
        let long = format!(r#"{{"throughput":{{"level":"{}"}}}}"#, "X".repeat(500));
        let Ok(Read::Unknown(what)) = parse(long.as_bytes()) else {
            panic!()
        };
        assert!(what.len() < 60, "bounded for logs");
    }
}
