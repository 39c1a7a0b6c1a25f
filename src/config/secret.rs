//! Secrets in the configuration: never printed, masked when the configuration is shown.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret string: never printed by `Debug`/`Display`, masked when serialized.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// Constant-time comparison (both sides hashed first, so the length does not leak either).
    pub fn matches(&self, given: &str) -> bool {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let a = Sha256::digest(given.as_bytes());
        let b = Sha256::digest(self.0.as_bytes());
        a.as_slice().ct_eq(b.as_slice()).into()
    }

    /// The secret itself; call only where it is used (compare, sign, send).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// Accepts `"x"` or `["x", "y"]` (one app secret per Meta app).
pub(super) fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Secret),
        Many(Vec<Secret>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    }
    .into_iter()
    .filter(|s| !s.expose().is_empty())
    .collect())
}

/// A URL with everything after the authority (and any user info) replaced by `***`:
/// what logs, errors and `check-config` show of a secret URL.
pub fn mask_url(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(u) => match (u.scheme_str(), u.authority()) {
            (Some(scheme), Some(a)) => {
                let host = a.as_str().rsplit('@').next().unwrap_or_default();
                format!("{scheme}://{host}/***")
            }
            _ => "***".into(),
        },
        Err(_) => "***".into(),
    }
}

pub(super) fn masked_url<S: serde::Serializer>(url: &Secret, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&mask_url(url.expose()))
}
