//! The async client on tokio (the `tokio` feature): [`AsyncClient`] and
//! [`AsyncLockGuard`], the same shape as the blocking [`Client`](super::Client).

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ::tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use ::tokio::net::TcpStream;
use ::tokio::time::timeout;

use super::blocking::refusal_kind;
use super::options::set_keepalive;
use super::proto::{self, Command, Info, MAX_REPLY_BYTES, Outcome, Stats};
use super::{Error, ErrorKind, Options, pick_server, validate_key};
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
        Err(io(last_err.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "the server name resolved to no address",
            )
        })))
    }

    /// Whether this idle connection can carry a new command: not broken,
    /// nothing unread, and the daemon has not closed it (a peek on the
    /// non-blocking socket would block; asked of the kernel, not of the
    /// runtime's readiness, which may not have seen a recent FIN yet).
    fn is_reusable(&self) -> bool {
        if self.broken || !self.reader.buffer().is_empty() {
            return false;
        }
        let socket = socket2::SockRef::from(self.reader.get_ref());
        let peeked = socket.peek(&mut [std::mem::MaybeUninit::uninit(); 1]);
        matches!(peeked, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends one command line and interprets one reply line. Dropping the
    /// future midway drops nothing but the borrow: the caller must then
    /// drop the connection, which the guards and the pool do.
    async fn call(&mut self, command: Command<'_>) -> Result<Outcome, Error> {
        if self.broken {
            return Err(Error::io(
                &self.server,
                io::ErrorKind::NotConnected,
                "the connection was closed after an earlier error",
            ));
        }
        let reply_timeout = command.reply_timeout(self.io_timeout);
        let line = match self
            .send_and_receive(&command.encode(), reply_timeout)
            .await
        {
            Ok(line) => line,
            Err(e) => {
                self.broken = true;
                let e = command.io_error(&e);
                return Err(Error::new(ErrorKind::Io(e), &self.server));
            }
        };
        proto::interpret(&command, &line).map_err(|refusal| {
            if refusal.closes() {
                self.broken = true;
            }
            Error::new(refusal_kind(refusal), &self.server)
        })
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

struct Slot {
    server: String,
    /// INVARIANT: every connection here holds no lock and has no request
    /// in flight. A std mutex: it is held only for a push or a pop, never
    /// across an await.
    idle: Mutex<Vec<AsyncConnection>>,
}

impl Slot {
    fn idle(&self) -> MutexGuard<'_, Vec<AsyncConnection>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Shared {
    slots: Vec<Slot>,
    options: Options,
}

impl Shared {
    async fn take(&self, slot: usize) -> Result<AsyncConnection, Error> {
        let slot_ref = &self.slots[slot];
        loop {
            let Some(conn) = slot_ref.idle().pop() else {
                break;
            };
            if conn.is_reusable() {
                return Ok(conn);
            }
        }
        AsyncConnection::connect(&slot_ref.server, &self.options).await
    }

    fn give_back(&self, slot: usize, conn: AsyncConnection) {
        if conn.broken {
            return;
        }
        let mut idle = self.slots[slot].idle();
        if idle.len() < self.options.max_idle_per_server {
            idle.push(conn);
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
    shared: Arc<Shared>,
}

impl fmt::Debug for AsyncClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncClient")
            .field("servers", &self.servers().collect::<Vec<_>>())
            .field("options", &self.shared.options)
            .finish()
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
        let conn = AsyncConnection::connect(server, &client.shared.options).await?;
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
        let mut slots: Vec<Slot> = Vec::new();
        for server in servers {
            let server = server.into();
            if !slots.iter().any(|s| s.server == server) {
                slots.push(Slot {
                    server,
                    idle: Mutex::default(),
                });
            }
        }
        if slots.is_empty() {
            return Err(Error::no_servers());
        }
        Ok(AsyncClient {
            shared: Arc::new(Shared { slots, options }),
        })
    }

    /// The servers, in the order given (repeats removed).
    pub fn servers(&self) -> impl ExactSizeIterator<Item = &str> {
        self.shared.slots.iter().map(|s| s.server.as_str())
    }

    /// The options every connection is opened with.
    pub fn options(&self) -> &Options {
        &self.shared.options
    }

    /// The server that owns `key` (see [`pick_server`]).
    pub fn server_for(&self, key: &str) -> &str {
        &self.shared.slots[self.slot_for(key)].server
    }

    fn slot_for(&self, key: &str) -> usize {
        let servers: Vec<&str> = self.servers().collect();
        pick_server(&servers, key).unwrap_or(0)
    }

    fn check_key(&self, key: &str) -> Result<usize, Error> {
        let slot = self.slot_for(key);
        validate_key(key)
            .map_err(|e| Error::new(ErrorKind::InvalidKey(e), &self.shared.slots[slot].server))?;
        Ok(slot)
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
        let slot = self.check_key(key)?;
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
        match self.lock(key, Duration::ZERO).await {
            Ok(guard) => Ok(Some(guard)),
            Err(e) if e.is_timeout() => Ok(None),
            Err(e) => Err(e),
        }
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
        let slot = self.check_key(key)?;
        proto::validate_limit(limit).map_err(|e| {
            Error::new(
                ErrorKind::InvalidArgument(e),
                &self.shared.slots[slot].server,
            )
        })?;
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
        match conn.call(command).await {
            Ok(outcome) => Ok(AsyncLockGuard {
                shared: self.shared.clone(),
                slot,
                conn: Some(conn),
                key: key.to_owned(),
                token: match outcome {
                    Outcome::Token(t) => Some(t),
                    _ => None,
                },
            }),
            Err(e) => {
                self.shared.give_back(slot, conn);
                Err(e)
            }
        }
    }

    /// The state of `key` on its server (`info`, protocol version 2).
    ///
    /// # Errors
    ///
    /// As [`Connection::info`](super::Connection::info).
    pub async fn info(&self, key: &str) -> Result<Info, Error> {
        let slot = self.check_key(key)?;
        match self.shared.call(slot, Command::Info { key }).await? {
            Outcome::Info(info) => Ok(info),
            _ => unreachable!("interpret gives info an Info"),
        }
    }

    /// Closes every connection holding `key` on its server (`evict`,
    /// protocol version 2); returns how many.
    ///
    /// # Errors
    ///
    /// As [`Connection::evict`](super::Connection::evict).
    pub async fn evict(&self, key: &str) -> Result<u64, Error> {
        let slot = self.check_key(key)?;
        match self.shared.call(slot, Command::Evict { key }).await? {
            Outcome::Evicted(n) => Ok(n),
            _ => unreachable!("interpret gives evict a count"),
        }
    }

    /// The counters of every server (`stats`, protocol version 2), in the
    /// order of [`AsyncClient::servers`], one result each; the servers are
    /// asked one after the other.
    pub async fn stats(&self) -> Vec<(String, Result<Stats, Error>)> {
        let mut out = Vec::with_capacity(self.shared.slots.len());
        for slot in 0..self.shared.slots.len() {
            let result = match self.shared.call(slot, Command::Stats).await {
                Ok(Outcome::Stats(stats)) => Ok(stats),
                Ok(_) => unreachable!("interpret gives stats a Stats"),
                Err(e) => Err(e),
            };
            out.push((self.shared.slots[slot].server.clone(), result));
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
    shared: Arc<Shared>,
    slot: usize,
    /// INVARIANT: `Some` until `unlock` takes it.
    conn: Option<AsyncConnection>,
    key: String,
    token: Option<u64>,
}

impl fmt::Debug for AsyncLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncLockGuard")
            .field("key", &self.key)
            .field("server", &self.server())
            .field("token", &self.token)
            .finish()
    }
}

impl AsyncLockGuard {
    /// The locked key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The server holding the lock.
    pub fn server(&self) -> &str {
        &self.shared.slots[self.slot].server
    }

    /// The fencing token of this grant (see
    /// [`LockGuard::token`](super::LockGuard::token)): `Some` for guards
    /// from [`AsyncClient::acquire`], `None` from `lock` and `try_lock`.
    pub fn token(&self) -> Option<u64> {
        self.token
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
        let mut conn = self
            .conn
            .take()
            .expect("a guard keeps its connection until unlock");
        let result = conn.call(Command::Unlock { key: &self.key }).await;
        self.shared.give_back(self.slot, conn);
        result.map(|_| ())
    }
}
