//! Path → Graph node and call kind. Pure, allocation-free.

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

/// A parsed Graph path: `/{version}/{node}/{edge…}` or `/{node}/{edge…}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route<'a> {
    /// The Graph version segment, when present (`v21.0`).
    pub version: Option<&'a str>,
    /// The node id (a phone-number id for sends).
    pub node: &'a str,
    /// The edge after the node (`messages`), empty when none.
    pub edge: &'a str,
    /// The call kind.
    pub kind: Kind,
}

/// True for a version segment such as `v21.0` or `v3`.
fn is_version(seg: &str) -> bool {
    let b = seg.as_bytes();
    b.len() >= 2
        && b[0] == b'v'
        && b[1].is_ascii_digit()
        && b[1..].iter().all(|c| c.is_ascii_digit() || *c == b'.')
}

/// Parses a request path (without query). Returns `None` for `/` and empty paths.
pub fn parse<'a>(method: &Method, path: &'a str) -> Option<Route<'a>> {
    let rest = path.strip_prefix('/')?;
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
    let kind = if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        Kind::Read
    } else if *method == Method::POST && edge == "messages" {
        Kind::Send
    } else {
        Kind::Write
    };
    Some(Route {
        version,
        node,
        edge,
        kind,
    })
}

fn split_segment(s: &str) -> (&str, &str) {
    match s.find('/') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_send() {
        let r = parse(&Method::POST, "/v21.0/106540352242922/messages").unwrap();
        assert_eq!(r.version, Some("v21.0"));
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
        assert_eq!((r.node, r.edge), ("1", ""));
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
}
