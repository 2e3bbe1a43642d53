//! The sans-I/O core end to end: ns per lock/unlock pair through
//! `Core::handle_bytes`, draining outputs as the reactor does
//! (`cargo bench --bench core`).

mod common;

use std::hint::black_box;

use dreadlock::core::{Config, Core};
use dreadlock::lock_table::ConnId;

fn main() {
    // One pair per call (a client without pipelining), 50 connections.
    let mut core = Core::new(Config::default(), 0);
    let conns = 50;
    let lines: Vec<Vec<u8>> = (0..conns)
        .map(|i| format!("lock key{i} 0\r\nunlock key{i}\r\n").into_bytes())
        .collect();
    for i in 0..conns {
        core.handle_open(ConnId(i), None);
    }
    let mut now_us = 0u64;
    common::bench(
        "core: lock+unlock pair, 50 conns (per pair)",
        conns as u64,
        None,
        || {
            now_us += 1;
            for (i, l) in lines.iter().enumerate() {
                core.handle_bytes(ConnId(i), black_box(l), now_us);
                while let Some(o) = core.poll_output() {
                    black_box(o);
                }
            }
        },
    );

    // 32 pairs per read (pipelined client).
    let mut piped = Vec::new();
    for _ in 0..32 {
        piped.extend_from_slice(b"lock key7 0\r\nunlock key7\r\n");
    }
    common::bench(
        "core: 32 pipelined pairs per read (per pair)",
        32,
        None,
        || {
            now_us += 1;
            core.handle_bytes(ConnId(7), black_box(&piped), now_us);
            while let Some(o) = core.poll_output() {
                black_box(o);
            }
        },
    );

    // The same with `acquire` (reply `a <token>`): the version 2 grant.
    let acq: Vec<Vec<u8>> = (0..conns)
        .map(|i| format!("acquire key{i} 0\r\nunlock key{i}\r\n").into_bytes())
        .collect();
    common::bench(
        "core: acquire+unlock pair, 50 conns (per pair)",
        conns as u64,
        None,
        || {
            now_us += 1;
            for (i, l) in acq.iter().enumerate() {
                core.handle_bytes(ConnId(i), black_box(l), now_us);
                while let Some(o) = core.poll_output() {
                    black_box(o);
                }
            }
        },
    );

    // A contended handoff: conn 0 holds, conn 1 waits with a timeout (a
    // timer is armed and cancelled), 0 unlocks -> 1 granted, 1 unlocks.
    common::bench(
        "core: contended handoff with timer (per handoff)",
        1,
        None,
        || {
            now_us += 1;
            core.handle_bytes(ConnId(0), b"lock hot 0\r\n", now_us);
            core.handle_bytes(ConnId(1), b"lock hot 250\r\n", now_us);
            core.handle_bytes(ConnId(0), b"unlock hot\r\n", now_us);
            core.handle_bytes(ConnId(1), b"unlock hot\r\n", now_us);
            while let Some(o) = core.poll_output() {
                black_box(o);
            }
        },
    );
}
