//! Hot-path pieces in isolation: route parsing, phone → WABA resolution, the policy core's
//! guard decision with 10 000 configured WABAs and 1 000 open, the local reply written as
//! HTTP/1 bytes, judging a 368 body, and the relay's request and answer head parsing. Also
//! counts heap allocations on the guard path for a closed circuit and in the relay's parsing.
//!
//! `cargo bench --bench hot_path`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::Utc;
use criterion::{criterion_group, Criterion};
use http::Method;
use wa_breaker::circuit::{Action, Change, Scope, Source, Table};
use wa_breaker::config::{Account, Config};
use wa_breaker::graph::{envelope, route};
use wa_breaker::h1::{request, response};
use wa_breaker::policy::{self, Admit, Policy, Route};

/// Counts allocations so the bench can report them.
struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const WABAS: u64 = 10_000;
const OPEN: u64 = 1_000;

fn waba(i: u64) -> String {
    (100_000_000_000_000 + i).to_string()
}
fn phone(i: u64) -> String {
    (200_000_000_000_000 + i).to_string()
}

fn setup() -> (Policy, Arc<Table>) {
    let accounts: Vec<Account> = (0..WABAS)
        .map(|i| Account {
            waba_id: waba(i),
            phone_number_ids: vec![phone(i)],
        })
        .collect();
    let cfg = Config {
        accounts,
        ..Config::default()
    };
    let table = Arc::new(cfg.circuit_table("bench"));
    // Every 10th WABA is open.
    for i in (0..WABAS).step_by((WABAS / OPEN) as usize) {
        table.apply(Change {
            waba_id: waba(i),
            phone_number_id: None,
            template: None,
            country: None,
            recipient: None,
            action: Action::Open {
                scope: Scope::AllSends,
                code: Some(368),
                until: None,
            },
            source: Source::Admin,
            at: Utc::now(),
            reason: "bench".into(),
            evidence: None,
        });
    }
    (Policy::new(cfg.policy_settings(), table.clone()), table)
}

const BLOCKED: &[u8] = br#"{"error":{"message":"(#368) Temporarily blocked for policies violations","type":"OAuthException","code":368,"error_data":{"messaging_product":"whatsapp","details":"The WhatsApp Business Account associated with the app has been restricted or disabled for violating a platform policy."},"error_subcode":2494100,"fbtrace_id":"AbCdEfGhIjK"}}"#;

fn benches(c: &mut Criterion) {
    let (policy, table) = setup();
    assert_eq!(table.open_count() as u64, OPEN);
    let closed_phone = phone(1);
    let open_phone = phone(0);
    let path = format!("/v21.0/{closed_phone}/messages");

    c.bench_function("route_parse", |b| {
        b.iter(|| route::parse(black_box(&Method::POST), black_box(&path)))
    });
    c.bench_function("resolve_phone_10k", |b| {
        b.iter(|| table.resolve(black_box(&closed_phone)).is_some())
    });
    // What both engines run per send: route + resolve, then the guard decision.
    let body = br#"{"messaging_product":"whatsapp","type":"text"}"#;
    let guard_check = |p: &str| {
        let Route::Graph(call) = policy.route(&Method::POST, p) else {
            return false;
        };
        matches!(
            policy.admit(call, policy::Body::Read(body), |_| ()),
            Admit::Local { .. }
        )
    };
    c.bench_function("guard_check_closed_10k_1k_open", |b| {
        b.iter(|| guard_check(black_box(&path)))
    });
    let open_path = format!("/v21.0/{open_phone}/messages");
    c.bench_function("guard_check_open_10k_1k_open", |b| {
        b.iter(|| guard_check(black_box(&open_path)))
    });
    let g = table.guard(&waba(0)).expect("open");
    let mut out = Vec::with_capacity(1024);
    c.bench_function("local_reply_h1", |b| {
        b.iter(|| {
            out.clear();
            wa_breaker::h1::encode::reply(&policy::Reply::open(black_box(&g)), false, &mut out);
        })
    });
    c.bench_function("classify_368_body", |b| {
        b.iter(|| envelope::parse(black_box(BLOCKED)).map(|e| e.code))
    });

    // The relay's per-request parsing: the load benchmark's request and a typical answer.
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:9015\r\nContent-Type: application/json\r\nAuthorization: Bearer EAAGm0PX4ZCpsBAKZCZAexampletokenexampletokenexampletoken\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    let mut up = Vec::with_capacity(1024);
    let mut forward = Vec::with_capacity(16);
    // What every request pays (a local answer stops here) ...
    c.bench_function("relay_parse_head", |b| {
        b.iter(|| request::parse_head(black_box(req.as_bytes()), &mut forward))
    });
    // ... and with the head to forward over HTTP/1.1 written, as the relay does.
    let mut parse_and_write = |req: &[u8], up: &mut Vec<u8>| {
        let parsed = request::parse_head(req, &mut forward);
        if let request::Parsed::Request(head) = &parsed {
            request::write_upstream(req, head, &forward, "127.0.0.1:9001", up);
        }
        parsed
    };
    c.bench_function("relay_parse_request", |b| {
        b.iter(|| parse_and_write(black_box(req.as_bytes()), &mut up))
    });
    let answer = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 16:51:19 GMT\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n{}";
    let mut out = Vec::with_capacity(1024);
    c.bench_function("relay_parse_response", |b| {
        b.iter(|| {
            response::parse_response(black_box(answer), false, false, &mut out)
                .map(|h| h.map(|h| h.status))
        })
    });
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..10_000 {
        black_box(parse_and_write(req.as_bytes(), &mut up));
        black_box(response::parse_response(answer, false, false, &mut out).is_ok());
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    println!("heap allocations parsing a relayed request and answer: {allocs} in 10000");
    assert_eq!(
        allocs, 0,
        "relay parsing must not allocate once its buffers are warm"
    );

    // Allocation count of the guard path (route + resolve + guard) for a closed circuit.
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..10_000 {
        black_box(guard_check(black_box(&path)));
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    println!("heap allocations on the closed-circuit guard path: {allocs} in 10000 checks");
    assert_eq!(allocs, 0, "the closed-circuit guard path must not allocate");
}

criterion_group!(hot_path, benches);

fn main() {
    hot_path();
    Criterion::default().configure_from_args().final_summary();
}
