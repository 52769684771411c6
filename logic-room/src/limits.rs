//! Room limits: the largest operation, properties, member list and user id a room accepts,
//! chosen so every push and reply of a room fits a client frame (pure; table-tested).
//!
//! What a room sends grows with what it accepts: a `RoomOpEvent` carries the operation's
//! payload, `PropertiesChanged` every property, a `RoomInfo` every member and property. With
//! these limits the largest `RoomInfo` is about 150 KiB and the largest operation push is
//! `--max-op-bytes` plus a few hundred bytes, so the gateway's default frame limit (1 MiB)
//! delivers every one of them. Oversized requests are refused before anything is applied or
//! broadcast.

use std::collections::{BTreeMap, HashMap};

use logic_sdk::LogicError;
use proto::room::v1::errors;

/// Members a room may have at most (`--max-members` and `CreateRoom.max_members` above it are
/// refused).
pub const MAX_MEMBERS: usize = 1024;
/// The longest user id a room accepts as a member, in bytes.
pub const MAX_USER_ID_BYTES: usize = 128;
/// Properties a room holds at most.
pub const MAX_PROPERTIES: usize = 64;
/// The longest property key, in bytes.
pub const MAX_PROPERTY_KEY_BYTES: usize = 128;
/// The longest property value, in bytes.
pub const MAX_PROPERTY_VALUE_BYTES: usize = 4 * 1024;
/// Keys and values of all of a room's properties together, in bytes.
pub const MAX_PROPERTIES_BYTES: usize = 16 * 1024;
/// The default largest room operation payload (`--max-op-bytes`).
pub const DEFAULT_MAX_OP_BYTES: usize = 64 * 1024;
/// The largest `--max-op-bytes` accepted: an operation's push (the payload inside a
/// `RoomOpEvent` inside an envelope) must fit the default client frame limit of 1 MiB.
pub const MAX_OP_BYTES_CEILING: usize = 1024 * 1024 - 4 * 1024;

/// The limits of one room server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The largest room operation payload, in bytes.
    pub(crate) max_op_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_op_bytes: DEFAULT_MAX_OP_BYTES,
        }
    }
}

impl Limits {
    /// A room operation's payload must be at most `max_op_bytes`.
    pub(crate) fn check_op(&self, payload: &[u8]) -> Result<(), LogicError> {
        if payload.len() > self.max_op_bytes {
            return Err(LogicError::new(
                errors::PAYLOAD_TOO_LARGE,
                format!("room operations carry at most {} bytes", self.max_op_bytes),
            ));
        }
        Ok(())
    }
}

/// A room's properties after `changes` (an empty value removes a key), if they stay within
/// the limits.
pub(crate) fn merge_properties(
    current: &BTreeMap<String, String>,
    changes: HashMap<String, String>,
) -> Result<BTreeMap<String, String>, LogicError> {
    let mut merged = current.clone();
    for (key, value) in changes {
        if key.len() > MAX_PROPERTY_KEY_BYTES || value.len() > MAX_PROPERTY_VALUE_BYTES {
            return Err(properties_too_large());
        }
        if value.is_empty() {
            merged.remove(&key);
        } else {
            merged.insert(key, value);
        }
    }
    check_properties(&merged)?;
    Ok(merged)
}

/// A room's properties must stay within the count, key, value and total limits.
pub(crate) fn check_properties(properties: &BTreeMap<String, String>) -> Result<(), LogicError> {
    let total: usize = properties.iter().map(|(k, v)| k.len() + v.len()).sum();
    let oversized = properties
        .iter()
        .any(|(k, v)| k.len() > MAX_PROPERTY_KEY_BYTES || v.len() > MAX_PROPERTY_VALUE_BYTES);
    if properties.len() > MAX_PROPERTIES || oversized || total > MAX_PROPERTIES_BYTES {
        return Err(properties_too_large());
    }
    Ok(())
}

/// A member's user id must be at most [`MAX_USER_ID_BYTES`].
pub(crate) fn check_user_id(user: &str) -> Result<(), LogicError> {
    if user.len() > MAX_USER_ID_BYTES {
        return Err(LogicError::bad_request(
            "user ids in rooms are at most 128 bytes",
        ));
    }
    Ok(())
}

/// A room's member limit must be at most [`MAX_MEMBERS`].
pub(crate) fn check_max_members(max_members: usize) -> Result<(), LogicError> {
    if max_members > MAX_MEMBERS {
        return Err(LogicError::bad_request("rooms take at most 1024 members"));
    }
    Ok(())
}

fn properties_too_large() -> LogicError {
    LogicError::new(
        errors::PAYLOAD_TOO_LARGE,
        "room properties are at most 64 keys of up to 128 bytes, values of up to 4096 bytes, \
         16384 bytes in all",
    )
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use mesh::NodeId;
    use prost::Message;
    use proto::{
        client::v1::{Envelope, Kind},
        room::v1::{self as pb, routes},
    };

    use super::*;
    use crate::room::{Command, Member, Room};

    fn code<T>(result: Result<T, LogicError>) -> Option<u32> {
        result.err().map(|e| e.code)
    }

    fn props(entries: &[(&str, usize)]) -> HashMap<String, String> {
        entries
            .iter()
            .map(|(k, len)| ((*k).to_owned(), "v".repeat(*len)))
            .collect()
    }

    #[test]
    fn operations_up_to_the_limit_pass() {
        let limits = Limits { max_op_bytes: 10 };
        assert_eq!(code(limits.check_op(&[0; 10])), None);
        assert_eq!(
            code(limits.check_op(&[0; 11])),
            Some(errors::PAYLOAD_TOO_LARGE)
        );
    }

    #[test]
    fn properties_are_checked_as_they_would_be_after_the_change() {
        let too_large = Some(errors::PAYLOAD_TOO_LARGE);
        let empty = BTreeMap::new();
        let check = |current: &BTreeMap<String, String>,
                     changes: HashMap<String, String>,
                     expected: Option<u32>| {
            assert_eq!(
                code(merge_properties(current, changes.clone())),
                expected,
                "{changes:?}"
            );
        };
        check(&empty, props(&[("map", 4)]), None);
        check(&empty, props(&[("v", MAX_PROPERTY_VALUE_BYTES)]), None);
        check(
            &empty,
            props(&[("v", MAX_PROPERTY_VALUE_BYTES + 1)]),
            too_large,
        );
        let long_key = "k".repeat(MAX_PROPERTY_KEY_BYTES + 1);
        check(&empty, props(&[(long_key.as_str(), 1)]), too_large);
        // Four values of 4 KiB are just over 16 KiB with their keys.
        check(
            &empty,
            props(&[("a", 4096), ("b", 4096), ("c", 4096), ("d", 4096)]),
            too_large,
        );
        check(
            &empty,
            props(&[("a", 4096), ("b", 4096), ("c", 4096), ("d", 4092)]),
            None,
        );
        let many: HashMap<String, String> = (0..=MAX_PROPERTIES)
            .map(|i| (i.to_string(), "x".to_owned()))
            .collect();
        check(&empty, many, too_large);
        // What is already there counts; a removal makes room.
        let full: BTreeMap<String, String> = (0..MAX_PROPERTIES)
            .map(|i| (i.to_string(), "x".to_owned()))
            .collect();
        check(&full, props(&[("one-more", 1)]), too_large);
        check(&full, props(&[("0", 0), ("one-more", 1)]), None);
    }

    #[test]
    fn user_ids_and_member_limits_are_bounded() {
        assert_eq!(code(check_user_id(&"u".repeat(MAX_USER_ID_BYTES))), None);
        assert!(check_user_id(&"u".repeat(MAX_USER_ID_BYTES + 1)).is_err());
        assert_eq!(code(check_max_members(MAX_MEMBERS)), None);
        assert!(check_max_members(MAX_MEMBERS + 1).is_err());
    }

    /// The frame a client receives for a push of `payload`.
    fn push_frame_len(route: u32, payload: Vec<u8>) -> usize {
        Envelope {
            kind: Kind::Push as i32,
            route,
            seq: u64::MAX,
            payload: payload.into(),
            ..Envelope::default()
        }
        .encoded_len()
    }

    #[test]
    fn the_largest_room_messages_fit_the_default_client_frame_limit() {
        const FRAME_LIMIT: usize = 1024 * 1024;
        let node = NodeId::new("n".repeat(64));
        let properties: BTreeMap<String, String> = (0..4)
            .map(|i| {
                (
                    format!("{i:0>128}"),
                    "v".repeat(MAX_PROPERTIES_BYTES / 4 - 128),
                )
            })
            .collect();
        check_properties(&properties).expect("the largest properties are within the limits");
        let limits = Limits {
            max_op_bytes: MAX_OP_BYTES_CEILING,
        };
        let id = format!("{}@{node}", u64::MAX);
        let mut room = Room::new(id.clone(), node, MAX_MEMBERS, properties, limits);
        for i in 0..MAX_MEMBERS {
            let user = format!("{i:0>128}");
            let (joined, _) = room.apply(Command::Join(Member::new(user, None)));
            joined.expect("joins");
        }
        let info = room.info_message().encode_to_vec();
        assert!(
            push_frame_len(routes::PUSH_ROOM_CLOSED, info.clone()) < 256 * 1024,
            "a full room's info is {} bytes",
            info.len()
        );
        let user = format!("{:0>128}", 0);
        let (_, outcome) = room.apply(Command::Op {
            member: Member::new(user, None),
            payload: Bytes::from(vec![0xab; MAX_OP_BYTES_CEILING]),
        });
        let event = outcome.broadcasts[0].payload.to_vec();
        assert!(pb::RoomOpEvent::decode(event.as_slice()).is_ok());
        assert!(
            push_frame_len(routes::PUSH_OP, event) <= FRAME_LIMIT,
            "the largest operation's push fits a frame"
        );
    }
}
