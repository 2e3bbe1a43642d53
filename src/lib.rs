//! dreadlock: a simple, very fast network lock daemon, and its client.
//!
//! (Crate documentation: see below; written once the client settles.)
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod wire;

#[cfg(feature = "daemon")]
#[doc(hidden)]
pub mod core;
#[cfg(feature = "daemon")]
#[doc(hidden)]
pub mod lock_table;
#[cfg(feature = "daemon")]
#[doc(hidden)]
pub mod log;
#[cfg(all(feature = "daemon", any(test, feature = "model")))]
#[doc(hidden)]
pub mod model;
#[cfg(feature = "daemon")]
#[doc(hidden)]
pub mod parser;
#[cfg(feature = "daemon")]
#[doc(hidden)]
pub mod reactor;
#[cfg(feature = "daemon")]
#[doc(hidden)]
pub mod stats;
#[cfg(feature = "daemon")]
#[doc(hidden)]
pub mod timer;
