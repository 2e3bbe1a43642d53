//! The reactor's per-connection I/O policy as plain, deterministic state:
//! what to read, when to stop reading, what to write, how to close. The mio
//! loop in [`crate::reactor`] only pumps it (events in, registrations and
//! closed sockets out); a seeded simulation (`tests/reactor_sim.rs`, the
//! `reactor` fuzz target) pumps it the same way over simulated sockets.
//!
//! # A connection's life
//!
//! ```text
//!            readable, budget left           FIN read, not resuming
//!   Open ─────────────────────────▶ Open ───────────────────────────┐
//!    │  core: Close (syntax error)      RST, I/O error               │
//!    │  reregister failed  ─────────────────────────▶ Dead ◀──┐      ▼
//!    └──────────────────────────────────────────────────▶ Closing ───┘
//!                                       flushed + FIN read, linger over,
//!                                       or too many discarded bytes
//! ```
//!
//! * **Budget.** A connection gets one turn per pass of the loop: one read
//!   of at most `read_budget` bytes fed to the core, or (while resuming) one
//!   [`Core::handle_resume`] of at most as many buffered bytes. A connection
//!   that may have more goes to the back of the ready list, behind everyone
//!   else's events. Input resumed after a wait is no different from fresh
//!   input: nothing a client queued earlier runs unbounded later.
//! * **Writes.** One write per connection per pass, at the end of it; a
//!   connection that will take another turn and has less than
//!   `WRITE_COALESCE_BYTES` queued waits for the next pass (a pipelining
//!   client costs one write per few reads; a request-reply client, with
//!   no more input, is written at once).
//! * **Backpressure.** A turn is taken only while the connection's unsent
//!   output is below `max_output_bytes` (or empty, so a bound of 0 means
//!   "one batch at a time"), and reading only while the core wants input.
//!   So unsent output is at most `max_output_bytes` plus the replies to one
//!   turn (and one wake-up reply). The buffer drops its sent prefix as soon
//!   as that is as long as the rest, so it holds at most twice that much,
//!   however long it stays backed up.
//! * **Half-close.** After the peer's FIN, a connection that is not waiting
//!   still has every command before the FIN run (resumed, if need be) and
//!   answered; then it closes. A waiting connection's FIN withdraws its wait
//!   at once, as a disconnect (PROTOCOL.md, rule 8).
//! * **Closing gracefully.** Every close but a reset goes through `Closing`:
//!   the core forgets the connection (its locks are released), reading stops
//!   feeding the core, queued replies are flushed, then `shutdown(SHUT_WR)`
//!   sends a FIN after them; input is read and discarded meanwhile, so the
//!   kernel has no unread bytes that would make it send a reset and destroy
//!   the replies in flight. The socket closes when the peer's FIN arrives
//!   after the flush, after `linger_us`, or after `linger_max_bytes`
//!   discarded bytes, whichever comes first: a peer cannot keep its slot.
//! * **Reaping.** Closed connections are removed at the end of the pass
//!   ([`Driver::reap`]), so a slot is not reused while stale events for it
//!   may still be in hand.

use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;

use slab::Slab;

use crate::core::{Core, Output};
use crate::lock_table::ConnId;
use crate::log::Log;

/// Bytes read (or resumed) from one connection per turn. Small enough that
/// 50 connections flooding pipelined commands queue only a few milliseconds
/// of work ahead of anyone else per pass (the 64 KiB reads of old queued
/// about 3 MB, some 50 ms); large enough that the read syscall stays a
/// small share of the work it brings (hundreds of commands). The reactor
/// raises it to the longest command line, so a command that has arrived
/// whole is read in one turn and is not overtaken by a shorter one sent
/// after it on another connection.
pub const DEFAULT_READ_BUDGET: usize = 8 * 1024;

/// Longest a closing connection may take to take its replies and send its
/// FIN before the socket is closed anyway.
pub const DEFAULT_LINGER_US: u64 = 2_000_000;

/// Bytes a closing connection may still send (read and discarded) before
/// the socket is closed anyway.
pub const DEFAULT_LINGER_MAX_BYTES: usize = 1 << 20;

/// Output below which a connection that still has input is not written
/// yet (see [`Driver::flush`]).
pub const WRITE_COALESCE_BYTES: usize = 32 * 1024;

/// Unsent output past which a drained buffer's allocation is given back.
const KEEP_OUT_CAPACITY: usize = 4096;

/// What the reactor needs from a connected socket; non-blocking.
pub trait Socket {
    /// `read(2)`: `Ok(0)` at the peer's FIN, `WouldBlock` when drained.
    ///
    /// # Errors
    /// As the socket reports them.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// `write(2)`: `WouldBlock` when the send buffer is full.
    ///
    /// # Errors
    /// As the socket reports them.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// `shutdown(SHUT_WR)`: a FIN after the bytes written so far.
    ///
    /// # Errors
    /// As the socket reports them.
    fn shutdown_write(&mut self) -> io::Result<()>;
}

impl Socket for mio::net::TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(self, buf)
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::Write::write(self, buf)
    }
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// What a readiness event says about a socket (mio's `Event`, flattened).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// The peer's FIN arrived (read side closed); data before it may remain.
    pub read_closed: bool,
    /// A reset or other socket error: nothing more can be delivered.
    pub error: bool,
}

/// The policy's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Unsent output at or past which a connection takes no turn (see the
    /// module docs).
    pub max_output_bytes: usize,
    /// Bytes read or resumed per connection per turn (at least 1).
    pub read_budget: usize,
    /// Longest time a closing connection is kept (µs).
    pub linger_us: u64,
    /// Bytes a closing connection may send before it is closed anyway.
    pub linger_max_bytes: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_output_bytes: crate::reactor::DEFAULT_MAX_OUTPUT_BYTES,
            read_budget: DEFAULT_READ_BUDGET,
            linger_us: DEFAULT_LINGER_US,
            linger_max_bytes: DEFAULT_LINGER_MAX_BYTES,
        }
    }
}

/// Every call the driver makes into the core, when recorded
/// ([`Driver::record_core_calls`]): a simulation replays them into a
/// second core to know exactly which replies each client is owed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoreCall {
    Open(usize, SocketAddr),
    Rejected,
    Bytes(usize, Vec<u8>, u64),
    Resume(usize, usize, u64),
    Closed(usize, u64),
    Timeout(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Known to the core; input is fed to it.
    Open,
    /// Forgotten by the core; flushing, then FIN, discarding input.
    Closing {
        deadline_us: u64,
        discarded: usize,
        /// `shutdown(SHUT_WR)` done.
        shut: bool,
    },
    /// To be removed by the next `reap`.
    Dead,
}

struct Conn<S> {
    sock: S,
    peer: SocketAddr,
    /// Tells this connection from a later one in the same slab slot.
    serial: u64,
    /// Replies; `out[out_pos..]` is unsent.
    /// INVARIANT: `out_pos <= out.len() - out_pos` after every write (the
    /// sent prefix is dropped once it is as long as what remains), so the
    /// buffer holds at most twice its unsent bytes, and compaction costs
    /// amortized O(1) per byte.
    out: Vec<u8>,
    out_pos: usize,
    /// Edge-triggered: set by an event, cleared once a read shows the
    /// socket drained. While set and the connection may not take a turn,
    /// its bytes wait in the kernel.
    readable: bool,
    /// An event reported the peer's FIN (data before it may remain).
    fin_seen: bool,
    /// A read returned the peer's FIN: no more input.
    eof: bool,
    /// The core has buffered input of this connection to resume.
    resuming: bool,
    /// WRITABLE interest is (to be) registered: only while output backs up.
    want_write: bool,
    /// On the ready list.
    queued: bool,
    /// Got output in this pass and needs a write.
    dirty: bool,
    phase: Phase,
}

impl<S> Conn<S> {
    /// Whether a turn may add output: below the bound, or empty.
    fn output_open(&self, max_output_bytes: usize) -> bool {
        let unsent = self.unsent();
        unsent == 0 || unsent < max_output_bytes
    }

    fn unsent(&self) -> usize {
        self.out.len() - self.out_pos
    }
}

/// Counters of the policy's decisions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Connections closed after lingering to their deadline.
    pub linger_timeouts: u64,
    /// Connections closed for sending too much after their close began.
    pub linger_overflows: u64,
    /// Connections closed on a reset or I/O error.
    pub resets: u64,
}

/// The per-connection policy over a slab of connections and the core. The
/// reactor calls [`Driver::open`], [`Driver::handle_ready`],
/// [`Driver::run_ready`], [`Driver::handle_timeout`], [`Driver::flush`] and
/// [`Driver::reap`], and applies [`Driver::poll_interest`].
pub struct Driver<S> {
    core: Core,
    policy: Policy,
    conns: Slab<Conn<S>>,
    /// Read buffer shared by all connections (they keep none of their own).
    scratch: Box<[u8]>,
    /// Connections that can take a turn (round robin).
    /// INVARIANT: holds `c` once iff `conns[c].queued`.
    ready: VecDeque<usize>,
    /// Connections that got output in this pass.
    dirty: Vec<usize>,
    /// Connections to remove at the end of this pass.
    dead: Vec<usize>,
    /// `(deadline_us, slot, serial)` of closing connections, in deadline
    /// order (the linger is the same for all). Entries of connections
    /// that closed sooner are skipped when they reach the front.
    lingering: VecDeque<(u64, usize, u64)>,
    /// WRITABLE interest changes for the reactor to apply.
    interest: VecDeque<(usize, bool)>,
    next_serial: u64,
    clock: Box<dyn FnMut() -> u64>,
    log: Log,
    trace: Option<Vec<CoreCall>>,
    stats: DriverStats,
}

impl<S: Socket> Driver<S> {
    /// `clock`: monotonic microseconds, the same clock the core runs on.
    pub fn new(core: Core, policy: Policy, log: Log, clock: Box<dyn FnMut() -> u64>) -> Self {
        let policy = Policy {
            read_budget: policy.read_budget.max(1),
            ..policy
        };
        Driver {
            core,
            scratch: vec![0; policy.read_budget].into_boxed_slice(),
            policy,
            conns: Slab::new(),
            ready: VecDeque::new(),
            dirty: Vec::new(),
            dead: Vec::new(),
            lingering: VecDeque::new(),
            interest: VecDeque::new(),
            next_serial: 0,
            clock,
            log,
            trace: None,
            stats: DriverStats::default(),
        }
    }

    pub fn core(&self) -> &Core {
        &self.core
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// A connection refused at accept (`--allow`): counted by the core as
    /// `rejected`; it never gets a slot.
    pub fn note_rejected(&mut self) {
        self.record(|| CoreCall::Rejected);
        self.core.note_rejected();
    }

    pub fn log_mut(&mut self) -> &mut Log {
        &mut self.log
    }

    /// Connections in the slab, closing ones included (each holds a socket).
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The slot the next `open` takes (its token, for registering first).
    pub fn vacant_key(&self) -> usize {
        self.conns.vacant_key()
    }

    /// The socket in slot `c`, to (re)register it.
    pub fn socket_mut(&mut self, c: usize) -> Option<&mut S> {
        self.conns.get_mut(c).map(|conn| &mut conn.sock)
    }

    /// Unsent output of connection `c` (0 for an empty slot).
    pub fn output_len(&self, c: usize) -> usize {
        self.conns.get(c).map_or(0, Conn::unsent)
    }

    /// Bytes connection `c`'s output buffer holds, sent prefix included.
    pub fn output_held(&self, c: usize) -> usize {
        self.conns.get(c).map_or(0, |conn| conn.out.len())
    }

    /// Bytes allocated for connection `c`'s output.
    pub fn output_capacity(&self, c: usize) -> usize {
        self.conns.get(c).map_or(0, |conn| conn.out.capacity())
    }

    /// Whether slot `c` holds a connection still known to the core.
    pub fn is_open(&self, c: usize) -> bool {
        self.conns
            .get(c)
            .is_some_and(|conn| conn.phase == Phase::Open)
    }

    /// A one-line account of slot `c`'s state, for failure messages.
    pub fn describe(&self, c: usize) -> String {
        match self.conns.get(c) {
            None => format!("slot {c}: empty"),
            Some(conn) => format!(
                "slot {c}: {:?}, out {} bytes, readable {}, fin_seen {}, eof {}, resuming {}, \
                 want_write {}, queued {}, core wants input {}, waiting {}",
                conn.phase,
                conn.unsent(),
                conn.readable,
                conn.fin_seen,
                conn.eof,
                conn.resuming,
                conn.want_write,
                conn.queued,
                self.core.wants_input(ConnId(c)),
                self.core.is_waiting(ConnId(c)),
            ),
        }
    }

    /// Whether some connection can take a turn now (poll without sleeping).
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// From now on, record every call into the core.
    pub fn record_core_calls(&mut self) {
        self.trace = Some(Vec::new());
    }

    /// The calls into the core recorded since the last take.
    pub fn take_core_calls(&mut self) -> Vec<CoreCall> {
        self.trace.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn now(&mut self) -> u64 {
        (self.clock)()
    }

    fn record(&mut self, call: impl FnOnce() -> CoreCall) {
        if let Some(t) = self.trace.as_mut() {
            t.push(call());
        }
    }

    /// A new connection; returns its slot (the one `vacant_key` said).
    pub fn open(&mut self, sock: S, peer: SocketAddr) -> usize {
        let serial = self.next_serial;
        self.next_serial += 1;
        let c = self.conns.insert(Conn {
            sock,
            peer,
            serial,
            out: Vec::new(),
            out_pos: 0,
            readable: false,
            fin_seen: false,
            eof: false,
            resuming: false,
            want_write: false,
            queued: false,
            dirty: false,
            phase: Phase::Open,
        });
        self.record(|| CoreCall::Open(c, peer));
        self.core.handle_open(ConnId(c), Some(peer));
        c
    }

    /// A readiness event for slot `c` (stale ones are ignored).
    pub fn handle_ready(&mut self, c: usize, ev: Readiness) {
        let Some(conn) = self.conns.get_mut(c) else {
            return;
        };
        if conn.phase == Phase::Dead {
            return;
        }
        if ev.error {
            self.hard_close(c, "reset");
            return;
        }
        if ev.read_closed {
            conn.fin_seen = true;
        }
        if ev.readable || ev.read_closed {
            conn.readable = true;
            self.turn(c);
        }
        if ev.writable {
            self.write(c);
        }
    }

    /// One turn for every connection on the ready list (those queued
    /// during the pass wait for the next one).
    pub fn run_ready(&mut self) {
        for _ in 0..self.ready.len() {
            let Some(c) = self.ready.pop_front() else {
                break;
            };
            if let Some(conn) = self.conns.get_mut(c) {
                conn.queued = false;
                self.turn(c);
            }
        }
    }

    /// Fires the core's due timeouts and closes connections whose linger
    /// is over.
    pub fn handle_timeout(&mut self) {
        let now = self.now();
        self.record(|| CoreCall::Timeout(now));
        self.core.handle_timeout(now);
        self.drain_core();
        while let Some(&(deadline_us, c, serial)) = self.lingering.front() {
            if deadline_us > now {
                break;
            }
            self.lingering.pop_front();
            if let Some(conn) = self.conns.get_mut(c) {
                if conn.serial == serial && matches!(conn.phase, Phase::Closing { .. }) {
                    self.stats.linger_timeouts += 1;
                    self.log.debug(format_args!(
                        "{} did not finish closing in time; closing it",
                        conn.peer
                    ));
                    self.mark_dead(c);
                }
            }
        }
    }

    /// When `handle_timeout` should run next (µs on the driver's clock).
    pub fn poll_timeout(&mut self) -> Option<u64> {
        while let Some(&(_, c, serial)) = self.lingering.front() {
            let live = self.conns.get(c).is_some_and(|conn| {
                conn.serial == serial && matches!(conn.phase, Phase::Closing { .. })
            });
            if live {
                break;
            }
            self.lingering.pop_front();
        }
        let linger = self.lingering.front().map(|&(d, _, _)| d);
        match (self.core.poll_timeout(), linger) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next WRITABLE interest change: `(slot, writable wanted)`. If the
    /// registration fails, call [`Driver::handle_register_failed`].
    pub fn poll_interest(&mut self) -> Option<(usize, bool)> {
        while let Some((c, w)) = self.interest.pop_front() {
            if self
                .conns
                .get(c)
                .is_some_and(|conn| conn.phase != Phase::Dead && conn.want_write == w)
            {
                return Some((c, w));
            }
        }
        None
    }

    /// Registering slot `c`'s new interest failed: without it the
    /// connection could hang forever, so it is closed.
    pub fn handle_register_failed(&mut self, c: usize) {
        self.hard_close(c, "cannot register interest");
    }

    /// One write per connection that got output in this pass.
    ///
    /// A connection that will take another turn in the next pass (it has
    /// more input) and has less than `WRITE_COALESCE_BYTES` queued is
    /// written later, with more: a pipelining client then costs one write
    /// per few reads, while a request-reply client (no more input) is
    /// written at once.
    pub fn flush(&mut self) {
        let mut kept = 0;
        for i in 0..self.dirty.len() {
            let c = self.dirty[i];
            if let Some(conn) = self.conns.get_mut(c) {
                if conn.queued
                    && conn.phase == Phase::Open
                    && conn.unsent() < WRITE_COALESCE_BYTES
                    && conn.output_open(self.policy.max_output_bytes)
                {
                    self.dirty[kept] = c;
                    kept += 1;
                    continue;
                }
                conn.dirty = false;
                self.write(c);
            }
        }
        self.dirty.truncate(kept);
    }

    /// Removes the connections closed in this pass; dropping a socket
    /// closes it. Returns how many.
    pub fn reap(&mut self) -> usize {
        let mut n = 0;
        for i in 0..self.dead.len() {
            let c = self.dead[i];
            if self
                .conns
                .get(c)
                .is_some_and(|conn| conn.phase == Phase::Dead)
            {
                drop(self.conns.remove(c));
                n += 1;
            }
        }
        self.dead.clear();
        if self.conns.is_empty() && self.conns.capacity() > 1024 {
            // After a crowd has gone: give its slots' memory back.
            self.conns.shrink_to_fit();
        }
        n
    }

    fn queue(&mut self, c: usize) {
        let conn = &mut self.conns[c];
        if !conn.queued {
            conn.queued = true;
            self.ready.push_back(c);
        }
    }

    fn mark_dirty(&mut self, c: usize) {
        let conn = &mut self.conns[c];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(c);
        }
    }

    fn turn(&mut self, c: usize) {
        match self.conns[c].phase {
            Phase::Dead => {}
            Phase::Closing { .. } => self.discard(c),
            Phase::Open if self.conns[c].resuming => self.resume_turn(c),
            Phase::Open => self.read_turn(c),
        }
    }

    fn read_turn(&mut self, c: usize) {
        let id = ConnId(c);
        let conn = &mut self.conns[c];
        if !self.core.wants_input(id) {
            // Waiting behind a full pending buffer.
            if conn.fin_seen {
                // The FIN of a waiting connection withdraws its wait.
                self.close(c);
            }
            return;
        }
        if !conn.output_open(self.policy.max_output_bytes) || !conn.readable {
            // `write` queues it again once its output drains.
            return;
        }
        let budget = self.policy.read_budget;
        match conn.sock.read(&mut self.scratch[..budget]) {
            Ok(0) => {
                conn.readable = false;
                conn.eof = true;
                self.at_eof(c);
            }
            Ok(n) => {
                // The clock after the data arrived: deadlines count from
                // no earlier than arrival.
                let now = self.now();
                if let Some(t) = self.trace.as_mut() {
                    t.push(CoreCall::Bytes(c, self.scratch[..n].to_vec(), now));
                }
                self.core.handle_bytes(id, &self.scratch[..n], now);
                self.drain_core();
                let conn = &mut self.conns[c];
                if conn.phase != Phase::Open {
                    return;
                }
                if n < budget {
                    // Edge-triggered: a short read drained the socket; new
                    // data brings a new event. After a FIN seen with the
                    // event, nothing more comes.
                    conn.readable = false;
                    if conn.fin_seen {
                        conn.eof = true;
                        self.at_eof(c);
                    }
                } else {
                    self.queue(c);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => conn.readable = false,
            Err(e) if e.kind() == ErrorKind::Interrupted => self.queue(c),
            Err(e) => {
                self.log
                    .debug(format_args!("read from {} failed: {e}", conn.peer));
                self.hard_close(c, "read failed");
            }
        }
    }

    fn resume_turn(&mut self, c: usize) {
        if !self.conns[c].output_open(self.policy.max_output_bytes) {
            // `write` queues it again once its output drains.
            return;
        }
        let now = self.now();
        let budget = self.policy.read_budget;
        self.record(|| CoreCall::Resume(c, budget, now));
        let more = self.core.handle_resume(ConnId(c), budget, now);
        self.drain_core();
        let conn = &mut self.conns[c];
        if conn.phase != Phase::Open {
            return;
        }
        if more {
            self.queue(c);
            return;
        }
        conn.resuming = false;
        if conn.eof {
            self.at_eof(c);
        } else if conn.readable {
            self.queue(c);
        }
    }

    /// Everything before the peer's FIN has been read.
    fn at_eof(&mut self, c: usize) {
        if self.conns[c].resuming {
            // Its buffered commands run first (`resume_turn` comes back).
            return;
        }
        // Not waiting: every command before the FIN has run, and its
        // replies are queued. Waiting: the FIN withdraws the wait.
        self.close(c);
    }

    /// Closes a connection the core still knows: its wait is withdrawn and
    /// its locks released now; its replies are flushed before the socket
    /// closes.
    fn close(&mut self, c: usize) {
        if self.conns[c].phase != Phase::Open {
            return;
        }
        self.log
            .debug(format_args!("{} disconnected", self.conns[c].peer));
        let now = self.now();
        self.record(|| CoreCall::Closed(c, now));
        self.core.handle_closed(ConnId(c), now);
        self.begin_closing(c, now);
        self.drain_core();
    }

    /// The core has forgotten `c`: flush, FIN, discard, close.
    fn begin_closing(&mut self, c: usize, now: u64) {
        let deadline_us = now.saturating_add(self.policy.linger_us);
        let conn = &mut self.conns[c];
        conn.phase = Phase::Closing {
            deadline_us,
            discarded: 0,
            shut: false,
        };
        conn.resuming = false;
        self.lingering.push_back((deadline_us, c, conn.serial));
        // The write finishes the close once the output is flushed.
        self.mark_dirty(c);
        if self.conns[c].readable {
            self.queue(c);
        }
    }

    /// A closing connection's turn: read and discard.
    fn discard(&mut self, c: usize) {
        let budget = self.policy.read_budget;
        let conn = &mut self.conns[c];
        let Phase::Closing {
            deadline_us,
            discarded,
            shut,
        } = conn.phase
        else {
            return;
        };
        if !conn.readable || conn.eof {
            return;
        }
        let eof = match conn.sock.read(&mut self.scratch[..budget]) {
            Ok(0) => true,
            Ok(n) => {
                let discarded = discarded.saturating_add(n);
                conn.phase = Phase::Closing {
                    deadline_us,
                    discarded,
                    shut,
                };
                if discarded > self.policy.linger_max_bytes {
                    self.stats.linger_overflows += 1;
                    self.log.debug(format_args!(
                        "{} sent too much while closing; closing it",
                        conn.peer
                    ));
                    self.mark_dead(c);
                    return;
                }
                if n == budget {
                    self.queue(c);
                    return;
                }
                conn.fin_seen
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {
                self.queue(c);
                return;
            }
            Err(_) => {
                self.mark_dead(c);
                return;
            }
        };
        conn.readable = false;
        if eof {
            conn.eof = true;
            if shut {
                // Flushed, FIN sent, FIN received: done.
                self.mark_dead(c);
            }
        }
    }

    /// A reset or I/O error: nothing more can be delivered; close now.
    fn hard_close(&mut self, c: usize, why: &str) {
        let conn = &self.conns[c];
        match conn.phase {
            Phase::Dead => return,
            Phase::Open => {
                self.log
                    .debug(format_args!("{} disconnected ({why})", conn.peer));
                let now = self.now();
                self.record(|| CoreCall::Closed(c, now));
                self.core.handle_closed(ConnId(c), now);
                self.mark_dead(c);
                self.drain_core();
            }
            Phase::Closing { .. } => self.mark_dead(c),
        }
        self.stats.resets += 1;
    }

    fn mark_dead(&mut self, c: usize) {
        let conn = &mut self.conns[c];
        if conn.phase != Phase::Dead {
            conn.phase = Phase::Dead;
            conn.out = Vec::new();
            conn.out_pos = 0;
            self.dead.push(c);
        }
    }

    /// Moves the core's outputs into the connections' buffers, and learns
    /// which connections resume.
    fn drain_core(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Reply(ConnId(c), reply) => {
                    let conn = &mut self.conns[c];
                    debug_assert_eq!(conn.phase, Phase::Open, "reply for a closed slot");
                    reply.encode(&mut conn.out);
                    self.mark_dirty(c);
                }
                Output::Close(ConnId(c), reason) => {
                    let peer = self.conns[c].peer;
                    self.log.warn_limited(format_args!(
                        "{} from client {peer}: {reason}; dropping connection",
                        reason.label()
                    ));
                    let now = self.now();
                    self.begin_closing(c, now);
                }
            }
        }
        while let Some(event) = self.core.poll_event() {
            self.log.debug(format_args!("{event}"));
        }
        while let Some(ConnId(c)) = self.core.poll_resumable() {
            if self.conns[c].phase == Phase::Open {
                self.conns[c].resuming = true;
                self.queue(c);
            }
        }
    }

    fn write(&mut self, c: usize) {
        let conn = &mut self.conns[c];
        if conn.phase == Phase::Dead {
            return;
        }
        let mut pos = conn.out_pos;
        while pos < conn.out.len() {
            match conn.sock.write(&conn.out[pos..]) {
                Ok(0) => break,
                Ok(n) => pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    // Reset or broken pipe: nothing more arrives.
                    self.hard_close(c, "write failed");
                    return;
                }
            }
        }
        // Compact, so the buffer does not grow past twice the bound while
        // it stays backed up (see the INVARIANT on `out`).
        if pos == conn.out.len() {
            conn.out.clear();
            conn.out_pos = 0;
            if conn.out.capacity() > KEEP_OUT_CAPACITY {
                conn.out = Vec::new();
            }
        } else if pos >= conn.out.len() - pos {
            conn.out.drain(..pos);
            conn.out_pos = 0;
        } else {
            conn.out_pos = pos;
        }
        let backed_up = conn.out_pos < conn.out.len();
        if backed_up != conn.want_write {
            conn.want_write = backed_up;
            self.interest.push_back((c, backed_up));
        }
        match conn.phase {
            Phase::Closing {
                deadline_us,
                discarded,
                shut,
            } if !backed_up => {
                if !shut {
                    conn.phase = Phase::Closing {
                        deadline_us,
                        discarded,
                        shut: true,
                    };
                    if conn.sock.shutdown_write().is_err() {
                        self.mark_dead(c);
                        return;
                    }
                }
                if conn.eof {
                    self.mark_dead(c);
                }
            }
            Phase::Open
                if (conn.readable || conn.resuming)
                    && conn.output_open(self.policy.max_output_bytes) =>
            {
                // Output drained below the bound: turns may go on.
                self.queue(c);
            }
            _ => {}
        }
    }
}
