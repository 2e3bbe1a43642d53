//! Token-carrying load: the dreadlock version 2 `acquire` (`a <token>`) and
//! dflockd's three-line protocol, whose release needs the token from the
//! grant.
//!
//! Two scenarios:
//!
//! * [`strict`]: strict request-reply, one request in flight per
//!   connection: acquire, wait for the grant, release, wait for its reply,
//!   and again. The same load for dreadlock (`acquire K T [N]` /
//!   `unlock K`) and dflockd (`l`/`r`, or `sl`/`sr` for a semaphore), so
//!   the two compare round for round. With a limit N > 1 (semaphore) at
//!   most N connections may hold a key at once; one more is a violation.
//! * [`acquire`]: the `throughput` scenario with `acquire K 0` in place of
//!   `lock K 0` (dreadlock only), P pairs pipelined per round, to set the
//!   cost of the token reply against `lock`'s.
//!
//! A grant's token is checked: for dreadlock it is a decimal u64 and, on an
//! exclusive key (or a connection's own key), strictly larger than the
//! previous grant's, as fencing tokens must be; for dflockd it is one
//! non-empty word followed by the lease in seconds.

use std::io::Write as _;
use std::time::Instant;

use mio::Events;

use crate::Ctx;
use crate::hist::Histogram;
use crate::net::{Conn, show};
use crate::report::{Outcome, Val, big, human_latency};
use crate::scenarios::{Window, connect_all, fairness, new_poll, poll_once};

/// Scratch buffer for reads, shared by all connections.
const SCRATCH: usize = 64 * 1024;

/// A protocol with tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenProto {
    /// `acquire K T [N]` -> `a <token>`; `unlock K` -> `u unlocked`.
    Dreadlock,
    /// `l\nK\nT_s\n` (or `sl\nK\nT_s N\n`) -> `ok <token> <ttl>`;
    /// `r\nK\n<token>\n` (or `sr`) -> `ok`.
    Dflockd,
}

impl TokenProto {
    pub fn name(self) -> &'static str {
        match self {
            TokenProto::Dreadlock => "dreadlock (acquire)",
            TokenProto::Dflockd => "dflockd",
        }
    }

    /// Appends an acquire of `key` waiting up to `timeout_ms` (dflockd:
    /// whole seconds, rounded up) for one of `limit` slots.
    pub fn acquire(self, out: &mut Vec<u8>, key: &str, timeout_ms: u64, limit: u32) {
        match (self, limit) {
            (TokenProto::Dreadlock, 1) => write!(out, "acquire {key} {timeout_ms}\r\n"),
            (TokenProto::Dreadlock, n) => write!(out, "acquire {key} {timeout_ms} {n}\r\n"),
            (TokenProto::Dflockd, 1) => write!(out, "l\n{key}\n{}\n", timeout_ms.div_ceil(1000)),
            (TokenProto::Dflockd, n) => {
                write!(out, "sl\n{key}\n{} {n}\n", timeout_ms.div_ceil(1000))
            }
        }
        .expect("write to Vec");
    }

    /// Appends the release of `key`, granted with `token`.
    pub fn release(self, out: &mut Vec<u8>, key: &str, token: &[u8], limit: u32) {
        match (self, limit) {
            (TokenProto::Dreadlock, _) => write!(out, "unlock {key}\r\n"),
            (TokenProto::Dflockd, 1) => write!(out, "r\n{key}\n")
                .and_then(|()| out.write_all(token))
                .and_then(|()| out.write_all(b"\n")),
            (TokenProto::Dflockd, _) => write!(out, "sr\n{key}\n")
                .and_then(|()| out.write_all(token))
                .and_then(|()| out.write_all(b"\n")),
        }
        .expect("write to Vec");
    }

    /// The token of a grant line (borrowed from it), or why the line is not
    /// a grant.
    pub fn parse_grant(self, line: &[u8]) -> Result<Grant<'_>, String> {
        let bad = || format!("expected a grant, got {}", show(line));
        match self {
            TokenProto::Dreadlock => {
                let digits = line
                    .strip_prefix(b"a ")
                    .and_then(|l| l.strip_suffix(b"\r\n"))
                    .ok_or_else(bad)?;
                if digits.is_empty() || digits.len() > 20 {
                    return Err(bad());
                }
                let mut value = 0u64;
                for &d in digits {
                    if !d.is_ascii_digit() {
                        return Err(bad());
                    }
                    value = value
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(d - b'0')))
                        .ok_or_else(bad)?;
                }
                Ok(Grant {
                    bytes: digits,
                    fencing: Some(value),
                })
            }
            TokenProto::Dflockd => {
                let rest = line
                    .strip_prefix(b"ok ")
                    .and_then(|l| l.strip_suffix(b"\n"))
                    .ok_or_else(bad)?;
                let mut words = rest.split(|&b| b == b' ');
                let token = words.next().unwrap_or_default();
                let ttl = words.next().unwrap_or_default();
                let ok = !token.is_empty()
                    && token.iter().all(u8::is_ascii_graphic)
                    && !ttl.is_empty()
                    && ttl.iter().all(u8::is_ascii_digit)
                    && words.next().is_none();
                if !ok {
                    return Err(bad());
                }
                Ok(Grant {
                    bytes: token,
                    fencing: None,
                })
            }
        }
    }

    /// The exact bytes of a successful release reply.
    pub fn released(self) -> &'static [u8] {
        match self {
            TokenProto::Dreadlock => b"u unlocked\r\n",
            TokenProto::Dflockd => b"ok\n",
        }
    }
}

/// A grant's token: its bytes (echoed in a dflockd release) and, for
/// dreadlock, its value as a fencing token.
#[derive(Clone, Copy, Debug)]
pub struct Grant<'a> {
    pub bytes: &'a [u8],
    pub fencing: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    /// The acquire is out.
    WaitGrant,
    /// Granted; the release goes out at the end of this batch of events.
    Holding,
    /// The release is out.
    WaitRelease,
    Done,
}

struct Slot {
    conn: Conn,
    key: usize,
    st: St,
    token: Vec<u8>,
    /// When the acquire now in flight was written.
    sent: Instant,
    rounds: u64,
}

/// Strict request-reply: `c` connections on `k` keys (connection `i` on key
/// `i mod k`), each looping acquire -> release with one request in flight;
/// at most `limit` holders per key.
pub fn strict(
    ctx: &Ctx,
    proto: TokenProto,
    c: usize,
    k: usize,
    limit: u32,
) -> Result<Outcome, String> {
    let mut out = Outcome::default();
    let mut poll = new_poll()?;
    let Some(conns) = connect_all(ctx, &mut poll, c, &mut out) else {
        return Ok(out);
    };
    // Long enough that no legitimate timeout can happen in this run.
    let timeout_ms = ctx.lease_ms();
    let keys: Vec<String> = (0..k).map(|j| format!("{}s{j}", ctx.key_prefix)).collect();
    // How many connections the tool believes hold each key: up on a grant,
    // down when the holder's release is written (before any grant that
    // release allows can exist).
    let mut holders: Vec<u32> = vec![0; k];
    // The last fencing token granted per key (exclusive keys only).
    let mut last_token: Vec<Option<u64>> = vec![None; k];
    let mut violations = 0u64;
    let mut slots: Vec<Slot> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| Slot {
            conn,
            key: i % k,
            st: St::WaitGrant,
            token: Vec::new(),
            sent: Instant::now(),
            rounds: 0,
        })
        .collect();
    let mut win = Window::start(ctx);
    let (t0, end) = (win.t0, win.end);
    let mut buf = Vec::new();
    for s in &mut slots {
        buf.clear();
        proto.acquire(&mut buf, &keys[s.key], timeout_ms, limit);
        s.sent = Instant::now();
        s.conn.send(poll.registry(), &buf)?;
    }
    let mut active = c;
    let mut grant_lat = Histogram::new();
    let mut round_lat = Histogram::new();
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; SCRATCH];
    // This event's reply lines, back to back, and where each ends.
    let mut lines: Vec<u8> = Vec::new();
    let mut ends: Vec<usize> = Vec::new();
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
            lines.clear();
            ends.clear();
            let read = slots[i].conn.read_lines(&mut scratch, |l| {
                lines.extend_from_slice(l);
                ends.push(lines.len());
                Ok(())
            });
            if let Err(e) = read {
                if slots[i].st == St::Done && e == "server closed the connection" {
                    continue;
                }
                out.fail(format!("connection {i}: {e}"));
                return Ok(out);
            }
            let t = Instant::now();
            let mut from = 0;
            for &to in &ends {
                let line = &lines[from..to];
                from = to;
                let s = &mut slots[i];
                let key = s.key;
                match s.st {
                    St::WaitGrant => {
                        let token = match proto.parse_grant(line) {
                            Ok(tok) => tok,
                            Err(e) => {
                                out.fail(format!("connection {i}: {e}"));
                                return Ok(out);
                            }
                        };
                        holders[key] += 1;
                        if holders[key] > limit {
                            violations += 1;
                            if violations <= 5 {
                                out.fail(format!(
                                    "{} violated: key {} granted to connection {i} while \
                                     {} others hold it (their releases not sent), limit {limit}",
                                    if limit == 1 {
                                        "mutual exclusion"
                                    } else {
                                        "semaphore limit"
                                    },
                                    keys[key],
                                    holders[key] - 1
                                ));
                            }
                        }
                        if let (1, Some(f)) = (limit, token.fencing) {
                            if last_token[key].is_some_and(|l| f <= l) {
                                out.fail(format!(
                                    "connection {i}: fencing token {f} on key {} is not larger \
                                     than the previous grant's {}",
                                    keys[key],
                                    last_token[key].unwrap_or(0)
                                ));
                                return Ok(out);
                            }
                            last_token[key] = Some(f);
                        }
                        s.token.clear();
                        s.token.extend_from_slice(token.bytes);
                        if t >= t0 && t <= end {
                            grant_lat.record(t.duration_since(s.sent).as_nanos() as u64);
                        }
                        // Held until the end of this batch of events, so a
                        // grant beyond the limit arriving meanwhile is caught.
                        release.push(i);
                        s.st = St::Holding;
                    }
                    St::WaitRelease if line == proto.released() => {
                        if t >= t0 && t <= end {
                            s.rounds += 1;
                            round_lat.record(t.duration_since(s.sent).as_nanos() as u64);
                        }
                        if t < end {
                            buf.clear();
                            proto.acquire(&mut buf, &keys[key], timeout_ms, limit);
                            s.sent = Instant::now();
                            s.st = St::WaitGrant;
                            if let Err(e) = s.conn.send(poll.registry(), &buf) {
                                out.fail(format!("connection {i}: {e}"));
                                return Ok(out);
                            }
                        } else {
                            s.st = St::Done;
                            active -= 1;
                        }
                    }
                    St::WaitRelease => {
                        out.fail(format!(
                            "connection {i}: expected {} to a release, got {}",
                            show(proto.released()),
                            show(line)
                        ));
                        return Ok(out);
                    }
                    St::Holding | St::Done => {
                        out.fail(format!(
                            "connection {i}: unexpected reply {} with no request outstanding",
                            show(line)
                        ));
                        return Ok(out);
                    }
                }
            }
        }
        // Releases of this batch's grants.
        for i in release.drain(..) {
            let s = &mut slots[i];
            holders[s.key] -= 1;
            buf.clear();
            proto.release(&mut buf, &keys[s.key], &s.token, limit);
            s.st = St::WaitRelease;
            if let Err(e) = s.conn.send(poll.registry(), &buf) {
                out.fail(format!("connection {i}: {e}"));
                return Ok(out);
            }
        }
    }
    let secs = ctx.duration.as_secs_f64();
    let rounds: u64 = slots.iter().map(|s| s.rounds).sum();
    let rate = rounds as f64 / secs;
    out.line(
        "rounds/s",
        format!(
            "{} ({} requests/s), {} acquire+release rounds in {secs:.2} s",
            big(rate),
            big(2.0 * rate),
            big(rounds as f64)
        ),
    );
    out.line("grant wait", human_latency(&grant_lat));
    out.line("round latency", human_latency(&round_lat));
    out.line("violations", format!("{violations}"));
    out.field("protocol", Val::S(proto.name().into()));
    out.field("connections", Val::U(c as u64));
    out.field("keys", Val::U(k as u64));
    out.field("limit", Val::U(u64::from(limit)));
    out.field("measured_s", Val::F(secs));
    out.field("rounds", Val::U(rounds));
    out.field("rounds_per_s", Val::F(rate));
    out.field("grant_latency", crate::report::latency_json(&grant_lat));
    out.field("round_latency", crate::report::latency_json(&round_lat));
    out.field("violations", Val::U(violations));
    let per_conn: Vec<u64> = slots.iter().map(|s| s.rounds).collect();
    fairness(&mut out, &per_conn, "rounds");
    out.cpu(win.cpu(), rounds, "round");
    Ok(out)
}

struct ASlot {
    conn: Conn,
    round: Vec<u8>,
    /// Replies still due for the round in flight.
    left: usize,
    next_is_grant: bool,
    started: Instant,
    pairs: u64,
    last_token: Option<u64>,
}

/// `c` connections, each on its own key, `p` `acquire K 0` / `unlock K`
/// pairs per round (dreadlock only): `throughput` with the token reply.
pub fn acquire(ctx: &Ctx, c: usize, p: usize) -> Result<Outcome, String> {
    let proto = TokenProto::Dreadlock;
    let mut out = Outcome::default();
    let mut poll = new_poll()?;
    let Some(conns) = connect_all(ctx, &mut poll, c, &mut out) else {
        return Ok(out);
    };
    let mut slots: Vec<ASlot> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let key = format!("{}a{i}", ctx.key_prefix);
            let mut round = Vec::new();
            for _ in 0..p {
                proto.acquire(&mut round, &key, 0, 1);
                proto.release(&mut round, &key, b"", 1);
            }
            ASlot {
                conn,
                round,
                left: 0,
                next_is_grant: true,
                started: Instant::now(),
                pairs: 0,
                last_token: None,
            }
        })
        .collect();
    let mut win = Window::start(ctx);
    let (t0, end) = (win.t0, win.end);
    for s in &mut slots {
        s.started = Instant::now();
        s.left = 2 * p;
        s.conn.send(poll.registry(), &s.round)?;
    }
    let mut busy = c;
    let mut lat = Histogram::new();
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; SCRATCH];
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
            let mut got = 0usize;
            let (left, next_is_grant, last_token) =
                (&mut s.left, &mut s.next_is_grant, &mut s.last_token);
            let read = s.conn.read_lines(&mut scratch, |line| {
                if *left == 0 {
                    return Err(format!(
                        "unexpected reply {} with no command outstanding",
                        show(line)
                    ));
                }
                if *next_is_grant {
                    let tok = proto.parse_grant(line)?;
                    let f = tok.fencing.unwrap_or(0);
                    if last_token.is_some_and(|l| f <= l) {
                        return Err(format!(
                            "fencing token {f} is not larger than the previous grant's {}",
                            last_token.unwrap_or(0)
                        ));
                    }
                    *last_token = Some(f);
                } else if line != proto.released() {
                    return Err(format!(
                        "expected {}, got {}",
                        show(proto.released()),
                        show(line)
                    ));
                }
                *left -= 1;
                *next_is_grant = !*next_is_grant;
                got += 1;
                Ok(())
            });
            if let Err(e) = read {
                out.fail(format!("connection {i}: {e}"));
                return Ok(out);
            }
            if s.left == 0 && got > 0 {
                let t = Instant::now();
                if t >= t0 && t <= end {
                    s.pairs += p as u64;
                    lat.record(t.duration_since(s.started).as_nanos() as u64);
                }
                if t < end {
                    s.started = t;
                    s.left = 2 * p;
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
    let pairs: u64 = slots.iter().map(|s| s.pairs).sum();
    let rate = pairs as f64 / secs;
    out.line(
        "pairs/s",
        format!(
            "{} ({} commands/s), {} acquire+unlock pairs in {secs:.2} s",
            big(rate),
            big(2.0 * rate),
            big(pairs as f64)
        ),
    );
    out.line("round latency", human_latency(&lat));
    out.field("connections", Val::U(c as u64));
    out.field("pipeline", Val::U(p as u64));
    out.field("measured_s", Val::F(secs));
    out.field("pairs", Val::U(pairs));
    out.field("pairs_per_s", Val::F(rate));
    out.field("commands_per_s", Val::F(2.0 * rate));
    out.field("round_latency", crate::report::latency_json(&lat));
    let per_conn: Vec<u64> = slots.iter().map(|s| s.pairs).collect();
    fairness(&mut out, &per_conn, "pairs");
    out.cpu(win.cpu(), pairs, "pair");
    Ok(out)
}
