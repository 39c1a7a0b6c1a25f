//! Shared helpers of the `signals_*` integration tests (included with `mod signals_util;`).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::support::Gateway;

pub const WABA: &str = "102290129340398";
pub const PHONE: &str = "106540352242922";
pub const WABA2: &str = "102290129340399";
pub const PHONE2: &str = "106540352242923";
pub const SECRET: &str = "app-secret-0123";
pub const SECRET2: &str = "second-app-secret";
pub const VERIFY: &str = "verify-me-please";
pub const ADMIN: &str = "admin-token-0123456789";
pub const HEALTH_TOKEN: &str = "health-token-ABC987";

/// A gateway config against `upstream`, with extra `[webhook]` and `[health]` lines.
pub fn config(upstream: &str, webhook: &str, health: &str) -> String {
    format!(
        r#"
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
upstream = "{upstream}"
state_dir = "{{state_dir}}"
admin_token = "{ADMIN}"
log_level = "info,wa_breaker=debug"

[webhook]
app_secret = "{SECRET}"
verify_token = "{VERIFY}"
{webhook}

[health]
{health}

[[accounts]]
waba_id = "{WABA}"
phone_number_ids = ["{PHONE}"]

[[accounts]]
waba_id = "{WABA2}"
phone_number_ids = ["{PHONE2}"]
"#
    )
}

/// `[health]` lines with a token and short, jitter-free timing.
pub fn health(interval: &str, max_backoff: &str) -> String {
    format!(
        "access_token = \"{HEALTH_TOKEN}\"\ninterval = \"{interval}\"\njitter = 0.0\nmax_backoff = \"{max_backoff}\"\ntimeout = \"2s\""
    )
}

/// The admin view of a WABA's circuit (Null when there is none).
pub async fn circuit(gw: &Gateway, waba: &str) -> Value {
    let (status, v) = gw.circuit(ADMIN, waba).await;
    assert!(status == 200 || status == 404, "GET circuit: {status} {v}");
    if status == 200 {
        v
    } else {
        Value::Null
    }
}

/// Polls the admin view until `pred` holds; panics with the last view on timeout.
pub async fn wait_circuit(
    gw: &Gateway,
    waba: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let c = circuit(gw, waba).await;
        if pred(&c) {
            return c;
        }
        if Instant::now() >= deadline {
            panic!("circuit {waba} did not reach the expected state within {timeout:?}: {c:#}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub async fn wait_state(gw: &Gateway, waba: &str, state: &str, timeout: Duration) -> Value {
    wait_circuit(gw, waba, timeout, |c| c["state"] == state).await
}

/// The circuit's `until` as a time.
pub fn until(c: &Value) -> Option<DateTime<Utc>> {
    c["until"]
        .as_str()
        .map(|s| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc))
}

/// History entries that are notes.
pub fn notes(c: &Value) -> Vec<Value> {
    c["history"]
        .as_array()
        .map(|h| h.iter().filter(|t| t["note"] == true).cloned().collect())
        .unwrap_or_default()
}

/// POST `body` to the webhook path, signed with `SECRET`.
pub async fn deliver(gw: &Gateway, body: &Value) -> reqwest::Response {
    gw.webhook_post("/webhook", SECRET, body.to_string().as_bytes())
        .await
}
