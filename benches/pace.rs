//! The pace step's check (`policy::pace::Pacer::check`, issue 21) in isolation: its cost
//! per send with 10 000 phone numbers tracked and none at its limit, against the same loop
//! without the check (only the clock read every send also pays) and against one number
//! tracked; and its cost when all 10 000 are at their limit (`Wait` and `Over` decisions).
//!
//! `cargo bench --bench pace` (short run: `-- --measurement-time 2 --warm-up-time 1`)

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use wa_breaker::policy::pace::{Decision, Pacer, Settings, ShapingMode};
use wa_breaker::policy::GraphId;

const NUMBERS: u64 = 10_000;

/// Phone-number ids as the hot-path bench spells them (their last two digits spread them
/// over the pacer's shards evenly).
fn phones(n: u64) -> Vec<GraphId> {
    (0..n)
        .filter_map(|i| GraphId::new(&(200_000_000_000_000 + i).to_string()))
        .collect()
}

/// A pacer in enforce mode at `throughput` messages/s per number with `max_delay`.
fn pacer(throughput: u32, max_delay: Duration) -> Pacer {
    Pacer::new(Settings {
        mode: ShapingMode::Enforce,
        throughput,
        max_delay,
        ..Settings::default()
    })
}

/// Checks every number once; returns (go, wait, over).
fn sweep(p: &Pacer, ids: &[GraphId]) -> (usize, usize, usize) {
    let mut n = (0, 0, 0);
    for id in ids {
        match p.check(*id, Instant::now()).decision {
            Decision::Go => n.0 += 1,
            Decision::Wait(_) => n.1 += 1,
            Decision::Over { .. } => n.2 += 1,
        }
    }
    n
}

/// Round-robin over `ids`, one check per iteration at the clock's now.
fn round_robin(c: &mut Criterion, name: &str, p: &Pacer, ids: &[GraphId]) {
    let mut i = 0;
    c.bench_function(name, |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            p.check(black_box(ids[i]), Instant::now()).decision
        })
    });
}

fn benches(c: &mut Criterion) {
    let ids = phones(NUMBERS);

    // The loop without the pace check: pick the number, read the clock (the engines read
    // it per send anyway). What the check costs is the difference to the next ones.
    let mut i = 0;
    c.bench_function("pace_baseline_no_check_10k", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            (black_box(ids[i]), Instant::now())
        })
    });

    // None at its limit: a throughput no loop reaches (the decision is `Go`, the arithmetic
    // the same as at any throughput).
    let one = pacer(u32::MAX, Duration::from_secs(1));
    round_robin(c, "pace_check_go_1", &one, &ids[..1]);
    assert_eq!(
        sweep(&one, &ids[..1]),
        (1, 0, 0),
        "the one number went over"
    );

    let go = pacer(u32::MAX, Duration::from_secs(1));
    assert_eq!(sweep(&go, &ids), (ids.len(), 0, 0));
    assert_eq!(go.tracked(), ids.len());
    round_robin(c, "pace_check_go_10k", &go, &ids);
    assert_eq!(sweep(&go, &ids), (ids.len(), 0, 0), "a number went over");
    assert_eq!(go.tracked(), ids.len());

    // All at their limit, every send waits: 1 message/s and a wait longer than any run
    // (each check reserves the next slot, a second later).
    let wait = pacer(1, Duration::from_secs(1_000_000_000));
    sweep(&wait, &ids);
    assert_eq!(sweep(&wait, &ids), (0, ids.len(), 0));
    round_robin(c, "pace_check_wait_10k", &wait, &ids);
    assert_eq!(sweep(&wait, &ids), (0, ids.len(), 0));

    // All past their limit, sends are answered locally: 1 message/s, `max_delay` 60 s, 62
    // sends each already reserved (nothing more is reserved once over). As the clock moves
    // on, a number's wait falls back under 60 s once a second and its next send reserves
    // again (a `Wait`): about one check in a thousand at this bench's pace.
    let over = pacer(1, Duration::from_secs(60));
    for _ in 0..62 {
        sweep(&over, &ids);
    }
    let mostly_over =
        |(go, _, over): (usize, usize, usize)| go == 0 && over * 100 >= ids.len() * 99;
    assert!(mostly_over(sweep(&over, &ids)));
    round_robin(c, "pace_check_over_10k", &over, &ids);
    assert!(mostly_over(sweep(&over, &ids)));
}

criterion_group!(pace, benches);

fn main() {
    pace();
    Criterion::default().configure_from_args().final_summary();
}
