#!/usr/bin/env bash
# CI check of the docker compose demo: build the image from the static binary, start the
# stack, and while the client-sim demo's players are in their room stop gateway-1 (they must
# move to gateway-2 by themselves and play on), then the room server hosting their room (the
# room must move to the other room server with its id, its operations going on in order).
# Once the demo finishes, check its outcome from outside (players matched onto the room
# server with fewer rooms, the room moved, every broadcast received once and in order, both
# players resumed on gateway-2, the remaining nodes members), then tear everything down.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v docker-compose >/dev/null 2>&1; then compose=(docker-compose); else compose=(docker compose); fi
project="switchyard-ci-$$"
# An image of this run's own: another run on the machine building switchyard:local meanwhile
# does not change what this one starts.
export SWITCHYARD_IMAGE="switchyard:ci-$$"
dc() { "${compose[@]}" -p "$project" "$@"; }
cleanup() { dc down -v --remove-orphans --rmi all >/dev/null 2>&1 || true; }
trap cleanup EXIT

started=$(date +%s)
say() { echo "[$(($(date +%s) - started))s] $*"; }
fail() { echo "compose check FAILED: $1"; dc logs --no-color | tail -80; exit 1; }
demo_logs() { dc logs --no-color client-sim; }
# Waits up to $1 seconds until the demo printed at least $2 lines matching $3.
wait_for() {
  for _ in $(seq 1 "$1"); do
    [ "$(demo_logs | grep -c -- "$3")" -ge "$2" ] && return 0
    sleep 1
  done
  return 1
}

# Long enough to stop a gateway and then a room server in the middle: 20 operations a second
# apart per player.
export SWITCHYARD_DEMO_OPS=20
[ -x target/docker/switchyard ] || scripts/build-static.sh
build_log=$(dc build 2>&1) || { echo "$build_log"; fail "the image did not build"; }
up_log=$(dc up -d 2>&1) || { echo "$up_log"; fail "the stack did not start"; }
container=$(dc ps -q client-sim)

# Both players in the room and sending: then gateway-1 goes (SIGTERM: it drains and moves them).
wait_for 90 2 '] sent ' || fail "the players never reached their room"
say "players in their room; stopping gateway-1"
dc stop gateway-1 >/dev/null 2>&1
wait_for 30 2 'reconnected to ' || fail "the players did not reconnect after gateway-1 stopped"
say "players moved to gateway-2"

# The room server hosting the demo's room, as the players were told when matched (the match
# server picks the emptier room server, so not necessarily the second one).
room_node=$(demo_logs | sed -n 's/.*\] matched: room [0-9a-f]* on \([a-z0-9-]*\) with .*/\1/p' | head -1)
case "$room_node" in
  logic-room-1) other_node=logic-room-2 ;;
  logic-room-2) other_node=logic-room-1 ;;
  *) fail "no room server found in the demo's match line (got '$room_node')" ;;
esac
# Stopped after the players sent on gateway-2, so the room moves while they play.
sent_before=$(demo_logs | grep -c '] sent ')
wait_for 10 $((sent_before + 2)) '] sent ' || fail "the players stopped sending on gateway-2"
say "stopping $room_node (hosting the demo's room; it should move to $other_node)"
dc stop "$room_node" >/dev/null 2>&1
say "$room_node stopped"

status=$(timeout 120 docker wait "$container" || echo timeout)
say "client-sim exited with $status"
logs=$(demo_logs)
echo "$logs" | grep -E 'matched:|reconnected|moving from|moved from|move failed|refused|failed|DEMO' | sed 's/^/    /'
nodes=$(curl -fsS http://127.0.0.1:9110/cluster/nodes || true)

[ "$status" = "0" ] || fail "client-sim exited with $status"
[ "$room_node" = "logic-room-2" ] \
  || fail "players were matched onto $room_node, not logic-room-2 (the room server with fewer rooms)"
echo "$logs" | grep -q "DEMO OK: 2 players matched into 1 room(s): [0-9a-f]* on $room_node (moved to $other_node);" \
  || fail "the demo's room did not end up on $other_node"
echo "$logs" | grep -q "operations received per player: 40,40; .*; seq gaps: 0$" \
  || fail "broadcasts were lost, doubled or out of order when the players or the room moved"
[ "$(echo "$logs" | grep -c 'reconnected to ws://gateway-2:7000/ws: session resumed, no push lost')" = 2 ] \
  || fail "the players did not both resume on gateway-2"
[ "$(echo "$logs" | grep -c "] room [0-9a-f]* moving from $room_node")" = 2 ] \
  || fail "the players were not both told that the room was moving"
[ "$(echo "$logs" | grep -c "] room [0-9a-f]* moved from $room_node to $other_node (same room id")" = 2 ] \
  || fail "the players were not both told that the room moved"
echo "$logs" | grep -qiE 'no such room|operation refused|operation failed' \
  && fail "a room operation was refused or failed while the room moved"
for node in gateway-2 "$other_node" logic-match; do
  echo "$nodes" | grep -q "\"id\":\"$node\"" || fail "$node is not a member as seen by gateway-2"
done
# Names resolved inside the containers: members advertise container addresses found by name.
echo "$nodes" | grep -q '"grpc":"127\.' && fail "a node advertised a loopback address"
say "compose check passed"
