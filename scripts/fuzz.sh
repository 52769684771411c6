#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ (cargo-fuzz, libFuzzer, nightly), one at a time. See fuzz/README.md.
#
#   scripts/fuzz.sh smoke          every target for 10 s from the kept corpus (CI); the corpus is
#                                  only read: new inputs go to a temporary directory
#   scripts/fuzz.sh run SECONDS    every target for SECONDS; new inputs are added to fuzz/corpus
#   scripts/fuzz.sh cmin           minimizes every target's corpus in place (after `run`)
#
# TARGETS="frame_codec envelope" limits any mode to those targets. Needs a nightly toolchain
# beside stable; without one it says so and exits 0. Installs cargo-fuzz when it is missing.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

mode="${1:-}"
case "$mode" in
  smoke) seconds=10 ;;
  run) seconds="${2:?usage: scripts/fuzz.sh run SECONDS}" ;;
  cmin) ;;
  *) echo "usage: scripts/fuzz.sh smoke | run SECONDS | cmin" >&2; exit 2 ;;
esac

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain (rustup toolchain list); skipping"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

targets="${TARGETS:-$(cargo +nightly fuzz list)}"
# -rss_limit_mb / -malloc_limit_mb: a run that holds 2 GiB, or a single allocation of more than
# 64 MiB, is a failure (no decoder may allocate what a peer merely announces).
limits=(-rss_limit_mb=2048 -malloc_limit_mb=64 -timeout=10 -print_final_stats=1)

cargo +nightly fuzz build
for target in $targets; do
  echo "=== $target"
  case "$mode" in
    smoke)
      scratch="$(mktemp -d)"
      cargo +nightly fuzz run "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$seconds" "${limits[@]}"
      rm -rf "$scratch"
      ;;
    run)
      cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" "${limits[@]}"
      ;;
    cmin)
      # Set cover keeps the same features in about half the files of a plain merge.
      cargo +nightly fuzz cmin "$target" -- -set_cover_merge=1 "${limits[@]}"
      ;;
  esac
done
