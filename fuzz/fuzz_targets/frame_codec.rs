//! Fuzz target `frame_codec`: the property check `fuzzing::frame_codec`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::frame_codec(data));
