//! One room's state and rules, without IO: commands in, a reply and broadcasts out.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use logic_sdk::{LogicError, Recipient};
use mesh::NodeId;
use prost::Message;
use proto::room::v1::{self as pb, errors, routes};

use crate::limits::{self, Limits};

/// A member and the gateway holding them (when known).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) user: String,
    pub(crate) gateway: Option<NodeId>,
}

impl Member {
    pub(crate) fn new(user: impl Into<String>, gateway: Option<NodeId>) -> Self {
        Self {
            user: user.into(),
            gateway,
        }
    }

    fn recipient(&self) -> Recipient {
        Recipient {
            user_id: self.user.clone(),
            gateway: self.gateway.clone(),
        }
    }
}

/// What a room is asked to do.
#[derive(Debug)]
pub(crate) enum Command {
    Join(Member),
    Leave {
        user: String,
        reason: &'static str,
    },
    Op {
        member: Member,
        payload: Bytes,
    },
    SetProperties {
        member: Member,
        properties: HashMap<String, String>,
    },
    Info,
    /// Closes the room: every member is told why and removed.
    Close {
        reason: &'static str,
    },
    /// The owner asks to move the room to another server (the room's actor runs the move).
    Migrate {
        user: String,
    },
    /// A member held by a gateway lost for good leaves, unless another gateway holds them now
    /// (they came back and acted here meanwhile). Never travels between servers.
    Forget {
        user: String,
        held_by: NodeId,
    },
}

/// A push to some members.
#[derive(Debug, PartialEq)]
pub(crate) struct Broadcast {
    pub(crate) to: Vec<Recipient>,
    pub(crate) route: u32,
    pub(crate) payload: Bytes,
}

/// What a command did.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) broadcasts: Vec<Broadcast>,
    pub(crate) joined: Option<String>,
    /// A join: the gateway the new member should move to (affinity).
    pub(crate) move_to: Option<NodeId>,
    pub(crate) left: Option<String>,
    /// Set when the room closed: the members it had.
    pub(crate) closed: Option<Vec<String>>,
}

/// One room.
#[derive(Debug)]
pub(crate) struct Room {
    pub(crate) id: String,
    node: NodeId,
    owner: Option<String>,
    /// In join order: the next owner is the longest-standing member.
    members: Vec<Member>,
    max_members: usize,
    properties: BTreeMap<String, String>,
    op_seq: u64,
    limits: Limits,
    /// Kept when empty (preloaded rooms).
    pub(crate) persistent: bool,
    /// Affinity: a joining member is asked to move to the gateway holding most members, while
    /// that gateway holds fewer than this many of them (0: off).
    pub(crate) affinity: usize,
}

impl Room {
    pub(crate) fn new(
        id: String,
        node: NodeId,
        max_members: usize,
        properties: BTreeMap<String, String>,
        limits: Limits,
    ) -> Self {
        Self {
            id,
            node,
            owner: None,
            members: Vec::new(),
            max_members: max_members.max(1),
            properties,
            op_seq: 0,
            limits,
            persistent: false,
            affinity: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Applies a command: the reply payload (or an error) and what to broadcast.
    pub(crate) fn apply(&mut self, command: Command) -> (Result<Bytes, LogicError>, Outcome) {
        let mut outcome = Outcome::default();
        let reply = match command {
            Command::Join(member) => self.join(member, &mut outcome),
            Command::Leave { user, reason } => self.leave(&user, reason, &mut outcome),
            Command::Forget { user, held_by } => {
                let held = self
                    .members
                    .iter()
                    .any(|m| m.user == user && m.gateway.as_ref() == Some(&held_by));
                if held {
                    self.leave(&user, "gateway lost", &mut outcome)
                } else {
                    Err(not_a_member())
                }
            }
            Command::Op { member, payload } => self.op(member, payload, &mut outcome),
            Command::SetProperties { member, properties } => {
                self.set_properties(member, properties, &mut outcome)
            }
            Command::Info => Ok(self.info()),
            // The actor handles a move; a room asked to apply one refuses it.
            Command::Migrate { user } => self.may_migrate(&user).map(|()| self.info()),
            Command::Close { reason } => {
                let event = pb::RoomClosed {
                    room_id: self.id.clone(),
                    reason: reason.to_owned(),
                };
                self.broadcast_to_all(&mut outcome, routes::PUSH_ROOM_CLOSED, &event);
                // The reply is the room as it was when it closed.
                let last = self.info();
                outcome.closed = Some(self.members.drain(..).map(|m| m.user).collect());
                self.owner = None;
                Ok(last)
            }
        };
        (reply, outcome)
    }

    fn join(&mut self, member: Member, outcome: &mut Outcome) -> Result<Bytes, LogicError> {
        if let Some(existing) = self.members.iter_mut().find(|m| m.user == member.user) {
            // Joining again is harmless; it refreshes the gateway.
            if member.gateway.is_some() {
                existing.gateway = member.gateway;
            }
            return Ok(self.info());
        }
        limits::check_user_id(&member.user)?;
        if self.members.len() >= self.max_members {
            return Err(LogicError::new(errors::ROOM_FULL, "the room is full"));
        }
        let user = member.user.clone();
        outcome.move_to = self.affinity_for(&member);
        self.members.push(member);
        if self.owner.is_none() {
            self.owner = Some(user.clone());
        }
        outcome.joined = Some(user.clone());
        let event = pb::MemberEvent {
            room_id: self.id.clone(),
            user_id: user,
            reason: "joined".into(),
        };
        self.broadcast_to_all(outcome, routes::PUSH_MEMBER_JOINED, &event);
        Ok(self.info())
    }

    fn leave(
        &mut self,
        user: &str,
        reason: &'static str,
        outcome: &mut Outcome,
    ) -> Result<Bytes, LogicError> {
        let Some(index) = self.members.iter().position(|m| m.user == user) else {
            return Err(not_a_member());
        };
        self.members.remove(index);
        outcome.left = Some(user.to_owned());
        let event = pb::MemberEvent {
            room_id: self.id.clone(),
            user_id: user.to_owned(),
            reason: reason.to_owned(),
        };
        self.broadcast_to_all(outcome, routes::PUSH_MEMBER_LEFT, &event);
        if self.owner.as_deref() == Some(user) {
            self.owner = self.members.first().map(|m| m.user.clone());
            if let Some(owner) = &self.owner {
                let event = pb::OwnerChanged {
                    room_id: self.id.clone(),
                    owner: owner.clone(),
                };
                self.broadcast_to_all(outcome, routes::PUSH_OWNER_CHANGED, &event);
            }
        }
        Ok(self.info())
    }

    fn op(
        &mut self,
        member: Member,
        payload: Bytes,
        outcome: &mut Outcome,
    ) -> Result<Bytes, LogicError> {
        self.limits.check_op(&payload)?;
        self.refresh(&member)?;
        self.op_seq += 1;
        let event = pb::RoomOpEvent {
            room_id: self.id.clone(),
            seq: self.op_seq,
            from: member.user,
            payload,
        };
        self.broadcast_to_all(outcome, routes::PUSH_OP, &event);
        Ok(Bytes::from(
            pb::OpAccepted { seq: self.op_seq }.encode_to_vec(),
        ))
    }

    fn set_properties(
        &mut self,
        member: Member,
        properties: HashMap<String, String>,
        outcome: &mut Outcome,
    ) -> Result<Bytes, LogicError> {
        let merged = limits::merge_properties(&self.properties, properties)?;
        self.refresh(&member)?;
        self.properties = merged;
        let event = pb::PropertiesChanged {
            room_id: self.id.clone(),
            properties: self.properties.clone().into_iter().collect(),
        };
        self.broadcast_to_all(outcome, routes::PUSH_PROPERTIES, &event);
        Ok(self.info())
    }

    /// Checks membership and learns the member's gateway.
    fn refresh(&mut self, member: &Member) -> Result<(), LogicError> {
        let existing = self
            .members
            .iter_mut()
            .find(|m| m.user == member.user)
            .ok_or_else(not_a_member)?;
        if member.gateway.is_some() && existing.gateway != member.gateway {
            existing.gateway = member.gateway.clone();
        }
        Ok(())
    }

    fn broadcast_to_all(&self, outcome: &mut Outcome, route: u32, message: &impl Message) {
        if self.members.is_empty() {
            return;
        }
        outcome.broadcasts.push(Broadcast {
            to: self.members.iter().map(Member::recipient).collect(),
            route,
            payload: Bytes::from(message.encode_to_vec()),
        });
    }

    /// The gateway a joining member should move to: the one holding most members (node id
    /// breaks ties) while it holds fewer than the affinity limit, when that is not the
    /// member's own gateway and holds more members than it.
    fn affinity_for(&self, joining: &Member) -> Option<NodeId> {
        let own = joining.gateway.as_ref()?;
        if self.affinity == 0 {
            return None;
        }
        let mut counts: BTreeMap<&NodeId, usize> = BTreeMap::new();
        for gateway in self.members.iter().filter_map(|m| m.gateway.as_ref()) {
            *counts.entry(gateway).or_default() += 1;
        }
        let here = counts.get(own).copied().unwrap_or(0);
        let (best, most) = counts
            .into_iter()
            .filter(|(_, count)| *count < self.affinity)
            .max_by(|(a_id, a), (b_id, b)| a.cmp(b).then(b_id.cmp(a_id)))?;
        (best != own && most > here).then(|| best.clone())
    }

    /// Only the owner may move the room.
    pub(crate) fn may_migrate(&self, user: &str) -> Result<(), LogicError> {
        if self.owner.as_deref() == Some(user) {
            Ok(())
        } else {
            Err(LogicError::new(
                errors::NOT_THE_OWNER,
                "only the room's owner may move it",
            ))
        }
    }

    /// The user ids of the members, in join order.
    pub(crate) fn member_ids(&self) -> Vec<String> {
        self.members.iter().map(|m| m.user.clone()).collect()
    }

    /// A push of `message` to every member (none when the room is empty).
    pub(crate) fn to_all(&self, route: u32, message: &impl Message) -> Option<Broadcast> {
        let mut outcome = Outcome::default();
        self.broadcast_to_all(&mut outcome, route, message);
        outcome.broadcasts.pop()
    }

    /// The room's whole state, for the server taking it over.
    pub(crate) fn snapshot(&self, move_id: u64) -> pb::RoomSnapshot {
        pb::RoomSnapshot {
            room_id: self.id.clone(),
            owner: self.owner.clone().unwrap_or_default(),
            members: self
                .members
                .iter()
                .map(|m| pb::SnapshotMember {
                    user_id: m.user.clone(),
                    gateway_node: m
                        .gateway
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                })
                .collect(),
            max_members: self.max_members as u32,
            properties: self.properties.clone().into_iter().collect(),
            op_seq: self.op_seq,
            persistent: self.persistent,
            from_node: self.node.to_string(),
            move_id,
        }
    }

    /// A room taken over from another server, as it was there (checked against this server's
    /// limits like any request: a snapshot comes from the network).
    pub(crate) fn restore(
        snapshot: pb::RoomSnapshot,
        node: NodeId,
        limits: Limits,
    ) -> Result<Room, LogicError> {
        let max_members = snapshot.max_members as usize;
        limits::check_max_members(max_members)?;
        if snapshot.members.len() > max_members || snapshot.room_id.is_empty() {
            return Err(LogicError::bad_request("not a room"));
        }
        let properties: BTreeMap<String, String> = snapshot.properties.into_iter().collect();
        limits::check_properties(&properties)?;
        let mut members: Vec<Member> = Vec::with_capacity(snapshot.members.len());
        for m in snapshot.members {
            limits::check_user_id(&m.user_id)?;
            if members.iter().any(|known| known.user == m.user_id) {
                return Err(LogicError::bad_request("a member twice"));
            }
            let gateway = (!m.gateway_node.is_empty()).then(|| NodeId::new(m.gateway_node));
            members.push(Member::new(m.user_id, gateway));
        }
        let owner = members
            .iter()
            .any(|m| m.user == snapshot.owner)
            .then_some(snapshot.owner)
            .or_else(|| members.first().map(|m| m.user.clone()));
        Ok(Room {
            id: snapshot.room_id,
            node,
            owner,
            members,
            max_members,
            properties,
            op_seq: snapshot.op_seq,
            limits,
            persistent: snapshot.persistent,
            affinity: 0,
        })
    }

    pub(crate) fn info_message(&self) -> pb::RoomInfo {
        pb::RoomInfo {
            room_id: self.id.clone(),
            node_id: self.node.to_string(),
            owner: self.owner.clone().unwrap_or_default(),
            members: self.members.iter().map(|m| m.user.clone()).collect(),
            max_members: self.max_members as u32,
            properties: self.properties.clone().into_iter().collect(),
        }
    }

    fn info(&self) -> Bytes {
        Bytes::from(self.info_message().encode_to_vec())
    }
}

fn not_a_member() -> LogicError {
    LogicError::new(errors::NOT_A_MEMBER, "not a member of this room")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(max: usize) -> Room {
        let limits = Limits { max_op_bytes: 8 };
        Room::new("1@r".into(), NodeId::new("r"), max, BTreeMap::new(), limits)
    }

    fn member(user: &str) -> Member {
        Member::new(user, Some(NodeId::new("gw")))
    }

    fn routes_of(outcome: &Outcome) -> Vec<u32> {
        outcome.broadcasts.iter().map(|b| b.route).collect()
    }

    fn info(room: &Room) -> (String, Vec<String>) {
        let info = room.info_message();
        (info.owner, info.members)
    }

    #[test]
    fn the_creator_owns_the_room_and_the_longest_standing_member_inherits_it() {
        let mut r = room(4);
        for user in ["ann", "bob", "cy"] {
            let (reply, outcome) = r.apply(Command::Join(member(user)));
            assert!(reply.is_ok());
            assert_eq!(routes_of(&outcome), vec![routes::PUSH_MEMBER_JOINED]);
        }
        assert_eq!(
            info(&r),
            ("ann".into(), vec!["ann".into(), "bob".into(), "cy".into()])
        );

        let (_, outcome) = r.apply(Command::Leave {
            user: "ann".into(),
            reason: "left",
        });
        assert_eq!(
            routes_of(&outcome),
            vec![routes::PUSH_MEMBER_LEFT, routes::PUSH_OWNER_CHANGED]
        );
        let owner =
            pb::OwnerChanged::decode(outcome.broadcasts[1].payload.clone()).expect("decodes");
        assert_eq!(owner.owner, "bob");
        assert_eq!(
            outcome.broadcasts[1].to.len(),
            2,
            "the remaining members are told"
        );

        let (_, outcome) = r.apply(Command::Leave {
            user: "cy".into(),
            reason: "disconnected",
        });
        assert_eq!(
            routes_of(&outcome),
            vec![routes::PUSH_MEMBER_LEFT],
            "a non-owner leaving changes no owner"
        );
        let left = pb::MemberEvent::decode(outcome.broadcasts[0].payload.clone()).expect("decodes");
        assert_eq!(left.reason, "disconnected");

        let (_, outcome) = r.apply(Command::Leave {
            user: "bob".into(),
            reason: "left",
        });
        assert!(outcome.broadcasts.is_empty(), "nobody is left to tell");
        assert!(r.is_empty());
    }

    #[test]
    fn joins_beyond_the_limit_and_strangers_are_refused() {
        let mut r = room(2);
        let _ = r.apply(Command::Join(member("a")));
        let _ = r.apply(Command::Join(member("b")));
        let (reply, outcome) = r.apply(Command::Join(member("c")));
        assert_eq!(reply.map_err(|e| e.code), Err(errors::ROOM_FULL));
        assert!(outcome.joined.is_none());
        let (again, _) = r.apply(Command::Join(member("a")));
        assert!(again.is_ok(), "joining twice is harmless");
        assert_eq!(r.member_count(), 2);
        let (op, _) = r.apply(Command::Op {
            member: member("c"),
            payload: Bytes::new(),
        });
        assert_eq!(op.map_err(|e| e.code), Err(errors::NOT_A_MEMBER));
        let (leave, _) = r.apply(Command::Leave {
            user: "c".into(),
            reason: "left",
        });
        assert_eq!(leave.map_err(|e| e.code), Err(errors::NOT_A_MEMBER));
    }

    #[test]
    fn operations_are_numbered_in_one_order_and_reach_every_member_including_the_sender() {
        let mut r = room(3);
        let _ = r.apply(Command::Join(member("a")));
        let _ = r.apply(Command::Join(Member::new("b", None)));
        for (i, from) in ["a", "b", "a"].iter().enumerate() {
            let (reply, outcome) = r.apply(Command::Op {
                member: member(from),
                payload: Bytes::from(vec![i as u8]),
            });
            let accepted = pb::OpAccepted::decode(reply.expect("accepted")).expect("decodes");
            assert_eq!(accepted.seq, i as u64 + 1);
            let event =
                pb::RoomOpEvent::decode(outcome.broadcasts[0].payload.clone()).expect("decodes");
            assert_eq!((event.seq, event.from.as_str()), (i as u64 + 1, *from));
            let to: Vec<&str> = outcome.broadcasts[0]
                .to
                .iter()
                .map(|r| r.user_id.as_str())
                .collect();
            assert_eq!(to, vec!["a", "b"]);
        }
        // "b" joined without a known gateway; its own request taught the room where it is.
        assert_eq!(r.members[1].gateway, Some(NodeId::new("gw")));
    }

    #[test]
    fn closing_tells_every_member_why() {
        let mut r = room(3);
        let _ = r.apply(Command::Join(member("a")));
        let _ = r.apply(Command::Join(member("b")));
        let (_, outcome) = r.apply(Command::Close {
            reason: "shutting down",
        });
        assert_eq!(routes_of(&outcome), vec![routes::PUSH_ROOM_CLOSED]);
        assert_eq!(outcome.broadcasts[0].to.len(), 2);
        assert_eq!(outcome.closed, Some(vec!["a".to_owned(), "b".to_owned()]));
        assert!(r.is_empty());
    }

    #[test]
    fn properties_are_set_removed_and_announced() {
        let mut r = room(2);
        let _ = r.apply(Command::Join(member("a")));
        let props = HashMap::from([
            ("map".to_owned(), "dust".to_owned()),
            ("mode".to_owned(), "duel".to_owned()),
        ]);
        let (reply, outcome) = r.apply(Command::SetProperties {
            member: member("a"),
            properties: props,
        });
        assert!(reply.is_ok());
        assert_eq!(routes_of(&outcome), vec![routes::PUSH_PROPERTIES]);
        let remove = HashMap::from([("mode".to_owned(), String::new())]);
        let _ = r.apply(Command::SetProperties {
            member: member("a"),
            properties: remove,
        });
        assert_eq!(
            r.info_message().properties,
            HashMap::from([("map".to_owned(), "dust".to_owned())])
        );
    }

    #[test]
    fn oversized_operations_and_properties_are_refused_and_nothing_is_broadcast() {
        let mut r = room(2);
        let _ = r.apply(Command::Join(member("a")));
        let _ = r.apply(Command::Join(member("b")));
        let (op, outcome) = r.apply(Command::Op {
            member: member("a"),
            payload: Bytes::from_static(b"123456789"),
        });
        assert_eq!(op.map_err(|e| e.code), Err(errors::PAYLOAD_TOO_LARGE));
        assert!(outcome.broadcasts.is_empty());
        let huge = HashMap::from([("k".to_owned(), "v".repeat(5000))]);
        let (set, outcome) = r.apply(Command::SetProperties {
            member: member("a"),
            properties: huge,
        });
        assert_eq!(set.map_err(|e| e.code), Err(errors::PAYLOAD_TOO_LARGE));
        assert!(outcome.broadcasts.is_empty());
        assert!(
            r.info_message().properties.is_empty(),
            "nothing was applied"
        );
        // Up to the limit, every member receives it, numbered from 1: the refusal took no seq.
        let (op, outcome) = r.apply(Command::Op {
            member: member("b"),
            payload: Bytes::from_static(b"12345678"),
        });
        let accepted = pb::OpAccepted::decode(op.expect("accepted")).expect("decodes");
        assert_eq!(accepted.seq, 1);
        assert_eq!(outcome.broadcasts[0].to.len(), 2);
    }

    #[test]
    fn a_user_id_over_the_limit_cannot_join() {
        let mut r = room(2);
        let long = "u".repeat(crate::limits::MAX_USER_ID_BYTES + 1);
        let (join, outcome) = r.apply(Command::Join(member(&long)));
        assert_eq!(
            join.map_err(|e| e.code),
            Err(proto::client::v1::ErrorCode::BadRequest as u32)
        );
        assert!(outcome.joined.is_none() && r.is_empty());
    }

    #[test]
    fn a_restored_room_is_the_room_it_was_and_its_seq_goes_on() {
        let mut r = room(4);
        for user in ["ann", "bob", "cy"] {
            let _ = r.apply(Command::Join(member(user)));
        }
        let _ = r.apply(Command::SetProperties {
            member: member("bob"),
            properties: [("map".to_owned(), "dune".to_owned())].into(),
        });
        for _ in 0..3 {
            let _ = r.apply(Command::Op {
                member: member("cy"),
                payload: Bytes::from_static(b"x"),
            });
        }
        let limits = Limits { max_op_bytes: 8 };
        let mut moved = Room::restore(r.snapshot(7), NodeId::new("r2"), limits).expect("restores");
        let (before, after) = (r.info_message(), moved.info_message());
        assert_eq!(after.node_id, "r2");
        assert_eq!(
            (
                after.room_id,
                after.owner,
                after.members,
                after.max_members,
                after.properties
            ),
            (
                before.room_id,
                before.owner,
                before.members,
                before.max_members,
                before.properties
            )
        );
        let (op, _) = moved.apply(Command::Op {
            member: member("ann"),
            payload: Bytes::from_static(b"y"),
        });
        let accepted = pb::OpAccepted::decode(op.expect("accepted")).expect("decodes");
        assert_eq!(accepted.seq, 4, "the seq continues");
    }

    #[test]
    fn a_snapshot_is_checked_like_any_request() {
        let limits = Limits { max_op_bytes: 8 };
        let mut r = room(2);
        let _ = r.apply(Command::Join(member("ann")));
        let good = r.snapshot(1);
        let restore = |snapshot| Room::restore(snapshot, NodeId::new("r2"), limits).map(|_| ());
        assert!(restore(good.clone()).is_ok());
        let mut twice = good.clone();
        twice.members.push(twice.members[0].clone());
        assert!(restore(twice).is_err(), "a member twice");
        let mut crowded = good.clone();
        crowded.max_members = 1;
        crowded.members.push(pb::SnapshotMember {
            user_id: "bob".into(),
            gateway_node: String::new(),
        });
        assert!(restore(crowded).is_err(), "more members than it takes");
        let mut long = good.clone();
        long.members[0].user_id = "u".repeat(crate::limits::MAX_USER_ID_BYTES + 1);
        assert!(restore(long).is_err(), "a user id over the limit");
        let mut nameless = good;
        nameless.room_id.clear();
        assert!(restore(nameless).is_err(), "no id");
    }
}
