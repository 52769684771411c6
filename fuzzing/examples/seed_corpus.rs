//! Writes the seed inputs of every fuzz target into `fuzz/corpus/<target>/seed-*`, built with
//! the project's own encoders: `cargo run -p fuzzing --example seed_corpus`. The fuzzers grow
//! the corpus from these; `cargo fuzz cmin` keeps it small (see fuzz/README.md).

use std::{fs, path::PathBuf};

use bytes::Bytes;
use mesh::{Load, NodeId, NodeInfo, NodeKind, NodeState, fuzzing::encode_record};
use prost::Message;
use proto::{
    client::v1::{Envelope, Kind, Redirect, Resume},
    mesh::v1::{HandlerError, MeshDatagram, MeshReply, MeshRequest},
    room::v1::{self as room, routes},
};
use tungstenite::{WebSocket, protocol::Role};

fn main() -> std::io::Result<()> {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(format!("seed-{name}")), bytes)
    };

    for (name, envelope) in envelopes() {
        write("envelope", name, &envelope.encode_to_vec())?;
    }

    // frame_codec: limit selector 3 (the default limit), no read sizes: the whole stream.
    let mut two_frames = vec![3, 0];
    for (_, envelope) in envelopes().into_iter().take(2) {
        let body = envelope.encode_to_vec();
        two_frames.extend_from_slice(&(body.len() as u32).to_be_bytes());
        two_frames.extend_from_slice(&body);
    }
    write("frame_codec", "two-frames", &two_frames)?;
    // The same, read one byte at a time.
    let mut bytewise = vec![3, 1, 0, 1];
    bytewise.extend_from_slice(&two_frames[2..]);
    write("frame_codec", "two-frames-bytewise", &bytewise)?;
    // A prefix far above the limit, a frame just above a small limit, a truncated frame.
    write(
        "frame_codec",
        "huge-prefix",
        &[3, 0, 0xff, 0xff, 0xff, 0xff, 1, 2],
    )?;
    write(
        "frame_codec",
        "over-small-limit",
        &[0, 4, 0, 0, 0, 0, 5, 1, 2, 3, 4, 5],
    )?;
    write("frame_codec", "truncated", &[3, 0, 0, 0, 0, 9, 1, 2, 3])?;

    // ws_bytes: limit selector, read size, then what a tungstenite client writes.
    let messages = [
        (
            "binary",
            tungstenite::Message::binary(&b"\x08\x01\x10\x02"[..]),
        ),
        ("text", tungstenite::Message::text("hello")),
        (
            "ping",
            tungstenite::Message::Ping(Bytes::from_static(b"ping")),
        ),
        ("close", tungstenite::Message::Close(None)),
    ];
    let mut conversation = vec![255, 7];
    for (name, message) in messages {
        let written = client_bytes(message);
        write("ws_bytes", name, &[[255, 0].as_slice(), &written].concat())?;
        conversation.extend_from_slice(&written);
    }
    write("ws_bytes", "conversation", &conversation)?;
    let oversized = client_bytes(tungstenite::Message::binary(vec![7u8; 100]));
    write(
        "ws_bytes",
        "over-limit",
        &[[10, 0].as_slice(), &oversized].concat(),
    )?;

    // ws_frames and the datagram's sealed mode read structure from bytes: a few patterns.
    for (name, bytes) in patterns() {
        write("ws_frames", name, &bytes)?;
        write(
            "datagram",
            &format!("sealed-{name}"),
            &[[2].as_slice(), &bytes].concat(),
        )?;
    }

    for (name, info) in nodes() {
        let mut text = format!("{}\n", info.id);
        for (key, value) in encode_record(&info) {
            text.push_str(&format!("{key}={value}\n"));
        }
        write("gossip_record", name, text.as_bytes())?;
    }
    write("gossip_record", "left", b"room-9\nstate=left\n")?;
    write(
        "gossip_record",
        "missing-kind",
        b"room-9\nstate=online\nload=1,2,3,4\n",
    )?;

    // datagram, mode 1: a valid tag over the body; mode 0: as received (no valid tag).
    let message = MeshDatagram {
        command: 0x1101,
        from_node: "room-1".into(),
        payload: Bytes::from_static(b"\x0a\x04room"),
    };
    write(
        "datagram",
        "tagged",
        &[[1].as_slice(), &message.encode_to_vec()].concat(),
    )?;
    write(
        "datagram",
        "untagged",
        &[[0].as_slice(), &[0; 16], &message.encode_to_vec()].concat(),
    )?;

    for (name, request) in mesh_requests() {
        write("mesh_payload", name, &request.encode_to_vec())?;
    }
    let report = room::LoadReport {
        node_id: "room-1".into(),
        rooms: 3,
        members: 12,
        capacity: 100,
    };
    let replies = [
        (
            "reply-load",
            MeshReply {
                payload: report.encode_to_vec().into(),
                error: None,
            },
        ),
        (
            "reply-error",
            MeshReply {
                payload: Bytes::new(),
                error: Some(HandlerError {
                    code: 1,
                    message: "bad payload".into(),
                    no_handler: false,
                }),
            },
        ),
    ];
    for (name, reply) in replies {
        write("mesh_payload", name, &reply.encode_to_vec())?;
    }
    Ok(())
}

fn envelopes() -> Vec<(&'static str, Envelope)> {
    vec![
        (
            "request",
            wire::envelope::request(7, routes::JOIN, Bytes::from_static(b"\x0a\x03r-1")),
        ),
        ("heartbeat", wire::envelope::heartbeat()),
        (
            "response",
            wire::envelope::response(7, routes::JOIN, 1001, "no such room".into(), Bytes::new()),
        ),
        (
            "push",
            wire::envelope::push(42, routes::PUSH_OP, Bytes::from_static(b"op")),
        ),
        ("kick", wire::envelope::kick(15, "logged in elsewhere")),
        ("offline", wire::envelope::offline(10_000)),
        (
            "redirect",
            wire::envelope::redirect(3, 65537, vec!["tcp://127.0.0.1:7011".into()]),
        ),
        (
            "reserved",
            Envelope {
                kind: Kind::Resume as i32,
                redirect: Some(Redirect {
                    address: "ws://127.0.0.1:7000/ws".into(),
                    addresses: vec!["ws://127.0.0.1:7000/ws".into()],
                }),
                resume: Some(Resume {
                    token: "t".into(),
                    last_seq: 9,
                    user_id: "u".into(),
                }),
                ..Envelope::default()
            },
        ),
    ]
}

/// What a client writes for one message (masked, as clients must).
fn client_bytes(message: tungstenite::Message) -> Vec<u8> {
    let mut socket = WebSocket::from_raw_socket(Sink(Vec::new()), Role::Client, None);
    socket.send(message).expect("writing to memory");
    std::mem::take(&mut socket.get_mut().0)
}

struct Sink(Vec<u8>);

impl std::io::Read for Sink {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Ok(0)
    }
}

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn patterns() -> Vec<(&'static str, Vec<u8>)> {
    let mut state = 0x2545_f491_u32;
    let noise = (0..256)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    vec![
        ("zeros", vec![0; 64]),
        ("counting", (0..=255).collect()),
        ("noise", noise),
    ]
}

fn nodes() -> Vec<(&'static str, NodeInfo)> {
    let room = NodeInfo {
        id: NodeId::new("room-1"),
        kind: NodeKind::new(NodeKind::ROOM),
        grpc_addr: "127.0.0.1:7200".parse().expect("literal"),
        datagram_addr: "127.0.0.1:7201".parse().expect("literal"),
        client_addr: None,
        routes: vec![routes::CREATE, routes::JOIN, routes::OP],
        public_routes: vec![],
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
        regular: false,
        quorum: mesh::QuorumState::Unmanaged,
    };
    let gateway = NodeInfo {
        id: NodeId::new("gateway-1"),
        kind: NodeKind::new(NodeKind::GATEWAY),
        grpc_addr: "[::1]:7100".parse().expect("literal"),
        datagram_addr: "[fe80::1%2]:7101".parse().expect("literal"),
        client_addr: Some("ws://127.0.0.1:7000/ws".into()),
        routes: vec![],
        public_routes: vec![],
        state: NodeState::Offline,
        load: Load::default(),
        version: String::new(),
        started_at_ms: 0,
        admin_addr: None,
        regular: true,
        quorum: mesh::QuorumState::Fenced,
    };
    let matcher = NodeInfo {
        id: NodeId::new("match-1"),
        kind: NodeKind::new(NodeKind::MATCH),
        routes: vec![
            proto::matchmaking::v1::routes::LOGIN,
            proto::matchmaking::v1::routes::ENQUEUE,
        ],
        public_routes: vec![proto::matchmaking::v1::routes::LOGIN],
        ..room.clone()
    };
    vec![("room", room), ("gateway", gateway), ("match", matcher)]
}

fn mesh_requests() -> Vec<(&'static str, MeshRequest)> {
    let member = |user: &str| room::Member {
        user_id: user.into(),
        gateway_node: "gateway-1".into(),
    };
    let create = room::CreateRoomFor {
        members: vec![member("alice"), member("bob")],
        max_members: 4,
        properties: [("mode".to_owned(), "duel".to_owned())].into(),
    };
    let join = room::RoomCommand {
        route: routes::JOIN,
        payload: room::JoinRoom {
            room_id: "5f2c9a1e0b7d4c3a".into(),
        }
        .encode_to_vec()
        .into(),
        member: Some(member("carol")),
        hops: 1,
        reason: String::new(),
    };
    let adopt = room::RoomSnapshot {
        room_id: "5f2c9a1e0b7d4c3a".into(),
        owner: "alice".into(),
        members: vec![room::SnapshotMember {
            user_id: "alice".into(),
            gateway_node: "gateway-1".into(),
        }],
        max_members: 4,
        op_seq: 41,
        from_node: "room-1".into(),
        move_id: 7,
        ..Default::default()
    };
    let load = room::RoomRef {
        room_id: String::new(),
    };
    let request = |command, payload: Vec<u8>| MeshRequest {
        command,
        from_node: "match-1".into(),
        payload: payload.into(),
    };
    vec![
        ("load", request(routes::MESH_LOAD, load.encode_to_vec())),
        (
            "create-for",
            request(routes::MESH_CREATE_FOR, create.encode_to_vec()),
        ),
        (
            "room-join",
            request(routes::MESH_ROOM, join.encode_to_vec()),
        ),
        ("adopt", request(routes::MESH_ADOPT, adopt.encode_to_vec())),
        ("ping", request(mesh::command::PING, b"ping".to_vec())),
        ("bad-payload", request(routes::MESH_ROOM, vec![0x0a, 0xff])),
    ]
}
