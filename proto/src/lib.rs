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

/// Rooms: client requests, pushes, and the mesh messages of room servers.
pub mod room {
    /// Version 1 of the room messages.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::all)] // generated code
        tonic::include_proto!("switchyard.room.v1");

        /// Client routes and pushes of room servers.
        pub mod routes {
            /// Create a room and join it.
            pub const CREATE: u32 = crate::route(10, 1);
            /// Join a room.
            pub const JOIN: u32 = crate::route(10, 2);
            /// Leave a room.
            pub const LEAVE: u32 = crate::route(10, 3);
            /// A room operation, broadcast to every member.
            pub const OP: u32 = crate::route(10, 4);
            /// Set room properties.
            pub const SET_PROPERTIES: u32 = crate::route(10, 5);
            /// Get room properties (and the rest of the room's info).
            pub const GET_PROPERTIES: u32 = crate::route(10, 6);
            /// The member list.
            pub const MEMBERS: u32 = crate::route(10, 7);
            /// Push: a member joined.
            pub const PUSH_MEMBER_JOINED: u32 = crate::route(11, 1);
            /// Push: a member left.
            pub const PUSH_MEMBER_LEFT: u32 = crate::route(11, 2);
            /// Push: the owner changed.
            pub const PUSH_OWNER_CHANGED: u32 = crate::route(11, 3);
            /// Push: a room operation.
            pub const PUSH_OP: u32 = crate::route(11, 4);
            /// Push: properties changed.
            pub const PUSH_PROPERTIES: u32 = crate::route(11, 5);
            /// Push: the room was closed.
            pub const PUSH_ROOM_CLOSED: u32 = crate::route(11, 6);
            /// Mesh command: load report.
            pub const MESH_LOAD: u32 = 0x1101;
            /// Mesh command: create a room for a member list.
            pub const MESH_CREATE_FOR: u32 = 0x1102;
            /// Mesh command: join a room hosted by another room server.
            pub const MESH_FORWARD_JOIN: u32 = 0x1103;
        }

        /// Application status codes of room servers.
        pub mod errors {
            /// No such room (or it was removed).
            pub const ROOM_NOT_FOUND: u32 = 1001;
            /// The room has its maximum of members.
            pub const ROOM_FULL: u32 = 1002;
            /// Only members may do this.
            pub const NOT_A_MEMBER: u32 = 1003;
            /// This room server is draining and creates no rooms.
            pub const NODE_DRAINING: u32 = 1004;
            /// This room server hosts its maximum of rooms.
            pub const AT_CAPACITY: u32 = 1005;
        }
    }
}

/// Matchmaking: client requests and pushes of match servers.
pub mod matchmaking {
    /// Version 1 of the matchmaking messages.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::all)] // generated code
        tonic::include_proto!("switchyard.matchmaking.v1");

        /// Client routes and pushes of match servers.
        pub mod routes {
            /// Log in (public).
            pub const LOGIN: u32 = crate::route(1, 1);
            /// Join a mode's queue.
            pub const ENQUEUE: u32 = crate::route(20, 1);
            /// Leave the queue.
            pub const CANCEL: u32 = crate::route(20, 2);
            /// Push: a match was found.
            pub const PUSH_MATCH_FOUND: u32 = crate::route(21, 1);
            /// Push: no room server could take the match yet.
            pub const PUSH_MATCH_DELAYED: u32 = crate::route(21, 2);
            /// Push: the player is no longer queued.
            pub const PUSH_QUEUE_CANCELLED: u32 = crate::route(21, 3);
        }

        /// Application status codes of match servers.
        pub mod errors {
            /// The mode is not configured.
            pub const UNKNOWN_MODE: u32 = 1101;
            /// The user is already queued.
            pub const ALREADY_QUEUED: u32 = 1102;
            /// The login token does not match the user id.
            pub const BAD_CREDENTIAL: u32 = 1103;
        }
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
