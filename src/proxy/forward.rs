//! Forward: the innermost service. Sends the request to the upstream unchanged but for the
//! hop-by-hop rule ([`crate::policy::hop`]) and `Host`, over the worker's pooled client
//! (HTTP/1.1, or HTTP/2 by ALPN over TLS); refuses an answer head the framing rule refuses
//! ([`crate::policy::framing::answer_head`]). The deadline is the classify layer's.
//!
//! An HTTP/2 client's answer (many streams share its connection) is read whole when it is
//! small (up to 64 KiB or `classify_body_limit`, which covers every send's answer), so the
//! upstream connection goes back to the pool at once, whatever pace the client reads at:
//! slow readers keep no upstream connection busy and, over an HTTP/2 upstream, hold none of
//! its window. A larger answer streams as the client reads it and holds a permit of its
//! own budget ([`crate::upstream::Limits::answers`]) until its body is done or dropped: the
//! upstream connections slow readers can keep busy are bounded by that budget, not by
//! their streams. No permit free: the answer is dropped at once and the client gets a 502
//! (no upstream connection waits; no send's answer is that large). An HTTP/1 client's
//! answer streams as it comes: it keeps at most one upstream connection per client
//! connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::uri::{Authority, Scheme};
use http::{header, Request, Response, Uri};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::client::legacy;
use pin_project_lite::pin_project;
use tower::Service;

use super::body::{Body, ClientBody};
use crate::policy::framing::content_length;
use crate::policy::{framing, hop, ForwardError};
use crate::upstream::alpn::{Clients, LearnFailed, Route, Wait};
use crate::upstream::{Limiter, Target};

/// See module docs.
#[derive(Clone)]
pub struct Forward {
    // Behind an Arc: the stack is cloned per request, and a client clone is a dozen Arcs.
    clients: Arc<Clients>,
    scheme: Scheme,
    authority: Authority,
    /// The large-answer budget.
    answers: Arc<Limiter>,
    /// Answers up to this many bytes are read whole.
    whole: usize,
}

impl Forward {
    /// A forwarder to `target` over `clients` (the worker's: its own pools); answers up
    /// to `whole` bytes are read whole, larger ones stream holding a permit of `answers`.
    pub fn new(target: &Target, clients: Clients, answers: Arc<Limiter>, whole: usize) -> Forward {
        Forward {
            clients: Arc::new(clients),
            scheme: target.scheme.clone(),
            authority: target.authority.clone(),
            answers,
            whole,
        }
    }
}

impl Service<Request<Body>> for Forward {
    type Response = Response<Body>;
    type Error = ForwardError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pooled client queues internally; it is always ready to take a request.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        // Only an HTTP/2 client's answers are read whole or counted: over HTTP/1 a slow
        // reader keeps one upstream connection per client connection at most, bounded by
        // `max_connections`, and the read would cost every send on that path.
        let whole = (parts.version == http::Version::HTTP_2).then_some(self.whole);
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(self.authority.clone());
        uri.path_and_query = parts.uri.path_and_query().cloned();
        parts.uri = Uri::from_parts(uri).unwrap_or_default();
        parts.version = http::Version::HTTP_11;
        hop::strip(&mut parts.headers);
        parts.headers.remove(header::HOST);
        let client_body = parts.extensions.remove::<ClientBody>();
        parts.extensions = http::Extensions::new();
        let req = Request::from_parts(parts, body);
        let sending = sending(&self.clients, self.clients.learner.route(req.uri()), req);
        ResponseFuture {
            client_body,
            sending,
            answers: self.answers.clone(),
            whole,
            read: None,
        }
    }
}

/// An answer whose head is in, while its body is read to see whether it is small.
struct Read {
    parts: Option<http::response::Parts>,
    body: Option<Incoming>,
    buf: BytesMut,
    /// The first chunk, kept as is while it is the only one (no copy).
    first: Option<Bytes>,
}

/// No large-answer permit was free: the answer is dropped.
#[derive(Debug, thiserror::Error)]
#[error("answer larger than the gateway reads whole, and every large-answer permit is out")]
struct NoAnswerPermit;

impl Read {
    /// Reads until the body ends (the answer, whole) or passes `whole` bytes (the answer
    /// streams, holding a large-answer permit).
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        answers: &Arc<Limiter>,
        whole: usize,
    ) -> Poll<Result<Response<Body>, ForwardError>> {
        loop {
            let Some(body) = self.body.as_mut() else {
                panic!("forward future polled after completion");
            };
            let data = match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => d,
                    // Trailers on a Graph answer are not expected; dropped.
                    Err(_) => continue,
                },
                Some(Err(e)) => return Poll::Ready(Err(ForwardError::Broken(Box::new(e)))),
                None => {
                    let data = match self.first.take() {
                        Some(d) => d,
                        None => std::mem::take(&mut self.buf).freeze(),
                    };
                    self.body = None;
                    let parts = self.parts.take().expect("parts until completion");
                    return Poll::Ready(Ok(Response::from_parts(parts, Body::full(data))));
                }
            };
            if let Some(f) = self.first.take() {
                self.buf.extend_from_slice(&f);
            }
            if self.buf.is_empty() && data.len() <= whole {
                self.first = Some(data);
            } else {
                self.buf.extend_from_slice(&data);
            }
            if self.first.as_ref().map_or(self.buf.len(), Bytes::len) > whole {
                let prefix = match self.first.take() {
                    Some(d) => d,
                    None => std::mem::take(&mut self.buf).freeze(),
                };
                let (Some(parts), Some(rest)) = (self.parts.take(), self.body.take()) else {
                    panic!("forward future polled after completion");
                };
                let body = Body::Prefixed {
                    prefix: Some(prefix),
                    rest: Box::pin(Body::stream(rest)),
                };
                return Poll::Ready(large(parts, body, answers));
            }
        }
    }
}

/// An answer too large to read whole streams with a permit of the large-answer budget, or
/// is dropped (502) when none is free: no upstream connection waits for one.
fn large(
    parts: http::response::Parts,
    body: Body,
    answers: &Arc<Limiter>,
) -> Result<Response<Body>, ForwardError> {
    match answers.try_acquire_owned() {
        Some(p) => Ok(Response::from_parts(parts, Body::held(body, Box::new(p)))),
        None => Err(ForwardError::Broken(Box::new(NoAnswerPermit))),
    }
}

/// Where `req` goes by `route`.
fn sending(clients: &Arc<Clients>, route: Route, req: Request<Body>) -> Sending {
    match route {
        Route::H1 => Sending::Sent(clients.h1.request(req)),
        Route::H2 => Sending::Sent(clients.h2.request(req)),
        Route::Wait(wait) => Sending::Waiting(Box::new(Waiting {
            clients: clients.clone(),
            req,
            wait,
        })),
        Route::Failed(e) => Sending::Failed(Some(e)),
    }
}

/// The request's way to the upstream: sent, or waiting for the worker to learn the
/// upstream's protocol ([`crate::upstream::alpn`]).
enum Sending {
    /// Boxed: only the sends of a worker's first moments wait.
    Waiting(Box<Waiting>),
    Sent(legacy::ResponseFuture),
    /// The learning connection it waited for failed (`None` once reported).
    Failed(Option<LearnFailed>),
}

struct Waiting {
    clients: Arc<Clients>,
    req: Request<Body>,
    wait: Wait,
}

/// Why no answer head came.
enum Failure {
    Client(legacy::Error),
    Learning(LearnFailed),
}

impl Sending {
    /// The answer's head from the client, once the request is on its way.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response<Incoming>, Failure>> {
        loop {
            match self {
                Sending::Sent(f) => return Pin::new(f).poll(cx).map_err(Failure::Client),
                Sending::Failed(e) => {
                    let Some(e) = e.take() else {
                        panic!("forward future polled after completion");
                    };
                    return Poll::Ready(Err(Failure::Learning(e)));
                }
                Sending::Waiting(w) => {
                    ready!(w.wait.poll(cx));
                    let route = w.clients.learner.route_after(&w.wait, w.req.uri());
                    let Sending::Waiting(w) = std::mem::replace(self, Sending::Failed(None)) else {
                        unreachable!("matched above");
                    };
                    *self = sending(&w.clients, route, w.req);
                }
            }
        }
    }
}

pin_project! {
    /// The upstream answer's head, or why there is none.
    pub struct ResponseFuture {
        sending: Sending,
        client_body: Option<ClientBody>,
        answers: Arc<Limiter>,
        // `None`: an HTTP/1 client's answer, streamed as it comes.
        whole: Option<usize>,
        read: Option<Read>,
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, ForwardError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(read) = this.read.as_mut() {
            return read.poll(cx, this.answers, this.whole.unwrap_or(usize::MAX));
        }
        let Poll::Ready(result) = this.sending.poll(cx) else {
            return Poll::Pending;
        };
        Poll::Ready(match result {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                let h = &parts.headers;
                if let Err(e) = framing::answer_head(
                    parts.status.as_u16(),
                    h.contains_key(header::CONTENT_LENGTH),
                    h.contains_key(header::TRANSFER_ENCODING),
                ) {
                    return Poll::Ready(Err(ForwardError::Broken(Box::new(e))));
                }
                hop::strip(&mut parts.headers);
                let Some(whole) = *this.whole else {
                    return Poll::Ready(Ok(Response::from_parts(parts, Body::stream(body))));
                };
                if body.is_end_stream() {
                    return Poll::Ready(Ok(Response::from_parts(parts, Body::empty())));
                }
                let declared = parts
                    .headers
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| content_length(v.as_bytes()));
                if declared.is_some_and(|n| n > whole as u64) {
                    return Poll::Ready(large(parts, Body::stream(body), this.answers));
                }
                let mut read = Read {
                    parts: Some(parts),
                    body: Some(body),
                    buf: BytesMut::new(),
                    first: None,
                };
                let poll = read.poll(cx, this.answers, whole);
                if poll.is_pending() {
                    *this.read = Some(read);
                }
                return poll;
            }
            Err(Failure::Learning(e)) => Err(ForwardError::Connect(Box::new(e))),
            Err(Failure::Client(e)) if e.is_connect() => Err(ForwardError::Connect(Box::new(e))),
            // The client stopped sending its body (`client_body_timeout`).
            Err(_) if this.client_body.as_ref().is_some_and(ClientBody::timed_out) => {
                Err(ForwardError::ClientTimeout)
            }
            // The client's body broke while hyper sent it: the client's fault, not Meta's.
            Err(Failure::Client(e))
                if this.client_body.as_ref().is_some_and(ClientBody::is_broken) =>
            {
                Err(ForwardError::ClientBody(Box::new(e)))
            }
            Err(Failure::Client(e)) => Err(ForwardError::Broken(Box::new(e))),
        })
    }
}
