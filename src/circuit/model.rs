//! The circuit model of design §2, as the admin API and the stores see it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::template::TemplateRef;

/// Open or closed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Sends pass.
    #[default]
    Closed,
    /// In-scope sends are answered locally.
    Open,
}

impl State {
    /// As the JSON and the metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Open => "open",
            State::Closed => "closed",
        }
    }
}

/// Which sends an open circuit answers locally.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Only sends of templates whose category is `MARKETING` (an operator's opt-in hold
    /// while a warning stands, see `[warnings]`). A template of unknown category is not
    /// in it.
    MarketingTemplates,
    /// Only sends of templates whose category is `UTILITY` (`RESTRICTED_UTILITY_TEMPLATES`,
    /// `RESTRICTED_DIRECT_SEND_UTILITY_TEMPLATES`). A template of unknown category is not
    /// in it.
    UtilityTemplates,
    /// Only template sends (business-initiated conversations).
    BusinessInitiated,
    /// Only non-template sends: replies inside the customer-service window
    /// (`RESTRICTED_CUSTOMER_INITIATED_MESSAGING` alone); templates still go.
    CustomerInitiated,
    /// Every send.
    #[default]
    AllSends,
}

impl Scope {
    /// As the configuration, the JSON and the logs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::MarketingTemplates => "marketing_templates",
            Scope::UtilityTemplates => "utility_templates",
            Scope::BusinessInitiated => "business_initiated",
            Scope::CustomerInitiated => "customer_initiated",
            Scope::AllSends => "all_sends",
        }
    }
}

/// What caused a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A send answered with an enforcement error.
    Send,
    /// An `account_update` webhook.
    Webhook,
    /// A Health Status poll.
    Health,
    /// An operator through the admin API.
    Admin,
    /// A known `until` passed.
    Expiry,
}

impl Source {
    /// Label value for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Send => "send",
            Source::Webhook => "webhook",
            Source::Health => "health",
            Source::Admin => "admin",
            Source::Expiry => "expiry",
        }
    }
}

/// Why a change happened: what an operator pastes into Meta's appeal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Evidence {
    /// The send that tripped the circuit.
    Send {
        /// The Graph error code.
        code: i64,
        /// `error_subcode`, when Meta sent one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error_subcode: Option<i64>,
        /// The error message.
        message: String,
        /// What Meta support asks for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fbtrace_id: Option<String>,
        /// The phone number the send was for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phone_number_id: Option<String>,
    },
    /// A webhook change.
    Webhook {
        /// `entry[].id` of the delivery.
        entry_id: String,
        /// The change's `field`.
        field: String,
        /// `value.event`.
        event: String,
        /// The change's `value`, as received.
        value: serde_json::Value,
    },
    /// A Health Status answer.
    Health {
        /// The `health_status` object.
        health_status: serde_json::Value,
    },
    /// An operator's reason.
    Admin {
        /// As given to `POST /admin/circuits/{id}/open|close`.
        reason: String,
    },
    /// The known end of a restriction.
    Expiry {
        /// The end that passed.
        until: DateTime<Utc>,
    },
}

/// What a warning is about: the `kind` of `/admin/warnings`, of a warning notification and
/// of `wa_breaker_warnings_total`. Meta's enforcement is a ladder; these are its first
/// steps, recorded and announced, never a block by themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// `account_update` `ACCOUNT_VIOLATION` (the first step of Meta's ladder).
    AccountViolation,
    /// `account_update` `DISABLED_UPDATE` `SCHEDULE_FOR_DISABLE`.
    DisableScheduled,
    /// A restriction that blocks nothing the gateway guards (adding phone numbers,
    /// calling, utility templates).
    Restriction,
    /// A template's quality fell to YELLOW or RED (before Meta pauses it).
    TemplateQuality,
    /// A template is about to be, or was, moved to another category (`template_category_update`).
    TemplateCategory,
    /// The messaging limit was lowered (`business_capability_update`).
    MessagingLimit,
    /// Template messages reached 80 % or 100 % of the messaging limit in a moving 24 h.
    MessagingBudget,
    /// A phone number's sends were answered 131048 (spam rate limit): one per episode.
    SpamRate,
    /// A kind a newer replica knows and this one does not.
    #[serde(other)]
    Other,
}

impl WarningKind {
    /// Every kind this version records (the metric's label values).
    pub const ALL: [WarningKind; 8] = [
        WarningKind::AccountViolation,
        WarningKind::DisableScheduled,
        WarningKind::Restriction,
        WarningKind::TemplateQuality,
        WarningKind::TemplateCategory,
        WarningKind::MessagingLimit,
        WarningKind::MessagingBudget,
        WarningKind::SpamRate,
    ];

    /// As the JSON, the configuration and the metric label spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            WarningKind::AccountViolation => "account_violation",
            WarningKind::DisableScheduled => "disable_scheduled",
            WarningKind::Restriction => "restriction",
            WarningKind::TemplateQuality => "template_quality",
            WarningKind::TemplateCategory => "template_category",
            WarningKind::MessagingLimit => "messaging_limit",
            WarningKind::MessagingBudget => "messaging_budget",
            WarningKind::SpamRate => "spam_rate",
            WarningKind::Other => "other",
        }
    }
}

/// A warning: what kind, and the template or phone number it concerns (the WABA is the
/// record's). Kept on the history entry that recorded it ([`Transition::warning`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    /// What it is about.
    pub kind: WarningKind,
    /// The template it concerns (quality, category).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateRef>,
    /// The phone number it concerns (spam rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number_id: Option<String>,
    /// Meta's word for it, short: the violation type, the new score, the new category or
    /// limit, the restriction types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Warning {
    /// A warning of `kind` about the WABA itself.
    pub fn new(kind: WarningKind) -> Warning {
        Warning {
            kind,
            template: None,
            phone_number_id: None,
            detail: None,
        }
    }
}

/// One recorded transition (or note) with its evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// When it happened (event time).
    pub at: DateTime<Utc>,
    /// State after it: `open`, `closed`, or unchanged for a note.
    pub to: State,
    /// What caused it.
    pub source: Source,
    /// True for a recorded event that did not change the state.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub note: bool,
    /// Short human text.
    pub reason: String,
    /// The evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    /// The event's own time when it was later than this clock allows (`max_clock_skew`):
    /// `at` is then the clamped time the circuit is ordered by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clamped_from: Option<DateTime<Utc>>,
    /// Set on a note that is a warning (see [`Warning`]): listed by `/admin/warnings` and
    /// announced to the notification sinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<Warning>,
}

/// One WABA's circuit, one phone number's, or one template's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Circuit {
    /// The WhatsApp Business Account (empty for a phone-number circuit whose WABA is not
    /// known yet).
    pub waba_id: String,
    /// Set for a phone-number circuit: it answers the sends of this one phone number (opened
    /// when a send for a phone number of unknown WABA was answered with a trip code; widened
    /// to the WABA once its owner is known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number_id: Option<String>,
    /// Set for a template circuit: it answers the sends of this one template of the WABA
    /// (opened when Meta paused or disabled it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateRef>,
    /// Set for a country circuit: it answers the WABA's sends to recipients of this E.164
    /// country calling code (`"49"`), from any of its phone numbers (opened when Meta
    /// answered 130497, "restricted from messaging users in this country").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// Set for a marketing cooldown (after Meta's 131049 for this recipient): the
    /// recipient's digits; the record holds the WABA's MARKETING template sends to them
    /// while open (key `cooldown:{waba}:{digits}`, see [`super::cooldown`]). Set with
    /// `phone_number_id` (and no WABA) for a pair hold (after Meta's 131056): the record
    /// holds that phone number's sends to them while open (key
    /// `pair:{phone_number_id}:{digits}`, see [`super::pair`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// A pair hold's level and reach (see [`super::pair::Repeat`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<super::pair::Repeat>,
    /// A template record's category, as Meta (or an operator) last gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<Box<super::cooldown::Category>>,
    /// Open or closed.
    pub state: State,
    /// Which sends an open circuit answers locally.
    pub scope: Scope,
    /// Graph error code local replies carry (368 unless opened by another code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    /// The error message, webhook event or operator reason.
    pub reason: String,
    /// What made the last change.
    pub source: Source,
    /// When it last opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<DateTime<Utc>>,
    /// The known end of the block, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// Event time of the last applied change: the ordering key.
    pub updated_at: DateTime<Utc>,
    /// Bumped on every applied change; breaks event-time ties.
    pub version: u64,
    /// Replica that made the last change; the final tie-breaker.
    #[serde(default)]
    pub origin: String,
    /// Newest last, bounded by `history_limit`.
    #[serde(default)]
    pub history: Vec<Transition>,
}

impl Circuit {
    /// A closed circuit with no history.
    pub fn new(waba_id: &str, now: DateTime<Utc>) -> Circuit {
        Circuit {
            waba_id: waba_id.to_string(),
            phone_number_id: None,
            template: None,
            country: None,
            recipient: None,
            pair: None,
            category: None,
            state: State::Closed,
            scope: Scope::AllSends,
            code: None,
            reason: String::new(),
            source: Source::Admin,
            opened_at: None,
            until: None,
            updated_at: now,
            version: 0,
            origin: String::new(),
            history: Vec::new(),
        }
    }

    /// The circuit's key in the table and the stores: the WABA id, `phone:{id}` for a
    /// phone-number circuit, `template:{waba}:{name}:{language}` for a template circuit,
    /// `country:{waba}:{calling code}` for a country circuit.
    pub fn key(&self) -> String {
        full_key(
            &self.waba_id,
            self.phone_number_id.as_deref(),
            self.template.as_ref(),
            self.recipient.as_deref(),
            self.country.as_deref(),
        )
    }

    /// True for a marketing cooldown's record.
    pub fn is_cooldown(&self) -> bool {
        self.recipient.is_some() && self.template.is_none() && self.phone_number_id.is_none()
    }

    /// True for a pair hold's record (`pair:{phone_number_id}:{digits}`).
    pub fn is_pair(&self) -> bool {
        self.recipient.is_some() && self.phone_number_id.is_some()
    }

    /// True for a hold (a marketing cooldown or a pair hold), not a circuit: never
    /// polled, widened, announced or given metric series of its own, not listed by
    /// `/admin/circuits`, and not counted against `max_circuits` (holds have caps of
    /// their own).
    pub fn is_hold(&self) -> bool {
        self.recipient.is_some() && self.template.is_none()
    }

    /// Its ids are Graph ids (what a record from a store or another replica must hold).
    pub fn has_valid_ids(&self) -> bool {
        let id = crate::graph::GraphId::is_valid;
        if let Some(code) = &self.country {
            return id(&self.waba_id)
                && self.phone_number_id.is_none()
                && self.template.is_none()
                && self.recipient.is_none()
                && super::country::parse_code(code).is_some();
        }
        if let Some(t) = &self.template {
            return id(&self.waba_id)
                && self.phone_number_id.is_none()
                && self.recipient.is_none()
                && t.is_valid();
        }
        if let (Some(r), Some(p)) = (&self.recipient, &self.phone_number_id) {
            return id(p)
                && self.waba_id.is_empty()
                && self.template.is_none()
                && self.country.is_none()
                && super::cooldown::recipient_is_valid(r);
        }
        if let Some(r) = &self.recipient {
            return id(&self.waba_id)
                && self.phone_number_id.is_none()
                && self.country.is_none()
                && super::cooldown::recipient_is_valid(r);
        }
        match &self.phone_number_id {
            Some(p) => id(p) && (self.waba_id.is_empty() || id(&self.waba_id)),
            None => id(&self.waba_id),
        }
    }

    /// When anything last happened to the record: its ordering time, or a newer recorded
    /// event (a note or warning does not move `updated_at`, so a record that only holds
    /// notes would otherwise look as old as time). What retention counts from.
    pub fn last_activity(&self) -> DateTime<Utc> {
        self.history
            .iter()
            .map(|t| t.at)
            .fold(self.updated_at, DateTime::max)
    }

    /// True while open.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// The transition that last opened the circuit (not a note), with its evidence: what a
    /// local answer, a widening, a notification and an operator's view quote.
    pub fn last_opening(&self) -> Option<&Transition> {
        self.last_transition_to(State::Open)
    }

    /// The newest transition (not a note) into `state`.
    pub fn last_transition_to(&self, state: State) -> Option<&Transition> {
        self.history.iter().rev().find(|t| !t.note && t.to == state)
    }
}

/// The key of any circuit (see [`Circuit::key`]).
pub(crate) fn full_key(
    waba_id: &str,
    phone_number_id: Option<&str>,
    template: Option<&TemplateRef>,
    recipient: Option<&str>,
    country: Option<&str>,
) -> String {
    match (template, recipient, country) {
        (Some(t), _, _) => super::template::key(waba_id, t),
        (None, Some(r), _) => match phone_number_id {
            Some(p) => super::pair::key(p, r),
            None => super::cooldown::key(waba_id, r),
        },
        (None, None, Some(c)) => format!("{}{waba_id}:{c}", super::country::KEY_PREFIX),
        (None, None, None) => key(waba_id, phone_number_id),
    }
}

/// Prefix of phone-number circuit keys.
pub const PHONE_KEY_PREFIX: &str = "phone:";

/// The key of a circuit: the WABA id, or `phone:{id}` for a phone-number circuit.
pub fn key(waba_id: &str, phone_number_id: Option<&str>) -> String {
    match phone_number_id {
        Some(p) => format!("{PHONE_KEY_PREFIX}{p}"),
        None => waba_id.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_circuits_have_their_own_key_and_round_trip() {
        let t = TemplateRef {
            name: "order_update".into(),
            language: "en_US".into(),
        };
        let c = Circuit {
            template: Some(t.clone()),
            ..Circuit::new("102290129340398", Utc::now())
        };
        assert_eq!(c.key(), "template:102290129340398:order_update:en_US");
        assert!(c.has_valid_ids());
        let back: Circuit = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        // A record without the field (older versions) is a WABA's.
        let plain = Circuit::new("102290129340398", Utc::now());
        assert!(!serde_json::to_string(&plain).unwrap().contains("template"));
        for bad in [
            ("Order", "en"),
            ("a:b", "en"),
            ("x", ""),
            ("x", "en:US"),
            ("", "en"),
        ] {
            let c = Circuit {
                template: Some(TemplateRef {
                    name: bad.0.into(),
                    language: bad.1.into(),
                }),
                ..Circuit::new("102290129340398", Utc::now())
            };
            assert!(!c.has_valid_ids(), "{bad:?}");
        }
    }

    #[test]
    fn country_circuits_have_their_own_key_and_round_trip() {
        let c = Circuit {
            country: Some("49".into()),
            ..Circuit::new("102290129340398", Utc::now())
        };
        assert_eq!(c.key(), "country:102290129340398:49");
        assert!(c.has_valid_ids());
        let back: Circuit = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(
            !serde_json::to_string(&Circuit::new("102290129340398", Utc::now()))
                .unwrap()
                .contains("country")
        );
        for bad in ["", "049", "999", "4 9", "DE"] {
            let c = Circuit {
                country: Some(bad.into()),
                ..Circuit::new("102290129340398", Utc::now())
            };
            assert!(!c.has_valid_ids(), "{bad:?}");
        }
        let no_waba = Circuit {
            country: Some("49".into()),
            ..Circuit::new("", Utc::now())
        };
        assert!(!no_waba.has_valid_ids());
    }
}
