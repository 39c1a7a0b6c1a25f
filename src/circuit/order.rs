//! The transition rules: what a change does to a circuit. Pure and exhaustively tested.

use chrono::{DateTime, Utc};

use super::model::{Circuit, Evidence, Scope, Source, State, Transition, Warning};

/// What a change asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Open (or re-open / re-scope) the circuit.
    Open {
        /// Which sends it answers locally.
        scope: Scope,
        /// The Graph code its local replies carry (368 when none).
        code: Option<i64>,
        /// The known end, if any.
        until: Option<DateTime<Utc>>,
    },
    /// Close it.
    Close,
    /// Close it only if it is still open with exactly this `until`.
    Expire {
        /// The end the timer was armed for.
        until: DateTime<Utc>,
    },
    /// Record an event that does not change the state.
    Note,
    /// Record a warning: a note that is listed and announced (it blocks nothing).
    Warn(Warning),
    /// Meta answered a send with 131056: hold the pair (a record keyed by
    /// `phone_number_id` and `recipient`) by the repeat rule of [`super::pair::hit`],
    /// first for `hold`. A delivery or an operator ends it with [`Action::Close`].
    PairHit {
        /// `shaping.pair_hold`: the first hold.
        hold: std::time::Duration,
    },
    /// Record a template's category (a note that also sets [`Circuit::category`]; creates
    /// a closed template record when there is none).
    Categorize {
        /// The category it has now (`new_category`, `message_template_category`, an
        /// operator's), when the event says.
        category: Option<String>,
        /// Meta's advance notice (`correct_category`) and when the move is due.
        coming: Option<(String, Option<DateTime<Utc>>)>,
    },
}

/// A change from any signal: a send, a webhook, a poll, an operator, a timer.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The WABA of the circuit changed (empty for a phone-number circuit whose WABA is not
    /// known).
    pub waba_id: String,
    /// Set for a phone-number circuit: the circuit of this one phone number.
    pub phone_number_id: Option<String>,
    /// Set for a template circuit: the circuit of this one template of `waba_id`.
    pub template: Option<super::template::TemplateRef>,
    /// Set for a country circuit: the circuit of `waba_id`'s sends to this calling code.
    pub country: Option<String>,
    /// Set for a marketing cooldown: the recipient's digits (see [`Circuit::recipient`]).
    pub recipient: Option<String>,
    /// What the change asks for.
    pub action: Action,
    /// What caused it.
    pub source: Source,
    /// Event time: orders changes; an older one never overwrites a newer state.
    pub at: DateTime<Utc>,
    /// Short human text.
    pub reason: String,
    /// What proves it.
    pub evidence: Option<Evidence>,
}

impl Change {
    /// The key of the circuit it changes (see [`Circuit::key`]).
    pub fn key(&self) -> String {
        super::model::full_key(
            &self.waba_id,
            self.phone_number_id.as_deref(),
            self.template.as_ref(),
            self.recipient.as_deref(),
            self.country.as_deref(),
        )
    }
}

/// The result of [`decide`].
// Returned once per change and moved straight into the table: boxing the circuit would
// only add an allocation per change.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The circuit changed; `transition` is true when its state or scope did.
    Applied {
        /// The circuit after the change.
        circuit: Circuit,
        /// Its state or scope changed (not only its record).
        transition: bool,
    },
    /// Nothing changes; the reason is for logs.
    Ignored(&'static str),
}

/// Applies `change` to `current` (a fresh closed circuit when none), `now` being wall time.
pub fn decide(
    current: Option<&Circuit>,
    change: &Change,
    origin: &str,
    history_limit: usize,
    now: DateTime<Utc>,
) -> Outcome {
    let fresh;
    let cur = match current {
        Some(c) => c,
        None => {
            fresh = Circuit {
                phone_number_id: change.phone_number_id.clone(),
                template: change.template.clone(),
                country: change.country.clone(),
                recipient: change.recipient.clone(),
                ..Circuit::new(&change.waba_id, DateTime::<Utc>::MIN_UTC)
            };
            &fresh
        }
    };
    let mut next = cur.clone();
    next.version = cur.version + 1;
    next.origin = origin.to_string();

    // An operator's change always takes effect: it orders after everything the circuit
    // holds (a webhook dated in the future included), at the same event time at the least;
    // the version bump breaks the tie the same way on every replica.
    let owned;
    let change = if change.source == Source::Admin && change.at < cur.updated_at {
        owned = Change {
            at: cur.updated_at,
            ..change.clone()
        };
        &owned
    } else {
        change
    };
    let stale = change.at < cur.updated_at;
    let note = |next: &mut Circuit| {
        push(
            next,
            Transition {
                at: change.at,
                to: cur.state,
                source: change.source,
                note: true,
                reason: change.reason.clone(),
                evidence: change.evidence.clone(),
                clamped_from: None,
                warning: match &change.action {
                    Action::Warn(w) => Some(w.clone()),
                    _ => None,
                },
            },
            history_limit,
        )
    };

    if cur.is_pair() {
        return decide_pair(current, cur, next, change, now);
    }

    match &change.action {
        Action::PairHit { .. } => Outcome::Ignored("not a pair hold"),
        Action::Categorize { category, coming } => {
            let Some(next_category) =
                super::cooldown::categorize(cur.category.as_deref(), change, category, coming)
            else {
                return Outcome::Ignored("category older or unchanged");
            };
            next.category = Some(Box::new(next_category));
            note(&mut next);
            Outcome::Applied {
                circuit: next,
                transition: false,
            }
        }
        // A warning is a note the sinks hear of: the same event delivered again (Meta
        // redelivers) is the same note, recorded and announced once.
        Action::Note | Action::Warn(_) => {
            let dup = cur
                .history
                .iter()
                .any(|t| t.note && t.at == change.at && t.reason == change.reason);
            if dup {
                return Outcome::Ignored("duplicate note");
            }
            note(&mut next);
            Outcome::Applied {
                circuit: next,
                transition: false,
            }
        }
        Action::Open { scope, code, until } => {
            if stale {
                return Outcome::Ignored("older than the circuit's state");
            }
            if until.is_some_and(|u| u <= now) {
                // A late webhook for a restriction that is already over: keep it as evidence only.
                if cur
                    .history
                    .iter()
                    .any(|t| t.at == change.at && t.reason == change.reason)
                {
                    return Outcome::Ignored("duplicate note");
                }
                note(&mut next);
                return Outcome::Applied {
                    circuit: next,
                    transition: false,
                };
            }
            if cur.is_open() {
                let same = cur.scope == *scope && cur.until == *until;
                // A send that fails while already open only matters if it widens the scope.
                let redundant_send = change.source == Source::Send && cur.scope >= *scope;
                if same || redundant_send {
                    if change.at == cur.updated_at {
                        return Outcome::Ignored("duplicate");
                    }
                    next.updated_at = change.at;
                    return Outcome::Applied {
                        circuit: next,
                        transition: false,
                    };
                }
            }
            let was_open = cur.is_open();
            next.state = State::Open;
            next.scope = *scope;
            next.code = code.or(cur.code.filter(|_| was_open)).or(Some(368));
            next.reason = change.reason.clone();
            next.source = change.source;
            if !was_open {
                next.opened_at = Some(change.at);
            }
            next.until = *until;
            next.updated_at = change.at;
            push(
                &mut next,
                Transition {
                    at: change.at,
                    to: State::Open,
                    source: change.source,
                    note: false,
                    reason: change.reason.clone(),
                    evidence: change.evidence.clone(),
                    clamped_from: None,
                    warning: None,
                },
                history_limit,
            );
            Outcome::Applied {
                circuit: next,
                transition: true,
            }
        }
        Action::Close | Action::Expire { .. } => {
            if let Action::Expire { until } = &change.action {
                if !cur.is_open() || cur.until != Some(*until) {
                    return Outcome::Ignored("circuit no longer holds that expiry");
                }
            }
            if stale {
                return Outcome::Ignored("older than the circuit's state");
            }
            if !cur.is_open() {
                if change.at == cur.updated_at && current.is_some() {
                    return Outcome::Ignored("already closed");
                }
                // Remember the newer event time, even for a circuit never opened, so an
                // older open delivered later (Meta redelivers for days) cannot slip in.
                next.updated_at = change.at;
                if current.is_none() {
                    next.reason = change.reason.clone();
                    next.source = change.source;
                    note(&mut next);
                }
                return Outcome::Applied {
                    circuit: next,
                    transition: false,
                };
            }
            next.state = State::Closed;
            next.reason = change.reason.clone();
            next.source = change.source;
            next.until = None;
            next.updated_at = change.at;
            push(
                &mut next,
                Transition {
                    at: change.at,
                    to: State::Closed,
                    source: change.source,
                    note: false,
                    reason: change.reason.clone(),
                    evidence: change.evidence.clone(),
                    clamped_from: None,
                    warning: None,
                },
                history_limit,
            );
            Outcome::Applied {
                circuit: next,
                transition: true,
            }
        }
    }
}

/// A change to a pair hold's record (see [`super::pair`]): a 131056 holds it by the repeat
/// rule, the timer closes it (its reach stays), a delivery or an operator ends it and its
/// reach; anything else is ignored. No history is kept: a pair hold is many and routine,
/// and its record must stay small (up to `shaping.max_pairs` of them, on disk and in
/// Redis). A close never creates a record.
fn decide_pair(
    current: Option<&Circuit>,
    cur: &Circuit,
    mut next: Circuit,
    change: &Change,
    now: DateTime<Utc>,
) -> Outcome {
    let stale = change.at < cur.updated_at;
    match &change.action {
        Action::PairHit { hold } => {
            let Some(h) = super::pair::hit(current, change.at, *hold) else {
                return Outcome::Ignored("older than the delivery that ended the pair's hold");
            };
            let was_open = cur.is_open();
            next.state = State::Open;
            next.scope = Scope::AllSends;
            next.code = Some(crate::graph::codes::PAIR_RATE);
            next.reason = change.reason.clone();
            next.source = change.source;
            if !was_open {
                next.opened_at = Some(change.at);
            }
            next.until = Some(h.until);
            next.pair = Some(super::pair::Repeat {
                level: h.level,
                reach: Some(h.reach),
            });
            next.updated_at = cur.updated_at.max(change.at);
            Outcome::Applied {
                circuit: next,
                transition: !was_open,
            }
        }
        Action::Expire { until } => {
            if !cur.is_open() || cur.until != Some(*until) {
                return Outcome::Ignored("pair hold no longer holds that expiry");
            }
            if stale {
                return Outcome::Ignored("older than the pair hold");
            }
            next.state = State::Closed;
            next.until = None;
            next.reason = change.reason.clone();
            next.source = change.source;
            next.updated_at = change.at;
            Outcome::Applied {
                circuit: next,
                transition: true,
            }
        }
        Action::Close => {
            let reach = cur.pair.and_then(|p| p.reach).is_some_and(|r| r > now);
            if current.is_none() || (!cur.is_open() && !reach) {
                return Outcome::Ignored("no pair hold to end");
            }
            if stale {
                return Outcome::Ignored("older than the pair hold");
            }
            let was_open = cur.is_open();
            next.state = State::Closed;
            next.until = None;
            next.pair = cur.pair.map(|p| super::pair::Repeat { reach: None, ..p });
            next.reason = change.reason.clone();
            next.source = change.source;
            next.updated_at = change.at;
            Outcome::Applied {
                circuit: next,
                transition: was_open,
            }
        }
        _ => Outcome::Ignored("not a change a pair hold takes"),
    }
}

/// Replica merge rule: last writer wins by (event time, version, origin).
pub fn newer(candidate: &Circuit, current: &Circuit) -> bool {
    (candidate.updated_at, candidate.version, &candidate.origin)
        > (current.updated_at, current.version, &current.origin)
}

fn push(c: &mut Circuit, t: Transition, limit: usize) {
    c.history.push(t);
    if c.history.len() > limit {
        let extra = c.history.len() - limit;
        c.history.drain(..extra);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn change(action: Action, source: Source, at: i64) -> Change {
        Change {
            waba_id: "1".into(),
            phone_number_id: None,
            template: None,
            country: None,
            recipient: None,
            action,
            source,
            at: t(at),
            reason: format!("{source:?}@{at}"),
            evidence: None,
        }
    }

    fn open(scope: Scope, until: Option<i64>) -> Action {
        Action::Open {
            scope,
            code: Some(368),
            until: until.map(t),
        }
    }

    fn apply(cur: Option<Circuit>, ch: &Change) -> (Circuit, bool) {
        match decide(cur.as_ref(), ch, "a", 5, t(0)) {
            Outcome::Applied {
                circuit,
                transition,
            } => (circuit, transition),
            Outcome::Ignored(why) => panic!("ignored: {why}"),
        }
    }

    fn ignored(cur: &Circuit, ch: &Change) -> bool {
        matches!(decide(Some(cur), ch, "a", 5, t(0)), Outcome::Ignored(_))
    }

    #[test]
    fn open_then_close() {
        let (c, tr) = apply(None, &change(open(Scope::AllSends, None), Source::Send, 1));
        assert!(tr && c.is_open());
        assert_eq!(c.opened_at, Some(t(1)));
        assert_eq!(c.code, Some(368));
        let (c, tr) = apply(Some(c), &change(Action::Close, Source::Admin, 2));
        assert!(tr && !c.is_open());
        assert_eq!(c.history.len(), 2);
        assert_eq!(c.version, 2);
    }

    #[test]
    fn stale_events_never_overwrite() {
        let (c, _) = apply(
            None,
            &change(open(Scope::AllSends, None), Source::Webhook, 10),
        );
        let (c, _) = apply(Some(c), &change(Action::Close, Source::Webhook, 20));
        assert!(ignored(
            &c,
            &change(open(Scope::AllSends, None), Source::Webhook, 15)
        ));
        let (c2, _) = apply(
            Some(c),
            &change(open(Scope::AllSends, None), Source::Webhook, 30),
        );
        assert!(ignored(&c2, &change(Action::Close, Source::Webhook, 25)));
    }

    #[test]
    fn a_close_for_a_circuit_never_opened_is_remembered() {
        // REINSTATE at 20 arrives first; the DISABLE of 10 delivered afterwards opens nothing.
        let (c, tr) = apply(None, &change(Action::Close, Source::Webhook, 20));
        assert!(!tr && !c.is_open());
        assert_eq!(c.updated_at, t(20));
        assert_eq!(c.history.len(), 1);
        assert!(c.history[0].note);
        assert!(ignored(
            &c,
            &change(open(Scope::AllSends, None), Source::Webhook, 10)
        ));
        // A newer open still opens it.
        let (c, tr) = apply(
            Some(c),
            &change(open(Scope::AllSends, None), Source::Webhook, 30),
        );
        assert!(tr && c.is_open());
    }

    #[test]
    fn an_operator_orders_after_everything_the_circuit_holds() {
        // Opened by an event dated far ahead (clamped or not, it is newer than now).
        let (c, _) = apply(
            None,
            &change(open(Scope::AllSends, None), Source::Webhook, 1000),
        );
        let (c, tr) = apply(Some(c), &change(Action::Close, Source::Admin, 5));
        assert!(tr && !c.is_open(), "the operator's close takes effect");
        assert_eq!(c.updated_at, t(1000));
        // Only a newer event reopens it; the same future-dated one redelivered does not.
        assert!(ignored(
            &c,
            &change(open(Scope::AllSends, None), Source::Webhook, 999)
        ));
        let (c, tr) = apply(
            Some(c),
            &change(open(Scope::AllSends, None), Source::Admin, 6),
        );
        assert!(tr && c.is_open(), "and the operator's open too");
    }

    #[test]
    fn duplicates_are_noops() {
        let ch = change(open(Scope::AllSends, None), Source::Webhook, 10);
        let (c, _) = apply(None, &ch);
        assert!(ignored(&c, &ch));
        let close = change(Action::Close, Source::Admin, 10);
        assert!(!ignored(&c, &close)); // same time, different action: applies
        assert!(ignored(
            &Circuit::new("1", t(0)),
            &change(Action::Close, Source::Admin, 0)
        ));
    }

    #[test]
    fn concurrent_send_trips_collapse() {
        let (c, _) = apply(None, &change(open(Scope::AllSends, None), Source::Send, 1));
        let (c2, tr) = apply(
            Some(c.clone()),
            &change(open(Scope::AllSends, None), Source::Send, 2),
        );
        assert!(!tr);
        assert_eq!(c2.history.len(), 1);
        assert_eq!(c2.opened_at, c.opened_at);
    }

    #[test]
    fn send_widens_business_scope() {
        let (c, _) = apply(
            None,
            &change(
                open(Scope::BusinessInitiated, Some(100)),
                Source::Webhook,
                1,
            ),
        );
        let (c, tr) = apply(
            Some(c),
            &change(open(Scope::AllSends, None), Source::Send, 2),
        );
        assert!(tr);
        assert_eq!(c.scope, Scope::AllSends);
        assert_eq!(c.opened_at, Some(t(1)));
    }

    #[test]
    fn expiry_only_for_the_same_until() {
        let (c, _) = apply(
            None,
            &change(open(Scope::AllSends, Some(100)), Source::Webhook, 1),
        );
        let (c, _) = apply(
            Some(c),
            &change(open(Scope::AllSends, Some(200)), Source::Webhook, 50),
        );
        assert!(ignored(
            &c,
            &change(Action::Expire { until: t(100) }, Source::Expiry, 100)
        ));
        let (c, tr) = apply(
            Some(c),
            &change(Action::Expire { until: t(200) }, Source::Expiry, 200),
        );
        assert!(tr && !c.is_open());
    }

    #[test]
    fn already_expired_restriction_is_a_note() {
        let ch = change(open(Scope::AllSends, Some(-5)), Source::Webhook, -10);
        let (c, tr) = apply(None, &ch);
        assert!(!tr && !c.is_open());
        assert!(c.history[0].note);
        assert!(ignored(&c, &ch));
    }

    #[test]
    fn close_on_closed_advances_time() {
        let (c, _) = apply(None, &change(open(Scope::AllSends, None), Source::Send, 1));
        let (c, _) = apply(Some(c), &change(Action::Close, Source::Admin, 5));
        let (c, tr) = apply(Some(c), &change(Action::Close, Source::Webhook, 9));
        assert!(!tr);
        assert_eq!(c.updated_at, t(9));
        assert!(ignored(
            &c,
            &change(open(Scope::AllSends, None), Source::Webhook, 7)
        ));
    }

    #[test]
    fn notes_keep_state_and_dedupe() {
        let ch = change(Action::Note, Source::Webhook, 3);
        let (c, tr) = apply(None, &ch);
        assert!(!tr && !c.is_open() && c.history.len() == 1);
        assert!(ignored(&c, &ch));
    }

    #[test]
    fn history_is_bounded() {
        let mut c = None;
        for i in 0..20 {
            let action = if i % 2 == 0 {
                open(Scope::AllSends, None)
            } else {
                Action::Close
            };
            c = Some(apply(c, &change(action, Source::Admin, i)).0);
        }
        assert_eq!(c.unwrap().history.len(), 5);
    }

    #[test]
    fn merge_order_is_total() {
        let mut a = Circuit::new("1", t(1));
        let mut b = a.clone();
        a.origin = "a".into();
        b.origin = "b".into();
        assert!(newer(&b, &a) && !newer(&a, &b));
        a.version = 2;
        assert!(newer(&a, &b));
        b.updated_at = t(2);
        assert!(newer(&b, &a));
    }
}
