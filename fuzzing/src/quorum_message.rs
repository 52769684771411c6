//! The quorum's mesh messages: Raft append, vote and snapshot bodies, STATUS answers and
//! REGISTER requests and answers, all JSON from regular nodes.

use quorum::fuzzing::decode_all;

/// Input: any bytes, taken as the body of each quorum mesh command.
///
/// Properties:
/// - no decoder panics, whatever the bytes;
/// - a body that decodes as a configuration member re-encodes to the same member.
pub fn quorum_message(data: &[u8]) {
    if let Some((member, again)) = decode_all(data).member {
        assert_eq!(member, again, "a member survives a round trip");
    }
}
