//! Resumable parser for the dreadlock wire grammar.
//!
//! The grammar (the contract in `PROTOCOL.md` at the repository root, which
//! mirrors the original's ragel machine and adds the version 2 commands):
//!
//! ```text
//! line    = ( lock / unlock / acquire / info / stats / name / auth / evict ) CRLF
//! lock    = "lock"    1*SP key 1*SP timeout *SP     ; command words case-insensitive
//! unlock  = "unlock"  1*SP key *SP                  ; "LOCK", "Unlock", ... all valid
//! acquire = "acquire" 1*SP key 1*SP timeout [1*SP limit] *SP
//! info    = "info"    1*SP key *SP
//! stats   = "stats"   *SP
//! name    = "name"    1*SP label *SP
//! auth    = "auth"    1*SP secret *SP
//! evict   = "evict"   1*SP key *SP
//! key     = 1*( ALPHA / DIGIT )                     ; case-sensitive
//! timeout = 1*DIGIT                                 ; milliseconds, decimal
//! limit   = 1*DIGIT                                 ; semaphore size
//! label   = 1*( ALPHA / DIGIT / "-" / "_" / "." / ":" / "/" )
//! secret  = 1*( ALPHA / DIGIT / "-" / "_" / "." / "+" / "/" / "=" )
//! SP      = %x20                                    ; a space only: no tabs
//! CRLF    = %x0D %x0A                               ; a bare LF is a syntax error
//! ```
//!
//! Nothing else is accepted: no leading spaces, no empty lines, no tabs, no
//! bare LF, nothing after the last token but spaces and CRLF. A timeout too
//! large for a `u64` saturates at `u64::MAX` (it means "wait until granted or
//! disconnected"), and a limit too large for a `u32` saturates at
//! `u32::MAX` (the core answers it `e bad limit`), so no digit string can
//! panic or wrap.
//!
//! The lengths of a label and a secret are not grammar: a label over
//! [`MAX_LABEL_BYTES`] is `e name too long` and
//! a secret over [`MAX_SECRET_BYTES`] is
//! `e auth failed` (PROTOCOL.md, rules V3, V4 and V6). The parser keeps at most
//! that many bytes of either and reports the rest only as `too_long`, so
//! what it buffers stays bounded; the line limit still applies to the whole
//! line.
//!
//! The parser is a byte-at-a-time state machine (the private `State` enum)
//! that keeps all of its progress in itself, so input may be split anywhere:
//! feeding a stream whole, byte by byte or in any chunks gives the same
//! commands and the same error. The usual lines (`lock`, `unlock` and
//! `acquire` with one space between fields) also have shortcuts through the
//! same machine: a whole line in one step when it is all in the input, the
//! command word by one 8-byte compare, key bytes tested eight at a time.
//! Each shortcut does exactly what stepping through its bytes would do, and
//! is taken only when it can. [`Parser::advance`] stops after each complete
//! command and leaves the rest of the input unconsumed, because a connection
//! whose `lock` waits must not run its later commands until that lock
//! resolves.
//!
//! Every line is bounded by `max_line_bytes` (CR and LF included), so a client
//! cannot make the parser buffer an unbounded key. The only buffered data is
//! the argument (key, label or secret), in a `Vec` reused from command to
//! command; its retained capacity is capped at [`RETAINED_KEY_CAPACITY`] so
//! that one huge key does not pin memory for the rest of a connection's life.

use std::fmt;

use crate::wire::{self, MAX_LABEL_BYTES, MAX_SECRET_BYTES, Verb};

/// Default maximum command line length in bytes, CRLF included (the original's
/// buffer: the C daemon read commands into a 10,000-byte buffer and a longer
/// line could never parse).
pub const DEFAULT_MAX_LINE_BYTES: usize = crate::wire::DEFAULT_MAX_LINE_BYTES;

/// Smallest accepted line limit; [`Parser::new`] raises smaller values to it.
/// The shortest valid lines (`lock a 0\r\n`, `unlock a\r\n`) are 10 bytes, so
/// a limit below this would make the daemon useless rather than safer.
pub const MIN_MAX_LINE_BYTES: usize = 16;

/// Key buffer capacity kept between commands. Past it the buffer is shrunk
/// after the command, so memory held per idle connection stays small even
/// after a client sent a key of many kilobytes. Typical keys fit, so the
/// steady state allocates nothing. At least [`MAX_SECRET_BYTES`], so the
/// longest argument that is not a key never reallocates either.
pub const RETAINED_KEY_CAPACITY: usize = 256;

const _: () = assert!(RETAINED_KEY_CAPACITY >= MAX_SECRET_BYTES);

/// Smallest allocation made for a key, so that a stream of slightly growing
/// short keys does not reallocate for each one.
const MIN_KEY_CAPACITY: usize = 16;

/// A complete, syntactically valid command. Its key (or label, or secret) is
/// read with [`Parser::key`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `lock <key> <timeout>`: `timeout_ms` saturates at `u64::MAX`.
    Lock { timeout_ms: u64 },
    /// `unlock <key>`.
    Unlock,
    /// `acquire <key> <timeout> [<limit>]`: `limit` is 1 when absent and
    /// saturates at `u32::MAX`; the core checks its range.
    Acquire { timeout_ms: u64, limit: u32 },
    /// `info <key>`.
    Info,
    /// `stats`; [`Parser::key`] is empty.
    Stats,
    /// `name <label>`: [`Parser::key`] is the label, or its first
    /// [`MAX_LABEL_BYTES`] bytes when `too_long`.
    Name { too_long: bool },
    /// `auth <secret>`: [`Parser::key`] is the secret, or its first
    /// [`MAX_SECRET_BYTES`] bytes when `too_long`.
    Auth { too_long: bool },
    /// `evict <key>`.
    Evict,
}

impl Command {
    /// The command word, for the daemon's counters.
    pub const fn verb(self) -> Verb {
        use Verb as V;
        match self {
            Command::Lock { .. } => V::Lock,
            Command::Unlock => V::Unlock,
            Command::Acquire { .. } => V::Acquire,
            Command::Info => V::Info,
            Command::Stats => V::Stats,
            Command::Name { .. } => V::Name,
            Command::Auth { .. } => V::Auth,
            Command::Evict => V::Evict,
        }
    }
}

/// Why a line is a syntax error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// A byte the grammar does not allow at this point.
    UnexpectedByte {
        byte: u8,
        /// Offset of the byte within its line (0 = first byte of the line).
        offset: usize,
        /// What the grammar allows at this point.
        expected: Expected,
    },
    /// The line grew past the configured maximum without a CRLF.
    LineTooLong { max: usize },
}

/// What the grammar allows where an unexpected byte was found. Each variant
/// names the whole set of bytes valid at that point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// A command word (any case).
    CommandWord,
    /// The space that must follow the command word.
    Space,
    /// A key byte or a space: before the key, or inside a `lock`/`acquire`
    /// key.
    KeyOrSpace,
    /// A key byte, a space or CR: inside an `unlock`, `info` or `evict` key.
    KeyOrSpaceOrCr,
    /// A timeout digit or a space: after a `lock`/`acquire` key.
    TimeoutOrSpace,
    /// A timeout digit, a space or CR: inside the timeout.
    TimeoutOrSpaceOrCr,
    /// A limit digit, a space or CR: after an `acquire` timeout, or inside
    /// the limit.
    LimitOrSpaceOrCr,
    /// A label byte or a space: before a `name` label.
    LabelOrSpace,
    /// A label byte, a space or CR: inside a `name` label.
    LabelOrSpaceOrCr,
    /// A secret byte or a space: before an `auth` secret.
    SecretOrSpace,
    /// A secret byte, a space or CR: inside an `auth` secret.
    SecretOrSpaceOrCr,
    /// A trailing space or CR: after the last token (or after `stats`).
    SpaceOrCr,
    /// The LF that must follow CR.
    Lf,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expected::CommandWord => {
                "a command word (lock, unlock, acquire, info, stats, name, auth, evict)"
            }
            Expected::Space => "a space",
            Expected::KeyOrSpace => "a key byte (A-Z, a-z, 0-9) or a space",
            Expected::KeyOrSpaceOrCr => "a key byte (A-Z, a-z, 0-9), a space or CR",
            Expected::TimeoutOrSpace => "a timeout digit or a space",
            Expected::TimeoutOrSpaceOrCr => "a timeout digit, a space or CR",
            Expected::LimitOrSpaceOrCr => "a limit digit, a space or CR",
            Expected::LabelOrSpace => "a label byte (A-Z, a-z, 0-9, - _ . : /) or a space",
            Expected::LabelOrSpaceOrCr => "a label byte (A-Z, a-z, 0-9, - _ . : /), a space or CR",
            Expected::SecretOrSpace => "a secret byte (A-Z, a-z, 0-9, - _ . + / =) or a space",
            Expected::SecretOrSpaceOrCr => {
                "a secret byte (A-Z, a-z, 0-9, - _ . + / =), a space or CR"
            }
            Expected::SpaceOrCr => "a space or CR",
            Expected::Lf => "LF after CR",
        })
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::UnexpectedByte {
                byte,
                offset,
                expected,
            } => write!(
                f,
                "unexpected byte 0x{byte:02x} at offset {offset} (expected {expected})"
            ),
            ParseError::LineTooLong { max } => write!(f, "line longer than {max} bytes"),
        }
    }
}

impl std::error::Error for ParseError {}

/// The outcome of [`Parser::advance`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// All input consumed; the command is not complete yet.
    Pending,
    /// A command ended at the last consumed byte (its LF).
    Done(Command),
    /// A syntax error; the parser stays failed.
    Error(ParseError),
}

/// The lookups the state machine needs on the command word being matched
/// (the wire's [`Verb`]).
impl Verb {
    /// The word whose first `matched` bytes are `self`'s and whose next byte
    /// is `lower`: `self` on the hot path, another word where two share a
    /// prefix (`acquire` and `auth`).
    fn next(self, matched: usize, lower: u8) -> Option<Verb> {
        let word = self.word().as_bytes();
        if word.get(matched) == Some(&lower) {
            return Some(self);
        }
        let prefix = word.get(..matched)?;
        Verb::ALL.into_iter().find(|v| {
            let w = v.word().as_bytes();
            w.starts_with(prefix) && w.get(matched) == Some(&lower)
        })
    }

    /// The verb whose word starts with `lower`.
    fn first(lower: u8) -> Option<Verb> {
        match lower {
            b'l' => Some(Verb::Lock),
            b'u' => Some(Verb::Unlock),
            b'a' => Some(Verb::Acquire),
            b'i' => Some(Verb::Info),
            b's' => Some(Verb::Stats),
            b'n' => Some(Verb::Name),
            b'e' => Some(Verb::Evict),
            _ => None,
        }
    }

    /// The command of a verb whose only argument is a key.
    const fn key_command(self) -> Command {
        match self {
            Verb::Info => Command::Info,
            Verb::Evict => Command::Evict,
            _ => Command::Unlock,
        }
    }
}

/// What the argument after the word is, for the states that read one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ArgKind {
    /// A `name` label.
    Label,
    /// An `auth` secret.
    Secret,
}

impl ArgKind {
    const fn accepts(self, b: u8) -> bool {
        match self {
            ArgKind::Label => wire::is_label_byte(b),
            ArgKind::Secret => wire::is_secret_byte(b),
        }
    }

    const fn max_bytes(self) -> usize {
        match self {
            ArgKind::Label => MAX_LABEL_BYTES,
            ArgKind::Secret => MAX_SECRET_BYTES,
        }
    }

    const fn command(self, too_long: bool) -> Command {
        match self {
            ArgKind::Label => Command::Name { too_long },
            ArgKind::Secret => Command::Auth { too_long },
        }
    }
}

/// Where the parser is within a line. Each state lists what it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At a line boundary. Accepts the first letter of a command word (any
    /// case).
    Start,
    /// Inside the command word; `matched` bytes of it seen,
    /// INVARIANT: `1 <= matched < verb.word().len()`.
    /// Accepts the next byte of this word, or of another word with the same
    /// `matched`-byte prefix (any case).
    Word { verb: Verb, matched: u8 },
    /// The whole word seen. Accepts exactly one space; after `stats`, a
    /// space or CR.
    AfterWord { verb: Verb },
    /// One or more spaces after a word that takes a key. Accepts spaces or a
    /// key byte.
    BeforeKey { verb: Verb },
    /// Inside the key (its bytes are in `Parser::key`). Accepts key bytes or
    /// a space; `unlock`, `info` and `evict` also accept CR.
    Key { verb: Verb },
    /// `lock`/`acquire`: one or more spaces after the key. Accepts spaces or
    /// a digit.
    BeforeTimeout { verb: Verb },
    /// `lock`/`acquire`: inside the timeout. Accepts digits, a space or CR.
    Timeout { verb: Verb, timeout_ms: u64 },
    /// `acquire`: one or more spaces after the timeout. Accepts spaces, a
    /// limit digit or CR.
    BeforeLimit { timeout_ms: u64 },
    /// `acquire`: inside the limit. Accepts digits, a space or CR.
    Limit { timeout_ms: u64, limit: u32 },
    /// One or more spaces after `name`/`auth`. Accepts spaces or an argument
    /// byte of `kind`.
    BeforeArg { kind: ArgKind },
    /// Inside a label or secret; its first `kind.max_bytes()` bytes are in
    /// `Parser::key`, `too_long` once there were more.
    /// Accepts argument bytes, a space or CR.
    Arg { kind: ArgKind, too_long: bool },
    /// Spaces after the last token. Accepts spaces or CR.
    Trailing { cmd: Command },
    /// CR seen. Accepts LF only, which completes `cmd`.
    Cr { cmd: Command },
}

impl State {
    /// What this state accepts, for error reports.
    fn expected(self) -> Expected {
        match self {
            State::Start | State::Word { .. } => Expected::CommandWord,
            State::AfterWord { verb: Verb::Stats } => Expected::SpaceOrCr,
            State::AfterWord { .. } => Expected::Space,
            State::BeforeKey { .. }
            | State::Key {
                verb: Verb::Lock | Verb::Acquire,
            } => Expected::KeyOrSpace,
            State::Key { .. } => Expected::KeyOrSpaceOrCr,
            State::BeforeTimeout { .. } => Expected::TimeoutOrSpace,
            State::Timeout { .. } => Expected::TimeoutOrSpaceOrCr,
            State::BeforeLimit { .. } | State::Limit { .. } => Expected::LimitOrSpaceOrCr,
            State::BeforeArg {
                kind: ArgKind::Label,
            } => Expected::LabelOrSpace,
            State::BeforeArg {
                kind: ArgKind::Secret,
            } => Expected::SecretOrSpace,
            State::Arg {
                kind: ArgKind::Label,
                ..
            } => Expected::LabelOrSpaceOrCr,
            State::Arg {
                kind: ArgKind::Secret,
                ..
            } => Expected::SecretOrSpaceOrCr,
            State::Trailing { .. } => Expected::SpaceOrCr,
            State::Cr { .. } => Expected::Lf,
        }
    }
}

/// Appends one decimal digit, saturating.
fn digit_u64(acc: u64, byte: u8) -> u64 {
    acc.saturating_mul(10)
        .saturating_add(u64::from(byte - b'0'))
}

/// [`wire::is_key_byte`] for every byte value, as a table.
static KEY_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = wire::is_key_byte(b as u8);
        b += 1;
    }
    t
};

/// How many of `bytes`' first bytes are key bytes: eight at a time while
/// eight are left, then by the table.
#[inline]
fn key_run(bytes: &[u8]) -> usize {
    let mut n = 0;
    while let Some(chunk) = bytes.get(n..).and_then(<[u8]>::first_chunk::<8>) {
        let not_key = not_key_bytes(u64::from_le_bytes(*chunk));
        if not_key != 0 {
            // Little-endian: the lowest flagged byte is the first.
            return n + (not_key.trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    n + bytes
        .get(n..)
        .unwrap_or_default()
        .iter()
        .position(|&b| !KEY_BYTES[usize::from(b)])
        .unwrap_or(bytes.len() - n)
}

/// Bit 7 of each byte of `w` set where that byte is not a key byte
/// (`[0-9A-Za-z]`), the others zero. Each range test adds to 7-bit bytes
/// only, so no carry crosses a byte: `x + (0x80 - lo)` has bit 7 set iff
/// `x >= lo`, and `x + (0x7f - hi)` iff `x > hi`. Letters are tested in
/// lower case (`| 0x20`); bytes with bit 7 set are never key bytes.
#[inline]
const fn not_key_bytes(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x80 * ONES;
    let low = w & !HIGH;
    let digit = (low + 0x50 * ONES) & !(low + 0x46 * ONES);
    let lower = low | (0x20 * ONES);
    let letter = (lower + 0x1f * ONES) & !(lower + 0x05 * ONES);
    !((digit | letter) & !w) & HIGH
}

/// Appends one decimal digit, saturating.
fn digit_u32(acc: u32, byte: u8) -> u32 {
    acc.saturating_mul(10)
        .saturating_add(u32::from(byte - b'0'))
}

/// A resumable parser for one connection's command stream.
#[derive(Clone, Debug)]
pub struct Parser {
    state: State,
    /// Set once a syntax error is found; from then on every `advance`
    /// returns it. INVARIANT: when set, `state == Start`, `key` is empty.
    failed: Option<ParseError>,
    /// Bytes of the current line consumed so far.
    /// INVARIANT: `line_len <= max_line_bytes`.
    line_len: usize,
    /// INVARIANT: `max_line_bytes >= MIN_MAX_LINE_BYTES`.
    max_line_bytes: usize,
    /// The argument (key, label or secret) of the line being parsed, or of
    /// the command just returned.
    /// INVARIANT: `key.len() <= line_len`, or `key_ready` (then the key
    /// belongs to the previous line); its capacity never exceeds
    /// `max(max_line_bytes, RETAINED_KEY_CAPACITY)`; in state `Arg`, at most
    /// `kind.max_bytes()` bytes.
    key: Vec<u8>,
    /// The last `advance` returned `Done` and `key` holds that command's key;
    /// the next `advance` recycles it.
    key_ready: bool,
}

impl Parser {
    /// A parser at a line boundary that rejects lines longer than
    /// `max_line_bytes` (CR and LF included). Values below
    /// [`MIN_MAX_LINE_BYTES`] are raised to it. Allocates nothing.
    pub fn new(max_line_bytes: usize) -> Self {
        Parser {
            state: State::Start,
            failed: None,
            line_len: 0,
            max_line_bytes: max_line_bytes.max(MIN_MAX_LINE_BYTES),
            key: Vec::new(),
            key_ready: false,
        }
    }

    /// Feeds bytes. Returns how many bytes were consumed and the outcome:
    ///
    /// - `Done(cmd)`: consumed up to and including the LF that ended the
    ///   command; the remaining bytes are not consumed (the caller feeds them
    ///   later). The key is available via [`key`](Self::key) until the next
    ///   `advance` call.
    /// - `Pending`: all input consumed, the command is incomplete; the state
    ///   is kept, so the next call resumes exactly where this one stopped.
    /// - `Error(e)`: consumed up to, not including, the offending byte (for
    ///   `LineTooLong`, the byte that would have made the line one byte too
    ///   long). The parser stays failed: every later call returns the same
    ///   error and consumes nothing.
    pub fn advance(&mut self, input: &[u8]) -> (usize, Step) {
        if let Some(e) = self.failed {
            return (0, Step::Error(e));
        }
        if self.key_ready {
            self.recycle_key();
        }
        let mut used = 0;
        while let Some(&byte) = input.get(used) {
            // Hot path: a run of key bytes goes into the buffer in one copy
            // (bounded by the line limit) instead of one push per byte. A
            // plain scan beats memchr here: the run's end is "any non-alnum
            // byte", and typical keys are a few dozen bytes.
            // The first key byte after the spaces (`BeforeKey`) starts the
            // run too: stepping would push it and enter `Key` just the same.
            let key_verb = match self.state {
                State::Key { verb } | State::BeforeKey { verb } => Some(verb),
                _ => None,
            };
            if let Some(verb) =
                key_verb.filter(|_| wire::is_key_byte(byte) && self.line_len < self.max_line_bytes)
            {
                self.state = State::Key { verb };
                let room = self.max_line_bytes - self.line_len;
                let rest = input.get(used..).unwrap_or_default();
                let rest = rest.get(..room).unwrap_or(rest);
                let run = key_run(rest);
                self.push_key(rest.get(..run).unwrap_or_default());
                self.line_len += run;
                used += run;
                continue;
            }
            // Hot path: the usual end of a line after its key, ` <digits>\r\n`
            // for `lock`/`acquire` or `\r\n` for the others, completes the
            // command in one step. Exactly what stepping through it would
            // do: taken only when the whole tail is in `input` and within
            // the line limit, else the states below take it byte by byte.
            if let State::Key { verb } = self.state {
                let rest = input.get(used..).unwrap_or_default();
                if let Some((cmd, n)) = Self::hot_tail(verb, rest) {
                    if self.line_len + n <= self.max_line_bytes {
                        self.state = State::Start;
                        self.line_len = 0;
                        self.key_ready = true;
                        self.check_invariants();
                        return (used + n, Step::Done(cmd));
                    }
                }
            }
            // Hot path: a whole `lock `, `unlock ` or `acquire ` at the start
            // of a line skips the word states in one step. Exactly what
            // stepping through them would do: the word (any case) and its
            // space are all valid, and they fit in any line limit (>= 16
            // bytes). When the key and the usual tail follow in `input`
            // too, and the whole line is within the limit, the command is
            // done in this one step (the key run and the tail are the two
            // hot paths above, taken at once).
            if self.state == State::Start {
                let rest = input.get(used..).unwrap_or_default();
                if let Some((verb, n)) = Self::hot_word(rest) {
                    let after = rest.get(n..).unwrap_or_default();
                    let key_len = key_run(after);
                    if key_len > 0 {
                        let tail = after.get(key_len..).unwrap_or_default();
                        if let Some((cmd, t)) = Self::hot_tail(verb, tail) {
                            let line = n + key_len + t;
                            if line <= self.max_line_bytes {
                                self.push_key(after.get(..key_len).unwrap_or_default());
                                self.key_ready = true;
                                self.check_invariants();
                                return (used + line, Step::Done(cmd));
                            }
                        }
                    }
                    self.state = State::BeforeKey { verb };
                    self.line_len = n;
                    used += n;
                    continue;
                }
            }
            if self.line_len >= self.max_line_bytes {
                let max = self.max_line_bytes;
                return self.fail(used, ParseError::LineTooLong { max });
            }
            match self.step(byte) {
                Ok(None) => {
                    self.line_len += 1;
                    used += 1;
                }
                Ok(Some(cmd)) => {
                    self.line_len = 0;
                    self.key_ready = true;
                    self.check_invariants();
                    return (used + 1, Step::Done(cmd));
                }
                Err(expected) => {
                    let offset = self.line_len;
                    let e = ParseError::UnexpectedByte {
                        byte,
                        offset,
                        expected,
                    };
                    return self.fail(used, e);
                }
            }
        }
        self.check_invariants();
        (used, Step::Pending)
    }

    /// The argument of the command the last [`advance`](Self::advance)
    /// returned as `Done`: the key, the label of `name` or the secret of
    /// `auth` (empty for `stats`). Only meaningful right after `Done`: at
    /// other times it is the part parsed so far, or empty.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// True if no partial command is buffered: the parser is at a line
    /// boundary and has not failed.
    pub fn is_idle(&self) -> bool {
        self.failed.is_none() && self.state == State::Start && self.line_len == 0
    }

    /// Bytes of heap held (the key buffer's capacity), for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.key.capacity()
    }

    /// `lock `, `unlock ` or `acquire ` (the word in any case, then a
    /// space) at the start of `input`: the verb and the bytes it takes.
    #[inline]
    fn hot_word(input: &[u8]) -> Option<(Verb, usize)> {
        const _: () = assert!(MIN_MAX_LINE_BYTES >= b"acquire ".len());
        // Eight bytes at once: OR-ing 0x20 into a letter's byte gives its
        // lower case, and only that letter's two cases give it, so the
        // masked compare is exactly the case-insensitive one; the space is
        // compared as it is. Shorter input is padded with zero bytes, which
        // match neither a letter nor the space.
        let head = match input.first_chunk::<8>() {
            Some(head) => *head,
            // Shorter than the shortest word and its space (`lock `).
            None if input.len() < 5 => return None,
            None => {
                let mut head = [0u8; 8];
                head[..input.len()].copy_from_slice(input);
                head
            }
        };
        let w = u64::from_le_bytes(head);
        let word = |text: &[u8; 8], letters: usize| {
            let len = letters + 1;
            let keep = u64::MAX >> (64 - 8 * len);
            let case = 0x2020_2020_2020_2020 >> (64 - 8 * letters);
            (w | case) & keep == u64::from_le_bytes(*text) & keep
        };
        if word(b"lock    ", 4) {
            Some((Verb::Lock, 5))
        } else if word(b"unlock  ", 6) {
            Some((Verb::Unlock, 7))
        } else if word(b"acquire ", 7) {
            Some((Verb::Acquire, 8))
        } else {
            None
        }
    }

    /// The end of a line in state `Key { verb }`: ` <digits>\r\n` (one
    /// space) for `lock`/`acquire`, `\r\n` for the verbs whose key may end
    /// the line; the command and the bytes it takes. `None` for anything
    /// else (more spaces, a limit, a partial tail), which the states parse.
    #[inline]
    fn hot_tail(verb: Verb, input: &[u8]) -> Option<(Command, usize)> {
        match verb {
            Verb::Lock | Verb::Acquire => {
                let digits = input.strip_prefix(b" ")?;
                let len = digits.iter().position(|b| !b.is_ascii_digit())?;
                if len == 0 || digits.get(len..len + 2)? != b"\r\n" {
                    return None;
                }
                let timeout_ms = digits[..len].iter().fold(0, |t, &d| digit_u64(t, d));
                let cmd = if verb == Verb::Lock {
                    Command::Lock { timeout_ms }
                } else {
                    Command::Acquire {
                        timeout_ms,
                        limit: 1,
                    }
                };
                Some((cmd, 1 + len + 2))
            }
            _ if input.starts_with(b"\r\n") => Some((verb.key_command(), 2)),
            _ => None,
        }
    }

    /// One transition. Returns the command when `byte` completed it, or what
    /// the current state would have accepted when `byte` is not allowed (the
    /// state is then unchanged).
    fn step(&mut self, byte: u8) -> Result<Option<Command>, Expected> {
        let next = match self.state {
            State::Start => match Verb::first(byte.to_ascii_lowercase()) {
                Some(verb) => State::Word { verb, matched: 1 },
                None => return Err(Expected::CommandWord),
            },
            State::Word { verb, matched } => {
                let Some(verb) = verb.next(usize::from(matched), byte.to_ascii_lowercase()) else {
                    return Err(Expected::CommandWord);
                };
                // `matched < word.len() <= 7`: no overflow.
                let matched = matched + 1;
                if usize::from(matched) == verb.word().len() {
                    State::AfterWord { verb }
                } else {
                    State::Word { verb, matched }
                }
            }
            State::AfterWord { verb } => match (verb, byte) {
                (Verb::Stats, b' ') => State::Trailing {
                    cmd: Command::Stats,
                },
                (Verb::Stats, b'\r') => State::Cr {
                    cmd: Command::Stats,
                },
                (Verb::Name, b' ') => State::BeforeArg {
                    kind: ArgKind::Label,
                },
                (Verb::Auth, b' ') => State::BeforeArg {
                    kind: ArgKind::Secret,
                },
                (_, b' ') => State::BeforeKey { verb },
                _ => return Err(self.state.expected()),
            },
            State::BeforeKey { verb } => match byte {
                b' ' => State::BeforeKey { verb },
                _ if wire::is_key_byte(byte) => {
                    self.push_key(&[byte]);
                    State::Key { verb }
                }
                _ => return Err(Expected::KeyOrSpace),
            },
            State::Key { verb } => match (verb, byte) {
                _ if wire::is_key_byte(byte) => {
                    self.push_key(&[byte]);
                    State::Key { verb }
                }
                (Verb::Lock | Verb::Acquire, b' ') => State::BeforeTimeout { verb },
                (Verb::Lock | Verb::Acquire, _) => return Err(Expected::KeyOrSpace),
                (_, b' ') => State::Trailing {
                    cmd: verb.key_command(),
                },
                (_, b'\r') => State::Cr {
                    cmd: verb.key_command(),
                },
                _ => return Err(Expected::KeyOrSpaceOrCr),
            },
            State::BeforeTimeout { verb } => match byte {
                b' ' => State::BeforeTimeout { verb },
                b'0'..=b'9' => State::Timeout {
                    verb,
                    timeout_ms: u64::from(byte - b'0'),
                },
                _ => return Err(Expected::TimeoutOrSpace),
            },
            State::Timeout { verb, timeout_ms } => match (verb, byte) {
                (_, b'0'..=b'9') => State::Timeout {
                    verb,
                    timeout_ms: digit_u64(timeout_ms, byte),
                },
                (Verb::Acquire, b' ') => State::BeforeLimit { timeout_ms },
                (Verb::Acquire, b'\r') => State::Cr {
                    cmd: Command::Acquire {
                        timeout_ms,
                        limit: 1,
                    },
                },
                (_, b' ') => State::Trailing {
                    cmd: Command::Lock { timeout_ms },
                },
                (_, b'\r') => State::Cr {
                    cmd: Command::Lock { timeout_ms },
                },
                _ => return Err(Expected::TimeoutOrSpaceOrCr),
            },
            State::BeforeLimit { timeout_ms } => match byte {
                b' ' => State::BeforeLimit { timeout_ms },
                b'0'..=b'9' => State::Limit {
                    timeout_ms,
                    limit: u32::from(byte - b'0'),
                },
                b'\r' => State::Cr {
                    cmd: Command::Acquire {
                        timeout_ms,
                        limit: 1,
                    },
                },
                _ => return Err(Expected::LimitOrSpaceOrCr),
            },
            State::Limit { timeout_ms, limit } => match byte {
                b'0'..=b'9' => State::Limit {
                    timeout_ms,
                    limit: digit_u32(limit, byte),
                },
                b' ' => State::Trailing {
                    cmd: Command::Acquire { timeout_ms, limit },
                },
                b'\r' => State::Cr {
                    cmd: Command::Acquire { timeout_ms, limit },
                },
                _ => return Err(Expected::LimitOrSpaceOrCr),
            },
            State::BeforeArg { kind } => match byte {
                b' ' => State::BeforeArg { kind },
                _ if kind.accepts(byte) => {
                    self.push_key(&[byte]);
                    State::Arg {
                        kind,
                        too_long: false,
                    }
                }
                _ => return Err(self.state.expected()),
            },
            State::Arg { kind, too_long } => match byte {
                _ if kind.accepts(byte) => {
                    // Keep the first `max_bytes`; past them only remember
                    // that there were more.
                    let too_long = too_long || self.key.len() >= kind.max_bytes();
                    if !too_long {
                        self.push_key(&[byte]);
                    }
                    State::Arg { kind, too_long }
                }
                b' ' => State::Trailing {
                    cmd: kind.command(too_long),
                },
                b'\r' => State::Cr {
                    cmd: kind.command(too_long),
                },
                _ => return Err(self.state.expected()),
            },
            State::Trailing { cmd } => match byte {
                b' ' => State::Trailing { cmd },
                b'\r' => State::Cr { cmd },
                _ => return Err(Expected::SpaceOrCr),
            },
            State::Cr { cmd } => match byte {
                b'\n' => {
                    self.state = State::Start;
                    return Ok(Some(cmd));
                }
                _ => return Err(Expected::Lf),
            },
        };
        self.state = next;
        Ok(None)
    }

    /// Appends key bytes. Grows the buffer geometrically but never past the
    /// line limit, so a maximal key costs at most `max_line_bytes` of heap.
    fn push_key(&mut self, bytes: &[u8]) {
        // Both terms are bounded by `max_line_bytes`: no overflow.
        let needed = self.key.len() + bytes.len();
        if needed > self.key.capacity() {
            let target = self
                .key
                .capacity()
                .saturating_mul(2)
                .max(MIN_KEY_CAPACITY)
                .min(self.max_line_bytes)
                .max(needed);
            self.key.reserve_exact(target - self.key.len());
        }
        self.key.extend_from_slice(bytes);
    }

    /// Drops the previous command's key, keeping at most
    /// [`RETAINED_KEY_CAPACITY`] of its buffer.
    fn recycle_key(&mut self) {
        self.key.clear();
        if self.key.capacity() > RETAINED_KEY_CAPACITY {
            self.key.shrink_to(RETAINED_KEY_CAPACITY);
        }
        self.key_ready = false;
    }

    /// Enters the failed state: the connection is about to be dropped, so
    /// the key buffer is released at once.
    fn fail(&mut self, used: usize, e: ParseError) -> (usize, Step) {
        self.failed = Some(e);
        self.state = State::Start;
        self.line_len = 0;
        self.key = Vec::new();
        self.key_ready = false;
        self.check_invariants();
        (used, Step::Error(e))
    }

    fn check_invariants(&self) {
        debug_assert!(self.max_line_bytes >= MIN_MAX_LINE_BYTES);
        debug_assert!(self.line_len <= self.max_line_bytes);
        debug_assert!(self.key_ready || self.key.len() <= self.line_len);
        debug_assert!(self.key.capacity() <= self.max_line_bytes.max(RETAINED_KEY_CAPACITY));
        match self.state {
            State::Word { verb, matched } => {
                debug_assert!(matched >= 1 && usize::from(matched) < verb.word().len());
            }
            State::Arg { kind, .. } => debug_assert!(self.key.len() <= kind.max_bytes()),
            _ => {}
        }
        if self.failed.is_some() {
            debug_assert!(self.state == State::Start && self.key.is_empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The eight-at-a-time key test flags exactly the bytes that are not
    /// key bytes, for every byte value at every position of a word.
    #[test]
    fn not_key_bytes_agrees_with_is_key_byte() {
        for b in 0..=255u8 {
            for pos in 0..8 {
                for fill in [b'a', b'Z', b'0', b' ', 0xff] {
                    let mut w = [fill; 8];
                    w[pos] = b;
                    let flags = not_key_bytes(u64::from_le_bytes(w));
                    for (i, &x) in w.iter().enumerate() {
                        let flagged = (flags >> (8 * i)) & 0xff;
                        let want = if wire::is_key_byte(x) { 0 } else { 0x80 };
                        assert_eq!(flagged, want, "byte {x:#04x} at {i} in {w:?}");
                    }
                }
            }
        }
    }

    /// `key_run` against a plain scan, on every length up to 40 with the
    /// key ended (or not) by every byte value.
    #[test]
    fn key_run_agrees_with_a_plain_scan() {
        for len in 0..40 {
            for end in 0..=255u8 {
                let mut bytes: Vec<u8> = (0..len).map(|i| b"aZ09kQ"[i % 6]).collect();
                bytes.push(end);
                bytes.extend_from_slice(b"abc");
                let want = bytes
                    .iter()
                    .position(|&b| !wire::is_key_byte(b))
                    .unwrap_or(bytes.len());
                assert_eq!(key_run(&bytes), want, "{bytes:?}");
                assert_eq!(key_run(&bytes[..len]), len);
            }
        }
    }

    /// The masked eight-byte word compare is the case-insensitive compare:
    /// every byte value at every position of each hot word, with input
    /// both long enough for it and cut short.
    #[test]
    fn hot_word_is_exactly_the_case_insensitive_word() {
        let reference = |input: &[u8]| -> Option<(Verb, usize)> {
            for (verb, word) in [
                (Verb::Lock, &b"lock"[..]),
                (Verb::Unlock, b"unlock"),
                (Verb::Acquire, b"acquire"),
            ] {
                let n = word.len();
                if input.len() > n && input[..n].eq_ignore_ascii_case(word) && input[n] == b' ' {
                    return Some((verb, n + 1));
                }
            }
            None
        };
        for base in [&b"lock abc"[..], b"unlock a", b"acquire ", b"LoCk 0\r\n"] {
            for pos in 0..base.len() {
                for b in 0..=255u8 {
                    let mut input = base.to_vec();
                    input[pos] = b;
                    for cut in [input.len(), input.len() - 1] {
                        let input = &input[..cut];
                        assert_eq!(Parser::hot_word(input), reference(input), "{input:?}");
                    }
                }
            }
        }
    }

    /// Everything observable about feeding a stream: the commands with their
    /// keys, bytes consumed in total, and how the stream ended.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Run {
        commands: Vec<(Command, Vec<u8>)>,
        consumed: usize,
        end: End,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum End {
        /// All input consumed, at a line boundary.
        Idle,
        /// All input consumed, inside a command.
        Pending,
        Err(ParseError),
    }

    /// Feeds `chunks` in order, each one until it is used up (or an error),
    /// as the core does.
    fn feed(max: usize, chunks: &[&[u8]]) -> Run {
        let mut p = Parser::new(max);
        let mut commands = Vec::new();
        let mut consumed = 0;
        for chunk in chunks {
            let mut rest: &[u8] = chunk;
            loop {
                let (n, step) = p.advance(rest);
                assert!(n <= rest.len());
                consumed += n;
                rest = &rest[n..];
                match step {
                    Step::Done(cmd) => {
                        commands.push((cmd, p.key().to_vec()));
                        assert!(p.is_idle());
                    }
                    Step::Pending => {
                        assert!(rest.is_empty());
                        break;
                    }
                    Step::Error(e) => {
                        // Sticky, and consumes nothing more.
                        assert_eq!(p.advance(rest), (0, Step::Error(e)));
                        assert_eq!(p.advance(b"lock a 1\r\n"), (0, Step::Error(e)));
                        assert!(!p.is_idle());
                        return Run {
                            commands,
                            consumed,
                            end: End::Err(e),
                        };
                    }
                }
            }
        }
        let end = if p.is_idle() { End::Idle } else { End::Pending };
        Run {
            commands,
            consumed,
            end,
        }
    }

    fn lock(timeout_ms: u64, key: &str) -> (Command, Vec<u8>) {
        (Command::Lock { timeout_ms }, key.as_bytes().to_vec())
    }

    fn unlock(key: &str) -> (Command, Vec<u8>) {
        (Command::Unlock, key.as_bytes().to_vec())
    }

    fn acquire(timeout_ms: u64, key: &str, limit: u32) -> (Command, Vec<u8>) {
        (
            Command::Acquire { timeout_ms, limit },
            key.as_bytes().to_vec(),
        )
    }

    fn info(key: &str) -> (Command, Vec<u8>) {
        (Command::Info, key.as_bytes().to_vec())
    }

    fn stats() -> (Command, Vec<u8>) {
        (Command::Stats, Vec::new())
    }

    fn name(label: &str, too_long: bool) -> (Command, Vec<u8>) {
        (Command::Name { too_long }, label.as_bytes().to_vec())
    }

    fn auth(secret: &str, too_long: bool) -> (Command, Vec<u8>) {
        (Command::Auth { too_long }, secret.as_bytes().to_vec())
    }

    fn evict(key: &str) -> (Command, Vec<u8>) {
        (Command::Evict, key.as_bytes().to_vec())
    }

    fn unexpected(byte: u8, offset: usize, expected: Expected) -> End {
        End::Err(ParseError::UnexpectedByte {
            byte,
            offset,
            expected,
        })
    }

    struct Case {
        name: &'static str,
        input: Vec<u8>,
        max: usize,
        commands: Vec<(Command, Vec<u8>)>,
        end: End,
    }

    /// `case!(input => [commands], end)`, optionally `max: N` first.
    macro_rules! case {
        ($input:expr => [$($cmd:expr),* $(,)?], $end:expr) => {
            case!(max: DEFAULT_MAX_LINE_BYTES, $input => [$($cmd),*], $end)
        };
        (max: $max:expr, $input:expr => [$($cmd:expr),* $(,)?], $end:expr) => {
            Case {
                name: stringify!($input),
                input: AsRef::<[u8]>::as_ref(&$input).to_vec(),
                max: $max,
                commands: vec![$($cmd),*],
                end: $end,
            }
        };
    }

    fn key_line(word: &str, key_len: usize, tail: &str) -> Vec<u8> {
        let mut v = word.as_bytes().to_vec();
        v.extend(std::iter::repeat_n(b'k', key_len));
        v.extend_from_slice(tail.as_bytes());
        v
    }

    fn cases() -> Vec<Case> {
        use Expected::*;
        let k9000 = "k".repeat(9000);
        // "lock " + key + " 1\r\n" is exactly 10,000 bytes for a 9,991-byte key.
        let k9991 = "k".repeat(9991);
        vec![
            // Valid.
            case!(b"lock a 100\r\n" => [lock(100, "a")], End::Idle),
            case!(b"LOCK a 0\r\n" => [lock(0, "a")], End::Idle),
            case!(b"LoCk Key9 5   \r\n" => [lock(5, "Key9")], End::Idle),
            case!(b"lock   k    7\r\n" => [lock(7, "k")], End::Idle),
            case!(b"unlock a\r\n" => [unlock("a")], End::Idle),
            case!(b"UNLOCK a   \r\n" => [unlock("a")], End::Idle),
            case!(b"uNlOcK   Zz09  \r\n" => [unlock("Zz09")], End::Idle),
            case!(b"lock a 1\r\nunlock a\r\nlock b 2\r\n"
                => [lock(1, "a"), unlock("a"), lock(2, "b")], End::Idle),
            case!(b"lock a 99999999999999999999999999999\r\n" => [lock(u64::MAX, "a")], End::Idle),
            case!(b"lock a 18446744073709551615\r\n" => [lock(u64::MAX, "a")], End::Idle),
            case!(b"lock a 18446744073709551614\r\n" => [lock(u64::MAX - 1, "a")], End::Idle),
            case!(b"lock a 18446744073709551616\r\n" => [lock(u64::MAX, "a")], End::Idle),
            case!(b"lock a 00010\r\n" => [lock(10, "a")], End::Idle),
            case!(b"lock 123 456\r\n" => [lock(456, "123")], End::Idle),
            case!(b"unlock 0\r\n" => [unlock("0")], End::Idle),
            case!(b"lock lock 1\r\nunlock unlock\r\n"
                => [lock(1, "lock"), unlock("unlock")], End::Idle),
            case!(key_line("lock ", 9000, " 1\r\n") => [lock(1, &k9000)], End::Idle),
            case!(key_line("unlock ", 9000, "\r\n") => [unlock(&k9000)], End::Idle),
            case!(b"" => [], End::Idle),
            // Incomplete.
            case!(b"lock a 1\r\nlo" => [lock(1, "a")], End::Pending),
            case!(b"lock a 1\r" => [], End::Pending),
            case!(b"unlock abc" => [], End::Pending),
            // Errors, one per kind.
            case!(b"lock\ta 1\r\n" => [], unexpected(b'\t', 4, Space)),
            case!(b"lock \ta 1\r\n" => [], unexpected(b'\t', 5, KeyOrSpace)),
            case!(b"lock a\t1\r\n" => [], unexpected(b'\t', 6, KeyOrSpace)),
            case!(b"lock a 1\t\r\n" => [], unexpected(b'\t', 8, TimeoutOrSpaceOrCr)),
            case!(b" lock a 1\r\n" => [], unexpected(b' ', 0, CommandWord)),
            case!(b"\r\n" => [], unexpected(b'\r', 0, CommandWord)),
            case!(b"lock a 1\r\n\r\n" => [lock(1, "a")], unexpected(b'\r', 0, CommandWord)),
            case!(b"lock a 1\n" => [], unexpected(b'\n', 8, TimeoutOrSpaceOrCr)),
            case!(b"unlock a\n" => [], unexpected(b'\n', 8, KeyOrSpaceOrCr)),
            case!(b"lock a 1 \n" => [], unexpected(b'\n', 9, SpaceOrCr)),
            case!(b"lock a 1\rx" => [], unexpected(b'x', 9, Lf)),
            case!(b"lock a 1\r\r\n" => [], unexpected(b'\r', 9, Lf)),
            case!(b"lock a\r\n" => [], unexpected(b'\r', 6, KeyOrSpace)),
            case!(b"lock a \r\n" => [], unexpected(b'\r', 7, TimeoutOrSpace)),
            case!(b"lock \r\n" => [], unexpected(b'\r', 5, KeyOrSpace)),
            case!(b"unlock \r\n" => [], unexpected(b'\r', 7, KeyOrSpace)),
            case!(b"lock\r\n" => [], unexpected(b'\r', 4, Space)),
            case!(b"lock a-b 1\r\n" => [], unexpected(b'-', 6, KeyOrSpace)),
            case!("lock é 1\r\n" => [], unexpected(0xc3, 5, KeyOrSpace)),
            case!("lock aé 1\r\n" => [], unexpected(0xc3, 6, KeyOrSpace)),
            case!(b"lick a 1\r\n" => [], unexpected(b'i', 1, CommandWord)),
            case!(b"unlick a\r\n" => [], unexpected(b'i', 3, CommandWord)),
            case!(b"get a\r\n" => [], unexpected(b'g', 0, CommandWord)),
            case!(b"locka 1\r\n" => [], unexpected(b'a', 4, Space)),
            case!(b"unlock a 5\r\n" => [], unexpected(b'5', 9, SpaceOrCr)),
            case!(b"lock a -1\r\n" => [], unexpected(b'-', 7, TimeoutOrSpace)),
            case!(b"lock a 1x\r\n" => [], unexpected(b'x', 8, TimeoutOrSpaceOrCr)),
            case!(b"lock a 1 x\r\n" => [], unexpected(b'x', 9, SpaceOrCr)),
            case!(b"lock a 1 2\r\n" => [], unexpected(b'2', 9, SpaceOrCr)),
            case!(b"lock\0a 1\r\n" => [], unexpected(0, 4, Space)),
            case!(b"lock a\x001\r\n" => [], unexpected(0, 6, KeyOrSpace)),
            case!(b"\0\0\0" => [], unexpected(0, 0, CommandWord)),
            case!(b"unlock a\r\nlock b 1\r\nlock c\r\n"
                => [unlock("a"), lock(1, "b")], unexpected(b'\r', 6, KeyOrSpace)),
            // Line length: every byte counts, CR and LF included.
            case!(key_line("lock ", 20_000, " 1\r\n") => [],
                End::Err(ParseError::LineTooLong { max: 10_000 })),
            case!(key_line("lock ", 9991, " 1\r\n") => [lock(1, &k9991)], End::Idle),
            case!(key_line("lock ", 9992, " 1\r\n") => [],
                End::Err(ParseError::LineTooLong { max: 10_000 })),
            case!(max: 16, b"lock abcdefg 1\r\n" => [lock(1, "abcdefg")], End::Idle),
            case!(max: 16, b"lock abcdefgh 1\r\n" => [],
                End::Err(ParseError::LineTooLong { max: 16 })),
            case!(max: 16, b"lock abcdefg 1 \r\n" => [],
                End::Err(ParseError::LineTooLong { max: 16 })),
            case!(max: 16, b"lock abcdefghijklmnop" => [],
                End::Err(ParseError::LineTooLong { max: 16 })),
            // The limit is per line, not per stream.
            case!(max: 16, b"lock abcdefg 1\r\nlock abcdefg 2\r\nunlock abcdefg\r\n"
                => [lock(1, "abcdefg"), lock(2, "abcdefg"), unlock("abcdefg")], End::Idle),
            // A limit below the minimum is raised to it.
            case!(max: 0, b"lock abcdefg 1\r\n" => [lock(1, "abcdefg")], End::Idle),
            // The one-step line tails, at the limit and one byte past it,
            // and tails that only start like one.
            case!(max: 16, b"unlock abcdefg\r\n" => [unlock("abcdefg")], End::Idle),
            case!(max: 16, b"unlock abcdefgh\r\n" => [],
                End::Err(ParseError::LineTooLong { max: 16 })),
            case!(max: 16, b"acquire abcd 1\r\n" => [acquire(1, "abcd", 1)], End::Idle),
            case!(max: 16, b"acquire abcde 1\r\n" => [],
                End::Err(ParseError::LineTooLong { max: 16 })),
            case!(max: 16, b"evict abcdefgh\r\n" => [evict("abcdefgh")], End::Idle),
            case!(b"lock a 1\r\r\n" => [], unexpected(b'\r', 9, Lf)),
            case!(b"unlock a\r\0" => [], unexpected(0, 9, Lf)),
            case!(b"lock a  1\r\n" => [lock(1, "a")], End::Idle),
            case!(b"lock a 1 \r\n" => [lock(1, "a")], End::Idle),
            case!(b"lock a \r\n" => [], unexpected(b'\r', 7, TimeoutOrSpace)),
            // Version 2: acquire.
            case!(b"acquire a 100\r\n" => [acquire(100, "a", 1)], End::Idle),
            case!(b"AcQuIrE a 7\r\n" => [acquire(7, "a", 1)], End::Idle),
            case!(b"acquire  a 7 2\r\n" => [acquire(7, "a", 2)], End::Idle),
            case!(b"acquirex a 7\r\n" => [], unexpected(b'x', 7, Space)),
            case!(b"ACQUIRE a 100 3\r\n" => [acquire(100, "a", 3)], End::Idle),
            case!(b"AcQuIrE  k9   0   65535   \r\n" => [acquire(0, "k9", 65535)], End::Idle),
            case!(b"acquire a 1 \r\n" => [acquire(1, "a", 1)], End::Idle),
            case!(b"acquire a 1 0\r\n" => [acquire(1, "a", 0)], End::Idle),
            case!(b"acquire a 1 65536\r\n" => [acquire(1, "a", 65536)], End::Idle),
            case!(b"acquire a 1 99999999999\r\n" => [acquire(1, "a", u32::MAX)], End::Idle),
            case!(b"acquire a 1 4294967295\r\n" => [acquire(1, "a", u32::MAX)], End::Idle),
            case!(b"acquire a 1 4294967296\r\n" => [acquire(1, "a", u32::MAX)], End::Idle),
            case!(b"acquire a 1 00002\r\n" => [acquire(1, "a", 2)], End::Idle),
            case!(b"acquire a 99999999999999999999999 2\r\n"
                => [acquire(u64::MAX, "a", 2)], End::Idle),
            case!(b"acquire a\r\n" => [], unexpected(b'\r', 9, KeyOrSpace)),
            case!(b"acquire a \r\n" => [], unexpected(b'\r', 10, TimeoutOrSpace)),
            case!(b"acquire a 1 2 3\r\n" => [], unexpected(b'3', 14, SpaceOrCr)),
            case!(b"acquire a 1 x\r\n" => [], unexpected(b'x', 12, LimitOrSpaceOrCr)),
            case!(b"acquire a 1 2x\r\n" => [], unexpected(b'x', 13, LimitOrSpaceOrCr)),
            case!(b"acquire a 1 -2\r\n" => [], unexpected(b'-', 12, LimitOrSpaceOrCr)),
            case!(b"acquire a 1\n" => [], unexpected(b'\n', 11, TimeoutOrSpaceOrCr)),
            case!(b"acquirea 1\r\n" => [], unexpected(b'a', 7, Space)),
            case!(b"acquir a 1\r\n" => [], unexpected(b' ', 6, CommandWord)),
            case!(b"acquire a:b 1\r\n" => [], unexpected(b':', 9, KeyOrSpace)),
            // info, evict: a key, like unlock.
            case!(b"info a\r\n" => [info("a")], End::Idle),
            case!(b"INFO  Zz09  \r\n" => [info("Zz09")], End::Idle),
            case!(b"info a b\r\n" => [], unexpected(b'b', 7, SpaceOrCr)),
            case!(b"info\r\n" => [], unexpected(b'\r', 4, Space)),
            case!(b"info \r\n" => [], unexpected(b'\r', 5, KeyOrSpace)),
            case!(b"info a-b\r\n" => [], unexpected(b'-', 6, KeyOrSpaceOrCr)),
            case!(b"evict a\r\n" => [evict("a")], End::Idle),
            case!(b"Evict   backup \r\n" => [evict("backup")], End::Idle),
            case!(b"evict\r\n" => [], unexpected(b'\r', 5, Space)),
            case!(b"evict a 1\r\n" => [], unexpected(b'1', 8, SpaceOrCr)),
            case!(b"evic a\r\n" => [], unexpected(b' ', 4, CommandWord)),
            // stats: no argument.
            case!(b"stats\r\n" => [stats()], End::Idle),
            case!(b"STATS   \r\n" => [stats()], End::Idle),
            case!(b"stats x\r\n" => [], unexpected(b'x', 6, SpaceOrCr)),
            case!(b"statsx\r\n" => [], unexpected(b'x', 5, SpaceOrCr)),
            case!(b"stats\n" => [], unexpected(b'\n', 5, SpaceOrCr)),
            case!(b"stat\r\n" => [], unexpected(b'\r', 4, CommandWord)),
            // name: the label alphabet; over 64 bytes is not a syntax error.
            case!(b"name job-1_a.b:c/d\r\n" => [name("job-1_a.b:c/d", false)], End::Idle),
            case!(b"NAME  x  \r\n" => [name("x", false)], End::Idle),
            case!(key_line("name ", 64, "\r\n") => [name(&"k".repeat(64), false)], End::Idle),
            case!(key_line("name ", 65, "\r\n") => [name(&"k".repeat(64), true)], End::Idle),
            case!(key_line("name ", 5000, " \r\n") => [name(&"k".repeat(64), true)], End::Idle),
            case!(b"name\r\n" => [], unexpected(b'\r', 4, Space)),
            case!(b"name \r\n" => [], unexpected(b'\r', 5, LabelOrSpace)),
            case!(b"name a+b\r\n" => [], unexpected(b'+', 6, LabelOrSpaceOrCr)),
            case!(b"name =\r\n" => [], unexpected(b'=', 5, LabelOrSpace)),
            case!(b"name a b\r\n" => [], unexpected(b'b', 7, SpaceOrCr)),
            case!("name \u{e9}\r\n" => [], unexpected(0xc3, 5, LabelOrSpace)),
            // auth: the secret alphabet; over 256 bytes is not a syntax error.
            case!(b"auth s3cr+t/x=_-.\r\n" => [auth("s3cr+t/x=_-.", false)], End::Idle),
            case!(b"AUTH  =  \r\n" => [auth("=", false)], End::Idle),
            case!(key_line("auth ", 256, "\r\n") => [auth(&"k".repeat(256), false)], End::Idle),
            case!(key_line("auth ", 257, "\r\n") => [auth(&"k".repeat(256), true)], End::Idle),
            case!(b"auth\r\n" => [], unexpected(b'\r', 4, Space)),
            case!(b"auth \r\n" => [], unexpected(b'\r', 5, SecretOrSpace)),
            case!(b"auth a:b\r\n" => [], unexpected(b':', 6, SecretOrSpaceOrCr)),
            case!(b"auth a b\r\n" => [], unexpected(b'b', 7, SpaceOrCr)),
            case!(b"aut a\r\n" => [], unexpected(b' ', 3, CommandWord)),
            case!(b"ax\r\n" => [], unexpected(b'x', 1, CommandWord)),
            // The line limit covers the new forms too.
            case!(max: 16, b"name abcdefghijk\r\n" => [],
                End::Err(ParseError::LineTooLong { max: 16 })),
            case!(max: 16, b"acquire ab 1 99\r\n" => [],
                End::Err(ParseError::LineTooLong { max: 16 })),
            case!(max: 16, b"acquire a 1 99\r\n" => [acquire(1, "a", 99)], End::Idle),
            // Old and new pipelined.
            case!(b"name w\r\nacquire a 5 2\r\ninfo a\r\nstats\r\nevict a\r\nunlock a\r\n"
                => [name("w", false), acquire(5, "a", 2), info("a"), stats(), evict("a"),
                    unlock("a")], End::Idle),
        ]
    }

    /// Where the stream must stop: all of it, or just before the bad byte.
    fn expected_consumed(case: &Case) -> usize {
        match case.end {
            End::Idle | End::Pending => case.input.len(),
            End::Err(ParseError::UnexpectedByte { offset, .. }) => {
                let done: usize = line_starts(&case.input, case.commands.len());
                done + offset
            }
            End::Err(ParseError::LineTooLong { .. }) => {
                let max = case.max.max(MIN_MAX_LINE_BYTES);
                line_starts(&case.input, case.commands.len()) + max
            }
        }
    }

    /// Offset of the line after the first `lines` CRLF-terminated lines.
    fn line_starts(input: &[u8], lines: usize) -> usize {
        let mut at = 0;
        for _ in 0..lines {
            let lf = input[at..].iter().position(|&b| b == b'\n').unwrap();
            at += lf + 1;
        }
        at
    }

    fn expected_run(case: &Case) -> Run {
        Run {
            commands: case.commands.clone(),
            consumed: expected_consumed(case),
            end: case.end,
        }
    }

    #[test]
    fn table_whole() {
        for case in cases() {
            let got = feed(case.max, &[&case.input]);
            assert_eq!(got, expected_run(&case), "case {}", case.name);
        }
    }

    #[test]
    fn table_byte_by_byte() {
        for case in cases() {
            let chunks: Vec<&[u8]> = case.input.chunks(1).collect();
            let got = feed(case.max, &chunks);
            assert_eq!(got, expected_run(&case), "case {}", case.name);
        }
    }

    /// Split indices to try: all of them for short inputs, a spread (plus
    /// both ends) for long ones.
    fn split_points(len: usize) -> Vec<usize> {
        if len <= 64 {
            (0..=len).collect()
        } else {
            let mut v: Vec<usize> = (0..=len).step_by(len / 37 + 1).collect();
            v.extend([1, 2, len / 2, len - 2, len - 1, len]);
            v.sort_unstable();
            v.dedup();
            v
        }
    }

    #[test]
    fn table_split_in_two() {
        for case in cases() {
            let want = expected_run(&case);
            for i in split_points(case.input.len()) {
                let (a, b) = case.input.split_at(i);
                let got = feed(case.max, &[a, b]);
                assert_eq!(got, want, "case {} split at {i}", case.name);
            }
        }
    }

    #[test]
    fn table_split_in_three() {
        for case in cases() {
            let want = expected_run(&case);
            let points = split_points(case.input.len());
            // All pairs of short inputs; a sample of pairs for long ones.
            let pairs: Vec<(usize, usize)> = if case.input.len() <= 64 {
                points
                    .iter()
                    .flat_map(|&i| points.iter().map(move |&j| (i, j)))
                    .filter(|(i, j)| i <= j)
                    .collect()
            } else {
                points
                    .iter()
                    .zip(points.iter().skip(3))
                    .map(|(&i, &j)| (i, j))
                    .collect()
            };
            for (i, j) in pairs {
                let (a, rest) = case.input.split_at(i);
                let (b, c) = rest.split_at(j - i);
                let got = feed(case.max, &[a, b, c]);
                assert_eq!(got, want, "case {} split at {i}, {j}", case.name);
            }
        }
    }

    #[test]
    fn done_leaves_the_rest_unconsumed() {
        let mut p = Parser::new(DEFAULT_MAX_LINE_BYTES);
        let input = b"lock a 1\r\nunlock a\r\nlo";
        assert_eq!(
            p.advance(input),
            (10, Step::Done(Command::Lock { timeout_ms: 1 }))
        );
        assert_eq!(p.key(), b"a");
        assert_eq!(p.advance(&input[10..]), (10, Step::Done(Command::Unlock)));
        assert_eq!(p.key(), b"a");
        assert!(p.is_idle());
        assert_eq!(p.advance(&input[20..]), (2, Step::Pending));
        assert!(!p.is_idle());
        assert_eq!(p.advance(b""), (0, Step::Pending));
        assert_eq!(
            p.advance(b"ck b 2\r\n"),
            (8, Step::Done(Command::Lock { timeout_ms: 2 }))
        );
        assert_eq!(p.key(), b"b");
        // The key stays readable until the next advance, even an empty one.
        assert_eq!(p.key(), b"b");
        assert_eq!(p.advance(b""), (0, Step::Pending));
        assert_eq!(p.key(), b"");
        assert!(p.is_idle());
    }

    #[test]
    fn error_messages() {
        let e = ParseError::UnexpectedByte {
            byte: b'\t',
            offset: 4,
            expected: Expected::Space,
        };
        assert_eq!(
            e.to_string(),
            "unexpected byte 0x09 at offset 4 (expected a space)"
        );
        let e = ParseError::UnexpectedByte {
            byte: b'\t',
            offset: 6,
            expected: Expected::KeyOrSpace,
        };
        assert_eq!(
            e.to_string(),
            "unexpected byte 0x09 at offset 6 (expected a key byte (A-Z, a-z, 0-9) or a space)"
        );
        let e = ParseError::LineTooLong { max: 10_000 };
        assert_eq!(e.to_string(), "line longer than 10000 bytes");
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert_eq!(boxed.to_string(), "line longer than 10000 bytes");
    }

    #[test]
    fn key_buffer_is_reused_and_bounded() {
        let mut p = Parser::new(DEFAULT_MAX_LINE_BYTES);
        assert_eq!(p.heap_bytes(), 0);
        assert_eq!(
            p.advance(b"lock abcdefghij 1\r\n").1,
            Step::Done(Command::Lock { timeout_ms: 1 })
        );
        let cap = p.heap_bytes();
        let ptr = p.key().as_ptr();
        assert!((10..=RETAINED_KEY_CAPACITY).contains(&cap));
        // Keys that fit reuse the same allocation.
        for _ in 0..100 {
            assert_eq!(
                p.advance(b"unlock abcdefghij\r\n").1,
                Step::Done(Command::Unlock)
            );
            assert_eq!(p.heap_bytes(), cap);
            assert_eq!(p.key().as_ptr(), ptr);
        }
        // A huge key, fed in pieces, costs at most the line limit...
        let line = key_line("lock ", 9991, " 1\r\n");
        for chunk in line.chunks(7) {
            let (n, step) = p.advance(chunk);
            assert_eq!(n, chunk.len());
            assert!(p.heap_bytes() <= DEFAULT_MAX_LINE_BYTES);
            if step != Step::Pending {
                assert_eq!(step, Step::Done(Command::Lock { timeout_ms: 1 }));
            }
        }
        assert_eq!(p.key().len(), 9991);
        // ...and is not retained past the command.
        assert_eq!(p.advance(b"").1, Step::Pending);
        assert!(p.heap_bytes() <= RETAINED_KEY_CAPACITY);
        // An oversized key is cut off at the limit, and the error frees it.
        let mut p = Parser::new(100);
        let (n, step) = p.advance(&key_line("lock ", 1000, " 1\r\n"));
        assert_eq!(
            (n, step),
            (100, Step::Error(ParseError::LineTooLong { max: 100 }))
        );
        assert_eq!(p.heap_bytes(), 0);
    }

    use crate::model::{Rng, random_chunks, reference_command};

    /// The commands of the complete valid lines of `input` by the model's
    /// reference recognizer (the one grammar reference), and whether the
    /// stream ends cleanly (`Some(true)`), with a complete invalid line
    /// (`Some(false)`), or with an unterminated tail (`None`).
    fn reference(input: &[u8]) -> (Vec<(Command, Vec<u8>)>, Option<bool>) {
        let mut commands = Vec::new();
        let mut rest = input;
        loop {
            if rest.is_empty() {
                return (commands, Some(true));
            }
            let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
                return (commands, None);
            };
            match reference_command(&rest[..end]) {
                Some(cmd) => commands.push(cmd),
                None => return (commands, Some(false)),
            }
            rest = &rest[end + 2..];
        }
    }

    /// A stream of mostly valid lines with occasional corruption.
    fn gen_lines(rng: &mut Rng) -> Vec<u8> {
        const WORDS: &[&[u8]] = &[
            b"lock", b"LOCK", b"Lock", b"unlock", b"UNLOCK", b"uNlOcK", b"acquire", b"ACQUIRE",
            b"info", b"Info", b"evict", b"stats", b"name", b"NaMe", b"auth", b"AUTH",
        ];
        const KEY: &[u8] = b"abcXYZ019";
        const LABEL: &[u8] = b"ab9-_.:/";
        const SECRET: &[u8] = b"ab9-_.+/=";
        const NOISE: &[u8] = b"lockunLOCK ab19\r\n\t-:+=\0";
        let mut out = Vec::new();
        let spaces = |rng: &mut Rng, out: &mut Vec<u8>, min: usize| {
            out.extend(std::iter::repeat_n(b' ', min + rng.index(3)));
        };
        let token = |rng: &mut Rng, out: &mut Vec<u8>, from: &[u8], max: usize| {
            for _ in 0..1 + rng.index(max) {
                out.push(*rng.pick(from));
            }
        };
        for _ in 0..rng.index(6) {
            let word = WORDS[rng.index(WORDS.len())];
            out.extend_from_slice(word);
            let lower = word.to_ascii_lowercase();
            match lower.as_slice() {
                b"stats" => {}
                b"name" => {
                    spaces(rng, &mut out, 1);
                    token(rng, &mut out, LABEL, 70);
                }
                b"auth" => {
                    spaces(rng, &mut out, 1);
                    token(rng, &mut out, SECRET, 12);
                }
                _ => {
                    spaces(rng, &mut out, 1);
                    token(rng, &mut out, KEY, 5);
                }
            }
            if lower == b"lock" || lower == b"acquire" {
                spaces(rng, &mut out, 1);
                token(rng, &mut out, b"0123456789", 25);
                if lower == b"acquire" && rng.chance(1, 2) {
                    spaces(rng, &mut out, 1);
                    token(rng, &mut out, b"0123456789", 12);
                }
            }
            spaces(rng, &mut out, 0);
            out.extend_from_slice(b"\r\n");
        }
        for _ in 0..rng.index(3) {
            if !out.is_empty() && rng.index(2) == 0 {
                let at = rng.index(out.len());
                out[at] = *rng.pick(NOISE);
            } else {
                let at = rng.index(out.len() + 1);
                out.insert(at, *rng.pick(NOISE));
            }
        }
        out.truncate(out.len() - rng.index(4).min(out.len()));
        out
    }

    fn gen_noise(rng: &mut Rng) -> Vec<u8> {
        const ALPHABET: &[u8] = b"lockunLOCKaqirestmhvf ab19\r\n\t-:+=";
        (0..rng.index(40)).map(|_| *rng.pick(ALPHABET)).collect()
    }

    #[test]
    fn random_streams_chunked_match_whole_and_reference() {
        let seed: u64 = std::env::var("PARSER_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        let mut rng = Rng::new(seed);
        let mut outcomes = [0usize; 3];
        for round in 0..20_000 {
            let input = if round % 2 == 0 {
                gen_lines(&mut rng)
            } else {
                gen_noise(&mut rng)
            };
            let whole = feed(DEFAULT_MAX_LINE_BYTES, &[&input]);
            let chunks = random_chunks(&input, rng.next_u64());
            let chunked = feed(DEFAULT_MAX_LINE_BYTES, &chunks);
            let ctx = format!(
                "seed {seed} round {round} input {:?}",
                input.escape_ascii().to_string()
            );
            assert_eq!(chunked, whole, "{ctx}");
            let (commands, clean) = reference(&input);
            assert_eq!(whole.commands, commands, "{ctx}");
            match (clean, whole.end) {
                (Some(true), End::Idle) => outcomes[0] += 1,
                (Some(false), End::Err(ParseError::UnexpectedByte { .. })) => outcomes[1] += 1,
                (None, End::Pending | End::Err(ParseError::UnexpectedByte { .. })) => {
                    outcomes[2] += 1
                }
                (want, got) => panic!("{ctx}: reference {want:?}, parser {got:?}"),
            }
            if let End::Err(_) = whole.end {
                assert!(whole.consumed < input.len(), "{ctx}");
            } else {
                assert_eq!(whole.consumed, input.len(), "{ctx}");
            }
        }
        // The generator exercises every ending.
        assert!(outcomes.iter().all(|&n| n > 100), "{outcomes:?}");
    }

    #[test]
    fn never_panics_on_any_byte() {
        // Every byte value in every state reachable by a short valid prefix.
        let prefixes: &[&[u8]] = &[
            b"",
            b"l",
            b"lo",
            b"loc",
            b"lock",
            b"lock ",
            b"lock a",
            b"lock a ",
            b"lock a 1",
            b"lock a 1 ",
            b"lock a 1\r",
            b"u",
            b"unloc",
            b"unlock",
            b"unlock ",
            b"unlock a",
            b"unlock a ",
            b"unlock a\r",
            b"a",
            b"ac",
            b"acquire",
            b"acquire ",
            b"acquire a",
            b"acquire a ",
            b"acquire a 1",
            b"acquire a 1 ",
            b"acquire a 1 2",
            b"acquire a 1 2 ",
            b"au",
            b"auth ",
            b"auth x",
            b"name ",
            b"name x",
            b"info ",
            b"info a",
            b"evict ",
            b"evict a",
            b"stats",
            b"stats ",
            b"stats\r",
        ];
        for prefix in prefixes {
            for byte in 0..=u8::MAX {
                let mut input = prefix.to_vec();
                input.push(byte);
                let whole = feed(16, &[&input]);
                let split = feed(16, &[prefix, &[byte]]);
                assert_eq!(whole, split);
            }
        }
    }
}
