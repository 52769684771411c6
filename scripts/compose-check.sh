#!/usr/bin/env bash
# CI check of the docker compose demo: build the image from the static binary, start the
# stack, wait for the client-sim demo to finish, check its outcome from outside (players
# matched onto the room server with fewer rooms, broadcasts received, every node a member),
# then tear everything down.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v docker-compose >/dev/null 2>&1; then compose=(docker-compose); else compose=(docker compose); fi
project="switchyard-ci-$$"
dc() { "${compose[@]}" -p "$project" "$@"; }
cleanup() { dc down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT

[ -x target/docker/switchyard ] || scripts/build-static.sh
dc build
dc up -d
container=$(dc ps -q client-sim)
status=$(timeout 240 docker wait "$container" || echo timeout)
logs=$(dc logs --no-color client-sim)
echo "$logs" | sed 's/^/    /' | tail -40
nodes=$(curl -fsS http://127.0.0.1:9100/cluster/nodes || true)

fail() { echo "compose check FAILED: $1"; dc logs --no-color | tail -80; exit 1; }
[ "$status" = "0" ] || fail "client-sim exited with $status"
echo "$logs" | grep -q "DEMO OK: 2 players matched into 1 room(s): .* on logic-room-2" \
  || fail "players were not matched onto logic-room-2 (the room server with fewer rooms)"
echo "$logs" | grep -q "operations received per player: 6,6" || fail "broadcasts were not all received"
for node in gateway logic-room-1 logic-room-2 logic-match; do
  echo "$nodes" | grep -q "\"id\":\"$node\"" || fail "$node is not a member as seen by the gateway"
done
# Names resolved inside the containers: members advertise container addresses found by name.
echo "$nodes" | grep -q '"grpc":"127\.' && fail "a node advertised a loopback address"
echo "compose check passed"
