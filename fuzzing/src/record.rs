//! The gossip record decoder: what a node makes of another node's key/values.

use std::collections::BTreeMap;

use mesh::fuzzing::{decode_record, encode_record};

/// Longest error text a record may produce, whatever its values (they are cut before logging).
const MAX_ERROR_TEXT: usize = 1024;

/// Input: text; the first line is the node id, every other line `key=value` (a line without
/// `=` is a key with an empty value; a later line wins over an earlier one).
///
/// Properties:
/// - a record is `Left` exactly when its `state` says so;
/// - a decoded member has the id it was gossiped under, sorted and deduplicated routes, and the
///   kind, version and client address it announced;
/// - it re-encodes to key/values that decode to the same member, and that encoding is a fixed
///   point;
/// - an error's text stays short, however long the offending value.
pub fn gossip_record(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let id = lines.next().unwrap_or_default();
    let map: BTreeMap<&str, &str> = lines
        .map(|line| line.split_once('=').unwrap_or((line, "")))
        .collect();
    let get = |key: &str| map.get(key).copied();

    let info = match decode_record(id, get) {
        Ok(None) => {
            assert_eq!(get("state"), Some("left"));
            return;
        }
        Ok(Some(info)) => info,
        Err(error) => {
            assert!(
                error.len() <= MAX_ERROR_TEXT,
                "an error text of {} bytes",
                error.len()
            );
            return;
        }
    };
    assert_ne!(get("state"), Some("left"));
    assert_eq!(info.id.as_str(), id);
    assert_eq!(info.kind.as_str(), get("kind").unwrap_or_default());
    assert_eq!(info.version, get("version").unwrap_or_default());
    assert_eq!(info.client_addr.as_deref(), get("client"));
    for routes in [&info.routes, &info.public_routes] {
        assert!(routes.windows(2).all(|w| w[0] < w[1]), "routes {routes:?}");
    }

    let encoded = encode_record(&info);
    let encoded_map: BTreeMap<&str, &str> = encoded.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(encoded_map.len(), encoded.len(), "a key encoded twice");
    match decode_record(id, |key| encoded_map.get(key).copied()) {
        Ok(Some(again)) => {
            assert_eq!(again, info, "the member changed in a round trip");
            assert_eq!(
                encode_record(&again),
                encoded,
                "the encoding is not a fixed point"
            );
        }
        other => panic!("a re-encoded member decodes as {other:?}"),
    }
}
