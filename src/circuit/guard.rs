//! What the hot path reads of an open circuit: its [`OpenGuard`], built once per opening with
//! the local answer's body already made, so a blocked app retrying costs no allocation.
//! The wording of local answers lives here ([`local_body`]), beside the guard that carries it.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};

use super::model::{Circuit, Evidence};
use crate::graph::codes;
use crate::graph::envelope::{self, GATEWAY_TRACE_PREFIX};

/// What the hot path needs to know about an open circuit, built once per opening.
#[derive(Debug)]
pub struct OpenGuard {
    /// Which sends are answered locally.
    pub scope: super::Scope,
    /// Known end, as Unix seconds, for `retry-after`.
    pub until_unix: Option<i64>,
    /// The local reply body (a Cloud API error envelope).
    pub body: Bytes,
    /// Sequence number of the change that made it (see [`super::Table::durable_seq`]): a
    /// local answer given before that change is durable waits for it.
    pub seq: u64,
}

impl OpenGuard {
    /// The guard of the open circuit `c`, made by change `seq`.
    pub fn new(c: &Circuit, seq: u64) -> OpenGuard {
        OpenGuard {
            scope: c.scope,
            until_unix: c.until.map(|u: DateTime<Utc>| u.timestamp()),
            body: local_body(c),
            seq,
        }
    }
}

/// The `fbtrace_id` a local answer carries: the tripping answer's (what Meta support asks
/// for), else a gateway-made id for this opening, marked with [`GATEWAY_TRACE_PREFIX`].
pub fn local_trace_id(c: &Circuit) -> String {
    if let Some(Evidence::Send {
        fbtrace_id: Some(id),
        ..
    }) = c.last_opening().and_then(|t| t.evidence.as_ref())
    {
        // Meta's ids are short base64-ish tokens; anything else is not echoed.
        if !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'/' | b'+' | b'='))
        {
            return id.clone();
        }
    }
    let opened = c.opened_at.unwrap_or(c.updated_at).timestamp();
    format!("{GATEWAY_TRACE_PREFIX}local-{opened:x}-{:x}", c.version)
}

/// ` (DE)`: the regions of a calling code, for people.
fn country_regions(code: &str) -> String {
    match super::country::parse_code(code).map(super::country::regions) {
        Some(r) if !r.is_empty() => format!(" ({r})"),
        _ => String::new(),
    }
}

/// The body of an open circuit's local answer: Meta's envelope with the code that opened
/// it, `error_data.details` saying the gateway answered (and since when, until when, why),
/// and `fbtrace_id` from [`local_trace_id`].
pub fn local_body(c: &Circuit) -> Bytes {
    let code = c.code.unwrap_or(codes::POLICY_BLOCK);
    let since = c
        .opened_at
        .unwrap_or(c.updated_at)
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    let until = c
        .until
        .map(|u| format!(" until {}", u.to_rfc3339_opts(SecondsFormat::Secs, true)))
        .unwrap_or_default();
    let whose = match (&c.template, &c.country, &c.phone_number_id) {
        (Some(t), _, _) => format!(
            "template {} ({}) of WhatsApp Business Account {}",
            t.name, t.language, c.waba_id
        ),
        (None, Some(code), _) => format!(
            "sends of WhatsApp Business Account {} to recipients of country calling code +{code}{} (Meta restricted the account from messaging users in that country)",
            c.waba_id,
            country_regions(code)
        ),
        (None, None, Some(p)) => format!("phone number {p}"),
        (None, None, None) => format!("WhatsApp Business Account {}", c.waba_id),
    };
    let trace = local_trace_id(c);
    let trace_note = if trace.starts_with(GATEWAY_TRACE_PREFIX) {
        " fbtrace_id is the gateway's own (no Meta trace)."
    } else {
        " fbtrace_id is that of Meta's answer that opened it."
    };
    let details = format!(
        "wa-breaker answered locally; the request was not sent to Meta. The circuit for {whose} has been open since {since}{until} (source: {}).{trace_note}",
        c.source.as_str()
    );
    envelope::build(
        code,
        None,
        "OAuthException",
        codes::title(code),
        &details,
        &trace,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::{State, Transition};

    fn circuit_with(evidence: Option<Evidence>) -> Circuit {
        let now = Utc::now();
        let mut c = Circuit::new("102290129340398", now);
        c.state = State::Open;
        c.code = Some(131031);
        c.opened_at = Some(now);
        c.version = 3;
        c.history.push(Transition {
            at: now,
            to: State::Open,
            source: crate::circuit::Source::Send,
            note: false,
            reason: "locked".into(),
            evidence,
            clamped_from: None,
            warning: None,
        });
        c
    }

    #[test]
    fn local_body_carries_the_tripping_trace_or_a_marked_one() {
        let send = |id: Option<&str>| Evidence::Send {
            code: 131031,
            error_subcode: None,
            message: "locked".into(),
            fbtrace_id: id.map(str::to_owned),
            phone_number_id: None,
        };
        let e =
            envelope::parse(&local_body(&circuit_with(Some(send(Some("AbCdEfGhIjK")))))).unwrap();
        assert_eq!(e.code, 131031);
        assert_eq!(e.fbtrace_id.as_deref(), Some("AbCdEfGhIjK"));
        assert!(e
            .details
            .unwrap()
            .starts_with("wa-breaker answered locally"));
        // No trace from Meta (webhook, operator) or one not fit to echo: the gateway's own.
        for ev in [
            None,
            Some(send(None)),
            Some(send(Some("bad\"id\r\n"))),
            Some(Evidence::Admin { reason: "x".into() }),
        ] {
            let e = envelope::parse(&local_body(&circuit_with(ev))).unwrap();
            let id = e.fbtrace_id.unwrap();
            assert!(id.starts_with(GATEWAY_TRACE_PREFIX), "{id}");
            assert!(e.details.unwrap().contains("gateway's own"));
        }
    }
}
