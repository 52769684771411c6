#!/usr/bin/env bash
# CI check of the docker compose demo: build the image from the static binary, start the
# stack, stop gateway-1 once the players are in their room (they must move to gateway-2 by
# themselves and play on), wait for the client-sim demo to finish, check its outcome from
# outside (players matched onto the room server with fewer rooms, every broadcast received
# once, both players resumed on gateway-2, every remaining node a member), then tear
# everything down.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v docker-compose >/dev/null 2>&1; then compose=(docker-compose); else compose=(docker compose); fi
project="switchyard-ci-$$"
dc() { "${compose[@]}" -p "$project" "$@"; }
cleanup() { dc down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT

fail() { echo "compose check FAILED: $1"; dc logs --no-color | tail -80; exit 1; }

# Long enough to stop a gateway in the middle: 15 operations a second apart per player.
export SWITCHYARD_DEMO_OPS=15
[ -x target/docker/switchyard ] || scripts/build-static.sh
dc build
dc up -d
container=$(dc ps -q client-sim)
# Both players in the room and sending: then gateway-1 goes (SIGTERM: it drains and moves them).
for _ in $(seq 1 120); do
  [ "$(dc logs --no-color client-sim | grep -c '] sent ')" -ge 2 ] && break
  sleep 1
done
[ "$(dc logs --no-color client-sim | grep -c '] sent ')" -ge 2 ] || fail "the players never reached their room"
dc stop gateway-1 >/dev/null
status=$(timeout 240 docker wait "$container" || echo timeout)
logs=$(dc logs --no-color client-sim)
echo "$logs" | sed 's/^/    /' | tail -40
nodes=$(curl -fsS http://127.0.0.1:9110/cluster/nodes || true)

[ "$status" = "0" ] || fail "client-sim exited with $status"
echo "$logs" | grep -q "DEMO OK: 2 players matched into 1 room(s): .* on logic-room-2" \
  || fail "players were not matched onto logic-room-2 (the room server with fewer rooms)"
echo "$logs" | grep -q "operations received per player: 30,30;" \
  || fail "broadcasts were lost or doubled when the players moved"
[ "$(echo "$logs" | grep -c 'reconnected to ws://gateway-2:7000/ws: session resumed, no push lost')" = 2 ] \
  || fail "the players did not both resume on gateway-2"
for node in gateway-2 logic-room-1 logic-room-2 logic-match; do
  echo "$nodes" | grep -q "\"id\":\"$node\"" || fail "$node is not a member as seen by gateway-2"
done
# Names resolved inside the containers: members advertise container addresses found by name.
echo "$nodes" | grep -q '"grpc":"127\.' && fail "a node advertised a loopback address"
echo "compose check passed"
