#!/usr/bin/env bash
# CI smoke run: build the targets, then run each for SECS seconds (default
# 15) on the committed corpus. Exits non-zero on the first finding.
#   fuzz/smoke.sh [SECS]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-15}
start=$(date +%s)
cargo +nightly fuzz build
built=$(date +%s)
for t in ovp_validate station_reassembly line_parser channel_decoder config_parser; do
  # A scratch copy of the corpus, so a smoke run adds nothing to the tree.
  scratch=$(mktemp -d)
  cp -r "corpus/$t/." "$scratch/"
  cargo +nightly fuzz run "$t" "$scratch" -- -max_total_time="$secs" -max_len=4096 \
    -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$scratch/" 2>&1 | tail -n 3
  status=${PIPESTATUS[0]}
  if [ "$status" -ne 0 ]; then
    echo "smoke: $t found a crash; the input is in $scratch" >&2
    exit "$status"
  fi
  rm -rf "$scratch"
done
echo "smoke: build $((built - start)) s, runs $(( $(date +%s) - built )) s" >&2
