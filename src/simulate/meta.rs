//! What Meta sends, as the simulator sends it: Graph error envelopes, send results, Health
//! Status and throughput answers, and webhook payloads. Pure functions over JSON.
//!
//! Shapes follow Meta's documentation (error codes, `messages` / `account_update` /
//! template webhooks, Health Status) as summarised in the project's notes; message titles
//! are Meta's code titles, `details` paraphrase its descriptions.

use serde_json::{json, Value};

/// `fbtrace_id` of every simulated error: one that says where it came from.
pub const FBTRACE_PREFIX: &str = "SIM";

/// One Graph error code the simulator knows: the HTTP status it is commonly seen with,
/// Meta's title (the `(#code) title` message) and a `details` text.
pub struct Code {
    /// The Graph error code.
    pub code: i64,
    /// The HTTP status.
    pub status: u16,
    /// Meta's code title.
    pub title: &'static str,
    /// `error_data.details`.
    pub details: &'static str,
}

/// The codes a circuit breaker meets (see the README's error table). Others are answered
/// with status 400 and a generic title.
pub const CODES: &[Code] = &[
    Code { code: 368, status: 403, title: "Temporarily blocked for policies violations", details: "The WhatsApp Business Account associated with the app has been restricted or disabled for violating a platform policy." },
    Code { code: 131031, status: 403, title: "Account has been locked", details: "The WhatsApp Business Account is restricted or disabled for a policy violation, or data in the request could not be verified." },
    Code { code: 130497, status: 403, title: "Business account is restricted from messaging users in this country", details: "The business is restricted from messaging users in the recipient's country." },
    Code { code: 131042, status: 400, title: "Business eligibility payment issue", details: "There was an error related to the payment method of the business." },
    Code { code: 131048, status: 400, title: "Spam rate limit hit", details: "Messages failed to send because too many of this phone number's messages were blocked or flagged as spam. Check your quality status." },
    Code { code: 131056, status: 400, title: "(Business Account, Consumer Account) pair rate limit hit", details: "Too many messages were sent from this phone number to the same recipient in a short period of time." },
    Code { code: 130429, status: 400, title: "Rate limit hit", details: "Cloud API message throughput has been reached." },
    Code { code: 80007, status: 400, title: "Rate limit issues", details: "The WhatsApp Business Account has reached its rate limit." },
    Code { code: 4, status: 400, title: "Application request limit reached", details: "The app has reached its API call rate limit." },
    Code { code: 190, status: 401, title: "Access token has expired", details: "The access token has expired or is no longer valid." },
    Code { code: 131047, status: 400, title: "Re-engagement message", details: "More than 24 hours have passed since the recipient last replied to this number." },
    Code { code: 131026, status: 400, title: "Message undeliverable", details: "The message could not be delivered to the recipient." },
    Code { code: 131049, status: 400, title: "This message was not delivered to maintain healthy ecosystem engagement.", details: "The message was not delivered to maintain healthy ecosystem engagement." },
    Code { code: 131050, status: 400, title: "User has stopped marketing messages", details: "The recipient has chosen to stop receiving marketing messages from this business." },
    Code { code: 131051, status: 400, title: "Unsupported message type", details: "The message type is not supported." },
    Code { code: 131057, status: 400, title: "Account in maintenance mode", details: "The business account is in maintenance mode, e.g. during a throughput upgrade." },
    Code { code: 131064, status: 400, title: "Messaging limited for template classification violations", details: "Messaging is limited because of template classification violations; it is lifted after the enforcement period." },
    Code { code: 132001, status: 400, title: "Template name does not exist in the translation", details: "The template does not exist in the specified language or is not approved." },
    Code { code: 132015, status: 400, title: "Template is paused", details: "Template is paused due to low quality so it cannot be sent in a template message." },
    Code { code: 132016, status: 400, title: "Template is disabled", details: "Template has been paused too many times due to low quality and is now permanently disabled." },
    Code { code: 133010, status: 400, title: "Phone number not registered", details: "The phone number is not registered on the WhatsApp Business Platform." },
    Code { code: 131045, status: 400, title: "Incorrect certificate", details: "The message failed to send due to a phone number registration error." },
    Code { code: 131037, status: 400, title: "WhatsApp provided number needs display name approval before message can be sent.", details: "The phone number needs an approved display name before it can send." },
    Code { code: 131000, status: 500, title: "Something went wrong", details: "The message failed to send due to an unknown error." },
    Code { code: 1, status: 500, title: "API Unknown", details: "Invalid request or possible server error." },
    Code { code: 2, status: 503, title: "API Service", details: "Temporary due to downtime or due to being overloaded." },
];

/// The known code, if any.
pub fn known(code: i64) -> Option<&'static Code> {
    CODES.iter().find(|c| c.code == code)
}

/// HTTP status and the Graph error envelope for `code`, with `fbtrace_id` `SIM…{seq}`.
pub fn error(code: i64, seq: u64) -> (u16, Value) {
    let (status, title, details) = match known(code) {
        Some(c) => (c.status, c.title, c.details),
        None => (
            400,
            "Simulated error",
            "Queued on the wa-breaker simulator.",
        ),
    };
    let body = json!({"error": {
        "message": format!("(#{code}) {title}"),
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": details},
        "fbtrace_id": fbtrace(seq),
    }});
    (status, body)
}

/// Graph's answer for a node that does not exist (code 100, subcode 33).
pub fn no_such_node(node: &str, method: &str, seq: u64) -> (u16, Value) {
    let verb = if method == "GET" { "get" } else { "post" };
    (
        400,
        json!({"error": {
            "message": format!("Unsupported {verb} request. Object with ID '{node}' does not exist, cannot be loaded due to missing permissions, or does not support this operation."),
            "type": "GraphMethodException",
            "code": 100,
            "error_subcode": 33,
            "fbtrace_id": fbtrace(seq),
        }}),
    )
}

/// A trace id that names the simulator and the request (`SIM000000000042`).
pub fn fbtrace(seq: u64) -> String {
    format!("{FBTRACE_PREFIX}{seq:012}")
}

/// The message id of the `seq`-th accepted send (unique per run).
pub fn wamid(seq: u64) -> String {
    format!("wamid.SIM{seq:016X}")
}

/// A recipient as digits (`+1 555-123-4567` → `15551234567`), how Meta echoes `wa_id`.
pub fn digits(to: &str) -> String {
    to.chars().filter(char::is_ascii_digit).collect()
}

/// 200 for an accepted send. A template send carries `message_status: accepted`, as Meta's
/// answers do when it paces templates.
pub fn send_ok(to: &str, seq: u64, template: bool) -> Value {
    let mut message = json!({"id": wamid(seq)});
    if template {
        message["message_status"] = "accepted".into();
    }
    json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": to, "wa_id": digits(to)}],
        "messages": [message],
    })
}

/// Messaging status of one Health Status entity.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Can {
    /// Can send.
    Available,
    /// Some messaging limited.
    Limited,
    /// Cannot send.
    Blocked,
}

impl Can {
    fn as_str(self) -> &'static str {
        match self {
            Can::Available => "AVAILABLE",
            Can::Limited => "LIMITED",
            Can::Blocked => "BLOCKED",
        }
    }
}

/// One entity of a Health Status answer.
pub struct Entity {
    /// `PHONE_NUMBER`, `MESSAGE_TEMPLATE`, `WABA`, `BUSINESS`, `APP`.
    pub kind: &'static str,
    /// Its id.
    pub id: String,
    /// Messaging.
    pub can: Can,
    /// Why it is blocked: `(error_code, description)`.
    pub error: Option<(i64, String)>,
    /// `can_receive_call_sip` (phone numbers only), when set.
    pub sip: Option<Can>,
}

/// `{"health_status": {"can_send_message", "entities"}, "id"}`. The top-level value is
/// the worst of every entity's messaging and calling status, as Meta's summary is (so an
/// unconfigured SIP makes it BLOCKED while messaging is AVAILABLE, like Meta's own
/// example).
pub fn health(node: &str, entities: &[Entity]) -> Value {
    let worst = entities
        .iter()
        .flat_map(|e| [Some(e.can), e.sip])
        .flatten()
        .max()
        .unwrap_or(Can::Available);
    let list: Vec<Value> = entities
        .iter()
        .map(|e| {
            let mut v = json!({"entity_type": e.kind, "id": e.id, "can_send_message": e.can.as_str()});
            if let Some(sip) = e.sip {
                v["can_receive_call_sip"] = sip.as_str().into();
            }
            let mut errors = Vec::new();
            match e.can {
                Can::Blocked => {
                    let (code, desc) = e.error.clone().unwrap_or((
                        141000,
                        "Messaging is blocked for this entity.".to_string(),
                    ));
                    errors.push(json!({"error_code": code, "error_description": desc,
                        "possible_solution": "See WhatsApp Manager > Account tools > Account quality, or Business Support Home."}));
                }
                Can::Limited => {
                    v["additional_info"] = json!(["Messaging to some recipients is limited."]);
                }
                Can::Available => {}
            }
            if e.sip == Some(Can::Blocked) {
                errors.push(json!({"error_code": 138024, "error_description": "SIP calling is not configured for this phone number.",
                    "possible_solution": "Configure SIP or turn off SIP calling."}));
            }
            if !errors.is_empty() {
                v["errors"] = errors.into();
            }
            v
        })
        .collect();
    json!({"health_status": {"can_send_message": worst.as_str(), "entities": list}, "id": node})
}

/// `{"throughput": {"level": …}, "id"}`.
pub fn throughput(node: &str, level: &str) -> Value {
    json!({"throughput": {"level": level}, "id": node})
}

/// The webhook envelope around one change.
pub fn envelope(entry_id: &str, time: i64, field: &str, value: Value) -> Value {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": entry_id, "time": time, "changes": [{"field": field, "value": value}]}],
    })
}

/// One `statuses[]` entry of a `messages` change; a failed one carries `errors[]` with
/// Meta's code, title, message and details.
pub fn status(id: &str, status: &str, recipient: &str, time: i64, code: Option<i64>) -> Value {
    let mut s = json!({"id": id, "status": status, "timestamp": time.to_string(), "recipient_id": digits(recipient)});
    if let Some(code) = code {
        let (title, details) = match known(code) {
            Some(c) => (c.title, c.details),
            None => ("Simulated error", "Queued on the wa-breaker simulator."),
        };
        s["errors"] = json!([{
            "code": code,
            "title": title,
            "message": title,
            "error_data": {"details": details},
            "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
        }]);
    }
    s
}

/// The `value` of a `messages` change reporting `statuses`.
pub fn statuses_value(phone: &str, statuses: Vec<Value>) -> Value {
    json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": display_number(phone), "phone_number_id": phone},
        "statuses": statuses,
    })
}

/// A display number for a simulated phone-number id (the last ten digits behind +1 555).
pub fn display_number(phone: &str) -> String {
    let d = digits(phone);
    let tail = &d[d.len().saturating_sub(7)..];
    format!("1555{tail:0>7}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_368_is_metas_envelope() {
        let (status, body) = error(368, 7);
        assert_eq!(status, 403);
        assert_eq!(
            body["error"]["message"],
            "(#368) Temporarily blocked for policies violations"
        );
        assert_eq!(body["error"]["type"], "OAuthException");
        assert_eq!(body["error"]["code"], 368);
        assert_eq!(body["error"]["error_data"]["messaging_product"], "whatsapp");
        assert_eq!(body["error"]["fbtrace_id"], "SIM000000000007");
        assert!(body["error"].get("error_subcode").is_none());
        let (status, body) = error(999_999, 1);
        assert_eq!(status, 400);
        assert_eq!(body["error"]["code"], 999_999);
    }

    #[test]
    fn sends_echo_the_recipient_as_digits() {
        let v = send_ok("+1 555-123-4567", 1, true);
        assert_eq!(v["contacts"][0]["input"], "+1 555-123-4567");
        assert_eq!(v["contacts"][0]["wa_id"], "15551234567");
        assert_eq!(v["messages"][0]["message_status"], "accepted");
        assert!(v["messages"][0]["id"]
            .as_str()
            .unwrap()
            .starts_with("wamid."));
        assert!(send_ok("1", 2, false)["messages"][0]
            .get("message_status")
            .is_none());
    }

    #[test]
    fn health_summarises_messaging_and_calling() {
        let e = |kind, can, sip| Entity {
            kind,
            id: "1".into(),
            can,
            error: None,
            sip,
        };
        let v = health(
            "1",
            &[
                e("PHONE_NUMBER", Can::Available, Some(Can::Blocked)),
                e("WABA", Can::Available, None),
            ],
        );
        assert_eq!(v["health_status"]["can_send_message"], "BLOCKED");
        assert_eq!(
            v["health_status"]["entities"][0]["can_send_message"],
            "AVAILABLE"
        );
        assert_eq!(
            v["health_status"]["entities"][0]["errors"][0]["error_code"],
            138024
        );
        let v = health(
            "1",
            &[
                e("WABA", Can::Limited, None),
                e("APP", Can::Available, None),
            ],
        );
        assert_eq!(v["health_status"]["can_send_message"], "LIMITED");
        assert!(v["health_status"]["entities"][0]["additional_info"].is_array());
    }

    #[test]
    fn failed_statuses_carry_errors() {
        let s = status(
            "wamid.X",
            "failed",
            "+1 555 0000",
            1_700_000_000,
            Some(131049),
        );
        assert_eq!(s["recipient_id"], "15550000");
        assert_eq!(s["timestamp"], "1700000000");
        assert_eq!(s["errors"][0]["code"], 131049);
        assert!(status("wamid.X", "delivered", "1", 1, None)
            .get("errors")
            .is_none());
        assert_eq!(display_number("106540352242922"), "15552242922");
    }
}
