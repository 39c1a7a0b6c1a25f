//! Webhooks as Meta sends them: built from a short request, signed
//! (`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>` under the app secret),
//! POSTed to the gateway, and — like Meta, whose webhooks announce what changed — applied
//! to the simulated accounts, so a `REINSTATE` both reaches the gateway and lets sends
//! through again.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use http::{header, Request};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use super::meta;
use super::world::{Block, Scope, TemplateStatus, World};
use crate::common::Body;
use crate::config::Secret;
use crate::upstream::HttpClient;

/// One delivery's time limit.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Meta's webhook fields the simulator builds.
pub const FIELDS: &[&str] = &[
    "account_update",
    "messages",
    "message_template_status_update",
    "message_template_quality_update",
];

/// What a webhook changes on the simulated side.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Nothing (warnings, statuses, unknown events).
    None,
    /// The WABA is blocked.
    Block(String, Block),
    /// The WABA's block is lifted.
    Unblock(String),
    /// A template's status (`None`: approved again) and pause title.
    Template {
        /// WABA.
        waba: String,
        /// Name.
        name: String,
        /// Language.
        language: String,
        /// New status.
        status: Option<TemplateStatus>,
        /// `other_info.title`.
        title: Option<String>,
    },
    /// A template's quality score.
    Quality {
        /// WABA.
        waba: String,
        /// Name.
        name: String,
        /// Language.
        language: String,
        /// `new_quality_score`.
        score: String,
    },
}

/// A built webhook: the payload and what it means.
pub struct Built {
    /// The envelope, as it will be signed and sent.
    pub payload: Value,
    /// Its meaning for the simulated accounts.
    pub effect: Effect,
}

fn s<'a>(req: &'a Value, key: &str) -> Option<&'a str> {
    req.get(key).and_then(Value::as_str)
}

fn need<'a>(req: &'a Value, key: &str) -> Result<&'a str, String> {
    s(req, key)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("\"{key}\" is required"))
}

fn id<'a>(req: &'a Value, key: &str) -> Result<&'a str, String> {
    let v = need(req, key)?;
    if super::world::is_id(v) {
        Ok(v)
    } else {
        Err(format!("\"{key}\" must be a numeric id"))
    }
}

/// Accepts Unix seconds (number or string) or RFC 3339.
fn time_of(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::Number(n) => n.as_i64().and_then(|t| Utc.timestamp_opt(t, 0).single()),
        Value::String(s) => s
            .parse::<i64>()
            .ok()
            .and_then(|t| Utc.timestamp_opt(t, 0).single())
            .or_else(|| {
                DateTime::parse_from_rfc3339(s)
                    .ok()
                    .map(|d| d.with_timezone(&Utc))
            }),
        _ => None,
    }
}

/// Builds the webhook `field` from `req` (see the README's control API table).
pub fn build(field: &str, req: &Value, world: &World, now: DateTime<Utc>) -> Result<Built, String> {
    // Meta's `entry[].time` is whole seconds; rounded up, so an event emitted in the same
    // second as the send it answers is not older than that send's trip.
    let now_secs = now.timestamp() + i64::from(now.timestamp_subsec_nanos() > 0);
    let time = req
        .get("time")
        .and_then(time_of)
        .map_or(now_secs, |t| t.timestamp());
    match field {
        "account_update" => account_update(req, time),
        "messages" => messages(req, world, time),
        "message_template_status_update" | "message_template_quality_update" => {
            template(field, req, world, time)
        }
        "raw" => {
            let waba = id(req, "waba_id")?;
            let field = need(req, "field")?;
            let value = req.get("value").cloned().unwrap_or_else(|| json!({}));
            Ok(Built {
                payload: meta::envelope(waba, time, field, value),
                effect: Effect::None,
            })
        }
        other => Err(format!(
            "unknown webhook {other:?} (account_update, messages, message_template_status_update, message_template_quality_update, or POST /_sim/webhooks with field and value)"
        )),
    }
}

fn account_update(req: &Value, time: i64) -> Result<Built, String> {
    let waba = id(req, "waba_id")?.to_string();
    let event = need(req, "event")?.to_ascii_uppercase();
    let mut value = json!({"event": event});
    let mut effect = Effect::None;
    match event.as_str() {
        "DISABLED_UPDATE" => {
            let state = s(req, "ban_state")
                .unwrap_or("DISABLE")
                .to_ascii_uppercase();
            value["ban_info"] = json!({"waba_ban_state": state, "waba_ban_date": Utc::now().format("%B %-d, %Y").to_string()});
            effect = match state.as_str() {
                "DISABLE" => Effect::Block(waba.clone(), Block::policy()),
                "REINSTATE" => Effect::Unblock(waba.clone()),
                _ => Effect::None,
            };
        }
        "ACCOUNT_RESTRICTION" => {
            let types: Vec<String> = match req.get("restriction_types") {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
                _ => vec!["RESTRICTED_BIZ_INITIATED_MESSAGING".to_string()],
            };
            let expiration = req.get("expiration").cloned();
            value["restriction_info"] = types
                .iter()
                .map(|t| {
                    let mut r = json!({"restriction_type": t});
                    if let Some(e) = &expiration {
                        r["expiration"] = e.clone();
                    }
                    r
                })
                .collect();
            let biz = types
                .iter()
                .any(|t| t == "RESTRICTED_BIZ_INITIATED_MESSAGING");
            let cust = types
                .iter()
                .any(|t| t == "RESTRICTED_CUSTOMER_INITIATED_MESSAGING");
            let scope = match (biz, cust) {
                (true, true) => Some(Scope::AllSends),
                (true, false) => Some(Scope::BusinessInitiated),
                (false, true) => Some(Scope::CustomerInitiated),
                _ => None,
            };
            if let Some(scope) = scope {
                effect = Effect::Block(
                    waba.clone(),
                    Block::new(368, scope, expiration.as_ref().and_then(time_of)),
                );
            }
        }
        "ACCOUNT_VIOLATION" => {
            value["violation_info"] =
                json!({"violation_type": s(req, "violation_type").unwrap_or("SCAM")});
        }
        _ => {}
    }
    if let Some(Value::Object(extra)) = req.get("value") {
        for (k, v) in extra {
            value[k] = v.clone();
        }
    }
    Ok(Built {
        payload: meta::envelope(&waba, time, "account_update", value),
        effect,
    })
}

fn messages(req: &Value, world: &World, time: i64) -> Result<Built, String> {
    let phone = id(req, "phone_number_id")?;
    let waba = match s(req, "waba_id") {
        Some(w) => w.to_string(),
        None => world
            .owner(phone)
            .ok_or(
                "the phone number's WABA is not known: add it with --account or pass \"waba_id\"",
            )?
            .to_string(),
    };
    let list = match req.get("statuses") {
        Some(Value::Array(a)) => a.clone(),
        _ => vec![json!({"status": "failed", "code": 131049})],
    };
    let mut statuses = Vec::with_capacity(list.len());
    for (i, st) in list.iter().enumerate() {
        let status = s(st, "status").unwrap_or("failed");
        let to = s(st, "recipient_id")
            .or_else(|| s(st, "to"))
            .unwrap_or("15551234567");
        let wamid = s(st, "id")
            .map(str::to_string)
            .unwrap_or_else(|| meta::wamid(time as u64 * 100 + i as u64));
        let code = st.get("code").and_then(Value::as_i64);
        statuses.push(meta::status(&wamid, status, to, time, code));
    }
    let mut value = meta::statuses_value(phone, statuses);
    if let Some(Value::Array(errs)) = req.get("errors") {
        value["errors"] = errs
            .iter()
            .filter_map(|e| e.get("code").and_then(Value::as_i64))
            .map(|code| {
                let title = meta::known(code).map_or("Simulated error", |c| c.title);
                json!({"code": code, "title": title, "message": title})
            })
            .collect();
    }
    Ok(Built {
        payload: meta::envelope(&waba, time, "messages", value),
        effect: Effect::None,
    })
}

fn template(field: &str, req: &Value, world: &World, time: i64) -> Result<Built, String> {
    let name = need(req, "template")?.to_string();
    let language = s(req, "language").unwrap_or("en_US").to_string();
    let known = world
        .templates()
        .iter()
        .find(|t| t.name == name && (t.language == language || t.language == "*"));
    let waba = match s(req, "waba_id") {
        Some(w) => w.to_string(),
        None => known
            .and_then(|t| t.waba_id.clone())
            .ok_or("the template's WABA is not known: pass \"waba_id\"")?,
    };
    if !super::world::is_id(&waba) {
        return Err("\"waba_id\" must be a numeric id".into());
    }
    let template_id: i64 = known
        .and_then(|t| t.id.parse().ok())
        .unwrap_or(800_000_000_000_000);
    let mut value = json!({
        "message_template_id": template_id,
        "message_template_name": name,
        "message_template_language": language,
    });
    let effect = if field == "message_template_quality_update" {
        let previous = s(req, "previous").unwrap_or("GREEN").to_ascii_uppercase();
        let new = s(req, "new").unwrap_or("YELLOW").to_ascii_uppercase();
        value["previous_quality_score"] = previous.into();
        value["new_quality_score"] = new.clone().into();
        Effect::Quality {
            waba: waba.clone(),
            name,
            language,
            score: new,
        }
    } else {
        let event = need(req, "event")?.to_ascii_uppercase();
        let title = s(req, "title").map(str::to_ascii_uppercase);
        value["event"] = event.clone().into();
        value["message_template_category"] = s(req, "category").unwrap_or("UTILITY").into();
        value["reason"] = s(req, "reason").map_or(Value::Null, Value::from);
        if let Some(t) = &title {
            value["other_info"] = json!({"title": t, "description": format!("Simulated {t}.")});
        }
        let status = match (event.as_str(), title.as_deref()) {
            (_, Some("UNPAUSE")) | ("APPROVED" | "REINSTATED", _) => Some(None),
            ("PAUSED", _) => Some(Some(TemplateStatus::Paused)),
            ("DISABLED", _) => Some(Some(TemplateStatus::Disabled)),
            _ => None,
        };
        match status {
            Some(status) => Effect::Template {
                waba: waba.clone(),
                name,
                language,
                status,
                title,
            },
            None => Effect::None,
        }
    };
    Ok(Built {
        payload: meta::envelope(&waba, time, field, value),
        effect,
    })
}

/// Makes `effect` true on the simulated side.
pub fn apply(world: &mut World, effect: &Effect) {
    match effect {
        Effect::None => {}
        Effect::Block(w, b) => world.block(w, b.clone()),
        Effect::Unblock(w) => {
            world.unblock(w);
        }
        Effect::Template {
            waba,
            name,
            language,
            status,
            title,
        } => {
            world.set_template(name, language, Some(waba), *status, title.as_deref());
        }
        Effect::Quality {
            waba,
            name,
            language,
            score,
        } => {
            world.template_mut(name, language, Some(waba)).quality = Some(score.clone());
        }
    }
}

/// What the gateway answered a delivery.
pub struct Delivered {
    /// Its status.
    pub status: u16,
    /// Its body (text, at most 4 KiB shown).
    pub answer: String,
}

/// POSTs `payload` to `url`, signed with `secret` as Meta signs (over the exact bytes sent).
pub async fn deliver(
    client: &HttpClient,
    url: &str,
    secret: &Secret,
    payload: &Value,
) -> Result<Delivered, String> {
    let body = serde_json::to_vec(payload).map_err(|e| e.to_string())?;
    let signature = crate::notify::signature(secret.expose().as_bytes(), &body);
    let req = Request::post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, "facebookexternalua")
        .header("x-hub-signature-256", signature)
        .body(Body::full(body))
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| crate::common::error_chain(&e))?;
        let status = resp.status().as_u16();
        let bytes = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let mut answer = String::from_utf8_lossy(&bytes).trim().to_string();
        answer.truncate(4096);
        Ok(Delivered { status, answer })
    };
    tokio::time::timeout(DELIVERY_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {DELIVERY_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    #[test]
    fn reinstatement_is_metas_shape_and_unblocks() {
        let w = World::default();
        let b = build(
            "account_update",
            &json!({"waba_id": "1022", "event": "DISABLED_UPDATE", "ban_state": "REINSTATE", "time": 1_700_000_000}),
            &w,
            now(),
        )
        .unwrap();
        let e = &b.payload["entry"][0];
        assert_eq!(b.payload["object"], "whatsapp_business_account");
        assert_eq!(e["id"], "1022");
        assert_eq!(e["time"], 1_700_000_000);
        assert_eq!(e["changes"][0]["field"], "account_update");
        assert_eq!(
            e["changes"][0]["value"]["ban_info"]["waba_ban_state"],
            "REINSTATE"
        );
        assert_eq!(b.effect, Effect::Unblock("1022".into()));
    }

    #[test]
    fn a_restriction_blocks_its_scope_until_its_expiration() {
        let w = World::default();
        let b = build(
            "account_update",
            &json!({"waba_id": "1022", "event": "ACCOUNT_RESTRICTION", "expiration": 4_102_444_800u64}),
            &w,
            now(),
        )
        .unwrap();
        let v = &b.payload["entry"][0]["changes"][0]["value"];
        assert_eq!(
            v["restriction_info"][0]["restriction_type"],
            "RESTRICTED_BIZ_INITIATED_MESSAGING"
        );
        match b.effect {
            Effect::Block(_, blk) => {
                assert_eq!(blk.scope, Scope::BusinessInitiated);
                assert_eq!(blk.until.unwrap().timestamp(), 4_102_444_800);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failed_statuses_name_the_phones_waba() {
        let mut w = World::default();
        w.add_account("1022", &["1065".to_string()]);
        let b = build(
            "messages",
            &json!({"phone_number_id": "1065", "statuses": [{"status": "failed", "to": "+1 555 0100", "code": 368}]}),
            &w,
            now(),
        )
        .unwrap();
        let v = &b.payload["entry"][0]["changes"][0]["value"];
        assert_eq!(b.payload["entry"][0]["id"], "1022");
        assert_eq!(v["metadata"]["phone_number_id"], "1065");
        assert_eq!(v["statuses"][0]["errors"][0]["code"], 368);
        assert!(build("messages", &json!({"phone_number_id": "99"}), &w, now()).is_err());
    }

    #[test]
    fn template_pause_and_unpause() {
        let w = World::default();
        let b = build(
            "message_template_status_update",
            &json!({"waba_id": "1022", "template": "order_update", "event": "PAUSED", "title": "FIRST_PAUSE"}),
            &w,
            now(),
        )
        .unwrap();
        let v = &b.payload["entry"][0]["changes"][0]["value"];
        assert_eq!(v["event"], "PAUSED");
        assert_eq!(v["message_template_name"], "order_update");
        assert_eq!(v["message_template_language"], "en_US");
        assert_eq!(v["other_info"]["title"], "FIRST_PAUSE");
        assert!(matches!(
            b.effect,
            Effect::Template {
                status: Some(TemplateStatus::Paused),
                ..
            }
        ));
        let b = build(
            "message_template_status_update",
            &json!({"waba_id": "1022", "template": "order_update", "event": "APPROVED", "title": "UNPAUSE"}),
            &w,
            now(),
        )
        .unwrap();
        assert!(matches!(b.effect, Effect::Template { status: None, .. }));
        assert!(build("nope", &json!({}), &w, now()).is_err());
    }
}
