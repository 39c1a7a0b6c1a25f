//! The old stand-in Cloud API, kept for the benchmark scripts (`benches/soak.sh`,
//! `benches/trip-latency.sh`): a thin wrapper over `wa-breaker simulate` driven by the
//! environment. For anything else run `wa-breaker simulate` (see the README).
//!
//! `FAKE_CLOUD_ADDR` (default 127.0.0.1:9999) is the listen address; the phone-number ids
//! in `FAKE_BLOCKED` (comma-separated; default `106540352242922`) answer every send with
//! HTTP 403 and Graph error 368; `FAKE_QUIET=1` prints no line per request.

use std::process::ExitCode;

use wa_breaker::simulate::{self, Options};

fn main() -> ExitCode {
    let listen = std::env::var("FAKE_CLOUD_ADDR").unwrap_or_else(|_| "127.0.0.1:9999".into());
    let listen = match listen.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fake-cloud: FAKE_CLOUD_ADDR {listen:?}: {e}");
            return ExitCode::from(2);
        }
    };
    let block_phones = std::env::var("FAKE_BLOCKED")
        .unwrap_or_else(|_| "106540352242922".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let opts = Options {
        listen: Some(listen),
        accounts: Vec::new(),
        blocks: Vec::new(),
        block_phones,
        webhook_url: None,
        app_secret: None,
        quiet: std::env::var("FAKE_QUIET").is_ok_and(|v| v == "1"),
    };
    simulate::main(opts, None)
}
