#!/usr/bin/env bash
# Installs what the build and the tests need on a fresh Debian machine:
# protoc and the well-known protos (etcd-client builds its gRPC code at build time)
# and the etcd server and etcdctl (integration tests start a real etcd on loopback), and the
# openssl command (the TLS test makes its certificates with it), and Go with Debian's etcd 3.4
# sources (backend-etcd/tests/etcd/rwlock_interop.rs builds tests/go/rwmutex, a Go recipe.RWMutex
# peer, GOPATH-style against /usr/share/gocode).
# Does nothing when everything is already there.
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/timestamp.proto ] || need+=(libprotobuf-dev)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v go >/dev/null 2>&1 || need+=(golang-go)
[ -d /usr/share/gocode/src/go.etcd.io/etcd/contrib/recipes ] || need+=(golang-etcd-server-dev)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

echo "install-deps: installing ${need[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
