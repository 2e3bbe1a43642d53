//! The daemon's counters and histograms: what the core counts as it works,
//! and what `stats`, the shutdown summary and `/metrics` report.
//!
//! Every update is O(1) and allocation-free: counters are plain `u64`s in
//! fixed arrays indexed by small enums, and a histogram is a fixed array of
//! bucket counts. Durations come from the `now_us` the caller already has, so
//! counting reads no clock.

use crate::wire::ErrorReply;

/// The command words, for `dreadlock_commands_total{command=…}`.
pub use crate::wire::Verb;

/// Why a held lock (or semaphore slot) was released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReleaseCause {
    /// `unlock`.
    Unlock,
    /// The holder's connection closed, reset, or was dropped for an error.
    Disconnect,
    /// The holder's connection was closed by `evict`.
    Evict,
}

impl ReleaseCause {
    /// Every cause, in the order of [`Stats::releases`].
    pub const ALL: [ReleaseCause; 3] = [
        ReleaseCause::Unlock,
        ReleaseCause::Disconnect,
        ReleaseCause::Evict,
    ];

    /// The cause as a metric label value.
    pub const fn label(self) -> &'static str {
        match self {
            ReleaseCause::Unlock => "unlock",
            ReleaseCause::Disconnect => "disconnect",
            ReleaseCause::Evict => "evict",
        }
    }
}

/// Upper bounds of the duration histograms' buckets, in microseconds (the
/// `le` labels, in seconds: 100 µs … 1 h, then `+Inf`). A lock daemon sees
/// sub-millisecond waits and holds on the fast path, and holds of a cron
/// job's length (minutes to an hour) on the slow one, so the buckets run
/// 1-2.5-5 per decade over that whole range.
pub const BUCKET_BOUNDS_US: [u64; 23] = [
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
    600_000_000,
    1_200_000_000,
    1_800_000_000,
    3_600_000_000,
];

/// A fixed-bucket histogram of durations (Prometheus semantics: the bucket
/// counts are not cumulative here; the renderer accumulates them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// `buckets[i]` counts observations `<= BUCKET_BOUNDS_US[i]` and
    /// `> BUCKET_BOUNDS_US[i - 1]`; the last slot counts the rest (`+Inf`).
    pub buckets: [u64; BUCKET_BOUNDS_US.len() + 1],
    /// Sum of all observations, in microseconds.
    pub sum_us: u64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Records one observation of `us` microseconds.
    pub fn record(&mut self, us: u64) {
        // Immediate grants and short holds, the hot path, skip the search.
        let i = if us <= BUCKET_BOUNDS_US[0] {
            0
        } else {
            BUCKET_BOUNDS_US.partition_point(|&b| b < us)
        };
        self.buckets[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.count += 1;
    }
}

/// Everything the core counts. `Copy`, so a snapshot is one memcpy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Complete commands by verb, indexed by `Verb as usize`.
    pub commands: [u64; Verb::ALL.len()],
    /// Grants answered at once (the key had a free slot).
    pub grants_immediate: u64,
    /// Grants answered after a wait in the queue.
    pub grants_queued: u64,
    /// `t timeout` replies (try-locks included).
    pub timeouts: u64,
    /// `u unlocked` replies.
    pub unlocks: u64,
    /// Releases of held locks or slots by cause, indexed like
    /// [`ReleaseCause::ALL`].
    pub releases: [u64; ReleaseCause::ALL.len()],
    /// `e …` replies by kind, indexed like [`ErrorReply::ALL`].
    pub error_replies: [u64; ErrorReply::ALL.len()],
    /// Connections dropped for a syntax error.
    pub syntax_errors: u64,
    /// Wrong secrets and `e auth required` rejections.
    pub auth_failures: u64,
    /// Connections closed (by the peer, an error, or evict).
    pub disconnects: u64,
    /// Connections closed by `evict`.
    pub evictions: u64,
    /// The last fencing token issued; 0 before the first grant.
    pub last_token: u64,
    /// Connections opened (accepted by the reactor and handed to the core).
    pub accepted: u64,
    /// Connections refused at accept (`--allow`).
    pub rejected: u64,
    /// Request to answer, for grants (immediate ones included).
    pub wait_granted: Histogram,
    /// Request to answer, for timeouts.
    pub wait_timeout: Histogram,
    /// Grant to release.
    pub hold: Histogram,
}

impl Stats {
    /// Counts one complete command.
    pub fn command(&mut self, verb: Verb) {
        self.commands[verb as usize] += 1;
    }

    /// The count of complete commands of `verb`.
    pub fn commands_of(&self, verb: Verb) -> u64 {
        self.commands[verb as usize]
    }

    /// All complete commands.
    pub fn commands_total(&self) -> u64 {
        self.commands.iter().sum()
    }

    /// Counts one release.
    pub fn release(&mut self, cause: ReleaseCause) {
        self.releases[cause as usize] += 1;
    }

    /// The count of releases by `cause`.
    pub fn releases_of(&self, cause: ReleaseCause) -> u64 {
        self.releases[cause as usize]
    }

    /// Counts one error reply.
    pub fn error_reply(&mut self, e: ErrorReply) {
        // ErrorReply::ALL lists every variant in declaration order.
        self.error_replies[e as usize] += 1;
    }

    /// The count of error replies of kind `e`.
    pub fn error_replies_of(&self, e: ErrorReply) -> u64 {
        self.error_replies[e as usize]
    }

    /// All error replies (the `errors` field of `stats`).
    pub fn errors_total(&self) -> u64 {
        self.error_replies.iter().sum()
    }

    /// All grants (the `grants` field of `stats`).
    pub fn grants_total(&self) -> u64 {
        self.grants_immediate + self.grants_queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_follow_the_all_lists() {
        for (i, v) in Verb::ALL.into_iter().enumerate() {
            assert_eq!(v as usize, i);
        }
        for (i, c) in ReleaseCause::ALL.into_iter().enumerate() {
            assert_eq!(c as usize, i);
        }
        for (i, e) in ErrorReply::ALL.into_iter().enumerate() {
            assert_eq!(e as usize, i);
        }
    }

    #[test]
    fn histogram_buckets_are_upper_inclusive() {
        assert!(BUCKET_BOUNDS_US.windows(2).all(|w| w[0] < w[1]));
        let mut h = Histogram::default();
        h.record(0);
        h.record(100);
        h.record(101);
        h.record(3_600_000_000);
        h.record(3_600_000_001);
        h.record(u64::MAX);
        assert_eq!(h.buckets[0], 2);
        assert_eq!(h.buckets[1], 1);
        assert_eq!(h.buckets[BUCKET_BOUNDS_US.len() - 1], 1);
        assert_eq!(h.buckets[BUCKET_BOUNDS_US.len()], 2);
        assert_eq!(h.count, 6);
        assert_eq!(h.sum_us, u64::MAX);
    }
}
