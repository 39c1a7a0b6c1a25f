//! The simulated accounts and how Meta answers for them: which WABA owns which phone
//! number, blocks, paused and disabled templates, health and throughput levels, errors
//! queued for the next sends, and the log of every request received.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::meta::{self, Can, Entity};

/// Requests kept in the log; older ones are dropped (and counted).
pub const LOG_CAP: usize = 100_000;
/// Ids of simulated templates start here (Graph ids are numbers).
const TEMPLATE_ID_BASE: u64 = 800_000_000_000_000;

/// Which sends a block refuses (the gateway's scopes, from Meta's restriction types).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every send (a policy block, a disabled or locked account).
    #[default]
    AllSends,
    /// Template sends (`RESTRICTED_BIZ_INITIATED_MESSAGING`).
    BusinessInitiated,
    /// Non-template sends (`RESTRICTED_CUSTOMER_INITIATED_MESSAGING`).
    CustomerInitiated,
}

impl Scope {
    fn covers(self, template: bool) -> bool {
        match self {
            Scope::AllSends => true,
            Scope::BusinessInitiated => template,
            Scope::CustomerInitiated => !template,
        }
    }
}

/// A blocked WABA: its sends in scope are answered with `code`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Block {
    /// 368 (policy block) or 131031 (locked), or any code.
    pub code: i64,
    /// Which sends.
    pub scope: Scope,
    /// When it ends by itself.
    pub until: Option<DateTime<Utc>>,
    /// Since when.
    pub since: DateTime<Utc>,
}

impl Block {
    /// A 368 block of every send from now, open-ended: what a policy block looks like.
    pub fn policy() -> Block {
        Block::new(368, Scope::AllSends, None)
    }

    /// A block from now.
    pub fn new(code: i64, scope: Scope, until: Option<DateTime<Utc>>) -> Block {
        Block {
            code,
            scope,
            until,
            since: Utc::now(),
        }
    }

    fn active(&self, now: DateTime<Utc>) -> bool {
        self.until.is_none_or(|u| u > now)
    }
}

/// A paused or disabled template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateStatus {
    /// Sends answered 132015.
    Paused,
    /// Sends answered 132016.
    Disabled,
}

/// A template the simulator knows (named by the control API or a webhook).
#[derive(Clone, Debug, Serialize)]
pub struct Template {
    /// Its Graph id (for Health Status reads of the template node).
    pub id: String,
    /// `template.name`.
    pub name: String,
    /// `template.language.code`, or `*` for every language.
    pub language: String,
    /// The WABA it belongs to, when known.
    pub waba_id: Option<String>,
    /// Paused or disabled; `None` when approved.
    pub status: Option<TemplateStatus>,
    /// `other_info.title` of the last pause (`FIRST_PAUSE`…).
    pub title: Option<String>,
    /// Quality score (`GREEN`, `YELLOW`, `RED`).
    pub quality: Option<String>,
}

/// An error queued for the next matching sends.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Queued {
    /// The Graph error code.
    pub code: i64,
    /// Only sends from this phone number.
    #[serde(default)]
    pub phone_number_id: Option<String>,
    /// Only sends to this recipient (compared by digits).
    #[serde(default)]
    pub to: Option<String>,
    /// HTTP status (default: the code's usual one).
    #[serde(default)]
    pub status: Option<u16>,
    /// How many sends it answers (default 1).
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

/// A phone number's own Health Status.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct PhoneHealth {
    /// Messaging.
    #[serde(default)]
    pub can_send_message: Option<Can>,
    /// Calling (`BLOCKED`: SIP not configured, as in Meta's example).
    #[serde(default)]
    pub can_receive_call_sip: Option<Can>,
}

/// One request as the simulator received and answered it.
#[derive(Clone, Debug, Serialize)]
pub struct Logged {
    /// 1, 2, … in arrival order.
    pub seq: u64,
    /// Arrival.
    pub at: DateTime<Utc>,
    /// HTTP method.
    pub method: String,
    /// Path as received.
    pub path: String,
    /// Query, when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// `send`, `mark_read`, `health`, `throughput`, `read` or `other`.
    pub kind: &'static str,
    /// The Graph node of the path (the phone number of a send).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// A send's recipient as sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// A send's `type`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub message_type: Option<String>,
    /// A template send's template name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Whether it carried `Authorization` (never its value).
    pub authorization: bool,
    /// The status answered.
    pub status: u16,
    /// The Graph error code answered, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
}

/// A request on the Graph side, as the world needs it.
pub struct GraphRequest<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Path.
    pub path: &'a str,
    /// Query.
    pub query: Option<&'a str>,
    /// Body bytes.
    pub body: &'a [u8],
    /// `Authorization` present.
    pub authorization: bool,
}

/// Everything the simulator knows.
#[derive(Default)]
pub struct World {
    accounts: BTreeMap<String, BTreeSet<String>>,
    owner: HashMap<String, String>,
    blocks: HashMap<String, Block>,
    phone_blocks: HashMap<String, Block>,
    waba_health: HashMap<String, Can>,
    phone_health: HashMap<String, PhoneHealth>,
    throughput: HashMap<String, String>,
    templates: Vec<Template>,
    queue: Vec<Queued>,
    log: VecDeque<Logged>,
    dropped: u64,
    seq: u64,
}

/// Graph ids are decimal digit strings.
pub fn is_id(s: &str) -> bool {
    crate::graph::GraphId::is_valid(s)
}

impl World {
    /// Adds a WABA and its phone numbers (a phone number moves to the WABA named last).
    pub fn add_account(&mut self, waba: &str, phones: &[String]) {
        let set = self.accounts.entry(waba.to_string()).or_default();
        for p in phones {
            set.insert(p.clone());
        }
        for p in phones {
            if let Some(old) = self.owner.insert(p.clone(), waba.to_string()) {
                if old != waba {
                    if let Some(s) = self.accounts.get_mut(&old) {
                        s.remove(p);
                    }
                }
            }
        }
    }

    /// The WABA of a phone number.
    pub fn owner(&self, phone: &str) -> Option<&str> {
        self.owner.get(phone).map(String::as_str)
    }

    /// Blocks a WABA (known or not: a block may come before its phone numbers).
    pub fn block(&mut self, waba: &str, block: Block) {
        self.blocks.insert(waba.to_string(), block);
    }

    /// Lifts a WABA's block; says whether there was one.
    pub fn unblock(&mut self, waba: &str) -> bool {
        self.blocks.remove(waba).is_some()
    }

    /// Blocks one phone number's sends whatever its WABA (a number the gateway cannot map,
    /// or one Meta acts on alone).
    pub fn block_phone(&mut self, phone: &str, block: Block) {
        self.phone_blocks.insert(phone.to_string(), block);
    }

    /// Lifts a phone number's own block; says whether there was one.
    pub fn unblock_phone(&mut self, phone: &str) -> bool {
        self.phone_blocks.remove(phone).is_some()
    }

    /// Sets (or with `None` clears) a WABA's Health Status override.
    pub fn set_waba_health(&mut self, waba: &str, can: Option<Can>) {
        match can {
            Some(c) => self.waba_health.insert(waba.to_string(), c),
            None => self.waba_health.remove(waba),
        };
    }

    /// Sets a phone number's own Health Status.
    pub fn set_phone_health(&mut self, phone: &str, h: PhoneHealth) {
        self.phone_health.insert(phone.to_string(), h);
    }

    /// Sets a phone number's throughput level (`STANDARD`, `HIGH`).
    pub fn set_throughput(&mut self, phone: &str, level: &str) {
        self.throughput.insert(phone.to_string(), level.to_string());
    }

    /// Queues an error for the next matching sends.
    pub fn queue(&mut self, mut q: Queued) {
        q.to = q.to.map(|t| meta::digits(&t));
        q.count = q.count.max(1);
        self.queue.push(q);
    }

    /// Forgets every queued error.
    pub fn clear_queue(&mut self) -> usize {
        std::mem::take(&mut self.queue).len()
    }

    /// The template `name`/`language` (`*`: every language), created when missing.
    pub fn template_mut(
        &mut self,
        name: &str,
        language: &str,
        waba: Option<&str>,
    ) -> &mut Template {
        let pos = self
            .templates
            .iter()
            .position(|t| t.name == name && t.language == language);
        let i = match pos {
            Some(i) => i,
            None => {
                let id = (TEMPLATE_ID_BASE + self.templates.len() as u64 + 1).to_string();
                self.templates.push(Template {
                    id,
                    name: name.to_string(),
                    language: language.to_string(),
                    waba_id: None,
                    status: None,
                    title: None,
                    quality: None,
                });
                self.templates.len() - 1
            }
        };
        let t = &mut self.templates[i];
        if let Some(w) = waba {
            t.waba_id = Some(w.to_string());
        }
        t
    }

    /// Every template the simulator knows.
    pub fn templates(&self) -> &[Template] {
        &self.templates
    }

    /// Sets a template's status (`None`: approved again).
    pub fn set_template(
        &mut self,
        name: &str,
        language: &str,
        waba: Option<&str>,
        status: Option<TemplateStatus>,
        title: Option<&str>,
    ) -> Template {
        let t = self.template_mut(name, language, waba);
        t.status = status;
        t.title = title.map(str::to_string);
        t.clone()
    }

    /// The request log, filtered by kind and node.
    pub fn requests(&self, kind: Option<&str>, node: Option<&str>) -> Vec<&Logged> {
        self.log
            .iter()
            .filter(|l| kind.is_none_or(|k| l.kind == k))
            .filter(|l| node.is_none_or(|n| l.node.as_deref() == Some(n)))
            .collect()
    }

    /// Requests dropped from the log (past [`LOG_CAP`]).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Empties the request log.
    pub fn clear_log(&mut self) {
        self.log.clear();
        self.dropped = 0;
    }

    /// Everything but the log, as JSON.
    pub fn state(&self) -> Value {
        let now = Utc::now();
        json!({
            "accounts": self.accounts.iter().map(|(w, p)| json!({"waba_id": w, "phone_number_ids": p})).collect::<Vec<_>>(),
            "blocks": self.blocks.iter().filter(|(_, b)| b.active(now)).map(|(w, b)| json!({"waba_id": w, "block": b})).collect::<Vec<_>>(),
            "phone_blocks": self.phone_blocks.iter().filter(|(_, b)| b.active(now)).map(|(p, b)| json!({"phone_number_id": p, "block": b})).collect::<Vec<_>>(),
            "templates": self.templates,
            "queued_errors": self.queue,
            "waba_health": self.waba_health,
            "phone_health": self.phone_health,
            "throughput": self.throughput,
            "requests": self.log.len(),
        })
    }

    /// Back to the accounts only: no blocks, templates, levels, queued errors or log.
    pub fn reset(&mut self) {
        let accounts = std::mem::take(&mut self.accounts);
        let owner = std::mem::take(&mut self.owner);
        *self = World {
            accounts,
            owner,
            ..World::default()
        };
    }

    /// Meta's answer to a Graph request (and its log entry).
    pub fn graph(&mut self, req: &GraphRequest<'_>) -> (u16, Value) {
        self.seq += 1;
        let seq = self.seq;
        let now = Utc::now();
        let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
        let segs = match segs.split_first() {
            Some((v, rest)) if is_version(v) => rest.to_vec(),
            _ => segs,
        };
        let mut entry = Logged {
            seq,
            at: now,
            method: req.method.to_string(),
            path: req.path.to_string(),
            query: req.query.map(str::to_string),
            kind: "other",
            node: segs.first().map(|s| s.to_string()),
            to: None,
            message_type: None,
            template: None,
            authorization: req.authorization,
            status: 200,
            code: None,
        };
        let (status, body) = match (req.method, segs.as_slice()) {
            ("POST", [node, "messages"]) => self.send(node, req.body, seq, now, &mut entry),
            ("GET", [node]) => self.read(node, req.query, seq, &mut entry),
            ("GET", _) => (200, json!({"data": []})),
            _ => (200, json!({"success": true})),
        };
        entry.status = status;
        entry.code = body["error"]["code"].as_i64();
        if self.log.len() >= LOG_CAP {
            self.log.pop_front();
            self.dropped += 1;
        }
        self.log.push_back(entry);
        (status, body)
    }

    fn send(
        &mut self,
        phone: &str,
        body: &[u8],
        seq: u64,
        now: DateTime<Utc>,
        entry: &mut Logged,
    ) -> (u16, Value) {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        if v["status"] == "read" {
            entry.kind = "mark_read";
            return (200, json!({"success": true}));
        }
        entry.kind = "send";
        let to = v["to"].as_str().unwrap_or_default().to_string();
        let kind = v["type"].as_str().map(str::to_string);
        let template = (kind.as_deref() == Some("template"))
            .then(|| {
                let name = v["template"]["name"].as_str()?.to_string();
                let lang = v["template"]["language"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                Some((name, lang))
            })
            .flatten();
        entry.to = Some(to.clone());
        entry.message_type = kind.clone();
        entry.template = template.as_ref().map(|(n, _)| n.clone());
        let is_template = kind.as_deref() == Some("template");

        // 1. An error queued for this send.
        let digits = meta::digits(&to);
        if let Some(i) = self.queue.iter().position(|q| {
            q.phone_number_id.as_deref().is_none_or(|p| p == phone)
                && q.to.as_deref().is_none_or(|t| t == digits)
        }) {
            let q = &mut self.queue[i];
            let (status, body) = meta::error(q.code, seq);
            let status = q.status.unwrap_or(status);
            q.count -= 1;
            if q.count == 0 {
                self.queue.remove(i);
            }
            return (status, body);
        }
        // 2. The phone number's or its WABA's block.
        if let Some(b) = self
            .phone_blocks
            .get(phone)
            .or_else(|| self.owner(phone).and_then(|w| self.blocks.get(w)))
            .filter(|b| b.active(now) && b.scope.covers(is_template))
        {
            return meta::error(b.code, seq);
        }
        // 3. The template's pause or disablement.
        if let Some((name, lang)) = &template {
            let waba = self.owner(phone);
            let hit = self.templates.iter().find(|t| {
                t.status.is_some()
                    && &t.name == name
                    && (t.language == "*" || &t.language == lang)
                    && t.waba_id
                        .as_deref()
                        .is_none_or(|w| waba.is_none_or(|o| o == w))
            });
            if let Some(t) = hit {
                let code = match t.status {
                    Some(TemplateStatus::Disabled) => 132016,
                    _ => 132015,
                };
                return meta::error(code, seq);
            }
        }
        (200, meta::send_ok(&to, seq, is_template))
    }

    fn read(
        &mut self,
        node: &str,
        query: Option<&str>,
        seq: u64,
        entry: &mut Logged,
    ) -> (u16, Value) {
        let fields: Vec<String> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .filter(|(k, _)| k == "fields")
            .flat_map(|(_, v)| {
                v.split(',')
                    .map(|f| f.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        let health = fields.iter().any(|f| f == "health_status");
        let tput = fields.iter().any(|f| f == "throughput");
        entry.kind = match (health, tput) {
            (true, _) => "health",
            (false, true) => "throughput",
            _ => "read",
        };
        let is_waba = self.accounts.contains_key(node) || self.blocks.contains_key(node);
        let is_phone = self.owner.contains_key(node);
        let template = self.templates.iter().find(|t| t.id == node).cloned();
        if !is_waba && !is_phone && template.is_none() {
            return meta::no_such_node(node, "GET", seq);
        }
        let mut out = json!({"id": node});
        if health {
            out = meta::health(node, &self.entities(node, is_phone, template.as_ref()));
        }
        if tput && is_phone {
            let level = self
                .throughput
                .get(node)
                .map(String::as_str)
                .unwrap_or("STANDARD");
            out["throughput"] = meta::throughput(node, level)["throughput"].clone();
        }
        (200, out)
    }

    /// The entities a Health Status read of `node` lists: the phone number or template
    /// when targeted, then its WABA, the business and the app.
    fn entities(&self, node: &str, is_phone: bool, template: Option<&Template>) -> Vec<Entity> {
        let now = Utc::now();
        let mut out = Vec::new();
        let waba = if is_phone {
            let h = self.phone_health.get(node).copied().unwrap_or_default();
            out.push(Entity {
                kind: "PHONE_NUMBER",
                id: node.to_string(),
                can: h.can_send_message.unwrap_or(Can::Available),
                error: None,
                sip: h.can_receive_call_sip,
            });
            self.owner(node).map(str::to_string)
        } else if let Some(t) = template {
            out.push(Entity {
                kind: "MESSAGE_TEMPLATE",
                id: t.id.clone(),
                can: if t.status.is_some() {
                    Can::Blocked
                } else {
                    Can::Available
                },
                error: t.status.map(|s| match s {
                    TemplateStatus::Paused => (132015, "Template is paused.".to_string()),
                    TemplateStatus::Disabled => (132016, "Template is disabled.".to_string()),
                }),
                sip: None,
            });
            t.waba_id.clone()
        } else {
            Some(node.to_string())
        };
        if let Some(w) = waba {
            let block = self.blocks.get(&w).filter(|b| b.active(now));
            let can = self.waba_health.get(&w).copied().unwrap_or(match block {
                Some(b) if b.scope == Scope::AllSends => Can::Blocked,
                Some(_) => Can::Limited,
                None => Can::Available,
            });
            let error = block.map(|b| {
                let title = meta::known(b.code).map_or("Blocked", |c| c.title);
                (b.code, title.to_string())
            });
            out.push(Entity {
                kind: "WABA",
                id: w,
                can,
                error,
                sip: None,
            });
        }
        for (kind, id) in [("BUSINESS", "900000000000001"), ("APP", "900000000000002")] {
            out.push(Entity {
                kind,
                id: id.to_string(),
                can: Can::Available,
                error: None,
                sip: None,
            });
        }
        out
    }
}

/// `v21.0`, `v3`, … (a Graph version segment).
fn is_version(s: &str) -> bool {
    s.strip_prefix('v').is_some_and(|r| {
        r.starts_with(|c: char| c.is_ascii_digit())
            && r.chars().all(|c| c.is_ascii_digit() || c == '.')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: &str = "102290129340398";
    const P1: &str = "106540352242922";
    const P2: &str = "106540352242923";

    fn world() -> World {
        let mut w = World::default();
        w.add_account(W, &[P1.to_string(), P2.to_string()]);
        w
    }

    fn send(w: &mut World, phone: &str, body: Value) -> (u16, Value) {
        let body = body.to_string();
        w.graph(&GraphRequest {
            method: "POST",
            path: &format!("/v21.0/{phone}/messages"),
            query: None,
            body: body.as_bytes(),
            authorization: true,
        })
    }

    fn get(w: &mut World, path: &str, query: &str) -> (u16, Value) {
        w.graph(&GraphRequest {
            method: "GET",
            path,
            query: Some(query),
            body: b"",
            authorization: true,
        })
    }

    fn text() -> Value {
        json!({"messaging_product": "whatsapp", "to": "15551234567", "type": "text", "text": {"body": "hi"}})
    }

    fn template(name: &str) -> Value {
        json!({"to": "15551234567", "type": "template", "template": {"name": name, "language": {"code": "en_US"}}})
    }

    #[test]
    fn a_block_answers_the_wabas_sends_in_scope() {
        let mut w = world();
        assert_eq!(send(&mut w, P1, text()).0, 200);
        w.block(W, Block::policy());
        let (s, b) = send(&mut w, P2, text());
        assert_eq!((s, b["error"]["code"].as_i64()), (403, Some(368)));
        w.block(W, Block::new(368, Scope::BusinessInitiated, None));
        assert_eq!(send(&mut w, P1, text()).0, 200);
        assert_eq!(send(&mut w, P1, template("order_update")).0, 403);
        w.block(
            W,
            Block::new(
                368,
                Scope::AllSends,
                Some(Utc::now() - chrono::Duration::seconds(1)),
            ),
        );
        assert_eq!(
            send(&mut w, P1, text()).0,
            200,
            "an ended block blocks nothing"
        );
        assert!(w.unblock(W));
        assert_eq!(w.requests(Some("send"), None).len(), 5);
        assert_eq!(w.requests(Some("send"), Some(P2)).len(), 1);
    }

    #[test]
    fn queued_errors_answer_the_matching_sends_once_each() {
        let mut w = world();
        w.queue(Queued {
            code: 131056,
            phone_number_id: Some(P1.into()),
            to: Some("+1 555 123 4567".into()),
            status: None,
            count: 2,
        });
        assert_eq!(send(&mut w, P2, text()).0, 200, "other phone");
        assert_eq!(send(&mut w, P1, text()).1["error"]["code"], 131056);
        assert_eq!(send(&mut w, P1, text()).1["error"]["code"], 131056);
        assert_eq!(send(&mut w, P1, text()).0, 200, "used up");
    }

    #[test]
    fn paused_and_disabled_templates() {
        let mut w = world();
        w.set_template(
            "order_update",
            "en_US",
            None,
            Some(TemplateStatus::Paused),
            Some("FIRST_PAUSE"),
        );
        assert_eq!(
            send(&mut w, P1, template("order_update")).1["error"]["code"],
            132015
        );
        assert_eq!(send(&mut w, P1, template("other")).0, 200);
        assert_eq!(send(&mut w, P1, text()).0, 200);
        w.set_template(
            "order_update",
            "en_US",
            None,
            Some(TemplateStatus::Disabled),
            None,
        );
        assert_eq!(
            send(&mut w, P1, template("order_update")).1["error"]["code"],
            132016
        );
        w.set_template("order_update", "en_US", None, None, None);
        assert_eq!(send(&mut w, P1, template("order_update")).0, 200);
    }

    #[test]
    fn health_of_a_phone_names_its_waba() {
        let mut w = world();
        let (s, v) = get(&mut w, &format!("/v21.0/{P1}"), "fields=health_status");
        assert_eq!(s, 200);
        let e = &v["health_status"]["entities"];
        assert_eq!(e[0]["entity_type"], "PHONE_NUMBER");
        assert_eq!(e[1]["entity_type"], "WABA");
        assert_eq!(e[1]["id"], W);
        assert_eq!(v["id"], P1);
        w.block(W, Block::policy());
        let (_, v) = get(&mut w, &format!("/{W}"), "fields=health_status");
        assert_eq!(v["health_status"]["can_send_message"], "BLOCKED");
        assert_eq!(
            v["health_status"]["entities"][0]["errors"][0]["error_code"],
            368
        );
        let (s, v) = get(&mut w, "/v21.0/999", "fields=health_status");
        assert_eq!((s, v["error"]["code"].as_i64()), (400, Some(100)));
        w.set_throughput(P1, "HIGH");
        let (_, v) = get(
            &mut w,
            &format!("/v21.0/{P1}"),
            "fields=throughput,health_status",
        );
        assert_eq!(v["throughput"]["level"], "HIGH");
        assert!(v["health_status"].is_object());
        assert_eq!(w.requests(Some("health"), None).len(), 4);
    }
}
