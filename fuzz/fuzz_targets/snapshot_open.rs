#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| onceflow_fuzz::snapshot_open::run(data));
