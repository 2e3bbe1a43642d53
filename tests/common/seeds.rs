//! Seeded runs for the simulation tests: which seeds to run, from the
//! environment, and the seed (with the command that replays it) printed
//! when one fails. A test declares it with
//! `#[path = "common/seeds.rs"] mod seeds;`.
//!
//! For a variable prefix `P`: `P_SEED=<seed>` runs that one seed,
//! `P_SEEDS=<n>` runs `n` seeds from `P_SEED` (or the test's default
//! base). Both take decimal or `0x` hexadecimal.
#![allow(dead_code)]

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

/// The value of `name` as a number, if set.
///
/// # Panics
///
/// When it is set to something else than a number.
pub fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// The first seed and how many to run: `{prefix}_SEED` (one seed, unless
/// `{prefix}_SEEDS` says how many) or `default_count` seeds from
/// `default_base`.
pub fn seeds(prefix: &str, default_base: u64, default_count: u64) -> (u64, u64) {
    let one = env_u64(&format!("{prefix}_SEED"));
    let count = env_u64(&format!("{prefix}_SEEDS")).unwrap_or(if one.is_some() {
        1
    } else {
        default_count
    });
    (one.unwrap_or(default_base), count)
}

/// Runs `f`, the run of `seed`; if it panics, prints the seed and the
/// command that replays it (`{prefix}_SEED=<seed> cargo test --test
/// <this test>`), then panics on.
pub fn with_replay<T>(prefix: &str, seed: u64, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "\n{} FAILED with seed {seed:#x}; replay with\n  \
                 {prefix}_SEED={seed:#x} cargo test --test {}\n",
                env!("CARGO_CRATE_NAME"),
                env!("CARGO_CRATE_NAME"),
            );
            resume_unwind(e)
        }
    }
}
