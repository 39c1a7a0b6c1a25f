//! Forward: the innermost service. Sends the request to the upstream unchanged but for the
//! hop-by-hop rule ([`crate::policy::hop`]) and `Host`, over the worker's pooled client
//! (HTTP/1.1, or HTTP/2 by ALPN over TLS), with `request_timeout` on the answer's head.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{header, Request, Response, Uri};
use hyper_util::client::legacy;
use pin_project_lite::pin_project;
use tower::Service;

use crate::common::body::{Body, ClientBody};
use crate::policy::hop;
use crate::relay::h1;
use crate::upstream::{ForwardError, HttpClient, Target};

/// See module docs.
#[derive(Clone)]
pub struct Forward {
    // Behind an Arc: the stack is cloned per request, and a client clone is a dozen Arcs.
    client: Arc<HttpClient>,
    scheme: Scheme,
    authority: Authority,
    timeout: Duration,
}

impl Forward {
    /// A forwarder to `target` over `client`.
    pub fn new(target: &Target, client: HttpClient) -> Forward {
        Forward {
            client: Arc::new(client),
            scheme: target.scheme.clone(),
            authority: target.authority.clone(),
            timeout: target.request_timeout,
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
        ResponseFuture {
            client_body,
            inner: self.client.request(Request::from_parts(parts, body)),
            sleep: tokio::time::sleep(self.timeout),
            timeout: self.timeout,
        }
    }
}

pin_project! {
    /// The upstream answer's head, or why there is none.
    pub struct ResponseFuture {
        #[pin]
        inner: legacy::ResponseFuture,
        #[pin]
        sleep: tokio::time::Sleep,
        timeout: Duration,
        client_body: Option<ClientBody>,
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, ForwardError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.inner.poll(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => {
                if this.sleep.poll(cx).is_ready() {
                    return Poll::Ready(Err(ForwardError::Timeout(*this.timeout)));
                }
                return Poll::Pending;
            }
        };
        Poll::Ready(match result {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                let h = &parts.headers;
                let framing = if h1::ambiguous_framing(
                    h.contains_key(header::CONTENT_LENGTH),
                    h.contains_key(header::TRANSFER_ENCODING),
                ) {
                    Err(h1::BadResponse::Framing)
                } else {
                    h1::final_status(parts.status.as_u16())
                };
                if let Err(e) = framing {
                    return Poll::Ready(Err(ForwardError::Broken(Box::new(e))));
                }
                hop::strip(&mut parts.headers);
                Ok(Response::from_parts(parts, Body::stream(body)))
            }
            Err(e) if e.is_connect() => Err(ForwardError::Connect(Box::new(e))),
            // The client stopped sending its body (`client_body_timeout`).
            Err(_) if this.client_body.as_ref().is_some_and(ClientBody::timed_out) => {
                Err(ForwardError::ClientTimeout)
            }
            // The client's body broke while hyper sent it: the client's fault, not Meta's.
            Err(e) if this.client_body.as_ref().is_some_and(ClientBody::is_broken) => {
                Err(ForwardError::ClientBody(Box::new(e)))
            }
            Err(e) => Err(ForwardError::Broken(Box::new(e))),
        })
    }
}
