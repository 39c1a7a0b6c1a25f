//! A fixed-rate send load for `benches/soak.sh`: `SOAK_CONNS` keep-alive connections to
//! `SOAK_TARGET`, each sending at `SOAK_RATE / SOAK_CONNS` per second for `SOAK_SECONDS`
//! (`POST /v21.0/{phone}/messages`, a text body). `SOAK_UNMAPPED_PCT` percent of sends go to
//! phone-number ids the gateway does not know, drawn from a pool of `SOAK_UNMAPPED_POOL`;
//! the rest round-robin over `SOAK_PHONES` (comma-separated). Ticks a connection cannot keep
//! (its previous send not answered yet) are skipped and counted `missed`, so the report says
//! whether the rate held. Every 10 s one JSON line on stdout: cumulative counts by outcome and
//! the interval's latency p50/p99/max in µs. Loopback only (the target is the caller's).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::time::MissedTickBehavior;

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    ok: AtomicU64,
    local: AtomicU64,
    other: AtomicU64,
    errors: AtomicU64,
    missed: AtomicU64,
    /// Latencies (µs) of the current 10 s interval.
    lat: Mutex<Vec<u32>>,
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small xorshift: the phone choice needs no quality, only no shared state.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[path = "common/h1.rs"]
mod h1;

#[tokio::main]
async fn main() {
    let target: String = env("SOAK_TARGET", "127.0.0.1:8080".to_string());
    let rate: f64 = env("SOAK_RATE", 2000.0);
    let seconds: u64 = env("SOAK_SECONDS", 60);
    let conns: usize = env("SOAK_CONNS", 32).max(1);
    let unmapped_pct: u64 = env("SOAK_UNMAPPED_PCT", 1);
    let pool: u64 = env("SOAK_UNMAPPED_POOL", 10_000).max(1);
    let phones: Vec<String> = env("SOAK_PHONES", "106540352242922".to_string())
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    let stats = Arc::new(Stats::default());
    let period = Duration::from_secs_f64(conns as f64 / rate);
    let end = Instant::now() + Duration::from_secs(seconds);
    let body = r#"{"messaging_product":"whatsapp","to":"15551234567","type":"text","text":{"body":"soak"}}"#;

    let mut tasks = Vec::new();
    for c in 0..conns {
        let (stats, phones, target) = (stats.clone(), phones.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ ((c as u64 + 1) * 0x1000_0001);
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            let mut conn: Option<TcpStream> = None;
            let mut buf = Vec::with_capacity(4096);
            let mut req = Vec::with_capacity(512);
            let mut i = c;
            let mut last = Instant::now();
            while Instant::now() < end {
                let at = tick.tick().await.into_std();
                // Skipped ticks: the interval jumped past them.
                let gap = at.saturating_duration_since(last);
                if gap > period * 2 {
                    let skipped = (gap.as_secs_f64() / period.as_secs_f64()) as u64 - 1;
                    stats.missed.fetch_add(skipped, Ordering::Relaxed);
                }
                last = at;
                let phone = if next(&mut rng) % 100 < unmapped_pct {
                    format!("9{:014}", next(&mut rng) % pool)
                } else {
                    i += conns;
                    phones[i % phones.len()].clone()
                };
                req.clear();
                req.extend_from_slice(
                    format!(
                        "POST /v21.0/{phone}/messages HTTP/1.1\r\nHost: graph.facebook.com\r\nAuthorization: Bearer soak-token\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
                let s = match conn.as_mut() {
                    Some(s) => s,
                    None => match TcpStream::connect(&target).await {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            conn.insert(s)
                        }
                        Err(_) => {
                            stats.errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    },
                };
                stats.sent.fetch_add(1, Ordering::Relaxed);
                let t0 = Instant::now();
                match h1::exchange(s, &req, &mut buf).await {
                    Ok(h1::Answer { status, local, .. }) => {
                        let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
                        if let Ok(mut l) = stats.lat.lock() {
                            l.push(us);
                        }
                        let counter = match (status, local) {
                            (200..=299, _) => &stats.ok,
                            (_, true) => &stats.local,
                            _ => &stats.other,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        conn = None;
                    }
                }
            }
        }));
    }

    let start = Instant::now();
    let reporter = {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                let mut lat = match stats.lat.lock() {
                    Ok(mut l) => std::mem::take(&mut *l),
                    Err(_) => Vec::new(),
                };
                lat.sort_unstable();
                let q = |p: f64| {
                    lat.get(((lat.len() as f64 - 1.0) * p) as usize)
                        .copied()
                        .unwrap_or(0)
                };
                println!(
                    r#"{{"t":{},"sent":{},"ok":{},"local":{},"other":{},"errors":{},"missed":{},"p50_us":{},"p99_us":{},"max_us":{}}}"#,
                    start.elapsed().as_secs(),
                    stats.sent.load(Ordering::Relaxed),
                    stats.ok.load(Ordering::Relaxed),
                    stats.local.load(Ordering::Relaxed),
                    stats.other.load(Ordering::Relaxed),
                    stats.errors.load(Ordering::Relaxed),
                    stats.missed.load(Ordering::Relaxed),
                    q(0.5),
                    q(0.99),
                    lat.last().copied().unwrap_or(0),
                );
            }
        })
    };
    for t in tasks {
        let _ = t.await;
    }
    reporter.abort();
    println!(
        r#"{{"done":true,"seconds":{:.1},"sent":{},"ok":{},"local":{},"other":{},"errors":{},"missed":{}}}"#,
        start.elapsed().as_secs_f64(),
        stats.sent.load(Ordering::Relaxed),
        stats.ok.load(Ordering::Relaxed),
        stats.local.load(Ordering::Relaxed),
        stats.other.load(Ordering::Relaxed),
        stats.errors.load(Ordering::Relaxed),
        stats.missed.load(Ordering::Relaxed),
    );
}
