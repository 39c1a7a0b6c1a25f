//! Signed Meta webhook helpers: `X-Hub-Signature-256` and `account_update` payloads.

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// `sha256=<hex HMAC-SHA256(secret, body)>`, the value of `X-Hub-Signature-256`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `{"object":"whatsapp_business_account","entry":[{"id":waba,"time":t,"changes":[{"field":"account_update","value":value}]}]}`
pub fn account_update(waba_id: &str, time_unix: i64, value: Value) -> Value {
    envelope(vec![entry(
        waba_id,
        time_unix,
        vec![change("account_update", value)],
    )])
}

/// A webhook envelope around several entries (one POST may batch them).
pub fn envelope(entries: Vec<Value>) -> Value {
    json!({"object": "whatsapp_business_account", "entry": entries})
}

/// One `entry[]`: `{"id":waba,"time":t,"changes":[…]}`.
pub fn entry(waba_id: &str, time_unix: i64, changes: Vec<Value>) -> Value {
    json!({"id": waba_id, "time": time_unix, "changes": changes})
}

/// One `changes[]` element: `{"field":field,"value":value}`.
pub fn change(field: &str, value: Value) -> Value {
    json!({"field": field, "value": value})
}

/// `{"event":"ACCOUNT_RESTRICTION","restriction_info":[{"restriction_type":t,"expiration":e},…]}`.
/// `expiration` may be a Unix timestamp (`json!(1764003000)`), a string
/// (`json!("2026-04-19T13:59:20+0000")`) or `Value::Null` to omit it.
pub fn restriction(types: &[&str], expiration: Value) -> Value {
    let info: Vec<Value> = types
        .iter()
        .map(|t| {
            let mut r = json!({"restriction_type": t});
            if !expiration.is_null() {
                r["expiration"] = expiration.clone();
            }
            r
        })
        .collect();
    json!({"event": "ACCOUNT_RESTRICTION", "restriction_info": info})
}

/// `{"event":"DISABLED_UPDATE","ban_info":{"waba_ban_state":state,"waba_ban_date":"April 17, 2025"}}`.
/// `state` is a string (`"DISABLE"`, `"SCHEDULE_FOR_DISABLE"`, `"REINSTATE"`) or an array
/// (`json!(["DISABLE"])`), both seen in the wild.
pub fn disabled(state: impl Into<Value>) -> Value {
    json!({
        "event": "DISABLED_UPDATE",
        "ban_info": {"waba_ban_state": state.into(), "waba_ban_date": "April 17, 2025"}
    })
}

/// `{"event":"ACCOUNT_VIOLATION","violation_info":{"violation_type":kind}}`.
pub fn violation(kind: &str) -> Value {
    json!({"event": "ACCOUNT_VIOLATION", "violation_info": {"violation_type": kind}})
}

/// `{"event":name}` — lifecycle and unknown events (`ACCOUNT_DELETED`, `VERIFIED_ACCOUNT`, …).
pub fn event(name: &str) -> Value {
    json!({"event": name})
}

/// POST `body` to `url` with `X-Hub-Signature-256: sign(secret, body)` and
/// `content-type: application/json`.
pub async fn post_signed(url: &str, secret: &str, body: &[u8]) -> reqwest::Response {
    post_with_signature(url, Some(&sign(secret, body)), body).await
}

/// POST `body` with an explicit signature header value, or none.
pub async fn post_with_signature(
    url: &str,
    signature: Option<&str>,
    body: &[u8],
) -> reqwest::Response {
    let mut req = super::gateway::client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(sig) = signature {
        req = req.header("x-hub-signature-256", sig);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

/// Meta's subscription check: `GET url?hub.mode=subscribe&hub.verify_token=T&hub.challenge=C`
/// (values percent-encoded).
pub async fn verify_get(url: &str, verify_token: &str, challenge: &str) -> reqwest::Response {
    let full = format!(
        "{url}?hub.mode=subscribe&hub.verify_token={}&hub.challenge={}",
        percent_encode(verify_token),
        percent_encode(challenge)
    );
    super::gateway::client()
        .get(&full)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {full}: {e}"))
}

/// Percent-encode everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
