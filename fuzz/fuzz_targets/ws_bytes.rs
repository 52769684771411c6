//! Fuzz target `ws_bytes`: the property check `fuzzing::ws_bytes`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::ws_bytes(data));
