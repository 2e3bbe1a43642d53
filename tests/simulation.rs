//! Deterministic simulation: a seeded RNG drives hundreds of virtual
//! clients against the sans-I/O `Core`, with a virtual clock that only moves
//! by drawn steps (never sleeps), checked step by step against the reference
//! model in `dreadlock::model::CoreHarness` (exact replies per connection,
//! FIFO grants, timeouts never early and never lost, everything released on
//! disconnect, `Core::check_invariants` after every step). The swarm of
//! worlds varies the limits, runs a third of them with auth on (clients
//! authenticate first, mostly), and mixes in the version 2 commands:
//! `acquire` with semaphores, `info`, `stats`, `name`, `auth` and `evict`.
//!
//! On failure the seed is printed. Replay one with
//! `DREADLOCK_SIM_SEED=<seed> cargo test --test simulation`; run more with
//! `DREADLOCK_SIM_SEEDS=<n>` (from `DREADLOCK_SIM_SEED`, or the default
//! base). Add `DREADLOCK_MODEL_TRACE=1` to print every step.

#[path = "common/seeds.rs"]
mod seeds;

use dreadlock::core::{Config, INFINITE_TIMEOUT_MS, Secret};
use dreadlock::model::{CoreHarness, HarnessStats, MODEL_SECRET, Rng};

const DEFAULT_BASE_SEED: u64 = 0x0d00_d1e5_5eed;
const DEFAULT_SEEDS: u64 = 24;
const STEPS: u64 = 3_000;

/// One simulated world.
struct World {
    rng: Rng,
    h: CoreHarness,
    clients: usize,
    keys: Vec<String>,
    /// The N of each key's semaphore when taken with `acquire` (1 for
    /// most: those interoperate with `lock`).
    limits: Vec<u32>,
    /// Percent of commands that are version 2 ones.
    v2_percent: u64,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut config = Config {
            max_line_bytes: [16, 32, 64, 10_000][rng.below(4) as usize],
            max_pending_bytes: [0, 1, 64, 1024, 64 * 1024][rng.below(5) as usize],
            ..Config::default()
        };
        // Sometimes tight lock-table limits, so their errors show up too.
        if rng.chance(1, 4) {
            config.max_locks_per_connection = 1 + rng.below(3) as usize;
        }
        if rng.chance(1, 4) {
            config.max_key_bytes = (1 + rng.below(20) as usize) * 70;
        }
        if rng.chance(1, 3) {
            config.auth = Secret::new(MODEL_SECRET.as_bytes());
            config.auth_delay_ms = [50, 100, 1000][rng.below(3) as usize];
        }
        if rng.chance(1, 2) {
            config.token_seed = 1_764_000_000_000_000_000 + rng.below(1 << 40);
        }
        let v2_percent = [0, 10, 30][rng.below(3) as usize];
        let clients = 100 + rng.below(301) as usize;
        // A third of the worlds fight over a handful of keys.
        let nkeys = if rng.chance(1, 3) {
            1 + rng.below(8) as usize
        } else {
            clients / 4 + rng.below(clients as u64) as usize
        };
        let keys: Vec<String> = (0..nkeys)
            .map(|i| match i % 4 {
                0 => format!("k{i}"),
                1 => format!("K{i}"),
                2 => format!("res{i}x"),
                _ => format!("{i}"),
            })
            .collect();
        let limits = (0..keys.len())
            .map(|_| match rng.below(4) {
                0 => 2 + rng.below(3) as u32,
                _ => 1,
            })
            .collect();
        let start_us = [0, 999, 1 << 40][rng.below(3) as usize];
        World {
            h: CoreHarness::new(config, start_us),
            rng,
            clients,
            keys,
            limits,
            v2_percent,
        }
    }

    fn key(&mut self) -> String {
        self.keys[self.rng.below(self.keys.len() as u64) as usize].clone()
    }

    fn timeout(&mut self) -> String {
        match self.rng.below(20) {
            0..=1 => "0".into(),
            2..=10 => (1 + self.rng.below(30)).to_string(),
            11..=15 => (30 + self.rng.below(2000)).to_string(),
            16..=17 => (1000 + self.rng.below(1_000_000)).to_string(),
            18 => INFINITE_TIMEOUT_MS.to_string(),
            _ => "99999999999999999999999".into(),
        }
    }

    /// A plausible command for `c`: with auth on and `c` not yet
    /// authenticated, mostly `auth` first; then a version 2 command now and
    /// then; else unlocking what it holds, or locking something.
    fn command(&mut self, c: usize) -> String {
        let auth = if self.h.needs_auth(c) || (self.h.auth_on() && !self.h.is_open(c)) {
            match self.rng.below(20) {
                0 => "auth wrong\r\n".to_string(),
                1 => String::new(),
                _ => format!("auth {MODEL_SECRET}\r\n"),
            }
        } else {
            String::new()
        };
        let cmd = if self.rng.below(100) < self.v2_percent {
            self.v2_command(c)
        } else {
            self.v1_command(c)
        };
        auth + &cmd
    }

    fn v2_command(&mut self, c: usize) -> String {
        let i = self.rng.index(self.keys.len());
        let k = self.keys[i].clone();
        match self.rng.below(20) {
            0..=8 => {
                let t = self.timeout();
                // Mostly the key's N; sometimes another (limit mismatch),
                // or out of range (bad limit).
                let n = match self.rng.below(12) {
                    0 => 1 + self.rng.below(4) as u32,
                    1 => [0, 65536][self.rng.index(2)],
                    _ => self.limits[i],
                };
                if n == 1 && self.rng.chance(1, 2) {
                    format!("acquire {k} {t}\r\n")
                } else {
                    format!("acquire {k} {t} {n}\r\n")
                }
            }
            9..=11 => format!("info {k}\r\n"),
            12 => "stats\r\n".to_string(),
            13..=15 => {
                let label = match self.rng.below(6) {
                    0 => "x".repeat(65),
                    1 => "x".repeat(64),
                    _ => format!("worker-{c}/job.{}", self.rng.below(100)),
                };
                format!("name {label}\r\n")
            }
            16 => format!("auth {MODEL_SECRET}\r\n"),
            17 if self.rng.chance(1, 4) => "auth wrong\r\n".to_string(),
            _ => format!("evict {k}\r\n"),
        }
    }

    fn v1_command(&mut self, c: usize) -> String {
        let held = self.h.keys_held_by(c);
        let word_case = self.rng.below(8);
        let (lock, unlock) = match word_case {
            0 => ("LOCK", "UNLOCK"),
            1 => ("Lock", "Unlock"),
            _ => ("lock", "unlock"),
        };
        let sp = if self.rng.chance(1, 10) { "  " } else { " " };
        if !held.is_empty() && self.rng.chance(1, 2) {
            let k = &held[self.rng.below(held.len() as u64) as usize];
            format!("{unlock}{sp}{}\r\n", String::from_utf8_lossy(k))
        } else if self.rng.chance(1, 10) {
            let k = self.key();
            format!("{unlock} {k}{sp}\r\n")
        } else {
            let k = self.key();
            let t = self.timeout();
            format!("{lock} {k}{sp}{t}\r\n")
        }
    }

    /// A waiting client pipelines more commands behind its wait.
    fn waiter_sends(&mut self) {
        let waiting = self.h.waiting();
        if waiting.is_empty() {
            return;
        }
        let c = waiting[self.rng.below(waiting.len() as u64) as usize];
        let cmd = self.command(c);
        let at = if self.rng.chance(1, 3) {
            self.rng.below(cmd.len() as u64) as usize
        } else {
            cmd.len()
        };
        self.h.send_split(c, cmd.as_bytes(), at);
    }

    fn client(&mut self) -> usize {
        self.rng.below(self.clients as u64) as usize
    }

    fn step(&mut self) {
        let roll = self.rng.below(1000);
        match roll {
            // One command.
            0..=449 => {
                let c = self.client();
                let cmd = self.command(c);
                self.h.send(c, cmd.as_bytes());
            }
            // A pipelined burst.
            450..=519 => {
                let c = self.client();
                let n = 2 + self.rng.below(6);
                let burst: String = (0..n).map(|_| self.command(c)).collect();
                self.h.send(c, burst.as_bytes());
            }
            // A command split in two writes (the rest goes with the next).
            520..=579 => {
                let c = self.client();
                let cmd = self.command(c);
                let at = self.rng.below(cmd.len() as u64 + 1) as usize;
                self.h.send_split(c, cmd.as_bytes(), at);
            }
            // Garbage: a syntax error somewhere.
            580..=589 => {
                let c = self.client();
                let mut cmd = self.command(c).into_bytes();
                let at = self.rng.below(cmd.len() as u64) as usize;
                cmd[at] = b"\t\n-\0 x"[self.rng.below(6) as usize];
                self.h.send(c, &cmd);
            }
            // A client leaves (it comes back on its next send).
            590..=649 => {
                let c = self.client();
                self.h.close(c);
            }
            // The clock: sub-millisecond, milliseconds, to a deadline.
            650..=749 => self.h.advance(1 + self.rng.below(999)),
            750..=839 => self.h.advance(1000 * (1 + self.rng.below(20))),
            840..=879 => match self.h.next_deadline_us() {
                Some(d) => {
                    let target = d - u64::from(self.rng.chance(1, 2));
                    self.h.advance(target.saturating_sub(self.h.now_us()))
                }
                None => self.h.tick(),
            },
            // Time passes (maybe past a deadline), but input reaches the
            // core before the tick: often from a waiter, whose buffered
            // commands must still run first.
            880..=929 => {
                match self.h.next_deadline_us() {
                    Some(d) if self.rng.chance(1, 2) => {
                        let to = d + self.rng.below(3) * 500;
                        self.h.advance_silently(to.saturating_sub(self.h.now_us()));
                    }
                    _ => self.h.advance_silently(self.rng.below(5000)),
                }
                if self.rng.chance(2, 3) {
                    self.waiter_sends();
                }
            }
            930..=949 => self.h.sleep_until_poll_timeout(),
            950..=969 => self.waiter_sends(),
            970..=989 => self.h.tick(),
            // Rarely: a long idle gap.
            _ => self.h.advance(1_000_000 * (1 + self.rng.below(3600))),
        }
    }
}

fn add(total: &mut HarnessStats, s: HarnessStats) {
    total.steps += s.steps;
    total.commands += s.commands;
    total.granted += s.granted;
    total.granted_after_wait += s.granted_after_wait;
    total.timeouts += s.timeouts;
    total.unlocked += s.unlocked;
    total.try_lock_timeouts += s.try_lock_timeouts;
    total.errors_replied += s.errors_replied;
    total.syntax_errors += s.syntax_errors;
    total.disconnects += s.disconnects;
    total.deliveries_deferred += s.deliveries_deferred;
    total.semaphore_grants += s.semaphore_grants;
    total.limit_errors += s.limit_errors;
    total.infos += s.infos;
    total.stats_replies += s.stats_replies;
    total.names += s.names;
    total.auth_ok += s.auth_ok;
    total.auth_failures += s.auth_failures;
    total.evictions += s.evictions;
}

/// Runs one seed; returns what it exercised.
fn run_seed(seed: u64) -> HarnessStats {
    let mut w = World::new(seed);
    for _ in 0..STEPS {
        w.step();
    }
    // Everybody leaves; nothing may remain.
    for c in 0..w.clients {
        w.h.close(c);
    }
    let core = w.h.core();
    assert_eq!(
        (core.connections(), core.keys_held(), core.waiters()),
        (0, 0, 0)
    );
    assert_eq!(core.poll_timeout(), None);
    w.h.stats
}

#[test]
fn simulation() {
    let (base, count) = seeds::seeds("DREADLOCK_SIM", DEFAULT_BASE_SEED, DEFAULT_SEEDS);
    let mut total = HarnessStats::default();
    let started = std::time::Instant::now();
    for i in 0..count {
        let seed = base.wrapping_add(i);
        let stats = seeds::with_replay("DREADLOCK_SIM", seed, || run_seed(seed));
        add(&mut total, stats);
    }
    eprintln!(
        "simulation: {count} seeds from {base:#x} in {:.1?}: {total:?}",
        started.elapsed()
    );
    // The run exercised every path it exists for.
    if count >= 4 {
        assert!(total.granted_after_wait > 100, "{total:?}");
        assert!(total.timeouts > 100, "{total:?}");
        assert!(total.try_lock_timeouts > 10, "{total:?}");
        assert!(total.syntax_errors > 10, "{total:?}");
        assert!(total.disconnects > 100, "{total:?}");
        assert!(total.errors_replied > 100, "{total:?}");
        assert!(total.deliveries_deferred > 0, "{total:?}");
        assert!(total.semaphore_grants > 100, "{total:?}");
        assert!(total.limit_errors > 10, "{total:?}");
        assert!(total.infos > 100 && total.stats_replies > 10, "{total:?}");
        assert!(total.names > 10 && total.evictions > 10, "{total:?}");
        assert!(total.auth_ok > 100 && total.auth_failures > 10, "{total:?}");
    }
}

/// The seed printed on failure really replays the same run.
#[test]
fn a_seed_replays_identically() {
    let a = run_seed(42);
    let b = run_seed(42);
    assert_eq!(a, b);
    assert_ne!(a, run_seed(43));
}
