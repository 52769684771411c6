//! Fuzz target `ws_frames`: the property check `fuzzing::ws_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::ws_frames(data));
