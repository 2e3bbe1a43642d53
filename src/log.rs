//! Logging to stderr that never blocks the event loop, with a timestamp and
//! a level on every line, and a rate limit on the warnings clients can
//! trigger (syntax errors, accept failures), so a flood of bad clients
//! cannot turn the daemon into a stderr writer.
//!
//! # Never blocking
//!
//! A line is formatted on the loop thread and handed to a bounded queue
//! ([`QUEUE_LINES`] lines of at most [`MAX_LINE_BYTES`] bytes each, so at
//! most 4 MiB); one writer thread drains the queue into stderr with ordinary
//! blocking writes. When stderr stalls (a pipe nobody reads, a wedged log
//! shipper), the writer blocks, the queue fills, and further lines are
//! dropped and counted: the loop only ever takes a mutex that no one holds
//! across I/O. Once the writer catches up it writes one line saying how many
//! were dropped, and [`lines_dropped`] feeds the
//! `dreadlock_log_lines_dropped_total` metric.
//!
//! Why a thread rather than `O_NONBLOCK` on fd 2: the flag belongs to the
//! open file description, which stderr shares with whoever else holds it
//! (the terminal, the shell, the service manager's stream), so setting it
//! would make *their* writes fail with `EAGAIN`; and a non-blocking writer
//! still needs a queue for partial lines. The thread keeps the descriptor
//! untouched and the queue gives the bound.
//!
//! # Format
//!
//! ```text
//! 2026-12-02T06:28:00.123Z INFO dreadlock 0.1.0 listening on 0.0.0.0:6001 ...
//! 2026-12-02T06:28:05.456Z WARN syntax error from client 10.0.0.7:50312: ...
//! ```
//!
//! When stderr is the systemd journal (`JOURNAL_STREAM` names stderr's
//! device and inode), the journal stamps each line itself, so the timestamp
//! is dropped and a syslog priority prefix (`<3>` error, `<4>` warning,
//! `<6>` info, `<7>` debug) tells it the level:
//!
//! ```text
//! <4>WARN syntax error from client 10.0.0.7:50312: ...
//! ```

#![warn(missing_docs)]

use std::collections::VecDeque;
use std::fmt::{Arguments, Write as _};
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// How chatty the daemon is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Errors only.
    Quiet,
    /// Startup, warnings, shutdown summary (the default).
    Info,
    /// Every connection and disconnection too.
    Debug,
}

/// The severity of one line, with its syslog priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// Something failed (`<3>`).
    Error,
    /// Something is wrong, and the daemon carries on (`<4>`).
    Warning,
    /// Startup, shutdown, and other news (`<6>`).
    Info,
    /// Per-connection detail, only with `-v` (`<7>`).
    Debug,
}

impl Priority {
    /// The syslog priority number (RFC 5424 severity).
    pub const fn syslog(self) -> u8 {
        match self {
            Priority::Error => 3,
            Priority::Warning => 4,
            Priority::Info => 6,
            Priority::Debug => 7,
        }
    }

    /// The level word on each line.
    pub const fn word(self) -> &'static str {
        match self {
            Priority::Error => "ERROR",
            Priority::Warning => "WARN",
            Priority::Info => "INFO",
            Priority::Debug => "DEBUG",
        }
    }
}

/// How lines look: for a terminal or file, or for the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// `2026-12-02T06:28:00.123Z WARN message`.
    Plain,
    /// `<4>WARN message` (the journal adds its own timestamp).
    Journal,
}

/// Lines the queue holds before new ones are dropped. A line is at most
/// [`MAX_LINE_BYTES`], so the queue holds at most 4 MiB.
pub const QUEUE_LINES: usize = 1024;

/// Longest line kept, newline included; longer ones are cut (at a character
/// boundary) and end in `...`.
pub const MAX_LINE_BYTES: usize = 4096;

/// Client-triggered warnings printed per window; the rest are counted and
/// reported as one line when the window ends.
const WARNINGS_PER_WINDOW: u32 = 50;
const WINDOW: Duration = Duration::from_secs(1);

/// A handle for logging at a verbosity, with its own warning rate limit.
/// Every `Log` writes into the one process-wide queue.
pub struct Log {
    level: Level,
    window_start: Option<Instant>,
    in_window: u32,
    /// Warnings not printed in the current window.
    /// INVARIANT: zero unless `window_start` is `Some`.
    suppressed: u64,
}

impl Log {
    /// A handle that logs at `level`.
    pub fn new(level: Level) -> Self {
        Log {
            level,
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// An error: always logged, even with `--quiet`.
    pub fn error(&self, args: Arguments<'_>) {
        emit(Priority::Error, args);
    }

    /// A warning the daemon itself causes (not rate limited).
    pub fn warn(&self, args: Arguments<'_>) {
        if self.level >= Level::Info {
            emit(Priority::Warning, args);
        }
    }

    /// News: startup, shutdown, signals.
    pub fn info(&self, args: Arguments<'_>) {
        if self.level >= Level::Info {
            emit(Priority::Info, args);
        }
    }

    /// Detail, only with `-v`.
    pub fn debug(&self, args: Arguments<'_>) {
        if self.level >= Level::Debug {
            emit(Priority::Debug, args);
        }
    }

    /// A warning a client can cause: at most `WARNINGS_PER_WINDOW` a second;
    /// the others are counted and reported when the window ends (see
    /// [`Log::handle_timeout`]).
    pub fn warn_limited(&mut self, args: Arguments<'_>) {
        if self.level < Level::Info {
            return;
        }
        let now = Instant::now();
        self.handle_timeout(now);
        if self.window_start.is_none() {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < WARNINGS_PER_WINDOW {
            self.in_window += 1;
            emit(Priority::Warning, args);
        } else {
            self.suppressed += 1;
        }
    }

    /// When [`Log::handle_timeout`] has a suppressed count to report: the
    /// end of the current window, if any warning was suppressed in it.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.window_start {
            Some(start) if self.suppressed > 0 => Some(start + WINDOW),
            _ => None,
        }
    }

    /// Ends the rate-limit window if it is over at `now`, reporting how
    /// many warnings it suppressed. The loop calls it every iteration, and
    /// wakes for [`Log::poll_timeout`], so the count comes out when a flood
    /// ends, not only when a later warning arrives.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self
            .window_start
            .is_some_and(|s| now.duration_since(s) >= WINDOW)
        {
            self.report_suppressed();
            self.window_start = None;
            self.in_window = 0;
        }
    }

    fn report_suppressed(&mut self) {
        if self.suppressed > 0 {
            emit(
                Priority::Warning,
                format_args!("{} similar warnings suppressed", self.suppressed),
            );
            self.suppressed = 0;
        }
    }
}

impl Drop for Log {
    /// At shutdown the count of the last window still comes out.
    fn drop(&mut self) {
        self.report_suppressed();
    }
}

/// Lines dropped so far because the queue was full (stderr not keeping up).
pub fn lines_dropped() -> u64 {
    sink().dropped_total.load(Ordering::Relaxed)
}

/// Waits up to `timeout` for every queued line to be written; returns
/// whether it was. Call before the process exits (a wedged stderr cannot
/// hold the exit for longer than `timeout`).
pub fn flush(timeout: Duration) -> bool {
    let sink = sink();
    let end = Instant::now() + timeout;
    let mut q = sink.lock();
    while !q.lines.is_empty() || q.writing || q.dropped_unreported > 0 {
        if !q.writer_running {
            return false;
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        q = match sink.idle.wait_timeout(q, left) {
            Ok((q, _)) => q,
            Err(poisoned) => poisoned.into_inner().0,
        };
    }
    true
}

/// Formats and queues one line; never blocks on I/O.
fn emit(priority: Priority, args: Arguments<'_>) {
    if cfg!(test) {
        // Unit tests exercise the limiter; the writer thread's output would
        // bypass the test harness's capture.
        return;
    }
    let sink = sink();
    let mut line = String::with_capacity(128);
    format_line(&mut line, sink.style, priority, SystemTime::now(), args);
    sink.push(line);
}

/// Formats one line, newline included, in `style`, cut to
/// [`MAX_LINE_BYTES`].
pub fn format_line(
    out: &mut String,
    style: Style,
    priority: Priority,
    now: SystemTime,
    args: Arguments<'_>,
) {
    match style {
        Style::Plain => {
            write_rfc3339_ms(out, now);
            out.push(' ');
        }
        Style::Journal => {
            let _ = write!(out, "<{}>", priority.syslog());
        }
    }
    out.push_str(priority.word());
    out.push(' ');
    let _ = out.write_fmt(args);
    // One record is one line: a newline inside a message (a peer's bytes
    // never get here, but an OS error string might) would split it.
    if out.contains('\n') {
        *out = out.replace('\n', " ");
    }
    if out.len() > MAX_LINE_BYTES - 1 {
        let mut cut = MAX_LINE_BYTES - 4;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out.push('\n');
}

/// Writes `t` as an RFC 3339 UTC timestamp with milliseconds, e.g.
/// `2026-12-02T06:28:00.123Z`. Times before 1970 print as the epoch.
pub fn write_rfc3339_ms(out: &mut String, t: SystemTime) {
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let (y, m, d) = civil_from_days(secs / 86_400);
    let s = secs % 86_400;
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        since.subsec_millis()
    );
}

/// The proleptic Gregorian date of `days` since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Whether `journal_stream` (the value of `JOURNAL_STREAM`, `DEVICE:INODE`
/// in decimal) names the file with device `dev` and inode `ino`.
pub fn is_journal_stream(journal_stream: Option<&str>, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

/// The style for this process's stderr: the journal's if `JOURNAL_STREAM`
/// names it (systemd sets it for services whose stderr is the journal; a
/// child that inherited the variable but not the stream gets plain lines).
fn detect_style() -> Style {
    use std::os::unix::fs::MetadataExt;
    let var = std::env::var("JOURNAL_STREAM").ok();
    if var.is_none() {
        return Style::Plain;
    }
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) if is_journal_stream(var.as_deref(), m.dev(), m.ino()) => Style::Journal,
        _ => Style::Plain,
    }
}

struct Queue {
    /// INVARIANT: at most `QUEUE_LINES` lines.
    lines: VecDeque<String>,
    /// The writer holds a batch it has not finished writing.
    writing: bool,
    /// Dropped since the writer last reported it.
    dropped_unreported: u64,
    /// False if the writer thread could not be started (lines are then
    /// written by the caller: better blocking than silent at startup).
    writer_running: bool,
}

struct Sink {
    style: Style,
    queue: Mutex<Queue>,
    /// Signalled when a line is queued.
    nonempty: Condvar,
    /// Signalled when the writer has written everything.
    idle: Condvar,
    dropped_total: AtomicU64,
}

fn sink() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| {
        let started = std::thread::Builder::new()
            .name("dreadlock-log".into())
            .spawn(|| sink().write_forever())
            .is_ok();
        Sink {
            style: detect_style(),
            queue: Mutex::new(Queue {
                lines: VecDeque::with_capacity(64),
                writing: false,
                dropped_unreported: 0,
                writer_running: started,
            }),
            nonempty: Condvar::new(),
            idle: Condvar::new(),
            dropped_total: AtomicU64::new(0),
        }
    })
}

impl Sink {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves the queue consistent (every
        // mutation is a single push or swap), so poisoning is ignored.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, line: String) {
        let mut q = self.lock();
        if !q.writer_running {
            drop(q);
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
            return;
        }
        if q.lines.len() >= QUEUE_LINES {
            q.dropped_unreported += 1;
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.lines.push_back(line);
        drop(q);
        self.nonempty.notify_one();
    }

    /// The writer thread: takes everything queued, writes it with the lock
    /// released, then reports drops once it has caught up.
    fn write_forever(&self) {
        let mut batch = VecDeque::new();
        let mut bytes = Vec::new();
        loop {
            let dropped = {
                let mut q = self.lock();
                q.writing = false;
                if q.lines.is_empty() && q.dropped_unreported == 0 {
                    self.idle.notify_all();
                }
                while q.lines.is_empty() && q.dropped_unreported == 0 {
                    q = self.nonempty.wait(q).unwrap_or_else(|p| p.into_inner());
                }
                q.writing = true;
                std::mem::swap(&mut batch, &mut q.lines);
                // Drops are reported after the lines queued before them,
                // once the queue is empty again.
                if q.lines.is_empty() {
                    std::mem::take(&mut q.dropped_unreported)
                } else {
                    0
                }
            };
            bytes.clear();
            for line in batch.drain(..) {
                bytes.extend_from_slice(line.as_bytes());
            }
            if dropped > 0 {
                let mut line = String::new();
                format_line(
                    &mut line,
                    self.style,
                    Priority::Warning,
                    SystemTime::now(),
                    format_args!("{dropped} log lines dropped: stderr was not keeping up"),
                );
                bytes.extend_from_slice(line.as_bytes());
            }
            // A failed write to stderr is not worth dying for.
            let _ = std::io::stderr().lock().write_all(&bytes);
            if bytes.capacity() > 1 << 20 {
                bytes = Vec::new();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn stamp(ms: u64) -> String {
        let mut s = String::new();
        write_rfc3339_ms(&mut s, at(ms));
        s
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(stamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(stamp(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(stamp(951_868_800_000), "2000-03-01T00:00:00.000Z");
        assert_eq!(stamp(1_735_689_599_999), "2024-12-31T23:59:59.999Z");
        assert_eq!(stamp(1_709_164_800_007), "2024-02-29T00:00:00.007Z");
        assert_eq!(stamp(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
        // Before the epoch: clamped, never a panic.
        let mut s = String::new();
        write_rfc3339_ms(&mut s, SystemTime::UNIX_EPOCH - Duration::from_secs(5));
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn dates_match_a_day_by_day_count() {
        // Walk 500 years day by day with a naive calendar.
        let (mut y, mut m, mut d) = (1970u64, 1u64, 1u64);
        for days in 0..(500 * 366) {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn lines_carry_a_level_and_a_stamp_or_a_priority() {
        let mut s = String::new();
        let t = at(1_735_689_599_999);
        format_line(
            &mut s,
            Style::Plain,
            Priority::Warning,
            t,
            format_args!("x {}", 1),
        );
        assert_eq!(s, "2024-12-31T23:59:59.999Z WARN x 1\n");
        for (p, want) in [
            (Priority::Error, "<3>ERROR m\n"),
            (Priority::Warning, "<4>WARN m\n"),
            (Priority::Info, "<6>INFO m\n"),
            (Priority::Debug, "<7>DEBUG m\n"),
        ] {
            s.clear();
            format_line(&mut s, Style::Journal, p, t, format_args!("m"));
            assert_eq!(s, want);
        }
        s.clear();
        format_line(
            &mut s,
            Style::Journal,
            Priority::Info,
            t,
            format_args!("a\nb"),
        );
        assert_eq!(s, "<6>INFO a b\n");
    }

    #[test]
    fn long_lines_are_cut_at_the_bound() {
        let mut s = String::new();
        let long = "é".repeat(MAX_LINE_BYTES);
        format_line(
            &mut s,
            Style::Plain,
            Priority::Info,
            at(0),
            format_args!("{long}"),
        );
        assert!(s.len() <= MAX_LINE_BYTES, "{}", s.len());
        assert!(s.ends_with("...\n"));
        // Exactly at the bound: kept whole.
        s.clear();
        let prefix = "1970-01-01T00:00:00.000Z INFO ".len();
        let fits = "a".repeat(MAX_LINE_BYTES - 1 - prefix);
        format_line(
            &mut s,
            Style::Plain,
            Priority::Info,
            at(0),
            format_args!("{fits}"),
        );
        assert_eq!(s.len(), MAX_LINE_BYTES);
        assert!(s.ends_with("a\n"));
    }

    #[test]
    fn journal_stream_must_name_the_device_and_inode() {
        assert!(is_journal_stream(Some("8:12345"), 8, 12345));
        assert!(!is_journal_stream(Some("8:12345"), 8, 12346));
        assert!(!is_journal_stream(Some("9:12345"), 8, 12345));
        assert!(!is_journal_stream(None, 8, 12345));
        assert!(!is_journal_stream(Some(""), 0, 0));
        assert!(!is_journal_stream(Some("8"), 8, 0));
        assert!(!is_journal_stream(Some("x:y"), 0, 0));
    }

    #[test]
    fn the_rate_limit_reports_its_count_when_the_window_ends() {
        let mut log = Log::new(Level::Info);
        assert_eq!(log.poll_timeout(), None);
        for i in 0..WARNINGS_PER_WINDOW + 7 {
            log.warn_limited(format_args!("test warning {i}"));
        }
        assert_eq!(log.suppressed, 7);
        let due = log.poll_timeout().expect("a report is due");
        log.handle_timeout(due - Duration::from_millis(1));
        assert_eq!(log.suppressed, 7, "not before the window ends");
        log.handle_timeout(due);
        assert_eq!(log.suppressed, 0);
        assert_eq!(log.poll_timeout(), None);
        assert_eq!(log.window_start, None);
        // A quiet window needs no wake-up.
        log.warn_limited(format_args!("one more"));
        assert_eq!(log.poll_timeout(), None);
    }
}
