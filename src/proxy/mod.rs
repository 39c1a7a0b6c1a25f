//! Engine 2: the hyper + tower stack (every request when `fast_path = false`; what the relay
//! hands over otherwise). Thin layers, each taking one step of the exchange the policy core
//! defines ([`crate::policy::exchange`]), in its order:
//!
//! (route, in [`edge`]) → [`guard`] → [`pace`] (the phone number's pace, and the guard again
//! after a wait) → [`limit`] (the upstream permit, and the guard again)
//! → [`classify`] (the answer's head and error body by the deadline, judged, settled) →
//! [`forward`].
//!
//! Each layer hands the next an [`Exchanging`] request carrying the state its step produced,
//! and each layer's inner service must accept the state the layer makes: the stack cannot be
//! assembled in another order. [`edge`] is the main listener's hyper service: the webhook
//! path or this stack, and the one place a failure becomes an answer ([`render`]).

pub mod classify;
pub mod edge;
pub mod forward;
pub mod guard;
pub mod limit;
pub mod pace;
pub mod route;
mod step;

use std::sync::Arc;

use http::{header, HeaderValue, Request, Response};
use tower::ServiceBuilder;

pub use crate::common::body::{self, Body};
use crate::policy::reply::MARKER;
use crate::policy::{Policy, Reply};
use crate::upstream::alpn::Clients;
use crate::upstream::{Limits, Target};
pub use edge::Edge;

/// A request on its way down the stack, with the exchange state the layer above left it in.
pub struct Exchanging<S> {
    /// The request.
    pub req: Request<Body>,
    /// Its exchange state ([`crate::policy::exchange`]).
    pub state: S,
}

/// The assembled proxy service (requests carry their [`route::Target`]).
pub type Stack = guard::Guard<pace::Pace<limit::Limit<classify::Classify<forward::Forward>>>>;

/// Builds a worker's stack over `policy`, counting against `limits` (the `ready` budget
/// shared with the relay), forwarding with `clients` (one set per worker: its own pools).
pub fn stack(policy: Arc<Policy>, limits: Limits, target: &Target, clients: Clients) -> Stack {
    let (answers, whole) = (limits.answers.clone(), policy.read_first_limit());
    ServiceBuilder::new()
        .layer(guard::GuardLayer::new(policy.clone()))
        .layer(pace::PaceLayer::new(policy.clone()))
        .layer(limit::LimitLayer::new(policy.clone(), limits))
        .layer(classify::ClassifyLayer::new(policy))
        .service(forward::Forward::new(target, clients, answers, whole))
}

/// The hyper engine's rendering of a gateway-made answer (hyper adds `content-length` and
/// `date`): the relay's is `relay::render`, and a test keeps the two the same.
pub fn render(reply: &Reply<'_>) -> Response<Body> {
    let mut resp = Response::new(Body::full(reply.body_bytes()));
    *resp.status_mut() = reply.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(MARKER, HeaderValue::from_static(reply.marker()));
    if let Some(secs) = reply.retry_after() {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if reply.close() {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Test helpers for the layers.
#[cfg(test)]
pub(crate) mod testing {
    use crate::policy::testing::PHONE;
    use crate::policy::{Policy, Route};

    /// A request for `PHONE`'s `edge`, with its routed target.
    pub fn request<B>(p: &Policy, method: http::Method, edge: &str, body: B) -> http::Request<B> {
        let path = format!("/v21.0/{PHONE}/{edge}");
        let Route::Graph(call) = p.route(&method, &path) else {
            panic!("{path} is the webhook path")
        };
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .body(body)
            .unwrap_or_else(|e| panic!("{e}"));
        req.extensions_mut().insert(super::route::Target(call));
        req
    }
}
