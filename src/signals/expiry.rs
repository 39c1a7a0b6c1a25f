//! Expiry: a circuit with a known `until` closes when it passes (`Action::Expire`, source
//! `expiry`). With a health token, one Health Status poll confirms first: BLOCKED keeps the
//! circuit open (and the health poller, running for every open circuit, closes it later);
//! AVAILABLE, LIMITED or a failed poll let it expire — the end was announced by Meta, and a
//! token problem of ours must not keep an account from sending. An `until` set by an
//! operator is not confirmed.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use super::health::{self, HealthChecker, PollOutcome};
use crate::circuit::{Action, Change, Evidence, Source, Table};
use crate::graph::health::Verdict;

/// Longest single sleep: long waits are re-measured against the wall clock.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// Sleeps until wall-clock time `until` (at once when it has passed).
pub async fn sleep_until(until: DateTime<Utc>) {
    loop {
        let left = until - Utc::now();
        let Ok(left) = left.to_std() else {
            return;
        };
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(MAX_SLEEP)).await;
    }
}

/// Waits for `until`, confirms with one poll when `checker` is set, then expires the
/// circuit if it still holds exactly that `until`.
pub async fn expire_at(
    table: Arc<Table>,
    checker: Option<Arc<HealthChecker>>,
    waba_id: String,
    until: DateTime<Utc>,
) {
    sleep_until(until).await;
    let Some(cur) = table
        .get(&waba_id)
        .filter(|c| c.is_open() && c.until == Some(until))
    else {
        return;
    };
    // An operator's `until` is the end they chose: no confirmation (nor for a phone
    // number's circuit: there is no WABA to ask about).
    let checker = checker.filter(|_| {
        cur.source != Source::Admin
            && cur.phone_number_id.is_none()
            && cur.template.is_none()
            && cur.country.is_none()
            && !cur.is_hold()
    });
    let until_s = until.to_rfc3339_opts(SecondsFormat::Secs, true);
    let mut reason = format!("restriction ended at {until_s}");
    if let Some(checker) = checker {
        match checker.check(&waba_id).await {
            PollOutcome::Status {
                verdict: verdict @ Verdict::Blocked { .. },
                raw,
            } => {
                tracing::warn!(
                    waba_id,
                    until = %until_s,
                    health = %verdict.summary(),
                    "restriction end passed but Health Status says BLOCKED: the circuit stays open; polling continues"
                );
                health::record(&table, &waba_id, &verdict, raw);
                return;
            }
            PollOutcome::Status { verdict, .. } => {
                reason = format!("{reason}; confirmed by {}", verdict.summary());
            }
            PollOutcome::AuthError(e) | PollOutcome::Error(e) => {
                tracing::warn!(waba_id, error = %e, "could not confirm the restriction's end with a health poll; expiring on the known end");
                reason = format!("{reason} (health poll failed)");
            }
        }
    }
    table.apply(Change {
        waba_id: cur.waba_id.clone(),
        phone_number_id: cur.phone_number_id.clone(),
        template: cur.template.clone(),
        country: cur.country.clone(),
        recipient: cur.recipient.clone(),
        action: Action::Expire { until },
        source: Source::Expiry,
        at: Utc::now(),
        reason,
        evidence: Some(Evidence::Expiry { until }),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::Scope;

    #[tokio::test]
    async fn expires_without_a_token() {
        let table = Arc::new(Table::new("t", 20));
        let until = Utc::now() + chrono::Duration::milliseconds(100);
        table.apply(crate::circuit::testing::open(
            "1",
            Scope::BusinessInitiated,
            Some(until),
            Source::Webhook,
        ));
        let start = std::time::Instant::now();
        expire_at(table.clone(), None, "1".into(), until).await;
        assert!(start.elapsed() >= Duration::from_millis(80));
        let c = table.get("1").unwrap();
        assert!(!c.is_open());
        assert_eq!(c.source, Source::Expiry);
        assert!(c.reason.starts_with("restriction ended at "));
    }

    #[tokio::test]
    async fn a_changed_until_is_left_alone() {
        let table = Arc::new(Table::new("t", 20));
        let later = Utc::now() + chrono::Duration::hours(1);
        table.apply(Change {
            waba_id: "1".into(),
            phone_number_id: None,
            template: None,
            country: None,
            recipient: None,
            action: Action::Open {
                scope: Scope::AllSends,
                code: None,
                until: Some(later),
            },
            source: Source::Webhook,
            at: Utc::now(),
            reason: "restricted".into(),
            evidence: None,
        });
        expire_at(table.clone(), None, "1".into(), Utc::now()).await;
        assert!(table.get("1").unwrap().is_open());
    }
}
