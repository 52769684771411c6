//! The UDP datagram decoder: the cluster tag, then the `MeshDatagram` payload.

use arbitrary::Unstructured;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use mesh::{
    Credential,
    fuzzing::{DATAGRAM_TAG_LEN, accept_datagram, seal_datagram},
};
use prost::Message;
use proto::mesh::v1::MeshDatagram;
use sha2::Sha256;

const SECRET: &str = "fuzz-cluster-secret";
const OTHER_SECRET: &str = "fuzz-other-secret";

/// Input: a mode byte, then either a datagram as received, a body to tag validly, or a message
/// to seal and a change to make to the sealed bytes.
///
/// Properties:
/// - a datagram is accepted only when its tag is the HMAC-SHA256 of its body under the cluster
///   secret (checked against an independent computation of the tag);
/// - behind a valid tag, the payload decodes exactly as `MeshDatagram` decodes, and the message
///   re-encodes to an equal one;
/// - a sealed message opens to the same message; changed in any way, or opened under another
///   secret, it is dropped.
pub fn datagram(data: &[u8]) {
    let credential = Credential::new(SECRET).expect("a valid secret");
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => received(&credential, rest),
        1 => {
            let mut datagram = tag(SECRET, rest).to_vec();
            datagram.extend_from_slice(rest);
            received(&credential, &datagram);
        }
        _ => sealed(&credential, rest),
    }
}

/// Checks what the receive path makes of one datagram.
fn received(credential: &Credential, datagram: &[u8]) {
    let accepted = accept_datagram(credential, datagram);
    let Some((tag_bytes, body)) = datagram.split_at_checked(DATAGRAM_TAG_LEN) else {
        assert_eq!(accepted, None, "a datagram shorter than a tag was accepted");
        return;
    };
    if tag_bytes != tag(SECRET, body) {
        assert_eq!(
            accepted, None,
            "a datagram without a valid tag was accepted"
        );
        return;
    }
    assert_eq!(accepted, MeshDatagram::decode(body).ok());
    if let Some(message) = accepted {
        let again = MeshDatagram::decode(Bytes::from(message.encode_to_vec()))
            .expect("a re-encoded message decodes");
        assert_eq!(again, message, "the message changed in a round trip");
    }
}

/// Seals a message from the input, checks it opens, then that every change to it is refused.
fn sealed(credential: &Credential, data: &[u8]) {
    let mut input = Unstructured::new(data);
    let (Ok(command), Ok(from_node), Ok(change), Ok(at), Ok(bytes)) = (
        input.arbitrary::<u32>(),
        input.arbitrary::<String>(),
        input.int_in_range(0..=2u8),
        input.arbitrary::<u16>(),
        input.arbitrary::<Vec<u8>>(),
    ) else {
        return;
    };
    let payload = Bytes::from(input.take_rest().to_vec());
    let message = MeshDatagram {
        command,
        from_node,
        payload,
    };
    let sealed = seal_datagram(credential, &message);
    assert_eq!(accept_datagram(credential, &sealed), Some(message.clone()));
    let other = Credential::new(OTHER_SECRET).expect("a valid secret");
    assert_eq!(
        accept_datagram(&other, &sealed),
        None,
        "opened under another secret"
    );

    let mut changed = sealed.clone();
    let at = usize::from(at) % sealed.len();
    match change {
        0 => changed[at] ^= bytes.first().copied().unwrap_or(0).max(1),
        1 => changed.truncate(at),
        _ => changed.extend_from_slice(if bytes.is_empty() { &[0] } else { &bytes }),
    }
    assert_eq!(
        accept_datagram(credential, &changed),
        None,
        "a changed datagram was accepted"
    );
}

/// The tag a datagram body must carry, computed here from the documented scheme (the first
/// 16 bytes of HMAC-SHA256 over the body, keyed by the secret), not by the code under test.
fn tag(secret: &str, body: &[u8]) -> [u8; DATAGRAM_TAG_LEN] {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    let full = mac.finalize().into_bytes();
    let mut tag = [0; DATAGRAM_TAG_LEN];
    tag.copy_from_slice(&full[..DATAGRAM_TAG_LEN]);
    tag
}
