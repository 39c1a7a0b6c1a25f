//! The one body type of the proxy: a streamed hyper body, a buffered one, or a
//! buffered prefix followed by the rest of a stream (an error body too big to classify).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::common::BoxError;

pin_project! {
    /// Request and response body on the proxy path.
    #[project = BodyProj]
    pub enum Body {
        /// Streamed as it arrives: the success path.
        Stream { #[pin] inner: Incoming },
        /// A client's request body, streamed; a read error marks `broken`, so a forward
        /// that fails because of it is told apart from an upstream failure. While the
        /// body waits for the client, `client_body_timeout` runs (the relay's deadline
        /// between two body reads); past it the body fails and is marked timed out.
        Client {
            #[pin] inner: Incoming,
            broken: ClientBody,
            deadline: Option<Duration>,
            // Made on the first wait only (most bodies arrive with their head).
            sleep: Option<Pin<Box<Sleep>>>,
            waiting: bool,
        },
        /// Fully buffered (local replies, classified error bodies).
        Full { data: Option<Bytes> },
        /// A buffered prefix, then the rest of the body (a client's keeps its marks).
        Prefixed { prefix: Option<Bytes>, rest: Pin<Box<Body>> },
        /// A body that holds something until it is done or dropped (a streamed answer
        /// holds its large-answer permit, `crate::upstream::Limits::answers`).
        Held { inner: Pin<Box<Body>>, hold: Option<Hold> },
    }
}

/// What a [`Body::Held`] keeps until its body ends (then released at once, not when the
/// body is dropped) or is dropped.
pub type Hold = Box<dyn std::any::Any + Send + Sync>;

/// Set when a client's request body broke off, was malformed or missed
/// `client_body_timeout` (kept as a request extension too, for the forwarder).
#[derive(Clone, Debug, Default)]
pub struct ClientBody(Arc<AtomicU8>);

const BROKEN: u8 = 1;
const TIMED_OUT: u8 = 2;

impl ClientBody {
    /// Whether the body failed (broken or timed out).
    pub fn is_broken(&self) -> bool {
        self.0.load(Ordering::Relaxed) != 0
    }

    /// Whether the body failed because the client stopped sending it.
    pub fn timed_out(&self) -> bool {
        self.0.load(Ordering::Relaxed) == TIMED_OUT
    }
}

/// The client sent no body bytes within `client_body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("client sent no request body bytes within {0:?}")]
pub struct BodyTimeout(pub Duration);

impl Body {
    /// A client's request body, marking `broken` if reading it fails or if the client
    /// sends nothing for `deadline` while the body is being read.
    pub fn client(inner: Incoming, broken: ClientBody, deadline: Option<Duration>) -> Body {
        Body::Client {
            inner,
            broken,
            deadline,
            sleep: None,
            waiting: false,
        }
    }

    /// A buffered body.
    pub fn full(data: impl Into<Bytes>) -> Body {
        let data = data.into();
        Body::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }

    /// An empty body.
    pub fn empty() -> Body {
        Body::Full { data: None }
    }

    /// A streamed body.
    pub fn stream(inner: Incoming) -> Body {
        Body::Stream { inner }
    }

    /// The body's bytes when it is held whole (buffered, or none at all), so a request
    /// can be sent again; `None` while it streams.
    pub fn whole(&self) -> Option<Bytes> {
        match self {
            Body::Full { data } => Some(data.clone().unwrap_or_default()),
            b if b.is_end_stream() => Some(Bytes::new()),
            _ => None,
        }
    }

    /// `inner`, holding `hold` until it ends or is dropped.
    pub fn held(inner: Body, hold: Hold) -> Body {
        Body::Held {
            inner: Box::pin(inner),
            hold: Some(hold),
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            BodyProj::Stream { inner } => inner.poll_frame(cx).map_err(Into::into),
            BodyProj::Client {
                inner,
                broken,
                deadline,
                sleep,
                waiting,
            } => match inner.poll_frame(cx) {
                Poll::Ready(r) => {
                    *waiting = false;
                    if let Some(Err(_)) = &r {
                        broken.0.store(BROKEN, Ordering::Relaxed);
                    }
                    Poll::Ready(r.map(|r| r.map_err(Into::into)))
                }
                Poll::Pending => {
                    let Some(d) = *deadline else {
                        return Poll::Pending;
                    };
                    // The clock runs only while the body waits for the client, not while
                    // the upstream is slow to take what was read.
                    let s = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(d)));
                    if !*waiting {
                        *waiting = true;
                        s.as_mut().reset(Instant::now() + d);
                    }
                    if s.as_mut().poll(cx).is_ready() {
                        // Counted by the record step of whoever reads the body.
                        broken.0.store(TIMED_OUT, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTimeout(d)))));
                    }
                    Poll::Pending
                }
            },
            BodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            BodyProj::Prefixed { prefix, rest } => match prefix.take() {
                Some(p) => Poll::Ready(Some(Ok(Frame::data(p)))),
                None => rest.as_mut().poll_frame(cx),
            },
            BodyProj::Held { inner, hold } => {
                let r = inner.as_mut().poll_frame(cx);
                if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_))))
                    || inner.is_end_stream()
                {
                    hold.take();
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Stream { inner } | Body::Client { inner, .. } => inner.is_end_stream(),
            Body::Full { data } => data.is_none(),
            Body::Prefixed { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
            Body::Held { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Stream { inner } | Body::Client { inner, .. } => inner.size_hint(),
            Body::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Body::Prefixed { prefix, rest } => {
                let p = prefix.as_ref().map_or(0, |d| d.len() as u64);
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower() + p);
                if let Some(u) = r.upper() {
                    h.set_upper(u + p);
                }
                h
            }
            Body::Held { inner, .. } => inner.size_hint(),
        }
    }
}

/// Reads up to `limit` bytes of a body. `Ok(Ok(bytes))` when the whole body fit;
/// `Ok(Err(body))` when it did not (the returned body replays what was read, then the rest).
pub async fn buffer(body: Body, limit: usize) -> Result<Result<Bytes, Body>, BoxError> {
    use http_body_util::BodyExt;
    let mut rest = match body {
        Body::Full { data } => return Ok(Ok(data.unwrap_or_default())),
        Body::Prefixed { .. } | Body::Held { .. } => return Ok(Err(body)),
        Body::Stream { .. } | Body::Client { .. } => body,
    };
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = rest.frame().await {
        if let Ok(data) = frame?.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > limit {
                return Ok(Err(Body::Prefixed {
                    prefix: Some(buf.freeze()),
                    rest: Box::pin(rest),
                }));
            }
        }
        // Trailers on a Graph answer are not expected; they are dropped.
    }
    Ok(Ok(buf.freeze()))
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A held body lets go of what it holds once its last frame is read, while the body
    /// itself is still alive (an HTTP/2 stream keeps its answer's body until it is done).
    #[tokio::test]
    async fn a_held_body_releases_its_hold_when_it_ends() {
        let hold = Arc::new(());
        let mut body = Body::held(Body::full("answer"), Box::new(hold.clone()));
        assert_eq!(Arc::strong_count(&hold), 2);
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "answer");
        assert!(body.is_end_stream());
        assert_eq!(Arc::strong_count(&hold), 1, "released with the last frame");
        drop(body);
        let body = Body::held(Body::full("answer"), Box::new(hold.clone()));
        drop(body);
        assert_eq!(Arc::strong_count(&hold), 1, "released when dropped unread");
    }
}
