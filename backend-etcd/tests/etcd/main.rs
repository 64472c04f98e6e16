//! Every test of the etcd backend against a real etcd, in one test binary: one link of the
//! gRPC stack instead of one per file, and the shared helpers (`common`) compiled once. Each
//! module is one subject; run one with `cargo test -p locksmith-etcd --all-features --test etcd
//! MODULE::` (e.g. `pitfalls::`). The scale test stays a binary of its own (`--test scale`): it
//! measures its own process's memory.

mod common;

mod auth;
mod cluster;
mod conformance;
mod election;
mod election_attacks;
mod election_interop;
mod handoff_attacks;
mod hardening;
mod harness;
mod hub;
mod keepalive;
mod late_requests;
mod many_names;
mod pitfalls;
mod rwlock;
mod rwlock_interop;
mod semaphore;
mod session;
mod shared_attacks;
mod stall;
mod transport;
mod transport_attacks;
