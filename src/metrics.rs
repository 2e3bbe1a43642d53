//! The Prometheus text format (version 0.0.4) for `GET /metrics`: the
//! daemon's counters, gauges and histograms from one [`Snapshot`], and the
//! standard process metrics.
//!
//! # Names
//!
//! By Prometheus conventions: the `dreadlock_` prefix, base units (seconds,
//! bytes), `_total` on counters, and no key names in labels (a label per key
//! would be one time series per key: unbounded). Every family has its
//! `# HELP` and `# TYPE` lines.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `dreadlock_build_info` | gauge (1) | `version` |
//! | `dreadlock_connections`, `_keys`, `_holders`, `_waiters` | gauge | |
//! | `dreadlock_connections_accepted_total`, `_rejected_total` | counter | |
//! | `dreadlock_commands_total` | counter | `command`: the command word |
//! | `dreadlock_grants_total` | counter | `wait`: `immediate`, `queued` |
//! | `dreadlock_timeouts_total` | counter | |
//! | `dreadlock_releases_total` | counter | `cause`: `unlock`, `disconnect`, `evict` |
//! | `dreadlock_error_replies_total` | counter | `reply`: the message after `e `, spaces as `_` (`already_locked`, `lock_table_full`, ...) |
//! | `dreadlock_syntax_errors_total`, `_auth_failures_total` | counter | |
//! | `dreadlock_disconnects_total`, `_evictions_total` | counter | |
//! | `dreadlock_log_lines_dropped_total` | counter | |
//! | `dreadlock_admin_connections` | gauge | |
//! | `dreadlock_admin_connections_accepted_total`, `_refused_total` | counter | |
//! | `dreadlock_wait_seconds` | histogram | `outcome`: `granted`, `timeout` |
//! | `dreadlock_hold_seconds` | histogram | |
//! | `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_start_time_seconds` | | |
//!
//! Histogram buckets are [`BUCKET_BOUNDS_US`] in seconds (100 µs to 1 h),
//! cumulative as the format requires, then `+Inf`; `_sum` is in seconds.
//!
//! # Cost
//!
//! Rendering happens only when a scrape asks: it copies the counters (one
//! `memcpy` of [`Stats`]) and reads `/proc/self/stat` and the size of
//! `/proc/self/fd` (the open descriptors, in O(1) on Linux 6.2 and later;
//! older kernels need a listing of the directory). The hot path only bumps
//! counters in [`Stats`].

#![warn(missing_docs)]

use std::fmt::Write as _;
use std::time::Duration;

use crate::stats::{BUCKET_BOUNDS_US, Histogram, ReleaseCause, Stats, Verb};
use crate::wire::ErrorReply;

/// The `Content-Type` of the rendered text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Everything `/metrics` and the `stats` line report about the daemon,
/// copied out of the loop at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The core's counters and histograms.
    pub stats: Stats,
    /// Open lock-port connections.
    pub connections: u64,
    /// Keys held or waited for.
    pub keys: u64,
    /// Connections holding a key (or a semaphore slot), counted per key.
    pub holders: u64,
    /// Connections waiting for a key.
    pub waiters: u64,
    /// Log lines dropped because stderr did not keep up.
    pub log_lines_dropped: u64,
    /// Time since the daemon started.
    pub uptime: Duration,
}

/// The standard `process_*` metrics, read from `/proc`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Process {
    /// User and system CPU time.
    pub cpu_seconds: f64,
    /// Resident set size.
    pub resident_memory_bytes: u64,
    /// Virtual memory size.
    pub virtual_memory_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The open-file soft limit.
    pub max_fds: u64,
    /// Start time, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl Process {
    /// Reads this process's figures from `/proc/self/stat`, `/proc/stat`
    /// (boot time), `/proc/self/fd` and the open-file limit.
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read or parsed (not Linux, no procfs).
    pub fn read() -> std::io::Result<Process> {
        let bad =
            || std::io::Error::new(std::io::ErrorKind::InvalidData, "unexpected /proc format");
        let stat = std::fs::read_to_string("/proc/self/stat")?;
        let boot_time_s = boot_time_s().ok_or_else(bad)?;
        let mut p = parse_stat(
            &stat,
            rustix::param::clock_ticks_per_second(),
            rustix::param::page_size() as u64,
            boot_time_s,
        )
        .ok_or_else(bad)?;
        p.open_fds = open_fds()?;
        p.max_fds = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft);
        Ok(p)
    }
}

/// Open descriptors. Linux 6.2 and later report the count as the size of
/// `/proc/self/fd`, in O(1); older kernels report 0 there, and the
/// directory is listed instead (O(descriptors): about a millisecond per
/// ten thousand connections, once per scrape).
fn open_fds() -> std::io::Result<u64> {
    match std::fs::metadata("/proc/self/fd")?.len() {
        0 => Ok(std::fs::read_dir("/proc/self/fd")?.count() as u64),
        n => Ok(n),
    }
}

/// The system's boot time in seconds since the epoch (`btime` in
/// `/proc/stat`); it never changes, so it is read once.
fn boot_time_s() -> Option<u64> {
    static BOOT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *BOOT.get_or_init(|| {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Parses `/proc/<pid>/stat` (fields per proc(5)): CPU time, start time,
/// virtual and resident size. The open descriptors are left at 0.
pub fn parse_stat(
    stat: &str,
    ticks_per_s: u64,
    page_size: u64,
    boot_time_s: u64,
) -> Option<Process> {
    // The command name (field 2) is parenthesised and may hold spaces or
    // parentheses: the fields after it start after its last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field n is f[n - 3].
    let field = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    let ticks = ticks_per_s.max(1) as f64;
    let cpu_ticks = field(14)? + field(15)?;
    Some(Process {
        cpu_seconds: cpu_ticks as f64 / ticks,
        start_time_seconds: boot_time_s as f64 + field(22)? as f64 / ticks,
        virtual_memory_bytes: field(23)?,
        resident_memory_bytes: field(24)?.saturating_mul(page_size),
        open_fds: 0,
        max_fds: 0,
    })
}

/// Renders `snap` (and `process`, when it could be read) as the Prometheus
/// text format, appending to `out`.
pub fn render(out: &mut String, snap: &Snapshot, process: Option<&Process>, version: &str) {
    let s = &snap.stats;
    family(
        out,
        "dreadlock_build_info",
        "gauge",
        "Always 1; the version in a label.",
    );
    let _ = writeln!(
        out,
        "dreadlock_build_info{{version=\"{}\"}} 1",
        escape(version)
    );

    gauge(
        out,
        "dreadlock_connections",
        "Open lock-port connections.",
        snap.connections,
    );
    gauge(out, "dreadlock_keys", "Keys held or waited for.", snap.keys);
    gauge(
        out,
        "dreadlock_holders",
        "Connections holding a key, counted per key.",
        snap.holders,
    );
    gauge(
        out,
        "dreadlock_waiters",
        "Connections waiting for a key.",
        snap.waiters,
    );

    counter(
        out,
        "dreadlock_connections_accepted_total",
        "Lock-port connections accepted.",
        snap.stats.accepted,
    );
    counter(
        out,
        "dreadlock_connections_rejected_total",
        "Lock-port connections closed at accept because --allow does not list their address.",
        snap.stats.rejected,
    );

    family(
        out,
        "dreadlock_commands_total",
        "counter",
        "Complete commands, by command word.",
    );
    for v in Verb::ALL {
        let _ = writeln!(
            out,
            "dreadlock_commands_total{{command=\"{}\"}} {}",
            v.word(),
            s.commands_of(v)
        );
    }

    family(
        out,
        "dreadlock_grants_total",
        "counter",
        "Locks and semaphore slots granted, at once or after a wait.",
    );
    let _ = writeln!(
        out,
        "dreadlock_grants_total{{wait=\"immediate\"}} {}",
        s.grants_immediate
    );
    let _ = writeln!(
        out,
        "dreadlock_grants_total{{wait=\"queued\"}} {}",
        s.grants_queued
    );

    counter(
        out,
        "dreadlock_timeouts_total",
        "Waits answered `t timeout` (try-locks included).",
        s.timeouts,
    );

    family(
        out,
        "dreadlock_releases_total",
        "counter",
        "Held locks or slots released, by cause.",
    );
    for c in ReleaseCause::ALL {
        let _ = writeln!(
            out,
            "dreadlock_releases_total{{cause=\"{}\"}} {}",
            c.label(),
            s.releases_of(c)
        );
    }

    family(
        out,
        "dreadlock_error_replies_total",
        "counter",
        "Error replies, by kind (the message after `e `, spaces as underscores).",
    );
    for e in ErrorReply::ALL {
        let _ = write!(out, "dreadlock_error_replies_total{{reply=\"");
        push_label(out, e.message());
        let _ = writeln!(out, "\"}} {}", s.error_replies_of(e));
    }

    counter(
        out,
        "dreadlock_syntax_errors_total",
        "Connections dropped for a syntax error.",
        s.syntax_errors,
    );
    counter(
        out,
        "dreadlock_auth_failures_total",
        "Wrong secrets and `e auth required` rejections.",
        s.auth_failures,
    );
    counter(
        out,
        "dreadlock_disconnects_total",
        "Lock-port connections closed (by the peer, an error, or evict).",
        s.disconnects,
    );
    counter(
        out,
        "dreadlock_evictions_total",
        "Connections closed by `evict`.",
        s.evictions,
    );
    counter(
        out,
        "dreadlock_log_lines_dropped_total",
        "Log lines dropped because stderr did not keep up.",
        snap.log_lines_dropped,
    );

    family(
        out,
        "dreadlock_wait_seconds",
        "histogram",
        "Time from a lock request to its answer, by outcome (immediate grants included).",
    );
    histogram(
        out,
        "dreadlock_wait_seconds",
        "outcome=\"granted\",",
        &s.wait_granted,
    );
    histogram(
        out,
        "dreadlock_wait_seconds",
        "outcome=\"timeout\",",
        &s.wait_timeout,
    );
    family(
        out,
        "dreadlock_hold_seconds",
        "histogram",
        "Time from a grant to its release.",
    );
    histogram(out, "dreadlock_hold_seconds", "", &s.hold);

    if let Some(p) = process {
        family(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent in seconds.",
        );
        let _ = writeln!(out, "process_cpu_seconds_total {}", p.cpu_seconds);
        gauge(
            out,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            p.resident_memory_bytes,
        );
        gauge(
            out,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            p.virtual_memory_bytes,
        );
        gauge(
            out,
            "process_open_fds",
            "Number of open file descriptors.",
            p.open_fds,
        );
        gauge(
            out,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            p.max_fds,
        );
        family(
            out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
        );
        let _ = writeln!(out, "process_start_time_seconds {}", p.start_time_seconds);
    }
}

/// The admin endpoint's own figures, appended by the endpoint to what
/// [`render`] wrote: open admin connections (this scrape's included), and
/// those accepted and refused (over the cap or by the accept filter).
pub fn render_admin(out: &mut String, open: u64, accepted: u64, refused: u64) {
    gauge(
        out,
        "dreadlock_admin_connections",
        "Open admin-endpoint connections (this scrape's included).",
        open,
    );
    counter(
        out,
        "dreadlock_admin_connections_accepted_total",
        "Admin-endpoint connections accepted.",
        accepted,
    );
    counter(
        out,
        "dreadlock_admin_connections_refused_total",
        "Admin-endpoint connections closed at accept (over the cap, or not allowed).",
        refused,
    );
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, v: u64) {
    family(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {v}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    family(out, name, "counter", help);
    let _ = writeln!(out, "{name} {v}");
}

/// One histogram series; `labels` is empty or `k="v",` (with the comma).
fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let mut cumulative = 0u64;
    for (i, &bound_us) in BUCKET_BOUNDS_US.iter().enumerate() {
        cumulative += h.buckets[i];
        let _ = write!(out, "{name}_bucket{{{labels}le=\"");
        push_seconds(out, bound_us);
        let _ = writeln!(out, "\"}} {cumulative}");
    }
    cumulative += h.buckets[BUCKET_BOUNDS_US.len()];
    debug_assert_eq!(cumulative, h.count);
    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {}", h.count);
    let bare = labels.trim_end_matches(',');
    let braces = |out: &mut String| {
        if !bare.is_empty() {
            let _ = write!(out, "{{{bare}}}");
        }
    };
    let _ = write!(out, "{name}_sum");
    braces(out);
    out.push(' ');
    push_seconds(out, h.sum_us);
    out.push('\n');
    let _ = write!(out, "{name}_count");
    braces(out);
    let _ = writeln!(out, " {}", h.count);
}

/// Microseconds as exact decimal seconds: `250` is `0.00025`, `3600000000`
/// is `3600`.
fn push_seconds(out: &mut String, us: u64) {
    let (s, frac) = (us / 1_000_000, us % 1_000_000);
    if frac == 0 {
        let _ = write!(out, "{s}");
    } else {
        let digits = format!("{frac:06}");
        let _ = write!(out, "{s}.{}", digits.trim_end_matches('0'));
    }
}

/// A label value from a reply message: spaces become underscores.
fn push_label(out: &mut String, message: &str) {
    out.extend(message.chars().map(|c| if c == ' ' { '_' } else { c }));
}

/// Escapes a label value per the text format (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_parse::{Scrape, Value};

    fn seconds(us: u64) -> String {
        let mut s = String::new();
        push_seconds(&mut s, us);
        s
    }

    #[test]
    fn seconds_are_exact_decimals() {
        assert_eq!(seconds(0), "0");
        assert_eq!(seconds(1), "0.000001");
        assert_eq!(seconds(100), "0.0001");
        assert_eq!(seconds(250), "0.00025");
        assert_eq!(seconds(1_500_000), "1.5");
        assert_eq!(seconds(3_600_000_000), "3600");
        assert_eq!(seconds(u64::MAX), "18446744073709.551615");
    }

    /// A snapshot with a distinct, known value in every field.
    fn synthetic() -> Snapshot {
        let mut stats = Stats::default();
        for (i, v) in Verb::ALL.into_iter().enumerate() {
            for _ in 0..=i {
                stats.command(v);
            }
        }
        stats.grants_immediate = 101;
        stats.grants_queued = 102;
        stats.timeouts = 103;
        stats.unlocks = 104;
        for (i, c) in ReleaseCause::ALL.into_iter().enumerate() {
            for _ in 0..10 + i {
                stats.release(c);
            }
        }
        for (i, e) in ErrorReply::ALL.into_iter().enumerate() {
            for _ in 0..20 + i {
                stats.error_reply(e);
            }
        }
        stats.syntax_errors = 105;
        stats.auth_failures = 106;
        stats.disconnects = 107;
        stats.evictions = 108;
        stats.last_token = 1_700_000_000_000_000_000;
        stats.accepted = 15;
        stats.rejected = 16;
        for us in [50, 100, 101, 2_000, 3_600_000_000, 4_000_000_000] {
            stats.wait_granted.record(us);
        }
        stats.wait_timeout.record(1_000_000);
        stats.hold.record(250);
        stats.hold.record(250);
        Snapshot {
            stats,
            connections: 11,
            keys: 12,
            holders: 13,
            waiters: 14,
            log_lines_dropped: 17,
            uptime: Duration::from_secs(18),
        }
    }

    fn parse(text: &str) -> Scrape {
        Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses")
    }

    fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| {
                s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .collect();
        assert_eq!(found.len(), 1, "{metric} {labels:?}: {found:?}");
        match found[0].value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            ref other => panic!("{metric} is {other:?}"),
        }
    }

    fn buckets(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {metric} {labels:?}"));
        let Value::Histogram(ref h) = s.value else {
            panic!("{metric} is not a histogram: {:?}", s.value)
        };
        let mut v: Vec<_> = h.iter().map(|b| (b.less_than, b.count)).collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }

    #[test]
    fn renders_every_value_of_a_known_snapshot() {
        let snap = synthetic();
        let process = Process {
            cpu_seconds: 1.25,
            resident_memory_bytes: 4096,
            virtual_memory_bytes: 8192,
            open_fds: 7,
            max_fds: 1024,
            start_time_seconds: 1_700_000_000.5,
        };
        let mut text = String::new();
        render(&mut text, &snap, Some(&process), "1.2.3");
        let scrape = parse(&text);

        assert_eq!(
            value(&scrape, "dreadlock_build_info", &[("version", "1.2.3")]),
            1.0
        );
        assert_eq!(value(&scrape, "dreadlock_connections", &[]), 11.0);
        assert_eq!(value(&scrape, "dreadlock_keys", &[]), 12.0);
        assert_eq!(value(&scrape, "dreadlock_holders", &[]), 13.0);
        assert_eq!(value(&scrape, "dreadlock_waiters", &[]), 14.0);
        assert_eq!(
            value(&scrape, "dreadlock_connections_accepted_total", &[]),
            15.0
        );
        assert_eq!(
            value(&scrape, "dreadlock_connections_rejected_total", &[]),
            16.0
        );
        for (i, v) in Verb::ALL.into_iter().enumerate() {
            let got = value(
                &scrape,
                "dreadlock_commands_total",
                &[("command", v.word())],
            );
            assert_eq!(got, (i + 1) as f64, "{v:?}");
        }
        assert_eq!(
            value(&scrape, "dreadlock_grants_total", &[("wait", "immediate")]),
            101.0
        );
        assert_eq!(
            value(&scrape, "dreadlock_grants_total", &[("wait", "queued")]),
            102.0
        );
        assert_eq!(value(&scrape, "dreadlock_timeouts_total", &[]), 103.0);
        for (i, c) in ReleaseCause::ALL.into_iter().enumerate() {
            let got = value(&scrape, "dreadlock_releases_total", &[("cause", c.label())]);
            assert_eq!(got, (10 + i) as f64, "{c:?}");
        }
        for (i, e) in ErrorReply::ALL.into_iter().enumerate() {
            let label = e.message().replace(' ', "_");
            let got = value(
                &scrape,
                "dreadlock_error_replies_total",
                &[("reply", &label)],
            );
            assert_eq!(got, (20 + i) as f64, "{e:?}");
        }
        assert_eq!(
            value(
                &scrape,
                "dreadlock_error_replies_total",
                &[("reply", "lock_table_full")]
            ),
            24.0
        );
        assert_eq!(value(&scrape, "dreadlock_syntax_errors_total", &[]), 105.0);
        assert_eq!(value(&scrape, "dreadlock_auth_failures_total", &[]), 106.0);
        assert_eq!(value(&scrape, "dreadlock_disconnects_total", &[]), 107.0);
        assert_eq!(value(&scrape, "dreadlock_evictions_total", &[]), 108.0);
        assert_eq!(
            value(&scrape, "dreadlock_log_lines_dropped_total", &[]),
            17.0
        );

        let granted = buckets(&scrape, "dreadlock_wait_seconds", &[("outcome", "granted")]);
        assert_eq!(granted.len(), BUCKET_BOUNDS_US.len() + 1);
        assert_eq!(granted[0], (0.0001, 2.0));
        assert_eq!(granted[1], (0.00025, 3.0));
        assert_eq!(granted[4], (0.0025, 4.0));
        assert_eq!(granted[BUCKET_BOUNDS_US.len() - 1], (3600.0, 5.0));
        assert_eq!(granted[BUCKET_BOUNDS_US.len()], (f64::INFINITY, 6.0));
        for (i, &(le, _)) in granted.iter().take(BUCKET_BOUNDS_US.len()).enumerate() {
            assert_eq!(le, BUCKET_BOUNDS_US[i] as f64 / 1e6);
        }
        assert!(granted.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative");
        let sum_s = (50 + 100 + 101 + 2_000 + 3_600_000_000u64 + 4_000_000_000) as f64 / 1e6;
        assert_eq!(
            value(
                &scrape,
                "dreadlock_wait_seconds_sum",
                &[("outcome", "granted")]
            ),
            sum_s
        );
        assert_eq!(
            value(
                &scrape,
                "dreadlock_wait_seconds_count",
                &[("outcome", "granted")]
            ),
            6.0
        );
        let timeout = buckets(&scrape, "dreadlock_wait_seconds", &[("outcome", "timeout")]);
        assert_eq!(timeout[11].1, 0.0);
        assert_eq!(timeout[12], (1.0, 1.0));
        assert_eq!(
            value(
                &scrape,
                "dreadlock_wait_seconds_count",
                &[("outcome", "timeout")]
            ),
            1.0
        );
        let hold = buckets(&scrape, "dreadlock_hold_seconds", &[]);
        assert_eq!(hold[0].1, 0.0);
        assert_eq!(hold[1], (0.00025, 2.0));
        assert_eq!(value(&scrape, "dreadlock_hold_seconds_sum", &[]), 0.0005);
        assert_eq!(value(&scrape, "dreadlock_hold_seconds_count", &[]), 2.0);

        assert_eq!(value(&scrape, "process_cpu_seconds_total", &[]), 1.25);
        assert_eq!(value(&scrape, "process_resident_memory_bytes", &[]), 4096.0);
        assert_eq!(value(&scrape, "process_virtual_memory_bytes", &[]), 8192.0);
        assert_eq!(value(&scrape, "process_open_fds", &[]), 7.0);
        assert_eq!(value(&scrape, "process_max_fds", &[]), 1024.0);
        assert_eq!(
            value(&scrape, "process_start_time_seconds", &[]),
            1_700_000_000.5
        );
    }

    #[test]
    fn every_sample_belongs_to_a_documented_family() {
        let mut text = String::new();
        render(&mut text, &synthetic(), Some(&Process::default()), "0.1.0");
        render_admin(&mut text, 1, 2, 3);
        let scrape = parse(&text);
        assert_eq!(value(&scrape, "dreadlock_admin_connections", &[]), 1.0);
        assert_eq!(
            value(&scrape, "dreadlock_admin_connections_accepted_total", &[]),
            2.0
        );
        assert_eq!(
            value(&scrape, "dreadlock_admin_connections_refused_total", &[]),
            3.0
        );
        let mut types = std::collections::HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "{name} twice"
                );
                assert!(scrape.docs.contains_key(name), "{name} has no HELP");
            }
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(name);
            let kind = types
                .get(family)
                .unwrap_or_else(|| panic!("{name} has no TYPE"));
            assert_eq!(
                kind == "counter",
                family.ends_with("_total"),
                "{family}: {kind}"
            );
            assert!(family.starts_with("dreadlock_") || family.starts_with("process_"));
            assert!(!line.contains("key="), "no key names as labels: {line}");
        }
        // Without /proc figures: the daemon's own metrics only.
        let mut bare = String::new();
        render(&mut bare, &Snapshot::default(), None, "0.1.0");
        assert!(!bare.contains("process_"));
        assert_eq!(
            value(&parse(&bare), "dreadlock_hold_seconds_count", &[]),
            0.0
        );
    }

    #[test]
    fn parses_proc_stat() {
        // A command name with spaces and a parenthesis, as proc(5) allows.
        let stat = "4242 (dread lock) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 1 0 12345 1048576 300 18446744073709551615 \
                    1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let p = parse_stat(stat, 100, 4096, 1_000_000).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.start_time_seconds, 1_000_123.45);
        assert_eq!(p.virtual_memory_bytes, 1_048_576);
        assert_eq!(p.resident_memory_bytes, 300 * 4096);
        assert_eq!(parse_stat("garbage", 100, 4096, 0), None);
        assert_eq!(parse_stat("1 (x) S 1 2", 100, 4096, 0), None);
        // And this very process.
        let me = Process::read().expect("/proc is readable");
        assert!(
            me.resident_memory_bytes > 0 && me.virtual_memory_bytes >= me.resident_memory_bytes
        );
        assert!(me.open_fds >= 3 && me.max_fds >= me.open_fds, "{me:?}");
        assert!(me.start_time_seconds > 1e9);
    }
}
