//! Fuzz target `quorum_message`: the property check `fuzzing::quorum_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::quorum_message(data));
