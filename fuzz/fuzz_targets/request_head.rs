//! The relay's request-head parser on arbitrary bytes: no panic, and the invariants the
//! relay relies on when it forwards a head it accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wa_breaker::h1::request::{header_value, parse_head, parse_request, Parsed};
use wa_breaker::h1::{MAX_BODY, MAX_HEAD};
use wa_breaker::policy::framing::content_length;

const AUTHORITY: &str = "graph.example:443";

fuzz_target!(|data: &[u8]| {
    let mut upstream = Vec::new();
    let head = match parse_request(data, AUTHORITY, &mut upstream) {
        Parsed::Partial => {
            assert!(data.len() <= MAX_HEAD, "partial beyond MAX_HEAD");
            return;
        }
        Parsed::Handoff => return,
        Parsed::Request(h) => h,
    };
    assert!(head.head_len <= data.len());
    assert!(head.path.0 < head.path.1 && head.path.1 <= head.head_len);
    assert_eq!(data[head.path.0], b'/');
    assert!(head.body_len <= MAX_BODY);
    let raw = &data[..head.head_len];
    assert!(raw.ends_with(b"\n"), "a head ends with its blank line");

    // The head alone parses the same (nothing after it influenced the decision).
    let mut again = Vec::new();
    match parse_request(raw, AUTHORITY, &mut again) {
        Parsed::Request(h) => assert_eq!(h, head),
        other => panic!("accepted head re-parses as {other:?}"),
    }
    assert_eq!(again, upstream);

    // The fields the relay forwards, as its HTTP/2 request reads them in place: inside the
    // head, never `host`, each a name and a value HTTP/2 can carry; the target a valid
    // `:path`.
    let mut forward = Vec::new();
    match parse_head(raw, &mut forward) {
        Parsed::Request(h) => assert_eq!(h, head),
        other => panic!("accepted head parses as {other:?} alone"),
    }
    assert!(head.target.0 == head.path.0 && head.path.1 <= head.target.1);
    let target = &raw[head.target.0..head.target.1];
    assert!(
        http::uri::PathAndQuery::try_from(target).is_ok(),
        "target {target:?}"
    );
    for f in &forward {
        assert!(f.name.1 <= head.head_len && f.value.1 <= head.head_len);
        let name = &raw[f.name.0..f.name.1];
        let value = &raw[f.value.0..f.value.1];
        assert!(!name.eq_ignore_ascii_case(b"host"));
        assert!(http::HeaderName::from_bytes(name).is_ok(), "name {name:?}");
        assert!(
            http::HeaderValue::from_bytes(value).is_ok(),
            "value {value:?}"
        );
    }
    // What the relay reads off the head: exactly one Host; lookups never panic.
    assert!(
        header_value(raw, b"host").is_some(),
        "accepted without one Host"
    );
    let _ = header_value(raw, b"authorization");
    let _ = header_value(raw, b"x-wa-breaker-discover");

    // The head sent upstream frames the same body: one content-length equal to the body
    // the relay forwards (or none for an empty body), never a transfer-encoding, and the
    // upstream's authority as its only Host.
    let mut headers = [httparse::EMPTY_HEADER; 80];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(&upstream) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("upstream head does not parse: {other:?}"),
    };
    assert_eq!(n, upstream.len());
    assert_eq!(req.method, Some(head.method.as_str()));
    let mut lengths = Vec::new();
    let mut hosts = Vec::new();
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths.push(content_length(h.value));
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts.push(h.value);
        }
        assert!(!name.eq_ignore_ascii_case(b"transfer-encoding"));
    }
    assert_eq!(hosts, [AUTHORITY.as_bytes()]);
    match lengths.as_slice() {
        [] => assert_eq!(head.body_len, 0, "body forwarded without a content-length"),
        [Some(n)] => assert_eq!(*n, head.body_len as u64),
        other => panic!("upstream head has content-lengths {other:?}"),
    }
});
