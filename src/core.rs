//! The sans-I/O protocol engine: bytes and a clock in, replies out.
//!
//! `Core` ties the [`parser`], the [lock table](crate::lock_table)
//! and the [timer wheel](crate::timer) together and owns every protocol rule
//! of `PROTOCOL.md`. It never touches a socket or reads the clock: the reactor
//! (or a test, or a fuzzer) calls the `handle_*` inputs with the current time
//! and drains [`Core::poll_output`]; [`Core::poll_timeout`] says when to call
//! [`Core::handle_timeout`] next.
//!
//! # Time
//!
//! `now_us` is microseconds on any monotonic clock. Deadlines are whole
//! milliseconds on the same clock: a `lock` received at `now_us` with
//! `timeout_ms` gets the deadline `ceil(now_us / 1000) + timeout_ms`, and it
//! fires only once `floor(now_us / 1000) >= deadline`. So a timeout is never
//! answered early, and at most one millisecond (plus loop latency) late.
//!
//! # In-order processing
//!
//! A connection whose `lock` is queued is *waiting*: bytes it sends meanwhile
//! are kept, unparsed, in its `pending` buffer, and run once the lock is
//! granted or times out. [`Core::wants_input`] turns false when that buffer
//! reaches `max_pending_bytes`, and the reactor stops reading the socket.
//!
//! # Resuming
//!
//! When a wait ends, the connection's buffered bytes do not run at once:
//! they could be a whole pending buffer of commands whose last one releases
//! a key, granting the next waiter, whose buffer runs at once too, and so on
//! down a queue of thousands. Instead the connection is *resuming*:
//! [`Core::poll_resumable`] reports it, and the reactor runs its buffer in
//! slices of its own choosing with [`Core::handle_resume`], under the same
//! per-iteration budget as fresh input. Until its buffer is used up a
//! resuming connection takes no new input ([`Core::wants_input`] is false),
//! and bytes given to it anyway are appended, so commands still run in order.

use std::collections::VecDeque;

use crate::lock_table::{ConnId, Limits, LockOutcome, LockTable, UnlockOutcome};
use crate::parser::{self, Command, ParseError, Parser, Step};
use crate::timer::{self, TimerId, TimerWheel};
use crate::wire::{self, ErrorReply};

/// Default bound on bytes kept from a connection whose `lock` is waiting.
/// 64 KiB holds thousands of pipelined commands, far more than any sane
/// client queues behind a blocking call; past it the reactor stops reading
/// that socket (TCP backpressure) instead of growing the buffer.
pub const DEFAULT_MAX_PENDING_BYTES: usize = 64 * 1024;

/// Default bound on keys one connection may hold. Far beyond what a
/// process needs in its critical sections; it stops one client from growing
/// the table without end.
pub const DEFAULT_MAX_LOCKS_PER_CONNECTION: usize = 1024;

/// Default bound on the bytes of all held keys (each counted with
/// `lock_table::KEY_OVERHEAD_BYTES`): 256 MiB, about 2.6 million short keys.
pub const DEFAULT_MAX_KEY_BYTES: usize = 256 << 20;

/// Timeouts of at least this many milliseconds (about 2.1 years) never fire:
/// they mean "wait until granted or disconnected" (PROTOCOL.md, rule 7).
pub const INFINITE_TIMEOUT_MS: u64 = timer::MAX_TIMEOUT_MS - 1;

/// The core's limits; every one bounds something a client controls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Longest command line, CRLF included; longer is a syntax error.
    pub max_line_bytes: usize,
    /// Bytes buffered from a waiting connection before reads pause.
    pub max_pending_bytes: usize,
    /// Keys one connection may hold; a `lock` past it gets `e too many locks`.
    pub max_locks_per_connection: usize,
    /// Bytes of all held keys; a `lock` on a free key past it gets
    /// `e lock table full`.
    pub max_key_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_line_bytes: parser::DEFAULT_MAX_LINE_BYTES,
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
            max_locks_per_connection: DEFAULT_MAX_LOCKS_PER_CONNECTION,
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
        }
    }
}

/// A reply line. Every reply is one of these exact byte strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reply {
    Locked,
    Timeout,
    Unlocked,
    AlreadyLocked,
    NotLocked,
    NotOwner,
    /// The connection holds `max_locks_per_connection` keys already.
    TooManyLocks,
    /// The held keys' bytes are at `max_key_bytes`.
    TableFull,
}

impl Reply {
    /// The reply's bytes on the wire, CRLF included.
    pub const fn as_bytes(self) -> &'static [u8] {
        match self {
            Reply::Locked => wire::LOCKED,
            Reply::Timeout => wire::TIMEOUT,
            Reply::Unlocked => wire::UNLOCKED,
            Reply::AlreadyLocked => ErrorReply::AlreadyLocked.as_bytes(),
            Reply::NotLocked => ErrorReply::NotLocked.as_bytes(),
            Reply::NotOwner => ErrorReply::NotOwner.as_bytes(),
            Reply::TooManyLocks => ErrorReply::TooManyLocks.as_bytes(),
            Reply::TableFull => ErrorReply::TableFull.as_bytes(),
        }
    }
}

/// What the core asks the reactor to do, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Append this reply to the connection's output.
    Reply(ConnId, Reply),
    /// Syntax error: send the replies queued so far, then close the
    /// connection. The core has already forgotten it (its locks are released
    /// and its wait withdrawn); do not call `handle_closed` for it.
    Close(ConnId, ParseError),
}

/// Counters for logs and the shutdown summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub commands: u64,
    pub granted: u64,
    pub timeouts: u64,
    pub unlocked: u64,
    pub errors_replied: u64,
    pub syntax_errors: u64,
    pub disconnects: u64,
}

struct ConnState {
    parser: Parser,
    /// Unparsed bytes received while waiting; after the wait ends, the
    /// bytes still to resume.
    /// INVARIANT: empty unless `waiting`, or resuming (see the module docs).
    pending: Vec<u8>,
    /// INVARIANT: `waiting` iff the lock table has this connection queued.
    waiting: bool,
    /// INVARIANT: `Some` iff waiting with a finite timeout; the timer's value
    /// is this connection.
    timer: Option<TimerId>,
}

/// The protocol engine. See the module docs.
pub struct Core {
    config: Config,
    table: LockTable,
    timers: TimerWheel<ConnId>,
    /// Indexed by `ConnId`; `None` for ids not open.
    conns: Vec<Option<ConnState>>,
    open: usize,
    outputs: VecDeque<Output>,
    /// Connections whose wait ended, in that order, for `poll_resumable`.
    resume: VecDeque<ConnId>,
    granted: Vec<ConnId>,
    stats: Stats,
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    checks: u64,
}

impl Core {
    pub fn new(config: Config, now_us: u64) -> Self {
        let mut table = LockTable::new();
        table.set_limits(Limits {
            max_held_per_conn: config.max_locks_per_connection,
            max_key_bytes: config.max_key_bytes,
        });
        Core {
            config,
            table,
            timers: TimerWheel::new(now_us / 1000),
            conns: Vec::new(),
            open: 0,
            outputs: VecDeque::new(),
            resume: VecDeque::new(),
            granted: Vec::new(),
            stats: Stats::default(),
            checks: 0,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.open
    }

    /// Keys currently held.
    pub fn keys_held(&self) -> usize {
        self.table.keys_held()
    }

    /// Connections waiting for a lock.
    pub fn waiters(&self) -> usize {
        self.table.waiters()
    }

    /// A new connection with id `conn` (not open already).
    pub fn handle_open(&mut self, conn: ConnId) {
        if self.conns.len() <= conn.0 {
            self.conns.resize_with(conn.0 + 1, || None);
        }
        debug_assert!(self.conns[conn.0].is_none(), "{conn:?} opened twice");
        self.conns[conn.0] = Some(ConnState {
            parser: Parser::new(self.config.max_line_bytes),
            pending: Vec::new(),
            waiting: false,
            timer: None,
        });
        self.table.open(conn);
        self.open += 1;
        self.debug_check();
    }

    /// Bytes received from `conn`. Unknown connections are ignored.
    pub fn handle_bytes(&mut self, conn: ConnId, bytes: &[u8], now_us: u64) {
        self.expire(now_us);
        let Some(Some(st)) = self.conns.get_mut(conn.0) else {
            return;
        };
        if st.waiting || !st.pending.is_empty() {
            // Waiting, or resuming (perhaps since its wait just timed out):
            // the bytes buffered before run first (in-order processing,
            // PROTOCOL.md rule 4).
            st.pending.extend_from_slice(bytes);
        } else {
            let used = self.run(conn, bytes, now_us);
            if let Some(Some(st)) = self.conns.get_mut(conn.0) {
                if st.waiting {
                    st.pending.extend_from_slice(&bytes[used..]);
                }
            }
        }
        self.debug_check();
    }

    /// The connection closed or reset: its wait is withdrawn and its locks
    /// released at once. Unknown connections are ignored.
    pub fn handle_closed(&mut self, conn: ConnId, now_us: u64) {
        self.expire(now_us);
        if self.forget(conn) {
            self.stats.disconnects += 1;
        }
        self.debug_check();
    }

    /// Fires every timeout due at `now_us`.
    pub fn handle_timeout(&mut self, now_us: u64) {
        self.expire(now_us);
        self.debug_check();
    }

    /// A connection whose wait ended with commands buffered behind it, in
    /// the order the waits ended. Call [`Core::handle_resume`] for it until
    /// that returns false (or it closes). A connection may be reported
    /// again while still resuming; `handle_resume` then has nothing to do.
    pub fn poll_resumable(&mut self) -> Option<ConnId> {
        while let Some(conn) = self.resume.pop_front() {
            if matches!(self.conns.get(conn.0), Some(Some(st)) if !st.waiting && !st.pending.is_empty())
            {
                return Some(conn);
            }
        }
        None
    }

    /// Runs the next (at most) `max_bytes` of `conn`'s buffered bytes (at
    /// least one byte), as if they had just been received. Returns whether
    /// bytes remain to resume; false once the buffer is used up, or the
    /// connection waits again, closed, or is unknown.
    pub fn handle_resume(&mut self, conn: ConnId, max_bytes: usize, now_us: u64) -> bool {
        self.expire(now_us);
        let Some(Some(st)) = self.conns.get_mut(conn.0) else {
            return false;
        };
        if st.waiting || st.pending.is_empty() {
            return false;
        }
        let mut buf = std::mem::take(&mut st.pending);
        let end = buf.len().min(max_bytes.max(1));
        let used = self.run(conn, &buf[..end], now_us);
        let more = match self.conns.get_mut(conn.0) {
            Some(Some(st)) => {
                buf.drain(..used);
                if buf.is_empty() && buf.capacity() > 4096 {
                    // Do not keep a large buffer for the next wait.
                    buf = Vec::new();
                }
                st.pending = buf;
                !st.waiting && !st.pending.is_empty()
            }
            _ => false,
        };
        self.debug_check();
        more
    }

    /// The next thing to do, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When `handle_timeout` should be called next (µs), if any timer is
    /// pending. May be earlier than the first deadline, never later.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.next_wake_ms().map(|ms| ms.saturating_mul(1000))
    }

    /// Whether the reactor should read more from `conn`: false while the
    /// bytes buffered behind a waiting `lock` are at their bound, and while
    /// it is resuming.
    pub fn wants_input(&self, conn: ConnId) -> bool {
        match self.conns.get(conn.0) {
            // Only a waiting connection buffers; the others are always read
            // (even with a bound of 0).
            Some(Some(st)) if st.waiting => st.pending.len() < self.config.max_pending_bytes,
            Some(Some(st)) => st.pending.is_empty(),
            _ => false,
        }
    }

    /// Whether `conn` has a `lock` waiting.
    pub fn is_waiting(&self, conn: ConnId) -> bool {
        matches!(self.conns.get(conn.0), Some(Some(st)) if st.waiting)
    }

    /// Runs commands from `input` for a connection that is not waiting, until
    /// the input ends, a `lock` has to wait, or a syntax error. Returns the
    /// bytes used; the rest belongs in `pending` if the connection now waits.
    fn run(&mut self, conn: ConnId, input: &[u8], now_us: u64) -> usize {
        let mut used = 0;
        loop {
            let Some(Some(st)) = self.conns.get_mut(conn.0) else {
                return used;
            };
            debug_assert!(!st.waiting);
            let (n, step) = st.parser.advance(&input[used..]);
            used += n;
            match step {
                Step::Pending => return used,
                Step::Error(e) => {
                    self.stats.syntax_errors += 1;
                    self.forget(conn);
                    self.outputs.push_back(Output::Close(conn, e));
                    return used;
                }
                Step::Done(cmd) => {
                    self.stats.commands += 1;
                    let key = st.parser.key();
                    let reply = match cmd {
                        Command::Lock { timeout_ms } => match self.table.lock(conn, key) {
                            LockOutcome::Granted => Reply::Locked,
                            LockOutcome::AlreadyHeld => Reply::AlreadyLocked,
                            LockOutcome::TooManyLocks => Reply::TooManyLocks,
                            LockOutcome::TableFull => Reply::TableFull,
                            LockOutcome::Queued if timeout_ms == 0 => {
                                // A try-lock: its deadline is now.
                                self.table.withdraw(conn);
                                Reply::Timeout
                            }
                            LockOutcome::Queued => {
                                st.waiting = true;
                                if timeout_ms < INFINITE_TIMEOUT_MS {
                                    let deadline_ms =
                                        now_us.div_ceil(1000).saturating_add(timeout_ms);
                                    st.timer = Some(self.timers.insert(deadline_ms, conn));
                                }
                                return used;
                            }
                        },
                        Command::Unlock => match self.table.unlock(conn, key) {
                            UnlockOutcome::Unlocked { granted } => {
                                if let Some(g) = granted {
                                    self.wake(g, Reply::Locked);
                                }
                                Reply::Unlocked
                            }
                            UnlockOutcome::NotLocked => Reply::NotLocked,
                            UnlockOutcome::NotOwner => Reply::NotOwner,
                        },
                    };
                    self.count(reply);
                    self.outputs.push_back(Output::Reply(conn, reply));
                }
            }
        }
    }

    fn count(&mut self, reply: Reply) {
        match reply {
            Reply::Locked => self.stats.granted += 1,
            Reply::Timeout => self.stats.timeouts += 1,
            Reply::Unlocked => self.stats.unlocked += 1,
            Reply::AlreadyLocked
            | Reply::NotLocked
            | Reply::NotOwner
            | Reply::TooManyLocks
            | Reply::TableFull => self.stats.errors_replied += 1,
        }
    }

    /// Ends `conn`'s wait with `reply` (granted or timed out) and schedules
    /// its pending bytes to run.
    fn wake(&mut self, conn: ConnId, reply: Reply) {
        let Some(Some(st)) = self.conns.get_mut(conn.0) else {
            debug_assert!(false, "waking unknown {conn:?}");
            return;
        };
        debug_assert!(st.waiting);
        st.waiting = false;
        if let Some(t) = st.timer.take() {
            if reply == Reply::Locked {
                let cancelled = self.timers.cancel(t);
                debug_assert_eq!(cancelled, Some(conn));
            }
        }
        self.count(reply);
        self.outputs.push_back(Output::Reply(conn, reply));
        self.resume.push_back(conn);
    }

    /// Fires due timers.
    fn expire(&mut self, now_us: u64) {
        let now_ms = now_us / 1000;
        while let Some((_deadline, conn)) = self.timers.poll(now_ms) {
            debug_assert!(_deadline <= now_ms);
            let withdrawn = self.table.withdraw(conn);
            debug_assert!(withdrawn, "timer fired for {conn:?} not waiting");
            // The timer is spent: clear it before `wake` so it is not cancelled.
            if let Some(Some(st)) = self.conns.get_mut(conn.0) {
                st.timer = None;
            }
            self.wake(conn, Reply::Timeout);
        }
    }

    /// Drops `conn`: withdraws its wait, releases its locks (granting the
    /// next waiters) and frees its state. Returns whether it was open.
    fn forget(&mut self, conn: ConnId) -> bool {
        let Some(st) = self.conns.get_mut(conn.0).and_then(Option::take) else {
            return false;
        };
        if let Some(t) = st.timer {
            let cancelled = self.timers.cancel(t);
            debug_assert_eq!(cancelled, Some(conn));
        }
        let mut granted = std::mem::take(&mut self.granted);
        self.table.close(conn, &mut granted);
        for g in granted.drain(..) {
            self.wake(g, Reply::Locked);
        }
        self.granted = granted;
        self.open -= 1;
        true
    }

    /// Debug builds check every invariant after each public mutation; with
    /// many connections only every 1024th time, so tests with thousands of
    /// connections do not go quadratic.
    fn debug_check(&mut self) {
        #[cfg(debug_assertions)]
        {
            self.checks = self.checks.wrapping_add(1);
            if self.conns.len() <= 1024 || self.checks % 1024 == 0 {
                self.check_invariants();
            }
        }
    }

    /// Checks the global invariants; panics on the first violation:
    /// every holder and waiter is a live connection, no connection waits
    /// twice, a key exists only while held, and every waiter with a deadline
    /// has exactly one live timer.
    pub fn check_invariants(&self) {
        self.table.check_invariants();
        let mut timers = 0;
        let mut open = 0;
        for (i, st) in self.conns.iter().enumerate() {
            let conn = ConnId(i);
            let Some(st) = st else {
                assert!(!self.table.is_waiting(conn) && self.table.held_by(conn) == 0);
                continue;
            };
            open += 1;
            assert_eq!(
                st.waiting,
                self.table.is_waiting(conn),
                "{conn:?} waiting flag"
            );
            if st.timer.is_some() {
                assert!(st.waiting, "{conn:?} has a timer but does not wait");
                timers += 1;
            }
        }
        assert_eq!(open, self.open, "open count");
        assert_eq!(timers, self.timers.len(), "a timer without a waiter");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1000;

    struct Fixture {
        core: Core,
        now_us: u64,
    }

    impl Fixture {
        fn new(conns: usize) -> Self {
            let mut core = Core::new(Config::default(), 0);
            for i in 0..conns {
                core.handle_open(ConnId(i));
            }
            Fixture { core, now_us: 0 }
        }
        fn send(&mut self, c: usize, bytes: &str) {
            self.core
                .handle_bytes(ConnId(c), bytes.as_bytes(), self.now_us);
        }
        fn advance_ms(&mut self, ms: u64) {
            self.now_us += ms * MS;
            self.core.handle_timeout(self.now_us);
        }
        /// Resumes every connection whose wait ended, in turn, then
        /// collects the outputs.
        fn out(&mut self) -> Vec<(usize, String)> {
            while let Some(c) = self.core.poll_resumable() {
                while self.core.handle_resume(c, 7, self.now_us) {}
            }
            let mut v = vec![];
            while let Some(o) = self.core.poll_output() {
                v.push(match o {
                    Output::Reply(c, r) => (c.0, String::from_utf8_lossy(r.as_bytes()).into()),
                    Output::Close(c, _) => (c.0, "CLOSE".into()),
                });
            }
            v
        }
    }

    fn r(c: usize, s: &str) -> (usize, String) {
        (c, s.to_string())
    }

    #[test]
    fn every_reply() {
        let mut f = Fixture::new(2);
        f.send(0, "lock a 100\r\nlock a 100\r\nunlock b\r\n");
        f.send(1, "unlock a\r\n");
        f.send(0, "unlock a\r\n");
        assert_eq!(
            f.out(),
            vec![
                r(0, "l locked\r\n"),
                r(0, "e already locked\r\n"),
                r(0, "e not locked\r\n"),
                r(1, "e not owner\r\n"),
                r(0, "u unlocked\r\n"),
            ]
        );
    }

    #[test]
    fn timeout_never_early_and_try_lock() {
        let mut f = Fixture::new(3);
        f.send(0, "lock a 0\r\n");
        f.now_us = 500; // mid-millisecond: the deadline rounds up
        f.send(1, "lock a 10\r\n");
        f.send(2, "lock a 0\r\n");
        assert_eq!(f.out(), vec![r(0, "l locked\r\n"), r(2, "t timeout\r\n")]);
        f.advance_ms(10); // now = 10.5 ms, deadline 11 ms
        assert_eq!(f.out(), vec![]);
        f.now_us = 10_999;
        f.core.handle_timeout(f.now_us);
        assert_eq!(f.out(), vec![]);
        f.now_us = 11_000;
        f.core.handle_timeout(f.now_us);
        assert_eq!(f.out(), vec![r(1, "t timeout\r\n")]);
        assert_eq!(f.core.waiters(), 0);
    }

    #[test]
    fn waiting_defers_later_commands() {
        let mut f = Fixture::new(2);
        f.send(0, "lock a 1000\r\n");
        f.send(1, "lock a 1000\r\nlock b 5\r\nunl");
        f.send(1, "ock b\r\n");
        assert_eq!(f.out(), vec![r(0, "l locked\r\n")]);
        assert!(f.core.is_waiting(ConnId(1)));
        f.send(0, "unlock a\r\n");
        assert_eq!(
            f.out(),
            vec![
                r(1, "l locked\r\n"),
                r(0, "u unlocked\r\n"),
                r(1, "l locked\r\n"),
                r(1, "u unlocked\r\n"),
            ]
        );
    }

    #[test]
    fn timeout_resumes_pending_commands() {
        let mut f = Fixture::new(2);
        f.send(0, "lock a 0\r\n");
        f.send(1, "lock a 5\r\nlock b 0\r\n");
        f.advance_ms(6);
        assert_eq!(
            f.out(),
            vec![
                r(0, "l locked\r\n"),
                r(1, "t timeout\r\n"),
                r(1, "l locked\r\n")
            ]
        );
    }

    #[test]
    fn disconnect_releases_and_withdraws() {
        let mut f = Fixture::new(4);
        f.send(0, "lock a 0\r\nlock b 0\r\n");
        f.send(1, "lock a 100\r\n");
        f.send(2, "lock b 100\r\n");
        f.send(3, "lock a 100\r\n");
        f.out();
        f.core.handle_closed(ConnId(1), f.now_us); // waiter withdrawn
        f.core.handle_closed(ConnId(0), f.now_us); // holder gone
        let mut got = f.out();
        got.sort();
        assert_eq!(got, vec![r(2, "l locked\r\n"), r(3, "l locked\r\n")]);
        // The withdrawn waiter's timer is gone too.
        f.advance_ms(1000);
        assert_eq!(f.out(), vec![]);
    }

    #[test]
    fn syntax_error_replies_then_closes_and_releases() {
        let mut f = Fixture::new(2);
        f.send(1, "lock a 0\r\n");
        f.send(
            0,
            "lock b 0\r\nunlock b\r\nlock b 0\r\nlock\tb 0\r\nlock c 0\r\n",
        );
        f.send(1, "lock b 0\r\n");
        assert_eq!(
            f.out(),
            vec![
                r(1, "l locked\r\n"),
                r(0, "l locked\r\n"),
                r(0, "u unlocked\r\n"),
                r(0, "l locked\r\n"),
                r(0, "CLOSE"),
                r(1, "l locked\r\n"),
            ]
        );
        assert_eq!(f.core.connections(), 1);
        assert_eq!(f.core.stats().syntax_errors, 1);
    }

    #[test]
    fn huge_timeout_waits_forever() {
        let mut f = Fixture::new(2);
        f.send(0, "lock a 0\r\n");
        f.send(1, "lock a 99999999999999999999999999999999\r\n");
        f.advance_ms(10u64.pow(12));
        assert_eq!(f.out(), vec![r(0, "l locked\r\n")]);
        assert!(f.core.is_waiting(ConnId(1)));
        assert_eq!(f.core.poll_timeout(), None);
        f.send(0, "unlock a\r\n");
        assert_eq!(f.out(), vec![r(1, "l locked\r\n"), r(0, "u unlocked\r\n")]);
    }

    /// Regression (found by the `core` fuzzer; seed
    /// `fuzz/corpus/core/regress-input-after-missed-timeout-runs-in-order`):
    /// when a waiter's deadline passed but no `handle_timeout` ran yet and
    /// its next bytes arrive first, the bytes it sent while waiting must run
    /// before the new ones. They used to run after them, so "unl" + "ock b"
    /// split across the wait was misparsed and the client dropped.
    #[test]
    fn input_after_a_missed_tick_runs_after_the_buffered_commands() {
        let mut f = Fixture::new(2);
        f.send(0, "lock a 0\r\nlock b 0\r\n");
        f.send(1, "lock a 5\r\nlock b 100\r\nunl");
        f.now_us = 10_000; // past the 5 ms deadline; no handle_timeout yet
        f.send(1, "ock b\r\n");
        assert_eq!(
            f.out(),
            vec![
                r(0, "l locked\r\n"),
                r(0, "l locked\r\n"),
                r(1, "t timeout\r\n"),
            ]
        );
        assert!(f.core.is_waiting(ConnId(1)));
        f.send(0, "unlock b\r\n");
        assert_eq!(
            f.out(),
            vec![
                r(1, "l locked\r\n"),
                r(0, "u unlocked\r\n"),
                r(1, "u unlocked\r\n"),
            ]
        );
    }

    #[test]
    fn lock_limits_answer_with_errors_and_change_nothing() {
        let mut core = Core::new(
            Config {
                max_locks_per_connection: 2,
                max_key_bytes: 3 * (crate::lock_table::KEY_OVERHEAD_BYTES + 1),
                ..Config::default()
            },
            0,
        );
        core.handle_open(ConnId(0));
        core.handle_open(ConnId(1));
        let mut f = Fixture { core, now_us: 0 };
        f.send(0, "lock a 0\r\nlock b 0\r\nlock c 0\r\n");
        f.send(1, "lock c 0\r\nlock d 0\r\nlock a 5\r\n");
        assert_eq!(
            f.out(),
            vec![
                r(0, "l locked\r\n"),
                r(0, "l locked\r\n"),
                r(0, "e too many locks\r\n"),
                r(1, "l locked\r\n"),
                r(1, "e lock table full\r\n"),
            ]
        );
        f.send(0, "unlock b\r\nunlock a\r\n");
        assert_eq!(
            f.out(),
            vec![
                r(0, "u unlocked\r\n"),
                r(1, "l locked\r\n"),
                r(0, "u unlocked\r\n"),
            ]
        );
    }

    /// Regression: `--max-pending-bytes 0` (found while model-checking the
    /// core's limits) paused reading from every connection, waiting or not,
    /// so the daemon answered nobody. Zero must only mean "buffer nothing
    /// behind a waiting lock".
    #[test]
    fn zero_pending_bound_still_reads_connections_that_do_not_wait() {
        let config = Config {
            max_pending_bytes: 0,
            ..Config::default()
        };
        let mut f = Fixture {
            core: Core::new(config, 0),
            now_us: 0,
        };
        f.core.handle_open(ConnId(0));
        f.core.handle_open(ConnId(1));
        assert!(f.core.wants_input(ConnId(0)));
        f.send(0, "lock a 0\r\n");
        f.send(1, "lock a 100\r\n");
        assert!(f.core.wants_input(ConnId(0)));
        assert!(!f.core.wants_input(ConnId(1)), "a waiter buffers nothing");
        f.send(0, "unlock a\r\n");
        assert!(f.core.wants_input(ConnId(1)));
        assert_eq!(
            f.out(),
            vec![
                r(0, "l locked\r\n"),
                r(1, "l locked\r\n"),
                r(0, "u unlocked\r\n"),
            ]
        );
    }

    #[test]
    fn pending_input_is_bounded() {
        let mut f = Fixture::new(2);
        f.send(0, "lock a 0\r\n");
        f.send(1, "lock a 100000\r\n");
        assert!(f.core.wants_input(ConnId(1)));
        let chunk = "unlock zzz\r\n".repeat(1000);
        let mut sent = 0;
        while f.core.wants_input(ConnId(1)) {
            f.send(1, &chunk);
            sent += chunk.len();
        }
        assert!(sent >= DEFAULT_MAX_PENDING_BYTES);
        assert!(sent < DEFAULT_MAX_PENDING_BYTES + chunk.len());
        f.out();
        f.send(0, "unlock a\r\n");
        let out = f.out();
        assert_eq!(out.len(), 2 + sent / "unlock zzz\r\n".len());
        assert!(f.core.wants_input(ConnId(1)));
    }
}
