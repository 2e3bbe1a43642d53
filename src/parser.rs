//! Resumable parser for the dreadlock wire grammar.
//!
//! The grammar (the contract in `PROTOCOL.md`, which mirrors the original's
//! ragel machine):
//!
//! ```text
//! line    = ( lock / unlock ) CRLF
//! lock    = "lock"   1*SP key 1*SP timeout *SP      ; command word case-insensitive
//! unlock  = "unlock" 1*SP key *SP                   ; "LOCK", "Unlock", ... all valid
//! key     = 1*( %x41-5A / %x61-7A / %x30-39 )      ; ASCII letters and digits; case-sensitive
//! timeout = 1*DIGIT                                 ; milliseconds, decimal
//! SP      = %x20                                    ; a space only: no tabs
//! CRLF    = %x0D %x0A                               ; a bare LF is a syntax error
//! ```
//!
//! Nothing else is accepted: no leading spaces, no empty lines, no tabs, no
//! bare LF, nothing after the last token but spaces and CRLF. A timeout too
//! large for a `u64` saturates at `u64::MAX` (it means "wait until granted or
//! disconnected"), so no digit string can panic or wrap.
//!
//! The parser is a byte-at-a-time state machine (the private `State` enum)
//! that keeps all of its progress in itself, so input may be split anywhere:
//! feeding a stream whole, byte by byte or in any chunks gives the same
//! commands and the same error. [`Parser::advance`] stops after each complete
//! command and leaves the rest of the input unconsumed, because a connection
//! whose `lock` waits must not run its later commands until that lock
//! resolves.
//!
//! Every line is bounded by `max_line_bytes` (CR and LF included), so a client
//! cannot make the parser buffer an unbounded key. The only buffered data is
//! the key, in a `Vec` reused from command to command; its retained capacity
//! is capped at [`RETAINED_KEY_CAPACITY`] so that one huge key does not pin
//! memory for the rest of a connection's life.

use std::fmt;

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
/// steady state allocates nothing.
pub const RETAINED_KEY_CAPACITY: usize = 256;

/// Smallest allocation made for a key, so that a stream of slightly growing
/// short keys does not reallocate for each one.
const MIN_KEY_CAPACITY: usize = 16;

/// A complete, syntactically valid command. Its key is read with
/// [`Parser::key`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `lock <key> <timeout>`: `timeout_ms` saturates at `u64::MAX`.
    Lock { timeout_ms: u64 },
    /// `unlock <key>`.
    Unlock,
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
    /// The command word, `lock` or `unlock` (any case).
    CommandWord,
    /// The space that must follow the command word.
    Space,
    /// A key byte or a space: before the key, or inside a `lock` key.
    KeyOrSpace,
    /// A key byte, a space or CR: inside an `unlock` key.
    KeyOrSpaceOrCr,
    /// A timeout digit or a space: after a `lock` key.
    TimeoutOrSpace,
    /// A timeout digit, a space or CR: inside the timeout.
    TimeoutOrSpaceOrCr,
    /// A trailing space or CR: after the last token.
    SpaceOrCr,
    /// The LF that must follow CR.
    Lf,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expected::CommandWord => "the command word lock or unlock",
            Expected::Space => "a space",
            Expected::KeyOrSpace => "a key byte (A-Z, a-z, 0-9) or a space",
            Expected::KeyOrSpaceOrCr => "a key byte (A-Z, a-z, 0-9), a space or CR",
            Expected::TimeoutOrSpace => "a timeout digit or a space",
            Expected::TimeoutOrSpaceOrCr => "a timeout digit, a space or CR",
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

/// The command word being matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verb {
    Lock,
    Unlock,
}

impl Verb {
    fn word(self) -> &'static [u8] {
        match self {
            Verb::Lock => b"lock",
            Verb::Unlock => b"unlock",
        }
    }
}

/// Where the parser is within a line. Each state lists what it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At a line boundary. Accepts `l` or `u` (any case).
    Start,
    /// Inside the command word; `matched` bytes of it seen,
    /// INVARIANT: `1 <= matched < verb.word().len()`.
    /// Accepts the next byte of the word (any case).
    Word { verb: Verb, matched: u8 },
    /// The whole word seen. Accepts exactly one space.
    AfterWord { verb: Verb },
    /// One or more spaces after the word. Accepts spaces or a key byte.
    BeforeKey { verb: Verb },
    /// Inside the key (its bytes are in `Parser::key`). Accepts key bytes or
    /// a space; `unlock` also accepts CR.
    Key { verb: Verb },
    /// `lock`: one or more spaces after the key. Accepts spaces or a digit.
    BeforeTimeout,
    /// `lock`: inside the timeout. Accepts digits, a space or CR.
    Timeout { timeout_ms: u64 },
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
            State::AfterWord { .. } => Expected::Space,
            State::BeforeKey { .. }
            | State::Key {
                verb: Verb::Lock, ..
            } => Expected::KeyOrSpace,
            State::Key {
                verb: Verb::Unlock, ..
            } => Expected::KeyOrSpaceOrCr,
            State::BeforeTimeout => Expected::TimeoutOrSpace,
            State::Timeout { .. } => Expected::TimeoutOrSpaceOrCr,
            State::Trailing { .. } => Expected::SpaceOrCr,
            State::Cr { .. } => Expected::Lf,
        }
    }
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
    /// The key of the line being parsed, or of the command just returned.
    /// INVARIANT: `key.len() <= line_len`, or `key_ready` (then the key
    /// belongs to the previous line); its capacity never exceeds
    /// `max(max_line_bytes, RETAINED_KEY_CAPACITY)`.
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
            if matches!(self.state, State::Key { .. })
                && byte.is_ascii_alphanumeric()
                && self.line_len < self.max_line_bytes
            {
                let room = self.max_line_bytes - self.line_len;
                let rest = input.get(used..).unwrap_or_default();
                let rest = rest.get(..room).unwrap_or(rest);
                let run = rest
                    .iter()
                    .position(|b| !b.is_ascii_alphanumeric())
                    .unwrap_or(rest.len());
                self.push_key(rest.get(..run).unwrap_or_default());
                self.line_len += run;
                used += run;
                continue;
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

    /// The key of the command the last [`advance`](Self::advance) returned
    /// as `Done`. Only meaningful right after `Done`: at other times it is
    /// the part of a key parsed so far, or empty.
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

    /// One transition. Returns the command when `byte` completed it, or what
    /// the current state would have accepted when `byte` is not allowed (the
    /// state is then unchanged).
    fn step(&mut self, byte: u8) -> Result<Option<Command>, Expected> {
        let next = match self.state {
            State::Start => match byte.to_ascii_lowercase() {
                b'l' => State::Word {
                    verb: Verb::Lock,
                    matched: 1,
                },
                b'u' => State::Word {
                    verb: Verb::Unlock,
                    matched: 1,
                },
                _ => return Err(Expected::CommandWord),
            },
            State::Word { verb, matched } => {
                let word = verb.word();
                if word.get(usize::from(matched)) != Some(&byte.to_ascii_lowercase()) {
                    return Err(Expected::CommandWord);
                }
                // `matched < word.len() <= 6`: no overflow.
                let matched = matched + 1;
                if usize::from(matched) == word.len() {
                    State::AfterWord { verb }
                } else {
                    State::Word { verb, matched }
                }
            }
            State::AfterWord { verb } => match byte {
                b' ' => State::BeforeKey { verb },
                _ => return Err(Expected::Space),
            },
            State::BeforeKey { verb } => match byte {
                b' ' => State::BeforeKey { verb },
                _ if byte.is_ascii_alphanumeric() => {
                    self.push_key(&[byte]);
                    State::Key { verb }
                }
                _ => return Err(Expected::KeyOrSpace),
            },
            State::Key { verb } => match (verb, byte) {
                _ if byte.is_ascii_alphanumeric() => {
                    self.push_key(&[byte]);
                    State::Key { verb }
                }
                (Verb::Lock, b' ') => State::BeforeTimeout,
                (Verb::Unlock, b' ') => State::Trailing {
                    cmd: Command::Unlock,
                },
                (Verb::Unlock, b'\r') => State::Cr {
                    cmd: Command::Unlock,
                },
                _ => return Err(self.state.expected()),
            },
            State::BeforeTimeout => match byte {
                b' ' => State::BeforeTimeout,
                b'0'..=b'9' => State::Timeout {
                    timeout_ms: u64::from(byte - b'0'),
                },
                _ => return Err(Expected::TimeoutOrSpace),
            },
            State::Timeout { timeout_ms } => match byte {
                b'0'..=b'9' => State::Timeout {
                    timeout_ms: timeout_ms
                        .saturating_mul(10)
                        .saturating_add(u64::from(byte - b'0')),
                },
                b' ' => State::Trailing {
                    cmd: Command::Lock { timeout_ms },
                },
                b'\r' => State::Cr {
                    cmd: Command::Lock { timeout_ms },
                },
                _ => return Err(Expected::TimeoutOrSpaceOrCr),
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
        if let State::Word { verb, matched } = self.state {
            debug_assert!(matched >= 1 && usize::from(matched) < verb.word().len());
        }
        if self.failed.is_some() {
            debug_assert!(self.state == State::Start && self.key.is_empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    use crate::model::Rng;

    /// A line-at-a-time reference for the grammar, written independently of
    /// the state machine: the commands of the complete valid lines, and
    /// whether the stream ends cleanly (`Some(true)`), with a complete invalid
    /// line (`Some(false)`), or with an unterminated tail (`None`).
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
            let line = &rest[..end];
            rest = &rest[end + 2..];
            let valid_bytes = line.iter().all(|b| b.is_ascii_alphanumeric() || *b == b' ');
            if !valid_bytes || line.first() == Some(&b' ') {
                return (commands, Some(false));
            }
            let tokens: Vec<&[u8]> = line
                .split(|&b| b == b' ')
                .filter(|t| !t.is_empty())
                .collect();
            let cmd = match tokens.as_slice() {
                [w, key, t]
                    if w.eq_ignore_ascii_case(b"lock") && t.iter().all(u8::is_ascii_digit) =>
                {
                    let timeout_ms = t.iter().fold(0u64, |acc, d| {
                        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                    });
                    (Command::Lock { timeout_ms }, key.to_vec())
                }
                [w, key] if w.eq_ignore_ascii_case(b"unlock") => (Command::Unlock, key.to_vec()),
                _ => return (commands, Some(false)),
            };
            commands.push(cmd);
        }
    }

    /// A stream of mostly valid lines with occasional corruption.
    fn gen_lines(rng: &mut Rng) -> Vec<u8> {
        const WORDS: &[&[u8]] = &[b"lock", b"LOCK", b"Lock", b"unlock", b"UNLOCK", b"uNlOcK"];
        const KEY: &[u8] = b"abcXYZ019";
        const NOISE: &[u8] = b"lockunLOCK ab19\r\n\t-\0";
        let mut out = Vec::new();
        for _ in 0..rng.index(6) {
            let word = WORDS[rng.index(WORDS.len())];
            out.extend_from_slice(word);
            out.extend(std::iter::repeat_n(b' ', 1 + rng.index(3)));
            for _ in 0..1 + rng.index(5) {
                out.push(*rng.pick(KEY));
            }
            if word.len() == 4 {
                out.extend(std::iter::repeat_n(b' ', 1 + rng.index(3)));
                for _ in 0..1 + rng.index(25) {
                    out.push(*rng.pick(b"0123456789"));
                }
            }
            out.extend(std::iter::repeat_n(b' ', rng.index(3)));
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
        const ALPHABET: &[u8] = b"lockunLOCK ab19\r\n\t-";
        (0..rng.index(40)).map(|_| *rng.pick(ALPHABET)).collect()
    }

    fn random_chunks<'a>(rng: &mut Rng, input: &'a [u8]) -> Vec<&'a [u8]> {
        let mut chunks = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            let (a, b) = rest.split_at(rng.index(rest.len() + 1).min(1 + rng.index(8)));
            chunks.push(a);
            rest = b;
        }
        chunks
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
            let chunks = random_chunks(&mut rng, &input);
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
