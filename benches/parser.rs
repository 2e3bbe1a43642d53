//! Parser throughput over a pipelined buffer of lock/unlock lines, fed whole
//! and byte by byte (`cargo bench --bench parser`).

mod common;

use std::hint::black_box;

use dreadlock::parser::{Parser, Step};

/// Parses all of `input`, `chunk` bytes at a time; returns commands seen.
fn parse(parser: &mut Parser, input: &[u8], chunk: usize) -> usize {
    let mut cmds = 0;
    for piece in input.chunks(chunk) {
        let mut rest = piece;
        while !rest.is_empty() {
            let (used, step) = parser.advance(rest);
            rest = &rest[used..];
            match step {
                Step::Done(cmd) => {
                    black_box((cmd, parser.key()));
                    cmds += 1;
                }
                Step::Pending => {}
                Step::Error(e) => panic!("{e}"),
            }
        }
    }
    cmds
}

fn main() {
    let mut buf = Vec::new();
    for i in 0..1000 {
        buf.extend_from_slice(format!("lock key{i} 0\r\nunlock key{i}\r\n").as_bytes());
    }
    let cmds = 2000u64;
    let bytes_per_cmd = buf.len() as u64 / cmds;
    let mut long = Vec::new();
    for i in 0..1000 {
        let key = format!("{i:0>40}");
        long.extend_from_slice(format!("lock {key} 250\r\nunlock {key}\r\n").as_bytes());
    }
    let mut parser = Parser::new(dreadlock::parser::DEFAULT_MAX_LINE_BYTES);
    common::bench(
        "parser: short keys, whole buffer (per command)",
        cmds,
        Some(bytes_per_cmd),
        || {
            assert_eq!(parse(&mut parser, black_box(&buf), usize::MAX), 2000);
        },
    );
    common::bench(
        "parser: short keys, byte by byte (per command)",
        cmds,
        Some(bytes_per_cmd),
        || {
            assert_eq!(parse(&mut parser, black_box(&buf), 1), 2000);
        },
    );
    common::bench(
        "parser: 40-byte keys, whole buffer (per command)",
        cmds,
        Some(long.len() as u64 / cmds),
        || {
            assert_eq!(parse(&mut parser, black_box(&long), usize::MAX), 2000);
        },
    );
    common::bench(
        "parser: 40-byte keys, byte by byte (per command)",
        cmds,
        Some(long.len() as u64 / cmds),
        || {
            assert_eq!(parse(&mut parser, black_box(&long), 1), 2000);
        },
    );
}
