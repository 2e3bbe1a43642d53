//! Deterministic simulation of the reactor's per-connection policy
//! (`dreadlock::reactor_sim`, whose module docs list what it checks): a
//! seeded world of clients over simulated sockets with tiny send buffers,
//! short reads, `EINTR`, resets, half-closes, hostile peers and reused slab
//! slots, checked at every step against a replay of the core.
//!
//! On failure the seed is printed. Replay one with
//! `DREADLOCK_REACTOR_SIM_SEED=<seed> cargo test --test reactor_sim`; run
//! more with `DREADLOCK_REACTOR_SIM_SEEDS=<n>` (from the given seed, or the
//! default base).

#[path = "common/seeds.rs"]
mod seeds;

use std::panic::catch_unwind;

use dreadlock::reactor_sim::{SimReport, simulate};

const DEFAULT_BASE_SEED: u64 = 0x005e_ed0f_4ea7;
const DEFAULT_SEEDS: u64 = 300;

fn run(seed: u64) -> SimReport {
    seeds::with_replay("DREADLOCK_REACTOR_SIM", seed, || simulate(seed))
}

#[test]
fn seeded_worlds_keep_every_promise() {
    let (base, n) = seeds::seeds("DREADLOCK_REACTOR_SIM", DEFAULT_BASE_SEED, DEFAULT_SEEDS);
    let mut total = SimReport::default();
    for i in 0..n {
        let r = run(base.wrapping_add(i));
        total.steps += r.steps;
        total.clients += r.clients;
        total.core_calls += r.core_calls;
        total.replies_bytes += r.replies_bytes;
        total.linger_timeouts += r.linger_timeouts;
        total.linger_overflows += r.linger_overflows;
        total.resets += r.resets;
    }
    eprintln!("{n} worlds: {total:?}");
    // The worlds must reach the situations they are there to check.
    if n >= DEFAULT_SEEDS {
        assert!(
            total.linger_timeouts > 0,
            "no hostile peer outlived its linger"
        );
        assert!(
            total.linger_overflows > 0,
            "no peer sent too much while closing"
        );
        assert!(total.resets > 0, "no reset");
    }
}

/// The `reactor` fuzz target's committed seeds, replayed through the same
/// function the fuzzer calls.
#[test]
fn fuzz_seeds_replay() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/reactor");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/reactor") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if catch_unwind(|| dreadlock::reactor_sim::check_reactor(&data)).is_err() {
            panic!("seed {} fails", path.display());
        }
        n += 1;
    }
    assert!(n >= 4, "only {n} seeds in {}", dir.display());
}

/// Writes the named seeds of the `reactor` fuzz target (`cargo test --test
/// reactor_sim -- --ignored write_seeds`). An input is a stream of
/// little-endian u16 choices, each taken modulo the number of options; the
/// first six pick the world's limits: line limit (16, 40, 10000), pending
/// bound (0, 1, 50, 300), locks per connection (1, 2, 1024), output bound
/// (0, 1, 20, 200), read budget (1, 7, 30, 64), linger bytes (40, 300, 2000).
#[test]
#[ignore]
fn write_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/reactor");
    std::fs::create_dir_all(&dir).unwrap();
    let seeds: [(&str, [u16; 6], u64); 5] = [
        ("seed-tiny-budget-zero-output-bound", [2, 2, 2, 0, 0, 1], 1),
        (
            "seed-large-budget-large-output-bound",
            [2, 3, 2, 3, 3, 2],
            2,
        ),
        ("seed-short-lines-tight-linger", [0, 1, 0, 1, 1, 0], 3),
        ("seed-no-pending-buffer", [1, 0, 2, 2, 2, 1], 4),
        ("seed-default-world", [2, 3, 2, 3, 3, 2], 5),
    ];
    for (name, limits, seed) in seeds {
        let mut rng = dreadlock::model::Rng::new(seed);
        let mut data: Vec<u8> = limits.iter().flat_map(|v| v.to_le_bytes()).collect();
        while data.len() < 6000 {
            data.extend_from_slice(&(rng.next_u64() as u16).to_le_bytes());
        }
        std::fs::write(dir.join(name), &data).unwrap();
    }
}
