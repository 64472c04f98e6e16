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
//! # Cancellation
//! Dropping a `lock()` future at any point withdraws it from the queue. Put a deadline on a
//! wait with `tokio::time::timeout(d, locks.lock(name))`.
//!
//! # Crates
//! This facade re-exports [`locksmith_api`] (the trait and vocabulary),
//! [`locksmith_memory`] (the memory backend) and [`locksmith_etcd`] (the etcd backend), and
//! adds [`LockConfig`] and the `locksmith` command-line tool.
#![warn(missing_docs)]

pub mod config;

pub use config::{LockConfig, MemoryConfig};
pub use locksmith_api::{
    async_trait, validate_name, BoxError, DistributedLock, FencingToken, LockError, LockGuard,
    LossReason, MAX_NAME_LEN,
};
pub use locksmith_etcd::{etcd_client, EtcdConfig, EtcdLock, EtcdTls};
pub use locksmith_memory::{MemoryLock, MemoryStore};

/// The backend-side vocabulary, for writing a backend of your own.
pub mod backend {
    pub use locksmith_api::{Hold, LockTable, LostSignal, LostWatch, Ticket};
}

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
