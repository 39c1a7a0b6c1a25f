//! The hot-path instruction budget (issue 24): instructions per pass-through send and per
//! local answer, on both engines, counted with callgrind and held against the committed
//! baseline in `tests/instruction_budget.toml`. Nothing is timed: callgrind counts the
//! instructions the gateway executed, which for one binary and one input barely move, so
//! a change that adds work to every send fails this test until the baseline is raised on
//! purpose (how, and why a figure may move: BENCHMARKS.md, "Instruction budget").
//!
//! How: the built gateway runs under `valgrind --tool=callgrind` (one worker, unpinned)
//! against the fake Cloud API; this test sends requests one after another on one
//! keep-alive connection. After each phase it asks the admin listener for `/metrics`, and
//! callgrind writes a profile part when `Metrics::render` is entered
//! (`--dump-before`), so every part holds one phase. Per request = (part of N₂ requests −
//! part of N₁ requests) / (N₂ − N₁): what a phase costs besides its requests (connection
//! set-up, the `/metrics` call) cancels. Not counted: the runtime's park (its wait for
//! events — `epoll_wait`, the timer wheel's turn and the dispatch of what it found), whose
//! cost follows how many times the worker went to sleep, and that depends on timing. The
//! kernel's work (the syscalls themselves) is never in callgrind's counts: the syscall
//! count per request is measured by `benches/load/profile.sh` instead.
//!
//! The same pass-through send is counted a second time over TLS to an HTTP/2 upstream
//! (ALPN `h2`, the path to Graph): the TLS records, the HTTP/2 framing and HPACK, and on
//! the relay the re-framing of the HTTP/1.1 request as an HTTP/2 one. A local answer never
//! reaches the upstream, so it is counted once.
//!
//! Needs `valgrind` (`scripts/test` installs Debian's package when it is missing; or set
//! `VALGRIND` to a binary). `WAB_BUDGET_WRITE=1` writes the measured figures into the
//! baseline file instead of checking them; `WAB_BUDGET_KEEP=DIR` keeps the profile parts
//! there (`callgrind_annotate --inclusive=yes DIR/relay.3` shows where a send's
//! instructions go).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::fake_cloud::FakeCloud;
use crate::support::gateway::{Gateway, TEMPLATE_BODY, TEST_TOKEN, TEST_VERSION};
use crate::support::h2_upstream::H2Upstream;
use crate::support::raw::fixture;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WABA: &str = "102290129340398";
const PHONE: &str = "106540352242922";
const ADMIN_TOKEN: &str = "budget-admin-token";
/// The function whose entry makes callgrind write a profile part (the `/metrics` handler).
const MARKER: &str = "wa_breaker::metrics::Metrics::render";
/// The runtime's park: the inclusive cost of calls to these is not counted.
const PARK: [&str; 2] = [
    "tokio::runtime::scheduler::current_thread::Context::park",
    "tokio::runtime::scheduler::current_thread::Context::park_yield",
];
const PARK_INTERNAL: &str = "tokio::runtime::scheduler::current_thread::Context::park_internal";
/// Requests in the warm-up phase and the two measured phases of each kind.
const WARM: usize = 100;
const N1: usize = 200;
const N2: usize = 1200;

fn baseline_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/instruction_budget.toml")
}

#[derive(serde::Deserialize)]
struct Baseline {
    tolerance_pct: f64,
    baseline: HashMap<String, u64>,
}

/// What each figure is, in the order of the baseline file.
const FIGURES: [(&str, &str); 6] = [
    ("relay_pass", "relay, pass-through send (200 from upstream)"),
    ("relay_local", "relay, local answer (circuit open, 403)"),
    ("hyper_pass", "hyper engine, pass-through send"),
    ("hyper_local", "hyper engine, local answer"),
    (
        "relay_h2_pass",
        "relay, pass-through send over TLS to an HTTP/2 upstream",
    ),
    (
        "hyper_h2_pass",
        "hyper engine, pass-through send over TLS to an HTTP/2 upstream",
    ),
];

/// The upstream a gateway under callgrind forwards to.
#[derive(Clone, Copy, PartialEq)]
enum Upstream {
    /// The fake Cloud API: plain HTTP/1.1.
    Plain,
    /// TLS with ALPN `h2` (the test CA), like Graph.
    H2,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instructions_per_request_stay_within_the_budget() {
    let valgrind = find_valgrind();
    let (relay, hyper) = tokio::join!(
        measure(&valgrind, true, Upstream::Plain),
        measure(&valgrind, false, Upstream::Plain)
    );
    let (relay_h2, hyper_h2) = tokio::join!(
        measure(&valgrind, true, Upstream::H2),
        measure(&valgrind, false, Upstream::H2)
    );
    let measured: HashMap<&str, u64> = [
        ("relay_pass", relay[0]),
        ("relay_local", relay[1]),
        ("hyper_pass", hyper[0]),
        ("hyper_local", hyper[1]),
        ("relay_h2_pass", relay_h2[0]),
        ("hyper_h2_pass", hyper_h2[0]),
    ]
    .into_iter()
    .collect();
    for (key, what) in FIGURES {
        println!(
            "budget: {key} = {} instructions per request ({what})",
            measured[key]
        );
    }

    let path = baseline_path();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let base: Baseline =
        toml::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
    if std::env::var_os("WAB_BUDGET_WRITE").is_some() {
        write_baseline(&path, &text, &measured);
        println!("budget: wrote the measured figures to {}", path.display());
        return;
    }
    let tol = base.tolerance_pct / 100.0;
    let mut failures = Vec::new();
    for (key, what) in FIGURES {
        let Some(&want) = base.baseline.get(key) else {
            failures.push(format!("{key}: missing from {}", path.display()));
            continue;
        };
        let got = measured[key];
        let change = (got as f64 - want as f64) / want as f64;
        if change > tol {
            failures.push(format!(
                "{what}: {got} instructions per request, {:+.1} % against the baseline {want} \
                 (tolerance ±{} %): work was added to every request",
                change * 100.0,
                base.tolerance_pct
            ));
        } else if change < -tol {
            failures.push(format!(
                "{what}: {got} instructions per request, {:+.1} % against the baseline {want} \
                 (tolerance ±{} %): lower the baseline so the gain is kept",
                change * 100.0,
                base.tolerance_pct
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "instruction budget ({}):\n  {}\nIf the change is intended, record the new figures \
         with `WAB_BUDGET_WRITE=1 cargo test --release --test it instruction_budget` and say why \
         in the commit message (BENCHMARKS.md, \"Instruction budget\").",
        path.display(),
        failures.join("\n  ")
    );
}

/// Rewrites the `[baseline]` values in the file's text, keeping its comments.
fn write_baseline(path: &Path, text: &str, measured: &HashMap<&str, u64>) {
    let mut out = String::new();
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        match measured.get(key) {
            Some(v) if line.contains('=') => out.push_str(&format!("{key} = {v}\n")),
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    std::fs::write(path, out).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn find_valgrind() -> PathBuf {
    if let Some(v) = std::env::var_os("VALGRIND") {
        return PathBuf::from(v);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("valgrind"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "valgrind not found: the instruction budget needs it. `bash scripts/test` installs \
             Debian's package (apt-get install valgrind); or set VALGRIND to a valgrind binary"
        )
    })
}

/// One gateway (relay or hyper engine) under callgrind, forwarding to `upstream`:
/// instructions per pass-through send, then (plain upstream only) per local answer.
async fn measure(valgrind: &Path, relay: bool, upstream: Upstream) -> Vec<u64> {
    let name = match (relay, upstream) {
        (true, Upstream::Plain) => "relay",
        (false, Upstream::Plain) => "hyper",
        (true, Upstream::H2) => "relay_h2",
        (false, Upstream::H2) => "hyper_h2",
    };
    // The upstream (kept alive until the gateway stops) and its config lines.
    let (_fake, h2, upstream_lines) = match upstream {
        Upstream::Plain => {
            let fake = FakeCloud::start().await;
            let lines = format!("upstream = \"{}\"", fake.url());
            (Some(fake), None, lines)
        }
        Upstream::H2 => {
            let h2 = H2Upstream::start(100).await;
            let lines = format!(
                "upstream = \"{}\"\nupstream_ca_file = \"{}\"",
                h2.url(),
                fixture("ca.pem")
            );
            (None, Some(h2), lines)
        }
    };
    let config = format!(
        r#"
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
{upstream_lines}
state_dir = "{{state_dir}}"
admin_token = "{ADMIN_TOKEN}"
log_level = "warn"
fast_path = {relay}
workers = 1
pin_workers = "never"

# The pace is checked on every send; at this throughput no send is over it (pass-through).
[shaping]
mode = "enforce"

[shaping.phone_throughput]
"{PHONE}" = 100000

[[accounts]]
waba_id = "{WABA}"
phone_number_ids = ["{PHONE}"]
"#
    );
    let out = tempfile::Builder::new()
        .prefix("wa-breaker-budget-")
        .tempdir()
        .expect("tempdir");
    let out_file = out.path().join("cg.out");
    let valgrind = valgrind.to_string_lossy().into_owned();
    let out_arg = format!("--callgrind-out-file={}", out_file.display());
    let marker = format!("--dump-before={MARKER}");
    let gw = Gateway::builder(&config)
        .wrapper(&[&valgrind, "--tool=callgrind", "-q", &out_arg, &marker])
        .ready_timeout(Duration::from_secs(120))
        .start()
        .await;

    let phase = |n: usize, want: u16| {
        let gw = &gw;
        async move {
            requests(gw, n, want).await;
            gw.metrics().await;
        }
    };
    phase(WARM, 200).await;
    phase(N1, 200).await;
    phase(N2, 200).await;
    if upstream == Upstream::Plain {
        let r = gw
            .admin_post(
                &format!("/admin/circuits/{WABA}/open"),
                Some(ADMIN_TOKEN),
                Some(&json!({"reason": "budget"})),
            )
            .await;
        assert_eq!(r.status(), 200, "{name}: open the circuit");
        phase(WARM, 403).await;
        phase(N1, 403).await;
        phase(N2, 403).await;
    }
    let st = gw.stop().await;
    assert!(
        st.success(),
        "{name}: the gateway under valgrind exited with {st}"
    );
    if let Some(h) = &h2 {
        assert_eq!(
            h.processed().len(),
            WARM + N1 + N2,
            "{name}: every send reached the HTTP/2 upstream"
        );
    }

    let n_parts = if upstream == Upstream::Plain { 6 } else { 3 };
    let parts: Vec<u64> = (1..=n_parts)
        .map(|i| {
            let p = PathBuf::from(format!("{}.{i}", out_file.display()));
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| {
                panic!(
                    "{name}: callgrind part {} missing ({e}): was {MARKER} renamed or inlined?",
                    p.display()
                )
            });
            let (total, park) = counted(&text);
            assert!(
                park > 0,
                "{name}: no call to {} found in {}: did tokio rename it? Update PARK",
                PARK[0],
                p.display()
            );
            total - park
        })
        .collect();
    // `WAB_BUDGET_KEEP=DIR` keeps the profile parts for `callgrind_annotate` (part 3: the
    // N₂ pass-through sends, part 6: the N₂ local answers).
    if let Some(dir) = std::env::var_os("WAB_BUDGET_KEEP") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("WAB_BUDGET_KEEP directory");
        for i in 1..=n_parts {
            let from = PathBuf::from(format!("{}.{i}", out_file.display()));
            std::fs::copy(&from, dir.join(format!("{name}.{i}"))).expect("keep a part");
        }
    }
    let per = |a: u64, b: u64| b.saturating_sub(a) / (N2 - N1) as u64;
    let mut figures = vec![per(parts[1], parts[2])];
    if upstream == Upstream::Plain {
        figures.push(per(parts[4], parts[5]));
    }
    figures
}

/// `n` sends, one after another on one keep-alive connection; each must answer `want`.
async fn requests(gw: &Gateway, n: usize, want: u16) {
    let req = format!(
        "POST /{TEST_VERSION}/{PHONE}/messages HTTP/1.1\r\nhost: {}\r\ncontent-type: \
         application/json\r\nauthorization: Bearer {TEST_TOKEN}\r\ncontent-length: {}\r\n\r\n{}",
        gw.listen_addr(),
        TEMPLATE_BODY.len(),
        TEMPLATE_BODY
    );
    let mut s = TcpStream::connect(gw.listen_addr()).await.expect("connect");
    s.set_nodelay(true).unwrap();
    let mut buf = Vec::with_capacity(8192);
    for i in 0..n {
        // One write: the request arrives whole, as from a real client.
        s.write_all(req.as_bytes()).await.expect("write request");
        let status = read_answer(&mut s, &mut buf).await;
        assert_eq!(status, want, "request {i} of {n}");
    }
}

/// Reads one answer framed by `content-length`; returns its status.
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    buf.clear();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(n) = r.parse(buf).expect("answer head") {
            let len: usize = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .expect("answer with content-length");
            let status = r.code.unwrap_or(0);
            while buf.len() < n + len {
                assert!(s.read_buf(buf).await.expect("read body") > 0, "EOF in body");
            }
            assert_eq!(buf.len(), n + len, "one answer per request");
            return status;
        }
        assert!(s.read_buf(buf).await.expect("read head") > 0, "EOF in head");
    }
}

/// A callgrind profile part: (total instructions, inclusive instructions of the runtime's
/// park). The park is every call to `PARK`, and to `PARK_INTERNAL` from anything else.
fn counted(text: &str) -> (u64, u64) {
    let mut names: HashMap<String, String> = HashMap::new();
    let (mut caller, mut callee) = (String::new(), String::new());
    let mut call_cost_next = false;
    let (mut total, mut park) = (0u64, 0u64);
    // `fn=(7) name` defines id 7; later `fn=(7)` refers to it (names compressed).
    let mut name_of = |rest: &str| -> String {
        if let Some(r) = rest.strip_prefix('(') {
            if let Some((id, name)) = r.split_once(')') {
                let name = name.trim_start();
                if !name.is_empty() {
                    names.insert(id.to_string(), name.to_string());
                }
                return names.get(id).cloned().unwrap_or_default();
            }
        }
        rest.to_string()
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("fn=") {
            caller = name_of(rest);
        } else if let Some(rest) = line.strip_prefix("cfn=") {
            callee = name_of(rest);
        } else if line.starts_with("calls=") {
            call_cost_next = true;
        } else if let Some(v) = line.strip_prefix("summary:") {
            total = v.trim().parse().expect("summary");
        } else if call_cost_next
            && line.starts_with(|c: char| c.is_ascii_digit() || "+-*".contains(c))
        {
            call_cost_next = false;
            let cost: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let is_park = PARK.contains(&callee.as_str());
            if is_park || (callee == PARK_INTERNAL && !PARK.contains(&caller.as_str())) {
                park += cost;
            }
        }
    }
    (total, park)
}
