//! dreadlock: a simple, very fast network lock daemon, and its client.
//!
//! A dreadlock daemon hands out named locks over TCP: a client sends
//! `lock <key> <timeout>` and gets exclusive access, first come first
//! served; when its connection closes, its locks are released at once, so
//! a crashed or killed holder never leaves a lock behind. This crate is the
//! daemon (the `dreadlock` binary), a command-line client
//! (`dreadlock-cli`), a load generator (`dreadlock-bench`), and a client
//! library for Rust programs: [`client`].
//!
//! # Taking a lock from Rust
//!
//! For the library alone, depend on the crate without its default features
//! (which build the daemon): the blocking client then needs nothing but
//! `std`, and builds on any platform.
//!
//! ```toml
//! [dependencies]
//! dreadlock = { version = "0.1", default-features = false }
//! # or, for the async client on tokio:
//! # dreadlock = { version = "0.1", default-features = false, features = ["tokio"] }
//! ```
//!
//! Blocking, with [`client::Client`]:
//!
//! ```no_run
//! use std::time::Duration;
//! use dreadlock::client::Client;
//!
//! let client = Client::connect("127.0.0.1:6001")?;
//! // Wait up to 10 s for the lock; `guard` holds it.
//! let guard = client.lock("nightlybackup", Duration::from_secs(10))?;
//! // ... the critical section: only one process holds `nightlybackup` ...
//! guard.unlock()?; // or just drop it: closing its connection releases it
//! # Ok::<(), dreadlock::client::Error>(())
//! ```
//!
//! Async, with `client::AsyncClient` (the `tokio` feature), here with a
//! fencing token from `acquire` (a daemon that speaks protocol version 2):
//!
//! ```no_run
//! # async fn demo() -> Result<(), dreadlock::client::Error> {
//! use std::time::Duration;
//! use dreadlock::client::AsyncClient;
//!
//! let client = AsyncClient::connect("127.0.0.1:6001").await?;
//! let guard = client.acquire("invoices", Duration::from_secs(5), 1).await?;
//! let token = guard.token().expect("acquire grants carry a token");
//! // ... write to storage with `token`; it rejects smaller tokens ...
//! guard.unlock().await?;
//! # Ok(()) }
//! ```
//!
//! A lock that is busy is not an error of the connection:
//!
//! ```no_run
//! # let client = dreadlock::client::Client::connect("127.0.0.1:6001")?;
//! match client.try_lock("cacherebuild")? {
//!     Some(_guard) => { /* rebuild the cache */ }
//!     None => println!("someone else is rebuilding it"),
//! }
//! # Ok::<(), dreadlock::client::Error>(())
//! ```
//!
//! Several daemons share the keys by rendezvous hashing
//! ([`client::Client::new`] with a list); see [`client`] for that, the
//! guards' connection model, semaphores, errors and options.
//!
//! # Features
//!
//! | feature | default | what |
//! |---|---|---|
//! | `daemon` | yes | the `dreadlock` binary and its engine (Linux) |
//! | `cli` | yes | the `dreadlock-cli` binary (Unix) |
//! | `bench` | yes | the `dreadlock-bench` load generator (Linux) |
//! | `keepalive` | yes (through `cli`) | [`client::Options::keepalive`] (adds `socket2`) |
//! | `tokio` | no | `client::AsyncClient` (adds tokio; implies `keepalive`) |
//! | `model` | no | reference models for the fuzzers and tests; not an API |
//!
//! [`wire`] is the protocol's vocabulary (reply bytes, limits, byte
//! classes) that the client and the daemon share.
//!
//! # Stability
//!
//! [`client`] and [`wire`] are the library's API. The daemon's modules
//! (`core`, `parser`, `lock_table`, `timer`, `reactor`, `stats`, `log`,
//! built with the `daemon` feature) and `model` are public only so that
//! the binaries, benchmarks, tests and fuzz targets can reach them; they
//! are hidden from these docs and may change in any release.
//!
//! # Layout
//!
//! ```text
//! src/parser.rs      resumable byte-at-a-time state machine for the wire grammar
//! src/timer.rs       hierarchical timer wheel (ms ticks, O(1) insert/cancel)
//! src/lock_table.rs  key -> holder + FIFO waiters; pure data structure
//! src/stats.rs       counters and duration histograms (stats, summary, /metrics)
//! src/core.rs        sans-I/O protocol engine: bytes + clock in, replies out
//! src/conn.rs        per-connection I/O policy: budgets, backpressure, closing
//! src/reactor.rs     single-threaded mio loop pumping it: poll, accept, signals
//! src/log.rs         stderr logging: timestamps, journal priorities, never blocks
//! src/metrics.rs     Prometheus text format and the `stats` line from a snapshot
//! src/admin.rs       the admin HTTP endpoint (/metrics, /healthz), sans-I/O + mio
//! src/systemd.rs     readiness notification and socket activation
//! src/allow.rs       --allow CIDR: which peers may connect (pure, unit-tested)
//! src/main.rs        CLI, descriptor limit, signals; runs the reactor
//! src/model.rs       reference models + checks shared by fuzz targets and tests
//! src/reactor_sim.rs seeded simulation of conn.rs over simulated sockets (test, fuzz)
//! src/wire.rs        reply bytes, limits and byte classes shared by client and daemon
//! src/client.rs      client library: guards, pool, rendezvous hashing
//!   client/proto.rs        sans-I/O command lines and reply parsing
//!   client/blocking.rs     Client, Connection, LockGuard on std::net
//!   client/async_client.rs AsyncClient, AsyncLockGuard on tokio
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod wire;

#[cfg(feature = "daemon")]
#[doc(hidden)]
pub mod admin;
#[cfg(feature = "daemon")]
#[doc(hidden)]
pub mod allow;
#[cfg(feature = "daemon")]
#[doc(hidden)]
pub mod conn;
#[cfg(feature = "daemon")]
#[doc(hidden)]
pub mod core;
#[cfg(feature = "daemon")]
#[doc(hidden)]
pub mod lock_table;
#[cfg(feature = "daemon")]
#[doc(hidden)]
pub mod log;
#[cfg(feature = "daemon")]
#[doc(hidden)]
pub mod metrics;
#[cfg(all(feature = "daemon", any(test, feature = "model")))]
#[doc(hidden)]
pub mod model;
#[cfg(feature = "daemon")]
#[doc(hidden)]
pub mod parser;
#[cfg(feature = "daemon")]
#[doc(hidden)]
pub mod reactor;
#[cfg(all(feature = "daemon", any(test, feature = "model")))]
#[doc(hidden)]
pub mod reactor_sim;
#[cfg(feature = "daemon")]
#[doc(hidden)]
pub mod stats;
#[cfg(feature = "daemon")]
#[doc(hidden)]
pub mod systemd;
#[cfg(feature = "daemon")]
#[doc(hidden)]
pub mod timer;
