//! PROTOCOL.md version 2 over real TCP against the real binary: one test
//! per row of the table and per rule V1-V10, the limits at 0, 1 and their
//! maximum, and the version 1 replies unchanged. Waits are explicit and
//! bounded (`PROMPT`); the order of waiters is established by polling
//! `info`, never by sleeping.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Client, Daemon, PROMPT};
use dreadlock::wire::STATS_FIELDS;

/// Sends `cmd` and reads one reply line.
fn ask(c: &mut Client, cmd: &str) -> String {
    c.send(cmd);
    c.read_line()
}

/// The token of an `a <token>` reply.
fn token(reply: &str) -> u64 {
    reply
        .strip_prefix("a ")
        .and_then(|t| t.strip_suffix("\r\n"))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("not an acquire grant: {reply:?}"))
}

/// The `name=value` fields of an `i ...` or `s ...` line, in order.
fn fields(line: &str, prefix: &str) -> Vec<(String, String)> {
    let body = line
        .strip_prefix(prefix)
        .and_then(|l| l.strip_suffix("\r\n"))
        .unwrap_or_else(|| panic!("not a {prefix:?} line: {line:?}"));
    body.split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("field {kv:?}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn info(c: &mut Client, key: &str) -> BTreeMap<String, String> {
    fields(&ask(c, &format!("info {key}\r\n")), "i ")
        .into_iter()
        .collect()
}

fn stats(c: &mut Client) -> BTreeMap<String, u64> {
    let line = ask(c, "stats\r\n");
    let f = fields(&line, "s ");
    let names: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, STATS_FIELDS, "stats fields and their order");
    f.into_iter()
        .filter(|(k, _)| k != "version")
        .map(|(k, v)| {
            let n = v.parse().unwrap_or_else(|_| panic!("{k}={v}"));
            (k, n)
        })
        .collect()
}

/// Polls `info key` from `observer` until `field` reads `want`.
fn wait_info(observer: &mut Client, key: &str, field: &str, want: &str) {
    let end = Instant::now() + PROMPT;
    loop {
        let i = info(observer, key);
        if i.get(field).map(String::as_str) == Some(want) {
            return;
        }
        assert!(
            Instant::now() < end,
            "info {key}: {field} never {want}: {i:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Writes `secret` (plus `tail`) to a fresh file with `mode`; returns its path.
fn secret_file(secret: &[u8], tail: &[u8], mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "dreadlock-v2-secret-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let mut bytes = secret.to_vec();
    bytes.extend_from_slice(tail);
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn auth_daemon(secret: &str, extra: &[&str]) -> Daemon {
    let path = secret_file(secret.as_bytes(), b"\n", 0o600);
    let mut args = vec!["--auth-file", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let d = Daemon::start_with(&args);
    // Read at start; not needed after.
    let _ = std::fs::remove_file(&path);
    d
}

fn authed(d: &Daemon, secret: &str) -> Client {
    let mut c = d.connect();
    c.call(&format!("auth {secret}\r\n"), "o ok\r\n");
    c
}

// ---------------------------------------------------------------------------
// V1: fencing tokens
// ---------------------------------------------------------------------------

#[test]
fn acquire_tokens_increase_over_every_grant_immediate_or_queued() {
    let before_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let d = Daemon::start();
    let mut obs = d.connect();
    assert_eq!(stats(&mut obs)["token"], 0, "token=0 before any grant");
    let mut a = d.connect();
    let mut b = d.connect();
    let mut c = d.connect();
    let t1 = token(&ask(&mut a, "acquire k 10000\r\n"));
    // The counter starts at the daemon's start time in ns.
    assert!(
        t1 >= before_ns,
        "first token {t1} before the start time {before_ns}"
    );
    b.send("acquire k 10000\r\n");
    wait_info(&mut obs, "k", "waiters", "1");
    c.send("lock k 10000\r\n");
    wait_info(&mut obs, "k", "waiters", "2");
    a.call("unlock k\r\n", "u unlocked\r\n");
    let t2 = token(&b.read_line());
    assert_eq!(t2, t1 + 1);
    b.call("unlock k\r\n", "u unlocked\r\n");
    // `lock` replies as ever; its token shows in `info`.
    c.expect("l locked\r\n");
    assert_eq!(info(&mut obs, "k")["token"], (t2 + 1).to_string());
    let t4 = token(&ask(&mut a, "acquire other 0\r\n"));
    assert_eq!(t4, t2 + 2);
    assert_eq!(stats(&mut obs)["token"], t4);
}

#[test]
fn tokens_increase_across_a_daemon_restart() {
    let d = Daemon::start();
    let mut a = d.connect();
    let t1 = token(&ask(&mut a, "acquire k 0\r\n"));
    let t2 = token(&ask(&mut a, "acquire j 0\r\n"));
    assert!(t2 > t1);
    drop(a);
    let (status, _) = d.terminate();
    assert!(status.success());
    let d = Daemon::start();
    let mut a = d.connect();
    let t3 = token(&ask(&mut a, "acquire k 0\r\n"));
    assert!(t3 > t2, "restarted daemon issued {t3} after {t2}");
}

// ---------------------------------------------------------------------------
// V2: semaphores
// ---------------------------------------------------------------------------

#[test]
fn semaphore_grants_fifo_with_disconnects() {
    let d = Daemon::start();
    let mut obs = d.connect();
    let mut holders: Vec<Client> = (0..3).map(|_| d.connect()).collect();
    for h in holders.iter_mut() {
        token(&ask(h, "acquire s 10000 3\r\n"));
    }
    let mut waiters: Vec<Client> = (0..4).map(|_| d.connect()).collect();
    for (i, w) in waiters.iter_mut().enumerate() {
        w.send("acquire s 10000 3\r\n");
        wait_info(&mut obs, "s", "waiters", &(i + 1).to_string());
    }
    let i = info(&mut obs, "s");
    assert_eq!((i["limit"].as_str(), i["holders"].as_str()), ("3", "3"));
    // The second waiter leaves: it never delays the others.
    drop(waiters.remove(1));
    wait_info(&mut obs, "s", "waiters", "3");
    // A slot frees by unlock: the first waiter, and only it, gets it.
    holders[0].call("unlock s\r\n", "u unlocked\r\n");
    token(&waiters[0].read_line());
    waiters[1].expect_silence(Duration::from_millis(30));
    // A slot frees by disconnect: the next in line.
    drop(holders.remove(1));
    token(&waiters[1].read_line());
    waiters[2].expect_silence(Duration::from_millis(30));
    // A holder that does not hold: e not owner; nothing moved.
    obs.call("unlock s\r\n", "e not owner\r\n");
    let i = info(&mut obs, "s");
    assert_eq!((i["holders"].as_str(), i["waiters"].as_str()), ("3", "1"));
    waiters[0].call("unlock s\r\n", "u unlocked\r\n");
    token(&waiters[2].read_line());
}

#[test]
fn limit_errors_change_nothing_and_limits_at_their_bounds() {
    let d = Daemon::start();
    let mut a = d.connect();
    let mut b = d.connect();
    token(&ask(&mut a, "acquire s 0 2\r\n"));
    let before = info(&mut b, "s");
    b.call("lock s 0\r\n", "e limit mismatch\r\n");
    b.call("acquire s 0\r\n", "e limit mismatch\r\n");
    b.call("acquire s 0 1\r\n", "e limit mismatch\r\n");
    b.call("acquire s 0 3\r\n", "e limit mismatch\r\n");
    b.call("acquire s 0 0\r\n", "e bad limit\r\n");
    b.call("acquire s 0 65536\r\n", "e bad limit\r\n");
    b.call("acquire s 0 99999999999\r\n", "e bad limit\r\n");
    // Bad limit comes before already locked and mismatch.
    a.call("acquire s 0 0\r\n", "e bad limit\r\n");
    a.call("acquire s 0 2\r\n", "e already locked\r\n");
    a.call("acquire s 0 3\r\n", "e limit mismatch\r\n");
    let after = info(&mut b, "s");
    assert_eq!(before.get("holders"), after.get("holders"));
    assert_eq!(before.get("token"), after.get("token"));
    assert_eq!(after["waiters"], "0");
    // The connection stays: the right N works.
    token(&ask(&mut b, "acquire s 0 2\r\n"));
    // N at 1 and at the maximum; 1 is the exclusive lock of `lock`.
    token(&ask(&mut a, "acquire one 0 1\r\n"));
    b.call("lock one 0\r\n", "t timeout\r\n");
    token(&ask(&mut a, "acquire max 0 65535\r\n"));
    token(&ask(&mut b, "acquire max 0 00065535\r\n"));
    assert_eq!(info(&mut a, "max")["limit"], "65535");
    // A key that is gone may come back with another N.
    a.call("unlock max\r\n", "u unlocked\r\n");
    b.call("unlock max\r\n", "u unlocked\r\n");
    token(&ask(&mut a, "acquire max 0 7\r\n"));
    assert_eq!(info(&mut a, "max")["limit"], "7");
}

// ---------------------------------------------------------------------------
// V3, V8: names and info
// ---------------------------------------------------------------------------

#[test]
fn info_shows_the_oldest_holder_its_peer_name_and_waiters() {
    let d = Daemon::start();
    let mut obs = d.connect();
    obs.call("info nothing\r\n", "i limit=0 holders=0 waiters=0\r\n");
    let mut a = d.connect();
    let peer = a.stream.local_addr().unwrap().to_string();
    a.call("name backup-job/host1:42\r\n", "o ok\r\n");
    let t = token(&ask(&mut a, "acquire backup 0 2\r\n"));
    let mut b = d.connect();
    b.call("name second\r\n", "o ok\r\n");
    token(&ask(&mut b, "acquire backup 0 2\r\n"));
    let mut w = d.connect();
    w.send("acquire backup 60000 2\r\n");
    wait_info(&mut obs, "backup", "waiters", "1");
    let line = ask(&mut obs, "info backup\r\n");
    let f = fields(&line, "i ");
    let names: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "limit", "holders", "waiters", "token", "held_ms", "peer", "name"
        ]
    );
    let f: BTreeMap<_, _> = f.into_iter().collect();
    assert_eq!(f["limit"], "2");
    assert_eq!(f["holders"], "2");
    assert_eq!(f["token"], t.to_string());
    assert_eq!(f["peer"], peer);
    assert_eq!(f["name"], "backup-job/host1:42");
    // held_ms counts up (the explicit wait is for the clock, not for order).
    let held0: u64 = f["held_ms"].parse().unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let held1: u64 = info(&mut obs, "backup")["held_ms"].parse().unwrap();
    assert!(held1 >= held0 + 30, "held_ms {held0} then {held1}");
    // Renamed: info shows the new name; the oldest holder leaves: the next.
    a.call("name renamed\r\n", "o ok\r\n");
    assert_eq!(info(&mut obs, "backup")["name"], "renamed");
    drop(a);
    token(&w.read_line());
    let f = info(&mut obs, "backup");
    assert_eq!(f["name"], "second");
    assert_eq!(f["token"], (t + 1).to_string());
    // A holder without a name: no name field.
    b.call("unlock backup\r\n", "u unlocked\r\n");
    assert!(!info(&mut obs, "backup").contains_key("name"));
}

#[test]
fn label_limits_0_1_64_65() {
    let d = Daemon::start();
    let mut obs = d.connect();
    let mut a = d.connect();
    a.call("name x\r\n", "o ok\r\n");
    let l64 = "L".repeat(64);
    a.call(&format!("name {l64}\r\n"), "o ok\r\n");
    a.call(
        &format!("name {}\r\n", "M".repeat(65)),
        "e name too long\r\n",
    );
    a.call(
        &format!("name {}\r\n", "M".repeat(5000)),
        "e name too long\r\n",
    );
    a.call("lock k 0\r\n", "l locked\r\n");
    assert_eq!(info(&mut obs, "k")["name"], l64, "the name did not change");
    // An empty label is a syntax error: earlier replies, then closed.
    a.send("unlock k\r\nname \r\n");
    a.expect("u unlocked\r\n");
    a.expect_closed();
}

// ---------------------------------------------------------------------------
// V9: stats
// ---------------------------------------------------------------------------

#[test]
fn stats_fields_move_as_documented() {
    let d = Daemon::start();
    let mut obs = d.connect();
    let s0 = stats(&mut obs);
    assert_eq!(s0["connections"], 1);
    assert_eq!(s0["accepted"], 1);
    let mut a = d.connect();
    let mut b = d.connect();
    a.call("lock k 0\r\n", "l locked\r\n");
    token(&ask(&mut a, "acquire s 0 2\r\n"));
    b.call("lock k 0\r\n", "t timeout\r\n");
    b.call("unlock k\r\n", "e not owner\r\n");
    b.send("acquire k 10000\r\n");
    wait_info(&mut obs, "k", "waiters", "1");
    let s1 = stats(&mut obs);
    assert_eq!(s1["connections"], 3);
    assert_eq!(s1["accepted"], 3);
    assert_eq!(s1["keys"], 2);
    assert_eq!(s1["holders"], 2);
    assert_eq!(s1["waiters"], 1);
    assert_eq!(s1["grants"] - s0["grants"], 2);
    assert_eq!(s1["timeouts"] - s0["timeouts"], 1);
    assert_eq!(s1["errors"] - s0["errors"], 1);
    assert!(s1["token"] > 0);
    a.call("unlock k\r\n", "u unlocked\r\n");
    token(&b.read_line());
    drop(a);
    let mut c = d.connect();
    c.send("lock\tk\r\n");
    c.expect_closed();
    let end = Instant::now() + PROMPT;
    let s2 = loop {
        let s = stats(&mut obs);
        if s["disconnects"] - s1["disconnects"] == 2 || Instant::now() > end {
            break s;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert_eq!(s2["disconnects"] - s1["disconnects"], 2, "{s2:?}");
    assert_eq!(s2["syntax_errors"] - s1["syntax_errors"], 1);
    assert_eq!(s2["unlocks"] - s1["unlocks"], 1);
    assert_eq!(s2["grants"] - s1["grants"], 1);
    assert_eq!(s2["keys"], 1, "a's semaphore slot went with it");
    assert_eq!(s2["token"], s1["token"] + 1);
    assert_eq!(
        (s2["evictions"], s2["auth_failures"], s2["rejected"]),
        (0, 0, 0)
    );
    assert!(s2["commands"] > s1["commands"]);
}

// ---------------------------------------------------------------------------
// V4: auth
// ---------------------------------------------------------------------------

#[test]
fn auth_required_first_then_the_right_secret_works() {
    let d = auth_daemon("s3cr+t/=", &[]);
    let mut a = d.connect();
    a.send("lock k 0\r\nlock j 0\r\n");
    a.expect("e auth required\r\n");
    a.expect_closed();
    let mut b = d.connect();
    b.send("stats\r\n");
    b.expect("e auth required\r\n");
    b.expect_closed();
    // A syntax error first is a syntax error: no reply, closed.
    let mut c = d.connect();
    c.send("lock\tk 0\r\n");
    c.expect_closed();
    let mut ok = authed(&d, "s3cr+t/=");
    ok.call("lock k 0\r\n", "l locked\r\n");
    // A second auth is checked again.
    ok.call("auth s3cr+t/=\r\n", "o ok\r\n");
    let s = stats(&mut ok);
    assert_eq!(s["auth_failures"], 2);
    assert_eq!(s["syntax_errors"], 1);
}

#[test]
fn wrong_secret_is_closed_after_the_delay_while_others_are_served() {
    let delay = Duration::from_millis(3000);
    let d = auth_daemon("right", &["--auth-delay-ms", "3000"]);
    let mut bad = d.connect();
    let start = Instant::now();
    bad.send("auth wrong\r\nlock k 0\r\n");
    // Meanwhile the loop serves everybody else at once.
    let mut good = authed(&d, "right");
    good.call("lock k 0\r\n", "l locked\r\n");
    good.call("unlock k\r\n", "u unlocked\r\n");
    let served = start.elapsed();
    if served < delay {
        bad.expect_silence((delay - served) / 4);
    }
    bad.stream.set_read_timeout(Some(delay + PROMPT)).unwrap();
    bad.expect("e auth failed\r\n");
    assert!(
        start.elapsed() >= delay,
        "e auth failed after {:?}, before the {delay:?} delay",
        start.elapsed()
    );
    // Its `lock` never ran.
    bad.expect_closed();
    good.call("lock k 0\r\n", "l locked\r\n");
    assert_eq!(stats(&mut good)["auth_failures"], 1);
}

#[test]
fn secret_limits_256_and_257() {
    let s256 = "S".repeat(256);
    let d = auth_daemon(&s256, &["--auth-delay-ms", "50"]);
    let mut a = authed(&d, &s256);
    a.call("lock k 0\r\n", "l locked\r\n");
    let mut b = d.connect();
    b.send(format!("auth {s256}S\r\n"));
    b.expect("e auth failed\r\n");
    b.expect_closed();
    // One byte: the shortest secret.
    let d1 = auth_daemon("x", &["--auth-delay-ms", "50"]);
    authed(&d1, "x").call("lock k 0\r\n", "l locked\r\n");
    let mut c = d1.connect();
    c.send("auth y\r\n");
    c.expect("e auth failed\r\n");
    c.expect_closed();
    // An empty secret is a syntax error.
    let mut e = d1.connect();
    e.send("auth \r\n");
    e.expect_closed();
}

#[test]
fn auth_file_missing_empty_or_invalid_refuses_to_start() {
    let run = |file: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dreadlock"))
            .args(["0", "--bind", "127.0.0.1", "--auth-file"])
            .arg(file)
            .output()
            .unwrap()
    };
    let missing = std::env::temp_dir().join("dreadlock-v2-no-such-secret-file");
    let empty = secret_file(b"", b"", 0o600);
    let newline_only = secret_file(b"", b"\n", 0o600);
    let bad_byte = secret_file(b"sec ret", b"\n", 0o600);
    let too_long = secret_file(&[b's'; 257], b"\n", 0o600);
    for file in [&missing, &empty, &newline_only, &bad_byte, &too_long] {
        let out = run(file);
        assert_eq!(out.status.code(), Some(2), "{}", file.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--auth-file"), "{err}");
        assert!(!err.contains("listening on"), "{err}");
        let _ = std::fs::remove_file(file);
    }
    // Readable by others: a warning, and it runs. CRLF is stripped too.
    let open = secret_file(b"pw", b"\r\n", 0o644);
    let d = Daemon::start_with(&["--auth-file", open.to_str().unwrap()]);
    let _ = std::fs::remove_file(&open);
    d.wait_stderr("readable by other users");
    authed(&d, "pw").call("lock k 0\r\n", "l locked\r\n");
}

#[test]
fn auth_without_auth_file_is_not_enabled() {
    let d = Daemon::start();
    let mut a = d.connect();
    a.call("auth anything\r\n", "e auth not enabled\r\n");
    a.call("lock k 0\r\n", "l locked\r\n");
}

// ---------------------------------------------------------------------------
// V5: evict
// ---------------------------------------------------------------------------

#[test]
fn evict_closes_the_holders_and_grants_the_next_waiter() {
    let d = Daemon::start();
    let mut obs = d.connect();
    let mut holder = d.connect();
    holder.call(
        "lock backup 0\r\nlock other 0\r\n",
        "l locked\r\nl locked\r\n",
    );
    let mut waiter = d.connect();
    waiter.send("lock backup 60000\r\n");
    wait_info(&mut obs, "backup", "waiters", "1");
    let mut other_waiter = d.connect();
    other_waiter.send("lock other 60000\r\n");
    wait_info(&mut obs, "other", "waiters", "1");
    // From loopback with auth off: allowed.
    obs.call("evict backup\r\n", "o evicted 1\r\n");
    holder.expect_closed();
    waiter.expect("l locked\r\n");
    // All of the evicted connection's locks went, not only the key.
    other_waiter.expect("l locked\r\n");
    obs.call("evict nothing\r\n", "o evicted 0\r\n");
    let s = stats(&mut obs);
    assert_eq!(s["evictions"], 1);
    // An evictor that holds the key is closed too, after its reply.
    waiter.send("evict backup\r\nlock zz 0\r\n");
    waiter.expect("o evicted 1\r\n");
    waiter.expect_closed();
}

#[test]
fn evict_with_auth_on_is_allowed_to_authenticated_connections() {
    let d = auth_daemon("pw", &[]);
    let mut a = authed(&d, "pw");
    let t = token(&ask(&mut a, "acquire s 0 2\r\n"));
    let mut b = authed(&d, "pw");
    token(&ask(&mut b, "acquire s 0 2\r\n"));
    let mut op = authed(&d, "pw");
    op.call("evict s\r\n", "o evicted 2\r\n");
    a.expect_closed();
    b.expect_closed();
    assert!(token(&ask(&mut op, "acquire s 0 3\r\n")) > t + 1);
    // Not authenticated: evict is a first command like any other.
    let mut c = d.connect();
    c.send("evict s\r\n");
    c.expect("e auth required\r\n");
    c.expect_closed();
}

// ---------------------------------------------------------------------------
// V7, rule 4, rule 6: grammar of the new words
// ---------------------------------------------------------------------------

#[test]
fn malformed_new_commands_are_syntax_errors() {
    let d = Daemon::start();
    let mut obs = d.connect();
    for bad in [
        "acquire z\r\n",
        "acquire z 1 2 3\r\n",
        "acquire z 1 -2\r\n",
        "acquire z x\r\n",
        "info\r\n",
        "info a b\r\n",
        "stats x\r\n",
        "statsx\r\n",
        "name\r\n",
        "name a b\r\n",
        "name a+b\r\n",
        "auth\r\n",
        "auth a:b\r\n",
        "evict\r\n",
        "evict a 1\r\n",
        "acquir z 1\r\n",
        "info a\n",
    ] {
        let mut c = d.connect();
        // Earlier replies are sent, later commands never run.
        c.send(format!("lock held 0\r\n{bad}lock later 0\r\n"));
        c.expect("l locked\r\n");
        c.expect_closed();
        // The lock it held was released.
        obs.call("lock held 0\r\n", "l locked\r\n");
        obs.call("unlock held\r\n", "u unlocked\r\n");
        obs.call("info later\r\n", "i limit=0 holders=0 waiters=0\r\n");
    }
    d.wait_stderr("syntax error from client 127.0.0.1:");
}

#[test]
fn new_commands_behind_a_waiting_lock_run_after_it() {
    let d = Daemon::start();
    let mut holder = d.connect();
    holder.call("lock k 0\r\n", "l locked\r\n");
    let mut w = d.connect();
    w.send("lock k 60000\r\ninfo k\r\nname late\r\nstats\r\n");
    w.expect_silence(Duration::from_millis(50));
    holder.call("unlock k\r\n", "u unlocked\r\n");
    w.expect("l locked\r\n");
    let i = fields(&w.read_line(), "i ");
    assert_eq!(i[1], ("holders".to_string(), "1".to_string()));
    w.expect("o ok\r\n");
    assert!(w.read_line().starts_with("s version="));
}

// ---------------------------------------------------------------------------
// Version 1 unchanged; --allow
// ---------------------------------------------------------------------------

#[test]
fn every_version_1_reply_is_byte_identical() {
    let d = Daemon::start();
    let mut a = d.connect();
    let mut b = d.connect();
    let mut all = Vec::new();
    a.send("lock k 100\r\nlock k 100\r\nunlock nokey\r\n");
    b.send("unlock k\r\nlock k 50\r\n");
    for _ in 0..3 {
        all.push(a.read_line());
    }
    for _ in 0..2 {
        all.push(b.read_line());
    }
    a.send("unlock k\r\nunlock k\r\nLOCK Key 0\r\nUnLoCk Key   \r\n");
    for _ in 0..4 {
        all.push(a.read_line());
    }
    assert_eq!(
        all.concat(),
        "l locked\r\ne already locked\r\ne not locked\r\ne not owner\r\nt timeout\r\n\
         u unlocked\r\ne not locked\r\nl locked\r\nu unlocked\r\n"
    );
}

#[test]
fn allow_closes_other_peers_at_accept_and_counts_them() {
    let d = Daemon::start_with(&["--allow", "127.0.0.2/32", "--allow", "::1"]);
    // 127.0.0.1 is not in the list: closed before any byte.
    let mut no = d.connect();
    no.send("lock k 0\r\n");
    no.expect_closed();
    // From 127.0.0.2 (a loopback address too): served.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&std::net::SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .unwrap();
    sock.connect_timeout(&d.addr.into(), PROMPT).unwrap();
    let stream: std::net::TcpStream = sock.into();
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    let mut yes = Client { stream };
    yes.call("lock k 0\r\n", "l locked\r\n");
    let s = stats(&mut yes);
    assert_eq!((s["rejected"], s["accepted"]), (1, 1));
}
