//! What the route step ([`crate::policy::Policy::route`], asked once per request by the
//! [`super::Edge`]) found, kept with the request as a [`Target`] extension for the layers.

use http::Request;

use crate::graph::route::Kind;
use crate::policy::{Call, Resolved};

/// What the route step learned about a request (an owned [`Call`]).
#[derive(Clone, Debug)]
pub struct Target {
    /// Send, other write, or read.
    pub kind: Kind,
    /// The phone number and its WABA, when the node is a known phone number.
    pub account: Option<Resolved>,
}

impl Target {
    /// As the policy takes it.
    pub fn call(&self) -> Call<'_> {
        Call {
            kind: self.kind,
            account: self.account.as_ref(),
        }
    }

    /// For a routed call.
    pub fn new(call: Call<'_>) -> Target {
        Target {
            kind: call.kind,
            account: call.account.cloned(),
        }
    }

    /// The call of a request (one without a target is a read: nothing to guard).
    pub fn of<B>(req: &Request<B>) -> Call<'_> {
        match req.extensions().get::<Target>() {
            Some(t) => t.call(),
            None => Call {
                kind: Kind::Read,
                account: None,
            },
        }
    }
}
