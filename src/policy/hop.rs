//! The hop-by-hop rule (RFC 9110 §7.6.1), one for both directions and both engines: which
//! header fields of a message stop at the gateway instead of crossing it.
//!
//! A field stops when its name is one of [`FIXED`] or is named by the message's own
//! `Connection` header(s). `Host` is not hop-by-hop: the engines set it to the upstream's.
//! The relay keeps `Transfer-Encoding: chunked` on an answer whose chunked bytes it relays
//! unchanged (the framing crosses with the body); hyper re-frames the body itself.

use http::{header, HeaderMap, HeaderName};

/// Always hop-by-hop, whatever `Connection` says.
pub const FIXED: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The hop-by-hop fields of one message: [`FIXED`] plus what its `Connection` headers name.
/// Building it allocates only when a `Connection` header names something unusual.
#[derive(Debug, Default)]
pub struct HopByHop<'a> {
    /// `Connection` values that name fields beyond `close` / `keep-alive`.
    named: Vec<&'a [u8]>,
    /// Some `Connection` value said `close`.
    close: bool,
    /// Some `Connection` value asked for `upgrade`.
    upgrade: bool,
}

/// Whether a request with `hosts` `Host` fields may be served: exactly one (RFC 9112 §3.2:
/// a request without `Host`, or with more than one, gets 400). Both engines ask this for
/// HTTP/1.1 requests (the byte relay hands any other count to hyper, which answers 400).
pub fn host_ok(hosts: usize) -> bool {
    hosts == 1
}

/// The comma-separated tokens of a header value, trimmed, empty ones skipped.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

impl<'a> HopByHop<'a> {
    /// Adds one `Connection` header value of the message.
    pub fn connection(&mut self, value: &'a [u8]) {
        let mut names_fields = false;
        for t in tokens(value) {
            if t.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if t.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else if !is_fixed(t) {
                names_fields = true;
            }
        }
        if names_fields {
            self.named.push(value);
        }
    }

    /// True when the field `name` stops at the gateway.
    pub fn drops(&self, name: &[u8]) -> bool {
        is_fixed(name)
            || self
                .named
                .iter()
                .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(name)))
    }

    /// `Connection: close` was among the values.
    pub fn close(&self) -> bool {
        self.close
    }

    /// `Connection: upgrade` was among the values.
    pub fn upgrade(&self) -> bool {
        self.upgrade
    }
}

/// True for a name in [`FIXED`] (any case).
pub fn is_fixed(name: &[u8]) -> bool {
    FIXED
        .iter()
        .any(|f| name.eq_ignore_ascii_case(f.as_bytes()))
}

/// Applies the rule to a header map (the hyper engine, both directions).
pub fn strip(h: &mut HeaderMap) {
    // Common case first: one pass over the few headers present, no removal.
    if !h.keys().any(|k| is_fixed(k.as_str().as_bytes())) {
        return;
    }
    let named: Vec<HeaderName> = {
        let mut rule = HopByHop::default();
        for v in h.get_all(header::CONNECTION) {
            rule.connection(v.as_bytes());
        }
        h.keys()
            .filter(|k| rule.drops(k.as_str().as_bytes()))
            .cloned()
            .collect()
    };
    for n in named {
        h.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_and_named_fields_drop() {
        let mut r = HopByHop::default();
        r.connection(b"keep-alive, X-Foo ,close");
        r.connection(b"x-bar");
        for name in [
            &b"Connection"[..],
            b"keep-alive",
            b"TE",
            b"Transfer-Encoding",
            b"x-foo",
            b"X-BAR",
            b"Proxy-Authorization",
        ] {
            assert!(r.drops(name), "{}", String::from_utf8_lossy(name));
        }
        for name in [
            &b"x-foobar"[..],
            b"host",
            b"authorization",
            b"content-length",
        ] {
            assert!(!r.drops(name), "{}", String::from_utf8_lossy(name));
        }
        assert!(r.close());
        assert!(!r.upgrade());
    }

    #[test]
    fn plain_connection_values_do_not_allocate() {
        let mut r = HopByHop::default();
        r.connection(b"keep-alive");
        r.connection(b"close");
        r.connection(b"Upgrade");
        assert!(r.named.is_empty());
        assert!(r.upgrade() && r.close());
    }

    #[test]
    fn strip_a_header_map() {
        let mut h = HeaderMap::new();
        h.insert("connection", "x-foo, keep-alive".parse().unwrap());
        h.insert("x-foo", "bar".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }
}
