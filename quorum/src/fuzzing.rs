//! The decoders of what peers send this crate, exposed for the property checks of the
//! `fuzzing` crate only. Not an API.

use crate::{Member, RegisterAnswer, StatusReply, network};

/// What [`decode_all`] made of some bytes.
#[derive(Debug)]
pub struct Decoded {
    /// How many of the decoders took them.
    pub accepted: usize,
    /// The configuration member they decode to, and its re-decoding (they must be equal).
    pub member: Option<(Member, Member)>,
}

/// Runs `bytes` through every quorum message decoder: the JSON bodies of the Raft append,
/// vote and snapshot commands, and of STATUS and REGISTER.
pub fn decode_all(bytes: &[u8]) -> Decoded {
    let mut accepted = network::fuzz_decode(bytes);
    accepted += usize::from(serde_json::from_slice::<StatusReply>(bytes).is_ok());
    accepted += usize::from(serde_json::from_slice::<RegisterAnswer>(bytes).is_ok());
    let member = serde_json::from_slice::<Member>(bytes).ok().map(|member| {
        let again = serde_json::to_vec(&member)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        (member, again)
    });
    accepted += usize::from(member.is_some());
    Decoded { accepted, member }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kept seeds are messages the decoders take (else they would seed nothing).
    #[test]
    fn every_seed_of_the_corpus_is_a_message_some_decoder_takes() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/quorum_message");
        let mut seeds = 0;
        for entry in std::fs::read_dir(&dir).expect("the corpus") {
            let path = entry.expect("an entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if !name.starts_with("seed-") || name.starts_with("seed-bad") {
                continue;
            }
            let bytes = std::fs::read(&path).expect("a seed");
            assert!(decode_all(&bytes).accepted > 0, "{name} decodes as nothing");
            seeds += 1;
        }
        assert!(seeds >= 6, "{seeds} seeds");
    }
}
