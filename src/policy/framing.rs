//! HTTP/1 framing rules both engines follow, in one place (as the hop-by-hop rule is in
//! [`super::hop`]): the one parse of a `content-length` value, which upstream answers are
//! refused, and the `content-encoding` list the classifier reads.

/// A `content-length` value: optional whitespace around 1–19 digits, nothing else (no sign,
/// no list, no hex), else `None` (RFC 9110 §8.6). The relay's codec, the hyper engine's
/// guard and its classifier read lengths with this one function.
pub fn content_length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    // At most 19 digits: below u64::MAX, so the sum cannot overflow. By hand: `str::parse`
    // re-checks UTF-8 and every digit (~170 instructions a call, twice per send; issue 24).
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Why an upstream answer head is refused (both engines answer 502).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `101 Switching Protocols`: the gateway never forwards an upgrade, so a switch answers
    /// something it did not send.
    #[error("unexpected protocol switch")]
    Upgrade,
    /// A status outside 200–599 (RFC 9110 §15 defines no other final status).
    #[error("malformed response head: status code out of range")]
    Status,
    /// Both `content-length` and `transfer-encoding` (RFC 9112 §6.3: a recipient may treat it
    /// as an error; relaying it lets the two ends of the gateway disagree on where it ends —
    /// a response-smuggling shape).
    #[error("ambiguous response framing")]
    Framing,
}

/// The rule for a valid upstream answer head, once for both engines: a final status in
/// 200–599 (no `101`), and not both framing headers.
pub fn answer_head(
    status: u16,
    has_content_length: bool,
    has_transfer_encoding: bool,
) -> Result<(), Refused> {
    match status {
        101 => return Err(Refused::Upgrade),
        200..=599 => {}
        _ => return Err(Refused::Status),
    }
    if has_content_length && has_transfer_encoding {
        return Err(Refused::Framing);
    }
    Ok(())
}

/// True when the final coding of a `transfer-encoding` value is `chunked` — the only case
/// in which it frames the body (RFC 9112 §6.3).
pub fn chunked_last(value: &[u8]) -> bool {
    value
        .rsplit(|b| *b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Most `content-encoding` header lines the classifier reads; more read as one unsupported
/// coding (such a body passes unjudged).
pub const MAX_CODINGS: usize = 4;

/// An answer's `content-encoding` values as the classifier reads them: at most
/// [`MAX_CODINGS`], then a marker that no decoder knows. No allocation.
#[derive(Clone, Copy, Debug)]
pub struct Codings<'a> {
    list: [&'a [u8]; MAX_CODINGS + 1],
    len: usize,
}

impl<'a> Codings<'a> {
    /// The values in header order.
    pub fn collect(values: impl IntoIterator<Item = &'a [u8]>) -> Codings<'a> {
        let mut c = Codings {
            list: [&[][..]; MAX_CODINGS + 1],
            len: 0,
        };
        for v in values {
            if c.len == MAX_CODINGS {
                c.list[MAX_CODINGS] = b"too-many-codings";
                c.len = MAX_CODINGS + 1;
                break;
            }
            c.list[c.len] = v;
            c.len += 1;
        }
        c
    }

    /// The values, for [`super::Answer::content_encoding`].
    pub fn as_slice(&self) -> &[&'a [u8]] {
        &self.list[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_codings() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b" 42 "), Some(42));
        assert_eq!(content_length(b"007"), Some(7));
        assert_eq!(
            content_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999),
            "19 digits, the most taken"
        );
        for b in 0..=255u8 {
            let v = [b'1', b];
            let want = b.is_ascii_digit().then(|| 10 + u64::from(b - b'0'));
            let want = if b.is_ascii_whitespace() && b != 0x0b {
                Some(1)
            } else {
                want
            };
            assert_eq!(content_length(&v), want, "byte {b:#x}");
        }
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1,1",
            b"0x10",
            b"1 2",
            b"99999999999999999999",
        ] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
        assert!(chunked_last(b"chunked"));
        assert!(chunked_last(b"gzip, Chunked "));
        assert!(!chunked_last(b"chunked, gzip"));
        assert!(!chunked_last(b""));
    }

    #[test]
    fn answer_heads() {
        assert_eq!(answer_head(200, true, false), Ok(()));
        assert_eq!(answer_head(599, false, true), Ok(()));
        assert_eq!(answer_head(101, false, false), Err(Refused::Upgrade));
        assert_eq!(answer_head(199, false, false), Err(Refused::Status));
        assert_eq!(answer_head(600, false, false), Err(Refused::Status));
        assert_eq!(answer_head(200, true, true), Err(Refused::Framing));
    }

    #[test]
    fn codings_past_the_cap_read_as_unknown() {
        let many: Vec<&[u8]> = vec![b"gzip"; MAX_CODINGS + 3];
        let c = Codings::collect(many.iter().copied());
        assert_eq!(c.as_slice().len(), MAX_CODINGS + 1);
        assert_eq!(c.as_slice()[MAX_CODINGS], b"too-many-codings");
        let two = Codings::collect([&b"gzip"[..], b"br"]);
        assert_eq!(two.as_slice(), &[&b"gzip"[..], b"br"]);
    }
}
