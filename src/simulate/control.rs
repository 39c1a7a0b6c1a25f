//! The control API under `/_sim/`: change what the simulated Meta says, emit signed
//! webhooks, read the request log. Every answer is JSON; bad input is a 400 that changes
//! nothing.

use chrono::{DateTime, Utc};
use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::meta::{self, Can};
use super::webhook::{self, Effect};
use super::world::{is_id, Block, PhoneHealth, Queued, Scope, TemplateStatus};
use super::Sim;

type Answer = (StatusCode, Value);

fn bad(msg: impl Into<String>) -> Answer {
    (StatusCode::BAD_REQUEST, json!({"error": msg.into()}))
}

fn ok(v: Value) -> Answer {
    (StatusCode::OK, v)
}

/// Parses a request body (empty: `{}`).
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Answer> {
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

/// `POST /_sim/wabas/{id}/block`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockReq {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    scope: Option<Scope>,
    /// RFC 3339 or Unix seconds.
    #[serde(default)]
    until: Option<Value>,
    /// A duration (`2h`).
    #[serde(default, rename = "for")]
    for_: Option<String>,
    /// Also deliver the `account_update` Meta would send.
    #[serde(default)]
    webhook: bool,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    app_secret: Option<String>,
}

/// `POST /_sim/wabas/{id}/unblock`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnblockReq {
    #[serde(default)]
    webhook: bool,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    app_secret: Option<String>,
}

/// `POST /_sim/templates/{name}/pause|disable|unpause`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateReq {
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    waba_id: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    webhook: bool,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    app_secret: Option<String>,
}

/// `POST /_sim/accounts`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountReq {
    waba_id: String,
    #[serde(default)]
    phone_number_ids: Vec<String>,
}

/// `POST /_sim/wabas/{id}/health`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WabaHealthReq {
    can_send_message: Option<Can>,
}

/// `POST /_sim/phones/{id}/throughput`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThroughputReq {
    level: String,
    /// Also deliver the `phone_number_quality_update` `THROUGHPUT_UPGRADE` Meta sends when a
    /// number reaches `HIGH` (it names only the display number).
    #[serde(default)]
    webhook: bool,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    app_secret: Option<String>,
}

fn parse_until(until: Option<&Value>, for_: Option<&str>) -> Result<Option<DateTime<Utc>>, Answer> {
    if let Some(f) = for_ {
        let d = humantime::parse_duration(f).map_err(|e| bad(format!("for: {e}")))?;
        let d = chrono::Duration::from_std(d).map_err(|_| bad("for: too long"))?;
        return Ok(Some(Utc::now() + d));
    }
    match until {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|t| DateTime::from_timestamp(t, 0))
            .map(Some)
            .ok_or_else(|| bad("until: not a Unix time")),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map(|d| Some(d.with_timezone(&Utc)))
            .map_err(|e| bad(format!("until: {e} (RFC 3339 or Unix seconds)"))),
        Some(_) => Err(bad("until: RFC 3339 or Unix seconds")),
    }
}

/// Handles `method /_sim/{rest}`.
pub async fn handle(
    sim: &Sim,
    method: &Method,
    rest: &str,
    query: Option<&str>,
    bytes: &[u8],
) -> Answer {
    let segs: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let r = match (method.clone(), segs.as_slice()) {
        (Method::GET, [] | ["state"]) => Ok(ok(sim.world().state())),
        (Method::POST, ["reset"]) => {
            sim.world().reset();
            Ok(ok(json!({"reset": true})))
        }
        (Method::POST, ["accounts"]) => accounts(sim, bytes),
        (Method::POST, ["wabas", w, "block"]) => block(sim, w, bytes).await,
        (Method::POST, ["wabas", w, "unblock"]) => unblock(sim, w, bytes).await,
        (Method::POST, ["wabas", w, "health"]) => waba_health(sim, w, bytes),
        (Method::POST, ["phones", p, "block"]) => block_phone(sim, p, bytes),
        (Method::POST, ["phones", p, "unblock"]) => need_id("phone number", p).map(|()| {
            ok(json!({"phone_number_id": p, "was_blocked": sim.world().unblock_phone(p)}))
        }),
        (Method::POST, ["phones", p, "health"]) => phone_health(sim, p, bytes),
        (Method::POST, ["phones", p, "throughput"]) => throughput(sim, p, bytes).await,
        (Method::POST, ["templates", name, op @ ("pause" | "disable" | "unpause")]) => {
            template(sim, name, op, bytes).await
        }
        (Method::POST, ["errors"]) => queue(sim, bytes),
        (Method::DELETE, ["errors"]) => Ok(ok(json!({"cleared": sim.world().clear_queue()}))),
        (Method::GET, ["requests"]) => Ok(requests(sim, query)),
        (Method::DELETE, ["requests"]) => {
            sim.world().clear_log();
            Ok(ok(json!({"cleared": true})))
        }
        (Method::POST, ["webhooks"]) => emit_req(sim, "raw", bytes).await,
        (Method::POST, ["webhooks", field]) => emit_req(sim, field, bytes).await,
        _ => Ok((
            StatusCode::NOT_FOUND,
            json!({"error": format!("no control route {method} /_sim/{rest} (see wa-breaker simulate --help and the README)")}),
        )),
    };
    r.unwrap_or_else(|e| e)
}

fn need_id(what: &str, id: &str) -> Result<(), Answer> {
    if is_id(id) {
        Ok(())
    } else {
        Err(bad(format!("{what} {id:?} is not a numeric id")))
    }
}

fn accounts(sim: &Sim, bytes: &[u8]) -> Result<Answer, Answer> {
    let req: AccountReq = body(bytes)?;
    need_id("waba_id", &req.waba_id)?;
    for p in &req.phone_number_ids {
        need_id("phone number id", p)?;
    }
    sim.world().add_account(&req.waba_id, &req.phone_number_ids);
    Ok(ok(
        json!({"waba_id": req.waba_id, "phone_number_ids": req.phone_number_ids}),
    ))
}

async fn block(sim: &Sim, waba: &str, bytes: &[u8]) -> Result<Answer, Answer> {
    need_id("WABA", waba)?;
    let req: BlockReq = body(bytes)?;
    let until = parse_until(req.until.as_ref(), req.for_.as_deref())?;
    let b = Block::new(
        req.code.unwrap_or(368),
        req.scope.unwrap_or_default(),
        until,
    );
    sim.world().block(waba, b.clone());
    let out = json!({"waba_id": waba, "block": b});
    if req.webhook {
        // What Meta would announce: a disablement, or a restriction with its end.
        let hook = if b.scope == Scope::AllSends && b.until.is_none() {
            json!({"waba_id": waba, "event": "DISABLED_UPDATE", "ban_state": "DISABLE"})
        } else {
            let types = match b.scope {
                Scope::AllSends => json!([
                    "RESTRICTED_BIZ_INITIATED_MESSAGING",
                    "RESTRICTED_CUSTOMER_INITIATED_MESSAGING"
                ]),
                Scope::BusinessInitiated => json!(["RESTRICTED_BIZ_INITIATED_MESSAGING"]),
                Scope::CustomerInitiated => json!(["RESTRICTED_CUSTOMER_INITIATED_MESSAGING"]),
            };
            let mut h = json!({"waba_id": waba, "event": "ACCOUNT_RESTRICTION", "restriction_types": types});
            if let Some(u) = b.until {
                h["expiration"] = u.timestamp().into();
            }
            h
        };
        return Ok(and_webhook(sim, "account_update", hook, &req.url, &req.app_secret, out).await);
    }
    Ok(ok(out))
}

async fn unblock(sim: &Sim, waba: &str, bytes: &[u8]) -> Result<Answer, Answer> {
    need_id("WABA", waba)?;
    let req: UnblockReq = body(bytes)?;
    let was = sim.world().unblock(waba);
    let out = json!({"waba_id": waba, "was_blocked": was});
    if req.webhook {
        let hook = json!({"waba_id": waba, "event": "DISABLED_UPDATE", "ban_state": "REINSTATE"});
        return Ok(and_webhook(sim, "account_update", hook, &req.url, &req.app_secret, out).await);
    }
    Ok(ok(out))
}

/// `POST /_sim/phones/{id}/block`: `code`, `until` / `for` (no webhook: Meta announces
/// blocks per WABA).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PhoneBlockReq {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    until: Option<Value>,
    #[serde(default, rename = "for")]
    for_: Option<String>,
}

fn block_phone(sim: &Sim, phone: &str, bytes: &[u8]) -> Result<Answer, Answer> {
    need_id("phone number", phone)?;
    let req: PhoneBlockReq = body(bytes)?;
    let until = parse_until(req.until.as_ref(), req.for_.as_deref())?;
    let b = Block::new(req.code.unwrap_or(368), Scope::AllSends, until);
    sim.world().block_phone(phone, b.clone());
    Ok(ok(json!({"phone_number_id": phone, "block": b})))
}

/// Delivers `hook` as the webhook `field` (to the request's `url`/`app_secret`, else the
/// defaults) and puts the delivery into `out` under `webhook`; the state change is
/// already made.
async fn and_webhook(
    sim: &Sim,
    field: &str,
    hook: Value,
    url: &Option<String>,
    secret: &Option<String>,
    mut out: Value,
) -> Answer {
    let (status, delivery) = emit(sim, field, &with_target(hook, url, secret), false).await;
    out["webhook"] = delivery;
    (status, out)
}

fn with_target(mut hook: Value, url: &Option<String>, secret: &Option<String>) -> Value {
    if let Some(u) = url {
        hook["url"] = u.clone().into();
    }
    if let Some(s) = secret {
        hook["app_secret"] = s.clone().into();
    }
    hook
}

fn waba_health(sim: &Sim, waba: &str, bytes: &[u8]) -> Result<Answer, Answer> {
    need_id("WABA", waba)?;
    let req: WabaHealthReq = body(bytes)?;
    sim.world().set_waba_health(waba, req.can_send_message);
    Ok(ok(
        json!({"waba_id": waba, "can_send_message": req.can_send_message}),
    ))
}

fn phone_health(sim: &Sim, phone: &str, bytes: &[u8]) -> Result<Answer, Answer> {
    need_id("phone number", phone)?;
    let req: PhoneHealth = body(bytes)?;
    sim.world().set_phone_health(phone, req);
    Ok(ok(json!({"phone_number_id": phone, "health": req})))
}

async fn throughput(sim: &Sim, phone: &str, bytes: &[u8]) -> Result<Answer, Answer> {
    need_id("phone number", phone)?;
    let req: ThroughputReq = body(bytes)?;
    let level = req.level.to_ascii_uppercase();
    if !matches!(level.as_str(), "STANDARD" | "HIGH" | "NOT_APPLICABLE") {
        return Err(bad("level must be STANDARD, HIGH or NOT_APPLICABLE"));
    }
    sim.world().set_throughput(phone, &level);
    let out = json!({"phone_number_id": phone, "throughput": {"level": level}});
    if req.webhook && level == "HIGH" {
        let waba = sim.world().owner(phone).map(str::to_string);
        let Some(waba) = waba else {
            return Err(bad(
                "the phone number belongs to no simulated WABA (--account)",
            ));
        };
        let hook = json!({
            "waba_id": waba,
            "field": "phone_number_quality_update",
            "value": {"display_phone_number": meta::display_number(phone), "event": "THROUGHPUT_UPGRADE"},
        });
        return Ok(and_webhook(sim, "raw", hook, &req.url, &req.app_secret, out).await);
    }
    Ok(ok(out))
}

async fn template(sim: &Sim, name: &str, op: &str, bytes: &[u8]) -> Result<Answer, Answer> {
    let req: TemplateReq = body(bytes)?;
    if name.is_empty() || name.len() > 512 {
        return Err(bad("template name must be 1-512 characters"));
    }
    if let Some(w) = &req.waba_id {
        need_id("waba_id", w)?;
    }
    let language = req.language.clone().unwrap_or_else(|| "*".into());
    let (status, title, event) = match op {
        "pause" => (
            Some(TemplateStatus::Paused),
            Some(req.title.clone().unwrap_or_else(|| "FIRST_PAUSE".into())),
            "PAUSED",
        ),
        "disable" => (Some(TemplateStatus::Disabled), None, "DISABLED"),
        _ => (None, Some("UNPAUSE".to_string()), "APPROVED"),
    };
    let t = sim.world().set_template(
        name,
        &language,
        req.waba_id.as_deref(),
        status,
        title.as_deref(),
    );
    let out = json!({"template": t});
    if req.webhook {
        let mut hook = json!({"template": name, "event": event,
            "language": if language == "*" { "en_US" } else { language.as_str() }});
        if let Some(w) = req.waba_id.as_deref().or(t.waba_id.as_deref()) {
            hook["waba_id"] = w.into();
        }
        if let Some(ti) = &title {
            hook["title"] = ti.clone().into();
        }
        return Ok(and_webhook(
            sim,
            "message_template_status_update",
            hook,
            &req.url,
            &req.app_secret,
            out,
        )
        .await);
    }
    Ok(ok(out))
}

fn queue(sim: &Sim, bytes: &[u8]) -> Result<Answer, Answer> {
    let q: Queued = body(bytes)?;
    if let Some(p) = &q.phone_number_id {
        need_id("phone_number_id", p)?;
    }
    if let Some(s) = q.status {
        if !(400..=599).contains(&s) {
            return Err(bad("status must be 400-599"));
        }
    }
    sim.world().queue(q.clone());
    Ok(ok(json!({"queued": q})))
}

fn requests(sim: &Sim, query: Option<&str>) -> Answer {
    let mut kind = None;
    let mut node = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "kind" => kind = Some(v.into_owned()),
            "phone" | "node" => node = Some(v.into_owned()),
            _ => {}
        }
    }
    let world = sim.world();
    let list = world.requests(kind.as_deref(), node.as_deref());
    ok(json!({"count": list.len(), "dropped": world.dropped(), "requests": list}))
}

async fn emit_req(sim: &Sim, field: &str, bytes: &[u8]) -> Result<Answer, Answer> {
    let req: Value = body(bytes)?;
    if !req.is_object() {
        return Err(bad("the body must be a JSON object"));
    }
    if field != "raw" && !webhook::FIELDS.contains(&field) {
        return Err((
            StatusCode::NOT_FOUND,
            json!({"error": format!("no webhook {field:?}: {} (or POST /_sim/webhooks with waba_id, field and value)", webhook::FIELDS.join(", "))}),
        ));
    }
    Ok(emit(sim, field, &req, req["apply"] != false).await)
}

/// Builds the webhook, applies its meaning (unless `apply` is false), delivers it.
async fn emit(sim: &Sim, field: &str, req: &Value, apply: bool) -> Answer {
    let url = match req["url"].as_str().or(sim.webhook_url.as_deref()) {
        Some(u) => u.to_string(),
        None => return bad(
            "no webhook URL: pass \"url\" or start the simulator with --webhook-url (or --config)",
        ),
    };
    let secret = match req["app_secret"]
        .as_str()
        .map(crate::config::Secret::new)
        .or_else(|| sim.app_secret.clone())
    {
        Some(s) => s,
        None => return bad("no app secret: pass \"app_secret\" or start the simulator with --app-secret (or --config)"),
    };
    let built = {
        let world = sim.world();
        webhook::build(field, req, &world, Utc::now())
    };
    let built = match built {
        Ok(b) => b,
        Err(e) => return bad(e),
    };
    if apply && built.effect != Effect::None {
        webhook::apply(&mut sim.world(), &built.effect);
    }
    match webhook::deliver(&sim.client, &url, &secret, &built.payload).await {
        Ok(d) => {
            sim.say(&format!("webhook {field} → {url}: {}", d.status));
            ok(
                json!({"url": url, "status": d.status, "answer": d.answer, "payload": built.payload}),
            )
        }
        Err(e) => {
            sim.say(&format!("webhook {field} → {url}: failed: {e}"));
            (
                StatusCode::BAD_GATEWAY,
                json!({"error": format!("delivery to {url} failed: {e}"), "url": url, "payload": built.payload}),
            )
        }
    }
}
