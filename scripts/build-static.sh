#!/usr/bin/env bash
# Builds the one `switchyard` binary, statically linked, for the Docker image (FROM scratch:
# it must start in an empty root filesystem). Output: target/docker/switchyard.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"'
cargo build --release --locked --target x86_64-unknown-linux-gnu -p switchyard
mkdir -p target/docker
cp target/x86_64-unknown-linux-gnu/release/switchyard target/docker/switchyard
# The release profile keeps line tables for profiling; the image does not need them.
if command -v strip >/dev/null 2>&1; then strip target/docker/switchyard; fi
echo "target/docker/switchyard: $(du -h target/docker/switchyard | cut -f1), $(file -b target/docker/switchyard 2>/dev/null | cut -d, -f1-2)"
