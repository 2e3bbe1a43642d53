//! The lock table: key -> holder + FIFO queue of waiters. A pure data
//! structure: no clock, no I/O, no replies.
//!
//! # Shape
//!
//! ```text
//! index: HashTable<u32>  --hash(key)-->  entries[u32]: KeyEntry { key, holder, waiters head/tail }
//! conns[ConnId]: ConnLocks { held: Vec<u32>, waiting: Option<u32>, prev/next in the waiter queue }
//! ```
//!
//! * A key is stored once, in its `KeyEntry`; the hash index holds only entry
//!   numbers. Freed entries keep their key buffer for reuse, so a lock/unlock
//!   pair on a fresh key does not touch the allocator.
//! * A connection waits for at most one key at a time (the core processes a
//!   connection's commands strictly in order), so each key's waiter queue is an
//!   intrusive doubly linked list threaded through `ConnLocks`: enqueue,
//!   grant-next and withdraw-anywhere are all O(1).
//! * Each held key remembers its position in the holder's `held` list, so an
//!   unlock removes it with a `swap_remove`, O(1).
//! * A key's entry exists exactly while somebody holds it: a release hands the
//!   key straight to the first waiter, and a key with no holder is removed.
//!   (There are never waiters on a free key.)

use std::hash::BuildHasher;

use hashbrown::HashTable;

/// A connection's identity in the core: the reactor's slab key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub usize);

const NIL: u32 = u32::MAX;

/// Freed entries keep key buffers of at most this capacity for reuse; larger
/// ones are dropped so one huge key does not pin memory.
const KEEP_KEY_CAPACITY: usize = 64;

/// What `lock` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockOutcome {
    /// The key was free; the connection holds it now.
    Granted,
    /// The key is held by another connection; this one is queued at the tail.
    Queued,
    /// The connection already holds the key; nothing changed.
    AlreadyHeld,
    /// Refused, nothing changed: the connection holds `max_held_per_conn`
    /// keys already.
    TooManyLocks,
    /// Refused, nothing changed: the key is free, but holding it would put
    /// the table past `max_key_bytes`.
    TableFull,
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

/// What a held key costs beyond its bytes, for `Limits::max_key_bytes`.
pub const KEY_OVERHEAD_BYTES: usize = 64;

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
    /// Released; if somebody was waiting, the key now belongs to them.
    Unlocked { granted: Option<ConnId> },
    /// Nobody holds the key.
    NotLocked,
    /// Another connection holds the key.
    NotOwner,
}

struct KeyEntry {
    /// The key's bytes; cleared (capacity kept) while the entry is free.
    key: Vec<u8>,
    hash: u64,
    /// INVARIANT: for a live entry, `holder` is a live connection and
    /// `conns[holder].held[holder_pos] == this entry`.
    holder: ConnId,
    holder_pos: u32,
    /// INVARIANT: head/tail of the FIFO waiter list (NIL when empty); every
    /// connection on it has `waiting == Some(this entry)`.
    head: u32,
    tail: u32,
    live: bool,
}

#[derive(Default)]
struct ConnLocks {
    open: bool,
    /// Entries of the keys this connection holds, in no particular order.
    held: Vec<u32>,
    /// The key entry this connection is queued on, if any.
    waiting: Option<u32>,
    /// Neighbours in that key's waiter queue (NIL at the ends).
    prev: u32,
    next: u32,
}

/// Key -> holder + FIFO waiters. See the module docs.
pub struct LockTable<S = std::hash::RandomState> {
    index: HashTable<u32>,
    hasher: S,
    entries: Vec<KeyEntry>,
    free: Vec<u32>,
    conns: Vec<ConnLocks>,
    waiting_count: usize,
    limits: Limits,
    /// Sum over held keys of `len + KEY_OVERHEAD_BYTES`.
    /// INVARIANT: at most `limits.max_key_bytes`.
    key_bytes: usize,
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

impl<S: BuildHasher> LockTable<S> {
    pub fn with_hasher(hasher: S) -> Self {
        LockTable {
            index: HashTable::new(),
            hasher,
            entries: Vec::new(),
            free: Vec::new(),
            conns: Vec::new(),
            waiting_count: 0,
            limits: Limits::UNLIMITED,
            key_bytes: 0,
        }
    }

    /// Sets the bounds checked by later `lock` calls.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Bytes held keys account for (see `Limits::max_key_bytes`).
    pub fn key_bytes(&self) -> usize {
        self.key_bytes
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

    /// Number of keys `conn` holds.
    pub fn held_by(&self, conn: ConnId) -> usize {
        self.conns.get(conn.0).map_or(0, |c| c.held.len())
    }

    /// Whether `conn` is queued on a key.
    pub fn is_waiting(&self, conn: ConnId) -> bool {
        self.conns.get(conn.0).is_some_and(|c| c.waiting.is_some())
    }

    /// The holder of `key`, if any.
    pub fn holder(&self, key: &[u8]) -> Option<ConnId> {
        self.find(key).map(|e| self.entries[e as usize].holder)
    }

    /// `conn` asks for `key`. The connection must be open and not waiting.
    pub fn lock(&mut self, conn: ConnId, key: &[u8]) -> LockOutcome {
        debug_assert!(self.conns[conn.0].open && self.conns[conn.0].waiting.is_none());
        let hash = self.hash(key);
        let entries = &self.entries;
        if let Some(&e) = self.index.find(hash, |&i| entries[i as usize].key == key) {
            let entry = &self.entries[e as usize];
            if entry.holder == conn {
                return LockOutcome::AlreadyHeld;
            }
            if self.conns[conn.0].held.len() >= self.limits.max_held_per_conn {
                return LockOutcome::TooManyLocks;
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
        let e = self.alloc_entry(key, hash);
        let entries = &self.entries;
        self.index
            .insert_unique(hash, e, |&i| entries[i as usize].hash);
        self.give(e, conn);
        LockOutcome::Granted
    }

    /// `conn` releases `key`.
    pub fn unlock(&mut self, conn: ConnId, key: &[u8]) -> UnlockOutcome {
        let Some(e) = self.find(key) else {
            return UnlockOutcome::NotLocked;
        };
        if self.entries[e as usize].holder != conn {
            return UnlockOutcome::NotOwner;
        }
        self.take_from_holder(e);
        UnlockOutcome::Unlocked {
            granted: self.pass_on(e),
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
        match prev {
            NIL => self.entries[e as usize].head = next,
            p => self.conns[p as usize].next = next,
        }
        match next {
            NIL => self.entries[e as usize].tail = prev,
            n => self.conns[n as usize].prev = prev,
        }
        true
    }

    /// The connection is gone: withdraws its wait and releases every key it
    /// holds, handing each to its next waiter. Pushes the connections that
    /// were granted a key onto `granted`, in release order.
    pub fn close(&mut self, conn: ConnId, granted: &mut Vec<ConnId>) {
        if !self.conns.get(conn.0).is_some_and(|c| c.open) {
            return;
        }
        self.withdraw(conn);
        while let Some(&e) = self.conns[conn.0].held.last() {
            self.take_from_holder(e);
            if let Some(g) = self.pass_on(e) {
                granted.push(g);
            }
        }
        let c = &mut self.conns[conn.0];
        c.open = false;
        if c.held.capacity() > 8 {
            c.held = Vec::new();
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

    fn find(&self, key: &[u8]) -> Option<u32> {
        let hash = self.hash(key);
        self.index
            .find(hash, |&i| self.entries[i as usize].key == key)
            .copied()
    }

    fn alloc_entry(&mut self, key: &[u8], hash: u64) -> u32 {
        let fresh = KeyEntry {
            key: Vec::new(),
            hash,
            holder: ConnId(usize::MAX),
            holder_pos: NIL,
            head: NIL,
            tail: NIL,
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
        entry.key.clear();
        entry.key.extend_from_slice(key);
        entry.hash = hash;
        entry.live = true;
        entry.head = NIL;
        entry.tail = NIL;
        e
    }

    /// Makes `conn` the holder of entry `e` (which has no holder).
    fn give(&mut self, e: u32, conn: ConnId) {
        let held = &mut self.conns[conn.0].held;
        let entry = &mut self.entries[e as usize];
        entry.holder = conn;
        entry.holder_pos = held.len() as u32;
        held.push(e);
    }

    /// Removes entry `e` from its holder's `held` list.
    fn take_from_holder(&mut self, e: u32) {
        let entry = &self.entries[e as usize];
        let (holder, pos) = (entry.holder, entry.holder_pos as usize);
        let held = &mut self.conns[holder.0].held;
        debug_assert_eq!(held[pos], e);
        held.swap_remove(pos);
        if let Some(&moved) = held.get(pos) {
            self.entries[moved as usize].holder_pos = pos as u32;
        }
        let entry = &mut self.entries[e as usize];
        entry.holder = ConnId(usize::MAX);
        entry.holder_pos = NIL;
    }

    /// Entry `e` just lost its holder: grant it to the first waiter, or free it.
    fn pass_on(&mut self, e: u32) -> Option<ConnId> {
        let head = self.entries[e as usize].head;
        if head == NIL {
            self.free_entry(e);
            return None;
        }
        let next = ConnId(head as usize);
        self.withdraw(next);
        self.give(e, next);
        Some(next)
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
        self.entries[e as usize].tail = id;
        self.waiting_count += 1;
    }

    fn free_entry(&mut self, e: u32) {
        let entry = &mut self.entries[e as usize];
        self.key_bytes -= entry.key.len() + KEY_OVERHEAD_BYTES;
        let hash = entry.hash;
        entry.live = false;
        if entry.key.capacity() > KEEP_KEY_CAPACITY {
            entry.key = Vec::new();
        } else {
            entry.key.clear();
        }
        self.index
            .find_entry(hash, |&i| i == e)
            .expect("live entry is indexed")
            .remove();
        self.free.push(e);
    }

    /// Checks every invariant of the table; panics with a message on the first
    /// violation. Used by tests, fuzzers and debug builds of the core.
    pub fn check_invariants(&self) {
        let mut live = 0;
        let mut key_bytes = 0;
        for (i, entry) in self.entries.iter().enumerate() {
            if entry.live {
                key_bytes += entry.key.len() + KEY_OVERHEAD_BYTES;
            }
            if !entry.live {
                assert!(entry.key.is_empty(), "free entry {i} keeps its key");
                continue;
            }
            live += 1;
            let e = i as u32;
            assert_eq!(self.find(&entry.key), Some(e), "entry {i} not indexed");
            let holder = self
                .conns
                .get(entry.holder.0)
                .unwrap_or_else(|| panic!("entry {i} has no holder"));
            assert!(holder.open, "entry {i} held by a closed connection");
            assert_eq!(
                holder.held.get(entry.holder_pos as usize),
                Some(&e),
                "entry {i} holder_pos wrong"
            );
            // Walk the waiter queue forwards, checking back links.
            let mut prev = NIL;
            let mut w = entry.head;
            let mut n = 0;
            while w != NIL {
                let c = &self.conns[w as usize];
                assert!(c.open, "closed connection {w} waits on entry {i}");
                assert_eq!(c.waiting, Some(e), "connection {w} in wrong queue");
                assert_eq!(c.prev, prev, "broken back link at {w}");
                assert_ne!(ConnId(w as usize), entry.holder, "holder waits on own key");
                prev = w;
                w = c.next;
                n += 1;
                assert!(n <= self.conns.len(), "cycle in waiter queue of entry {i}");
            }
            assert_eq!(entry.tail, prev, "entry {i} tail wrong");
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
        let mut waiting = 0;
        for (ci, c) in self.conns.iter().enumerate() {
            if !c.open {
                assert!(
                    c.held.is_empty() && c.waiting.is_none(),
                    "closed {ci} keeps state"
                );
                continue;
            }
            for &e in &c.held {
                assert_eq!(
                    self.entries[e as usize].holder,
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
    use std::collections::{BTreeMap, VecDeque};

    fn table(n: usize) -> LockTable {
        let mut t = LockTable::new();
        for i in 0..n {
            t.open(ConnId(i));
        }
        t
    }

    #[test]
    fn grant_queue_release_fifo() {
        let mut t = table(12);
        assert_eq!(t.lock(ConnId(0), b"k"), LockOutcome::Granted);
        assert_eq!(t.lock(ConnId(0), b"k"), LockOutcome::AlreadyHeld);
        for i in 1..12 {
            assert_eq!(t.lock(ConnId(i), b"k"), LockOutcome::Queued);
        }
        t.check_invariants();
        for i in 0..11 {
            assert_eq!(
                t.unlock(ConnId(i), b"k"),
                UnlockOutcome::Unlocked {
                    granted: Some(ConnId(i + 1))
                }
            );
            t.check_invariants();
        }
        assert_eq!(
            t.unlock(ConnId(11), b"k"),
            UnlockOutcome::Unlocked { granted: None }
        );
        assert_eq!(t.keys_held(), 0);
        assert_eq!(t.unlock(ConnId(11), b"k"), UnlockOutcome::NotLocked);
        t.check_invariants();
    }

    #[test]
    fn not_owner_and_case_sensitive_keys() {
        let mut t = table(2);
        assert_eq!(t.lock(ConnId(0), b"Key"), LockOutcome::Granted);
        assert_eq!(t.unlock(ConnId(1), b"Key"), UnlockOutcome::NotOwner);
        assert_eq!(t.unlock(ConnId(1), b"key"), UnlockOutcome::NotLocked);
        assert_eq!(t.lock(ConnId(1), b"key"), LockOutcome::Granted);
        assert_eq!(t.holder(b"Key"), Some(ConnId(0)));
        t.check_invariants();
    }

    #[test]
    fn limits_refuse_without_changing_state() {
        let mut t = table(3);
        t.set_limits(Limits {
            max_held_per_conn: 2,
            max_key_bytes: 3 * (KEY_OVERHEAD_BYTES + 1),
        });
        assert_eq!(t.lock(ConnId(0), b"a"), LockOutcome::Granted);
        assert_eq!(t.lock(ConnId(0), b"b"), LockOutcome::Granted);
        assert_eq!(t.lock(ConnId(0), b"c"), LockOutcome::TooManyLocks);
        assert_eq!(t.lock(ConnId(1), b"c"), LockOutcome::Granted);
        // Waiting for a held key counts too: it would be a third lock.
        assert_eq!(t.lock(ConnId(0), b"c"), LockOutcome::TooManyLocks);
        assert!(!t.is_waiting(ConnId(0)));
        // The table holds 3 one-byte keys: a fourth key does not fit.
        assert_eq!(t.lock(ConnId(2), b"d"), LockOutcome::TableFull);
        assert_eq!(t.holder(b"d"), None);
        // Queueing on a held key costs nothing.
        assert_eq!(t.lock(ConnId(2), b"a"), LockOutcome::Queued);
        t.check_invariants();
        assert_eq!(
            t.unlock(ConnId(0), b"b"),
            UnlockOutcome::Unlocked { granted: None }
        );
        assert_eq!(t.key_bytes(), 2 * (KEY_OVERHEAD_BYTES + 1));
        assert_eq!(t.lock(ConnId(1), b"d"), LockOutcome::Granted);
        t.check_invariants();
    }

    #[test]
    fn withdraw_from_middle_keeps_order() {
        let mut t = table(5);
        t.lock(ConnId(0), b"k");
        for i in 1..5 {
            t.lock(ConnId(i), b"k");
        }
        assert!(t.withdraw(ConnId(2)));
        assert!(!t.withdraw(ConnId(2)));
        t.check_invariants();
        let mut order = vec![];
        let mut cur = ConnId(0);
        while let UnlockOutcome::Unlocked { granted: Some(g) } = t.unlock(cur, b"k") {
            order.push(g.0);
            cur = g;
        }
        assert_eq!(order, vec![1, 3, 4]);
        t.check_invariants();
    }

    #[test]
    fn close_releases_everything_and_grants() {
        let mut t = table(4);
        t.lock(ConnId(0), b"a");
        t.lock(ConnId(0), b"b");
        t.lock(ConnId(0), b"c");
        t.lock(ConnId(1), b"b");
        t.lock(ConnId(2), b"c");
        t.lock(ConnId(3), b"x");
        let mut granted = vec![];
        t.close(ConnId(0), &mut granted);
        granted.sort();
        assert_eq!(granted, vec![ConnId(1), ConnId(2)]);
        assert_eq!(t.holder(b"a"), None);
        assert_eq!(t.holder(b"b"), Some(ConnId(1)));
        assert_eq!(t.holder(b"c"), Some(ConnId(2)));
        t.check_invariants();
        // A waiter that closes is withdrawn without granting anything.
        t.open(ConnId(0));
        t.lock(ConnId(0), b"b");
        let mut granted = vec![];
        t.close(ConnId(0), &mut granted);
        assert!(granted.is_empty());
        assert_eq!(t.waiters(), 0);
        t.check_invariants();
    }

    /// The table against a tiny reference model, driven by a seeded PRNG.
    #[test]
    fn model() {
        let seed: u64 = std::env::var("LOCK_TABLE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed);
        let mut rng = seed;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        const N: usize = 16;
        let mut t = table(N);
        let mut model: BTreeMap<u8, VecDeque<usize>> = BTreeMap::new();
        let mut waiting = [false; N];
        for step in 0..200_000 {
            let c = (next() % N as u64) as usize;
            let k = (next() % 6) as u8;
            let key = [b'a' + k];
            let ctx = format!("seed {seed} step {step}");
            match next() % 10 {
                0..=4 if !waiting[c] => {
                    let q = model.entry(k).or_default();
                    let want = if q.is_empty() {
                        q.push_back(c);
                        LockOutcome::Granted
                    } else if q[0] == c {
                        LockOutcome::AlreadyHeld
                    } else {
                        q.push_back(c);
                        waiting[c] = true;
                        LockOutcome::Queued
                    };
                    assert_eq!(t.lock(ConnId(c), &key), want, "{ctx}");
                }
                5..=7 if !waiting[c] => {
                    let want = match model.get_mut(&k) {
                        None => UnlockOutcome::NotLocked,
                        Some(q) if q[0] != c => UnlockOutcome::NotOwner,
                        Some(q) => {
                            q.pop_front();
                            let g = q.front().copied();
                            if let Some(g) = g {
                                waiting[g] = false;
                            } else {
                                model.remove(&k);
                            }
                            UnlockOutcome::Unlocked {
                                granted: g.map(ConnId),
                            }
                        }
                    };
                    assert_eq!(t.unlock(ConnId(c), &key), want, "{ctx}");
                }
                8 => {
                    let was = waiting[c];
                    if was {
                        for q in model.values_mut() {
                            // Only a waiter is withdrawn; the head is the holder.
                            if let Some(pos) = q.iter().skip(1).position(|&x| x == c) {
                                q.remove(pos + 1);
                            }
                        }
                        waiting[c] = false;
                    }
                    assert_eq!(t.withdraw(ConnId(c)), was, "{ctx}");
                }
                _ => {
                    let mut want = vec![];
                    for q in model.values_mut() {
                        if q[0] == c {
                            q.pop_front();
                            if let Some(&g) = q.front() {
                                waiting[g] = false;
                                want.push(ConnId(g));
                            }
                        } else {
                            q.retain(|&x| x != c);
                        }
                    }
                    model.retain(|_, q| !q.is_empty());
                    waiting[c] = false;
                    let mut got = vec![];
                    t.close(ConnId(c), &mut got);
                    t.open(ConnId(c));
                    got.sort();
                    want.sort();
                    assert_eq!(got, want, "{ctx}");
                }
            }
            if step % 64 == 0 {
                t.check_invariants();
            }
            assert_eq!(t.keys_held(), model.len(), "{ctx}");
        }
        t.check_invariants();
    }
}
