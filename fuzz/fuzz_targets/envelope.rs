//! The Graph error envelope parser, after the classifier's content decoding, on arbitrary
//! bytes: no panic, the decoded size stays under its cap, and a parsed envelope survives
//! the gateway's own envelope builder.
//!
//! Input: byte 0 picks the `content-encoding` values, then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wa_breaker::graph::envelope;
use wa_breaker::policy::decode::decode;

/// `content-encoding` header values the classifier may meet.
const CODINGS: &[&[&[u8]]] = &[
    &[],
    &[b"gzip"],
    &[b"deflate"],
    &[b"br"],
    &[b"x-gzip"],
    &[b"identity"],
    &[b"gzip, br"],
    &[b"gzip", b"deflate"],
    &[b"compress"],
];

/// The classifier's cap on decoded bytes, small so expansions are cut early.
const CAP: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let [pick, body @ ..] = data else {
        return;
    };
    // Undecoded, as the hyper engine's and the relay's classifier read an identity body.
    check(body);
    let codings = CODINGS[*pick as usize % CODINGS.len()];
    if let Ok(decoded) = decode(codings, body, CAP) {
        if !codings.is_empty() && codings != [b"identity"] {
            assert!(decoded.len() <= CAP, "decoded past the cap");
        }
        check(&decoded);
    }
});

fn check(body: &[u8]) {
    let Some(e) = envelope::parse(body) else {
        return;
    };
    let built = envelope::build(
        e.code,
        e.error_subcode,
        &e.kind,
        &e.message,
        e.details.as_deref().unwrap_or_default(),
        e.fbtrace_id.as_deref().unwrap_or_default(),
    );
    let back = envelope::parse(&built).expect("a built envelope parses");
    assert_eq!((back.code, back.error_subcode), (e.code, e.error_subcode));
    assert_eq!((&back.message, &back.kind), (&e.message, &e.kind));
}
