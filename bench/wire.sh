#!/usr/bin/env bash
# What locksmith's etcd client writes on the wire: captures client → etcd on loopback during a
# short run of examples/etcd_bench.rs (locksmith, then v3lock: etcd's lock API called through
# the same session client) against a fresh single-node etcd, and prints TCP segments and
# HTTP/2 frames per lock+unlock, and which frames each segment starts. Needs root for tcpdump
# (installed with apt-get when missing).
#
#   bash bench/wire.sh [SECONDS] [MODE...]     (default 3 s; modes default to "uncontended")
#
# ETCD_BENCH=path/to/etcd_bench runs that binary instead of building this checkout's (to
# compare with a build of another commit).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-3}"
shift || true
modes=("${@:-uncontended}")
command -v tcpdump >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tcpdump >/dev/null; }
command -v etcd >/dev/null 2>&1 || bash scripts/install-deps.sh
bench="${ETCD_BENCH:-}"
if [ -z "$bench" ]; then
  cargo build --release -q -p locksmith --example etcd_bench
  bench=target/release/examples/etcd_bench
fi

data="$(mktemp -d)"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
client_port="$(port)"; peer_port="$(port)"
etcd --name wire --data-dir "$data/etcd" \
  --listen-client-urls "http://127.0.0.1:$client_port" --advertise-client-urls "http://127.0.0.1:$client_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "wire=http://127.0.0.1:$peer_port" --log-level error >"$data/etcd.log" 2>&1 &
etcd_pid=$!
dump_pid=""
trap 'kill $dump_pid 2>/dev/null; kill -9 $etcd_pid 2>/dev/null; rm -rf "$data"' EXIT
endpoint="127.0.0.1:$client_port"
for _ in $(seq 100); do
  ETCDCTL_API=3 etcdctl --endpoints "$endpoint" endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done

for mode in "${modes[@]}"; do
  for impl in locksmith v3lock; do
    capture="$data/$impl-$mode.pcap"
    tcpdump -i lo -U -w "$capture" "tcp dst port $client_port" 2>/dev/null &
    dump_pid=$!
    sleep 1 # tcpdump has no ready signal; give it time to open the interface
    line="$("$bench" --endpoints "$endpoint" --mode "$mode" --clients 16 --duration "$secs" --impl "$impl")"
    sleep 0.5
    kill -INT "$dump_pid"; wait "$dump_pid" 2>/dev/null || true; dump_pid=""
    echo "$line"
    ops="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["ops"])' "$line")"
    python3 bench/wire.py "$capture" "$ops"
  done
done
