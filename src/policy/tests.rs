//! The policy core as pure functions: tables of request kinds × circuit states × bodies →
//! guard decisions, and of calls × answers → judgements.

use super::*;
use std::io::Write;

use super::testing::{open, policy, PHONE, WABA};
const OTHER: &str = "999000111222333";
const TEMPLATE: &[u8] =
    br#"{"messaging_product":"whatsapp","type":"template","template":{"name":"t"}}"#;
const TEXT: &[u8] = br#"{"messaging_product":"whatsapp","type":"text","text":{"body":"template"}}"#;
const BLOCKED: &[u8] = br#"{"error":{"message":"(#368) Temporarily blocked for policies violations","type":"OAuthException","code":368,"error_data":{"messaging_product":"whatsapp","details":"restricted"},"fbtrace_id":"AbC"}}"#;

fn call(p: &Policy, method: Method, path: &str) -> Call {
    match p.route(&method, path) {
        Route::Graph(c) => c,
        Route::Webhook => panic!("webhook"),
    }
}

/// `Forward`, `Inspect` or `Local` as a short string.
fn decide(p: &Policy, c: Call, body: Body<'_>) -> &'static str {
    match p.admit(c, body, |r| r.status().as_u16()) {
        Admit::Forward => "forward",
        Admit::Inspect { .. } => "inspect",
        Admit::Local { answer: 403, .. } => "local",
        Admit::Local { answer, .. } => panic!("local answer with {answer}"),
    }
}

#[test]
fn routes() {
    let p = policy(Mode::Enforce, 1024);
    assert_eq!(p.route(&Method::POST, "/webhook"), Route::Webhook);
    let c = call(&p, Method::POST, &format!("/v21.0/{PHONE}/messages"));
    assert_eq!(c.kind, Kind::Send);
    assert_eq!(c.account.map(|a| a.waba.to_string()).as_deref(), Some(WABA));
    let c = call(&p, Method::POST, &format!("/{OTHER}/messages"));
    assert!(c.unmapped_send());
    let c = call(&p, Method::GET, "/");
    assert_eq!((c.kind, c.account), (Kind::Read, None));
}

#[test]
fn guard_decisions() {
    let big_template = {
        let mut b = TEMPLATE[..TEMPLATE.len() - 2].to_vec();
        b.extend_from_slice(br#","pad":""#);
        b.extend(std::iter::repeat_n(b'x', 2048));
        b.extend_from_slice(br#""}}"#);
        assert!(is_template(&b));
        b
    };
    let send = format!("/v21.0/{PHONE}/messages");
    let unmapped = format!("/v21.0/{OTHER}/messages");
    let register = format!("/v21.0/{PHONE}/register");
    // (mode, circuit, method, path, body, decision)
    type Row<'a> = (Mode, Option<Scope>, Method, &'a str, Body<'a>, &'static str);
    let rows: Vec<Row> = vec![
        // Closed: everything is forwarded, nothing is read.
        (
            Mode::Enforce,
            None,
            Method::POST,
            &send,
            Body::Unread(None),
            "forward",
        ),
        (
            Mode::Enforce,
            None,
            Method::POST,
            &send,
            Body::Read(TEMPLATE),
            "forward",
        ),
        // All sends.
        (
            Mode::Enforce,
            Some(Scope::AllSends),
            Method::POST,
            &send,
            Body::Unread(None),
            "local",
        ),
        (
            Mode::Enforce,
            Some(Scope::AllSends),
            Method::POST,
            &send,
            Body::Read(TEXT),
            "local",
        ),
        (
            Mode::Enforce,
            Some(Scope::AllSends),
            Method::POST,
            &send,
            Body::Read(&big_template),
            "local",
        ),
        // Reads and other calls of the same phone pass.
        (
            Mode::Enforce,
            Some(Scope::AllSends),
            Method::GET,
            &send,
            Body::Unread(None),
            "forward",
        ),
        (
            Mode::Enforce,
            Some(Scope::AllSends),
            Method::POST,
            &register,
            Body::Read(b"{}"),
            "forward",
        ),
        (
            Mode::Enforce,
            Some(Scope::AllSends),
            Method::POST,
            &unmapped,
            Body::Read(TEXT),
            "forward",
        ),
        // Templates only: the body decides; too large to judge is forwarded, on both engines
        // (the relay has it read, hyper knows the declared length or reads it).
        (
            Mode::Enforce,
            Some(Scope::BusinessInitiated),
            Method::POST,
            &send,
            Body::Read(TEMPLATE),
            "local",
        ),
        (
            Mode::Enforce,
            Some(Scope::BusinessInitiated),
            Method::POST,
            &send,
            Body::Read(TEXT),
            "forward",
        ),
        (
            Mode::Enforce,
            Some(Scope::BusinessInitiated),
            Method::POST,
            &send,
            Body::Read(b"not json"),
            "forward",
        ),
        (
            Mode::Enforce,
            Some(Scope::BusinessInitiated),
            Method::POST,
            &send,
            Body::Read(&big_template),
            "forward",
        ),
        (
            Mode::Enforce,
            Some(Scope::BusinessInitiated),
            Method::POST,
            &send,
            Body::Unread(None),
            "inspect",
        ),
        (
            Mode::Enforce,
            Some(Scope::BusinessInitiated),
            Method::POST,
            &send,
            Body::Unread(Some(100)),
            "inspect",
        ),
        (
            Mode::Enforce,
            Some(Scope::BusinessInitiated),
            Method::POST,
            &send,
            Body::Unread(Some(5000)),
            "forward",
        ),
        // Observe mode records but forwards everything.
        (
            Mode::Observe,
            Some(Scope::AllSends),
            Method::POST,
            &send,
            Body::Read(TEXT),
            "forward",
        ),
        (
            Mode::Observe,
            Some(Scope::BusinessInitiated),
            Method::POST,
            &send,
            Body::Unread(None),
            "forward",
        ),
    ];
    for (i, (mode, scope, method, path, body, want)) in rows.into_iter().enumerate() {
        let p = policy(mode, 1024);
        if let Some(s) = scope {
            open(&p, s);
        }
        let c = call(&p, method, path);
        assert_eq!(decide(&p, c, body), want, "row {i}");
    }
}

#[test]
fn local_reply_carries_the_opening_code() {
    let p = policy(Mode::Enforce, 1024);
    p.table().apply(Change {
        waba_id: WABA.into(),
        phone_number_id: None,
        action: Action::Open {
            scope: Scope::AllSends,
            code: Some(131031),
            until: Some(Utc::now() + chrono::Duration::seconds(600)),
        },
        source: Source::Send,
        at: Utc::now(),
        reason: "locked".into(),
        evidence: None,
    });
    let c = call(&p, Method::POST, &format!("/{PHONE}/messages"));
    let Admit::Local {
        answer: (status, body),
        unacked,
    } = p.admit(c, Body::Unread(None), |r| (r.status(), r.body().to_vec()))
    else {
        panic!("local")
    };
    assert_eq!(status, 403);
    // No store runs in this test: the open is not durable, so the answer must wait for it.
    assert!(unacked.is_some());
    p.table().mark_durable(u64::MAX);
    assert!(matches!(
        p.admit(c, Body::Unread(None), |_| ()),
        Admit::Local { unacked: None, .. }
    ));
    assert_eq!(envelope::parse(&body).unwrap().code, 131031);
}

fn gz(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[test]
fn judgements() {
    let p = policy(Mode::Enforce, 1024);
    let send = format!("/v21.0/{PHONE}/messages");
    let gzipped = gz(BLOCKED);
    let locked = br#"{"error":{"code":131031,"message":"(#131031) Business Account locked"}}"#;
    let permission = br#"{"error":{"code":10,"message":"Permission denied"}}"#;
    // (method, path, status, content-encoding, body, code seen, trips)
    type Row<'a> = (
        Method,
        String,
        u16,
        &'a [&'a [u8]],
        &'a [u8],
        Option<i64>,
        bool,
    );
    let rows: Vec<Row> = vec![
        (
            Method::POST,
            send.clone(),
            403,
            &[],
            BLOCKED,
            Some(368),
            true,
        ),
        (
            Method::POST,
            send.clone(),
            403,
            &[b"gzip"],
            &gzipped,
            Some(368),
            true,
        ),
        (
            Method::POST,
            send.clone(),
            403,
            &[],
            locked,
            Some(131031),
            true,
        ),
        // Not a trip code, or not an envelope.
        (
            Method::POST,
            send.clone(),
            403,
            &[],
            permission,
            Some(10),
            false,
        ),
        (
            Method::POST,
            send.clone(),
            403,
            &[],
            b"<html>Forbidden</html>",
            None,
            false,
        ),
        (
            Method::POST,
            send.clone(),
            403,
            &[b"gzip"],
            b"\x1f\x8bjunk",
            None,
            false,
        ),
        (
            Method::POST,
            send.clone(),
            403,
            &[b"compress"],
            BLOCKED,
            None,
            false,
        ),
        // Only sends trip: a wrong two-step PIN on /register, a GET, a media upload.
        (
            Method::POST,
            format!("/v21.0/{PHONE}/register"),
            403,
            &[],
            locked,
            Some(131031),
            false,
        ),
        (
            Method::GET,
            format!("/v21.0/{PHONE}"),
            403,
            &[],
            BLOCKED,
            Some(368),
            false,
        ),
        (
            Method::POST,
            format!("/v21.0/{PHONE}/media"),
            403,
            &[],
            BLOCKED,
            Some(368),
            false,
        ),
        // A phone number of unknown WABA: no WABA is guessed; its own circuit trips.
        (
            Method::POST,
            format!("/v21.0/{OTHER}/messages"),
            403,
            &[],
            BLOCKED,
            Some(368),
            true,
        ),
        // Not a send of it: nothing.
        (
            Method::POST,
            format!("/v21.0/{OTHER}/register"),
            403,
            &[],
            BLOCKED,
            Some(368),
            false,
        ),
    ];
    for (i, (method, path, status, ce, body, code, trips)) in rows.into_iter().enumerate() {
        let c = call(&p, method, &path);
        let j = judge(&p.trip_codes, 1024, c, status, ce, body, Utc::now());
        assert_eq!(j.code, code, "row {i}");
        assert_eq!(j.change.is_some(), trips, "row {i}");
        if let Some(ch) = j.change {
            if path.contains(OTHER) {
                assert_eq!(
                    (ch.waba_id.as_str(), ch.phone_number_id.as_deref()),
                    ("", Some(OTHER))
                );
            } else {
                assert_eq!((ch.waba_id.as_str(), ch.phone_number_id), (WABA, None));
            }
            assert_eq!(ch.source, Source::Send);
            assert!(matches!(
                ch.action,
                Action::Open {
                    scope: Scope::AllSends,
                    ..
                }
            ));
        }
    }
    // The evidence of a trip.
    let c = call(&p, Method::POST, &send);
    let j = judge(&p.trip_codes, 1024, c, 403, &[], BLOCKED, Utc::now());
    let Some(Evidence::Send {
        fbtrace_id,
        phone_number_id,
        code,
        ..
    }) = j.change.unwrap().evidence
    else {
        panic!("send evidence")
    };
    assert_eq!(
        (fbtrace_id.as_deref(), phone_number_id.as_deref(), code),
        (Some("AbC"), Some(PHONE), 368)
    );
    // A decoded body over the cap is not judged.
    let j = judge(&p.trip_codes, 64, c, 403, &[b"gzip"], &gzipped, Utc::now());
    assert_eq!(j.change, None);
    assert!(j.unreadable.unwrap().contains("larger than 64"));
}

#[test]
fn classify_applies_the_trip_once() {
    let p = policy(Mode::Enforce, 1024);
    let c = call(&p, Method::POST, &format!("/v21.0/{PHONE}/messages"));
    assert!(p.classify(c, 403, &[], BLOCKED).is_some());
    assert!(p.table().get(WABA).unwrap().is_open());
    // A second 368 while open changes nothing that needs storing.
    let again = p.classify(c, 403, &[], BLOCKED);
    assert_eq!(p.table().get(WABA).unwrap().history.len(), 1, "{again:?}");
}

#[test]
fn inspection_of_answers() {
    let p = policy(Mode::Enforce, 1024);
    assert_eq!(p.inspect(200, None), Inspect::Pass);
    assert_eq!(p.inspect(204, Some(0)), Inspect::Pass);
    assert_eq!(p.inspect(403, None), Inspect::Read { limit: 1024 });
    assert_eq!(p.inspect(403, Some(1024)), Inspect::Read { limit: 1024 });
    assert_eq!(p.inspect(403, Some(1025)), Inspect::Pass);
    assert_eq!(p.inspect(500, Some(10)), Inspect::Read { limit: 1024 });
}

#[test]
fn spots_templates() {
    assert!(is_template(TEMPLATE));
    assert!(!is_template(TEXT));
    assert!(!is_template(br#"{"messaging_product":"whatsapp"}"#));
    assert!(!is_template(b"not json"));
}
