//! The relay's upstream connections: one idle pool per worker (HTTP/1.1, plain or TLS), so
//! taking a connection never crosses threads. An `https` upstream that selects `h2` by ALPN
//! is spoken to over HTTP/2 instead ([`super::http2`]). Idle policy: [`super::POOL_IDLE_TIMEOUT`] and
//! [`super::POOL_MAX_IDLE`], the same as hyper's pools.
//!
//! Concurrency: a pool is touched only by its own worker's tasks (a single-threaded
//! runtime), so its lock is never contended; connections never move between pools.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::{Target, POOL_IDLE_TIMEOUT, POOL_MAX_IDLE};

/// An upstream connection.
pub enum Conn {
    /// `http://` upstream.
    Plain(TcpStream),
    /// `https://` upstream that selected `http/1.1` (or no protocol) by ALPN.
    Tls(Box<TlsStream<TcpStream>>),
}

/// A new upstream connection, by the protocol the upstream chose.
pub enum Connected {
    /// HTTP/1.1: plain, or TLS where the server selected `http/1.1` or nothing.
    H1(Conn),
    /// TLS where the server selected `h2`: handed to [`super::http2`].
    H2(Box<TlsStream<TcpStream>>),
}

/// Opens the relay's upstream connections: TCP, then TLS (ALPN `h2`, `http/1.1`) for https.
#[derive(Clone)]
pub struct Connector {
    target: Target,
    tls: Option<TlsConnector>,
}

impl Connector {
    /// A connector for `target`.
    pub fn new(target: &Target) -> Connector {
        let tls = target.tls_name.as_ref().map(|_| {
            let mut config = (*target.trust).clone();
            // HTTP/2 when the server offers it (few connections for many sends in flight),
            // else HTTP/1.1; only HTTP/1.1 when `upstream_http2` is off.
            config.alpn_protocols = if target.http2 {
                vec![b"h2".to_vec(), b"http/1.1".to_vec()]
            } else {
                vec![b"http/1.1".to_vec()]
            };
            TlsConnector::from(Arc::new(config))
        });
        Connector {
            target: target.clone(),
            tls,
        }
    }

    /// True for an `https` upstream offered `h2`: the server may select it.
    pub fn may_speak_h2(&self) -> bool {
        self.tls.is_some() && self.target.http2
    }

    /// Opens a new connection within the connect timeout.
    pub async fn connect(&self) -> io::Result<Connected> {
        let t = &self.target;
        let fut = async {
            let tcp = TcpStream::connect((t.host.as_str(), t.port)).await?;
            tcp.set_nodelay(true)?;
            match (&self.tls, &t.tls_name) {
                (Some(connector), Some(name)) => {
                    let tls = connector.connect(name.clone(), tcp).await?;
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        Ok(Connected::H2(Box::new(tls)))
                    } else {
                        Ok(Connected::H1(Conn::Tls(Box::new(tls))))
                    }
                }
                _ => Ok(Connected::H1(Conn::Plain(tcp))),
            }
        };
        match tokio::time::timeout(t.connect_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect timed out after {:?}", t.connect_timeout),
            )),
        }
    }
}

/// One worker's idle upstream connections, most recently used last.
#[derive(Clone, Default)]
pub struct Pool {
    // Only this worker's tasks touch it: the lock is never contended.
    idle: Arc<Mutex<Vec<(Conn, Instant)>>>,
}

impl Pool {
    /// A live idle connection, if there is one. Stale or closed ones are dropped.
    pub fn take(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().ok()?;
        while let Some((mut conn, since)) = idle.pop() {
            if since.elapsed() < POOL_IDLE_TIMEOUT && conn.is_idle_and_open() {
                return Some(conn);
            }
        }
        None
    }

    /// Closes idle connections that are stale or that the upstream closed, so a quiet worker
    /// does not sit on sockets in `CLOSE_WAIT`. Run now and then by the worker.
    pub fn sweep(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain_mut(|(conn, since)| {
                since.elapsed() < POOL_IDLE_TIMEOUT && conn.is_idle_and_open()
            });
        }
    }

    /// Returns a connection whose last exchange ended cleanly.
    pub fn put(&self, conn: Conn) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() >= POOL_MAX_IDLE {
                idle.remove(0);
            }
            idle.push((conn, Instant::now()));
        }
    }
}

impl Conn {
    /// True when nothing arrived while idle: no EOF, no reset, no stray bytes. A peek that
    /// costs no syscall unless the socket was reported readable.
    fn is_idle_and_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        matches!(Pin::new(self).poll_read(&mut cx, &mut buf), Poll::Pending)
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn pair(l: &tokio::net::TcpListener) -> (Conn, TcpStream) {
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (Conn::Plain(c), s)
    }

    #[tokio::test]
    async fn take_and_sweep_drop_connections_the_upstream_closed() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let (a, server_a) = pair(&l).await;
        let (b, _server_b) = pair(&l).await;
        pool.put(b);
        pool.put(a);
        drop(server_a); // the upstream closes `a`, the most recently returned
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.sweep();
        assert_eq!(
            pool.idle.lock().unwrap().len(),
            1,
            "only the open one is kept"
        );
        assert!(pool.take().is_some());
        assert!(pool.take().is_none());
    }
}
