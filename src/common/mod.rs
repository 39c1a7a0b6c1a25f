//! Plumbing the I/O modules share, owned by none of them: the HTTP body type of the hyper
//! engine and the gateway's own HTTP calls ([`body`]), boxed errors and their log line
//! ([`error`]), and the retry delay ([`backoff`]). Nothing here decides anything.

pub mod backoff;
pub mod body;
pub mod error;

pub use body::Body;
pub use error::{error_chain, BoxError};
