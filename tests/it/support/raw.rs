//! Raw HTTP/1.1 over TCP, for framing tests: an upstream that answers with scripted bytes
//! (optionally written in pieces), and a client that writes raw requests and reads raw
//! answers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::gateway::TEST_TOKEN;

/// A 200 `{"ok":true}` framed by `content-length`: what `RawUpstream` answers by default.
pub const OK_RAW: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";

/// The pause between the two writes of [`Writes::SplitAt`].
pub const SPLIT_PAUSE: Duration = Duration::from_millis(15);
/// The pause after each byte of [`Writes::ByteAtATime`].
pub const BYTE_PAUSE: Duration = Duration::from_millis(1);

/// How a `RawUpstream` writes an answer's bytes (each write flushed, `TCP_NODELAY` on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writes {
    /// One write.
    Whole,
    /// `bytes[..k]`, a pause of [`SPLIT_PAUSE`], then `bytes[k..]`.
    SplitAt(usize),
    /// One write per byte, [`BYTE_PAUSE`] after each.
    ByteAtATime,
}

/// A scripted raw answer.
#[derive(Clone, Debug)]
pub struct RawReply {
    pub bytes: Vec<u8>,
    /// Close the connection this long after answering (`Some(ZERO)`: at once).
    pub close_after: Option<Duration>,
    pub writes: Writes,
}

impl RawReply {
    pub fn bytes(bytes: impl Into<Vec<u8>>) -> RawReply {
        RawReply {
            bytes: bytes.into(),
            close_after: None,
            writes: Writes::Whole,
        }
    }

    /// Close the connection right after answering.
    pub fn then_close(mut self) -> RawReply {
        self.close_after = Some(Duration::ZERO);
        self
    }

    pub fn close_after(mut self, d: Duration) -> RawReply {
        self.close_after = Some(d);
        self
    }

    pub fn writes(mut self, w: Writes) -> RawReply {
        self.writes = w;
        self
    }
}

/// `RawReply::bytes(text)`: kept-alive, one write.
pub fn raw(bytes: &str) -> RawReply {
    RawReply::bytes(bytes.as_bytes())
}

type Responder = Arc<dyn Fn(&[u8]) -> Option<RawReply> + Send + Sync>;

/// An HTTP/1.1 upstream that records each request's raw bytes and answers, in order of
/// preference: the FIFO (`push`), the responder (`respond_with`, chosen from the request's
/// bytes), else [`OK_RAW`]. Reads request bodies framed by `content-length` or chunked.
#[derive(Clone, Default)]
pub struct RawUpstream {
    pub addr: Option<SocketAddr>,
    pub requests: Arc<Mutex<Vec<Vec<u8>>>>,
    pub replies: Arc<Mutex<VecDeque<RawReply>>>,
    pub connections: Arc<AtomicUsize>,
    responder: Arc<Mutex<Option<Responder>>>,
}

/// A test fixture's path (`tests/fixtures/{name}`).
pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Serves TLS with the test CA's certificate for 127.0.0.1 and localhost (no ALPN: the
/// client's HTTP/1.1).
pub fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    tls_acceptor_alpn(&[])
}

/// [`tls_acceptor`] selecting the first of `alpn` the client offers.
pub fn tls_acceptor_alpn(alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{crypto::ring, ServerConfig};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(fixture("upstream.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture("upstream.key")).unwrap();
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

impl RawUpstream {
    pub async fn start() -> RawUpstream {
        Self::start_with(None).await
    }

    pub async fn start_tls() -> RawUpstream {
        Self::start_with(Some(tls_acceptor())).await
    }

    /// TLS offering `alpn` (the server picks its first one the client also offers).
    pub async fn start_tls_alpn(alpn: &[&[u8]]) -> RawUpstream {
        Self::start_with(Some(tls_acceptor_alpn(alpn))).await
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
                let _ = s.set_nodelay(true);
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

    pub fn addr(&self) -> SocketAddr {
        self.addr.unwrap()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn push(&self, r: RawReply) {
        self.replies.lock().unwrap().push_back(r);
    }

    /// Answer requests the FIFO does not cover with `f(request bytes)` (None: [`OK_RAW`]).
    pub fn respond_with(&self, f: impl Fn(&[u8]) -> Option<RawReply> + Send + Sync + 'static) {
        *self.responder.lock().unwrap() = Some(Arc::new(f));
    }

    /// Every request received so far (head and body), as lossy text.
    pub fn requests(&self) -> Vec<String> {
        let reqs = self.requests.lock().unwrap();
        reqs.iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn choose(&self, req: &[u8]) -> RawReply {
        if let Some(r) = self.replies.lock().unwrap().pop_front() {
            return r;
        }
        let responder = self.responder.lock().unwrap().clone();
        responder
            .and_then(|f| f(req))
            .unwrap_or_else(|| raw(OK_RAW))
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(self, mut s: S) {
        let mut buf = Vec::new();
        loop {
            let Some(len) = read_request(&mut s, &mut buf).await else {
                return;
            };
            let req: Vec<u8> = buf.drain(..len).collect();
            self.requests.lock().unwrap().push(req.clone());
            let reply = self.choose(&req);
            if write_reply(&mut s, &reply).await.is_err() {
                return;
            }
            if let Some(d) = reply.close_after {
                tokio::time::sleep(d).await;
                return;
            }
        }
    }
}

async fn write_reply<S: AsyncWrite + Unpin>(s: &mut S, reply: &RawReply) -> std::io::Result<()> {
    match reply.writes {
        Writes::Whole => {
            s.write_all(&reply.bytes).await?;
            s.flush().await
        }
        Writes::SplitAt(k) => {
            let k = k.min(reply.bytes.len());
            s.write_all(&reply.bytes[..k]).await?;
            s.flush().await?;
            tokio::time::sleep(SPLIT_PAUSE).await;
            s.write_all(&reply.bytes[k..]).await?;
            s.flush().await
        }
        Writes::ByteAtATime => {
            for b in &reply.bytes {
                s.write_all(std::slice::from_ref(b)).await?;
                s.flush().await?;
                tokio::time::sleep(BYTE_PAUSE).await;
            }
            Ok(())
        }
    }
}

async fn fill<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// Reads one whole request into `buf`; returns its length (None when the peer closed).
async fn read_request<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<usize> {
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        fill(s, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        // Walk the chunks: size line, data, CRLF; the last chunk, then trailers.
        let mut at = head_end;
        loop {
            let eol = loop {
                if let Some(p) = buf[at..].windows(2).position(|w| w == b"\r\n") {
                    break at + p;
                }
                fill(s, buf).await?;
            };
            let line = String::from_utf8_lossy(&buf[at..eol]).into_owned();
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).ok()?;
            at = eol + 2;
            if size == 0 {
                loop {
                    let eol = loop {
                        if let Some(p) = buf[at..].windows(2).position(|w| w == b"\r\n") {
                            break at + p;
                        }
                        fill(s, buf).await?;
                    };
                    let empty = eol == at;
                    at = eol + 2;
                    if empty {
                        return Some(at);
                    }
                }
            }
            while buf.len() < at + size + 2 {
                fill(s, buf).await?;
            }
            at += size + 2;
        }
    }
    let len = header("content-length:").map_or(0, |v| v.parse::<usize>().unwrap());
    while buf.len() < head_end + len {
        fill(s, buf).await?;
    }
    Some(head_end + len)
}

// ---------------------------------------------------------------------------
// A raw client
// ---------------------------------------------------------------------------

/// A raw answer read by [`read_answer`].
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Answer {
    /// A header's (first) value, name compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Reads one `content-length`-framed answer (bytes past it stay in `buf`); 10 s limit.
pub async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> Answer {
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
                    .expect("answers here are content-length framed")
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

/// Everything the peer writes until it closes (Err on a read error or after `limit`).
pub async fn read_to_close(s: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, String> {
    let mut all = Vec::new();
    match tokio::time::timeout(limit, s.read_to_end(&mut all)).await {
        Ok(Ok(_)) => Ok(all),
        Ok(Err(e)) => Err(format!(
            "read error {e} after {:?}",
            String::from_utf8_lossy(&all)
        )),
        Err(_) => Err(format!(
            "not closed within {limit:?}; got {:?}",
            String::from_utf8_lossy(&all)
        )),
    }
}

/// A raw send: `POST /v21.0/{phone}/messages` with the test token, JSON content type,
/// `extra_headers` (each ending in CRLF) and a `content-length` body.
pub fn send_req(phone: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "POST /v21.0/{phone}/messages HTTP/1.1\r\nHost: gateway.local\r\nAuthorization: Bearer {TEST_TOKEN}\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// True when the peer closes (or resets) within 5 s.
pub async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}
