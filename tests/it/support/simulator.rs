//! Launcher for `wa-breaker simulate` (the Cloud API simulator users rehearse with) as a
//! process on a free port, and helpers for its control API (`/_sim/…`).
//!
//! The process runs with stdin null, stdout and stderr appended to `<tempdir>/simulate.log`
//! and every inherited `WA_BREAKER_*` variable removed. Killed on drop; when a test panics
//! its log tail is printed.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::gateway::{bin, client};
use super::redis::free_port;

/// A running `wa-breaker simulate`.
pub struct Simulator {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    child: Child,
    client: reqwest::Client,
}

impl Simulator {
    /// Starts `wa-breaker simulate --listen 127.0.0.1:{free} {args…}` and waits until it
    /// serves (its banner is logged and `GET /_sim/state` answers).
    pub async fn start(args: &[&str]) -> Simulator {
        let mut dir = tempfile::Builder::new()
            .prefix("wa-breaker-sim-")
            .tempdir()
            .expect("tempdir for simulator");
        for _ in 0..4 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.path().join("simulate.log"))
                .expect("open simulate.log");
            let mut cmd = Command::new(bin());
            cmd.arg("simulate")
                .arg("--listen")
                .arg(addr.to_string())
                .args(args)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log));
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("WA_BREAKER_") {
                    cmd.env_remove(k);
                }
            }
            let child = cmd.spawn().expect("spawn wa-breaker simulate");
            let mut sim = Simulator {
                dir,
                addr,
                child,
                client: client(),
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Ok(Some(status)) = sim.child.try_wait() {
                    let log = sim.log();
                    if log.contains("in use") {
                        dir = sim.take_dir();
                        break;
                    }
                    panic!("wa-breaker simulate exited ({status}):\n{log}");
                }
                if sim.log().contains("listening on") {
                    if let Ok(r) = sim
                        .client
                        .get(format!("{}/_sim/state", sim.url()))
                        .send()
                        .await
                    {
                        if r.status() == 200 {
                            return sim;
                        }
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "wa-breaker simulate did not serve within 15 s:\n{}",
                    sim.log()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("wa-breaker simulate: no free port after 4 attempts");
    }

    /// Moves the tempdir out of a simulator that failed to start (to retry with it).
    fn take_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let placeholder = tempfile::tempdir().expect("tempdir");
        let dir = std::mem::replace(&mut self.dir, placeholder);
        drop(self);
        dir
    }

    /// `http://127.0.0.1:P`: the `upstream` of a gateway under test.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything the process printed.
    pub fn log(&self) -> String {
        std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("simulate.log")
    }

    /// `GET {url}{path}` → (status, JSON body).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.url()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `POST {url}{path}` with a JSON body → (status, JSON body).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.url()))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `POST` that must answer 200; returns the body.
    pub async fn control(&self, path: &str, body: &Value) -> Value {
        let (status, v) = self.post(path, body).await;
        assert_eq!(status, 200, "POST {path} {body}: {v}");
        v
    }

    /// The request log (`GET /_sim/requests?kind=…&phone=…`).
    pub async fn requests(&self, kind: &str, phone: Option<&str>) -> Vec<Value> {
        let mut path = format!("/_sim/requests?kind={kind}");
        if let Some(p) = phone {
            path.push_str(&format!("&phone={p}"));
        }
        let (status, v) = self.get(&path).await;
        assert_eq!(status, 200, "{v}");
        let list = v["requests"].as_array().cloned().unwrap_or_default();
        assert_eq!(v["count"].as_u64(), Some(list.len() as u64), "{v}");
        list
    }

    /// Sends the simulated Meta received from `phone`.
    pub async fn sends(&self, phone: &str) -> usize {
        self.requests("send", Some(phone)).await.len()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- wa-breaker simulate log ---\n{}\n--- end of simulate log ---",
                self.log()
            );
        }
    }
}
