//! HTTP/2 between nodes under pressure, over real sockets: a burst of calls that piled up at a
//! starved node (a `switchyard-node` process paused with SIGSTOP: its sockets keep receiving,
//! nothing reads them) is answered in full once it runs again, on both runtimes, even when
//! other callers gave up on their calls meanwhile; and a call a peer turned away unread (its
//! GOAWAY came first, or it answered `REFUSED_STREAM`) is sent again, while one the peer had
//! taken when the connection broke is not.

mod support;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures::future::join_all;
use mesh::{Mesh, MeshError, NodeId, command};
use runtime::{Listeners, Node};
use support::{NodeProcess, TestNode, eventually, fast_config};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// Calls in a burst: well above the ~2,300 unread small DATA frames h2's default budget (half
/// of hyper's 1 MiB connection window) took before it answered GOAWAY ENHANCE_YOUR_CALM.
const BURST: usize = 5_000;

/// Bytes one ping call of these tests puts on the wire at least: HEADERS (mostly indexed
/// fields), the message frame and the empty END_STREAM frame; 84 on average, measured.
const MIN_CALL_BYTES: u64 = 75;

/// Calls that must wait at the paused node before it runs again: more than the old budget
/// allowed, fewer than the stream limit lets a caller send ahead.
const PILED_UP: u64 = 3_000;

/// Bytes of one RST_STREAM frame.
const RESET_BYTES: u64 = 13;

/// A caller in this process and a callee process it can pause.
struct Starved {
    caller: TestNode,
    callee: NodeProcess,
    callee_grpc: SocketAddr,
}

impl Starved {
    /// Starts both, with the callee on `runtime`, and makes one call so the connection and its
    /// settings are in place.
    async fn start(runtime: &str) -> Self {
        let mut config = fast_config("caller", "node", &[]);
        // The callee is paused for seconds; nobody may declare anybody gone meanwhile.
        config.gossip.failure_detection = Duration::from_secs(30);
        let caller = TestNode::start(config).await;
        let callee = NodeProcess::start(
            "callee",
            caller.gossip,
            &["--runtime", runtime, "--failure-detection-ms", "30000"],
        )
        .await;
        let callee_grpc = callee.addrs["grpc"].parse().expect("grpc address");
        eventually(
            "the caller sees the callee",
            Duration::from_secs(10),
            || caller.cluster.node(&callee.id).is_some(),
        )
        .await;
        let warm = caller.mesh.request(&callee.id, command::PING, "warm").await;
        assert_eq!(warm, Ok(Bytes::from_static(b"warm")));
        Starved {
            caller,
            callee,
            callee_grpc,
        }
    }

    /// Pauses the callee (SIGSTOP), as a process starved of CPU is paused.
    fn pause(&self) {
        testkit::stop(self.callee.child.id());
    }

    /// Lets the callee run again (SIGCONT).
    fn resume(&self) {
        testkit::signal(self.callee.child.id(), testkit::Signal::SIGCONT);
    }

    /// `count` concurrent pings to the callee, each allowed `timeout`.
    fn burst(&self, count: usize, timeout: Duration) -> Vec<JoinHandle<Result<Bytes, MeshError>>> {
        (0..count)
            .map(|i| {
                let (mesh, callee): (Mesh, NodeId) =
                    (self.caller.mesh.clone(), self.callee.id.clone());
                tokio::spawn(async move {
                    let payload = format!("call-{i}");
                    mesh.request_with_timeout(&callee, command::PING, payload, timeout)
                        .await
                })
            })
            .collect()
    }

    /// Waits until at least `bytes` wait on the connection to the paused callee.
    async fn piled_up(&self, what: &str, bytes: u64) {
        eventually(what, Duration::from_secs(30), || {
            testkit::queued_bytes(self.callee_grpc) >= bytes
        })
        .await;
    }
}

/// The errors of the calls, as text.
async fn failures(calls: Vec<JoinHandle<Result<Bytes, MeshError>>>) -> Vec<String> {
    join_all(calls)
        .await
        .into_iter()
        .filter_map(|joined| joined.expect("call task").err().map(|e| e.to_string()))
        .collect()
}

async fn a_burst_at_a_paused_node_is_answered_in_full(runtime: &str) {
    let starved = Starved::start(runtime).await;
    starved.pause();
    let calls = starved.burst(BURST, Duration::from_secs(60));
    starved
        .piled_up("the burst piles up", PILED_UP * MIN_CALL_BYTES)
        .await;
    starved.resume();

    let failed = failures(calls).await;
    assert!(
        failed.is_empty(),
        "{} of {BURST} calls failed, first: {:?}",
        failed.len(),
        failed.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_at_a_starved_multi_thread_node_is_answered_in_full() {
    a_burst_at_a_paused_node_is_answered_in_full("multi-thread").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_at_a_starved_current_thread_node_is_answered_in_full() {
    a_burst_at_a_paused_node_is_answered_in_full("current-thread").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_giving_up_at_a_starved_node_do_not_cost_the_patient_ones() {
    let starved = Starved::start("multi-thread").await;
    starved.pause();
    let patient = starved.burst(1_000, Duration::from_secs(60));
    let impatient = starved.burst(2_500, Duration::from_secs(2));
    starved
        .piled_up("both bursts pile up", 3_000 * MIN_CALL_BYTES)
        .await;
    let before = testkit::queued_bytes(starved.callee_grpc);
    let gave_up = failures(impatient).await;
    assert_eq!(gave_up.len(), 2_500, "the impatient calls time out");
    // Each call given up on after it was sent sends a reset, which waits with the rest; h2's
    // default allowed 20 of them. Most reach the kernel's queue before the callee runs again;
    // when the socket's buffers are full (memory pressure: other tests pile up bursts too),
    // the rest wait in the caller's HTTP/2 buffer and follow right behind, still read before
    // the callee has accepted those streams. So the wait is bounded and does not fail.
    let resets_queued = tokio::time::timeout(Duration::from_secs(10), async {
        while testkit::queued_bytes(starved.callee_grpc) < before + 2_000 * RESET_BYTES {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if resets_queued.is_err() {
        eprintln!("not every reset reached the kernel's queue before the resume");
    }
    starved.resume();

    let failed = failures(patient).await;
    assert!(
        failed.is_empty(),
        "{} of 1,000 patient calls failed, first: {:?}",
        failed.len(),
        failed.first()
    );
}

const ECHO: u32 = 0x1001;

/// How the first connection to a [`Front`] turns the first call away.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// `GOAWAY ENHANCE_YOUR_CALM` before reading any call (last stream id 0), then close, as
    /// h2's flood guard does.
    GoAwayBeforeTakingIt,
    /// The same GOAWAY once the call's HEADERS arrived (last stream id: the call's, so it was
    /// taken), then close: the call is never answered.
    GoAwayAfterTakingIt,
    /// `RST_STREAM REFUSED_STREAM` of the call, then `GOAWAY NO_ERROR` and close.
    RefusedStream,
}

/// A listener in front of a node's gRPC port: its first connection is answered by a minimal
/// HTTP/2 server that turns the first call away; every later connection is passed through to
/// the node.
struct Front {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Front {
    async fn start(node: SocketAddr, refusal: Refusal) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    tokio::spawn(refuse(inbound, refusal));
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(node).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Front { addr, connections }
    }
}

/// The HTTP/2 side of a [`Front`]'s first connection (RFC 9113 frames: a 9-byte header of
/// length, type, flags and stream id, then the payload).
async fn refuse(mut socket: TcpStream, refusal: Refusal) -> std::io::Result<()> {
    const PREFACE_LEN: usize = 24;
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const NO_ERROR: u32 = 0x0;
    const REFUSED_STREAM: u32 = 0x7;
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    let frame = |kind: u8, stream: u32, payload: &[u8]| {
        let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        frame.extend([kind, 0]);
        frame.extend(stream.to_be_bytes());
        frame.extend(payload);
        frame
    };
    let goaway = |last_stream: u32, code: u32| {
        let mut payload = last_stream.to_be_bytes().to_vec();
        payload.extend(code.to_be_bytes());
        frame(GOAWAY, 0, &payload)
    };
    socket.write_all(&frame(SETTINGS, 0, &[])).await?;
    if refusal == Refusal::GoAwayBeforeTakingIt {
        socket.write_all(&goaway(0, ENHANCE_YOUR_CALM)).await?;
    } else {
        let mut preface = [0u8; PREFACE_LEN];
        socket.read_exact(&mut preface).await?;
        let call = loop {
            let mut header = [0u8; 9];
            socket.read_exact(&mut header).await?;
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]);
            let mut payload = vec![0u8; len as usize];
            socket.read_exact(&mut payload).await?;
            if header[3] == HEADERS {
                break u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
            }
        };
        if refusal == Refusal::RefusedStream {
            socket
                .write_all(&frame(RST_STREAM, call, &REFUSED_STREAM.to_be_bytes()))
                .await?;
            socket.write_all(&goaway(call, NO_ERROR)).await?;
        } else {
            socket.write_all(&goaway(call, ENHANCE_YOUR_CALM)).await?;
        }
    }
    socket.shutdown().await?;
    // Read what the caller still sends until it hangs up: closing with unread bytes would reset
    // the connection, and the caller might lose the last frames.
    tokio::io::copy(&mut socket, &mut tokio::io::sink()).await?;
    Ok(())
}

/// A caller, and a callee whose record names a [`Front`]'s address instead of its own gRPC
/// port, with an echo handler counting the calls it ran.
struct BehindAFront {
    caller: TestNode,
    callee: NodeId,
    front: Front,
    handled: Arc<AtomicUsize>,
    _callee: Node,
}

impl BehindAFront {
    async fn start(refusal: Refusal) -> Self {
        let caller = TestNode::start(fast_config("caller", "node", &[])).await;
        let listeners = Listeners::loopback().await.expect("bind loopback");
        let grpc = listeners.grpc.local_addr().expect("grpc address");
        let front = Front::start(grpc, refusal).await;
        let advertised = front.addr;
        let mut node = Node::start(
            fast_config("callee", "node", &[caller.gossip]),
            listeners,
            |record| record.grpc_addr = advertised,
        )
        .await
        .expect("callee starts");
        let handled = Arc::new(AtomicUsize::new(0));
        let counter = handled.clone();
        node.mesh().handle(ECHO, move |_, payload| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { Ok(payload) }
        });
        node.serve(|routes| routes).await.expect("callee serves");
        let callee = node.cluster().self_id();
        eventually(
            "the caller sees the callee",
            Duration::from_secs(10),
            || caller.cluster.node(&callee).is_some(),
        )
        .await;
        BehindAFront {
            caller,
            callee,
            front,
            handled,
            _callee: node,
        }
    }

    async fn echo(&self, text: &'static str) -> Result<Bytes, MeshError> {
        self.caller.mesh.request(&self.callee, ECHO, text).await
    }

    /// Calls the callee's handler ran.
    fn handled(&self) -> usize {
        self.handled.load(Ordering::SeqCst)
    }

    /// Connections the caller opened to the front.
    fn connections(&self) -> usize {
        self.front.connections.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_refused_by_a_goaway_before_it_was_read_is_sent_again() {
    let peer = BehindAFront::start(Refusal::GoAwayBeforeTakingIt).await;

    assert_eq!(peer.echo("once").await, Ok(Bytes::from_static(b"once")));
    assert_eq!(peer.handled(), 1, "the handler ran once");
    assert_eq!(peer.connections(), 2, "sent again on a new connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_refused_with_refused_stream_is_sent_again() {
    let peer = BehindAFront::start(Refusal::RefusedStream).await;

    assert_eq!(peer.echo("once").await, Ok(Bytes::from_static(b"once")));
    assert_eq!(peer.handled(), 1, "the handler ran once");
    assert_eq!(peer.connections(), 2, "sent again on a new connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_peer_had_taken_when_its_connection_broke_is_not_sent_again() {
    let peer = BehindAFront::start(Refusal::GoAwayAfterTakingIt).await;

    let reply = peer.echo("once").await;

    assert!(
        matches!(reply, Err(MeshError::Transport { .. })),
        "the caller is told the transport failed: {reply:?}"
    );
    assert_eq!(peer.handled(), 0, "nothing reached the handler");
    assert_eq!(peer.connections(), 1, "the call was not sent again");
}
