//! Country circuits, the mechanics: a recipient's country as its E.164 country calling code
//! ([`calling_code`]), a country circuit's key, and what the hot path reads (the open ones
//! are indexed by WABA in the same kind of index as template circuits,
//! [`super::template::TemplateIndex`]). When one opens or closes (a send answered 130497, a
//! `messages` webhook's failed status with 130497, the hold passing, an operator) is decided
//! in `policy::country`.
//!
//! The calling codes are the ones libphonenumber's metadata assigns, generated into
//! [`super::calling_codes`] from the `PhoneNumberMetadata.xml` the `phonenumber` crate
//! ships (a dev-dependency: a unit test keeps the table equal to the crate's database), not
//! a hand-typed list — the gateway carries 215 numbers, not the crate's regex metadata
//! (which costs about 130 ms of start-up to load). Calling codes are a prefix code (no assigned code is a prefix of another), so the
//! first one to three digits of an international number that form an assigned code are its
//! code. +1 (the North American Numbering Plan) spans the US, Canada and a score of
//! Caribbean countries: a circuit for calling code 1 covers all of them (resolving the
//! region needs libphonenumber's per-region patterns, regular expressions the hot path
//! does not run), as the README says.

use super::calling_codes::CALLING_CODES;

/// Prefix of country circuit keys.
pub const KEY_PREFIX: &str = "country:";

/// The key of a country circuit: `country:{waba}:{calling code}`.
pub fn key(waba_id: &str, code: u16) -> String {
    format!("{KEY_PREFIX}{waba_id}:{code}")
}

/// The shortest and longest international numbers read for a country (E.164: at most 15
/// digits; the shortest assigned numbers have 7 with their code). Others have no country.
const DIGITS: (usize, usize) = (7, 15);

/// Which numbers from 0 to 999 are assigned country calling codes (built at compile time).
const ASSIGNED: [bool; 1000] = {
    let mut a = [false; 1000];
    let mut i = 0;
    while i < CALLING_CODES.len() {
        a[CALLING_CODES[i].0 as usize] = true;
        i += 1;
    }
    a
};

/// True when `code` is an assigned country calling code.
pub fn is_assigned(code: u16) -> bool {
    ASSIGNED.get(usize::from(code)).copied().unwrap_or(false)
}

/// The country calling code of an international number as a send's `to` or a status's
/// `recipient_id` spells it, read by its digits (`+`, spaces, dashes and brackets are
/// skipped: `+49 151 2345 6789` is 4915123456789). `None` for a number too short or too
/// long for E.164, one whose first digit is 0 (a national spelling, no country to read),
/// or one that starts with no assigned code.
pub fn of_number(to: &str) -> Option<u16> {
    let mut digits = to.bytes().filter(u8::is_ascii_digit);
    if digits.clone().next() == Some(b'0') || digits.clone().count() > DIGITS.1 {
        return None;
    }
    calling_code(digits.try_fold(0u64, |n, b| {
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })?)
}

/// The country calling code of an international number given as its digits. `None` for a
/// number too short or too long for E.164, or one that starts with no assigned code.
pub fn calling_code(digits: u64) -> Option<u16> {
    let len = digits.checked_ilog10().map_or(1, |l| l as usize + 1);
    if !(DIGITS.0..=DIGITS.1).contains(&len) {
        return None;
    }
    // The first one, two and three digits; the shortest assigned one is the code.
    (1..=3).find_map(|n| {
        let code = u16::try_from(digits / 10u64.pow((len - n) as u32)).ok()?;
        is_assigned(code).then_some(code)
    })
}

/// The calling code a key or an operator names (`"49"`): digits of an assigned code.
pub fn parse_code(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 3 || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|c| is_assigned(*c))
}

/// The regions (ISO 3166 alpha-2, `001` for non-geographic services) that share `code`,
/// main region first, for people: `"DE"`, `"US, AG, AI, …"` (empty for an unassigned code).
pub fn regions(code: u16) -> &'static str {
    CALLING_CODES
        .binary_search_by_key(&code, |(c, _)| *c)
        .map_or("", |i| CALLING_CODES[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_the_calling_code_however_the_number_is_spelled() {
        for (to, code) in [
            ("+49 151 2345 6789", 49),
            ("4915123456789", 49),
            ("+49-151-2345-6789", 49),
            ("+44 7700 900123", 44),
            ("+1 555-765-4321", 1),
            ("+1 (416) 555-0100", 1),
            ("+353 85 123 4567", 353),
            ("+971 50 123 4567", 971),
            ("+880 1712-345678", 880),
            ("+7 912 345-67-89", 7),
            ("+20 100 123 4567", 20),
            ("+683 4002", 683),
            ("+800 1234 5678", 800),
        ] {
            assert_eq!(of_number(to), Some(code), "{to}");
        }
    }

    #[test]
    fn every_split_of_a_number_gives_the_same_code() {
        let n = "4915123456789";
        for cut in 1..n.len() {
            for sep in [" ", "-", " - ", ") ("] {
                let spelled = format!("+{}{sep}{}", &n[..cut], &n[cut..]);
                assert_eq!(of_number(&spelled), Some(49), "{spelled}");
            }
        }
    }

    #[test]
    fn short_long_and_unassigned_numbers_have_no_country() {
        for to in [
            "",
            "0",
            "49",
            "+49 1512",
            "1234",
            "+999 123 4567",
            // National spellings: no country to read (not +1 for "0151…").
            "0151 2345 6789",
            "+0 123 4567 89",
            "+49 151 2345 6789 0123",
            "99999999999999999999999",
            "not a number",
        ] {
            assert_eq!(of_number(to), None, "{to}");
        }
        assert_eq!(calling_code(1_234_567_890_123_456), None, "16 digits");
        assert_eq!(calling_code(4_915_123_456_789), Some(49));
    }

    #[test]
    fn assigned_codes_are_a_prefix_code() {
        let codes: Vec<u16> = (1..1000).filter(|c| is_assigned(*c)).collect();
        assert!(codes.len() > 200, "{}", codes.len());
        for a in &codes {
            for b in &codes {
                let (a, b) = (a.to_string(), b.to_string());
                assert!(a == b || !b.starts_with(&a), "{a} is a prefix of {b}");
            }
        }
    }

    /// The generated table is libphonenumber's: the same codes, each with the same regions
    /// and main region. On a difference (after `cargo update -p phonenumber`), the message
    /// is the new `src/circuit/calling_codes.rs` body to paste.
    #[test]
    fn calling_codes_match_libphonenumber() {
        let db = &*phonenumber::metadata::DATABASE;
        let mut lines = Vec::new();
        for code in 1u16..1000 {
            let Some(mut all) = db.by_code(&code) else {
                continue;
            };
            all.sort_by_key(|m| (!m.is_main_country_for_code(), m.id().to_string()));
            let mut ids: Vec<&str> = Vec::new();
            for m in &all {
                if !ids.contains(&m.id()) {
                    ids.push(m.id());
                }
            }
            lines.push(format!("    ({code}, \"{}\"),", ids.join(", ")));
        }
        let ours: Vec<String> = CALLING_CODES
            .iter()
            .map(|(c, r)| format!("    ({c}, \"{r}\"),"))
            .collect();
        assert!(
            ours == lines,
            "src/circuit/calling_codes.rs is out of date; its table is now:\n{}",
            lines.join("\n")
        );
        assert!(CALLING_CODES.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
    }

    #[test]
    fn codes_parse_and_name_their_regions() {
        assert_eq!(parse_code("49"), Some(49));
        assert_eq!(parse_code("1"), Some(1));
        for bad in ["", "0", "049", "999", "4a", "1234", "+49"] {
            assert_eq!(parse_code(bad), None, "{bad}");
        }
        assert_eq!(regions(49), "DE");
        assert!(regions(1).starts_with("US, "), "{}", regions(1));
        assert!(regions(1).contains("CA"));
        assert_eq!(key("102290129340398", 49), "country:102290129340398:49");
    }
}
