//! Fuzz target `readiness`: see `cuebe_fuzz_targets::readiness` for the input and the properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cuebe_fuzz_targets::readiness::run(data));
