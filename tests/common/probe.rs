//! Looking at the daemon's lock table from outside, over a connection of
//! the test's own. A test declares it next to `mod common;` with
//! `#[path = "common/probe.rs"] mod probe;`.
#![allow(dead_code)]

use crate::common::Daemon;

/// Whether another connection could take `key` at once on `d` (and gives
/// it back: the probe's connection closes).
pub fn is_free(d: &Daemon, key: &str) -> bool {
    let mut probe = d.connect();
    probe.send(format!("lock {key} 0\r\n"));
    match probe.read_line().as_str() {
        "l locked\r\n" => true,
        "t timeout\r\n" => false,
        other => panic!("unexpected reply {other:?}"),
    }
}
