//! Timer wheel costs: insert + cancel (the common case: a waiter granted
//! before its timeout) and insert + fire (`cargo bench --bench timer`).

mod common;

use std::hint::black_box;

use dreadlock::timer::TimerWheel;

fn main() {
    const N: u64 = 10_000;
    // Insert + cancel with 100,000 other timers pending.
    let mut wheel = TimerWheel::new(0);
    for i in 0..100_000u64 {
        wheel.insert(1 + i % 60_000, i);
    }
    let mut ids = Vec::with_capacity(N as usize);
    common::bench(
        "timer: insert + cancel, 100k pending (per timer)",
        N,
        None,
        || {
            for i in 0..N {
                ids.push(wheel.insert(black_box(250 + i % 1000), i));
            }
            for id in ids.drain(..) {
                black_box(wheel.cancel(id));
            }
        },
    );

    // Insert + fire: timers 250..1250 ms out, then the clock sweeps past
    // them 1 ms at a time (what the reactor does).
    let mut now = 0u64;
    let mut wheel = TimerWheel::new(0);
    common::bench(
        "timer: insert + fire, 1 ms steps (per timer)",
        N,
        None,
        || {
            for i in 0..N {
                wheel.insert(now + 250 + i % 1000, i);
            }
            let end = now + 1250;
            let mut fired = 0;
            while now < end {
                now += 1;
                while let Some(t) = wheel.poll(now) {
                    black_box(t);
                    fired += 1;
                }
            }
            assert_eq!(fired, N);
        },
    );

    // Insert + fire when the clock jumps straight past every deadline.
    let mut wheel = TimerWheel::new(0);
    let mut now = 0u64;
    common::bench(
        "timer: insert + fire, one jump (per timer)",
        N,
        None,
        || {
            for i in 0..N {
                wheel.insert(now + 250 + i % 1000, i);
            }
            now += 1250;
            let mut fired = 0;
            while let Some(t) = wheel.poll(now) {
                black_box(t);
                fired += 1;
            }
            assert_eq!(fired, N);
        },
    );
}
