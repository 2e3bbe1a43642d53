//! dreadlock: a simple, very fast network lock daemon.
//!
//! # Layout
//!
//! ```text
//! src/parser.rs      resumable byte-at-a-time state machine for the wire grammar
//! src/timer.rs       hierarchical timer wheel (ms ticks, O(1) insert/cancel)
//! src/lock_table.rs  key -> holder + FIFO waiters; pure data structure
//! src/stats.rs     counters and duration histograms (stats, summary, /metrics)
//! src/core.rs        sans-I/O protocol engine: bytes + clock in, replies out
//! src/conn.rs        per-connection I/O policy: budgets, backpressure, closing
//! src/reactor.rs     single-threaded mio loop pumping it: poll, accept, signals
//! src/log.rs         stderr logging with a rate limit on client-caused warnings
//! src/main.rs        CLI, descriptor limit, signals; runs the reactor
//! src/model.rs       reference models + checks shared by fuzz targets and tests
//! src/reactor_sim.rs seeded simulation of conn.rs over simulated sockets (test, fuzz)
//! src/wire.rs      reply bytes, limits and byte classes shared by client and daemon
//! src/client.rs      blocking client library: lock guards, rendezvous hashing
//! ```
pub mod client;
pub mod conn;
pub mod core;
pub mod lock_table;
pub mod log;
pub mod model;
pub mod parser;
pub mod reactor;
pub mod reactor_sim;
pub mod stats;
pub mod timer;
pub mod wire;
