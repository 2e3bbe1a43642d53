//! Client library: take dreadlock locks from Rust code.
//!
//! Blocking `std` networking, no async runtime. Three layers:
//!
//! - [`Client`]: one or more servers, a connection per server opened on first
//!   use, and [`LockGuard`]s that unlock when dropped. This is what most code
//!   wants.
//! - [`Connection`]: one TCP connection and the two protocol commands, with
//!   no guards; for callers that manage lock lifetimes themselves (the
//!   `dreadlock-cli` binary is one).
//! - [`validate_key`], [`pick_server`] and [`rendezvous_weight`]: the pure
//!   functions underneath, so that other tools can agree with this one.
//!
//! ```no_run
//! use std::time::Duration;
//! use dreadlock::client::{Client, Error};
//!
//! let client = Client::connect("127.0.0.1:6001")?;
//! match client.lock("nightlybackup", Duration::from_secs(10)) {
//!     Ok(_guard) => {
//!         // ... the critical section; the lock is released when `_guard`
//!         // goes out of scope, also if this code panics.
//!     }
//!     Err(Error::Timeout) => eprintln!("another backup is still running"),
//!     Err(e) => return Err(e.into()),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Identity: one connection, one owner
//!
//! The daemon gives a lock to the *connection* that took it, and releases
//! every lock of a connection when that connection closes. So a
//! [`LockGuard`] borrows its [`Client`]: the connection lives at least as
//! long as the guard. One client may hold many locks at once, from many
//! threads (`Client` is `Sync`). Commands on one connection run strictly in
//! order on the daemon, so while one thread waits for a contended lock,
//! other threads using the same client (to lock or unlock on that server)
//! wait too: give each thread that waits for contended locks its own
//! `Client`.
//!
//! If a connection breaks (the daemon restarts, the network fails, a reply
//! does not arrive in time), the daemon releases every lock it held. The
//! client then closes that connection for good, so that nothing is left
//! half-held, and opens a fresh one on the next call; guards taken on the
//! old connection become inert (dropping them sends nothing, and
//! [`LockGuard::unlock`] reports the loss).
//!
//! # Several servers
//!
//! A client built from several `host:port` strings sends each key to one of
//! them, chosen by *rendezvous hashing* (highest random weight): every
//! server gets a weight for the key and the heaviest wins. Removing a server
//! moves only the keys it owned; adding one moves only the keys it wins.
//! Every client of a key must list the same servers, spelled the same way
//! (`localhost:6001` and `127.0.0.1:6001` are different strings), in any
//! order.
//!
//! The weight, to reproduce in any language:
//!
//! ```text
//! weight(server, key) = fmix64(fnv1a64(server ++ "\n" ++ key))   // bytes, UTF-8
//!
//! fnv1a64(bytes): h = 0xcbf29ce484222325
//!                 for each byte b: h = (h XOR b) * 0x100000001b3   (mod 2^64)
//! fmix64(h):      h ^= h >> 33; h *= 0xff51afd7ed558ccd;           (mod 2^64)
//!                 h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53;
//!                 h ^= h >> 33
//!
//! server(key) = the server with the largest weight; on equal weights the
//!               server string that sorts first (bytewise) wins.
//! ```
//!
//! FNV-1a alone spreads keys unevenly here (all servers hash the same key
//! suffix; with three servers one got 43% of the keys `key0`..`key29999`),
//! so the 64-bit finalizer of MurmurHash3 mixes its result. Test vector
//! (checked by `cargo test`), weights for three servers:
//!
//! | key | `10.0.0.1:6001` | `10.0.0.2:6001` | `10.0.0.3:6001` | server |
//! |---|---|---|---|---|
//! | `backup` | `0xecc03247f29dc4b7` | `0xb4b8b6cc8477ed30` | `0x5ffcc5a2a99d1253` | `10.0.0.1:6001` |
//! | `cron`   | `0x3fb257b5e12588c9` | `0xe07e1a772cd89de9` | `0x41b2ff4a1a1b9cac` | `10.0.0.2:6001` |
//! | `deploy` | `0x49c704d629b4257a` | `0x88fc12afc0115291` | `0xba5221fcf366ab0f` | `10.0.0.3:6001` |
//!
//! (Before `fmix64`: `fnv1a64("10.0.0.1:6001\nbackup") = 0x3bcac31b3db65328`.)
//!
//! ```
//! use dreadlock::client::{pick_server, rendezvous_weight};
//!
//! let servers = ["10.0.0.1:6001", "10.0.0.2:6001", "10.0.0.3:6001"];
//! assert_eq!(rendezvous_weight("10.0.0.1:6001", "backup"), 0xecc03247f29dc4b7);
//! assert_eq!(pick_server(&servers, "backup"), Some(0));
//! assert_eq!(pick_server(&servers, "cron"), Some(1));
//! assert_eq!(pick_server(&servers, "deploy"), Some(2));
//! ```

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::core::{INFINITE_TIMEOUT_MS, Reply};
use crate::parser::DEFAULT_MAX_LINE_BYTES;

/// The server used when none is given: the daemon's default port, locally.
pub const DEFAULT_SERVER: &str = "127.0.0.1:6001";

/// Longest key this client sends: the daemon's default line limit (10,000
/// bytes, CRLF included) less the rest of the longest `lock` line
/// (`"lock "`, a space, 20 timeout digits, CRLF: 28 bytes). A daemon run
/// with a lower `--max-line-bytes` drops the connection on a key that does
/// not fit its limit.
pub const MAX_KEY_BYTES: usize = DEFAULT_MAX_LINE_BYTES - LOCK_LINE_OVERHEAD;
const LOCK_LINE_OVERHEAD: usize = "lock ".len() + " ".len() + 20 + "\r\n".len();

/// A timeout that never expires: `lock(key, WAIT_FOREVER)` waits until the
/// lock is granted or the connection breaks. Every timeout of at least
/// `dreadlock::core::INFINITE_TIMEOUT_MS` milliseconds (about 2.2 years)
/// means the same, and is sent as that number.
pub const WAIT_FOREVER: Duration = Duration::MAX;

/// Longest reply line accepted. Real replies are at most 18 bytes
/// (`e already locked\r\n`); the bound keeps a misbehaving peer from making
/// the client buffer without limit.
const MAX_REPLY_BYTES: usize = 256;

/// The key [`Connection::ping`] unlocks. Unlocking a key one does not hold
/// changes nothing on the daemon, so this is a harmless round trip; do not
/// lock this key on a connection you ping.
pub const PING_KEY: &str = "dreadlockping";

/// Everything that can go wrong, with the daemon's two answers that are not
/// success kept apart from failures to talk to it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The daemon answered `t timeout`: another connection held the lock for
    /// the whole timeout. The connection is fine.
    Timeout,
    /// The daemon answered `e <message>` (`already locked`, `not locked`,
    /// `not owner`); the message is kept without the `e ` and the CRLF.
    /// Such errors change no state; the connection is fine.
    Server(String),
    /// The key is not one the protocol allows. Nothing was sent.
    InvalidKey(KeyError),
    /// The daemon sent something that is not a reply to the command (a
    /// protocol violation). The connection was closed, releasing its locks.
    UnexpectedReply(String),
    /// Connecting, sending or receiving failed, or no reply came in time
    /// (`ErrorKind::TimedOut`; the daemon's own `t timeout` is
    /// [`Error::Timeout`]). The connection was closed, so the daemon
    /// releases every lock it held.
    Io(io::Error),
    /// A [`Client`] needs at least one server.
    NoServers,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timeout => f.write_str("timed out waiting for the lock"),
            Error::Server(msg) => write!(f, "the server said: {msg}"),
            Error::InvalidKey(e) => write!(f, "invalid key: {e}"),
            Error::UnexpectedReply(line) => write!(f, "unexpected reply from the server: {line}"),
            Error::Io(e) => e.fmt(f),
            Error::NoServers => f.write_str("no server given"),
        }
    }
}

/// The `Display` text includes the inner error's, so `source` is `None`
/// (match [`Error::Io`] to get at the `io::Error`).
impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<KeyError> for Error {
    fn from(e: KeyError) -> Self {
        Error::InvalidKey(e)
    }
}

/// Why a key is not valid: keys are 1 to [`MAX_KEY_BYTES`] ASCII letters
/// and digits (`[A-Za-z0-9]+`), case-sensitive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    Empty,
    /// The first byte that is not an ASCII letter or digit.
    InvalidByte {
        byte: u8,
        offset: usize,
    },
    TooLong {
        len: usize,
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

/// Checks that `key` is something the daemon accepts as a key.
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
    if let Some(offset) = key.bytes().position(|b| !b.is_ascii_alphanumeric()) {
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

/// 64-bit FNV-1a of `bytes`, continuing from the hash state `h`.
const fn fnv1a64_from(mut h: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// MurmurHash3's 64-bit finalizer: every input bit affects every output bit.
const fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The rendezvous weight of `server` for `key`:
/// `fmix64(fnv1a64(server ++ "\n" ++ key))`, as specified in the
/// [module docs](self#several-servers).
pub fn rendezvous_weight(server: &str, key: &str) -> u64 {
    let h = fnv1a64_from(FNV_OFFSET_BASIS, server.as_bytes());
    let h = fnv1a64_from(h, b"\n");
    fmix64(fnv1a64_from(h, key.as_bytes()))
}

/// The index in `servers` of the server that owns `key`: the largest
/// [`rendezvous_weight`], ties to the server string that sorts first.
/// `None` only when `servers` is empty.
pub fn pick_server<S: AsRef<str>>(servers: &[S], key: &str) -> Option<usize> {
    let mut best: Option<(usize, u64)> = None;
    for (i, server) in servers.iter().enumerate() {
        let w = rendezvous_weight(server.as_ref(), key);
        let better = match best {
            None => true,
            Some((b, bw)) => w > bw || (w == bw && server.as_ref() < servers[b].as_ref()),
        };
        if better {
            best = Some((i, w));
        }
    }
    best.map(|(i, _)| i)
}

/// Connection settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Bound on establishing a TCP connection, per address the server name
    /// resolves to (name resolution itself is not bounded).
    pub connect_timeout: Duration,
    /// Bound on sending a command and on receiving the reply to `unlock`;
    /// the reply to `lock` may take the lock's own timeout plus this much.
    /// `None`: no bound. Values below 1 ms count as 1 ms.
    pub io_timeout: Option<Duration>,
    /// TCP keepalive idle time: a connection to a host that vanished
    /// without a word (power loss, partition) is declared broken after
    /// about this time plus 3 probes 5 s apart. `None`: the system default
    /// (usually no keepalive).
    pub keepalive: Option<Duration>,
}

impl Default for Options {
    /// 5 s to connect, 5 s for each send and reply, 10 s keepalive.
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(5),
            io_timeout: Some(Duration::from_secs(5)),
            keepalive: Some(Duration::from_secs(10)),
        }
    }
}

/// A timeout as whole milliseconds for the wire: rounded up (never wait
/// less than asked) and capped at the daemon's "forever".
fn timeout_to_ms(timeout: Duration) -> u64 {
    let ms = timeout.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms)
        .unwrap_or(u64::MAX)
        .min(INFINITE_TIMEOUT_MS)
}

/// A reply line, classified.
enum Answer {
    Reply(Reply),
    /// `e <message>`, message kept.
    Error(String),
}

/// One TCP connection to one daemon: the protocol, no guards.
///
/// Locks taken here are released by [`Connection::unlock`] or by dropping
/// the connection (the daemon releases all of a connection's locks when it
/// closes).
///
/// After an I/O error or an unexpected reply the connection is shut down
/// (so the daemon releases its locks) and every later call fails: see
/// [`Connection::is_broken`].
///
/// ```no_run
/// use std::time::Duration;
/// use dreadlock::client::{Connection, Options};
///
/// let mut conn = Connection::connect("127.0.0.1:6001", &Options::default())?;
/// conn.lock("report", Duration::from_millis(500))?;
/// // ... work ...
/// conn.unlock("report")?;
/// # Ok::<(), dreadlock::client::Error>(())
/// ```
pub struct Connection {
    server: String,
    reader: BufReader<TcpStream>,
    io_timeout: Option<Duration>,
    /// Set by the first I/O error or protocol violation.
    /// INVARIANT: when set, the socket has been shut down.
    broken: bool,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.server)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to `server` (`host:port`), trying each address it resolves
    /// to with `options.connect_timeout`.
    pub fn connect(server: &str, options: &Options) -> Result<Connection, Error> {
        let mut last_err = None;
        for addr in server.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, options.connect_timeout) {
                Ok(stream) => return Connection::from_stream(server, stream, options),
                Err(e) => last_err = Some(e),
            }
        }
        Err(Error::Io(last_err.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "the server name resolved to no address",
            )
        })))
    }

    fn from_stream(server: &str, stream: TcpStream, options: &Options) -> Result<Self, Error> {
        stream.set_nodelay(true)?;
        let io_timeout = options.io_timeout.map(|t| t.max(Duration::from_millis(1)));
        stream.set_write_timeout(io_timeout)?;
        if let Some(idle) = options.keepalive {
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval(Duration::from_secs(5))
                .with_retries(3);
            socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
        }
        Ok(Connection {
            server: server.to_owned(),
            reader: BufReader::with_capacity(MAX_REPLY_BYTES, stream),
            io_timeout,
            broken: false,
        })
    }

    /// The server string this connection was opened with.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Whether an earlier error closed this connection; every call then
    /// fails with `ErrorKind::NotConnected`.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The socket, to watch it (for example, `peek` blocks until the daemon
    /// closes it, since the daemon sends nothing unasked) or to read its
    /// addresses. Reading from or writing to it desynchronizes the
    /// protocol. Its read timeout is reset before every reply is read.
    pub fn tcp_stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// Sends `lock <key> <timeout_ms>` and waits for the answer: `Ok` when
    /// the lock is granted, [`Error::Timeout`] when the daemon gave up after
    /// `timeout` (rounded up to whole milliseconds; `Duration::ZERO` is a
    /// try-lock; [`WAIT_FOREVER`] never gives up), [`Error::Server`] with
    /// `already locked` when this connection already holds `key`.
    ///
    /// The reply may take `timeout` plus [`Options::io_timeout`] before it
    /// counts as lost.
    pub fn lock(&mut self, key: &str, timeout: Duration) -> Result<(), Error> {
        validate_key(key)?;
        let timeout_ms = timeout_to_ms(timeout);
        let reply_timeout = if timeout_ms >= INFINITE_TIMEOUT_MS {
            None
        } else {
            self.io_timeout
                .and_then(|margin| Duration::from_millis(timeout_ms).checked_add(margin))
        };
        let command = format!("lock {key} {timeout_ms}\r\n");
        match self.call(command.as_bytes(), reply_timeout)? {
            Answer::Reply(Reply::Locked) => Ok(()),
            Answer::Reply(Reply::Timeout) => Err(Error::Timeout),
            Answer::Error(msg) => Err(Error::Server(msg)),
            Answer::Reply(other) => Err(self.unexpected(other.as_bytes())),
        }
    }

    /// Sends `unlock <key>`: `Ok` when released, [`Error::Server`] with
    /// `not locked` or `not owner` when this connection does not hold it.
    pub fn unlock(&mut self, key: &str) -> Result<(), Error> {
        validate_key(key)?;
        let command = format!("unlock {key}\r\n");
        match self.call(command.as_bytes(), self.io_timeout)? {
            Answer::Reply(Reply::Unlocked) => Ok(()),
            Answer::Error(msg) => Err(Error::Server(msg)),
            Answer::Reply(other) => Err(self.unexpected(other.as_bytes())),
        }
    }

    /// Measures one round trip by unlocking [`PING_KEY`], which changes
    /// nothing on the daemon (any `u` or `e` answer counts as alive).
    pub fn ping(&mut self) -> Result<Duration, Error> {
        let start = Instant::now();
        match self.unlock(PING_KEY) {
            Ok(()) | Err(Error::Server(_)) => Ok(start.elapsed()),
            Err(e) => Err(e),
        }
    }

    /// Sends one command line and reads one reply line.
    fn call(&mut self, command: &[u8], reply_timeout: Option<Duration>) -> Result<Answer, Error> {
        if self.broken {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                "the connection was closed after an earlier error",
            )));
        }
        let line = match self.send_and_receive(command, reply_timeout) {
            Ok(line) => line,
            Err(e) => {
                self.break_connection();
                return Err(Error::Io(e));
            }
        };
        for reply in [Reply::Locked, Reply::Timeout, Reply::Unlocked] {
            if line == reply.as_bytes() {
                return Ok(Answer::Reply(reply));
            }
        }
        if let Some(msg) = line
            .strip_prefix(b"e ")
            .and_then(|m| m.strip_suffix(b"\r\n"))
        {
            return Ok(Answer::Error(String::from_utf8_lossy(msg).into_owned()));
        }
        Err(self.unexpected(&line))
    }

    fn send_and_receive(
        &mut self,
        command: &[u8],
        reply_timeout: Option<Duration>,
    ) -> io::Result<Vec<u8>> {
        let stream = self.reader.get_ref();
        (&*stream).write_all(command)?;
        stream.set_read_timeout(reply_timeout)?;
        let mut line = Vec::with_capacity(32);
        let n = (&mut self.reader)
            .take(MAX_REPLY_BYTES as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no reply from the server within {:?}",
                        reply_timeout.unwrap_or_default()
                    ),
                ),
                _ => e,
            })?;
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
        Ok(line)
    }

    /// Closes the connection for good after a reply that makes no sense.
    fn unexpected(&mut self, line: &[u8]) -> Error {
        self.break_connection();
        Error::UnexpectedReply(String::from_utf8_lossy(line).trim_end().to_owned())
    }

    fn break_connection(&mut self) {
        self.broken = true;
        let _ = self.reader.get_ref().shutdown(Shutdown::Both);
    }
}

/// A server of a [`Client`] and its connection, opened on first use.
struct Slot {
    server: String,
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    conn: Option<Connection>,
    /// Counts the connections opened to this server, so that a guard can
    /// tell whether the connection it locked on is still the current one.
    generation: u64,
}

/// A lock client for one or more servers. See the [module docs](self).
///
/// ```no_run
/// use std::time::Duration;
/// use dreadlock::client::Client;
///
/// // Three daemons; each key lives on one of them.
/// let client = Client::new(["10.0.0.1:6001", "10.0.0.2:6001", "10.0.0.3:6001"])?;
/// let a = client.lock("invoices", Duration::from_secs(1))?;
/// let b = client.lock("reports", Duration::from_secs(1))?;
/// println!("invoices lives on {}", a.server());
/// b.unlock()?; // explicit: reports errors
/// drop(a); // implicit: errors ignored
/// # Ok::<(), dreadlock::client::Error>(())
/// ```
pub struct Client {
    slots: Vec<Slot>,
    options: Options,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("servers", &self.servers().collect::<Vec<_>>())
            .field("options", &self.options)
            .finish()
    }
}

impl Client {
    /// Connects to one server now, with default [`Options`], so that a
    /// wrong address fails here rather than at the first lock.
    pub fn connect(server: &str) -> Result<Client, Error> {
        Client::connect_with(server, Options::default())
    }

    /// [`Client::connect`] with explicit options.
    pub fn connect_with(server: &str, options: Options) -> Result<Client, Error> {
        let client = Client::with_options([server], options)?;
        let conn = Connection::connect(server, &client.options)?;
        let mut state = client.slots[0].lock_state();
        state.conn = Some(conn);
        state.generation = 1;
        drop(state);
        Ok(client)
    }

    /// A client for these servers (`host:port` each), with default
    /// [`Options`]. Nothing is connected until a key needs a server.
    /// Repeated servers count once. Fails only with [`Error::NoServers`].
    pub fn new<I, S>(servers: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Client::with_options(servers, Options::default())
    }

    /// [`Client::new`] with explicit options.
    pub fn with_options<I, S>(servers: I, options: Options) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut slots: Vec<Slot> = Vec::new();
        for server in servers {
            let server = server.into();
            if !slots.iter().any(|s| s.server == server) {
                slots.push(Slot {
                    server,
                    state: Mutex::default(),
                });
            }
        }
        if slots.is_empty() {
            return Err(Error::NoServers);
        }
        Ok(Client { slots, options })
    }

    /// The servers, in the order given (repeats removed).
    pub fn servers(&self) -> impl ExactSizeIterator<Item = &str> {
        self.slots.iter().map(|s| s.server.as_str())
    }

    /// The server that owns `key` (see [`pick_server`]).
    pub fn server_for(&self, key: &str) -> &str {
        &self.slots[self.slot_for(key)].server
    }

    fn slot_for(&self, key: &str) -> usize {
        let servers: Vec<&str> = self.servers().collect();
        pick_server(&servers, key).unwrap_or(0)
    }

    /// Takes the lock on `key`, waiting up to `timeout` for it (see
    /// [`Connection::lock`] for the answers). The guard releases it when
    /// dropped.
    ///
    /// An invalid key fails with [`Error::InvalidKey`] before anything is
    /// sent (or connected).
    pub fn lock(&self, key: &str, timeout: Duration) -> Result<LockGuard<'_>, Error> {
        validate_key(key)?;
        let slot = self.slot_for(key);
        let generation = self.with_connection(slot, |conn| conn.lock(key, timeout))?;
        Ok(LockGuard {
            client: self,
            slot,
            generation,
            key: key.to_owned(),
            armed: true,
        })
    }

    /// Takes the lock on `key` if it is free: `Ok(None)` when another
    /// connection holds it.
    ///
    /// ```no_run
    /// # let client = dreadlock::client::Client::connect("127.0.0.1:6001")?;
    /// if let Some(_guard) = client.try_lock("cacherebuild")? {
    ///     // rebuild the cache
    /// } else {
    ///     // someone else is on it
    /// }
    /// # Ok::<(), dreadlock::client::Error>(())
    /// ```
    pub fn try_lock(&self, key: &str) -> Result<Option<LockGuard<'_>>, Error> {
        match self.lock(key, Duration::ZERO) {
            Ok(guard) => Ok(Some(guard)),
            Err(Error::Timeout) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Runs `f` on the slot's connection, opening one if there is none (or
    /// the last one broke); returns the connection's generation.
    fn with_connection(
        &self,
        slot: usize,
        f: impl FnOnce(&mut Connection) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        let slot = &self.slots[slot];
        let mut guard = slot.lock_state();
        let state = &mut *guard;
        let conn = match state.conn.take().filter(|c| !c.is_broken()) {
            Some(conn) => state.conn.insert(conn),
            None => {
                let conn = Connection::connect(&slot.server, &self.options)?;
                state.generation += 1;
                state.conn.insert(conn)
            }
        };
        let result = f(conn);
        if conn.is_broken() {
            state.conn = None;
        }
        result.map(|()| state.generation)
    }
}

impl Slot {
    /// The slot's state. A panic while it was held cannot leave it
    /// inconsistent (no code that panics runs under it), so a poisoned
    /// mutex is used as is.
    fn lock_state(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A held lock. Dropping it sends `unlock` (also while a panic unwinds;
/// errors are ignored and never panic); [`LockGuard::unlock`] does the same
/// and reports errors.
///
/// The guard borrows its [`Client`], whose connection owns the lock.
/// Releasing uses that connection, so it waits while another thread's
/// `lock` on the same server is still waiting for its answer.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    client: &'a Client,
    slot: usize,
    /// The connection generation the lock was taken on.
    generation: u64,
    key: String,
    /// False once `unlock` was sent (or attempted).
    armed: bool,
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key)
            .field("server", &self.server())
            .finish()
    }
}

impl LockGuard<'_> {
    /// The locked key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The server holding the lock.
    pub fn server(&self) -> &str {
        &self.client.slots[self.slot].server
    }

    /// Releases the lock now and reports how that went. An error of kind
    /// `NotConnected` means the connection broke while the lock was held:
    /// the daemon released the lock then, perhaps before the critical
    /// section ended.
    pub fn unlock(mut self) -> Result<(), Error> {
        self.release()
    }

    fn release(&mut self) -> Result<(), Error> {
        self.armed = false;
        let slot = &self.client.slots[self.slot];
        let mut guard = slot.lock_state();
        let state = &mut *guard;
        match &mut state.conn {
            Some(conn) if state.generation == self.generation && !conn.is_broken() => {
                let result = conn.unlock(&self.key);
                if conn.is_broken() {
                    state.conn = None;
                }
                result
            }
            _ => Err(Error::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                "the connection holding the lock was lost; the server released the lock then",
            ))),
        }
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_reference_vectors() {
        // From the FNV reference (draft-eastlake-fnv).
        assert_eq!(fnv1a64_from(FNV_OFFSET_BASIS, b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64_from(FNV_OFFSET_BASIS, b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(
            fnv1a64_from(FNV_OFFSET_BASIS, b"foobar"),
            0x85944171f73967e8
        );
    }

    /// The table in the module docs.
    const TEST_VECTOR: [(&str, [u64; 3], usize); 3] = [
        (
            "backup",
            [0xecc03247f29dc4b7, 0xb4b8b6cc8477ed30, 0x5ffcc5a2a99d1253],
            0,
        ),
        (
            "cron",
            [0x3fb257b5e12588c9, 0xe07e1a772cd89de9, 0x41b2ff4a1a1b9cac],
            1,
        ),
        (
            "deploy",
            [0x49c704d629b4257a, 0x88fc12afc0115291, 0xba5221fcf366ab0f],
            2,
        ),
    ];

    #[test]
    fn documented_test_vector() {
        let servers = ["10.0.0.1:6001", "10.0.0.2:6001", "10.0.0.3:6001"];
        assert_eq!(
            fnv1a64_from(FNV_OFFSET_BASIS, b"10.0.0.1:6001\nbackup"),
            0x3bcac31b3db65328
        );
        for (key, weights, winner) in TEST_VECTOR {
            let got: Vec<u64> = servers.iter().map(|s| rendezvous_weight(s, key)).collect();
            assert_eq!(got, weights, "{key}");
            assert_eq!(pick_server(&servers, key), Some(winner), "{key}");
            // The order of the list does not matter.
            let reversed = [servers[2], servers[1], servers[0]];
            assert_eq!(pick_server(&reversed, key), Some(2 - winner), "{key}");
        }
    }

    #[test]
    fn ties_go_to_the_smaller_server_string() {
        // Identical strings have identical weights: the first wins, and a
        // repeated server changes nothing.
        assert_eq!(pick_server(&["b", "b"], "k"), Some(0));
        assert_eq!(pick_server::<&str>(&[], "k"), None);
    }

    #[test]
    fn keys_spread_evenly() {
        let servers = ["127.0.0.1:6001", "127.0.0.1:6002", "127.0.0.1:6003"];
        let mut counts = [0usize; 3];
        for i in 0..30_000 {
            counts[pick_server(&servers, &format!("key{i}")).unwrap()] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn removing_a_server_moves_only_its_keys() {
        let three = ["a:1", "b:2", "c:3"];
        let two = ["a:1", "b:2"];
        for i in 0..1000 {
            let key = format!("k{i}");
            let before = pick_server(&three, &key).unwrap();
            if before != 2 {
                assert_eq!(pick_server(&two, &key), Some(before), "{key}");
            }
        }
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
        assert_eq!(validate_key(&"k".repeat(MAX_KEY_BYTES)), Ok(()));
        assert_eq!(
            validate_key(&"k".repeat(MAX_KEY_BYTES + 1)),
            Err(KeyError::TooLong {
                len: MAX_KEY_BYTES + 1,
                max: MAX_KEY_BYTES
            })
        );
        // The longest key with the longest timeout fits the line limit.
        let line = format!("lock {} {}\r\n", "k".repeat(MAX_KEY_BYTES), u64::MAX);
        assert_eq!(line.len(), DEFAULT_MAX_LINE_BYTES);
    }

    #[test]
    fn timeouts_round_up_and_saturate() {
        assert_eq!(timeout_to_ms(Duration::ZERO), 0);
        assert_eq!(timeout_to_ms(Duration::from_nanos(1)), 1);
        assert_eq!(timeout_to_ms(Duration::from_micros(1500)), 2);
        assert_eq!(timeout_to_ms(Duration::from_secs(3)), 3000);
        assert_eq!(timeout_to_ms(WAIT_FOREVER), INFINITE_TIMEOUT_MS);
    }
}
