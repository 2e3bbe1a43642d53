#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dreadlock::reactor_sim::check_reactor(data));
