//! Which node a request goes to. The decision is a pure function of the route table, the
//! user's bindings and the nodes' load (table-tested); the route table is derived from the
//! member list and cached until the list changes.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, RwLock, atomic::AtomicU64},
    time::{Duration, Instant},
};

use crate::{binding::Binding, refusal::Refusal};
use mesh::{NodeId, NodeInfo, membership::Members};

/// Routes and who serves them, from one member list.
pub(crate) struct RouteTable {
    pub(crate) members: Arc<Members>,
    /// Every member serving a route (online or draining), in node id order.
    by_route: HashMap<u32, Vec<NodeId>>,
    public: HashSet<u32>,
}

impl RouteTable {
    pub(crate) fn new(members: Arc<Members>) -> Self {
        let mut by_route: HashMap<u32, Vec<NodeId>> = HashMap::new();
        let mut public = HashSet::new();
        for node in members.values() {
            for route in &node.routes {
                by_route.entry(*route).or_default().push(node.id.clone());
            }
            public.extend(node.public_routes.iter().copied());
        }
        Self {
            members,
            by_route,
            public,
        }
    }

    /// The routes `node` serves now (for a new binding).
    pub(crate) fn routes_of(&self, node: &NodeId) -> Option<Arc<[u32]>> {
        self.members
            .get(node)
            .map(|n| Arc::from(n.routes.as_slice()))
    }
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// To this node; `bound` when a binding chose it.
    Send { node: NodeId, bound: bool },
    /// Answered by the gateway with this refusal.
    Refuse(Refusal),
}

/// Decides where a request for `route` goes. Returns the bindings to drop (nodes that served
/// the route and are gone) with the decision.
///
/// 1. The first binding (in bind order) whose node is a member serving the route wins, even
///    if the node is draining: it finishes existing work.
/// 2. A binding whose node is gone but served the route fails the request with
///    `BOUND_NODE_UNAVAILABLE`, unless the route falls back to normal selection.
/// 3. Not logged in and not a public route (known or not): `LOGIN_REQUIRED`, so anonymous
///    clients cannot probe which routes exist. Unknown route: `ROUTE_NOT_FOUND`.
/// 4. Otherwise the least loaded of two random online nodes serving the route; never a
///    draining node, and not a node whose calls just failed (`healthy` false) unless no other
///    is left. None online: `NO_NODE_AVAILABLE`.
#[allow(clippy::too_many_arguments)] // one pure decision over every input it depends on
pub(crate) fn decide(
    table: &RouteTable,
    route: u32,
    logged_in: bool,
    bindings: &[Binding],
    fallback: bool,
    load: impl Fn(&NodeInfo) -> (u64, u64),
    healthy: impl Fn(&NodeId) -> bool,
    random: impl FnMut(usize) -> usize,
) -> (Decision, Vec<NodeId>) {
    let mut gone = Vec::new();
    for binding in bindings {
        match table.members.get(&binding.node) {
            Some(node) if node.serves(route) => {
                return (
                    Decision::Send {
                        node: node.id.clone(),
                        bound: true,
                    },
                    gone,
                );
            }
            Some(_) => {}
            None if binding.served(route) => {
                gone.push(binding.node.clone());
                if !fallback {
                    return (Decision::Refuse(Refusal::BoundNodeGone), gone);
                }
            }
            None => {}
        }
    }
    if !logged_in && !table.public.contains(&route) {
        return (Decision::Refuse(Refusal::LoginRequired), gone);
    }
    let Some(serving) = table.by_route.get(&route) else {
        return (Decision::Refuse(Refusal::RouteNotFound), gone);
    };
    let mut online: Vec<&NodeInfo> = serving
        .iter()
        .filter_map(|id| table.members.get(id))
        .filter(|n| n.is_online())
        .collect();
    if online.iter().any(|n| healthy(&n.id)) {
        online.retain(|n| healthy(&n.id));
    }
    let decision = match pick_least_loaded(&online, load, random) {
        Some(node) => Decision::Send {
            node: node.id.clone(),
            bound: false,
        },
        None => Decision::Refuse(Refusal::NoNodeAvailable),
    };
    (decision, gone)
}

/// Power of two choices: the lesser loaded of two distinct random candidates.
fn pick_least_loaded<'a>(
    nodes: &[&'a NodeInfo],
    load: impl Fn(&NodeInfo) -> (u64, u64),
    mut random: impl FnMut(usize) -> usize,
) -> Option<&'a NodeInfo> {
    match nodes.len() {
        0 => None,
        1 => Some(nodes[0]),
        len => {
            let a = random(len);
            let b = (a + 1 + random(len - 1)) % len;
            let (na, nb) = (nodes[a], nodes[b]);
            Some(if load(nb) < load(na) { nb } else { na })
        }
    }
}

/// How long a node whose call failed is left out of unbound selection (unless it answers
/// sooner, or failure detection removes it first).
const SUSPECT_FOR: Duration = Duration::from_secs(5);

/// The gateway's router: the cached route table, requests in flight per node, and nodes whose
/// calls just failed.
#[derive(Default)]
pub(crate) struct Router {
    cached: Mutex<Option<Arc<RouteTable>>>,
    in_flight: RwLock<HashMap<NodeId, Arc<AtomicU64>>>,
    suspects: RwLock<HashMap<NodeId, Instant>>,
}

impl Router {
    /// The route table for `members`, rebuilt only when the member list changed.
    pub(crate) fn table(&self, members: Arc<Members>) -> Arc<RouteTable> {
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(table) = cached.as_ref()
            && Arc::ptr_eq(&table.members, &members)
        {
            return table.clone();
        }
        let table = Arc::new(RouteTable::new(members));
        *cached = Some(table.clone());
        drop(cached);
        // Forget nodes that left, so churn (restarts under new ids) does not grow the maps.
        let members = &table.members;
        self.in_flight
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|node, _| members.contains_key(node));
        self.suspects
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|node, until| members.contains_key(node) && Instant::now() < *until);
        table
    }

    /// The in-flight counter of requests this gateway has sent to `node`.
    pub(crate) fn counter(&self, node: &NodeId) -> Arc<AtomicU64> {
        if let Some(counter) = self
            .in_flight
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(node)
        {
            return counter.clone();
        }
        let mut map = self
            .in_flight
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(node.clone()).or_default().clone()
    }

    /// A call to `node` failed at the transport level: leave it out for a while.
    pub(crate) fn suspect(&self, node: &NodeId) {
        let mut suspects = self
            .suspects
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        suspects.insert(node.clone(), Instant::now() + SUSPECT_FOR);
    }

    /// A call to `node` succeeded.
    pub(crate) fn answered(&self, node: &NodeId) {
        let read = self
            .suspects
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if read.is_empty() || !read.contains_key(node) {
            return;
        }
        drop(read);
        self.suspects
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(node);
    }

    /// False while `node` is suspected.
    pub(crate) fn is_healthy(&self, node: &NodeId) -> bool {
        let suspects = self
            .suspects
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        suspects
            .get(node)
            .is_none_or(|until| Instant::now() >= *until)
    }

    /// Load of a node as this gateway sees it: its own requests in flight there, then the
    /// node's reported in-flight requests plus sessions.
    pub(crate) fn load(&self, node: &NodeInfo) -> (u64, u64) {
        let local = self
            .in_flight
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&node.id)
            .map_or(0, |c| c.load(std::sync::atomic::Ordering::Relaxed));
        (local, node.load.in_flight + node.load.sessions)
    }
}

#[cfg(test)]
mod tests {
    use mesh::{Load, NodeKind, NodeState};

    use super::*;

    fn node(
        id: &str,
        routes: &[u32],
        public: &[u32],
        state: NodeState,
        in_flight: u64,
    ) -> NodeInfo {
        NodeInfo {
            id: NodeId::new(id),
            kind: NodeKind::new("room"),
            grpc_addr: "127.0.0.1:1".parse().expect("literal"),
            datagram_addr: "127.0.0.1:1".parse().expect("literal"),
            client_addr: None,
            routes: routes.to_vec(),
            public_routes: public.to_vec(),
            state,
            load: Load {
                in_flight,
                ..Load::default()
            },
            version: String::new(),
            started_at_ms: 0,
            admin_addr: None,
            regular: false,
            quorum: mesh::QuorumState::Unmanaged,
        }
    }

    fn table(nodes: Vec<NodeInfo>) -> RouteTable {
        RouteTable::new(Arc::new(
            nodes.into_iter().map(|n| (n.id.clone(), n)).collect(),
        ))
    }

    fn bound(id: &str, routes: &[u32]) -> Binding {
        Binding {
            node: NodeId::new(id),
            routes: Arc::from(routes),
        }
    }

    const LOGIN: u32 = 0x1_0001;
    const PLAY: u32 = 0x2_0001;

    fn check(
        nodes: Vec<NodeInfo>,
        route: u32,
        logged_in: bool,
        bindings: &[Binding],
        fallback: bool,
        expected: &str,
        expected_gone: &[&str],
    ) {
        let table = table(nodes);
        let mut draws = [0usize, 0].into_iter();
        let (decision, gone) = decide(
            &table,
            route,
            logged_in,
            bindings,
            fallback,
            |n| (n.load.in_flight, 0),
            |id| id.as_str() != "sick",
            |_| draws.next().unwrap_or(0),
        );
        let got = match decision {
            Decision::Send { node, bound: true } => format!("bound {node}"),
            Decision::Send { node, bound: false } => format!("send {node}"),
            Decision::Refuse(refusal) => {
                wire::envelope::code_name(refusal.code() as u32).to_owned()
            }
        };
        assert_eq!(got, expected);
        let gone: Vec<&str> = gone.iter().map(NodeId::as_str).collect();
        assert_eq!(gone, expected_gone);
    }

    #[test]
    fn routing_rules() {
        use NodeState::*;
        let a = || node("a", &[LOGIN, PLAY], &[LOGIN], Online, 5);
        let b = || node("b", &[PLAY], &[], Online, 1);
        let b_draining = || node("b", &[PLAY], &[], Offline, 0);
        // Unknown route, before or after login.
        // Before login an unknown route is LOGIN_REQUIRED too: the gateway does not tell
        // anonymous clients which routes exist.
        check(
            vec![a()],
            0x9_0009,
            false,
            &[],
            false,
            "login_required",
            &[],
        );
        check(
            vec![a()],
            0x9_0009,
            true,
            &[],
            false,
            "route_not_found",
            &[],
        );
        // Login required, except on public routes.
        check(vec![a()], PLAY, false, &[], false, "login_required", &[]);
        check(vec![a()], LOGIN, false, &[], false, "send a", &[]);
        // Unbound: the less loaded of the two candidates.
        check(vec![a(), b()], PLAY, true, &[], false, "send b", &[]);
        // Never a draining node for unbound requests...
        check(
            vec![a(), b_draining()],
            PLAY,
            true,
            &[],
            false,
            "send a",
            &[],
        );
        check(
            vec![b_draining()],
            PLAY,
            true,
            &[],
            false,
            "no_node_available",
            &[],
        );
        // ...but a bound node that drains keeps its users.
        check(
            vec![a(), b_draining()],
            PLAY,
            true,
            &[bound("b", &[PLAY])],
            false,
            "bound b",
            &[],
        );
        // The first binding (in bind order) serving the route wins.
        check(
            vec![a(), b()],
            PLAY,
            true,
            &[bound("a", &[PLAY]), bound("b", &[PLAY])],
            false,
            "bound a",
            &[],
        );
        check(
            vec![a(), b()],
            LOGIN,
            true,
            &[bound("b", &[PLAY]), bound("a", &[LOGIN])],
            false,
            "bound a",
            &[],
        );
        // A binding that does not serve the route is skipped.
        check(
            vec![a(), b()],
            LOGIN,
            true,
            &[bound("b", &[PLAY])],
            false,
            "send a",
            &[],
        );
        // A bound node that is gone: refused and dropped, or fall back when configured.
        check(
            vec![a()],
            PLAY,
            true,
            &[bound("b", &[PLAY])],
            false,
            "bound_node_unavailable",
            &["b"],
        );
        check(
            vec![a()],
            PLAY,
            true,
            &[bound("b", &[PLAY])],
            true,
            "send a",
            &["b"],
        );
        check(
            vec![],
            PLAY,
            true,
            &[bound("b", &[PLAY])],
            true,
            "route_not_found",
            &["b"],
        );
        // A node whose calls just failed is left out, unless it is the only one.
        let sick = || node("sick", &[PLAY], &[], Online, 0);
        check(vec![a(), sick()], PLAY, true, &[], false, "send a", &[]);
        check(vec![sick()], PLAY, true, &[], false, "send sick", &[]);
        // A gone binding that never served the route is irrelevant to it.
        check(
            vec![a()],
            LOGIN,
            true,
            &[bound("b", &[PLAY])],
            false,
            "send a",
            &[],
        );
    }
}
