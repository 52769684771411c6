//! Fuzz target `envelope`: the property check `fuzzing::envelope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::envelope(data));
