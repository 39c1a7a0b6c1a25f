//! A client connection handed to hyper: the bytes the relay already read are replayed
//! first, and the connection stays reachable from outside hyper ([`Handle`]) so that a
//! request head that misses `client_header_timeout` can be answered 408 after hyper has
//! given the connection up (hyper itself closes such a connection without a word).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The stream and how many bytes arrived since the gateway last wrote on it.
struct Shared {
    stream: TcpStream,
    unanswered: AtomicUsize,
}

/// `prefix`, then the rest of the stream.
pub struct Rewind {
    prefix: Vec<u8>,
    at: usize,
    inner: Arc<Shared>,
}

/// The connection as seen from outside hyper.
pub struct Handle(Arc<Shared>);

impl Rewind {
    /// Replays `prefix` before reading from `stream`.
    pub fn new(stream: TcpStream, prefix: Vec<u8>) -> (Rewind, Handle) {
        let inner = Arc::new(Shared {
            unanswered: AtomicUsize::new(prefix.len()),
            stream,
        });
        let handle = Handle(inner.clone());
        (
            Rewind {
                prefix,
                at: 0,
                inner,
            },
            handle,
        )
    }
}

impl Handle {
    /// Whether the client sent bytes the gateway has not answered: a started request,
    /// not an idle kept-alive connection.
    pub fn request_started(&self) -> bool {
        self.0.unanswered.load(Ordering::Relaxed) > 0
    }

    /// Writes `answer` (best effort: a client gone is fine) and closes the write side.
    pub async fn answer_and_close(&self, answer: &[u8]) {
        let s = &self.0.stream;
        let mut left = answer;
        while !left.is_empty() {
            if s.writable().await.is_err() {
                return;
            }
            match s.try_write(left) {
                Ok(n) => left = &left[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            }
        }
        let _ = socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write);
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let s = &this.inner.stream;
        loop {
            ready!(s.poll_read_ready(cx))?;
            // `try_read_buf` clears the readiness on WouldBlock, so the loop waits again.
            // It reads into the unfilled part as it is: `try_read(initialize_unfilled())`
            // zeroed all of hyper's spare read buffer (~8 KiB) on every call (issue 24).
            match s.try_read_buf(buf) {
                Ok(n) => {
                    this.inner.unanswered.fetch_add(n, Ordering::Relaxed);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let s = &this.inner.stream;
        loop {
            ready!(s.poll_write_ready(cx))?;
            match s.try_write(buf) {
                Ok(n) => {
                    this.inner.unanswered.store(0, Ordering::Relaxed);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let s = &this.inner.stream;
        loop {
            ready!(s.poll_write_ready(cx))?;
            match s.try_write_vectored(bufs) {
                Ok(n) => {
                    this.inner.unanswered.store(0, Ordering::Relaxed);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A TCP socket has nothing buffered in user space.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let s = socket2::SockRef::from(&self.inner.stream);
        Poll::Ready(match s.shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            r => r,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn replays_the_prefix_then_reads_on() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        c.write_all(b" world").await.unwrap();
        drop(c);
        let (mut r, h) = Rewind::new(s, b"hello".to_vec());
        assert!(h.request_started());
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn counts_what_is_unanswered_and_answers_from_outside() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let (mut r, h) = Rewind::new(s, Vec::new());
        assert!(!h.request_started(), "nothing read yet");
        c.write_all(b"GET").await.unwrap();
        let mut b = [0u8; 8];
        let n = r.read(&mut b).await.unwrap();
        assert_eq!(&b[..n], b"GET");
        assert!(h.request_started());
        r.write_all(b"x").await.unwrap();
        assert!(!h.request_started(), "a write answers what was read");
        drop(r);
        h.answer_and_close(b"bye").await;
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"xbye");
    }
}
