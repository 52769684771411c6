//! Client envelope decoding: what the gateway and the client library do with every frame.

use bytes::Bytes;
use prost::Message;
use wire::Envelope;

/// Input: one frame body.
///
/// Properties:
/// - decoding from `Bytes` (zero-copy, as the gateway does) and from a slice agree;
/// - a decoded envelope re-encodes to an equal envelope (`decode(encode(decode(x))) ==
///   decode(x)`), and that encoding is a fixed point of decode-then-encode;
/// - `wire::envelope::encode` is that same encoding, and `encoded_len` its length.
pub fn envelope(data: &[u8]) {
    let from_bytes = Envelope::decode(Bytes::copy_from_slice(data));
    let from_slice = Envelope::decode(data);
    let envelope = match (from_bytes, from_slice) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "decoding from Bytes and from a slice disagree");
            a
        }
        (Err(_), Err(_)) => return,
        (a, b) => panic!("decoding from Bytes and from a slice disagree: {a:?} / {b:?}"),
    };
    let encoded = wire::envelope::encode(&envelope);
    assert_eq!(encoded.len(), envelope.encoded_len());
    let again = Envelope::decode(encoded.clone()).expect("a re-encoded envelope decodes");
    assert_eq!(again, envelope, "the envelope changed in a round trip");
    assert_eq!(
        wire::envelope::encode(&again),
        encoded,
        "the encoding is not a fixed point"
    );
}
