//! Helpers the integration tests of several crates share. Nothing here is used outside tests.
//!
//! # Layout
//! - [`eventually`]: wait, bounded, for eventual cluster state (never a bare sleep).
//! - [`http_get`]: a tiny HTTP/1.1 GET for admin endpoints.
//! - [`read_ready_file`]: the `key=value` lines a node writes once it serves (`--ready-file`).
//! - [`signal`], [`stop`], [`pause_for`], [`starve`]: signals to a process: pause it (and wait
//!   until it is paused), for a while, or over and over as a process starved of CPU is.
//! - [`queued_bytes`]: bytes waiting on the loopback connections to a server (a paused server's
//!   backlog).
//! - [`netns`]: network namespaces on a bridge of their own, for real processes on a network
//!   the test cuts and heals ([`Net`]; [`netns_or_skip`] for the fail-or-skip policy). The
//!   `testkit-echo` binary is the TCP/UDP echo server and probe its tests run inside them.

pub mod netns;

pub use netns::{Net, NetError, netns_or_skip};

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

/// Waits until `check` holds, polling every 20 ms, for at most `limit`; panics naming `what`.
pub async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET path` over a fresh connection (blocking; fine for tests): the status code and body.
/// A connection that fails gives status 0 and an empty body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, None)
}

/// `method path` over a fresh connection, with `Authorization: Bearer <bearer>` when given
/// (blocking): the status code and body (status 0 when the connection fails).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let auth = bearer.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let _ = write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Waits (at most `limit`) for a ready file and returns its `key=value` lines.
pub async fn read_ready_file(path: &Path, limit: Duration) -> HashMap<String, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Bytes waiting on the TCP connections to `server` on this host: unread at the server plus
/// unsent at its clients (`/proc/net/tcp`: `rx_queue` of sockets on the server's port, `tx_queue`
/// of sockets to it). What a paused server has yet to read; 0 where `/proc` is not there.
pub fn queued_bytes(server: SocketAddr) -> u64 {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return 0;
    };
    let port = format!(":{:04X}", server.port());
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, queues) = (fields.get(1)?, fields.get(2)?, fields.get(4)?);
            let (tx, rx) = queues.split_once(':')?;
            let (tx, rx) = (
                u64::from_str_radix(tx, 16).ok()?,
                u64::from_str_radix(rx, 16).ok()?,
            );
            if local.ends_with(&port) {
                Some(rx)
            } else if remote.ends_with(&port) {
                Some(tx)
            } else {
                None
            }
        })
        .sum()
}

pub use nix::sys::signal::Signal;

/// Sends `signal` to process `pid` (a direct `kill(2)`, not a `kill` command: no process to
/// spawn, nothing to fail silently under load). Panics if the signal could not be sent.
pub fn signal(pid: u32, signal: Signal) {
    let target = nix::unistd::Pid::from_raw(pid as i32);
    if let Err(error) = nix::sys::signal::kill(target, signal) {
        panic!("sending {signal} to process {pid} failed: {error}");
    }
}

/// Pauses process `pid` (SIGSTOP) and returns once every one of its threads has stopped: the
/// signal is asynchronous, and a thread running at that moment may otherwise still handle a
/// request sent right after `kill(2)` returned. Panics if that takes more than 5 s.
pub fn stop(pid: u32) {
    signal(pid, Signal::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !all_threads_stopped(pid) {
        assert!(
            Instant::now() < deadline,
            "process {pid} did not stop within 5 s"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// True when every thread of `pid` is stopped (state `T` in `/proc/PID/task/*/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| {
                // The state follows the command name, which is in parentheses.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
            })
            .is_some_and(|state| state == "T" || state == "t")
    })
}

/// Pauses process `pid` for `pause` (SIGSTOP, then SIGCONT).
pub async fn pause_for(pid: u32, pause: Duration) {
    stop(pid);
    tokio::time::sleep(pause).await;
    signal(pid, Signal::SIGCONT);
}

/// Starves process `pid` of CPU for `total`: stopped for `stopped`, then running for `running`,
/// over and over, as a process on an overloaded machine is. Ends with the process running.
pub async fn starve(pid: u32, stopped: Duration, running: Duration, total: Duration) {
    let end = Instant::now() + total;
    while Instant::now() < end {
        pause_for(pid, stopped).await;
        tokio::time::sleep(running).await;
    }
}
