//! Issue 25 item 2, over real sockets on both engines: an HTTP/2 client connection is
//! bounded. Its streams are capped (`client_h2_max_streams`, advertised in SETTINGS), and
//! clients that never read large answers leave the gateway's memory and descriptors
//! bounded (small answers are read whole, large ones hold a large-answer permit) while
//! other clients' sends go on.
//!
//! Tests listed in `both_engines!` (at the end) run as `relay::…` and `hyper::…`.

use std::time::{Duration, Instant};

use crate::support::h2_frame::{frame, frames, HEADERS, RST_STREAM, SETTINGS, WINDOW_UPDATE};
use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WABA_A: &str = "102290129340398";
const PHONE_A1: &str = "106540352242922";

async fn start(engine: Engine, upstream: &str, extra: &str) -> Gateway {
    let engine_line = engine.config_line();
    let config = format!(
        r#"
{engine_line}
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
state_dir = "{{state_dir}}"
upstream = "{{upstream}}"
admin_token = "test-admin-token-0123456789"
request_timeout = "5s"
{extra}

[[accounts]]
waba_id = "{WABA_A}"
phone_number_ids = ["{PHONE_A1}"]
"#
    );
    Gateway::builder(&config)
        .var("upstream", upstream)
        .start()
        .await
}

const MAX_CONCURRENT_STREAMS: u16 = 0x3;
const INITIAL_WINDOW_SIZE: u16 = 0x4;
const REFUSED_STREAM: u32 = 0x7;

/// The preface, SETTINGS with the largest stream window, and the largest connection
/// window: a client that says it can take everything at once.
fn hungry_preface() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let mut settings = INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
    settings.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
    out.extend(frame(SETTINGS, 0, 0, &settings));
    out.extend(frame(
        WINDOW_UPDATE,
        0,
        0,
        &(0x7fff_ffffu32 - 65_535).to_be_bytes(),
    ));
    out
}

/// A GET of `path` (GET, http, literal `:path` and `:authority`, no Huffman).
fn get_block(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x44, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x41, 2]);
    block.extend_from_slice(b"gw");
    block
}

/// A connection that opens `streams` GETs of `path` at once and then never reads.
async fn hungry_connection(gw: &Gateway, path: &str, streams: u32) -> TcpStream {
    let s = TcpStream::connect(gw.listen_addr()).await.unwrap();
    // A small receive buffer: the kernel holds little, the gateway's own buffers show.
    let s = {
        let std = s.into_std().unwrap();
        let sock = socket2::SockRef::from(&std);
        let _ = sock.set_recv_buffer_size(4096);
        TcpStream::from_std(std).unwrap()
    };
    let mut s = s;
    let block = get_block(path);
    let mut out = hungry_preface();
    for i in 0..streams {
        out.extend(frame(HEADERS, 0x5, 2 * i + 1, &block));
    }
    s.write_all(&out).await.unwrap();
    s
}

/// A /proc/PID/status field, in kB.
fn status_kb(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The gateway's SETTINGS advertise `client_h2_max_streams`; a client that opens more
/// streams than that at once gets the extra ones refused (`RST_STREAM REFUSED_STREAM`),
/// the others answered.
async fn streams_past_the_cap_are_refused(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake.url(), "client_h2_max_streams = 5").await;
    let path = format!("/v21.0/{PHONE_A1}/whatsapp_business_profile");
    let mut s = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let mut out = hungry_preface();
    // The client's SETTINGS ack is not needed for the gateway to enforce its own.
    for i in 0..8u32 {
        out.extend(frame(HEADERS, 0x5, 2 * i + 1, &get_block(&path)));
    }
    s.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 16384];
    loop {
        let fs = frames(&got);
        let answered = fs.iter().filter(|f| f.kind == HEADERS).count();
        let refused = fs.iter().filter(|f| f.kind == RST_STREAM).count();
        if answered + refused >= 8 || Instant::now() > deadline {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let fs = frames(&got);
    let settings = fs
        .iter()
        .find(|f| f.kind == SETTINGS && f.stream == 0 && !f.payload.is_empty())
        .unwrap_or_else(|| panic!("{}: no SETTINGS: {fs:?}", engine.name()));
    let advertised = settings
        .payload
        .chunks(6)
        .find(|c| u16::from_be_bytes([c[0], c[1]]) == MAX_CONCURRENT_STREAMS)
        .map(|c| u32::from_be_bytes([c[2], c[3], c[4], c[5]]));
    assert_eq!(advertised, Some(5), "{}", engine.name());
    let refused: Vec<u32> = fs
        .iter()
        .filter(|f| f.kind == RST_STREAM)
        .filter(|f| {
            u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]])
                == REFUSED_STREAM
        })
        .map(|f| f.stream)
        .collect();
    let answered = fs.iter().filter(|f| f.kind == HEADERS).count();
    assert_eq!(refused.len(), 3, "{}: {refused:?}", engine.name());
    assert_eq!(answered, 5, "{}", engine.name());
    assert_eq!(
        fake.count(),
        5,
        "{}: refused streams reach no upstream",
        engine.name()
    );
}

/// Two connections of 100 streams each (the default cap), every stream a 5 MB answer, a
/// huge window, never read: the gateway's RSS grows by less than 64 MB (it grew by about
/// 1.2 MB per stream before) and it holds at most `upstream_large_concurrency` (64)
/// upstream connections for them (one per stream before); a send on another connection is
/// answered meanwhile.
async fn slow_readers_of_large_answers_stay_bounded(engine: Engine) {
    let fake = FakeCloud::start().await;
    let path = format!("/v21.0/{PHONE_A1}/whatsapp_business_profile");
    fake.on_path(&path, Reply::raw(200, vec![b'x'; 5 << 20]));
    let gw = start(engine, &fake.url(), "").await;
    let pid = gw.pid().expect("running");
    // Warm: one send, so the worker's pools and buffers exist before the baseline.
    assert_eq!(gw.send(PHONE_A1, &text_body()).await.status(), 200);
    let (rss0, fds0) = (status_kb(pid, "VmRSS"), open_fds(pid));
    let _a = hungry_connection(&gw, &path, 100).await;
    let _b = hungry_connection(&gw, &path, 100).await;
    // Every stream reached the upstream and was answered or dropped.
    assert!(
        fake.wait_for(Duration::from_secs(5), |r| r.len() >= 201)
            .await,
        "{}: {} requests upstream",
        engine.name(),
        fake.count()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (rss, hwm, fds) = (
        status_kb(pid, "VmRSS"),
        status_kb(pid, "VmHWM"),
        open_fds(pid),
    );
    let t0 = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(3), gw.send(PHONE_A1, &text_body()))
        .await
        .map(|r| r.status().as_u16());
    let figures = format!(
        "{}: RSS {rss0} → {rss} kB (peak {hwm}), descriptors {fds0} → {fds}",
        engine.name()
    );
    eprintln!("{figures}");
    assert_eq!(status, Ok(200), "{figures}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{figures}");
    assert!(rss < rss0 + 64 * 1024, "{figures}");
    // 2 client connections, at most 64 upstream connections streaming large answers, a
    // few in passing.
    assert!(fds < fds0 + 64 + 2 + 8, "{figures}");
}

/// A large answer a client reads streams whole, byte for byte, over HTTP/2; a small one
/// too (read whole first), and the large-answer permit comes back once it is done.
async fn answers_read_whole_or_streamed_arrive_intact(engine: Engine) {
    let fake = FakeCloud::start().await;
    let big: Vec<u8> = (0..(3usize << 20)).map(|i| (i % 251) as u8).collect();
    let large = format!("/v21.0/{PHONE_A1}/media_large");
    let small = format!("/v21.0/{PHONE_A1}/whatsapp_business_profile");
    fake.on_path(&large, Reply::raw(200, big.clone()));
    fake.on_path(&small, Reply::raw(200, vec![b'y'; 60 * 1024]));
    // One large-answer permit: the second large answer goes only if the first gave it back.
    let gw = start(engine, &fake.url(), "upstream_large_concurrency = 1").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for _ in 0..2 {
        let r = h2.get(format!("{}{large}", gw.url())).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", engine.name());
        let got = r.bytes().await.unwrap();
        assert!(got[..] == big[..], "{}: {} bytes", engine.name(), got.len());
    }
    let r = h2.get(format!("{}{small}", gw.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 60 * 1024);
}

both_engines!(
    streams_past_the_cap_are_refused,
    slow_readers_of_large_answers_stay_bounded,
    answers_read_whole_or_streamed_arrive_intact,
);
