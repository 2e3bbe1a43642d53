//! The client's half of the wire without I/O: argument checks, command
//! lines, and reply lines parsed into typed answers. The blocking and the
//! async client both speak through this module, so they cannot disagree.

use std::fmt;
use std::io;
use std::time::Duration;

use super::{ArgumentError, Error, ErrorKind, KeyError};
use crate::wire::{self, ErrorReply};

/// Longest key this client sends: the daemon's default line limit
/// ([`wire::DEFAULT_MAX_LINE_BYTES`], CRLF included) less the rest of the
/// longest command line (`acquire`, 20 timeout digits, 5 limit digits, the
/// spaces and CRLF: 37 bytes). A daemon run with a lower
/// `--max-line-bytes` drops the connection on a key that does not fit its
/// limit.
pub const MAX_KEY_BYTES: usize = wire::DEFAULT_MAX_LINE_BYTES - LONGEST_COMMAND_OVERHEAD;
const LONGEST_COMMAND_OVERHEAD: usize = "acquire ".len() + 20 + " ".len() + 5 + " ".len() + 2;

/// A timeout that never expires: `lock(key, WAIT_FOREVER)` waits until the
/// lock is granted or the connection breaks. Every timeout of at least
/// [`wire::INFINITE_TIMEOUT_MS`] milliseconds (about 2.1 years) means the
/// same, and is sent as that number.
pub const WAIT_FOREVER: Duration = Duration::MAX;

/// Longest reply line accepted, CRLF included. The longest reply the
/// contract allows is an `info` line of about 250 bytes or a `stats` line of
/// about 600; the bound leaves room for fields a newer daemon appends, and
/// keeps a misbehaving peer from making the client buffer without limit.
pub(crate) const MAX_REPLY_BYTES: usize = 4096;

/// Checks that `key` is something the daemon accepts as a key.
///
/// # Errors
///
/// [`KeyError`] says what is wrong: an empty key, a byte that is not an
/// ASCII letter or digit, or more than [`MAX_KEY_BYTES`] bytes.
///
/// ```
/// use dreadlock::client::{validate_key, KeyError};
///
/// assert_eq!(validate_key("cron42"), Ok(()));
/// assert_eq!(validate_key(""), Err(KeyError::Empty));
/// assert_eq!(validate_key("a-b"), Err(KeyError::InvalidByte { byte: b'-', offset: 1 }));
/// ```
pub fn validate_key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if let Some(offset) = key.bytes().position(|b| !wire::is_key_byte(b)) {
        let byte = key.as_bytes()[offset];
        return Err(KeyError::InvalidByte { byte, offset });
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong {
            len: key.len(),
            max: MAX_KEY_BYTES,
        });
    }
    Ok(())
}

/// A semaphore size: 1 to [`wire::MAX_LIMIT`].
pub(crate) fn validate_limit(limit: u32) -> Result<(), ArgumentError> {
    if (1..=wire::MAX_LIMIT).contains(&limit) {
        Ok(())
    } else {
        Err(ArgumentError::Limit(limit))
    }
}

/// A `name` label: 1 to [`wire::MAX_LABEL_BYTES`] bytes of the label
/// alphabet.
pub(crate) fn validate_label(label: &str) -> Result<(), ArgumentError> {
    if label.is_empty()
        || label.len() > wire::MAX_LABEL_BYTES
        || !label.bytes().all(wire::is_label_byte)
    {
        return Err(ArgumentError::Label);
    }
    Ok(())
}

/// An `auth` secret: 1 to [`wire::MAX_SECRET_BYTES`] bytes of the secret
/// alphabet.
pub(crate) fn validate_secret(secret: &str) -> Result<(), ArgumentError> {
    if secret.is_empty()
        || secret.len() > wire::MAX_SECRET_BYTES
        || !secret.bytes().all(wire::is_secret_byte)
    {
        return Err(ArgumentError::Secret);
    }
    Ok(())
}

/// A timeout as whole milliseconds for the wire: rounded up (never wait
/// less than asked) and capped at the daemon's "forever".
pub(crate) fn timeout_to_ms(timeout: Duration) -> u64 {
    let ms = timeout.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms)
        .unwrap_or(u64::MAX)
        .min(wire::INFINITE_TIMEOUT_MS)
}

/// How long to wait for the reply to a command that may wait `timeout_ms`
/// on the daemon: that plus the I/O margin, or no bound for "forever".
pub(crate) fn reply_timeout(timeout_ms: u64, io_timeout: Option<Duration>) -> Option<Duration> {
    if timeout_ms >= wire::INFINITE_TIMEOUT_MS {
        None
    } else {
        io_timeout.and_then(|margin| Duration::from_millis(timeout_ms).checked_add(margin))
    }
}

/// One command, its arguments already checked.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Command<'a> {
    Lock {
        key: &'a str,
        timeout_ms: u64,
    },
    Acquire {
        key: &'a str,
        timeout_ms: u64,
        limit: u32,
    },
    Unlock {
        key: &'a str,
    },
    Info {
        key: &'a str,
    },
    Stats,
    Name {
        label: &'a str,
    },
    Auth {
        secret: &'a str,
    },
    Evict {
        key: &'a str,
    },
}

impl Command<'_> {
    /// The command line, CRLF included. `acquire` with a limit of 1 is sent
    /// without it (the same exclusive lock, PROTOCOL.md v2 rule 2).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let line = match *self {
            Command::Lock { key, timeout_ms } => format!("lock {key} {timeout_ms}\r\n"),
            Command::Acquire {
                key,
                timeout_ms,
                limit: 1,
            } => format!("acquire {key} {timeout_ms}\r\n"),
            Command::Acquire {
                key,
                timeout_ms,
                limit,
            } => format!("acquire {key} {timeout_ms} {limit}\r\n"),
            Command::Unlock { key } => format!("unlock {key}\r\n"),
            Command::Info { key } => format!("info {key}\r\n"),
            Command::Stats => "stats\r\n".to_owned(),
            Command::Name { label } => format!("name {label}\r\n"),
            Command::Auth { secret } => format!("auth {secret}\r\n"),
            Command::Evict { key } => format!("evict {key}\r\n"),
        };
        line.into_bytes()
    }

    /// The text of an I/O error while this command was on the wire. A
    /// daemon older than protocol version 2 answers the new commands by
    /// closing the connection, so that case says so.
    pub(crate) fn io_error(&self, e: &std::io::Error) -> std::io::Error {
        let v2 = !matches!(self, Command::Lock { .. } | Command::Unlock { .. });
        let hint = if v2 && e.kind() == std::io::ErrorKind::UnexpectedEof {
            let word = self.to_string();
            let word = word.split(' ').next().unwrap_or_default().to_owned();
            format!(" (a daemon older than protocol version 2 closes the connection on `{word}`)")
        } else {
            String::new()
        };
        std::io::Error::new(e.kind(), format!("{self}: {e}{hint}"))
    }

    /// How long the reply may take: the wait itself plus the I/O margin for
    /// `lock` and `acquire`, the I/O margin for the rest.
    pub(crate) fn reply_timeout(&self, io_timeout: Option<Duration>) -> Option<Duration> {
        match *self {
            Command::Lock { timeout_ms, .. } | Command::Acquire { timeout_ms, .. } => {
                reply_timeout(timeout_ms, io_timeout)
            }
            _ => io_timeout,
        }
    }
}

/// The state of one key, from `info` (PROTOCOL.md, "Extensions").
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Info {
    /// The key's semaphore size N (1 for a plain lock; 0 when the key does
    /// not exist).
    pub limit: u32,
    /// Connections holding the key now.
    pub holders: u32,
    /// Connections waiting for it.
    pub waiters: u64,
    /// The fencing token of the oldest holder, while held.
    pub token: Option<u64>,
    /// How long the oldest holder has held it, while held.
    pub held: Option<Duration>,
    /// The oldest holder's address (`ip:port`), while held.
    pub peer: Option<String>,
    /// The oldest holder's `name`, if it named itself.
    pub name: Option<String>,
}

/// The daemon's counters, from `stats`: the fields of
/// [`wire::STATS_FIELDS`], parsed; fields this client does not know are
/// kept only in [`Stats::fields`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// The daemon's version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// Open client connections.
    pub connections: u64,
    /// Keys that exist (held or waited for).
    pub keys: u64,
    /// Holders over all keys.
    pub holders: u64,
    /// Waiters over all keys.
    pub waiters: u64,
    /// `l locked` and `a <token>` replies sent.
    pub grants: u64,
    /// `t timeout` replies sent.
    pub timeouts: u64,
    /// `u unlocked` replies sent.
    pub unlocks: u64,
    /// Connections closed.
    pub disconnects: u64,
    /// Connections closed by `evict`.
    pub evictions: u64,
    /// `e ...` replies sent.
    pub errors: u64,
    /// Connections dropped for a syntax error.
    pub syntax_errors: u64,
    /// Wrong secrets and `e auth required` rejections.
    pub auth_failures: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused (`--allow`, the connection cap).
    pub rejected: u64,
    /// The last fencing token issued (0 before the first grant).
    pub token: u64,
    /// Complete commands of every kind.
    pub commands: u64,
    /// Every `name=value` pair of the reply, in order, unknown ones
    /// included.
    pub fields: Vec<(String, String)>,
}

/// A reply line, classified.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Locked,
    Acquired(u64),
    Timeout,
    Unlocked,
    Ok,
    Evicted(u64),
    Info(Info),
    Stats(Stats),
    Error(ErrorReply),
    UnknownError(String),
}

/// What a command produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Done,
    Token(u64),
    Info(Info),
    Stats(Stats),
    Evicted(u64),
}

impl Outcome {
    /// The fencing token of an `acquire` grant; `None` for a `lock` grant
    /// (the original `l locked` reply carries none).
    #[cfg(feature = "tokio")]
    pub(crate) fn token(&self) -> Option<u64> {
        match self {
            Outcome::Token(t) => Some(*t),
            _ => None,
        }
    }

    /// The outcome of `acquire`.
    pub(crate) fn into_token(self) -> u64 {
        match self {
            Outcome::Token(t) => t,
            _ => unreachable!("interpret gives acquire a token"),
        }
    }

    /// The outcome of `info`.
    pub(crate) fn into_info(self) -> Info {
        match self {
            Outcome::Info(info) => info,
            _ => unreachable!("interpret gives info an Info"),
        }
    }

    /// The outcome of `stats`.
    pub(crate) fn into_stats(self) -> Stats {
        match self {
            Outcome::Stats(stats) => stats,
            _ => unreachable!("interpret gives stats a Stats"),
        }
    }

    /// The outcome of `evict`: how many connections it closed.
    pub(crate) fn into_evicted(self) -> u64 {
        match self {
            Outcome::Evicted(n) => n,
            _ => unreachable!("interpret gives evict a count"),
        }
    }
}

/// Why a command did not produce its outcome.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `t timeout`; the connection is fine.
    Timeout,
    /// A known `e` reply. The connection is fine, except after
    /// `auth required` and `auth failed`, when the daemon closes it.
    Rejected(ErrorReply),
    /// An `e` reply this client does not know; the connection is fine.
    Unknown(String),
    /// Not a reply to this command: the connection must be closed.
    Unexpected(String),
}

impl Refusal {
    /// Whether the connection must be (or already was) closed.
    pub(crate) fn closes(&self) -> bool {
        matches!(
            self,
            Refusal::Unexpected(_)
                | Refusal::Rejected(ErrorReply::AuthFailed | ErrorReply::AuthRequired)
        )
    }
}

/// Interprets `line` (CRLF included) as the reply to `command`.
pub(crate) fn interpret(command: &Command<'_>, line: &[u8]) -> Result<Outcome, Refusal> {
    let unexpected = || Refusal::Unexpected(String::from_utf8_lossy(line).trim_end().to_owned());
    let reply = parse_reply(line).ok_or_else(unexpected)?;
    match (command, reply) {
        (_, Reply::Error(e)) => Err(Refusal::Rejected(e)),
        (_, Reply::UnknownError(m)) => Err(Refusal::Unknown(m)),
        (Command::Lock { .. } | Command::Acquire { .. }, Reply::Timeout) => Err(Refusal::Timeout),
        (Command::Lock { .. }, Reply::Locked) => Ok(Outcome::Done),
        (Command::Acquire { .. }, Reply::Acquired(t)) => Ok(Outcome::Token(t)),
        (Command::Unlock { .. }, Reply::Unlocked) => Ok(Outcome::Done),
        (Command::Info { .. }, Reply::Info(i)) => Ok(Outcome::Info(i)),
        (Command::Stats, Reply::Stats(s)) => Ok(Outcome::Stats(s)),
        (Command::Name { .. } | Command::Auth { .. }, Reply::Ok) => Ok(Outcome::Done),
        (Command::Evict { .. }, Reply::Evicted(n)) => Ok(Outcome::Evicted(n)),
        _ => Err(unexpected()),
    }
}

/// The error for a reply that is not the command's outcome.
pub(crate) fn refusal_kind(refusal: Refusal) -> ErrorKind {
    match refusal {
        Refusal::Timeout => ErrorKind::Timeout,
        Refusal::Rejected(e) => ErrorKind::Rejected(e),
        Refusal::Unknown(m) => ErrorKind::Server(m),
        Refusal::Unexpected(line) => ErrorKind::UnexpectedReply(line),
    }
}

/// The error of a call on a connection that an earlier error closed.
pub(crate) fn closed_error(server: &str) -> Error {
    Error::io(
        server,
        io::ErrorKind::NotConnected,
        "the connection was closed after an earlier error",
    )
}

/// What one round trip of `command` to `server` came to: `exchanged` is
/// the reply line or the I/O error that stopped it. The flag says whether
/// the connection must now be closed (after an I/O error, a reply that is
/// not an answer to the command, or a refusal after which the daemon
/// closes the connection).
pub(crate) fn settle(
    command: &Command<'_>,
    server: &str,
    exchanged: io::Result<Vec<u8>>,
) -> (Result<Outcome, Error>, bool) {
    match exchanged {
        Err(e) => {
            let e = command.io_error(&e);
            (Err(Error::new(ErrorKind::Io(e), server)), true)
        }
        Ok(line) => match interpret(command, &line) {
            Ok(outcome) => (Ok(outcome), false),
            Err(refusal) => {
                let closes = refusal.closes();
                (Err(Error::new(refusal_kind(refusal), server)), closes)
            }
        },
    }
}

/// Checks the end of a reply line read with a limit of
/// [`MAX_REPLY_BYTES`]: `n` bytes were read into `line`. An empty read or
/// a line cut short by the end of the stream is `UnexpectedEof`; a line
/// cut at the limit is left for [`interpret`] to reject.
pub(crate) fn check_reply_end(line: &[u8], n: usize) -> io::Result<()> {
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    if !line.ends_with(b"\n") && n < MAX_REPLY_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection in the middle of a reply",
        ));
    }
    Ok(())
}

/// The error of a connect that reached no address of `server`: the last
/// address's error, or `NotFound` when the name resolved to none.
pub(crate) fn connect_error(server: &str, last_err: Option<io::Error>) -> Error {
    let e = last_err.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "the server name resolved to no address",
        )
    });
    Error::new(ErrorKind::Io(e), server)
}

fn parse_reply(line: &[u8]) -> Option<Reply> {
    for (bytes, reply) in [
        (wire::LOCKED, Reply::Locked),
        (wire::TIMEOUT, Reply::Timeout),
        (wire::UNLOCKED, Reply::Unlocked),
        (wire::OK, Reply::Ok),
    ] {
        if line == bytes {
            return Some(reply);
        }
    }
    let body = std::str::from_utf8(line.strip_suffix(wire::CRLF)?).ok()?;
    if body.bytes().any(|b| b.is_ascii_control()) {
        return None;
    }
    if let Some(e) = ErrorReply::from_line(line) {
        return Some(Reply::Error(e));
    }
    if let Some(message) = body.strip_prefix("e ") {
        return Some(Reply::UnknownError(message.to_owned()));
    }
    if let Some(token) = strip(body, wire::ACQUIRED_PREFIX) {
        return parse_number(token).map(Reply::Acquired);
    }
    if let Some(n) = strip(body, wire::EVICTED_PREFIX) {
        return parse_number(n).map(Reply::Evicted);
    }
    if let Some(fields) = strip(body, wire::INFO_PREFIX) {
        return parse_info(fields).map(Reply::Info);
    }
    if let Some(fields) = strip(body, wire::STATS_PREFIX) {
        return parse_stats(fields).map(Reply::Stats);
    }
    None
}

fn strip<'a>(body: &'a str, prefix: &[u8]) -> Option<&'a str> {
    body.strip_prefix(std::str::from_utf8(prefix).ok()?)
}

/// A decimal u64 with no sign, no spaces, no leading `+`.
fn parse_number<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `name=value` pairs one space apart; a name appears at most once.
fn pairs(fields: &str) -> Option<Vec<(&str, &str)>> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for pair in fields.split(' ') {
        let (name, value) = pair.split_once('=')?;
        if name.is_empty() || out.iter().any(|(n, _)| *n == name) {
            return None;
        }
        out.push((name, value));
    }
    Some(out)
}

fn parse_info(fields: &str) -> Option<Info> {
    let (mut limit, mut holders, mut waiters) = (None, None, None);
    let mut info = Info {
        limit: 0,
        holders: 0,
        waiters: 0,
        token: None,
        held: None,
        peer: None,
        name: None,
    };
    for (name, value) in pairs(fields)? {
        match name {
            "limit" => limit = Some(parse_number(value)?),
            "holders" => holders = Some(parse_number(value)?),
            "waiters" => waiters = Some(parse_number(value)?),
            "token" => info.token = Some(parse_number(value)?),
            "held_ms" => info.held = Some(Duration::from_millis(parse_number(value)?)),
            "peer" if !value.is_empty() => info.peer = Some(value.to_owned()),
            "name" if !value.is_empty() => info.name = Some(value.to_owned()),
            "peer" | "name" => return None,
            _ => {} // a field of a newer daemon
        }
    }
    info.limit = limit.filter(|&n| n <= wire::MAX_LIMIT)?;
    info.holders = holders?;
    info.waiters = waiters?;
    Some(info)
}

fn parse_stats(fields: &str) -> Option<Stats> {
    let pairs = pairs(fields)?;
    let number = |field: &str| -> Option<u64> {
        let (_, value) = pairs.iter().find(|(n, _)| *n == field)?;
        parse_number(value)
    };
    let version = pairs.iter().find(|(n, _)| *n == "version")?.1;
    if version.is_empty() {
        return None;
    }
    Some(Stats {
        version: version.to_owned(),
        uptime_s: number("uptime_s")?,
        connections: number("connections")?,
        keys: number("keys")?,
        holders: number("holders")?,
        waiters: number("waiters")?,
        grants: number("grants")?,
        timeouts: number("timeouts")?,
        unlocks: number("unlocks")?,
        disconnects: number("disconnects")?,
        evictions: number("evictions")?,
        errors: number("errors")?,
        syntax_errors: number("syntax_errors")?,
        auth_failures: number("auth_failures")?,
        accepted: number("accepted")?,
        rejected: number("rejected")?,
        token: number("token")?,
        commands: number("commands")?,
        fields: pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
    })
}

impl fmt::Display for Command<'_> {
    /// The command as a human reads it in an error message (the secret of
    /// `auth` left out).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Command::Auth { .. } => f.write_str("auth"),
            _ => {
                let line = self.encode();
                f.write_str(String::from_utf8_lossy(&line).trim_end())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_line(value: impl Fn(usize) -> String) -> String {
        let fields: Vec<String> = wire::STATS_FIELDS
            .iter()
            .enumerate()
            .map(|(i, name)| format!("{name}={}", value(i)))
            .collect();
        format!("s {}\r\n", fields.join(" "))
    }

    #[test]
    fn every_documented_stats_field_is_parsed() {
        // Each field gets its own value, so a field read from the wrong
        // name shows.
        let line = stats_line(|i| {
            if i == 0 {
                "1.2.3".into()
            } else {
                (100 + i).to_string()
            }
        });
        let Ok(Outcome::Stats(s)) = interpret(&Command::Stats, line.as_bytes()) else {
            panic!("{line}");
        };
        let got = [
            s.uptime_s,
            s.connections,
            s.keys,
            s.holders,
            s.waiters,
            s.grants,
            s.timeouts,
            s.unlocks,
            s.disconnects,
            s.evictions,
            s.errors,
            s.syntax_errors,
            s.auth_failures,
            s.accepted,
            s.rejected,
            s.token,
            s.commands,
        ];
        let want: Vec<u64> = (1..wire::STATS_FIELDS.len() as u64)
            .map(|i| 100 + i)
            .collect();
        assert_eq!(got.to_vec(), want);
        assert_eq!(s.version, "1.2.3");
        assert_eq!(s.fields.len(), wire::STATS_FIELDS.len());
        assert_eq!(s.fields[1], ("uptime_s".to_owned(), "101".to_owned()));
    }

    #[test]
    fn stats_ignore_unknown_fields_and_need_the_documented_ones() {
        let line = stats_line(|_| "7".into());
        let newer = line.replace("\r\n", " shards=4 mood=calm\r\n");
        let Ok(Outcome::Stats(s)) = interpret(&Command::Stats, newer.as_bytes()) else {
            panic!("{newer}");
        };
        assert_eq!(s.token, 7);
        assert_eq!(
            s.fields.last().unwrap(),
            &("mood".to_owned(), "calm".to_owned())
        );
        // Each documented field is required.
        for name in wire::STATS_FIELDS {
            let without = line
                .replace(&format!(" {name}=7"), "")
                .replace(&format!("s {name}=7 "), "s ");
            assert!(
                matches!(
                    interpret(&Command::Stats, without.as_bytes()),
                    Err(Refusal::Unexpected(_))
                ),
                "{without}"
            );
        }
        for bad in ["s \r\n", "s version=1 version=2\r\n", "s uptime_s\r\n"] {
            assert!(
                matches!(
                    interpret(&Command::Stats, bad.as_bytes()),
                    Err(Refusal::Unexpected(_))
                ),
                "{bad}"
            );
        }
        let bad_number = line.replace("token=7", "token=-7");
        assert!(matches!(
            interpret(&Command::Stats, bad_number.as_bytes()),
            Err(Refusal::Unexpected(_))
        ));
    }

    #[test]
    fn info_lines() {
        let info = |line: &str| match interpret(&Command::Info { key: "k" }, line.as_bytes()) {
            Ok(Outcome::Info(i)) => Some(i),
            _ => None,
        };
        let free = info("i limit=0 holders=0 waiters=0\r\n").unwrap();
        assert_eq!((free.limit, free.holders, free.waiters), (0, 0, 0));
        assert_eq!(
            (free.token, free.held, free.peer, free.name),
            (None, None, None, None)
        );
        let held = info(
            "i limit=3 holders=2 waiters=5 token=1764655200000000001 held_ms=1500 peer=127.0.0.1:40000 name=web1/42/cron future=x\r\n",
        )
        .unwrap();
        assert_eq!((held.limit, held.holders, held.waiters), (3, 2, 5));
        assert_eq!(held.token, Some(1_764_655_200_000_000_001));
        assert_eq!(held.held, Some(Duration::from_millis(1500)));
        assert_eq!(held.peer.as_deref(), Some("127.0.0.1:40000"));
        assert_eq!(held.name.as_deref(), Some("web1/42/cron"));
        let v6 = info("i limit=1 holders=1 waiters=0 token=9 held_ms=0 peer=[::1]:5\r\n").unwrap();
        assert_eq!(v6.peer.as_deref(), Some("[::1]:5"));
        for bad in [
            "i limit=1 holders=1\r\n",
            "i limit=x holders=0 waiters=0\r\n",
            "i limit=70000 holders=0 waiters=0\r\n",
            "i  limit=1 holders=0 waiters=0\r\n",
            "i limit=1 holders=0 waiters=0 \r\n",
            "i limit=1 holders=0 waiters=0\n",
            "i limit=1 holders=0 waiters=0 name=\r\n",
            "i limit=1 holders=0 waiters=0 token=1 token=2\r\n",
        ] {
            assert_eq!(info(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn replies_are_checked_against_their_command() {
        let lock = Command::Lock {
            key: "k",
            timeout_ms: 5,
        };
        let acquire = Command::Acquire {
            key: "k",
            timeout_ms: 5,
            limit: 2,
        };
        assert_eq!(interpret(&lock, b"l locked\r\n"), Ok(Outcome::Done));
        assert_eq!(interpret(&lock, b"t timeout\r\n"), Err(Refusal::Timeout));
        assert_eq!(interpret(&acquire, b"t timeout\r\n"), Err(Refusal::Timeout));
        assert_eq!(interpret(&acquire, b"a 42\r\n"), Ok(Outcome::Token(42)));
        assert_eq!(
            interpret(&acquire, b"a 18446744073709551615\r\n"),
            Ok(Outcome::Token(u64::MAX))
        );
        assert_eq!(
            interpret(&Command::Evict { key: "k" }, b"o evicted 3\r\n"),
            Ok(Outcome::Evicted(3))
        );
        assert_eq!(
            interpret(&Command::Name { label: "x" }, b"o ok\r\n"),
            Ok(Outcome::Done)
        );
        assert_eq!(
            interpret(&Command::Auth { secret: "x" }, b"o ok\r\n"),
            Ok(Outcome::Done)
        );
        for e in ErrorReply::ALL {
            assert_eq!(interpret(&lock, e.as_bytes()), Err(Refusal::Rejected(e)));
        }
        assert_eq!(
            interpret(&lock, b"e cosmic rays\r\n"),
            Err(Refusal::Unknown("cosmic rays".into()))
        );
        for (command, line) in [
            (lock, &b"a 42\r\n"[..]),
            (lock, b"u unlocked\r\n"),
            (lock, b"l locked\n"),
            (lock, b"l locked"),
            (acquire, b"l locked\r\n"),
            (acquire, b"a \r\n"),
            (acquire, b"a -1\r\n"),
            (acquire, b"a 18446744073709551616\r\n"),
            (acquire, b"a 1 2\r\n"),
            (Command::Unlock { key: "k" }, b"t timeout\r\n"),
            (Command::Evict { key: "k" }, b"o ok\r\n"),
            (Command::Name { label: "x" }, b"o evicted 1\r\n"),
            (Command::Stats, b"i limit=0 holders=0 waiters=0\r\n"),
            (lock, b"e \x00\r\n"),
        ] {
            assert!(
                matches!(interpret(&command, line), Err(Refusal::Unexpected(_))),
                "{command} / {line:?}"
            );
        }
    }

    #[test]
    fn command_lines() {
        let cases: [(Command<'_>, &str); 9] = [
            (
                Command::Lock {
                    key: "k",
                    timeout_ms: 0,
                },
                "lock k 0\r\n",
            ),
            (
                Command::Acquire {
                    key: "k",
                    timeout_ms: 10,
                    limit: 1,
                },
                "acquire k 10\r\n",
            ),
            (
                Command::Acquire {
                    key: "k",
                    timeout_ms: 10,
                    limit: 65535,
                },
                "acquire k 10 65535\r\n",
            ),
            (Command::Unlock { key: "k" }, "unlock k\r\n"),
            (Command::Info { key: "k" }, "info k\r\n"),
            (Command::Stats, "stats\r\n"),
            (Command::Name { label: "a/b" }, "name a/b\r\n"),
            (Command::Auth { secret: "s=" }, "auth s=\r\n"),
            (Command::Evict { key: "k" }, "evict k\r\n"),
        ];
        for (command, line) in cases {
            assert_eq!(command.encode(), line.as_bytes());
        }
        assert_eq!(Command::Auth { secret: "hidden" }.to_string(), "auth");
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed");
        let acquire = Command::Acquire {
            key: "k",
            timeout_ms: 5,
            limit: 1,
        };
        assert_eq!(
            acquire.io_error(&eof).to_string(),
            "acquire k 5: closed (a daemon older than protocol version 2 closes the connection on `acquire`)"
        );
        assert_eq!(
            Command::Lock {
                key: "k",
                timeout_ms: 5
            }
            .io_error(&eof)
            .to_string(),
            "lock k 5: closed"
        );
        // The longest key with the longest timeout and limit fits the
        // daemon's default line limit exactly.
        let key = "k".repeat(MAX_KEY_BYTES);
        let line = format!("acquire {key} {} 65535\r\n", u64::MAX);
        assert_eq!(line.len(), wire::DEFAULT_MAX_LINE_BYTES);
    }

    #[test]
    fn argument_checks_at_0_1_and_the_maximum() {
        assert_eq!(validate_limit(0), Err(ArgumentError::Limit(0)));
        assert_eq!(validate_limit(1), Ok(()));
        assert_eq!(validate_limit(wire::MAX_LIMIT), Ok(()));
        assert_eq!(
            validate_limit(wire::MAX_LIMIT + 1),
            Err(ArgumentError::Limit(wire::MAX_LIMIT + 1))
        );
        assert_eq!(validate_label(""), Err(ArgumentError::Label));
        assert_eq!(validate_label("a"), Ok(()));
        assert_eq!(validate_label(&"a".repeat(wire::MAX_LABEL_BYTES)), Ok(()));
        assert_eq!(
            validate_label(&"a".repeat(wire::MAX_LABEL_BYTES + 1)),
            Err(ArgumentError::Label)
        );
        assert_eq!(validate_label("host/1:cron_x.y-z"), Ok(()));
        assert_eq!(validate_label("a b"), Err(ArgumentError::Label));
        assert_eq!(validate_secret(""), Err(ArgumentError::Secret));
        assert_eq!(validate_secret("s"), Ok(()));
        assert_eq!(validate_secret(&"s".repeat(wire::MAX_SECRET_BYTES)), Ok(()));
        assert_eq!(
            validate_secret(&"s".repeat(wire::MAX_SECRET_BYTES + 1)),
            Err(ArgumentError::Secret)
        );
        assert_eq!(validate_secret("aB3+/=-_."), Ok(()));
        assert_eq!(validate_secret("a:b"), Err(ArgumentError::Secret));
    }

    #[test]
    fn key_validation() {
        assert_eq!(validate_key("aZ09"), Ok(()));
        assert_eq!(validate_key(""), Err(KeyError::Empty));
        assert_eq!(
            validate_key("ab c"),
            Err(KeyError::InvalidByte {
                byte: b' ',
                offset: 2
            })
        );
        assert_eq!(
            validate_key("é"),
            Err(KeyError::InvalidByte {
                byte: 0xc3,
                offset: 0
            })
        );
        assert_eq!(validate_key("k"), Ok(()));
        assert_eq!(validate_key(&"k".repeat(MAX_KEY_BYTES)), Ok(()));
        assert_eq!(
            validate_key(&"k".repeat(MAX_KEY_BYTES + 1)),
            Err(KeyError::TooLong {
                len: MAX_KEY_BYTES + 1,
                max: MAX_KEY_BYTES
            })
        );
    }

    #[test]
    fn timeouts_round_up_and_saturate() {
        assert_eq!(timeout_to_ms(Duration::ZERO), 0);
        assert_eq!(timeout_to_ms(Duration::from_nanos(1)), 1);
        assert_eq!(timeout_to_ms(Duration::from_micros(1500)), 2);
        assert_eq!(timeout_to_ms(Duration::from_secs(3)), 3000);
        assert_eq!(timeout_to_ms(WAIT_FOREVER), wire::INFINITE_TIMEOUT_MS);
        let margin = Some(Duration::from_secs(5));
        assert_eq!(reply_timeout(0, margin), margin);
        assert_eq!(reply_timeout(1000, margin), Some(Duration::from_secs(6)));
        assert_eq!(reply_timeout(wire::INFINITE_TIMEOUT_MS - 1, None), None);
        assert_eq!(reply_timeout(wire::INFINITE_TIMEOUT_MS, margin), None);
    }
}
