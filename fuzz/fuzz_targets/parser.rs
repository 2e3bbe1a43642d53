#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dreadlock::model::check_parser(data));
