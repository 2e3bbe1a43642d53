//! Every daemon flag at 0, 1 and its maximum: a value is either refused at
//! start, with a message naming the flag and its range, or it works (the
//! daemon starts and serves a lock). And every flag can come from its
//! `DREADLOCK_*` environment variable.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, PROMPT, daemon_bin};

/// Starts the daemon with `args` and checks that it serves a client.
fn works(args: &[&str]) {
    let d = Daemon::start_with(args);
    let mut c = d.connect();
    c.call("lock a 0\r\nunlock a\r\n", "l locked\r\nu unlocked\r\n");
    let (status, err) = d.terminate();
    assert!(status.success(), "{args:?}: {status:?}\n{err}");
}

/// Runs the daemon with `args`, which it must refuse at once; returns its
/// stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut child = Command::new(daemon_bin())
        .args(["0", "--bind", "127.0.0.1"])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dreadlock");
    let end = Instant::now() + PROMPT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} {env:?}: the daemon started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(2), "{args:?} {env:?}: {err}");
    err
}

/// `flag` refuses `value`, and says which flag and what range.
fn refuses(flag: &str, value: &str, range: &str) {
    let err = refused(&[flag, value], &[]);
    assert!(
        err.contains(flag) && err.contains(range),
        "{flag} {value}: the message names no flag or range: {err}"
    );
}

#[test]
fn max_connections() {
    refuses("--max-connections", "0", "1..=4294967295");
    works(&["--max-connections", "1"]);
    works(&["--max-connections", "4294967295"]);
    refuses("--max-connections", "4294967296", "1..=4294967295");
}

#[test]
fn max_line_bytes() {
    refuses("--max-line-bytes", "0", "16..=1048576");
    refuses("--max-line-bytes", "1", "16..=1048576");
    works(&["--max-line-bytes", "16"]);
    works(&["--max-line-bytes", "1048576"]);
    refuses("--max-line-bytes", "1048577", "16..=1048576");
}

#[test]
fn max_pending_bytes() {
    works(&["--max-pending-bytes", "0"]);
    works(&["--max-pending-bytes", "1"]);
    works(&["--max-pending-bytes", "1073741824"]);
    refuses("--max-pending-bytes", "1073741825", "0..=1073741824");
}

#[test]
fn max_locks_per_connection() {
    refuses("--max-locks-per-connection", "0", "1..=16777216");
    works(&["--max-locks-per-connection", "1"]);
    works(&["--max-locks-per-connection", "16777216"]);
    refuses("--max-locks-per-connection", "16777217", "1..=16777216");
}

#[test]
fn max_key_bytes() {
    refuses("--max-key-bytes", "0", "129..=1099511627776");
    refuses("--max-key-bytes", "1", "129..=1099511627776");
    // The smallest table holds one one-byte key.
    works(&["--max-key-bytes", "129"]);
    works(&["--max-key-bytes", "1099511627776"]);
    refuses("--max-key-bytes", "1099511627777", "129..=1099511627776");
}

/// Regression: `--max-output-bytes 0` used to pause reading every
/// connection for good, so the daemon answered nobody. Zero now means "the
/// next commands are read once every reply is sent".
#[test]
fn max_output_bytes() {
    works(&["--max-output-bytes", "0"]);
    let d = Daemon::start_with(&["--max-output-bytes", "0"]);
    let mut c = d.connect();
    let batch = "lock o 0\r\nunlock o\r\n".repeat(1000);
    c.send(&batch);
    c.expect(&"l locked\r\nu unlocked\r\n".repeat(1000));
    works(&["--max-output-bytes", "1"]);
    works(&["--max-output-bytes", "1073741824"]);
    refuses("--max-output-bytes", "1073741825", "0..=1073741824");
}

#[test]
fn backlog() {
    refuses("--backlog", "0", "1..=2147483647");
    works(&["--backlog", "1"]);
    works(&["--backlog", "2147483647"]);
    refuses("--backlog", "2147483648", "1..=2147483647");
}

/// Regression: `--keepalive 40000` used to fail with "cannot listen on
/// ...: Invalid argument", naming no flag (Linux caps TCP_KEEPIDLE).
#[test]
fn keepalive() {
    works(&["--keepalive", "0"]);
    works(&["--keepalive", "1"]);
    works(&["--keepalive", "32767"]);
    refuses("--keepalive", "32768", "0..=32767");
    refuses("--keepalive", "40000", "0..=32767");
}

#[test]
fn busy_poll_us() {
    works(&["--busy-poll-us", "0"]);
    works(&["--busy-poll-us", "1"]);
    works(&["--busy-poll-us", "10000"]);
    refuses("--busy-poll-us", "10001", "0..=10000");
}

#[test]
fn auth_delay_ms() {
    // The delay only matters with --auth-file, but its range is checked
    // either way. 0 and 1 are under the 50 ms floor.
    refuses("--auth-delay-ms", "0", "50..=60000");
    refuses("--auth-delay-ms", "1", "50..=60000");
    works(&["--auth-delay-ms", "50"]);
    works(&["--auth-delay-ms", "60000"]);
    refuses("--auth-delay-ms", "60001", "50..=60000");
}

#[test]
fn port_and_bind() {
    // Port 0 (a free port) is what every test uses; 1 and 65535 need a
    // free privileged port or may be taken, so only their parsing is
    // checked: 65536 is refused, naming the argument.
    let err = refused(&["65536"], &[]);
    assert!(err.contains("PORT") && err.contains("65536"), "{err}");
    let err = refused(&["--bind", "not-an-address"], &[]);
    assert!(err.contains("--bind"), "{err}");
}

#[test]
fn environment_sets_flags_and_the_command_line_wins() {
    // DREADLOCK_PORT and DREADLOCK_BIND instead of the arguments.
    let mut cmd = Command::new(daemon_bin());
    cmd.env("DREADLOCK_PORT", "0")
        .env("DREADLOCK_BIND", "127.0.0.1")
        .env("DREADLOCK_MAX_LINE_BYTES", "16");
    let d = Daemon::spawn(cmd);
    assert!(d.addr.ip().is_loopback(), "{}", d.addr);
    // The 16-byte line limit from the environment is in force.
    let mut c = d.connect();
    c.call("lock a 0\r\n", "l locked\r\n");
    c.send("lock abcdefghij 0\r\n");
    c.expect_closed();
    drop(d);
    // A bad value from the environment is refused like one on the
    // command line, naming the flag.
    let err = refused(&[], &[("DREADLOCK_KEEPALIVE", "40000")]);
    assert!(
        err.contains("--keepalive") && err.contains("0..=32767"),
        "{err}"
    );
    // The command line wins over the environment.
    let mut cmd = Command::new(daemon_bin());
    cmd.args(["0", "--bind", "127.0.0.1", "--max-line-bytes", "10000"])
        .env("DREADLOCK_MAX_LINE_BYTES", "16");
    let d = Daemon::spawn(cmd);
    let mut c = d.connect();
    c.call("lock abcdefghij 0\r\n", "l locked\r\n");
}

#[test]
fn help_names_every_environment_variable() {
    let out = Command::new(daemon_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for var in [
        "DREADLOCK_PORT",
        "DREADLOCK_BIND",
        "DREADLOCK_MAX_CONNECTIONS",
        "DREADLOCK_MAX_LINE_BYTES",
        "DREADLOCK_MAX_PENDING_BYTES",
        "DREADLOCK_MAX_LOCKS_PER_CONNECTION",
        "DREADLOCK_MAX_KEY_BYTES",
        "DREADLOCK_MAX_OUTPUT_BYTES",
        "DREADLOCK_BACKLOG",
        "DREADLOCK_KEEPALIVE",
        "DREADLOCK_BUSY_POLL_US",
        "DREADLOCK_VERBOSE",
        "DREADLOCK_QUIET",
        "DREADLOCK_METRICS",
        "DREADLOCK_AUTH_FILE",
        "DREADLOCK_AUTH_DELAY_MS",
        "DREADLOCK_ALLOW",
    ] {
        assert!(help.contains(var), "--help lacks {var}:\n{help}");
    }
}
