//! Fault tests over real TCP: clients that reset (RST) or half-close while
//! holding or waiting (with commands pipelined behind the wait), a slowloris
//! client, clients that never read, and running the daemon out of
//! descriptors. In each, the daemon must keep its promises to everybody else
//! and keep serving.
//!
//! Every test is bounded in time and in connections (well under the
//! 20,000-descriptor limit of this machine's processes).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Client, Daemon, PROMPT};

/// Long enough to be sure nothing is on its way.
const SHORT: Duration = Duration::from_millis(200);
/// "Promptly": far above the daemon's ~1 ms, far below the waits involved.
const PROMPTLY: Duration = Duration::from_secs(1);

/// Reads one reply line and says how long it took.
fn timed_expect(c: &mut Client, want: &str) -> Duration {
    let start = Instant::now();
    c.expect(want);
    start.elapsed()
}

/// A fresh client is served at once: the daemon is alive and responsive.
fn still_serving(addr: SocketAddr, tag: &str) {
    let mut c = Client::connect(addr);
    let start = Instant::now();
    c.call(
        &format!("lock alive{tag} 0\r\nunlock alive{tag}\r\n"),
        "l locked\r\nu unlocked\r\n",
    );
    assert!(
        start.elapsed() < PROMPTLY,
        "round trip took {:?}",
        start.elapsed()
    );
}

#[test]
fn reset_holder_hands_its_keys_to_waiters_with_pipelined_commands() {
    let d = Daemon::start();
    let mut holder = d.connect();
    holder.call("lock r1 0\r\nlock r2 0\r\n", "l locked\r\nl locked\r\n");
    // Waiters with more commands pipelined behind their waits.
    let mut w1 = d.connect();
    w1.send("lock r1 60000\r\nlock after1 0\r\nunlock r1\r\n");
    let mut w2 = d.connect();
    w2.send("lock r2 60000\r\nunlock r2\r\nlock r1 60000\r\n");
    d.sync();
    w1.expect_nothing_yet();
    w2.expect_nothing_yet();
    holder.reset();
    let took = timed_expect(&mut w1, "l locked\r\nl locked\r\nu unlocked\r\n");
    assert!(took < PROMPTLY, "w1 granted after {took:?}");
    w2.expect("l locked\r\nu unlocked\r\nl locked\r\n");
    still_serving(d.addr, "1");
}

#[test]
fn reset_waiter_with_pipelined_commands_is_withdrawn() {
    let d = Daemon::start();
    let mut holder = d.connect();
    holder.call("lock q 0\r\n", "l locked\r\n");
    let mut gone = d.connect();
    // If these ever ran, `free` would be left locked by a dead connection.
    gone.send("lock q 60000\r\nlock free 0\r\nlock q2 0\r\n");
    let mut next = d.connect();
    next.send("lock q 60000\r\n");
    d.sync();
    next.expect_nothing_yet();
    gone.reset();
    d.sync();
    holder.call("unlock q\r\n", "u unlocked\r\n");
    // Straight to the live waiter behind the dead one.
    let took = timed_expect(&mut next, "l locked\r\n");
    assert!(took < PROMPTLY, "next waiter granted after {took:?}");
    // The dead waiter's pipelined commands never ran.
    let mut c = d.connect();
    c.call("lock free 0\r\nlock q2 0\r\n", "l locked\r\nl locked\r\n");
    still_serving(d.addr, "2");
}

/// Many clients reset at random moments: holding, waiting, mid-command.
/// Afterwards every key is free and the daemon serves.
#[test]
fn reset_storm_leaves_nothing_behind() {
    let d = Daemon::start();
    let mut rng = dreadlock::model::Rng::new(0xfa17);
    for round in 0..5 {
        let mut clients: Vec<Client> = (0..60).map(|_| d.connect()).collect();
        for (i, c) in clients.iter_mut().enumerate() {
            let key = rng.below(6);
            let cmd = match rng.below(4) {
                0 => format!("lock s{key} 50000\r\nlock t{i} 0\r\nunl"),
                1 => format!("lock s{key} 50000\r\nunlock s{key}\r\n"),
                2 => format!("lock t{i} 0\r\nlock s{key} 50000\r\nlo"),
                _ => format!("lock s{key} 50000\r\n"),
            };
            c.send(cmd);
        }
        d.sync();
        for c in clients {
            if rng.chance(1, 2) {
                c.reset();
            } else {
                drop(c);
            }
        }
        // Every key is free again, at once.
        let mut check = d.connect();
        let start = Instant::now();
        for key in 0..6 {
            loop {
                check.send(format!("lock s{key} 0\r\n"));
                match check.read_line().as_str() {
                    "l locked\r\n" => break,
                    "t timeout\r\n" => {
                        // The daemon may not have seen every close yet.
                        assert!(start.elapsed() < PROMPT, "s{key} never freed");
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    other => panic!("round {round}: {other:?}"),
                }
            }
        }
        for i in 0..60 {
            check.call(&format!("lock t{i} 0\r\n"), "l locked\r\n");
        }
    }
    still_serving(d.addr, "3");
}

/// A half-closed client (FIN sent, still reading) is a disconnect: its wait
/// is withdrawn and the commands behind it never run, but the replies it is
/// owed before that still arrive.
#[test]
fn half_closed_waiter_is_withdrawn() {
    let d = Daemon::start();
    let mut holder = d.connect();
    holder.call("lock h 0\r\n", "l locked\r\n");
    let mut half = d.connect();
    half.send("lock mine 0\r\nlock h 60000\r\nlock hfree 0\r\n");
    half.expect("l locked\r\n");
    let mut next = d.connect();
    next.send("lock h 60000\r\n");
    d.sync();
    next.expect_nothing_yet();
    half.shutdown_write();
    half.expect_closed();
    holder.call("unlock h\r\n", "u unlocked\r\n");
    assert!(timed_expect(&mut next, "l locked\r\n") < PROMPTLY);
    d.connect().call(
        "lock mine 0\r\nlock hfree 0\r\n",
        "l locked\r\nl locked\r\n",
    );
}

/// A waiter whose pipelined input filled its pending buffer is not being
/// read any more; its reset or half-close is still noticed at once, its wait
/// withdrawn and its buffered commands dropped.
#[test]
fn paused_waiter_that_goes_away_is_noticed() {
    let d = Daemon::start_with(&["--max-pending-bytes", "64"]);
    let mut holder = d.connect();
    holder.call(
        "lock p 0\r\nlock p2 0\r\nlock blocker 0\r\n",
        "l locked\r\nl locked\r\nl locked\r\n",
    );
    // Should a dead waiter be granted anyway, its buffered commands would
    // make it wait on `blocker`, paused again, holding the key forever.
    let pipeline = format!(
        "lock blocker 60000\r\n{}",
        "lock zz 0\r\nunlock zz\r\n".repeat(2000)
    );
    let mut resetter = d.connect();
    resetter.send("lock p 60000\r\n").send(&pipeline);
    let mut closer = d.connect();
    closer.send("lock p2 60000\r\n").send(&pipeline);
    let mut next = d.connect();
    next.send("lock p 60000\r\n");
    let mut next2 = d.connect();
    next2.send("lock p2 60000\r\n");
    d.sync();
    next.expect_nothing_yet();
    resetter.reset();
    closer.shutdown_write();
    closer.expect_closed();
    d.sync();
    holder.call("unlock p\r\nunlock p2\r\n", "u unlocked\r\nu unlocked\r\n");
    assert!(timed_expect(&mut next, "l locked\r\n") < PROMPTLY);
    assert!(timed_expect(&mut next2, "l locked\r\n") < PROMPTLY);
    still_serving(d.addr, "5");
}

/// Slowloris: clients trickling one byte every few milliseconds do not slow
/// the others, whose round trips stay fast; the trickled commands complete.
#[test]
fn slowloris_does_not_slow_others() {
    let d = Daemon::start();
    let slow: Vec<Client> = (0..20).map(|_| d.connect()).collect();
    let done = Arc::new(AtomicBool::new(false));
    let trickler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut slow = slow;
            let cmds: Vec<Vec<u8>> = (0..slow.len())
                .map(|i| format!("lock slow{i} 0\r\nunlock slow{i}\r\n").into_bytes())
                .collect();
            let mut pos = vec![0usize; slow.len()];
            let mut completed = 0;
            let end = Instant::now() + Duration::from_secs(2);
            while !done.load(Ordering::Relaxed) && Instant::now() < end {
                for (i, c) in slow.iter_mut().enumerate() {
                    c.send([cmds[i][pos[i] % cmds[i].len()]]);
                    pos[i] += 1;
                    if pos[i] % cmds[i].len() == 0 {
                        c.expect("l locked\r\nu unlocked\r\n");
                        completed += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(3));
            }
            completed
        })
    };
    let mut fast = d.connect();
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        let t = Instant::now();
        fast.call(
            "lock fast 0\r\nunlock fast\r\n",
            "l locked\r\nu unlocked\r\n",
        );
        times.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(1));
    }
    done.store(true, Ordering::Relaxed);
    let completed = trickler.join().unwrap();
    times.sort();
    let median = times[times.len() / 2];
    let max = *times.last().unwrap();
    assert!(times.len() > 100, "only {} round trips", times.len());
    assert!(
        median < Duration::from_millis(50),
        "median round trip {median:?}"
    );
    assert!(max < PROMPTLY, "slowest round trip {max:?}");
    assert!(completed > 0, "no trickled command completed");
}

/// A client that holds a lock and floods commands without ever reading
/// blocks nobody but the waiters of its key; when it resets they get it.
#[test]
fn never_reading_holder_blocks_only_its_key() {
    let d = Daemon::start();
    let mut hog = d.connect();
    hog.call("lock hogkey 0\r\n", "l locked\r\n");
    hog.stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let chunk = "lock x 0\r\nunlock x\r\n".repeat(1000);
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the daemon never pushed back"
        );
        if hog.stream.write(chunk.as_bytes()).is_err() {
            break; // write timed out: TCP backpressure reached the hog
        }
    }
    let mut waiter = d.connect();
    waiter.send("lock hogkey 60000\r\n");
    for i in 0..50 {
        still_serving(d.addr, &format!("h{i}"));
    }
    d.sync();
    waiter.expect_nothing_yet();
    hog.reset();
    assert!(timed_expect(&mut waiter, "l locked\r\n") < PROMPTLY);
    still_serving(d.addr, "4");
}

// ---------------------------------------------------------------------------
// Running out of descriptors
// ---------------------------------------------------------------------------

/// The daemon started under a low open-file limit (soft = hard = `nofile`),
/// so reaching it takes a few hundred connections.
fn start_limited(nofile: u32, args: &[&str]) -> Daemon {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
        .arg(common::daemon_bin())
        .args(["0", "--bind", "127.0.0.1"])
        .args(args);
    Daemon::spawn(cmd)
}

/// Connects and sends a lock; returns the client and whether the daemon
/// answered within `wait` (it does not once it cannot accept).
fn connect_and_lock(addr: SocketAddr, key: &str, wait: Duration) -> (Client, bool) {
    let mut c = Client::connect(addr);
    c.send(format!("lock {key} 0\r\n"));
    c.stream.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 10];
    let served = match c.stream.read_exact(&mut buf) {
        Ok(()) => {
            assert_eq!(&buf, b"l locked\r\n");
            true
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(e) => panic!("connection {key}: {e}"),
    };
    c.stream.set_read_timeout(Some(PROMPT)).unwrap();
    (c, served)
}

fn descriptor_limit(args: &[&str], expect_in_stderr: &str) {
    const NOFILE: u32 = 256;
    let d = start_limited(NOFILE, args);
    assert!(
        d.stderr().contains(&format!("open-file limit {NOFILE}")),
        "the daemon did not run under the low limit: {}",
        d.stderr()
    );
    // Open connections until one is not served: the daemon is at its limit.
    let mut served = Vec::new();
    let mut blocked = Vec::new();
    for i in 0..NOFILE as usize + 50 {
        let (c, ok) = connect_and_lock(d.addr, &format!("fd{i}"), Duration::from_millis(500));
        if ok {
            assert!(blocked.is_empty(), "served after a connection was not");
            served.push(c);
        } else {
            blocked.push(c);
            break;
        }
    }
    assert_eq!(
        blocked.len(),
        1,
        "never hit the limit with {} served",
        served.len()
    );
    assert!(
        served.len() > NOFILE as usize / 2 && served.len() < NOFILE as usize,
        "{} connections served under a limit of {NOFILE}",
        served.len()
    );
    // A few more wait in the listen backlog.
    for i in 0..5 {
        let (c, ok) = connect_and_lock(d.addr, &format!("late{i}"), Duration::from_millis(50));
        assert!(!ok, "a connection past the limit was served");
        blocked.push(c);
    }
    let log_end = Instant::now() + PROMPT;
    while !d.stderr().contains(expect_in_stderr) {
        assert!(
            Instant::now() < log_end,
            "stderr never said {expect_in_stderr:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // Existing clients are served normally at the limit.
    for (i, c) in served.iter_mut().enumerate().take(20) {
        c.call(
            &format!("unlock fd{i}\r\nlock fd{i} 0\r\n"),
            "u unlocked\r\nl locked\r\n",
        );
    }
    // No busy loop while at the limit: well under a fifth of a core.
    let cpu0 = d.cpu_time();
    let wall0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let cpu = d.cpu_time() - cpu0;
    let wall = wall0.elapsed();
    assert!(
        cpu.as_secs_f64() < 0.2 * wall.as_secs_f64(),
        "the daemon used {cpu:?} of CPU in {wall:?} at the descriptor limit"
    );
    for c in &mut blocked {
        c.expect_silence(Duration::from_millis(10));
    }
    eprintln!(
        "at the limit: {} served, {} waiting, daemon CPU {cpu:?} in {wall:?}",
        served.len(),
        blocked.len()
    );

    // Free some slots: the waiting connections are accepted and served.
    let freed: Vec<Client> = served.drain(..20).collect();
    drop(freed);
    for c in &mut blocked {
        c.expect("l locked\r\n");
    }
    // And new ones too; the old ones still work.
    let (mut fresh, ok) = connect_and_lock(d.addr, "fresh", PROMPT);
    assert!(ok, "a new connection was not served after slots freed up");
    fresh.call("unlock fresh\r\n", "u unlocked\r\n");
    served[0].call("lock fd0 0\r\n", "l locked\r\n");
}

/// Past the open-file limit `accept` fails (EMFILE): the daemon pauses
/// accepting without spinning, serves its clients, and accepts again once
/// descriptors free up.
#[test]
fn descriptor_limit_accept_fails_without_busy_loop() {
    descriptor_limit(&["--max-connections", "100000"], "accept failed");
}

/// The default cap (the open-file limit less a reserve) is reached before
/// `accept` fails: the same promises hold.
#[test]
fn descriptor_limit_default_cap() {
    descriptor_limit(&["--verbose"], "pausing accept");
}

/// A client that stops reading until TCP pushes back, then reads: every
/// reply arrives, in order, none lost or cut, while its writer keeps going.
#[test]
fn late_reader_gets_every_reply() {
    let d = Daemon::start();
    let mut c = d.connect();
    let mut writer = c.stream.try_clone().unwrap();
    const N: usize = 100_000;
    let pair = "lock lr 0\r\nunlock lr\r\n";
    let sender = std::thread::spawn(move || {
        let chunk = pair.repeat(1000);
        for _ in 0..N / 1000 {
            writer.write_all(chunk.as_bytes()).unwrap();
        }
    });
    // Let the daemon back up against us first.
    std::thread::sleep(Duration::from_millis(300));
    let want = "l locked\r\nu unlocked\r\n";
    let mut buf = vec![0u8; 1 << 16];
    let mut got = Vec::with_capacity(N * want.len());
    while got.len() < N * want.len() {
        match c.stream.read(&mut buf) {
            Ok(0) => panic!("closed after {} bytes", got.len()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "stuck after {} of {} bytes ({} whole replies): {e}",
                got.len(),
                N * want.len(),
                got.len() / want.len()
            ),
        }
    }
    sender.join().unwrap();
    assert_eq!(got.len(), N * want.len());
    assert!(got.chunks(want.len()).all(|r| r == want.as_bytes()));
    c.expect_silence(SHORT);
}
