//! Sends to an `https` upstream that speaks HTTP/2 (ALPN `h2`), as Graph does, on both
//! engines: many sends in flight share a few connections; a GOAWAY moves later sends to a
//! new connection without delivering any twice, and the streams above its last stream id
//! are sent again there; a reset stream is the gateway's 502 and is not sent again, a
//! refused one is; a 368 on one stream trips the circuit while the other streams complete;
//! an answer without `content-length` reaches the HTTP/1.1 client chunked; a first
//! connection that fails fails only the send that opened it. (An `https` upstream that
//! offers only HTTP/1.1: `relay::an_https_upstream_is_relayed_over_tls_trusting_upstream_ca_file`.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use h2::Reason;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::support::h2_upstream::{duplicates, ok_body, to_of, H2Action, H2Upstream};
use crate::support::*;

const WABA_A: &str = "102290129340398";
const PHONE_A1: &str = "106540352242922";
const PHONE_A2: &str = "106540352242923";
const ADMIN: &str = "test-admin-token-0123456789";
/// Worker threads of the gateway under test.
const WORKERS: usize = 2;

async fn start(engine: Engine, up: &H2Upstream) -> Gateway {
    start_with(engine, up, WORKERS).await
}

/// [`start`] with `workers` worker threads.
async fn start_with(engine: Engine, up: &H2Upstream, workers: usize) -> Gateway {
    let ca = fixture("ca.pem");
    let config = format!(
        r#"
{}
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
state_dir = "{{state_dir}}"
upstream = "{}"
upstream_ca_file = "{ca}"
admin_token = "{ADMIN}"
request_timeout = "5s"
workers = {workers}

# 200 sends to one number at once: no pacing.
[shaping]
throughput = 10000

[[accounts]]
waba_id = "{WABA_A}"
phone_number_ids = ["{PHONE_A1}", "{PHONE_A2}"]
"#,
        engine.config_line(),
        up.url()
    );
    Gateway::builder(&config).start().await
}

/// A text send to `to` (the fake echoes `to`; tests use it as the send's id).
fn body(to: &str) -> String {
    format!(
        r#"{{"messaging_product":"whatsapp","recipient_type":"individual","to":"{to}","type":"text","text":{{"body":"hello"}}}}"#
    )
}

/// One send on its own client connection.
async fn send_one(listen: String, phone: &'static str, to: String) -> Answer {
    send_body(&listen, phone, &body(&to)).await
}

/// A send of `body` on its own client connection.
async fn send_body(listen: &str, phone: &str, body: &str) -> Answer {
    let mut s = TcpStream::connect(listen.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(send_req(phone, "", body).as_bytes())
        .await
        .unwrap();
    read_answer(&mut s, &mut Vec::new()).await
}

/// `n` sends at once, each on its own client connection, `to` = `{prefix}{i:04}`.
async fn send_many(gw: &Gateway, prefix: &str, n: usize) -> Vec<(String, Answer)> {
    spawn_sends(gw.url(), prefix, n).await.unwrap()
}

/// [`send_many`] in the background, for sends the upstream holds.
fn spawn_sends(url: String, prefix: &str, n: usize) -> JoinHandle<Vec<(String, Answer)>> {
    let prefix = prefix.to_string();
    tokio::spawn(async move {
        let tasks = (0..n).map(|i| {
            let to = format!("{prefix}{i:04}");
            let url = url.clone();
            tokio::spawn(async move { (to.clone(), send_one(url, PHONE_A1, to).await) })
        });
        join_all(tasks)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect()
    })
}

/// The upstream resets the streams of sends to `to` with `reason`; it answers the others.
fn reset_to(up: &H2Upstream, to: &'static str, reason: Reason) {
    up.respond_with(move |s| {
        if to_of(&s.body) == to {
            H2Action::Reset(reason)
        } else {
            H2Action::Ok
        }
    });
}

/// 200 sends held upstream at once (each on its own client connection), then answered:
/// each must be answered 200 with the upstream's bytes.
async fn held_round(gw: &Gateway, up: &H2Upstream, prefix: &str) {
    up.rearm();
    let sends = spawn_sends(gw.url(), prefix, 200);
    wait_until("200 sends held at once", || up.held() == 200).await;
    up.release();
    for (to, a) in sends.await.unwrap() {
        assert_eq!(a.status, 200, "{}", a.head);
        assert_eq!(String::from_utf8_lossy(&a.body), ok_body(&to));
    }
}

/// 200 sends in flight at once go as streams over at most two connections per worker
/// (an HTTP/1.1 pool needs one connection per send in flight), each delivered once with
/// the right `:path`, `:authority` and `authorization`, each answered with the
/// upstream's bytes. The first round starts with no connection open: one connection
/// learns that the upstream speaks `h2` while the others wait (hyper's pool alone would
/// open one per send and keep one).
async fn many_sends_in_flight_share_a_few_http2_connections(engine: Engine) {
    let up = H2Upstream::start(250).await;
    // Each send is held until all are in: they are all in flight at once.
    up.respond_with(|_| H2Action::Hold);
    let gw = start(engine, &up).await;
    held_round(&gw, &up, "1555001").await;
    let first_round = up.connections();
    held_round(&gw, &up, "1555002").await;
    let seen = up.processed();
    assert_eq!(
        seen.len(),
        400,
        "{}: each send delivered once",
        engine.name()
    );
    assert!(duplicates(&seen).is_empty(), "{:?}", duplicates(&seen));
    let authority = format!("localhost:{}", up.addr().port());
    for s in &seen {
        assert_eq!(s.method, "POST");
        assert_eq!(s.path, format!("/v21.0/{PHONE_A1}/messages"));
        assert_eq!(s.authority, authority);
        assert_eq!(
            s.authorization.as_deref(),
            Some(format!("Bearer {TEST_TOKEN}").as_str())
        );
    }
    assert!(
        first_round <= 2 * WORKERS && up.connections() <= 2 * WORKERS,
        "{}: {first_round} TLS connections (TCP + TLS handshakes) for the first 200 sends in \
         flight on {WORKERS} workers, {} after the second 200",
        engine.name(),
        up.connections()
    );
}

/// 40 sends at once while the workers have no connection, and the first connection the
/// upstream accepts is closed before TLS: the send whose connection that was is the
/// gateway's 502 (`upstream-error`, nothing sent), and the sends waiting for the worker to
/// learn the upstream's protocol go over the next connection — 39 delivered once each,
/// over no more connections than without the failure.
async fn a_failed_first_connection_fails_only_the_send_that_opened_it(engine: Engine) {
    let up = H2Upstream::start(100).await;
    up.respond_with(|_| H2Action::Hold);
    up.drop_next(1);
    let gw = start(engine, &up).await;
    let sends = spawn_sends(gw.url(), "1555007", 40);
    wait_until("39 sends held upstream", || up.held() == 39).await;
    up.release();
    let (mut ok, mut failed) = (0, 0);
    for (to, a) in sends.await.unwrap() {
        if a.status == 200 {
            assert_eq!(String::from_utf8_lossy(&a.body), ok_body(&to));
            ok += 1;
        } else {
            assert_eq!(a.status, 502, "{}", a.head);
            assert_eq!(a.header("x-wa-breaker").as_deref(), Some("upstream-error"));
            failed += 1;
        }
    }
    assert_eq!((ok, failed), (39, 1), "{}", engine.name());
    let seen = up.processed();
    assert_eq!(seen.len(), 39, "{}: each 200 delivered once", engine.name());
    assert!(duplicates(&seen).is_empty(), "{:?}", duplicates(&seen));
    assert!(
        up.connections() <= 2 * WORKERS,
        "{}: {} TLS connections after the failed one",
        engine.name(),
        up.connections()
    );
    assert!(gw.logs().contains("upstream request failed"));
}

/// A burst past the server's `max_concurrent_streams` (10 here): on the relay the sends over
/// the limit queue on the open connection while one more connection opens, rather than
/// each batch of 10 waiting for a connection of its own (TCP, TLS and the preface: ~3
/// round trips of a WAN each time). All 60 are answered, each delivered once: hyper's
/// client assumes 100 streams until the server's SETTINGS arrive, and the streams the
/// server refused meanwhile are sent again (README "Retries").
async fn a_burst_past_the_stream_limit_queues_instead_of_opening_connections(engine: Engine) {
    let up = H2Upstream::start(10).await;
    up.respond_with(|_| H2Action::Hold);
    let gw = start(engine, &up).await;
    let sends = spawn_sends(gw.url(), "1555003", 60);
    // The first connections' streams are all held; what is over the limit waits.
    wait_until("the first streams held", || up.held() >= 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = up.connections();
    up.release();
    for (to, a) in sends.await.unwrap() {
        assert_eq!(a.status, 200, "{}: {}", engine.name(), a.head);
        assert_eq!(String::from_utf8_lossy(&a.body), ok_body(&to));
    }
    let seen = up.processed();
    assert_eq!(seen.len(), 60, "{}: each delivered once", engine.name());
    assert!(duplicates(&seen).is_empty(), "{:?}", duplicates(&seen));
    if engine.is_relay() {
        assert!(
            during <= 2 * WORKERS && up.connections() <= 2 * WORKERS,
            "relay: {during} connections during the burst, {} after, for 60 sends with a limit of 10 streams on {WORKERS} workers",
            up.connections()
        );
    }
}

/// A graceful GOAWAY after 5 streams on each connection: every send is answered 200 and
/// delivered exactly once (the streams the connection carried finish), and later sends go
/// over new connections. (The `h2` server's GOAWAY names every stream it received; streams
/// above a GOAWAY: `streams_above_a_goaway_are_sent_again_on_a_new_connection`.)
async fn a_goaway_moves_later_sends_to_a_new_connection_delivering_each_once(engine: Engine) {
    let up = H2Upstream::start(100).await;
    up.goaway_after(5);
    let gw = start(engine, &up).await;
    let mut answered = 0;
    for round in 0..4 {
        for (to, a) in send_many(&gw, &format!("155502{round}"), 8).await {
            assert_eq!(a.status, 200, "{}: {to}: {}", engine.name(), a.head);
            assert_eq!(String::from_utf8_lossy(&a.body), ok_body(&to));
            answered += 1;
        }
    }
    let seen = up.processed();
    assert!(
        duplicates(&seen).is_empty(),
        "delivered twice: {:?}",
        duplicates(&seen)
    );
    assert_eq!(
        seen.len(),
        answered,
        "{}: each send delivered once",
        engine.name()
    );
    // Each connection went away after 5 streams (or the few more in flight before its
    // last GOAWAY): the later rounds went over new connections.
    let last_round = seen
        .iter()
        .filter(|s| to_of(&s.body).starts_with("1555023"))
        .map(|s| s.conn)
        .min()
        .unwrap_or(0);
    assert!(
        last_round > WORKERS,
        "{}: the last round went over new connections (from connection {last_round} on)",
        engine.name()
    );
}

/// A GOAWAY whose last stream id is below streams the upstream received (it did not process
/// them; HTTP/2 guarantees it): the stream it names is answered, and the ones above it are
/// sent again on a new connection, so every send is answered 200 and processed once.
/// One worker, so that the sends share one connection.
async fn streams_above_a_goaway_are_sent_again_on_a_new_connection(engine: Engine) {
    let up = H2Upstream::start(100).await;
    up.goaway_below_next(6);
    let gw = start_with(engine, &up, 1).await;
    let answers = spawn_sends(gw.url(), "1555006", 6).await.unwrap();
    for (to, a) in &answers {
        assert_eq!(a.status, 200, "{}: {to}: {}", engine.name(), a.head);
        assert_eq!(String::from_utf8_lossy(&a.body), ok_body(to));
    }
    let seen = up.seen();
    let above: Vec<_> = seen.iter().filter(|s| s.conn == 1 && s.refused).collect();
    assert!(
        !above.is_empty(),
        "{}: streams above the GOAWAY on the first connection: {seen:?}",
        engine.name()
    );
    let processed = up.processed();
    assert!(
        duplicates(&processed).is_empty(),
        "{}: processed twice: {:?}",
        engine.name(),
        duplicates(&processed)
    );
    assert_eq!(processed.len(), 6, "{}: each processed once", engine.name());
    for s in above {
        let again = processed.iter().find(|p| to_of(&p.body) == to_of(&s.body));
        assert!(
            again.is_some_and(|p| p.conn > 1),
            "{}: {} sent again on a new connection",
            engine.name(),
            to_of(&s.body)
        );
    }
}

/// The upstream changes protocol, as one whose ALPN answer changed: while it selects
/// HTTP/1.1 on new connections the sends go over HTTP/1.1, and once it selects `h2` again
/// over HTTP/2 — each answered 200 and processed once. The sends that find the change (a
/// burst: one finds it on a new connection, the others wait for that one) are not failed
/// for it: nothing was written, and they go over the protocol the connection selected.
/// One worker, so that one pool sees every change.
async fn a_change_of_protocol_at_the_upstream_fails_no_send(engine: Engine) {
    let up = H2Upstream::start(100).await;
    // The HTTP/2 connection goes away after 2 streams: the next send opens a new one.
    up.goaway_after(2);
    let gw = start_with(engine, &up, 1).await;
    let name = engine.name();
    let one = |to: String| {
        let url = gw.url();
        async move {
            let a = send_one(url, PHONE_A1, to.clone()).await;
            assert_eq!(a.status, 200, "{name}: {to}: {}", a.head);
            assert_eq!(String::from_utf8_lossy(&a.body), ok_body(&to));
        }
    };
    for i in 0..2 {
        one(format!("155507100{i:02}")).await;
    }
    wait_until("the HTTP/2 connection gone", || up.h2_open() == 0).await;
    up.speak_http1(true);
    for (to, a) in send_many(&gw, "15550720", 6).await {
        assert_eq!(a.status, 200, "{name}: HTTP/1.1: {to}: {}", a.head);
        assert_eq!(String::from_utf8_lossy(&a.body), ok_body(&to));
    }
    up.speak_http1(false);
    // Each HTTP/1.1 connection open (up to 6) closes after its next answer; then HTTP/2.
    for i in 0..8 {
        one(format!("155507300{i:02}")).await;
    }
    let processed = up.processed();
    assert!(
        duplicates(&processed).is_empty(),
        "{name}: processed twice: {:?}",
        duplicates(&processed)
    );
    assert_eq!(processed.len(), 16, "{name}: each processed once");
    let over_http1 = |prefix: &str| -> Vec<bool> {
        let mut sends: Vec<_> = processed
            .iter()
            .filter(|s| to_of(&s.body).starts_with(prefix))
            .map(|s| (to_of(&s.body), s.http1))
            .collect();
        sends.sort();
        sends.into_iter().map(|(_, http1)| http1).collect()
    };
    assert_eq!(over_http1("1555071"), [false; 2], "{name}: HTTP/2 first");
    assert_eq!(
        over_http1("1555072"),
        [true; 6],
        "{name}: HTTP/1.1 after the change"
    );
    assert_eq!(
        over_http1("1555073")[6..],
        [false; 2],
        "{name}: HTTP/2 again"
    );
}

/// A stream the upstream resets (`INTERNAL_ERROR`) after reading it may have been
/// processed: that send gets the gateway's 502 and is not sent again; the others on the
/// same connection are answered.
async fn a_reset_stream_is_a_502_and_is_not_sent_again(engine: Engine) {
    let up = H2Upstream::start(100).await;
    let reset = "15550039999";
    reset_to(&up, reset, Reason::INTERNAL_ERROR);
    let gw = start(engine, &up).await;
    assert_eq!(
        send_one(gw.url(), PHONE_A1, "15550030000".into())
            .await
            .status,
        200
    );
    let url = gw.url();
    let mut tasks: Vec<_> = (1..10)
        .map(|i| tokio::spawn(send_one(url.clone(), PHONE_A1, format!("155500300{i:02}"))))
        .collect();
    tasks.push(tokio::spawn(send_one(url, PHONE_A1, reset.into())));
    let answers: Vec<Answer> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let (last, others) = answers.split_last().unwrap();
    assert_eq!(last.status, 502, "{}: {}", engine.name(), last.head);
    assert_eq!(
        last.header("x-wa-breaker").as_deref(),
        Some("upstream-error")
    );
    assert!(String::from_utf8_lossy(&last.body).contains("WaBreakerException"));
    for a in others {
        assert_eq!(a.status, 200, "{}", a.head);
    }
    let times = up.seen().iter().filter(|s| to_of(&s.body) == reset).count();
    assert_eq!(times, 1, "{}: the reset send is not retried", engine.name());
    let (_, circuit) = gw.circuit(ADMIN, WABA_A).await;
    assert_ne!(circuit["state"], "open");
}

/// A stream the upstream refuses (`REFUSED_STREAM`: not processed) is sent again, once,
/// and answered; the upstream processed it once. A stream refused every time is sent
/// again twice (`MAX_UNPROCESSED`), then is the gateway's 502, delivered never.
async fn a_refused_stream_is_sent_again_and_delivered_once(engine: Engine) {
    let up = H2Upstream::start(100).await;
    let refused = "15550049999";
    let first = Arc::new(AtomicBool::new(true));
    up.respond_with(move |s| {
        if to_of(&s.body) == refused && first.swap(false, Ordering::SeqCst) {
            H2Action::Reset(Reason::REFUSED_STREAM)
        } else {
            H2Action::Ok
        }
    });
    let gw = start(engine, &up).await;
    let a = send_one(gw.url(), PHONE_A1, refused.into()).await;
    let seen: Vec<_> = up
        .seen()
        .into_iter()
        .filter(|s| to_of(&s.body) == refused)
        .collect();
    let processed = seen.iter().filter(|s| !s.refused).count();
    assert_eq!(a.status, 200, "{}: {}", engine.name(), a.head);
    assert_eq!(String::from_utf8_lossy(&a.body), ok_body(refused));
    assert_eq!(seen.len(), 2, "{}: refused, then sent again", engine.name());
    assert_eq!(processed, 1, "{}", engine.name());

    let always = "15550049998";
    reset_to(&up, always, Reason::REFUSED_STREAM);
    let a = send_one(gw.url(), PHONE_A1, always.into()).await;
    assert_eq!(a.status, 502, "{}: {}", engine.name(), a.head);
    assert_eq!(a.header("x-wa-breaker").as_deref(), Some("upstream-error"));
    let seen: Vec<_> = up
        .seen()
        .into_iter()
        .filter(|s| to_of(&s.body) == always)
        .collect();
    assert_eq!(seen.len(), 3, "{}: sent, then again twice", engine.name());
    assert!(
        seen.iter().all(|s| s.refused),
        "{}: never processed",
        engine.name()
    );

    // A body larger than the gateway holds whole (64 KiB) streams on both engines (the relay
    // hands it to hyper): a refused stream cannot be sent again, and is the 502.
    let big = "15550049997";
    reset_to(&up, big, Reason::REFUSED_STREAM);
    let text = "x".repeat(70 * 1024);
    let large = format!(
        r#"{{"messaging_product":"whatsapp","to":"{big}","type":"text","text":{{"body":"{text}"}}}}"#
    );
    let a = send_body(&gw.url(), PHONE_A1, &large).await;
    assert_eq!(a.status, 502, "{}: {}", engine.name(), a.head);
    assert_eq!(a.header("x-wa-breaker").as_deref(), Some("upstream-error"));
    let times = up.seen().iter().filter(|s| to_of(&s.body) == big).count();
    assert_eq!(times, 1, "{}: a streamed body is sent once", engine.name());
}

/// One stream answers 403 / 368 while 20 others are in flight on the same connections
/// (held until the 368 is answered): the WABA's circuit opens — the next send is answered
/// by the gateway — and the 20 complete 200.
async fn a_368_on_one_stream_trips_while_the_others_complete(engine: Engine) {
    let up = H2Upstream::start(100).await;
    let trip = "15550059999";
    up.respond_with(move |s| {
        if to_of(&s.body) == trip {
            H2Action::Answer(403, BLOCKED_368_BODY.to_string())
        } else {
            H2Action::Hold
        }
    });
    let gw = start(engine, &up).await;
    let url = gw.url();
    let held: Vec<_> = (0..20)
        .map(|i| tokio::spawn(send_one(url.clone(), PHONE_A1, format!("155500500{i:02}"))))
        .collect();
    wait_until("20 sends held upstream", || up.held() == 20).await;
    let a = send_one(gw.url(), PHONE_A1, trip.into()).await;
    assert_eq!(a.status, 403, "{}: {}", engine.name(), a.head);
    assert!(String::from_utf8_lossy(&a.body).contains("368"));
    let before = up.seen().len();
    let local = send_one(gw.url(), PHONE_A2, "15550058888".into()).await;
    assert_eq!(local.status, 403, "{}: {}", engine.name(), local.head);
    assert_eq!(local.header("x-wa-breaker").as_deref(), Some("open"));
    assert_eq!(
        up.seen().len(),
        before,
        "the local answer sent nothing upstream"
    );
    up.release();
    for r in join_all(held).await {
        let a = r.unwrap();
        assert_eq!(a.status, 200, "{}: {}", engine.name(), a.head);
    }
    let (_, circuit) = gw.circuit(ADMIN, WABA_A).await;
    assert_eq!(circuit["state"], "open");
}

/// An HTTP/2 answer without `content-length` reaches the HTTP/1.1 client chunked, whole.
async fn an_answer_without_length_reaches_the_client_chunked(engine: Engine) {
    let up = H2Upstream::start(100).await;
    up.respond_with(|_| H2Action::OkUnframed);
    let gw = start(engine, &up).await;
    let to = "15550060000";
    let mut s = TcpStream::connect(gw.url().trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(send_req(PHONE_A1, "Connection: close\r\n", &body(to)).as_bytes())
        .await
        .unwrap();
    let raw = read_to_close(&mut s, Duration::from_secs(10))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\ntransfer-encoding: chunked"),
        "{}: {head}",
        engine.name()
    );
    // De-chunk.
    let mut body = String::new();
    let mut rest = rest;
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        body.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    assert_eq!(body, ok_body(to));
}

/// Waits (up to 10 s) until `cond` holds.
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

both_engines!(
    many_sends_in_flight_share_a_few_http2_connections,
    a_goaway_moves_later_sends_to_a_new_connection_delivering_each_once,
    a_reset_stream_is_a_502_and_is_not_sent_again,
    a_refused_stream_is_sent_again_and_delivered_once,
    streams_above_a_goaway_are_sent_again_on_a_new_connection,
    a_change_of_protocol_at_the_upstream_fails_no_send,
    a_368_on_one_stream_trips_while_the_others_complete,
    an_answer_without_length_reaches_the_client_chunked,
    a_burst_past_the_stream_limit_queues_instead_of_opening_connections,
    a_failed_first_connection_fails_only_the_send_that_opened_it,
);
