//! Node events derived from two successive member lists. Pure: no IO, table-tested.

use crate::{membership::Members, node::NodeInfo};

/// Something that happened to a node, as seen by this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// A node joined the cluster (or this node learned about it).
    Joined(NodeInfo),
    /// A node went offline: it is draining and takes no new work.
    WentOffline(NodeInfo),
    /// A draining node came back online.
    CameOnline(NodeInfo),
    /// A node published new load figures.
    LoadChanged(NodeInfo),
    /// A node changed another part of its record (its routes, say).
    Updated(NodeInfo),
    /// A node left or died; this is its last known record.
    Gone(NodeInfo),
}

impl NodeEvent {
    /// The node the event is about.
    pub fn node(&self) -> &NodeInfo {
        match self {
            NodeEvent::Joined(n)
            | NodeEvent::WentOffline(n)
            | NodeEvent::CameOnline(n)
            | NodeEvent::LoadChanged(n)
            | NodeEvent::Updated(n)
            | NodeEvent::Gone(n) => n,
        }
    }
}

/// The events that turn `before` into `after`, in node id order; per node: state, then load,
/// then other changes.
pub(crate) fn diff(before: &Members, after: &Members) -> Vec<NodeEvent> {
    let mut events = Vec::new();
    for (id, next) in after {
        let Some(prev) = before.get(id) else {
            events.push(NodeEvent::Joined(next.clone()));
            continue;
        };
        if prev == next {
            continue;
        }
        if prev.state != next.state {
            events.push(if next.is_online() {
                NodeEvent::CameOnline(next.clone())
            } else {
                NodeEvent::WentOffline(next.clone())
            });
        }
        if prev.load != next.load {
            events.push(NodeEvent::LoadChanged(next.clone()));
        }
        let same_otherwise = NodeInfo {
            state: next.state,
            load: next.load,
            ..prev.clone()
        } == *next;
        if !same_otherwise {
            events.push(NodeEvent::Updated(next.clone()));
        }
    }
    for (id, prev) in before {
        if !after.contains_key(id) {
            events.push(NodeEvent::Gone(prev.clone()));
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{Load, NodeId, NodeKind, NodeState};

    fn node(id: &str, state: NodeState, sessions: u64) -> NodeInfo {
        NodeInfo {
            id: NodeId::new(id),
            kind: NodeKind::new("room"),
            grpc_addr: "127.0.0.1:1".parse().expect("literal"),
            datagram_addr: "127.0.0.1:2".parse().expect("literal"),
            client_addr: None,
            routes: vec![],
            public_routes: vec![],
            state,
            load: Load {
                sessions,
                ..Load::default()
            },
            version: "1".into(),
            started_at_ms: 1,
            admin_addr: None,
            regular: false,
            quorum: Default::default(),
        }
    }

    fn members(nodes: &[NodeInfo]) -> Members {
        nodes.iter().map(|n| (n.id.clone(), n.clone())).collect()
    }

    fn check(before: Vec<NodeInfo>, after: Vec<NodeInfo>, expected: &[&str]) {
        let events = diff(&members(&before), &members(&after));
        let got: Vec<String> = events
            .iter()
            .map(|e| {
                let name = match e {
                    NodeEvent::Joined(_) => "joined",
                    NodeEvent::WentOffline(_) => "offline",
                    NodeEvent::CameOnline(_) => "online",
                    NodeEvent::LoadChanged(_) => "load",
                    NodeEvent::Updated(_) => "updated",
                    NodeEvent::Gone(_) => "gone",
                };
                format!("{name} {}", e.node().id)
            })
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn events_follow_membership_changes() {
        use NodeState::*;
        let a = node("a", Online, 0);
        let b = node("b", Online, 0);
        check(
            vec![],
            vec![a.clone(), b.clone()],
            &["joined a", "joined b"],
        );
        check(vec![a.clone(), b.clone()], vec![a.clone(), b.clone()], &[]);
        check(vec![a.clone(), b.clone()], vec![a.clone()], &["gone b"]);
        check(vec![a.clone()], vec![node("a", Offline, 0)], &["offline a"]);
        check(vec![node("a", Offline, 0)], vec![a.clone()], &["online a"]);
        check(vec![a.clone()], vec![node("a", Online, 5)], &["load a"]);
        check(
            vec![a.clone()],
            vec![node("a", Offline, 5)],
            &["offline a", "load a"],
        );
        let mut routed = a.clone();
        routed.routes = vec![7];
        check(vec![a.clone()], vec![routed], &["updated a"]);
        check(
            vec![a.clone(), b.clone()],
            vec![node("a", Offline, 0)],
            &["offline a", "gone b"],
        );
    }
}
