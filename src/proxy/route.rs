//! What the route step ([`crate::policy::Policy::route`], asked once per request by the
//! [`super::Edge`]) found, kept with the request as a [`Target`] extension for the layers.

use http::Request;

use crate::policy::Call;

/// The routed call of a request.
#[derive(Clone, Copy, Debug)]
pub struct Target(pub Call);

impl Target {
    /// The call of a request (one without a target is a read: nothing to guard).
    pub fn of<B>(req: &Request<B>) -> Call {
        req.extensions().get::<Target>().map_or(Call::READ, |t| t.0)
    }
}
