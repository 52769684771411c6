#!/usr/bin/env bash
# Architecture invariants on the dependency graph (ARCHITECTURE.md, "Invariants").
# `cargo tree -p A -i B` prints B's reverse tree inside A's graph and fails when B is not in it,
# so "forbid" expects failure and "require" is the positive control that catches a misspelt name.
set -euo pipefail
cd "$(dirname "$0")/.."

failed=0
forbid() {
  if cargo tree --offline -p "$1" -e normal -i "$2" >/dev/null 2>&1; then
    echo "dependency check: $1 must not depend on $2"; failed=1
  fi
}
require() {
  if ! cargo tree --offline -p "$1" -e normal -i "$2" >/dev/null 2>&1; then
    echo "dependency check (control): $1 should depend on $2"; failed=1
  fi
}

servers=(gateway logic-room logic-match)
workspace_crates=(mesh runtime wire logic-sdk client gateway logic-room logic-match client-sim bench switchyard)

# proto depends on no workspace crate.
for crate in "${workspace_crates[@]}"; do forbid proto "$crate"; done
# No server crate depends on another server crate.
for a in "${servers[@]}"; do for b in "${servers[@]}"; do [ "$a" = "$b" ] || forbid "$a" "$b"; done; done
# The cluster runtime knows nothing of servers, clients or the runtime shell around it.
for crate in runtime gateway logic-room logic-match client-sim; do forbid mesh "$crate"; done
# Shared crates stay below the servers: the SDK, the client library and the wire format
# depend on no server crate.
for shared in logic-sdk client wire runtime; do for server in "${servers[@]}"; do forbid "$shared" "$server"; done; done
# The client library is for clients: it knows nothing of the cluster.
for crate in mesh runtime logic-sdk; do forbid client "$crate"; done
# Only the gateway and client code (the client library, client-sim, the benchmarks, the
# launcher that bundles them, and the fuzzing checks of the WebSocket input) depend on the
# WebSocket library; `wire` only with its `ws` feature.
for crate in mesh runtime logic-sdk logic-room logic-match proto; do forbid "$crate" tungstenite; done
# Positive controls: the checks above would see a real edge.
require runtime mesh
require gateway runtime
require mesh proto
require gateway tungstenite
require client wire
require logic-room logic-sdk
require logic-match wire

if [ "$failed" -ne 0 ]; then exit 1; fi
echo "dependency checks passed"
