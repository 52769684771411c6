//! Fuzz target `gossip_record`: the property check `fuzzing::gossip_record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::gossip_record(data));
