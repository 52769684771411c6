//! Encoding of a [`NodeInfo`] as the string key/values that membership backends gossip or store,
//! and decoding them back. Pure functions: no IO.

use std::net::SocketAddr;

use crate::node::{Load, NodeId, NodeInfo, NodeKind, NodeState, QuorumState};

/// Record keys. Short, because every key travels in every gossip delta.
pub(crate) mod key {
    pub(crate) const KIND: &str = "kind";
    pub(crate) const GRPC: &str = "grpc";
    pub(crate) const DATAGRAM: &str = "dgram";
    pub(crate) const CLIENT: &str = "client";
    pub(crate) const ROUTES: &str = "routes";
    pub(crate) const PUBLIC: &str = "public";
    pub(crate) const STATE: &str = "state";
    pub(crate) const LOAD: &str = "load";
    pub(crate) const VERSION: &str = "version";
    pub(crate) const STARTED: &str = "started";
    pub(crate) const ADMIN: &str = "admin";
    pub(crate) const ROLE: &str = "role";
    pub(crate) const QUORUM: &str = "quorum";
}

/// The `state` value a node publishes just before it leaves: peers drop it at once.
pub(crate) const STATE_LEFT: &str = "left";

/// What a record says about its node.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A member, online or draining.
    Member(Box<NodeInfo>),
    /// The node announced that it left.
    Left,
}

/// A record that cannot be read; the node is ignored (and logged) until it publishes a good one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum RecordError {
    /// A required key is absent (usually a node that has not finished starting).
    #[error("missing key `{0}`")]
    Missing(&'static str),
    /// A key's value does not parse.
    #[error("bad value for `{key}`: {value:?}")]
    Bad { key: &'static str, value: String },
}

/// Encodes the record as key/values.
pub(crate) fn encode(info: &NodeInfo) -> Vec<(&'static str, String)> {
    let mut kv = vec![
        (key::KIND, info.kind.to_string()),
        (key::GRPC, info.grpc_addr.to_string()),
        (key::DATAGRAM, info.datagram_addr.to_string()),
        (key::ROUTES, encode_routes(&info.routes)),
        (key::PUBLIC, encode_routes(&info.public_routes)),
        (key::STATE, info.state.as_str().to_owned()),
        (key::LOAD, encode_load(&info.load)),
        (key::VERSION, info.version.clone()),
        (key::STARTED, info.started_at_ms.to_string()),
        (
            key::ROLE,
            if info.regular { "regular" } else { "temporary" }.to_owned(),
        ),
        (key::QUORUM, info.quorum.as_str().to_owned()),
    ];
    if let Some(admin) = &info.admin_addr {
        kv.push((key::ADMIN, admin.clone()));
    }
    if let Some(client) = &info.client_addr {
        kv.push((key::CLIENT, client.clone()));
    }
    kv
}

/// The `load` value: `sessions,rooms,in_flight,capacity`.
pub(crate) fn encode_load(load: &Load) -> String {
    format!(
        "{},{},{},{}",
        load.sessions, load.rooms, load.in_flight, load.capacity
    )
}

fn encode_routes(routes: &[u32]) -> String {
    let mut out = String::with_capacity(routes.len() * 9);
    for (i, route) in routes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("{route:x}"));
    }
    out
}

/// Decodes a record from a lookup function over its key/values.
pub(crate) fn decode<'a>(
    id: &str,
    get: impl Fn(&str) -> Option<&'a str>,
) -> Result<Decoded, RecordError> {
    let required = |k: &'static str| get(k).ok_or(RecordError::Missing(k));
    let state = match required(key::STATE)? {
        "online" => NodeState::Online,
        "offline" => NodeState::Offline,
        STATE_LEFT => return Ok(Decoded::Left),
        other => return Err(bad(key::STATE, other)),
    };
    let addr = |k: &'static str| -> Result<SocketAddr, RecordError> {
        let v = required(k)?;
        v.parse().map_err(|_| bad(k, v))
    };
    let routes = decode_routes(key::ROUTES, get(key::ROUTES).unwrap_or(""))?;
    let public_routes = decode_routes(key::PUBLIC, get(key::PUBLIC).unwrap_or(""))?;
    let load_value = required(key::LOAD)?;
    let load = decode_load(load_value).ok_or_else(|| bad(key::LOAD, load_value))?;
    let started = required(key::STARTED)?;
    // Absent in records of older versions: a temporary node with no configuration.
    let regular = match get(key::ROLE).unwrap_or("temporary") {
        "regular" => true,
        "temporary" => false,
        other => return Err(bad(key::ROLE, other)),
    };
    let quorum_value = get(key::QUORUM).unwrap_or("unmanaged");
    let quorum = QuorumState::parse(quorum_value).ok_or_else(|| bad(key::QUORUM, quorum_value))?;
    Ok(Decoded::Member(Box::new(NodeInfo {
        id: NodeId::new(id),
        kind: NodeKind::new(required(key::KIND)?),
        grpc_addr: addr(key::GRPC)?,
        datagram_addr: addr(key::DATAGRAM)?,
        client_addr: get(key::CLIENT).map(str::to_owned),
        routes,
        public_routes,
        state,
        load,
        version: get(key::VERSION).unwrap_or("").to_owned(),
        started_at_ms: started.parse().map_err(|_| bad(key::STARTED, started))?,
        admin_addr: get(key::ADMIN).map(str::to_owned),
        regular,
        quorum,
    })))
}

fn decode_routes(key: &'static str, value: &str) -> Result<Vec<u32>, RecordError> {
    let mut routes = Vec::new();
    for part in value.split(',').filter(|p| !p.is_empty()) {
        routes.push(u32::from_str_radix(part, 16).map_err(|_| bad(key, value))?);
    }
    routes.sort_unstable();
    routes.dedup();
    Ok(routes)
}

fn decode_load(value: &str) -> Option<Load> {
    let mut parts = value.split(',').map(|p| p.parse::<u64>());
    let load = Load {
        sessions: parts.next()?.ok()?,
        rooms: parts.next()?.ok()?,
        in_flight: parts.next()?.ok()?,
        capacity: parts.next()?.ok()?,
    };
    parts.next().is_none().then_some(load)
}

fn bad(key: &'static str, value: &str) -> RecordError {
    RecordError::Bad {
        key,
        value: value.chars().take(64).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn sample() -> NodeInfo {
        NodeInfo {
            id: NodeId::new("room-1"),
            kind: NodeKind::new("room"),
            grpc_addr: "127.0.0.1:7200".parse().expect("literal"),
            datagram_addr: "127.0.0.1:7201".parse().expect("literal"),
            client_addr: None,
            routes: vec![0x0002_0001, 0x0002_0002],
            public_routes: vec![0x0002_0001],
            state: NodeState::Online,
            load: Load {
                sessions: 3,
                rooms: 1,
                in_flight: 0,
                capacity: 1000,
            },
            version: "0.1.0".into(),
            started_at_ms: 1_700_000_000_000,
            admin_addr: Some("127.0.0.1:7202".into()),
            regular: true,
            quorum: QuorumState::Serving,
        }
    }

    fn check(
        mut edit: impl FnMut(&mut HashMap<&'static str, String>),
        expected: Result<(), RecordError>,
    ) {
        let info = sample();
        let mut kv: HashMap<&'static str, String> = encode(&info).into_iter().collect();
        edit(&mut kv);
        let decoded = decode("room-1", |k| kv.get(k).map(String::as_str));
        match expected {
            Ok(()) => assert_eq!(decoded, Ok(Decoded::Member(Box::new(info)))),
            Err(err) => assert_eq!(decoded, Err(err)),
        }
    }

    #[test]
    fn records_round_trip_and_reject_bad_values() {
        check(|_| {}, Ok(()));
        check(
            |kv| drop(kv.remove(key::KIND)),
            Err(RecordError::Missing(key::KIND)),
        );
        check(
            |kv| drop(kv.insert(key::LOAD, "1,2,3".into())),
            Err(RecordError::Bad {
                key: key::LOAD,
                value: "1,2,3".into(),
            }),
        );
        check(
            |kv| drop(kv.insert(key::GRPC, "nowhere".into())),
            Err(RecordError::Bad {
                key: key::GRPC,
                value: "nowhere".into(),
            }),
        );
        check(
            |kv| drop(kv.insert(key::ROUTES, "zz".into())),
            Err(RecordError::Bad {
                key: key::ROUTES,
                value: "zz".into(),
            }),
        );
        check(
            |kv| drop(kv.insert(key::STATE, "sleepy".into())),
            Err(RecordError::Bad {
                key: key::STATE,
                value: "sleepy".into(),
            }),
        );
    }

    #[test]
    fn a_left_node_decodes_as_left() {
        let decoded = decode("x", |k| (k == key::STATE).then_some(STATE_LEFT));
        assert_eq!(decoded, Ok(Decoded::Left));
    }
}
