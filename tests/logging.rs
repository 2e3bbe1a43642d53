//! Logging over real processes: the line format, the journal's format, a
//! stderr nobody reads (the daemon must keep serving), and the rate
//! limiter's count reported when a flood ends.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use common::{Client, Daemon, PROMPT};

/// Whether `line` is `YYYY-MM-DDTHH:MM:SS.mmmZ LEVEL message`.
fn is_stamped(line: &str) -> bool {
    let b = line.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    let level = line.get(25..).is_some_and(|rest| {
        ["ERROR ", "WARN ", "INFO ", "DEBUG "]
            .iter()
            .any(|l| rest.starts_with(l))
    });
    b.len() > 25
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
        && b[24] == b' '
        && level
}

/// Connects and sends a syntax error; the daemon drops the connection.
fn syntax_error(addr: SocketAddr) {
    let mut c = Client::connect(addr);
    c.send("bogus\r\n").expect_closed();
}

#[test]
fn every_line_has_a_utc_timestamp_and_a_level() {
    let d = Daemon::start_with(&["-v"]);
    syntax_error(d.addr);
    d.connect().call("lock a 0\r\n", "l locked\r\n");
    let (_, err) = d.terminate();
    assert!(err.lines().count() >= 5, "{err}");
    for line in err.lines() {
        assert!(is_stamped(line), "{line:?}");
    }
    assert!(
        err.contains(" WARN syntax error from client 127.0.0.1:"),
        "{err}"
    );
    assert!(err.contains(" DEBUG connection from 127.0.0.1:"), "{err}");
    let t = err.get(..23).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The year of the stamp is this year (UTC): a coarse end-to-end check
    // of the calendar (the unit tests check it to the millisecond).
    let year: u64 = t[..4].parse().unwrap();
    let approx_year = 1970 + now / 31_556_952;
    assert!(year.abs_diff(approx_year) <= 1, "{t} vs {approx_year}");
}

/// Runs the daemon with stderr a Unix stream socket, as the journal
/// gives a service, with `JOURNAL_STREAM` naming `journal_stream` (or the
/// socket itself when `None`); returns its first lines.
fn run_with_stderr_socket(journal_stream: Option<&str>) -> String {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let meta = std::fs::metadata(format!("/proc/self/fd/{}", theirs.as_raw_fd())).unwrap();
    let id = format!("{}:{}", meta.dev(), meta.ino());
    let mut child = Command::new(env!("CARGO_BIN_EXE_dreadlock"))
        .args(["0", "--bind", "127.0.0.1"])
        .env("JOURNAL_STREAM", journal_stream.unwrap_or(&id))
        .stdin(Stdio::null())
        .stderr(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .spawn()
        .unwrap();
    ours.set_read_timeout(Some(PROMPT)).unwrap();
    let mut lines = BufReader::new(ours);
    let mut first = String::new();
    lines.read_line(&mut first).expect("a startup line");
    let _ = child.kill();
    let _ = child.wait();
    first
}

#[test]
fn on_the_journal_lines_carry_a_syslog_priority_and_no_timestamp() {
    let line = run_with_stderr_socket(None);
    assert!(line.starts_with("<6>INFO dreadlock "), "{line:?}");
    assert!(line.contains(" listening on 127.0.0.1:"), "{line:?}");
    // JOURNAL_STREAM inherited but naming another file: plain lines.
    let line = run_with_stderr_socket(Some("1:1"));
    assert!(is_stamped(&line), "{line:?}");
}

/// The daemon with `-v` and the admin endpoint, stderr a pipe that this
/// test stops reading after the startup lines.
struct Stalled {
    child: Child,
    lock: SocketAddr,
    admin: SocketAddr,
    stderr: BufReader<std::process::ChildStderr>,
}

fn start_stalled() -> Stalled {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dreadlock"))
        .args(["0", "--bind", "127.0.0.1", "-v", "--metrics", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let (mut lock, mut admin) = (None, None);
    let mut line = String::new();
    while lock.is_none() {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "no startup line");
        let after = |marker: &str| {
            line.split(marker)
                .nth(1)
                .and_then(|r| r.split(['/', ' ']).next())
                .map(|a| a.parse::<SocketAddr>().unwrap())
        };
        admin = admin.or(after("admin endpoint on http://"));
        lock = after("listening on ");
    }
    Stalled {
        child,
        lock: lock.unwrap(),
        admin: admin.expect("admin line before the listening line"),
        stderr,
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Regression: with stderr a pipe nobody reads, log writes used to block
/// the event loop once the pipe filled, and no client was served. Now
/// lines are dropped, counted, and reported once stderr drains.
#[test]
fn a_stderr_nobody_reads_does_not_stop_the_daemon() {
    let mut d = start_stalled();
    // Each bad connection logs a line or two ("connection from", and a
    // rate-limited warning): 2,500 of them are far more than the pipe
    // (64 KiB) and the log queue (1,024 lines) hold together.
    for _ in 0..2_500 {
        syntax_error(d.lock);
    }
    // Still served. (Before the fix, the loop was blocked in write(2) by
    // now, and the syntax errors above timed out.)
    let mut c = Client::connect(d.lock);
    c.call("lock a 0\r\n", "l locked\r\n");
    c.call("unlock a\r\n", "u unlocked\r\n");

    // The drops are counted in the metrics...
    let metrics = {
        let mut s = std::net::TcpStream::connect(d.admin).unwrap();
        std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        s.set_read_timeout(Some(PROMPT)).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dreadlock_log_lines_dropped_total "))
        .and_then(|v| v.parse().ok())
        .expect("dreadlock_log_lines_dropped_total");
    assert!(dropped > 0, "no line dropped");

    // ...and once stderr is read again, a line says how many went.
    let end = Instant::now() + PROMPT;
    let mut line = String::new();
    loop {
        assert!(Instant::now() < end, "no 'log lines dropped' line");
        line.clear();
        assert!(d.stderr.read_line(&mut line).unwrap() > 0, "stderr closed");
        if line.contains("log lines dropped: stderr was not keeping up") {
            break;
        }
    }
    assert!(line.contains(" WARN "), "{line}");
    let n: u64 = line
        .split(" WARN ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(n > 0 && n <= dropped, "reported {n}, counted {dropped}");
    // The daemon has been serving throughout.
    c.call("lock a 0\r\n", "l locked\r\n");
    assert!(d.child.try_wait().unwrap().is_none());
}

/// Regression: the "N similar warnings suppressed" count used to come out
/// only when a later warning arrived; now when the flood's window ends.
#[test]
fn the_suppressed_count_is_reported_when_the_flood_ends() {
    let d = Daemon::start();
    // More than the 50 warnings a second let through, then silence.
    for _ in 0..200 {
        syntax_error(d.addr);
    }
    let err = d.wait_stderr("similar warnings suppressed");
    let suppressed: u64 = err
        .lines()
        .filter_map(|l| l.split(" WARN ").nth(1))
        .filter_map(|r| r.strip_suffix(" similar warnings suppressed"))
        .map(|n| n.parse::<u64>().unwrap())
        .sum();
    let printed = err.matches("syntax error from client").count() as u64;
    assert_eq!(printed + suppressed, 200, "{err}");
    // And at shutdown nothing is left uncounted.
    let (_, err) = d.terminate();
    assert!(err.contains("stopped after"), "{err}");
}

#[test]
fn sigusr1_logs_the_stats_line() {
    let d = Daemon::start();
    let mut c = d.connect();
    c.call("lock a 0\r\n", "l locked\r\n");
    let pid = d.pid().to_string();
    std::process::Command::new("kill")
        .args(["-USR1", &pid])
        .status()
        .unwrap();
    let err = d.wait_stderr(" INFO stats version=");
    let line = err.lines().find(|l| l.contains(" INFO stats ")).unwrap();
    let fields: Vec<&str> = line
        .split(" INFO stats ")
        .nth(1)
        .unwrap()
        .split(' ')
        .map(|kv| kv.split_once('=').expect("name=value").0)
        .collect();
    assert_eq!(fields, dreadlock::wire::STATS_FIELDS, "{line}");
    assert!(
        line.contains(" connections=1 keys=1 holders=1 waiters=0 "),
        "{line}"
    );
    assert!(line.contains(" accepted=1 "), "{line}");
    // The daemon carries on.
    c.call("unlock a\r\n", "u unlocked\r\n");
}

/// At shutdown the count of the last rate-limit window still comes out:
/// every warning is either printed or counted.
#[test]
fn no_warning_goes_uncounted_at_shutdown() {
    let d = Daemon::start();
    for _ in 0..200 {
        syntax_error(d.addr);
    }
    // Usually well within the one-second window, so the count comes out
    // at shutdown rather than at the window's end.
    let (status, err) = d.terminate();
    assert!(status.success());
    let suppressed: u64 = err
        .lines()
        .filter_map(|l| l.split(" WARN ").nth(1))
        .filter_map(|r| r.strip_suffix(" similar warnings suppressed"))
        .map(|n| n.parse::<u64>().unwrap())
        .sum();
    let printed = err.matches("syntax error from client").count() as u64;
    assert_eq!(printed + suppressed, 200, "{err}");
    let report = err.find("similar warnings suppressed").unwrap();
    assert!(report < err.find("stopped after").unwrap(), "{err}");
}
