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
//!
//! Over HTTP/2, a stream the server did not process (refused, or above its GOAWAY: the
//! rule both engines follow, [`crate::upstream::http2::unprocessed`]) is sent again, at most
//! [`MAX_UNPROCESSED`] times, when the request's body is held whole. Every body up to
//! [`crate::policy::Policy::read_first_limit`] (64 KiB, the relay's own limit, or
//! `classify_body_limit` when larger) is read before the permit, and the relay hands larger
//! ones to this engine, so both engines send the same requests again; a larger body
//! streams, and such a stream is the gateway's 502. The same body goes to the HTTP/1.1
//! client when the HTTP/2 client's connection it was to go over selected HTTP/1.1 (the
//! upstream changed; nothing was written:
//! [`NoLongerH2`](crate::upstream::alpn::NoLongerH2)), as the relay sends it over that
//! connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::uri::{Authority, Scheme};
use http::{header, HeaderMap, Method, Request, Response, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::client::legacy;
use pin_project_lite::pin_project;
use tower::Service;

use super::body::{Body, ClientBody};
use crate::policy::framing::content_length;
use crate::policy::{framing, hop, ForwardError};
use crate::upstream::alpn::{Clients, LearnFailed, Route, Wait};
use crate::upstream::http2::{unprocessed, MAX_UNPROCESSED};
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
        Route::H1 => Sending::Sent(clients.h1.request(req), None),
        Route::H2 => {
            let again = Again::of(clients, &req);
            Sending::Sent(clients.h2.request(req), again)
        }
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
    /// On its way; over HTTP/2 with what it takes to send it again.
    Sent(legacy::ResponseFuture, Option<Box<Again>>),
    /// The learning connection it waited for failed (`None` once reported).
    Failed(Option<LearnFailed>),
}

struct Waiting {
    clients: Arc<Clients>,
    req: Request<Body>,
    wait: Wait,
}

/// A request sent over HTTP/2 whose body is held whole: what it takes to send it again.
/// Boxed, and made only on that path: the HTTP/1.1 path copies nothing.
struct Again {
    clients: Arc<Clients>,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    /// Times it may still be sent again.
    left: usize,
}

impl Again {
    /// `None` when `req`'s body streams (it cannot be sent twice).
    fn of(clients: &Arc<Clients>, req: &Request<Body>) -> Option<Box<Again>> {
        let body = req.body().whole()?;
        Some(Box::new(Again {
            clients: clients.clone(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            body,
            left: MAX_UNPROCESSED,
        }))
    }

    /// The request again.
    fn request(&self) -> Request<Body> {
        let mut req = Request::new(Body::full(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// The first error of type `T` in a client failure's cause chain.
fn cause<T: std::error::Error + 'static>(e: &legacy::Error) -> Option<&T> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(t) = c.downcast_ref::<T>() {
            return Some(t);
        }
        cause = c.source();
    }
    None
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
                Sending::Sent(f, again) => {
                    let r = ready!(Pin::new(&mut *f).poll(cx));
                    if let (Err(e), Some(a)) = (&r, again.as_deref_mut()) {
                        if a.left > 0 && cause::<h2::Error>(e).is_some_and(unprocessed) {
                            let error = crate::common::error_chain(e);
                            tracing::debug!(%error, "upstream did not process a stream: sent again");
                            a.left -= 1;
                            *f = a.clients.h2.request(a.request());
                            continue;
                        }
                        // The connection it was to go over, or waited for, selected
                        // HTTP/1.1 (a connect error: nothing was written).
                        if e.is_connect() && a.clients.learner.speaks_http1() {
                            tracing::debug!("the upstream selected HTTP/1.1: sent over it");
                            *f = a.clients.h1.request(a.request());
                            // HTTP/1.1 sends nothing again.
                            *again = None;
                            continue;
                        }
                    }
                    return Poll::Ready(r.map_err(Failure::Client));
                }
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
