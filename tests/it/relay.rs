//! The byte relay (`src/relay`) and the hyper stack end to end over real sockets: what they
//! send upstream, the answer framings they relay (length, chunked, until-close, answers
//! written in pieces), broken or ambiguous upstream answers, stale pooled connections,
//! pipelining, `Connection: close`, TLS upstreams, and (relay only) handing a connection to
//! hyper mid-way.
//!
//! Tests listed in `both_engines!` (at the end) run as `relay::…` (`fast_path = true`) and
//! `hyper::…` (`fast_path = false`).

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use crate::support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const WABA_A: &str = "102290129340398";
const PHONE_A1: &str = "106540352242922";
const PHONE_A2: &str = "106540352242923";
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
phone_number_ids = ["{PHONE_A1}", "{PHONE_A2}"]
"#
    )
}

async fn start(engine: Engine, upstream: &str, extra: &str) -> Gateway {
    Gateway::builder(&config(engine, extra))
        .var("upstream", upstream)
        .start()
        .await
}

/// The header lines of a raw request or answer (after the start line, before the blank line).
fn header_lines(raw: &str) -> Vec<(String, String)> {
    let head = raw.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_string(), v.trim().to_string()))
        })
        .collect()
}

/// True when `raw` has a header `name: value`: exact bytes (`Name: value\r\n`) on the relay,
/// which keeps header names as sent; name compared case-insensitively on hyper, which
/// writes its own (lowercase) names.
fn has_header(engine: Engine, raw: &str, name: &str, value: &str) -> bool {
    match engine {
        Engine::Relay => raw.contains(&format!("\r\n{name}: {value}\r\n")),
        Engine::Hyper => header_lines(raw)
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case(name) && v == value),
    }
}

/// True when `raw` has a header named `name` (any case).
fn has_header_named(raw: &str, name: &str) -> bool {
    header_lines(raw)
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case(name))
}

/// On the relay the head goes upstream byte for byte (header names keep their case, the
/// order is kept, `host` comes first). hyper writes header names in lowercase in its own
/// order, a real engine difference: there names are compared case-insensitively.
async fn upstream_gets_the_request_with_host_rewritten_and_hop_by_hop_headers_removed(
    engine: Engine,
) {
    let up = RawUpstream::start().await;
    let gw = start(engine, &up.url(), "").await;
    let mut s = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let req = send_req(
        PHONE_A1,
        "Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\nX-Request-ID: Abc-123\r\n",
        TEMPLATE_BODY,
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let a = read_answer(&mut s, &mut buf).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, b"{\"ok\":true}");

    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    let port = up.addr().port();
    let request_line = format!("POST /v21.0/{PHONE_A1}/messages HTTP/1.1\r\n");
    match engine {
        Engine::Relay => assert!(
            r.starts_with(&format!("{request_line}host: 127.0.0.1:{port}\r\n")),
            "{r}"
        ),
        Engine::Hyper => {
            assert!(r.starts_with(&request_line), "{r}");
            assert!(
                has_header(engine, r, "host", &format!("127.0.0.1:{port}")),
                "{r}"
            );
        }
    }
    assert!(
        has_header(engine, r, "X-Request-ID", "Abc-123"),
        "header bytes kept: {r}"
    );
    assert!(
        has_header(engine, r, "Authorization", &format!("Bearer {TEST_TOKEN}")),
        "{r}"
    );
    assert!(!r.contains("gateway.local"), "client host forwarded: {r}");
    for gone in ["Keep-Alive", "Proxy-Authorization", "Connection"] {
        match engine {
            Engine::Relay => assert!(!r.contains(gone), "{gone} forwarded: {r}"),
            Engine::Hyper => assert!(!has_header_named(r, gone), "{gone} forwarded: {r}"),
        }
    }
    assert!(r.ends_with(&format!("\r\n\r\n{TEMPLATE_BODY}")), "{r}");
}

async fn chunked_and_until_close_answers_are_relayed_and_classified(engine: Engine) {
    let up = RawUpstream::start().await;
    let gw = start(engine, &up.url(), "").await;
    let c = client();
    let url = format!("{}/v21.0/{PHONE_A1}/messages", gw.url());

    up.push(raw("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n"));
    let r = c.post(&url).body(TEMPLATE_BODY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "{\"a\":1}");

    up.push(
        RawReply::bytes(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"until\":\"close\"}"
                .to_vec(),
        )
        .then_close(),
    );
    let r = c.post(&url).body(TEMPLATE_BODY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "{\"until\":\"close\"}");

    // A chunked 403/368: relayed unchanged, and it trips the WABA's circuit.
    let body = BLOCKED_368_BODY;
    let (a, b) = body.split_at(40);
    up.push(raw(&format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    )));
    let r = c.post(&url).body(TEMPLATE_BODY).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("x-wa-breaker").is_none());
    assert_eq!(r.text().await.unwrap(), body);

    let before = up.requests().len();
    let r = c
        .post(format!("{}/v21.0/{PHONE_A2}/messages", gw.url()))
        .body(TEMPLATE_BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-wa-breaker"], "open");
    assert_eq!(up.requests().len(), before, "no send reached the upstream");
}

async fn broken_upstream_answers_become_502_and_the_gateway_keeps_serving(engine: Engine) {
    let up = RawUpstream::start().await;
    let gw = start(engine, &up.url(), "").await;
    let c = client();
    let url = format!("{}/v21.0/{PHONE_A1}/messages", gw.url());
    for bad in [
        "NOT HTTP AT ALL\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx",
        "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
    ] {
        up.push(raw(bad).then_close());
        let r = c.post(&url).body(TEMPLATE_BODY).send().await.unwrap();
        assert_eq!(r.status(), 502, "{bad:?}");
        assert_eq!(r.headers()["x-wa-breaker"], "upstream-error");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "WaBreakerException");
    }
    // Closed without a byte.
    up.push(RawReply::bytes(Vec::new()).then_close());
    let r = c.post(&url).body(TEMPLATE_BODY).send().await.unwrap();
    assert_eq!(r.status(), 502);

    let r = c.post(&url).body(TEMPLATE_BODY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(gw.logs().contains("upstream request failed"));
    let (_, circuit) = gw.circuit(ADMIN, WABA_A).await;
    assert_ne!(circuit["state"], "open", "broken answers never trip");
}

async fn a_pooled_connection_the_upstream_closed_is_not_reused(engine: Engine) {
    let up = RawUpstream::start().await;
    let gw = start(engine, &up.url(), "").await;
    let c = client();
    let url = format!("{}/v21.0/{PHONE_A1}/messages", gw.url());
    for _ in 0..3 {
        // Answers keep-alive, then closes while the gateway holds it idle.
        up.push(raw(OK_RAW).close_after(Duration::from_millis(20)));
        let r = c.post(&url).body(TEMPLATE_BODY).send().await.unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(up.connection_count(), 3);
    assert_eq!(up.requests().len(), 3);
}

async fn pipelined_requests_are_answered_in_order_on_one_upstream_connection(engine: Engine) {
    let fake = FakeCloud::start().await;
    fake.on_phone(PHONE_A2, Reply::graph_error(400, 100, "Invalid parameter"));
    let gw = start(engine, &fake.url(), "").await;
    let mut s = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let both = format!(
        "{}{}",
        send_req(PHONE_A1, "", TEMPLATE_BODY),
        send_req(PHONE_A2, "", TEXT_BODY)
    );
    s.write_all(both.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let first = read_answer(&mut s, &mut buf).await;
    let second = read_answer(&mut s, &mut buf).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, OK_SEND_BODY.as_bytes());
    assert_eq!(second.status, 400);
    assert_eq!(fake.count(), 2);
    assert_eq!(fake.connection_count(), 1);
    let sends = fake.requests();
    assert_eq!(sends[0].body_str(), TEMPLATE_BODY);
    assert_eq!(sends[1].body_str(), TEXT_BODY);
}

/// Relay only by nature: with `fast_path = false` there is no relay to hand over from.
#[tokio::test]
async fn a_connection_is_handed_to_hyper_mid_way_and_keeps_working() {
    let fake = FakeCloud::start().await;
    let gw = start(Engine::Relay, &fake.url(), "").await;
    let mut s = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let mut buf = Vec::new();

    // Relayed.
    s.write_all(send_req(PHONE_A1, "", TEMPLATE_BODY).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_answer(&mut s, &mut buf).await.status, 200);

    // Chunked request body: the relay hands the connection (and the bytes it read) to hyper.
    let (a, b) = TEXT_BODY.split_at(10);
    let chunked = format!(
        "POST /v21.0/{PHONE_A1}/messages HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {TEST_TOKEN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    s.write_all(chunked.as_bytes()).await.unwrap();
    let a2 = read_answer(&mut s, &mut buf).await;
    assert_eq!(a2.status, 200);
    assert_eq!(a2.body, OK_SEND_BODY.as_bytes());

    // Still the same connection, now served by hyper.
    s.write_all(send_req(PHONE_A1, "", TEMPLATE_BODY).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_answer(&mut s, &mut buf).await.status, 200);

    let sends = fake.requests();
    assert_eq!(sends.len(), 3);
    assert_eq!(sends[0].body_str(), TEMPLATE_BODY);
    assert_eq!(sends[1].body_str(), TEXT_BODY, "chunked body reassembled");
    assert_eq!(sends[2].body_str(), TEMPLATE_BODY);

    // A body larger than the relay buffers goes through hyper too, intact.
    let big = format!(
        r#"{{"messaging_product":"whatsapp","type":"text","text":{{"body":"{}"}}}}"#,
        "x".repeat(200 * 1024)
    );
    let r = gw.send_str(PHONE_A1, &big).await;
    assert_eq!(r.status(), 200);
    assert_eq!(fake.last().unwrap().body_str(), big);
}

async fn connection_close_from_the_client_is_honoured(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake.url(), "").await;

    // One request with `Connection: close`: the answer says so and the socket closes.
    let closing_send = || async {
        let mut s = TcpStream::connect(gw.listen_addr()).await.unwrap();
        s.write_all(send_req(PHONE_A1, "Connection: close\r\n", TEMPLATE_BODY).as_bytes())
            .await
            .unwrap();
        let a = read_answer(&mut s, &mut Vec::new()).await;
        assert_eq!(a.header("connection").as_deref(), Some("close"));
        assert!(closed(&mut s).await, "gateway closes after the answer");
        a
    };
    assert_eq!(closing_send().await.status, 200);

    // Same for a local answer.
    let r = gw
        .admin_post(
            &format!("/admin/circuits/{WABA_A}/open"),
            Some(ADMIN),
            Some(&serde_json::json!({"reason": "test"})),
        )
        .await;
    assert!(r.status().is_success());
    let a = closing_send().await;
    assert_eq!(a.status, 403);
    assert_eq!(a.header("x-wa-breaker").as_deref(), Some("open"));
    assert!(a.header("date").is_some());
}

/// `upstream_http2 = false`: to an upstream that prefers `h2`, both engines offer only
/// `http/1.1` and are served over it; with the default they pick `h2`, which this
/// HTTP/1.1-only fake cannot speak (so the switch is what made the difference).
async fn upstream_http2_off_speaks_http1_to_an_upstream_that_prefers_h2(engine: Engine) {
    let up = RawUpstream::start_tls_alpn(&[b"h2", b"http/1.1"]).await;
    let url = format!("https://localhost:{}", up.addr().port());
    let ca = fixture("ca.pem");
    let gw = start(
        engine,
        &url,
        &format!("upstream_ca_file = \"{ca}\"\nupstream_http2 = false"),
    )
    .await;
    for _ in 0..3 {
        let r = gw.send_str(PHONE_A1, TEMPLATE_BODY).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "{\"ok\":true}");
    }
    assert_eq!(up.requests().len(), 3);

    let gw2 = start(engine, &url, &format!("upstream_ca_file = \"{ca}\"")).await;
    let r = gw2.send_str(PHONE_A1, TEMPLATE_BODY).await;
    assert_eq!(
        r.status(),
        502,
        "h2 was negotiated with an HTTP/1.1-only server"
    );
    let seen = up.requests();
    assert!(
        seen[3].starts_with("PRI * HTTP/2.0") && seen[3..].iter().all(|r| !r.starts_with("POST")),
        "only the HTTP/2 preface after the switch: {seen:?}"
    );
}

async fn an_https_upstream_is_relayed_over_tls_trusting_upstream_ca_file(engine: Engine) {
    let up = RawUpstream::start_tls().await;
    let port = up.addr().port();
    let url = format!("https://localhost:{port}");
    let ca = fixture("ca.pem");
    let gw = start(engine, &url, &format!("upstream_ca_file = \"{ca}\"")).await;

    let r = gw.send_str(PHONE_A1, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "{\"ok\":true}");
    // The connection that learnt the upstream speaks HTTP/1.1 carried the send.
    assert_eq!(up.connection_count(), 1, "{}", engine.name());
    let seen = up.requests();
    assert!(
        has_header(engine, &seen[0], "host", &format!("localhost:{port}")),
        "{}",
        seen[0]
    );

    // A body too large for the relay is served by hyper's client, over the same trust.
    let big = format!(
        r#"{{"messaging_product":"whatsapp","type":"text","text":{{"body":"{}"}}}}"#,
        "y".repeat(70 * 1024)
    );
    let r = gw.send_str(PHONE_A1, &big).await;
    assert_eq!(r.status(), 200);
    assert!(up.requests()[1].ends_with(&big));

    // A 368 over TLS trips the circuit like any other.
    up.push(raw(&format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BLOCKED_368_BODY}",
        BLOCKED_368_BODY.len()
    )));
    assert_eq!(gw.send_str(PHONE_A1, TEMPLATE_BODY).await.status(), 403);
    let r = gw.send_str(PHONE_A2, TEMPLATE_BODY).await;
    assert_eq!(r.headers()["x-wa-breaker"], "open");
    assert_eq!(up.requests().len(), 3);

    // Without the CA the upstream's certificate is refused: 502, nothing delivered.
    let gw2 = start(engine, &url, "").await;
    let r = gw2.send_str(PHONE_A1, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-wa-breaker"], "upstream-error");
    assert_eq!(up.requests().len(), 3);
    assert!(gw2.logs().contains("upstream request failed"));
}

/// 20 sends at once to an `https` upstream that selects HTTP/1.1 (each answer written a
/// byte at a time: ~80 ms): learning the protocol from one connection does not make the
/// others wait for each other — an HTTP/1.1 pool opens a connection per send in flight —
/// and every send is answered.
async fn sends_in_flight_to_an_http1_tls_upstream_each_get_a_connection(engine: Engine) {
    let up = RawUpstream::start_tls().await;
    up.respond_with(|_| Some(raw(OK_RAW).writes(Writes::ByteAtATime)));
    let url = format!("https://localhost:{}", up.addr().port());
    let ca = fixture("ca.pem");
    let extra = format!("upstream_ca_file = \"{ca}\"\n\n[shaping]\nthroughput = 10000\n");
    let gw = start(engine, &url, &extra).await;
    let sends = (0..20).map(|_| gw.send_str(PHONE_A1, TEMPLATE_BODY));
    for r in futures_util::future::join_all(sends).await {
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "{\"ok\":true}");
    }
    assert_eq!(up.requests().len(), 20);
    assert!(
        up.connection_count() >= 10,
        "{}: {} connections for 20 sends in flight",
        engine.name(),
        up.connection_count()
    );
}

/// Headers an answer's `Connection` names are hop-by-hop (RFC 9110 §7.6.1): dropped, like
/// `Connection` itself; the others reach the client.
async fn headers_named_by_connection_in_answers_are_dropped(engine: Engine) {
    let up = RawUpstream::start().await;
    let gw = start(engine, &up.url(), "").await;
    let c = client();
    let url = format!("{}/v21.0/{PHONE_A1}/messages", gw.url());
    let err = r#"{"error":{"message":"Invalid parameter","type":"OAuthException","code":100,"fbtrace_id":"AbCdEfGhIjK"}}"#;
    let cases = [
        (200, "Connection: x-foo\r\n".to_string(), "{\"ok\":true}"),
        (400, "Connection: keep-alive, X-Foo\r\n".to_string(), err),
    ];
    for (status, connection, body) in cases {
        up.push(raw(&format!(
            "HTTP/1.1 {status} Whatever\r\ncontent-type: application/json\r\n{connection}X-Foo: bar\r\nX-Keep: 1\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )));
        let r = c.post(&url).body(TEMPLATE_BODY).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status);
        assert!(
            r.headers().get("x-foo").is_none(),
            "{status} with {connection:?}: the header Connection names reached the client: {:?}",
            r.headers()
        );
        assert!(r.headers().get("connection").is_none_or(|v| v != "x-foo"));
        assert_eq!(
            r.headers().get("x-keep").map(|v| v.to_str().unwrap()),
            Some("1"),
            "{:?}",
            r.headers()
        );
        assert_eq!(r.text().await.unwrap(), body);
    }
}

// ---------------------------------------------------------------------------
// Answers written in pieces
// ---------------------------------------------------------------------------

/// One answer of `split_answers_reach_the_client_intact`.
struct SplitCase {
    name: &'static str,
    answer: String,
    status: u16,
    body: &'static str,
    /// A 403/368: every send answered with it trips its WABA's circuit.
    trips: bool,
}

fn split_cases() -> Vec<SplitCase> {
    let (a, b) = BLOCKED_368_BODY.split_at(40);
    vec![
        SplitCase {
            name: "chunked 200",
            answer: "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5;x=1\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n".into(),
            status: 200,
            body: "{\"a\":1}",
            trips: false,
        },
        SplitCase {
            name: "content-length 200",
            answer: "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}".into(),
            status: 200,
            body: "{\"a\":1}",
            trips: false,
        },
        SplitCase {
            name: "chunked 403/368",
            answer: format!(
                "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x};x=1\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                a.len(),
                b.len()
            ),
            status: 403,
            body: BLOCKED_368_BODY,
            trips: true,
        },
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// reqwest: compares status, content type and the decoded body.
    Reqwest,
    /// A raw TCP client sending `Connection: close`: compares every byte (relay only; hyper
    /// writes its own head and chunking).
    RawTcp,
}

struct SplitItem {
    case: usize,
    writes: Writes,
    via: Via,
    /// For a tripping case: the index of the fresh WABA (and its one phone) it uses.
    account: Option<usize>,
}

fn split_waba(i: usize) -> String {
    format!("2{i:014}")
}

fn split_phone(i: usize) -> String {
    format!("3{i:014}")
}

/// What the relay must write for `answer` to a client that sent `Connection: close`: the
/// upstream's bytes, with `connection: close` added at the end of the head.
fn relayed_with_close(answer: &str) -> String {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    format!("{head}\r\nconnection: close\r\n\r\n{body}")
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

async fn split_item(
    gw: &Gateway,
    c: &reqwest::Client,
    case: &SplitCase,
    item: &SplitItem,
) -> Result<(), String> {
    const LIMIT: Duration = Duration::from_secs(3);
    let tag = match item.writes {
        Writes::SplitAt(k) => format!("{}:{k}", item.case),
        _ => format!("{}:bytes", item.case),
    };
    let phone = item
        .account
        .map(split_phone)
        .unwrap_or_else(|| PHONE_A1.to_string());
    match item.via {
        Via::Reqwest => {
            let r = c
                .post(format!("{}/v21.0/{phone}/messages", gw.url()))
                .header("authorization", format!("Bearer {TEST_TOKEN}"))
                .header("content-type", "application/json")
                .header("x-split", &tag)
                .body(TEXT_BODY)
                .timeout(LIMIT)
                .send()
                .await
                .map_err(|e| error_chain(&e))?;
            if r.status().as_u16() != case.status {
                return Err(format!("status {} {:?}", r.status(), r.headers()));
            }
            if r.headers()
                .get("content-type")
                .is_none_or(|v| v != "application/json")
            {
                return Err(format!("content-type lost: {:?}", r.headers()));
            }
            let text = r.text().await.map_err(|e| error_chain(&e))?;
            if text != case.body {
                return Err(format!("body {text:?}"));
            }
        }
        Via::RawTcp => {
            let mut s = TcpStream::connect(gw.listen_addr())
                .await
                .map_err(|e| e.to_string())?;
            let req = send_req(
                &phone,
                &format!("Connection: close\r\nX-Split: {tag}\r\n"),
                TEXT_BODY,
            );
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let got = read_to_close(&mut s, LIMIT).await?;
            let want = relayed_with_close(&case.answer);
            if got != want.as_bytes() {
                return Err(format!(
                    "raw answer {:?}, want {want:?}",
                    String::from_utf8_lossy(&got)
                ));
            }
        }
    }
    Ok(())
}

/// Adversarial framing: the upstream writes each answer in two writes with a pause between
/// (flushed, `TCP_NODELAY`), at every split point of the answer's bytes, and once one byte
/// at a time, for a chunked 200 (with a chunk extension), the same framed by
/// `content-length`, and a chunked 403/368 (which must trip: a fresh WABA per request). The
/// client must get exactly the answer. Requests run in a few lanes at once to keep the
/// runtime down; the upstream picks the answer and split point from an `x-split` header.
async fn split_answers_reach_the_client_intact(engine: Engine) {
    const LANES: usize = 6;
    const MAX_FAILURES: usize = 40;
    let started = std::time::Instant::now();
    let cases = std::sync::Arc::new(split_cases());
    let vias: &[Via] = match engine {
        Engine::Relay => &[Via::Reqwest, Via::RawTcp],
        Engine::Hyper => &[Via::Reqwest],
    };
    let mut items = Vec::new();
    let mut accounts = 0;
    for (i, case) in cases.iter().enumerate() {
        let writes = (1..case.answer.len())
            .map(Writes::SplitAt)
            .chain([Writes::ByteAtATime]);
        for w in writes {
            for &via in vias {
                let account = case.trips.then(|| {
                    accounts += 1;
                    accounts - 1
                });
                items.push(SplitItem {
                    case: i,
                    writes: w,
                    via,
                    account,
                });
            }
        }
    }

    let up = RawUpstream::start().await;
    let answers = cases.clone();
    up.respond_with(move |req| {
        let req = String::from_utf8_lossy(req);
        let tag = req.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-split")
                .then(|| v.trim().to_string())
        })?;
        let (case, at) = tag.split_once(':')?;
        let case = &answers[case.parse::<usize>().ok()?];
        let writes = match at {
            "bytes" => Writes::ByteAtATime,
            k => Writes::SplitAt(k.parse().ok()?),
        };
        Some(RawReply::bytes(case.answer.as_bytes()).writes(writes))
    });
    let mut cfg = config(engine, "");
    for i in 0..accounts {
        cfg.push_str(&format!(
            "\n[[accounts]]\nwaba_id = \"{}\"\nphone_number_ids = [\"{}\"]\n",
            split_waba(i),
            split_phone(i)
        ));
    }
    let gw = Gateway::builder(&cfg)
        .var("upstream", &up.url())
        .start()
        .await;

    let failures = Mutex::new(Vec::<(usize, Via, Writes, String)>::new());
    let done = std::sync::atomic::AtomicUsize::new(0);
    let lane = |n: usize| {
        let (gw, cases, items, failures, done) = (&gw, &cases, &items, &failures, &done);
        async move {
            let c = client();
            for item in items.iter().skip(n).step_by(LANES) {
                if failures.lock().unwrap().len() >= MAX_FAILURES {
                    return;
                }
                let case = &cases[item.case];
                if let Err(e) = split_item(gw, &c, case, item).await {
                    let f = (item.case, item.via, item.writes, e);
                    failures.lock().unwrap().push(f);
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    };
    futures_util::future::join_all((0..LANES).map(lane)).await;
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|f| {
        let at = match f.2 {
            Writes::SplitAt(k) => k,
            _ => usize::MAX,
        };
        (f.0, f.1 == Via::RawTcp, at)
    });
    let done = done.into_inner();

    // One line per answer and client: where the splits that broke it were.
    let mut summary = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        for &via in vias {
            let broken: Vec<String> = failures
                .iter()
                .filter(|f| f.0 == i && f.1 == via)
                .map(|f| match f.2 {
                    Writes::SplitAt(k) => format!("{k}"),
                    _ => "one byte at a time".to_string(),
                })
                .collect();
            if !broken.is_empty() {
                summary.push(format!(
                    "{} ({} bytes) via {via:?}: broken when split at {}",
                    case.name,
                    case.answer.len(),
                    broken.join(", ")
                ));
            }
        }
    }
    // Every 368 answered (whatever its split) tripped its WABA.
    let list: serde_json::Value = gw
        .admin_get("/admin/circuits", Some(ADMIN))
        .await
        .json()
        .await
        .unwrap();
    let open: BTreeSet<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == "open")
        .map(|c| c["waba_id"].as_str().unwrap().to_string())
        .collect();
    let not_tripped: Vec<String> = items
        .iter()
        .filter(|it| it.account.is_some_and(|i| !open.contains(&split_waba(i))))
        .map(|it| format!("{:?} via {:?}", it.writes, it.via))
        .collect();
    if !not_tripped.is_empty() && done == items.len() {
        summary.push(format!(
            "chunked 403/368: {} of {accounts} sends did not trip their WABA: {}",
            not_tripped.len(),
            not_tripped.join(", ")
        ));
    }
    let examples: Vec<String> = failures
        .iter()
        .take(6)
        .map(|(i, via, w, e)| format!("  {} written {w:?}, via {via:?}: {e}", cases[*i].name))
        .collect();
    assert!(
        summary.is_empty(),
        "{engine:?}: {} of {done} split answers broken ({} planned, {:?}){}:\n{}\nfirst errors:\n{}",
        failures.len(),
        items.len(),
        started.elapsed(),
        if done < items.len() { ", stopped early" } else { "" },
        summary.join("\n"),
        examples.join("\n")
    );
    assert_eq!(up.requests().len(), items.len());
}

/// An answer whose framing is ambiguous (`content-length` and `transfer-encoding` both, RFC
/// 9112 §6.3: a request-smuggling vector) and a `101 Switching Protocols` to a request that
/// asked for no upgrade are broken answers: 502 `x-wa-breaker: upstream-error` on both
/// engines, nothing trips, and the gateway keeps serving.
async fn ambiguous_framing_and_an_unasked_101_become_502(engine: Engine) {
    let up = RawUpstream::start().await;
    let gw = start(engine, &up.url(), "").await;
    let c = client();
    let url = format!("{}/v21.0/{PHONE_A1}/messages", gw.url());
    // Each answer says `connection: close` (it is closed right after): otherwise the hyper
    // engine could take the next request to a pooled connection the upstream is closing at
    // that instant (a race any keep-alive client has; the relay's pre-reuse peek narrows it).
    let cases = [
        (
            "200 with content-length and chunked",
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n7\r\n{\"a\":1}\r\n0\r\n\r\n".to_string(),
        ),
        (
            "403/368 with content-length and chunked",
            format!(
                "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{BLOCKED_368_BODY}\r\n0\r\n\r\n",
                BLOCKED_368_BODY.len(),
                BLOCKED_368_BODY.len()
            ),
        ),
        (
            "101 to a plain POST",
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
                .to_string(),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, bad) in &cases {
        up.push(raw(bad).then_close());
        let r = match c.post(&url).body(TEMPLATE_BODY).send().await {
            Ok(r) => r,
            Err(e) => {
                wrong.push(format!("{what}: client error {}", error_chain(&e)));
                continue;
            }
        };
        let status = r.status().as_u16();
        let marker = r
            .headers()
            .get("x-wa-breaker")
            .map(|v| v.to_str().unwrap().to_string());
        let body = r.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        let typ = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["type"].as_str().map(str::to_string));
        if status != 502
            || marker.as_deref() != Some("upstream-error")
            || typ.as_deref() != Some("WaBreakerException")
        {
            wrong.push(format!(
                "{what}: {status}, x-wa-breaker {marker:?}, body {:?}",
                String::from_utf8_lossy(&body)
            ));
        }
        let (_, circuit) = gw.circuit(ADMIN, WABA_A).await;
        if circuit["state"] == "open" {
            wrong.push(format!("{what}: tripped the circuit"));
            let close = format!("/admin/circuits/{WABA_A}/close");
            assert!(gw
                .admin_post(&close, Some(ADMIN), None)
                .await
                .status()
                .is_success());
        }
    }
    let r = c.post(&url).body(TEMPLATE_BODY).send().await.unwrap();
    assert_eq!(r.status(), 200, "the gateway keeps serving");
    assert!(wrong.is_empty(), "{engine:?}:\n{}", wrong.join("\n"));
}

both_engines!(
    upstream_gets_the_request_with_host_rewritten_and_hop_by_hop_headers_removed,
    chunked_and_until_close_answers_are_relayed_and_classified,
    broken_upstream_answers_become_502_and_the_gateway_keeps_serving,
    a_pooled_connection_the_upstream_closed_is_not_reused,
    pipelined_requests_are_answered_in_order_on_one_upstream_connection,
    connection_close_from_the_client_is_honoured,
    an_https_upstream_is_relayed_over_tls_trusting_upstream_ca_file,
    sends_in_flight_to_an_http1_tls_upstream_each_get_a_connection,
    upstream_http2_off_speaks_http1_to_an_upstream_that_prefers_h2,
    headers_named_by_connection_in_answers_are_dropped,
    split_answers_reach_the_client_intact,
    ambiguous_framing_and_an_unasked_101_become_502,
);
