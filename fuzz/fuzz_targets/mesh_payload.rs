//! Fuzz target `mesh_payload`: the property check `fuzzing::mesh_payload`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::mesh_payload(data));
