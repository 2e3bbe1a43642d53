//! The I/O floor: a server with the daemon's I/O pattern and no logic, so
//! `throughput` against it measures what the loop, the syscalls and the
//! loopback cost alone (`dreadlock-bench floor --port P`).
//!
//! The same pattern as the daemon's reactor: one thread, an edge-triggered
//! mio loop, each readable connection read until `WouldBlock`, then one
//! write per connection per batch with every reply of that batch;
//! WRITABLE only while output backs up; optional busy polling before
//! blocking (as the daemon's `--busy-poll-us`, but fixed, not adaptive).
//!
//! Its replies are canned, chosen by the first byte of each complete line:
//! `l...` -> `l locked`, `u...` -> `u unlocked`, `a...` -> `a <n>` (a
//! counter, so fencing checks pass), anything else `e syntax error`. It
//! parses nothing else: no keys, no locks, no timeouts. Limits: a line
//! longer than 64 KiB without LF, or 1 MiB of unwritten output, closes the
//! connection.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX - 1);
/// Longest partial line kept between reads.
const MAX_LINE: usize = 64 * 1024;
/// Most output kept for a connection that does not read its replies.
const MAX_OUT: usize = 1 << 20;

struct FConn {
    stream: TcpStream,
    /// Bytes of an incomplete line: only whether one is pending and its
    /// first byte matter, but the length is bounded like a real server's.
    partial_len: usize,
    partial_first: u8,
    out: Vec<u8>,
    out_pos: usize,
    want_write: bool,
}

/// Appends the canned reply for a line starting with `first`.
fn reply(out: &mut Vec<u8>, first: u8, counter: &mut u64) {
    match first {
        b'l' => out.extend_from_slice(b"l locked\r\n"),
        b'u' => out.extend_from_slice(b"u unlocked\r\n"),
        b'a' => {
            *counter += 1;
            let _ = write!(out, "a {counter}\r\n");
        }
        _ => out.extend_from_slice(b"e syntax error\r\n"),
    }
}

/// Runs the floor server on `addr` until the process is killed.
pub fn run(addr: SocketAddr, busy_poll: Duration) -> Result<(), String> {
    let mut poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
    let mut listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| format!("register: {e}"))?;
    eprintln!(
        "dreadlock-bench floor: listening on {}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    // Connections by token; freed tokens are reused.
    let mut conns: Vec<Option<FConn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; 64 * 1024];
    let mut counter = 0u64;
    let mut dirty: Vec<usize> = Vec::new();
    let mut dead: Vec<usize> = Vec::new();
    loop {
        // Busy-poll first, then block.
        let start = Instant::now();
        loop {
            let spin = !busy_poll.is_zero() && start.elapsed() < busy_poll;
            let timeout = if spin { Some(Duration::ZERO) } else { None };
            match poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("poll: {e}")),
            }
            if !events.is_empty() || !spin {
                break;
            }
            std::hint::spin_loop();
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            let k = free.pop().unwrap_or(conns.len());
                            if poll
                                .registry()
                                .register(&mut stream, Token(k), Interest::READABLE)
                                .is_ok()
                            {
                                let c = FConn {
                                    stream,
                                    partial_len: 0,
                                    partial_first: 0,
                                    out: Vec::new(),
                                    out_pos: 0,
                                    want_write: false,
                                };
                                if k == conns.len() {
                                    conns.push(Some(c));
                                } else {
                                    conns[k] = Some(c);
                                }
                            } else if k < conns.len() {
                                free.push(k);
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        // Out of descriptors or similar: try again on the
                        // next connection's event.
                        Err(_) => break,
                    }
                }
                continue;
            }
            let k = ev.token().0;
            let Some(Some(c)) = conns.get_mut(k) else {
                continue;
            };
            if ev.is_writable() && !dirty.contains(&k) {
                dirty.push(k);
            }
            if !(ev.is_readable() || ev.is_read_closed() || ev.is_error()) {
                continue;
            }
            let before = c.out.len();
            loop {
                match c.stream.read(&mut scratch) {
                    Ok(0) => {
                        dead.push(k);
                        break;
                    }
                    Ok(n) => {
                        let data = &scratch[..n];
                        let mut start = 0;
                        for end in memchr::memchr_iter(b'\n', data) {
                            let first = if c.partial_len > 0 {
                                c.partial_first
                            } else {
                                data[start]
                            };
                            reply(&mut c.out, first, &mut counter);
                            c.partial_len = 0;
                            start = end + 1;
                        }
                        if start < n {
                            if c.partial_len == 0 {
                                c.partial_first = data[start];
                            }
                            c.partial_len += n - start;
                        }
                        if c.partial_len > MAX_LINE || c.out.len() - c.out_pos > MAX_OUT {
                            dead.push(k);
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        dead.push(k);
                        break;
                    }
                }
            }
            if c.out.len() > before && !dirty.contains(&k) {
                dirty.push(k);
            }
        }
        // One write per connection that got output in this batch.
        for k in dirty.drain(..) {
            let Some(Some(c)) = conns.get_mut(k) else {
                continue;
            };
            // One write per batch: what the socket does not take waits for
            // WRITABLE.
            while c.out_pos < c.out.len() {
                match c.stream.write(&c.out[c.out_pos..]) {
                    Ok(n) => c.out_pos += n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => dead.push(k),
                }
                break;
            }
            if c.out_pos == c.out.len() {
                c.out.clear();
                c.out_pos = 0;
            }
            let pending = c.out_pos < c.out.len();
            if pending != c.want_write {
                c.want_write = pending;
                let interest = if pending {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                let _ = poll
                    .registry()
                    .reregister(&mut c.stream, Token(k), interest);
            }
        }
        for k in dead.drain(..) {
            if let Some(mut c) = conns.get_mut(k).and_then(Option::take) {
                let _ = poll.registry().deregister(&mut c.stream);
                free.push(k);
            }
        }
    }
}
