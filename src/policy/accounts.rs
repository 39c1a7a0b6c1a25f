//! Resolve: phone-number id → WABA, from `[[accounts]]`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Account;

/// phone-number id → WABA id. Immutable after start; cloning shares the map.
#[derive(Clone, Debug, Default)]
pub struct Accounts {
    by_phone: Arc<HashMap<Box<str>, Resolved>>,
}

/// A phone number and the WABA it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The phone-number id.
    pub phone: Arc<str>,
    /// Its WABA.
    pub waba: Arc<str>,
}

impl Accounts {
    /// Builds the map (ids were validated with the config).
    pub fn new(accounts: &[Account]) -> Accounts {
        let mut by_phone = HashMap::new();
        for a in accounts {
            let waba: Arc<str> = Arc::from(a.waba_id.as_str());
            for p in &a.phone_number_ids {
                by_phone.insert(
                    Box::from(p.as_str()),
                    Resolved {
                        phone: Arc::from(p.as_str()),
                        waba: waba.clone(),
                    },
                );
            }
        }
        Accounts {
            by_phone: Arc::new(by_phone),
        }
    }

    /// The WABA of a phone-number id.
    #[inline]
    pub fn resolve(&self, phone: &str) -> Option<&Resolved> {
        self.by_phone.get(phone)
    }

    /// How many phone numbers are mapped.
    pub fn len(&self) -> usize {
        self.by_phone.len()
    }

    /// True when no phone number is mapped.
    pub fn is_empty(&self) -> bool {
        self.by_phone.is_empty()
    }
}
