//! Launcher for the built `wa-breaker` binary, plus HTTP helpers to drive it.
//!
//! Config placeholders (replaced in the config text, in `.env()` values and in `.arg()`s):
//! `{listen}` / `{admin_listen}` → `127.0.0.1:P` (free ports, kept across `restart()`),
//! `{state_dir}` → `<tempdir>/state` (created), `{config}` → the config file path,
//! `{dir}` → the tempdir, plus any `.var(name, value)` as `{name}`.
//!
//! The process runs with its working directory in the tempdir, stdin null, stdout and
//! stderr appended to `<tempdir>/gateway.log`, and every inherited `WA_BREAKER_*`
//! variable removed (only `.env()` ones are set). When a test panics while a `Gateway`
//! is alive, its drop prints the tail of the log to stderr.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::redis::free_port;

/// Path of the binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_wa-breaker");

/// The binary the launcher runs: `$WA_BREAKER_TEST_BIN` when set (e.g. to test a
/// binary built elsewhere), else `BIN`.
pub fn bin() -> PathBuf {
    std::env::var_os("WA_BREAKER_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(BIN))
}

/// The bearer token `send()` uses.
pub const TEST_TOKEN: &str = "test-token-SECRET123";

/// The Graph version `send()` uses in paths.
pub const TEST_VERSION: &str = "v21.0";

/// The template send body of /work/shared/bench/post.lua (byte for byte).
pub const TEMPLATE_BODY: &str = r#"{"messaging_product":"whatsapp","recipient_type":"individual","to":"15551234567","type":"template","template":{"name":"order_update","language":{"code":"en_US"},"components":[{"type":"body","parameters":[{"type":"text","text":"A-1029384"},{"type":"text","text":"tomorrow between 9 and 11"}]}]}}"#;

/// A free-form text send body (byte for byte).
pub const TEXT_BODY: &str =
    r#"{"messaging_product":"whatsapp","to":"15551234567","type":"text","text":{"body":"hi"}}"#;

const READY_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const CLI_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_TAIL_ON_PANIC: usize = 64 * 1024;

/// `TEMPLATE_BODY` as JSON. Note: serializing it again sorts keys; use `TEMPLATE_BODY`
/// (with `send_str`) when bytes must match.
pub fn template_body() -> Value {
    serde_json::from_str(TEMPLATE_BODY).unwrap()
}

/// `TEXT_BODY` as JSON.
pub fn text_body() -> Value {
    serde_json::from_str(TEXT_BODY).unwrap()
}

/// A fresh reqwest client: no proxy, 30 s total timeout. (A client is tied to the
/// runtime that first used it; make one per test.)
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// POST `body` to `{gw}/v21.0/{phone_id}/messages` with `Authorization: Bearer
/// test-token-SECRET123` and `content-type: application/json`.
pub async fn send(gw: &Gateway, phone_id: &str, body: &Value) -> reqwest::Response {
    gw.send(phone_id, body).await
}

// ---------------------------------------------------------------------------
// Builder
// ---------------------------------------------------------------------------

/// Options for `Gateway::builder(config)`.
pub struct GatewayBuilder {
    config: String,
    envs: Vec<(String, String)>,
    env_remove: Vec<String>,
    args: Vec<String>,
    vars: Vec<(String, String)>,
    wait_ready: bool,
    ready_timeout: Duration,
    config_flag: bool,
    wrapper: Vec<String>,
}

impl GatewayBuilder {
    /// Set an environment variable for the process (placeholders are replaced).
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.to_string(), v.to_string()));
        self
    }

    /// Remove an (inherited) environment variable.
    pub fn env_remove(mut self, k: &str) -> Self {
        self.env_remove.push(k.to_string());
        self
    }

    /// Append a command-line argument (after `--config FILE`; placeholders replaced).
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }

    pub fn args(mut self, a: &[&str]) -> Self {
        self.args.extend(a.iter().map(|s| s.to_string()));
        self
    }

    /// Define `{name}` → `value` for the config, env values and args
    /// (e.g. `.var("upstream", &fake.url())`).
    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.vars.push((name.to_string(), value.to_string()));
        self
    }

    /// Don't wait for `/readyz` in `start()` / `restart()` (for processes expected to
    /// fail, or without an admin listener). Use `wait_ready()` / `wait_exit()` yourself.
    pub fn no_wait(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    /// Readiness timeout (default 15 s).
    pub fn ready_timeout(mut self, d: Duration) -> Self {
        self.ready_timeout = d;
        self
    }

    /// Don't pass `--config FILE` (pass it yourself, e.g. `.env("WA_BREAKER_CONFIG", "{config}")`).
    pub fn no_config_flag(mut self) -> Self {
        self.config_flag = false;
        self
    }

    /// Run the binary under another program: `wrapper[0] wrapper[1..] <binary> --config …`
    /// (placeholders replaced), e.g. `valgrind --tool=callgrind …`.
    pub fn wrapper(mut self, w: &[&str]) -> Self {
        self.wrapper = w.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Write the config, spawn the binary and (unless `no_wait`) wait for
    /// `GET {admin_url}/readyz` = 200; panics with the log and exit status on failure.
    pub async fn start(self) -> Gateway {
        let dir = tempfile::Builder::new()
            .prefix("wa-breaker-gw-")
            .tempdir()
            .expect("tempdir for gateway");
        let state_dir = dir.path().join("state");
        std::fs::create_dir_all(&state_dir).unwrap();
        let config_path = dir.path().join("config.toml");
        let log_path = dir.path().join("gateway.log");
        let mut gw = Gateway {
            config_path,
            state_dir,
            log_path,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            template: self.config,
            rendered_config: String::new(),
            envs: self.envs,
            env_remove: self.env_remove,
            args: self.args,
            vars: self.vars,
            wait_ready: self.wait_ready,
            ready_timeout: self.ready_timeout,
            config_flag: self.config_flag,
            wrapper: self.wrapper,
            child: Mutex::new(None),
            last_status: Mutex::new(None),
            client: client(),
            logs_shown: std::sync::atomic::AtomicBool::new(false),
            dir,
        };
        // A port picked free may be grabbed before the gateway binds it: retry with
        // fresh ports when the process dies complaining about an address in use.
        for attempt in 0..4 {
            gw.listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
            gw.admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
            while gw.admin == gw.listen {
                gw.admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
            }
            gw.rendered_config = gw.subst(&gw.template);
            std::fs::write(&gw.config_path, &gw.rendered_config).expect("write config.toml");
            let offset = gw.log_len();
            gw.spawn();
            if !gw.wait_ready {
                return gw;
            }
            match gw.wait_ready_inner(gw.ready_timeout).await {
                Ok(()) => return gw,
                Err(ReadyError::Exited(status))
                    if attempt < 3 && gw.log_since(offset).to_lowercase().contains("in use") =>
                {
                    let _ = status;
                    continue;
                }
                Err(e) => gw.fail_start(e),
            }
        }
        unreachable!()
    }
}

// ---------------------------------------------------------------------------
// Gateway
// ---------------------------------------------------------------------------

enum ReadyError {
    Exited(ExitStatus),
    Timeout(String),
}

/// A running `wa-breaker` process. SIGKILLed on drop.
pub struct Gateway {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    state_dir: PathBuf,
    log_path: PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
    template: String,
    rendered_config: String,
    envs: Vec<(String, String)>,
    env_remove: Vec<String>,
    args: Vec<String>,
    vars: Vec<(String, String)>,
    wait_ready: bool,
    ready_timeout: Duration,
    config_flag: bool,
    wrapper: Vec<String>,
    child: Mutex<Option<Child>>,
    last_status: Mutex<Option<ExitStatus>>,
    client: reqwest::Client,
    /// Set when a panic message already carried the full log (skip the drop-time tail).
    logs_shown: std::sync::atomic::AtomicBool,
}

impl Gateway {
    /// `Gateway::builder(config).start().await`.
    pub async fn start(config_toml: &str) -> Gateway {
        Gateway::builder(config_toml).start().await
    }

    pub fn builder(config_toml: &str) -> GatewayBuilder {
        GatewayBuilder {
            config: config_toml.to_string(),
            envs: Vec::new(),
            env_remove: Vec::new(),
            args: Vec::new(),
            vars: Vec::new(),
            wait_ready: true,
            ready_timeout: READY_TIMEOUT,
            config_flag: true,
            wrapper: Vec::new(),
        }
    }

    // ----- addresses and files -----

    /// Main listener, "http://127.0.0.1:P".
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// Admin listener, "http://127.0.0.1:P".
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The config as written (placeholders replaced).
    pub fn config_text(&self) -> &str {
        &self.rendered_config
    }

    /// The tempdir holding config.toml, state/ and gateway.log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process (all runs) wrote to stdout and stderr.
    pub fn logs(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Poll the log (every 20 ms) until it contains `needle`; false on timeout.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.logs().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // ----- process control -----

    pub fn pid(&self) -> Option<u32> {
        self.lock_child().as_ref().map(|c| c.id())
    }

    /// True while the process runs (reaps it when it has exited).
    pub fn is_running(&self) -> bool {
        self.try_reap().is_none() && self.lock_child().is_some()
    }

    /// Send a signal by name (`"TERM"`, `"INT"`, `"HUP"`, …) via `kill -NAME pid`.
    pub fn signal(&self, name: &str) {
        let pid = self.pid().expect("gateway is not running");
        let out = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .output()
            .expect("run kill");
        assert!(
            out.status.success(),
            "kill -{name} {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGTERM, then wait up to 20 s for exit; returns the exit status (or the last one
    /// when already exited). Panics (after SIGKILL) with the logs if it does not exit.
    pub async fn stop(&self) -> ExitStatus {
        if let Some(st) = self.try_reap() {
            return st;
        }
        if self.lock_child().is_none() {
            return self
                .last_status
                .lock()
                .unwrap()
                .expect("gateway was never started");
        }
        self.signal("TERM");
        match self.wait_exit(STOP_TIMEOUT).await {
            Some(st) => st,
            None => {
                let st = self.kill9();
                self.logs_shown
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                panic!(
                    "wa-breaker did not exit within {STOP_TIMEOUT:?} of SIGTERM (killed: {st})\n--- gateway log ---\n{}",
                    self.logs()
                );
            }
        }
    }

    /// SIGKILL and reap; returns the exit status (or the last one when already exited).
    pub fn kill9(&self) -> ExitStatus {
        let mut g = self.lock_child();
        if let Some(mut c) = g.take() {
            let _ = c.kill();
            let st = c.wait().expect("wait for wa-breaker");
            *self.last_status.lock().unwrap() = Some(st);
            return st;
        }
        drop(g);
        self.last_status
            .lock()
            .unwrap()
            .expect("gateway was never started")
    }

    /// Wait (polling every 20 ms) for the process to exit on its own.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_reap() {
                return Some(st);
            }
            if self.lock_child().is_none() {
                return *self.last_status.lock().unwrap();
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last exit status seen (after stop / kill9 / wait_exit / is_running).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.try_reap();
        *self.last_status.lock().unwrap()
    }

    /// Start the binary again with the same config file, state dir, ports, env and
    /// args (gracefully stopping it first when running), then wait for readiness
    /// (unless built with `no_wait`). Retries while the old ports are still busy.
    pub async fn restart(&self) {
        if self.is_running() {
            self.stop().await;
        }
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            let offset = self.log_len();
            self.spawn();
            if !self.wait_ready {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .wait_ready_inner(left.max(Duration::from_millis(500)))
                .await
            {
                Ok(()) => return,
                Err(ReadyError::Exited(_))
                    if Instant::now() < deadline
                        && self.log_since(offset).to_lowercase().contains("in use") =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => self.fail_start(e),
            }
        }
    }

    /// Wait until `GET {admin_url}/readyz` answers 200; panics with logs otherwise.
    pub async fn wait_ready(&self) {
        if let Err(e) = self.wait_ready_inner(self.ready_timeout).await {
            self.fail_start(e);
        }
    }

    fn lock_child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// If the child has exited, reap it and return its status.
    fn try_reap(&self) -> Option<ExitStatus> {
        let mut g = self.lock_child();
        let st = g.as_mut().and_then(|c| c.try_wait().ok().flatten())?;
        g.take();
        *self.last_status.lock().unwrap() = Some(st);
        Some(st)
    }

    fn subst(&self, s: &str) -> String {
        let mut out = s
            .replace("{listen}", &self.listen.to_string())
            .replace("{admin_listen}", &self.admin.to_string())
            .replace("{state_dir}", &self.state_dir.display().to_string())
            .replace("{config}", &self.config_path.display().to_string())
            .replace("{dir}", &self.dir.path().display().to_string());
        for (k, v) in &self.vars {
            out = out.replace(&format!("{{{k}}}"), v);
        }
        out
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log_path)
            .map(|m| m.len())
            .unwrap_or(0)
    }

    fn log_since(&self, offset: u64) -> String {
        let all = std::fs::read(&self.log_path).unwrap_or_default();
        let start = (offset as usize).min(all.len());
        String::from_utf8_lossy(&all[start..]).into_owned()
    }

    fn spawn(&self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open gateway.log");
        let log2 = log.try_clone().unwrap();
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args.iter().map(|a| self.subst(a))).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        scrub_env(&mut cmd);
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
        for (k, v) in &self.envs {
            cmd.env(k, self.subst(v));
        }
        if self.config_flag {
            cmd.arg("--config").arg(&self.config_path);
        }
        for a in &self.args {
            cmd.arg(self.subst(a));
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin().display()));
        *self.lock_child() = Some(child);
    }

    async fn wait_ready_inner(&self, timeout: Duration) -> Result<(), ReadyError> {
        let url = format!("{}/readyz", self.admin_url());
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            if let Some(st) = self.try_reap() {
                return Err(ReadyError::Exited(st));
            }
            match self
                .client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
            {
                Ok(r) if r.status() == 200 => return Ok(()),
                Ok(r) => last = format!("HTTP {}", r.status()),
                Err(e) => last = format!("{e}"),
            }
            if Instant::now() >= deadline {
                return Err(ReadyError::Timeout(last));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn fail_start(&self, e: ReadyError) -> ! {
        let what = match e {
            ReadyError::Exited(st) => format!("exited before ready: {st}"),
            ReadyError::Timeout(last) => {
                let st = self.kill9();
                format!(
                    "not ready within {:?} (last /readyz attempt: {last}); killed: {st}",
                    self.ready_timeout
                )
            }
        };
        self.logs_shown
            .store(true, std::sync::atomic::Ordering::SeqCst);
        panic!(
            "wa-breaker {what}\n--- config ({}) ---\n{}\n--- gateway log ---\n{}",
            self.config_path.display(),
            self.rendered_config,
            self.logs()
        );
    }

    // ----- one-shot CLI -----

    /// Run the binary once (`--help`, `check-config`, a bad config, …) with a 20 s
    /// limit; inherited `WA_BREAKER_*` variables are removed, `envs` are set, the
    /// working directory is a fresh tempdir. Panics if it does not exit in time.
    pub fn run_cli(args: &[&str], envs: &[(&str, &str)]) -> Output {
        run_cli_in(None, args, envs)
    }

    // ----- HTTP helpers -----

    /// This gateway's reqwest client (no proxy, 30 s timeout).
    pub fn client(&self) -> reqwest::Client {
        self.client.clone()
    }

    /// POST `body` (JSON) to `/v21.0/{phone_id}/messages` with the test bearer token.
    pub async fn send(&self, phone_id: &str, body: &Value) -> reqwest::Response {
        self.send_str(phone_id, &serde_json::to_string(body).unwrap())
            .await
    }

    /// POST a raw body (sent byte for byte) to `/v21.0/{phone_id}/messages`.
    pub async fn send_str(&self, phone_id: &str, body: &str) -> reqwest::Response {
        self.post(&format!("/{TEST_VERSION}/{phone_id}/messages"), body)
            .await
    }

    /// POST `body` to `{url}{path}` with the test bearer token and JSON content type.
    pub async fn post(&self, path: &str, body: &str) -> reqwest::Response {
        let url = format!("{}{}", self.url(), path);
        self.client
            .post(&url)
            .header("authorization", format!("Bearer {TEST_TOKEN}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"))
    }

    /// GET `{url}{path}` with the test bearer token.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        let url = format!("{}{}", self.url(), path);
        self.client
            .get(&url)
            .header("authorization", format!("Bearer {TEST_TOKEN}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// GET `{admin_url}{path}`, with `Authorization: Bearer {token}` when given.
    pub async fn admin_get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let url = format!("{}{}", self.admin_url(), path);
        let mut req = self.client.get(&url);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// POST `{admin_url}{path}` with an optional JSON body and bearer token.
    pub async fn admin_post(
        &self,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> reqwest::Response {
        let url = format!("{}{}", self.admin_url(), path);
        let mut req = self.client.post(&url);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(serde_json::to_vec(b).unwrap());
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"))
    }

    /// `GET /metrics` body (asserts 200).
    pub async fn metrics(&self) -> String {
        let r = self.admin_get("/metrics", None).await;
        assert_eq!(r.status(), 200, "GET /metrics");
        r.text().await.unwrap()
    }

    /// `GET /admin/circuits/{waba_id}` → (status, JSON body or Null).
    pub async fn circuit(&self, admin_token: &str, waba_id: &str) -> (u16, Value) {
        let r = self
            .admin_get(&format!("/admin/circuits/{waba_id}"), Some(admin_token))
            .await;
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// POST a signed webhook (`X-Hub-Signature-256`) to `{url}{path}`.
    pub async fn webhook_post(&self, path: &str, secret: &str, body: &[u8]) -> reqwest::Response {
        super::webhook::post_signed(&format!("{}{}", self.url(), path), secret, body).await
    }

    /// Meta's subscription GET to `{url}{path}`.
    pub async fn webhook_verify(
        &self,
        path: &str,
        verify_token: &str,
        challenge: &str,
    ) -> reqwest::Response {
        super::webhook::verify_get(&format!("{}{}", self.url(), path), verify_token, challenge)
            .await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let mut g = self.lock_child();
        if let Some(mut c) = g.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        drop(g);
        if std::thread::panicking() && !self.logs_shown.load(std::sync::atomic::Ordering::SeqCst) {
            let all = std::fs::read(&self.log_path).unwrap_or_default();
            let start = all.len().saturating_sub(LOG_TAIL_ON_PANIC);
            eprintln!(
                "--- wa-breaker log tail ({} of {} bytes, {}) ---\n{}\n--- end of wa-breaker log ---",
                all.len() - start,
                all.len(),
                self.log_path.display(),
                String::from_utf8_lossy(&all[start..])
            );
        }
    }
}

fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("WA_BREAKER_") {
            cmd.env_remove(k);
        }
    }
}

/// A config file in its own tempdir, placeholders replaced like `Gateway` does
/// (`{listen}`/`{admin_listen}` get free ports, `{state_dir}` = `<dir>/state`).
/// For `run_cli` tests (`check-config`, bad configs).
pub struct TempConfig {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub text: String,
}

impl TempConfig {
    pub fn path_str(&self) -> String {
        self.path.display().to_string()
    }
}

pub fn write_config(config_toml: &str) -> TempConfig {
    let dir = tempfile::Builder::new()
        .prefix("wa-breaker-cfg-")
        .tempdir()
        .expect("tempdir for config");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let path = dir.path().join("config.toml");
    let text = config_toml
        .replace("{listen}", &format!("127.0.0.1:{}", free_port()))
        .replace("{admin_listen}", &format!("127.0.0.1:{}", free_port()))
        .replace("{state_dir}", &state.display().to_string())
        .replace("{config}", &path.display().to_string())
        .replace("{dir}", &dir.path().display().to_string());
    std::fs::write(&path, &text).unwrap();
    TempConfig { dir, path, text }
}

/// `Gateway::run_cli` with an explicit working directory (None → a fresh tempdir).
pub fn run_cli_in(cwd: Option<&Path>, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let tmp = tempfile::Builder::new()
        .prefix("wa-breaker-cli-")
        .tempdir()
        .expect("tempdir for cli");
    let out_path = tmp.path().join("stdout");
    let err_path = tmp.path().join("stderr");
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .current_dir(cwd.unwrap_or(tmp.path()))
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(&out_path).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()));
    scrub_env(&mut cmd);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin().display()));
    let deadline = Instant::now() + CLI_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "wa-breaker {args:?} did not exit within {CLI_TIMEOUT:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&std::fs::read(&out_path).unwrap_or_default()),
                String::from_utf8_lossy(&std::fs::read(&err_path).unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------
// Prometheus text helpers
// ---------------------------------------------------------------------------

/// One Prometheus sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parse one sample line `name{k="v",…} value [ts]` (None for comments / blanks).
pub fn parse_metric_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if rest.starts_with('{') {
        let bytes: Vec<char> = rest.chars().collect();
        let mut i = 1;
        loop {
            while i < bytes.len() && (bytes[i] == ',' || bytes[i] == ' ') {
                i += 1;
            }
            if i >= bytes.len() {
                return None;
            }
            if bytes[i] == '}' {
                i += 1;
                break;
            }
            let mut key = String::new();
            while i < bytes.len() && bytes[i] != '=' {
                key.push(bytes[i]);
                i += 1;
            }
            i += 1; // '='
            if i >= bytes.len() || bytes[i] != '"' {
                return None;
            }
            i += 1;
            let mut val = String::new();
            while i < bytes.len() && bytes[i] != '"' {
                if bytes[i] == '\\' && i + 1 < bytes.len() {
                    i += 1;
                    val.push(match bytes[i] {
                        'n' => '\n',
                        c => c,
                    });
                } else {
                    val.push(bytes[i]);
                }
                i += 1;
            }
            i += 1; // closing quote
            labels.push((key.trim().to_string(), val));
        }
        let consumed: usize = bytes[..i.min(bytes.len())]
            .iter()
            .map(|c| c.len_utf8())
            .sum();
        rest = &rest[consumed..];
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Every sample in a Prometheus text exposition.
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_metric_line).collect()
}

/// The first sample named `name` whose labels include all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter_map(parse_metric_line)
        .find(|s| s.name == name && has_labels(&s.labels, labels))
        .map(|s| s.value)
}

/// The sum of all samples named `name` whose labels include all of `labels`
/// (0 when none).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(parse_metric_line)
        .filter(|s| s.name == name && has_labels(&s.labels, labels))
        .map(|s| s.value)
        .sum()
}

fn has_labels(have: &[(String, String)], want: &[(&str, &str)]) -> bool {
    want.iter()
        .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
}
