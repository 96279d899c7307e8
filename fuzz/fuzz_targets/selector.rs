#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| harvester_fuzz::selector(data));
