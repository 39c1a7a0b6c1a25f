//! What the classifier judges, on both engines: compressed enforcement answers trip (the
//! answer still goes back byte for byte); compressed answers it cannot or must not judge
//! pass untouched (2xx, corrupt, gzip bombs); only sends trip (not `/register`, reads or
//! media uploads); template detection for `business_initiated` circuits stops at
//! `classify_body_limit`.
//!
//! Every test runs as `relay::…` (`fast_path = true`) and `hyper::…` (`fast_path =
//! false`), see `both_engines!` at the end. reqwest here has no decompression features,
//! so clients see the raw (compressed) bytes.

use std::io::{Read, Write};

use crate::support::*;
use serde_json::{json, Value};

const WABA_A: &str = "102290129340398";
const PHONE_A1: &str = "106540352242922";
const PHONE_A2: &str = "106540352242923";
const WABA_B: &str = "102290129340399";
const PHONE_B: &str = "106540352242924";
const ADMIN: &str = "test-admin-token-0123456789";

/// What the clients here offer.
const ACCEPT_ENCODING: &str = "gzip, deflate, br";

fn config(engine: Engine, extra: &str) -> String {
    let engine_line = engine.config_line();
    format!(
        r#"
{engine_line}
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
state_dir = "{{state_dir}}"
upstream = "{{upstream}}"
admin_token = "{ADMIN}"
request_timeout = "5s"
{extra}

[[accounts]]
waba_id = "{WABA_A}"
phone_number_ids = ["{PHONE_A1}", "{PHONE_A2}"]

[[accounts]]
waba_id = "{WABA_B}"
phone_number_ids = ["{PHONE_B}"]
"#
    )
}

async fn start(engine: Engine, upstream: &str, extra: &str) -> Gateway {
    Gateway::builder(&config(engine, extra))
        .var("upstream", upstream)
        .start()
        .await
}

/// A send of `body` to `phone` with `Accept-Encoding: gzip, deflate, br`.
async fn send_accepting(gw: &Gateway, phone: &str, body: &str) -> reqwest::Response {
    gw.client()
        .post(format!("{}/{TEST_VERSION}/{phone}/messages", gw.url()))
        .header("authorization", format!("Bearer {TEST_TOKEN}"))
        .header("content-type", "application/json")
        .header("accept-encoding", ACCEPT_ENCODING)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// `data` compressed as `content-encoding: {encoding}` says: `gzip`, `deflate` (the zlib
/// format, RFC 9110 §8.4.1.2) or `br`. Checked by decompressing it again.
fn compress(encoding: &str, data: &[u8]) -> Vec<u8> {
    let out = match encoding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "br" => {
            let mut out = Vec::new();
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, 11, 22);
                w.write_all(data).unwrap();
            }
            out
        }
        other => panic!("unknown encoding {other}"),
    };
    let mut back = Vec::new();
    match encoding {
        "gzip" => flate2::read::GzDecoder::new(&out[..]).read_to_end(&mut back),
        "deflate" => flate2::read::ZlibDecoder::new(&out[..]).read_to_end(&mut back),
        _ => brotli::Decompressor::new(&out[..], 4096).read_to_end(&mut back),
    }
    .unwrap();
    assert!(back == data, "{encoding} round trip");
    out
}

/// The WABA's circuit was opened by a send's 368, with that answer's fbtrace_id.
async fn assert_tripped_by_368(gw: &Gateway, waba: &str, what: &str) {
    let (_, c) = gw.circuit(ADMIN, waba).await;
    assert_eq!(c["state"], "open", "{what}: circuit not open: {c}");
    assert_eq!(c["code"], 368, "{what}: {c}");
    assert_eq!(c["source"], "send", "{what}: {c}");
    assert_eq!(
        c["history"][0]["evidence"]["fbtrace_id"], FBTRACE_ID,
        "{what}: {c}"
    );
}

async fn assert_closed(gw: &Gateway, waba: &str, what: &str) {
    let (status, c) = gw.circuit(ADMIN, waba).await;
    assert_eq!(status, 200);
    assert_eq!(c["state"], "closed", "{what} tripped the circuit: {c}");
    assert_eq!(c["history"], json!([]), "{what}: {c}");
}

// ---------------------------------------------------------------------------
// Compressed enforcement answers
// ---------------------------------------------------------------------------

/// Meta's 403/368 compressed with `encoding`: relayed byte for byte (compressed,
/// `content-encoding` kept), and it trips the WABA like the plain one.
async fn compressed_368_trips(engine: Engine, encoding: &str) {
    let fake = FakeCloud::start().await;
    let compressed = compress(encoding, BLOCKED_368_BODY.as_bytes());
    fake.on_phone(
        PHONE_A1,
        Reply::raw(403, compressed.clone())
            .with_header("content-type", "application/json")
            .with_header("content-encoding", encoding),
    );
    let gw = start(engine, &fake.url(), "").await;

    let r = send_accepting(&gw, PHONE_A1, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("x-wa-breaker").is_none());
    assert_eq!(r.headers()["content-encoding"], encoding);
    assert_eq!(r.bytes().await.unwrap(), compressed, "byte for byte");
    assert_eq!(
        fake.sends_for(PHONE_A1)[0].header("accept-encoding"),
        Some(ACCEPT_ENCODING),
        "accept-encoding forwarded unchanged"
    );

    assert_tripped_by_368(&gw, WABA_A, &format!("a {encoding} 403/368")).await;
    for phone in [PHONE_A2, PHONE_A1] {
        let r = send_accepting(&gw, phone, TEMPLATE_BODY).await;
        assert_eq!(r.status(), 403);
        assert_eq!(r.headers()["x-wa-breaker"], "open");
    }
    assert_eq!(
        fake.count_for_phone(PHONE_A1) + fake.count_for_phone(PHONE_A2),
        1,
        "no send after the trip reaches the upstream"
    );
}

async fn a_gzip_368_answer_trips(engine: Engine) {
    compressed_368_trips(engine, "gzip").await
}

async fn a_deflate_368_answer_trips(engine: Engine) {
    compressed_368_trips(engine, "deflate").await
}

async fn a_brotli_368_answer_trips(engine: Engine) {
    compressed_368_trips(engine, "br").await
}

/// The same with `transfer-encoding: chunked` on top (the gzip stream cut across chunks).
async fn a_chunked_gzip_368_answer_trips(engine: Engine) {
    let up = RawUpstream::start().await;
    let gw = start(engine, &up.url(), "").await;
    let compressed = compress("gzip", BLOCKED_368_BODY.as_bytes());
    let (a, b) = compressed.split_at(compressed.len() / 2);
    let mut answer = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n",
        a.len()
    )
    .into_bytes();
    answer.extend_from_slice(a);
    answer.extend_from_slice(format!("\r\n{:x}\r\n", b.len()).as_bytes());
    answer.extend_from_slice(b);
    answer.extend_from_slice(b"\r\n0\r\n\r\n");
    up.push(RawReply::bytes(answer));

    let r = send_accepting(&gw, PHONE_A1, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("x-wa-breaker").is_none());
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.bytes().await.unwrap(), compressed, "byte for byte");

    assert_tripped_by_368(&gw, WABA_A, "a chunked gzip 403/368").await;
    let r = send_accepting(&gw, PHONE_A2, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-wa-breaker"], "open");
    assert_eq!(up.requests().len(), 1, "no send after the trip upstream");
}

// ---------------------------------------------------------------------------
// Compressed answers that are not judged
// ---------------------------------------------------------------------------

/// A 2xx is never decoded nor judged: a body that only claims to be gzip reaches the
/// client as it is.
async fn a_compressed_2xx_answer_is_never_decoded(engine: Engine) {
    let fake = FakeCloud::start().await;
    let bogus: &[u8] = b"\x1f\x8bnot really gzip";
    fake.on_phone(
        PHONE_A1,
        Reply::raw(200, bogus)
            .with_header("content-type", "application/json")
            .with_header("content-encoding", "gzip"),
    );
    let gw = start(engine, &fake.url(), "").await;
    let r = send_accepting(&gw, PHONE_A1, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-wa-breaker").is_none());
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.bytes().await.unwrap(), bogus);
    assert_closed(&gw, WABA_A, "a 2xx").await;
}

/// A 403 whose gzip body is corrupt cannot be judged: it passes byte for byte, trips
/// nothing, and the next send is forwarded.
async fn a_corrupt_gzip_403_passes_through_and_trips_nothing(engine: Engine) {
    let fake = FakeCloud::start().await;
    let good = compress("gzip", BLOCKED_368_BODY.as_bytes());
    // A real gzip header, then garbage where the deflate stream should be.
    let mut corrupt = good[..10].to_vec();
    corrupt.extend_from_slice(b"\xff\xfe this is not a deflate stream {\"error\":{\"code\":368}}");
    fake.queue_phone(
        PHONE_A1,
        vec![Reply::raw(403, corrupt.clone())
            .with_header("content-type", "application/json")
            .with_header("content-encoding", "gzip")],
    );
    let gw = start(engine, &fake.url(), "").await;
    let r = send_accepting(&gw, PHONE_A1, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("x-wa-breaker").is_none());
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.bytes().await.unwrap(), corrupt, "byte for byte");
    assert_closed(&gw, WABA_A, "a corrupt gzip 403").await;
    let r = send_accepting(&gw, PHONE_A2, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 200, "the next send is forwarded");
    assert_eq!(fake.count_for_phone(PHONE_A2), 1);
}

/// `VmRSS` and `VmHWM` (peak) of a process, in bytes.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
    };
    (kb("VmRSS:") * 1024, kb("VmHWM:") * 1024)
}

/// A gzip bomb: a valid gzip stream, compressed well under `classify_body_limit`, that
/// decodes to 20 MB of spaces followed by a 368 envelope. Decoding stops at a cap, so it
/// is not judged: it passes byte for byte, trips nothing, the gateway's memory stays
/// small and it keeps serving.
async fn a_gzip_bomb_403_passes_through_trips_nothing_and_stays_small(engine: Engine) {
    const LIMIT: u64 = 100 * 1024 * 1024;
    let mut plain = vec![b' '; 20 * 1024 * 1024];
    plain.extend_from_slice(BLOCKED_368_BODY.as_bytes());
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&plain).unwrap();
    let bomb = e.finish().unwrap();
    drop(plain);
    assert!(
        bomb.len() < 65536,
        "the bomb must fit the default classify_body_limit: {} bytes",
        bomb.len()
    );

    let fake = FakeCloud::start().await;
    fake.queue_phone(
        PHONE_A1,
        vec![Reply::raw(403, bomb.clone())
            .with_header("content-type", "application/json")
            .with_header("content-encoding", "gzip")],
    );
    let gw = start(engine, &fake.url(), "").await;
    let pid = gw.pid().expect("gateway pid");
    let r = send_accepting(&gw, PHONE_A1, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("x-wa-breaker").is_none());
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert!(r.bytes().await.unwrap() == bomb, "byte for byte");

    assert_closed(&gw, WABA_A, "a gzip bomb").await;
    let r = send_accepting(&gw, PHONE_A1, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 200, "the gateway keeps serving");
    let (now, peak) = rss(pid);
    assert!(
        now < LIMIT && peak < LIMIT,
        "gateway RSS {} MB, peak {} MB after a gzip bomb",
        now >> 20,
        peak >> 20
    );
}

// ---------------------------------------------------------------------------
// Only sends trip
// ---------------------------------------------------------------------------

/// Only a send (`POST …/{phone}/messages`) trips. A 403/131031 to `POST …/register` (a
/// wrong two-step PIN), a 403/368 to a read of the phone node or to a media upload leave
/// the circuit closed and the next send is forwarded.
async fn only_sends_trip(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake.url(), "").await;
    let register = format!("/{TEST_VERSION}/{PHONE_A1}/register");
    let node = format!("/{TEST_VERSION}/{PHONE_A1}");
    let media = format!("/{TEST_VERSION}/{PHONE_A1}/media");
    fake.on_path(
        &register,
        Reply::graph_error(403, 131031, "Business Account locked"),
    );
    fake.on_path(&node, Reply::blocked_368());
    fake.on_path(&media, Reply::blocked_368());

    let mut forwarded = 0;
    let mut tripped = Vec::new();
    let pin = r#"{"messaging_product":"whatsapp","pin":"123456"}"#;
    let upload = r#"{"messaging_product":"whatsapp"}"#;
    let steps = [
        ("POST /register answered 403/131031", &register, Some(pin)),
        ("GET of the phone node answered 403/368", &node, None),
        ("POST /media answered 403/368", &media, Some(upload)),
    ];
    for (what, path, body) in steps {
        let r = match body {
            Some(b) => gw.post(path, b).await,
            None => gw.get(path).await,
        };
        assert_eq!(r.status(), 403, "{what}");
        assert!(r.headers().get("x-wa-breaker").is_none(), "{what}");
        r.bytes().await.unwrap();
        let (_, c) = gw.circuit(ADMIN, WABA_A).await;
        if c["state"] != "closed" {
            // Recorded; closed again so the other calls are judged on their own.
            tripped.push(format!("{what} (code {})", c["code"]));
            let close = format!("/admin/circuits/{WABA_A}/close");
            let r = gw.admin_post(&close, Some(ADMIN), None).await;
            assert!(r.status().is_success());
        }
        let r = gw.send_str(PHONE_A2, TEXT_BODY).await;
        assert_eq!(r.status(), 200, "the send after {what} is forwarded");
        forwarded += 1;
        assert_eq!(fake.count_for_phone(PHONE_A2), forwarded);
    }
    assert!(
        tripped.is_empty(),
        "only sends may trip, but these tripped the circuit: {}",
        tripped.join("; ")
    );

    // A send answered 403/368 trips as always.
    fake.on_phone(PHONE_A1, Reply::blocked_368());
    assert_eq!(gw.send_str(PHONE_A1, TEMPLATE_BODY).await.status(), 403);
    assert_tripped_by_368(&gw, WABA_A, "a send's 403/368").await;
    let r = gw.send_str(PHONE_A2, TEXT_BODY).await;
    assert_eq!(r.headers()["x-wa-breaker"], "open");
    assert_eq!(fake.count_for_phone(PHONE_A2), forwarded);
}

// ---------------------------------------------------------------------------
// Template detection and classify_body_limit
// ---------------------------------------------------------------------------

/// With a `business_initiated` circuit, only template sends are answered locally, and
/// only those small enough to inspect (`classify_body_limit`): larger sends are left to
/// Meta.
async fn template_detection_honours_classify_body_limit(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake.url(), "classify_body_limit = 1024").await;
    let r = gw
        .admin_post(
            &format!("/admin/circuits/{WABA_A}/open"),
            Some(ADMIN),
            Some(&json!({"scope": "business_initiated"})),
        )
        .await;
    assert_eq!(r.status(), 200);

    let r = gw.send_str(PHONE_A1, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 403, "a small template send is answered locally");
    assert_eq!(r.headers()["x-wa-breaker"], "open");
    assert_eq!(fake.count_for_phone(PHONE_A1), 0);

    let r = gw.send_str(PHONE_A1, TEXT_BODY).await;
    assert_eq!(r.status(), 200, "a text send is forwarded");
    assert!(r.headers().get("x-wa-breaker").is_none());
    assert_eq!(fake.count_for_phone(PHONE_A1), 1);

    let mut big = template_body();
    big["template"]["components"][0]["parameters"][1]["text"] =
        Value::String(format!("tomorrow between 9 and 11{}", " ".repeat(1200)));
    let big = serde_json::to_string(&big).unwrap();
    assert!(big.len() > 1024 && big.contains("\"template\""));
    let r = gw.send_str(PHONE_A1, &big).await;
    assert_eq!(
        r.status(),
        200,
        "a template send over classify_body_limit ({} bytes) is left to Meta",
        big.len()
    );
    assert!(r.headers().get("x-wa-breaker").is_none());
    assert_eq!(fake.count_for_phone(PHONE_A1), 2);
    assert_eq!(fake.last().unwrap().body_str(), big, "forwarded intact");
}

both_engines!(
    a_gzip_368_answer_trips,
    a_deflate_368_answer_trips,
    a_brotli_368_answer_trips,
    a_chunked_gzip_368_answer_trips,
    a_compressed_2xx_answer_is_never_decoded,
    a_corrupt_gzip_403_passes_through_and_trips_nothing,
    a_gzip_bomb_403_passes_through_trips_nothing_and_stays_small,
    only_sends_trip,
    template_detection_honours_classify_body_limit,
);
