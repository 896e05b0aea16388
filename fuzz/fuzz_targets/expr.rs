#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| onceflow_fuzz::expr::run(data));
