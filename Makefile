# locksmith: the two set-up commands are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: demo test deps fmt lint features package fresh-build unit doc chaos chaos-plain chaos-auth chaos-short bench

# The three-client demo on the embedded memory backend: builds only the memory backend, so it
# needs no protoc and no etcd.
demo:
	$(CARGO) run --example three_clients --no-default-features --features memory

# Everything CI runs: installs what is missing (protoc, etcd, etcdctl), then format, lints,
# every test (real etcd included) and the doc tests.
test: deps fmt lint features fresh-build unit doc chaos-short

deps:
	bash scripts/install-deps.sh

fmt:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --all-features --no-deps

# `cargo check` of every combination of the facade's features (read from `cargo metadata`),
# each with every target it enables; a warning fails it too. About 70 s from cold on 2 cores
# (24 combinations), a few seconds when nothing changed.
features:
	CARGO=$(CARGO) bash scripts/features.sh

# Every crate as crates.io would get it, in dependency order: packaged, built from the
# package alone, and (dry run) published. Unpublished workspace crates resolve through
# cargo's local registry overlay (cargo >= 1.90). Needs a clean git tree, as a real publish.
package:
	$(CARGO) package --workspace
	$(CARGO) publish --workspace --dry-run

# What `make demo` builds on a machine with only the Rust toolchain: the memory-only facade
# builds with protoc pointing nowhere, and its dependency tree has no gRPC stack. Its own
# target dir, so that the PROTOC change does not rebuild the main one.
FRESH_TARGET ?= target/fresh-build
fresh-build:
	PROTOC=/nonexistent CARGO_TARGET_DIR=$(FRESH_TARGET) $(CARGO) build -p locksmith --no-default-features --features memory
	@if $(CARGO) tree -p locksmith --no-default-features --features memory | grep -E 'tonic|prost|etcd-client'; then \
		echo "fresh-build: the memory-only build depends on the gRPC stack (above)" >&2; exit 1; \
	else echo "fresh-build: memory-only build needs no protoc, no tonic, prost or etcd-client"; fi

# tests/facade/examples.rs runs the example programs themselves: build them first.
unit:
	$(CARGO) build --workspace --examples --all-features
	$(CARGO) test --workspace --all-targets --all-features

doc:
	$(CARGO) test --workspace --doc --all-features

# The chaos runs: client processes against a 3-member etcd cluster under random faults,
# with a checked history (CHAOS_SECS each, default 300): once plain, once with etcd auth on
# and a 2-second auth token TTL. Each exits 0 only on a clean verdict.
chaos: chaos-plain chaos-auth

chaos-plain: deps
	CHAOS_AUTH= $(CARGO) run --release --example chaos --features etcd-testing -- --secs $${CHAOS_SECS:-300}

chaos-auth: deps
	$(CARGO) run --release --example chaos --features etcd-testing -- --secs $${CHAOS_SECS:-300} --auth

# The 60-second chaos run of `make test` (debug build, already built by `unit`).
chaos-short:
	CHAOS_AUTH= $(CARGO) run --example chaos --all-features -- --secs 60

# The etcd benchmarks of BENCHMARKS.md: every mode on one etcd member, then on a 3-member
# cluster (leader first, then a follower first), BENCH_SECS seconds a run (default 5),
# locksmith beside v3lock and Go's concurrency.Mutex (its Debian packages installed if
# missing). The JSON lines and the SVG charts drawn from them go to docs/bench/.
BENCH_SECS ?= 5
bench: deps
	bash bench/run.sh $(BENCH_SECS) --with-go --out docs/bench/1-member.jsonl
	bash bench/run.sh $(BENCH_SECS) --with-go --cluster 3 --out docs/bench/3-members.jsonl
	bash bench/charts.sh --dir docs/bench docs/bench/1-member.jsonl docs/bench/3-members.jsonl
