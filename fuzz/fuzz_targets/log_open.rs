#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| onceflow_fuzz::log_open::run(data));
