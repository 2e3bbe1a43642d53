//! The only part that touches the world: a single-threaded, edge-triggered
//! mio loop over a listener and the connections' sockets, pumping events
//! and bytes through the [`Driver`] (which owns the slab of connections and
//! the sans-I/O [`Core`]).
//!
//! # One loop iteration
//!
//! ```text
//! poll(timeout = next timer | 0 if a connection can take a turn | accept retry)
//! if a timer is due: driver.handle_timeout(), write its replies at once
//! for each event: accept until WouldBlock | driver.handle_ready(event)
//! driver.run_ready()            // one budgeted turn per connection, round robin
//! driver.handle_timeout()       // timers, every iteration
//! driver.flush()                // one write per connection that got output
//! apply WRITABLE interest changes (a failed one closes the connection)
//! driver.reap()                 // after the batch: no token reused while
//!                               // stale events for it may be in hand
//! ```
//!
//! What to read, when to stop, what to write and how to close are decided by
//! the [`Driver`] in `conn.rs`, plain state that a
//! simulation drives too; this file only moves events and bytes between it
//! and the operating system.
//!
//! # Descriptors
//!
//! When `accept` fails for lack of descriptors (EMFILE/ENFILE) or the
//! connection cap is reached, the loop stops accepting (pending connections
//! wait in the kernel's backlog) and tries again when a connection closes or
//! after `ACCEPT_RETRY`, whichever comes first: no busy loop.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::admin::AdminServer;
use crate::conn::{Driver, Policy, Readiness};
use crate::core::Core;
use crate::log::Log;

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
const SIGNALS: Token = Token(usize::MAX - 3);
const TIMER: Token = Token(usize::MAX - 4);
/// First of the admin endpoint's `admin::TOKENS` tokens.
const ADMIN: usize = usize::MAX - 5 - crate::admin::TOKENS;

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

/// Totals for the shutdown summary.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub peak_connections: usize,
    pub core: crate::core::Stats,
    pub uptime: Duration,
}

pub struct Reactor {
    poll: Poll,
    listener: TcpListener,
    local_addr: SocketAddr,
    driver: Driver<TcpStream>,
    config: Config,
    /// Accepting is paused (cap or descriptors exhausted) until this time,
    /// or until a connection closes.
    accept_paused: Option<Instant>,
    start: Instant,
    signals: signal_hook_mio::v1_0::Signals,
    /// A timerfd armed for the next wake-up, with the time (µs) it is armed
    /// for. epoll_wait's timeout has whole-millisecond resolution and
    /// rounds up, which would add up to a millisecond to every timeout; the
    /// timerfd wakes the loop within microseconds of the deadline. `None`
    /// (timerfd unavailable) falls back to the poll timeout.
    timer_fd: Option<std::os::fd::OwnedFd>,
    timer_armed: Option<u64>,
    spin: Spin,
    summary: Summary,
    /// The admin endpoint (`--metrics`), if enabled; its tokens start at
    /// `ADMIN`.
    admin: Option<AdminServer>,
}

impl Reactor {
    /// Binds `addr` and prepares the loop; SIGINT and SIGTERM will stop it,
    /// SIGHUP is logged and ignored, SIGUSR1 logs the `stats` line.
    ///
    /// # Errors
    /// When the socket cannot be bound or the loop set up.
    pub fn bind(addr: SocketAddr, config: Config, log: Log) -> io::Result<Self> {
        let listener = listen(addr, config.backlog, config.keepalive)?;
        Self::from_listener(listener, config, log)
    }

    /// Prepares the loop on a socket that is already bound (and usually
    /// listening), such as one passed by systemd's socket activation. It is
    /// made non-blocking and given the options accepted connections inherit;
    /// if it is not listening yet, it listens with `config.backlog`.
    ///
    /// # Errors
    /// When the socket's options cannot be set or the loop set up.
    pub fn from_listener(
        listener: std::net::TcpListener,
        config: Config,
        log: Log,
    ) -> io::Result<Self> {
        inherited_options(&listener, config.backlog, config.keepalive)?;
        let local_addr = listener.local_addr()?;
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = signal_hook_mio::v1_0::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
            signal_hook::consts::SIGUSR1,
        ])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
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
        let policy = Policy {
            max_output_bytes: config.max_output_bytes,
            read_budget: crate::conn::DEFAULT_READ_BUDGET.max(config.core.max_line_bytes),
            ..Policy::default()
        };
        let clock =
            Box::new(move || u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
        Ok(Reactor {
            poll,
            listener,
            local_addr,
            driver: Driver::new(Core::new(config.core, 0), policy, log, clock),
            config,
            accept_paused: None,
            start,
            signals,
            timer_fd,
            timer_armed: None,
            spin,
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

    /// The counters, gauges and histograms `/metrics` reports.
    pub fn snapshot(&self) -> crate::metrics::Snapshot {
        let core = self.driver.core();
        let stats = core.stats();
        crate::metrics::Snapshot {
            stats,
            connections: core.connections() as u64,
            keys: core.keys_held() as u64,
            holders: core.holders() as u64,
            waiters: core.waiters() as u64,
            log_lines_dropped: crate::log::lines_dropped(),
            uptime: self.start.elapsed(),
        }
    }

    /// The earliest deadline of the log's rate-limit window and of the
    /// admin endpoint.
    fn side_deadline(&self) -> Option<Instant> {
        let admin = self.admin.as_ref().and_then(AdminServer::next_deadline);
        match (admin, self.driver.log().poll_timeout()) {
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

    fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Runs until SIGINT or SIGTERM.
    ///
    /// # Errors
    /// When `epoll_wait` fails.
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
            // Timeouts due now go out before this batch's reads are handled,
            // so a large batch cannot make them late.
            let now_us = self.now_us();
            if self.driver.poll_timeout().is_some_and(|t| t <= now_us) {
                self.driver.handle_timeout();
                self.driver.flush();
            }
            let mut stop = false;
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
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
                    Token(c) => self.driver.handle_ready(
                        c,
                        Readiness {
                            readable: event.is_readable(),
                            writable: event.is_writable(),
                            read_closed: event.is_read_closed(),
                            error: event.is_error(),
                        },
                    ),
                }
            }
            if stop {
                break;
            }
            self.driver.run_ready();
            if self.accept_paused.is_some_and(|t| Instant::now() >= t) {
                self.accept();
            }
            self.driver.handle_timeout();
            self.driver.flush();
            self.apply_interest();
            if self.driver.reap() > 0 && self.accept_paused.is_some() {
                // A descriptor and a slot just freed up.
                self.accept_paused = Some(Instant::now());
            }
            // The log's and the admin endpoint's deadlines; the clock is
            // read only while one is pending.
            if let Some(due) = self.side_deadline() {
                let now = Instant::now();
                if due <= now {
                    self.driver.log_mut().handle_timeout(now);
                    if let Some(mut admin) = self.admin.take() {
                        admin.handle_timeout(self.poll.registry(), now, &|| self.metrics_text());
                        self.admin = Some(admin);
                    }
                }
            }
        }
        self.summary.core = self.driver.core().stats();
        self.summary.uptime = self.start.elapsed();
        Ok(self.summary)
    }

    /// Registers WRITABLE interest exactly while output backs up. A failed
    /// registration would leave the connection unserved forever, so it is
    /// closed instead.
    fn apply_interest(&mut self) {
        while let Some((c, writable)) = self.driver.poll_interest() {
            let interest = if writable {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let Some(sock) = self.driver.socket_mut(c) else {
                continue;
            };
            if let Err(e) = self.poll.registry().reregister(sock, Token(c), interest) {
                self.driver.log_mut().warn_limited(format_args!(
                    "cannot reregister a connection: {e}; closing it"
                ));
                self.driver.handle_register_failed(c);
            }
        }
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
        let mut stop = false;
        let pending: Vec<i32> = self.signals.pending().collect();
        for sig in pending {
            if sig == signal_hook::consts::SIGUSR1 {
                let line = self.driver.core().stats_line();
                let fields = line
                    .strip_prefix(crate::wire::STATS_PREFIX)
                    .and_then(|l| l.strip_suffix(crate::wire::CRLF))
                    .unwrap_or(&line);
                let fields = String::from_utf8_lossy(fields).into_owned();
                self.driver.log_mut().info(format_args!("stats {fields}"));
                continue;
            }
            let log = self.driver.log_mut();
            match sig {
                signal_hook::consts::SIGHUP => {
                    // logrotate and friends: there is nothing to reload, and
                    // dying would release every lock.
                    log.info(format_args!("received SIGHUP; ignored (nothing to reload)"));
                }
                signal_hook::consts::SIGINT => {
                    log.info(format_args!("received SIGINT, shutting down"));
                    stop = true;
                }
                _ => {
                    log.info(format_args!("received SIGTERM, shutting down"));
                    stop = true;
                }
            }
        }
        stop
    }

    fn poll_timeout(&mut self) -> Option<Duration> {
        if self.driver.has_ready() {
            return Some(Duration::ZERO);
        }
        let now_us = self.now_us();
        let next_us = self.driver.poll_timeout();
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
                self.driver.log_mut().error(format_args!(
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
            if self.driver.len() >= self.config.max_connections {
                // Resumed when a connection closes (see `run`).
                self.accept_paused = Some(Instant::now() + Duration::from_secs(3600));
                self.driver.log_mut().debug(format_args!(
                    "at the connection cap ({}); pausing accept",
                    self.config.max_connections
                ));
                return;
            }
            match self.listener.accept() {
                Ok((_, peer)) if !self.config.allow.allows(peer.ip()) => {
                    self.driver.note_rejected();
                    self.driver
                        .log_mut()
                        .debug(format_args!("rejected {peer} (not in --allow)"));
                }
                Ok((stream, peer)) => self.add(stream, peer),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: out of resources.
                    // Connections wait in the backlog; retry on a close or
                    // after ACCEPT_RETRY, never in a busy loop.
                    let open = self.driver.len();
                    self.driver.log_mut().warn_limited(format_args!(
                        "accept failed: {e} ({open} connections open); pausing accept"
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
        let c = self.driver.vacant_key();
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(c), Interest::READABLE)
        {
            self.driver
                .log_mut()
                .warn_limited(format_args!("cannot register connection from {peer}: {e}"));
            return;
        }
        let opened = self.driver.open(stream, peer);
        debug_assert_eq!(opened, c);
        self.summary.peak_connections = self.summary.peak_connections.max(self.driver.len());
        self.driver
            .log_mut()
            .debug(format_args!("connection from {peer}"));
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
