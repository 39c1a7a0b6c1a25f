//! The hot path, as a tower stack:
//! route → guard → limit → guard (again, after any wait) → classify → upstream.
//! The limit's permit is held until the classifier has decided, so a queued send
//! never slips out between an upstream 368 and the trip it causes.

pub mod body;
pub mod classify;
pub mod error;
pub mod guard;
pub mod limit;
pub mod route;
pub mod upstream;

use std::sync::Arc;

use tower::ServiceBuilder;

use crate::circuit::Table;
use crate::config::Config;
pub use body::Body;
pub use error::ProxyError;
pub use route::Accounts;
pub use upstream::{client, HttpClient, Upstream};

/// The assembled proxy service.
pub type Stack = route::RouteService<
    guard::Guard<limit::Limit<guard::Guard<classify::Classify<upstream::Upstream>>>>,
>;

/// What every worker's stack shares: the account map and the upstream limit.
#[derive(Clone)]
pub struct Shared {
    accounts: Accounts,
    limit: limit::LimitLayer,
}

impl Shared {
    /// Built once per process from `cfg`.
    pub fn new(cfg: &Config) -> Shared {
        Shared {
            accounts: Accounts::new(&cfg.accounts),
            limit: limit::LimitLayer::new(cfg.upstream_concurrency),
        }
    }

    /// phone-number id → WABA.
    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// The upstream concurrency limit.
    pub fn limiter(&self) -> &'static limit::Limiter {
        self.limit.limiter()
    }
}

/// Builds a proxy stack for `cfg` over `table` (one per worker thread; `shared` is common).
pub fn stack(
    cfg: &Config,
    table: Arc<Table>,
    client: HttpClient,
    shared: &Shared,
) -> Result<Stack, ProxyError> {
    let guard = guard::GuardLayer::new(table.clone(), cfg.mode, cfg.classify_body_limit);
    Ok(ServiceBuilder::new()
        .layer(route::RouteLayer::new(shared.accounts.clone()))
        .layer(guard.clone())
        .layer(shared.limit.clone())
        .layer(guard)
        .layer(classify::ClassifyLayer::new(
            table,
            cfg.trip_codes.clone(),
            cfg.classify_body_limit,
        ))
        .service(Upstream::new(cfg, client)?))
}
