#!/usr/bin/env bash
# Builds the Go baseline (go-gateway, go-room, go-match) offline, in GOPATH mode, from Debian packages:
#   apt-get install -y golang-go golang-google-grpc-dev golang-github-gorilla-websocket-dev \
#     golang-google-protobuf-dev protoc-gen-go-grpc protobuf-compiler golang-goprotobuf-dev
# Generated code and binaries go under target/go-baseline/ (gitignored); nothing is committed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/target/go-baseline"
gopath="$out"
protos="$root/proto/proto"
debian_gocode=/usr/share/gocode
apt_hint="apt-get install -y golang-go golang-google-grpc-dev golang-github-gorilla-websocket-dev golang-google-protobuf-dev protoc-gen-go-grpc protobuf-compiler golang-goprotobuf-dev"

missing=()
for tool in go protoc protoc-gen-go protoc-gen-go-grpc; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
for dir in google.golang.org/grpc github.com/golang/protobuf/proto github.com/gorilla/websocket; do
  [ -d "$debian_gocode/src/$dir" ] || missing+=("$debian_gocode/src/$dir")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "go-baseline: missing: ${missing[*]}" >&2
  echo "go-baseline: install them with: $apt_hint" >&2
  exit 1
fi

# protoc-gen-go must be the legacy 1.3.x generator (github.com/golang/protobuf): Debian's
# grpc-go 1.33 marshals with github.com/golang/protobuf 1.3, which needs its message structs.
if ! grep -q "github.com/golang/protobuf" "$(command -v protoc-gen-go)" 2>/dev/null; then
  echo "go-baseline: $(command -v protoc-gen-go) is not the legacy github.com/golang/protobuf generator" >&2
  echo "go-baseline: install Debian's golang-goprotobuf-dev (protoc-gen-go-1-3)" >&2
  exit 1
fi

rm -rf "$out/src/gobaseline" "$out/proto" "$out/gen"
mkdir -p "$out/src/gobaseline/pb" "$out/proto" "$out/gen" "$out/bin"

# Stage the .proto files (the same ones the Rust build compiles).
cp -r "$protos/switchyard" "$out/proto/"

# Import paths: gobaseline/pb/switchyard_<name>_v1 (the package name protoc-gen-go 1.3 derives
# from the proto package, so both generators agree on it).
pkgs=(client logic gateway room matchmaking)
mapping=""
for p in "${pkgs[@]}"; do
  mapping="$mapping,Mswitchyard/$p/v1/$p.proto=gobaseline/pb/switchyard_${p}_v1"
done
mapping="${mapping#,}"
for p in "${pkgs[@]}"; do
  gen="$out/gen/$p"
  mkdir -p "$gen"
  protoc -I "$out/proto" \
    --go_out="$mapping:$gen" \
    --go-grpc_out="$mapping:$gen" \
    "switchyard/$p/v1/$p.proto"
  dest="$out/src/gobaseline/pb/switchyard_${p}_v1"
  mkdir -p "$dest"
  find "$gen" -name '*.go' -exec mv {} "$dest/" \;
done

# The committed sources.
for cmd in gateway room match; do
  mkdir -p "$out/src/gobaseline/$cmd"
  cp "$here/$cmd"/*.go "$out/src/gobaseline/$cmd/"
done

export GO111MODULE=off GOPATH="$gopath:$debian_gocode" GOFLAGS=
go build -o "$out/bin/go-gateway" gobaseline/gateway
go build -o "$out/bin/go-room" gobaseline/room
go build -o "$out/bin/go-match" gobaseline/match
echo "go-baseline: built $out/bin/go-gateway, $out/bin/go-room and $out/bin/go-match"
