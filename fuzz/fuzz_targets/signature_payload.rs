#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| harvester_fuzz::signature_payload(data));
