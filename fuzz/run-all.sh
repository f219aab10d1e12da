#!/usr/bin/env bash
# The issue-8 campaign: each target for SECS seconds (default 600), one at a
# time, one plain process (with -jobs=N libFuzzer logs to fuzz-N.log
# instead), niced; logs in fuzz/logs/<target>.txt. Needs nightly and
# cargo-fuzz (`cargo install cargo-fuzz --locked`).
#   fuzz/run-all.sh [SECS] [target...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}; shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(ovp_validate station_reassembly line_parser channel_decoder config_parser)
mkdir -p logs
cargo +nightly fuzz build
for t in "${targets[@]}"; do
  echo "== $t $(date -u +%FT%TZ)" >&2
  nice -n 10 cargo +nightly fuzz run "$t" -- -max_total_time="$secs" \
    -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    > "logs/$t.txt" 2>&1 || echo "$t: exit $? (see logs/$t.txt)" >&2
done
