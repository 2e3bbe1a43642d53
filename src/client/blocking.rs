//! The blocking client: [`Connection`], [`Client`] and [`LockGuard`] on
//! `std::net`.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::options::set_keepalive;
use super::pool::{Held, Pool, Pooled, held_elsewhere_is_none};
use super::proto::{self, Command, Info, MAX_REPLY_BYTES, Outcome, Stats};
use super::{Error, ErrorKind, Options, PING_KEY, validate_key};
use crate::wire::ErrorReply;

/// One TCP connection to one daemon: the protocol, no guards.
///
/// Locks taken here are released by [`Connection::unlock`] or by dropping
/// the connection (the daemon releases all of a connection's locks when it
/// closes).
///
/// After an I/O error, a protocol violation or a failed `auth` the
/// connection is shut down (so the daemon releases its locks) and every
/// later call fails: see [`Connection::is_broken`].
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
    /// to with `options.connect_timeout`, then sends `options.auth` and
    /// `options.name` if set.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when no address could be reached;
    /// [`ErrorKind::InvalidArgument`] for a bad name or secret (nothing is
    /// sent); [`ErrorKind::Rejected`] with [`ErrorReply::AuthFailed`] for a
    /// wrong secret.
    pub fn connect(server: &str, options: &Options) -> Result<Connection, Error> {
        options.validate(server)?;
        let io = |e: io::Error| Error::new(ErrorKind::Io(e), server);
        let mut last_err = None;
        for addr in server.to_socket_addrs().map_err(io)? {
            match TcpStream::connect_timeout(&addr, options.connect_timeout) {
                Ok(stream) => {
                    let mut conn = Connection::from_stream(server, stream, options).map_err(io)?;
                    conn.introduce(options)?;
                    return Ok(conn);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(proto::connect_error(server, last_err))
    }

    fn from_stream(server: &str, stream: TcpStream, options: &Options) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        let io_timeout = options.effective_io_timeout();
        stream.set_write_timeout(io_timeout)?;
        set_keepalive(&stream, options.keepalive)?;
        Ok(Connection {
            server: server.to_owned(),
            reader: BufReader::with_capacity(MAX_REPLY_BYTES, stream),
            io_timeout,
            broken: false,
        })
    }

    /// `auth` then `name`, as the options say.
    fn introduce(&mut self, options: &Options) -> Result<(), Error> {
        if let Some(secret) = &options.auth {
            match self.auth(secret) {
                Err(e) if e.reply() == Some(ErrorReply::AuthNotEnabled) => {}
                other => other?,
            }
        }
        if let Some(label) = &options.name {
            self.name(label)?;
        }
        Ok(())
    }

    /// The server string this connection was opened with.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Whether an earlier error closed this connection; every call then
    /// fails with `io::ErrorKind::NotConnected`.
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

    /// Sends `lock <key> <timeout_ms>` (the original protocol, which every
    /// daemon speaks) and waits for the answer. `timeout` is rounded up to
    /// whole milliseconds; `Duration::ZERO` is a try-lock;
    /// [`WAIT_FOREVER`](super::WAIT_FOREVER) never gives up.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] when the daemon gave up after `timeout`;
    /// [`ErrorKind::Rejected`] with [`ErrorReply::AlreadyLocked`] when this
    /// connection already holds `key` (or another of the daemon's limits,
    /// such as [`ErrorReply::TooManyLocks`]); [`ErrorKind::InvalidKey`];
    /// [`ErrorKind::Io`] when the reply does not come within `timeout` plus
    /// [`Options::io_timeout`], which closes this connection.
    pub fn lock(&mut self, key: &str, timeout: Duration) -> Result<(), Error> {
        self.check_key(key)?;
        let timeout_ms = proto::timeout_to_ms(timeout);
        self.call(Command::Lock { key, timeout_ms }).map(|_| ())
    }

    /// Sends `acquire <key> <timeout_ms> [<limit>]` (protocol version 2)
    /// and returns the fencing token of the grant. `limit` is the
    /// semaphore size N: up to N connections hold `key` at once; 1 is the
    /// same exclusive lock as [`Connection::lock`].
    ///
    /// # Errors
    ///
    /// As [`Connection::lock`], and [`ErrorKind::InvalidArgument`] for a
    /// limit outside `1..=65535` (nothing is sent),
    /// [`ErrorReply::LimitMismatch`] when the key exists with another
    /// limit. A daemon older than protocol version 2 closes the
    /// connection: [`ErrorKind::Io`].
    pub fn acquire(&mut self, key: &str, timeout: Duration, limit: u32) -> Result<u64, Error> {
        self.check_key(key)?;
        proto::validate_limit(limit)
            .map_err(|e| Error::new(ErrorKind::InvalidArgument(e), &self.server))?;
        let timeout_ms = proto::timeout_to_ms(timeout);
        self.call(Command::Acquire {
            key,
            timeout_ms,
            limit,
        })
        .map(Outcome::into_token)
    }

    /// Sends `unlock <key>`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Rejected`] with [`ErrorReply::NotLocked`] or
    /// [`ErrorReply::NotOwner`] when this connection does not hold `key`;
    /// [`ErrorKind::InvalidKey`]; [`ErrorKind::Io`].
    pub fn unlock(&mut self, key: &str) -> Result<(), Error> {
        self.check_key(key)?;
        self.call(Command::Unlock { key }).map(|_| ())
    }

    /// Sends `info <key>` (protocol version 2): who holds `key`, since
    /// when, how many wait.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidKey`]; [`ErrorKind::Io`] (a daemon older than
    /// protocol version 2 closes the connection).
    pub fn info(&mut self, key: &str) -> Result<Info, Error> {
        self.check_key(key)?;
        self.call(Command::Info { key }).map(Outcome::into_info)
    }

    /// Sends `stats` (protocol version 2): the daemon's counters.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] (a daemon older than protocol version 2 closes
    /// the connection); [`ErrorKind::UnexpectedReply`] when a documented
    /// field is missing.
    pub fn stats(&mut self) -> Result<Stats, Error> {
        self.call(Command::Stats).map(Outcome::into_stats)
    }

    /// Sends `name <label>` (protocol version 2): labels this connection
    /// for `info` and the daemon's logs. [`Options::name`] does this on
    /// every new connection.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`] for a label the protocol does not
    /// allow (nothing is sent); [`ErrorKind::Io`].
    pub fn name(&mut self, label: &str) -> Result<(), Error> {
        proto::validate_label(label)
            .map_err(|e| Error::new(ErrorKind::InvalidArgument(e), &self.server))?;
        self.call(Command::Name { label }).map(|_| ())
    }

    /// Sends `auth <secret>` (protocol version 2). [`Options::auth`] does
    /// this on every new connection.
    ///
    /// # Errors
    ///
    /// [`ErrorReply::AuthFailed`] for a wrong secret (the daemon then
    /// closes the connection), [`ErrorReply::AuthNotEnabled`] when the
    /// daemon has no `--auth-file`; [`ErrorKind::InvalidArgument`] for a
    /// secret the protocol does not allow (nothing is sent);
    /// [`ErrorKind::Io`].
    pub fn auth(&mut self, secret: &str) -> Result<(), Error> {
        proto::validate_secret(secret)
            .map_err(|e| Error::new(ErrorKind::InvalidArgument(e), &self.server))?;
        self.call(Command::Auth { secret }).map(|_| ())
    }

    /// Sends `evict <key>` (protocol version 2): closes every connection
    /// holding `key` as if it had disconnected, and returns how many it
    /// closed.
    ///
    /// # Errors
    ///
    /// [`ErrorReply::NotAllowed`] unless auth is on or this connection
    /// comes from loopback; [`ErrorKind::InvalidKey`]; [`ErrorKind::Io`].
    pub fn evict(&mut self, key: &str) -> Result<u64, Error> {
        self.check_key(key)?;
        self.call(Command::Evict { key }).map(Outcome::into_evicted)
    }

    /// Measures one round trip by unlocking [`PING_KEY`], which changes
    /// nothing on the daemon (any `u` or `e` answer counts as alive). Works
    /// with every daemon.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when the daemon does not answer in time.
    pub fn ping(&mut self) -> Result<Duration, Error> {
        let start = Instant::now();
        match self.unlock(PING_KEY) {
            Ok(()) => Ok(start.elapsed()),
            Err(e) if matches!(e.kind(), ErrorKind::Rejected(_) | ErrorKind::Server(_)) => {
                Ok(start.elapsed())
            }
            Err(e) => Err(e),
        }
    }

    fn check_key(&self, key: &str) -> Result<(), Error> {
        validate_key(key).map_err(|e| Error::new(ErrorKind::InvalidKey(e), &self.server))
    }

    /// Sends one command line and interprets one reply line.
    fn call(&mut self, command: Command<'_>) -> Result<Outcome, Error> {
        if self.broken {
            return Err(proto::closed_error(&self.server));
        }
        let reply_timeout = command.reply_timeout(self.io_timeout);
        let exchanged = self.send_and_receive(&command.encode(), reply_timeout);
        let (result, closes) = proto::settle(&command, &self.server, exchanged);
        if closes {
            self.break_connection();
        }
        result
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
        proto::check_reply_end(&line, n)?;
        Ok(line)
    }

    fn break_connection(&mut self) {
        self.broken = true;
        let _ = self.reader.get_ref().shutdown(Shutdown::Both);
    }
}

impl Pooled for Connection {
    fn is_broken(&self) -> bool {
        self.broken
    }

    /// Also asks the kernel whether the daemon closed the socket: a
    /// non-blocking peek would block.
    fn is_reusable(&self) -> bool {
        if self.broken || !self.reader.buffer().is_empty() {
            return false;
        }
        let stream = self.reader.get_ref();
        if stream.set_nonblocking(true).is_err() {
            return false;
        }
        let peeked = stream.peek(&mut [0u8; 1]);
        let restored = stream.set_nonblocking(false).is_ok();
        restored && matches!(peeked, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

impl Pool<Connection> {
    /// An idle connection to the slot's server that still works, or a new
    /// one.
    fn take(&self, slot: usize) -> Result<Connection, Error> {
        match self.take_idle(slot) {
            Some(conn) => Ok(conn),
            None => Connection::connect(self.server(slot), self.options()),
        }
    }

    /// Runs one command on a pooled connection of `slot`.
    fn with_connection<T>(
        &self,
        slot: usize,
        f: impl FnOnce(&mut Connection) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut conn = self.take(slot)?;
        let result = f(&mut conn);
        self.give_back(slot, conn);
        result
    }
}

/// A lock client for one or more servers. See the
/// [client docs](super).
///
/// Each held lock has a TCP connection of its own, taken from a small pool
/// of idle connections per server (or opened), so threads never wait for
/// each other's locks on the client side, a slow reply never costs another
/// guard its lock, and dropping a guard releases its lock by closing its
/// connection. `Client` is cheap to clone (the clones share the pool) and
/// `Send + Sync`.
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
/// b.unlock()?; // explicit: reports errors, keeps the connection for reuse
/// drop(a); // implicit: closes its connection, the daemon releases at once
/// # Ok::<(), dreadlock::client::Error>(())
/// ```
#[derive(Clone)]
pub struct Client {
    shared: Arc<Pool<Connection>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt_client("Client", f)
    }
}

impl Client {
    /// Connects to one server now, with default [`Options`], so that a
    /// wrong address fails here rather than at the first lock.
    ///
    /// # Errors
    ///
    /// As [`Connection::connect`].
    pub fn connect(server: &str) -> Result<Client, Error> {
        Client::connect_with(server, Options::default())
    }

    /// [`Client::connect`] with explicit options.
    ///
    /// # Errors
    ///
    /// As [`Connection::connect`].
    pub fn connect_with(server: &str, options: Options) -> Result<Client, Error> {
        let client = Client::with_options([server], options)?;
        let conn = Connection::connect(server, client.shared.options())?;
        client.shared.give_back(0, conn);
        Ok(client)
    }

    /// A client for these servers (`host:port` each), with default
    /// [`Options`]. Nothing is connected until a key needs a server.
    /// Repeated servers count once.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NoServers`] for an empty list.
    pub fn new<I, S>(servers: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Client::with_options(servers, Options::default())
    }

    /// [`Client::new`] with explicit options.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NoServers`] for an empty list.
    pub fn with_options<I, S>(servers: I, options: Options) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Ok(Client {
            shared: Arc::new(Pool::new(servers, options)?),
        })
    }

    /// The servers, in the order given (repeats removed).
    pub fn servers(&self) -> impl ExactSizeIterator<Item = &str> {
        self.shared.servers()
    }

    /// The options every connection is opened with.
    pub fn options(&self) -> &Options {
        self.shared.options()
    }

    /// The server that owns `key` (see [`pick_server`](super::pick_server)).
    pub fn server_for(&self, key: &str) -> &str {
        self.shared.server(self.shared.slot_for(key))
    }

    /// Takes the lock on `key`, waiting up to `timeout` for it, with the
    /// original `lock` command (so it works with every daemon, and the
    /// guard has no [token](LockGuard::token): use
    /// [`Client::acquire`]`(key, timeout, 1)`, the same lock, for one). The
    /// guard releases it when dropped.
    ///
    /// # Errors
    ///
    /// As [`Connection::lock`]: [`ErrorKind::Timeout`] when the lock stayed
    /// held for the whole timeout. An invalid key fails with
    /// [`ErrorKind::InvalidKey`] before anything is sent (or connected).
    pub fn lock(&self, key: &str, timeout: Duration) -> Result<LockGuard, Error> {
        let slot = self.shared.check_key(key)?;
        self.take_lock(slot, key, |conn| conn.lock(key, timeout).map(|()| None))
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
    ///
    /// # Errors
    ///
    /// As [`Client::lock`], except that a held lock is `Ok(None)`.
    pub fn try_lock(&self, key: &str) -> Result<Option<LockGuard>, Error> {
        held_elsewhere_is_none(self.lock(key, Duration::ZERO))
    }

    /// Takes one of the `limit` slots of semaphore `key` (1: the exclusive
    /// lock) with `acquire` (protocol version 2), waiting up to `timeout`.
    /// The guard carries the grant's fencing [token](LockGuard::token).
    ///
    /// # Errors
    ///
    /// As [`Connection::acquire`].
    pub fn acquire(&self, key: &str, timeout: Duration, limit: u32) -> Result<LockGuard, Error> {
        let slot = self.shared.check_key(key)?;
        self.take_lock(slot, key, |conn| {
            conn.acquire(key, timeout, limit).map(Some)
        })
    }

    fn take_lock(
        &self,
        slot: usize,
        key: &str,
        f: impl FnOnce(&mut Connection) -> Result<Option<u64>, Error>,
    ) -> Result<LockGuard, Error> {
        let mut conn = self.shared.take(slot)?;
        let granted = f(&mut conn);
        let held = self.shared.grant(slot, key, conn, granted)?;
        Ok(LockGuard { held })
    }

    /// The state of `key` on its server (`info`, protocol version 2).
    ///
    /// # Errors
    ///
    /// As [`Connection::info`].
    pub fn info(&self, key: &str) -> Result<Info, Error> {
        let slot = self.shared.check_key(key)?;
        self.shared.with_connection(slot, |c| c.info(key))
    }

    /// Closes every connection holding `key` on its server (`evict`,
    /// protocol version 2); returns how many.
    ///
    /// # Errors
    ///
    /// As [`Connection::evict`].
    pub fn evict(&self, key: &str) -> Result<u64, Error> {
        let slot = self.shared.check_key(key)?;
        self.shared.with_connection(slot, |c| c.evict(key))
    }

    /// The counters of every server (`stats`, protocol version 2), in the
    /// order of [`Client::servers`], one result each: a server that fails
    /// does not hide the others.
    pub fn stats(&self) -> Vec<(String, Result<Stats, Error>)> {
        (0..self.shared.slot_count())
            .map(|slot| {
                let result = self.shared.with_connection(slot, Connection::stats);
                (self.shared.server(slot).to_owned(), result)
            })
            .collect()
    }
}

/// A held lock (or semaphore slot), on a connection of its own.
///
/// [`LockGuard::unlock`] releases it, reports errors and keeps the
/// connection for reuse. Dropping the guard instead (also while a panic
/// unwinds) closes its connection, and the daemon releases the lock at
/// once; that never blocks and never fails.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    held: Held<Connection>,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.held.fmt_guard("LockGuard", f)
    }
}

impl LockGuard {
    /// The locked key.
    pub fn key(&self) -> &str {
        self.held.key()
    }

    /// The server holding the lock.
    pub fn server(&self) -> &str {
        self.held.server()
    }

    /// The fencing token of this grant: strictly larger than that of every
    /// earlier grant by the same daemon (PROTOCOL.md, v2 rule 1). Hand it
    /// to the storage you write to, which rejects writes with a token
    /// smaller than the largest it saw. `Some` for guards from
    /// [`Client::acquire`]; `None` from [`Client::lock`] and
    /// [`Client::try_lock`], whose original `l locked` reply carries none.
    pub fn token(&self) -> Option<u64> {
        self.held.token()
    }

    /// The connection holding the lock, to watch it (see
    /// [`Connection::tcp_stream`]).
    pub fn connection(&self) -> &Connection {
        self.held.conn()
    }

    /// Releases the lock now, reports how that went, and keeps the
    /// connection for the next lock.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when the connection broke while the lock was held:
    /// the daemon released the lock then, perhaps before the critical
    /// section ended. [`ErrorKind::Rejected`] with
    /// [`ErrorReply::NotLocked`] or [`ErrorReply::NotOwner`] when the
    /// daemon no longer counts this connection as a holder.
    pub fn unlock(mut self) -> Result<(), Error> {
        let mut conn = self.held.take_conn();
        let result = conn.unlock(self.held.key());
        self.held.give_back(conn);
        result
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(conn) = self.held.leave() {
            let _ = conn.tcp_stream().shutdown(Shutdown::Both);
        }
    }
}
