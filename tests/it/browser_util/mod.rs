//! A real browser for the console tests: Debian's headless Chromium driven by its
//! ChromeDriver over WebDriver (W3C), in plain JSON over reqwest (included with
//! `mod browser_util;`).
//!
//! The binaries are `$CHROMIUM_BIN` and `$CHROMEDRIVER_BIN`, else `/usr/bin/chromium` and
//! `/usr/bin/chromedriver` (Debian's `chromium` and `chromium-driver` packages, which
//! `scripts/test` installs when missing). Each [`Browser`] runs its own chromedriver on a
//! free port, in its own process group, with a fresh profile directory; [`Browser::quit`]
//! ends the session, and dropping it kills the group (chromedriver and the Chromium it
//! started).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::support::free_port;

const NOT_FOUND: &str = "Chromium or ChromeDriver not found: install Debian's packages with \
     `apt-get install -y chromium chromium-driver` (scripts/test does), or point \
     CHROMIUM_BIN and CHROMEDRIVER_BIN at the binaries";

/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// What the machine's closed network needs: no background connections, no first-run work.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1440,1100",
];

fn bin(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// The Chromium binary.
pub fn chromium() -> PathBuf {
    bin("CHROMIUM_BIN", "/usr/bin/chromium")
}

/// The ChromeDriver binary.
pub fn chromedriver() -> PathBuf {
    bin("CHROMEDRIVER_BIN", "/usr/bin/chromedriver")
}

/// Where screenshots go: `target/console-screenshots/` (or under `$CARGO_TARGET_DIR`).
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("console-screenshots")
}

/// One Chromium session.
pub struct Browser {
    driver: Option<Child>,
    base: String,
    session: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; panics with install
    /// instructions when a binary is missing, with the driver's log when it fails.
    pub async fn start() -> Browser {
        let (chromium, driver) = (chromium(), chromedriver());
        assert!(
            chromium.is_file() && driver.is_file(),
            "{NOT_FOUND} (looked for {} and {})",
            chromium.display(),
            driver.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("wa-breaker-browser-")
            .tempdir()
            .expect("tempdir for the browser");
        let log = dir.path().join("chromedriver.log");
        let port = free_port();
        let mut cmd = Command::new(&driver);
        cmd.arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group, so one kill ends chromedriver and every Chromium process.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", driver.display()));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut b = Browser {
            driver: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            http,
            dir,
        };
        b.wait_driver().await;
        let profile = b.dir.path().join("profile");
        let mut args: Vec<String> = FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium.display().to_string(), "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let v = b.raw("POST", "/session", Some(caps)).await;
        b.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}\n{}", b.driver_log()))
            .to_string();
        b
    }

    async fn wait_driver(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ok = self
                .http
                .get(format!("{}/status", self.base))
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if let Ok(r) = ok {
                if let Ok(v) = r.json::<Value>().await {
                    if v["value"]["ready"] == true {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer within 15 s\n{}",
                self.driver_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn driver_log(&self) -> String {
        let s =
            std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        let mut tail = s.len().saturating_sub(4000);
        while !s.is_char_boundary(tail) {
            tail += 1;
        }
        format!("--- chromedriver log (tail) ---\n{}", &s[tail..])
    }

    async fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{}", self.base, path);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body.unwrap_or(json!({}))),
        };
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "WebDriver {method} {path}: {status} {v}"
        );
        v
    }

    /// A command of this session; its `value`.
    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let v = self
            .raw(method, &format!("/session/{}{path}", self.session), body)
            .await;
        v["value"].clone()
    }

    /// Loads `url` and waits for it (WebDriver waits for the load event).
    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page; its result.
    /// WebDriver's scripts are the test's, not the page's: the page's policy allows none.
    pub async fn script(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// The text of the first element matching `css` (its `textContent`: as written, not as
    /// styled — a badge's CSS capitals don't show), or None.
    pub async fn text(&self, css: &str) -> Option<String> {
        let v = self
            .script(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                json!([css]),
            )
            .await;
        v.as_str().map(str::to_string)
    }

    /// True when an element matches `css` and is rendered (not `hidden`, not `display: none`).
    pub async fn visible(&self, css: &str) -> bool {
        self.script(
            "const e = document.querySelector(arguments[0]); return !!e && e.getClientRects().length > 0;",
            json!([css]),
        )
        .await
            == true
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .cmd(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    /// Clicks the first element matching `css` (as a user would: it must be visible).
    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.cmd("POST", &format!("/element/{id}/click"), None)
            .await;
    }

    /// Types `text` into the first element matching `css`, after clearing it.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.cmd("POST", &format!("/element/{id}/clear"), None)
            .await;
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Polls (every 25 ms) until the text of `css` contains `needle`; how long that took,
    /// or the last text seen.
    pub async fn wait_text(
        &self,
        css: &str,
        needle: &str,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let t0 = Instant::now();
        loop {
            let got = self.text(css).await;
            if got.as_deref().is_some_and(|t| t.contains(needle)) {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() >= timeout {
                return Err(got.unwrap_or_else(|| format!("(no element {css})")));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls until `css` is visible (or not, with `want = false`).
    pub async fn wait_visible(&self, css: &str, want: bool, timeout: Duration) -> bool {
        let t0 = Instant::now();
        loop {
            if self.visible(css).await == want {
                return true;
            }
            if t0.elapsed() >= timeout {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Saves a PNG of the viewport as `target/console-screenshots/{name}.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let v = self.cmd("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("screenshot is base64"))
            .expect("screenshot decodes");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// The browser console's entries so far (each `{level, message, …}`).
    pub async fn console_log(&self) -> Vec<Value> {
        let v = self
            .cmd("POST", "/se/log", Some(json!({"type": "browser"})))
            .await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// Ends the session (Chromium exits) and chromedriver.
    pub async fn quit(mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.driver.take() {
            // The group this test made for it: chromedriver and its Chromium.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .stderr(Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.driver_log());
        }
        self.kill();
    }
}
