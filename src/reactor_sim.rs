//! A deterministic simulation of the reactor's per-connection policy
//! ([`crate::conn::Driver`]) over simulated sockets, shared by
//! `tests/reactor_sim.rs` (seeded runs) and the `reactor` fuzz target.
//!
//! # The world
//!
//! Up to a dozen clients connect, send scripted bytes in random chunks
//! (locks that wait with commands pipelined behind them, resume cascades,
//! syntax errors followed by more bytes), read their replies at their own
//! pace, half-close, reset, or misbehave forever. The sockets have tiny send
//! buffers, so output backs up; reads see data as it arrived, in short
//! pieces; `EINTR` is injected on reads and writes, a registration may fail,
//! and slab slots are reused. A virtual clock moves only by drawn steps.
//! Events follow epoll's edge-triggered rules (a registration change
//! re-arms readiness), with spurious ones mixed in. Closing a socket with
//! unread input resets it, and a reset destroys what the client had not
//! read yet, as TCP does.
//!
//! # The checks
//!
//! Every call the driver makes into the core is recorded and replayed into
//! a second core, which says exactly which reply bytes each client is owed.
//! At every step:
//! * what each client has received is a prefix of what it is owed (in
//!   order, nothing corrupted);
//! * a core call feeds or resumes at most the read budget, and runs no more
//!   commands than that many bytes can hold; a timer tick runs none;
//! * each connection's queued output is within `max_output_bytes` plus the
//!   replies to one turn;
//! * a connection closed after its FIN while not waiting had every byte it
//!   sent fed to the core and nothing left to resume;
//! * no connection sits on the ready list without making progress.
//!
//! At the end, every client that did not reset and did not misbehave has
//! received everything it is owed, then a clean end of stream (never a
//! reset); every connection, the hostile ones included, is closed within
//! the linger bound; nothing is left in the slab.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::rc::Rc;

use crate::conn::{CoreCall, Driver, Policy, Readiness, Socket};
use crate::core::{Config, Core, Output};
use crate::lock_table::ConnId;
use crate::log::{Level, Log};
use crate::model::Rng;

/// The shortest command line of the protocol (`stats\r\n` in version 2; a
/// version-1 line is at least 10 bytes): a chunk of `n` bytes completes at
/// most `n / MIN_LINE + 1` commands.
const MIN_LINE: usize = 7;

/// The longest reply per byte of input, rounded up (a 10-byte
/// `lock a 1\r\n` can be answered with the 19 bytes of
/// `e lock table full\r\n`), and the longest reply.
const REPLY_PER_INPUT_BYTE: usize = 2;
const LONGEST_REPLY: usize = 64;

/// Virtual microseconds a closing connection may linger.
const LINGER_US: u64 = 20_000_000;

/// Where the random choices come from: a seeded generator, or a fuzzer's
/// bytes (then the generator seeded from them, once they run out).
enum Dice<'a> {
    Rng(Rng),
    Bytes {
        data: &'a [u8],
        pos: usize,
        rest: Rng,
    },
}

impl Dice<'_> {
    fn below(&mut self, n: u64) -> u64 {
        if n <= 1 {
            return 0;
        }
        match self {
            Dice::Rng(r) => r.below(n),
            Dice::Bytes { data, pos, rest } => {
                if *pos + 2 <= data.len() {
                    let v = u16::from_le_bytes([data[*pos], data[*pos + 1]]);
                    *pos += 2;
                    u64::from(v) % n
                } else {
                    rest.below(n)
                }
            }
        }
    }

    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    fn exhausted(&self) -> bool {
        matches!(self, Dice::Bytes { data, pos, .. } if *pos + 2 > data.len())
    }
}

/// One TCP connection's two directions, shared by the client and the
/// server's socket.
#[derive(Default)]
struct Pipe {
    /// Sent by the client, not yet read by the server.
    to_server: VecDeque<u8>,
    client_fin: bool,
    client_reset: bool,
    /// Written by the server, not yet read by the client: the send buffer.
    to_client: VecDeque<u8>,
    send_capacity: usize,
    server_shut: bool,
    server_closed: bool,
    /// The server closed with unread input: the client got a reset.
    reset_by_server: bool,
    /// `EINTR`s to return before the next successful read / write.
    eintr_reads: u32,
    eintr_writes: u32,
    /// WRITABLE interest registered.
    want_write: bool,
}

struct SimSocket {
    pipe: Rc<RefCell<Pipe>>,
    io_ops: Rc<Cell<u64>>,
}

impl Socket for SimSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut p = self.pipe.borrow_mut();
        if p.client_reset {
            return Err(ErrorKind::ConnectionReset.into());
        }
        if p.eintr_reads > 0 {
            p.eintr_reads -= 1;
            self.io_ops.set(self.io_ops.get() + 1);
            return Err(ErrorKind::Interrupted.into());
        }
        if p.to_server.is_empty() {
            if p.client_fin {
                self.io_ops.set(self.io_ops.get() + 1);
                return Ok(0);
            }
            return Err(ErrorKind::WouldBlock.into());
        }
        // As TCP: everything that has arrived, up to the buffer.
        let n = buf.len().min(p.to_server.len());
        for (b, x) in buf.iter_mut().zip(p.to_server.drain(..n)) {
            *b = x;
        }
        self.io_ops.set(self.io_ops.get() + 1);
        Ok(n)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut p = self.pipe.borrow_mut();
        if p.client_reset {
            return Err(ErrorKind::ConnectionReset.into());
        }
        assert!(!p.server_shut, "write after shutdown(SHUT_WR)");
        if p.eintr_writes > 0 {
            p.eintr_writes -= 1;
            self.io_ops.set(self.io_ops.get() + 1);
            return Err(ErrorKind::Interrupted.into());
        }
        let space = p.send_capacity.saturating_sub(p.to_client.len());
        if space == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(space);
        p.to_client.extend(&buf[..n]);
        self.io_ops.set(self.io_ops.get() + 1);
        Ok(n)
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        let mut p = self.pipe.borrow_mut();
        if p.client_reset {
            return Err(ErrorKind::NotConnected.into());
        }
        p.server_shut = true;
        Ok(())
    }
}

impl Drop for SimSocket {
    fn drop(&mut self) {
        let mut p = self.pipe.borrow_mut();
        p.server_closed = true;
        if !p.to_server.is_empty() && !p.client_reset {
            // close(2) with unread input: the kernel sends a reset, and the
            // client's stack throws away what its application had not read.
            p.reset_by_server = true;
            p.to_client.clear();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Sends its script, reads everything, half-closes.
    Polite,
    /// Resets the connection at a random moment.
    Resetter,
    /// A syntax error, then endless bytes, never a FIN, perhaps no reads.
    Hostile,
}

struct Client {
    pipe: Rc<RefCell<Pipe>>,
    kind: Kind,
    script: Vec<u8>,
    sent: usize,
    /// Chance in 16 per step of reading, and most bytes per read.
    read_rate: u64,
    read_max: usize,
    received: Vec<u8>,
    eof: bool,
    /// The server's slot, once accepted.
    slot: Option<usize>,
    /// Closed by an injected registration failure.
    killed: bool,
    /// Its close was seen (by the linger check below).
    close_noted: bool,
    /// Closed because its close lingered to the deadline: a peer that
    /// trickles bytes after its error for longer than the linger bound may
    /// be reset (the bound at work).
    lingered_out: bool,
}

/// What one run did, for the test's summary.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimReport {
    pub steps: u64,
    pub clients: usize,
    pub core_calls: u64,
    pub replies_bytes: u64,
    pub linger_timeouts: u64,
    pub linger_overflows: u64,
    pub resets: u64,
}

/// The second core the driver's calls are replayed into.
struct Shadow {
    core: Core,
    budget: usize,
    slot_client: Vec<Option<usize>>,
    pending_opens: VecDeque<usize>,
    owed: Vec<Vec<u8>>,
    fed: Vec<usize>,
    closed_by_error: Vec<bool>,
    calls: u64,
}

impl Shadow {
    fn client(&self, c: usize) -> usize {
        self.slot_client[c].expect("a core call for a slot never opened")
    }

    fn replay(&mut self, calls: Vec<CoreCall>, clients: &[Client]) {
        for call in calls {
            self.calls += 1;
            let before = self.core.stats().commands_total();
            let ran = |s: &Self| s.core.stats().commands_total() - before;
            match call {
                CoreCall::Rejected => self.core.note_rejected(),
                CoreCall::Open(c, peer) => {
                    let k = self.pending_opens.pop_front().expect("an open");
                    if self.slot_client.len() <= c {
                        self.slot_client.resize(c + 1, None);
                    }
                    self.slot_client[c] = Some(k);
                    self.core.handle_open(ConnId(c), Some(peer));
                }
                CoreCall::Bytes(c, bytes, now) => {
                    let k = self.client(c);
                    assert!(
                        bytes.len() <= self.budget,
                        "read {} bytes, over the budget {}",
                        bytes.len(),
                        self.budget
                    );
                    self.fed[k] += bytes.len();
                    self.core.handle_bytes(ConnId(c), &bytes, now);
                    let n = ran(self) as usize;
                    assert!(
                        n <= bytes.len() / MIN_LINE + 1,
                        "{n} commands ran for {} bytes read (a resumed buffer ran inline?)",
                        bytes.len()
                    );
                }
                CoreCall::Resume(c, max, now) => {
                    assert!(max <= self.budget, "resumed {max} bytes, over the budget");
                    self.core.handle_resume(ConnId(c), max, now);
                    let n = ran(self) as usize;
                    assert!(
                        n <= max / MIN_LINE + 1,
                        "{n} commands resumed in one turn of {max} bytes"
                    );
                }
                CoreCall::Closed(c, now) => {
                    let k = self.client(c);
                    let cl = &clients[k];
                    let fin = cl.pipe.borrow().client_fin;
                    let waiting = self.core.is_waiting(ConnId(c));
                    if fin && !cl.killed && !cl.pipe.borrow().client_reset && !waiting {
                        // Half-close: everything sent before the FIN runs.
                        assert!(
                            self.core.wants_input(ConnId(c)),
                            "client {k} closed after its FIN with commands left to resume"
                        );
                        assert_eq!(
                            self.fed[k],
                            cl.script.len(),
                            "client {k} closed after its FIN, not waiting, before all it \
                             sent was read"
                        );
                    }
                    self.core.handle_closed(ConnId(c), now);
                }
                CoreCall::Timeout(now) => {
                    self.core.handle_timeout(now);
                    assert_eq!(ran(self), 0, "a timer tick ran commands");
                }
            }
            while let Some(out) = self.core.poll_output() {
                match out {
                    Output::Reply(ConnId(c), r) => {
                        let k = self.client(c);
                        self.owed[k].extend_from_slice(r.as_bytes());
                    }
                    Output::Close(ConnId(c), _) => {
                        let k = self.client(c);
                        self.closed_by_error[k] = true;
                    }
                }
            }
            while self.core.poll_resumable().is_some() {}
        }
    }
}

fn script(d: &mut Dice<'_>, kind: Kind, linger_max: usize) -> Vec<u8> {
    const KEYS: [&str; 3] = ["a", "b", "c"];
    const TIMEOUTS: [&str; 6] = ["0", "1", "3", "20", "400", "99999999999"];
    let mut s = Vec::new();
    for _ in 0..d.below(16) {
        let key = KEYS[d.index(KEYS.len())];
        match d.below(8) {
            0..=2 => {
                let t = TIMEOUTS[d.index(TIMEOUTS.len())];
                s.extend_from_slice(format!("lock {key} {t}\r\n").as_bytes());
            }
            3 | 4 => s.extend_from_slice(format!("unlock {key}\r\n").as_bytes()),
            5 => s.extend_from_slice(b"unlock zz\r\n"),
            _ => {
                // A resume cascade: wait, then cheap commands, then release.
                s.extend_from_slice(format!("lock {key} 99999999999\r\n").as_bytes());
                for _ in 0..d.below(30) {
                    s.extend_from_slice(b"unlock zz\r\n");
                }
                s.extend_from_slice(format!("unlock {key}\r\n").as_bytes());
            }
        }
    }
    if kind == Kind::Hostile || d.chance(1, 5) {
        s.extend_from_slice(if d.chance(1, 2) {
            b"lock\ta 0\r\n"
        } else {
            b"x\r\n"
        });
        if kind != Kind::Hostile {
            // Bytes after the error: the replies before it must still arrive.
            for _ in 0..d.below(linger_max as u64 / 11) {
                s.extend_from_slice(b"unlock zz\r\n");
            }
        }
    }
    s
}

/// Runs one seeded world; panics on the first broken promise.
pub fn simulate(seed: u64) -> SimReport {
    run(&mut Dice::Rng(Rng::new(seed)), 4_000)
}

/// The fuzz target: a world whose every choice comes from `data`.
pub fn check_reactor(data: &[u8]) {
    let seed = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    run(
        &mut Dice::Bytes {
            data,
            pos: 0,
            rest: Rng::new(seed),
        },
        1_500,
    );
}

const LISTENER: usize = usize::MAX;

fn run(d: &mut Dice<'_>, max_steps: u64) -> SimReport {
    let config = Config {
        max_line_bytes: [16, 40, 10_000][d.index(3)],
        max_pending_bytes: [0, 1, 50, 300][d.index(4)],
        max_locks_per_connection: [1, 2, 1024][d.index(3)],
        ..Config::default()
    };
    // Lock events on in a third of the runs (not a new die: seeds keep
    // their meaning).
    let config = Config {
        events: config.max_locks_per_connection == 2,
        ..config
    };
    let policy = Policy {
        max_output_bytes: [0, 1, 20, 200][d.index(4)],
        read_budget: [1, 7, 30, 64][d.index(4)],
        linger_us: LINGER_US,
        linger_max_bytes: [40, 300, 2000][d.index(3)],
    };
    let clock = Rc::new(Cell::new(1_000_000u64));
    let c2 = clock.clone();
    let mut driver: Driver<SimSocket> = Driver::new(
        Core::new(config, clock.get()),
        policy,
        Log::new(Level::Quiet),
        Box::new(move || c2.get()),
    );
    driver.record_core_calls();
    let io_ops = Rc::new(Cell::new(0u64));
    let mut shadow = Shadow {
        core: Core::new(config, clock.get()),
        budget: policy.read_budget,
        slot_client: Vec::new(),
        pending_opens: VecDeque::new(),
        owed: Vec::new(),
        fed: Vec::new(),
        closed_by_error: Vec::new(),
        calls: 0,
    };
    let fail_registrations = d.chance(1, 4);
    let max_clients = 2 + d.index(10);
    let out_bound =
        policy.max_output_bytes + REPLY_PER_INPUT_BYTE * policy.read_budget + 2 * LONGEST_REPLY;
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();

    let mut clients: Vec<Client> = Vec::new();
    let mut backlog: VecDeque<usize> = VecDeque::new();
    let mut events: BTreeMap<usize, Readiness> = BTreeMap::new();
    let mut report = SimReport::default();
    let mut stuck = 0;
    let mut linger_seen = 0;
    let mut ending = false;
    let mut end_since = 0u64;
    // Print every core call and client action (`DREADLOCK_REACTOR_SIM_TRACE=1`).
    let trace = std::env::var_os("DREADLOCK_REACTOR_SIM_TRACE").is_some();

    fn wake(events: &mut BTreeMap<usize, Readiness>, slot: usize, ev: Readiness) {
        let e = events.entry(slot).or_default();
        e.readable |= ev.readable;
        e.writable |= ev.writable;
        e.read_closed |= ev.read_closed;
        e.error |= ev.error;
    }
    let readable = Readiness {
        readable: true,
        ..Readiness::default()
    };

    for step in 0.. {
        report.steps = step;
        if !ending && (step >= max_steps || d.exhausted()) {
            ending = true;
            end_since = clock.get();
        }
        // ---- the reactor's iteration, as in reactor.rs ----
        let ready_before = driver.has_ready();
        let ops_before = io_ops.get();
        let batch = std::mem::take(&mut events);
        if driver.poll_timeout().is_some_and(|t| t <= clock.get()) {
            driver.handle_timeout();
            driver.flush();
        }
        for (slot, ev) in batch {
            if trace {
                eprintln!("[{step}] event {slot} {ev:?}");
            }
            if slot == LISTENER {
                while let Some(k) = backlog.pop_front() {
                    let c = driver.vacant_key();
                    let sock = SimSocket {
                        pipe: clients[k].pipe.clone(),
                        io_ops: io_ops.clone(),
                    };
                    assert_eq!(driver.open(sock, peer), c);
                    shadow.pending_opens.push_back(k);
                    clients[k].slot = Some(c);
                    let p = clients[k].pipe.borrow();
                    if !p.to_server.is_empty() || p.client_fin {
                        wake(&mut events, c, readable);
                    }
                }
            } else {
                driver.handle_ready(slot, ev);
            }
        }
        driver.run_ready();
        driver.handle_timeout();
        driver.flush();
        while let Some((c, w)) = driver.poll_interest() {
            let k = shadow.client(c);
            if fail_registrations && d.chance(1, 50) {
                clients[k].killed = true;
                driver.handle_register_failed(c);
                continue;
            }
            let mut p = clients[k].pipe.borrow_mut();
            p.want_write = w;
            // EPOLL_CTL_MOD re-arms: current readiness is reported again.
            if w && p.to_client.len() < p.send_capacity {
                wake(
                    &mut events,
                    c,
                    Readiness {
                        writable: true,
                        ..Readiness::default()
                    },
                );
            }
            if !p.to_server.is_empty() || p.client_fin {
                wake(
                    &mut events,
                    c,
                    Readiness {
                        readable: true,
                        read_closed: p.client_fin,
                        ..Readiness::default()
                    },
                );
            }
        }
        if trace {
            for cl in &clients {
                if let Some(c) = cl.slot {
                    if !cl.pipe.borrow().server_closed {
                        eprintln!("[{step}]   {}", driver.describe(c));
                    }
                }
            }
        }
        driver.reap();
        let calls = driver.take_core_calls();
        if trace {
            for call in &calls {
                eprintln!("[{step} @{}] {call:?}", clock.get());
            }
        }
        let progressed = !calls.is_empty() || io_ops.get() != ops_before;
        shadow.owed.resize(clients.len(), Vec::new());
        shadow.fed.resize(clients.len(), 0);
        shadow.closed_by_error.resize(clients.len(), false);
        shadow.replay(calls, &clients);

        // ---- the checks of every step ----
        if ready_before && !progressed {
            stuck += 1;
            assert!(
                stuck < 4,
                "connections stay ready without progress (busy loop)"
            );
        } else {
            stuck = 0;
        }
        for (k, cl) in clients.iter().enumerate() {
            assert!(
                shadow.owed[k].starts_with(&cl.received),
                "client {k} received {:?}, owed {:?}",
                String::from_utf8_lossy(&cl.received),
                String::from_utf8_lossy(&shadow.owed[k])
            );
            if let Some(c) = cl.slot {
                if !cl.pipe.borrow().server_closed {
                    let out = driver.output_len(c);
                    assert!(
                        out <= out_bound,
                        "client {k}: {out} bytes of output queued, over {out_bound}"
                    );
                    let held = driver.output_held(c);
                    assert!(
                        held <= 2 * out_bound,
                        "client {k}: the output buffer holds {held} bytes, over twice {out_bound}"
                    );
                    assert!(
                        driver.output_capacity(c) <= (4 * out_bound).max(8192),
                        "client {k}: output buffer of {} bytes",
                        driver.output_capacity(c)
                    );
                }
            }
        }

        // Connections the linger deadline closed in this step.
        let lingered = driver.stats().linger_timeouts;
        for cl in clients.iter_mut() {
            if !cl.close_noted && cl.pipe.borrow().server_closed {
                cl.close_noted = true;
                cl.lingered_out = lingered > linger_seen;
            }
        }
        linger_seen = lingered;

        // ---- the world moves ----
        if !ending && clients.len() < max_clients && d.chance(1, 12) {
            let kind = match d.below(8) {
                0 => Kind::Resetter,
                1 => Kind::Hostile,
                _ => Kind::Polite,
            };
            let k = clients.len();
            let pipe = Rc::new(RefCell::new(Pipe {
                send_capacity: 1 + d.index(40),
                ..Pipe::default()
            }));
            clients.push(Client {
                pipe,
                kind,
                script: script(d, kind, policy.linger_max_bytes),
                sent: 0,
                read_rate: if kind == Kind::Hostile && d.chance(1, 2) {
                    0
                } else {
                    2 + d.below(15)
                },
                read_max: 1 + d.index(30),
                received: Vec::new(),
                eof: false,
                slot: None,
                killed: false,
                close_noted: false,
                lingered_out: false,
            });
            backlog.push_back(k);
            wake(&mut events, LISTENER, readable);
        }
        for cl in clients.iter_mut() {
            let Some(c) = cl.slot else { continue };
            let mut p = cl.pipe.borrow_mut();
            if p.server_closed && p.to_client.is_empty() {
                cl.eof = true;
            }
            if cl.eof || p.client_reset {
                continue;
            }
            let alive = !p.server_closed;
            // Send.
            if alive && !p.client_fin && d.chance(1, 3) {
                if cl.sent < cl.script.len() {
                    let n = (1 + d.index(24)).min(cl.script.len() - cl.sent);
                    p.to_server.extend(&cl.script[cl.sent..cl.sent + n]);
                    if trace {
                        eprintln!(
                            "[{step}] client on slot {c} sends {:?}",
                            String::from_utf8_lossy(&cl.script[cl.sent..cl.sent + n])
                        );
                    }
                    cl.sent += n;
                    wake(&mut events, c, readable);
                } else if cl.kind == Kind::Hostile {
                    p.to_server.extend(b"unlock zz\r\n");
                    cl.script.extend_from_slice(b"unlock zz\r\n");
                    cl.sent = cl.script.len();
                    wake(&mut events, c, readable);
                } else if ending || cl.kind != Kind::Resetter && d.chance(1, 4) {
                    {
                        if trace {
                            eprintln!("[{step}] client on slot {c} sends FIN");
                        }
                        p.client_fin = true;
                        wake(
                            &mut events,
                            c,
                            Readiness {
                                readable: true,
                                read_closed: true,
                                ..Readiness::default()
                            },
                        );
                    }
                }
            }
            // A hostile client still served (waiting forever, or never
            // reaching its error) gives up some time after the end: an open
            // connection is its right, only a closing one must go.
            let give_up = ending
                && cl.kind == Kind::Hostile
                && driver.is_open(c)
                && clock.get() - end_since > LINGER_US / 2;
            if alive && (give_up || cl.kind == Kind::Resetter && d.chance(1, 60)) {
                if trace {
                    eprintln!("[{step}] client on slot {c} resets");
                }
                p.client_reset = true;
                p.to_client.clear();
                wake(
                    &mut events,
                    c,
                    Readiness {
                        readable: true,
                        read_closed: true,
                        error: true,
                        ..Readiness::default()
                    },
                );
                continue;
            }
            // Read.
            // At the end polite clients read everything; a hostile one
            // whose error line the server has not reached yet (a plain
            // non-reader keeps its connection) starts reading, so it gets
            // there and must then be closed within the linger bound.
            let fast = ending && cl.kind != Kind::Hostile;
            let rate = if fast || (ending && driver.is_open(c)) {
                16
            } else {
                cl.read_rate
            };
            if !p.to_client.is_empty() && d.below(16) < rate {
                let n = if fast {
                    p.to_client.len()
                } else {
                    (1 + d.index(cl.read_max)).min(p.to_client.len())
                };
                let was_full = p.to_client.len() >= p.send_capacity;
                cl.received.extend(p.to_client.drain(..n));
                if alive && p.want_write && (was_full || d.chance(1, 2)) {
                    wake(
                        &mut events,
                        c,
                        Readiness {
                            writable: true,
                            ..Readiness::default()
                        },
                    );
                }
            }
            if p.server_shut && p.to_client.is_empty() {
                cl.eof = true;
            }
            // Injected faults and spurious events.
            if alive && d.chance(1, 40) {
                p.eintr_reads += 1;
            }
            if alive && d.chance(1, 40) {
                p.eintr_writes += 1;
            }
            if alive && d.chance(1, 30) {
                wake(
                    &mut events,
                    c,
                    Readiness {
                        readable: d.chance(1, 2),
                        writable: d.chance(1, 2),
                        ..Readiness::default()
                    },
                );
            }
        }

        // ---- the clock ----
        let busy = driver.has_ready() || !events.is_empty();
        let polite_left = clients.iter().any(|c| {
            c.kind == Kind::Polite && !c.killed && !c.eof && !c.pipe.borrow().client_reset
        });
        let now = clock.get();
        let next = if ending && !polite_left {
            // Only misbehaving clients left: on to their linger deadlines.
            now + 1_000 + d.below(50_000)
        } else if busy {
            now + d.below(50)
        } else if let Some(t) = driver.poll_timeout() {
            now + (1 + d.below(3000)).min(t.saturating_sub(now).max(1))
        } else {
            now + 1 + d.below(3000)
        };
        clock.set(next);

        if ending {
            let done = driver.is_empty() && backlog.is_empty() && events.is_empty();
            if done {
                break;
            }
            if clock.get() - end_since > 3 * LINGER_US {
                let open: Vec<String> = clients
                    .iter()
                    .enumerate()
                    .filter(|(_, cl)| !cl.pipe.borrow().server_closed)
                    .map(|(k, cl)| {
                        let p = cl.pipe.borrow();
                        format!(
                            "client {k} {:?}: sent {}/{}, fin {}, unread by server {}, \
                             unread by client {} (capacity {}), received {}, owed {}; {}",
                            cl.kind,
                            cl.sent,
                            cl.script.len(),
                            p.client_fin,
                            p.to_server.len(),
                            p.to_client.len(),
                            p.send_capacity,
                            cl.received.len(),
                            shadow.owed[k].len(),
                            cl.slot
                                .map_or("not accepted".into(), |c| driver.describe(c)),
                        )
                    })
                    .collect();
                panic!(
                    "connections still open {} µs after the clients stopped:\n{}",
                    clock.get() - end_since,
                    open.join("\n")
                );
            }
            assert!(step < max_steps + 200_000, "the simulation does not end");
        }
    }

    // ---- the checks at the end ----
    for (k, cl) in clients.iter().enumerate() {
        let p = cl.pipe.borrow();
        assert!(p.server_closed, "client {k}'s connection never closed");
        // A client whose connection closed with more than the linger's
        // worth of bytes never fed to the core (a withdrawn wait with a long
        // tail) may be reset: that is the bound at work.
        let overflow = cl.script.len() - shadow.fed[k] > policy.linger_max_bytes;
        if cl.kind == Kind::Polite && !cl.killed && !overflow && !cl.lingered_out {
            assert!(
                !p.reset_by_server,
                "client {k} ({} bytes sent, error: {}) got a reset from the server",
                cl.sent, shadow.closed_by_error[k]
            );
            assert_eq!(
                String::from_utf8_lossy(&cl.received),
                String::from_utf8_lossy(&shadow.owed[k]),
                "client {k} did not receive every reply it is owed"
            );
            assert!(cl.eof, "client {k} saw no end of stream");
        }
    }
    let st = driver.stats();
    report.clients = clients.len();
    report.core_calls = shadow.calls;
    report.replies_bytes = shadow.owed.iter().map(|o| o.len() as u64).sum();
    report.linger_timeouts = st.linger_timeouts;
    report.linger_overflows = st.linger_overflows;
    report.resets = st.resets;
    report
}
