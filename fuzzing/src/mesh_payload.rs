//! Mesh payload decoding: a peer's `MeshRequest` (as the gRPC service decodes it), then its
//! payload through the typed handler wrapper, and the replies a caller decodes.

use std::fmt::Debug;

use bytes::Bytes;
use futures::FutureExt;
use mesh::{HandlerError, fuzzing::dispatch_echo};
use prost::Message;
use proto::{
    mesh::v1::{MeshReply, MeshRequest},
    room::v1::{self as room, routes},
};

/// Input: one encoded `MeshRequest` (or, read as a reply, one `MeshReply`).
///
/// Properties:
/// - a decoded request or reply re-encodes to an equal one;
/// - the request's payload reaches a typed handler of the message its command carries (the
///   room server's mesh commands) exactly when it decodes as that message, unchanged; otherwise
///   the caller is answered `HandlerError::BAD_PAYLOAD` and the handler does not run.
pub fn mesh_payload(data: &[u8]) {
    if let Ok(reply) = MeshReply::decode(data) {
        round_trip(&reply);
        if let Some(error) = &reply.error {
            round_trip(error);
        }
        // The match server reads room servers' load reports from replies.
        if let Ok(report) = room::LoadReport::decode(reply.payload.clone()) {
            round_trip(&report);
        }
    }
    let Ok(request) = MeshRequest::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    round_trip(&request);
    let (command, payload) = (request.command, request.payload);
    // The room server's commands get their own message; any other command one of them.
    let message = match command {
        routes::MESH_LOAD | routes::MESH_LOCATE => 0,
        routes::MESH_CREATE_FOR => 1,
        routes::MESH_ROOM => 2,
        routes::MESH_ADOPT => 3,
        other => other % 4,
    };
    match message {
        0 => handled::<room::RoomRef>(command, payload),
        1 => handled::<room::CreateRoomFor>(command, payload),
        2 => handled::<room::RoomCommand>(command, payload),
        _ => handled::<room::RoomSnapshot>(command, payload),
    }
}

/// Dispatches the payload to a typed handler of `Req` that echoes the request it gets.
fn handled<Req>(command: u32, payload: Bytes)
where
    Req: Message + Default + PartialEq + Debug + 'static,
{
    let direct = Req::decode(payload.clone());
    let dispatched = dispatch_echo::<Req>(command, payload)
        .now_or_never()
        .expect("an echo handler never waits");
    match (direct, dispatched) {
        (Ok(request), Ok(reply)) => {
            round_trip(&request);
            let echoed = Req::decode(reply).expect("the handler's reply decodes");
            assert_eq!(echoed, request, "the handler got another request");
        }
        (Err(_), Err(error)) => {
            assert_eq!(error.code, HandlerError::BAD_PAYLOAD, "{error}");
        }
        (direct, dispatched) => panic!(
            "the payload decodes as {} but dispatch answered {dispatched:?}",
            direct.is_ok()
        ),
    }
}

/// Checks that a decoded message re-encodes to an equal one.
fn round_trip<M: Message + Default + PartialEq + Debug>(message: &M) {
    let encoded = message.encode_to_vec();
    assert_eq!(encoded.len(), message.encoded_len());
    let again = M::decode(&encoded[..]).expect("a re-encoded message decodes");
    assert_eq!(&again, message, "the message changed in a round trip");
}
