//! Every row of PROTOCOL.md over real TCP against the real binary, byte for
//! byte. Timing assertions only bound what cannot flake: a timeout is never
//! early, and it arrives within a generous bound.

mod common;
mod help;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{Client, Daemon, PROMPT};

const SHORT: Duration = Duration::from_millis(150);

#[test]
fn replies_are_exact_bytes() {
    let d = Daemon::start();
    let mut a = d.connect();
    let mut b = d.connect();
    a.call("lock k 100\r\n", "l locked\r\n");
    a.call("lock k 100\r\n", "e already locked\r\n");
    b.call("unlock k\r\n", "e not owner\r\n");
    b.call("unlock nokey\r\n", "e not locked\r\n");
    b.call("lock k 50\r\n", "t timeout\r\n");
    // Errors changed nothing: one unlock frees the key.
    a.call("unlock k\r\n", "u unlocked\r\n");
    a.call("unlock k\r\n", "e not locked\r\n");
    b.call("lock k 0\r\n", "l locked\r\n");
}

#[test]
fn command_words_case_insensitive_keys_case_sensitive() {
    let d = Daemon::start();
    let mut a = d.connect();
    let mut b = d.connect();
    a.call("LOCK Key 0\r\n", "l locked\r\n");
    a.call("LoCk key 0\r\n", "l locked\r\n");
    b.call("lock KEY 0\r\n", "l locked\r\n");
    b.call("unlock Key\r\n", "e not owner\r\n");
    a.call("UnLoCk Key\r\n", "u unlocked\r\n");
    a.call("UNLOCK key   \r\n", "u unlocked\r\n");
    a.call("lock   9Z9   0   \r\n", "l locked\r\n");
}

#[test]
fn free_key_granted_whatever_the_timeout() {
    let d = Daemon::start();
    let mut a = d.connect();
    a.call("lock a 0\r\n", "l locked\r\n");
    a.call("lock b 1\r\n", "l locked\r\n");
    a.call("lock c 99999999999999999999999\r\n", "l locked\r\n");
}

#[test]
fn fifo_grants_only_the_head() {
    let d = Daemon::start();
    let mut holder = d.connect();
    holder.call("lock q 0\r\n", "l locked\r\n");
    let mut w: Vec<Client> = (0..12).map(|_| d.connect()).collect();
    for c in w.iter_mut() {
        c.send("lock q 10000\r\n");
        std::thread::sleep(Duration::from_millis(15));
    }
    holder.call("unlock q\r\n", "u unlocked\r\n");
    for i in 0..w.len() {
        w[i].expect("l locked\r\n");
        for later in w.iter_mut().skip(i + 1).take(2) {
            later.expect_silence(Duration::from_millis(20));
        }
        w[i].call("unlock q\r\n", "u unlocked\r\n");
    }
}

#[test]
fn timeout_is_never_early_and_not_much_late() {
    let d = Daemon::start();
    let mut holder = d.connect();
    holder.call("lock t 0\r\n", "l locked\r\n");
    for timeout_ms in [1u64, 20, 250] {
        let mut w = d.connect();
        let start = Instant::now();
        w.send(format!("lock t {timeout_ms}\r\n"));
        w.expect("t timeout\r\n");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(timeout_ms),
            "timeout {timeout_ms} ms answered after {took:?}"
        );
        assert!(
            took < Duration::from_millis(timeout_ms) + Duration::from_secs(2),
            "timeout {timeout_ms} ms answered after {took:?}"
        );
    }
}

#[test]
fn try_lock_with_zero_timeout() {
    let d = Daemon::start();
    let mut a = d.connect();
    let mut b = d.connect();
    a.call("lock z 0\r\n", "l locked\r\n");
    let start = Instant::now();
    b.call("lock z 0\r\n", "t timeout\r\n");
    assert!(start.elapsed() < PROMPT);
    // The try-lock left no trace in the queue: unlock frees the key outright.
    a.call("unlock z\r\n", "u unlocked\r\n");
    b.expect_silence(SHORT);
    b.call("lock z 0\r\n", "l locked\r\n");
}

#[test]
fn blocked_lock_defers_later_commands() {
    let d = Daemon::start();
    let mut a = d.connect();
    let mut b = d.connect();
    a.call("lock x 0\r\n", "l locked\r\n");
    // Pipelined in the same write, then more in a later write.
    b.send("lock x 10000\r\nlock y 0\r\n");
    b.expect_silence(SHORT);
    b.send("unlock y\r\nunlock nope\r\n");
    b.expect_silence(SHORT);
    // y is still free: b's `lock y` has not run.
    let mut c = d.connect();
    c.call("lock y 0\r\n", "l locked\r\n");
    c.call("unlock y\r\n", "u unlocked\r\n");
    a.call("unlock x\r\n", "u unlocked\r\n");
    b.expect("l locked\r\nl locked\r\nu unlocked\r\ne not locked\r\n");
}

#[test]
fn timed_out_lock_runs_deferred_commands() {
    let d = Daemon::start();
    let mut a = d.connect();
    let mut b = d.connect();
    a.call("lock x 0\r\n", "l locked\r\n");
    b.send("lock x 30\r\nlock y 0\r\n");
    b.expect("t timeout\r\nl locked\r\n");
}

#[test]
fn pipelined_replies_and_commands_split_anywhere() {
    let d = Daemon::start();
    let mut a = d.connect();
    let script = "lock a 0\r\nlock b 5\r\nunlock a\r\nLOCK   a   7   \r\nunlock b\r\nunlock a\r\n";
    let replies = "l locked\r\nl locked\r\nu unlocked\r\nl locked\r\nu unlocked\r\nu unlocked\r\n";
    a.call(script, replies);
    // Byte by byte, each byte its own write.
    for b in script.as_bytes() {
        a.send([*b]);
        std::thread::sleep(Duration::from_micros(200));
    }
    a.expect(replies);
    // Split at every index into two writes.
    for i in 1..script.len() {
        a.send(&script[..i]);
        std::thread::sleep(Duration::from_millis(1));
        a.send(&script[i..]);
        a.expect(replies);
    }
}

#[test]
fn disconnect_releases_every_lock_at_once() {
    let d = Daemon::start();
    let mut a = d.connect();
    a.call(
        "lock k1 0\r\nlock k2 0\r\nlock k3 0\r\n",
        "l locked\r\nl locked\r\nl locked\r\n",
    );
    let mut w1 = d.connect();
    let mut w2 = d.connect();
    w1.send("lock k1 10000\r\n");
    w2.send("lock k2 10000\r\n");
    w1.expect_silence(SHORT);
    drop(a);
    w1.expect("l locked\r\n");
    w2.expect("l locked\r\n");
    let mut c = d.connect();
    c.call("lock k3 0\r\n", "l locked\r\n");
}

#[test]
fn reset_releases_every_lock_at_once() {
    let d = Daemon::start();
    let mut a = d.connect();
    a.call("lock r1 0\r\nlock r2 0\r\n", "l locked\r\nl locked\r\n");
    let mut w = d.connect();
    w.send("lock r2 10000\r\n");
    w.expect_silence(SHORT);
    a.reset();
    w.expect("l locked\r\n");
    d.connect().call("lock r1 0\r\n", "l locked\r\n");
}

#[test]
fn disconnected_waiter_is_withdrawn() {
    let d = Daemon::start();
    let mut holder = d.connect();
    holder.call("lock w 0\r\n", "l locked\r\n");
    let mut gone = d.connect();
    gone.send("lock w 100000\r\n");
    std::thread::sleep(Duration::from_millis(30));
    let mut next = d.connect();
    next.send("lock w 100000\r\n");
    next.expect_silence(SHORT);
    drop(gone);
    std::thread::sleep(Duration::from_millis(30));
    holder.call("unlock w\r\n", "u unlocked\r\n");
    // Granted straight to the live waiter, not to the dead one.
    next.expect("l locked\r\n");
}

#[test]
fn half_closed_client_is_a_disconnect() {
    let d = Daemon::start();
    let mut a = d.connect();
    a.send("lock h 0\r\nlock i 0\r\n");
    a.shutdown_write();
    a.expect("l locked\r\nl locked\r\n");
    a.expect_closed();
    d.connect()
        .call("lock h 0\r\nlock i 0\r\n", "l locked\r\nl locked\r\n");
}

/// Every kind of syntax error: the replies before it arrive, the connection
/// is dropped, its locks are released, stderr names the peer, and other
/// clients are not disturbed.
#[test]
fn syntax_errors_drop_the_connection_and_release_locks() {
    let d = Daemon::start();
    let mut bystander = d.connect();
    bystander.call("lock safe 0\r\n", "l locked\r\n");
    let long_key = "k".repeat(10_001);
    let bad: &[&str] = &[
        "lock\ta 1\r\n",
        " lock a 1\r\n",
        "\r\n",
        "lock a 1\n",
        "lock a 1\rX",
        "lock a\r\n",
        "lock  \r\n",
        "lock a-b 1\r\n",
        "lock \u{e9} 1\r\n",
        "lick a 1\r\n",
        "locka 1\r\n",
        "unlock a 5\r\n",
        "lock a -1\r\n",
        "lock a 1 x\r\n",
        "lock a\x001\r\n",
        "GET / HTTP/1.1\r\n",
        &long_key,
    ];
    for (i, b) in bad.iter().enumerate() {
        let mut c = d.connect();
        let before = format!("lock held{i} 0\r\n");
        c.send(before.as_bytes());
        c.send(b.as_bytes());
        c.expect("l locked\r\n");
        c.expect_closed();
        // The key it held is free again.
        let mut probe = d.connect();
        probe.call(&format!("lock held{i} 0\r\n"), "l locked\r\n");
    }
    bystander.call("lock safe 0\r\n", "e already locked\r\n");
    let err = d.wait_stderr("syntax error from client 127.0.0.1:");
    assert!(err.contains("dropping connection"), "{err}");
}

#[test]
fn line_length_limit_is_configurable() {
    let d = Daemon::start_with(&["--max-line-bytes", "64"]);
    let mut ok = d.connect();
    // Exactly 64 bytes with CRLF.
    let key = "k".repeat(64 - "lock  0\r\n".len());
    ok.call(&format!("lock {key} 0\r\n"), "l locked\r\n");
    let mut bad = d.connect();
    bad.send(format!("lock {key}k 0\r\n"));
    bad.expect_closed();
    // A key at the default limit is fine on a default daemon.
    let d = Daemon::start();
    let key = "k".repeat(10_000 - "lock  0\r\n".len());
    d.connect()
        .call(&format!("lock {key} 0\r\n"), "l locked\r\n");
}

#[test]
fn huge_timeouts_wait_until_granted() {
    let d = Daemon::start();
    let mut a = d.connect();
    a.call("lock big 0\r\n", "l locked\r\n");
    let mut w = d.connect();
    w.send(format!("lock big {}\r\n", "9".repeat(5000)));
    let mut w2 = d.connect();
    w2.send("lock big 18446744073709551616\r\n");
    w.expect_silence(SHORT);
    a.call("unlock big\r\n", "u unlocked\r\n");
    w.expect("l locked\r\n");
    w.call("unlock big\r\n", "u unlocked\r\n");
    w2.expect("l locked\r\n");
}

#[test]
fn client_that_never_reads_does_not_disturb_others() {
    let d = Daemon::start();
    let mut hog = d.connect();
    hog.stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Write requests without ever reading replies until TCP pushes back.
    let chunk = "lock h 0\r\nunlock h\r\n".repeat(1000);
    let start = Instant::now();
    let mut sent = 0usize;
    while start.elapsed() < Duration::from_secs(10) {
        // Continue where the last (possibly partial) write stopped, so the
        // stream stays a valid sequence of commands.
        let off = sent % chunk.len();
        match hog.stream.write(&chunk.as_bytes()[off..]) {
            Ok(n) => sent += n,
            Err(_) => break, // write timed out: backpressure reached us
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "daemon kept reading from a client that never reads ({sent} bytes)"
    );
    // Others are served normally meanwhile.
    let mut other = d.connect();
    for _ in 0..100 {
        other.call("lock o 0\r\nunlock o\r\n", "l locked\r\nu unlocked\r\n");
    }
    // The hog's replies are all there, in order, once it reads: one per
    // complete command it sent (its last write may have ended mid-chunk).
    let (pair, reply_pair) = ("lock h 0\r\nunlock h\r\n", "l locked\r\nu unlocked\r\n");
    let mut want = reply_pair.repeat(sent / pair.len());
    if sent % pair.len() >= "lock h 0\r\n".len() {
        want.push_str("l locked\r\n");
    }
    let mut got = vec![0u8; want.len()];
    hog.stream.set_read_timeout(Some(PROMPT)).unwrap();
    hog.stream.read_exact(&mut got).expect("all replies");
    assert!(got == want.as_bytes(), "hog's replies out of order");
    hog.expect_silence(SHORT);
}

#[test]
fn many_connections_at_once() {
    let d = Daemon::start();
    let mut clients: Vec<Client> = (0..2000).map(|_| d.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.call(&format!("lock m{i} 0\r\n"), "l locked\r\n");
    }
    // All queue on one key; each unlock is pipelined behind its lock, so the
    // key is passed down the whole queue by the daemon alone.
    for c in clients.iter_mut() {
        c.send("lock shared 60000\r\nunlock shared\r\n");
    }
    for c in clients.iter_mut() {
        c.expect("l locked\r\nu unlocked\r\n");
    }
    d.connect().call("lock shared 0\r\n", "l locked\r\n");
}

#[test]
fn connection_cap_defers_new_connections() {
    let d = Daemon::start_with(&["--max-connections", "2"]);
    let mut a = d.connect();
    let b = d.connect();
    a.call("lock c 0\r\n", "l locked\r\n");
    let mut third = d.connect(); // completes in the backlog
    third.send("lock c2 0\r\n");
    third.expect_silence(Duration::from_millis(300));
    drop(b);
    third.expect("l locked\r\n");
    a.call("unlock c\r\n", "u unlocked\r\n");
}

#[test]
fn sigterm_prints_a_summary() {
    let d = Daemon::start();
    d.connect().call("lock s 0\r\n", "l locked\r\n");
    let (status, err) = d.terminate();
    assert!(status.success(), "{status:?}\n{err}");
    assert!(err.contains("stopped after"), "{err}");
    assert!(err.contains("1 granted"), "{err}");
}

#[test]
fn help_explains_every_flag() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dreadlock"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    help::assert_every_argument_explained(
        &help,
        &[
            "--bind",
            "--max-connections",
            "--max-line-bytes",
            "--max-pending-bytes",
            "--max-output-bytes",
            "--backlog",
            "--busy-poll-us",
            "--max-locks-per-connection",
            "--max-key-bytes",
            "--keepalive",
            "--verbose",
            "--quiet",
            "--version",
            "[PORT]",
        ],
    );
}

#[test]
fn port_in_use_is_a_clear_error() {
    let d = Daemon::start();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dreadlock"))
        .args([&d.addr.port().to_string(), "--bind", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen on 127.0.0.1:"), "{err}");
}

/// The `tr` (timer) field of the daemon's end of `client`'s connection in
/// /proc/net/tcp: 2 means a keepalive timer is pending.
fn daemon_side_timer(d: &Daemon, client: &Client) -> u32 {
    let local = client.stream.local_addr().unwrap();
    let want_local = format!("0100007F:{:04X}", d.addr.port());
    let want_remote = format!("0100007F:{:04X}", local.port());
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f[1] == want_local && f[2] == want_remote {
            return u32::from_str_radix(f[5].split(':').next().unwrap(), 16).unwrap();
        }
    }
    panic!("daemon side of {local} not in /proc/net/tcp");
}

#[test]
fn accepted_connections_use_keepalive() {
    let d = Daemon::start();
    let mut c = d.connect();
    c.call("lock ka 0\r\n", "l locked\r\n");
    assert_eq!(daemon_side_timer(&d, &c), 2, "no keepalive timer");
    let d = Daemon::start_with(&["--keepalive", "0"]);
    let mut c = d.connect();
    c.call("lock ka 0\r\n", "l locked\r\n");
    assert_eq!(daemon_side_timer(&d, &c), 0, "keepalive not off");
}

#[test]
fn lock_count_and_key_bytes_are_bounded() {
    let d = Daemon::start_with(&["--max-locks-per-connection", "2", "--max-key-bytes", "400"]);
    let mut a = d.connect();
    a.call("lock a 0\r\nlock b 0\r\n", "l locked\r\nl locked\r\n");
    a.call("lock c 0\r\n", "e too many locks\r\n");
    // Nothing changed: c is free for another connection, and one unlock
    // makes room again.
    let mut b = d.connect();
    b.call("lock c 0\r\n", "l locked\r\n");
    // Three one-byte keys take 3 * 129 bytes: a fourth does not fit in 400.
    b.call("lock d 0\r\n", "e lock table full\r\n");
    a.call("unlock b\r\n", "u unlocked\r\n");
    b.call("lock d 0\r\n", "l locked\r\n");
    a.call("lock e 0\r\n", "e lock table full\r\n");
}

/// Busy polling must stop when traffic stops: an idle daemon sleeps.
#[test]
fn idle_daemon_uses_no_cpu_after_a_burst() {
    let d = Daemon::start();
    let mut a = d.connect();
    for _ in 0..2000 {
        a.call("lock i 0\r\nunlock i\r\n", "l locked\r\nu unlocked\r\n");
    }
    std::thread::sleep(Duration::from_millis(100));
    let before = d.cpu_time();
    std::thread::sleep(Duration::from_secs(1));
    let used = d.cpu_time() - before;
    // A spinning loop would show about a second.
    assert!(
        used <= Duration::from_millis(50),
        "idle daemon used {used:?} of CPU in 1 s"
    );
}
