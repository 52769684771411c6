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

/// Operating a node: drain, undrain, status.
pub mod admin {
    /// Version 1 of the admin service.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::all)] // generated code
        tonic::include_proto!("switchyard.admin.v1");
    }
}

/// Rooms: client requests, pushes, and the mesh messages of room servers.
pub mod room {
    /// Version 1 of the room messages.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::all)] // generated code
        tonic::include_proto!("switchyard.room.v1");

        /// Client routes and pushes of room servers: [`Route`] as the `u32` route ids handlers
        /// and clients use.
        pub mod routes {
            use super::{MeshCommand, Route};

            /// Create a room and join it (10:1).
            pub const CREATE: u32 = Route::Create as u32;
            /// Join a room (10:2).
            pub const JOIN: u32 = Route::Join as u32;
            /// Leave a room (10:3).
            pub const LEAVE: u32 = Route::Leave as u32;
            /// A room operation, broadcast to every member (10:4).
            pub const OP: u32 = Route::Op as u32;
            /// Set room properties (10:5).
            pub const SET_PROPERTIES: u32 = Route::SetProperties as u32;
            /// Get room properties and the rest of the room's info (10:6).
            pub const GET_PROPERTIES: u32 = Route::GetProperties as u32;
            /// The member list (10:7).
            pub const MEMBERS: u32 = Route::Members as u32;
            /// Move the room to another server; the owner only (10:8).
            pub const MIGRATE: u32 = Route::Migrate as u32;
            /// Push: a member joined (11:1).
            pub const PUSH_MEMBER_JOINED: u32 = Route::PushMemberJoined as u32;
            /// Push: a member left (11:2).
            pub const PUSH_MEMBER_LEFT: u32 = Route::PushMemberLeft as u32;
            /// Push: the owner changed (11:3).
            pub const PUSH_OWNER_CHANGED: u32 = Route::PushOwnerChanged as u32;
            /// Push: a room operation (11:4).
            pub const PUSH_OP: u32 = Route::PushOp as u32;
            /// Push: properties changed (11:5).
            pub const PUSH_PROPERTIES: u32 = Route::PushProperties as u32;
            /// Push: the room was closed (11:6).
            pub const PUSH_ROOM_CLOSED: u32 = Route::PushRoomClosed as u32;
            /// Push: the room is moving to another server (11:7).
            pub const PUSH_ROOM_MIGRATE_START: u32 = Route::PushRoomMigrateStart as u32;
            /// Push: the room's move ended (11:8).
            pub const PUSH_ROOM_MIGRATE_COMPLETE: u32 = Route::PushRoomMigrateComplete as u32;
            /// Mesh command: load report.
            pub const MESH_LOAD: u32 = MeshCommand::Load as u32;
            /// Mesh command: create a room for a member list.
            pub const MESH_CREATE_FOR: u32 = MeshCommand::CreateFor as u32;
            /// Mesh command: where a room lives (the room directory).
            pub const MESH_LOCATE: u32 = MeshCommand::Locate as u32;
            /// Mesh command: a client's room request, applied by the room's host.
            pub const MESH_ROOM: u32 = MeshCommand::Room as u32;
            /// Mesh command: take over a room from a draining server.
            pub const MESH_ADOPT: u32 = MeshCommand::Adopt as u32;
        }

        /// Application status codes of room servers: [`ErrorCode`] as `u32` statuses.
        pub mod errors {
            use super::ErrorCode;

            /// No such room (or it was removed).
            pub const ROOM_NOT_FOUND: u32 = ErrorCode::RoomNotFound as u32;
            /// The room has its maximum of members.
            pub const ROOM_FULL: u32 = ErrorCode::RoomFull as u32;
            /// Only members may do this.
            pub const NOT_A_MEMBER: u32 = ErrorCode::NotAMember as u32;
            /// This room server is draining and takes no new rooms or members.
            pub const NODE_DRAINING: u32 = ErrorCode::NodeDraining as u32;
            /// This room server hosts its maximum of rooms.
            pub const AT_CAPACITY: u32 = ErrorCode::AtCapacity as u32;
            /// A room operation or properties over the room limits.
            pub const PAYLOAD_TOO_LARGE: u32 = ErrorCode::PayloadTooLarge as u32;
            /// Only the room's owner may do this.
            pub const NOT_THE_OWNER: u32 = ErrorCode::NotTheOwner as u32;
            /// No other room server is online to take the room.
            pub const NO_MIGRATION_TARGET: u32 = ErrorCode::NoMigrationTarget as u32;
        }
    }
}

/// Matchmaking: client requests and pushes of match servers.
pub mod matchmaking {
    /// Version 1 of the matchmaking messages.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::all)] // generated code
        tonic::include_proto!("switchyard.matchmaking.v1");

        /// Client routes and pushes of match servers: [`Route`] as `u32` route ids.
        pub mod routes {
            use super::Route;

            /// Log in (public) (1:1).
            pub const LOGIN: u32 = Route::Login as u32;
            /// Join a mode's queue (20:1).
            pub const ENQUEUE: u32 = Route::Enqueue as u32;
            /// Leave the queue (20:2).
            pub const CANCEL: u32 = Route::Cancel as u32;
            /// Push: a match was found (21:1).
            pub const PUSH_MATCH_FOUND: u32 = Route::PushMatchFound as u32;
            /// Push: no room server could take the match yet (21:2).
            pub const PUSH_MATCH_DELAYED: u32 = Route::PushMatchDelayed as u32;
            /// Push: the player is no longer queued (21:3).
            pub const PUSH_QUEUE_CANCELLED: u32 = Route::PushQueueCancelled as u32;
        }

        /// Application status codes of match servers: [`ErrorCode`] as `u32` statuses.
        pub mod errors {
            use super::ErrorCode;

            /// The mode is not configured.
            pub const UNKNOWN_MODE: u32 = ErrorCode::UnknownMode as u32;
            /// The user is already queued.
            pub const ALREADY_QUEUED: u32 = ErrorCode::AlreadyQueued as u32;
            /// The login token does not match the user id.
            pub const BAD_CREDENTIAL: u32 = ErrorCode::BadCredential as u32;
            /// This match server is draining and queues nobody.
            pub const NODE_DRAINING: u32 = ErrorCode::NodeDraining as u32;
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

#[cfg(test)]
mod tests {
    use super::{matchmaking::v1 as mm, room::v1 as room, route};

    /// The route ids written in the .proto files are `cmd << 16 | sub_cmd` of the cmd:sub their
    /// comments give: a typo there would send clients of every language to the wrong route.
    #[test]
    fn route_enums_hold_the_documented_cmd_and_sub() {
        let table = [
            (room::routes::CREATE, route(10, 1)),
            (room::routes::JOIN, route(10, 2)),
            (room::routes::LEAVE, route(10, 3)),
            (room::routes::OP, route(10, 4)),
            (room::routes::SET_PROPERTIES, route(10, 5)),
            (room::routes::GET_PROPERTIES, route(10, 6)),
            (room::routes::MEMBERS, route(10, 7)),
            (room::routes::MIGRATE, route(10, 8)),
            (room::routes::PUSH_MEMBER_JOINED, route(11, 1)),
            (room::routes::PUSH_MEMBER_LEFT, route(11, 2)),
            (room::routes::PUSH_OWNER_CHANGED, route(11, 3)),
            (room::routes::PUSH_OP, route(11, 4)),
            (room::routes::PUSH_PROPERTIES, route(11, 5)),
            (room::routes::PUSH_ROOM_CLOSED, route(11, 6)),
            (room::routes::PUSH_ROOM_MIGRATE_START, route(11, 7)),
            (room::routes::PUSH_ROOM_MIGRATE_COMPLETE, route(11, 8)),
            (room::routes::MESH_LOAD, 0x1101),
            (room::routes::MESH_CREATE_FOR, 0x1102),
            (room::routes::MESH_LOCATE, 0x1104),
            (room::routes::MESH_ROOM, 0x1105),
            (room::routes::MESH_ADOPT, 0x1106),
            (mm::routes::LOGIN, route(1, 1)),
            (mm::routes::ENQUEUE, route(20, 1)),
            (mm::routes::CANCEL, route(20, 2)),
            (mm::routes::PUSH_MATCH_FOUND, route(21, 1)),
            (mm::routes::PUSH_MATCH_DELAYED, route(21, 2)),
            (mm::routes::PUSH_QUEUE_CANCELLED, route(21, 3)),
        ];
        for (generated, expected) in table {
            assert_eq!(generated, expected, "{:?}", super::route_parts(expected));
        }
    }

    #[test]
    fn error_codes_are_the_documented_numbers() {
        let table = [
            (room::errors::ROOM_NOT_FOUND, 1001),
            (room::errors::ROOM_FULL, 1002),
            (room::errors::NOT_A_MEMBER, 1003),
            (room::errors::NODE_DRAINING, 1004),
            (room::errors::AT_CAPACITY, 1005),
            (room::errors::PAYLOAD_TOO_LARGE, 1006),
            (room::errors::NOT_THE_OWNER, 1007),
            (room::errors::NO_MIGRATION_TARGET, 1008),
            (mm::errors::UNKNOWN_MODE, 1101),
            (mm::errors::ALREADY_QUEUED, 1102),
            (mm::errors::BAD_CREDENTIAL, 1103),
            (mm::errors::NODE_DRAINING, 1104),
        ];
        for (generated, expected) in table {
            assert_eq!(generated, expected);
        }
    }
}
