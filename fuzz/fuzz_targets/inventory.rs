//! Fuzz target `inventory`: see `cuebe_fuzz_targets::inventory` for the input and the properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cuebe_fuzz_targets::inventory::run(data));
