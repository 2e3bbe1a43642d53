//! The servers, the sharding and the idle connections of a client, without
//! I/O: the blocking [`Client`](super::Client) and the async client share
//! this, and differ only in how a connection is opened and spoken to.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Error, ErrorKind, Options, pick_server, validate_key};

/// What the pool asks of a connection it keeps.
pub(crate) trait Pooled {
    /// Whether an earlier error closed the connection.
    fn is_broken(&self) -> bool;
    /// Whether this idle connection can carry a new command: not broken,
    /// nothing unread, and the daemon has not closed it.
    fn is_reusable(&self) -> bool;
}

/// A server and its idle connections.
struct Slot<C> {
    server: String,
    /// INVARIANT: every connection here holds no lock and has no request
    /// in flight. Held only for a push or a pop (never across an await).
    idle: Mutex<Vec<C>>,
}

impl<C> Slot<C> {
    /// The idle list. A panic while it was held cannot leave it
    /// inconsistent (only `Vec` pushes and pops run under it), so a
    /// poisoned mutex is used as is.
    fn idle(&self) -> MutexGuard<'_, Vec<C>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The servers of a client (repeats removed, in the order given), each
/// with its idle connections, and the options every connection is opened
/// with. A slot is the index of a server.
pub(crate) struct Pool<C> {
    slots: Vec<Slot<C>>,
    options: Options,
}

impl<C: Pooled> Pool<C> {
    /// A pool for these servers; repeated servers count once.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NoServers`] for an empty list.
    pub(crate) fn new<I, S>(servers: I, options: Options) -> Result<Pool<C>, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut slots: Vec<Slot<C>> = Vec::new();
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
        Ok(Pool { slots, options })
    }

    /// The servers, in the order given (repeats removed).
    pub(crate) fn servers(&self) -> impl ExactSizeIterator<Item = &str> {
        self.slots.iter().map(|s| s.server.as_str())
    }

    /// The server of `slot`.
    pub(crate) fn server(&self, slot: usize) -> &str {
        &self.slots[slot].server
    }

    /// How many servers (the slots are `0..slot_count()`).
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The options every connection is opened with.
    pub(crate) fn options(&self) -> &Options {
        &self.options
    }

    /// The slot of the server that owns `key` (see [`pick_server`]).
    pub(crate) fn slot_for(&self, key: &str) -> usize {
        let servers: Vec<&str> = self.servers().collect();
        pick_server(&servers, key).unwrap_or(0)
    }

    /// The slot that owns `key`, once the key is known to be valid.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidKey`], naming the key's server.
    pub(crate) fn check_key(&self, key: &str) -> Result<usize, Error> {
        let slot = self.slot_for(key);
        validate_key(key).map_err(|e| Error::new(ErrorKind::InvalidKey(e), self.server(slot)))?;
        Ok(slot)
    }

    /// Checks a semaphore limit before anything is sent to `slot`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`], naming the slot's server.
    #[cfg(feature = "tokio")]
    pub(crate) fn check_limit(&self, slot: usize, limit: u32) -> Result<(), Error> {
        super::proto::validate_limit(limit)
            .map_err(|e| Error::new(ErrorKind::InvalidArgument(e), self.server(slot)))
    }

    /// An idle connection of `slot` that still works, if any; those that
    /// do not are dropped on the way.
    pub(crate) fn take_idle(&self, slot: usize) -> Option<C> {
        let slot = &self.slots[slot];
        loop {
            let conn = slot.idle().pop()?;
            if conn.is_reusable() {
                return Some(conn);
            }
        }
    }

    /// Keeps a connection for reuse if it is sound and there is room.
    pub(crate) fn give_back(&self, slot: usize, conn: C) {
        if conn.is_broken() {
            return;
        }
        let mut idle = self.slots[slot].idle();
        if idle.len() < self.options.max_idle_per_server {
            idle.push(conn);
        }
    }

    /// What a lock command on `conn`, a connection of `slot`, came to: the
    /// held lock (keeping the connection, with the grant's fencing token
    /// if any), or the error, and the connection back in the pool (it
    /// holds nothing).
    pub(crate) fn grant(
        self: &Arc<Self>,
        slot: usize,
        key: &str,
        conn: C,
        granted: Result<Option<u64>, Error>,
    ) -> Result<Held<C>, Error> {
        match granted {
            Ok(token) => Ok(Held {
                pool: self.clone(),
                slot,
                conn: Some(conn),
                key: key.to_owned(),
                token,
            }),
            Err(e) => {
                self.give_back(slot, conn);
                Err(e)
            }
        }
    }

    /// The `Debug` of a client named `name`: its servers and options.
    pub(crate) fn fmt_client(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(name)
            .field("servers", &self.servers().collect::<Vec<_>>())
            .field("options", &self.options)
            .finish()
    }
}

/// `try_lock`'s answer, from that of the lock with a zero timeout: a lock
/// held elsewhere (the timeout) is `Ok(None)`.
pub(crate) fn held_elsewhere_is_none<G>(locked: Result<G, Error>) -> Result<Option<G>, Error> {
    match locked {
        Ok(guard) => Ok(Some(guard)),
        Err(e) if e.is_timeout() => Ok(None),
        Err(e) => Err(e),
    }
}

/// A held lock (or semaphore slot) on a connection of its own: what the
/// blocking and the async guard keep.
pub(crate) struct Held<C> {
    pool: Arc<Pool<C>>,
    slot: usize,
    /// INVARIANT: `Some` until `take_conn` or `leave` takes it.
    conn: Option<C>,
    key: String,
    token: Option<u64>,
}

impl<C: Pooled> Held<C> {
    /// The locked key.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// The server holding the lock.
    pub(crate) fn server(&self) -> &str {
        self.pool.server(self.slot)
    }

    /// The fencing token of the grant, if the command gave one.
    pub(crate) fn token(&self) -> Option<u64> {
        self.token
    }

    /// The connection holding the lock.
    pub(crate) fn conn(&self) -> &C {
        self.conn
            .as_ref()
            .expect("a guard keeps its connection until unlock")
    }

    /// Takes the connection out, to unlock on it and then [give it
    /// back](Held::give_back).
    pub(crate) fn take_conn(&mut self) -> C {
        self.conn
            .take()
            .expect("a guard keeps its connection until unlock")
    }

    /// Keeps the connection for the next lock, if it is still sound (see
    /// [`Pool::give_back`]).
    pub(crate) fn give_back(&self, conn: C) {
        self.pool.give_back(self.slot, conn);
    }

    /// The connection, if it was not taken out: the guard is dropped
    /// without an unlock.
    pub(crate) fn leave(&mut self) -> Option<C> {
        self.conn.take()
    }

    /// The `Debug` of a guard named `name`: key, server, token.
    pub(crate) fn fmt_guard(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(name)
            .field("key", &self.key)
            .field("server", &self.server())
            .field("token", &self.token)
            .finish()
    }
}
