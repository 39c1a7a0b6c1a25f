//! The policy core: every decision on the request path, sans-I/O (no sockets, no awaits),
//! called by both engines — the byte relay ([`crate::relay`]) and the hyper + tower stack
//! ([`crate::proxy`]). The engines move bytes and wait; this module decides.
//!
//! A request's path, in the order the engines call it:
//!
//! | step | call | what is decided |
//! |---|---|---|
//! | route + resolve | [`Policy::route`] | webhook or Graph call; a send or not; the phone number's WABA ([`accounts`]) |
//! | guard | [`Policy::admit`] | forward, read the body first (template sends), or answer locally ([`Reply::open`]) |
//! | limit | engines wait for an upstream permit ([`crate::upstream::Limiter`]), then [`Policy::admit`] again | a send queued while a circuit tripped is answered locally |
//! | forward | engines; request headers filtered by [`hop`] | — |
//! | classify | [`Policy::inspect`] on the answer's head, then [`Policy::classify`] on its body ([`judge`], [`decode`]) | whether to read the body; whether it trips the WABA's circuit |
//! | respond | engines; answer headers filtered by [`hop`]; failures as [`Reply::forward_failed`] | — |
//! | record | [`Policy::record`] | the request's outcome in the metrics, once per request |
//!
//! The upstream limit's permit is held from forwarding until [`Policy::classify`] has
//! decided, so no queued send slips out between Meta's 368 and the trip it causes.

pub mod decode;
pub mod hop;
pub mod reply;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::Method;

use crate::circuit::{Action, Change, Evidence, Scope, Source, Table};
pub use crate::circuit::{Id, Resolved};
use crate::config::{Config, Mode};
use crate::graph::envelope;
use crate::graph::route::{self, Kind};
use crate::metrics::METRICS;
pub use reply::Reply;

/// Graph error code of a policy block ("temporarily blocked for policies violations").
pub const CODE_POLICY_BLOCK: i64 = 368;
/// Graph error code of a locked account (also: unverifiable request data, e.g. a wrong
/// two-step PIN on `/register` — which is why only sends trip).
pub const CODE_ACCOUNT_LOCKED: i64 = 131031;

/// Longest wait for a trip to be durable before its answer goes to the app anyway.
pub const ACK_WAIT: Duration = Duration::from_secs(1);

/// What the route step found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The webhook path: Meta's deliveries, served by [`crate::signals::webhook`].
    Webhook,
    /// A Graph API call, forwarded (or answered locally).
    Graph(Call),
}

/// A Graph call as the policy sees it (its ids inline: `Copy`, no allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    /// Send, other write, or read.
    pub kind: Kind,
    /// The phone number and its WABA, when the node is a known phone number.
    pub account: Option<Resolved>,
    /// The phone-number id of a send (known or not): its own circuit, and what discovery
    /// asks about when its WABA is not known.
    pub phone: Option<Id>,
}

impl Call {
    /// A call nothing is decided for.
    pub const READ: Call = Call {
        kind: Kind::Read,
        account: None,
        phone: None,
    };

    /// A send whose phone number is not mapped to a WABA (forwarded unprotected).
    pub fn unmapped_send(&self) -> bool {
        self.kind == Kind::Send && self.account.is_none()
    }
}

/// What the engine has of the request body when it asks [`Policy::admit`].
#[derive(Clone, Copy, Debug)]
pub enum Body<'b> {
    /// Not read yet; its declared length when known.
    Unread(Option<u64>),
    /// The whole body.
    Read(&'b [u8]),
}

/// The guard's decision.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<R> {
    /// Forward the request.
    Forward,
    /// Read the body (at most `limit` bytes; a larger one is forwarded) and ask again.
    Inspect {
        /// Largest body worth reading.
        limit: usize,
    },
    /// Answered locally: `answer` is what the engine's closure made of the [`Reply`]. When
    /// the open is not durable yet, `unacked` is its sequence number: the engine passes the
    /// answer on after [`Policy::acknowledged`] (a kill -9 then never forgets a block the
    /// app has heard of).
    Local {
        /// The engine's rendering of the reply.
        answer: R,
        /// The change to wait for, when not yet durable.
        unacked: Option<u64>,
    },
}

/// What to do with an upstream answer's body before relaying it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inspect {
    /// Relay it as it comes (2xx answers are never read or decoded).
    Pass,
    /// Read up to `limit` bytes (a larger body passes unjudged), then [`Policy::classify`].
    Read {
        /// Largest body read.
        limit: usize,
    },
}

/// How a forwarded (or locally answered) request ended, for [`Policy::record`].
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    /// Answered locally by an open circuit.
    Local,
    /// The upstream answered with `status`; `to_head` is the time to the answer's head.
    Answered {
        /// The answer's status code.
        status: u16,
        /// From forwarding to the answer head.
        to_head: Duration,
    },
    /// The forward failed (no answer, a broken one, a timeout).
    Failed {
        /// Time until the failure was seen.
        after: Duration,
    },
}

/// What [`judge`] makes of an error answer.
#[derive(Debug, PartialEq)]
pub struct Judgement {
    /// The Graph error code, when the body is an error envelope.
    pub code: Option<i64>,
    /// The circuit change it causes, if any.
    pub change: Option<Change>,
    /// Why the body could not be read (it passes on unjudged).
    pub unreadable: Option<String>,
}

/// The decisions, with what they read: the account map, the circuit table and the
/// configured mode, trip codes and inspection cap. One per process, shared by every worker.
pub struct Policy {
    table: Arc<Table>,
    mode: Mode,
    trip_codes: Vec<i64>,
    classify_limit: usize,
    webhook_path: String,
    /// A late acknowledgement was logged and none has been on time since.
    ack_late_logged: AtomicBool,
}

impl Policy {
    /// From the validated config.
    pub fn new(cfg: &Config, table: Arc<Table>) -> Policy {
        Policy {
            table,
            mode: cfg.mode,
            trip_codes: cfg.trip_codes.clone(),
            classify_limit: cfg.classify_body_limit,
            webhook_path: cfg.webhook.path.clone(),
            ack_late_logged: AtomicBool::new(false),
        }
    }

    /// The circuit table the policy reads.
    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    /// Route + resolve: the webhook path, or a Graph call with its kind and account.
    /// `path` is without the query.
    pub fn route(&self, method: &Method, path: &str) -> Route {
        if path == self.webhook_path {
            return Route::Webhook;
        }
        Route::Graph(match route::parse(method, path) {
            Some(r) => Call {
                kind: r.kind,
                account: self.table.resolve(r.node),
                phone: (r.kind == Kind::Send).then(|| Id::new(r.node)).flatten(),
            },
            None => Call::READ,
        })
    }

    /// The guard. A send of a WABA whose circuit is open is answered locally when it is in
    /// the circuit's scope: every send for `all_sends`, template sends for
    /// `business_initiated` (which needs the body; one over `classify_body_limit` is
    /// forwarded — too large to judge, Meta decides). Reads and other calls always pass, and
    /// so does everything in observe mode. `local` turns the reply into what the engine
    /// sends, while the circuit is read-locked: keep it short.
    pub fn admit<R>(
        &self,
        call: Call,
        body: Body<'_>,
        local: impl FnOnce(Reply<'_>) -> R,
    ) -> Admit<R> {
        if self.mode == Mode::Observe || call.kind != Kind::Send {
            return Admit::Forward;
        }
        let limit = self.classify_limit;
        let mut local = Some(local);
        let mut judge = |guard: &crate::circuit::OpenGuard| -> Admit<R> {
            let in_scope = match (guard.scope, body) {
                (Scope::AllSends, _) => Some(true),
                (Scope::BusinessInitiated, Body::Read(b)) => {
                    Some(b.len() <= limit && is_template(b))
                }
                (Scope::BusinessInitiated, Body::Unread(Some(n))) if n > limit as u64 => {
                    Some(false)
                }
                (Scope::BusinessInitiated, Body::Unread(_)) => None,
            };
            match (in_scope, local.take()) {
                (Some(true), Some(f)) => Admit::Local {
                    answer: f(Reply::open(guard)),
                    unacked: (guard.seq > self.table.durable_seq()).then_some(guard.seq),
                },
                (None, _) => Admit::Inspect { limit },
                _ => Admit::Forward,
            }
        };
        // The WABA's circuit first, then the phone number's own (a phone number of unknown
        // WABA that tripped, or one blocked on its own).
        if let Some(a) = call.account {
            match self.table.with_guard(&a.waba, &mut judge) {
                Some(Admit::Forward) | None => {}
                Some(decided) => return decided,
            }
        }
        match call.phone {
            Some(p) => self
                .table
                .with_phone_guard(&p, &mut judge)
                .unwrap_or(Admit::Forward),
            None => Admit::Forward,
        }
    }

    /// On an answer's head: a non-2xx answer is read (up to `classify_body_limit`) to be
    /// judged; a 2xx, or one that declares a larger body, passes as it comes.
    pub fn inspect(&self, status: u16, content_length: Option<u64>) -> Inspect {
        if (200..300).contains(&status)
            || content_length.is_some_and(|n| n > self.classify_limit as u64)
        {
            Inspect::Pass
        } else {
            Inspect::Read {
                limit: self.classify_limit,
            }
        }
    }

    /// Judges an error answer's body (see [`judge`]), counts its Graph code and applies the
    /// circuit change. When the answer is an enforcement error for a send whose circuit is
    /// open but not yet durable (this trip, or a concurrent one), returns the sequence number
    /// to wait for with [`Policy::acknowledged`] before the answer goes to the app.
    pub fn classify(
        &self,
        call: Call,
        status: u16,
        content_encoding: &[&[u8]],
        body: &[u8],
    ) -> Option<u64> {
        let j = judge(
            &self.trip_codes,
            self.classify_limit,
            call,
            status,
            content_encoding,
            body,
            Utc::now(),
        );
        if let Some(code) = j.code {
            METRICS.upstream_code(code);
        }
        if let Some(why) = &j.unreadable {
            tracing::debug!(status, reason = %why, "error answer not judged");
        }
        let change = j.change?;
        let phone_circuit = change.phone_number_id.is_some();
        let waba = change.waba_id.clone();
        self.table.apply(change);
        let durable = self.table.durable_seq();
        let seq = match (phone_circuit, call.phone) {
            (true, Some(p)) => self.table.with_phone_guard(&p, |g| g.seq),
            _ => self.table.with_guard(&waba, |g| g.seq),
        };
        seq.filter(|seq| *seq > durable)
    }

    /// Waits (at most [`ACK_WAIT`]) until the change `seq` is committed to the embedded
    /// store. Past the bound the answer goes anyway: counted in
    /// `wa_breaker_ack_timeouts_total` and logged once per stretch of timeouts.
    pub async fn acknowledged(&self, seq: u64) {
        if self.table.wait_durable(seq, ACK_WAIT).await {
            self.ack_late_logged.store(false, Ordering::Relaxed);
            return;
        }
        METRICS.ack_timeouts.inc();
        if !self.ack_late_logged.swap(true, Ordering::Relaxed) {
            tracing::error!(
                wait_ms = ACK_WAIT.as_millis() as u64,
                "a circuit change was not durable in time: answering anyway (a kill -9 now could forget it; see wa_breaker_store_durable)"
            );
        }
    }

    /// Records how a request ended: one call per request, from either engine.
    pub fn record(&self, call: Call, outcome: Outcome) {
        match outcome {
            Outcome::Local => METRICS.answered_locally.inc(),
            Outcome::Answered { status, to_head } => {
                METRICS.observe_upstream(Some(status), to_head.as_secs_f64());
                if call.unmapped_send() {
                    METRICS.unmapped.inc();
                } else {
                    METRICS.forwarded.inc();
                }
            }
            Outcome::Failed { after } => {
                METRICS.observe_upstream(None, after.as_secs_f64());
                METRICS.upstream_error.inc();
            }
        }
    }
}

/// Judges a non-2xx answer's body (pure): decodes it as `content-encoding` says (capped at
/// `cap` decoded bytes), reads the Graph error envelope, and — for a **send** of a known
/// phone number answered with a code in `trip_codes` — opens the WABA's circuit for all
/// sends, with the answer as evidence. Any other call (a `/register` with a wrong PIN
/// answered 131031, a `GET`, a media upload) never trips: only sends are enforcement
/// signals. Unreadable bodies (not an envelope, unknown or corrupt encoding, too large
/// decoded) trip nothing.
pub fn judge(
    trip_codes: &[i64],
    cap: usize,
    call: Call,
    status: u16,
    content_encoding: &[&[u8]],
    body: &[u8],
    now: DateTime<Utc>,
) -> Judgement {
    let mut j = Judgement {
        code: None,
        change: None,
        unreadable: None,
    };
    let body = match decode::decode(content_encoding, body, cap) {
        Ok(b) => b,
        Err(e) => {
            j.unreadable = Some(crate::upstream::error_chain(&e));
            return j;
        }
    };
    let Some(err) = envelope::parse(&body) else {
        j.unreadable = Some("not a Graph error envelope".into());
        return j;
    };
    j.code = Some(err.code);
    if call.kind != Kind::Send || !trip_codes.contains(&err.code) {
        return j;
    }
    // A known phone number trips its WABA; one whose WABA is not known yet trips its own
    // circuit, widened to the WABA once the owner is learned (never a guess).
    let (waba_id, phone_number_id) = match (call.account, call.phone) {
        (Some(a), _) => (a.waba.to_string(), None),
        (None, Some(p)) => (String::new(), Some(p.to_string())),
        (None, None) => return j,
    };
    let reason = if err.message.is_empty() {
        format!("HTTP {status}, Graph error {}", err.code)
    } else {
        err.message.clone()
    };
    j.change = Some(Change {
        waba_id,
        phone_number_id,
        action: Action::Open {
            scope: Scope::AllSends,
            code: Some(err.code),
            until: None,
        },
        source: Source::Send,
        at: now,
        reason,
        evidence: Some(Evidence::Send {
            code: err.code,
            error_subcode: err.error_subcode,
            message: err.message,
            fbtrace_id: err.fbtrace_id,
            phone_number_id: call.phone.map(|p| p.to_string()),
        }),
    });
    j
}

/// True when a send body is a template message (`"type": "template"`).
pub fn is_template(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Msg<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Msg>(body)
        .ok()
        .and_then(|m| m.kind)
        .is_some_and(|k| k == "template")
}

#[cfg(test)]
mod tests;

/// Test helpers shared by the crate's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use super::{Policy, Route};
    use crate::circuit::{Scope, Source, Table};
    use crate::config::{Account, Config, Mode};

    /// The WABA of [`policy`]'s one account.
    pub const WABA: &str = "102290129340398";
    /// Its phone number.
    pub const PHONE: &str = "106540352242922";

    /// A policy over an empty table with one account (`WABA`: `PHONE`).
    pub fn policy(mode: Mode, classify_body_limit: usize) -> Policy {
        let cfg = Config {
            mode,
            classify_body_limit,
            accounts: vec![Account {
                waba_id: WABA.into(),
                phone_number_ids: vec![PHONE.into()],
            }],
            ..Config::default()
        };
        Policy::new(&cfg, Arc::new(Table::for_config("test", &cfg)))
    }

    /// Opens `WABA`'s circuit with `scope`.
    pub fn open(p: &Policy, scope: Scope) {
        p.table().apply(crate::circuit::testing::open(
            WABA,
            scope,
            None,
            Source::Admin,
        ));
    }

    /// A request for `PHONE`'s `edge`, with its routed target.
    pub fn request<B>(p: &Policy, method: http::Method, edge: &str, body: B) -> http::Request<B> {
        let path = format!("/v21.0/{PHONE}/{edge}");
        let Route::Graph(call) = p.route(&method, &path) else {
            panic!("{path} is the webhook path")
        };
        let target = crate::proxy::route::Target(call);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .body(body)
            .unwrap_or_else(|e| panic!("{e}"));
        req.extensions_mut().insert(target);
        req
    }
}
