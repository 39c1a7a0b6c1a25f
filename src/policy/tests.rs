//! The policy core as pure functions: tables of request kinds × circuit states × bodies →
//! guard decisions, and of calls × answers → judgements.

use super::*;
use crate::circuit::template::{is_template, TemplateRef};
use crate::graph::codes::{ACCOUNT_LOCKED, MAINTENANCE, NOT_REGISTERED, POLICY_BLOCK};
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
        // Replies only (customer-initiated alone): the body decides the other way round.
        (
            Mode::Enforce,
            Some(Scope::CustomerInitiated),
            Method::POST,
            &send,
            Body::Read(TEXT),
            "local",
        ),
        (
            Mode::Enforce,
            Some(Scope::CustomerInitiated),
            Method::POST,
            &send,
            Body::Read(TEMPLATE),
            "forward",
        ),
        (
            Mode::Enforce,
            Some(Scope::CustomerInitiated),
            Method::POST,
            &send,
            Body::Unread(Some(100)),
            "inspect",
        ),
        (
            Mode::Enforce,
            Some(Scope::CustomerInitiated),
            Method::POST,
            &send,
            Body::Unread(Some(5000)),
            "forward",
        ),
        (
            Mode::Enforce,
            Some(Scope::CustomerInitiated),
            Method::POST,
            &send,
            Body::Read(&big_template),
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
        template: None,
        country: None,
        recipient: None,
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

fn answer<'a>(status: u16, ce: &'a [&'a [u8]], body: &'a [u8]) -> Answer<'a> {
    Answer {
        status,
        content_encoding: ce,
        body,
        ..Answer::default()
    }
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
        let j = judge(&p.trip_codes, 1024, c, answer(status, ce, body), Utc::now());
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
    let j = judge(
        &p.trip_codes,
        1024,
        c,
        Answer::new(403, BLOCKED),
        Utc::now(),
    );
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
    let j = judge(
        &p.trip_codes,
        64,
        c,
        answer(403, &[b"gzip"], &gzipped),
        Utc::now(),
    );
    assert_eq!(j.change, None);
    assert!(j.unreadable.unwrap().contains("larger than 64"));
}

#[test]
fn classify_applies_the_trip_once() {
    let p = policy(Mode::Enforce, 1024);
    let c = call(&p, Method::POST, &format!("/v21.0/{PHONE}/messages"));
    assert!(p.classify(c, Answer::new(403, BLOCKED)).is_some());
    assert!(p.table().get(WABA).unwrap().is_open());
    // A second 368 while open changes nothing that needs storing.
    let again = p.classify(c, Answer::new(403, BLOCKED));
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

/// Phone-level codes open the phone number's own circuit (its WABA known or not) for a
/// hold, only from sends; account-level codes still open the WABA.
#[test]
fn phone_level_codes_open_the_phone_number_for_a_hold() {
    let p = policy(Mode::Enforce, 1024);
    let now = Utc::now();
    let send = call(&p, Method::POST, &format!("/v21.0/{PHONE}/messages"));
    let unmapped = call(&p, Method::POST, &format!("/v21.0/{OTHER}/messages"));
    let register = call(&p, Method::POST, &format!("/v21.0/{PHONE}/register"));
    for code in PHONE_CODES {
        let body = format!(r#"{{"error":{{"code":{code},"message":"m","fbtrace_id":"Tr"}}}}"#);
        for (c, waba) in [(send, WABA), (unmapped, "")] {
            let j = judge(
                &p.trip_codes,
                1024,
                c,
                Answer::new(400, body.as_bytes()),
                now,
            );
            let ch = j.change.expect("a phone circuit");
            assert_eq!(ch.waba_id, waba, "{code}");
            let phone = c.phone.map(|p| p.to_string());
            assert_eq!(ch.phone_number_id, phone, "{code}");
            let hold = chrono::Duration::from_std(phone_hold(*code, None)).unwrap();
            assert_eq!(
                ch.action,
                Action::Open {
                    scope: Scope::AllSends,
                    code: Some(*code),
                    until: Some(now + hold)
                }
            );
            assert!(ch.reason.contains("phone number level"));
        }
        // Not from another call.
        let j = judge(
            &p.trip_codes,
            1024,
            register,
            Answer::new(400, body.as_bytes()),
            now,
        );
        assert_eq!(j.change, None);
    }
    assert_eq!(phone_hold(MAINTENANCE, None), Duration::from_secs(60));
    assert_eq!(phone_hold(NOT_REGISTERED, None), Duration::from_secs(600));
    // A phone circuit answers that phone only.
    let j = judge(
        &p.trip_codes,
        1024,
        send,
        Answer::new(
            400,
            br#"{"error":{"code":133010,"message":"not registered"}}"#,
        ),
        now,
    );
    p.table().apply(j.change.unwrap());
    assert_eq!(decide(&p, send, Body::Unread(None)), "local");
    assert_eq!(decide(&p, unmapped, Body::Unread(None)), "forward");
    assert!(p.table().get(WABA).is_none_or(|c| !c.is_open()));
}

/// A template send with its name and language.
const NAMED: &[u8] = br#"{"messaging_product":"whatsapp","to":"15551234567","type":"template","template":{"name":"order_update","language":{"code":"en_US"}}}"#;

fn graph(code: i64) -> String {
    format!(r#"{{"error":{{"code":{code},"message":"Template is paused","fbtrace_id":"TpL"}}}}"#)
}

/// A send answered 132015/132016 opens its template's circuit (scope as for the webhook,
/// the answer as evidence); a non-template, oversized or unheld body, or an unmapped phone
/// number, opens nothing.
#[test]
fn template_codes_open_the_sends_template() {
    let p = policy(Mode::Enforce, 1024);
    let now = Utc::now();
    let send = call(&p, Method::POST, &format!("/v21.0/{PHONE}/messages"));
    let unmapped = call(&p, Method::POST, &format!("/v21.0/{OTHER}/messages"));
    let tpl = TemplateRef {
        name: "order_update".into(),
        language: "en_US".into(),
    };
    let h = |s: i64| now + chrono::Duration::seconds(s);
    // (code, retry-after, expected until)
    type Row<'a> = (i64, Option<&'a [u8]>, Option<DateTime<Utc>>);
    let rows: [Row<'_>; 5] = [
        (132016, None, None),
        (132016, Some(b"60"), None),
        (132015, None, Some(h(3 * 3600))),
        (132015, Some(b"120"), Some(h(120))),
        (132015, Some(b"999999"), Some(h(6 * 3600))),
    ];
    for (code, retry, until) in rows {
        let body = graph(code);
        let a = Answer {
            status: 400,
            retry_after: retry,
            request: Some(NAMED),
            ..Answer::new(400, body.as_bytes())
        };
        let j = judge(&p.trip_codes, 1024, send, a, now);
        assert_eq!(j.code, Some(code));
        let ch = j.change.expect("a template circuit");
        assert_eq!(ch.waba_id, WABA);
        assert_eq!(ch.phone_number_id, None);
        assert_eq!(ch.template.as_ref(), Some(&tpl));
        assert_eq!(ch.source, Source::Send);
        assert_eq!(
            ch.action,
            Action::Open {
                scope: Scope::BusinessInitiated,
                code: Some(code),
                until
            },
            "{code} {retry:?}"
        );
        let Some(Evidence::Send { fbtrace_id, .. }) = &ch.evidence else {
            panic!("send evidence")
        };
        assert_eq!(fbtrace_id.as_deref(), Some("TpL"));
        // Nothing for a text, an unheld or oversized body, another call or an unmapped phone.
        for (c, request, cap) in [
            (send, Some(TEXT), 1024),
            (send, None, 1024),
            (send, Some(NAMED), NAMED.len() - 1),
            (unmapped, Some(NAMED), 1024),
            (
                call(&p, Method::POST, &format!("/v21.0/{PHONE}/register")),
                Some(NAMED),
                1024,
            ),
        ] {
            let a = Answer {
                request,
                ..Answer::new(400, body.as_bytes())
            };
            let j = judge(&p.trip_codes, cap, c, a, now);
            assert_eq!((j.code, j.change), (Some(code), None));
        }
    }
    // Applied: only that template's sends are answered locally, with Meta's code.
    let body = graph(132016);
    let a = Answer {
        request: Some(NAMED),
        ..Answer::new(400, body.as_bytes())
    };
    assert!(p.classify(send, a).is_some());
    assert_eq!(decide(&p, send, Body::Read(NAMED)), "local");
    assert_eq!(decide(&p, send, Body::Read(TEXT)), "forward");
    let other = String::from_utf8_lossy(NAMED).replace("order_update", "welcome");
    assert_eq!(decide(&p, send, Body::Read(other.as_bytes())), "forward");
    assert!(p.table().get(WABA).is_none_or(|c| !c.is_open()));
}

#[test]
fn retry_after_values() {
    let now = Utc::now();
    let s = Duration::from_secs;
    assert_eq!(retry_after(b"5", now), Some(s(5)));
    assert_eq!(retry_after(b" 120 ", now), Some(s(120)));
    assert_eq!(retry_after(b"0", now), Some(s(0)));
    assert_eq!(
        retry_after(b"99999999999999999999999", now),
        Some(Duration::from_secs(u64::MAX))
    );
    let later = httpdate::fmt_http_date((now + chrono::Duration::seconds(90)).into());
    let got = retry_after(later.as_bytes(), now).unwrap();
    assert!((s(89)..=s(90)).contains(&got), "{got:?}");
    let past = httpdate::fmt_http_date((now - chrono::Duration::seconds(90)).into());
    assert_eq!(retry_after(past.as_bytes(), now), Some(s(0)));
    for bad in [&b""[..], b"-5", b"1.5", b"soon", b"\xff"] {
        assert_eq!(retry_after(bad, now), None, "{bad:?}");
    }
    // The maintenance hold: the value, clamped; the others ignore it.
    assert_eq!(phone_hold(MAINTENANCE, Some(s(5))), s(5));
    assert_eq!(phone_hold(MAINTENANCE, Some(s(0))), s(1));
    assert_eq!(phone_hold(MAINTENANCE, Some(s(86400))), s(900));
    assert_eq!(phone_hold(MAINTENANCE, None), s(60));
    assert_eq!(phone_hold(NOT_REGISTERED, Some(s(5))), s(600));
    // Through judge.
    let p = policy(Mode::Enforce, 1024);
    let send = call(&p, Method::POST, &format!("/v21.0/{PHONE}/messages"));
    let body = br#"{"error":{"code":131057,"message":"maintenance"}}"#;
    for (retry, hold) in [(Some(&b"5"[..]), 5), (Some(b"junk"), 60), (None, 60)] {
        let a = Answer {
            retry_after: retry,
            ..Answer::new(400, body)
        };
        let j = judge(&p.trip_codes, 1024, send, a, now);
        let Some(Change {
            action: Action::Open { until, .. },
            ..
        }) = j.change
        else {
            panic!("open")
        };
        assert_eq!(until, Some(now + chrono::Duration::seconds(hold)));
    }
}

/// Every request body up to 64 KiB (or `classify_body_limit`, when larger) is read before
/// the permit (issue 25), whatever the call; a larger one streams.
#[test]
fn bodies_read_before_the_permit() {
    let p = policy(Mode::Enforce, 1024);
    assert_eq!(p.read_first_limit(), READ_FIRST);
    assert_eq!(p.read_first(Some(1024)), Some(READ_FIRST));
    assert_eq!(p.read_first(None), Some(READ_FIRST));
    assert_eq!(p.read_first(Some(READ_FIRST as u64)), Some(READ_FIRST));
    assert_eq!(p.read_first(Some(READ_FIRST as u64 + 1)), None);
    let p = policy(Mode::Enforce, 1 << 20);
    assert_eq!(p.read_first(Some(1 << 20)), Some(1 << 20));
}

/// The README's error-code table names every code the policy acts on: the phone-level
/// codes, the default trip codes and the template codes (so table and code cannot drift).
#[test]
fn readme_code_table_covers_every_code_acted_on() {
    const README: &str = include_str!("../../README.md");
    let table = README
        .split_once("#### Error codes: level and what the gateway does")
        .map(|(_, rest)| rest)
        .expect("the README's error-code section");
    // The first column of each row of the section's first table: the codes it names.
    let mut listed = Vec::new();
    for line in table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
    {
        let first = line.split('|').nth(1).unwrap_or_default();
        for part in first.split(',') {
            // A range `a–b` lists both ends and everything between.
            let ends: Vec<i64> = part
                .split(['–', '-'])
                .filter_map(|n| n.trim().parse().ok())
                .collect();
            match ends.as_slice() {
                [a] => listed.push(*a),
                [a, b] => listed.extend(*a..=*b),
                _ => {}
            }
        }
    }
    assert!(listed.len() > 20, "parsed {listed:?}");
    let defaults = crate::graph::codes::DEFAULT_TRIP_CODES.to_vec();
    for code in PHONE_CODES
        .iter()
        .chain(&defaults)
        .chain(TEMPLATE_CODES)
        .chain(&[
            POLICY_BLOCK,
            ACCOUNT_LOCKED,
            crate::graph::codes::COUNTRY_RESTRICTED,
            crate::graph::codes::SPAM_RATE,
            crate::graph::codes::PAIR_RATE,
            crate::graph::codes::THROUGHPUT,
        ])
    {
        assert!(
            listed.contains(code),
            "code {code} is missing from the README's error-code table"
        );
    }
}

/// A send answered 130497 opens the circuit of its WABA's sends to the recipient's country
/// calling code for `country_hold` — never the WABA's, even with 130497 in `trip_codes` —
/// and only sends to that country are answered locally (read from the body, which is asked
/// for only while the WABA has a country circuit). An unmapped phone number, an unheld or
/// oversized body, or a `to` with no country opens nothing.
#[test]
fn country_code_opens_the_recipients_country() {
    let p = policy(Mode::Enforce, 1024);
    let now = Utc::now();
    let send = call(&p, Method::POST, &format!("/v21.0/{PHONE}/messages"));
    let unmapped = call(&p, Method::POST, &format!("/v21.0/{OTHER}/messages"));
    let de: &[u8] = br#"{"messaging_product":"whatsapp","to":"+49 151 2345 6789","type":"text","text":{"body":"hi"}}"#;
    let de2: &[u8] = br#"{"to":"4915123456789","type":"template","template":{"name":"t"}}"#;
    let uk: &[u8] = br#"{"to":"+44 7700 900123","type":"text"}"#;
    let national: &[u8] = br#"{"to":"0151 2345 6789","type":"text"}"#;
    let body = r#"{"error":{"code":130497,"message":"Business account is restricted from messaging users in this country","fbtrace_id":"CtY"}}"#;
    let hold = Duration::from_secs(7200);
    for trips in [vec![368, 131031], vec![368, 131031, 130497]] {
        let a = Answer {
            request: Some(de),
            ..Answer::new(403, body.as_bytes())
        };
        let j = judge_with(&trips, 1024, hold, send, a, now);
        assert_eq!(j.code, Some(130497));
        let ch = j.change.expect("a country circuit");
        assert_eq!(ch.key(), format!("country:{WABA}:49"));
        assert_eq!((ch.phone_number_id, ch.template), (None, None));
        assert_eq!(
            ch.action,
            Action::Open {
                scope: Scope::AllSends,
                code: Some(130497),
                until: Some(now + chrono::Duration::seconds(7200)),
            }
        );
        assert!(
            !format!("{:?}", ch.evidence).contains("2345"),
            "no recipient"
        );
    }
    for (c, request, cap) in [
        (unmapped, Some(de), 1024),
        (send, None, 1024),
        (send, Some(de), de.len() - 1),
        (send, Some(national), 1024),
    ] {
        let a = Answer {
            request,
            ..Answer::new(403, body.as_bytes())
        };
        let j = judge_with(&p.trip_codes, cap, hold, c, a, now);
        assert_eq!((j.code, j.change), (Some(130497), None));
    }
    // Nothing held: no body is asked for.
    assert_eq!(decide(&p, send, Body::Unread(Some(100))), "forward");
    let a = Answer {
        request: Some(de),
        ..Answer::new(403, body.as_bytes())
    };
    assert!(p.classify(send, a).is_some(), "waits for durability");
    assert_eq!(decide(&p, send, Body::Unread(Some(100))), "inspect");
    assert_eq!(decide(&p, send, Body::Unread(Some(4096))), "forward");
    assert_eq!(decide(&p, send, Body::Read(de)), "local");
    assert_eq!(decide(&p, send, Body::Read(de2)), "local");
    assert_eq!(decide(&p, send, Body::Read(uk)), "forward");
    assert_eq!(decide(&p, send, Body::Read(national)), "forward");
    assert_eq!(decide(&p, send, Body::Read(TEXT)), "forward");
    assert_eq!(decide(&p, unmapped, Body::Read(de)), "forward");
    assert!(p.table().get(WABA).is_none_or(|c| !c.is_open()));
    let local = p.admit(send, Body::Read(de), |r| {
        String::from_utf8_lossy(r.body()).into_owned()
    });
    let Admit::Local { answer, .. } = local else {
        panic!("local")
    };
    assert!(
        answer.contains("130497") && answer.contains("+49 (DE)"),
        "{answer}"
    );
    // Observe mode forwards.
    let o = policy(Mode::Observe, 1024);
    let a = Answer {
        request: Some(de),
        ..Answer::new(403, body.as_bytes())
    };
    o.classify(send, a);
    assert_eq!(decide(&o, send, Body::Read(de)), "forward");
}
