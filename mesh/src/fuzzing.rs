//! Entry points to the crate's private decoders for the fuzz targets (`fuzzing/`, `fuzz/`). Not
//! an API: hidden from the docs and free to change with the decoders they wrap.

use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use prost::Message;
use proto::mesh::v1::MeshDatagram;

use crate::{
    auth::{Credential, TAG_LEN},
    datagram,
    error::HandlerError,
    handler::{self, DispatchError, Handlers, MeshContext},
    node::{NodeId, NodeInfo},
    record::{self, Decoded},
};

/// Bytes of HMAC tag in front of every datagram.
pub const DATAGRAM_TAG_LEN: usize = TAG_LEN;

/// Decodes a gossiped record the way membership does: the member, or `None` when the node
/// announced that it left; the error is the record error's text.
pub fn decode_record<'a>(
    id: &str,
    get: impl Fn(&str) -> Option<&'a str>,
) -> Result<Option<NodeInfo>, String> {
    match record::decode(id, get) {
        Ok(Decoded::Member(info)) => Ok(Some(*info)),
        Ok(Decoded::Left) => Ok(None),
        Err(error) => Err(error.to_string()),
    }
}

/// The key/values membership gossips for `info`.
pub fn encode_record(info: &NodeInfo) -> Vec<(&'static str, String)> {
    record::encode(info)
}

/// A received datagram as the receive loop sees it: the message, or `None` when it is dropped.
pub fn accept_datagram(credential: &Credential, datagram: &[u8]) -> Option<MeshDatagram> {
    datagram::accept(
        credential,
        datagram,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    )
}

/// A message sealed for sending, as the unreliable send path seals it.
pub fn seal_datagram(credential: &Credential, message: &MeshDatagram) -> Vec<u8> {
    datagram::seal(credential, message)
}

/// Dispatches `payload` to one typed handler of `Req` that answers with the request it got,
/// through the same registry and decoding wrapper a node uses: the reply, or the handler error
/// (`BAD_PAYLOAD` when the payload does not decode as `Req`).
pub async fn dispatch_echo<Req>(command: u32, payload: Bytes) -> Result<Bytes, HandlerError>
where
    Req: Message + Default + 'static,
{
    let handlers = Handlers::default();
    handlers.add(
        command,
        handler::message_handler(|_, request: Req| async move { Ok(request) }),
    );
    let ctx = MeshContext {
        from: NodeId::new("fuzz"),
        command,
    };
    match handlers.dispatch(ctx, payload).await {
        Ok(reply) => Ok(reply),
        Err(DispatchError::Handler(error)) => Err(error),
        Err(DispatchError::NoHandler) => unreachable!("the handler was registered above"),
    }
}
