//! Forward: the innermost service. Sends the request to the upstream unchanged but for the
//! hop-by-hop rule ([`crate::policy::hop`]) and `Host`, over the worker's pooled client
//! (HTTP/1.1, or HTTP/2 by ALPN over TLS); refuses an answer head the framing rule refuses
//! ([`crate::policy::framing::answer_head`]). The deadline is the classify layer's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::{Authority, Scheme};
use http::{header, Request, Response, Uri};
use hyper_util::client::legacy;
use pin_project_lite::pin_project;
use tower::Service;

use super::body::{Body, ClientBody};
use crate::policy::{framing, hop, ForwardError};
use crate::upstream::{HttpClient, Target};

/// See module docs.
#[derive(Clone)]
pub struct Forward {
    // Behind an Arc: the stack is cloned per request, and a client clone is a dozen Arcs.
    client: Arc<HttpClient>,
    scheme: Scheme,
    authority: Authority,
}

impl Forward {
    /// A forwarder to `target` over `client`.
    pub fn new(target: &Target, client: HttpClient) -> Forward {
        Forward {
            client: Arc::new(client),
            scheme: target.scheme.clone(),
            authority: target.authority.clone(),
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
        }
    }
}

pin_project! {
    /// The upstream answer's head, or why there is none.
    pub struct ResponseFuture {
        #[pin]
        inner: legacy::ResponseFuture,
        client_body: Option<ClientBody>,
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, ForwardError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Poll::Ready(result) = this.inner.poll(cx) else {
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
