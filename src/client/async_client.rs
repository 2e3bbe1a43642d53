//! The async client on tokio (the `tokio` feature): [`AsyncClient`] and
//! [`AsyncLockGuard`], the same shape as the blocking [`Client`](super::Client).

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use ::tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use ::tokio::net::TcpStream;
use ::tokio::time::timeout;

use super::options::set_keepalive;
use super::pool::{Held, Pool, Pooled, held_elsewhere_is_none};
use super::proto::{self, Command, Info, MAX_REPLY_BYTES, Outcome, Stats};
use super::{Error, ErrorKind, Options};
use crate::wire::ErrorReply;

/// One async connection. Private: the guards own them, the pool keeps the
/// idle ones.
struct AsyncConnection {
    server: String,
    reader: BufReader<TcpStream>,
    io_timeout: Option<Duration>,
    /// Set by the first I/O error or protocol violation; a broken
    /// connection is never reused.
    broken: bool,
}

impl AsyncConnection {
    async fn connect(server: &str, options: &Options) -> Result<AsyncConnection, Error> {
        options.validate(server)?;
        let io = |e: io::Error| Error::new(ErrorKind::Io(e), server);
        let mut last_err = None;
        for addr in ::tokio::net::lookup_host(server).await.map_err(io)? {
            let stream = match timeout(options.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    last_err = Some(e);
                    continue;
                }
                Err(_) => {
                    last_err = Some(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connect to {addr} took over {:?}", options.connect_timeout),
                    ));
                    continue;
                }
            };
            stream.set_nodelay(true).map_err(io)?;
            set_keepalive(&stream, options.keepalive).map_err(io)?;
            let mut conn = AsyncConnection {
                server: server.to_owned(),
                reader: BufReader::with_capacity(MAX_REPLY_BYTES, stream),
                io_timeout: options.effective_io_timeout(),
                broken: false,
            };
            if let Some(secret) = &options.auth {
                match conn.call(Command::Auth { secret }).await {
                    Err(e) if e.reply() == Some(ErrorReply::AuthNotEnabled) => {}
                    other => {
                        other?;
                    }
                }
            }
            if let Some(label) = &options.name {
                conn.call(Command::Name { label }).await?;
            }
            return Ok(conn);
        }
        Err(proto::connect_error(server, last_err))
    }

    /// Sends one command line and interprets one reply line. Dropping the
    /// future midway drops nothing but the borrow: the caller must then
    /// drop the connection, which the guards and the pool do.
    async fn call(&mut self, command: Command<'_>) -> Result<Outcome, Error> {
        if self.broken {
            return Err(proto::closed_error(&self.server));
        }
        let reply_timeout = command.reply_timeout(self.io_timeout);
        let exchanged = self
            .send_and_receive(&command.encode(), reply_timeout)
            .await;
        let (result, closes) = proto::settle(&command, &self.server, exchanged);
        if closes {
            self.broken = true;
        }
        result
    }

    async fn send_and_receive(
        &mut self,
        command: &[u8],
        reply_timeout: Option<Duration>,
    ) -> io::Result<Vec<u8>> {
        let write = self.reader.get_mut().write_all(command);
        bounded(self.io_timeout, write, "sending the command").await?;
        let mut line = Vec::with_capacity(32);
        let mut limited = (&mut self.reader).take(MAX_REPLY_BYTES as u64);
        let read = limited.read_until(b'\n', &mut line);
        let n = bounded(reply_timeout, read, "the reply").await?;
        proto::check_reply_end(&line, n)?;
        Ok(line)
    }
}

impl Pooled for AsyncConnection {
    fn is_broken(&self) -> bool {
        self.broken
    }

    /// Also asks whether the daemon closed the socket: a peek on the
    /// non-blocking socket would block (asked of the kernel, not of the
    /// runtime's readiness, which may not have seen a recent FIN yet).
    fn is_reusable(&self) -> bool {
        if self.broken || !self.reader.buffer().is_empty() {
            return false;
        }
        let socket = socket2::SockRef::from(self.reader.get_ref());
        let peeked = socket.peek(&mut [std::mem::MaybeUninit::uninit(); 1]);
        matches!(peeked, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// Runs `f` within `limit`, if any; running out is `TimedOut`.
async fn bounded<T>(
    limit: Option<Duration>,
    f: impl Future<Output = io::Result<T>>,
    what: &str,
) -> io::Result<T> {
    match limit {
        None => f.await,
        Some(limit) => timeout(limit, f).await.unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no progress on {what} within {limit:?}"),
            ))
        }),
    }
}

impl Pool<AsyncConnection> {
    /// An idle connection to the slot's server that still works, or a new
    /// one.
    async fn take(&self, slot: usize) -> Result<AsyncConnection, Error> {
        match self.take_idle(slot) {
            Some(conn) => Ok(conn),
            None => AsyncConnection::connect(self.server(slot), self.options()).await,
        }
    }

    /// One command on a pooled connection; if the future is dropped midway
    /// the connection goes with it (it may have a reply in flight).
    async fn call(&self, slot: usize, command: Command<'_>) -> Result<Outcome, Error> {
        let mut conn = self.take(slot).await?;
        let result = conn.call(command).await;
        self.give_back(slot, conn);
        result
    }
}

/// The async lock client (the `tokio` feature): the same servers,
/// sharding, pool and guards as the blocking [`Client`](super::Client).
///
/// Every future is cancel-safe in the way that matters for locks:
/// dropping a `lock`/`acquire` future (for example in `tokio::select!` or
/// `tokio::time::timeout`) closes its connection, which withdraws the
/// request on the daemon; nothing is left half-held. The client needs a
/// tokio runtime with I/O and time enabled.
///
/// ```no_run
/// # async fn f() -> Result<(), dreadlock::client::Error> {
/// use std::time::Duration;
/// use dreadlock::client::AsyncClient;
///
/// let client = AsyncClient::connect("127.0.0.1:6001").await?;
/// let guard = client.acquire("invoices", Duration::from_secs(5), 1).await?;
/// println!("fencing token {}", guard.token().unwrap());
/// // ... write to storage, passing the token along ...
/// guard.unlock().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AsyncClient {
    shared: Arc<Pool<AsyncConnection>>,
}

impl fmt::Debug for AsyncClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt_client("AsyncClient", f)
    }
}

impl AsyncClient {
    /// Connects to one server now, with default [`Options`], so that a
    /// wrong address fails here rather than at the first lock.
    ///
    /// # Errors
    ///
    /// As [`Connection::connect`](super::Connection::connect).
    pub async fn connect(server: &str) -> Result<AsyncClient, Error> {
        AsyncClient::connect_with(server, Options::default()).await
    }

    /// [`AsyncClient::connect`] with explicit options.
    ///
    /// # Errors
    ///
    /// As [`Connection::connect`](super::Connection::connect).
    pub async fn connect_with(server: &str, options: Options) -> Result<AsyncClient, Error> {
        let client = AsyncClient::with_options([server], options)?;
        let conn = AsyncConnection::connect(server, client.shared.options()).await?;
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
    pub fn new<I, S>(servers: I) -> Result<AsyncClient, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        AsyncClient::with_options(servers, Options::default())
    }

    /// [`AsyncClient::new`] with explicit options.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NoServers`] for an empty list.
    pub fn with_options<I, S>(servers: I, options: Options) -> Result<AsyncClient, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Ok(AsyncClient {
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

    /// Takes the lock on `key`, waiting up to `timeout`, with the original
    /// `lock` command (every daemon speaks it; the guard has no
    /// [token](AsyncLockGuard::token): use `acquire(key, timeout, 1)` for
    /// one). See [`Client::lock`](super::Client::lock).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] when the lock stayed held for the whole
    /// timeout; the rest as [`Connection::lock`](super::Connection::lock).
    pub async fn lock(&self, key: &str, timeout: Duration) -> Result<AsyncLockGuard, Error> {
        let slot = self.shared.check_key(key)?;
        let timeout_ms = proto::timeout_to_ms(timeout);
        self.take_lock(slot, key, Command::Lock { key, timeout_ms })
            .await
    }

    /// Takes the lock on `key` if it is free: `Ok(None)` when another
    /// connection holds it.
    ///
    /// # Errors
    ///
    /// As [`AsyncClient::lock`], except that a held lock is `Ok(None)`.
    pub async fn try_lock(&self, key: &str) -> Result<Option<AsyncLockGuard>, Error> {
        held_elsewhere_is_none(self.lock(key, Duration::ZERO).await)
    }

    /// Takes one of the `limit` slots of semaphore `key` (1: the exclusive
    /// lock) with `acquire` (protocol version 2); the guard carries the
    /// fencing [token](AsyncLockGuard::token).
    ///
    /// # Errors
    ///
    /// As [`Connection::acquire`](super::Connection::acquire).
    pub async fn acquire(
        &self,
        key: &str,
        timeout: Duration,
        limit: u32,
    ) -> Result<AsyncLockGuard, Error> {
        let slot = self.shared.check_key(key)?;
        self.shared.check_limit(slot, limit)?;
        let timeout_ms = proto::timeout_to_ms(timeout);
        let command = Command::Acquire {
            key,
            timeout_ms,
            limit,
        };
        self.take_lock(slot, key, command).await
    }

    async fn take_lock(
        &self,
        slot: usize,
        key: &str,
        command: Command<'_>,
    ) -> Result<AsyncLockGuard, Error> {
        let mut conn = self.shared.take(slot).await?;
        let granted = conn.call(command).await.map(|outcome| outcome.token());
        let held = self.shared.grant(slot, key, conn, granted)?;
        Ok(AsyncLockGuard { held })
    }

    /// The state of `key` on its server (`info`, protocol version 2).
    ///
    /// # Errors
    ///
    /// As [`Connection::info`](super::Connection::info).
    pub async fn info(&self, key: &str) -> Result<Info, Error> {
        let slot = self.shared.check_key(key)?;
        self.shared
            .call(slot, Command::Info { key })
            .await
            .map(Outcome::into_info)
    }

    /// Closes every connection holding `key` on its server (`evict`,
    /// protocol version 2); returns how many.
    ///
    /// # Errors
    ///
    /// As [`Connection::evict`](super::Connection::evict).
    pub async fn evict(&self, key: &str) -> Result<u64, Error> {
        let slot = self.shared.check_key(key)?;
        self.shared
            .call(slot, Command::Evict { key })
            .await
            .map(Outcome::into_evicted)
    }

    /// The counters of every server (`stats`, protocol version 2), in the
    /// order of [`AsyncClient::servers`], one result each; the servers are
    /// asked one after the other.
    pub async fn stats(&self) -> Vec<(String, Result<Stats, Error>)> {
        let mut out = Vec::with_capacity(self.shared.slot_count());
        for slot in 0..self.shared.slot_count() {
            let result = self
                .shared
                .call(slot, Command::Stats)
                .await
                .map(Outcome::into_stats);
            out.push((self.shared.server(slot).to_owned(), result));
        }
        out
    }
}

/// A held lock (or semaphore slot) of an [`AsyncClient`], on a connection
/// of its own.
///
/// [`AsyncLockGuard::unlock`] releases it, reports errors and keeps the
/// connection for reuse. Dropping the guard instead closes its connection
/// and the daemon releases the lock at once: `Drop` neither blocks nor
/// spawns a task.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct AsyncLockGuard {
    held: Held<AsyncConnection>,
}

impl fmt::Debug for AsyncLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.held.fmt_guard("AsyncLockGuard", f)
    }
}

impl AsyncLockGuard {
    /// The locked key.
    pub fn key(&self) -> &str {
        self.held.key()
    }

    /// The server holding the lock.
    pub fn server(&self) -> &str {
        self.held.server()
    }

    /// The fencing token of this grant (see
    /// [`LockGuard::token`](super::LockGuard::token)): `Some` for guards
    /// from [`AsyncClient::acquire`], `None` from `lock` and `try_lock`.
    pub fn token(&self) -> Option<u64> {
        self.held.token()
    }

    /// Releases the lock now, reports how that went, and keeps the
    /// connection for the next lock. If this future is dropped before it
    /// completes, the connection is closed instead, which releases the
    /// lock just the same.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when the connection broke while the lock was held
    /// (the daemon released the lock then); [`ErrorKind::Rejected`] with
    /// [`ErrorReply::NotLocked`] or [`ErrorReply::NotOwner`] when the
    /// daemon no longer counts this connection as a holder.
    pub async fn unlock(mut self) -> Result<(), Error> {
        let mut conn = self.held.take_conn();
        let result = conn
            .call(Command::Unlock {
                key: self.held.key(),
            })
            .await;
        self.held.give_back(conn);
        result.map(|_| ())
    }
}
