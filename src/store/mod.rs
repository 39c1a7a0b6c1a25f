//! Persistence behind the circuit table: an embedded store on disk (single instance) and
//! Redis keys + pub/sub (several replicas). Nothing here is on the hot path: the table
//! notifies the store of changes, and the store feeds remote changes back through `Table::merge`.

use std::sync::Arc;

use crate::circuit::Table;
use crate::config::Config;

/// Why state could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded store is unreadable.
    #[error("state store {path}: {msg}")]
    Corrupt { path: String, msg: String },
}

/// The running store tasks.
pub struct StoreHandle {}

impl StoreHandle {
    /// Flushes pending writes before exit.
    pub async fn shutdown(self) {}
}

/// Loads state into `table` (before the listeners accept traffic) and starts the writers.
pub async fn start(_cfg: &Config, table: Arc<Table>) -> Result<StoreHandle, StoreError> {
    // Placeholder until the embedded store lands: everything counts as durable at once.
    let mut rx = table.subscribe();
    tokio::spawn(async move {
        while let Some(n) = rx.recv().await {
            table.mark_durable(n.seq);
        }
    });
    Ok(StoreHandle {})
}
