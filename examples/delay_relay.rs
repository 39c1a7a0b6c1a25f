//! A TCP relay that holds every chunk it forwards for a fixed delay in each direction: the
//! emulated WAN of `benches/load/wan.sh` on kernels built without `sch_netem` (`tc qdisc
//! add … netem` then fails with "Specified qdisc kind is unknown"), as this project's VMs
//! are. It runs inside the benchmark's own network namespace in front of the TLS stand-in:
//!
//! ```text
//! delay_relay --listen 10.241.1.2:9443 --to 127.0.0.1:19443 --delay 25ms
//! ```
//!
//! Bytes pass unchanged (TLS stays end to end); each direction keeps its order, and a
//! chunk read at `t` is written at `t + delay`, so a request/answer pays the round trip
//! `2 × delay`, a TLS handshake its flights. What it does not emulate: loss, and TCP's own
//! pacing (window growth over a long path), which small sends over kept-alive
//! connections do not meet. Loopback or the benchmark's namespace only.

use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "TCP relay adding a fixed delay in each direction")]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: String,
    /// Address to forward to.
    #[arg(long)]
    to: String,
    /// Delay added in each direction.
    #[arg(long, default_value = "25ms", value_parser = humantime::parse_duration)]
    delay: Duration,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let listener = TcpListener::bind(&args.listen)
        .await
        .unwrap_or_else(|e| panic!("bind {}: {e}", args.listen));
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let (to, delay) = (args.to.clone(), args.delay);
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&to).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::join!(pipe(cr, sw, delay), pipe(sr, cw, delay));
        });
    }
}

/// Reads from `from`, and writes each chunk to `to` `delay` after it was read.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return, // drops tx: the writer shuts down after the rest
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    tokio::join!(reader, writer);
}
