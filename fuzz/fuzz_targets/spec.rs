//! Fuzz target `spec`: see `cuebe_fuzz_targets::spec` for the input and the properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cuebe_fuzz_targets::spec::run(data));
