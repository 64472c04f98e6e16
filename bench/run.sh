#!/usr/bin/env bash
# Runs every etcd benchmark against a fresh etcd on loopback (one member, or a cluster),
# locksmith beside etcd's server-side lock (v3lock) and, where a Go toolchain with Debian's
# etcd sources is installed (apt-get install golang-go golang-etcd-server-dev, or --with-go),
# Go's concurrency.Mutex, concurrency.Election and recipe.RWMutex (there is no Go semaphore).
# Prints one JSON line per run;
# `bash bench/charts.sh FILE` draws them.
#
#   bash bench/run.sh [SECONDS_PER_RUN] [--cluster MEMBERS] [--out FILE] [--with-go] [--modes LIST]
#
#   SECONDS_PER_RUN   default 5
#   --cluster N       an N-member cluster (default 1): every mode with the leader first in the
#                     clients' endpoint list, then every mode again with a follower first
#   --out FILE        also write the JSON lines to FILE (replaced)
#   --with-go         install the Go peer's packages if missing (also: BENCH_WITH_GO=1)
#   --modes LIST      only these modes, comma-separated (default: floor, uncontended,
#                     contended, distinct, failover, observe, observers, rw, semaphore;
#                     floor always runs)
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit "${1:-2}"; }
secs=5 members=1 out="" with_go="${BENCH_WITH_GO:-}" modes=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cluster) [ $# -ge 2 ] || usage; members="$2"; shift 2 ;;
    --cluster=*) members="${1#*=}"; shift ;;
    --out) [ $# -ge 2 ] || usage; out="$2"; shift 2 ;;
    --out=*) out="${1#*=}"; shift ;;
    --with-go) with_go=1; shift ;;
    --modes) [ $# -ge 2 ] || usage; modes="$2"; shift 2 ;;
    --modes=*) modes="${1#*=}"; shift ;;
    -h | --help) usage 0 ;;
    [0-9]*) secs="$1"; shift ;;
    *) echo "bench: unknown argument $1" >&2; usage ;;
  esac
done
[[ "$members" =~ ^[1-9][0-9]*$ ]] || { echo "bench: --cluster needs a member count, got $members" >&2; exit 2; }
[[ "$secs" =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "bench: seconds must be a number, got $secs" >&2; exit 2; }
# --out is relative to where the script was started; everything else to the repository.
[ -z "$out" ] || [[ "$out" == /* ]] || out="$PWD/$out"
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
if [ -n "$with_go" ] && ! { command -v go >/dev/null 2>&1 && [ -d /usr/share/gocode/src/go.etcd.io/etcd/clientv3/concurrency ]; }; then
  echo "bench: installing golang-go golang-etcd-server-dev (the Go peer)" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends golang-go golang-etcd-server-dev >/dev/null
fi

cargo build --release -q -p locksmith --example etcd_bench
bench=target/release/examples/etcd_bench

go_bench=""
if command -v go >/dev/null 2>&1 && [ -d /usr/share/gocode/src/go.etcd.io/etcd/clientv3/concurrency ]; then
  go_dir="$PWD/target/bench-go"
  go_bench="$go_dir/etcd_bench_go"
  mkdir -p "$go_dir"
  (cd bench/go && GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$go_dir/cache" \
     GOFLAGS=-mod=mod go build -o "$go_bench" .) || go_bench=""
fi
[ -n "$go_bench" ] || echo "bench: no Go toolchain with etcd sources; skipping Go's concurrency.Mutex (--with-go installs it)" >&2

if [ -n "$out" ]; then
  mkdir -p "$(dirname "$out")"
  : >"$out"
fi
emit() { if [ -n "$out" ]; then tee -a "$out"; else cat; fi; }

# The etcd members: free loopback ports, one data dir each, all killed and removed on exit.
data="$(mktemp -d)"
pids=()
stop_etcd() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$data"
}
trap stop_etcd EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
client_urls=() peer_urls=() initial_cluster=""
for i in $(seq "$members"); do
  client_urls+=("127.0.0.1:$(port)")
  peer_urls+=("http://127.0.0.1:$(port)")
  initial_cluster+="${initial_cluster:+,}bench$i=${peer_urls[-1]}"
done
for i in $(seq "$members"); do
  client="http://${client_urls[i - 1]}" peer="${peer_urls[i - 1]}"
  etcd --name "bench$i" --data-dir "$data/etcd$i" \
    --listen-client-urls "$client" --advertise-client-urls "$client" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "$initial_cluster" --initial-cluster-state new \
    --initial-cluster-token "bench-$$" --log-level error >"$data/etcd$i.log" 2>&1 &
  pids+=($!)
done
all_endpoints="$(IFS=,; echo "${client_urls[*]}")"
etcdctl_() { ETCDCTL_API=3 etcdctl --endpoints "$all_endpoints" "$@"; }
healthy=""
for _ in $(seq 200); do
  if etcdctl_ endpoint health >/dev/null 2>&1; then healthy=1; break; fi
  sleep 0.1
done
[ -n "$healthy" ] || { echo "bench: etcd did not become healthy; its logs:" >&2; cat "$data"/etcd*.log >&2; exit 1; }

# The endpoint of the current leader.
leader() {
  etcdctl_ endpoint status -w json | python3 -c '
import json, sys
status = json.load(sys.stdin)
leader = [s["Endpoint"] for s in status if s["Status"]["header"]["member_id"] == s["Status"]["leader"]]
if len(leader) != 1:
    sys.exit("bench: no single leader in %s" % json.dumps(status))
print(leader[0])
'
}

# The client endpoints with the leader first (`leader`) or a follower first (`follower`),
# the others after it in member order.
ordered_endpoints() { # leader|follower LEADER
  local first="" endpoint rest=()
  for endpoint in "${client_urls[@]}"; do
    if [ "$endpoint" = "$2" ]; then [ "$1" != leader ] || first="$endpoint"
    elif [ "$1" = follower ] && [ -z "$first" ]; then first="$endpoint"
    fi
  done
  for endpoint in "${client_urls[@]}"; do [ "$endpoint" = "$first" ] || rest+=("$endpoint"); done
  (IFS=,; echo "$first,${rest[*]}")
}

run() { # SETUP ENDPOINTS MODE CLIENTS [LIMIT]
  local setup="$1" url="etcd://$2/" mode="$3" clients="$4" limit="${5:-}" extra=() go_extra=()
  case "$mode" in
    # Contended, failover, rw and semaphore runs also sample the floor under their own load
    # (loaded_floor_p50_us).
    contended | failover | rw) extra=(--probe-floor) ;;
    semaphore) extra=(--probe-floor --limit "$limit") ;;
    # CLIENTS observers of one name on one session.
    observers) extra=(--observers "$clients") go_extra=(-observers "$clients") clients=1 ;;
  esac
  "$bench" --endpoints "$url" --mode "$mode" --clients "$clients" --duration "$secs" --impl locksmith --setup "$setup" "${extra[@]}" | emit
  case "$mode" in
    floor) return ;;
    # Elections have no v3lock counterpart here (etcd's v3election service is not measured),
    # nor have reader-writer locks and semaphores (etcd's server has neither).
    failover | observe | observers | rw) ;;
    # Go has no semaphore either.
    semaphore) return ;;
    *) "$bench" --endpoints "$url" --mode "$mode" --clients "$clients" --duration "$secs" --impl v3lock --setup "$setup" "${extra[@]}" | emit ;;
  esac
  [ -z "$go_bench" ] || "$go_bench" -endpoints "$url" -mode "$mode" -clients "$clients" -duration "$secs" -setup "$setup" "${go_extra[@]}" | emit
}

# Whether --modes (if given) names MODE; the floor always runs: the other modes are read
# against it.
wanted() { [ -z "$modes" ] || [ "$1" = floor ] || [[ ",$modes," == *",$1,"* ]]; }

every_mode() { # SETUP [leader|follower]
  local setup="$1" first="${2:-}" endpoints="$all_endpoints" was="" mode clients limit
  # MODE CLIENTS [LIMIT]: the semaphore runs give their permits.
  for mode_clients in "floor 1" "uncontended 1" "contended 3" "contended 16" "distinct 16" \
    "failover 3" "observe 1" "observers 1000" "rw 3" "rw 16" "semaphore 3 2" "semaphore 16 4"; do
    read -r mode clients limit <<<"$mode_clients"
    wanted "$mode" || continue
    # The leader may move (the machine is busy): look it up before each run, check it after.
    [ -z "$first" ] || { was="$(leader)"; endpoints="$(ordered_endpoints "$first" "$was")"; }
    run "$setup" "$endpoints" "$mode" "$clients" "$limit"
    if [ -n "$first" ] && [ "$(leader)" != "$was" ]; then
      echo "bench: the leader moved during $mode $clients ($setup): that line mixes both" >&2
    fi
  done
}

if [ "$members" -eq 1 ]; then
  every_mode "1 member"
else
  every_mode "$members members, leader first" leader
  every_mode "$members members, follower first" follower
fi
