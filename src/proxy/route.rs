//! Route + resolve: find the Graph node, classify the call, map a phone-number id to its WABA.
//! The result rides along as a request extension, [`Target`].

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use crate::config::Account;
use crate::graph::route::{self, Kind};

/// phone-number id → WABA id, from `[[accounts]]`. Immutable after start.
#[derive(Clone, Debug, Default)]
pub struct Accounts {
    by_phone: Arc<HashMap<Box<str>, Resolved>>,
}

/// A resolved phone number.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The phone-number id.
    pub phone: Arc<str>,
    /// Its WABA.
    pub waba: Arc<str>,
}

impl Accounts {
    /// Builds the map (ids were validated with the config).
    pub fn new(accounts: &[Account]) -> Accounts {
        let mut by_phone = HashMap::new();
        for a in accounts {
            let waba: Arc<str> = Arc::from(a.waba_id.as_str());
            for p in &a.phone_number_ids {
                by_phone.insert(
                    Box::from(p.as_str()),
                    Resolved {
                        phone: Arc::from(p.as_str()),
                        waba: waba.clone(),
                    },
                );
            }
        }
        Accounts {
            by_phone: Arc::new(by_phone),
        }
    }

    /// The WABA of a phone-number id.
    #[inline]
    pub fn resolve(&self, phone: &str) -> Option<&Resolved> {
        self.by_phone.get(phone)
    }
}

/// What the route stage learned about a request.
#[derive(Clone, Debug)]
pub struct Target {
    /// Send, other write, or read.
    pub kind: Kind,
    /// The phone number and its WABA, when the node is a configured phone number.
    pub resolved: Option<Resolved>,
}

impl Target {
    /// The WABA, when known.
    pub fn waba(&self) -> Option<&str> {
        self.resolved.as_ref().map(|r| &*r.waba)
    }
}

/// Adds [`Target`] to every request.
#[derive(Clone)]
pub struct RouteLayer {
    accounts: Accounts,
}

impl RouteLayer {
    /// A route layer over these accounts.
    pub fn new(accounts: Accounts) -> Self {
        RouteLayer { accounts }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = RouteService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RouteService {
            inner,
            accounts: self.accounts.clone(),
        }
    }
}

/// See [`RouteLayer`].
#[derive(Clone)]
pub struct RouteService<S> {
    inner: S,
    accounts: Accounts,
}

impl<S, B> Service<Request<B>> for RouteService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let target = match route::parse(req.method(), req.uri().path()) {
            Some(r) => Target {
                kind: r.kind,
                resolved: self.accounts.resolve(r.node).cloned(),
            },
            None => Target {
                kind: Kind::Read,
                resolved: None,
            },
        };
        req.extensions_mut().insert(target);
        self.inner.call(req)
    }
}
