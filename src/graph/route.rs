//! Path → Graph node and call kind. Pure; allocation-free for paths spelled plainly.
//!
//! The guard decides on the *normalised* request, so that no spelling of a send slips past
//! an open circuit (the bytes forwarded stay exactly as the client sent them): the method
//! is compared case-insensitively, empty and `.` segments are dropped, `..` removes the
//! segment before it (RFC 3986 §5.2.4), the path is percent-decoded before it is split
//! (so `%2F` separates segments too) and the version segment is matched in either case.
//! Meta may answer such spellings differently; guarding a few more requests than Meta
//! would route as sends only ever answers locally for an open circuit.

use std::borrow::Cow;

use http::Method;

/// What a request does, as far as a circuit cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `POST …/{phone-number-id}/messages`.
    Send,
    /// Any other state-changing call (media upload, template edit, …).
    Write,
    /// `GET`, `HEAD`, `OPTIONS`: always passes.
    Read,
}

/// A parsed Graph path: `/{version}/{node}/{edge…}` or `/{node}/{edge…}`, normalised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route<'a> {
    /// The Graph version segment, when present (`v21.0`).
    pub version: Option<Cow<'a, str>>,
    /// The node id (a phone-number id for sends).
    pub node: Cow<'a, str>,
    /// The edge after the node (`messages`, or `a/b` with more segments), empty when none.
    pub edge: Cow<'a, str>,
    /// The call kind.
    pub kind: Kind,
}

/// True for a version segment such as `v21.0` or `V3`.
fn is_version(seg: &str) -> bool {
    let b = seg.as_bytes();
    b.len() >= 2
        && (b[0] == b'v' || b[0] == b'V')
        && b[1].is_ascii_digit()
        && b[1..].iter().all(|c| c.is_ascii_digit() || *c == b'.')
}

/// The call kind of `method` on `edge`, the method compared case-insensitively (HTTP says
/// methods are case-sensitive, but a server may well take `post` for `POST`).
fn kind(method: &Method, edge: &str) -> Kind {
    // The common spellings first (a comparison of the method's tag, no string compare).
    if *method == Method::POST {
        return if edge == "messages" || edge.eq_ignore_ascii_case("messages") {
            Kind::Send
        } else {
            Kind::Write
        };
    }
    if *method == Method::GET || *method == Method::HEAD || *method == Method::OPTIONS {
        return Kind::Read;
    }
    let m = method.as_str();
    if ["GET", "HEAD", "OPTIONS"]
        .iter()
        .any(|r| m.eq_ignore_ascii_case(r))
    {
        Kind::Read
    } else if m.eq_ignore_ascii_case("POST") && edge.eq_ignore_ascii_case("messages") {
        Kind::Send
    } else {
        Kind::Write
    }
}

/// True when `path` needs normalising: a percent escape, an empty segment (other than
/// one trailing `/`), or a `.`/`..` segment.
fn needs_normalising(path: &str) -> bool {
    // One pass over the path without its trailing `/` (the same rule as splitting it): a
    // `%`, two slashes in a row, or a `.`/`..` segment.
    let inner = path.strip_suffix('/').unwrap_or(path).as_bytes();
    let mut prev_slash = false;
    let mut seg_start = 0;
    for (i, &c) in inner.iter().enumerate() {
        match c {
            b'%' => return true,
            b'/' => {
                if prev_slash || (i > 0 && is_dots(&inner[seg_start..i])) {
                    return true;
                }
                prev_slash = true;
                seg_start = i + 1;
            }
            _ => prev_slash = false,
        }
    }
    is_dots(&inner[seg_start..])
}

/// A `.` or `..` segment.
fn is_dots(seg: &[u8]) -> bool {
    seg == b"." || seg == b".."
}

/// Parses a request path (without query). Returns `None` for `/`, empty paths and paths
/// that normalise to no node.
pub fn parse<'a>(method: &Method, path: &'a str) -> Option<Route<'a>> {
    if !path.starts_with('/') {
        return None;
    }
    if needs_normalising(path) {
        return parse_normalised(method, path);
    }
    let rest = &path[1..];
    let (first, after) = split_segment(rest);
    let (version, node, edge) = if is_version(first) {
        let (node, edge) = split_segment(after);
        (Some(first), node, edge)
    } else {
        (None, first, after)
    };
    if node.is_empty() {
        return None;
    }
    let edge = edge.trim_end_matches('/');
    Some(Route {
        version: version.map(Cow::Borrowed),
        node: Cow::Borrowed(node),
        edge: Cow::Borrowed(edge),
        kind: kind(method, edge),
    })
}

/// The slow path: percent-decode, then remove empty and dot segments.
fn parse_normalised<'a>(method: &Method, path: &'a str) -> Option<Route<'a>> {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let mut segs: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let mut it = segs.into_iter();
    let first = it.next()?;
    let (version, node) = if is_version(first) {
        (Some(first.to_string()), it.next()?.to_string())
    } else {
        (None, first.to_string())
    };
    let edge = it.collect::<Vec<_>>().join("/");
    Some(Route {
        version: version.map(Cow::Owned),
        node: Cow::Owned(node),
        kind: kind(method, &edge),
        edge: Cow::Owned(edge),
    })
}

fn split_segment(s: &str) -> (&str, &str) {
    // A byte scan: segments are a few bytes long, where `str::find`'s memchr set-up costs
    // more than the search (~170 instructions a call, twice per send; issue 24).
    match s.bytes().position(|b| b == b'/') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass scan says what splitting the path says, for every path over a small
    /// alphabet up to six bytes.
    #[test]
    fn the_one_pass_scan_matches_the_split_rule() {
        fn by_split(path: &str) -> bool {
            let inner = path.strip_suffix('/').unwrap_or(path);
            path.contains('%')
                || inner.contains("//")
                || inner.split('/').any(|seg| seg == "." || seg == "..")
        }
        let alphabet = ['/', '.', '%', 'a'];
        let mut paths = vec![String::new()];
        for _ in 0..6 {
            let mut next = Vec::new();
            for p in &paths {
                for c in alphabet {
                    next.push(format!("{p}{c}"));
                }
            }
            for p in &next {
                assert_eq!(needs_normalising(p), by_split(p), "{p:?}");
            }
            paths = next;
        }
    }

    #[test]
    fn versioned_send() {
        let r = parse(&Method::POST, "/v21.0/106540352242922/messages").unwrap();
        assert_eq!(r.version.as_deref(), Some("v21.0"));
        assert_eq!(r.node, "106540352242922");
        assert_eq!(r.edge, "messages");
        assert_eq!(r.kind, Kind::Send);
    }

    #[test]
    fn unversioned_send_and_trailing_slash() {
        let r = parse(&Method::POST, "/106540352242922/messages/").unwrap();
        assert_eq!(r.version, None);
        assert_eq!(r.node, "106540352242922");
        assert_eq!(r.kind, Kind::Send);
    }

    #[test]
    fn reads_and_writes() {
        assert_eq!(
            parse(&Method::GET, "/v21.0/1/messages").unwrap().kind,
            Kind::Read
        );
        assert_eq!(
            parse(&Method::POST, "/v21.0/1/media").unwrap().kind,
            Kind::Write
        );
        assert_eq!(
            parse(&Method::DELETE, "/1/messages").unwrap().kind,
            Kind::Write
        );
        let r = parse(&Method::GET, "/v20.0/1").unwrap();
        assert_eq!((&*r.node, &*r.edge), ("1", ""));
    }

    #[test]
    fn odd_paths() {
        assert_eq!(parse(&Method::POST, "/"), None);
        assert_eq!(parse(&Method::POST, ""), None);
        assert_eq!(parse(&Method::POST, "/v21.0/"), None);
        assert_eq!(parse(&Method::POST, "/v21.0"), None);
        // "vx" is not a version: it is the node.
        assert_eq!(parse(&Method::POST, "/vx/messages").unwrap().node, "vx");
        assert_eq!(
            parse(&Method::POST, "/v21.0/1/messages/extra")
                .unwrap()
                .kind,
            Kind::Write
        );
    }

    /// Every spelling of a send that a server may route as one is classified as a send of
    /// the same node (issue 12: the guard was bypassed by these).
    #[test]
    fn spellings_of_a_send_are_sends() {
        let post = Method::POST;
        let lower = Method::from_bytes(b"post").unwrap();
        let p = "106540352242922";
        for (m, path) in [
            (&post, format!("//v21.0/{p}/messages")),
            (&post, format!("/v21.0//{p}/messages")),
            (&post, format!("/v21.0/{p}//messages")),
            (&post, format!("/v21.0/{p}/messages//")),
            (&post, format!("/V21.0/{p}/messages")),
            (&post, format!("/v21.0/./{p}/messages")),
            (&post, format!("/v21.0/{p}/./messages/.")),
            (&post, format!("/v21.0/x/../{p}/messages")),
            (&post, "/v21.0/%31%30%36540352242922/messages".to_string()),
            (&post, format!("/v21.0/{p}/%6d%65ssages")),
            (&post, format!("/v21.0/{p}/Messages")),
            (&post, format!("/v21.0/{p}%2Fmessages")),
            (&post, format!("/v21.0%2F{p}/messages")),
            (&post, format!("/%2e/v21.0/{p}/messages")),
            (&post, format!("//{p}/messages")),
            (&lower, format!("/v21.0/{p}/messages")),
        ] {
            let r = parse(m, &path).unwrap_or_else(|| panic!("{m} {path}"));
            assert_eq!((r.kind, &*r.node), (Kind::Send, p), "{m} {path}");
        }
        let get = Method::from_bytes(b"get").unwrap();
        assert_eq!(
            parse(&get, &format!("/v21.0/{p}/messages")).unwrap().kind,
            Kind::Read
        );
        // Plain spellings borrow the path.
        let r = parse(&post, "/v21.0/1/messages/").unwrap();
        assert!(matches!(r.node, Cow::Borrowed(_)) && matches!(r.edge, Cow::Borrowed("messages")));
        // Not sends: more segments, or nothing left after normalising.
        assert_eq!(
            parse(&post, "/v21.0/1/messages/x/").unwrap().kind,
            Kind::Write
        );
        assert_eq!(
            parse(&post, "/v21.0/1/messages%2Fx").unwrap().kind,
            Kind::Write
        );
        assert_eq!(parse(&post, "//"), None);
        assert_eq!(parse(&post, "/v21.0/./"), None);
        assert_eq!(parse(&post, "/../.."), None);
        assert_eq!(parse(&post, "/%ff%fe/messages").unwrap().kind, Kind::Send);
    }
}
