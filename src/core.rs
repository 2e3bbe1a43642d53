//! The sans-I/O protocol engine: bytes and a clock in, replies out.
//!
//! `Core` ties the [`parser`], the [lock table](crate::lock_table)
//! and the [timer wheel](crate::timer) together and owns every protocol rule
//! of `PROTOCOL.md`. It never touches a socket or reads the clock: the reactor
//! (or a test, or a fuzzer) calls the `handle_*` inputs with the current time
//! and drains [`Core::poll_output`]; [`Core::poll_timeout`] says when to call
//! [`Core::handle_timeout`] next. Even the fencing tokens' seed (the wall
//! clock at start) comes in through [`Config::token_seed`].
//!
//! # Time
//!
//! `now_us` is microseconds on any monotonic clock, and so are deadlines: a
//! `lock` received at `now_us` with `timeout_ms` gets the deadline
//! `now_us + 1000 * timeout_ms`, and it fires at the first `handle_*` call
//! whose `now_us >= deadline` (the timer wheel ticks in microseconds). So a
//! timeout is never answered early, and late only by the reactor's wake-up
//! and loop latency: a burst of timeouts is answered one by one as each
//! falls due, not in clusters of a coarser tick. The auth failure delay is a
//! deadline on the same wheel.
//!
//! # In-order processing
//!
//! A connection whose `lock` is queued is *waiting*: bytes it sends meanwhile
//! are kept, unparsed, in its `pending` buffer, and run once the lock is
//! granted or times out. [`Core::wants_input`] turns false when that buffer
//! reaches `max_pending_bytes`, and the reactor stops reading the socket.
//! A connection in its auth failure delay runs nothing more: it is answered
//! `e auth failed` and closed when the delay ends.
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
//!
//! # Lock events
//!
//! With [`Config::events`] (the daemon's `-v`) the core also reports what
//! happens to locks, through [`Core::poll_event`]:
//! grants (at once or after a wait), timeouts, releases (by unlock,
//! disconnect or eviction, with how long the key was held) and evictions,
//! each naming the connection's peer and name. Off, the lock path tests one
//! flag and copies nothing.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::lock_table::{ConnId, KeyInfo, Limits, LockOutcome, LockTable, UnlockOutcome};
use crate::parser::{self, Command, ParseError, Parser, Step};
use crate::stats::ReleaseCause;
pub use crate::stats::Stats;
use crate::timer::{self, TimerId, TimerWheel};
use crate::wire::{self, ErrorReply, MAX_LIMIT, MAX_SECRET_BYTES};

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
/// `lock_table::KEY_OVERHEAD_BYTES`): 256 MiB, about 2 million short keys.
pub const DEFAULT_MAX_KEY_BYTES: usize = 256 << 20;

/// Timeouts of at least this many milliseconds (about 2.1 years) never fire:
/// they mean "wait until granted or disconnected" (PROTOCOL.md, rule 7).
pub const INFINITE_TIMEOUT_MS: u64 = wire::INFINITE_TIMEOUT_MS;
// The longest finite timeout, in µs, fits the wheel with its slack to spare.
const _: () = assert!((INFINITE_TIMEOUT_MS - 1) * US_PER_MS <= timer::MAX_DELAY);

/// Deadlines are in µs, timeouts in ms.
const US_PER_MS: u64 = 1000;

/// Default delay before a wrong secret is answered `e auth failed` (and the
/// connection closed): slows down guessing without costing the loop anything
/// (it is a timer).
pub const DEFAULT_AUTH_DELAY_MS: u64 = 100;

/// Shortest auth failure delay (PROTOCOL.md rule V4); smaller configured
/// values are raised to it.
pub const MIN_AUTH_DELAY_MS: u64 = 50;

/// The shared secret of `--auth-file`: at most [`MAX_SECRET_BYTES`] bytes of
/// the secret alphabet, held inline so [`Config`] stays `Copy`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Secret {
    bytes: [u8; MAX_SECRET_BYTES],
    len: usize,
}

impl Secret {
    /// The secret, if `bytes` is one a client can send: 1 to
    /// [`MAX_SECRET_BYTES`] bytes of the secret alphabet.
    pub fn new(bytes: &[u8]) -> Option<Secret> {
        if bytes.is_empty()
            || bytes.len() > MAX_SECRET_BYTES
            || !bytes.iter().all(|&b| wire::is_secret_byte(b))
        {
            return None;
        }
        let mut s = Secret {
            bytes: [0; MAX_SECRET_BYTES],
            len: bytes.len(),
        };
        s.bytes[..bytes.len()].copy_from_slice(bytes);
        Some(s)
    }

    /// Whether `given` is the secret, in time independent of where they
    /// differ and of either length (every byte of the fixed-size buffer is
    /// compared).
    pub fn matches(&self, given: &[u8]) -> bool {
        let mut diff = u8::from(given.len() != self.len);
        for (i, &b) in self.bytes.iter().enumerate() {
            diff |= b ^ given.get(i).copied().unwrap_or(0);
        }
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.len)
    }
}

/// The core's limits and settings; every limit bounds something a client
/// controls.
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
    /// The first fencing token; the daemon passes the wall clock's
    /// nanoseconds since the Unix epoch at start (raised to at least 1).
    pub token_seed: u64,
    /// With a secret, every connection must `auth` first (PROTOCOL.md V4).
    pub auth: Option<Secret>,
    /// Delay before `e auth failed`, at least [`MIN_AUTH_DELAY_MS`].
    pub auth_delay_ms: u64,
    /// Report lock events through [`Core::poll_event`] (the daemon's `-v`). Off,
    /// the lock path builds none and copies no key.
    pub events: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_line_bytes: parser::DEFAULT_MAX_LINE_BYTES,
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
            max_locks_per_connection: DEFAULT_MAX_LOCKS_PER_CONNECTION,
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            token_seed: 1,
            auth: None,
            auth_delay_ms: DEFAULT_AUTH_DELAY_MS,
            events: false,
        }
    }
}

/// A reply line.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reply {
    /// `l locked`.
    Locked,
    /// `t timeout`.
    Timeout,
    /// `u unlocked`.
    Unlocked,
    /// `o ok`.
    Ok,
    /// `e <message>`.
    Error(ErrorReply),
    /// `a <token>` or `o evicted <n>`, encoded inline: no allocation.
    Short(ShortLine),
    /// A whole `i …` or `s …` line, CRLF included (rare: only these
    /// replies allocate).
    Line(Box<[u8]>),
}

/// A short reply line built at run time, held inline: a prefix, a `u64` in
/// decimal and CRLF fit in 32 bytes. The line is `bytes[start..]`: it is
/// written from its end, digits first, so no part is copied twice.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShortLine {
    bytes: [u8; 32],
    start: u8,
}

/// `"00" "01" ... "99"`: the decimal digits of every number below 100.
const DIGIT_PAIRS: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

impl ShortLine {
    /// `prefix`, `n` in decimal, CRLF. `prefix` is at most 10 bytes (a
    /// constant at each call site, so its copy is inlined).
    #[inline(always)]
    fn new(prefix: &[u8], mut n: u64) -> Self {
        debug_assert!(prefix.len() <= 10);
        let mut bytes = [0u8; 32];
        bytes[30] = b'\r';
        bytes[31] = b'\n';
        // Two digits per division (a fencing token has 19), right to left.
        let mut at = 30;
        while n >= 100 {
            let pair = 2 * (n % 100) as usize;
            n /= 100;
            at -= 2;
            bytes[at] = DIGIT_PAIRS[pair];
            bytes[at + 1] = DIGIT_PAIRS[pair + 1];
        }
        if n >= 10 {
            let pair = 2 * n as usize;
            at -= 2;
            bytes[at] = DIGIT_PAIRS[pair];
            bytes[at + 1] = DIGIT_PAIRS[pair + 1];
        } else {
            at -= 1;
            bytes[at] = b'0' + n as u8;
        }
        at -= prefix.len();
        bytes[at..at + prefix.len()].copy_from_slice(prefix);
        ShortLine {
            bytes,
            start: at as u8,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[usize::from(self.start)..]
    }
}

impl fmt::Debug for ShortLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_bytes().escape_ascii().to_string())
    }
}

impl Reply {
    /// `a <token>`.
    pub fn acquired(token: u64) -> Reply {
        Reply::Short(ShortLine::new(wire::ACQUIRED_PREFIX, token))
    }

    /// `o evicted <n>`.
    pub fn evicted(n: u64) -> Reply {
        Reply::Short(ShortLine::new(wire::EVICTED_PREFIX, n))
    }

    /// The reply's bytes on the wire, CRLF included.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Reply::Locked => wire::LOCKED,
            Reply::Timeout => wire::TIMEOUT,
            Reply::Unlocked => wire::UNLOCKED,
            Reply::Ok => wire::OK,
            Reply::Error(e) => e.as_bytes(),
            Reply::Short(line) => line.as_bytes(),
            Reply::Line(line) => line,
        }
    }

    /// Appends the reply's bytes: what the reactor does with each reply.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }

    /// The reply's bytes in a new buffer (tests and logs).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

/// Why the core closes a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// A syntax error (PROTOCOL.md rule 6).
    Syntax(ParseError),
    /// Auth is on and the first command was not `auth`.
    AuthRequired,
    /// A wrong (or too long) secret, after the delay.
    AuthFailed,
    /// An `evict` of a key this connection held.
    Evicted,
}

impl CloseReason {
    /// What happened, for the start of the log line ("syntax error from
    /// client ADDR: DETAIL").
    pub const fn label(self) -> &'static str {
        match self {
            CloseReason::Syntax(_) => "syntax error",
            CloseReason::AuthRequired => "auth required",
            CloseReason::AuthFailed => "auth failed",
            CloseReason::Evicted => "evicted",
        }
    }
}

/// The detail: the parse error, or what the client did.
impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Syntax(e) => e.fmt(f),
            CloseReason::AuthRequired => f.write_str("its first command was not auth"),
            CloseReason::AuthFailed => f.write_str("wrong secret"),
            CloseReason::Evicted => f.write_str("an evict of a key it held"),
        }
    }
}

/// What the core asks the reactor to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Append this reply to the connection's output.
    Reply(ConnId, Reply),
    /// Send the replies queued so far, then close the connection. The core
    /// has already forgotten it (its locks are released and its wait
    /// withdrawn); do not call `handle_closed` for it.
    Close(ConnId, CloseReason),
}

/// Who a lock [`Event`] is about: the connection, its peer and the label of
/// its last `name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Party {
    pub conn: ConnId,
    pub peer: Option<SocketAddr>,
    pub name: Option<Box<[u8]>>,
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.peer {
            Some(peer) => write!(f, "client {peer}")?,
            None => write!(f, "client -")?,
        }
        if let Some(name) = &self.name {
            write!(f, " ({})", name.escape_ascii())?;
        }
        Ok(())
    }
}

/// A lock event, reported with [`Config::events`]. Durations are µs on the
/// core's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `who` was granted a slot of `key` with `token`: at once (`waited_us`
    /// is `None`), or after waiting in its queue.
    Granted {
        who: Party,
        key: Box<[u8]>,
        token: u64,
        waited_us: Option<u64>,
    },
    /// `who` was answered `t timeout` for `key` after `waited_us` (0 for a
    /// try-lock).
    Timeout {
        who: Party,
        key: Box<[u8]>,
        waited_us: u64,
    },
    /// `who` gave up its slot of `key` after holding it `held_us`.
    Released {
        who: Party,
        key: Box<[u8]>,
        held_us: u64,
        cause: ReleaseCause,
    },
    /// `by` evicted `victim`, a holder of `key` (its releases follow).
    Evicted {
        by: Party,
        victim: Party,
        key: Box<[u8]>,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |us: u64| us / 1000;
        match self {
            Event::Granted {
                who,
                key,
                token,
                waited_us: None,
            } => write!(
                f,
                "granted {} to {who} at once, token {token}",
                key.escape_ascii()
            ),
            Event::Granted {
                who,
                key,
                token,
                waited_us: Some(us),
            } => write!(
                f,
                "granted {} to {who} after waiting {} ms, token {token}",
                key.escape_ascii(),
                ms(*us)
            ),
            Event::Timeout {
                who,
                key,
                waited_us,
            } => write!(
                f,
                "timeout for {who} on {} after waiting {} ms",
                key.escape_ascii(),
                ms(*waited_us)
            ),
            Event::Released {
                who,
                key,
                held_us,
                cause,
            } => {
                let how = match cause {
                    ReleaseCause::Unlock => "unlock",
                    ReleaseCause::Disconnect => "disconnect",
                    ReleaseCause::Evict => "eviction",
                };
                write!(
                    f,
                    "released {} by {who} on {how} after holding it {} ms",
                    key.escape_ascii(),
                    ms(*held_us)
                )
            }
            Event::Evicted { by, victim, key } => write!(
                f,
                "{by} evicted {victim}, a holder of {}",
                key.escape_ascii()
            ),
        }
    }
}

/// `st`'s identity for an event (copies its name).
fn party(conn: ConnId, st: &ConnState) -> Party {
    Party {
        conn,
        peer: st.peer,
        name: st.name.clone(),
    }
}

// The events' code is out of line, so that the lock path, with events off,
// pays only the test of the flag.

#[cold]
#[inline(never)]
fn push_event(events: &mut VecDeque<Event>, event: Event) {
    events.push_back(event);
}

/// `conn` (`st`) was granted `key` with `token`, at once or after `waited_us`.
#[cold]
#[inline(never)]
fn event_granted(
    events: &mut VecDeque<Event>,
    conn: ConnId,
    st: &ConnState,
    key: &[u8],
    token: u64,
    waited_us: Option<u64>,
) {
    let who = party(conn, st);
    let key = key.into();
    push_event(
        events,
        Event::Granted {
            who,
            key,
            token,
            waited_us,
        },
    );
}

/// `conn` (`st`) was answered `t timeout` for `key` after `waited_us`.
#[cold]
#[inline(never)]
fn event_timeout(
    events: &mut VecDeque<Event>,
    conn: ConnId,
    st: &ConnState,
    key: &[u8],
    waited_us: u64,
) {
    let who = party(conn, st);
    let key = key.into();
    push_event(
        events,
        Event::Timeout {
            who,
            key,
            waited_us,
        },
    );
}

/// `conn` (`st`) is about to unlock `key`: if it holds it, its release.
#[cold]
#[inline(never)]
fn event_unlock(
    events: &mut VecDeque<Event>,
    table: &LockTable,
    conn: ConnId,
    st: &ConnState,
    key: &[u8],
    now_us: u64,
) {
    if let Some(since) = table.held_since(conn, key) {
        let event = Event::Released {
            who: party(conn, st),
            key: key.into(),
            held_us: now_us.saturating_sub(since),
            cause: ReleaseCause::Unlock,
        };
        push_event(events, event);
    }
}

#[cold]
#[inline(never)]
fn copy_key(key: &[u8]) -> Box<[u8]> {
    key.into()
}

/// `by` evicts `victims`, the holders of `key`.
#[cold]
#[inline(never)]
fn event_evictions(
    events: &mut VecDeque<Event>,
    conns: &[Option<ConnState>],
    by: ConnId,
    key: &[u8],
    victims: &[ConnId],
) {
    let Some(Some(st)) = conns.get(by.0) else {
        return;
    };
    let by_party = party(by, st);
    for &v in victims {
        if let Some(Some(vst)) = conns.get(v.0) {
            let event = Event::Evicted {
                by: by_party.clone(),
                victim: party(v, vst),
                key: key.into(),
            };
            push_event(events, event);
        }
    }
}

/// Where a connection is with auth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AuthState {
    /// Auth is off, or the connection authenticated.
    Done,
    /// Auth is on and the connection has not sent the secret yet.
    Required,
    /// A wrong secret: closing when the delay timer fires.
    Failing,
}

struct ConnState {
    parser: Parser,
    /// Unparsed bytes received while waiting; after the wait ends, the
    /// bytes still to resume.
    /// INVARIANT: empty unless `waiting`, or resuming (see the module docs).
    pending: Vec<u8>,
    /// INVARIANT: `waiting` iff the lock table has this connection queued.
    waiting: bool,
    /// INVARIANT: `Some` iff waiting with a finite timeout, or `Failing`;
    /// the timer's value is this connection.
    timer: Option<TimerId>,
    /// The waiting request was `acquire` (granted with `a <token>`), not
    /// `lock` (`l locked`).
    wait_acquire: bool,
    /// When the waiting request arrived, for the wait histograms.
    wait_since_us: u64,
    /// INVARIANT: `Failing` only when not waiting; `Required` only with auth
    /// on.
    auth: AuthState,
    peer: Option<SocketAddr>,
    /// The label of the last `name`.
    name: Option<Box<[u8]>>,
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
    /// Lock events for `poll_event` (only with `Config::events`).
    events: VecDeque<Event>,
    /// Connections whose wait ended, in that order, for `poll_resumable`.
    resume: VecDeque<ConnId>,
    granted: Vec<(ConnId, u64)>,
    /// Scratch for `evict`'s holders.
    victims: Vec<ConnId>,
    stats: Stats,
    /// The latest `now_us` of any input (the clock of grants and releases).
    now_us: u64,
    start_us: u64,
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    checks: u64,
}

/// Whether `ip` is a loopback address (IPv4-mapped ones included).
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// How a wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    Granted(u64),
    Timeout,
}

impl Core {
    /// A core whose clock starts at `now_us` (its uptime counts from there).
    pub fn new(config: Config, now_us: u64) -> Self {
        let mut table = LockTable::new();
        table.set_limits(Limits {
            max_held_per_conn: config.max_locks_per_connection,
            max_key_bytes: config.max_key_bytes,
        });
        table.set_token_seed(config.token_seed);
        let config = Config {
            auth_delay_ms: config.auth_delay_ms.max(MIN_AUTH_DELAY_MS),
            ..config
        };
        Core {
            config,
            table,
            timers: TimerWheel::new(now_us),
            conns: Vec::new(),
            open: 0,
            outputs: VecDeque::new(),
            events: VecDeque::new(),
            resume: VecDeque::new(),
            granted: Vec::new(),
            victims: Vec::new(),
            stats: Stats::default(),
            now_us,
            start_us: now_us,
            checks: 0,
        }
    }

    /// Everything counted so far (a copy).
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.last_token = self.table.last_token();
        s.hold = *self.table.hold_histogram();
        s
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.open
    }

    /// Keys currently held.
    pub fn keys_held(&self) -> usize {
        self.table.keys_held()
    }

    /// Slots held over all keys (each holder of a semaphore counts).
    pub fn holders(&self) -> usize {
        self.table.holders()
    }

    /// Connections waiting for a lock.
    pub fn waiters(&self) -> usize {
        self.table.waiters()
    }

    /// A new connection with id `conn` (not open already) from `peer`
    /// (`None` when unknown; such a connection is not loopback for `evict`).
    pub fn handle_open(&mut self, conn: ConnId, peer: Option<SocketAddr>) {
        if self.conns.len() <= conn.0 {
            self.conns.resize_with(conn.0 + 1, || None);
        }
        debug_assert!(self.conns[conn.0].is_none(), "{conn:?} opened twice");
        let auth = match self.config.auth {
            Some(_) => AuthState::Required,
            None => AuthState::Done,
        };
        self.conns[conn.0] = Some(ConnState {
            parser: Parser::new(self.config.max_line_bytes),
            pending: Vec::new(),
            waiting: false,
            timer: None,
            wait_acquire: false,
            wait_since_us: 0,
            auth,
            peer,
            name: None,
        });
        self.table.open(conn);
        self.open += 1;
        self.stats.accepted += 1;
        self.debug_check();
    }

    /// The reactor refused a connection at accept (`--allow`): counted in
    /// `stats` as `rejected`; the core never sees it otherwise.
    pub fn note_rejected(&mut self) {
        self.stats.rejected += 1;
    }

    /// Bytes received from `conn`. Unknown connections are ignored.
    pub fn handle_bytes(&mut self, conn: ConnId, bytes: &[u8], now_us: u64) {
        self.clock(now_us);
        self.expire(now_us);
        let Some(Some(st)) = self.conns.get_mut(conn.0) else {
            return;
        };
        if st.auth == AuthState::Failing {
            // Closed when the delay ends; nothing it sends meanwhile runs.
        } else if st.waiting || !st.pending.is_empty() {
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
        self.clock(now_us);
        self.expire(now_us);
        if self.forget(conn, ReleaseCause::Disconnect) {
            self.stats.disconnects += 1;
        }
        self.debug_check();
    }

    /// Fires every timeout due at `now_us`.
    pub fn handle_timeout(&mut self, now_us: u64) {
        self.clock(now_us);
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
        self.clock(now_us);
        self.expire(now_us);
        let Some(Some(st)) = self.conns.get_mut(conn.0) else {
            return false;
        };
        if st.waiting || st.pending.is_empty() || st.auth == AuthState::Failing {
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
                !st.waiting && !st.pending.is_empty() && st.auth != AuthState::Failing
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

    /// The next lock event, in order (only with [`Config::events`]).
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` should be called next (µs), if any timer is
    /// pending. May be earlier than the first deadline, never later.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.next_wake_tick()
    }

    /// Whether the reactor should read more from `conn`: false while the
    /// bytes buffered behind a waiting `lock` are at their bound, while it is
    /// resuming, and during an auth failure delay.
    pub fn wants_input(&self, conn: ConnId) -> bool {
        match self.conns.get(conn.0) {
            Some(Some(st)) if st.auth == AuthState::Failing => false,
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

    fn clock(&mut self, now_us: u64) {
        self.now_us = self.now_us.max(now_us);
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
            debug_assert!(!st.waiting && st.auth != AuthState::Failing);
            let (n, step) = st.parser.advance(&input[used..]);
            used += n;
            let cmd = match step {
                Step::Pending => return used,
                Step::Error(e) => {
                    self.stats.syntax_errors += 1;
                    self.close(conn, CloseReason::Syntax(e), ReleaseCause::Disconnect);
                    return used;
                }
                Step::Done(cmd) => cmd,
            };
            self.stats.command(cmd.verb());
            if st.auth == AuthState::Required && !matches!(cmd, Command::Auth { .. }) {
                self.stats.auth_failures += 1;
                self.reply(conn, Reply::Error(ErrorReply::AuthRequired));
                self.close(conn, CloseReason::AuthRequired, ReleaseCause::Disconnect);
                return used;
            }
            let key = st.parser.key();
            let reply = match cmd {
                Command::Lock { timeout_ms } | Command::Acquire { timeout_ms, .. } => {
                    let (limit, acquire) = match cmd {
                        Command::Acquire { limit, .. } => (limit, true),
                        _ => (1, false),
                    };
                    if limit == 0 || limit > MAX_LIMIT {
                        Reply::Error(ErrorReply::BadLimit)
                    } else {
                        match self.table.lock(conn, key, limit, now_us) {
                            LockOutcome::Granted { token } => {
                                self.stats.grants_immediate += 1;
                                self.stats.wait_granted.record(0);
                                if self.config.events {
                                    event_granted(&mut self.events, conn, st, key, token, None);
                                }
                                if acquire {
                                    Reply::acquired(token)
                                } else {
                                    Reply::Locked
                                }
                            }
                            LockOutcome::AlreadyHeld => Reply::Error(ErrorReply::AlreadyLocked),
                            LockOutcome::TooManyLocks => Reply::Error(ErrorReply::TooManyLocks),
                            LockOutcome::TableFull => Reply::Error(ErrorReply::TableFull),
                            LockOutcome::LimitMismatch => Reply::Error(ErrorReply::LimitMismatch),
                            LockOutcome::Queued if timeout_ms == 0 => {
                                // A try-lock: its deadline is now.
                                self.table.withdraw(conn);
                                self.stats.wait_timeout.record(0);
                                if self.config.events {
                                    event_timeout(&mut self.events, conn, st, key, 0);
                                }
                                Reply::Timeout
                            }
                            LockOutcome::Queued => {
                                st.waiting = true;
                                st.wait_acquire = acquire;
                                st.wait_since_us = now_us;
                                if timeout_ms < INFINITE_TIMEOUT_MS {
                                    let deadline_us = now_us.saturating_add(timeout_ms * US_PER_MS);
                                    st.timer = Some(self.timers.insert(deadline_us, conn));
                                }
                                return used;
                            }
                        }
                    }
                }
                Command::Unlock => {
                    if self.config.events {
                        event_unlock(&mut self.events, &self.table, conn, st, key, now_us);
                    }
                    match self.table.unlock(conn, key, now_us) {
                        UnlockOutcome::Unlocked { granted } => {
                            self.stats.release(ReleaseCause::Unlock);
                            if let Some((g, token)) = granted {
                                self.wake(g, Wake::Granted(token));
                            }
                            Reply::Unlocked
                        }
                        UnlockOutcome::NotLocked => Reply::Error(ErrorReply::NotLocked),
                        UnlockOutcome::NotOwner => Reply::Error(ErrorReply::NotOwner),
                    }
                }
                Command::Name { too_long: true } => Reply::Error(ErrorReply::NameTooLong),
                Command::Name { too_long: false } => {
                    st.name = Some(key.into());
                    Reply::Ok
                }
                Command::Auth { too_long } => match self.config.auth {
                    None => Reply::Error(ErrorReply::AuthNotEnabled),
                    Some(secret) if !too_long && secret.matches(key) => {
                        st.auth = AuthState::Done;
                        Reply::Ok
                    }
                    Some(_) => {
                        // Answered when the delay ends; the rest of this
                        // input is never run.
                        self.stats.auth_failures += 1;
                        st.auth = AuthState::Failing;
                        let deadline_us = now_us
                            .saturating_add(self.config.auth_delay_ms.saturating_mul(US_PER_MS));
                        st.timer = Some(self.timers.insert(deadline_us, conn));
                        return used;
                    }
                },
                Command::Info => {
                    let info = self.table.info(key);
                    Reply::Line(self.info_line(info).into_boxed_slice())
                }
                Command::Stats => Reply::Line(self.stats_line().into_boxed_slice()),
                Command::Evict => {
                    let allowed =
                        self.config.auth.is_some() || st.peer.is_some_and(|p| is_loopback(p.ip()));
                    if !allowed {
                        Reply::Error(ErrorReply::NotAllowed)
                    } else {
                        let mut victims = std::mem::take(&mut self.victims);
                        self.table.holders_of(key, &mut victims);
                        if self.config.events {
                            let key = copy_key(key);
                            event_evictions(&mut self.events, &self.conns, conn, &key, &victims);
                        }
                        self.reply(conn, Reply::evicted(victims.len() as u64));
                        for v in victims.drain(..) {
                            self.stats.evictions += 1;
                            self.close(v, CloseReason::Evicted, ReleaseCause::Evict);
                        }
                        self.victims = victims;
                        continue;
                    }
                }
            };
            self.reply(conn, reply);
        }
    }

    /// Counts `reply` and queues it.
    fn reply(&mut self, conn: ConnId, reply: Reply) {
        match reply {
            Reply::Timeout => self.stats.timeouts += 1,
            Reply::Unlocked => self.stats.unlocks += 1,
            Reply::Error(e) => self.stats.error_reply(e),
            _ => {}
        }
        self.outputs.push_back(Output::Reply(conn, reply));
    }

    /// `i limit=<n> holders=<n> waiters=<n>[ token=<t> held_ms=<ms>
    /// peer=<addr:port>[ name=<label>]]\r\n` (the oldest holder).
    fn info_line(&self, info: KeyInfo) -> Vec<u8> {
        use std::io::Write as _;
        let mut line = Vec::with_capacity(160);
        line.extend_from_slice(wire::INFO_PREFIX);
        let _ = write!(
            line,
            "limit={} holders={} waiters={}",
            info.limit, info.holders, info.waiters
        );
        if let Some((holder, token, granted_us)) = info.oldest {
            let held_ms = self.now_us.saturating_sub(granted_us) / 1000;
            let _ = write!(line, " token={token} held_ms={held_ms} peer=");
            let st = self.conns.get(holder.0).and_then(Option::as_ref);
            match st.and_then(|st| st.peer) {
                Some(peer) => {
                    let _ = write!(line, "{peer}");
                }
                None => line.push(b'-'),
            }
            if let Some(name) = st.and_then(|st| st.name.as_deref()) {
                line.extend_from_slice(b" name=");
                line.extend_from_slice(name);
            }
        }
        line.extend_from_slice(wire::CRLF);
        line
    }

    /// The reply to `stats`: `s ` and every field of [`wire::STATS_FIELDS`],
    /// in order, then CRLF (SIGUSR1 logs the same line).
    pub fn stats_line(&self) -> Vec<u8> {
        use std::io::Write as _;
        let s = self.stats();
        let mut line = Vec::with_capacity(400);
        line.extend_from_slice(wire::STATS_PREFIX);
        for (i, field) in wire::STATS_FIELDS.iter().enumerate() {
            if i > 0 {
                line.push(b' ');
            }
            let value = match *field {
                "version" => {
                    let _ = write!(line, "version={}", env!("CARGO_PKG_VERSION"));
                    continue;
                }
                "uptime_s" => self.now_us.saturating_sub(self.start_us) / 1_000_000,
                "connections" => self.open as u64,
                "keys" => self.table.keys_held() as u64,
                "holders" => self.table.holders() as u64,
                "waiters" => self.table.waiters() as u64,
                "grants" => s.grants_total(),
                "timeouts" => s.timeouts,
                "unlocks" => s.unlocks,
                "disconnects" => s.disconnects,
                "evictions" => s.evictions,
                "errors" => s.errors_total(),
                "syntax_errors" => s.syntax_errors,
                "auth_failures" => s.auth_failures,
                "accepted" => s.accepted,
                "rejected" => s.rejected,
                "token" => s.last_token,
                "commands" => s.commands_total(),
                other => unreachable!("stats field {other} has no value"),
            };
            let _ = write!(line, "{field}={value}");
        }
        line.extend_from_slice(wire::CRLF);
        line
    }

    /// Ends `conn`'s wait (granted or timed out) and schedules its pending
    /// bytes to run.
    fn wake(&mut self, conn: ConnId, wake: Wake) {
        let Some(Some(st)) = self.conns.get_mut(conn.0) else {
            debug_assert!(false, "waking unknown {conn:?}");
            return;
        };
        debug_assert!(st.waiting);
        st.waiting = false;
        if let Some(t) = st.timer.take() {
            if wake != Wake::Timeout {
                let cancelled = self.timers.cancel(t);
                debug_assert_eq!(cancelled, Some(conn));
            }
        }
        let waited_us = self.now_us.saturating_sub(st.wait_since_us);
        if self.config.events {
            // The parser has not moved since the waiting `lock`: the bytes
            // behind it are buffered unparsed, so its key is still there.
            let key = st.parser.key();
            match wake {
                Wake::Granted(token) => {
                    event_granted(&mut self.events, conn, st, key, token, Some(waited_us))
                }
                Wake::Timeout => event_timeout(&mut self.events, conn, st, key, waited_us),
            }
        }
        let reply = match wake {
            Wake::Granted(token) => {
                self.stats.grants_queued += 1;
                self.stats.wait_granted.record(waited_us);
                if st.wait_acquire {
                    Reply::acquired(token)
                } else {
                    Reply::Locked
                }
            }
            Wake::Timeout => {
                self.stats.wait_timeout.record(waited_us);
                Reply::Timeout
            }
        };
        self.reply(conn, reply);
        self.resume.push_back(conn);
    }

    /// Fires due timers: wait timeouts and auth failure delays.
    fn expire(&mut self, now_us: u64) {
        while let Some((_deadline, conn)) = self.timers.poll(now_us) {
            debug_assert!(_deadline <= now_us);
            // The timer is spent: clear it before `wake` so it is not cancelled.
            let failing = match self.conns.get_mut(conn.0) {
                Some(Some(st)) => {
                    st.timer = None;
                    st.auth == AuthState::Failing
                }
                _ => false,
            };
            if failing {
                self.reply(conn, Reply::Error(ErrorReply::AuthFailed));
                self.close(conn, CloseReason::AuthFailed, ReleaseCause::Disconnect);
                continue;
            }
            let withdrawn = self.table.withdraw(conn);
            debug_assert!(withdrawn, "timer fired for {conn:?} not waiting");
            self.wake(conn, Wake::Timeout);
        }
    }

    /// The core closes `conn` itself: forgets it (as a disconnect, with
    /// `cause` for its releases) and tells the reactor to close it.
    fn close(&mut self, conn: ConnId, reason: CloseReason, cause: ReleaseCause) {
        if self.forget(conn, cause) {
            self.stats.disconnects += 1;
            self.outputs.push_back(Output::Close(conn, reason));
        }
    }

    /// Drops `conn`: withdraws its wait, releases its locks (granting the
    /// next waiters) and frees its state. Returns whether it was open.
    fn forget(&mut self, conn: ConnId, cause: ReleaseCause) -> bool {
        let Some(st) = self.conns.get_mut(conn.0).and_then(Option::take) else {
            return false;
        };
        if let Some(t) = st.timer {
            let cancelled = self.timers.cancel(t);
            debug_assert_eq!(cancelled, Some(conn));
        }
        for _ in 0..self.table.held_by(conn) {
            self.stats.release(cause);
        }
        if self.config.events {
            let who = party(conn, &st);
            let (now_us, events) = (self.now_us, &mut self.events);
            self.table.for_each_held(conn, |key, granted_us| {
                let event = Event::Released {
                    who: who.clone(),
                    key: key.into(),
                    held_us: now_us.saturating_sub(granted_us),
                    cause,
                };
                push_event(events, event);
            });
        }
        let mut granted = std::mem::take(&mut self.granted);
        self.table.close(conn, self.now_us, &mut granted);
        for (g, token) in granted.drain(..) {
            self.wake(g, Wake::Granted(token));
        }
        self.granted = granted;
        self.open -= 1;
        // Ids past the last open one are dropped (amortized O(1): each was
        // pushed once), and the vector's block given back once three
        // quarters of it is unused.
        while matches!(self.conns.last(), Some(None)) {
            self.conns.pop();
        }
        if self.conns.capacity() > 1024 && self.conns.len() < self.conns.capacity() / 4 {
            self.conns.shrink_to(self.conns.len() * 2);
        }
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
    /// twice, a key exists only while held, a key's holders are at most its
    /// N and N did not change while it existed, tokens increase, and every
    /// waiter with a deadline (and every connection in its auth failure
    /// delay) has exactly one live timer.
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
            if st.auth == AuthState::Failing {
                assert!(!st.waiting, "{conn:?} waits during its auth delay");
                assert!(
                    st.timer.is_some(),
                    "{conn:?} in its auth delay without a timer"
                );
            }
            if st.auth == AuthState::Required {
                assert!(
                    self.config.auth.is_some(),
                    "{conn:?} must auth with auth off"
                );
                assert_eq!(self.table.held_by(conn), 0, "{conn:?} holds before auth");
            }
            if st.timer.is_some() {
                assert!(
                    st.waiting || st.auth == AuthState::Failing,
                    "{conn:?} has a timer but does not wait"
                );
                timers += 1;
            }
        }
        assert_eq!(open, self.open, "open count");
        assert_eq!(timers, self.timers.len(), "a timer without a waiter");
        assert!(
            self.stats.wait_granted.count == self.stats.grants_total(),
            "a grant without its wait time"
        );
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
            Self::with(Config::default(), conns)
        }
        fn with(config: Config, conns: usize) -> Self {
            let mut core = Core::new(config, 0);
            for i in 0..conns {
                core.handle_open(ConnId(i), Some(([127, 0, 0, 1], 5000 + i as u16).into()));
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
                    Output::Reply(c, r) => (c.0, String::from_utf8_lossy(&r.to_bytes()).into()),
                    Output::Close(c, _) => (c.0, "CLOSE".into()),
                });
            }
            while let Some(e) = self.core.poll_event() {
                v.push((usize::MAX, e.to_string()));
            }
            v
        }
    }

    fn r(c: usize, s: &str) -> (usize, String) {
        (c, s.to_string())
    }

    /// With `events` on, every grant (at once or after a wait), timeout,
    /// release (unlock, disconnect, eviction) and eviction is an event
    /// naming the connection's peer and name; with it off, none is.
    #[test]
    fn lock_events() {
        let ev = |s: &str| r(usize::MAX, s);
        for events in [false, true] {
            let mut f = Fixture::with(
                Config {
                    events,
                    token_seed: 10,
                    ..Config::default()
                },
                4,
            );
            f.send(0, "name w0\r\nlock k 0\r\nlock t 0\r\n");
            f.send(1, "lock k 10\r\nlock t 0\r\n");
            f.send(2, "lock k 1000\r\n");
            f.advance_ms(30);
            f.send(0, "unlock k\r\n");
            f.advance_ms(5);
            f.send(3, "lock t 0\r\nevict k\r\n");
            f.advance_ms(7);
            f.core.handle_closed(ConnId(0), f.now_us);
            let got: Vec<_> = f
                .out()
                .into_iter()
                .filter(|(c, _)| *c == usize::MAX)
                .collect();
            if !events {
                assert_eq!(got, vec![]);
                continue;
            }
            assert_eq!(
                got,
                vec![
                    ev("granted k to client 127.0.0.1:5000 (w0) at once, token 10"),
                    ev("granted t to client 127.0.0.1:5000 (w0) at once, token 11"),
                    ev("timeout for client 127.0.0.1:5001 on k after waiting 30 ms"),
                    ev("released k by client 127.0.0.1:5000 (w0) on unlock after holding it 30 ms"),
                    ev("granted k to client 127.0.0.1:5002 after waiting 30 ms, token 12"),
                    ev("timeout for client 127.0.0.1:5003 on t after waiting 0 ms"),
                    ev("client 127.0.0.1:5003 evicted client 127.0.0.1:5002, a holder of k"),
                    ev("released k by client 127.0.0.1:5002 on eviction after holding it 5 ms"),
                    ev(
                        "released t by client 127.0.0.1:5000 (w0) on disconnect after holding it 42 ms"
                    ),
                    // Resumed last: the try-lock buffered behind its wait.
                    ev("granted t to client 127.0.0.1:5001 at once, token 13"),
                ]
            );
        }
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
        f.now_us = 537; // mid-millisecond: the deadline is 10.537 ms, exactly
        f.send(1, "lock a 10\r\n");
        f.send(2, "lock a 0\r\n");
        assert_eq!(f.out(), vec![r(0, "l locked\r\n"), r(2, "t timeout\r\n")]);
        assert!(f.core.poll_timeout().is_some_and(|t| t <= 10_537));
        f.advance_ms(9); // 9.537 ms
        assert_eq!(f.out(), vec![]);
        f.now_us = 10_536; // 1 µs before the deadline
        f.core.handle_timeout(f.now_us);
        assert_eq!(f.out(), vec![]);
        f.now_us = 10_537;
        f.core.handle_timeout(f.now_us);
        assert_eq!(f.out(), vec![r(1, "t timeout\r\n")]);
        assert_eq!(f.core.waiters(), 0);
    }

    /// Deadlines within one millisecond fire one by one, each at its own
    /// microsecond (they used to be rounded up to the next whole
    /// millisecond and leave together).
    #[test]
    fn timeouts_within_one_millisecond_fire_each_at_its_microsecond() {
        let mut f = Fixture::new(4);
        f.send(0, "lock a 0\r\n");
        for (c, at_us) in [(1, 100), (2, 400), (3, 700)] {
            f.now_us = at_us;
            f.send(c, "lock a 5\r\n");
        }
        assert_eq!(f.out(), vec![r(0, "l locked\r\n")]);
        for (c, at_us) in [(1, 5_100), (2, 5_400), (3, 5_700)] {
            f.now_us = at_us - 1;
            f.core.handle_timeout(f.now_us);
            assert_eq!(f.out(), vec![], "before {at_us} us");
            f.now_us = at_us;
            f.core.handle_timeout(f.now_us);
            assert_eq!(f.out(), vec![r(c, "t timeout\r\n")], "at {at_us} us");
        }
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
        core.handle_open(ConnId(0), None);
        core.handle_open(ConnId(1), None);
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
        f.core.handle_open(ConnId(0), None);
        f.core.handle_open(ConnId(1), None);
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

    fn secret(s: &str) -> Option<Secret> {
        Secret::new(s.as_bytes())
    }

    #[test]
    fn acquire_tokens_increase_over_every_grant() {
        let mut f = Fixture::with(
            Config {
                token_seed: 1000,
                ..Config::default()
            },
            3,
        );
        f.send(0, "stats\r\n");
        let s = f.out();
        assert!(s[0].1.contains(" token=0 "), "{s:?}");
        f.send(0, "acquire a 100\r\nlock b 0\r\n");
        f.send(1, "acquire a 100\r\n");
        f.send(2, "acquire a 100\r\n");
        f.send(0, "unlock a\r\n");
        f.send(1, "unlock a\r\n");
        assert_eq!(
            f.out(),
            vec![
                r(0, "a 1000\r\n"),
                r(0, "l locked\r\n"),
                r(1, "a 1002\r\n"),
                r(0, "u unlocked\r\n"),
                r(2, "a 1003\r\n"),
                r(1, "u unlocked\r\n"),
            ]
        );
        f.send(0, "info b\r\n");
        assert_eq!(
            f.out(),
            vec![r(
                0,
                "i limit=1 holders=1 waiters=0 token=1001 held_ms=0 peer=127.0.0.1:5000\r\n"
            )]
        );
        assert_eq!(f.core.stats().last_token, 1003);
    }

    #[test]
    fn semaphore_fifo_mismatch_and_bad_limit() {
        let mut f = Fixture::new(5);
        f.send(0, "acquire s 0 2\r\n");
        f.send(1, "acquire s 0 2\r\n");
        f.send(2, "acquire s 1000 2\r\n");
        f.send(3, "acquire s 1000 3\r\nlock s 0\r\nacquire s 0\r\nacquire s 0 0\r\nacquire s 0 65536\r\nacquire s 0 99999999999\r\n");
        f.send(4, "acquire s 1000 2\r\n");
        let out = f.out();
        assert_eq!(out.iter().filter(|(_, l)| l.starts_with("a ")).count(), 2);
        assert_eq!(
            out[2..].to_vec(),
            vec![
                r(3, "e limit mismatch\r\n"),
                r(3, "e limit mismatch\r\n"),
                r(3, "e limit mismatch\r\n"),
                r(3, "e bad limit\r\n"),
                r(3, "e bad limit\r\n"),
                r(3, "e bad limit\r\n"),
            ]
        );
        f.send(3, "info s\r\n");
        let info = f.out();
        assert!(
            info[0]
                .1
                .starts_with("i limit=2 holders=2 waiters=2 token="),
            "{info:?}"
        );
        // Slots free in any order; waiters are granted in arrival order.
        f.send(1, "unlock s\r\n");
        f.core.handle_closed(ConnId(0), 0);
        let out = f.out();
        assert_eq!(out[0], r(2, out[0].1.as_str()));
        assert!(out[0].1.starts_with("a "));
        assert_eq!(out[1], r(1, "u unlocked\r\n"));
        assert_eq!(out[2].0, 4);
        assert_eq!(f.core.holders(), 2);
        assert_eq!(f.core.waiters(), 0);
        // `unlock` by a non-holder of a held semaphore.
        f.send(3, "unlock s\r\n");
        assert_eq!(f.out(), vec![r(3, "e not owner\r\n")]);
    }

    #[test]
    fn name_info_and_limits() {
        let mut f = Fixture::new(2);
        f.send(0, &format!("name {}\r\n", "x".repeat(64)));
        f.send(0, &format!("name {}\r\n", "y".repeat(65)));
        f.send(0, "name job/7:a.b\r\nlock k 0\r\n");
        f.advance_ms(1500);
        f.send(1, "info k\r\ninfo nothing\r\n");
        assert_eq!(
            f.out(),
            vec![
                r(0, "o ok\r\n"),
                r(0, "e name too long\r\n"),
                r(0, "o ok\r\n"),
                r(0, "l locked\r\n"),
                r(
                    1,
                    "i limit=1 holders=1 waiters=0 token=1 held_ms=1500 peer=127.0.0.1:5000 name=job/7:a.b\r\n"
                ),
                r(1, "i limit=0 holders=0 waiters=0\r\n"),
            ]
        );
    }

    #[test]
    fn stats_fields_in_order_and_moving() {
        let mut f = Fixture::new(2);
        f.send(0, "lock a 0\r\nunlock a\r\nunlock a\r\n");
        f.send(1, "stats\r\n");
        let out = f.out();
        let line = out[3].1.trim_end().strip_prefix("s ").unwrap().to_string();
        let fields: Vec<(&str, &str)> = line
            .split(' ')
            .map(|kv| kv.split_once('=').unwrap())
            .collect();
        let names: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
        assert_eq!(names, wire::STATS_FIELDS);
        let get = |k: &str| fields.iter().find(|(n, _)| *n == k).unwrap().1;
        assert_eq!(get("version"), env!("CARGO_PKG_VERSION"));
        assert_eq!(
            (
                get("connections"),
                get("grants"),
                get("unlocks"),
                get("errors")
            ),
            ("2", "1", "1", "1")
        );
        assert_eq!(
            (get("accepted"), get("token"), get("commands")),
            ("2", "1", "4")
        );
        f.core.note_rejected();
        assert_eq!(f.core.stats().rejected, 1);
        let s = f.core.stats();
        assert_eq!(s.releases_of(ReleaseCause::Unlock), 1);
        assert_eq!(s.hold.count, 1);
        assert_eq!(s.wait_granted.count, 1);
    }

    #[test]
    fn auth_required_first_then_closed() {
        let config = Config {
            auth: secret("s3cret"),
            ..Config::default()
        };
        let mut f = Fixture::with(config, 3);
        f.send(0, "lock a 0\r\nlock b 0\r\n");
        f.send(1, "auth s3cret\r\nlock a 0\r\nauth s3cret\r\n");
        f.send(2, "lock\t\r\n");
        assert_eq!(
            f.out(),
            vec![
                r(0, "e auth required\r\n"),
                r(0, "CLOSE"),
                r(1, "o ok\r\n"),
                r(1, "l locked\r\n"),
                r(1, "o ok\r\n"),
                r(2, "CLOSE"),
            ]
        );
        let s = f.core.stats();
        assert_eq!((s.auth_failures, s.syntax_errors, s.disconnects), (1, 1, 2));
    }

    #[test]
    fn auth_failure_is_a_timer_and_others_are_served_meanwhile() {
        let config = Config {
            auth: secret("right"),
            auth_delay_ms: 10, // raised to the minimum
            ..Config::default()
        };
        let mut f = Fixture::with(config, 3);
        f.send(0, "auth right\r\nlock a 0\r\n");
        f.send(1, "auth wrong\r\nunlock a\r\n");
        f.send(2, &format!("auth {}\r\n", "r".repeat(257)));
        assert!(!f.core.wants_input(ConnId(1)));
        assert!(
            f.core
                .poll_timeout()
                .is_some_and(|t| t <= MIN_AUTH_DELAY_MS * MS)
        );
        f.advance_ms(MIN_AUTH_DELAY_MS - 1);
        f.send(0, "unlock a\r\n");
        f.send(1, "lock a 0\r\n"); // dropped: it is closing
        assert_eq!(
            f.out(),
            vec![
                r(0, "o ok\r\n"),
                r(0, "l locked\r\n"),
                r(0, "u unlocked\r\n")
            ]
        );
        f.advance_ms(1);
        assert_eq!(
            f.out(),
            vec![
                r(1, "e auth failed\r\n"),
                r(1, "CLOSE"),
                r(2, "e auth failed\r\n"),
                r(2, "CLOSE"),
            ]
        );
        assert_eq!(f.core.stats().auth_failures, 2);
        // A peer that leaves during its delay cancels the timer.
        f.core.handle_open(ConnId(1), None);
        f.send(1, "auth nope\r\n");
        f.core.handle_closed(ConnId(1), f.now_us);
        assert_eq!(f.core.poll_timeout(), None);
        assert_eq!(f.out(), vec![]);
    }

    #[test]
    fn auth_not_enabled_keeps_the_connection() {
        let mut f = Fixture::new(1);
        f.send(0, "auth x\r\nlock a 0\r\n");
        assert_eq!(
            f.out(),
            vec![r(0, "e auth not enabled\r\n"), r(0, "l locked\r\n")]
        );
    }

    #[test]
    fn evict_closes_holders_and_grants_the_next() {
        let mut f = Fixture::new(4);
        f.send(0, "acquire s 0 2\r\nlock other 0\r\n");
        f.send(1, "acquire s 0 2\r\n");
        f.send(2, "acquire s 1000 2\r\nunlock s\r\n");
        f.out();
        f.send(3, "evict s\r\nevict s\r\nevict nothing\r\n");
        let out = f.out();
        assert_eq!(out[0], r(3, "o evicted 2\r\n"));
        // The first waiter got a slot; it holds it when the second `evict`
        // runs (its `unlock` is still behind), so that one closes it.
        let mut rest = out[1..].to_vec();
        rest.sort();
        assert_eq!(
            rest,
            vec![
                r(0, "CLOSE"),
                r(1, "CLOSE"),
                r(2, "CLOSE"),
                r(2, "a 4\r\n"),
                r(3, "o evicted 0\r\n"),
                r(3, "o evicted 1\r\n"),
            ]
        );
        assert_eq!(f.core.stats().evictions, 3);
        assert_eq!(f.core.stats().releases_of(ReleaseCause::Evict), 4);
        assert_eq!(f.core.keys_held(), 0);
        // Not loopback, auth off: not allowed.
        f.core
            .handle_open(ConnId(5), Some(([10, 0, 0, 1], 1).into()));
        f.core.handle_open(ConnId(6), None);
        f.send(5, "evict s\r\n");
        f.send(6, "evict s\r\n");
        assert_eq!(
            f.out(),
            vec![r(5, "e not allowed\r\n"), r(6, "e not allowed\r\n")]
        );
        // IPv6 and IPv4-mapped loopback are loopback.
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("::ffff:10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn evict_of_itself_replies_then_closes() {
        let mut f = Fixture::new(2);
        f.send(0, "lock a 0\r\nevict a\r\nlock b 0\r\n");
        assert_eq!(
            f.out(),
            vec![r(0, "l locked\r\n"), r(0, "o evicted 1\r\n"), r(0, "CLOSE")]
        );
        assert_eq!(f.core.connections(), 1);
    }

    #[test]
    fn secret_compare() {
        let s = Secret::new(b"abc").unwrap();
        assert!(s.matches(b"abc"));
        assert!(!s.matches(b"abd") && !s.matches(b"ab") && !s.matches(b"abcd"));
        assert!(!s.matches(b""));
        assert!(Secret::new(b"").is_none());
        assert!(Secret::new(b"a:b").is_none());
        assert!(Secret::new(&[b'a'; 257]).is_none());
        assert!(Secret::new(&[b'a'; 256]).unwrap().matches(&[b'a'; 256]));
        assert_eq!(format!("{s:?}"), "Secret(3 bytes)");
    }

    #[test]
    fn decimal_encoding() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            101,
            999,
            1000,
            1234567890,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert_eq!(
                Reply::acquired(n).to_bytes(),
                format!("a {n}\r\n").into_bytes()
            );
            assert_eq!(
                Reply::evicted(n).to_bytes(),
                format!("o evicted {n}\r\n").into_bytes()
            );
        }
    }
}
