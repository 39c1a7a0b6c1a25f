//! An open-loop, fixed-rate send load with latencies corrected for coordinated omission,
//! for `benches/load/run.sh` (the fixed-rate table) and `benches/load/wan.sh`. Debian has
//! no wrk2; this is the part of it the benchmark needs.
//!
//! ```text
//! cargo run --release --example fixed_rate -- --url http://127.0.0.1:9015/v21.0/106540352242922/messages \
//!     --rate 5000 --conns 64 --duration 10s --warmup 2s
//! ```
//!
//! `--conns` keep-alive connections share the rate: connection `j` is due to send its
//! `k`-th request at `t0 + (k × conns + j) / rate`. A request's latency runs from when it
//! was due, not from when it went out, whenever the connection was still waiting for the
//! previous answer at that time (the correction wrk2 makes: a stalled server is charged for
//! the sends it held up). When the connection was free, the latency runs from the actual
//! send, so the generator's own timer lateness (tokio's timers tick in milliseconds) is not
//! charged to the server; it is reported on its own (`late_p99_us`) so a run whose
//! generator fell behind can be told apart. One line on stdout:
//!
//! `FIXED_RATE rate=… conns=… seconds=… sent=… ok=… non2xx=… errors=… achieved=… p50_us=…
//! p90_us=… p99_us=… p999_us=… max_us=… late_p99_us=…`
//!
//! The body and bearer token are those of `benches/load/post.lua`. Loopback (or the
//! benchmark's own namespaces) only: the target is the caller's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpStream;
use tokio::time::Instant;

#[path = "common/h1.rs"]
mod h1;

/// The template send of `benches/load/post.lua`.
const BODY: &str = r#"{"messaging_product":"whatsapp","recipient_type":"individual","to":"15551234567","type":"template","template":{"name":"order_update","language":{"code":"en_US"},"components":[{"type":"body","parameters":[{"type":"text","text":"A-1029384"},{"type":"text","text":"tomorrow between 9 and 11"}]}]}}"#;
const TOKEN: &str =
    "Bearer EAAGm0PX4ZCpsBAKZCZAexampletokenexampletokenexampletokenexampletokenexampletoken";

#[derive(Parser, Debug)]
#[command(about = "Fixed-rate send load, latencies corrected for coordinated omission")]
struct Args {
    /// `http://host:port/path` to POST to.
    #[arg(long)]
    url: String,
    /// Sends per second, over all connections.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Keep-alive connections sharing the rate.
    #[arg(long, default_value_t = 64)]
    conns: u64,
    /// Measured time.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured time before it, at the same rate.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Runtime threads (1: a current-thread runtime, the least CPU taken from the servers).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    ok: AtomicU64,
    non2xx: AtomicU64,
    errors: AtomicU64,
    /// Latencies (µs) of measured sends.
    lat: Mutex<Vec<u32>>,
    /// How late (µs) the generator's timer woke a free connection.
    late: Mutex<Vec<u32>>,
}

fn main() {
    let args = Args::parse();
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("fixed_rate: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let rest = args
        .url
        .strip_prefix("http://")
        .ok_or("--url must start with http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if args.rate == 0 || args.conns == 0 {
        return Err("--rate and --conns must be positive".into());
    }
    let request: Arc<[u8]> = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Authorization: {TOKEN}\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    )
    .into_bytes()
    .into();
    let stats = Arc::new(Stats::default());
    let t0 = Instant::now() + Duration::from_millis(50);
    let measure_from = t0 + args.warmup;
    let end = measure_from + args.duration;
    let mut tasks = Vec::new();
    for j in 0..args.conns {
        let (stats, request, authority) = (stats.clone(), request.clone(), authority.to_string());
        let (rate, conns) = (args.rate, args.conns);
        tasks.push(tokio::spawn(async move {
            connection(
                j,
                conns,
                rate,
                t0,
                measure_from,
                end,
                &authority,
                &request,
                &stats,
            )
            .await
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut lat = std::mem::take(&mut *stats.lat.lock().unwrap());
    let mut late = std::mem::take(&mut *stats.late.lock().unwrap());
    lat.sort_unstable();
    late.sort_unstable();
    let secs = args.duration.as_secs_f64();
    println!(
        "FIXED_RATE rate={} conns={} seconds={:.1} sent={} ok={} non2xx={} errors={} achieved={:.0} \
         p50_us={} p90_us={} p99_us={} p999_us={} max_us={} late_p99_us={}",
        args.rate,
        args.conns,
        secs,
        stats.sent.load(Ordering::Relaxed),
        stats.ok.load(Ordering::Relaxed),
        stats.non2xx.load(Ordering::Relaxed),
        stats.errors.load(Ordering::Relaxed),
        lat.len() as f64 / secs,
        pct(&lat, 50.0),
        pct(&lat, 90.0),
        pct(&lat, 99.0),
        pct(&lat, 99.9),
        lat.last().copied().unwrap_or(0),
        pct(&late, 99.0),
    );
    Ok(())
}

/// The `p`-th percentile of sorted `v` (nearest rank), 0 when empty.
fn pct(v: &[u32], p: f64) -> u32 {
    if v.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    j: u64,
    conns: u64,
    rate: u64,
    t0: Instant,
    measure_from: Instant,
    end: Instant,
    authority: &str,
    request: &[u8],
    stats: &Stats,
) {
    let mut lat = Vec::new();
    let mut late = Vec::new();
    let mut stream: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(8192);
    // When the previous answer arrived (the connection was busy until then).
    let mut free_at = t0;
    for k in 0u64.. {
        let due = t0 + Duration::from_nanos((k * conns + j) * 1_000_000_000 / rate);
        if due >= end {
            break;
        }
        let busy = free_at > due;
        if !busy {
            tokio::time::sleep_until(due).await;
        }
        let sent_at = Instant::now();
        // Charged from `due` when this send waited for the previous answer.
        let from = if busy { due } else { sent_at };
        let measured = due >= measure_from;
        if measured {
            stats.sent.fetch_add(1, Ordering::Relaxed);
            if !busy {
                late.push(micros(sent_at - due));
            }
        }
        let s = match stream.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect(authority).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream.insert(s)
                }
                Err(_) => {
                    if measured {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    free_at = Instant::now();
                    continue;
                }
            },
        };
        let outcome = h1::exchange(s, request, &mut buf).await;
        let done = Instant::now();
        free_at = done;
        match outcome {
            Ok(answer) => {
                if measured {
                    lat.push(micros(done - from));
                    if (200..300).contains(&answer.status) {
                        stats.ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        stats.non2xx.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if !answer.keep {
                    stream = None;
                }
            }
            Err(_) => {
                if measured {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
                stream = None;
            }
        }
    }
    stats.lat.lock().unwrap().extend(lat);
    stats.late.lock().unwrap().extend(late);
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}
