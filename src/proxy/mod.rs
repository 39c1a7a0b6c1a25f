//! Engine 2: the hyper + tower stack (every request when `fast_path = false`; what the relay
//! hands over otherwise). Thin layers, each calling the policy core ([`crate::policy`]):
//!
//! (route, in [`edge`]) → guard → limit → guard (again, after any wait) → classify → forward.
//!
//! The limit's permit is held until the classifier has decided, so a queued send never
//! slips out between an upstream 368 and the trip it causes. [`edge`] is the main
//! listener's hyper service: the webhook path or this stack, and the one conversion of a
//! failed forward into the Cloud API envelope.

pub mod classify;
pub mod edge;
pub mod forward;
pub mod guard;
pub mod limit;
pub mod route;

use std::sync::Arc;

use tower::ServiceBuilder;

pub use crate::common::body::{self, Body};
use crate::policy::Policy;
use crate::upstream::{HttpClient, Limiter, Target};
pub use edge::Edge;

/// Marks a response the gateway made itself (the classifier skips it).
#[derive(Clone, Copy, Debug)]
pub struct LocalReply;

/// The assembled proxy service (requests carry their [`route::Target`]).
pub type Stack = guard::Guard<limit::Limit<guard::Guard<classify::Classify<forward::Forward>>>>;

/// Builds a worker's stack over `policy`, counting against `limiter` (shared with the
/// relay), forwarding with `client` (one per worker: its own pool).
pub fn stack(
    policy: Arc<Policy>,
    limiter: Arc<Limiter>,
    target: &Target,
    client: HttpClient,
) -> Stack {
    let guard = guard::GuardLayer::new(policy.clone());
    ServiceBuilder::new()
        .layer(guard.clone())
        .layer(limit::LimitLayer::new(limiter))
        .layer(guard)
        .layer(classify::ClassifyLayer::new(policy).deadline(target.request_timeout))
        .service(forward::Forward::new(target, client))
}
