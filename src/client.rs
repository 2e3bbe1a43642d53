//! Client library: take dreadlock locks from Rust code.
//!
//! Two clients with the same shape, and the pieces underneath:
//!
//! - [`Client`]: blocking, on `std` alone (the crate with
//!   `default-features = false`). One or more servers; each
//!   [`LockGuard`] holds its lock on a connection of its own, taken from a
//!   small pool.
//! - `AsyncClient` (the `tokio` feature): the same on tokio, with
//!   `AsyncLockGuard`.
//! - [`Connection`]: one blocking TCP connection and the protocol's
//!   commands, no guards; for callers that manage lock lifetimes
//!   themselves (the `dreadlock-cli` binary is one).
//! - [`validate_key`], [`pick_server`] and [`rendezvous_weight`]: the pure
//!   functions underneath, so that other tools can agree with this one.
//!
//! ```no_run
//! use std::time::Duration;
//! use dreadlock::client::Client;
//!
//! let client = Client::connect("127.0.0.1:6001")?;
//! match client.lock("nightlybackup", Duration::from_secs(10)) {
//!     Ok(guard) => {
//!         // ... the critical section ...
//!         guard.unlock()?; // or drop it: also if this code panics
//!     }
//!     Err(e) if e.is_timeout() => eprintln!("another backup is still running"),
//!     Err(e) => return Err(e.into()),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Identity: one connection, one owner
//!
//! The daemon gives a lock to the *connection* that took it, and releases
//! every lock of a connection when that connection closes. So each guard
//! owns the connection its lock was taken on:
//!
//! - `guard.unlock()` sends `unlock`, reports the answer, and gives the
//!   connection back to the client's pool of idle connections (at most
//!   [`Options::max_idle_per_server`] per server) for the next lock;
//! - dropping a guard without `unlock` (also while a panic unwinds, or
//!   when an async task is cancelled) closes its connection, and the daemon
//!   releases the lock at once. Drop never blocks, never spawns, never
//!   fails; it only costs the next lock a new connection.
//!
//! Because no two locks share a connection, threads (or tasks) of one
//! client never wait for each other on the client side (commands on one
//! connection run strictly in order on the daemon), and when a reply is
//! late ([`Options::io_timeout`] past the lock's own timeout) the client
//! closes only that request's connection, never one that holds another
//! guard's lock.
//!
//! If a guard's connection breaks (the daemon restarts, the network fails),
//! the daemon has released the lock; [`LockGuard::unlock`] then reports the
//! loss as [`ErrorKind::Io`].
//!
//! # Protocol versions: `lock` and `acquire`
//!
//! [`Client::lock`] and [`Client::try_lock`] send the original `lock`
//! command, which every daemon speaks (this one and the C original), and
//! whose reply `l locked` carries no fencing token: their guards'
//! [`token`](LockGuard::token) is `None`. [`Client::acquire`]`(key,
//! timeout, 1)` takes the same exclusive lock (the two interoperate) with
//! the version 2 `acquire` command, whose reply carries the token; `limit`
//! above 1 makes `key` a semaphore. `acquire`, `info`, `stats`, `evict`,
//! [`Options::name`] and [`Options::auth`] need a daemon that speaks
//! protocol version 2; an older one closes the connection on them, which
//! the client reports as [`ErrorKind::Io`].
//!
//! Every `e ...` reply of the daemon is an [`ErrorKind::Rejected`] with
//! its [`ErrorReply`]; every error names the server it concerns.
//!
//! # Several servers
//!
//! A client built from several `host:port` strings sends each key to one of
//! them, chosen by *rendezvous hashing* (highest random weight): every
//! server gets a weight for the key and the heaviest wins. Removing a server
//! moves only the keys it owned; adding one moves only the keys it wins.
//! Every client of a key must list the same servers, spelled the same way
//! (`localhost:6001` and `127.0.0.1:6001` are different strings), in any
//! order.
//!
//! The weight, to reproduce in any language:
//!
//! ```text
//! weight(server, key) = fmix64(fnv1a64(server ++ "\n" ++ key))   // bytes, UTF-8
//!
//! fnv1a64(bytes): h = 0xcbf29ce484222325
//!                 for each byte b: h = (h XOR b) * 0x100000001b3   (mod 2^64)
//! fmix64(h):      h ^= h >> 33; h *= 0xff51afd7ed558ccd;           (mod 2^64)
//!                 h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53;
//!                 h ^= h >> 33
//!
//! server(key) = the server with the largest weight; on equal weights the
//!               server string that sorts first (bytewise) wins.
//! ```
//!
//! FNV-1a alone spreads keys unevenly here (all servers hash the same key
//! suffix; with three servers one got 43% of the keys `key0`..`key29999`),
//! so the 64-bit finalizer of MurmurHash3 mixes its result. Test vector
//! (checked by `cargo test`), weights for three servers:
//!
//! | key | `10.0.0.1:6001` | `10.0.0.2:6001` | `10.0.0.3:6001` | server |
//! |---|---|---|---|---|
//! | `backup` | `0xecc03247f29dc4b7` | `0xb4b8b6cc8477ed30` | `0x5ffcc5a2a99d1253` | `10.0.0.1:6001` |
//! | `cron`   | `0x3fb257b5e12588c9` | `0xe07e1a772cd89de9` | `0x41b2ff4a1a1b9cac` | `10.0.0.2:6001` |
//! | `deploy` | `0x49c704d629b4257a` | `0x88fc12afc0115291` | `0xba5221fcf366ab0f` | `10.0.0.3:6001` |
//!
//! (Before `fmix64`: `fnv1a64("10.0.0.1:6001\nbackup") = 0x3bcac31b3db65328`.)
//!
//! ```
//! use dreadlock::client::{pick_server, rendezvous_weight};
//!
//! let servers = ["10.0.0.1:6001", "10.0.0.2:6001", "10.0.0.3:6001"];
//! assert_eq!(rendezvous_weight("10.0.0.1:6001", "backup"), 0xecc03247f29dc4b7);
//! assert_eq!(pick_server(&servers, "backup"), Some(0));
//! assert_eq!(pick_server(&servers, "cron"), Some(1));
//! assert_eq!(pick_server(&servers, "deploy"), Some(2));
//! ```

#[cfg(feature = "tokio")]
mod async_client;
mod blocking;
mod error;
mod hash;
mod options;
mod pool;
mod proto;

#[cfg(feature = "tokio")]
pub use self::async_client::{AsyncClient, AsyncLockGuard};
pub use self::blocking::{Client, Connection, LockGuard};
pub use self::error::{ArgumentError, Error, ErrorKind, KeyError};
pub use self::hash::{pick_server, rendezvous_weight};
pub use self::options::Options;
pub use self::proto::{Info, MAX_KEY_BYTES, Stats, WAIT_FOREVER, validate_key};
pub use crate::wire::ErrorReply;

/// The server used when none is given: the daemon's default port, locally.
pub const DEFAULT_SERVER: &str = "127.0.0.1:6001";

/// The key [`Connection::ping`] unlocks. Unlocking a key one does not hold
/// changes nothing on the daemon, so this is a harmless round trip; do not
/// lock this key on a connection you ping.
pub const PING_KEY: &str = "dreadlockping";
