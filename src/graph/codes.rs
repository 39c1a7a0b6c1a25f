//! Meta's Graph error codes that matter to the gateway: one catalogue with each code's
//! level (who Meta acts against) and the gateway's action. The policy decides with these
//! constants; the README's code table, the metrics' code labels and the titles of local
//! replies are checked against or derived from [`CATALOGUE`].
//!
//! Meta advises handling errors by `code`, not by HTTP status or the deprecated
//! `error_subcode`: nothing here reads either.

/// "(#368) Temporarily blocked for policies violations": the WABA is blocked.
pub const POLICY_BLOCK: i64 = 368;
/// "Account has been locked" (also: unverifiable request data, e.g. a wrong two-step PIN on
/// `/register` — which is why only sends trip).
pub const ACCOUNT_LOCKED: i64 = 131031;
/// "Phone number not registered" (not registered on the Cloud API).
pub const NOT_REGISTERED: i64 = 133010;
/// "Message failed to send due to a phone number registration error" (certificate).
pub const REGISTRATION_ERROR: i64 = 131045;
/// "Display name not approved": the number may not send until its name is approved.
pub const NAME_NOT_APPROVED: i64 = 131037;
/// "Account in maintenance mode" (e.g. during a throughput upgrade, about a minute).
pub const MAINTENANCE: i64 = 131057;
/// "Template is paused" (low quality; Meta pauses for 3 h the first time, 6 h the second).
pub const TEMPLATE_PAUSED: i64 = 132015;
/// Cloud API throughput reached for the phone number (the pace answers it locally too).
pub const THROUGHPUT: i64 = 130429;
/// Spam rate limit: too many of the phone number's messages were blocked or reported; its
/// pace is halved for a while and a person is warned ([`crate::policy::warning`]).
pub const SPAM_RATE: i64 = 131048;
/// The (business number, user) pair rate limit: a pair's sends are held ([`crate::policy::pair`]).
pub const PAIR_RATE: i64 = 131056;
/// "Business account is restricted from messaging users in this country": the WABA's sends
/// to one country fail while its other sends work ([`Action::CountryCircuit`]).
pub const COUNTRY_RESTRICTED: i64 = 130497;
/// The user's marketing limit ("not delivered to maintain healthy ecosystem engagement"),
/// reported by a `messages` webhook status: MARKETING templates to that recipient are held
/// for `shaping.marketing_cooldown` ([`crate::policy::cooldown`]).
pub const MARKETING_LIMIT: i64 = 131049;
/// "Template is disabled" (no end: the template must be edited or replaced).
pub const TEMPLATE_DISABLED: i64 = 132016;
/// "Business eligibility payment issue": the payment method is missing or failing, the
/// credit line is over its limit, the WABA is deleted or suspended. Every paid send of
/// the WABA fails until the business fixes it; Health Status reports it (141006).
pub const PAYMENT_ISSUE: i64 = 131042;
/// "Messaging limited because of template classification violations": template and direct
/// sends of the WABA (or its portfolio) are limited; "automatically lifted after the
/// enforcement period", which Meta does not state.
pub const CLASSIFICATION_LIMIT: i64 = 131064;

/// Phone-level codes: one phone number cannot send until something about it changes (its
/// registration, certificate, display name, a throughput upgrade), while the WABA's other
/// numbers still can.
pub const PHONE_CODES: &[i64] = &[
    NOT_REGISTERED,
    REGISTRATION_ERROR,
    NAME_NOT_APPROVED,
    MAINTENANCE,
];

/// Template-level codes: a send of a paused or disabled template fails while every other
/// send of the WABA works.
pub const TEMPLATE_CODES: &[i64] = &[TEMPLATE_PAUSED, TEMPLATE_DISABLED];

/// The codes that open a WABA's circuit when nothing else is configured (`trip_codes`).
pub const DEFAULT_TRIP_CODES: &[i64] = &[POLICY_BLOCK, ACCOUNT_LOCKED];

/// WABA-level codes worth a WABA circuit closed by Health Status, but **not** tripped by
/// default: neither is a step of Meta's enforcement ladder that more sends make worse (a
/// billing problem; a limit that lifts by itself after an unstated period), and without a
/// Health Status token nothing would close the circuit but an operator — a self-lifting
/// limit would become an indefinite local block. List them in `trip_codes` (with
/// `[health] access_token`) to answer them locally until Health Status says AVAILABLE.
pub const OPT_IN_TRIP_CODES: &[i64] = &[PAYMENT_ISSUE, CLASSIFICATION_LIMIT];

/// Who Meta acts against with a code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// The WhatsApp Business Account (every number of it).
    Waba,
    /// One business phone number.
    Phone,
    /// One message template of a WABA.
    Template,
    /// A WABA's sends to the users of one country.
    WabaCountry,
    /// One recipient, or one (number, recipient) pair.
    Recipient,
    /// The access token, the app or a permission.
    Token,
    /// Meta's side (unknown, unavailable).
    Service,
}

/// What the gateway does when a send is answered with a code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Opens the WABA's circuit for every send (a default `trip_codes` entry).
    TripWaba,
    /// Opens the WABA's circuit for every send only when listed in `trip_codes` (not by
    /// default: [`OPT_IN_TRIP_CODES`]); passed through otherwise.
    TripWabaWhenListed,
    /// Opens the phone number's own circuit for a hold.
    HoldPhone,
    /// Opens the circuit of the send's template.
    TemplateCircuit,
    /// Opens the circuit of the WABA's sends to the recipient's country (calling code).
    CountryCircuit,
    /// Passes the answer back untouched (counted by code).
    Pass,
}

/// One catalogue row.
#[derive(Clone, Copy, Debug)]
pub struct Code {
    /// The Graph error code.
    pub code: i64,
    /// What it means, in a few words (the README's code table says more).
    pub meaning: &'static str,
    /// Who Meta acts against.
    pub level: Level,
    /// What the gateway does.
    pub action: Action,
}

const fn row(code: i64, meaning: &'static str, level: Level, action: Action) -> Code {
    Code {
        code,
        meaning,
        level,
        action,
    }
}

/// Every code the gateway acts on or counts by name (`wa_breaker_upstream_errors_total`
/// labels). Codes outside it are passed back and counted as `other`.
pub const CATALOGUE: &[Code] = &[
    row(0, "AuthException", Level::Token, Action::Pass),
    row(1, "API Unknown", Level::Service, Action::Pass),
    row(2, "API Service", Level::Service, Action::Pass),
    row(3, "API Method", Level::Token, Action::Pass),
    row(4, "API Too Many Calls", Level::Token, Action::Pass),
    row(10, "API Permission Denied", Level::Token, Action::Pass),
    row(190, "Access token has expired", Level::Token, Action::Pass),
    row(POLICY_BLOCK, "Temporarily blocked for policies violations", Level::Waba, Action::TripWaba),
    row(80007, "Rate limit issues", Level::Waba, Action::Pass),
    row(130429, "Rate limit hit", Level::Phone, Action::Pass),
    row(COUNTRY_RESTRICTED, "Business account is restricted from messaging users in this country", Level::WabaCountry, Action::CountryCircuit),
    row(131000, "Something went wrong", Level::Service, Action::Pass),
    row(131026, "Message undeliverable", Level::Recipient, Action::Pass),
    row(ACCOUNT_LOCKED, "Account has been locked", Level::Waba, Action::TripWaba),
    row(NAME_NOT_APPROVED, "WhatsApp provided number needs display name approval before message can be sent", Level::Phone, Action::HoldPhone),
    row(PAYMENT_ISSUE, "Business eligibility payment issue", Level::Waba, Action::TripWabaWhenListed),
    row(REGISTRATION_ERROR, "Incorrect certificate", Level::Phone, Action::HoldPhone),
    row(131047, "Re-engagement message", Level::Recipient, Action::Pass),
    row(131048, "Spam rate limit hit", Level::Phone, Action::Pass),
    row(MARKETING_LIMIT, "This message was not delivered to maintain healthy ecosystem engagement", Level::Recipient, Action::Pass),
    row(131050, "Unable to deliver the message. This recipient has chosen to stop receiving marketing messages on WhatsApp from your business", Level::Recipient, Action::Pass),
    row(131051, "Unsupported message type", Level::Recipient, Action::Pass),
    row(131056, "(Business Account, Consumer Account) pair rate limit hit", Level::Recipient, Action::Pass),
    row(MAINTENANCE, "Account in maintenance mode", Level::Phone, Action::HoldPhone),
    row(CLASSIFICATION_LIMIT, "Messaging limited because of template classification violations", Level::Waba, Action::TripWabaWhenListed),
    row(132001, "Template name does not exist in the translation", Level::Template, Action::Pass),
    row(TEMPLATE_PAUSED, "Template is paused", Level::Template, Action::TemplateCircuit),
    row(TEMPLATE_DISABLED, "Template is disabled", Level::Template, Action::TemplateCircuit),
    row(NOT_REGISTERED, "Phone number not registered", Level::Phone, Action::HoldPhone),
];

/// The catalogue row of `code`.
pub fn lookup(code: i64) -> Option<&'static Code> {
    CATALOGUE.iter().find(|c| c.code == code)
}

/// The `message` a local reply carries for `code`: Meta's own title for the codes local
/// replies echo, else a plain statement of the block.
pub fn title(code: i64) -> &'static str {
    match code {
        POLICY_BLOCK => "(#368) Temporarily blocked for policies violations",
        ACCOUNT_LOCKED => "(#131031) Account has been locked",
        TEMPLATE_PAUSED => "(#132015) Template is paused",
        TEMPLATE_DISABLED => "(#132016) Template is disabled",
        COUNTRY_RESTRICTED => {
            "(#130497) Business account is restricted from messaging users in this country"
        }
        PAYMENT_ISSUE => "(#131042) Business eligibility payment issue",
        CLASSIFICATION_LIMIT => {
            "(#131064) Messaging limited because of template classification violations"
        }
        _ => "Sending is blocked for this WhatsApp Business Account",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_consistent_with_the_code_sets() {
        for c in CATALOGUE {
            assert!(!c.meaning.is_empty(), "{c:?}");
            assert_eq!(
                CATALOGUE.iter().filter(|o| o.code == c.code).count(),
                1,
                "{} listed twice",
                c.code
            );
        }
        for code in PHONE_CODES {
            assert_eq!(lookup(*code).map(|c| c.action), Some(Action::HoldPhone));
        }
        for code in TEMPLATE_CODES {
            assert_eq!(
                lookup(*code).map(|c| c.action),
                Some(Action::TemplateCircuit)
            );
        }
        for code in DEFAULT_TRIP_CODES {
            assert_eq!(lookup(*code).map(|c| c.action), Some(Action::TripWaba));
        }
        for code in OPT_IN_TRIP_CODES {
            let c = lookup(*code).unwrap();
            assert_eq!(
                (c.level, c.action),
                (Level::Waba, Action::TripWabaWhenListed)
            );
            assert!(!DEFAULT_TRIP_CODES.contains(code));
        }
        // Every row whose action trips is in exactly one of the two lists.
        for c in CATALOGUE {
            let listed =
                DEFAULT_TRIP_CODES.contains(&c.code) || OPT_IN_TRIP_CODES.contains(&c.code);
            assert_eq!(
                listed,
                matches!(c.action, Action::TripWaba | Action::TripWabaWhenListed),
                "{c:?}"
            );
        }
        assert_eq!(
            title(368),
            "(#368) Temporarily blocked for policies violations"
        );
        assert!(title(999_999).starts_with("Sending is blocked"));
    }
}
