//! The one body type of the proxy: a streamed hyper body, a buffered one, or a
//! buffered prefix followed by the rest of a stream (an error body too big to classify).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

pin_project! {
    /// Request and response body on the proxy path.
    #[project = BodyProj]
    pub enum Body {
        /// Streamed as it arrives: the success path.
        Stream { #[pin] inner: Incoming },
        /// A client's request body, streamed; a read error marks `broken`, so a forward
        /// that fails because of it is told apart from an upstream failure.
        Client { #[pin] inner: Incoming, broken: ClientBody },
        /// Fully buffered (local replies, classified error bodies).
        Full { data: Option<Bytes> },
        /// A buffered prefix, then the rest of the stream.
        Prefixed { prefix: Option<Bytes>, #[pin] rest: Incoming },
    }
}

/// Set when a client's request body broke off or was malformed (kept as a request
/// extension too, for the forwarder).
#[derive(Clone, Debug, Default)]
pub struct ClientBody(Arc<AtomicBool>);

impl ClientBody {
    /// Whether the body failed.
    pub fn is_broken(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Body {
    /// A client's request body, marking `broken` if reading it fails.
    pub fn client(inner: Incoming, broken: ClientBody) -> Body {
        Body::Client { inner, broken }
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
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            BodyProj::Stream { inner } => inner.poll_frame(cx),
            BodyProj::Client { inner, broken } => {
                let r = inner.poll_frame(cx);
                if let Poll::Ready(Some(Err(_))) = &r {
                    broken.0.store(true, Ordering::Relaxed);
                }
                r
            }
            BodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            BodyProj::Prefixed { prefix, rest } => match prefix.take() {
                Some(p) => Poll::Ready(Some(Ok(Frame::data(p)))),
                None => rest.poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Stream { inner } | Body::Client { inner, .. } => inner.is_end_stream(),
            Body::Full { data } => data.is_none(),
            Body::Prefixed { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
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
        }
    }
}

/// Reads up to `limit` bytes of a body. `Ok(Ok(bytes))` when the whole body fit;
/// `Ok(Err(body))` when it did not (the returned body replays what was read, then the rest).
pub async fn buffer(body: Body, limit: usize) -> Result<Result<Bytes, Body>, hyper::Error> {
    use http_body_util::BodyExt;
    let mut rest = match body {
        Body::Full { data } => return Ok(Ok(data.unwrap_or_default())),
        Body::Prefixed { .. } => return Ok(Err(body)),
        Body::Stream { inner } | Body::Client { inner, .. } => inner,
    };
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = rest.frame().await {
        if let Ok(data) = frame?.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > limit {
                return Ok(Err(Body::Prefixed {
                    prefix: Some(buf.freeze()),
                    rest,
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
