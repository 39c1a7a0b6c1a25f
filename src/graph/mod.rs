//! What the gateway knows about Meta's Graph API. Pure: no I/O here.

pub mod envelope;
pub mod health;
pub mod id;

pub mod route;
pub mod throughput;
pub mod webhook;

pub use id::{GraphId, IdHasher};
pub mod codes;
