//! A scriptable fake of Meta's Graph / WhatsApp Cloud API, served over real TCP.
//!
//! `FakeCloud` binds `127.0.0.1:0`, speaks HTTP/1.1 and h2c (prior knowledge) through
//! hyper-util's auto builder, records every request it receives and answers from a
//! script that can be changed while it serves.
//!
//! Reply selection, first match wins:
//! 1. an exact-path script (`on_path`, query ignored);
//! 2. a send to `/{ver}/{phone}/messages` or `/{phone}/messages`: the phone's FIFO
//!    (`queue_phone`), then the phone's default (`on_phone`);
//! 3. a `GET /{ver}/{node}` or `GET /{node}` whose query asks for `health_status`:
//!    the node's script (`set_health` / `set_health_reply`), else a 404 Graph error;
//! 4. the global FIFO (`queue_default`), then the global default (`set_default`,
//!    initially `Reply::ok_send()`).
//!
//! A webhook sink (`FakeCloud::start_webhook_sink`) skips 2 and 3 and answers every
//! request with its default (initially an empty 200).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The fbtrace_id every canned Graph error carries.
pub const FBTRACE_ID: &str = "AbCdEfGhIjK";

/// The Cloud API send result `Reply::ok_send()` answers with (byte for byte).
pub const OK_SEND_BODY: &str = r#"{"messaging_product":"whatsapp","contacts":[{"input":"15551234567","wa_id":"15551234567"}],"messages":[{"id":"wamid.HBgLMTU1NTEyMzQ1NjcVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"}]}"#;

/// The Graph 368 envelope from cloud-api.md, byte for byte what `Reply::blocked_368()` answers.
pub const BLOCKED_368_BODY: &str = r#"{"error":{"message":"(#368) Temporarily blocked for policies violations","type":"OAuthException","code":368,"error_data":{"messaging_product":"whatsapp","details":"The WhatsApp Business Account associated with the app has been restricted or disabled for violating a platform policy."},"error_subcode":2494100,"fbtrace_id":"AbCdEfGhIjK"}}"#;

/// Fake ids used for the BUSINESS and APP entities of `health_json`.
pub const FAKE_BUSINESS_ID: &str = "900000000000001";
pub const FAKE_APP_ID: &str = "900000000000002";

// ---------------------------------------------------------------------------
// Recorded requests
// ---------------------------------------------------------------------------

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// When the request head arrived.
    pub at: Instant,
    pub version: http::Version,
}

impl Recorded {
    /// A header's value as text (first value), if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON (panics with the body text when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "recorded body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as (lossy) UTF-8 text.
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Path plus `?query` when present.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }

    /// True when this is a send (any method) to `/{ver}/{phone}/messages` or `/{phone}/messages`.
    pub fn is_send_for(&self, phone_id: &str) -> bool {
        messages_node(&self.path).is_some_and(|p| p == phone_id)
    }

    /// True when this is a `GET …/{node_id}?fields=…health_status…`.
    pub fn is_health_for(&self, node_id: &str) -> bool {
        self.method == "GET"
            && health_node(&self.path, self.query.as_deref()).is_some_and(|n| n == node_id)
    }
}

// ---------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Waited (after recording the request) before answering.
    pub delay: Duration,
    /// Close the connection without answering (after `delay`): the client sees a
    /// reset / incomplete message. Set with `Reply::drop_connection()`.
    pub drop_connection: bool,
}

impl Reply {
    /// `status` with `body` and no headers.
    pub fn raw(status: u16, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
            drop_connection: false,
        }
    }

    /// `status` with a JSON body (serialized compactly) and `content-type: application/json`.
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply::raw(status, serde_json::to_vec(body).unwrap())
            .with_header("content-type", "application/json")
    }

    /// 200, the Cloud API send result (`OK_SEND_BODY`), `content-type: application/json`.
    pub fn ok_send() -> Reply {
        Reply::raw(200, OK_SEND_BODY).with_header("content-type", "application/json")
    }

    /// 403, the exact Graph 368 envelope of cloud-api.md (`BLOCKED_368_BODY`).
    pub fn blocked_368() -> Reply {
        Reply::raw(403, BLOCKED_368_BODY).with_header("content-type", "application/json")
    }

    /// A Graph error envelope
    /// `{"error":{"message":m,"type":"OAuthException","code":c,"fbtrace_id":"AbCdEfGhIjK"}}`.
    pub fn graph_error(status: u16, code: i64, message: &str) -> Reply {
        Reply::json(status, &graph_error_body(code, message, None, None))
    }

    /// A Graph error envelope with `error_subcode` and/or `error_data.details`.
    pub fn graph_error_full(
        status: u16,
        code: i64,
        message: &str,
        subcode: Option<i64>,
        details: Option<&str>,
    ) -> Reply {
        Reply::json(status, &graph_error_body(code, message, subcode, details))
    }

    /// 400, Meta's answer to a send of a paused template (132015).
    pub fn template_paused() -> Reply {
        Reply::graph_error_full(
            400,
            132015,
            "(#132015) Template is paused",
            None,
            Some(
                "Template is paused due to low quality so it cannot be sent in a template message.",
            ),
        )
    }

    /// 400, Meta's answer to a send of a disabled template (132016).
    pub fn template_disabled() -> Reply {
        Reply::graph_error_full(
            400,
            132016,
            "(#132016) Template is disabled",
            None,
            Some("Template has been paused too many times due to low quality and is now permanently disabled."),
        )
    }

    /// Close the connection without writing a response.
    pub fn drop_connection() -> Reply {
        Reply {
            drop_connection: true,
            ..Reply::raw(200, Bytes::new())
        }
    }

    pub fn with_delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }

    pub fn with_header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    pub fn with_status(mut self, status: u16) -> Reply {
        self.status = status;
        self
    }
}

/// A Graph error envelope as JSON.
pub fn graph_error_body(
    code: i64,
    message: &str,
    subcode: Option<i64>,
    details: Option<&str>,
) -> Value {
    let mut err = json!({
        "message": message,
        "type": "OAuthException",
        "code": code,
    });
    if let Some(d) = details {
        err["error_data"] = json!({"messaging_product": "whatsapp", "details": d});
    }
    if let Some(s) = subcode {
        err["error_subcode"] = json!(s);
    }
    err["fbtrace_id"] = json!(FBTRACE_ID);
    json!({ "error": err })
}

/// A Health Status answer for a WABA node:
/// `{"health_status":{"can_send_message":X,"entities":[WABA, BUSINESS, APP]},"id":waba}`.
/// `BLOCKED` adds `errors:[{error_code:141006,…}]` to the WABA entity; `LIMITED` adds
/// `additional_info`.
pub fn health_json(waba_id: &str, can_send: &str) -> Value {
    json!({
        "health_status": {
            "can_send_message": can_send,
            "entities": [
                waba_entity(waba_id, can_send),
                {"entity_type": "BUSINESS", "id": FAKE_BUSINESS_ID, "can_send_message": "AVAILABLE"},
                {"entity_type": "APP", "id": FAKE_APP_ID, "can_send_message": "AVAILABLE"},
            ]
        },
        "id": waba_id,
    })
}

/// A Health Status answer for a PHONE_NUMBER node (names its parent WABA):
/// entities PHONE_NUMBER (AVAILABLE), WABA (`waba_can_send`), BUSINESS, APP; the
/// top-level value is the WABA's; `"id"` is the phone id.
pub fn health_json_phone(phone_id: &str, waba_id: &str, waba_can_send: &str) -> Value {
    json!({
        "health_status": {
            "can_send_message": waba_can_send,
            "entities": [
                {"entity_type": "PHONE_NUMBER", "id": phone_id, "can_send_message": "AVAILABLE"},
                waba_entity(waba_id, waba_can_send),
                {"entity_type": "BUSINESS", "id": FAKE_BUSINESS_ID, "can_send_message": "AVAILABLE"},
                {"entity_type": "APP", "id": FAKE_APP_ID, "can_send_message": "AVAILABLE"},
            ]
        },
        "id": phone_id,
    })
}

fn waba_entity(waba_id: &str, can_send: &str) -> Value {
    let mut e = json!({"entity_type": "WABA", "id": waba_id, "can_send_message": can_send});
    match can_send {
        "BLOCKED" => {
            e["errors"] = json!([{
                "error_code": 141006,
                "error_description": "There is an error with the payment method attached to the WhatsApp Business Account, or the account has been restricted.",
                "possible_solution": "Review the account's status in WhatsApp Manager."
            }]);
        }
        "LIMITED" => {
            e["additional_info"] = json!(["Messaging to some recipients is limited."]);
        }
        _ => {}
    }
    e
}

// ---------------------------------------------------------------------------
// Path helpers
// ---------------------------------------------------------------------------

/// `v21.0`, `v3`, … (a Graph version segment).
pub fn is_version_segment(s: &str) -> bool {
    s.len() > 1
        && s.starts_with('v')
        && s[1..].chars().next().is_some_and(|c| c.is_ascii_digit())
        && s[1..].chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// Path segments with the leading version segment removed.
fn node_segments(path: &str) -> Vec<&str> {
    let mut segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if segs.first().is_some_and(|s| is_version_segment(s)) {
        segs.remove(0);
    }
    segs
}

/// The phone id of `/{ver}/{phone}/messages` or `/{phone}/messages`.
fn messages_node(path: &str) -> Option<&str> {
    match node_segments(path).as_slice() {
        [node, "messages"] if !node.is_empty() => Some(node),
        _ => None,
    }
}

/// `template.name` of a template send body.
fn template_name(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    if v.get("type")?.as_str()? != "template" {
        return None;
    }
    Some(v.get("template")?.get("name")?.as_str()?.to_string())
}

/// The node of `/{ver}/{node}` or `/{node}` when the query asks for health_status.
fn health_node<'a>(path: &'a str, query: Option<&str>) -> Option<&'a str> {
    let q = query?;
    if !q.contains("health_status") {
        return None;
    }
    match node_segments(path).as_slice() {
        [node] if !node.is_empty() => Some(node),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------

#[derive(Clone)]
enum HealthAnswer {
    Json(Value),
    Reply(Reply),
}

struct Script {
    requests: Vec<Recorded>,
    phone_default: HashMap<String, Reply>,
    phone_queue: HashMap<String, VecDeque<Reply>>,
    paths: HashMap<String, Reply>,
    /// Replies for sends of a template, by `template.name` (any phone, any language).
    templates: HashMap<String, Reply>,
    health: HashMap<String, HealthAnswer>,
    /// Unscripted health nodes answer as phone numbers of this WABA (`health_for_any_phone`).
    health_any_phone: Option<String>,
    /// Requests are recorded (off for floods: `stop_recording`).
    recording: bool,
    default_queue: VecDeque<Reply>,
    default: Reply,
}

/// One Health Status request as it arrived: its node, when, and how many health requests
/// (this one included) were being answered at that moment.
#[derive(Debug, Clone)]
pub struct HealthPoll {
    pub node: String,
    pub at: Instant,
    pub in_flight: usize,
}

struct Shared {
    sink: bool,
    /// Health Status requests being answered now, and each one's arrival.
    health_in_flight: AtomicUsize,
    health_polls: Mutex<Vec<HealthPoll>>,
    script: Mutex<Script>,
    connections: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// true = open; while false (`hold()`), answers wait (at most `HOLD_LIMIT`).
    gate: watch::Sender<bool>,
}

/// Longest time a request waits behind `hold()` before being answered anyway.
pub const HOLD_LIMIT: Duration = Duration::from_secs(30);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Script> {
        // A panicking test thread must not poison the fake for the others.
        self.script.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record the request and pick its reply, in one critical section.
    fn record_and_choose(&self, rec: Recorded) -> Reply {
        let mut s = self.lock();
        let reply = if self.sink {
            s.default_queue
                .pop_front()
                .unwrap_or_else(|| s.default.clone())
        } else {
            choose(&mut s, &rec)
        };
        if s.recording {
            s.requests.push(rec);
        }
        reply
    }
}

fn choose(s: &mut Script, rec: &Recorded) -> Reply {
    if let Some(r) = s.paths.get(&rec.path) {
        return r.clone();
    }
    if let Some(phone) = messages_node(&rec.path) {
        if let Some(r) = template_name(&rec.body).and_then(|n| s.templates.get(&n)) {
            return r.clone();
        }
        if let Some(r) = s.phone_queue.get_mut(phone).and_then(|q| q.pop_front()) {
            return r;
        }
        if let Some(r) = s.phone_default.get(phone) {
            return r.clone();
        }
    }
    if rec.method == "GET" {
        if let Some(node) = health_node(&rec.path, rec.query.as_deref()) {
            return match s.health.get(node) {
                Some(HealthAnswer::Json(v)) => Reply::json(200, v),
                Some(HealthAnswer::Reply(r)) => r.clone(),
                None if s.health_any_phone.is_some() => {
                    let waba = s.health_any_phone.clone().unwrap_or_default();
                    Reply::json(200, &health_json_phone(node, &waba, "AVAILABLE"))
                }
                None => Reply::graph_error_full(
                    404,
                    100,
                    &format!(
                        "Unsupported get request. Object with ID '{node}' does not exist, cannot be loaded due to missing permissions, or does not support this operation."
                    ),
                    Some(33),
                    None,
                ),
            };
        }
    }
    s.default_queue
        .pop_front()
        .unwrap_or_else(|| s.default.clone())
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

struct Running {
    shutdown: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Running {
    fn stop(self) {
        let _ = self.shutdown.send(true);
        self.accept.abort();
    }
}

/// The fake Cloud API (or, from `start_webhook_sink`, a webhook sink). Stops on drop.
pub struct FakeCloud {
    addr: SocketAddr,
    shared: Arc<Shared>,
    running: Mutex<Option<Running>>,
}

/// A `FakeCloud` started with `FakeCloud::start_webhook_sink()`.
pub type WebhookSink = FakeCloud;

impl FakeCloud {
    /// Bind 127.0.0.1:0 and serve the fake Graph API.
    pub async fn start() -> FakeCloud {
        Self::start_inner(false, Reply::ok_send()).await
    }

    /// Bind 127.0.0.1:0 and serve a sink: every request is recorded and answered with
    /// the default reply (initially an empty 200; see `set_status`).
    pub async fn start_webhook_sink() -> FakeCloud {
        Self::start_inner(true, Reply::raw(200, Bytes::new())).await
    }

    async fn start_inner(sink: bool, default: Reply) -> FakeCloud {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("FakeCloud: bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            sink,
            health_in_flight: AtomicUsize::new(0),
            health_polls: Mutex::new(Vec::new()),
            script: Mutex::new(Script {
                requests: Vec::new(),
                phone_default: HashMap::new(),
                phone_queue: HashMap::new(),
                paths: HashMap::new(),
                templates: HashMap::new(),
                health: HashMap::new(),
                health_any_phone: None,
                recording: true,
                default_queue: VecDeque::new(),
                default,
            }),
            connections: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            gate: watch::channel(true).0,
        });
        let running = serve(listener, shared.clone());
        FakeCloud {
            addr,
            shared,
            running: Mutex::new(Some(running)),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// "http://127.0.0.1:PORT"
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stop listening and close every open connection (in-flight requests are cut).
    /// The port is free afterwards; script and recordings are kept. Idempotent.
    pub fn stop(&self) {
        if let Some(r) = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            r.stop();
        }
    }

    /// Serve again on the same port after `stop()`, with the same script and
    /// recordings. Retries the bind for up to 5 s. No-op when already serving.
    pub async fn resume(&self) {
        if self.is_running() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("FakeCloud::resume: cannot re-bind {}: {e}", self.addr),
            }
        };
        let running = serve(listener, self.shared.clone());
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(running);
    }

    pub fn is_running(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    // ----- recordings -----

    /// Every request received so far, in arrival order (as recorded, i.e. after the
    /// body was read).
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    pub fn count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    pub fn last(&self) -> Option<Recorded> {
        self.shared.lock().requests.last().cloned()
    }

    /// Requests (any method) to `/{ver}/{phone}/messages` or `/{phone}/messages`.
    pub fn count_for_phone(&self, phone_id: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.is_send_for(phone_id))
            .count()
    }

    pub fn sends_for(&self, phone_id: &str) -> Vec<Recorded> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.is_send_for(phone_id))
            .cloned()
            .collect()
    }

    /// Health Status requests (`GET /{ver}/{node}?fields=…health_status…`) for a node
    /// (a WABA id, or a phone id when the gateway learns a mapping).
    pub fn count_health(&self, node_id: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.is_health_for(node_id))
            .count()
    }

    pub fn health_requests(&self, node_id: &str) -> Vec<Recorded> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.is_health_for(node_id))
            .cloned()
            .collect()
    }

    /// Requests whose path equals `path` exactly (query ignored).
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Forget recorded requests (the script is kept).
    pub fn clear(&self) {
        self.shared.lock().requests.clear();
    }

    /// TCP connections accepted so far (to check upstream connection reuse).
    pub fn connection_count(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Requests being handled right now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Highest number of requests handled at once so far.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Hold every answer (requests are recorded, then wait) until `release()`, or at
    /// most `HOLD_LIMIT` (30 s). Use with `wait_in_flight` for deterministic
    /// concurrency and in-flight-at-shutdown tests.
    pub fn hold(&self) {
        self.shared.gate.send_replace(false);
    }

    /// Let held (and later) requests be answered.
    pub fn release(&self) {
        self.shared.gate.send_replace(true);
    }

    /// Wait until at least `n` requests are being handled at once; false on timeout.
    pub async fn wait_in_flight(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.in_flight() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Poll (every 10 ms) until `pred(requests)` holds; false on timeout.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Recorded]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.shared.lock().requests) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait until at least `n` requests were recorded; false on timeout.
    pub async fn wait_count(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |r| r.len() >= n).await
    }

    /// Wait until at least `n` health requests for `node_id` were recorded.
    pub async fn wait_health(&self, node_id: &str, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |r| {
            r.iter().filter(|x| x.is_health_for(node_id)).count() >= n
        })
        .await
    }

    // ----- script -----

    /// Default reply for sends to this phone's `/…/messages` paths.
    pub fn on_phone(&self, phone_id: &str, reply: Reply) {
        self.shared
            .lock()
            .phone_default
            .insert(phone_id.to_string(), reply);
    }

    /// Append replies to this phone's FIFO (consumed before the phone's default).
    pub fn queue_phone(&self, phone_id: &str, replies: Vec<Reply>) {
        self.shared
            .lock()
            .phone_queue
            .entry(phone_id.to_string())
            .or_default()
            .extend(replies);
    }

    /// Remove the phone's default and FIFO (sends fall back to the global default).
    pub fn reset_phone(&self, phone_id: &str) {
        let mut s = self.shared.lock();
        s.phone_default.remove(phone_id);
        s.phone_queue.remove(phone_id);
    }

    /// Reply for every send of the template `name` (checked before the phone's scripts),
    /// e.g. `Reply::template_paused()`.
    pub fn on_template(&self, name: &str, reply: Reply) {
        self.shared.lock().templates.insert(name.to_string(), reply);
    }

    /// Forget the template's reply (its sends fall back to the phone's scripts).
    pub fn reset_template(&self, name: &str) {
        self.shared.lock().templates.remove(name);
    }

    /// Reply for an exact path (query ignored); checked before everything else.
    pub fn on_path(&self, path: &str, reply: Reply) {
        self.shared.lock().paths.insert(path.to_string(), reply);
    }

    /// The reply for anything no other script matches (initially `Reply::ok_send()`;
    /// an empty 200 for a webhook sink).
    pub fn set_default(&self, reply: Reply) {
        self.shared.lock().default = reply;
    }

    /// Append replies to the global FIFO, consumed before the global default.
    pub fn queue_default(&self, replies: Vec<Reply>) {
        self.shared.lock().default_queue.extend(replies);
    }

    /// Default reply becomes `status` with an empty body (meant for webhook sinks).
    pub fn set_status(&self, status: u16) {
        self.set_default(Reply::raw(status, Bytes::new()));
    }

    /// Answer `GET /{ver}/{node_id}?fields=health_status` (and unversioned) with 200 + `body`.
    pub fn set_health(&self, node_id: &str, body: Value) {
        self.shared
            .lock()
            .health
            .insert(node_id.to_string(), HealthAnswer::Json(body));
    }

    /// Answer the node's health requests with `reply` (e.g. 401 code 190).
    pub fn set_health_reply(&self, node_id: &str, reply: Reply) {
        self.shared
            .lock()
            .health
            .insert(node_id.to_string(), HealthAnswer::Reply(reply));
    }

    /// Every unscripted health node answers as a phone number of `waba_id` (AVAILABLE).
    pub fn health_for_any_phone(&self, waba_id: &str) {
        self.shared.lock().health_any_phone = Some(waba_id.to_string());
    }

    /// Stop recording requests (for floods; counts and `requests()` stop growing).
    pub fn stop_recording(&self) {
        let mut s = self.shared.lock();
        s.recording = false;
        s.requests = Vec::new();
    }

    /// Every Health Status request received so far for `node_id`, in arrival order, with
    /// the number of health requests in flight at its arrival (kept even when recording
    /// is off or the request log was cleared).
    pub fn health_polls(&self, node_id: &str) -> Vec<HealthPoll> {
        self.shared
            .health_polls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|p| p.node == node_id)
            .cloned()
            .collect()
    }

    /// Forget the node's health script (its health requests get 404 again).
    pub fn clear_health(&self, node_id: &str) {
        self.shared.lock().health.remove(node_id);
    }
}

impl Drop for FakeCloud {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(listener: TcpListener, shared: Arc<Shared>) -> Running {
    let (tx, rx) = watch::channel(false);
    let accept = tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(x) => x,
                Err(_) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            shared.connections.fetch_add(1, Ordering::SeqCst);
            let shared = shared.clone();
            let mut rx = rx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(shared.clone(), req));
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = rx.wait_for(|stop| *stop) => {}
                }
            });
        }
    });
    Running {
        shutdown: tx,
        accept,
    }
}

struct HealthInFlight(Arc<Shared>);

impl Drop for HealthInFlight {
    fn drop(&mut self) {
        self.0.health_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("scripted connection drop")
    }
}

impl std::error::Error for DropConnection {}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, DropConnection> {
    let at = Instant::now();
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _guard = InFlight(shared.clone());

    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let rec = Recorded {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
        body,
        at,
        version: parts.version,
    };
    let health = (rec.method == "GET")
        .then(|| health_node(&rec.path, rec.query.as_deref()).map(str::to_string))
        .flatten();
    let _health_guard = health.map(|node| {
        let n = shared.health_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared
            .health_polls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(HealthPoll {
                node,
                at,
                in_flight: n,
            });
        HealthInFlight(shared.clone())
    });
    let reply = shared.record_and_choose(rec);
    let mut gate = shared.gate.subscribe();
    let _ = tokio::time::timeout(HOLD_LIMIT, gate.wait_for(|open| *open)).await;
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    if reply.drop_connection {
        return Err(DropConnection);
    }
    let mut resp = Response::new(Full::new(reply.body));
    *resp.status_mut() = http::StatusCode::from_u16(reply.status).expect("valid status code");
    for (k, v) in &reply.headers {
        resp.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("valid header name"),
            http::HeaderValue::from_str(v).expect("valid header value"),
        );
    }
    Ok(resp)
}
