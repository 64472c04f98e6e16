#!/usr/bin/env bash
# Runs every etcd benchmark against one fresh single-node etcd on loopback, locksmith beside
# etcd's server-side lock (v3lock) and, where a Go toolchain with Debian's etcd sources is
# installed (apt-get install golang-go golang-etcd-server-dev), Go's concurrency.Mutex.
# Prints one JSON line per run.
#
#   bash bench/run.sh [SECONDS_PER_RUN]     (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
bash scripts/install-deps.sh

cargo build --release -q -p locksmith --example etcd_bench
bench=target/release/examples/etcd_bench

go_bench=""
if command -v go >/dev/null 2>&1 && [ -d /usr/share/gocode/src/go.etcd.io/etcd/clientv3/concurrency ]; then
  go_bench="$(mktemp -d)/etcd_bench_go"
  (cd bench/go && GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$(dirname "$go_bench")/cache" \
     GOFLAGS=-mod=mod go build -o "$go_bench" .) || go_bench=""
fi
[ -n "$go_bench" ] || echo "bench: no Go toolchain with etcd sources; skipping Go's concurrency.Mutex" >&2

data="$(mktemp -d)"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
client_port="$(port)"; peer_port="$(port)"
etcd --name bench --data-dir "$data/etcd" \
  --listen-client-urls "http://127.0.0.1:$client_port" --advertise-client-urls "http://127.0.0.1:$client_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "bench=http://127.0.0.1:$peer_port" --log-level error >"$data/etcd.log" 2>&1 &
etcd_pid=$!
trap 'kill -9 $etcd_pid 2>/dev/null; rm -rf "$data"' EXIT
endpoint="127.0.0.1:$client_port"
for _ in $(seq 100); do
  ETCDCTL_API=3 etcdctl --endpoints "$endpoint" endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done

run() { # MODE CLIENTS
  "$bench" --endpoints "$endpoint" --mode "$1" --clients "$2" --duration "$secs" --impl locksmith
  if [ "$1" != floor ]; then
    "$bench" --endpoints "$endpoint" --mode "$1" --clients "$2" --duration "$secs" --impl v3lock
    [ -z "$go_bench" ] || "$go_bench" -endpoints "$endpoint" -mode "$1" -clients "$2" -duration "$secs"
  fi
}
run floor 1
run uncontended 1
run contended 3
run contended 16
run distinct 16
