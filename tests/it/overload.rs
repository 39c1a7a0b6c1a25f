//! Issue 25, item 3: permits for requests that are ready, over real sockets on both engines.
//! A client dripping its body holds no permit a send needs; the permit queue has a cap and
//! a deadline (then 503 `overloaded`); a client that goes away gives its permit back.
//!
//! Tests listed in `both_engines!` (at the end) run as `relay::…` (`fast_path = true`) and
//! `hyper::…` (`fast_path = false`).

use std::time::{Duration, Instant};

use crate::support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const WABA_A: &str = "102290129340398";
const PHONE_A1: &str = "106540352242922";

fn config(engine: Engine, extra: &str) -> String {
    let engine_line = engine.config_line();
    format!(
        r#"
{engine_line}
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
state_dir = "{{state_dir}}"
upstream = "{{upstream}}"
request_timeout = "20s"
client_body_timeout = "30s"
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

/// A send on a fresh connection: its status and how long it took, or `None` past `limit`.
async fn timed_send(gw: &Gateway, limit: Duration) -> Option<(Answer, Duration)> {
    let t0 = Instant::now();
    let fut = async {
        let mut s = TcpStream::connect(gw.listen_addr()).await.ok()?;
        s.write_all(send_req(PHONE_A1, "", TEXT_BODY).as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        Some(read_answer(&mut s, &mut buf).await)
    };
    let a = tokio::time::timeout(limit, fut).await.ok().flatten()?;
    Some((a, t0.elapsed()))
}

/// A client that sends a request head declaring `len` body bytes to `path`, then one byte
/// every 200 ms, until dropped.
fn drip(gw: &Gateway, path: String, len: usize) -> tokio::task::JoinHandle<()> {
    let addr = gw.listen_addr();
    tokio::spawn(async move {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            return;
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TEST_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n{{"
        );
        if s.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if s.write_all(b" ").await.is_err() {
                return;
            }
        }
    })
}

/// With `upstream_concurrency = 2`, clients dripping bodies — small ones (read before the
/// permit) to sends and other calls, and 1 MB ones (streamed, on the large-body budget) —
/// do not delay a normal send.
async fn dripping_bodies_do_not_delay_a_normal_send(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake.url(), "upstream_concurrency = 2").await;
    let mut drips = Vec::new();
    for i in 0..3 {
        drips.push(drip(&gw, format!("/v21.0/{PHONE_A1}/messages"), 2000));
        drips.push(drip(&gw, format!("/v21.0/{PHONE_A1}/media?n={i}"), 2000));
        drips.push(drip(
            &gw,
            format!("/v21.0/{PHONE_A1}/media?big={i}"),
            1 << 20,
        ));
    }
    // The drippers are in, each with a head and a byte or two of body.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for _ in 0..3 {
        let (a, took) = timed_send(&gw, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{}: the send did not finish in 10 s", engine.name()));
        assert_eq!(a.status, 200, "{}: {}", engine.name(), a.head);
        assert!(
            took < Duration::from_secs(2),
            "{}: a send behind dripping bodies took {took:?}",
            engine.name()
        );
    }
    for d in drips {
        d.abort();
    }
}

/// The queue for a permit has a cap and a deadline: past the cap a request is answered at
/// once, past the deadline when it is reached — 503 in the Cloud API envelope (`code` 2),
/// `x-wa-breaker: overloaded`, counted as `outcome="overloaded"`; nothing reaches the
/// upstream. The send holding the permit is answered as usual.
async fn past_the_queue_cap_or_deadline_the_answer_is_503_overloaded(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(
        engine,
        &fake.url(),
        "upstream_concurrency = 1\nupstream_queue_max = 1\nupstream_queue_timeout = \"1s\"",
    )
    .await;
    fake.hold();
    let holder = {
        let addr = gw.listen_addr();
        tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(send_req(PHONE_A1, "", TEXT_BODY).as_bytes())
                .await
                .unwrap();
            let mut buf = Vec::new();
            read_answer(&mut s, &mut buf).await.status
        })
    };
    assert!(fake.wait_in_flight(1, Duration::from_secs(5)).await);
    let waiter = {
        let gw_addr = gw.listen_addr();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let mut s = TcpStream::connect(gw_addr).await.unwrap();
            s.write_all(send_req(PHONE_A1, "", TEXT_BODY).as_bytes())
                .await
                .unwrap();
            let mut buf = Vec::new();
            (read_answer(&mut s, &mut buf).await, t0.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The queue holds one: this one is refused at once.
    let (full, took) = timed_send(&gw, Duration::from_secs(5))
        .await
        .expect("answered");
    assert!(took < Duration::from_millis(900), "{took:?}");
    let (late, waited) = waiter.await.unwrap();
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    for a in [full, late] {
        assert_eq!(a.status, 503, "{}: {}", engine.name(), a.head);
        assert_eq!(a.header("x-wa-breaker").as_deref(), Some("overloaded"));
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["error"]["code"], 2, "{v}");
        assert_eq!(v["error"]["error_subcode"], 503, "{v}");
    }
    assert_eq!(
        fake.count(),
        1,
        "nothing but the holder reached the upstream"
    );
    fake.release();
    assert_eq!(holder.await.unwrap(), 200);
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "wa_breaker_requests_total",
            &[("outcome", "overloaded")]
        ),
        Some(2.0)
    );
    assert_eq!(gw.send_str(PHONE_A1, TEXT_BODY).await.status(), 200);
}

/// A client that goes away while the upstream has not answered gives its permit back at
/// once (the relay held it until `request_timeout`): with one permit, the next send is not
/// delayed; the exchange counts `abandoned`.
async fn a_client_that_goes_away_gives_its_permit_back(engine: Engine) {
    let fake = FakeCloud::start().await;
    fake.queue_default(vec![Reply::ok_send().with_delay(Duration::from_secs(15))]);
    let gw = start(engine, &fake.url(), "upstream_concurrency = 1").await;
    let mut s = TcpStream::connect(gw.listen_addr()).await.unwrap();
    s.write_all(send_req(PHONE_A1, "", TEXT_BODY).as_bytes())
        .await
        .unwrap();
    assert!(fake.wait_in_flight(1, Duration::from_secs(5)).await);
    drop(s);
    let (a, took) = timed_send(&gw, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("{}: the next send did not finish", engine.name()));
    assert_eq!(a.status, 200, "{}: {}", engine.name(), a.head);
    assert!(
        took < Duration::from_secs(2),
        "{}: the next send waited {took:?}",
        engine.name()
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "wa_breaker_requests_total", &[("outcome", "abandoned")]),
        Some(1.0),
        "{}",
        engine.name()
    );
}

both_engines!(
    dripping_bodies_do_not_delay_a_normal_send,
    past_the_queue_cap_or_deadline_the_answer_is_503_overloaded,
    a_client_that_goes_away_gives_its_permit_back,
);
