//! The fast path (`src/relay`) end to end over real sockets: what it sends upstream, the
//! answer framings it relays (length, chunked, until-close), broken upstream answers,
//! stale pooled connections, pipelining, handing a connection to hyper mid-way, and the
//! same behaviour with `fast_path = false`.

mod support;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WABA_A: &str = "102290129340398";
const PHONE_A1: &str = "106540352242922";
const PHONE_A2: &str = "106540352242923";
const ADMIN: &str = "test-admin-token-0123456789";

fn config(extra: &str) -> String {
    format!(
        r#"
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

async fn start(upstream: &str, extra: &str) -> Gateway {
    Gateway::builder(&config(extra))
        .var("upstream", upstream)
        .start()
        .await
}

// ---------------------------------------------------------------------------
// A raw upstream: answers each request with scripted bytes, records raw requests.
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct RawReply {
    bytes: Vec<u8>,
    /// Close the connection this long after answering (`Some(ZERO)`: at once).
    close_after: Option<Duration>,
}

fn raw(bytes: &str) -> RawReply {
    RawReply {
        bytes: bytes.as_bytes().to_vec(),
        close_after: None,
    }
}

#[derive(Clone, Default)]
struct RawUpstream {
    addr: Option<SocketAddr>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    replies: Arc<Mutex<VecDeque<RawReply>>>,
    connections: Arc<AtomicUsize>,
}

const OK_RAW: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Serves TLS with the test CA's certificate for 127.0.0.1 and localhost.
fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{crypto::ring, ServerConfig};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(fixture("upstream.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture("upstream.key")).unwrap();
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        Self::start_with(None).await
    }

    async fn start_tls() -> RawUpstream {
        Self::start_with(Some(tls_acceptor())).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> RawUpstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = RawUpstream {
            addr: Some(l.local_addr().unwrap()),
            ..Default::default()
        };
        let me = up.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                me.connections.fetch_add(1, Ordering::SeqCst);
                let me = me.clone();
                match tls.clone() {
                    None => drop(tokio::spawn(me.serve(s))),
                    Some(acceptor) => drop(tokio::spawn(async move {
                        // A failed handshake (an untrusting client) just ends the connection.
                        if let Ok(s) = acceptor.accept(s).await {
                            me.serve(s).await;
                        }
                    })),
                }
            }
        });
        up
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr.unwrap())
    }

    fn push(&self, r: RawReply) {
        self.replies.lock().unwrap().push_back(r);
    }

    fn requests(&self) -> Vec<String> {
        let reqs = self.requests.lock().unwrap();
        reqs.iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }

    async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(self, mut s: S) {
        let mut buf = Vec::new();
        loop {
            // One request: head, then content-length bytes.
            let (head_end, len) = loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                    break (end + 4, len);
                }
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            while buf.len() < head_end + len {
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let req: Vec<u8> = buf.drain(..head_end + len).collect();
            self.requests.lock().unwrap().push(req);
            let reply = self
                .replies
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(raw(OK_RAW));
            if s.write_all(&reply.bytes).await.is_err() {
                return;
            }
            if let Some(d) = reply.close_after {
                tokio::time::sleep(d).await;
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// A raw client: writes bytes, reads `content-length`-framed answers.
// ---------------------------------------------------------------------------

struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> Answer {
    let fut = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let status: u16 = head[9..12].parse().unwrap();
                let a = Answer {
                    status,
                    head,
                    body: Vec::new(),
                };
                let len: usize = a
                    .header("content-length")
                    .expect("relay answers here are content-length framed")
                    .parse()
                    .unwrap();
                while buf.len() < end + 4 + len {
                    let mut chunk = [0u8; 4096];
                    let n = s.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "gateway closed mid-answer");
                    buf.extend_from_slice(&chunk[..n]);
                }
                let all: Vec<u8> = buf.drain(..end + 4 + len).collect();
                return Answer {
                    body: all[end + 4..].to_vec(),
                    ..a
                };
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "gateway closed before answering: {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("answer in time")
}

fn send_req(phone: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "POST /v21.0/{phone}/messages HTTP/1.1\r\nHost: gateway.local\r\nAuthorization: Bearer {TEST_TOKEN}\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn upstream_gets_the_request_with_host_rewritten_and_hop_by_hop_headers_removed() {
    let up = RawUpstream::start().await;
    let gw = start(&up.url(), "").await;
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
    let port = up.addr.unwrap().port();
    assert!(
        r.starts_with(&format!(
            "POST /v21.0/{PHONE_A1}/messages HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        )),
        "{r}"
    );
    assert!(
        r.contains("X-Request-ID: Abc-123\r\n"),
        "header bytes kept: {r}"
    );
    assert!(r.contains(&format!("Authorization: Bearer {TEST_TOKEN}\r\n")));
    for gone in [
        "gateway.local",
        "Keep-Alive",
        "Proxy-Authorization",
        "Connection",
    ] {
        assert!(!r.contains(gone), "{gone} forwarded: {r}");
    }
    assert!(r.ends_with(&format!("\r\n\r\n{TEMPLATE_BODY}")), "{r}");
}

#[tokio::test]
async fn chunked_and_until_close_answers_are_relayed_and_classified() {
    let up = RawUpstream::start().await;
    let gw = start(&up.url(), "").await;
    let c = client();
    let url = format!("{}/v21.0/{PHONE_A1}/messages", gw.url());

    up.push(raw("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n"));
    let r = c.post(&url).body(TEMPLATE_BODY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "{\"a\":1}");

    up.push(RawReply {
        bytes: b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"until\":\"close\"}"
            .to_vec(),
        close_after: Some(Duration::ZERO),
    });
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

#[tokio::test]
async fn broken_upstream_answers_become_502_and_the_gateway_keeps_serving() {
    let up = RawUpstream::start().await;
    let gw = start(&up.url(), "").await;
    let c = client();
    let url = format!("{}/v21.0/{PHONE_A1}/messages", gw.url());
    for bad in [
        "NOT HTTP AT ALL\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx",
        "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
    ] {
        up.push(RawReply {
            bytes: bad.as_bytes().to_vec(),
            close_after: Some(Duration::ZERO),
        });
        let r = c.post(&url).body(TEMPLATE_BODY).send().await.unwrap();
        assert_eq!(r.status(), 502, "{bad:?}");
        assert_eq!(r.headers()["x-wa-breaker"], "upstream-error");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "WaBreakerException");
    }
    // Closed without a byte.
    up.push(RawReply {
        bytes: Vec::new(),
        close_after: Some(Duration::ZERO),
    });
    let r = c.post(&url).body(TEMPLATE_BODY).send().await.unwrap();
    assert_eq!(r.status(), 502);

    let r = c.post(&url).body(TEMPLATE_BODY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(gw.logs().contains("upstream request failed"));
    let (_, circuit) = gw.circuit(ADMIN, WABA_A).await;
    assert_ne!(circuit["state"], "open", "broken answers never trip");
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_not_reused() {
    let up = RawUpstream::start().await;
    let gw = start(&up.url(), "").await;
    let c = client();
    let url = format!("{}/v21.0/{PHONE_A1}/messages", gw.url());
    for _ in 0..3 {
        // Answers keep-alive, then closes while the gateway holds it idle.
        up.push(RawReply {
            bytes: OK_RAW.as_bytes().to_vec(),
            close_after: Some(Duration::from_millis(20)),
        });
        let r = c.post(&url).body(TEMPLATE_BODY).send().await.unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 3);
    assert_eq!(up.requests().len(), 3);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_upstream_connection() {
    let fake = FakeCloud::start().await;
    fake.on_phone(PHONE_A2, Reply::graph_error(400, 100, "Invalid parameter"));
    let gw = start(&fake.url(), "").await;
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

#[tokio::test]
async fn a_connection_is_handed_to_hyper_mid_way_and_keeps_working() {
    let fake = FakeCloud::start().await;
    let gw = start(&fake.url(), "").await;
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

#[tokio::test]
async fn connection_close_from_the_client_is_honoured() {
    let fake = FakeCloud::start().await;
    let gw = start(&fake.url(), "").await;

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

#[tokio::test]
async fn fast_path_off_proxies_trips_and_answers_locally_through_hyper() {
    let fake = FakeCloud::start().await;
    fake.queue_phone(PHONE_A1, vec![Reply::blocked_368()]);
    let gw = start(&fake.url(), "fast_path = false").await;

    let r = gw.send_str(PHONE_A2, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), OK_SEND_BODY.as_bytes());

    let r = gw.send_str(PHONE_A1, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("x-wa-breaker").is_none());

    let r = gw.send_str(PHONE_A2, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-wa-breaker"], "open");
    assert_eq!(fake.count(), 2);
}

#[tokio::test]
async fn an_https_upstream_is_relayed_over_tls_trusting_upstream_ca_file() {
    let up = RawUpstream::start_tls().await;
    let port = up.addr.unwrap().port();
    let url = format!("https://localhost:{port}");
    let ca = fixture("ca.pem");
    let gw = start(&url, &format!("upstream_ca_file = \"{ca}\"")).await;

    let r = gw.send_str(PHONE_A1, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "{\"ok\":true}");
    let seen = up.requests();
    assert!(
        seen[0].contains(&format!("host: localhost:{port}\r\n")),
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
    let gw2 = start(&url, "").await;
    let r = gw2.send_str(PHONE_A1, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-wa-breaker"], "upstream-error");
    assert_eq!(up.requests().len(), 3);
    assert!(gw2.logs().contains("upstream request failed"));
}
