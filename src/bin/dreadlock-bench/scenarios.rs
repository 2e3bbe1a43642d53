//! The four scenarios. Each runs its own mio loop over its connections and
//! returns an [`Outcome`]; a correctness failure ends the scenario at once
//! (its figures would mean nothing) unless noted.

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use crate::Ctx;
use crate::hist::Histogram;
use crate::net::{self, Conn, Proto, Reply};
use crate::procfs::{self, CpuMeter};
use crate::report::{Outcome, Val, big, human_latency, human_ns, latency_json};

/// Scratch buffer for reads, shared by all connections.
const SCRATCH: usize = 64 * 1024;

pub(crate) fn new_poll() -> Result<Poll, String> {
    Poll::new().map_err(|e| format!("cannot create epoll: {e}"))
}

pub(crate) fn poll_once(
    poll: &mut Poll,
    events: &mut Events,
    wait: Duration,
) -> Result<(), String> {
    match poll.poll(events, Some(wait)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::Interrupted => {
            events.clear();
            Ok(())
        }
        Err(e) => Err(format!("poll: {e}")),
    }
}

pub(crate) fn start_cpu(ctx: &Ctx) -> Option<Result<CpuMeter, String>> {
    ctx.pid.map(CpuMeter::start)
}

pub(crate) fn stop_cpu(m: &Option<Result<CpuMeter, String>>) -> Option<Result<(f64, f64), String>> {
    m.as_ref().map(|m| match m {
        Ok(m) => m.stop(),
        Err(e) => Err(e.clone()),
    })
}

/// The timeline of a timed run: warm-up until `t0`, the measured interval
/// until `end` (the server's CPU is metered over exactly that), then at
/// most `ctx.grace` to collect the replies still owed.
pub(crate) struct Window {
    pub(crate) t0: Instant,
    pub(crate) end: Instant,
    drain_deadline: Instant,
    meter: Option<Option<Result<CpuMeter, String>>>,
    cpu: Option<Result<(f64, f64), String>>,
    ended: bool,
}

impl Window {
    /// A window whose warm-up starts now.
    pub(crate) fn start(ctx: &Ctx) -> Window {
        let t0 = Instant::now() + ctx.warmup;
        let end = t0 + ctx.duration;
        Window {
            t0,
            end,
            drain_deadline: end + ctx.grace,
            meter: None,
            cpu: None,
            ended: false,
        }
    }

    /// Starts and stops the CPU meter as `now` passes `t0` and `end`.
    pub(crate) fn advance(&mut self, ctx: &Ctx, now: Instant) {
        if self.meter.is_none() && now >= self.t0 {
            self.meter = Some(start_cpu(ctx));
        }
        if !self.ended && now >= self.end {
            self.ended = true;
            self.cpu = self.meter.as_ref().and_then(stop_cpu);
        }
    }

    /// Whether the measured interval is over.
    pub(crate) fn ended(&self) -> bool {
        self.ended
    }

    /// How long to wait for events from `now` (until the next edge of the
    /// window); `None` once the drain deadline has passed.
    pub(crate) fn wait(&self, now: Instant) -> Option<Duration> {
        if now >= self.drain_deadline {
            None
        } else if now < self.t0 {
            Some(self.t0 - now)
        } else if !self.ended {
            Some(self.end - now)
        } else {
            Some(self.drain_deadline - now)
        }
    }

    /// The failure when `busy` connections still owe replies at the drain
    /// deadline.
    pub(crate) fn overdue(&self, ctx: &Ctx, busy: usize) -> String {
        format!(
            "{busy} connections still waiting for replies {:?} after the measured interval",
            ctx.grace
        )
    }

    /// The server's CPU over the measured interval (with `--pid`).
    pub(crate) fn cpu(&self) -> Option<Result<(f64, f64), String>> {
        self.cpu.clone()
    }
}

/// Opens `n` connections (all must succeed) wrapped as `Conn`s with tokens
/// `0..n`.
pub(crate) fn connect_all(
    ctx: &Ctx,
    poll: &mut Poll,
    n: usize,
    out: &mut Outcome,
) -> Option<Vec<Conn>> {
    let hard = Instant::now() + ctx.connect_timeout * 2;
    let (streams, cs) =
        net::connect_many(poll, ctx.addr, n, 0, ctx.batch, ctx.connect_timeout, hard);
    if cs.failed() > 0 {
        out.fail(format!(
            "{} of {n} connects to {} failed (first error: {})",
            cs.failed(),
            ctx.addr,
            cs.first_error.as_deref().unwrap_or("?")
        ));
        return None;
    }
    let mut conns = Vec::with_capacity(n);
    for (i, s) in streams.into_iter().enumerate() {
        match Conn::new(s.expect("connected"), Token(i), poll.registry()) {
            Ok(c) => conns.push(c),
            Err(e) => {
                out.fail(format!("connection {i}: {e}"));
                return None;
            }
        }
    }
    Some(conns)
}

pub(crate) fn fairness(out: &mut Outcome, counts: &[u64], what: &str) {
    let min = counts.iter().copied().min().unwrap_or(0);
    let max = counts.iter().copied().max().unwrap_or(0);
    let ratio = if max > 0 {
        min as f64 / max as f64
    } else {
        0.0
    };
    out.line(
        "fairness",
        format!("min {min} / max {max} {what} per connection = {ratio:.2}"),
    );
    out.field("min_per_conn", Val::U(min));
    out.field("max_per_conn", Val::U(max));
    out.field("fairness_min_max", Val::F(ratio));
}

// ---------------------------------------------------------------------------

struct TpSlot {
    conn: Conn,
    /// One round: P x (lock + unlock).
    round: Vec<u8>,
    /// P.
    pairs_per_round: usize,
    /// Replies still due for the round in flight (0: none in flight).
    left: usize,
    next_is_lock: bool,
    started: Instant,
    pairs: u64,
}

/// `c` connections, each on its own key, `p` lock/unlock pairs per round.
/// With `probe`, one more connection does single lock/unlock round trips
/// meanwhile (the flood + probe scenario): its latency is reported on its
/// own, and the throughput is the `c` connections' alone.
pub fn throughput(ctx: &Ctx, c: usize, p: usize, probe: bool) -> Result<Outcome, String> {
    let mut out = Outcome::default();
    let mut poll = new_poll()?;
    let total = c + usize::from(probe);
    let Some(conns) = connect_all(ctx, &mut poll, total, &mut out) else {
        return Ok(out);
    };
    let proto = ctx.proto;
    let lease = ctx.lease_ms();
    let mut slots: Vec<TpSlot> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let key = format!("{}k{i}", ctx.key_prefix);
            let mut round = Vec::new();
            let pairs_per_round = if i < c { p } else { 1 };
            for _ in 0..pairs_per_round {
                proto.lock(&mut round, &key, 0, lease);
                proto.unlock(&mut round, &key);
            }
            TpSlot {
                conn,
                round,
                pairs_per_round,
                left: 0,
                next_is_lock: true,
                started: Instant::now(),
                pairs: 0,
            }
        })
        .collect();
    let mut win = Window::start(ctx);
    let (t0, end) = (win.t0, win.end);
    for s in &mut slots {
        s.started = Instant::now();
        s.left = 2 * s.pairs_per_round;
        s.next_is_lock = true;
        s.conn.send(poll.registry(), &s.round)?;
    }
    let mut busy = total;
    let mut lat = Histogram::new();
    let mut probe_lat = Histogram::new();
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; SCRATCH];
    let mut replies = Vec::new();
    loop {
        let now = Instant::now();
        win.advance(ctx, now);
        if win.ended() && busy == 0 {
            break;
        }
        let Some(wait) = win.wait(now) else {
            out.fail(win.overdue(ctx, busy));
            return Ok(out);
        };
        poll_once(&mut poll, &mut events, wait)?;
        for ev in events.iter() {
            let i = ev.token().0;
            let s = &mut slots[i];
            if ev.is_writable() {
                if let Err(e) = s.conn.flush(poll.registry()) {
                    out.fail(format!("connection {i}: {e}"));
                    return Ok(out);
                }
            }
            if !(ev.is_readable() || ev.is_read_closed() || ev.is_error()) {
                continue;
            }
            replies.clear();
            if let Err(e) = s.conn.read_replies(&mut scratch, proto, &mut replies) {
                out.fail(format!("connection {i}: {e}"));
                return Ok(out);
            }
            for &r in &replies {
                let want = if s.next_is_lock {
                    Reply::Locked
                } else {
                    Reply::Unlocked
                };
                if s.left == 0 {
                    out.fail(format!(
                        "connection {i}: unexpected reply {} with no command outstanding",
                        proto.show(r)
                    ));
                    return Ok(out);
                }
                if r != want {
                    out.fail(format!(
                        "connection {i}: expected {}, got {}",
                        proto.show(want),
                        proto.show(r)
                    ));
                    return Ok(out);
                }
                s.left -= 1;
                s.next_is_lock = !s.next_is_lock;
            }
            if s.left == 0 && !replies.is_empty() {
                let t = Instant::now();
                if t >= t0 && t <= end {
                    s.pairs += s.pairs_per_round as u64;
                    let h = if i < c { &mut lat } else { &mut probe_lat };
                    h.record(t.duration_since(s.started).as_nanos() as u64);
                }
                if t < end {
                    s.started = t;
                    s.left = 2 * s.pairs_per_round;
                    if let Err(e) = s.conn.send(poll.registry(), &s.round) {
                        out.fail(format!("connection {i}: {e}"));
                        return Ok(out);
                    }
                } else {
                    busy -= 1;
                }
            }
        }
    }
    let secs = ctx.duration.as_secs_f64();
    let probe_slot = slots.split_off(c);
    let pairs: u64 = slots.iter().map(|s| s.pairs).sum();
    let rate = pairs as f64 / secs;
    out.line(
        "pairs/s",
        format!(
            "{} ({} commands/s), {} lock+unlock pairs in {secs:.2} s",
            big(rate),
            big(2.0 * rate),
            big(pairs as f64)
        ),
    );
    out.line("round latency", human_latency(&lat));
    if let Some(pr) = probe_slot.first() {
        out.line(
            "probe",
            format!("{} round trips, {}", pr.pairs, human_latency(&probe_lat)),
        );
        out.field("probe_round_trips", Val::U(pr.pairs));
        out.field("probe_latency", latency_json(&probe_lat));
    }
    out.field("connections", Val::U(c as u64));
    out.field("pipeline", Val::U(p as u64));
    out.field("measured_s", Val::F(secs));
    out.field("pairs", Val::U(pairs));
    out.field("pairs_per_s", Val::F(rate));
    out.field("commands_per_s", Val::F(2.0 * rate));
    out.field("round_latency", latency_json(&lat));
    let per_conn: Vec<u64> = slots.iter().map(|s| s.pairs).collect();
    fairness(&mut out, &per_conn, "pairs");
    out.cpu(win.cpu(), pairs, "pair");
    Ok(out)
}

// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CState {
    /// A lock request is out.
    WaitGrant,
    /// `unlock` + the next `lock` are out.
    WaitUnlockThenGrant,
    /// Granted; the unlock goes out at the end of this batch of events.
    Holding,
    /// The last `unlock` is out.
    WaitUnlockFinal,
    Done,
}

struct CSlot {
    conn: Conn,
    key: usize,
    st: CState,
    /// When the lock request now waiting was written.
    sent: Instant,
    grants: u64,
}

/// `c` connections loop lock -> unlock on `k` shared keys.
pub fn contended(ctx: &Ctx, c: usize, k: usize) -> Result<Outcome, String> {
    let mut out = Outcome::default();
    let mut poll = new_poll()?;
    let Some(conns) = connect_all(ctx, &mut poll, c, &mut out) else {
        return Ok(out);
    };
    let proto = ctx.proto;
    let lease = ctx.lease_ms();
    // Long enough that no legitimate timeout can happen in this run.
    let timeout_ms = lease;
    let keys: Vec<String> = (0..k).map(|j| format!("{}c{j}", ctx.key_prefix)).collect();
    // Who the tool believes holds each key: set on a grant, cleared when
    // the holder's unlock is written (before any later grant can exist).
    let mut holders: Vec<Option<usize>> = vec![None; k];
    let mut violations = 0u64;
    let mut retries = 0u64;
    let mut slots: Vec<CSlot> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| CSlot {
            conn,
            key: i % k,
            st: CState::WaitGrant,
            sent: Instant::now(),
            grants: 0,
        })
        .collect();
    let mut win = Window::start(ctx);
    let (t0, end) = (win.t0, win.end);
    let mut buf = Vec::new();
    for s in &mut slots {
        buf.clear();
        proto.lock(&mut buf, &keys[s.key], timeout_ms, lease);
        s.conn.send(poll.registry(), &buf)?;
        s.sent = Instant::now();
    }
    let mut active = c;
    let mut lat = Histogram::new();
    let mut handoffs = 0u64;
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; SCRATCH];
    let mut replies = Vec::new();
    let mut release: Vec<usize> = Vec::new();
    loop {
        let now = Instant::now();
        win.advance(ctx, now);
        if active == 0 {
            break;
        }
        let Some(wait) = win.wait(now) else {
            out.fail(win.overdue(ctx, active));
            break;
        };
        poll_once(&mut poll, &mut events, wait)?;
        for ev in events.iter() {
            let i = ev.token().0;
            if ev.is_writable() {
                if let Err(e) = slots[i].conn.flush(poll.registry()) {
                    out.fail(format!("connection {i}: {e}"));
                    return Ok(out);
                }
            }
            if !(ev.is_readable() || ev.is_read_closed() || ev.is_error()) {
                continue;
            }
            replies.clear();
            if let Err(e) = slots[i]
                .conn
                .read_replies(&mut scratch, proto, &mut replies)
            {
                if slots[i].st == CState::Done && e == "server closed the connection" {
                    continue;
                }
                out.fail(format!("connection {i}: {e}"));
                return Ok(out);
            }
            let t = Instant::now();
            for &r in &replies {
                let s = &mut slots[i];
                let key = s.key;
                match (s.st, r) {
                    (CState::WaitGrant, Reply::Locked) => {
                        if let Some(j) = holders[key] {
                            violations += 1;
                            if violations <= 5 {
                                out.fail(format!(
                                    "mutual exclusion violated: key {} granted to connection \
                                     {i} while connection {j} holds it (its unlock not sent)",
                                    keys[key]
                                ));
                            }
                        }
                        holders[key] = Some(i);
                        if t >= t0 && t <= end {
                            handoffs += 1;
                            s.grants += 1;
                            lat.record(t.duration_since(s.sent).as_nanos() as u64);
                        }
                        // Held until the end of this batch of events, so a
                        // second grant arriving meanwhile is caught.
                        release.push(i);
                        s.st = CState::Holding;
                    }
                    (CState::WaitGrant, Reply::NotGranted) if proto == Proto::Redis => {
                        // No blocking wait in Redis: retry at once.
                        if t < end {
                            retries += 1;
                            buf.clear();
                            proto.lock(&mut buf, &keys[key], timeout_ms, lease);
                            if let Err(e) = s.conn.send(poll.registry(), &buf) {
                                out.fail(format!("connection {i}: {e}"));
                                return Ok(out);
                            }
                        } else {
                            s.st = CState::Done;
                            active -= 1;
                        }
                    }
                    (CState::WaitGrant, Reply::NotGranted) => {
                        out.fail(format!(
                            "connection {i}: {} after {} on a lock with timeout {timeout_ms} ms",
                            proto.show(r),
                            human_ns(t.duration_since(s.sent).as_nanos() as u64)
                        ));
                        return Ok(out);
                    }
                    (CState::WaitUnlockThenGrant, Reply::Unlocked) => s.st = CState::WaitGrant,
                    (CState::WaitUnlockFinal, Reply::Unlocked) => {
                        s.st = CState::Done;
                        active -= 1;
                    }
                    (st, r) => {
                        let want = match st {
                            CState::WaitGrant => proto.show(Reply::Locked),
                            CState::WaitUnlockThenGrant | CState::WaitUnlockFinal => {
                                proto.show(Reply::Unlocked)
                            }
                            CState::Holding | CState::Done => "nothing".to_string(),
                        };
                        out.fail(format!(
                            "connection {i}: expected {want}, got {}",
                            proto.show(r)
                        ));
                        return Ok(out);
                    }
                }
            }
        }
        // Let go of the keys granted in this batch: unlock (and ask again).
        let t = Instant::now();
        for i in release.drain(..) {
            let s = &mut slots[i];
            let key = s.key;
            let more = t < end;
            buf.clear();
            proto.unlock(&mut buf, &keys[key]);
            if more {
                proto.lock(&mut buf, &keys[key], timeout_ms, lease);
            }
            // Released the moment the unlock is written.
            holders[key] = None;
            if let Err(e) = s.conn.send(poll.registry(), &buf) {
                out.fail(format!("connection {i}: {e}"));
                return Ok(out);
            }
            s.sent = Instant::now();
            s.st = if more {
                CState::WaitUnlockThenGrant
            } else {
                CState::WaitUnlockFinal
            };
        }
    }
    let secs = ctx.duration.as_secs_f64();
    let rate = handoffs as f64 / secs;
    out.line(
        "handoffs/s",
        format!(
            "{} ({} grants in {secs:.2} s)",
            big(rate),
            big(handoffs as f64)
        ),
    );
    out.line("grant latency", human_latency(&lat));
    out.line("violations", format!("{violations}"));
    if proto == Proto::Redis {
        out.line(
            "redis retries",
            format!(
                "{} refused SET NX retried at once (no blocking wait)",
                big(retries as f64)
            ),
        );
        out.field("retries", Val::U(retries));
    }
    out.field("connections", Val::U(c as u64));
    out.field("keys", Val::U(k as u64));
    out.field("measured_s", Val::F(secs));
    out.field("handoffs", Val::U(handoffs));
    out.field("handoffs_per_s", Val::F(rate));
    out.field("grant_latency", latency_json(&lat));
    out.field("violations", Val::U(violations));
    let per_conn: Vec<u64> = slots.iter().map(|s| s.grants).collect();
    fairness(&mut out, &per_conn, "grants");
    out.cpu(win.cpu(), handoffs, "handoff");
    if violations > 5 {
        out.fail(format!("{violations} mutual exclusion violations in all"));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------

/// One connection holds a key; `n` waiters ask for it with `timeout_ms`.
pub fn timeouts(ctx: &Ctx, n: usize, timeout_ms: u64, spread: Duration) -> Result<Outcome, String> {
    let mut out = Outcome::default();
    let proto = ctx.proto;
    if proto == Proto::Redis {
        out.line(
            "result",
            "n/a: Redis SET NX has no blocking wait with a timeout",
        );
        out.field("supported", Val::B(false));
        return Ok(out);
    }
    let mut poll = new_poll()?;
    let key = format!("{}t", ctx.key_prefix);
    let hold_tok = n;
    let hard = Instant::now() + ctx.connect_timeout * 2;
    let (mut hs, cs) = net::connect_many(
        &mut poll,
        ctx.addr,
        1,
        hold_tok,
        1,
        ctx.connect_timeout,
        hard,
    );
    let Some(hs) = hs.pop().flatten() else {
        out.fail(format!(
            "holder cannot connect to {}: {}",
            ctx.addr,
            cs.first_error.as_deref().unwrap_or("?")
        ));
        return Ok(out);
    };
    let mut holder = Conn::new(hs, Token(hold_tok), poll.registry())?;
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; SCRATCH];
    let mut replies = Vec::new();
    let mut buf = Vec::new();

    // The holder takes the key and must get it at once.
    proto.lock(&mut buf, &key, 0, ctx.lease_ms());
    holder.send(poll.registry(), &buf)?;
    let deadline = Instant::now() + ctx.grace;
    while replies.is_empty() {
        let now = Instant::now();
        if now >= deadline {
            out.fail(format!(
                "holder got no reply to its lock within {:?}",
                ctx.grace
            ));
            return Ok(out);
        }
        poll_once(&mut poll, &mut events, deadline - now)?;
        if !events.is_empty() {
            if let Err(e) = holder.read_replies(&mut scratch, proto, &mut replies) {
                out.fail(format!("holder: {e}"));
                return Ok(out);
            }
        }
    }
    if replies != [Reply::Locked] {
        out.fail(format!(
            "holder: expected {} for a free key, got {:?}",
            proto.show(Reply::Locked),
            replies
        ));
        return Ok(out);
    }

    // The waiters, connected in batches.
    let hard = Instant::now() + ctx.connect_timeout * 4;
    let (streams, cs) = net::connect_many(
        &mut poll,
        ctx.addr,
        n,
        0,
        ctx.batch,
        ctx.connect_timeout,
        hard,
    );
    if cs.failed() > 0 {
        out.fail(format!(
            "{} of {n} waiter connects failed (first error: {})",
            cs.failed(),
            cs.first_error.as_deref().unwrap_or("?")
        ));
        return Ok(out);
    }
    let mut waiters = Vec::with_capacity(n);
    for (i, s) in streams.into_iter().enumerate() {
        waiters.push(Conn::new(s.expect("connected"), Token(i), poll.registry())?);
    }
    let meter = start_cpu(ctx);
    let timeout = Duration::from_millis(timeout_ms);
    // When each request's write began: lateness is measured from there,
    // which can only make it look larger, so a reply before `sent + timeout`
    // is early for certain.
    let mut sent: Vec<Option<Instant>> = vec![None; n];
    let mut answered = vec![false; n];
    buf.clear();
    proto.lock(&mut buf, &key, timeout_ms, ctx.lease_ms());
    // Requests go out as fast as possible, or paced evenly over `spread`;
    // replies are handled meanwhile, so none is timestamped late.
    let first_sent = Instant::now();
    let mut next = 0usize;
    let mut last_sent = first_sent;
    let mut deadline = first_sent + spread + timeout + ctx.grace;
    let mut got = 0usize;
    let mut early = 0usize;
    let mut earliest_ns = 0u64;
    let mut lateness = Histogram::new();
    let mut first_reply = None;
    let mut last_reply = first_sent;
    while got < n {
        let mut now = Instant::now();
        while next < n {
            let due = first_sent + spread.mul_f64(next as f64 / n as f64);
            if due > now {
                break;
            }
            // Timestamped before the write: loopback delivers the bytes
            // (and may run the server) inside `write`, so only a time taken
            // before it is sure to precede the server's receipt. Lateness is
            // then never understated, and an early reply is a real failure.
            sent[next] = Some(Instant::now());
            waiters[next].send(poll.registry(), &buf)?;
            now = Instant::now();
            last_sent = now;
            next += 1;
        }
        if next == n {
            deadline = deadline.min(last_sent + timeout + ctx.grace);
        }
        if now >= deadline {
            break;
        }
        let mut wait = deadline - now;
        if next < n {
            let due = first_sent + spread.mul_f64(next as f64 / n as f64);
            wait = wait.min(due.saturating_duration_since(now));
        }
        poll_once(&mut poll, &mut events, wait)?;
        for ev in events.iter() {
            let i = ev.token().0;
            replies.clear();
            if i == hold_tok {
                if let Err(e) = holder.read_replies(&mut scratch, proto, &mut replies) {
                    out.fail(format!("holder: {e}"));
                    return Ok(out);
                }
                if let Some(&r) = replies.first() {
                    out.fail(format!("holder: unexpected reply {}", proto.show(r)));
                    return Ok(out);
                }
                continue;
            }
            let w = &mut waiters[i];
            if ev.is_writable() {
                w.flush(poll.registry())?;
            }
            if !(ev.is_readable() || ev.is_read_closed() || ev.is_error()) {
                continue;
            }
            if let Err(e) = w.read_replies(&mut scratch, proto, &mut replies) {
                out.fail(format!("waiter {i}: {e}"));
                return Ok(out);
            }
            let t = Instant::now();
            for &r in &replies {
                if answered[i] {
                    out.fail(format!("waiter {i}: a second reply {}", proto.show(r)));
                    return Ok(out);
                }
                if r != Reply::NotGranted {
                    out.fail(format!(
                        "waiter {i}: expected {}, got {} while the holder holds the key",
                        proto.show(Reply::NotGranted),
                        proto.show(r)
                    ));
                    return Ok(out);
                }
                let Some(s) = sent[i] else {
                    out.fail(format!(
                        "waiter {i}: replied before its request was written"
                    ));
                    return Ok(out);
                };
                answered[i] = true;
                got += 1;
                first_reply.get_or_insert(t);
                last_reply = t;
                let due = s + timeout;
                if t < due {
                    early += 1;
                    earliest_ns = earliest_ns.max(due.duration_since(t).as_nanos() as u64);
                    if early <= 3 {
                        out.fail(format!(
                            "waiter {i}: {} arrived {} after its request was written \
                             ({} after the first waiter's), before its {timeout_ms} ms timeout",
                            proto.show(r),
                            human_ns(t.duration_since(s).as_nanos() as u64),
                            human_ns(s.duration_since(first_sent).as_nanos() as u64),
                        ));
                    }
                } else {
                    lateness.record(t.duration_since(due).as_nanos() as u64);
                }
            }
        }
    }
    let cpu = stop_cpu(&meter);
    out.line(
        "lateness",
        format!(
            "{} (reply - (write started + {timeout_ms} ms))",
            human_latency(&lateness)
        ),
    );
    out.line("early", format!("{early} of {n}"));
    let send_ms = last_sent.duration_since(first_sent).as_secs_f64() * 1e3;
    let reply_ms = first_reply.map_or(0.0, |f: Instant| {
        last_reply.duration_since(f).as_secs_f64() * 1e3
    });
    out.line(
        "spread",
        format!("requests written over {send_ms:.1} ms, replies arrived over {reply_ms:.1} ms"),
    );
    out.field("send_spread_ms", Val::F(send_ms));
    out.field("reply_spread_ms", Val::F(reply_ms));
    out.field("waiters", Val::U(n as u64));
    out.field("timeout_ms", Val::U(timeout_ms));
    out.field("answered", Val::U(got as u64));
    out.field("early", Val::U(early as u64));
    out.field("earliest_us", Val::F(earliest_ns as f64 / 1000.0));
    out.field("lateness", latency_json(&lateness));
    out.cpu(cpu, n as u64, "waiter");
    if early > 0 {
        out.fail(format!(
            "{early} of {n} timeouts answered early (up to {} before the deadline)",
            human_ns(earliest_ns)
        ));
    }
    if got < n {
        out.fail(format!(
            "{} of {n} waiters got no reply within {timeout_ms} ms + {:?}",
            n - got,
            ctx.grace
        ));
        return Ok(out);
    }

    // The holder lets go; the key must be free again.
    replies.clear();
    buf.clear();
    proto.unlock(&mut buf, &key);
    holder.send(poll.registry(), &buf)?;
    let deadline = Instant::now() + ctx.grace;
    while replies.is_empty() {
        let now = Instant::now();
        if now >= deadline {
            out.fail(format!(
                "holder got no reply to its unlock within {:?}",
                ctx.grace
            ));
            return Ok(out);
        }
        poll_once(&mut poll, &mut events, deadline - now)?;
        for ev in events.iter() {
            if ev.token().0 == hold_tok {
                if let Err(e) = holder.read_replies(&mut scratch, proto, &mut replies) {
                    out.fail(format!("holder: {e}"));
                    return Ok(out);
                }
            }
        }
    }
    if replies != [Reply::Unlocked] {
        out.fail(format!(
            "holder: expected {} after the waiters timed out, got {:?}",
            proto.show(Reply::Unlocked),
            replies
        ));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------

/// Opens `n` connections as fast as possible; each then locks its own key
/// and stays idle for `hold`.
pub fn connections(ctx: &Ctx, n: usize, hold: Duration, reset: bool) -> Result<Outcome, String> {
    let mut out = Outcome::default();
    let proto = ctx.proto;
    let mut poll = new_poll()?;
    let rss_before = ctx.pid.map(procfs::rss_bytes);
    let meter = start_cpu(ctx);
    let hard = Instant::now() + ctx.connect_timeout * 4;
    let (streams, cs) = net::connect_many(
        &mut poll,
        ctx.addr,
        n,
        0,
        ctx.batch,
        ctx.connect_timeout,
        hard,
    );
    let storm_s = cs.elapsed.as_secs_f64();
    out.line(
        "connects",
        format!(
            "{} of {n} in {storm_s:.2} s ({}/s); failed {} (refused {}, timed out {}, other {})",
            cs.ok,
            big(cs.ok as f64 / storm_s.max(1e-9)),
            cs.failed(),
            cs.refused,
            cs.timed_out,
            cs.other
        ),
    );
    out.field("connections", Val::U(n as u64));
    out.field("connected", Val::U(cs.ok as u64));
    out.field("connect_s", Val::F(storm_s));
    out.field("connects_per_s", Val::F(cs.ok as f64 / storm_s.max(1e-9)));
    out.field("refused", Val::U(cs.refused as u64));
    out.field("timed_out", Val::U(cs.timed_out as u64));
    out.field("other_errors", Val::U(cs.other as u64));
    if cs.failed() > 0 {
        out.fail(format!(
            "{} of {n} connects failed (refused {}, timed out {}, other {}; first error: {})",
            cs.failed(),
            cs.refused,
            cs.timed_out,
            cs.other,
            cs.first_error.as_deref().unwrap_or("?")
        ));
    }

    // Each connection locks its own key.
    let lease = ctx.lease_ms();
    let mut conns: Vec<Option<Conn>> = Vec::with_capacity(n);
    let mut buf = Vec::new();
    let mut waiting = 0usize;
    let mut lock_errors = 0usize;
    let mut first_lock_error = None;
    for (i, s) in streams.into_iter().enumerate() {
        let Some(s) = s else {
            conns.push(None);
            continue;
        };
        let mut c = Conn::new(s, Token(i), poll.registry())?;
        buf.clear();
        proto.lock(&mut buf, &format!("{}i{i}", ctx.key_prefix), 0, lease);
        match c.send(poll.registry(), &buf) {
            Ok(_) => {
                waiting += 1;
                conns.push(Some(c));
            }
            Err(e) => {
                lock_errors += 1;
                first_lock_error.get_or_insert(format!("connection {i}: {e}"));
                conns.push(None);
            }
        }
    }
    let mut locked = 0usize;
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; SCRATCH];
    let mut replies = Vec::new();
    let deadline = Instant::now() + ctx.grace;
    let lock_start = Instant::now();
    while waiting > 0 {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        poll_once(&mut poll, &mut events, deadline - now)?;
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(c) = conns[i].as_mut() else {
                continue;
            };
            if ev.is_writable() {
                let _ = c.flush(poll.registry());
            }
            replies.clear();
            let res = c.read_replies(&mut scratch, proto, &mut replies);
            let res = res.and_then(|()| match replies.as_slice() {
                [] => Ok(false),
                [Reply::Locked] => Ok(true),
                other => Err(format!(
                    "expected {} for its own key, got {other:?}",
                    proto.show(Reply::Locked)
                )),
            });
            match res {
                Ok(false) => {}
                Ok(true) => {
                    locked += 1;
                    waiting -= 1;
                }
                Err(e) => {
                    lock_errors += 1;
                    first_lock_error.get_or_insert(format!("connection {i}: {e}"));
                    conns[i] = None;
                    waiting -= 1;
                }
            }
        }
    }
    let lock_s = lock_start.elapsed().as_secs_f64();
    let cpu = stop_cpu(&meter);
    out.line(
        "locks",
        format!("{locked} granted in {lock_s:.2} s, {lock_errors} failed, {waiting} unanswered"),
    );
    out.field("locked", Val::U(locked as u64));
    out.field("lock_errors", Val::U(lock_errors as u64));
    out.field("lock_unanswered", Val::U(waiting as u64));
    if lock_errors + waiting > 0 {
        out.fail(format!(
            "{lock_errors} connections failed to lock and {waiting} got no reply within {:?} \
             (first error: {})",
            ctx.grace,
            first_lock_error.as_deref().unwrap_or("none")
        ));
    }
    if let (Some(before), Some(pid)) = (rss_before, ctx.pid) {
        match (before, procfs::rss_bytes(pid)) {
            (Ok(b), Ok(a)) => {
                let per = if locked > 0 {
                    (a as f64 - b as f64) / locked as f64
                } else {
                    f64::NAN
                };
                out.line(
                    "server RSS",
                    format!(
                        "{:.1} MiB before, {:.1} MiB with {locked} connections holding a lock: \
                         {per:.0} B per connection",
                        b as f64 / 1048576.0,
                        a as f64 / 1048576.0
                    ),
                );
                out.field("rss_before_bytes", Val::U(b));
                out.field("rss_after_bytes", Val::U(a));
                out.field("rss_per_conn_bytes", Val::F(per));
            }
            (Err(e), _) | (_, Err(e)) => out.line("server RSS", format!("unavailable: {e}")),
        }
    }
    out.cpu(cpu, locked as u64, "connection (accept + lock)");

    // Idle holders; any connection the server drops meanwhile is a failure.
    let hold_end = Instant::now() + hold;
    let mut dropped = 0usize;
    loop {
        let now = Instant::now();
        if now >= hold_end {
            break;
        }
        poll_once(&mut poll, &mut events, hold_end - now)?;
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(c) = conns[i].as_mut() else {
                continue;
            };
            replies.clear();
            if let Err(e) = c.read_replies(&mut scratch, proto, &mut replies) {
                dropped += 1;
                first_lock_error.get_or_insert(format!("connection {i} while idle: {e}"));
                conns[i] = None;
            } else if let Some(&r) = replies.first() {
                out.fail(format!(
                    "connection {i}: unexpected reply {} while idle",
                    proto.show(r)
                ));
                conns[i] = None;
            }
        }
    }
    if dropped > 0 {
        out.fail(format!(
            "{dropped} idle connections dropped by the server during the hold"
        ));
    }
    for c in conns.iter().flatten() {
        if reset {
            c.set_reset_on_close();
        }
    }
    drop(conns);
    Ok(out)
}
