//! Reference models and the checks the fuzzers and tests share.
//!
//! Each `check_*` function takes arbitrary bytes, decodes them into a run of
//! operations, drives the real component and an independent, deliberately
//! simple model side by side, and panics on the first disagreement. The
//! cargo-fuzz targets in `fuzz/` are one-line calls of these functions, and
//! `tests/fuzz_corpus.rs` replays the committed seed corpus through the very
//! same functions, so stable `cargo test` checks exactly what the fuzzers
//! check.
//!
//! * [`check_parser`]: the resumable [`Parser`] fed whole, byte by byte and
//!   in data-chosen chunks must give identical results, and agree with
//!   [`reference_line`], a recognizer of `PROTOCOL.md`'s grammar written with
//!   plain slice logic (split at CRLF, split on runs of spaces), on every
//!   command, the end state and the exact place and kind of the first error.
//! * [`check_core`]: several connections' bytes, disconnects and clock steps
//!   (down to single microseconds) through [`Core`], against a model of
//!   `BTreeMap<key, VecDeque<conn>>` plus per-waiter deadlines and in-order
//!   per-connection command buffers ([`CoreHarness`]). Every reply of every
//!   connection must equal the model's, in order; a timeout fires exactly when
//!   `now_us >= arrival_us + 1000 * timeout_ms`, at the first input at or
//!   after that microsecond (never early, never lost); a disconnect releases
//!   everything; `Core::check_invariants` holds after every step.
//! * [`check_timer`]: inserts, cancels and clock advances on the
//!   [`TimerWheel`] against a sorted list.
//!
//! # The model's rules for simultaneous events
//!
//! The model fixes the one thing the protocol leaves open, the order of
//! events that happen at the same instant, the way the core does: every
//! `handle_*` call first fires the timeouts that are due and runs what they
//! unblocked, then handles its input. When several connections are unblocked
//! at once (timeouts firing together, or one disconnect releasing several
//! keys), the order among them is not specified; the model follows the
//! order of the core's replies and only checks that the set is right.

#![doc(hidden)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use std::net::SocketAddr;

use crate::core::{
    CloseReason, Config, Core, Event, INFINITE_TIMEOUT_MS, MIN_AUTH_DELAY_MS, Output, Reply, Secret,
};
use crate::lock_table::{ConnId, KEY_OVERHEAD_BYTES};
use crate::parser::{
    Command, DEFAULT_MAX_LINE_BYTES, MIN_MAX_LINE_BYTES, ParseError, Parser, RETAINED_KEY_CAPACITY,
    Step,
};
use crate::timer::{MAX_DELAY, TimerId, TimerWheel};
use crate::wire::{ErrorReply, MAX_LABEL_BYTES, MAX_LIMIT, MAX_SECRET_BYTES};

// ---------------------------------------------------------------------------
// Deterministic randomness
// ---------------------------------------------------------------------------

/// SplitMix64: a tiny, seedable generator for simulations and chunking.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n == 0`); modulo bias is irrelevant here.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    /// Uniform index in `0..n` (0 when `n == 0`).
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// A uniformly chosen element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.index(from.len())]
    }

    /// Skewed towards small values: a random bit width in `0..=bits` (at
    /// most 64), then uniform below `2^width`.
    pub fn skewed(&mut self, bits: u32) -> u64 {
        match self.below(u64::from(bits.min(64)) + 1) as u32 {
            0 => 0,
            width => self.next_u64() >> (64 - width),
        }
    }
}

/// Reads a fuzz input as a stream of bytes; past the end it yields zeros and
/// [`Bytes::is_empty`] turns true.
struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    fn new(data: &'a [u8]) -> Self {
        Bytes { data, pos: 0 }
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = (start + n).min(self.data.len());
        self.pos += n;
        &self.data[start..end]
    }
}

// ---------------------------------------------------------------------------
// The reference recognizer
// ---------------------------------------------------------------------------

/// A syntax error as the reference sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefError {
    /// `byte` at `offset` within its line cannot start or continue any valid
    /// line.
    Unexpected { byte: u8, offset: usize },
    /// The line reached the limit without being complete.
    TooLong { max: usize },
}

impl RefError {
    /// Whether the parser's error is this one (the parser also says what it
    /// expected; the reference does not).
    pub fn matches(self, e: ParseError) -> bool {
        match (self, e) {
            (
                RefError::Unexpected { byte, offset },
                ParseError::UnexpectedByte {
                    byte: b, offset: o, ..
                },
            ) => byte == b && offset == o,
            (RefError::TooLong { max }, ParseError::LineTooLong { max: m }) => max == m,
            _ => false,
        }
    }
}

/// What the reference makes of the start of a byte stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefLine {
    /// A valid command, its key, and the line's length with its CRLF.
    Command(Command, Vec<u8>, usize),
    /// The stream is a (possibly empty) prefix of a valid line.
    Pending,
    /// A syntax error in the first line.
    Error(RefError),
}

/// The command of one complete line, CRLF removed, with straightforward
/// slice logic: only bytes of the label or secret alphabets and spaces; no
/// leading space; tokens split on runs of spaces; then one pattern per
/// command word (in any case), each token checked against its alphabet.
/// Numbers saturate (a timeout at `u64::MAX`, a limit at `u32::MAX`), and a
/// label or secret longer than its bound keeps its first bytes and is
/// marked `too_long` (PROTOCOL.md: a length error, not a syntax error).
pub fn reference_command(line: &[u8]) -> Option<(Command, Vec<u8>)> {
    use crate::wire::{MAX_LABEL_BYTES, MAX_SECRET_BYTES, is_label_byte, is_secret_byte};
    let allowed = |b: u8| b == b' ' || is_label_byte(b) || is_secret_byte(b);
    if line.first() == Some(&b' ') || !line.iter().all(|&b| allowed(b)) {
        return None;
    }
    let tokens: Vec<&[u8]> = line
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .collect();
    let is_key = |t: &[u8]| t.iter().all(u8::is_ascii_alphanumeric);
    let is_num = |t: &[u8]| t.iter().all(u8::is_ascii_digit);
    // Saturating decimal: a long digit string is "forever" / a bad limit.
    let num = |t: &[u8]| {
        std::str::from_utf8(t)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    };
    let word = tokens.first()?.to_ascii_lowercase();
    let arg = |t: &[u8], max: usize| (t.len() > max, t[..t.len().min(max)].to_vec());
    match (word.as_slice(), &tokens[1..]) {
        (b"lock", [key, t]) if is_key(key) && is_num(t) => {
            Some((Command::Lock { timeout_ms: num(t) }, key.to_vec()))
        }
        (b"acquire", [key, t, rest @ ..])
            if is_key(key) && is_num(t) && rest.len() <= 1 && rest.iter().all(|n| is_num(n)) =>
        {
            let limit = rest
                .first()
                .map_or(1, |n| u32::try_from(num(n)).unwrap_or(u32::MAX));
            let cmd = Command::Acquire {
                timeout_ms: num(t),
                limit,
            };
            Some((cmd, key.to_vec()))
        }
        (b"unlock", [key]) if is_key(key) => Some((Command::Unlock, key.to_vec())),
        (b"info", [key]) if is_key(key) => Some((Command::Info, key.to_vec())),
        (b"evict", [key]) if is_key(key) => Some((Command::Evict, key.to_vec())),
        (b"stats", []) => Some((Command::Stats, Vec::new())),
        (b"name", [label]) if label.iter().all(|&b| is_label_byte(b)) => {
            let (too_long, label) = arg(label, MAX_LABEL_BYTES);
            Some((Command::Name { too_long }, label))
        }
        (b"auth", [secret]) if secret.iter().all(|&b| is_secret_byte(b)) => {
            let (too_long, secret) = arg(secret, MAX_SECRET_BYTES);
            Some((Command::Auth { too_long }, secret))
        }
        _ => None,
    }
}

/// The command words, for [`viable`].
const WORDS: [&[u8]; 8] = [
    b"lock", b"unlock", b"acquire", b"info", b"stats", b"name", b"auth", b"evict",
];

/// Whether `prefix` (no complete line in it) can still become a valid line.
/// Checked by trying the handful of completions that finish a line from any
/// point of the grammar, not by a state machine.
fn viable(prefix: &[u8]) -> bool {
    let lower = prefix.to_ascii_lowercase();
    if WORDS.iter().any(|w| w.starts_with(&lower)) {
        return true;
    }
    const COMPLETIONS: [&[u8]; 8] = [
        b"\n",
        b"\r\n",
        b"0\r\n",
        b" 0\r\n",
        b"a\r\n",
        b" a\r\n",
        b"a 0\r\n",
        b" a 0\r\n",
    ];
    COMPLETIONS.iter().any(|tail| {
        let mut line = prefix.to_vec();
        line.extend_from_slice(tail);
        first_crlf(&line) == Some(line.len() - 2)
            && reference_command(&line[..line.len() - 2]).is_some()
    })
}

fn first_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

/// The first line of `input` as the reference sees it, for a parser with
/// line limit `max_line_bytes` (raised to the parser's minimum).
///
/// A complete line (up to the first CRLF) is a command if it is valid and at
/// most `max` bytes long. Otherwise the error is at the first byte that no
/// valid line could have there; but once `max` bytes are in without a
/// complete line, the next byte is "line too long" whatever it is. An
/// unterminated line with no bad byte is pending until it passes `max`.
pub fn reference_line(input: &[u8], max_line_bytes: usize) -> RefLine {
    let max = max_line_bytes.max(MIN_MAX_LINE_BYTES);
    let (line, complete) = match first_crlf(input) {
        Some(i) => (&input[..i + 2], true),
        None => (input, false),
    };
    let command = if complete {
        reference_command(&line[..line.len() - 2])
    } else {
        None
    };
    // Longest viable prefix. Viability is prefix-closed (a completion of a
    // prefix also completes every shorter prefix), so binary search works.
    let good = |n: usize| {
        if n == line.len() && complete {
            command.is_some()
        } else {
            viable(&line[..n])
        }
    };
    let viable_len = if good(line.len()) {
        line.len()
    } else {
        // good(lo) holds (the empty prefix is viable), good(hi) does not.
        let (mut lo, mut hi) = (0, line.len());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if good(mid) { lo = mid } else { hi = mid }
        }
        lo
    };
    if viable_len < line.len() {
        // The byte at `viable_len` is bad, unless the limit comes first.
        if viable_len < max {
            return RefLine::Error(RefError::Unexpected {
                byte: line[viable_len],
                offset: viable_len,
            });
        }
        return RefLine::Error(RefError::TooLong { max });
    }
    if line.len() > max {
        return RefLine::Error(RefError::TooLong { max });
    }
    match command {
        Some((cmd, key)) => RefLine::Command(cmd, key, line.len()),
        None => RefLine::Pending,
    }
}

// ---------------------------------------------------------------------------
// Parser check
// ---------------------------------------------------------------------------

/// How a parse of a whole stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// All consumed, at a line boundary.
    Idle,
    /// All consumed, inside a line.
    Pending,
    Error(ParseError),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ParseRun {
    commands: Vec<(Command, Vec<u8>)>,
    consumed: usize,
    end: End,
}

/// Feeds `chunks` in order, checking the parser's per-call promises.
fn feed_parser(max_line_bytes: usize, chunks: &[&[u8]]) -> ParseRun {
    let mut p = Parser::new(max_line_bytes);
    let max = max_line_bytes.max(MIN_MAX_LINE_BYTES);
    let heap_cap = max.max(RETAINED_KEY_CAPACITY);
    let mut run = ParseRun {
        commands: Vec::new(),
        consumed: 0,
        end: End::Idle,
    };
    for chunk in chunks {
        let mut rest: &[u8] = chunk;
        loop {
            let (n, step) = p.advance(rest);
            assert!(n <= rest.len(), "consumed {n} of {} bytes", rest.len());
            assert!(
                p.heap_bytes() <= heap_cap,
                "key buffer {} > {heap_cap}",
                p.heap_bytes()
            );
            run.consumed += n;
            rest = &rest[n..];
            match step {
                Step::Done(cmd) => {
                    let key = p.key();
                    let (class, most): (fn(u8) -> bool, usize) = match cmd {
                        Command::Stats => (|_| false, 0),
                        Command::Name { .. } => (crate::wire::is_label_byte, MAX_LABEL_BYTES),
                        Command::Auth { .. } => (crate::wire::is_secret_byte, MAX_SECRET_BYTES),
                        _ => (crate::wire::is_key_byte, max),
                    };
                    assert!(
                        key.len() <= most && (key.is_empty() == (cmd == Command::Stats)),
                        "bad argument length"
                    );
                    assert!(key.iter().all(|&b| class(b)), "bad argument byte");
                    assert_ne!(n, 0, "Done without consuming");
                    run.commands.push((cmd, key.to_vec()));
                    assert!(p.is_idle(), "not idle after Done");
                }
                Step::Pending => {
                    assert!(rest.is_empty(), "Pending with input left");
                    break;
                }
                Step::Error(e) => {
                    // Failed for good: consumes nothing more, same error.
                    assert_eq!(p.advance(b"lock a 1\r\n"), (0, Step::Error(e)));
                    assert!(!p.is_idle());
                    assert_eq!(p.heap_bytes(), 0, "failed parser keeps its key buffer");
                    run.end = End::Error(e);
                    return run;
                }
            }
        }
    }
    run.end = if p.is_idle() { End::Idle } else { End::Pending };
    run
}

/// The reference's view of a whole stream.
fn reference_run(input: &[u8], max_line_bytes: usize) -> (ParseRun, Option<RefError>) {
    let max = max_line_bytes.max(MIN_MAX_LINE_BYTES);
    let mut commands = Vec::new();
    let mut at = 0;
    loop {
        match reference_line(&input[at..], max_line_bytes) {
            RefLine::Command(cmd, key, len) => {
                commands.push((cmd, key));
                at += len;
            }
            RefLine::Pending => {
                let end = if at == input.len() {
                    End::Idle
                } else {
                    End::Pending
                };
                let run = ParseRun {
                    commands,
                    consumed: input.len(),
                    end,
                };
                return (run, None);
            }
            RefLine::Error(e) => {
                let consumed = at
                    + match e {
                        RefError::Unexpected { offset, .. } => offset,
                        RefError::TooLong { .. } => max,
                    };
                let run = ParseRun {
                    commands,
                    consumed,
                    // Placeholder; the kinds are compared with `matches`.
                    end: End::Error(ParseError::LineTooLong { max }),
                };
                return (run, Some(e));
            }
        }
    }
}

/// Chunk boundaries drawn from `seed`: a mix of tiny and larger pieces.
pub fn random_chunks(input: &[u8], seed: u64) -> Vec<&[u8]> {
    let mut rng = Rng::new(seed);
    let mut chunks = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let n = match rng.below(4) {
            0 => 1,
            1 => 1 + rng.below(4),
            2 => 1 + rng.below(32),
            _ => 1 + rng.below(rest.len() as u64),
        } as usize;
        let (a, b) = rest.split_at(n.min(rest.len()));
        chunks.push(a);
        rest = b;
    }
    chunks
}

/// Checks the parser on `data`. Encoding: byte 0 picks the line limit (see
/// [`parser_limit`]), byte 1 seeds the chunking; the rest is the stream.
pub fn check_parser(data: &[u8]) {
    let mut bytes = Bytes::new(data);
    let max_line_bytes = parser_limit(bytes.u8());
    let seed = u64::from(bytes.u8());
    let input = data.get(2..).unwrap_or_default();

    let whole = feed_parser(max_line_bytes, &[input]);
    let ctx = || {
        format!(
            "max {max_line_bytes}, input {:?}",
            input.escape_ascii().to_string()
        )
    };
    if input.len() <= 4096 {
        let bytewise: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(
            feed_parser(max_line_bytes, &bytewise),
            whole,
            "byte by byte != whole; {}",
            ctx()
        );
    }
    for round in 0..3 {
        let seed = seed ^ ((input.len() as u64) << 8) ^ (round << 32);
        let chunks = random_chunks(input, seed);
        assert_eq!(
            feed_parser(max_line_bytes, &chunks),
            whole,
            "chunked (seed {seed}) != whole; {}",
            ctx()
        );
    }
    // Split in two at every point of a short stream.
    if input.len() <= 64 {
        for i in 0..=input.len() {
            let (a, b) = input.split_at(i);
            assert_eq!(
                feed_parser(max_line_bytes, &[a, b]),
                whole,
                "split at {i} != whole; {}",
                ctx()
            );
        }
    }

    let (want, want_err) = reference_run(input, max_line_bytes);
    assert_eq!(
        whole.commands,
        want.commands,
        "commands differ from the reference; {}",
        ctx()
    );
    assert_eq!(
        whole.consumed,
        want.consumed,
        "consumed differs from the reference (parser ended {:?}, reference {:?}); {}",
        whole.end,
        want_err.map_or(format!("{:?}", want.end), |e| format!("{e:?}")),
        ctx()
    );
    match (whole.end, want_err) {
        (End::Error(e), Some(r)) => {
            assert!(
                r.matches(e),
                "parser error {e:?}, reference {r:?}; {}",
                ctx()
            )
        }
        (got, None) => assert_eq!(got, want.end, "end state; {}", ctx()),
        (got, Some(r)) => panic!("parser ended {got:?}, reference error {r:?}; {}", ctx()),
    }
}

/// The line limit a fuzz input's first byte selects: small limits (including
/// ones below the minimum, which the parser raises) most of the time, so the
/// "line too long" rule is reachable with short inputs.
pub fn parser_limit(b: u8) -> usize {
    match b {
        0..=63 => usize::from(b),
        64..=127 => 64 + 4 * usize::from(b - 64),
        _ => DEFAULT_MAX_LINE_BYTES,
    }
}

// ---------------------------------------------------------------------------
// Timer wheel check
// ---------------------------------------------------------------------------

struct ModelTimer {
    id: TimerId,
    deadline_ms: u64,
    /// The firing order key: `(max(deadline, wheel time at insert), seq)`;
    /// `None` when inserted while a backlog was half drained, where the
    /// wheel's time is not known to the model.
    order: Option<(u64, u64)>,
}

/// Checks the timer wheel on `data`: a header byte picks the start time,
/// then ops (insert, cancel, advance, single polls) until the data ends.
pub fn check_timer(data: &[u8]) {
    let mut b = Bytes::new(data);
    let start_ms: u64 = match b.u8() % 4 {
        0 => 0,
        1 => u64::from(b.u16()),
        2 => (1 << 48) - u64::from(b.u16()),
        _ => u64::MAX / 2 + u64::from(b.u16()),
    };
    let mut wheel: TimerWheel<u64> = TimerWheel::new(start_ms);
    // Live timers by value (= insertion sequence number).
    let mut live: BTreeMap<u64, ModelTimer> = BTreeMap::new();
    let mut now = start_ms;
    // The wheel's time, known while "quiescent" (last poll returned None).
    let mut elapsed = start_ms;
    let mut quiescent = true;
    let mut seq = 0u64;
    let mut last_removed: Option<TimerId> = None;
    let mut step = 0;
    while !b.is_empty() {
        step += 1;
        let op = b.u8();
        let ctx = format!("step {step} op {op:#04x} now {now} elapsed {elapsed}");
        match op % 8 {
            // Insert, at a delay from `now` of various magnitudes.
            0..=2 => {
                let arg = b.u16();
                let delay = match op >> 5 {
                    0 | 1 => u64::from(arg % 80),
                    2 => u64::from(arg % 5000),
                    3 => u64::from(arg) * 64,
                    4 => u64::from(arg) << (20 + u32::from(op & 0x10 != 0) * 16),
                    5 => MAX_DELAY - u64::from(arg % 4),
                    6 => u64::from(arg) << 16 | u64::from(b.u16()),
                    _ => 0,
                };
                let past = op & 0x10 != 0 && op >> 5 == 7;
                let deadline_ms = if past {
                    now.saturating_sub(u64::from(arg % 200))
                } else {
                    // Within reach of the wheel's (known) time.
                    now.saturating_add(delay).min(elapsed + MAX_DELAY)
                };
                seq += 1;
                let id = wheel.insert(deadline_ms, seq);
                let order = if quiescent {
                    Some((deadline_ms.max(elapsed), seq))
                } else if deadline_ms > now {
                    Some((deadline_ms, seq))
                } else {
                    None
                };
                live.insert(
                    seq,
                    ModelTimer {
                        id,
                        deadline_ms,
                        order,
                    },
                );
                last_removed = None;
            }
            // Cancel a live timer, or re-cancel the last removed one.
            3 => {
                let pick = b.u8();
                if pick == 0xff {
                    if let Some(id) = last_removed {
                        assert_eq!(wheel.cancel(id), None, "stale cancel; {ctx}");
                    }
                } else if !live.is_empty() {
                    let nth = usize::from(pick) % live.len();
                    let (&v, _) = live.iter().nth(nth).expect("in range");
                    let t = live.remove(&v).expect("live");
                    assert_eq!(wheel.cancel(t.id), Some(v), "cancel; {ctx}");
                    last_removed = Some(t.id);
                }
            }
            // Advance and drain: to the next wake, or by a drawn step.
            4..=6 => {
                let arg = b.u8();
                now = match op % 8 {
                    4 => match wheel.next_wake_tick() {
                        Some(w) if arg & 1 == 0 => now.max(w),
                        Some(w) => now.max(w.saturating_sub(1)),
                        None => now + 1,
                    },
                    5 => now + u64::from(arg),
                    _ => now.saturating_add(match arg % 5 {
                        0 => 64 * u64::from(arg),
                        1 => 4096 * u64::from(arg),
                        2 => 262_144 * u64::from(arg),
                        3 => 16_777_216 * u64::from(arg),
                        _ => 1_073_741_824 * u64::from(arg),
                    }),
                };
                while poll_timer(&mut wheel, &mut live, now, &ctx) {}
                quiescent = true;
                elapsed = elapsed.max(now);
                last_removed = None;
            }
            // One poll at a small advance: may leave a backlog half drained.
            _ => {
                now += u64::from(b.u8() % 8);
                if poll_timer(&mut wheel, &mut live, now, &ctx) {
                    quiescent = false;
                } else {
                    quiescent = true;
                    elapsed = elapsed.max(now);
                }
                last_removed = None;
            }
        }
        assert_eq!(wheel.len(), live.len(), "len; {ctx}");
        assert_eq!(wheel.is_empty(), live.is_empty(), "is_empty; {ctx}");
        let earliest = live.values().map(|t| t.deadline_ms).min();
        match (wheel.next_wake_tick(), earliest) {
            (None, None) => {}
            (Some(w), Some(d)) => {
                assert!(
                    w <= d,
                    "next_wake {w} after the earliest deadline {d}; {ctx}"
                );
                if quiescent && live.values().all(|t| t.deadline_ms > now) {
                    assert!(
                        w > now,
                        "next_wake {w} not after now with nothing due; {ctx}"
                    );
                }
            }
            (w, d) => panic!("next_wake {w:?} but earliest deadline {d:?}; {ctx}"),
        }
        #[cfg(debug_assertions)]
        wheel.check_invariants();
    }
    // Everything fires eventually, none early.
    now = now.saturating_add(MAX_DELAY + (1 << 49));
    while poll_timer(&mut wheel, &mut live, now, "final drain") {}
    assert!(
        live.is_empty() && wheel.is_empty(),
        "timers left after the final drain"
    );
}

/// One `poll(now)`, checked: a fired timer is live, due, not early, and no
/// timer with a known, smaller order key is still pending; `None` means no
/// timer is due. Returns whether one fired.
fn poll_timer(
    wheel: &mut TimerWheel<u64>,
    live: &mut BTreeMap<u64, ModelTimer>,
    now: u64,
    ctx: &str,
) -> bool {
    match wheel.poll(now) {
        Some((deadline, v)) => {
            let t = live
                .remove(&v)
                .unwrap_or_else(|| panic!("fired unknown or cancelled timer {v}; {ctx}"));
            assert_eq!(
                deadline, t.deadline_ms,
                "fired with another deadline; {ctx}"
            );
            assert!(
                deadline <= now,
                "fired early: due {deadline}, now {now}; {ctx}"
            );
            if let Some(key) = t.order {
                if let Some(first) = live
                    .values()
                    .filter(|o| o.deadline_ms <= now)
                    .filter_map(|o| o.order)
                    .min()
                {
                    assert!(
                        key < first,
                        "fired {key:?} before {first:?} (deadline, then FIFO); {ctx}"
                    );
                }
            }
            true
        }
        None => {
            if let Some((v, t)) = live.iter().find(|(_, t)| t.deadline_ms <= now) {
                panic!(
                    "timer {v} due at {} not fired at {now}; {ctx}",
                    t.deadline_ms
                );
            }
            false
        }
    }
}

// ---------------------------------------------------------------------------
// Core check
// ---------------------------------------------------------------------------

/// One output for one connection, as compared between core and model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out {
    Reply(Reply),
    /// The connection is closed. For a syntax error the model has the
    /// reference's error and the core the parser's (compared with
    /// [`RefError::matches`]); any other reason is compared exactly.
    Close(Option<RefError>, Option<CloseReason>),
}

impl Out {
    fn same(&self, other: &Out) -> bool {
        match (self, other) {
            (Out::Reply(a), Out::Reply(b)) => a == b,
            (Out::Close(Some(r), _), Out::Close(_, Some(CloseReason::Syntax(e))))
            | (Out::Close(_, Some(CloseReason::Syntax(e))), Out::Close(Some(r), _)) => {
                r.matches(*e)
            }
            (Out::Close(None, Some(a)), Out::Close(None, Some(b))) => a == b,
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
struct Wait {
    key: Vec<u8>,
    /// `(deadline_us, seq)` for a finite timeout.
    deadline: Option<(u64, u64)>,
    /// `acquire` (granted with its token), not `lock`.
    acquire: bool,
}

/// A connection's auth state in the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum ModelAuth {
    #[default]
    Done,
    Required,
    /// A wrong secret; closed at `(deadline_us, seq)`.
    Failing(u64, u64),
}

#[derive(Clone, Debug, Default)]
struct ModelConn {
    open: bool,
    /// Bytes the core has received and not yet run: the unfinished line
    /// while running, everything after the `lock` line while waiting.
    buf: Vec<u8>,
    wait: Option<Wait>,
    /// Bytes the client sent that the core has not read yet (the reactor
    /// stops reading while `wants_input` is false).
    inbox: Vec<u8>,
    /// Bytes the client has not sent yet: the tail of a split command, sent
    /// before whatever it sends next.
    unsent: Vec<u8>,
    auth: ModelAuth,
    name: Option<Vec<u8>>,
}

/// A key in the model: its N, holders in grant order with their tokens and
/// grant times, waiters in arrival order.
#[derive(Clone, Debug)]
struct ModelKey {
    limit: u32,
    holders: Vec<(ConnId, u64, u64)>,
    waiters: VecDeque<ConnId>,
}

/// Counters of what a run exercised, so tests can assert it did something.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HarnessStats {
    pub steps: u64,
    pub commands: u64,
    pub granted: u64,
    pub granted_after_wait: u64,
    pub timeouts: u64,
    pub unlocked: u64,
    pub try_lock_timeouts: u64,
    pub errors_replied: u64,
    pub syntax_errors: u64,
    /// Connections closed, for any reason.
    pub disconnects: u64,
    pub deliveries_deferred: u64,
    /// Grants of a semaphore slot (N > 1).
    pub semaphore_grants: u64,
    pub limit_errors: u64,
    pub infos: u64,
    pub stats_replies: u64,
    pub names: u64,
    pub auth_ok: u64,
    pub auth_failures: u64,
    pub evictions: u64,
}

/// The secret of the fuzzed configurations with auth on.
pub const MODEL_SECRET: &str = "s3cr+t/=";

/// The peer the harness gives connection `conn`: most are loopback (IPv4
/// or IPv6), every fourth is not, so `evict` meets both answers.
pub fn model_peer(conn: usize) -> SocketAddr {
    let port = 1000 + (conn % 60_000) as u16;
    match conn % 4 {
        3 => SocketAddr::from(([192, 0, 2, 1], port)),
        2 => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        _ => SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

/// The core and the reference model, driven in lock step. Every public
/// method is one step: it drives the core, runs the model, compares every
/// connection's outputs and checks the invariants, panicking with the step's
/// description on the first difference.
pub struct CoreHarness {
    core: Core,
    config: Config,
    now_us: u64,
    start_us: u64,
    conns: Vec<ModelConn>,
    keys: BTreeMap<Vec<u8>, ModelKey>,
    /// `(deadline_us, seq, conn)` of every waiter with a finite timeout and
    /// every connection in its auth failure delay.
    deadlines: BTreeSet<(u64, u64, ConnId)>,
    seq: u64,
    /// The next token and the last one issued (0 before any).
    next_token: u64,
    last_token: u64,
    resume: VecDeque<ConnId>,
    /// This step's outputs: the core's with their global position, the
    /// model's, per connection.
    got: Vec<Vec<(usize, Out)>>,
    want: Vec<Vec<Out>>,
    touched: Vec<usize>,
    /// Outputs collected so far (their global order).
    outputs: usize,
    step_desc: String,
    /// Print every step to stderr (`DREADLOCK_MODEL_TRACE=1`), to read a
    /// failing input's story.
    trace: bool,
    pub stats: HarnessStats,
}

impl CoreHarness {
    pub fn new(config: Config, start_us: u64) -> Self {
        CoreHarness {
            core: Core::new(config, start_us),
            config: Config {
                auth_delay_ms: config.auth_delay_ms.max(MIN_AUTH_DELAY_MS),
                ..config
            },
            now_us: start_us,
            start_us,
            conns: Vec::new(),
            keys: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            seq: 0,
            next_token: config.token_seed.max(1),
            last_token: 0,
            resume: VecDeque::new(),
            got: Vec::new(),
            want: Vec::new(),
            touched: Vec::new(),
            outputs: 0,
            step_desc: String::new(),
            trace: std::env::var_os("DREADLOCK_MODEL_TRACE").is_some(),
            stats: HarnessStats::default(),
        }
    }

    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    pub fn is_open(&self, conn: usize) -> bool {
        self.conns.get(conn).is_some_and(|c| c.open)
    }

    pub fn is_waiting(&self, conn: usize) -> bool {
        self.conns.get(conn).is_some_and(|c| c.wait.is_some())
    }

    /// Whether `conn` is open and must still `auth` (auth on).
    pub fn needs_auth(&self, conn: usize) -> bool {
        self.conns
            .get(conn)
            .is_some_and(|c| c.open && c.auth == ModelAuth::Required)
    }

    /// Whether auth is on.
    pub fn auth_on(&self) -> bool {
        self.config.auth.is_some()
    }

    /// The connections whose `lock` is waiting.
    pub fn waiting(&self) -> Vec<usize> {
        (0..self.conns.len())
            .filter(|&c| self.is_waiting(c))
            .collect()
    }

    pub fn open_count(&self) -> usize {
        self.conns.iter().filter(|c| c.open).count()
    }

    /// The keys `conn` holds.
    pub fn keys_held_by(&self, conn: usize) -> Vec<Vec<u8>> {
        self.keys
            .iter()
            .filter(|(_, k)| k.holders.iter().any(|h| h.0 == ConnId(conn)))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The earliest finite deadline of any waiter (or auth delay), in µs.
    pub fn next_deadline_us(&self) -> Option<u64> {
        self.deadlines.first().map(|&(d, _, _)| d)
    }

    /// The core under test (read-only).
    pub fn core(&self) -> &Core {
        &self.core
    }

    fn slot(&mut self, conn: usize) -> &mut ModelConn {
        if self.conns.len() <= conn {
            self.conns.resize_with(conn + 1, ModelConn::default);
            self.got.resize_with(conn + 1, Vec::new);
            self.want.resize_with(conn + 1, Vec::new);
        }
        &mut self.conns[conn]
    }

    /// A new connection on a free id, from [`model_peer`]`(conn)`.
    pub fn open(&mut self, conn: usize) {
        assert!(!self.is_open(conn), "harness misuse: {conn} is open");
        self.begin(format!("open {conn}"));
        self.core.handle_open(ConnId(conn), Some(model_peer(conn)));
        let auth = if self.config.auth.is_some() {
            ModelAuth::Required
        } else {
            ModelAuth::Done
        };
        *self.slot(conn) = ModelConn {
            open: true,
            auth,
            ..ModelConn::default()
        };
        self.finish();
    }

    /// The client sends `bytes` (after any unsent tail); the core reads them
    /// now unless it does not want input from this connection.
    pub fn send(&mut self, conn: usize, bytes: &[u8]) {
        self.send_split(conn, bytes, usize::MAX);
    }

    /// Like `send`, but only the first `sent` bytes leave the client now;
    /// the rest go out in front of its next send.
    pub fn send_split(&mut self, conn: usize, bytes: &[u8], sent: usize) {
        if !self.is_open(conn) {
            self.open(conn);
        }
        let text = bytes.escape_ascii().to_string();
        self.begin(if sent == usize::MAX {
            format!("send {conn} \"{text}\"")
        } else {
            format!("send {conn} \"{text}\", only {sent} bytes of it and the unsent")
        });
        let c = self.slot(conn);
        let mut all = std::mem::take(&mut c.unsent);
        all.extend_from_slice(bytes);
        let sent = sent.min(all.len());
        c.unsent = all.split_off(sent);
        c.inbox.extend_from_slice(&all);
        self.deliver(conn);
        self.pump();
        self.finish();
    }

    /// The connection closes (FIN or RST; the core does not care which).
    pub fn close(&mut self, conn: usize) {
        if !self.is_open(conn) {
            return;
        }
        self.begin(format!("close {conn}"));
        self.core.handle_closed(ConnId(conn), self.now_us);
        self.collect();
        // Timers due now fire first, as in the core: an auth delay ending
        // now closes the connection itself, and the peer's close then finds
        // it gone (one disconnect, not two).
        self.model_expire();
        if self.conns[conn].open {
            self.stats.disconnects += 1;
            self.model_forget(ConnId(conn));
        }
        self.resume();
        self.pump();
        self.finish();
    }

    /// The clock moves on by `us`; then the reactor's timer tick.
    pub fn advance(&mut self, us: u64) {
        self.now_us = self.now_us.saturating_add(us);
        self.tick();
    }

    /// The clock moves on by `us` with no timer tick: the next input event
    /// sees the new time first.
    pub fn advance_silently(&mut self, us: u64) {
        self.now_us = self.now_us.saturating_add(us);
    }

    /// Moves the clock to the core's `poll_timeout` (if later than now) and
    /// ticks, as a reactor sleeping until then would.
    pub fn sleep_until_poll_timeout(&mut self) {
        if let Some(t) = self.core.poll_timeout() {
            self.now_us = self.now_us.max(t);
        }
        self.tick();
    }

    /// `handle_timeout(now)`.
    pub fn tick(&mut self) {
        self.begin(format!("tick at {} us", self.now_us));
        self.core.handle_timeout(self.now_us);
        self.collect();
        self.model_expire();
        self.resume();
        self.pump();
        self.finish();
        // Never lost: nothing due is still pending, and the reactor is not
        // asked to wake before something can happen.
        let now_us = self.now_us;
        assert!(
            self.deadlines.first().is_none_or(|&(d, _, _)| d > now_us),
            "model: a due timeout survived a tick"
        );
        if let Some(t) = self.core.poll_timeout() {
            assert!(
                t > self.now_us,
                "poll_timeout {t} not after now {} right after handle_timeout",
                self.now_us
            );
        }
    }

    fn begin(&mut self, desc: String) {
        if self.trace {
            eprintln!("[{} us] {desc}", self.now_us);
        }
        self.stats.steps += 1;
        self.step_desc = desc;
    }

    /// What the model says `wants_input` is.
    fn model_wants(&self, c: &ModelConn) -> bool {
        c.open
            && !matches!(c.auth, ModelAuth::Failing(..))
            && (c.wait.is_none() || c.buf.len() < self.config.max_pending_bytes)
    }

    /// Hands the connection's inbox to the core if the core wants it.
    fn deliver(&mut self, conn: usize) {
        let c = &mut self.conns[conn];
        if !c.open || c.inbox.is_empty() {
            return;
        }
        if !self.core.wants_input(ConnId(conn)) {
            self.stats.deliveries_deferred += 1;
            return;
        }
        let bytes = std::mem::take(&mut c.inbox);
        self.core.handle_bytes(ConnId(conn), &bytes, self.now_us);
        self.collect();
        // The model: due timeouts first, then the input, unless the
        // connection's wait just ended with commands buffered: then they
        // resume first, the input after them.
        self.model_expire();
        let resuming = self.resume.contains(&ConnId(conn)) && !self.conns[conn].buf.is_empty();
        let c = &mut self.conns[conn];
        if c.open && !matches!(c.auth, ModelAuth::Failing(..)) {
            c.buf.extend_from_slice(&bytes);
            if c.wait.is_none() && !resuming {
                self.model_run(ConnId(conn));
            }
        }
        self.resume();
    }

    /// The reactor resuming every connection whose wait ended, each to the
    /// end of its buffer in turn; then the model does the same.
    fn resume(&mut self) {
        while let Some(c) = self.core.poll_resumable() {
            while self.core.handle_resume(c, usize::MAX, self.now_us) {}
        }
        self.collect();
        self.model_drain();
    }

    /// Delivers held-back inboxes that the core wants again (the reactor
    /// resuming reads), until nothing changes.
    fn pump(&mut self) {
        loop {
            let ready: Vec<usize> = (0..self.conns.len())
                .filter(|&c| {
                    self.conns[c].open
                        && !self.conns[c].inbox.is_empty()
                        && self.core.wants_input(ConnId(c))
                })
                .collect();
            if ready.is_empty() {
                return;
            }
            for c in ready {
                self.deliver(c);
            }
        }
    }

    /// A lock event (with `Config::events`) names a known connection, a key
    /// the line limit allows, a token from the seed on and a duration within
    /// the run.
    fn check_event(&self, e: &Event) {
        assert!(self.config.events, "event with events off: {e:?}");
        let elapsed = self.now_us - self.start_us;
        let (who, key, us) = match e {
            Event::Granted {
                who,
                key,
                token,
                waited_us,
            } => {
                assert!(*token >= self.config.token_seed.max(1), "{e:?}");
                (who, key, waited_us.unwrap_or(0))
            }
            Event::Timeout {
                who,
                key,
                waited_us,
            } => (who, key, *waited_us),
            Event::Released {
                who, key, held_us, ..
            } => (who, key, *held_us),
            Event::Evicted { by, victim, key } => {
                assert!(victim.conn.0 < self.conns.len(), "{e:?}");
                (by, key, 0)
            }
        };
        assert!(
            who.conn.0 < self.conns.len(),
            "{e:?} during {}",
            self.step_desc
        );
        assert!(
            !key.is_empty() && key.len() <= self.config.max_line_bytes,
            "{e:?}"
        );
        assert!(us <= elapsed, "{e:?}: longer than the run ({elapsed} µs)");
    }

    /// Drains the core's outputs into `got`.
    fn collect(&mut self) {
        while let Some(e) = self.core.poll_event() {
            self.check_event(&e);
        }
        while let Some(o) = self.core.poll_output() {
            let (conn, out) = match o {
                Output::Reply(c, r) => (c, Out::Reply(r)),
                Output::Close(c, e) => (c, Out::Close(None, Some(e))),
            };
            let pos = self.outputs;
            self.outputs += 1;
            assert!(
                conn.0 < self.got.len(),
                "output for unknown {conn:?} during {}",
                self.step_desc
            );
            self.got[conn.0].push((pos, out));
            self.touched.push(conn.0);
        }
    }

    fn expect(&mut self, conn: ConnId, out: Out) {
        if let Out::Reply(r) = &out {
            match r {
                Reply::Timeout => self.stats.timeouts += 1,
                Reply::Unlocked => self.stats.unlocked += 1,
                Reply::Error(_) => self.stats.errors_replied += 1,
                _ => {}
            }
        }
        self.want[conn.0].push(out);
        self.touched.push(conn.0);
    }

    /// Orders connections unblocked at the same instant the way the core
    /// did: by the position of their next output in the core's output (ties,
    /// which mean a missing output and fail the comparison anyway, by id).
    fn core_order(&self, mut set: Vec<ConnId>) -> Vec<ConnId> {
        set.sort_by_key(|g| {
            let next = self.want[g.0].len();
            let pos = self.got[g.0].get(next).map_or(usize::MAX, |&(p, _)| p);
            (pos, g.0)
        });
        set
    }

    /// The next fencing token.
    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token = t.saturating_add(1);
        self.last_token = t;
        t
    }

    /// Fires due timeouts and auth delays (all with `deadline_us <= now_us`),
    /// one at a time in the core's order: an auth delay that ends closes a
    /// connection, which may grant a waiter whose own deadline was due too.
    fn model_expire(&mut self) {
        let now_us = self.now_us;
        loop {
            let due: Vec<ConnId> = self
                .deadlines
                .iter()
                .take_while(|&&(d, _, _)| d <= now_us)
                .map(|&(_, _, c)| c)
                .collect();
            let Some(&c) = self.core_order(due).first() else {
                return;
            };
            let entry = *self
                .deadlines
                .iter()
                .find(|&&(_, _, x)| x == c)
                .expect("due");
            self.deadlines.remove(&entry);
            if let ModelAuth::Failing(..) = self.conns[c.0].auth {
                self.conns[c.0].auth = ModelAuth::Done;
                self.expect(c, Out::Reply(Reply::Error(ErrorReply::AuthFailed)));
                self.model_close(c, CloseReason::AuthFailed);
                continue;
            }
            let wait = self.conns[c.0].wait.take().expect("a timed waiter waits");
            let k = self.keys.get_mut(&wait.key).expect("waited key is held");
            let i = k.waiters.iter().position(|&x| x == c).expect("queued");
            k.waiters.remove(i);
            self.expect(c, Out::Reply(Reply::Timeout));
            self.resume.push_back(c);
        }
    }

    /// Runs the buffered commands of connections whose wait ended.
    fn model_drain(&mut self) {
        while let Some(c) = self.resume.pop_front() {
            let m = &self.conns[c.0];
            if m.open && m.wait.is_none() && !m.buf.is_empty() {
                self.model_run(c);
            }
        }
    }

    /// Runs `conn`'s buffered commands until they run out, a `lock` waits,
    /// the connection closes, or a wrong secret starts its delay.
    fn model_run(&mut self, conn: ConnId) {
        loop {
            let m = &self.conns[conn.0];
            if !m.open || m.wait.is_some() || matches!(m.auth, ModelAuth::Failing(..)) {
                return;
            }
            match reference_line(&m.buf, self.config.max_line_bytes) {
                RefLine::Pending => return,
                RefLine::Error(e) => {
                    self.stats.syntax_errors += 1;
                    self.stats.disconnects += 1;
                    self.model_forget(conn);
                    self.expect(conn, Out::Close(Some(e), None));
                    return;
                }
                RefLine::Command(cmd, key, len) => {
                    self.stats.commands += 1;
                    self.conns[conn.0].buf.drain(..len);
                    if self.conns[conn.0].auth == ModelAuth::Required
                        && !matches!(cmd, Command::Auth { .. })
                    {
                        self.stats.auth_failures += 1;
                        self.expect(conn, Out::Reply(Reply::Error(ErrorReply::AuthRequired)));
                        self.model_close(conn, CloseReason::AuthRequired);
                        return;
                    }
                    self.model_command(conn, cmd, key);
                }
            }
        }
    }

    fn model_command(&mut self, conn: ConnId, cmd: Command, key: Vec<u8>) {
        let reply = match cmd {
            Command::Lock { timeout_ms } => {
                return self.model_lock(conn, key, timeout_ms, 1, false);
            }
            Command::Acquire { timeout_ms, limit } if (1..=MAX_LIMIT).contains(&limit) => {
                return self.model_lock(conn, key, timeout_ms, limit, true);
            }
            Command::Acquire { .. } => {
                self.stats.limit_errors += 1;
                Reply::Error(ErrorReply::BadLimit)
            }
            Command::Unlock => return self.model_unlock(conn, &key),
            Command::Info => {
                self.stats.infos += 1;
                Reply::Line(self.info_line(&key).into_boxed_slice())
            }
            Command::Stats => {
                self.stats.stats_replies += 1;
                Reply::Line(self.stats_line().into_boxed_slice())
            }
            Command::Name { too_long: true } => Reply::Error(ErrorReply::NameTooLong),
            Command::Name { too_long: false } => {
                self.stats.names += 1;
                self.conns[conn.0].name = Some(key);
                Reply::Ok
            }
            Command::Auth { too_long } => match self.config.auth {
                None => Reply::Error(ErrorReply::AuthNotEnabled),
                Some(s) if !too_long && s.matches(&key) => {
                    self.stats.auth_ok += 1;
                    self.conns[conn.0].auth = ModelAuth::Done;
                    Reply::Ok
                }
                Some(_) => {
                    self.stats.auth_failures += 1;
                    self.seq += 1;
                    let d = self
                        .now_us
                        .saturating_add(self.config.auth_delay_ms.saturating_mul(1000));
                    self.deadlines.insert((d, self.seq, conn));
                    let m = &mut self.conns[conn.0];
                    m.auth = ModelAuth::Failing(d, self.seq);
                    // Nothing after a wrong secret runs.
                    m.buf.clear();
                    return;
                }
            },
            Command::Evict => {
                let loopback = match model_peer(conn.0).ip() {
                    std::net::IpAddr::V4(a) => a.is_loopback(),
                    std::net::IpAddr::V6(a) => a.is_loopback(),
                };
                if self.config.auth.is_none() && !loopback {
                    Reply::Error(ErrorReply::NotAllowed)
                } else {
                    let victims: Vec<ConnId> = self
                        .keys
                        .get(&key)
                        .map(|k| k.holders.iter().map(|h| h.0).collect())
                        .unwrap_or_default();
                    self.expect(conn, Out::Reply(Reply::evicted(victims.len() as u64)));
                    for v in victims {
                        self.stats.evictions += 1;
                        self.model_close(v, CloseReason::Evicted);
                    }
                    return;
                }
            }
        };
        self.expect(conn, Out::Reply(reply));
    }

    /// The model's `info` line (PROTOCOL.md rule V8).
    fn info_line(&self, key: &[u8]) -> Vec<u8> {
        let mut s = match self.keys.get(key) {
            None => "i limit=0 holders=0 waiters=0".to_string(),
            Some(k) => {
                let (c, token, at) = k.holders[0];
                let mut s = format!(
                    "i limit={} holders={} waiters={} token={token} held_ms={} peer={}",
                    k.limit,
                    k.holders.len(),
                    k.waiters.len(),
                    (self.now_us - at) / 1000,
                    model_peer(c.0)
                );
                if let Some(name) = &self.conns[c.0].name {
                    s += " name=";
                    s += std::str::from_utf8(name).expect("labels are ASCII");
                }
                s
            }
        };
        s += "\r\n";
        s.into_bytes()
    }

    /// The model's `stats` line, every field computed from the model.
    fn stats_line(&self) -> Vec<u8> {
        let m = &self.stats;
        let holders: usize = self.keys.values().map(|k| k.holders.len()).sum();
        let waiters: usize = self.keys.values().map(|k| k.waiters.len()).sum();
        let accepted = self.stats_opens();
        let fields: Vec<(&str, String)> = vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            (
                "uptime_s",
                ((self.now_us - self.start_us) / 1_000_000).to_string(),
            ),
            ("connections", self.open_count().to_string()),
            ("keys", self.keys.len().to_string()),
            ("holders", holders.to_string()),
            ("waiters", waiters.to_string()),
            ("grants", m.granted.to_string()),
            ("timeouts", m.timeouts.to_string()),
            ("unlocks", m.unlocked.to_string()),
            ("disconnects", m.disconnects.to_string()),
            ("evictions", m.evictions.to_string()),
            ("errors", m.errors_replied.to_string()),
            ("syntax_errors", m.syntax_errors.to_string()),
            ("auth_failures", m.auth_failures.to_string()),
            ("accepted", accepted.to_string()),
            ("rejected", "0".to_string()),
            ("token", self.last_token.to_string()),
            ("commands", m.commands.to_string()),
        ];
        let names: Vec<&str> = fields.iter().map(|f| f.0).collect();
        assert_eq!(names, crate::wire::STATS_FIELDS, "model's stats fields");
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("s {}\r\n", body.join(" ")).into_bytes()
    }

    /// Connections opened so far: the open ones plus the closed ones.
    fn stats_opens(&self) -> u64 {
        self.open_count() as u64 + self.stats.disconnects
    }

    fn model_lock(
        &mut self,
        conn: ConnId,
        key: Vec<u8>,
        timeout_ms: u64,
        limit: u32,
        acquire: bool,
    ) {
        // The table's limits: keys held per connection, bytes of held keys.
        let held = self
            .keys
            .values()
            .filter(|k| k.holders.iter().any(|h| h.0 == conn))
            .count();
        let too_many = held >= self.config.max_locks_per_connection;
        let now_us = self.now_us;
        let reply = match self.keys.get(&key) {
            Some(k) if k.limit != limit => {
                self.stats.limit_errors += 1;
                Reply::Error(ErrorReply::LimitMismatch)
            }
            Some(k) if k.holders.iter().any(|h| h.0 == conn) => {
                Reply::Error(ErrorReply::AlreadyLocked)
            }
            _ if too_many => Reply::Error(ErrorReply::TooManyLocks),
            None => {
                let used: usize = self.keys.keys().map(|k| k.len() + KEY_OVERHEAD_BYTES).sum();
                if used + key.len() + KEY_OVERHEAD_BYTES > self.config.max_key_bytes {
                    Reply::Error(ErrorReply::TableFull)
                } else {
                    let token = self.token();
                    self.keys.insert(
                        key,
                        ModelKey {
                            limit,
                            holders: vec![(conn, token, now_us)],
                            waiters: VecDeque::new(),
                        },
                    );
                    self.granted(limit);
                    grant_reply(acquire, token)
                }
            }
            Some(k) if (k.holders.len() as u32) < k.limit => {
                let token = self.token();
                let k = self.keys.get_mut(&key).expect("present");
                k.holders.push((conn, token, now_us));
                self.granted(limit);
                grant_reply(acquire, token)
            }
            Some(_) if timeout_ms == 0 => {
                self.stats.try_lock_timeouts += 1;
                Reply::Timeout
            }
            Some(_) => {
                let deadline = (timeout_ms < INFINITE_TIMEOUT_MS).then(|| {
                    self.seq += 1;
                    let d = self.now_us.saturating_add(timeout_ms * 1000);
                    self.deadlines.insert((d, self.seq, conn));
                    (d, self.seq)
                });
                let k = self.keys.get_mut(&key).expect("present");
                k.waiters.push_back(conn);
                self.conns[conn.0].wait = Some(Wait {
                    key,
                    deadline,
                    acquire,
                });
                return;
            }
        };
        self.expect(conn, Out::Reply(reply));
    }

    fn granted(&mut self, limit: u32) {
        self.stats.granted += 1;
        if limit > 1 {
            self.stats.semaphore_grants += 1;
        }
    }

    fn model_unlock(&mut self, conn: ConnId, key: &[u8]) {
        let (reply, granted) = match self.keys.get_mut(key) {
            None => (Reply::Error(ErrorReply::NotLocked), None),
            Some(k) => match k.holders.iter().position(|h| h.0 == conn) {
                None => (Reply::Error(ErrorReply::NotOwner), None),
                Some(i) => {
                    k.holders.remove(i);
                    let g = k.waiters.front().copied();
                    if g.is_none() && k.holders.is_empty() {
                        self.keys.remove(key);
                    }
                    (Reply::Unlocked, g)
                }
            },
        };
        if let Some(g) = granted {
            self.grant(key, g);
        }
        self.expect(conn, Out::Reply(reply));
    }

    /// `g`, at the head of `key`'s queue with a slot free, gets it.
    fn grant(&mut self, key: &[u8], g: ConnId) {
        let wait = self.conns[g.0].wait.take().expect("granted conn waited");
        if let Some((d, s)) = wait.deadline {
            assert!(self.deadlines.remove(&(d, s, g)));
        }
        let token = self.token();
        let now_us = self.now_us;
        let k = self.keys.get_mut(key).expect("granted key exists");
        assert_eq!(k.waiters.pop_front(), Some(g));
        k.holders.push((g, token, now_us));
        let limit = k.limit;
        self.granted(limit);
        self.stats.granted_after_wait += 1;
        self.expect(g, Out::Reply(grant_reply(wait.acquire, token)));
        self.resume.push_back(g);
    }

    /// The core closes `conn` for `reason`: as a disconnect, then the close.
    fn model_close(&mut self, conn: ConnId, reason: CloseReason) {
        if !self.conns[conn.0].open {
            return;
        }
        self.stats.disconnects += 1;
        self.model_forget(conn);
        self.expect(conn, Out::Close(None, Some(reason)));
    }

    /// The connection is gone: its wait or auth delay is withdrawn, its
    /// slots pass to their next waiters.
    fn model_forget(&mut self, conn: ConnId) {
        let m = &mut self.conns[conn.0];
        m.open = false;
        m.buf.clear();
        m.inbox.clear();
        m.unsent.clear();
        m.name = None;
        if let ModelAuth::Failing(d, s) = m.auth {
            assert!(self.deadlines.remove(&(d, s, conn)));
        }
        m.auth = ModelAuth::Done;
        if let Some(w) = m.wait.take() {
            if let Some((d, s)) = w.deadline {
                assert!(self.deadlines.remove(&(d, s, conn)));
            }
            let k = self.keys.get_mut(&w.key).expect("waited key is held");
            k.waiters.retain(|&x| x != conn);
        }
        // Release every slot; the waiters granted are ordered (and get
        // their tokens) the way the core granted them.
        let mut granted = Vec::new();
        for (key, k) in self.keys.iter_mut() {
            if let Some(i) = k.holders.iter().position(|h| h.0 == conn) {
                k.holders.remove(i);
                if let Some(&g) = k.waiters.front() {
                    granted.push((g, key.clone()));
                }
            }
        }
        self.keys
            .retain(|_, k| !k.holders.is_empty() || !k.waiters.is_empty());
        let order = self.core_order(granted.iter().map(|&(g, _)| g).collect());
        for g in order {
            let key = granted
                .iter()
                .find(|(x, _)| *x == g)
                .expect("granted")
                .1
                .clone();
            self.grant(&key, g);
        }
    }

    /// Ends a step: compares outputs and state, checks invariants.
    fn finish(&mut self) {
        assert!(self.resume.is_empty());
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for &c in &touched {
            let got: Vec<Out> = self.got[c].iter().map(|(_, o)| o.clone()).collect();
            let want = &self.want[c];
            if got.len() != want.len() || !got.iter().zip(want).all(|(g, w)| g.same(w)) {
                panic!(
                    "connection {c}: core replied {got:?}, model expected {want:?}\n\
                     during: {}\nat {} us",
                    self.step_desc, self.now_us
                );
            }
            self.got[c].clear();
            self.want[c].clear();
        }
        self.touched = touched;
        self.touched.clear();

        let ctx = &self.step_desc;
        let open = self.open_count();
        assert_eq!(self.core.connections(), open, "open connections; {ctx}");
        assert_eq!(self.core.keys_held(), self.keys.len(), "keys held; {ctx}");
        let holders: usize = self.keys.values().map(|k| k.holders.len()).sum();
        assert_eq!(self.core.holders(), holders, "holders; {ctx}");
        let waiting = self.conns.iter().filter(|c| c.wait.is_some()).count();
        assert_eq!(self.core.waiters(), waiting, "waiters; {ctx}");
        for (i, m) in self.conns.iter().enumerate() {
            let c = ConnId(i);
            assert_eq!(
                self.core.is_waiting(c),
                m.wait.is_some(),
                "{c:?} waiting; {ctx}"
            );
            let wants = self.model_wants(m);
            assert_eq!(self.core.wants_input(c), wants, "{c:?} wants_input; {ctx}");
        }
        // The reactor sleeps until poll_timeout: it must not be later than
        // the earliest deadline, and exist exactly while timers do.
        match (self.core.poll_timeout(), self.next_deadline_us()) {
            (None, None) => {}
            (Some(t), Some(d)) => assert!(t <= d, "poll_timeout {t} after deadline {d}; {ctx}"),
            (t, d) => panic!("poll_timeout {t:?}, earliest deadline {d:?}; {ctx}"),
        }
        // The core's counters agree with what was replied.
        let st = self.core.stats();
        let m = &self.stats;
        assert_eq!(
            (
                st.commands_total(),
                st.grants_total(),
                st.timeouts,
                st.unlocks
            ),
            (m.commands, m.granted, m.timeouts, m.unlocked),
            "stats (commands, granted, timeouts, unlocked); {ctx}"
        );
        assert_eq!(
            (
                st.errors_total(),
                st.syntax_errors,
                st.disconnects,
                st.auth_failures,
                st.evictions
            ),
            (
                m.errors_replied,
                m.syntax_errors,
                m.disconnects,
                m.auth_failures,
                m.evictions
            ),
            "stats (errors replied, syntax errors, disconnects, auth failures, evictions); {ctx}"
        );
        assert_eq!(
            st.grants_queued, m.granted_after_wait,
            "queued grants; {ctx}"
        );
        assert_eq!(st.last_token, self.last_token, "last token; {ctx}");
        assert_eq!(st.wait_granted.count, m.granted, "wait histogram; {ctx}");
        assert_eq!(st.accepted, self.stats_opens(), "accepted; {ctx}");
        self.core.check_invariants();
    }
}

/// `a <token>` for `acquire`, `l locked` for `lock`.
fn grant_reply(acquire: bool, token: u64) -> Reply {
    if acquire {
        Reply::acquired(token)
    } else {
        Reply::Locked
    }
}

/// The core configurations a fuzz input's first byte selects from: line
/// and pending-input limits, (from 25 up) small lock-table limits, and from
/// 200 up auth on (with [`MODEL_SECRET`]); odd values start the tokens at a
/// wall-clock-like seed.
fn core_config(b: u8) -> Config {
    const LINES: [usize; 5] = [16, 20, 32, 64, DEFAULT_MAX_LINE_BYTES];
    const PENDING: [usize; 5] = [0, 12, 40, 200, 64 * 1024];
    // Room for n one-byte keys.
    let keys = |n: usize| n * (1 + KEY_OVERHEAD_BYTES);
    let (max_locks_per_connection, max_key_bytes) = match b / 25 {
        1 => (1, usize::MAX),
        2 => (2, usize::MAX),
        3 => (usize::MAX, keys(2)),
        4 => (usize::MAX, keys(3) + 8),
        5 => (2, keys(4)),
        6 => (0, usize::MAX),
        _ => {
            let d = Config::default();
            (d.max_locks_per_connection, d.max_key_bytes)
        }
    };
    Config {
        max_line_bytes: LINES[usize::from(b % 5)],
        max_pending_bytes: PENDING[usize::from(b / 5 % 5)],
        max_locks_per_connection,
        max_key_bytes,
        token_seed: if b % 2 == 1 {
            1_700_000_000_000_000_000
        } else {
            1
        },
        auth: (b >= 200).then(|| Secret::new(MODEL_SECRET.as_bytes()).expect("valid secret")),
        auth_delay_ms: if b % 4 < 2 { 50 } else { 100 },
        events: b % 3 == 0,
    }
}

/// Keys the core fuzzer uses: few, so that they collide; one long enough to
/// break the smaller line limits.
const KEYS: [&str; 8] = ["a", "b", "c", "A", "k1", "a1", "Zz9", "LongKey0123456789"];

/// Timeouts the core fuzzer uses, around every boundary: try-lock, short
/// ones, one wheel level (64 ms, 4096 ms), 2^32, and the last finite one,
/// the first infinite one and beyond, up to digit strings past `u64`.
fn timeout_text(i: u8) -> String {
    match i % 16 {
        0 => "0".into(),
        1 => "1".into(),
        2 => "2".into(),
        3 => "3".into(),
        4 => "5".into(),
        5 => "10".into(),
        6 => "64".into(),
        7 => "100".into(),
        8 => "1000".into(),
        9 => "4097".into(),
        10 => "4294967296".into(),
        11 => (INFINITE_TIMEOUT_MS - 1).to_string(),
        12 => INFINITE_TIMEOUT_MS.to_string(),
        13 => (1u64 << 36).to_string(),
        14 => u64::MAX.to_string(),
        _ => "99999999999999999999999".into(),
    }
}

/// Text of a command; `style` picks the command word's case and how many
/// spaces go where.
fn command_text(word: &str, key: &str, timeout: Option<&str>, style: u8) -> Vec<u8> {
    let word: String = match style & 3 {
        0 => word.to_string(),
        1 => word.to_uppercase(),
        2 => {
            let mut w = word.to_string();
            w[..1].make_ascii_uppercase();
            w
        }
        _ => word
            .chars()
            .enumerate()
            .map(|(i, ch)| {
                if i % 2 == 1 {
                    ch.to_ascii_uppercase()
                } else {
                    ch
                }
            })
            .collect(),
    };
    let spaces = |n: u8| " ".repeat(usize::from(n));
    let mut s = word;
    s += &spaces(1 + (style >> 2 & 1) * 2);
    s += key;
    if let Some(t) = timeout {
        s += &spaces(1 + (style >> 3 & 1));
        s += t;
    }
    s += &spaces(style >> 4 & 3);
    s += "\r\n";
    s.into_bytes()
}

/// Maps arbitrary bytes onto an alphabet of almost-valid input, so noise
/// often lands next to a real syntax rule.
const NOISE: &[u8] = b"lockunLOCK ab19\r\n\r\n \t-\0\xff";

/// Checks the core on `data`. Byte 0 picks the limits; then each op is an
/// opcode byte (low nibble: the op; bits 4-6: the connection, of 8; bit 7:
/// a flag) and its arguments. See the match below for the ops.
pub fn check_core(data: &[u8]) {
    let mut b = Bytes::new(data);
    let config = core_config(b.u8());
    let start_us = match b.u8() % 4 {
        0 => 0,
        1 => u64::from(b.u16()),
        2 => 999,
        _ => 1 << 50,
    };
    let mut h = CoreHarness::new(config, start_us);
    while !b.is_empty() {
        let op = b.u8();
        let conn = usize::from(op >> 4 & 7);
        let flag = op & 0x80 != 0;
        match op & 0x0f {
            // A version 2 command (opening the connection if needed).
            0 if flag => {
                let arg = b.u8();
                let text = v2_command_text(arg, b.u8());
                h.send(conn, &text);
            }
            0 => {
                if !h.is_open(conn) {
                    h.open(conn)
                }
            }
            // lock KEY TIMEOUT; flag: split at a drawn point.
            1 | 2 => {
                let arg = b.u8();
                let style = b.u8();
                let text = command_text(
                    "lock",
                    KEYS[usize::from(arg & 7)],
                    Some(&timeout_text(arg >> 4)),
                    style,
                );
                send_maybe_split(&mut h, &mut b, conn, &text, flag);
            }
            3 => {
                let arg = b.u8();
                let text = command_text("unlock", KEYS[usize::from(arg & 7)], None, arg >> 3);
                send_maybe_split(&mut h, &mut b, conn, &text, flag);
            }
            // Raw bytes, as they are or mapped onto near-valid noise.
            4 => {
                let n = usize::from(b.u8() % 24);
                let raw = b.take(n);
                let bytes: Vec<u8> = if flag {
                    raw.to_vec()
                } else {
                    raw.iter()
                        .map(|&x| NOISE[usize::from(x) % NOISE.len()])
                        .collect()
                };
                h.send(conn, &bytes);
            }
            5 => h.close(conn),
            6 => h.advance(1 + u64::from(b.u8()) * if flag { 7 } else { 1 }),
            7 => h.advance(1000 * u64::from(b.u8() % 128)),
            // To the next deadline, or just before it.
            8 => match h.next_deadline_us() {
                Some(d) => {
                    let target = if flag { d.saturating_sub(1) } else { d };
                    h.advance(target.saturating_sub(h.now_us()));
                }
                None => h.tick(),
            },
            9 => {
                let arg = b.u8();
                let unit: u64 = match arg % 6 {
                    0 => 1_000_000,            // seconds
                    1 => 60_000_000,           // minutes
                    2 => 3_600_000_000,        // hours
                    3 => 86_400_000_000,       // days
                    4 => 365 * 86_400_000_000, // years
                    _ => 1_000 * (1 << 30),    // 2^30 ms
                };
                h.advance(unit * u64::from(1 + arg / 6 % 4));
            }
            // The clock moves, but the next thing the core hears is input.
            10 => {
                let us = match b.u8() {
                    x @ 0..=127 => u64::from(x) * 100,
                    x => u64::from(x - 128) * 1000 + 999,
                };
                h.advance_silently(us);
                if flag {
                    if let Some(d) = h.next_deadline_us() {
                        h.advance_silently(d.saturating_sub(h.now_us()));
                    }
                }
            }
            11 => h.sleep_until_poll_timeout(),
            // lock with a timeout from the data: u16, u64, or a long string.
            12 => {
                let arg = b.u8();
                let timeout = match arg >> 6 {
                    0 => b.u16().to_string(),
                    1 => u64::from_le_bytes(b.take(8).try_into().unwrap_or([9; 8])).to_string(),
                    2 => "9".repeat(usize::from(arg & 63)),
                    _ => format!("{}{}", "0".repeat(usize::from(arg & 15)), b.u8()),
                };
                let text = command_text("lock", KEYS[usize::from(arg & 7)], Some(&timeout), arg);
                send_maybe_split(&mut h, &mut b, conn, &text, flag);
            }
            // A pipelined burst of commands in one write.
            13 => {
                let n = 1 + b.u8() % 8;
                let mut burst = Vec::new();
                for _ in 0..n {
                    let arg = b.u8();
                    let key = KEYS[usize::from(arg & 3)];
                    burst.extend(if arg & 0x80 == 0 {
                        command_text("lock", key, Some(&timeout_text(arg >> 3 & 7)), arg)
                    } else {
                        command_text("unlock", key, None, arg)
                    });
                }
                send_maybe_split(&mut h, &mut b, conn, &burst, flag);
            }
            14 => h.tick(),
            // Reopen-heavy: close and immediately reopen the id.
            _ => {
                h.close(conn);
                h.open(conn);
            }
        }
    }
    // Finally everybody leaves: nothing may stay held or queued.
    for c in 0..8 {
        h.close(c);
    }
    assert_eq!(h.core().keys_held(), 0);
    assert_eq!(h.core().waiters(), 0);
    assert_eq!(h.core().poll_timeout(), None);
}

/// Labels the core fuzzer names connections with: ordinary ones, one of
/// exactly 64 bytes (the longest allowed) and one of 65 (`e name too long`).
fn label_text(i: u8) -> String {
    match i % 4 {
        0 => "job-1".into(),
        1 => "host.example/42:cron_x".into(),
        2 => "L".repeat(crate::wire::MAX_LABEL_BYTES),
        _ => "L".repeat(crate::wire::MAX_LABEL_BYTES + 1),
    }
}

/// Semaphore sizes around the bounds: absent (1), 1, 2, 3, 0 and 65536 (bad),
/// 65535, and a digit string past `u32`.
fn limit_text(i: u8) -> Option<String> {
    match i % 8 {
        0 => None,
        1 => Some("1".into()),
        2 | 3 => Some("2".into()),
        4 => Some("3".into()),
        5 => Some(["0", "65536"][usize::from(i / 8 % 2)].into()),
        6 => Some(MAX_LIMIT.to_string()),
        _ => Some("99999999999".into()),
    }
}

/// A version 2 command from two data bytes: `arg`'s low 3 bits pick the
/// command, the rest and `x` its arguments.
fn v2_command_text(arg: u8, x: u8) -> Vec<u8> {
    let key = KEYS[usize::from(x & 7)];
    let style = x >> 3;
    let word_text = |word: &str, rest: &str| command_text(word, rest, None, style);
    match arg & 7 {
        // acquire KEY T [N]
        0 | 7 => {
            let mut t = timeout_text(x >> 4);
            if let Some(n) = limit_text(arg >> 3) {
                t = format!("{t} {n}");
            }
            command_text("acquire", key, Some(&t), arg >> 3)
        }
        1 => word_text("info", key),
        // `stats` and spaces (`command_text` puts one or more after the
        // word, before the empty key): `stats *SP` allows them.
        2 => command_text("stats", "", None, style),
        3 => word_text("name", &label_text(arg >> 3)),
        4 => word_text("auth", MODEL_SECRET),
        5 => match arg >> 3 & 3 {
            0 => word_text("auth", "wrong"),
            1 => word_text("auth", &"s".repeat(crate::wire::MAX_SECRET_BYTES + 1)),
            2 => word_text("auth", &MODEL_SECRET[..MODEL_SECRET.len() - 1]),
            _ => word_text("auth", &format!("{MODEL_SECRET}x")),
        },
        _ => word_text("evict", key),
    }
}

fn send_maybe_split(h: &mut CoreHarness, b: &mut Bytes<'_>, conn: usize, text: &[u8], split: bool) {
    if split {
        let at = usize::from(b.u8()) % (text.len() + 1);
        h.send_split(conn, text, at);
    } else {
        h.send(conn, text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(line: &str) -> RefLine {
        reference_line(line.as_bytes(), DEFAULT_MAX_LINE_BYTES)
    }

    #[test]
    fn reference_recognizer() {
        assert_eq!(
            cmd("LoCk  k1  5 \r\nx"),
            RefLine::Command(Command::Lock { timeout_ms: 5 }, b"k1".to_vec(), 14)
        );
        assert_eq!(
            cmd("unlock a\r\n"),
            RefLine::Command(Command::Unlock, b"a".to_vec(), 10)
        );
        assert_eq!(
            cmd("lock a 99999999999999999999\r\n"),
            RefLine::Command(
                Command::Lock {
                    timeout_ms: u64::MAX
                },
                b"a".to_vec(),
                29
            )
        );
        assert_eq!(cmd(""), RefLine::Pending);
        assert_eq!(cmd("unl"), RefLine::Pending);
        assert_eq!(cmd("lock a 1\r"), RefLine::Pending);
        let bad = |byte, offset| RefLine::Error(RefError::Unexpected { byte, offset });
        assert_eq!(cmd("lock a\r\n"), bad(b'\r', 6));
        assert_eq!(cmd("lock a 1\n"), bad(b'\n', 8));
        assert_eq!(cmd(" lock"), bad(b' ', 0));
        assert_eq!(cmd("locka"), bad(b'a', 4));
        assert_eq!(cmd("unlock a 1"), bad(b'1', 9));
        assert_eq!(cmd("lock a 1\r\r\n"), bad(b'\r', 9));
        assert_eq!(
            reference_line(b"lock abcdefgh 1\r\n", 16),
            RefLine::Error(RefError::TooLong { max: 16 })
        );
        assert_eq!(
            reference_line(b"lock abcdefg 1\r\n", 16),
            RefLine::Command(Command::Lock { timeout_ms: 1 }, b"abcdefg".to_vec(), 16)
        );
        // A bad byte past the limit: the limit comes first.
        assert_eq!(
            reference_line(b"lock abcdefghijk-", 16),
            RefLine::Error(RefError::TooLong { max: 16 })
        );
        assert_eq!(reference_line(b"lock abcdefghijk", 16), RefLine::Pending);
    }

    #[test]
    fn checks_run_on_empty_and_tiny_inputs() {
        for data in [&b""[..], b"\x00", b"\xff\xff", b"\x01\x02\x03"] {
            check_parser(data);
            check_core(data);
            check_timer(data);
        }
    }
}
