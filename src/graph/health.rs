//! Health Status answers (`GET /{version}/{node}?fields=health_status`): parse them and
//! decide what they say about one WhatsApp Business Account. Pure: no I/O.
//!
//! ```
//! use wa_breaker::graph::health::{parse, Verdict};
//! let body = br#"{"health_status":{"can_send_message":"AVAILABLE","entities":[
//!   {"entity_type":"WABA","id":"102290129340398","can_send_message":"AVAILABLE"},
//!   {"entity_type":"BUSINESS","id":"1","can_send_message":"AVAILABLE"},
//!   {"entity_type":"APP","id":"2","can_send_message":"AVAILABLE"}]},"id":"102290129340398"}"#;
//! let hs = parse(body).unwrap();
//! assert_eq!(hs.verdict_for_waba("102290129340398"), Verdict::Available);
//! ```

use serde::Deserialize;
use serde_json::Value;

/// `can_send_message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CanSend {
    /// `AVAILABLE`: it can send.
    Available,
    /// `LIMITED`: some messaging is limited.
    Limited,
    /// `BLOCKED`: it cannot send.
    Blocked,
    /// A value Meta may add later; treated like `LIMITED` (not a proof the WABA can send).
    Unknown(String),
}

impl CanSend {
    fn from_str(s: &str) -> CanSend {
        match s.trim().to_ascii_uppercase().as_str() {
            "AVAILABLE" => CanSend::Available,
            "LIMITED" => CanSend::Limited,
            "BLOCKED" => CanSend::Blocked,
            _ => CanSend::Unknown(s.to_string()),
        }
    }
}

/// One `errors[]` element of a blocked entity.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct HealthError {
    /// `error_code`.
    #[serde(default)]
    pub error_code: Option<i64>,
    /// `error_description`.
    #[serde(default)]
    pub error_description: Option<String>,
    /// `possible_solution`.
    #[serde(default)]
    pub possible_solution: Option<String>,
}

/// One `entities[]` element.
#[derive(Clone, Debug, PartialEq)]
pub struct Entity {
    /// `entity_type` (`WABA`, `BUSINESS`, `APP`, `PHONE_NUMBER`, `MESSAGE_TEMPLATE`, …).
    pub entity_type: String,
    /// The entity's id.
    pub id: String,
    /// Its `can_send_message`.
    pub can_send: CanSend,
    /// Its `errors[]` (BLOCKED entities carry them).
    pub errors: Vec<HealthError>,
    /// `additional_info`, as text lines (LIMITED entities carry it).
    pub additional_info: Vec<String>,
}

/// A parsed `health_status`, with the raw answer kept as evidence.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthStatus {
    /// The top-level `can_send_message` (a summary of all entities).
    pub can_send: Option<CanSend>,
    /// `entities[]`.
    pub entities: Vec<Entity>,
    /// The `health_status` object as received.
    pub raw: Value,
}

/// What an answer means for one WABA's circuit.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// The WABA entity is AVAILABLE and neither its BUSINESS nor its APP is BLOCKED.
    Available,
    /// Sending is limited somewhere; `info` is the entities' `additional_info`.
    Limited {
        /// The entities' `additional_info` lines.
        info: Vec<String>,
    },
    /// The WABA, its BUSINESS or its APP is BLOCKED; `errors` are theirs, labelled by entity.
    Blocked {
        /// Each blocked entity's errors, labelled by entity.
        errors: Vec<(String, HealthError)>,
    },
}

/// Why an answer could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON.
    #[error("health answer is not JSON: {0}")]
    Json(String),
    /// No `health_status` object.
    #[error("health answer has no `health_status` object")]
    Missing,
}

/// Parses a Health Status answer body.
pub fn parse(body: &[u8]) -> Result<HealthStatus, ParseError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string()))?;
    let hs = v
        .get("health_status")
        .filter(|h| h.is_object())
        .ok_or(ParseError::Missing)?;
    let can_send = hs
        .get("can_send_message")
        .and_then(Value::as_str)
        .map(CanSend::from_str);
    let entities = hs
        .get("entities")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(entity)
        .collect();
    Ok(HealthStatus {
        can_send,
        entities,
        raw: hs.clone(),
    })
}

fn entity(v: &Value) -> Option<Entity> {
    let entity_type = v.get("entity_type")?.as_str()?.to_ascii_uppercase();
    let id = match v.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let can_send = CanSend::from_str(v.get("can_send_message")?.as_str()?);
    let errors = v
        .get("errors")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|e| serde_json::from_value(e.clone()).ok())
        .collect();
    let additional_info = match v.get("additional_info") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Null) | None => Vec::new(),
        Some(other) => vec![other.to_string()],
    };
    Some(Entity {
        entity_type,
        id,
        can_send,
        errors,
        additional_info,
    })
}

/// Entities that stand above a WABA: if one is blocked, so is every WABA under it.
const ABOVE_WABA: &[&str] = &["BUSINESS", "APP"];

impl HealthStatus {
    /// What this answer says about `waba_id`:
    ///
    /// - **Blocked** when the WABA entity, the BUSINESS or the APP is BLOCKED;
    /// - **Available** when the WABA entity is AVAILABLE (and nothing above it is blocked) —
    ///   a LIMITED business or app does not keep a WABA's circuit open;
    /// - **Limited** otherwise (WABA LIMITED, or an unknown value).
    ///
    /// The WABA entity is the one with `entity_type: WABA` and this id (or the only WABA
    /// entity); without one, the top-level `can_send_message` decides.
    pub fn verdict_for_waba(&self, waba_id: &str) -> Verdict {
        let wabas: Vec<&Entity> = self
            .entities
            .iter()
            .filter(|e| e.entity_type == "WABA")
            .collect();
        let waba = wabas
            .iter()
            .find(|e| e.id == waba_id)
            .or_else(|| (wabas.len() == 1).then(|| &wabas[0]))
            .copied();
        self.verdict(waba, |e| ABOVE_WABA.contains(&e.entity_type.as_str()))
    }

    /// What a phone-number node's answer (`GET /{phone-id}?fields=health_status`) says
    /// about that phone number's circuit. Meta lists the PHONE_NUMBER entity and the
    /// entities above it (its WABA, BUSINESS, APP):
    ///
    /// - **Blocked** when the phone number, its WABA, the BUSINESS or the APP is BLOCKED
    ///   (a blocked WABA means the number cannot send either);
    /// - **Available** when the PHONE_NUMBER entity is AVAILABLE and nothing above is
    ///   blocked (a LIMITED WABA does not hold a phone number's own circuit open: the
    ///   WABA's circuit, if any, is its own);
    /// - **Limited** otherwise.
    ///
    /// The phone entity is the PHONE_NUMBER with this id (or the only one); without one,
    /// the top-level `can_send_message` decides.
    pub fn verdict_for_phone(&self, phone_id: &str) -> Verdict {
        let phones: Vec<&Entity> = self
            .entities
            .iter()
            .filter(|e| e.entity_type == "PHONE_NUMBER")
            .collect();
        let phone = phones
            .iter()
            .find(|e| e.id == phone_id)
            .or_else(|| (phones.len() == 1).then(|| &phones[0]))
            .copied();
        self.verdict(phone, |e| {
            e.entity_type == "WABA" || ABOVE_WABA.contains(&e.entity_type.as_str())
        })
    }

    /// The top-level `can_send_message` as a statement about **messaging**. Meta's top level
    /// summarises every entity and calling too (`can_receive_call_sip`): its own example is
    /// top-level `BLOCKED` only because SIP calling is not configured (errors 138024,
    /// 138025) while every entity's `can_send_message` is AVAILABLE. So a top-level
    /// `BLOCKED` that no messaging entity (PHONE_NUMBER, WABA, BUSINESS, APP, …) bears out
    /// is read as `LIMITED`: not a block, and not a proof it can send either.
    fn top_level_messaging(&self) -> Option<&CanSend> {
        match self.can_send.as_ref() {
            Some(CanSend::Blocked)
                if !self.entities.is_empty()
                    && !self.entities.iter().any(|e| e.can_send == CanSend::Blocked) =>
            {
                Some(&CanSend::Limited)
            }
            other => other,
        }
    }

    /// The verdict for the entity `own` (`None`: the top level decides), held by any
    /// BLOCKED entity `above` accepts.
    fn verdict(&self, own: Option<&Entity>, above: impl Fn(&Entity) -> bool) -> Verdict {
        let relevant = self.entities.iter().filter(|e| above(e)).chain(own);
        let errors: Vec<(String, HealthError)> = relevant
            .clone()
            .filter(|e| e.can_send == CanSend::Blocked)
            .flat_map(|e| {
                let label = e.entity_type.clone();
                let errs = if e.errors.is_empty() {
                    vec![HealthError {
                        error_code: None,
                        error_description: None,
                        possible_solution: None,
                    }]
                } else {
                    e.errors.clone()
                };
                errs.into_iter().map(move |x| (label.clone(), x))
            })
            .collect();
        let blocked_anywhere = relevant.clone().any(|e| e.can_send == CanSend::Blocked);
        let own_can = match own {
            Some(w) => Some(&w.can_send),
            None => self.top_level_messaging(),
        };
        if blocked_anywhere || (own.is_none() && own_can == Some(&CanSend::Blocked)) {
            return Verdict::Blocked { errors };
        }
        match own_can {
            Some(CanSend::Available) => Verdict::Available,
            _ => Verdict::Limited {
                info: relevant.flat_map(|e| e.additional_info.clone()).collect(),
            },
        }
    }
}

impl Verdict {
    /// Metric label / log word.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Available => "available",
            Verdict::Limited { .. } => "limited",
            Verdict::Blocked { .. } => "blocked",
        }
    }

    /// A stable one-line summary (used as the note's reason, so a steady answer
    /// is recognised and not recorded again).
    pub fn summary(&self) -> String {
        match self {
            Verdict::Available => "health_status: AVAILABLE".to_string(),
            Verdict::Limited { info } if info.is_empty() => "health_status: LIMITED".to_string(),
            Verdict::Limited { info } => format!("health_status: LIMITED ({})", info.join("; ")),
            Verdict::Blocked { errors } => {
                let mut parts: Vec<String> = errors
                    .iter()
                    .map(|(who, e)| {
                        let code = e.error_code.map(|c| c.to_string()).unwrap_or_default();
                        let desc = e.error_description.as_deref().unwrap_or_default();
                        match (code.is_empty(), desc.is_empty()) {
                            (true, true) => who.clone(),
                            (false, true) => format!("{who} {code}"),
                            (true, false) => format!("{who}: {desc}"),
                            (false, false) => format!("{who} {code}: {desc}"),
                        }
                    })
                    .collect();
                parts.sort();
                parts.dedup();
                if parts.is_empty() {
                    "health_status: BLOCKED".to_string()
                } else {
                    format!("health_status: BLOCKED ({})", parts.join("; "))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const WABA: &str = "102290129340398";

    fn answer(top: &str, entities: Value) -> HealthStatus {
        let body =
            json!({"health_status": {"can_send_message": top, "entities": entities}, "id": WABA});
        parse(body.to_string().as_bytes()).unwrap()
    }

    fn ent(kind: &str, id: &str, can: &str) -> Value {
        json!({"entity_type": kind, "id": id, "can_send_message": can})
    }

    fn blocked_waba() -> Value {
        json!({"entity_type": "WABA", "id": WABA, "can_send_message": "BLOCKED",
               "errors": [{"error_code": 141006, "error_description": "Payment issue", "possible_solution": "Fix it"}]})
    }

    #[test]
    fn all_available() {
        let hs = answer(
            "AVAILABLE",
            json!([
                ent("WABA", WABA, "AVAILABLE"),
                ent("BUSINESS", "1", "AVAILABLE"),
                ent("APP", "2", "AVAILABLE")
            ]),
        );
        assert_eq!(hs.verdict_for_waba(WABA), Verdict::Available);
        assert_eq!(hs.can_send, Some(CanSend::Available));
        assert_eq!(hs.raw["can_send_message"], "AVAILABLE");
    }

    #[test]
    fn blocked_waba_carries_its_errors() {
        let hs = answer(
            "BLOCKED",
            json!([
                blocked_waba(),
                ent("BUSINESS", "1", "AVAILABLE"),
                ent("APP", "2", "AVAILABLE")
            ]),
        );
        let v = hs.verdict_for_waba(WABA);
        let Verdict::Blocked { errors } = &v else {
            panic!("{v:?}")
        };
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, "WABA");
        assert_eq!(errors[0].1.error_code, Some(141006));
        assert_eq!(
            v.summary(),
            "health_status: BLOCKED (WABA 141006: Payment issue)"
        );
        assert_eq!(v.as_str(), "blocked");
    }

    #[test]
    fn blocked_business_or_app_blocks_an_available_waba() {
        for above in ["BUSINESS", "APP"] {
            let hs = answer(
                "BLOCKED",
                json!([ent("WABA", WABA, "AVAILABLE"), ent(above, "1", "BLOCKED")]),
            );
            let v = hs.verdict_for_waba(WABA);
            assert!(matches!(v, Verdict::Blocked { .. }), "{above}");
            assert_eq!(v.summary(), format!("health_status: BLOCKED ({above})"));
        }
    }

    #[test]
    fn limited_above_does_not_hold_an_available_waba() {
        let hs = answer(
            "LIMITED",
            json!([
                ent("WABA", WABA, "AVAILABLE"),
                ent("BUSINESS", "1", "LIMITED")
            ]),
        );
        assert_eq!(hs.verdict_for_waba(WABA), Verdict::Available);
    }

    #[test]
    fn limited_waba() {
        let mut w = ent("WABA", WABA, "LIMITED");
        w["additional_info"] = json!(["Messaging to some recipients is limited."]);
        let hs = answer("LIMITED", json!([w, ent("APP", "2", "AVAILABLE")]));
        let v = hs.verdict_for_waba(WABA);
        assert_eq!(
            v,
            Verdict::Limited {
                info: vec!["Messaging to some recipients is limited.".into()]
            }
        );
        assert_eq!(
            v.summary(),
            "health_status: LIMITED (Messaging to some recipients is limited.)"
        );
    }

    #[test]
    fn blocked_phone_number_or_other_waba_is_not_this_wabas_block() {
        let hs = answer(
            "BLOCKED",
            json!([
                ent("PHONE_NUMBER", "5", "BLOCKED"),
                ent("WABA", "999", "BLOCKED"),
                ent("WABA", WABA, "AVAILABLE"),
                ent("BUSINESS", "1", "AVAILABLE")
            ]),
        );
        assert_eq!(hs.verdict_for_waba(WABA), Verdict::Available);
    }

    #[test]
    fn single_waba_entity_matches_whatever_its_id() {
        let hs = answer("BLOCKED", json!([blocked_waba()]));
        assert!(matches!(hs.verdict_for_waba("1"), Verdict::Blocked { .. }));
    }

    #[test]
    fn without_entities_the_top_level_decides() {
        assert_eq!(
            answer("AVAILABLE", json!([])).verdict_for_waba(WABA),
            Verdict::Available
        );
        assert!(matches!(
            answer("BLOCKED", json!([])).verdict_for_waba(WABA),
            Verdict::Blocked { ref errors } if errors.is_empty()
        ));
        assert!(matches!(
            answer("LIMITED", json!([])).verdict_for_waba(WABA),
            Verdict::Limited { .. }
        ));
        let hs = parse(br#"{"health_status":{}}"#).unwrap();
        assert_eq!(hs.can_send, None);
        assert!(matches!(hs.verdict_for_waba(WABA), Verdict::Limited { .. }));
    }

    #[test]
    fn unknown_values_are_not_available() {
        let hs = answer("SOMETHING_NEW", json!([ent("WABA", WABA, "SOMETHING_NEW")]));
        assert!(matches!(hs.verdict_for_waba(WABA), Verdict::Limited { .. }));
        assert_eq!(
            hs.entities[0].can_send,
            CanSend::Unknown("SOMETHING_NEW".into())
        );
    }

    #[test]
    fn tolerant_entities() {
        let body = json!({"health_status": {"can_send_message": "available", "entities": [
            {"entity_type": "waba", "id": 102290129340398_u64, "can_send_message": "available",
             "additional_info": "one line", "extra": 1},
            {"entity_type": "APP"},
            "junk",
            {"entity_type": "BUSINESS", "id": "1", "can_send_message": "BLOCKED", "errors": [{"error_code": "x"}, 5]}
        ]}});
        let hs = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(hs.entities.len(), 2);
        assert_eq!(hs.entities[0].entity_type, "WABA");
        assert_eq!(hs.entities[0].id, WABA);
        assert_eq!(hs.entities[0].additional_info, vec!["one line".to_string()]);
        // Unreadable errors are dropped; the block itself still counts.
        assert_eq!(
            hs.verdict_for_waba(WABA).summary(),
            "health_status: BLOCKED (BUSINESS)"
        );
    }

    #[test]
    fn not_health_answers() {
        assert!(matches!(parse(b"nope"), Err(ParseError::Json(_))));
        assert_eq!(parse(b"{}"), Err(ParseError::Missing));
        assert_eq!(
            parse(br#"{"health_status":"AVAILABLE"}"#),
            Err(ParseError::Missing)
        );
        assert_eq!(
            parse(br#"{"error":{"code":190,"message":"expired"}}"#),
            Err(ParseError::Missing)
        );
    }

    const PHONE: &str = "106540352242922";

    #[test]
    fn phone_node_available_when_the_number_is_and_nothing_above_is_blocked() {
        // What Meta answers for a phone-number node: the number, then its WABA, BUSINESS, APP.
        let hs = answer(
            "AVAILABLE",
            json!([
                ent("PHONE_NUMBER", PHONE, "AVAILABLE"),
                ent("WABA", WABA, "AVAILABLE"),
                ent("BUSINESS", "1", "AVAILABLE"),
                ent("APP", "2", "AVAILABLE")
            ]),
        );
        assert_eq!(hs.verdict_for_phone(PHONE), Verdict::Available);
        // A LIMITED WABA does not hold the number's own circuit.
        let hs = answer(
            "LIMITED",
            json!([
                ent("PHONE_NUMBER", PHONE, "AVAILABLE"),
                ent("WABA", WABA, "LIMITED")
            ]),
        );
        assert_eq!(hs.verdict_for_phone(PHONE), Verdict::Available);
    }

    #[test]
    fn phone_node_blocked_by_the_number_or_anything_above() {
        let mut p = ent("PHONE_NUMBER", PHONE, "BLOCKED");
        p["errors"] = json!([{"error_code": 133010, "error_description": "not registered"}]);
        let hs = answer("BLOCKED", json!([p, ent("WABA", WABA, "AVAILABLE")]));
        let v = hs.verdict_for_phone(PHONE);
        assert_eq!(
            v.summary(),
            "health_status: BLOCKED (PHONE_NUMBER 133010: not registered)"
        );
        for above in ["WABA", "BUSINESS", "APP"] {
            let hs = answer(
                "BLOCKED",
                json!([
                    ent("PHONE_NUMBER", PHONE, "AVAILABLE"),
                    ent(above, "1", "BLOCKED")
                ]),
            );
            assert_eq!(
                hs.verdict_for_phone(PHONE).summary(),
                format!("health_status: BLOCKED ({above})")
            );
        }
        // Another number's block is not this one's.
        let hs = answer(
            "BLOCKED",
            json!([
                ent("PHONE_NUMBER", "5", "BLOCKED"),
                ent("PHONE_NUMBER", PHONE, "AVAILABLE")
            ]),
        );
        assert_eq!(hs.verdict_for_phone(PHONE), Verdict::Available);
    }

    #[test]
    fn phone_node_limited_or_without_its_entity() {
        let mut p = ent("PHONE_NUMBER", PHONE, "LIMITED");
        p["additional_info"] = json!(["Throughput upgrade in progress."]);
        let hs = answer("LIMITED", json!([p, ent("WABA", WABA, "AVAILABLE")]));
        assert_eq!(
            hs.verdict_for_phone(PHONE),
            Verdict::Limited {
                info: vec!["Throughput upgrade in progress.".into()]
            }
        );
        // No PHONE_NUMBER entity: the top level decides; a WABA-node answer read for a
        // phone number never closes it by its WABA entity alone.
        assert_eq!(
            answer("AVAILABLE", json!([])).verdict_for_phone(PHONE),
            Verdict::Available
        );
        assert!(matches!(
            answer("LIMITED", json!([ent("WABA", WABA, "AVAILABLE")])).verdict_for_phone(PHONE),
            Verdict::Limited { .. }
        ));
    }

    /// Meta's own example: every entity can send, the top level is BLOCKED only because
    /// SIP calling is not set up (`can_receive_call_sip`, errors 138024 / 138025).
    fn sip_blocked(entities: &[(&str, &str)]) -> HealthStatus {
        let sip = json!({"can_receive_call_sip": "BLOCKED", "errors": [
            {"error_code": 138024, "error_description": "SIP calling is not enabled"},
            {"error_code": 138025, "error_description": "No SIP server configured"}]});
        let list: Vec<Value> = entities
            .iter()
            .map(|(kind, id)| {
                let mut e = ent(kind, id, "AVAILABLE");
                if *kind == "PHONE_NUMBER" {
                    e["can_receive_call_sip"] = sip["can_receive_call_sip"].clone();
                    e["calling_errors"] = sip["errors"].clone();
                }
                e
            })
            .collect();
        answer("BLOCKED", Value::Array(list))
    }

    #[test]
    fn a_top_level_block_for_sip_calling_never_holds_a_circuit() {
        let hs = sip_blocked(&[
            ("PHONE_NUMBER", PHONE),
            ("WABA", WABA),
            ("BUSINESS", "1"),
            ("APP", "2"),
        ]);
        assert_eq!(hs.can_send, Some(CanSend::Blocked));
        assert_eq!(hs.verdict_for_waba(WABA), Verdict::Available);
        assert_eq!(hs.verdict_for_phone(PHONE), Verdict::Available);
        // Without the node's own entity the top level would decide: a BLOCKED that no
        // messaging entity bears out is not a block (nor a proof it can send).
        let hs = sip_blocked(&[("WABA", WABA), ("BUSINESS", "1"), ("APP", "2")]);
        assert!(matches!(
            hs.verdict_for_phone(PHONE),
            Verdict::Limited { .. }
        ));
        // A messaging entity that is BLOCKED still blocks.
        let hs = answer(
            "BLOCKED",
            json!([ent("WABA", "999", "BLOCKED"), ent("APP", "2", "AVAILABLE")]),
        );
        assert!(matches!(
            hs.verdict_for_phone(PHONE),
            Verdict::Blocked { .. }
        ));
    }

    #[test]
    fn summaries_are_stable_and_sorted() {
        let e = |c: i64, d: &str| HealthError {
            error_code: Some(c),
            error_description: Some(d.into()),
            possible_solution: None,
        };
        let a = Verdict::Blocked {
            errors: vec![("WABA".into(), e(2, "b")), ("APP".into(), e(1, "a"))],
        };
        let b = Verdict::Blocked {
            errors: vec![
                ("APP".into(), e(1, "a")),
                ("WABA".into(), e(2, "b")),
                ("WABA".into(), e(2, "b")),
            ],
        };
        assert_eq!(a.summary(), b.summary());
        assert_eq!(a.summary(), "health_status: BLOCKED (APP 1: a; WABA 2: b)");
        assert_eq!(Verdict::Available.summary(), "health_status: AVAILABLE");
        assert_eq!(
            Verdict::Limited { info: vec![] }.summary(),
            "health_status: LIMITED"
        );
    }
}
