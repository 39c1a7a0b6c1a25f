//! The byte relay (`src/relay`) and the hyper stack end to end over real sockets: what they
//! send upstream, the answer framings they relay (length, chunked, until-close, answers
//! written in pieces), broken or ambiguous upstream answers, stale pooled connections,
//! pipelining, `Connection: close`, TLS upstreams, and (relay only) handing a connection to
//! hyper mid-way.
//!
//! Tests listed in `both_engines!` (at the end) run as `relay::…` (`fast_path = true`) and
//! `hyper::…` (`fast_path = false`).

mod support;

use std::time::Duration;

use support::*;
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

async fn an_https_upstream_is_relayed_over_tls_trusting_upstream_ca_file(engine: Engine) {
    let up = RawUpstream::start_tls().await;
    let port = up.addr().port();
    let url = format!("https://localhost:{port}");
    let ca = fixture("ca.pem");
    let gw = start(engine, &url, &format!("upstream_ca_file = \"{ca}\"")).await;

    let r = gw.send_str(PHONE_A1, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "{\"ok\":true}");
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

both_engines!(
    upstream_gets_the_request_with_host_rewritten_and_hop_by_hop_headers_removed,
    chunked_and_until_close_answers_are_relayed_and_classified,
    broken_upstream_answers_become_502_and_the_gateway_keeps_serving,
    a_pooled_connection_the_upstream_closed_is_not_reused,
    pipelined_requests_are_answered_in_order_on_one_upstream_connection,
    connection_close_from_the_client_is_honoured,
    an_https_upstream_is_relayed_over_tls_trusting_upstream_ca_file,
);
