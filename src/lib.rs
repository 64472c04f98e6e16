//! Named distributed locks for async Rust: one trait, [`DistributedLock`], with an etcd
//! backend and an in-process memory backend that behaves the same wherever a test could
//! tell.
//!
//! ```
//! use locksmith::{DistributedLock, LockConfig};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), locksmith::LockError> {
//! // The backend comes from configuration: "memory://" here, "etcd://…" in production.
//! let config: LockConfig = "memory://".parse()?;
//! let (alice, bob) = (config.connect().await?, config.connect().await?);
//!
//! let guard = alice.lock("nightly-report").await?;
//! assert!(bob.try_lock("nightly-report").await?.is_none());
//! println!("{} holds {} with token {}", "alice", guard.key(), guard.fencing_token());
//! guard.unlock().await?;
//!
//! let guard = bob.lock("nightly-report").await?;
//! guard.unlock().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # The model
//! A [`DistributedLock`] value is one client session (on etcd a lease kept alive in the
//! background). Locks are named; distinct names never block each other. Waiters are served in
//! FIFO order. A [`LockGuard`] proves ownership: it has the name, the backend key, a
//! [`FencingToken`] that grows from holder to holder, a [`lost`](LockGuard::lost) signal for
//! when the session ends under it, and releases on drop or [`unlock`](LockGuard::unlock).
//!
//! # Synchronous programs
//! [`blocking::Client`] runs a session on a runtime of its own and blocks the calling thread;
//! its guards release on drop.
//!
//! # Cancellation
//! Dropping a `lock()` future at any point withdraws it from the queue. Put a deadline on a
//! wait with `tokio::time::timeout(d, locks.lock(name))`.
//!
//! # Crates and features
//! This facade re-exports [`locksmith_api`] (the trait and vocabulary) and, each behind a
//! feature of the same name, the backends, and adds [`LockConfig`] and the `locksmith`
//! command-line tool:
//!
//! | feature | default | what it brings |
//! |---|---|---|
//! | `memory` | yes | [`MemoryStore`], [`MemoryLock`], `memory://` (from `locksmith-memory`) |
//! | `etcd` | yes | [`EtcdLock`], [`EtcdConfig`], `etcd://` (from `locksmith-etcd`; its build runs `protoc`) |
//! | `cli` | yes | the `locksmith` binary |
//! | `config-files` | yes | [`LockConfig::from_toml`], [`LockConfig::from_json`] (the `toml` and `serde_json` crates) |
//! | `etcd-testing` | no | the real-etcd test harness `locksmith_etcd::testing` |
//! | `metrics` | no | metrics through the `metrics` facade: names, types and labels in [`instrument`] |
//!
//! `locksmith = { version = "0.1", default-features = false, features = ["memory"] }` builds
//! without protoc and without the gRPC stack; add `config-files` to read TOML and JSON
//! configs (without it, URLs still work and [`LockConfig`] implements serde's traits for any
//! parser). A configuration naming a backend that was left
//! out is refused with [`LockError::InvalidConfig`] ("built without the `etcd` feature"):
//! an `etcd://` URL or a `backend = "etcd"` document when it is read, [`LockConfig::Memory`]
//! when it is connected.
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod blocking;
pub mod config;

pub use config::{LockConfig, MemoryConfig};
pub use locksmith_api::DistributedLockExt;
pub use locksmith_api::{
    async_trait, validate_name, BoxError, Coordination, DistributedLock, DistributedRwLock,
    DistributedSemaphore, FencingToken, LeaderElection, LeaderInfo, LeaderState, LeaderWatch,
    Leadership, LockError, LockGuard, LossReason, MAX_NAME_LEN,
};
// Who holds what (issue 14).
pub use locksmith_api::{EntryKind, Primitive, QueueEntry, QueueInfo, QueueView};
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub use locksmith_etcd::{etcd_client, EtcdConfig, EtcdLock, EtcdTls};
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use locksmith_memory::{MemoryLock, MemoryStore};

/// Tracing spans and events, and (feature `metrics`) the metrics table.
pub use locksmith_api::instrument;

/// The backend-side vocabulary, for writing a backend of your own.
pub mod backend {
    pub use locksmith_api::{
        Claim, Family, Hold, LeaderFeed, LockTable, LostSignal, LostWatch, Proclaim, Ticket,
    };
}

/// The README's examples, compiled and run as doc tests.
#[cfg(all(doctest, feature = "memory", feature = "etcd"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
