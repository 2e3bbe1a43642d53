//! Hierarchical timer wheel: the daemon's lock timeouts, to the
//! microsecond.
//!
//! Every waiting `lock` with a finite timeout owns one timer. Most timers
//! never fire: they are cancelled when the lock is granted or the client
//! goes away. So `insert` and `cancel` are O(1), `poll` is O(1) when nothing
//! is due, and a jump over a long idle gap costs O(levels), never a loop per
//! tick, with 100,000+ timers pending.
//!
//! # Algorithm
//!
//! Time is a `u64` count of *ticks* on the caller's monotonic clock; the
//! daemon's core uses microseconds, so a deadline is kept and fired to the
//! microsecond (a burst of timeouts leaves one by one as each falls due,
//! not in clusters of a coarser tick). The wheel keeps its own time,
//! `elapsed`: the largest `now` it was given, except while `poll` is working
//! through a backlog (then it is the start of the last slot emptied). It has
//! 8 levels of 64 slots; a slot of level `L` covers `64^L` ticks, so a whole
//! level covers `64^(L+1)` ticks (times for 1 µs ticks):
//!
//! ```text
//! level  slots  one slot covers          the whole level covers
//!   0     64    1 tick    (1 µs)         64 ticks          (64 µs)
//!   1     64    64        (64 µs)        4,096             (~4.1 ms)
//!   2     64    4,096     (~4.1 ms)      262,144           (~262 ms)
//!   3     64    262,144   (~262 ms)      16,777,216        (~16.8 s)
//!   4     64    2^24      (~16.8 s)      2^30              (~17.9 min)
//!   5     64    2^30      (~17.9 min)    2^36              (~19.1 h)
//!   6     64    2^36      (~19.1 h)      2^42              (~50.9 days)
//!   7     64    2^42      (~50.9 days)   2^48              (~8.9 years)
//! ```
//!
//! Read a time as base-64 digits: digit `L` is bits `6L..6L+6`. A timer with
//! deadline `d > elapsed` sits at the level of the highest digit in which `d`
//! and `elapsed` differ (capped at 7; `level_for`, as in tokio's time driver),
//! in the slot named by that digit of `d`: `slot = (d >> 6L) & 63`. So a
//! level-`L` timer is due inside the current level-`L+1` slot but after the
//! current level-`L` slot; level-0 timers are exact, one deadline per slot.
//! Level 7 is a ring: a deadline up to `64^8 - 1` ticks ahead may lie in the
//! next round of level 7, in a slot at or behind the current one.
//!
//! * **Insert**: compute level and slot, append to that slot's list. Entries
//!   live in a [`Slab`] and each slot is an intrusive doubly linked list
//!   through them (prev/next keys), so insert and cancel are O(1). A deadline
//!   `<= elapsed` goes straight to the *ready* list, handed out by the next
//!   `poll`.
//! * **Next expiration**: each level keeps a `u64` bitmap of its non-empty
//!   slots. The next slot to visit on a level is the first set bit after the
//!   current slot, going round: one `rotate_right` and one `trailing_zeros`.
//!   The current slot of levels 0-6 is always empty, and on level 7 it holds
//!   only next-round timers, so searching from the slot after it gives the
//!   slots in time order. The lowest non-empty level holds the earliest slot
//!   (a level-`L` slot lies inside the current level-`L+1` slot), so the wheel
//!   looks at one bitmap in the common case and at most 8.
//! * **Poll**: while that earliest slot starts at or before `now`, move
//!   `elapsed` to the slot's start and empty it: a level-0 slot's timers are
//!   due (they go to the ready list); a higher slot's timers *cascade*, each
//!   re-filed relative to the new `elapsed`, at a lower level (or onto the
//!   ready list if due exactly at the slot's start). Each timer cascades at
//!   most 7 times (a 250 ms timeout 2 or 3 times). When the earliest slot
//!   starts after `now`, `elapsed` jumps to `now` in O(1): every timer is
//!   still filed correctly, because no occupied slot was passed.
//!
//! # Guarantees
//!
//! * Never early: a timer fires only from a `poll(now)` with `now >=` its
//!   deadline (and the wheel's clock never goes backwards).
//! * Never late: once `poll(now)` returns `None`, no pending timer has a
//!   deadline `<= now`.
//! * Order: timers fire in deadline order, and timers with equal deadlines in
//!   insertion order (FIFO), except that a timer inserted with a deadline
//!   already passed (`<= elapsed`) counts as due at `elapsed` (it joins the
//!   tail of the ready list). In short: by `(max(deadline, elapsed at
//!   insert), insertion order)`.
//! * [`TimerWheel::next_wake_tick`] is a lower bound on the earliest
//!   deadline: exact for timers on level 0, the start of the slot for higher
//!   levels. After `poll(now)` returned `None` it is `> now`, so a reactor
//!   that sleeps until it never spins.
//!
//! # Range
//!
//! The wheel holds deadlines up to `64^8 - 1` ticks (~8.9 years of µs) past
//! its own time. [`MAX_DELAY`] is one level-7 slot (~50.9 days) less than
//! that, which leaves room for a caller whose `now` ran ahead of the wheel's
//! last `poll`.

use std::fmt;
use std::mem;

use slab::Slab;

/// Bits of a time that select the slot within one level.
const SLOT_BITS: u32 = 6;
/// Slots per level (64): one bit each in a `u64` occupancy bitmap.
const SLOTS: usize = 1 << SLOT_BITS;
const SLOT_MASK: u64 = SLOTS as u64 - 1;
/// Levels: 8 × 6 bits = 48 bits of range (~8.9 years of µs).
const LEVELS: usize = 8;
/// The farthest a deadline may lie past the wheel's time: `64^8 - 1` ticks,
/// ~8.9 years of µs. Level 7 holds at most one full round of 64 slots, so a
/// deadline farther out would share a slot with one a round earlier.
const HORIZON: u64 = (1 << (SLOT_BITS as usize * LEVELS)) - 1;
/// One slot of the top level: `64^7` ticks, ~50.9 days of µs.
const TOP_SLOT: u64 = 1 << (SLOT_BITS as usize * (LEVELS - 1));

/// The largest delay, in ticks from the caller's `now`, that the wheel
/// takes: `63 × 64^7 - 1` = 277,076,930,199,551 ticks, ~8.8 years of µs.
/// The daemon's longest finite lock timeout
/// ([`INFINITE_TIMEOUT_MS`](crate::wire::INFINITE_TIMEOUT_MS) - 1 ms, ~2.1
/// years) is well inside it.
///
/// Why not the wheel's full reach of `64^8 - 1` ticks past its own time: the
/// caller computes `now + delay` with its own `now`, which may be newer than
/// the last `poll(now)` that moved the wheel. The gap of one top-level slot
/// (~50.9 days of µs) is slack for that: `now + delay` stays within reach as
/// long as `now` is less than that ahead of the last poll. Beyond the full
/// reach, `insert` asserts (debug builds) and clamps.
pub const MAX_DELAY: u64 = HORIZON - TOP_SLOT;

/// Sentinel for "no entry" in the intrusive lists (slab keys never reach it:
/// the slab would need `usize::MAX` entries first).
const NIL: usize = usize::MAX;
/// Index in `lists` of the ready list: timers already due, handed out by
/// `poll` in this order. Slot lists are `level * SLOTS + slot`, before it.
const READY: usize = LEVELS * SLOTS;
/// Number of lists: every slot of every level, then the ready list.
const LISTS: usize = READY + 1;

/// Handle of a pending timer: its key in the wheel's slab.
///
/// Only valid until the timer fires or is cancelled; after that the slab may
/// give the same key to a new timer (see [`TimerWheel::cancel`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerId(usize);

struct Entry<T> {
    /// Absolute deadline (clamped at insert to the wheel's reach).
    deadline_tick: u64,
    /// Neighbours in the list the entry is on; `NIL` at the ends.
    prev: usize,
    next: usize,
    /// INVARIANT: the list the entry is linked in: `READY` iff
    /// `deadline_tick <= elapsed_tick`, else `level * SLOTS + slot` with
    /// `level == level_for(elapsed_tick, deadline_tick)` and
    /// `slot == slot_for(level, deadline_tick)`.
    list: u16,
    value: T,
}

/// Head and tail of one intrusive list (`NIL` when empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct List {
    head: usize,
    tail: usize,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
    };
}

/// A hierarchical timer wheel holding values of type `T` (see the module
/// docs for the algorithm and its range).
pub struct TimerWheel<T> {
    /// The wheel's time. INVARIANT: never decreases; every entry in a slot
    /// list has `elapsed_tick < deadline_tick <= elapsed_tick + HORIZON`, and
    /// every entry on the ready list has `deadline_tick <= elapsed_tick`.
    elapsed_tick: u64,
    /// All pending timers; the slab key is the `TimerId`.
    entries: Slab<Entry<T>>,
    /// `LISTS` lists: 64 slots per level, then the ready list. Boxed to keep
    /// the wheel itself small to move.
    lists: Box<[List; LISTS]>,
    /// INVARIANT: bit `s` of `occupied[l]` is set iff slot `s` of level `l`
    /// is non-empty.
    occupied: [u64; LEVELS],
    /// INVARIANT: `<=` every deadline on the ready list (a lower bound: a
    /// cancel does not raise it). `u64::MAX` when the list is empty.
    ready_min_tick: u64,
}

/// The level for a deadline `> elapsed`: the highest base-64 digit in which
/// the two differ, capped at the top level (deadlines in the next round of
/// level 7 differ above it). The `| SLOT_MASK` makes the answer 0, not a
/// bit-scan of zero, when they differ only in digit 0.
fn level_for(elapsed_tick: u64, deadline_tick: u64) -> usize {
    let masked = (elapsed_tick ^ deadline_tick) | SLOT_MASK;
    let significant = (u64::BITS - 1 - masked.leading_zeros()) / SLOT_BITS;
    (significant as usize).min(LEVELS - 1)
}

/// The slot of `deadline_tick` on `level`: its base-64 digit number `level`.
fn slot_for(level: usize, deadline_tick: u64) -> usize {
    ((deadline_tick >> (level as u32 * SLOT_BITS)) & SLOT_MASK) as usize
}

impl<T> TimerWheel<T> {
    /// An empty wheel whose time starts at `now_tick` (ticks on the caller's
    /// monotonic clock).
    pub fn new(now_tick: u64) -> Self {
        TimerWheel {
            elapsed_tick: now_tick,
            entries: Slab::new(),
            lists: Box::new([List::EMPTY; LISTS]),
            occupied: [0; LEVELS],
            ready_min_tick: u64::MAX,
        }
    }

    /// Schedules `value` to fire at `deadline_tick` (absolute ticks), O(1).
    ///
    /// A deadline at or before the wheel's time fires at the next `poll`. A
    /// deadline more than `64^8 - 1` ticks past the wheel's time (beyond
    /// [`MAX_DELAY`] plus its slack) is a caller bug: debug builds
    /// panic, release builds clamp it to the farthest deadline the wheel
    /// holds (and `poll` reports the clamped deadline).
    pub fn insert(&mut self, deadline_tick: u64, value: T) -> TimerId {
        let latest_tick = self.elapsed_tick.saturating_add(HORIZON);
        debug_assert!(
            deadline_tick <= latest_tick,
            "timer deadline {deadline_tick} is beyond the wheel's reach \
             (wheel time {} + {HORIZON}); delays above \
             MAX_DELAY must not be inserted",
            self.elapsed_tick,
        );
        let key = self.entries.insert(Entry {
            deadline_tick: deadline_tick.min(latest_tick),
            prev: NIL,
            next: NIL,
            list: READY as u16,
            value,
        });
        self.file(key);
        TimerId(key)
    }

    /// Removes a pending timer, O(1), and returns its value; `None` if it
    /// already fired or was cancelled.
    ///
    /// Only cancel ids you know are live. Once a timer fired or was
    /// cancelled, its id may be handed to a newer timer by a later `insert`,
    /// and cancelling the stale id would then remove that newer timer. The
    /// wheel cannot tell the two apart.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        if !self.entries.contains(id.0) {
            return None;
        }
        self.unlink(id.0);
        Some(self.entries.remove(id.0).value)
    }

    /// The earliest time at which `poll` could fire something, `None` if the
    /// wheel is empty. Never later than the earliest pending deadline: exact
    /// for timers due within the current 64 ticks (level 0), otherwise the start
    /// of the earliest occupied slot. The reactor sleeps until then. O(1).
    ///
    /// After `poll(now)` returned `None`, this is `> now`.
    pub fn next_wake_tick(&self) -> Option<u64> {
        if self.lists[READY].head != NIL {
            Some(self.ready_min_tick)
        } else {
            self.next_expiration().map(|(_, start_tick)| start_tick)
        }
    }

    /// Advances the wheel to `now_tick` and pops one due timer (deadline
    /// `<= now_tick`) as `(deadline_tick, value)`; call it again until `None`.
    ///
    /// A `now_tick` below the wheel's time counts as no advance (so timers that
    /// were already due may still be returned). O(1) when nothing is due; a
    /// call that is due work costs O(levels) per slot visited, and each timer
    /// is re-filed at most 7 times before it fires.
    pub fn poll(&mut self, now_tick: u64) -> Option<(u64, T)> {
        loop {
            let head = self.lists[READY].head;
            if head != NIL {
                self.unlink(head);
                let entry = self.entries.remove(head);
                return Some((entry.deadline_tick, entry.value));
            }
            match self.next_expiration() {
                Some((level, start_tick)) if start_tick <= now_tick => {
                    self.expire_slot(level, start_tick);
                }
                _ => {
                    // Nothing in the wheel starts at or before `now_tick`, so
                    // jumping there passes no occupied slot: every entry stays
                    // filed correctly.
                    self.elapsed_tick = self.elapsed_tick.max(now_tick);
                    return None;
                }
            }
        }
    }

    /// Number of pending timers (including due ones not yet polled).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Heap bytes held, for memory accounting: the slab's capacity times its
    /// slot size, plus the fixed slot lists (~6 KiB).
    pub fn heap_bytes(&self) -> usize {
        // The slab stores `enum { Vacant(usize), Occupied(Entry<T>) }`, which
        // has the shape (and so the size) of this `Result`.
        self.entries.capacity() * mem::size_of::<Result<Entry<T>, usize>>()
            + mem::size_of::<[List; LISTS]>()
    }

    /// Checks every invariant, panicking with a message on the first
    /// violation: each entry is linked, once, in the list its deadline and
    /// the wheel's time imply; links are consistent both ways; bitmaps match
    /// the non-empty slots; the count matches `len`; `next_wake_tick` is a
    /// lower bound on every deadline and, with nothing ready, in the future.
    /// O(len).
    #[cfg(any(test, debug_assertions))]
    pub fn check_invariants(&self) {
        let elapsed = self.elapsed_tick;
        let mut linked = 0usize;
        for (list, ends) in self.lists.iter().enumerate() {
            let mut prev = NIL;
            let mut key = ends.head;
            let mut count = 0usize;
            while key != NIL {
                let Some(entry) = self.entries.get(key) else {
                    panic!("list {list}: links to vacant key {key}");
                };
                assert_eq!(entry.list as usize, list, "key {key}: wrong list tag");
                assert_eq!(entry.prev, prev, "key {key} in list {list}: bad prev");
                let deadline = entry.deadline_tick;
                if list == READY {
                    assert!(
                        deadline <= elapsed,
                        "key {key}: ready but due at {deadline} > wheel time {elapsed}"
                    );
                    assert!(
                        self.ready_min_tick <= deadline,
                        "ready_min_tick {} above ready deadline {deadline}",
                        self.ready_min_tick
                    );
                } else {
                    let (level, slot) = (list / SLOTS, list % SLOTS);
                    assert!(
                        deadline > elapsed && deadline - elapsed <= HORIZON,
                        "key {key}: deadline {deadline} out of the wheel at time {elapsed}"
                    );
                    assert_eq!(
                        (level_for(elapsed, deadline), slot_for(level, deadline)),
                        (level, slot),
                        "key {key}: deadline {deadline} misfiled at wheel time {elapsed}"
                    );
                }
                count += 1;
                linked += 1;
                assert!(linked <= self.entries.len(), "list {list}: cycle");
                prev = key;
                key = entry.next;
            }
            assert_eq!(ends.tail, prev, "list {list}: bad tail");
            if list == READY {
                assert!(
                    count > 0 || self.ready_min_tick == u64::MAX,
                    "ready list empty but ready_min_tick is {}",
                    self.ready_min_tick
                );
            } else {
                let bit = self.occupied[list / SLOTS] >> (list % SLOTS) & 1;
                assert_eq!(bit == 1, count > 0, "list {list}: bitmap says {bit}");
            }
        }
        assert_eq!(linked, self.entries.len(), "entries not linked in any list");
        match self.next_wake_tick() {
            None => assert!(self.is_empty(), "next_wake_tick is None but not empty"),
            Some(wake) => {
                for (key, entry) in &self.entries {
                    assert!(
                        wake <= entry.deadline_tick,
                        "next_wake_tick {wake} after key {key}'s deadline {}",
                        entry.deadline_tick
                    );
                }
                if self.lists[READY].head == NIL {
                    assert!(wake > elapsed, "next_wake_tick {wake} not after {elapsed}");
                }
            }
        }
    }

    /// Links entry `key` (deadline set, not linked anywhere) at the tail of
    /// the list its deadline implies at the wheel's current time.
    fn file(&mut self, key: usize) {
        let deadline = self.entries[key].deadline_tick;
        let list = if deadline <= self.elapsed_tick {
            self.ready_min_tick = self.ready_min_tick.min(deadline);
            READY
        } else {
            let level = level_for(self.elapsed_tick, deadline);
            let slot = slot_for(level, deadline);
            self.occupied[level] |= 1 << slot;
            level * SLOTS + slot
        };
        let tail = self.lists[list].tail;
        let entry = &mut self.entries[key];
        entry.prev = tail;
        entry.next = NIL;
        entry.list = list as u16;
        match tail {
            NIL => self.lists[list].head = key,
            _ => self.entries[tail].next = key,
        }
        self.lists[list].tail = key;
    }

    /// Unlinks entry `key` from its list, keeping bitmaps and the ready
    /// bound in step. The entry stays in the slab.
    fn unlink(&mut self, key: usize) {
        let Entry {
            prev, next, list, ..
        } = self.entries[key];
        let list = list as usize;
        match prev {
            NIL => self.lists[list].head = next,
            _ => self.entries[prev].next = next,
        }
        match next {
            NIL => self.lists[list].tail = prev,
            _ => self.entries[next].prev = prev,
        }
        if self.lists[list].head == NIL {
            if list == READY {
                self.ready_min_tick = u64::MAX;
            } else {
                self.occupied[list / SLOTS] &= !(1 << (list % SLOTS));
            }
        }
    }

    /// The earliest occupied slot as `(level, start_tick)`, `None` when all
    /// slots are empty. O(levels) at worst, O(1) when level 0 has timers.
    fn next_expiration(&self) -> Option<(usize, u64)> {
        // The lowest non-empty level holds the earliest slot: all its timers
        // are due inside the current slot of the level above.
        let level = self.occupied.iter().position(|&bits| bits != 0)?;
        let shift = level as u32 * SLOT_BITS;
        // Absolute number of the current slot on this level.
        let current = self.elapsed_tick >> shift;
        // Search from the slot after the current one, going round: the
        // current slot is empty, or (level 7) holds next-round timers only,
        // so the distance 1..=64 gives the time order.
        let from = (current.wrapping_add(1) & SLOT_MASK) as u32;
        let distance = u64::from(self.occupied[level].rotate_right(from).trailing_zeros()) + 1;
        // Cannot wrap: the slot start is <= a deadline, which is a u64.
        let start_tick = current.wrapping_add(distance) << shift;
        Some((level, start_tick))
    }

    /// Moves the wheel's time to `start_tick`, the start of the earliest
    /// occupied slot (`slot_for(level, start_tick)` on `level`), and re-files
    /// its timers from there: due ones join the ready list, the others
    /// cascade to lower levels, in list order (which keeps FIFO order).
    fn expire_slot(&mut self, level: usize, start_tick: u64) {
        debug_assert!(start_tick > self.elapsed_tick, "the wheel's time went back");
        self.elapsed_tick = start_tick;
        let slot = slot_for(level, start_tick);
        let list = level * SLOTS + slot;
        let mut key = self.lists[list].head;
        self.lists[list] = List::EMPTY;
        self.occupied[level] &= !(1 << slot);
        while key != NIL {
            let next = self.entries[key].next;
            self.file(key);
            debug_assert!(
                (self.entries[key].list as usize) < level * SLOTS
                    || self.entries[key].list as usize == READY,
                "a cascading timer did not move down"
            );
            key = next;
        }
    }
}

impl<T> fmt::Debug for TimerWheel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerWheel")
            .field("elapsed_tick", &self.elapsed_tick)
            .field("len", &self.len())
            .field("next_wake_tick", &self.next_wake_tick())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::*;

    const DAY_MS: u64 = 24 * 3600 * 1000;

    use crate::model::Rng;

    fn drain<T>(wheel: &mut TimerWheel<T>, now: u64) -> Vec<(u64, T)> {
        std::iter::from_fn(|| wheel.poll(now)).collect()
    }

    #[test]
    fn constants() {
        assert_eq!(HORIZON, 64u64.pow(8) - 1);
        assert_eq!(MAX_DELAY, 63 * 64u64.pow(7) - 1);
        assert_eq!(MAX_DELAY, 277_076_930_199_551);
        assert_eq!(LISTS, 513);
        // The longest finite lock timeout, in µs, with a top slot to spare.
        const { assert!((crate::wire::INFINITE_TIMEOUT_MS - 1) * 1000 + TOP_SLOT <= MAX_DELAY) };
    }

    #[test]
    fn level_and_slot() {
        assert_eq!(level_for(0, 1), 0);
        assert_eq!(level_for(0, 63), 0);
        assert_eq!(level_for(0, 64), 1);
        assert_eq!(level_for(63, 64), 1);
        assert_eq!(level_for(64, 127), 0);
        assert_eq!(level_for(0, 4095), 1);
        assert_eq!(level_for(0, 4096), 2);
        assert_eq!(level_for(0, 1 << 36), 6);
        assert_eq!(level_for(0, HORIZON), 7);
        // The next round of level 7 is still level 7.
        assert_eq!(level_for(HORIZON, HORIZON + 5), 7);
        assert_eq!(level_for(u64::MAX - 1, u64::MAX), 0);
        assert_eq!(slot_for(0, 65), 1);
        assert_eq!(slot_for(1, 65), 1);
        assert_eq!(slot_for(7, HORIZON + 1), 0);
    }

    #[test]
    fn fires_exactly_at_deadline_not_before() {
        let delays = [
            0,
            1,
            2,
            63,
            64,
            65,
            127,
            128,
            4095,
            4096,
            4097,
            262_143,
            262_144,
            262_145,
            1_000_000,
            TOP_SLOT - 1,
            TOP_SLOT,
            1_000_000_000,
            3 * DAY_MS + 17,
            MAX_DELAY,
            HORIZON,
        ];
        let starts = [
            0,
            1,
            63,
            64,
            4095,
            12_345,
            1_000_003,
            HORIZON - 2,
            HORIZON + 1,
            (1 << 40) - 7,
            987_654_321_987,
            u64::MAX - HORIZON,
        ];
        for &start in &starts {
            for &delay in &delays {
                let deadline = start + delay;
                let ctx = format!("start {start}, delay {delay}");

                // One jump to just before, then to the deadline.
                let mut wheel = TimerWheel::new(start);
                let id = wheel.insert(deadline, 7u8);
                wheel.check_invariants();
                let wake = wheel.next_wake_tick().unwrap();
                assert!(wake <= deadline, "{ctx}: wake {wake}");
                if delay > 0 {
                    assert_eq!(wheel.poll(deadline - 1), None, "{ctx}: early");
                    wheel.check_invariants();
                    assert!(wheel.next_wake_tick().unwrap() <= deadline, "{ctx}");
                }
                assert_eq!(wheel.poll(deadline), Some((deadline, 7)), "{ctx}");
                assert_eq!(wheel.poll(deadline), None, "{ctx}");
                assert_eq!(wheel.cancel(id), None, "{ctx}");
                assert!(wheel.is_empty(), "{ctx}");
                wheel.check_invariants();

                // A reactor that sleeps until next_wake_tick: never early, and
                // a handful of wake-ups (one per level at most), not a loop.
                let mut wheel = TimerWheel::new(start);
                wheel.insert(deadline, 7u8);
                let mut wakes = 0;
                loop {
                    let wake = wheel.next_wake_tick().unwrap();
                    assert!(wake <= deadline, "{ctx}: wake {wake}");
                    wakes += 1;
                    assert!(wakes <= LEVELS + 1, "{ctx}: too many wake-ups");
                    match wheel.poll(wake) {
                        Some(fired) => {
                            assert_eq!(fired, (deadline, 7), "{ctx}");
                            assert!(wake >= deadline, "{ctx}: fired early at {wake}");
                            break;
                        }
                        None => assert!(wheel.next_wake_tick().unwrap() > wake, "{ctx}"),
                    }
                    wheel.check_invariants();
                }
                assert!(wheel.is_empty(), "{ctx}");

                // Creeping up on it one ms at a time for the last stretch.
                let mut wheel = TimerWheel::new(start);
                wheel.insert(deadline, 7u8);
                for now in deadline.saturating_sub(130).max(start)..deadline {
                    assert_eq!(wheel.poll(now), None, "{ctx}: early at {now}");
                }
                wheel.check_invariants();
                assert_eq!(wheel.poll(deadline), Some((deadline, 7)), "{ctx}");
            }
        }
    }

    #[test]
    fn cancel_before_fire_never_fires() {
        let mut wheel = TimerWheel::new(12_345);
        let a = wheel.insert(12_345 + 10, 'a');
        let b = wheel.insert(12_345 + 5000, 'b');
        let c = wheel.insert(12_345 + 10, 'c');
        let past = wheel.insert(0, 'p');
        assert_eq!(wheel.len(), 4);
        assert_eq!(wheel.cancel(a), Some('a'));
        assert_eq!(wheel.cancel(past), Some('p'));
        wheel.check_invariants();
        assert_eq!(wheel.cancel(b), Some('b'));
        wheel.check_invariants();
        assert_eq!(wheel.len(), 1);
        assert_eq!(drain(&mut wheel, u64::MAX), vec![(12_355, 'c')]);
        assert_eq!(wheel.cancel(c), None);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_wake_tick(), None);
        wheel.check_invariants();
    }

    #[test]
    fn cancel_after_fire_returns_none() {
        let mut wheel = TimerWheel::new(0);
        let id = wheel.insert(100, ());
        assert_eq!(wheel.poll(100), Some((100, ())));
        assert_eq!(wheel.cancel(id), None);
        assert_eq!(wheel.cancel(id), None);
        // Cancelling twice is harmless too.
        let id = wheel.insert(200, ());
        assert_eq!(wheel.cancel(id), Some(()));
        assert_eq!(wheel.cancel(id), None);
        wheel.check_invariants();
    }

    #[test]
    fn cancel_in_the_middle_of_a_slot_keeps_the_rest() {
        let mut wheel = TimerWheel::new(0);
        let ids: Vec<TimerId> = (0..5).map(|i| wheel.insert(1000, i)).collect();
        assert_eq!(wheel.cancel(ids[2]), Some(2));
        assert_eq!(wheel.cancel(ids[0]), Some(0));
        assert_eq!(wheel.cancel(ids[4]), Some(4));
        wheel.check_invariants();
        assert_eq!(drain(&mut wheel, 1000), vec![(1000, 1), (1000, 3)]);
    }

    #[test]
    fn past_deadline_fires_on_next_poll() {
        let mut wheel = TimerWheel::new(12_345);
        wheel.insert(12_345, "now");
        wheel.insert(0, "zero");
        wheel.insert(12_344, "just before");
        wheel.check_invariants();
        assert_eq!(wheel.next_wake_tick(), Some(0));
        // Even a poll whose clock looks older: the wheel's time is 12,345.
        assert_eq!(wheel.poll(5), Some((12_345, "now")));
        assert_eq!(wheel.poll(12_345), Some((0, "zero")));
        assert_eq!(wheel.poll(12_345), Some((12_344, "just before")));
        assert_eq!(wheel.poll(12_345), None);
        assert_eq!(wheel.next_wake_tick(), None);
        wheel.check_invariants();
    }

    #[test]
    fn clock_going_back_is_no_advance() {
        let mut wheel = TimerWheel::new(1000);
        wheel.insert(1500, 1);
        assert_eq!(wheel.poll(1400), None);
        assert_eq!(wheel.poll(3), None);
        wheel.check_invariants();
        assert_eq!(wheel.poll(1499), None);
        assert_eq!(wheel.poll(1500), Some((1500, 1)));
        // The wheel's time stays at 1500: a deadline of 1500 is past.
        wheel.insert(1500, 2);
        assert_eq!(wheel.poll(0), Some((1500, 2)));
    }

    #[test]
    fn long_idle_jump_fires_in_deadline_order() {
        let start = 1_700_000_000_123;
        let mut wheel = TimerWheel::new(start);
        wheel.insert(start + 3 * DAY_MS, "3 days");
        wheel.insert(start + 5, "5 ms");
        assert_eq!(wheel.next_wake_tick(), Some(start + 5));
        assert_eq!(wheel.poll(start + 4), None);
        let now = start + 10 * DAY_MS;
        assert_eq!(
            drain(&mut wheel, now),
            vec![(start + 5, "5 ms"), (start + 3 * DAY_MS, "3 days")]
        );
        assert!(wheel.is_empty());
        wheel.check_invariants();
    }

    #[test]
    fn huge_jumps_are_not_a_loop_per_tick() {
        // A loop per ms over 10^12 ms (or 2^63) would never finish.
        let mut wheel = TimerWheel::new(5);
        wheel.insert(5 + MAX_DELAY, 1);
        wheel.insert(5 + 1_000_000_000, 2);
        assert_eq!(wheel.poll(1_000_000_000_000_000), Some((1_000_000_005, 2)));
        assert_eq!(wheel.poll(1_000_000_000_000_000), Some((5 + MAX_DELAY, 1)));
        assert_eq!(wheel.poll(1_000_000_000_000), None);
        // An empty wheel jumps too, and keeps working at its new time.
        assert_eq!(wheel.poll(1 << 63), None);
        wheel.insert((1 << 63) + HORIZON, 3);
        wheel.insert((1 << 63) + 1, 4);
        wheel.check_invariants();
        assert_eq!(wheel.poll(u64::MAX), Some(((1 << 63) + 1, 4)));
        assert_eq!(wheel.poll(u64::MAX), Some(((1 << 63) + HORIZON, 3)));
        assert_eq!(wheel.poll(u64::MAX), None);
        // The end of time: nothing overflows.
        wheel.insert(u64::MAX, 5);
        wheel.insert(0, 6);
        wheel.check_invariants();
        assert_eq!(drain(&mut wheel, u64::MAX), vec![(u64::MAX, 5), (0, 6)]);
        wheel.check_invariants();
    }

    #[test]
    fn next_round_of_the_top_level() {
        // Wheel time in the middle of a top-level slot; one timer a full
        // round ahead (same top-level slot number) and one in the next slot.
        let start = 3 * TOP_SLOT + 12_345;
        let mut wheel = TimerWheel::new(start);
        let far = start + HORIZON;
        let near = 4 * TOP_SLOT + 1;
        wheel.insert(far, "far");
        wheel.insert(near, "near");
        wheel.check_invariants();
        assert_eq!(wheel.next_wake_tick(), Some(4 * TOP_SLOT));
        assert_eq!(wheel.poll(near - 1), None);
        wheel.check_invariants();
        assert_eq!(wheel.poll(near), Some((near, "near")));
        assert!(wheel.next_wake_tick().unwrap() <= far);
        assert_eq!(wheel.poll(far - 1), None);
        assert_eq!(wheel.poll(far), Some((far, "far")));
    }

    #[test]
    fn equal_deadlines_fire_in_insertion_order_across_levels() {
        let mut wheel = TimerWheel::new(0);
        let deadline = 5 * 64u64.pow(3) + 7 * 64 + 3;
        let mut seq = 0;
        let mut now = 0;
        // Insert some at every stage of the cascade.
        while now < deadline {
            for _ in 0..3 {
                wheel.insert(deadline, seq);
                seq += 1;
            }
            now += 1 + now / 2;
            assert_eq!(wheel.poll(now.min(deadline - 1)), None);
            wheel.check_invariants();
        }
        let fired: Vec<u32> = drain(&mut wheel, deadline)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(fired, (0..seq).collect::<Vec<_>>());
    }

    #[test]
    fn insert_while_draining_a_backlog() {
        let mut wheel = TimerWheel::new(0);
        for d in [10, 20, 30] {
            wheel.insert(d, d);
        }
        assert_eq!(wheel.poll(100), Some((10, 10)));
        // The wheel's time is 10 now; 15 is still ahead of it, 5 is past.
        wheel.insert(15, 15);
        wheel.insert(5, 5);
        wheel.insert(200, 200);
        wheel.check_invariants();
        let rest: Vec<u64> = drain(&mut wheel, 100).into_iter().map(|(d, _)| d).collect();
        assert_eq!(rest, vec![5, 15, 20, 30]);
        assert_eq!(wheel.next_wake_tick(), Some(200 - 200 % 64));
    }

    #[test]
    fn next_wake_is_exact_on_level_zero_and_a_bound_above() {
        let mut wheel = TimerWheel::new(100);
        assert_eq!(wheel.next_wake_tick(), None);
        wheel.insert(5000, ());
        assert_eq!(wheel.next_wake_tick(), Some(4096));
        wheel.insert(150, ());
        assert_eq!(wheel.next_wake_tick(), Some(128));
        wheel.insert(110, ());
        assert_eq!(wheel.next_wake_tick(), Some(110));
        assert_eq!(wheel.poll(110), Some((110, ())));
        assert_eq!(wheel.poll(128), None);
        assert_eq!(wheel.next_wake_tick(), Some(150));
    }

    #[test]
    fn len_and_heap_bytes() {
        let mut wheel = TimerWheel::new(0);
        let empty = wheel.heap_bytes();
        assert!(empty >= LISTS * mem::size_of::<List>());
        for i in 0..1000u64 {
            wheel.insert(i * 7919 % 100_000, i);
        }
        assert_eq!(wheel.len(), 1000);
        assert!(wheel.heap_bytes() >= empty + 1000 * mem::size_of::<Entry<u64>>());
        let debug = format!("{wheel:?}");
        assert!(debug.contains("len: 1000"), "{debug}");
    }

    #[test]
    #[cfg_attr(debug_assertions, should_panic(expected = "beyond the wheel's reach"))]
    fn deadline_beyond_reach_asserts_or_clamps() {
        let mut wheel = TimerWheel::new(1000);
        wheel.insert(u64::MAX, ());
        // Release builds: clamped to the farthest deadline.
        assert_eq!(wheel.poll(u64::MAX), Some((1000 + HORIZON, ())));
    }

    #[test]
    fn hundred_thousand_timers_all_fire() {
        let mut rng = Rng::new(0x5eed_0001);
        let start = 12_345;
        let mut wheel = TimerWheel::new(start);
        let n = 100_000u32;
        let mut ids = Vec::new();
        for i in 0..n {
            let delay = rng.skewed(48).min(MAX_DELAY);
            ids.push(wheel.insert(start + delay, i));
        }
        assert_eq!(wheel.len(), n as usize);
        wheel.check_invariants();
        // Some pass half-way, then everything.
        let mut last = 0;
        let mut fired = 0u32;
        let mut seen = vec![false; n as usize];
        for now in [start + 1_000_000, start + MAX_DELAY] {
            while let Some((deadline, value)) = wheel.poll(now) {
                assert!(deadline <= now && deadline >= last, "out of order");
                assert!(!std::mem::replace(&mut seen[value as usize], true));
                last = deadline;
                fired += 1;
            }
            wheel.check_invariants();
        }
        assert_eq!(fired, n);
        assert!(wheel.is_empty());
        assert!(ids.iter().all(|&id| wheel.cancel(id).is_none()));
    }

    /// A pending timer in the model. `due` is when the wheel hands it out:
    /// its deadline, or the wheel's time at insert if that was later.
    struct Live {
        deadline: u64,
        due: u64,
        id: TimerId,
    }

    #[derive(Clone, Copy, Debug)]
    enum Profile {
        /// Delays over the whole range, clock steps small to huge.
        Wide,
        /// Short delays and steps: many equal deadlines, level 0-2 traffic.
        Dense,
        /// Wide, with the clock starting near `u64::MAX` and reaching it.
        EndOfTime,
    }

    struct Model {
        seed: u64,
        op: usize,
        now: u64,
        next_seq: u64,
        live: HashMap<u64, Live>,
        /// `(due, seq)`: the exact order in which the wheel fires.
        by_due: BTreeSet<(u64, u64)>,
        /// `(deadline, seq)`: to check `next_wake_tick` and "nothing late".
        by_deadline: BTreeSet<(u64, u64)>,
        /// Candidates for cancel; may hold seqs that already fired.
        seqs: Vec<u64>,
    }

    impl Model {
        fn ctx(&self) -> String {
            format!(
                "seed {} (replay: TIMER_SEED={}), op {}, now {}",
                self.seed, self.seed, self.op, self.now
            )
        }

        fn remove(&mut self, seq: u64) -> Live {
            let live = self.live.remove(&seq).unwrap();
            assert!(self.by_due.remove(&(live.due, seq)));
            assert!(self.by_deadline.remove(&(live.deadline, seq)));
            live
        }

        /// One `poll(now)`, checked against the model.
        fn poll_once(&mut self, wheel: &mut TimerWheel<u64>, now: u64) -> bool {
            match wheel.poll(now) {
                Some((deadline, seq)) => {
                    let ctx = self.ctx();
                    let expected = self.by_due.first().copied();
                    assert_eq!(
                        expected.map(|(_, s)| s),
                        Some(seq),
                        "{ctx}: wrong timer fired"
                    );
                    let live = self.remove(seq);
                    assert_eq!(live.deadline, deadline, "{ctx}: wrong deadline");
                    assert!(deadline <= self.now, "{ctx}: fired {deadline} early");
                    true
                }
                None => {
                    if let Some(&(deadline, seq)) = self.by_deadline.first() {
                        assert!(
                            deadline > now,
                            "{}: timer {seq} due at {deadline} not fired",
                            self.ctx()
                        );
                    }
                    false
                }
            }
        }

        fn check(&self, wheel: &TimerWheel<u64>) {
            let ctx = self.ctx();
            wheel.check_invariants();
            assert_eq!(wheel.len(), self.live.len(), "{ctx}: len");
            match (wheel.next_wake_tick(), self.by_deadline.first()) {
                (None, None) => {}
                (Some(wake), Some(&(deadline, _))) => {
                    assert!(wake <= deadline, "{ctx}: wake {wake} after {deadline}");
                }
                (wake, first) => panic!("{ctx}: next_wake_tick {wake:?}, earliest {first:?}"),
            }
        }
    }

    /// What a model run exercised (printed; see `--nocapture`).
    #[derive(Debug, Default)]
    struct Stats {
        inserted: u64,
        cancelled: u64,
        max_live: usize,
        /// Sum over ops of the occupied slots per level.
        levels: [u64; LEVELS],
    }

    fn run_model(seed: u64, profile: Profile, ops: usize) {
        println!("timer model: profile {profile:?}, seed {seed} (replay: TIMER_SEED={seed})");
        let mut rng = Rng::new(seed);
        let start = match profile {
            Profile::Wide => rng.below(1 << 40),
            Profile::Dense => rng.below(1 << 20),
            Profile::EndOfTime => u64::MAX - (1 << 40) - rng.below(1 << 20),
        };
        let mut wheel = TimerWheel::new(start);
        let mut stats = Stats::default();
        let mut model = Model {
            seed,
            op: 0,
            now: start,
            next_seq: 0,
            live: HashMap::new(),
            by_due: BTreeSet::new(),
            by_deadline: BTreeSet::new(),
            seqs: Vec::new(),
        };
        for op in 0..ops {
            model.op = op;
            // Alternate calm stretches, where timers pile up, with stormy
            // ones that take huge clock steps.
            let calm = op / 5000 % 2 == 0;
            let roll = rng.below(100);
            match roll {
                // Insert.
                0..=49 => {
                    let delay = match profile {
                        Profile::Dense => rng.below(300),
                        // Up to the wheel's full reach, 2^48 - 1.
                        _ => rng.skewed(48),
                    };
                    let deadline = if rng.below(10) == 0 {
                        model.now.saturating_sub(rng.skewed(12))
                    } else {
                        model.now.saturating_add(delay)
                    };
                    // Contract: within reach of the wheel's time, which lags
                    // the model's clock after a partial drain.
                    let deadline = deadline.min(wheel.elapsed_tick.saturating_add(HORIZON));
                    let seq = model.next_seq;
                    model.next_seq += 1;
                    let due = deadline.max(wheel.elapsed_tick);
                    let id = wheel.insert(deadline, seq);
                    stats.inserted += 1;
                    model.live.insert(seq, Live { deadline, due, id });
                    model.by_due.insert((due, seq));
                    model.by_deadline.insert((deadline, seq));
                    model.seqs.push(seq);
                }
                // Cancel a live timer.
                50..=64 => {
                    while !model.seqs.is_empty() {
                        let i = rng.below(model.seqs.len() as u64) as usize;
                        let seq = model.seqs.swap_remove(i);
                        if model.live.contains_key(&seq) {
                            let live = model.remove(seq);
                            let ctx = model.ctx();
                            assert_eq!(wheel.cancel(live.id), Some(seq), "{ctx}: cancel");
                            stats.cancelled += 1;
                            break;
                        }
                    }
                }
                // Advance the clock (or try to move it back) and drain.
                65..=94 => {
                    let step = match (profile, rng.below(20)) {
                        (Profile::Dense, _) => rng.below(5),
                        (_, 0..=9) => rng.below(70),
                        (_, 10..=16) => rng.below(if calm { 1 << 10 } else { 1 << 16 }),
                        (_, 17) if !calm => rng.skewed(38),
                        _ => 0,
                    };
                    let now = if rng.below(20) == 0 {
                        // A stale clock: no advance.
                        model.now.saturating_sub(step)
                    } else {
                        model.now = model.now.saturating_add(step);
                        model.now
                    };
                    while model.poll_once(&mut wheel, now) {}
                    if let Some(wake) = wheel.next_wake_tick() {
                        let ctx = model.ctx();
                        assert!(wake > now, "{ctx}: wake {wake} would spin");
                    }
                }
                // A partial drain: a few polls, leaving the backlog.
                _ => {
                    model.now = model
                        .now
                        .saturating_add(rng.skewed(if calm { 12 } else { 20 }));
                    let now = model.now;
                    for _ in 0..rng.below(4) {
                        model.poll_once(&mut wheel, now);
                    }
                }
            }
            model.check(&wheel);
            stats.max_live = stats.max_live.max(wheel.len());
            for (level, &bits) in wheel.occupied.iter().enumerate() {
                stats.levels[level] += u64::from(bits.count_ones());
            }
        }
        println!("{stats:?}");
        model.now = u64::MAX;
        while model.poll_once(&mut wheel, u64::MAX) {}
        model.check(&wheel);
        assert!(wheel.is_empty());
    }

    fn model_seed(default: u64) -> u64 {
        match std::env::var("TIMER_SEED") {
            Ok(seed) => seed.parse().expect("TIMER_SEED must be a u64"),
            Err(_) => default,
        }
    }

    #[test]
    fn model_wide() {
        run_model(model_seed(0x0dd5_eed1), Profile::Wide, 100_000);
    }

    #[test]
    fn model_dense() {
        run_model(model_seed(0x0dd5_eed2), Profile::Dense, 100_000);
    }

    #[test]
    fn model_end_of_time() {
        run_model(model_seed(0x0dd5_eed3), Profile::EndOfTime, 30_000);
    }
}
