//! Per-WABA circuits: the model, the transition rules and the table.

pub mod directory;
mod model;
mod order;
mod table;

pub use directory::{Directory, Mapping, MappingSource, Resolved};
pub use model::{key, template_key, PHONE_KEY_PREFIX, TEMPLATE_KEY_PREFIX};
pub use model::{Circuit, Evidence, Scope, Source, State, TemplateRef, Transition};
pub use order::{decide, newer, Action, Change, Outcome};
pub use table::{Limits, MappingNotice, Notice, OpenGuard, Origin, Table};

/// Test helpers shared by the crate's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use chrono::{DateTime, Utc};

    use super::{Action, Change, Scope, Source};

    /// A change that opens `waba_id` now.
    pub fn open(
        waba_id: &str,
        scope: Scope,
        until: Option<DateTime<Utc>>,
        source: Source,
    ) -> Change {
        Change {
            waba_id: waba_id.into(),
            phone_number_id: None,
            template: None,
            action: Action::Open {
                scope,
                code: Some(368),
                until,
            },
            source,
            at: Utc::now(),
            reason: "restricted".into(),
            evidence: None,
        }
    }
}
