//! The client's errors: one per way a call can fail, each naming the
//! server it talked to.

use std::fmt;
use std::io;

use crate::wire::{self, ErrorReply};

/// Why a call failed, with the server it concerned.
///
/// Match on [`Error::kind`]; [`Error::server`] names the daemon
/// (`host:port` as given to the client), and the `Display` text starts
/// with it.
///
/// ```no_run
/// use std::time::Duration;
/// use dreadlock::client::{Client, ErrorKind, ErrorReply};
///
/// let client = Client::connect("127.0.0.1:6001")?;
/// match client.lock("nightlybackup", Duration::from_secs(10)) {
///     Ok(_guard) => { /* ... */ }
///     Err(e) if e.is_timeout() => eprintln!("another backup is still running"),
///     Err(e) => match e.kind() {
///         ErrorKind::Rejected(ErrorReply::TooManyLocks) => eprintln!("{e}: release some first"),
///         _ => return Err(e.into()),
///     },
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    server: Option<String>,
}

/// What went wrong.
#[derive(Debug)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The daemon answered `t timeout`: other connections held the lock
    /// for the whole timeout. The connection is fine.
    Timeout,
    /// The daemon answered one of its `e <message>` replies
    /// (PROTOCOL.md). Such errors change no state and keep the connection,
    /// except [`ErrorReply::AuthRequired`] and [`ErrorReply::AuthFailed`],
    /// after which the daemon closes it.
    Rejected(ErrorReply),
    /// The daemon answered an `e <message>` this client does not know (a
    /// newer daemon); the message is kept without the `e ` and the CRLF.
    /// The connection is kept.
    Server(String),
    /// The key is not one the protocol allows. Nothing was sent.
    InvalidKey(KeyError),
    /// A limit, name or secret the protocol does not allow. Nothing was
    /// sent.
    InvalidArgument(ArgumentError),
    /// The daemon sent something that is not a reply to the command (a
    /// protocol violation). The connection was closed, releasing its lock.
    UnexpectedReply(String),
    /// Connecting, sending or receiving failed, or no reply came in time
    /// (`io::ErrorKind::TimedOut`; the daemon's own `t timeout` is
    /// [`ErrorKind::Timeout`]), or the daemon closed the connection
    /// (`UnexpectedEof`; a daemon older than protocol version 2 does so on
    /// the new commands, and the message says it). The connection was
    /// closed, so the daemon releases the lock it held.
    Io(io::Error),
    /// A client needs at least one server.
    NoServers,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, server: &str) -> Error {
        Error {
            kind,
            server: Some(server.to_owned()),
        }
    }

    pub(crate) fn io(server: &str, kind: io::ErrorKind, message: impl fmt::Display) -> Error {
        Error::new(
            ErrorKind::Io(io::Error::new(kind, message.to_string())),
            server,
        )
    }

    pub(crate) fn no_servers() -> Error {
        Error {
            kind: ErrorKind::NoServers,
            server: None,
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// Takes the [`ErrorKind`] out (to get at an owned `io::Error`).
    pub fn into_kind(self) -> ErrorKind {
        self.kind
    }

    /// The server this error concerns (`host:port` as the client was
    /// given it); `None` only for [`ErrorKind::NoServers`].
    pub fn server(&self) -> Option<&str> {
        self.server.as_deref()
    }

    /// Whether the daemon answered `t timeout`.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, ErrorKind::Timeout)
    }

    /// The daemon's `e` reply, if that is what this is.
    pub fn reply(&self) -> Option<ErrorReply> {
        match self.kind {
            ErrorKind::Rejected(e) => Some(e),
            _ => None,
        }
    }

    /// The I/O error, if that is what this is.
    pub fn io_error(&self) -> Option<&io::Error> {
        match &self.kind {
            ErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(server) = &self.server {
            write!(f, "{server}: ")?;
        }
        self.kind.fmt(f)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Timeout => f.write_str("not granted within the timeout"),
            ErrorKind::Rejected(e) => write!(f, "the server said: {}", e.message()),
            ErrorKind::Server(msg) => write!(f, "the server said: {msg}"),
            ErrorKind::InvalidKey(e) => write!(f, "invalid key: {e}"),
            ErrorKind::InvalidArgument(e) => e.fmt(f),
            ErrorKind::UnexpectedReply(line) => {
                write!(f, "unexpected reply from the server: {line:?}")
            }
            ErrorKind::Io(e) => e.fmt(f),
            ErrorKind::NoServers => f.write_str("no server given"),
        }
    }
}

/// The `Display` text includes the inner error's, so `source` is `None`
/// (use [`Error::io_error`] or match [`Error::kind`]).
impl std::error::Error for Error {}

/// Why a key is not valid: keys are 1 to
/// [`MAX_KEY_BYTES`](super::MAX_KEY_BYTES) ASCII letters and digits
/// (`[A-Za-z0-9]+`), case-sensitive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// The key is empty.
    Empty,
    /// The first byte that is not an ASCII letter or digit.
    InvalidByte {
        /// The byte.
        byte: u8,
        /// Its offset in the key.
        offset: usize,
    },
    /// The key is longer than the client sends.
    TooLong {
        /// The key's length in bytes.
        len: usize,
        /// The longest key allowed.
        max: usize,
    },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            KeyError::Empty => f.write_str("the key is empty"),
            KeyError::InvalidByte { byte, offset } => write!(
                f,
                "byte {:?} at offset {offset} is not an ASCII letter or digit",
                char::from(byte)
            ),
            KeyError::TooLong { len, max } => {
                write!(f, "the key is {len} bytes long; the limit is {max}")
            }
        }
    }
}

impl std::error::Error for KeyError {}

/// An argument other than a key that the protocol does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArgumentError {
    /// A semaphore limit outside `1..=`[`wire::MAX_LIMIT`].
    Limit(u32),
    /// A `name` label that is empty, longer than
    /// [`wire::MAX_LABEL_BYTES`], or has a byte other than ASCII letters,
    /// digits and `- _ . : /`.
    Label,
    /// An `auth` secret that is empty, longer than
    /// [`wire::MAX_SECRET_BYTES`], or has a byte other than ASCII letters,
    /// digits and `- _ . + / =`.
    Secret,
}

impl fmt::Display for ArgumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ArgumentError::Limit(n) => {
                write!(f, "invalid limit {n}: it must be 1 to {}", wire::MAX_LIMIT)
            }
            ArgumentError::Label => write!(
                f,
                "invalid name: 1 to {} bytes of ASCII letters, digits and - _ . : /",
                wire::MAX_LABEL_BYTES
            ),
            ArgumentError::Secret => write!(
                f,
                "invalid secret: 1 to {} bytes of ASCII letters, digits and - _ . + / =",
                wire::MAX_SECRET_BYTES
            ),
        }
    }
}

impl std::error::Error for ArgumentError {}
