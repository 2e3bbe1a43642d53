//! The only part that touches the world: a single-threaded, edge-triggered
//! mio loop over a listener and a `Slab` of connections, feeding the
//! sans-I/O [`Core`] and writing what it returns.
//!
//! # One loop iteration
//!
//! ```text
//! poll(timeout = next timer | 0 if connections are still readable | accept retry)
//! now = clock()
//! if a timer is due: core.handle_timeout(now), write its replies at once
//! for each event: accept until WouldBlock | read (bounded) into the shared
//!                 scratch buffer and feed the core | write pending output
//! revisit connections left readable by the fairness budget (round robin)
//! core.handle_timeout(now)                        // timers, every iteration
//! drain core outputs into per-connection buffers
//! one write per connection that got output; WRITABLE only while it backs up
//! close connections marked dead (after the batch, so tokens are not reused
//! while stale events for them may still be in hand)
//! ```
//!
//! # Backpressure and fairness
//!
//! A connection is read only while the core wants its input (its `lock` is
//! not waiting behind a full pending buffer) and its queued output is below
//! `max_output_bytes`; otherwise its socket is left unread and TCP pushes back
//! on the client. Each connection reads at most one scratch buffer per
//! iteration; a connection that may have more is put on the `ready` list and
//! served again after everyone else's events, so one client with endless
//! pipelined input cannot starve the others. Paused connections still get
//! read-closed/hang-up events, so a peer that goes away is noticed at once.
//!
//! # Descriptors
//!
//! When `accept` fails for lack of descriptors (EMFILE/ENFILE) or the
//! connection cap is reached, the loop stops accepting (pending connections
//! wait in the kernel's backlog) and tries again when a connection closes or
//! after `ACCEPT_RETRY`, whichever comes first: no busy loop.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::admin::AdminServer;
use crate::core::{Core, Output};
use crate::lock_table::ConnId;
use crate::log::Log;

/// Bytes read from one connection per loop iteration; also the size of the
/// shared scratch buffer (a connection keeps no read buffer of its own).
pub const READ_CHUNK: usize = 64 * 1024;

/// Default bound on replies queued for a client that does not read them.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// Default listen backlog: large enough to absorb connection bursts; the
/// kernel clamps it to `net.core.somaxconn`.
pub const DEFAULT_BACKLOG: u32 = 65_535;

/// Default idle time before keepalive probes: a client whose host vanished
/// without a FIN or RST loses its locks after about 90 s, not never.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(60);
/// Keepalive probes are sent this often, this many times, before the peer is
/// declared dead.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_PROBES: u32 = 3;

/// Default busy-poll budget: about one loopback round trip between two
/// processes, so a client that answers at once (a lock handed over and
/// released, a request-reply loop) finds the loop awake.
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(50);

/// How soon to retry `accept` after running out of descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Readiness events handled per `poll` call.
const EVENTS_CAPACITY: usize = 1024;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// The reactor's own limits (the core's are in `core::Config`).
#[derive(Clone, Debug)]
pub struct Config {
    pub core: crate::core::Config,
    /// Queued output per connection past which it is not read.
    pub max_output_bytes: usize,
    /// Open connections at most.
    pub max_connections: usize,
    pub backlog: u32,
    /// Idle time before TCP keepalive probes start (`None`: off). A peer
    /// whose host died or was cut off is then dropped, and its locks freed,
    /// after `keepalive + KEEPALIVE_PROBES * KEEPALIVE_INTERVAL`.
    pub keepalive: Option<Duration>,
    /// Longest busy-poll before blocking in epoll (zero: never spin); the
    /// loop spins only while spinning finds events (see the private `Spin`).
    pub busy_poll: Duration,
    /// Peers that may connect (`--allow`); others are closed at accept.
    pub allow: crate::allow::AllowList,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            core: crate::core::Config::default(),
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_connections: usize::MAX,
            backlog: DEFAULT_BACKLOG,
            keepalive: Some(DEFAULT_KEEPALIVE),
            busy_poll: DEFAULT_BUSY_POLL,
            allow: crate::allow::AllowList::default(),
        }
    }
}

struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    /// Replies not yet written; `out[out_pos..]` is what remains.
    out: Vec<u8>,
    out_pos: usize,
    /// Edge-triggered: set by a readable event, cleared once a read shows
    /// the socket is drained. While set and the connection is paused, its
    /// data waits in the kernel.
    readable: bool,
    /// The peer closed its side or the socket errored.
    read_closed: bool,
    /// WRITABLE interest is registered (only while output backs up).
    want_write: bool,
    /// On the `ready` list already.
    queued: bool,
    /// Got output this iteration and needs a write.
    dirty: bool,
    /// To be closed at the end of this iteration.
    dead: bool,
}

impl Connection {
    fn out_len(&self) -> usize {
        self.out.len() - self.out_pos
    }
}

/// Handle to stop a running reactor from another thread (tests).
#[derive(Clone)]
pub struct Stopper(std::sync::Arc<(Waker, std::sync::atomic::AtomicBool)>);

impl Stopper {
    pub fn stop(&self) {
        self.0.1.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.0.0.wake();
    }
}

/// Totals for the shutdown summary.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub accepted: u64,
    pub peak_connections: usize,
    pub core: crate::core::Stats,
    pub uptime: Duration,
}

pub struct Reactor {
    poll: Poll,
    listener: TcpListener,
    local_addr: SocketAddr,
    conns: Slab<Connection>,
    core: Core,
    config: Config,
    scratch: Box<[u8]>,
    /// Connections that may still have unread input (round robin).
    ready: VecDeque<usize>,
    /// Connections that got output this iteration.
    dirty: Vec<usize>,
    /// Connections to close at the end of this iteration.
    dead: Vec<usize>,
    /// Accepting is paused (cap or descriptors exhausted) until this time,
    /// or until a connection closes.
    accept_paused: Option<Instant>,
    start: Instant,
    stopper: Stopper,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    /// A timerfd armed for the core's next wake-up, with the time (µs) it is
    /// armed for. epoll_wait's timeout has whole-millisecond resolution and
    /// rounds up, which would add up to a millisecond to every timeout; the
    /// timerfd wakes the loop within microseconds of the deadline. `None`
    /// (timerfd unavailable) falls back to the poll timeout.
    timer_fd: Option<std::os::fd::OwnedFd>,
    timer_armed: Option<u64>,
    spin: Spin,
    log: Log,
    summary: Summary,
    /// The admin endpoint (`--metrics`), if enabled; its tokens start at
    /// `ADMIN`.
    admin: Option<AdminServer>,
}

const SIGNALS: Token = Token(usize::MAX - 3);
const TIMER: Token = Token(usize::MAX - 4);
/// First of the admin endpoint's `admin::TOKENS` tokens.
const ADMIN: usize = usize::MAX - 5 - crate::admin::TOKENS;

impl Reactor {
    /// Binds `addr` and prepares the loop. `signals`: whether SIGINT/SIGTERM
    /// stop the loop (the daemon) or are left alone (tests).
    pub fn bind(addr: SocketAddr, config: Config, log: Log, signals: bool) -> io::Result<Self> {
        let listener = listen(addr, config.backlog, config.keepalive)?;
        Self::from_listener(listener, config, log, signals)
    }

    /// Prepares the loop on a socket that is already bound (and usually
    /// listening), such as one passed by systemd's socket activation. It is
    /// made non-blocking and given the options accepted connections inherit;
    /// if it is not listening yet, it listens with `config.backlog`.
    pub fn from_listener(
        listener: std::net::TcpListener,
        config: Config,
        log: Log,
        signals: bool,
    ) -> io::Result<Self> {
        inherited_options(&listener, config.backlog, config.keepalive)?;
        let local_addr = listener.local_addr()?;
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let signals = if signals {
            let mut s = signal_hook_mio::v1_0::Signals::new([
                signal_hook::consts::SIGINT,
                signal_hook::consts::SIGTERM,
                signal_hook::consts::SIGUSR1,
            ])?;
            poll.registry()
                .register(&mut s, SIGNALS, Interest::READABLE)?;
            Some(s)
        } else {
            None
        };
        let timer_fd = rustix::time::timerfd_create(
            rustix::time::TimerfdClockId::Monotonic,
            rustix::time::TimerfdFlags::NONBLOCK | rustix::time::TimerfdFlags::CLOEXEC,
        )
        .ok()
        .filter(|fd| {
            use std::os::fd::AsRawFd;
            let raw = fd.as_raw_fd();
            poll.registry()
                .register(&mut mio::unix::SourceFd(&raw), TIMER, Interest::READABLE)
                .is_ok()
        });
        let start = Instant::now();
        let spin = Spin::new(config.busy_poll);
        Ok(Reactor {
            poll,
            listener,
            local_addr,
            conns: Slab::new(),
            core: Core::new(config.core, 0),
            config,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            ready: VecDeque::new(),
            dirty: Vec::new(),
            dead: Vec::new(),
            accept_paused: None,
            start,
            stopper: Stopper(std::sync::Arc::new((
                waker,
                std::sync::atomic::AtomicBool::new(false),
            ))),
            signals,
            timer_fd,
            timer_armed: None,
            spin,
            log,
            summary: Summary::default(),
            admin: None,
        })
    }

    /// Serves the admin endpoint from this loop.
    ///
    /// # Errors
    ///
    /// When its listener cannot be registered.
    pub fn set_admin(&mut self, mut admin: AdminServer) -> io::Result<()> {
        admin.register(self.poll.registry(), ADMIN)?;
        self.admin = Some(admin);
        Ok(())
    }

    /// The counters, gauges and histograms `/metrics` and SIGUSR1 report.
    pub fn snapshot(&self) -> crate::metrics::Snapshot {
        let stats = self.core.stats();
        crate::metrics::Snapshot {
            stats,
            connections: self.core.connections() as u64,
            keys: self.core.keys_held() as u64,
            holders: self.core.holders() as u64,
            waiters: self.core.waiters() as u64,
            accepted: stats.accepted,
            rejected: stats.rejected,
            log_lines_dropped: crate::log::lines_dropped(),
            uptime: self.start.elapsed(),
        }
    }

    /// The earliest deadline of the log's rate-limit window and of the
    /// admin endpoint.
    fn side_deadline(&self) -> Option<Instant> {
        let admin = self.admin.as_ref().and_then(AdminServer::next_deadline);
        match (admin, self.log.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn metrics_text(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let process = crate::metrics::Process::read().ok();
        crate::metrics::render(
            &mut out,
            &self.snapshot(),
            process.as_ref(),
            env!("CARGO_PKG_VERSION"),
        );
        out
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Runs until stopped by a signal or the `Stopper`.
    pub fn run(mut self) -> io::Result<Summary> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.wait(&mut events, timeout) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now_us = self.now_us();
            // Timeouts due now go out before this batch's reads are handled,
            // so a large batch cannot make them late.
            if self.core.poll_timeout().is_some_and(|t| t <= now_us) {
                self.core.handle_timeout(now_us);
                self.drain_outputs();
                self.flush();
            }
            let mut stop = false;
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => stop |= self.stopper.0.1.load(std::sync::atomic::Ordering::SeqCst),
                    SIGNALS => stop |= self.take_signals(),
                    TIMER => {
                        // Expired: consume the count; it is re-armed as needed.
                        if let Some(fd) = &self.timer_fd {
                            let _ = rustix::io::read(fd, &mut [0u8; 8]);
                        }
                        self.timer_armed = None;
                    }
                    t if self.admin.as_ref().is_some_and(|a| a.owns(t)) => {
                        if let Some(mut admin) = self.admin.take() {
                            let metrics = || self.metrics_text();
                            admin.handle_event(self.poll.registry(), t, Instant::now(), &metrics);
                            self.admin = Some(admin);
                        }
                    }
                    Token(c) => {
                        let Some(conn) = self.conns.get_mut(c) else {
                            continue;
                        };
                        if conn.dead {
                            continue;
                        }
                        if event.is_read_closed() || event.is_error() {
                            conn.read_closed = true;
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            conn.readable = true;
                            self.read(c, now_us);
                        }
                        if event.is_writable() {
                            self.write(c);
                        }
                    }
                }
            }
            if stop {
                break;
            }
            // Connections the fairness budget cut short, round robin.
            for _ in 0..self.ready.len() {
                let Some(c) = self.ready.pop_front() else {
                    break;
                };
                if let Some(conn) = self.conns.get_mut(c) {
                    conn.queued = false;
                    if !conn.dead {
                        self.read(c, now_us);
                    }
                }
            }
            if self.accept_paused.is_some_and(|t| Instant::now() >= t) {
                self.accept();
            }
            self.core.handle_timeout(self.now_us());
            self.drain_outputs();
            self.flush();
            self.reap();
            // The log's and the admin endpoint's deadlines; the clock is
            // read only while one is pending.
            if let Some(due) = self.side_deadline() {
                let now = Instant::now();
                if due <= now {
                    self.log.handle_timeout(now);
                    if let Some(mut admin) = self.admin.take() {
                        admin.handle_timeout(self.poll.registry(), now, &|| self.metrics_text());
                        self.admin = Some(admin);
                    }
                }
            }
        }
        self.summary.core = self.core.stats();
        self.summary.uptime = self.start.elapsed();
        Ok(self.summary)
    }

    /// `poll`, but first busy-poll for up to the spin budget when the
    /// policy expects events soon (see [`Spin`]).
    fn wait(&mut self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        let budget = match timeout {
            Some(t) if t.is_zero() => Duration::ZERO,
            _ => self.spin.budget(),
        };
        if budget.is_zero() {
            return self.poll.poll(events, timeout);
        }
        let start = Instant::now();
        loop {
            self.poll.poll(events, Some(Duration::ZERO))?;
            if !events.is_empty() {
                self.spin.record(true);
                return Ok(());
            }
            let spun = start.elapsed();
            if spun >= budget {
                self.spin.record(false);
                let rest = timeout.map(|t| t.saturating_sub(spun));
                return self.poll.poll(events, rest);
            }
            std::hint::spin_loop();
        }
    }

    fn take_signals(&mut self) -> bool {
        let Some(signals) = self.signals.as_mut() else {
            return false;
        };
        let mut stop = false;
        let pending: Vec<i32> = signals.pending().collect();
        for sig in pending {
            if sig == signal_hook::consts::SIGUSR1 {
                let line = self.core.stats_line();
                let fields = line
                    .strip_prefix(crate::wire::STATS_PREFIX)
                    .and_then(|l| l.strip_suffix(crate::wire::CRLF))
                    .unwrap_or(&line);
                self.log
                    .info(format_args!("stats {}", String::from_utf8_lossy(fields)));
                continue;
            }
            self.log.info(format_args!(
                "received {}, shutting down",
                if sig == signal_hook::consts::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                }
            ));
            stop = true;
        }
        stop
    }

    fn poll_timeout(&mut self) -> Option<Duration> {
        if !self.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        let now_us = self.now_us();
        let next_us = self.core.poll_timeout();
        let timer = if self.arm_timer(next_us, now_us) {
            None
        } else {
            next_us.map(|t| Duration::from_micros(t.saturating_sub(now_us)))
        };
        let accept = self
            .accept_paused
            .into_iter()
            .chain(self.side_deadline())
            .min()
            .map(|t| t.saturating_duration_since(Instant::now()));
        match (timer, accept) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Arms the timerfd for `next_us` (disarms it for `None`) unless it is
    /// armed for that already. Returns false when there is no usable
    /// timerfd, so the poll timeout must do.
    fn arm_timer(&mut self, next_us: Option<u64>, now_us: u64) -> bool {
        let Some(fd) = &self.timer_fd else {
            return false;
        };
        if next_us == self.timer_armed {
            return true;
        }
        // A zero it_value disarms; a due time in the past fires in 1 ns.
        let value = match next_us {
            None => Duration::ZERO,
            Some(t) => Duration::from_micros(t.saturating_sub(now_us)).max(Duration::from_nanos(1)),
        };
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let spec = rustix::time::Itimerspec {
            it_interval: zero,
            it_value: rustix::time::Timespec {
                tv_sec: i64::try_from(value.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(value.subsec_nanos()),
            },
        };
        match rustix::time::timerfd_settime(fd, rustix::time::TimerfdTimerFlags::empty(), &spec) {
            Ok(_) => {
                self.timer_armed = next_us;
                true
            }
            Err(e) => {
                self.log.error(format_args!(
                    "timerfd_settime failed ({e}); using poll timeouts"
                ));
                self.timer_fd = None;
                false
            }
        }
    }

    fn accept(&mut self) {
        self.accept_paused = None;
        loop {
            if self.conns.len() >= self.config.max_connections {
                // Resumed when a connection closes (see `reap`).
                self.accept_paused = Some(Instant::now() + Duration::from_secs(3600));
                self.log.debug(format_args!(
                    "at the connection cap ({}); pausing accept",
                    self.config.max_connections
                ));
                return;
            }
            match self.listener.accept() {
                Ok((_, peer)) if !self.config.allow.allows(peer.ip()) => {
                    self.core.note_rejected();
                    self.log
                        .debug(format_args!("rejected {peer} (not in --allow)"));
                }
                Ok((stream, peer)) => self.add(stream, peer),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: out of resources.
                    // Connections wait in the backlog; retry on a close or
                    // after ACCEPT_RETRY, never in a busy loop.
                    self.log.warn_limited(format_args!(
                        "accept failed: {e} ({} connections open); pausing accept",
                        self.conns.len()
                    ));
                    self.accept_paused = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    fn add(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        // TCP_NODELAY and keepalive are inherited from the listener (Linux
        // copies socket options to accepted sockets): no syscalls here.
        let entry = self.conns.vacant_entry();
        let c = entry.key();
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(c), Interest::READABLE)
        {
            self.log
                .warn_limited(format_args!("cannot register connection from {peer}: {e}"));
            return;
        }
        entry.insert(Connection {
            stream,
            peer,
            out: Vec::new(),
            out_pos: 0,
            readable: false,
            read_closed: false,
            want_write: false,
            queued: false,
            dirty: false,
            dead: false,
        });
        self.core.handle_open(ConnId(c), Some(peer));
        self.summary.accepted += 1;
        self.summary.peak_connections = self.summary.peak_connections.max(self.conns.len());
        self.log.debug(format_args!("connection from {peer}"));
    }

    /// Reads what the budget and backpressure allow from connection `c`.
    fn read(&mut self, c: usize, now_us: u64) {
        let conn = &mut self.conns[c];
        let paused =
            !self.core.wants_input(ConnId(c)) || conn.out_len() >= self.config.max_output_bytes;
        if paused {
            if conn.read_closed {
                // The peer left while we were not reading: it is gone.
                self.kill(c, now_us);
            }
            return;
        }
        if !conn.readable {
            return;
        }
        match conn.stream.read(&mut self.scratch) {
            Ok(0) => self.kill(c, now_us),
            Ok(n) => {
                // Read the clock after the data arrived, not at the start of
                // the iteration: deadlines count from no earlier than arrival.
                let now_us = now_us.max(self.now_us());
                self.core
                    .handle_bytes(ConnId(c), &self.scratch[..n], now_us);
                self.drain_outputs();
                let conn = &mut self.conns[c];
                if conn.dead {
                    return;
                }
                if n < self.scratch.len() {
                    // Edge-triggered: a short read drained the socket; new
                    // data brings a new event. A FIN seen with this event
                    // means no more data will come.
                    conn.readable = false;
                    if conn.read_closed {
                        self.kill(c, now_us);
                    }
                } else if !conn.queued {
                    conn.queued = true;
                    self.ready.push_back(c);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                conn.readable = false;
                if conn.read_closed {
                    self.kill(c, now_us);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {
                if !conn.queued {
                    conn.queued = true;
                    self.ready.push_back(c);
                }
            }
            Err(e) => {
                self.log
                    .debug(format_args!("read from {} failed: {e}", conn.peer));
                self.kill(c, now_us);
            }
        }
    }

    /// The peer is gone: release its locks now, close at the end of the batch.
    fn kill(&mut self, c: usize, now_us: u64) {
        let conn = &mut self.conns[c];
        if conn.dead {
            return;
        }
        conn.dead = true;
        self.dead.push(c);
        self.log.debug(format_args!("{} disconnected", conn.peer));
        self.core.handle_closed(ConnId(c), now_us);
        self.drain_outputs();
    }

    fn drain_outputs(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Reply(ConnId(c), reply) => {
                    let conn = &mut self.conns[c];
                    reply.encode(&mut conn.out);
                    if !conn.dirty {
                        conn.dirty = true;
                        self.dirty.push(c);
                    }
                }
                Output::Close(ConnId(c), err) => {
                    let conn = &mut self.conns[c];
                    self.log.warn_limited(format_args!(
                        "{} from client {}: {err}; dropping connection",
                        err.label(),
                        conn.peer
                    ));
                    conn.dead = true;
                    self.dead.push(c);
                    if !conn.dirty {
                        conn.dirty = true;
                        self.dirty.push(c);
                    }
                }
            }
        }
    }

    /// One write per connection that got output in this iteration.
    fn flush(&mut self) {
        for i in 0..self.dirty.len() {
            let c = self.dirty[i];
            if let Some(conn) = self.conns.get_mut(c) {
                conn.dirty = false;
                self.write(c);
            }
        }
        self.dirty.clear();
    }

    fn write(&mut self, c: usize) {
        let conn = &mut self.conns[c];
        while conn.out_len() > 0 {
            match conn.stream.write(&conn.out[conn.out_pos..]) {
                Ok(n) => conn.out_pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    // Reset or broken pipe: the read side will report it; stop
                    // queueing output for it.
                    conn.out.clear();
                    conn.out_pos = 0;
                    if !conn.dead {
                        conn.read_closed = true;
                        conn.readable = true;
                        if !conn.queued {
                            conn.queued = true;
                            self.ready.push_back(c);
                        }
                    }
                    break;
                }
            }
        }
        let backed_up = conn.out_len() > 0;
        if !backed_up {
            conn.out.clear();
            conn.out_pos = 0;
            if conn.out.capacity() > 4096 {
                conn.out = Vec::new();
            }
        }
        if backed_up != conn.want_write && !conn.dead {
            conn.want_write = backed_up;
            let interest = if backed_up {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let _ = self
                .poll
                .registry()
                .reregister(&mut conn.stream, Token(c), interest);
        }
        // Output drained below the bound: reading may resume.
        if !backed_up && conn.readable && !conn.queued && !conn.dead {
            conn.queued = true;
            self.ready.push_back(c);
        }
    }

    /// Closes connections marked dead in this iteration.
    fn reap(&mut self) {
        if self.dead.is_empty() {
            return;
        }
        for c in self.dead.drain(..) {
            if self.conns.contains(c) {
                let conn = self.conns.remove(c);
                // Dropping the stream closes it and removes it from epoll.
                drop(conn);
            }
        }
        if self.accept_paused.is_some() {
            // A descriptor and a slot just freed up.
            self.accept_paused = Some(Instant::now());
        }
    }
}

/// Adaptive busy polling.
///
/// Blocking in `epoll_wait` costs a wake-up when the next event arrives:
/// tens of microseconds on a virtual machine whose idle vCPU halts, which
/// dominates a lock handoff or a request-reply loop (both are chains of
/// round trips). So before blocking, the loop may poll without sleeping for
/// up to a budget. It spins only while spinning pays: after a spin that
/// found nothing it skips spinning for the next 1, 3, 7, ... 63 waits
/// (doubling while spins keep failing), and one productive spin restores it.
/// An idle or lightly loaded daemon therefore spins on at most one wait in
/// 64, for the budget at most (under 1 µs per wait on average), and a busy
/// one rarely reaches the spin at all because events are already pending.
#[derive(Debug)]
struct Spin {
    max: Duration,
    /// Consecutive unproductive spins (capped).
    fails: u32,
    /// Waits left to block at once before spinning again.
    skip: u32,
}

impl Spin {
    const MAX_BACKOFF_EXP: u32 = 6;

    fn new(max: Duration) -> Self {
        Spin {
            max,
            fails: 0,
            skip: 0,
        }
    }

    /// The spin budget for the next wait (zero: block at once).
    fn budget(&mut self) -> Duration {
        if self.skip > 0 {
            self.skip -= 1;
            return Duration::ZERO;
        }
        self.max
    }

    /// Whether the spin just made found an event.
    fn record(&mut self, productive: bool) {
        if productive {
            self.fails = 0;
        } else {
            self.fails = (self.fails + 1).min(Self::MAX_BACKOFF_EXP);
            self.skip = (1 << self.fails) - 1;
        }
    }
}

/// A listening socket with `SO_REUSEADDR`, the given backlog, and the
/// options every accepted connection inherits: `TCP_NODELAY` (replies are
/// small and latency-bound) and keepalive.
fn listen(
    addr: SocketAddr,
    backlog: u32,
    keepalive: Option<Duration>,
) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, TcpKeepalive, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    if let Some(idle) = keepalive {
        let ka = TcpKeepalive::new()
            .with_time(idle)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES);
        socket.set_tcp_keepalive(&ka)?;
    }
    if addr.is_ipv6() {
        // "::" serves IPv4 too, as a single listener should.
        let _ = socket.set_only_v6(false);
    }
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Makes a listener from elsewhere (socket activation) like one `listen`
/// made: non-blocking, listening, with the options accepted connections
/// inherit.
fn inherited_options(
    listener: &std::net::TcpListener,
    backlog: u32,
    keepalive: Option<Duration>,
) -> io::Result<()> {
    let socket = socket2::SockRef::from(listener);
    socket.set_tcp_nodelay(true)?;
    if let Some(idle) = keepalive {
        let ka = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES);
        socket.set_tcp_keepalive(&ka)?;
    }
    if !socket.is_listener()? {
        socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    }
    socket.set_nonblocking(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_backs_off_while_unproductive_and_recovers() {
        let max = Duration::from_micros(50);
        let mut spin = Spin::new(max);
        assert_eq!(spin.budget(), max);
        spin.record(true);
        assert_eq!(spin.budget(), max, "productive spins keep spinning");
        // Each failure doubles the number of waits that block at once.
        for skipped in [1, 3, 7, 15, 31, 63, 63, 63] {
            spin.record(false);
            for _ in 0..skipped {
                assert_eq!(spin.budget(), Duration::ZERO);
            }
            assert_eq!(spin.budget(), max, "retries after {skipped} waits");
        }
        spin.record(true);
        assert_eq!(spin.budget(), max);
        assert_eq!(spin.budget(), max);
        // Disabled: never spins.
        let mut off = Spin::new(Duration::ZERO);
        assert_eq!(off.budget(), Duration::ZERO);
    }
}
