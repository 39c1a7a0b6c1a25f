//! The Graph id rule, once: phone numbers, WABAs, businesses and templates are named by
//! decimal digit strings of at most 32 digits.

/// A Graph id (phone number or WABA): up to 32 decimal digits, kept inline (`Copy`), so a
/// resolved send carries its ids without allocating or counting references.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GraphId {
    len: u8,
    digits: [u8; GraphId::MAX_LEN],
}

impl GraphId {
    /// The longest id accepted.
    pub const MAX_LEN: usize = 32;

    /// Whether `s` is a Graph id: 1–32 ASCII digits. Every place that checks an id from
    /// a request, a webhook, a store or the configuration asks this.
    pub fn is_valid(s: &str) -> bool {
        !s.is_empty() && s.len() <= Self::MAX_LEN && s.bytes().all(|b| b.is_ascii_digit())
    }

    /// `None` unless `s` is a Graph id ([`GraphId::is_valid`]).
    pub fn new(s: &str) -> Option<GraphId> {
        if !Self::is_valid(s) {
            return None;
        }
        let b = s.as_bytes();
        let mut digits = [0u8; Self::MAX_LEN];
        digits[..b.len()].copy_from_slice(b);
        Some(GraphId {
            len: b.len() as u8,
            digits,
        })
    }

    /// The id as text.
    #[inline]
    pub fn as_str(&self) -> &str {
        let digits = &self.digits[..self.len as usize];
        // SAFETY: `new` stores only ASCII digits (checked by `is_valid`), which are UTF-8;
        // this runs several times per send, so the check is not repeated here.
        unsafe { std::str::from_utf8_unchecked(digits) }
    }
}

/// The hasher of the maps a send looks its ids up in (the directory's configured phone
/// numbers, the open circuits' guards, the pace table): std's SipHash cost ~120–240
/// instructions per lookup, 3–6 % of a send. foldhash is seeded per process like std's;
/// the only one of these maps a request can add keys to, the pace table, is capped.
pub type IdHasher = foldhash::fast::RandomState;

/// Hashes the digits only (not the unused tail of the inline array): a send hashes its
/// ids a few times.
impl std::hash::Hash for GraphId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.digits[..self.len as usize].hash(state);
    }
}

impl std::ops::Deref for GraphId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for GraphId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for GraphId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::GraphId;

    #[test]
    fn digits_only_up_to_32() {
        assert_eq!(
            GraphId::new("106540352242922").map(|i| i.to_string()),
            Some("106540352242922".into())
        );
        for bad in ["", "12a", " 12", "1.2", "-1", &"9".repeat(33)] {
            assert!(GraphId::new(bad).is_none(), "{bad:?}");
            assert!(!GraphId::is_valid(bad), "{bad:?}");
        }
        assert!(GraphId::is_valid(&"9".repeat(32)));
    }
}
