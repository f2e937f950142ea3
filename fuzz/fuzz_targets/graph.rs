//! Fuzz target `graph`: see `cuebe_fuzz_targets::graph` for the input and the properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cuebe_fuzz_targets::graph::run(data));
