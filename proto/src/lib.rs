//! Generated protobuf and gRPC code for every Switchyard wire format.
//!
//! This crate holds only generated code plus tiny conversions; it depends on no other workspace
//! crate (an architecture invariant checked in CI).

/// Server-to-server messaging between cluster nodes (the mesh).
pub mod mesh {
    /// Version 1 of the mesh protocol.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::all)] // generated code
        tonic::include_proto!("switchyard.mesh.v1");
    }
}

/// The encoded `FileDescriptorSet` of every Switchyard proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/switchyard_descriptor.bin"));
