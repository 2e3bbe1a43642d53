//! The wire vocabulary shared by the daemon and the client: reply bytes,
//! limits and the byte classes of the grammar (`PROTOCOL.md`).
//!
//! This module is std-only and has no dependency on the daemon's internals,
//! so the client can use it in every build configuration. The server's
//! parser and core take their constants from here too, so both sides of
//! the wire cannot drift apart.

/// The daemon's default TCP port (the original's).
pub const DEFAULT_PORT: u16 = 6001;

/// Default longest command line in bytes, CRLF included: the original read
/// commands into a 10,000-byte buffer, so a longer line could never parse.
pub const DEFAULT_MAX_LINE_BYTES: usize = 10_000;

/// Timeouts of at least this many milliseconds (67,645,734,910 ms, about
/// 2.1 years) never fire: they mean "wait until granted or disconnected"
/// (PROTOCOL.md, rule 7). A client sends "forever" as this number; the
/// daemon's timer wheel reaches exactly one millisecond further (the core
/// checks that at compile time).
pub const INFINITE_TIMEOUT_MS: u64 = 67_645_734_910;

/// Largest semaphore size `acquire K T N` accepts (PROTOCOL.md, v2 rule 2);
/// `N = 0` or larger is `e bad limit`.
pub const MAX_LIMIT: u32 = 65_535;

/// Longest `name` label in bytes; longer is `e name too long`.
pub const MAX_LABEL_BYTES: usize = 64;

/// Longest `auth` secret in bytes the daemon compares; longer is
/// `e auth failed`.
pub const MAX_SECRET_BYTES: usize = 256;

/// Whether `b` may appear in a key: ASCII letters and digits.
pub const fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// Whether `b` may appear in a `name` label.
pub const fn is_label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/')
}

/// Whether `b` may appear in an `auth` secret.
pub const fn is_secret_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+' | b'/' | b'=')
}

/// The command words of the grammar (PROTOCOL.md), matched
/// case-insensitively.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `lock K T`
    Lock,
    /// `unlock K`
    Unlock,
    /// `acquire K T [N]`
    Acquire,
    /// `info K`
    Info,
    /// `stats`
    Stats,
    /// `name L`
    Name,
    /// `auth S`
    Auth,
    /// `evict K`
    Evict,
}

impl Verb {
    /// Every verb, in declaration order (`verb as usize` indexes it). No
    /// word is a prefix of another.
    pub const ALL: [Verb; 8] = [
        Verb::Lock,
        Verb::Unlock,
        Verb::Acquire,
        Verb::Info,
        Verb::Stats,
        Verb::Name,
        Verb::Auth,
        Verb::Evict,
    ];

    /// The command word, in lower case (also its metric label value).
    pub const fn word(self) -> &'static str {
        match self {
            Verb::Lock => "lock",
            Verb::Unlock => "unlock",
            Verb::Acquire => "acquire",
            Verb::Info => "info",
            Verb::Stats => "stats",
            Verb::Name => "name",
            Verb::Auth => "auth",
            Verb::Evict => "evict",
        }
    }
}

/// `lock` granted.
pub const LOCKED: &[u8] = b"l locked\r\n";
/// A wait ended at its deadline.
pub const TIMEOUT: &[u8] = b"t timeout\r\n";
/// `unlock` done.
pub const UNLOCKED: &[u8] = b"u unlocked\r\n";
/// `name`, `auth` done.
pub const OK: &[u8] = b"o ok\r\n";
/// Starts the reply to a granted `acquire`: `a <token>\r\n`.
pub const ACQUIRED_PREFIX: &[u8] = b"a ";
/// Starts the reply to `info`: `i limit=<n> holders=<n> waiters=<n> ...\r\n`.
pub const INFO_PREFIX: &[u8] = b"i ";
/// Starts the reply to `stats`: `s name=value ...\r\n`.
pub const STATS_PREFIX: &[u8] = b"s ";
/// Starts the reply to `evict`: `o evicted <n>\r\n`.
pub const EVICTED_PREFIX: &[u8] = b"o evicted ";
/// Ends every reply line.
pub const CRLF: &[u8] = b"\r\n";

/// The fields of a `stats` reply, in the documented order (PROTOCOL.md).
/// Clients must ignore fields they do not know; new ones are only appended.
pub const STATS_FIELDS: [&str; 18] = [
    "version",
    "uptime_s",
    "connections",
    "keys",
    "holders",
    "waiters",
    "grants",
    "timeouts",
    "unlocks",
    "disconnects",
    "evictions",
    "errors",
    "syntax_errors",
    "auth_failures",
    "accepted",
    "rejected",
    "token",
    "commands",
];

/// Every `e <message>` reply the daemon sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorReply {
    /// `lock`/`acquire` of a key this connection already holds.
    AlreadyLocked,
    /// `unlock` of a key nobody holds.
    NotLocked,
    /// `unlock` of a key other connections hold.
    NotOwner,
    /// The connection holds its maximum number of keys.
    TooManyLocks,
    /// The lock table is at its byte bound.
    TableFull,
    /// `acquire` with an N other than the key's, or `lock` on a key with N > 1.
    LimitMismatch,
    /// `acquire` with N = 0 or N > [`MAX_LIMIT`].
    BadLimit,
    /// `name` with a label over [`MAX_LABEL_BYTES`].
    NameTooLong,
    /// Auth is on and the first command was not `auth` (then closed).
    AuthRequired,
    /// A wrong secret (sent after a delay, then closed).
    AuthFailed,
    /// `auth` on a daemon started without `--auth-file`.
    AuthNotEnabled,
    /// `evict` from a connection that may not evict.
    NotAllowed,
}

impl ErrorReply {
    /// Every error reply, for tables and tests.
    pub const ALL: [ErrorReply; 12] = [
        ErrorReply::AlreadyLocked,
        ErrorReply::NotLocked,
        ErrorReply::NotOwner,
        ErrorReply::TooManyLocks,
        ErrorReply::TableFull,
        ErrorReply::LimitMismatch,
        ErrorReply::BadLimit,
        ErrorReply::NameTooLong,
        ErrorReply::AuthRequired,
        ErrorReply::AuthFailed,
        ErrorReply::AuthNotEnabled,
        ErrorReply::NotAllowed,
    ];

    /// The reply's bytes on the wire, CRLF included.
    pub const fn as_bytes(self) -> &'static [u8] {
        match self {
            ErrorReply::AlreadyLocked => b"e already locked\r\n",
            ErrorReply::NotLocked => b"e not locked\r\n",
            ErrorReply::NotOwner => b"e not owner\r\n",
            ErrorReply::TooManyLocks => b"e too many locks\r\n",
            ErrorReply::TableFull => b"e lock table full\r\n",
            ErrorReply::LimitMismatch => b"e limit mismatch\r\n",
            ErrorReply::BadLimit => b"e bad limit\r\n",
            ErrorReply::NameTooLong => b"e name too long\r\n",
            ErrorReply::AuthRequired => b"e auth required\r\n",
            ErrorReply::AuthFailed => b"e auth failed\r\n",
            ErrorReply::AuthNotEnabled => b"e auth not enabled\r\n",
            ErrorReply::NotAllowed => b"e not allowed\r\n",
        }
    }

    /// The message after `e `, without CRLF (for logs and metric labels).
    pub const fn message(self) -> &'static str {
        match self {
            ErrorReply::AlreadyLocked => "already locked",
            ErrorReply::NotLocked => "not locked",
            ErrorReply::NotOwner => "not owner",
            ErrorReply::TooManyLocks => "too many locks",
            ErrorReply::TableFull => "lock table full",
            ErrorReply::LimitMismatch => "limit mismatch",
            ErrorReply::BadLimit => "bad limit",
            ErrorReply::NameTooLong => "name too long",
            ErrorReply::AuthRequired => "auth required",
            ErrorReply::AuthFailed => "auth failed",
            ErrorReply::AuthNotEnabled => "auth not enabled",
            ErrorReply::NotAllowed => "not allowed",
        }
    }

    /// The error a reply line (with or without its CRLF) stands for, if it
    /// is one the daemon sends.
    pub fn from_line(line: &[u8]) -> Option<ErrorReply> {
        let line = line.strip_suffix(CRLF).unwrap_or(line);
        let message = line.strip_prefix(b"e ")?;
        ErrorReply::ALL
            .into_iter()
            .find(|e| e.message().as_bytes() == message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_replies_round_trip() {
        for e in ErrorReply::ALL {
            let bytes = e.as_bytes();
            assert!(bytes.starts_with(b"e ") && bytes.ends_with(CRLF));
            assert_eq!(&bytes[2..bytes.len() - 2], e.message().as_bytes());
            assert_eq!(ErrorReply::from_line(bytes), Some(e));
            assert_eq!(ErrorReply::from_line(&bytes[..bytes.len() - 2]), Some(e));
        }
        assert_eq!(ErrorReply::from_line(b"e something new\r\n"), None);
        assert_eq!(ErrorReply::from_line(LOCKED), None);
    }

    #[test]
    fn byte_classes_follow_the_grammar() {
        for b in 0..=255u8 {
            assert_eq!(is_key_byte(b), b.is_ascii_alphanumeric());
            assert!(!is_key_byte(b) || (is_label_byte(b) && is_secret_byte(b)));
        }
        for b in *b"-_.:/" {
            assert!(is_label_byte(b));
        }
        for b in *b"-_.+/=" {
            assert!(is_secret_byte(b));
        }
        for b in *b" \t\r\n+=" {
            assert!(!is_label_byte(b) || b == b'+' || b == b'=');
        }
        assert!(!is_label_byte(b'+') && !is_label_byte(b'='));
        assert!(!is_secret_byte(b':') && !is_secret_byte(b' '));
    }
}
