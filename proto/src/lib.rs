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

/// The client protocol: the envelope every client frame carries.
pub mod client {
    /// Version 1 of the client protocol.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::all)] // generated code
        tonic::include_proto!("switchyard.client.v1");
    }
}

/// Gateway -> logic server: routed client commands and session lifecycle.
pub mod logic {
    /// Version 1 of the logic protocol.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::all)] // generated code
        tonic::include_proto!("switchyard.logic.v1");
    }
}

/// The gateway's service for other services: bind, push, kick, presence.
pub mod gateway {
    /// Version 1 of the gateway service.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::all)] // generated code
        tonic::include_proto!("switchyard.gateway.v1");
    }
}

/// The encoded `FileDescriptorSet` of every Switchyard proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/switchyard_descriptor.bin"));

/// Merges a command and a sub-command into a route id: `cmd << 16 | sub_cmd`.
pub const fn route(cmd: u16, sub_cmd: u16) -> u32 {
    ((cmd as u32) << 16) | sub_cmd as u32
}

/// Splits a route id into its command and sub-command.
pub const fn route_parts(route: u32) -> (u16, u16) {
    ((route >> 16) as u16, route as u16)
}
