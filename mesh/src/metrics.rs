//! Metric names and recording helpers of the mesh (`switchyard_mesh_*`).

use std::{collections::HashSet, time::Duration};

use crate::membership::Members;

/// Members by kind and state (gauge).
pub const MEMBERS: &str = "switchyard_mesh_members";
/// Outgoing mesh calls by command and outcome (counter).
pub const CALLS: &str = "switchyard_mesh_calls_total";
/// Outgoing mesh call latency by command (histogram, seconds).
pub const CALL_DURATION: &str = "switchyard_mesh_call_duration_seconds";
/// Incoming mesh calls handled, by command and outcome (counter).
pub const HANDLED: &str = "switchyard_mesh_handled_total";
/// Outgoing gRPC calls to peers (mesh calls and others made through `retrying_unprocessed`)
/// sent again because the peer certainly did not process them (counter).
pub const RETRIES: &str = "switchyard_mesh_retries_total";
/// Unreliable datagrams by direction and outcome (counter).
pub const DATAGRAMS: &str = "switchyard_mesh_datagrams_total";
/// Members this node dropped, by reason: `left` (it announced it), `silent` (its heartbeat
/// stood still for the failure detection time), `unreadable` (its record stopped decoding),
/// `forgotten` (gossip no longer knows it) (counter).
pub const NODES_GONE: &str = "switchyard_mesh_nodes_gone_total";
/// Each time this node's gossip follower ran late (the process was paused or starved), the
/// time it lost, which does not count as silence of its peers (histogram, seconds).
pub const GOSSIP_STALL: &str = "switchyard_mesh_gossip_stall_seconds";

pub(crate) fn command_label(command: u32) -> String {
    format!("{command:#06x}")
}

pub(crate) fn record_call(command: u32, outcome: &'static str, elapsed: Duration) {
    let command = command_label(command);
    metrics::counter!(CALLS, "command" => command.clone(), "outcome" => outcome).increment(1);
    metrics::histogram!(CALL_DURATION, "command" => command).record(elapsed.as_secs_f64());
}

pub(crate) fn record_retry() {
    metrics::counter!(RETRIES).increment(1);
}

pub(crate) fn record_handled(command: u32, outcome: &'static str) {
    metrics::counter!(HANDLED, "command" => command_label(command), "outcome" => outcome)
        .increment(1);
}

pub(crate) fn record_datagram(direction: &'static str, outcome: &'static str) {
    metrics::counter!(DATAGRAMS, "direction" => direction, "outcome" => outcome).increment(1);
}

/// Sets the member gauges; label pairs seen before and now absent are set to zero.
pub(crate) fn set_member_gauges(members: &Members, seen: &mut HashSet<(String, &'static str)>) {
    let mut counts: std::collections::HashMap<(String, &'static str), f64> =
        seen.iter().map(|key| (key.clone(), 0.0)).collect();
    for node in members.values() {
        *counts
            .entry((node.kind.to_string(), node.state.as_str()))
            .or_default() += 1.0;
    }
    for ((kind, state), count) in counts {
        metrics::gauge!(MEMBERS, "kind" => kind.clone(), "state" => state).set(count);
        seen.insert((kind, state));
    }
}
