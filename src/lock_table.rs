//! The lock table: key -> holders + FIFO queue of waiters. A pure data
//! structure: no clock read, no I/O, no replies.
//!
//! Every key has a fixed limit N (PROTOCOL.md rule V2): up to N connections
//! hold it at once; `lock` is the exclusive case N = 1. N is set by the
//! request that creates the key and cannot change while the key exists.
//!
//! # Shape
//!
//! ```text
//! index: HashTable<u32>  --hash(key)-->  entries[u32]: KeyEntry { key, limit, holds head/tail, waiters head/tail }
//! holds[u32]: Hold { entry, conn, token, granted_us, prev/next among the key's holders, pos in conn.held }
//! sem_index: HashTable<u32>  --(entry, conn)-->  holds[u32]   (keys with N > 1 only)
//! conns[ConnId]: ConnLocks { held: Vec<hold>, waiting: Option<entry>, prev/next in the waiter queue }
//! ```
//!
//! * A key is stored once, in its `KeyEntry`; the hash index holds only entry
//!   numbers. Keys of up to 22 bytes are stored inside the entry, so a
//!   lock/unlock pair on a fresh short key does not touch the allocator; a
//!   longer key takes one block of its exact length, freed with the entry.
//! * Once fewer than a quarter of the entries or holds are live, the table
//!   compacts (renumbering every reference) and gives the memory back.
//! * Each grant is a `Hold`, threaded on two lists: the key's holders in
//!   grant order (so the oldest holder, which `info` shows, is the head) and
//!   the holder's `held` vector (it remembers its position there, so a
//!   release is a `swap_remove`). Finding a connection's hold on a key is
//!   O(1): for N = 1 it is the head; for N > 1 the small `sem_index`, keyed
//!   by (entry, connection), finds it. Grant, release and withdraw are O(1).
//!   `unlock` by a connection holding at most `SCAN_HELD` (4) keys compares
//!   the key with those it holds before hashing: one hash per pair saved.
//! * A connection waits for at most one key at a time (the core processes a
//!   connection's commands strictly in order), so each key's waiter queue is an
//!   intrusive doubly linked list threaded through `ConnLocks`: enqueue,
//!   grant-next and withdraw-anywhere are all O(1).
//! * A key's entry exists exactly while somebody holds it: a release hands the
//!   slot straight to the first waiter, and a key with no holder is removed.
//!   There are waiters only while all N slots are held, so granting in queue
//!   order never lets a later waiter overtake an earlier one.
//! * Every grant takes the next fencing token from one table-wide counter,
//!   seeded by [`LockTable::set_token_seed`] and strictly increasing.

use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::stats::Histogram;

/// A connection's identity in the core: the reactor's slab key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub usize);

const NIL: u32 = u32::MAX;

/// Keys of at most this many bytes are stored inside their entry, without
/// an allocation of their own (glibc's smallest block is 32 bytes, as much as
/// a short key's entry spends on its key).
const INLINE_KEY_BYTES: usize = 22;

/// Below this many entries (or holds) the table never compacts: a small
/// table costs little, and a busy one should not compact over and over.
const SHRINK_MIN: usize = 1024;

/// What `lock` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockOutcome {
    /// A slot was free; the connection holds it now, with this token.
    Granted { token: u64 },
    /// Every slot is held by others; this connection is queued at the tail.
    Queued,
    /// The connection already holds the key; nothing changed.
    AlreadyHeld,
    /// Refused, nothing changed: the connection holds `max_held_per_conn`
    /// keys already.
    TooManyLocks,
    /// Refused, nothing changed: the key is free, but holding it would put
    /// the table past `max_key_bytes`.
    TableFull,
    /// Refused, nothing changed: the key exists with another limit.
    LimitMismatch,
}

/// Bounds on what clients can make the table hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Keys one connection may hold at once.
    pub max_held_per_conn: usize,
    /// Bytes of all held keys together, each key counted as its length plus
    /// `KEY_OVERHEAD_BYTES` (its entry and index slot).
    pub max_key_bytes: usize,
}

/// What a held key costs beyond its bytes, for `Limits::max_key_bytes`:
/// its entry (64 bytes, the key inline when short), its hold (48 bytes),
/// and 16 for its index slot at the hash table's load, its place in the
/// holder's list and the free lists. A key longer than 22 bytes has a heap
/// block of its own besides (its length plus at most 16 bytes in glibc),
/// within the 25% this figure allows. Measured: 4-byte keys filling
/// `max_key_bytes` cost about 0.97 of their accounted bytes in RSS.
pub const KEY_OVERHEAD_BYTES: usize = 128;
const _: () = assert!(
    std::mem::size_of::<KeyEntry>() + std::mem::size_of::<Hold>() + 16 <= KEY_OVERHEAD_BYTES
);

impl Limits {
    /// No bounds (tests and models).
    pub const UNLIMITED: Limits = Limits {
        max_held_per_conn: usize::MAX,
        max_key_bytes: usize::MAX,
    };
}

/// What `unlock` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnlockOutcome {
    /// Released; if somebody was waiting, the slot now belongs to them,
    /// with the token they were granted.
    Unlocked { granted: Option<(ConnId, u64)> },
    /// Nobody holds the key.
    NotLocked,
    /// Other connections hold the key, this one does not.
    NotOwner,
}

/// What `info` reports about a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key's N (0 when the key does not exist).
    pub limit: u32,
    pub holders: u32,
    pub waiters: u32,
    /// The oldest holder: its connection, token and grant time (µs).
    pub oldest: Option<(ConnId, u64, u64)>,
}

/// A key's bytes: inline up to [`INLINE_KEY_BYTES`], else a heap block of
/// exactly its length.
enum KeyBuf {
    Inline {
        len: u8,
        bytes: [u8; INLINE_KEY_BYTES],
    },
    Heap(Box<[u8]>),
}
const _: () = assert!(std::mem::size_of::<KeyBuf>() == 24);

impl KeyBuf {
    const EMPTY: KeyBuf = KeyBuf::Inline {
        len: 0,
        bytes: [0; INLINE_KEY_BYTES],
    };

    fn new(key: &[u8]) -> KeyBuf {
        if key.len() <= INLINE_KEY_BYTES {
            let mut bytes = [0; INLINE_KEY_BYTES];
            bytes[..key.len()].copy_from_slice(key);
            KeyBuf::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            KeyBuf::Heap(key.into())
        }
    }

    #[inline(always)]
    fn as_slice(&self) -> &[u8] {
        match self {
            KeyBuf::Inline { len, bytes } => &bytes[..usize::from(*len)],
            KeyBuf::Heap(b) => b,
        }
    }
}

struct KeyEntry {
    /// The key's bytes; empty (and inline) while the entry is free.
    key: KeyBuf,
    hash: u64,
    /// INVARIANT: fixed from the entry's allocation until it is freed.
    limit: u32,
    /// INVARIANT: `1 <= holders <= limit` while live; the length of the
    /// holder list `hold_head..hold_tail`.
    holders: u32,
    hold_head: u32,
    hold_tail: u32,
    /// INVARIANT: head/tail of the FIFO waiter list (NIL when empty); every
    /// connection on it has `waiting == Some(this entry)`; non-empty only
    /// while `holders == limit`.
    head: u32,
    tail: u32,
    /// Length of the waiter list.
    waiters: u32,
    live: bool,
}

/// One grant: `conn` holds a slot of `entry`.
struct Hold {
    entry: u32,
    conn: ConnId,
    /// INVARIANT: `conns[conn].held[conn_pos] == this hold`.
    conn_pos: u32,
    /// Neighbours among the entry's holders, oldest first (NIL at the ends).
    prev: u32,
    next: u32,
    token: u64,
    granted_us: u64,
    /// The entry's limit when this slot was granted.
    /// INVARIANT: equals the entry's limit (N is fixed while the key exists).
    limit: u32,
}

#[derive(Default)]
struct ConnLocks {
    open: bool,
    /// Holds of this connection, in no particular order.
    held: Vec<u32>,
    /// The key entry this connection is queued on, if any.
    waiting: Option<u32>,
    /// Neighbours in that key's waiter queue (NIL at the ends).
    prev: u32,
    next: u32,
}

/// A connection holding at most this many keys has its `unlock` matched
/// against them by comparing keys, without hashing.
const SCAN_HELD: usize = 4;

/// Key -> holders + FIFO waiters. See the module docs.
pub struct LockTable<S = std::hash::RandomState> {
    index: HashTable<u32>,
    hasher: S,
    entries: Vec<KeyEntry>,
    free: Vec<u32>,
    holds: Vec<Hold>,
    free_holds: Vec<u32>,
    /// Holds on entries with `limit > 1`, by `(entry, conn)`.
    sem_index: HashTable<u32>,
    conns: Vec<ConnLocks>,
    waiting_count: usize,
    /// Live holds. INVARIANT: `holds.len() - free_holds.len()`.
    holding_count: usize,
    limits: Limits,
    /// Sum over held keys of `len + KEY_OVERHEAD_BYTES`.
    /// INVARIANT: at most `limits.max_key_bytes`.
    key_bytes: usize,
    /// The token of the next grant. INVARIANT: greater than every token
    /// issued (saturates at `u64::MAX`, centuries away from any seed).
    next_token: u64,
    /// The last token issued, 0 before the first grant.
    last_token: u64,
    /// Grant-to-release times of every release.
    hold_us: Histogram,
}

impl Default for LockTable {
    fn default() -> Self {
        Self::new()
    }
}

impl LockTable {
    /// An empty table with a randomly seeded (hash-flooding resistant) hasher.
    pub fn new() -> Self {
        Self::with_hasher(std::hash::RandomState::new())
    }
}

/// Hash of an (entry, connection) pair for `sem_index`: both are small
/// numbers the daemon assigns, not client data, so a multiply-fold is
/// enough.
fn pair_hash(e: u32, conn: ConnId) -> u64 {
    let x = (u64::from(e) << 32 ^ conn.0 as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^ (x >> 29)
}

impl<S: BuildHasher> LockTable<S> {
    pub fn with_hasher(hasher: S) -> Self {
        LockTable {
            index: HashTable::new(),
            hasher,
            entries: Vec::new(),
            free: Vec::new(),
            holds: Vec::new(),
            free_holds: Vec::new(),
            sem_index: HashTable::new(),
            conns: Vec::new(),
            waiting_count: 0,
            holding_count: 0,
            limits: Limits::UNLIMITED,
            key_bytes: 0,
            next_token: 1,
            last_token: 0,
            hold_us: Histogram::default(),
        }
    }

    /// Sets the bounds checked by later `lock` calls.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Sets the token of the next grant (the daemon's start time in ns):
    /// at least 1, and never lower than a token already issued.
    pub fn set_token_seed(&mut self, seed: u64) {
        self.next_token = seed.max(1).max(self.last_token.saturating_add(1));
    }

    /// The last token issued; 0 before the first grant.
    pub fn last_token(&self) -> u64 {
        self.last_token
    }

    /// Grant-to-release times of every release so far.
    pub fn hold_histogram(&self) -> &Histogram {
        &self.hold_us
    }

    /// Bytes held keys account for (see `Limits::max_key_bytes`).
    pub fn key_bytes(&self) -> usize {
        self.key_bytes
    }

    /// When `conn`'s hold on `key` was granted (µs), if it holds it.
    pub fn held_since(&self, conn: ConnId, key: &[u8]) -> Option<u64> {
        let h = self.find_hold(self.find(key)?, conn)?;
        Some(self.holds[h as usize].granted_us)
    }

    /// Calls `f` with the key and grant time (µs) of each of `conn`'s holds.
    pub fn for_each_held(&self, conn: ConnId, mut f: impl FnMut(&[u8], u64)) {
        let Some(c) = self.conns.get(conn.0) else {
            return;
        };
        for &h in &c.held {
            let hold = &self.holds[h as usize];
            f(
                self.entries[hold.entry as usize].key.as_slice(),
                hold.granted_us,
            );
        }
    }

    /// Registers a connection. Its id must not be open already.
    pub fn open(&mut self, conn: ConnId) {
        if self.conns.len() <= conn.0 {
            self.conns.resize_with(conn.0 + 1, ConnLocks::default);
        }
        let c = &mut self.conns[conn.0];
        debug_assert!(!c.open, "connection {conn:?} opened twice");
        c.open = true;
        c.waiting = None;
        c.prev = NIL;
        c.next = NIL;
        debug_assert!(c.held.is_empty());
    }

    /// Number of keys currently held.
    pub fn keys_held(&self) -> usize {
        self.index.len()
    }

    /// Number of connections queued on some key.
    pub fn waiters(&self) -> usize {
        self.waiting_count
    }

    /// Number of slots held over all keys (a semaphore's holders each count).
    pub fn holders(&self) -> usize {
        self.holding_count
    }

    /// Number of keys `conn` holds.
    pub fn held_by(&self, conn: ConnId) -> usize {
        self.conns.get(conn.0).map_or(0, |c| c.held.len())
    }

    /// Whether `conn` is queued on a key.
    pub fn is_waiting(&self, conn: ConnId) -> bool {
        self.conns.get(conn.0).is_some_and(|c| c.waiting.is_some())
    }

    /// The oldest holder of `key`, if any.
    pub fn holder(&self, key: &[u8]) -> Option<ConnId> {
        self.info(key).oldest.map(|(c, _, _)| c)
    }

    /// The key's limit, holders, waiters and oldest holder.
    pub fn info(&self, key: &[u8]) -> KeyInfo {
        let Some(e) = self.find(key) else {
            return KeyInfo {
                limit: 0,
                holders: 0,
                waiters: 0,
                oldest: None,
            };
        };
        let entry = &self.entries[e as usize];
        let oldest = self.holds.get(entry.hold_head as usize);
        KeyInfo {
            limit: entry.limit,
            holders: entry.holders,
            waiters: entry.waiters,
            oldest: oldest.map(|h| (h.conn, h.token, h.granted_us)),
        }
    }

    /// Pushes the connections holding `key` onto `out`, oldest first.
    pub fn holders_of(&self, key: &[u8], out: &mut Vec<ConnId>) {
        let Some(e) = self.find(key) else {
            return;
        };
        let mut h = self.entries[e as usize].hold_head;
        while let Some(hold) = self.holds.get(h as usize) {
            out.push(hold.conn);
            h = hold.next;
        }
    }

    /// `conn` asks for one of `limit` slots of `key` (`limit >= 1`; `lock`
    /// is `limit == 1`). The connection must be open and not waiting.
    /// Checks in the contract's order: limit mismatch, already held, too
    /// many locks, table full.
    pub fn lock(&mut self, conn: ConnId, key: &[u8], limit: u32, now_us: u64) -> LockOutcome {
        debug_assert!(self.conns[conn.0].open && self.conns[conn.0].waiting.is_none());
        debug_assert!(limit >= 1);
        let hash = self.hash(key);
        let entries = &self.entries;
        if let Some(&e) = self
            .index
            .find(hash, |&i| entries[i as usize].key.as_slice() == key)
        {
            let entry = &self.entries[e as usize];
            if entry.limit != limit {
                return LockOutcome::LimitMismatch;
            }
            if self.find_hold(e, conn).is_some() {
                return LockOutcome::AlreadyHeld;
            }
            if self.conns[conn.0].held.len() >= self.limits.max_held_per_conn {
                return LockOutcome::TooManyLocks;
            }
            let entry = &self.entries[e as usize];
            if entry.holders < entry.limit {
                debug_assert_eq!(entry.head, NIL, "waiters while a slot is free");
                let token = self.give(e, conn, now_us);
                return LockOutcome::Granted { token };
            }
            self.enqueue(e, conn);
            return LockOutcome::Queued;
        }
        if self.conns[conn.0].held.len() >= self.limits.max_held_per_conn {
            return LockOutcome::TooManyLocks;
        }
        let cost = key.len() + KEY_OVERHEAD_BYTES;
        if cost > self.limits.max_key_bytes.saturating_sub(self.key_bytes) {
            return LockOutcome::TableFull;
        }
        self.key_bytes += cost;
        let e = self.alloc_entry(key, hash, limit);
        let entries = &self.entries;
        self.index
            .insert_unique(hash, e, |&i| entries[i as usize].hash);
        let token = self.give(e, conn, now_us);
        LockOutcome::Granted { token }
    }

    /// `conn` releases its slot of `key`.
    pub fn unlock(&mut self, conn: ConnId, key: &[u8], now_us: u64) -> UnlockOutcome {
        // The usual unlock is of a key this connection holds, and it holds
        // few: compare against those before hashing. A connection holds a
        // key at most once, so a match is the hold `find_hold` would give.
        let held = &self.conns[conn.0].held;
        if held.len() <= SCAN_HELD {
            let holds = &self.holds;
            let entries = &self.entries;
            if let Some(&h) = held
                .iter()
                .find(|&&h| entries[holds[h as usize].entry as usize].key.as_slice() == key)
            {
                let e = self.release(h, now_us);
                return UnlockOutcome::Unlocked {
                    granted: self.pass_on(e, now_us),
                };
            }
        }
        let Some(e) = self.find(key) else {
            return UnlockOutcome::NotLocked;
        };
        let Some(h) = self.find_hold(e, conn) else {
            return UnlockOutcome::NotOwner;
        };
        self.release(h, now_us);
        UnlockOutcome::Unlocked {
            granted: self.pass_on(e, now_us),
        }
    }

    /// Removes `conn`'s pending wait, if any (timeout or disconnect). Returns
    /// whether it was waiting.
    pub fn withdraw(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.conns.get_mut(conn.0) else {
            return false;
        };
        let Some(e) = c.waiting.take() else {
            return false;
        };
        let (prev, next) = (c.prev, c.next);
        c.prev = NIL;
        c.next = NIL;
        self.waiting_count -= 1;
        let entry = &mut self.entries[e as usize];
        entry.waiters -= 1;
        match prev {
            NIL => entry.head = next,
            p => self.conns[p as usize].next = next,
        }
        match next {
            NIL => self.entries[e as usize].tail = prev,
            n => self.conns[n as usize].prev = prev,
        }
        true
    }

    /// The connection is gone: withdraws its wait and releases every key it
    /// holds, handing each slot to its next waiter. Pushes the connections
    /// that were granted a slot onto `granted`, with their tokens, in
    /// release order.
    pub fn close(&mut self, conn: ConnId, now_us: u64, granted: &mut Vec<(ConnId, u64)>) {
        if !self.conns.get(conn.0).is_some_and(|c| c.open) {
            return;
        }
        self.withdraw(conn);
        while let Some(&h) = self.conns[conn.0].held.last() {
            let e = self.release(h, now_us);
            if let Some(g) = self.pass_on(e, now_us) {
                granted.push(g);
            }
        }
        let c = &mut self.conns[conn.0];
        c.open = false;
        if c.held.capacity() > 8 {
            c.held = Vec::new();
        }
        // Closed connections at the end of `conns` are dropped (each was
        // pushed once, so this is amortized O(1)), and the vector's block
        // given back once three quarters of it is unused.
        while self.conns.last().is_some_and(|c| !c.open) {
            self.conns.pop();
        }
        if self.conns.capacity() > SHRINK_MIN && self.conns.len() < self.conns.capacity() / 4 {
            self.conns.shrink_to(self.conns.len() * 2);
        }
        self.maybe_shrink();
    }

    /// Capacity of the table's entry and hold vectors and of its index:
    /// what it keeps allocated, whatever is held now (tests and stats).
    pub fn capacity(&self) -> (usize, usize, usize) {
        (
            self.entries.capacity(),
            self.holds.capacity(),
            self.index.capacity(),
        )
    }

    /// Compacts the table once fewer than a quarter of its entries or holds
    /// are live, so that memory taken at a peak is given back (large vectors
    /// are separate mappings that the allocator returns to the system at
    /// once). Each compaction costs O(peak) and follows at least as many
    /// releases since the previous one: amortized O(1) per release. Checked
    /// when a key is freed and when a connection closes.
    #[inline(always)]
    fn maybe_shrink(&mut self) {
        let sparse = |live: usize, len: usize| len > SHRINK_MIN && live < len / 4;
        if sparse(self.index.len(), self.entries.len())
            || sparse(self.holding_count, self.holds.len())
        {
            self.compact();
        }
    }

    /// Moves the live entries and holds to the front of their vectors, in
    /// order, renumbers every reference to them, drops the free lists and
    /// shrinks every vector and index to fit.
    #[cold]
    fn compact(&mut self) {
        // Old number -> new number (NIL for free ones).
        let renumber = |live: &mut dyn FnMut(usize) -> bool, len: usize| {
            let mut map = vec![NIL; len];
            let mut n = 0u32;
            for (i, m) in map.iter_mut().enumerate() {
                if live(i) {
                    *m = n;
                    n += 1;
                }
            }
            map
        };
        let entries = &self.entries;
        let emap = renumber(&mut |i| entries[i].live, entries.len());
        let mut hold_live = vec![false; self.holds.len()];
        for c in &self.conns {
            for &h in &c.held {
                hold_live[h as usize] = true;
            }
        }
        let hmap = renumber(&mut |i| hold_live[i], hold_live.len());
        let m = |map: &[u32], x: u32| if x == NIL { NIL } else { map[x as usize] };
        let mut i = 0;
        self.entries.retain(|_| {
            i += 1;
            emap[i - 1] != NIL
        });
        let mut i = 0;
        self.holds.retain(|_| {
            i += 1;
            hold_live[i - 1]
        });
        for entry in &mut self.entries {
            entry.hold_head = m(&hmap, entry.hold_head);
            entry.hold_tail = m(&hmap, entry.hold_tail);
        }
        for hold in &mut self.holds {
            hold.entry = emap[hold.entry as usize];
            hold.prev = m(&hmap, hold.prev);
            hold.next = m(&hmap, hold.next);
        }
        for c in &mut self.conns {
            for h in &mut c.held {
                *h = hmap[*h as usize];
            }
            if let Some(e) = &mut c.waiting {
                *e = emap[*e as usize];
            }
        }
        for e in self.index.iter_mut() {
            *e = emap[*e as usize];
        }
        self.free = Vec::new();
        self.free_holds = Vec::new();
        self.entries.shrink_to_fit();
        self.holds.shrink_to_fit();
        let entries = &self.entries;
        self.index.shrink_to(0, |&i| entries[i as usize].hash);
        self.sem_index = HashTable::new();
        let holds = &self.holds;
        for (h, hold) in holds.iter().enumerate() {
            if hold.limit > 1 {
                self.sem_index
                    .insert_unique(pair_hash(hold.entry, hold.conn), h as u32, |&x| {
                        let x = &holds[x as usize];
                        pair_hash(x.entry, x.conn)
                    });
            }
        }
    }

    /// SipHash-1-3 with a per-process random key (std's `RandomState`):
    /// keys are chosen by clients, so the hash must resist flooding by
    /// precomputed collisions, which faster unkeyed or weakly keyed hashes
    /// do not promise for a long-running daemon. One `write` of the bytes,
    /// without the length prefix `Hash for [u8]` adds: the key is the only
    /// thing hashed, so prefix-freedom buys nothing.
    fn hash(&self, key: &[u8]) -> u64 {
        use std::hash::Hasher;
        let mut h = self.hasher.build_hasher();
        h.write(key);
        h.finish()
    }

    #[inline(always)]
    fn find(&self, key: &[u8]) -> Option<u32> {
        let hash = self.hash(key);
        self.index
            .find(hash, |&i| self.entries[i as usize].key.as_slice() == key)
            .copied()
    }

    /// `conn`'s hold on entry `e`, if any: O(1).
    #[inline(always)]
    fn find_hold(&self, e: u32, conn: ConnId) -> Option<u32> {
        let entry = &self.entries[e as usize];
        if entry.limit == 1 {
            let h = entry.hold_head;
            let holds = self.holds.get(h as usize).is_some_and(|x| x.conn == conn);
            return holds.then_some(h);
        }
        let holds = &self.holds;
        self.sem_index
            .find(pair_hash(e, conn), |&h| {
                holds[h as usize].entry == e && holds[h as usize].conn == conn
            })
            .copied()
    }

    fn alloc_entry(&mut self, key: &[u8], hash: u64, limit: u32) -> u32 {
        let fresh = KeyEntry {
            key: KeyBuf::EMPTY,
            hash,
            limit,
            holders: 0,
            hold_head: NIL,
            hold_tail: NIL,
            head: NIL,
            tail: NIL,
            waiters: 0,
            live: true,
        };
        let e = match self.free.pop() {
            Some(e) => e,
            None => {
                self.entries.push(fresh);
                u32::try_from(self.entries.len() - 1).expect("fewer than 2^32 keys")
            }
        };
        let entry = &mut self.entries[e as usize];
        entry.key = KeyBuf::new(key);
        entry.hash = hash;
        entry.limit = limit;
        entry.holders = 0;
        entry.hold_head = NIL;
        entry.hold_tail = NIL;
        entry.head = NIL;
        entry.tail = NIL;
        entry.waiters = 0;
        entry.live = true;
        e
    }

    /// Gives `conn` a slot of entry `e` (which has one free) with the next
    /// token; returns the token.
    #[inline(always)]
    fn give(&mut self, e: u32, conn: ConnId, now_us: u64) -> u64 {
        let token = self.next_token;
        self.next_token = token.saturating_add(1);
        self.last_token = token;
        let held = &mut self.conns[conn.0].held;
        let entry = &mut self.entries[e as usize];
        let hold = Hold {
            entry: e,
            conn,
            conn_pos: held.len() as u32,
            prev: entry.hold_tail,
            next: NIL,
            token,
            granted_us: now_us,
            limit: entry.limit,
        };
        let h = match self.free_holds.pop() {
            Some(h) => {
                self.holds[h as usize] = hold;
                h
            }
            None => {
                self.holds.push(hold);
                u32::try_from(self.holds.len() - 1).expect("fewer than 2^32 holds")
            }
        };
        held.push(h);
        match entry.hold_tail {
            NIL => entry.hold_head = h,
            t => self.holds[t as usize].next = h,
        }
        entry.hold_tail = h;
        entry.holders += 1;
        self.holding_count += 1;
        if entry.limit > 1 {
            let holds = &self.holds;
            self.sem_index.insert_unique(pair_hash(e, conn), h, |&x| {
                let x = &holds[x as usize];
                pair_hash(x.entry, x.conn)
            });
        }
        token
    }

    /// Releases hold `h` (unlinks it from its holder and its key, records
    /// its hold time); returns its entry.
    #[inline(always)]
    fn release(&mut self, h: u32, now_us: u64) -> u32 {
        let Hold {
            entry: e,
            conn,
            conn_pos,
            prev,
            next,
            granted_us,
            ..
        } = self.holds[h as usize];
        self.hold_us.record(now_us.saturating_sub(granted_us));
        let held = &mut self.conns[conn.0].held;
        let pos = conn_pos as usize;
        debug_assert_eq!(held[pos], h);
        held.swap_remove(pos);
        if let Some(&moved) = held.get(pos) {
            self.holds[moved as usize].conn_pos = conn_pos;
        }
        let entry = &mut self.entries[e as usize];
        match prev {
            NIL => entry.hold_head = next,
            p => self.holds[p as usize].next = next,
        }
        match next {
            NIL => entry.hold_tail = prev,
            n => self.holds[n as usize].prev = prev,
        }
        entry.holders -= 1;
        if entry.limit > 1 {
            self.sem_index
                .find_entry(pair_hash(e, conn), |&x| x == h)
                .expect("semaphore hold is indexed")
                .remove();
        }
        self.holding_count -= 1;
        self.free_holds.push(h);
        e
    }

    /// Entry `e` just lost a holder: grant the slot to the first waiter, or
    /// free the entry once nobody holds it.
    #[inline(always)]
    fn pass_on(&mut self, e: u32, now_us: u64) -> Option<(ConnId, u64)> {
        let entry = &self.entries[e as usize];
        let head = entry.head;
        if head == NIL {
            if entry.holders == 0 {
                self.free_entry(e);
            }
            return None;
        }
        let next = ConnId(head as usize);
        self.withdraw(next);
        let token = self.give(e, next, now_us);
        Some((next, token))
    }

    fn enqueue(&mut self, e: u32, conn: ConnId) {
        let id = u32::try_from(conn.0).expect("connection ids fit in u32");
        let tail = self.entries[e as usize].tail;
        let c = &mut self.conns[conn.0];
        c.waiting = Some(e);
        c.prev = tail;
        c.next = NIL;
        match tail {
            NIL => self.entries[e as usize].head = id,
            t => self.conns[t as usize].next = id,
        }
        let entry = &mut self.entries[e as usize];
        entry.tail = id;
        entry.waiters += 1;
        self.waiting_count += 1;
    }

    fn free_entry(&mut self, e: u32) {
        let entry = &mut self.entries[e as usize];
        self.key_bytes -= entry.key.as_slice().len() + KEY_OVERHEAD_BYTES;
        let hash = entry.hash;
        entry.live = false;
        entry.key = KeyBuf::EMPTY;
        self.index
            .find_entry(hash, |&i| i == e)
            .expect("live entry is indexed")
            .remove();
        self.free.push(e);
        // Safe here: every caller is done with entry and hold numbers.
        self.maybe_shrink();
    }

    /// Checks every invariant of the table; panics with a message on the first
    /// violation. Used by tests, fuzzers and debug builds of the core.
    pub fn check_invariants(&self) {
        let mut live = 0;
        let mut key_bytes = 0;
        let mut holding = 0;
        let mut sem_holds = 0;
        for (i, entry) in self.entries.iter().enumerate() {
            if entry.live {
                key_bytes += entry.key.as_slice().len() + KEY_OVERHEAD_BYTES;
            }
            if !entry.live {
                assert!(
                    matches!(entry.key, KeyBuf::Inline { len: 0, .. }),
                    "free entry {i} keeps its key"
                );
                continue;
            }
            live += 1;
            let e = i as u32;
            assert_eq!(
                self.find(entry.key.as_slice()),
                Some(e),
                "entry {i} not indexed"
            );
            assert!(entry.limit >= 1, "entry {i} has limit 0");
            assert!(
                (1..=entry.limit).contains(&entry.holders),
                "entry {i}: {} holders, limit {}",
                entry.holders,
                entry.limit
            );
            // Walk the holders, oldest first: linked both ways, every one a
            // live connection holding it once, tokens strictly increasing.
            let mut prev = NIL;
            let mut h = entry.hold_head;
            let mut n = 0;
            let mut last_token = 0;
            while h != NIL {
                let hold = &self.holds[h as usize];
                assert_eq!(hold.entry, e, "hold {h} on the wrong key");
                assert_eq!(hold.prev, prev, "broken holder back link at {h}");
                assert_eq!(hold.limit, entry.limit, "entry {i}: N changed while held");
                let holder = self
                    .conns
                    .get(hold.conn.0)
                    .unwrap_or_else(|| panic!("hold {h} of an unknown connection"));
                assert!(holder.open, "entry {i} held by a closed connection");
                assert_eq!(
                    holder.held.get(hold.conn_pos as usize),
                    Some(&h),
                    "hold {h} conn_pos wrong"
                );
                assert!(
                    hold.token > last_token,
                    "tokens not increasing on entry {i}"
                );
                assert!(hold.token <= self.last_token, "token from the future");
                last_token = hold.token;
                assert_eq!(self.find_hold(e, hold.conn), Some(h), "hold {h} not found");
                prev = h;
                h = hold.next;
                n += 1;
                assert!(n <= entry.limit, "entry {i}: more holders than N");
            }
            assert_eq!(entry.hold_tail, prev, "entry {i} holder tail wrong");
            assert_eq!(n, entry.holders, "entry {i} holder count wrong");
            holding += n as usize;
            if entry.limit > 1 {
                sem_holds += n as usize;
            }
            // Walk the waiter queue forwards, checking back links.
            let mut prev = NIL;
            let mut w = entry.head;
            let mut n = 0;
            while w != NIL {
                let c = &self.conns[w as usize];
                assert!(c.open, "closed connection {w} waits on entry {i}");
                assert_eq!(c.waiting, Some(e), "connection {w} in wrong queue");
                assert_eq!(c.prev, prev, "broken back link at {w}");
                assert!(
                    self.find_hold(e, ConnId(w as usize)).is_none(),
                    "holder waits on own key"
                );
                prev = w;
                w = c.next;
                n += 1;
                assert!(
                    n as usize <= self.conns.len(),
                    "cycle in waiter queue of entry {i}"
                );
            }
            assert_eq!(entry.tail, prev, "entry {i} tail wrong");
            assert_eq!(n, entry.waiters, "entry {i} waiter count wrong");
            assert!(
                n == 0 || entry.holders == entry.limit,
                "entry {i}: waiters while a slot is free"
            );
        }
        assert_eq!(live, self.index.len(), "index and live entries disagree");
        assert_eq!(key_bytes, self.key_bytes, "key byte count wrong");
        assert!(
            self.key_bytes <= self.limits.max_key_bytes,
            "over the key byte limit"
        );
        assert_eq!(
            live + self.free.len(),
            self.entries.len(),
            "free list out of step"
        );
        assert_eq!(holding, self.holding_count, "holder count wrong");
        assert_eq!(
            holding + self.free_holds.len(),
            self.holds.len(),
            "hold free list out of step"
        );
        assert_eq!(
            sem_holds,
            self.sem_index.len(),
            "semaphore index out of step"
        );
        assert!(self.next_token > self.last_token || self.last_token == u64::MAX);
        let mut waiting = 0;
        for (ci, c) in self.conns.iter().enumerate() {
            if !c.open {
                assert!(
                    c.held.is_empty() && c.waiting.is_none(),
                    "closed {ci} keeps state"
                );
                continue;
            }
            for &h in &c.held {
                assert_eq!(
                    self.holds[h as usize].conn,
                    ConnId(ci),
                    "held list of {ci} wrong"
                );
            }
            if let Some(e) = c.waiting {
                waiting += 1;
                assert!(self.entries[e as usize].live, "{ci} waits on a free key");
            }
        }
        assert_eq!(waiting, self.waiting_count, "waiter count wrong");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Rng;
    use std::collections::{BTreeMap, VecDeque};

    fn table(n: usize) -> LockTable {
        let mut t = LockTable::new();
        for i in 0..n {
            t.open(ConnId(i));
        }
        t
    }

    fn granted(o: LockOutcome) -> bool {
        matches!(o, LockOutcome::Granted { .. })
    }

    /// `unlock` by key comparison (a connection holding up to `SCAN_HELD`
    /// keys) and by hash (more) answer alike: the held key is released
    /// and handed on, another's key is `NotOwner`, a free key `NotLocked`;
    /// a semaphore slot too.
    #[test]
    fn unlock_answers_alike_with_few_and_many_held() {
        for held in [0, 1, SCAN_HELD, SCAN_HELD + 1] {
            let mut t = table(3);
            for i in 0..held {
                assert!(granted(t.lock(ConnId(0), format!("k{i}").as_bytes(), 1, 0)));
            }
            assert!(granted(t.lock(ConnId(1), b"other", 1, 0)));
            assert!(granted(t.lock(ConnId(0), b"sem", 3, 0)));
            assert!(granted(t.lock(ConnId(1), b"sem", 3, 0)));
            assert_eq!(t.unlock(ConnId(0), b"other", 1), UnlockOutcome::NotOwner);
            assert_eq!(t.unlock(ConnId(0), b"free", 1), UnlockOutcome::NotLocked);
            if held > 0 {
                assert_eq!(t.lock(ConnId(2), b"k0", 1, 0), LockOutcome::Queued);
                let out = t.unlock(ConnId(0), b"k0", 1);
                assert!(
                    matches!(
                        out,
                        UnlockOutcome::Unlocked {
                            granted: Some((ConnId(2), _))
                        }
                    ),
                    "{held} held: {out:?}"
                );
                assert_eq!(t.holder(b"k0"), Some(ConnId(2)));
                assert_eq!(t.unlock(ConnId(0), b"k0", 1), UnlockOutcome::NotOwner);
            }
            assert_eq!(
                t.unlock(ConnId(0), b"sem", 1),
                UnlockOutcome::Unlocked { granted: None }
            );
            assert_eq!(t.unlock(ConnId(0), b"sem", 1), UnlockOutcome::NotOwner);
            assert_eq!(t.held_by(ConnId(0)), held.saturating_sub(1));
            t.check_invariants();
        }
    }

    #[test]
    fn grant_queue_release_fifo() {
        let mut t = table(12);
        t.set_token_seed(1000);
        assert_eq!(t.last_token(), 0);
        assert_eq!(
            t.lock(ConnId(0), b"k", 1, 0),
            LockOutcome::Granted { token: 1000 }
        );
        assert_eq!(t.lock(ConnId(0), b"k", 1, 0), LockOutcome::AlreadyHeld);
        for i in 1..12 {
            assert_eq!(t.lock(ConnId(i), b"k", 1, 0), LockOutcome::Queued);
        }
        t.check_invariants();
        for i in 0..11 {
            assert_eq!(
                t.unlock(ConnId(i), b"k", 0),
                UnlockOutcome::Unlocked {
                    granted: Some((ConnId(i + 1), 1001 + i as u64))
                }
            );
            t.check_invariants();
        }
        assert_eq!(
            t.unlock(ConnId(11), b"k", 0),
            UnlockOutcome::Unlocked { granted: None }
        );
        assert_eq!(t.keys_held(), 0);
        assert_eq!(t.unlock(ConnId(11), b"k", 0), UnlockOutcome::NotLocked);
        assert_eq!(t.last_token(), 1011);
        t.check_invariants();
    }

    #[test]
    fn not_owner_and_case_sensitive_keys() {
        let mut t = table(2);
        assert!(granted(t.lock(ConnId(0), b"Key", 1, 0)));
        assert_eq!(t.unlock(ConnId(1), b"Key", 0), UnlockOutcome::NotOwner);
        assert_eq!(t.unlock(ConnId(1), b"key", 0), UnlockOutcome::NotLocked);
        assert!(granted(t.lock(ConnId(1), b"key", 1, 0)));
        assert_eq!(t.holder(b"Key"), Some(ConnId(0)));
        t.check_invariants();
    }

    #[test]
    fn semaphore_slots_fifo_and_mismatch() {
        let mut t = table(6);
        for i in 0..3 {
            assert!(granted(t.lock(ConnId(i), b"s", 3, 10 * i as u64)));
        }
        assert_eq!(t.lock(ConnId(0), b"s", 3, 0), LockOutcome::AlreadyHeld);
        assert_eq!(t.lock(ConnId(3), b"s", 2, 0), LockOutcome::LimitMismatch);
        assert_eq!(t.lock(ConnId(3), b"s", 1, 0), LockOutcome::LimitMismatch);
        assert!(!t.is_waiting(ConnId(3)));
        assert_eq!(t.lock(ConnId(3), b"s", 3, 0), LockOutcome::Queued);
        assert_eq!(t.lock(ConnId(4), b"s", 3, 0), LockOutcome::Queued);
        let info = t.info(b"s");
        assert_eq!((info.limit, info.holders, info.waiters), (3, 3, 2));
        assert_eq!(info.oldest.map(|(c, _, at)| (c, at)), Some((ConnId(0), 0)));
        t.check_invariants();
        // The middle holder leaves: the first waiter gets its slot.
        let UnlockOutcome::Unlocked {
            granted: Some((g, _)),
        } = t.unlock(ConnId(1), b"s", 50)
        else {
            panic!("no grant");
        };
        assert_eq!(g, ConnId(3));
        assert_eq!(t.unlock(ConnId(1), b"s", 50), UnlockOutcome::NotOwner);
        // A waiter that leaves is skipped; the holders are 0, 2, 3.
        assert!(t.withdraw(ConnId(4)));
        let mut holders = vec![];
        t.holders_of(b"s", &mut holders);
        assert_eq!(holders, vec![ConnId(0), ConnId(2), ConnId(3)]);
        t.check_invariants();
        let mut g = vec![];
        for c in [0, 2, 3] {
            t.close(ConnId(c), 60, &mut g);
        }
        assert!(g.is_empty());
        assert_eq!(t.keys_held(), 0);
        assert_eq!(t.holders(), 0);
        // Gone, the key may come back with another N.
        assert!(granted(t.lock(ConnId(5), b"s", 1, 70)));
        assert_eq!(t.hold_histogram().count, 4);
        t.check_invariants();
    }

    #[test]
    fn limits_refuse_without_changing_state() {
        let mut t = table(3);
        t.set_limits(Limits {
            max_held_per_conn: 2,
            max_key_bytes: 3 * (KEY_OVERHEAD_BYTES + 1),
        });
        assert!(granted(t.lock(ConnId(0), b"a", 1, 0)));
        assert!(granted(t.lock(ConnId(0), b"b", 1, 0)));
        assert_eq!(t.lock(ConnId(0), b"c", 1, 0), LockOutcome::TooManyLocks);
        assert!(granted(t.lock(ConnId(1), b"c", 1, 0)));
        // Waiting for a held key counts too: it would be a third lock.
        assert_eq!(t.lock(ConnId(0), b"c", 1, 0), LockOutcome::TooManyLocks);
        // The limit mismatch comes first.
        assert_eq!(t.lock(ConnId(0), b"c", 2, 0), LockOutcome::LimitMismatch);
        assert!(!t.is_waiting(ConnId(0)));
        // The table holds 3 one-byte keys: a fourth key does not fit.
        assert_eq!(t.lock(ConnId(2), b"d", 1, 0), LockOutcome::TableFull);
        assert_eq!(t.holder(b"d"), None);
        // Queueing on a held key costs nothing.
        assert_eq!(t.lock(ConnId(2), b"a", 1, 0), LockOutcome::Queued);
        t.check_invariants();
        assert_eq!(
            t.unlock(ConnId(0), b"b", 0),
            UnlockOutcome::Unlocked { granted: None }
        );
        assert_eq!(t.key_bytes(), 2 * (KEY_OVERHEAD_BYTES + 1));
        assert!(granted(t.lock(ConnId(1), b"d", 1, 0)));
        t.check_invariants();
    }

    #[test]
    fn withdraw_from_middle_keeps_order() {
        let mut t = table(5);
        t.lock(ConnId(0), b"k", 1, 0);
        for i in 1..5 {
            t.lock(ConnId(i), b"k", 1, 0);
        }
        assert!(t.withdraw(ConnId(2)));
        assert!(!t.withdraw(ConnId(2)));
        t.check_invariants();
        let mut order = vec![];
        let mut cur = ConnId(0);
        while let UnlockOutcome::Unlocked {
            granted: Some((g, _)),
        } = t.unlock(cur, b"k", 0)
        {
            order.push(g.0);
            cur = g;
        }
        assert_eq!(order, vec![1, 3, 4]);
        t.check_invariants();
    }

    #[test]
    fn close_releases_everything_and_grants() {
        let mut t = table(4);
        t.lock(ConnId(0), b"a", 1, 0);
        t.lock(ConnId(0), b"b", 1, 0);
        t.lock(ConnId(0), b"c", 1, 0);
        t.lock(ConnId(1), b"b", 1, 0);
        t.lock(ConnId(2), b"c", 1, 0);
        t.lock(ConnId(3), b"x", 1, 0);
        let mut granted = vec![];
        t.close(ConnId(0), 0, &mut granted);
        let mut granted: Vec<ConnId> = granted.into_iter().map(|(c, _)| c).collect();
        granted.sort();
        assert_eq!(granted, vec![ConnId(1), ConnId(2)]);
        assert_eq!(t.holder(b"a"), None);
        assert_eq!(t.holder(b"b"), Some(ConnId(1)));
        assert_eq!(t.holder(b"c"), Some(ConnId(2)));
        t.check_invariants();
        // A waiter that closes is withdrawn without granting anything.
        t.open(ConnId(0));
        t.lock(ConnId(0), b"b", 1, 0);
        let mut granted = vec![];
        t.close(ConnId(0), 0, &mut granted);
        assert!(granted.is_empty());
        assert_eq!(t.waiters(), 0);
        t.check_invariants();
    }

    /// The table against a tiny reference model (per key: N, holders in
    /// grant order, waiters in arrival order), driven by the model's seeded
    /// Rng; `LOCK_TABLE_SEED` replays a seed.
    #[test]
    fn model() {
        #[derive(Default)]
        struct Key {
            limit: u32,
            holders: Vec<(usize, u64)>,
            waiters: VecDeque<usize>,
        }
        let seed: u64 = std::env::var("LOCK_TABLE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed);
        let mut rng = Rng::new(seed);
        const N: usize = 16;
        let mut t = table(N);
        t.set_token_seed(1 << 60);
        let mut token = 1u64 << 60;
        let mut model: BTreeMap<u8, Key> = BTreeMap::new();
        let mut waiting = [false; N];
        // Grants the head waiter of `k` if a slot is free; drops empty keys.
        fn pass_on(m: &mut Key, waiting: &mut [bool], token: &mut u64) -> Option<(ConnId, u64)> {
            if (m.holders.len() as u32) < m.limit {
                if let Some(g) = m.waiters.pop_front() {
                    waiting[g] = false;
                    m.holders.push((g, *token));
                    *token += 1;
                    return Some((ConnId(g), *token - 1));
                }
            }
            None
        }
        for step in 0..200_000 {
            let c = rng.index(N);
            let k = rng.index(6) as u8;
            // Keys a, b, c are exclusive; d, e, f semaphores of 2 or 3.
            let limit = if k < 3 {
                1
            } else {
                2 + u32::from(rng.chance(1, 8))
            };
            let key = [b'a' + k];
            let ctx = format!("seed {seed} step {step}");
            match rng.below(10) {
                0..=4 if !waiting[c] => {
                    let m = model.entry(k).or_insert_with(|| Key {
                        limit,
                        ..Key::default()
                    });
                    let want = if m.limit != limit {
                        LockOutcome::LimitMismatch
                    } else if m.holders.iter().any(|&(h, _)| h == c) {
                        LockOutcome::AlreadyHeld
                    } else if (m.holders.len() as u32) < m.limit {
                        m.holders.push((c, token));
                        token += 1;
                        LockOutcome::Granted { token: token - 1 }
                    } else {
                        m.waiters.push_back(c);
                        waiting[c] = true;
                        LockOutcome::Queued
                    };
                    if m.holders.is_empty() {
                        model.remove(&k);
                    }
                    assert_eq!(t.lock(ConnId(c), &key, limit, step), want, "{ctx}");
                }
                5..=7 if !waiting[c] => {
                    let want = match model.get_mut(&k) {
                        None => UnlockOutcome::NotLocked,
                        Some(m) => match m.holders.iter().position(|&(h, _)| h == c) {
                            None => UnlockOutcome::NotOwner,
                            Some(i) => {
                                m.holders.remove(i);
                                let granted = pass_on(m, &mut waiting, &mut token);
                                if m.holders.is_empty() {
                                    model.remove(&k);
                                }
                                UnlockOutcome::Unlocked { granted }
                            }
                        },
                    };
                    assert_eq!(t.unlock(ConnId(c), &key, step), want, "{ctx}");
                }
                8 => {
                    let was = waiting[c];
                    if was {
                        for m in model.values_mut() {
                            m.waiters.retain(|&x| x != c);
                        }
                        waiting[c] = false;
                    }
                    assert_eq!(t.withdraw(ConnId(c)), was, "{ctx}");
                }
                _ => {
                    for m in model.values_mut() {
                        m.waiters.retain(|&x| x != c);
                    }
                    waiting[c] = false;
                    // Releases in the table's order (the reverse of its held
                    // list is not the model's business): compare as sets,
                    // with each grant's token taken in release order.
                    let mut got = vec![];
                    t.close(ConnId(c), step, &mut got);
                    t.open(ConnId(c));
                    let mut want = vec![];
                    for (&k, m) in model.iter_mut() {
                        if let Some(i) = m.holders.iter().position(|&(h, _)| h == c) {
                            m.holders.remove(i);
                            if let Some(&w) = m.waiters.front() {
                                if (m.holders.len() as u32) < m.limit {
                                    want.push((k, w));
                                }
                            }
                        }
                    }
                    assert_eq!(got.len(), want.len(), "{ctx}");
                    // Tokens follow the table's release order.
                    for &(g, tok) in &got {
                        let (k, _) = *want
                            .iter()
                            .find(|&&(_, w)| w == g.0)
                            .unwrap_or_else(|| panic!("unexpected grant {g:?}; {ctx}"));
                        let m = model.get_mut(&k).expect("key");
                        assert_eq!(m.waiters.pop_front(), Some(g.0), "{ctx}");
                        waiting[g.0] = false;
                        assert_eq!(tok, token, "{ctx}");
                        m.holders.push((g.0, token));
                        token += 1;
                    }
                    model.retain(|_, m| !m.holders.is_empty());
                }
            }
            if step % 64 == 0 {
                t.check_invariants();
            }
            assert_eq!(t.keys_held(), model.len(), "{ctx}");
            if token > 1 << 60 {
                assert_eq!(t.last_token(), token - 1, "{ctx}");
            }
        }
        t.check_invariants();
    }

    /// Regression: the entry vector, hold vector and index kept their peak
    /// size forever after the keys were released.
    #[test]
    fn table_shrinks_after_a_peak() {
        const N: usize = 20_000;
        let mut t = table(4);
        t.set_limits(Limits {
            max_held_per_conn: N,
            max_key_bytes: usize::MAX,
        });
        let key = |i: usize| format!("key-{i}").into_bytes();
        for i in 0..N {
            assert!(granted(t.lock(ConnId(i % 4), &key(i), 1, 0)));
        }
        let (entries, holds, index) = t.capacity();
        assert!(entries >= N && holds >= N && index >= N);
        for i in 0..N {
            assert_eq!(
                t.unlock(ConnId(i % 4), &key(i), 1),
                UnlockOutcome::Unlocked { granted: None }
            );
        }
        t.check_invariants();
        let (entries, holds, index) = t.capacity();
        assert!(
            entries <= SHRINK_MIN && holds <= SHRINK_MIN && index <= 2 * SHRINK_MIN,
            "kept {entries} entries, {holds} holds, {index} index slots"
        );
        // Connections that leave give back their slots too.
        let mut t = table(N);
        for i in 0..N {
            t.close(ConnId(i), 0, &mut vec![]);
        }
        assert!(t.conns.capacity() <= SHRINK_MIN);
        t.open(ConnId(N + 5));
        assert!(granted(t.lock(ConnId(N + 5), b"k", 1, 0)));
        t.check_invariants();
    }

    /// Compaction renumbers entries and holds under live holders, semaphore
    /// holders and waiters: order, tokens and counts survive it.
    #[test]
    fn compaction_keeps_holders_and_queues() {
        const N: usize = 6_000;
        let mut rng = Rng::new(7);
        let mut t = table(N + 8);
        let key = |i: usize| format!("a-long-key-stored-on-the-heap-{i}").into_bytes();
        for i in 0..N {
            let limit = if i % 5 == 0 { 3 } else { 1 };
            assert!(granted(t.lock(ConnId(i), &key(i), limit, 0)));
        }
        // Keep key 0 (a semaphore of 3) and key 1 busy: holders and waiters.
        assert!(granted(t.lock(ConnId(N), &key(0), 3, 0)));
        assert!(granted(t.lock(ConnId(N + 1), &key(0), 3, 0)));
        for c in N + 2..N + 5 {
            assert_eq!(t.lock(ConnId(c), &key(0), 3, 0), LockOutcome::Queued);
        }
        for c in N + 5..N + 8 {
            assert_eq!(t.lock(ConnId(c), &key(1), 1, 0), LockOutcome::Queued);
        }
        let mut order: Vec<usize> = (2..N).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.index(i + 1));
        }
        for (n, &i) in order.iter().enumerate() {
            t.close(ConnId(i), 1, &mut vec![]);
            if n % 500 == 0 {
                t.check_invariants();
            }
        }
        t.check_invariants();
        assert!(t.capacity().0 <= SHRINK_MIN, "{:?}", t.capacity());
        assert_eq!(t.keys_held(), 2);
        let info = t.info(&key(0));
        assert_eq!((info.limit, info.holders, info.waiters), (3, 3, 3));
        assert_eq!(info.oldest.map(|(c, _, _)| c), Some(ConnId(0)));
        // The queues are still FIFO.
        let UnlockOutcome::Unlocked {
            granted: Some((g, _)),
        } = t.unlock(ConnId(N), &key(0), 2)
        else {
            panic!("no grant");
        };
        assert_eq!(g, ConnId(N + 2));
        let mut cur = ConnId(1);
        for want in N + 5..N + 8 {
            let UnlockOutcome::Unlocked {
                granted: Some((g, _)),
            } = t.unlock(cur, &key(1), 2)
            else {
                panic!("no grant");
            };
            assert_eq!(g, ConnId(want));
            cur = g;
        }
        assert_eq!(
            t.lock(ConnId(N + 1), &key(0), 3, 0),
            LockOutcome::AlreadyHeld
        );
        t.check_invariants();
    }

    /// A key is charged its length plus what its entry, hold and index slot
    /// really take; short keys are stored inline, long ones on the heap.
    #[test]
    fn key_bytes_accounting() {
        assert_eq!(std::mem::size_of::<KeyEntry>(), 64);
        assert!(std::mem::size_of::<KeyEntry>() + std::mem::size_of::<Hold>() < KEY_OVERHEAD_BYTES);
        let mut t = table(2);
        let long = [b'x'; 300];
        for (key, cost) in [
            (&b"abcd"[..], 4 + KEY_OVERHEAD_BYTES),
            (
                &long[..INLINE_KEY_BYTES],
                INLINE_KEY_BYTES + KEY_OVERHEAD_BYTES,
            ),
            (
                &long[..INLINE_KEY_BYTES + 1],
                INLINE_KEY_BYTES + 1 + KEY_OVERHEAD_BYTES,
            ),
            (&long[..], 300 + KEY_OVERHEAD_BYTES),
        ] {
            assert!(granted(t.lock(ConnId(0), key, 1, 0)));
            assert_eq!(t.key_bytes(), cost);
            assert_eq!(t.holder(key), Some(ConnId(0)));
            assert_eq!(t.holder(&key[1..]), None);
            assert_eq!(t.lock(ConnId(1), key, 1, 0), LockOutcome::Queued);
            t.check_invariants();
            t.withdraw(ConnId(1));
            t.unlock(ConnId(0), key, 0);
            assert_eq!(t.key_bytes(), 0);
        }
        // The limit at 0, at one key's cost, and at its maximum.
        let limit = |max_key_bytes| Limits {
            max_held_per_conn: 8,
            max_key_bytes,
        };
        t.set_limits(limit(0));
        assert_eq!(t.lock(ConnId(0), b"a", 1, 0), LockOutcome::TableFull);
        t.set_limits(limit(1 + KEY_OVERHEAD_BYTES));
        assert!(granted(t.lock(ConnId(0), b"a", 1, 0)));
        assert_eq!(t.lock(ConnId(0), b"b", 1, 0), LockOutcome::TableFull);
        t.set_limits(limit(usize::MAX));
        assert!(granted(t.lock(ConnId(0), &long, 1, 0)));
        t.check_invariants();
    }
}
