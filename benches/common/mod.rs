//! A minimal timing loop for the micro-benchmarks (`harness = false`, no
//! dependencies): run the closure in growing batches until a batch takes
//! long enough, then report the best of several batches, which on a noisy
//! machine is the steadiest figure.

use std::time::{Duration, Instant};

/// Filter from the command line (`cargo bench --bench parser -- whole`).
pub fn selected(name: &str) -> bool {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    args.is_empty() || args.iter().any(|a| name.contains(a.as_str()))
}

/// Times `f`, which performs `units` units of work per call; prints the
/// best time per unit (and throughput when `bytes_per_unit` is set).
pub fn bench(name: &str, units: u64, bytes_per_unit: Option<u64>, mut f: impl FnMut()) {
    if !selected(name) {
        return;
    }
    // A fixed call count, one batch (`DREADLOCK_BENCH_CALLS=N`): for
    // instruction counts under `valgrind --tool=callgrind`, which are
    // steadier than time on a loaded machine. Run it at two counts and take
    // the difference to cancel the setup cost.
    if let Some(calls) = std::env::var("DREADLOCK_BENCH_CALLS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        for _ in 0..calls {
            f();
        }
        println!("{name:<44} {calls} calls");
        return;
    }
    // Calibrate: how many calls make a batch of about 50 ms.
    let mut calls = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..calls {
            f();
        }
        if t.elapsed() >= Duration::from_millis(50) || calls >= 1 << 30 {
            break;
        }
        calls *= 2;
    }
    let mut best = f64::INFINITY;
    for _ in 0..10 {
        let t = Instant::now();
        for _ in 0..calls {
            f();
        }
        let ns = t.elapsed().as_nanos() as f64 / (calls * units) as f64;
        best = best.min(ns);
    }
    match bytes_per_unit {
        Some(b) => println!(
            "{name:<44} {best:>9.2} ns/unit  {:>8.1} MB/s",
            b as f64 / best * 1e3
        ),
        None => println!("{name:<44} {best:>9.2} ns/unit"),
    }
}
