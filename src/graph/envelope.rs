//! The Graph API error envelope: parse upstream errors, build the gateway's own.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Prefix of the `fbtrace_id` of an answer the gateway made itself (no Meta trace exists):
/// typed clients that require the field parse it, and support can tell it from Meta's.
pub const GATEWAY_TRACE_PREFIX: &str = "wa-breaker-";

/// The fields of a Graph error the gateway uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct GraphError {
    /// `error.code` (368 for a policy block).
    pub code: i64,
    /// `error.error_subcode`, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_subcode: Option<i64>,
    /// `error.message`.
    #[serde(default)]
    pub message: String,
    /// `error.type`.
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// `error.fbtrace_id`: what Meta support asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fbtrace_id: Option<String>,
    /// `error.error_data.details`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

#[derive(Deserialize)]
struct Envelope {
    error: RawError,
}

#[derive(Deserialize)]
struct RawError {
    code: i64,
    #[serde(default)]
    error_subcode: Option<i64>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    fbtrace_id: Option<String>,
    #[serde(default)]
    error_data: Option<serde_json::Value>,
}

/// A failed Graph read (a management read: Health Status, a phone number's fields),
/// described once for every reader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// For a log line: `HTTP 400: Graph error 100: …`, or `HTTP 502` without an envelope.
    pub what: String,
    /// The token was refused (HTTP 401 or Graph code 190): retrying will not help.
    pub auth: bool,
}

/// Describes a failed read answered `status` with `body`.
pub fn failure(status: u16, body: &[u8]) -> Failure {
    let err = parse(body);
    let what = match &err {
        Some(e) => format!("HTTP {status}: Graph error {}: {}", e.code, e.message),
        None => format!("HTTP {status}"),
    };
    Failure {
        what,
        auth: status == 401 || err.is_some_and(|e| e.code == 190),
    }
}

/// Parses a Graph error envelope; `None` when the body is not one.
pub fn parse(body: &[u8]) -> Option<GraphError> {
    let env: Envelope = serde_json::from_slice(body).ok()?;
    let e = env.error;
    // error_data is an object in Cloud API answers, sometimes a JSON string elsewhere in Graph.
    let details = match e.error_data {
        Some(serde_json::Value::Object(m)) => {
            m.get("details").and_then(|d| d.as_str()).map(str::to_owned)
        }
        _ => None,
    };
    Some(GraphError {
        code: e.code,
        error_subcode: e.error_subcode,
        message: e.message.unwrap_or_default(),
        kind: e.kind.unwrap_or_default(),
        fbtrace_id: e.fbtrace_id,
        details,
    })
}

/// Builds a Cloud-API-shaped error body (fields in Graph's order), with `fbtrace_id` last
/// as Graph puts it (typed clients require the field).
pub fn build(
    code: i64,
    subcode: Option<i64>,
    kind: &str,
    message: &str,
    details: &str,
    fbtrace_id: &str,
) -> Bytes {
    #[derive(Serialize)]
    struct Out<'a> {
        error: Inner<'a>,
    }
    #[derive(Serialize)]
    struct Inner<'a> {
        message: &'a str,
        #[serde(rename = "type")]
        kind: &'a str,
        code: i64,
        error_data: Data<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error_subcode: Option<i64>,
        fbtrace_id: &'a str,
    }
    #[derive(Serialize)]
    struct Data<'a> {
        messaging_product: &'static str,
        details: &'a str,
    }
    let out = Out {
        error: Inner {
            message,
            kind,
            code,
            error_data: Data {
                messaging_product: "whatsapp",
                details,
            },
            error_subcode: subcode,
            fbtrace_id,
        },
    };
    Bytes::from(serde_json::to_vec(&out).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCKED: &str = r#"{"error": {
      "message": "(#368) Temporarily blocked for policies violations",
      "type": "OAuthException", "code": 368,
      "error_data": {"messaging_product": "whatsapp", "details": "restricted"},
      "error_subcode": 2494100, "fbtrace_id": "AbCdEfGhIjK"}}"#;

    #[test]
    fn parses_368() {
        let e = parse(BLOCKED.as_bytes()).unwrap();
        assert_eq!(e.code, 368);
        assert_eq!(e.error_subcode, Some(2494100));
        assert_eq!(e.fbtrace_id.as_deref(), Some("AbCdEfGhIjK"));
        assert_eq!(e.details.as_deref(), Some("restricted"));
    }

    #[test]
    fn failures_are_described_and_auth_is_recognised() {
        let body = br#"{"error":{"message":"Invalid OAuth access token","type":"OAuthException","code":190}}"#;
        let f = failure(400, body);
        assert_eq!(
            f.what,
            "HTTP 400: Graph error 190: Invalid OAuth access token"
        );
        assert!(f.auth);
        assert!(failure(401, b"<html>").auth);
        let f = failure(502, b"bad gateway");
        assert_eq!((f.what.as_str(), f.auth), ("HTTP 502", false));
        assert!(!failure(400, br#"{"error":{"message":"x","code":100}}"#).auth);
    }

    #[test]
    fn rejects_non_envelopes() {
        assert!(parse(b"<html>forbidden</html>").is_none());
        assert!(parse(b"{}").is_none());
        assert!(parse(br#"{"error":"nope"}"#).is_none());
        assert!(parse(br#"{"error":{"message":"no code"}}"#).is_none());
    }

    #[test]
    fn minimal_and_string_error_data() {
        let e = parse(br#"{"error":{"code":190,"error_data":"x"}}"#).unwrap();
        assert_eq!(e.code, 190);
        assert_eq!(e.details, None);
    }

    #[test]
    fn build_roundtrips() {
        let b = build(
            368,
            Some(1),
            "OAuthException",
            crate::graph::codes::title(368),
            "local",
            "wab-1",
        );
        let e = parse(&b).unwrap();
        assert_eq!(e.fbtrace_id.as_deref(), Some("wab-1"));
        assert_eq!(e.code, 368);
        assert_eq!(e.details.as_deref(), Some("local"));
        assert_eq!(e.error_subcode, Some(1));
    }
}
