//! The facade's tests in one test binary: one link of the whole stack instead of one per
//! file. Each module is one subject, built when its features are on (`make test` turns them
//! all on); run one with `cargo test --all-features --test facade MODULE::` (e.g. `cli::`).

mod support;

mod blocking;
#[cfg(feature = "cli")]
mod cli;
mod conformance;
#[cfg(all(feature = "cli", feature = "etcd-testing"))]
mod credentials;
#[cfg(all(feature = "cli", feature = "etcd-testing"))]
mod etcd_cli;
#[cfg(all(feature = "cli", feature = "etcd-testing"))]
mod examples;
mod properties;
#[cfg(all(feature = "cli", feature = "etcd-testing"))]
mod status;
