//! The main listener's hyper service and the hyper engine's route step: asks
//! [`Policy::route`] once per request; the webhook path goes to the receiver, every Graph
//! call to the proxy stack with its [`Target`]. A failed forward becomes the Cloud API
//! envelope here, once.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower::ServiceExt;

use super::route::Target;
use super::{render, Body, Stack};
use crate::policy::exchange::client_timed_out;
use crate::policy::{Policy, Reply, Route};
use crate::signals::webhook::Webhook;

/// See module docs.
#[derive(Clone)]
pub struct Edge {
    policy: Arc<Policy>,
    proxy: Stack,
    webhook: Arc<Webhook>,
    /// `client_body_timeout`: the longest wait for the next bytes of a request body.
    body_timeout: Duration,
}

impl Edge {
    /// Dispatches between `proxy` and `webhook` by [`Policy::route`].
    pub fn new(
        policy: Arc<Policy>,
        proxy: Stack,
        webhook: Arc<Webhook>,
        body_timeout: Duration,
    ) -> Edge {
        Edge {
            policy,
            proxy,
            webhook,
            body_timeout,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// The proxy's answer (a failed forward rendered as [`Reply::forward_failed`]), or the
    /// webhook receiver's.
    #[project = EdgeProj]
    pub enum EdgeFuture {
        Proxy { #[pin] fut: Oneshot<Stack, Request<Body>> },
        Webhook { fut: BoxFuture<Response<Body>> },
        /// An answer made at the edge (a malformed request).
        Ready { resp: Option<Response<Body>> },
    }
}

impl Future for EdgeFuture {
    type Output = Result<Response<Body>, Infallible>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            EdgeProj::Proxy { fut } => Poll::Ready(Ok(match ready!(fut.poll(cx)) {
                Ok(resp) => resp,
                // Recorded by the exchange step it happened in; rendered here, once.
                Err(e) => render(&Reply::forward_failed(&e)),
            })),
            EdgeProj::Webhook { fut } => fut.as_mut().poll(cx).map(Ok),
            EdgeProj::Ready { resp } => Poll::Ready(Ok(resp.take().unwrap_or_default())),
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for Edge {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = EdgeFuture;

    fn call(&self, req: Request<Incoming>) -> EdgeFuture {
        let hosts = req.headers().get_all(http::header::HOST).iter().count();
        let host_bad = match req.version() {
            http::Version::HTTP_11 => !crate::policy::hop::host_ok(hosts),
            http::Version::HTTP_10 | http::Version::HTTP_09 => hosts > 1,
            _ => false, // HTTP/2: `:authority`
        };
        if host_bad {
            tracing::debug!(hosts, "request refused: it needs exactly one Host header");
            let resp = render(&Reply::bad_request(
                "An HTTP/1.1 request needs exactly one Host header.",
            ));
            return EdgeFuture::Ready { resp: Some(resp) };
        }
        let target = match self.policy.route(req.method(), req.uri().path()) {
            Route::Webhook => {
                let wh = self.webhook.clone();
                let broken = super::body::ClientBody::default();
                let req = req.map(|b| Body::client(b, broken.clone(), Some(self.body_timeout)));
                return EdgeFuture::Webhook {
                    fut: Box::pin(async move {
                        let resp = wh.handle(req).await;
                        if broken.timed_out() {
                            return render(&client_timed_out());
                        }
                        resp
                    }),
                };
            }
            Route::Graph(call) => {
                self.policy.discover(call, || {
                    req.headers()
                        .get(http::header::AUTHORIZATION)
                        .map(|v| v.as_bytes())
                });
                Target(call)
            }
        };
        let broken = super::body::ClientBody::default();
        let mut req = req.map(|b| Body::client(b, broken.clone(), Some(self.body_timeout)));
        req.extensions_mut().insert(target);
        req.extensions_mut().insert(broken);
        EdgeFuture::Proxy {
            fut: self.proxy.clone().oneshot(req),
        }
    }
}
