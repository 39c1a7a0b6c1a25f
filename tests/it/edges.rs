//! Issue 12, edges that hold, over real sockets on both engines: no guard bypass by
//! spelling, clean drains, client deadlines.
//!
//! Tests listed in `both_engines!` (at the end) run as `relay::…` (`fast_path = true`) and
//! `hyper::…` (`fast_path = false`).

use std::time::{Duration, Instant};

use crate::support::h2_frame::{frame, frames, GOAWAY, HEADERS, SETTINGS};
use crate::support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const WABA_A: &str = "102290129340398";
const PHONE_A1: &str = "106540352242922";
const ADMIN: &str = "test-admin-token-0123456789";

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
request_timeout = "3s"
{extra}

[[accounts]]
waba_id = "{WABA_A}"
phone_number_ids = ["{PHONE_A1}"]
"#
    )
}

async fn start(engine: Engine, upstream: &str, extra: &str) -> Gateway {
    Gateway::builder(&config(engine, extra))
        .var("upstream", upstream)
        .start()
        .await
}

/// One raw request on a fresh connection; the answer read.
async fn raw_request(gw: &Gateway, req: &str) -> Answer {
    let mut s = TcpStream::connect(gw.listen_addr()).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    read_answer(&mut s, &mut buf).await
}

/// Every spelling of a send that reached the upstream past an open circuit (issue 12) is
/// answered locally; the upstream sees none of them. A plain read still passes, byte for
/// byte as the client spelled it.
async fn every_spelling_of_a_send_to_an_open_circuit_is_answered_locally(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake.url(), "").await;
    let open = format!("/admin/circuits/{WABA_A}/open");
    assert!(gw
        .admin_post(&open, Some(ADMIN), None)
        .await
        .status()
        .is_success());

    let p = PHONE_A1;
    let body = TEMPLATE_BODY;
    let spellings = [
        ("POST", format!("//v21.0/{p}/messages")),
        ("POST", format!("/v21.0//{p}/messages")),
        ("POST", format!("/v21.0/{p}//messages")),
        ("POST", format!("/v21.0/{p}/messages/")),
        ("POST", format!("/V21.0/{p}/messages")),
        ("POST", format!("/v21.0/./{p}/messages")),
        ("POST", format!("/v21.0/{p}/./messages")),
        ("POST", format!("/v21.0/x/../{p}/messages")),
        ("POST", "/v21.0/%31%30%36540352242922/messages".to_string()),
        ("POST", format!("/v21.0/{p}/%6Dessages")),
        ("POST", format!("/v21.0/{p}%2Fmessages")),
        ("POST", format!("/{p}/messages")),
        ("POST", format!("//{p}/messages")),
        ("post", format!("/v21.0/{p}/messages")),
        ("Post", format!("/v21.0/{p}/messages?x=1")),
    ];
    let mut wrong = Vec::new();
    for (method, path) in &spellings {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TEST_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let a = raw_request(&gw, &req).await;
        if a.status != 403 || a.header("x-wa-breaker").as_deref() != Some("open") {
            wrong.push(format!("{method} {path}: {} {}", a.status, a.head));
        }
    }
    assert!(wrong.is_empty(), "{}:\n{}", engine.name(), wrong.join("\n"));
    assert_eq!(fake.count(), 0, "{}: {:?}", engine.name(), fake.requests());

    // Reads pass, forwarded as spelled.
    let a = raw_request(
        &gw,
        &format!("GET /v21.0//{p}/./whatsapp_business_profile HTTP/1.1\r\nHost: gw\r\n\r\n"),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        fake.last().unwrap().path_and_query(),
        format!("/v21.0//{p}/./whatsapp_business_profile")
    );
}

/// SIGTERM with 10 keep-alive sends in flight: every one is answered 200 and says
/// `connection: close`, so no client's next send is cut unanswered; `/readyz` answers 503
/// (not a refused connection) while the main listener drains.
async fn a_drain_answers_in_flight_sends_with_connection_close(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake.url(), "").await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(gw.listen_addr()).await.unwrap();
        // One answered send first, so the connection is a kept-alive one.
        s.write_all(send_req(PHONE_A1, "", TEXT_BODY).as_bytes())
            .await
            .unwrap();
        let mut buf = Vec::new();
        let a = read_answer(&mut s, &mut buf).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("connection"), None, "{}", a.head);
        clients.push((s, buf));
    }
    fake.hold();
    for (s, _) in clients.iter_mut() {
        s.write_all(send_req(PHONE_A1, "", TEXT_BODY).as_bytes())
            .await
            .unwrap();
    }
    assert!(fake.wait_in_flight(10, Duration::from_secs(5)).await);
    gw.signal("TERM");
    assert!(
        gw.wait_for_log("shutting down", Duration::from_secs(5))
            .await,
        "{}",
        gw.logs()
    );
    let ready = gw.admin_get("/readyz", None).await;
    assert_eq!(
        ready.status(),
        503,
        "{}: /readyz during the drain",
        engine.name()
    );
    fake.release();
    let mut wrong = Vec::new();
    for (i, (s, buf)) in clients.iter_mut().enumerate() {
        let a = read_answer(s, buf).await;
        if a.status != 200 || a.header("connection").as_deref() != Some("close") {
            wrong.push(format!("client {i}: {}", a.head));
        }
        assert!(closed(s).await, "client {i}: closed after its answer");
    }
    assert!(wrong.is_empty(), "{}:\n{}", engine.name(), wrong.join("\n"));
    let status = gw.wait_exit(Duration::from_secs(20)).await.expect("exits");
    assert!(status.success(), "{status:?}\n{}", gw.logs());
}

const DEADLINES: &str = r#"
client_header_timeout = "1s"
client_body_timeout = "1s"
client_idle_timeout = "1500ms"
"#;

/// Reads until the gateway closes `s` (or 6 s pass): what it wrote, and when it closed.
async fn until_closed(s: &mut TcpStream, since: Instant) -> (String, Duration) {
    let got = read_to_close(s, Duration::from_secs(6)).await;
    let got = match got {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => e,
    };
    (got, since.elapsed())
}

/// A head trickled in one byte at a time (slowloris) is cut at `client_header_timeout`
/// with 408 (`x-wa-breaker: client-timeout`) on both engines, an idle kept-alive connection at
/// `client_idle_timeout`, while normal sends keep flowing.
async fn slow_heads_and_idle_keep_alives_are_cut_at_their_deadlines(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake.url(), DEADLINES).await;

    // Slow head: a byte every 200 ms, never finished.
    let mut slow = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let t0 = Instant::now();
    slow.write_all(format!("POST /v21.0/{PHONE_A1}/messages HTTP/1.1\r\nHost: gw\r\n").as_bytes())
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        let mut n = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow.write_all(b"x").await.is_err() {
                break;
            }
            n += 1;
            if n > 40 {
                break;
            }
        }
        slow
    });
    // Idle keep-alive: one answered send, then nothing.
    let mut idle = TcpStream::connect(gw.listen_addr()).await.unwrap();
    idle.write_all(send_req(PHONE_A1, "", TEXT_BODY).as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_answer(&mut idle, &mut buf).await.status, 200);
    let t_idle = Instant::now();

    // Normal sends flow meanwhile.
    for _ in 0..5 {
        assert_eq!(gw.send_str(PHONE_A1, TEXT_BODY).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (got, idle_after) = until_closed(&mut idle, t_idle).await;
    assert!(
        got.is_empty(),
        "{}: idle close says nothing: {got:?}",
        engine.name()
    );
    assert!(
        idle_after >= Duration::from_millis(900) && idle_after < Duration::from_secs(4),
        "{}: idle connection closed after {idle_after:?}",
        engine.name()
    );

    let mut slow = trickle.await.unwrap();
    let (got, head_after) = until_closed(&mut slow, t0).await;
    let head_after = head_after.min(t0.elapsed());
    assert!(
        head_after < Duration::from_secs(5),
        "{}: slow head cut after {head_after:?}",
        engine.name()
    );
    assert!(
        got.starts_with("HTTP/1.1 408 "),
        "{}: a slow head is answered 408: {got:?}",
        engine.name()
    );
    assert!(
        got.contains("x-wa-breaker: client-timeout") && got.contains("\"error_subcode\":408"),
        "{}: {got:?}",
        engine.name()
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "wa_breaker_client_timeouts_total", &[]),
        Some(1.0),
        "{}",
        engine.name()
    );
    assert_eq!(gw.send_str(PHONE_A1, TEXT_BODY).await.status(), 200);
    assert_eq!(
        fake.count(),
        7,
        "only the normal sends reached the upstream"
    );
}

/// A body that stalls mid-way — a send's or a webhook delivery's — is cut at
/// `client_body_timeout` with 408 and the connection closes, on both engines; no complete
/// send reaches the upstream (the relay sends nothing of it; hyper, which streams bodies,
/// has sent a part the upstream never sees finished), and normal sends keep flowing.
async fn a_stalled_body_is_cut_with_408_at_client_body_timeout(engine: Engine) {
    let fake = FakeCloud::start().await;
    let extra = format!("{DEADLINES}\n[webhook]\napp_secret = \"edges-app-secret\"\n");
    let gw = start(engine, &fake.url(), &extra).await;
    let send = send_req(PHONE_A1, "", TEXT_BODY);
    let webhook = "POST /webhook HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nX-Hub-Signature-256: sha256=0000000000000000000000000000000000000000000000000000000000000000\r\nContent-Length: 100\r\n\r\n{\"object\":";
    for (what, partial) in [
        ("send", &send.as_bytes()[..send.len() - 5]),
        ("webhook", webhook.as_bytes()),
    ] {
        let mut s = TcpStream::connect(gw.listen_addr()).await.unwrap();
        let t0 = Instant::now();
        s.write_all(partial).await.unwrap();
        let (got, after) = until_closed(&mut s, t0).await;
        assert!(
            got.starts_with("HTTP/1.1 408 ") && got.contains("x-wa-breaker: client-timeout"),
            "{} {what}: {got:?}",
            engine.name()
        );
        assert!(
            after >= Duration::from_millis(900) && after < Duration::from_secs(3),
            "{} {what}: cut after {after:?}",
            engine.name()
        );
        assert_eq!(gw.send_str(PHONE_A1, TEXT_BODY).await.status(), 200);
    }
    // Only the normal sends arrived whole (hyper may have passed on the stalled send's
    // head and part of its body; the fake records that one with the part it got).
    let whole = fake
        .requests()
        .iter()
        .filter(|r| r.body.as_ref() == TEXT_BODY.as_bytes())
        .count();
    assert_eq!(
        whole,
        2,
        "{}: only the normal sends arrived whole",
        engine.name()
    );
    assert!(fake.count() <= 3, "{}", engine.name());
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "wa_breaker_client_timeouts_total", &[]),
        Some(2.0),
        "{}",
        engine.name()
    );
    assert_eq!(
        metric(
            &m,
            "wa_breaker_requests_total",
            &[("outcome", "upstream_error")]
        ),
        Some(0.0),
        "{}: a slow client is not an upstream failure",
        engine.name()
    );
}

/// A raw send on a fresh connection, answered within `limit` (or `None`).
async fn send_within(gw: &Gateway, limit: Duration) -> Option<u16> {
    let fut = async {
        let mut s = TcpStream::connect(gw.listen_addr()).await.ok()?;
        s.write_all(send_req(PHONE_A1, "", TEXT_BODY).as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        Some(read_answer(&mut s, &mut buf).await.status)
    };
    tokio::time::timeout(limit, fut).await.ok().flatten()
}

fn count_lines(logs: &str, needle: &str) -> usize {
    logs.lines().filter(|l| l.contains(needle)).count()
}

/// With the gateway's `RLIMIT_NOFILE` lowered (prlimit) below a flood of idle connections,
/// accepting fails (EMFILE); the accept loop backs off and logs once per burst, and once
/// the flood ends new clients are served within two seconds.
async fn a_descriptor_flood_ends_and_new_clients_are_served_within_two_seconds(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(
        engine,
        &fake.url(),
        &format!("{DEADLINES}\nmax_connections = 100000\nworkers = 2"),
    )
    .await;
    assert_eq!(send_within(&gw, Duration::from_secs(5)).await, Some(200));
    let pid = gw.pid().unwrap().to_string();
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=128:128"])
        .output()
        .expect("run prlimit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut flood = Vec::new();
    for _ in 0..300 {
        flood.push(TcpStream::connect(gw.listen_addr()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let during = count_lines(&gw.logs(), "accept failed");
    assert!(
        during >= 1,
        "{}: the flood exhausted no descriptor",
        engine.name()
    );
    drop(flood);
    let t0 = Instant::now();
    let status = send_within(&gw, Duration::from_secs(2)).await;
    assert_eq!(
        status,
        Some(200),
        "{}: served {:?} after the flood",
        engine.name(),
        t0.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = gw.logs();
    let lines = count_lines(&logs, "accept failed") + count_lines(&logs, "accepting again");
    assert!(
        lines <= 12,
        "{}: {lines} accept log lines:\n{logs}",
        engine.name()
    );
}

/// At `max_connections` the listener stops accepting (the kernel queues): the admin
/// listener stays reachable, no accept fails, and a queued client is served once idle
/// connections are closed at `client_idle_timeout`.
async fn at_max_connections_new_clients_queue_and_admin_stays_reachable(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(
        engine,
        &fake.url(),
        &format!("{DEADLINES}\nmax_connections = 20"),
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..60 {
        idle.push(TcpStream::connect(gw.listen_addr()).await.unwrap());
    }
    assert_eq!(gw.admin_get("/healthz", None).await.status(), 200);
    assert!(gw.metrics().await.contains("wa_breaker_requests_total"));
    // Queued behind 60 idle connections, 20 at a time, each closed after 1–1.5 s.
    let status = send_within(&gw, Duration::from_secs(8)).await;
    assert_eq!(status, Some(200), "{}", engine.name());
    assert_eq!(count_lines(&gw.logs(), "accept failed"), 0);
    drop(idle);
}

/// A 403 whose body stalls after its head: the error-body read ends at `request_timeout`
/// (504), freeing the upstream permit, so the next send (with `upstream_concurrency = 1`)
/// goes through instead of waiting for the upstream to give up.
async fn a_stalled_error_body_frees_its_permit_at_the_deadline(engine: Engine) {
    let up = RawUpstream::start().await;
    up.push(
        raw("HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{\"error\":")
            .close_after(Duration::from_secs(20)),
    );
    let gw = start(engine, &up.url(), "upstream_concurrency = 1").await;
    let t0 = Instant::now();
    let first = {
        let addr = gw.listen_addr();
        tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(send_req(PHONE_A1, "", TEXT_BODY).as_bytes())
                .await
                .unwrap();
            let mut buf = Vec::new();
            (read_answer(&mut s, &mut buf).await.status, t0.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = send_within(&gw, Duration::from_secs(8)).await;
    let second_at = t0.elapsed();
    let (first_status, first_at) = first.await.unwrap();
    assert_eq!(first_status, 504, "{}", engine.name());
    assert!(
        first_at >= Duration::from_millis(2500) && first_at < Duration::from_secs(5),
        "{}: stalled body failed after {first_at:?}",
        engine.name()
    );
    assert_eq!(second, Some(200), "{}", engine.name());
    assert!(
        second_at < Duration::from_secs(6),
        "{}: {second_at:?}",
        engine.name()
    );
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, or with two, gets 400 and reaches
/// nothing; the gateway keeps serving.
async fn missing_or_duplicate_host_gets_400(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake.url(), "").await;
    let body = TEXT_BODY;
    for hosts in ["", "Host: a\r\nHost: b\r\n"] {
        let req = format!(
            "POST /v21.0/{PHONE_A1}/messages HTTP/1.1\r\n{hosts}Authorization: Bearer {TEST_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let a = raw_request(&gw, &req).await;
        assert_eq!(a.status, 400, "{}: {hosts:?}: {}", engine.name(), a.head);
        assert_eq!(a.header("x-wa-breaker").as_deref(), Some("bad-request"));
    }
    assert_eq!(fake.count(), 0);
    assert_eq!(gw.send_str(PHONE_A1, TEXT_BODY).await.status(), 200);
}

/// A malformed chunked request body is the client's fault: 400, counted in
/// `wa_breaker_client_body_errors_total`, not in `upstream_error`.
async fn a_broken_chunked_request_body_gets_400(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake.url(), "").await;
    let req = format!(
        "POST /v21.0/{PHONE_A1}/messages HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TEST_TOKEN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"a\":\r\nzz\r\n"
    );
    let a = raw_request(&gw, &req).await;
    assert_eq!(a.status, 400, "{}: {}", engine.name(), a.head);
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "wa_breaker_client_body_errors_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "wa_breaker_requests_total",
            &[("outcome", "upstream_error")]
        ),
        Some(0.0)
    );
    assert_eq!(gw.send_str(PHONE_A1, TEXT_BODY).await.status(), 200);
}

/// Issue 25, item 4: the admin listener has the main listener's deadlines and its own
/// connection cap. 300 partial heads on `admin_listen` (cap 64) stop neither sends on the
/// main listener nor `/healthz` once the cap frees; a partial head is closed at the header
/// deadline, without an answer.
async fn partial_heads_on_the_admin_listener_are_cut_and_capped(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(
        engine,
        &fake.url(),
        &format!("{DEADLINES}\nadmin_max_connections = 64"),
    )
    .await;
    let t0 = Instant::now();
    let mut partial = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(gw.admin_addr()).await.unwrap();
        let _ = s
            .write_all(b"GET /admin/circuits HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer x")
            .await;
        partial.push(s);
    }
    // Sends on the main listener are not held up.
    assert_eq!(
        send_within(&gw, Duration::from_secs(2)).await,
        Some(200),
        "{}",
        engine.name()
    );
    // The first partial head is cut at the header deadline (1 s), answered nothing.
    let (got, after) = until_closed(&mut partial[0], t0).await;
    assert!(
        after < Duration::from_secs(4),
        "{}: partial admin head closed after {after:?}",
        engine.name()
    );
    assert!(!got.contains("200 OK"), "{}: {got:?}", engine.name());
    // `/healthz` answers once the cap frees: at most five rounds of 64 heads, cut at 1 s.
    let healthz = tokio::time::timeout(Duration::from_secs(15), gw.admin_get("/healthz", None))
        .await
        .unwrap_or_else(|_| panic!("{}: /healthz did not answer", engine.name()));
    assert_eq!(healthz.status(), 200);
    drop(partial);
}

/// The admin listener speaks HTTP/1 only: an h2c connection (preface, SETTINGS, then
/// nothing) is refused at once rather than held open under the cap — hyper has no HTTP/2
/// idle deadline, and 100 such connections used to keep their places for good.
async fn h2c_on_the_admin_listener_is_refused_at_once(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(
        engine,
        &fake.url(),
        "client_header_timeout = \"30s\"\nclient_idle_timeout = \"30s\"\nadmin_max_connections = 8",
    )
    .await;
    let t0 = Instant::now();
    let mut conns = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(gw.admin_addr()).await.unwrap();
        let mut out = H2_PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        let _ = s.write_all(&out).await;
        conns.push(s);
    }
    // Each is closed long before the 30 s deadlines; the cap of 8 never fills for good.
    for s in conns.iter_mut().take(8) {
        let (_, after) = until_closed(s, t0).await;
        assert!(
            after < Duration::from_secs(5),
            "{}: h2c admin connection closed after {after:?}",
            engine.name()
        );
    }
    let healthz = tokio::time::timeout(Duration::from_secs(5), gw.admin_get("/healthz", None))
        .await
        .unwrap_or_else(|_| panic!("{}: /healthz did not answer", engine.name()));
    assert_eq!(healthz.status(), 200);
}

/// HTTP/2 (prior knowledge) deadlines, issue 25 item 1: one second each.
const H2_DEADLINES: &str = r#"
client_header_timeout = "1s"
client_idle_timeout = "1s"
"#;

/// The HTTP/2 connection preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// Reads until the gateway closes `s` (EOF or reset): what it wrote and when, or None
/// if still open after `limit`.
async fn h2_until_closed(s: &mut TcpStream, limit: Duration) -> Option<(Vec<u8>, Instant)> {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok()?;
    Some((all, Instant::now()))
}

/// An h2c connection that sends the preface and SETTINGS, then nothing, gets GOAWAY and
/// is closed after the deadline (1 s), not left open.
async fn an_idle_h2_connection_is_closed_at_the_deadline(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake.url(), H2_DEADLINES).await;
    let mut s = TcpStream::connect(gw.listen_addr()).await.unwrap();
    s.write_all(H2_PREFACE).await.unwrap();
    let t0 = Instant::now();
    let (got, at) = h2_until_closed(&mut s, Duration::from_secs(6))
        .await
        .unwrap_or_else(|| panic!("{}: idle h2 connection still open after 6 s", engine.name()));
    let after = at - t0;
    assert!(
        after >= Duration::from_millis(800) && after < Duration::from_secs(4),
        "{}: closed after {after:?}",
        engine.name()
    );
    let frames = frames(&got);
    assert!(
        frames.iter().any(|f| f.kind == GOAWAY),
        "{}: {frames:?}",
        engine.name()
    );
}

/// The preface split at every point of its first bytes (the engine peeks at most `PRI `
/// to tell HTTP/2 from HTTP/1), and dripped a byte at a time: each connection is taken for
/// HTTP/2 (the gateway answers with SETTINGS and, idle, GOAWAY), never for HTTP/1.
async fn a_split_or_dripped_h2_preface_is_recognised(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake.url(), H2_DEADLINES).await;
    let mut clients = Vec::new();
    for split in 0..=H2_PREFACE.len() {
        let addr = gw.listen_addr();
        clients.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            if split == H2_PREFACE.len() {
                for b in H2_PREFACE {
                    s.write_all(&[*b]).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            } else {
                s.write_all(&H2_PREFACE[..split]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
                s.write_all(&H2_PREFACE[split..]).await.unwrap();
            }
            (split, h2_until_closed(&mut s, Duration::from_secs(8)).await)
        }));
    }
    for c in clients {
        let (split, closed) = c.await.unwrap();
        let (got, _) = closed
            .unwrap_or_else(|| panic!("{}: split {split}: still open after 8 s", engine.name()));
        let frames = frames(&got);
        assert!(
            frames.first().is_some_and(|f| f.kind == SETTINGS)
                && frames.iter().any(|f| f.kind == GOAWAY),
            "{}: split {split} (dripped when {}): {frames:?} {:?}",
            engine.name(),
            H2_PREFACE.len(),
            String::from_utf8_lossy(&got)
        );
    }
}

/// A HEADERS frame whose block is never finished (no END_HEADERS, no CONTINUATION) is no
/// request: the connection is closed at the deadline all the same.
async fn an_unfinished_h2_headers_block_is_closed_at_the_deadline(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake.url(), H2_DEADLINES).await;
    let mut s = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let mut out = H2_PREFACE.to_vec();
    // `:method GET`, `:scheme http`, and then nothing: END_STREAM without END_HEADERS.
    out.extend(frame(HEADERS, 0x1, 1, &[0x82, 0x86]));
    s.write_all(&out).await.unwrap();
    let t0 = Instant::now();
    let (got, at) = h2_until_closed(&mut s, Duration::from_secs(6))
        .await
        .unwrap_or_else(|| panic!("{}: unfinished HEADERS still open after 6 s", engine.name()));
    assert!(
        at - t0 < Duration::from_secs(4),
        "{}: closed after {:?}",
        engine.name(),
        at - t0
    );
    let frames = frames(&got);
    assert!(
        !frames.iter().any(|f| f.kind == HEADERS),
        "{}: answered {frames:?}",
        engine.name()
    );
}

/// An h2c connection that made one request (answered) and then idles is closed at
/// `client_idle_timeout`.
async fn an_h2_connection_idle_after_a_request_is_closed(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake.url(), H2_DEADLINES).await;
    let mut s = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let path = format!("/v21.0/{PHONE_A1}/whatsapp_business_profile");
    // GET, http, then literal `:path` and `:authority` (no Huffman).
    let mut block = vec![0x82, 0x86, 0x44, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x41, 2]);
    block.extend_from_slice(b"gw");
    let mut out = H2_PREFACE.to_vec();
    out.extend(frame(HEADERS, 0x5, 1, &block));
    s.write_all(&out).await.unwrap();
    let t0 = Instant::now();
    let (got, at) = h2_until_closed(&mut s, Duration::from_secs(8))
        .await
        .unwrap_or_else(|| panic!("{}: h2 connection still open after 8 s", engine.name()));
    let frames = frames(&got);
    assert!(
        frames.iter().any(|f| (f.kind, f.stream) == (HEADERS, 1)),
        "{}: the request was not answered: {frames:?}",
        engine.name()
    );
    assert!(
        frames.iter().any(|f| f.kind == GOAWAY),
        "{}: {frames:?}",
        engine.name()
    );
    assert!(
        at - t0 < Duration::from_secs(5),
        "{}: closed after {:?}",
        engine.name(),
        at - t0
    );
    assert!(
        fake.last().is_some(),
        "{}: the request reached the upstream",
        engine.name()
    );
}

/// SIGTERM with an idle h2c connection open (deadlines far off, a long drain bound): the
/// connection gets GOAWAY at once and the process exits well within `drain_timeout`.
async fn a_drain_closes_idle_h2_connections_at_once(engine: Engine) {
    let fake = FakeCloud::start().await;
    let extra = r#"
client_header_timeout = "60s"
client_idle_timeout = "60s"
drain_timeout = "30s"
"#;
    let gw = start(engine, &fake.url(), extra).await;
    let mut s = TcpStream::connect(gw.listen_addr()).await.unwrap();
    s.write_all(H2_PREFACE).await.unwrap();
    // The connection is served (hyper's SETTINGS came) before the drain starts.
    let mut first = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), async {
        use tokio::io::AsyncReadExt;
        s.read_exact(&mut first).await?;
        let len =
            (usize::from(first[0]) << 16) | (usize::from(first[1]) << 8) | usize::from(first[2]);
        s.read_exact(&mut vec![0u8; len]).await
    })
    .await
    .expect("server SETTINGS in time")
    .expect("server SETTINGS");
    assert_eq!(first[3], 4, "{}: SETTINGS first", engine.name());
    let t0 = Instant::now();
    gw.signal("TERM");
    let status = gw
        .wait_exit(Duration::from_secs(8))
        .await
        .unwrap_or_else(|| {
            panic!(
                "{}: still running 8 s after SIGTERM\n{}",
                engine.name(),
                gw.logs()
            )
        });
    assert!(status.success(), "{status:?}\n{}", gw.logs());
    assert!(t0.elapsed() < Duration::from_secs(8));
    let (got, _) = h2_until_closed(&mut s, Duration::from_secs(2))
        .await
        .expect("closed after exit");
    let frames = frames(&got);
    assert!(
        frames.iter().any(|f| f.kind == GOAWAY),
        "{}: {frames:?}",
        engine.name()
    );
}

both_engines!(
    a_stalled_body_is_cut_with_408_at_client_body_timeout,
    a_broken_chunked_request_body_gets_400,
    missing_or_duplicate_host_gets_400,
    a_stalled_error_body_frees_its_permit_at_the_deadline,
    a_descriptor_flood_ends_and_new_clients_are_served_within_two_seconds,
    at_max_connections_new_clients_queue_and_admin_stays_reachable,
    slow_heads_and_idle_keep_alives_are_cut_at_their_deadlines,
    every_spelling_of_a_send_to_an_open_circuit_is_answered_locally,
    a_drain_answers_in_flight_sends_with_connection_close,
    partial_heads_on_the_admin_listener_are_cut_and_capped,
    h2c_on_the_admin_listener_is_refused_at_once,
    an_idle_h2_connection_is_closed_at_the_deadline,
    a_split_or_dripped_h2_preface_is_recognised,
    an_unfinished_h2_headers_block_is_closed_at_the_deadline,
    an_h2_connection_idle_after_a_request_is_closed,
    a_drain_closes_idle_h2_connections_at_once,
);
