//! Phone → WABA learning, as the table applies it: a mapping learned here (a webhook, a
//! Health Status read, discovery) or set by an operator is recorded by the directory's
//! precedence rules ([`crate::circuit::Directory`]), announced to the stores, and a phone
//! number's open circuit widens to the WABA now known to own it. Merges from other replicas
//! and the store come through here too.

use chrono::Utc;
use tokio::sync::mpsc;

use super::{MappingNotice, Origin, Table};
use crate::circuit::directory::{Mapping, Set};
use crate::circuit::order::{Action, Change};
use crate::metrics::METRICS;

impl Table {
    /// Registers a listener for every phone → WABA mapping change (stores).
    pub fn subscribe_mappings(&self) -> mpsc::UnboundedReceiver<MappingNotice> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut l) = self.mapping_listeners.write() {
            l.push(tx);
        }
        rx
    }

    /// Records a phone → WABA mapping made here (learned, or an operator's) by the
    /// directory's precedence rules; returns its sequence number (see
    /// [`Table::wait_durable`]) when it changed anything. A phone number's open circuit
    /// widens to the WABA now known to own it.
    pub fn learn(&self, mut m: Mapping) -> Option<u64> {
        m.origin = self.origin.clone();
        self.set_mapping(m, Origin::Local)
    }

    /// Merges a mapping from another replica or a store: kept only if newer.
    pub fn merge_mapping(&self, m: Mapping) -> bool {
        self.set_mapping(m, Origin::Remote).is_some()
    }

    fn set_mapping(&self, m: Mapping, origin: Origin) -> Option<u64> {
        let phone = m.phone_number_id.clone();
        let moved = match self.directory.set(m.clone(), origin == Origin::Remote) {
            Set::Recorded { moved } => moved,
            Set::Unchanged => return None,
        };
        let seq = self.notify_mapping(&m, origin, false);
        for gone in self.directory.take_evicted() {
            self.notify_mapping(&gone, Origin::Local, true);
        }
        if moved {
            if let Some(r) = self.directory.resolve(&phone) {
                self.widen(&phone, &r.waba);
            }
        }
        Some(seq)
    }

    pub(super) fn notify_mapping(&self, m: &Mapping, origin: Origin, removed: bool) -> u64 {
        let seq = self.next_seq();
        let (configured, learned) = self.directory.counts();
        METRICS
            .phone_numbers_known
            .with_label_values(&["configured"])
            .set(configured as i64);
        METRICS
            .phone_numbers_known
            .with_label_values(&["learned"])
            .set(learned as i64);
        if let Ok(listeners) = self.mapping_listeners.read() {
            for l in listeners.iter() {
                let _ = l.send(MappingNotice {
                    mapping: m.clone(),
                    origin,
                    seq,
                    removed,
                });
            }
        }
        seq
    }

    /// A phone number's circuit, opened by an account-level code while its WABA was not
    /// known, widens to that WABA: the WABA opens with the same scope, code and end, the
    /// phone number's circuit closes (every phone of the WABA is then answered locally).
    pub(super) fn widen(&self, phone: &str, waba: &str) {
        let Some(pc) = self.get(&crate::circuit::key("", Some(phone))) else {
            return;
        };
        if !pc.is_open()
            || !pc.waba_id.is_empty()
            || !pc
                .code
                .is_some_and(|c| self.limits.widen_codes.contains(&c))
        {
            return;
        }
        let evidence = pc.last_opening().and_then(|t| t.evidence.clone());
        tracing::warn!(
            phone_number_id = phone,
            waba_id = waba,
            "phone number's circuit widened to its WABA, now known: every phone of the WABA is answered locally"
        );
        self.apply(Change {
            waba_id: waba.to_string(),
            phone_number_id: None,
            template: None,
            country: None,
            recipient: None,
            action: Action::Open {
                scope: pc.scope,
                code: pc.code,
                until: pc.until,
            },
            source: pc.source,
            at: Utc::now(),
            reason: format!("widened from phone number {phone}: {}", pc.reason),
            evidence,
        });
        self.apply(Change {
            waba_id: String::new(),
            phone_number_id: Some(phone.to_string()),
            template: None,
            country: None,
            recipient: None,
            action: Action::Close,
            source: pc.source,
            at: Utc::now(),
            reason: format!("widened to WhatsApp Business Account {waba}"),
            evidence: None,
        });
    }
}
