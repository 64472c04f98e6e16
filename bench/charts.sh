#!/usr/bin/env bash
# Draws the JSON lines of bench/run.sh as SVG charts: the contended handoff latency
# distribution of every implementation, per etcd setup and client count, beside the floor,
# and the same for the leader failover latency of the failover runs.
# The drawing tool (bench/chart, plotters' SVG backend) is a crate of its own, outside the
# workspace, so that no plotting crate enters locksmith's dependency tree.
#
#   bash bench/charts.sh [--dir DIR] RESULTS.jsonl...     (DIR defaults to docs/bench)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -gt 0 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
CARGO_TARGET_DIR="$root/target/bench-chart" \
  cargo run --release -q --manifest-path "$root/bench/chart/Cargo.toml" -- "$@"
