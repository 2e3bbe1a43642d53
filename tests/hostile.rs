//! The reactor under hostile load, over real TCP on 127.0.0.1: a resume
//! cascade through many waiters, replies backing up against a small window,
//! syntax errors followed by more bytes, a peer that never stops sending
//! after its error, a half-closed batch client, SIGHUP.
//!
//! Each test checks an ordering or a bound, never a speed. Set
//! `DREADLOCK_TEST_BIN` to run them against another build of the daemon.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use common::{Client, Daemon, PROMPT};

/// Reads until end of stream; returns the bytes and whether it ended with
/// a reset rather than a clean FIN.
fn read_to_end(c: &mut Client) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => return (got, false),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (got, true),
            Err(e) => panic!("read failed after {} bytes: {e}", got.len()),
        }
    }
}

/// Counts whole copies of `reply` at the start of `got` (all must be it).
fn count_replies(got: &[u8], reply: &str) -> usize {
    let whole = got.len() / reply.len();
    assert!(
        got.chunks(reply.len())
            .take(whole)
            .all(|r| r == reply.as_bytes()),
        "unexpected bytes among the replies"
    );
    whole
}

/// Item 1: one `unlock` grants the first of many waiters, each with a
/// pending buffer of cheap commands ending in `unlock k`, which grants the
/// next: a cascade through all of them. It used to run inside one pass of
/// the loop, so nobody else was served until it ended. Now resumed input
/// runs under the same per-pass budget as fresh input, so another client's
/// round trips go on *during* the cascade: many complete before its last
/// waiter is granted. (One thread does the probing and watches the last
/// waiter, so no thread scheduling can blur the order.)
#[test]
fn resume_cascade_does_not_stall_other_clients() {
    const WAITERS: usize = 50;
    let d = Daemon::start();
    let mut holder = d.connect();
    holder.call("lock k 0\r\n", "l locked\r\n");
    // Each batch fits in the default 64 KiB pending buffer, so all of it is
    // buffered behind the wait.
    let filler = "unlock zz\r\n".repeat(60 * 1024 / 11);
    let mut waiters: Vec<Client> = (0..WAITERS).map(|_| d.connect()).collect();
    for w in &mut waiters {
        w.send(format!("lock k 99999999999\r\n{filler}unlock k\r\n"));
    }
    let mut last = d.connect();
    last.send("lock k 99999999999\r\n");
    d.sync();
    let mut probe = d.connect();
    holder.call("unlock k\r\n", "u unlocked\r\n");
    last.stream.set_nonblocking(true).unwrap();
    let mut during = 0;
    let end = Instant::now() + PROMPT * 12;
    loop {
        let mut b = [0u8; 10];
        match last.stream.read(&mut b) {
            Ok(10) => {
                assert_eq!(&b, b"l locked\r\n");
                break;
            }
            Ok(n) => panic!("the last waiter read {n} bytes"),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("the last waiter: {e}"),
        }
        assert!(Instant::now() < end, "the cascade never reached the end");
        probe.call(
            "lock probe 0\r\nunlock probe\r\n",
            "l locked\r\nu unlocked\r\n",
        );
        during += 1;
    }
    // Every waiter got its lock, its replies and its own unlock's reply.
    let replies = 60 * 1024 / 11;
    for w in &mut waiters {
        w.expect("l locked\r\n");
        let mut got = vec![0u8; replies * 14 + 12];
        w.stream.read_exact(&mut got).unwrap();
        assert_eq!(
            count_replies(&got[..replies * 14], "e not locked\r\n"),
            replies
        );
        assert_eq!(&got[replies * 14..], b"u unlocked\r\n");
    }
    eprintln!("{during} probe round trips completed during the cascade");
    assert!(
        during >= 10,
        "only {during} probe round trips completed during a cascade through {WAITERS} waiters"
    );
}

/// Item 2: a client that keeps sending while reading its replies slowly
/// through a small window. The daemon's output buffer for it used to be
/// compacted only when it drained to zero, which it never did, so it grew
/// by everything the client ever read. Now it stays within
/// `--max-output-bytes` plus one read's replies.
#[test]
fn backed_up_output_stays_bounded() {
    const READ_TOTAL: usize = 20 << 20;
    // A large output bound, more than the kernel's buffers take in one go:
    // the buffer never drains to zero while the client reads slowly.
    let d = Daemon::start_with(&["--max-output-bytes", "4194304"]);
    // Warm up so the baseline includes the loop's own buffers.
    d.connect()
        .call("lock w 0\r\nunlock w\r\n", "l locked\r\nu unlocked\r\n");
    let base = d.rss_bytes();
    let mut c = Client::connect_with_rcvbuf(d.addr, 16 * 1024);
    let mut writer = c.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let chunk = "unlock zz\r\n".repeat(4096);
        // Ends when the test closes the connection.
        while writer.write_all(chunk.as_bytes()).is_ok() {}
    });
    let mut buf = vec![0u8; 8 * 1024];
    let mut read = 0;
    let mut peak = 0;
    let end = Instant::now() + PROMPT * 12;
    while read < READ_TOTAL && Instant::now() < end {
        let n = c.stream.read(&mut buf).expect("read replies");
        assert!(n > 0, "closed after {read} bytes");
        read += n;
        if read % (1 << 20) < n {
            peak = peak.max(d.rss_bytes());
        }
        // Slower than the daemon writes: its output stays backed up.
        std::thread::sleep(Duration::from_millis(1));
    }
    let growth = peak.saturating_sub(base);
    eprintln!(
        "read {} MiB of replies; daemon RSS {} KiB -> peak {} KiB",
        read >> 20,
        base >> 10,
        peak >> 10
    );
    // Both directions, so the sender's writes on its clone fail too.
    c.stream.shutdown(std::net::Shutdown::Both).unwrap();
    sender.join().unwrap();
    assert!(read >= 12 << 20, "only {read} bytes read in time");
    assert!(
        growth < 12 << 20,
        "the daemon grew by {} KiB while one client's output stayed backed up",
        growth >> 10
    );
}

/// Item 3: 2,000 commands, a syntax error, then 20,000 more commands; the
/// client reads only after sending everything. The daemon used to close
/// with the unread bytes in its socket, so the kernel reset the connection
/// and threw away the replies still queued. Now it stops reading commands,
/// flushes, sends its FIN, and discards the rest: all 2,000 replies
/// arrive, then a clean end of stream.
#[test]
fn replies_before_a_syntax_error_arrive_when_bytes_follow_it() {
    let d = Daemon::start();
    let mut c = d.connect();
    let mut writer = c.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let before = "unlock zz\r\n".repeat(2000);
        let after = "unlock zz\r\n".repeat(20_000);
        let _ = writer.write_all(before.as_bytes());
        let _ = writer.write_all(b"lock\tbad 0\r\n");
        // The daemon may close before all of this is sent; that is fine.
        let _ = writer.write_all(after.as_bytes());
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    sender.join().unwrap();
    let (got, reset) = read_to_end(&mut c);
    assert_eq!(
        count_replies(&got, "e not locked\r\n"),
        2000,
        "replies before the error (reset: {reset})"
    );
    assert_eq!(got.len(), 2000 * 14);
    assert!(!reset, "the connection ended with a reset");
    d.wait_stderr("syntax error from client");
    still_serving(&d);
}

/// Item 3, the hostile side: after its syntax error a peer keeps sending
/// and never sends its FIN. Discarding its input is bounded in time and
/// bytes, so the daemon closes it anyway: it cannot keep its slot.
#[test]
fn peer_that_keeps_sending_after_its_error_is_closed() {
    let d = Daemon::start_with(&["--max-connections", "1"]);
    let mut c = d.connect();
    c.call("lock h 0\r\nlock\tbad 0\r\n", "l locked\r\n");
    let junk = "unlock zz\r\n".repeat(100);
    let start = Instant::now();
    let closed = loop {
        assert!(
            start.elapsed() < PROMPT * 4,
            "the daemon kept a peer that never stopped sending"
        );
        if c.stream.write_all(junk.as_bytes()).is_err() {
            break start.elapsed();
        }
        let mut b = [0u8; 16];
        c.stream.set_nonblocking(true).unwrap();
        let r = c.stream.read(&mut b);
        c.stream.set_nonblocking(false).unwrap();
        match r {
            Ok(0) => {} // its FIN: we may still send, it discards
            Ok(n) => panic!("{n} bytes after the error"),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => break start.elapsed(),
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    eprintln!("closed {closed:?} after the error");
    // Its slot is free (the cap is one connection) and its lock released.
    let mut next = d.connect();
    next.call("lock h 0\r\n", "l locked\r\n");
}

/// Item 7: a batch client sends 10,000 commands, then `shutdown(SHUT_WR)`,
/// and reads more slowly than the daemon writes. The daemon, paused by the
/// backed-up output, used to take the FIN for a disconnect and reset it.
/// Now every command before the FIN runs and is answered, then the
/// connection closes cleanly.
#[test]
fn half_closed_batch_client_gets_every_reply() {
    const N: usize = 10_000;
    // A small output bound, so the daemon is often paused by the backed-up
    // output when the FIN arrives.
    let d = Daemon::start_with(&["--max-output-bytes", "1024"]);
    let mut c = Client::connect_with_rcvbuf(d.addr, 8 * 1024);
    let mut writer = c.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let chunk = "lock hb 0\r\nunlock hb\r\n".repeat(N / 2 / 10);
        for _ in 0..10 {
            writer.write_all(chunk.as_bytes()).unwrap();
        }
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    let mut reset = false;
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                reset = true;
                break;
            }
            Err(e) => panic!("read failed after {} bytes: {e}", got.len()),
        }
        // Slower than the daemon writes.
        std::thread::sleep(Duration::from_micros(200));
    }
    sender.join().unwrap();
    let pair = "l locked\r\nu unlocked\r\n";
    let pairs = count_replies(&got, pair);
    assert_eq!(
        pairs,
        N / 2,
        "replies to a half-closed batch (reset: {reset})"
    );
    assert_eq!(got.len(), N / 2 * pair.len());
    assert!(!reset, "the connection ended with a reset");
    still_serving(&d);
}

/// Item 8: SIGHUP (logrotate) used to kill the daemon and every lock with
/// it. It is logged and otherwise ignored.
#[test]
fn sighup_is_logged_and_ignored() {
    let mut d = Daemon::start();
    let mut holder = d.connect();
    holder.call("lock hup 0\r\n", "l locked\r\n");
    d.signal("HUP");
    d.wait_stderr("SIGHUP");
    d.sync();
    assert!(d.alive(), "the daemon died of SIGHUP");
    // The lock survived, and so did its holder's connection.
    d.connect().call("lock hup 0\r\n", "t timeout\r\n");
    holder.call("unlock hup\r\n", "u unlocked\r\n");
    let (status, err) = d.terminate();
    assert!(status.success(), "{status:?}: {err}");
}

fn still_serving(d: &Daemon) {
    d.connect().call(
        "lock alive 0\r\nunlock alive\r\n",
        "l locked\r\nu unlocked\r\n",
    );
}
