//! Fuzz target `datagram`: the property check `fuzzing::datagram`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::datagram(data));
