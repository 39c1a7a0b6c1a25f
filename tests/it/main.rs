//! Every integration test of the gateway in one binary, so the test support (the fake Cloud
//! API, the gateway and redis-server launchers, the raw HTTP tools) is compiled and linked
//! once: one module per capability. Behaviour tests run once per engine
//! (`proxy::relay::…`, `proxy::hyper::…`; see `support::engine`).
//!
//! Run one capability with `cargo test --release --test it proxy::` (or any name filter).

#[macro_use]
mod support;
mod browser_util;
mod signals_util;

mod admin;
mod bounds;
mod classify;
mod cli;
mod console;
mod country;
mod discovery;
mod durability;
mod edges;
mod framing_props;
mod h2_bounds;
mod h2_upstream;
mod health_fleet;
mod instruction_budget;
mod levels;
mod marketing;
mod notify;
mod observability;
mod overload;
mod pair_holds;
mod proxy;
mod relay;
mod shaping;
mod signals_codes;
mod signals_expiry;
mod signals_health;
mod signals_webhook;
mod simulate;
mod store_embedded;
mod store_redis;
mod store_redis_sentinel;
mod store_redis_tls;
mod support_selftest;
mod throughput;
mod walkthrough;
mod warnings;
