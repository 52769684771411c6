//! Placing a formed match: ask every room server for its load (request / multiple-response),
//! create the room on the emptiest one (the next if that fails), bind the players to it
//! through the gateways, and tell them.

use std::time::Duration;

use bytes::Bytes;
use logic_sdk::{BindMode, Recipient, Sdk};
use mesh::{NodeId, NodeKind};
use prost::Message;
use proto::{
    matchmaking::v1::{self as mm, routes as match_routes},
    room::v1::{self as room, routes as room_routes},
};
use tracing::{info, warn};

use crate::queue::Ticket;

/// Why a match could not be placed (the players stay queued).
#[derive(Debug)]
pub(crate) struct NotPlaced(pub(crate) String);

/// Room servers ordered for placement: fewest rooms, then fewest members, then node id;
/// full ones left out.
pub(crate) fn rank(mut reports: Vec<room::LoadReport>) -> Vec<room::LoadReport> {
    reports.retain(|r| r.capacity == 0 || r.rooms < r.capacity);
    reports.sort_by(|a, b| (a.rooms, a.members, &a.node_id).cmp(&(b.rooms, b.members, &b.node_id)));
    reports
}

pub(crate) async fn place(
    sdk: &Sdk,
    mode: &str,
    tickets: &[Ticket],
    collect_timeout: Duration,
) -> Result<room::RoomInfo, NotPlaced> {
    let answers = sdk
        .call_kind(
            NodeKind::ROOM,
            room_routes::MESH_LOAD,
            room::RoomRef::default().encode_to_vec(),
            collect_timeout,
        )
        .await;
    for (node, error) in &answers.failed {
        warn!(%node, %error, "room server skipped: it did not report its load");
    }
    let reports: Vec<room::LoadReport> = answers
        .replies
        .iter()
        .filter_map(
            |(node, bytes)| match room::LoadReport::decode(bytes.clone()) {
                Ok(report) => Some(room::LoadReport {
                    node_id: node.id.to_string(),
                    ..report
                }),
                Err(error) => {
                    warn!(node = %node.id, %error, "room server skipped: unreadable load report");
                    None
                }
            },
        )
        .collect();
    let candidates = rank(reports);
    if candidates.is_empty() {
        return Err(NotPlaced("no room server is available".into()));
    }
    let request = room::CreateRoomFor {
        members: tickets
            .iter()
            .map(|t| room::Member {
                user_id: t.user.clone(),
                gateway_node: t
                    .gateway
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            })
            .collect(),
        max_members: tickets.len() as u32,
        properties: [("mode".to_owned(), mode.to_owned())].into(),
    };
    for candidate in candidates {
        let node = NodeId::new(candidate.node_id.as_str());
        match sdk
            .mesh()
            .request_message::<_, room::RoomInfo>(&node, room_routes::MESH_CREATE_FOR, &request)
            .await
        {
            Ok(info) => {
                info!(room = %info.room_id, %node, rooms = candidate.rooms, members = candidate.members, "match placed");
                return Ok(info);
            }
            Err(error) => warn!(%node, %error, "room creation failed; trying the next room server"),
        }
    }
    Err(NotPlaced("every room server refused the room".into()))
}

/// Binds the players to the room's server and tells them where their match is.
pub(crate) async fn announce(sdk: &Sdk, mode: &str, tickets: &[Ticket], info: &room::RoomInfo) {
    let users: Vec<String> = tickets.iter().map(|t| t.user.clone()).collect();
    let node = NodeId::new(info.node_id.as_str());
    match sdk
        .bind(BindMode::Cover, &users, std::slice::from_ref(&node))
        .await
    {
        Ok(report) => {
            for (gateway, error) in &report.failed_gateways {
                warn!(%gateway, %error, room = %info.room_id, "a gateway did not confirm the room binding");
            }
        }
        Err(error) => warn!(%error, room = %info.room_id, "binding the players to the room failed"),
    }
    let found = mm::MatchFound {
        mode: mode.to_owned(),
        room_id: info.room_id.clone(),
        room_node: info.node_id.clone(),
        members: users,
    };
    let recipients = tickets.iter().map(|t| Recipient {
        user_id: t.user.clone(),
        gateway: t.gateway.clone(),
    });
    if let Err(error) = sdk
        .push(
            recipients,
            match_routes::PUSH_MATCH_FOUND,
            Bytes::from(found.encode_to_vec()),
        )
        .await
    {
        warn!(%error, room = %info.room_id, "telling the players about their match failed");
    }
}

/// Tells queued players their match is delayed.
pub(crate) async fn delayed(sdk: &Sdk, mode: &str, tickets: &[Ticket], reason: &str) {
    let message = mm::MatchDelayed {
        mode: mode.to_owned(),
        reason: reason.to_owned(),
    };
    let recipients = tickets.iter().map(|t| Recipient {
        user_id: t.user.clone(),
        gateway: t.gateway.clone(),
    });
    let _ = sdk
        .push(
            recipients,
            match_routes::PUSH_MATCH_DELAYED,
            Bytes::from(message.encode_to_vec()),
        )
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: &str, rooms: u64, members: u64, capacity: u64) -> room::LoadReport {
        room::LoadReport {
            node_id: node.into(),
            rooms,
            members,
            capacity,
        }
    }

    #[test]
    fn the_emptiest_room_server_comes_first() {
        let ranked = rank(vec![
            report("r1", 3, 6, 0),
            report("r2", 1, 9, 0),
            report("r3", 1, 2, 0),
            report("r0", 1, 2, 0),
            report("full", 0, 0, 0),
        ]);
        let order: Vec<&str> = ranked.iter().map(|r| r.node_id.as_str()).collect();
        assert_eq!(
            order,
            vec!["full", "r0", "r3", "r2", "r1"],
            "fewest rooms, then members, then node id"
        );
        let ranked = rank(vec![report("capped", 2, 0, 2), report("open", 5, 0, 10)]);
        assert_eq!(ranked.len(), 1, "a server at its room capacity is left out");
        assert_eq!(ranked[0].node_id, "open");
    }
}
