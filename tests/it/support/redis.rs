//! A throwaway `redis-server` per test, plus a tiny raw-RESP client for checks.
//!
//! The binary comes from `$REDIS_SERVER_BIN`, else `redis-server` on PATH, else
//! `/usr/bin/redis-server`.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const NOT_FOUND: &str = "redis-server not found: install it with `apt-get install -y redis-server` or run the README's test command, which does";
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `redis-server` on 127.0.0.1, killed on drop.
pub struct RedisServer {
    bin: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Mutex<Option<Child>>,
}

/// Path of the redis-server binary, or None.
pub fn find_redis_server() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REDIS_SERVER_BIN") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let cand = dir.join("redis-server");
            if cand.is_file() {
                return Some(cand);
            }
        }
    }
    let fallback = PathBuf::from("/usr/bin/redis-server");
    fallback.is_file().then_some(fallback)
}

/// True when a redis-server binary can be found (for tests that want to skip).
pub fn redis_available() -> bool {
    find_redis_server().is_some()
}

/// A currently free 127.0.0.1 port (bind :0, read, drop).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// Start redis-server on a free port; panics with install instructions when absent
    /// and with the server log when it does not answer PING within 5 s.
    pub fn start() -> RedisServer {
        let bin = find_redis_server().unwrap_or_else(|| panic!("{NOT_FOUND}"));
        let dir = tempfile::Builder::new()
            .prefix("wa-breaker-redis-")
            .tempdir()
            .expect("tempdir for redis");
        let mut server = RedisServer {
            bin,
            port: free_port(),
            dir,
            child: Mutex::new(None),
        };
        let mut last_err = String::new();
        for _attempt in 0..5 {
            match server.spawn_and_wait(Duration::from_secs(5)) {
                Ok(()) => return server,
                Err(e) => {
                    server.kill_child();
                    last_err = e;
                    server.port = free_port();
                }
            }
        }
        panic!("redis-server did not start after 5 attempts: {last_err}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// "redis://127.0.0.1:P"
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's working directory (holds `redis.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Everything the server printed (all runs).
    pub fn logs(&self) -> String {
        std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn is_running(&self) -> bool {
        let mut g = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL the server and reap it. Idempotent.
    pub fn stop(&self) {
        self.kill_child();
    }

    /// Start again on the same port (data is lost). Stops first if running.
    /// Waits up to 5 s for PING (retrying while the port is still busy).
    pub fn restart(&self) {
        self.kill_child();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.spawn_and_wait(left.max(Duration::from_millis(200))) {
                Ok(()) => return,
                Err(e) => {
                    self.kill_child();
                    if Instant::now() >= deadline {
                        panic!(
                            "redis-server restart on port {} failed: {e}\n--- redis log ---\n{}",
                            self.port,
                            self.logs()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn kill_child(&self) {
        let mut g = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut c) = g.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn spawn_and_wait(&self, timeout: Duration) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("open redis log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.bin)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--dir",
            ])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.bin.display()))?;
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);

        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut g = self.child.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(c) = g.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        g.take();
                        return Err(format!(
                            "redis-server exited early ({status}) on port {}\n--- redis log ---\n{}",
                            self.port,
                            self.logs()
                        ));
                    }
                }
            }
            if ping(self.port) {
                // Make sure the PONG came from our child, not a stranger on the port.
                let mut g = self.child.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(c) = g.as_mut() {
                    if matches!(c.try_wait(), Ok(None)) {
                        return Ok(());
                    }
                }
                g.take();
                return Err(format!(
                    "redis-server on port {} exited; port taken by another server",
                    self.port
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "redis-server on port {} did not answer PING within {timeout:?}\n--- redis log ---\n{}",
                    self.port,
                    self.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A new raw connection to the server (5 s read/write timeouts).
    pub fn connect(&self) -> RespConn {
        RespConn::connect(self.port)
    }

    /// Run one command over a fresh connection and render the reply as text:
    /// simple/bulk strings as-is, integers in decimal, nil as `(nil)`, errors as
    /// `(error) MSG`, arrays as their rendered elements joined with '\n'.
    pub fn cmd(&self, args: &[&str]) -> String {
        self.cmd_value(args).render()
    }

    /// Like `cmd` but returns the parsed reply.
    pub fn cmd_value(&self, args: &[&str]) -> Resp {
        self.connect().cmd(args)
    }

    /// `KEYS pattern`, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut v = self.cmd_value(&["KEYS", pattern]).strings();
        v.sort();
        v
    }

    /// `GET key`, None for nil.
    pub fn get(&self, key: &str) -> Option<String> {
        match self.cmd_value(&["GET", key]) {
            Resp::Nil => None,
            r => Some(r.render()),
        }
    }

    /// Subscribe (on a background thread) to channels (`SUBSCRIBE`) or, when a name
    /// contains `*`, `?` or `[`, patterns (`PSUBSCRIBE`). Returns once subscribed.
    pub fn subscribe(&self, channels: &[&str]) -> RedisSubscriber {
        RedisSubscriber::start(self.port, channels)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill_child();
    }
}

fn ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    buf[..got].starts_with(b"+PONG")
}

// ---------------------------------------------------------------------------
// RESP
// ---------------------------------------------------------------------------

/// A parsed RESP2 reply (plus the RESP3 null / boolean / double / map types, flattened).
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(String),
    Nil,
    Array(Vec<Resp>),
}

impl Resp {
    /// Text rendering (see `RedisServer::cmd`).
    pub fn render(&self) -> String {
        match self {
            Resp::Simple(s) | Resp::Bulk(s) => s.clone(),
            Resp::Error(e) => format!("(error) {e}"),
            Resp::Int(i) => i.to_string(),
            Resp::Nil => "(nil)".to_string(),
            Resp::Array(v) => v.iter().map(Resp::render).collect::<Vec<_>>().join("\n"),
        }
    }

    /// The elements of an array rendered as strings (a scalar gives one element, nil none).
    pub fn strings(&self) -> Vec<String> {
        match self {
            Resp::Array(v) => v.iter().map(Resp::render).collect(),
            Resp::Nil => Vec::new(),
            other => vec![other.render()],
        }
    }
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn read_line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "redis closed the connection",
        ));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn read_resp(r: &mut impl BufRead) -> std::io::Result<Resp> {
    let line = read_line(r)?;
    let (kind, rest) = line.split_at(1.min(line.len()));
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad RESP line {line:?}"),
        )
    };
    Ok(match kind {
        "+" => Resp::Simple(rest.to_string()),
        "-" | "!" => Resp::Error(rest.to_string()),
        ":" => Resp::Int(rest.parse().map_err(|_| bad())?),
        "," | "(" => Resp::Simple(rest.to_string()),
        "#" => Resp::Simple(rest.to_string()),
        "_" => Resp::Nil,
        "$" | "=" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Resp::Nil
            } else {
                let mut buf = vec![0u8; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Resp::Bulk(String::from_utf8_lossy(&buf).into_owned())
            }
        }
        "*" | "~" | ">" | "%" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Resp::Nil
            } else {
                let count = if kind == "%" { n * 2 } else { n };
                let mut v = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    v.push(read_resp(r)?);
                }
                Resp::Array(v)
            }
        }
        _ => return Err(bad()),
    })
}

/// One raw RESP connection (blocking std TcpStream, 5 s timeouts).
pub struct RespConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RespConn {
    pub fn connect(port: u16) -> RespConn {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to redis at {addr}: {e}"));
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let writer = s.try_clone().unwrap();
        RespConn {
            reader: BufReader::new(s),
            writer,
        }
    }

    /// Send one command and read its reply (panics on I/O errors / timeouts).
    pub fn cmd(&mut self, args: &[&str]) -> Resp {
        self.writer
            .write_all(&encode(args))
            .unwrap_or_else(|e| panic!("redis write {args:?}: {e}"));
        read_resp(&mut self.reader).unwrap_or_else(|e| panic!("redis read reply to {args:?}: {e}"))
    }
}

/// A background SUBSCRIBE / PSUBSCRIBE; messages arrive as (channel, payload).
pub struct RedisSubscriber {
    rx: mpsc::Receiver<(String, String)>,
    stream: TcpStream,
}

impl RedisSubscriber {
    fn start(port: u16, channels: &[&str]) -> RedisSubscriber {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to redis at {addr}: {e}"));
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let (plain, patterns): (Vec<&str>, Vec<&str>) =
            channels.iter().partition(|c| !c.contains(['*', '?', '[']));
        let mut expected = 0;
        if !plain.is_empty() {
            let mut a = vec!["SUBSCRIBE"];
            a.extend(&plain);
            w.write_all(&encode(&a)).expect("SUBSCRIBE");
            expected += plain.len();
        }
        if !patterns.is_empty() {
            let mut a = vec!["PSUBSCRIBE"];
            a.extend(&patterns);
            w.write_all(&encode(&a)).expect("PSUBSCRIBE");
            expected += patterns.len();
        }
        // Wait for every confirmation so callers can publish right away.
        for _ in 0..expected {
            let r = read_resp(&mut reader).expect("subscribe confirmation");
            assert!(
                matches!(&r, Resp::Array(v) if v.first().is_some_and(|k| matches!(k, Resp::Bulk(s) if s.ends_with("subscribe")))),
                "unexpected subscribe reply {r:?}"
            );
        }
        reader.get_ref().set_read_timeout(None).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || loop {
            match read_resp(&mut reader) {
                Ok(Resp::Array(v)) => {
                    let parts: Vec<String> = v.iter().map(Resp::render).collect();
                    match parts.first().map(String::as_str) {
                        Some("message") if parts.len() == 3 => {
                            let _ = tx.send((parts[1].clone(), parts[2].clone()));
                        }
                        Some("pmessage") if parts.len() == 4 => {
                            let _ = tx.send((parts[2].clone(), parts[3].clone()));
                        }
                        _ => {}
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        });
        RedisSubscriber { rx, stream: s }
    }

    /// Next (channel, payload), waiting at most `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<(String, String)> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Everything received so far without waiting.
    pub fn drain(&self) -> Vec<(String, String)> {
        self.rx.try_iter().collect()
    }
}

impl Drop for RedisSubscriber {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}
