//! A 2|1 partition between real processes in network namespaces (built by the test; see
//! `testkit::netns`): three regular gateways, the match server beside the first. The gateway cut
//! off from the other two is fenced within 5 s and disconnects its clients with `PARTITIONED`;
//! they resume on the majority side through their address list; the pair keeps serving; no user
//! is ever logged in on two gateways at once (Presence asked of every gateway throughout); the
//! heal brings the lone gateway back.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use client::{Address, Session, SessionConfig, SessionEvent, SessionEvents};
use prost::Message;
use proto::{
    gateway::v1::{PresenceRequest, gateway_client::GatewayClient},
    matchmaking::v1::{self as mm, routes as match_routes},
};
use support::{Sandbox, Service, eventually};

const SECRET: &str = "e2e-test-secret";

fn metric(service: &Service, name: &str) -> f64 {
    let (_, body) = testkit::http_get(service.admin, "/metrics");
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(-1.0)
}

fn fenced(service: &Service) -> bool {
    testkit::http_get(service.admin, "/readyz")
        .1
        .contains("fenced")
}

fn ws(gateway: &Service) -> Address {
    support::client_address(gateway, true)
}

async fn login(addresses: Vec<Address>, user: &str) -> (Session, SessionEvents, Address) {
    let login = mm::Login {
        user_id: user.to_owned(),
        token: String::new(),
    };
    let (session, mut events, answer) = Session::login(
        addresses,
        SessionConfig::default(),
        match_routes::LOGIN,
        login.encode_to_vec(),
    )
    .await
    .expect("logged in");
    assert!(answer.is_ok(), "{user}: {answer:?}");
    let Some(SessionEvent::Connected { address, .. }) = events.next().await else {
        panic!("{user}: no Connected event");
    };
    (session, events, address)
}

/// Sessions of `user` on each gateway, as each says of itself (those it can be asked).
async fn presence(gateways: &[SocketAddr], user: &str) -> Vec<u64> {
    let mut counts = Vec::new();
    for grpc in gateways {
        let asked = async {
            let mut client = GatewayClient::connect(format!("http://{grpc}"))
                .await
                .ok()?;
            let mut request = tonic::Request::new(PresenceRequest {
                user_ids: vec![user.to_owned()],
                local_only: true,
            });
            request
                .metadata_mut()
                .insert(mesh::CREDENTIAL_HEADER, SECRET.parse().ok()?);
            let answer = client.presence(request).await.ok()?.into_inner();
            Some(answer.users.iter().filter(|u| u.online).count() as u64)
        };
        let count = tokio::time::timeout(Duration::from_millis(500), asked).await;
        counts.push(count.ok().flatten().unwrap_or(0));
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_cut_off_from_the_majority_is_fenced_and_its_clients_resume_on_the_other_side()
{
    let Some(net) = testkit::netns_or_skip(3) else {
        return;
    };
    let mut sandbox = Sandbox::in_net(net);
    let regular = ["--role", "regular", "--resume-window-ms", "30000"];
    let mut first = regular.to_vec();
    first.extend(["--init-cluster", "g1,g2,g3"]);
    let g1 = sandbox.gateway_in(0, "g1", &first);
    let _matcher = sandbox.start_in(0, "logic-match", "m1", &[]);
    let g2 = sandbox.gateway_in(1, "g2", &regular);
    let g3 = sandbox.gateway_in(2, "g3", &regular);
    let gateways = [&g1, &g2, &g3];
    eventually(
        "three regular gateways serve",
        Duration::from_secs(20),
        || {
            gateways.iter().all(|g| {
                metric(g, "switchyard_quorum_regular_nodes") == 3.0
                    && metric(g, "switchyard_quorum_serving") == 1.0
            })
        },
    )
    .await;
    support::wait_for_members(&g3, &["g1", "g2", "g3", "m1"]).await;
    let grpc: Vec<SocketAddr> = gateways.iter().map(|g| g.grpc).collect();

    // Alice is served by g3, the gateway about to be cut off; her list names the others too.
    let (alice, mut alice_events, at) = login(vec![ws(&g3), ws(&g1), ws(&g2)], "alice").await;
    assert_eq!(at, ws(&g3));
    // Dave too; right after the cut he logs in again through g1, before g3 is fenced: that
    // login must wait until g3 certainly is.
    let (_dave_on_g3, _, _) = login(vec![ws(&g3)], "dave").await;

    let term_before = metric(&g1, "switchyard_quorum_term");
    let cut = Instant::now();
    sandbox
        .net
        .as_ref()
        .expect("net")
        .isolate(2)
        .expect("partition");
    let g1_ws = ws(&g1);
    let dave_again = tokio::spawn(async move {
        let logged_in = login(vec![g1_ws], "dave").await;
        (logged_in, cut.elapsed())
    });

    // Alice is disconnected by the fenced g3 and resumes on the majority side; meanwhile
    // Presence is asked of every gateway: never two sessions of hers.
    let mut fenced_after = None;
    let resumed_at = loop {
        for user in ["alice", "dave"] {
            let counts = presence(&grpc, user).await;
            assert!(
                counts.iter().sum::<u64>() <= 1,
                "{user} logged in twice {:?} after the cut: {counts:?}",
                cut.elapsed()
            );
        }
        if fenced_after.is_none() && fenced(&g3) {
            fenced_after = Some(cut.elapsed());
        }
        match tokio::time::timeout(Duration::from_millis(100), alice_events.next()).await {
            Ok(Some(SessionEvent::Connected {
                address, reconnect, ..
            })) => {
                assert!(reconnect);
                break address;
            }
            Ok(Some(SessionEvent::Disconnected {
                reconnect: false,
                reason,
            })) => panic!("alice's session ended: {reason}"),
            Ok(None) => panic!("alice's events ended"),
            _ => {}
        }
        assert!(
            cut.elapsed() < Duration::from_secs(15),
            "alice not back within 15 s"
        );
    };
    let fenced_after = fenced_after.expect("g3 fenced before alice came back");
    let (_dave, dave_after) = dave_again.await.expect("dave's second login");
    assert!(
        dave_after >= fenced_after.saturating_sub(Duration::from_millis(150)),
        "dave's login through g1 was answered {dave_after:?} after the cut, before g3 was fenced ({fenced_after:?})"
    );
    eprintln!(
        "g3 fenced {fenced_after:?} after the cut; alice resumed at {resumed_at} {:?} after it",
        cut.elapsed()
    );
    assert!(
        fenced_after < Duration::from_secs(5),
        "g3 fenced only {fenced_after:?} after the cut"
    );
    assert_ne!(resumed_at, ws(&g3), "alice came back to the fenced gateway");
    assert!(fenced(&g3), "g3 still fenced");
    for g in [&g1, &g2] {
        assert!(!fenced(g), "the majority keeps serving");
    }

    // The pair serves: alice's session answers, and a new player logs in there.
    let again = mm::Login {
        user_id: "alice".into(),
        token: String::new(),
    };
    let answer = alice
        .request(match_routes::LOGIN, again.encode_to_vec())
        .await
        .expect("answered");
    assert!(answer.is_ok(), "{answer:?}");
    let (_bob, _, bob_at) = login(vec![ws(&g1), ws(&g2)], "bob").await;
    assert_ne!(bob_at, ws(&g3));
    // A client that reaches only g3 is refused with PARTITIONED.
    let refused = Session::login(
        vec![ws(&g3)],
        SessionConfig::default(),
        match_routes::LOGIN,
        mm::Login {
            user_id: "carol".into(),
            token: String::new(),
        }
        .encode_to_vec(),
    )
    .await;
    assert!(refused.is_err(), "a fenced gateway serves nobody");
    let counts = presence(&grpc, "alice").await;
    assert_eq!(counts.iter().sum::<u64>(), 1, "{counts:?}");
    assert_eq!(counts[2], 0, "nothing of alice's left on g3");

    // The heal: g3 serves again, and takes new clients. Alone, it stopped campaigning at once
    // (its term did not climb: one election at most, begun before it saw the cut), so its
    // return deposes nobody, or at worst costs one election.
    let term_during = metric(&g1, "switchyard_quorum_term");
    let lone_term = metric(&g3, "switchyard_quorum_term");
    assert!(
        lone_term <= term_during.max(term_before) + 1.0,
        "g3 campaigned alone: term {term_before} → {lone_term}"
    );
    sandbox.net.as_ref().expect("net").heal().expect("heal");
    eventually("g3 serves again", Duration::from_secs(15), || !fenced(&g3)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let term_after = metric(&g1, "switchyard_quorum_term");
    assert!(
        term_after <= term_during + 2.0,
        "the heal cost more than one election: term {term_during} → {term_after}"
    );
    let (_carol, _, carol_at) = login(vec![ws(&g3)], "carol").await;
    assert_eq!(carol_at, ws(&g3));
    let counts = presence(&grpc, "alice").await;
    assert_eq!(
        counts.iter().sum::<u64>(),
        1,
        "alice once after the heal: {counts:?}"
    );
}

/// The capacity each gateway publishes, by id, as `gateway` sees them.
fn capacities(gateway: &Service) -> Vec<(String, u64)> {
    let nodes = gateway.nodes();
    let mut list: Vec<(String, u64)> = nodes["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter(|n| n["kind"] == "gateway")
                .map(|n| {
                    let id = n["id"].as_str().unwrap_or_default().to_owned();
                    (id, n["load"]["capacity"].as_u64().unwrap_or_default())
                })
                .collect()
        })
        .unwrap_or_default();
    list.sort();
    list
}

fn caps(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(id, c)| ((*id).to_owned(), *c)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_cover_a_lost_regular_gateways_capacity_and_give_it_back_without_kicking_anyone() {
    let mut sandbox = Sandbox::new();
    let flags = [
        "--role",
        "regular",
        "--max-sessions",
        "10",
        "--redirect-margin",
        "0",
    ];
    let mut first = flags.to_vec();
    first.extend(["--init-cluster", "g1,g2,g3"]);
    let g1 = sandbox.gateway_with("g1", &first);
    let _matcher = sandbox.start("logic-match", "m1", &[]);
    let g2 = sandbox.gateway_with("g2", &flags);
    let g3 = sandbox.gateway_with("g3", &flags);
    eventually("three regular gateways", Duration::from_secs(20), || {
        [&g1, &g2, &g3]
            .iter()
            .all(|g| metric(g, "switchyard_quorum_regular_nodes") == 3.0)
    })
    .await;
    support::wait_for_members(&g1, &["g1", "g2", "g3", "m1"]).await;
    assert_eq!(capacities(&g1), caps(&[("g1", 10), ("g2", 10), ("g3", 10)]));

    // g3 dies: g1 and g2 each take half its 10.
    drop(g3);
    eventually("g1 and g2 raised to 15", Duration::from_secs(10), || {
        capacities(&g1) == caps(&[("g1", 15), ("g2", 15)])
    })
    .await;
    // g1 takes 12 players, over its own 10.
    let mut players = Vec::new();
    for i in 0..12 {
        players.push(support::Player::login(ws(&g1), &format!("p{i}")).await);
    }

    // g3 returns: the limits go back to 10; nobody is disconnected, newcomers are redirected.
    let g3 = sandbox.gateway_with("g3", &flags);
    eventually("back to 10 each", Duration::from_secs(20), || {
        capacities(&g1) == caps(&[("g1", 10), ("g2", 10), ("g3", 10)])
    })
    .await;
    assert_eq!(metric(&g1, "switchyard_gateway_sessions"), 12.0);
    for player in &players {
        let answer = player
            .client
            .request(
                match_routes::LOGIN,
                mm::Login {
                    user_id: player.name.clone(),
                    token: String::new(),
                }
                .encode_to_vec(),
            )
            .await
            .expect("still connected");
        assert!(answer.is_ok(), "{}: {answer:?}", player.name);
    }
    let (late, _) = client::Client::connect(ws(&g1)).await.expect("connect");
    let answer = late
        .request(
            match_routes::LOGIN,
            mm::Login {
                user_id: "late".into(),
                token: String::new(),
            }
            .encode_to_vec(),
        )
        .await
        .expect("answered");
    assert!(!answer.redirect.is_empty(), "g1 is full again: {answer:?}");
    drop(g3);
}
