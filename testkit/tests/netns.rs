//! The network-namespace harness with real processes (`testkit-echo`, this crate's binary):
//! every link works, a partition cuts exactly the links between groups (TCP and UDP, dropped
//! rather than refused), established connections stall and resume, heal restores everything,
//! and nothing is left behind. Needs root, `ip` and `nft`; fails without them unless
//! `SWITCHYARD_SKIP_NETNS=1`.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use testkit::{Net, netns::cleanup_stale, netns_or_skip};

const ECHO: &str = env!("CARGO_BIN_EXE_testkit-echo");
const OPEN: &str = "tcp=ok udp=ok";
const CUT: &str = "tcp=cut udp=cut";
/// Probes from the test process itself.
const ROOT: Option<usize> = None;

#[test]
fn a_partition_cuts_links_between_groups_and_heal_restores_them() {
    let Some(net) = netns_or_skip(3) else { return };
    let servers: Vec<_> = (0..3).map(|i| serve(&net, i)).collect();
    let targets: Vec<SocketAddr> = servers.iter().map(|(_, target)| *target).collect();
    let everything_open = [
        (ROOT, 0, OPEN),
        (ROOT, 1, OPEN),
        (ROOT, 2, OPEN),
        (Some(0), 1, OPEN),
        (Some(0), 2, OPEN),
        (Some(1), 2, OPEN),
        (Some(2), 0, OPEN),
    ];
    check(&net, &targets, &everything_open);

    net.partition(&[&[0, 1], &[2]]).expect("partition");
    check(
        &net,
        &targets,
        &[
            (Some(0), 1, OPEN),
            (Some(1), 0, OPEN),
            (Some(0), 2, CUT),
            (Some(2), 0, CUT),
            (Some(1), 2, CUT),
            (Some(2), 1, CUT),
            (ROOT, 0, OPEN),
            (ROOT, 2, OPEN),
        ],
    );

    net.heal().expect("heal");
    check(&net, &targets, &everything_open);

    net.isolate(1).expect("isolate");
    check(
        &net,
        &targets,
        &[
            (Some(0), 2, OPEN),
            (Some(0), 1, CUT),
            (Some(2), 1, CUT),
            (ROOT, 1, OPEN),
        ],
    );
}

#[test]
fn an_established_tcp_connection_across_a_cut_stalls_and_resumes_after_heal() {
    let Some(net) = netns_or_skip(2) else { return };
    let (_server, target) = serve(&net, 1);
    let mut client = Process::spawn(net.command(0, ECHO).args(["hold", &target.to_string()]));
    let (mut to_client, from_client) = client.pipes();
    let mut say = |line: &str| writeln!(to_client, "{line}").expect("writing to the client");

    say("before");
    let echoed = |limit| from_client.recv_timeout(limit).ok();
    assert_eq!(echoed(Duration::from_secs(5)).as_deref(), Some("before"));

    net.isolate(0).expect("isolate");
    say("during");
    assert_eq!(
        echoed(Duration::from_secs(2)),
        None,
        "the cut let the echo through"
    );

    net.heal().expect("heal");
    // TCP retransmits the line (backing off: the first retry after heal can take a few seconds).
    assert_eq!(echoed(Duration::from_secs(15)).as_deref(), Some("during"));
    say("after");
    assert_eq!(echoed(Duration::from_secs(5)).as_deref(), Some("after"));
}

#[test]
fn dropping_a_net_removes_its_namespaces_and_links() {
    let Some(net) = netns_or_skip(2) else { return };
    let prefix = net
        .name(0)
        .strip_suffix("n0")
        .expect("names end in n<i>")
        .to_owned();
    let ours = [0, 1].map(|i| net.name(i).to_owned());
    let ours = [
        format!("{prefix}h"),
        format!("{prefix}r"),
        ours[0].clone(),
        ours[1].clone(),
    ];
    assert!(
        leftovers(&ours).len() >= 3,
        "the net's names were not found: {ours:?}"
    );

    drop(net);
    assert_eq!(leftovers(&ours), Vec::<String>::new());
}

#[test]
fn cleanup_stale_removes_what_dead_processes_left_and_keeps_the_living() {
    if netns_or_skip(0).is_none() {
        return;
    }
    let mut finished = Command::new("true").spawn().expect("spawning true");
    finished.wait().expect("waiting for true");
    let dead = format!("sy{}x0h", finished.id());
    let living = format!("sy{}x9999h", std::process::id());
    for name in [&dead, &living] {
        run("ip", &["netns", "add", name]);
    }

    cleanup_stale().expect("cleanup_stale");
    let left = leftovers(&[dead, living.clone()]);
    run("ip", &["netns", "del", &living]);
    assert_eq!(left, vec![living]);
}

/// Starts `testkit-echo serve` in namespace `i`: the process and where it answers.
fn serve(net: &Net, i: usize) -> (Process, SocketAddr) {
    let mut server = Process::spawn(net.command(i, ECHO).arg("serve"));
    let (_, lines) = server.pipes();
    let ready = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("ready line");
    let port = ready.strip_prefix("ready ").and_then(|p| p.parse().ok());
    let port = port.unwrap_or_else(|| panic!("unexpected ready line {ready:?}"));
    (server, SocketAddr::from((net.addr(i), port)))
}

/// Runs every probe `(from, to, expected)` at once (a cut one waits out its timeouts) and
/// compares all outcomes.
fn check(net: &Net, targets: &[SocketAddr], table: &[(Option<usize>, usize, &str)]) {
    let probes: Vec<Child> = table
        .iter()
        .map(|&(from, to, _)| {
            let mut command = from.map_or_else(|| Command::new(ECHO), |i| net.command(i, ECHO));
            command.args(["probe", &targets[to].to_string()]);
            command
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawning a probe")
        })
        .collect();
    let actual: Vec<_> = table
        .iter()
        .zip(probes)
        .map(|(&(from, to, _), probe)| {
            let output = probe.wait_with_output().expect("waiting for a probe");
            let outcome = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            (from, to, outcome)
        })
        .collect();
    let expected: Vec<_> = table
        .iter()
        .map(|&(from, to, outcome)| (from, to, outcome.to_owned()))
        .collect();
    assert_eq!(actual, expected, "(from namespace, to namespace, outcome)");
}

/// Which of `names` still exist as namespaces or root-namespace links.
fn leftovers(names: &[String]) -> Vec<String> {
    let existing = run("ip", &["netns", "list"]) + &run("ip", &["-o", "link", "show"]);
    let words: Vec<&str> = existing
        .split(|c: char| c.is_whitespace() || c == ':' || c == '@')
        .collect();
    names
        .iter()
        .filter(|name| words.contains(&name.as_str()))
        .cloned()
        .collect()
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().expect(program);
    assert!(output.status.success(), "{program} {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A child process killed when the test ends, passed or failed.
struct Process(Child);

impl Process {
    fn spawn(command: &mut Command) -> Process {
        let child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn();
        Process(child.expect("spawning a process in a namespace"))
    }

    /// Its stdin, and its stdout lines as they come (read by a thread).
    fn pipes(&mut self) -> (ChildStdin, mpsc::Receiver<String>) {
        let stdin = self.0.stdin.take().expect("stdin is piped");
        let stdout = self.0.stdout.take().expect("stdout is piped");
        let (lines, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        (stdin, receiver)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
