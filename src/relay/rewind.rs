//! A client connection handed to hyper: the bytes the relay already read are replayed
//! first, and the connection stays reachable from outside hyper ([`Handle`]) so that a
//! request head that misses `client_header_timeout` can be answered 408 after hyper has
//! given the connection up (hyper itself closes such a connection without a word).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What [`Rewind`] and [`Handle`] share: how many bytes arrived since the gateway last
/// wrote, and the stream once hyper has dropped the connection in the middle of a request.
struct Shared {
    unanswered: AtomicUsize,
    parked: Mutex<Option<TcpStream>>,
}

/// `prefix`, then the rest of the stream.
///
/// It owns the stream and reads through `TcpStream`'s own `poll_read`, which forgets the
/// socket's readiness after a short read: the next read waits for epoll instead of trying
/// a `recvfrom` that returns EAGAIN (one per request, with `poll_read_ready` + `try_read`).
pub struct Rewind {
    prefix: Vec<u8>,
    at: usize,
    stream: Option<TcpStream>,
    shared: Arc<Shared>,
}

/// The connection as seen from outside hyper.
pub struct Handle(Arc<Shared>);

impl Rewind {
    /// Replays `prefix` before reading from `stream`.
    pub fn new(stream: TcpStream, prefix: Vec<u8>) -> (Rewind, Handle) {
        let shared = Arc::new(Shared {
            unanswered: AtomicUsize::new(prefix.len()),
            parked: Mutex::new(None),
        });
        let handle = Handle(shared.clone());
        (
            Rewind {
                prefix,
                at: 0,
                stream: Some(stream),
                shared,
            },
            handle,
        )
    }

    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match self.stream.as_mut() {
            Some(s) => Ok(Pin::new(s)),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Drop for Rewind {
    /// A request under way when hyper lets the connection go (a head past its deadline):
    /// the stream stays open for [`Handle::answer_and_close`]. Otherwise it closes now.
    fn drop(&mut self) {
        if self.shared.unanswered.load(Ordering::Relaxed) > 0 {
            let mut parked = self
                .shared
                .parked
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *parked = self.stream.take();
        }
    }
}

impl Handle {
    /// Whether the client sent bytes the gateway has not answered: a started request,
    /// not an idle kept-alive connection.
    pub fn request_started(&self) -> bool {
        self.0.unanswered.load(Ordering::Relaxed) > 0
    }

    /// Writes `answer` (best effort: a client gone is fine) and closes the write side.
    /// Only once the [`Rewind`] is dropped (hyper gave the connection up); before, or
    /// when no request was under way, there is no stream here and nothing is written.
    pub async fn answer_and_close(&self, answer: &[u8]) {
        let parked = self
            .0
            .parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(s) = parked else { return };
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
        let _ = socket2::SockRef::from(&s).shutdown(std::net::Shutdown::Write);
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
        let before = buf.filled().len();
        let r = this.stream()?.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let n = buf.filled().len() - before;
            this.shared.unanswered.fetch_add(n, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = this.stream()?.poll_write(cx, buf);
        if let Poll::Ready(Ok(_)) = r {
            this.shared.unanswered.store(0, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = this.stream()?.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(_)) = r {
            this.shared.unanswered.store(0, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A TCP socket has nothing buffered in user space.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(stream) = self.stream.as_ref() else {
            return Poll::Ready(Ok(()));
        };
        let s = socket2::SockRef::from(stream);
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
        h.answer_and_close(b"no").await; // hyper still has the connection: nothing
        c.write_all(b"POST").await.unwrap();
        let n = r.read(&mut b).await.unwrap();
        assert_eq!(&b[..n], b"POST");
        drop(r); // hyper gives up with a request under way
        h.answer_and_close(b"bye").await;
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"xbye");
    }

    #[tokio::test]
    async fn an_answered_connection_closes_when_dropped() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let (r, h) = Rewind::new(s, Vec::new());
        drop(r);
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());
        h.answer_and_close(b"bye").await;
    }
}
