//! Per-WABA circuits: the model, the transition rules and the table.

mod model;
mod order;
mod table;

pub use model::{Circuit, Evidence, Scope, Source, State, Transition};
pub use order::{decide, newer, Action, Change, Outcome};
pub use table::{Notice, OpenGuard, Origin, Table};
