//! Circuits: the model ([`Circuit`]: a WABA's, a phone number's, a template's or a WABA's
//! sends to one country ([`country`])), the
//! ordering rule that decides every change ([`decide`], [`newer`]), the phone → WABA
//! directory, template circuits' mechanics ([`template`]), the guard a send reads
//! ([`OpenGuard`], with its local answer prebuilt) and the table that holds them all.

mod calling_codes;
pub mod cooldown;
pub mod country;
pub mod directory;
mod guard;
mod model;
mod order;
pub mod pair;
mod table;
pub mod template;

pub use directory::{Directory, Mapping, MappingSource, Resolved};
pub use guard::{local_body, local_trace_id, OpenGuard};
pub use model::{key, PHONE_KEY_PREFIX};
pub use model::{Circuit, Evidence, Scope, Source, State, Transition, Warning, WarningKind};
pub use order::{decide, newer, Action, Change, Outcome};
pub use table::{Limits, MappingNotice, Notice, Origin, Table, Waiter};
pub use template::TemplateRef;

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
            country: None,
            recipient: None,
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
