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

/// Builds the proxy stack for `cfg` over `table`.
pub fn stack(cfg: &Config, table: Arc<Table>, client: HttpClient) -> Result<Stack, ProxyError> {
    let guard = guard::GuardLayer::new(table.clone(), cfg.mode, cfg.classify_body_limit);
    Ok(ServiceBuilder::new()
        .layer(route::RouteLayer::new(Accounts::new(&cfg.accounts)))
        .layer(guard.clone())
        .layer(limit::LimitLayer::new(cfg.upstream_concurrency))
        .layer(guard)
        .layer(classify::ClassifyLayer::new(
            table,
            cfg.trip_codes.clone(),
            cfg.classify_body_limit,
        ))
        .service(Upstream::new(cfg, client)?))
}
