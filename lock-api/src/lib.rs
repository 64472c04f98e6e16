//! The locksmith vocabulary: the [`DistributedLock`] trait every backend implements, the
//! [`LockGuard`] users hold, [`FencingToken`], [`LockError`], the lock-name rules, the FIFO
//! [`LockTable`] backends build on, leader election ([`LeaderElection`], [`Leadership`],
//! [`LeaderWatch`]; [`Coordination`] for sessions offering both), and (feature `conformance`)
//! the behaviour suite every backend runs.
//!
//! Application code usually depends on the `locksmith` facade crate, which re-exports all of
//! this together with the backends and configuration. This crate is what a backend, or code
//! generic over lock providers, needs.
//!
//! ```
//! use locksmith_api::{DistributedLock, LockError};
//!
//! /// Runs `job` while holding the lock `name`, on any backend.
//! async fn exclusively<L: DistributedLock + ?Sized>(
//!     locks: &L,
//!     name: &str,
//!     job: impl std::future::Future<Output = ()>,
//! ) -> Result<(), LockError> {
//!     let guard = locks.lock(name).await?;
//!     tokio::select! {
//!         () = job => guard.unlock().await,
//!         reason = guard.lost() => Err(LockError::LockLost { name: name.into(), reason }),
//!     }
//! }
//!
//! // Bad names are refused before any backend is involved.
//! assert!(locksmith_api::validate_name("reports/nightly").is_ok());
//! assert!(locksmith_api::validate_name("").is_err());
//! ```
//!
//! # Writing a backend
//! Implement [`DistributedLock`] for a client session: validate names with
//! [`validate_name`], return a [`LockGuard`] built from a [`Hold`] (how to release) and a
//! [`LostWatch`] (how the guard learns of a loss), and run the
//! `conformance` suite (feature `conformance`) from your tests. For leader election, build a [`Leadership`] from such
//! a guard and a [`Proclaim`], and serve observers from a [`LeaderFeed`] per observed name.
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod election;
mod error;
mod fencing;
mod guard;
mod name;
mod shared;
pub mod table;

#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;

pub use async_trait::async_trait;
pub use election::{
    Coordination, LeaderElection, LeaderFeed, LeaderInfo, LeaderState, LeaderWatch, Leadership,
    Proclaim,
};
pub use error::{BoxError, LockError, LossReason};
pub use fencing::FencingToken;
pub use guard::{Hold, LockGuard, LostSignal, LostWatch};
pub use name::{validate_name, MAX_NAME_LEN};
pub use shared::{validate_limit, DistributedRwLock, DistributedSemaphore};
pub use table::{Claim, Family, LockTable, Ticket};

/// A client session that takes named, mutually exclusive locks.
///
/// A value stands for one session: on etcd a lease kept alive in the background, in memory a
/// session record with the same TTL rules. Every session of one store (one etcd cluster and
/// namespace, one memory store) excludes every other on the same name, and the tasks of one
/// session exclude each other too: the lock is not reentrant.
///
/// Use it as `&dyn DistributedLock`, `Arc<dyn DistributedLock>` or a generic
/// `L: DistributedLock`.
///
/// # Fairness
/// Waiters on a name are served in the order they arrived (FIFO), without polling.
///
/// # Cancellation
/// Every method is cancel-safe: dropping a `lock` future withdraws it from the queue, so
/// nobody waits behind it. Wait with a deadline through `tokio::time::timeout(d, l.lock(name))`.
///
/// # Session end
/// When the session ends (TTL expired, revoked, [`close`](DistributedLock::close)d, or the last
/// handle of the client dropped) every guard it issued reports [`LockGuard::lost`], every
/// waiter fails with [`LockError::SessionLost`], and the locks pass to the next waiters.
#[async_trait]
pub trait DistributedLock: Send + Sync {
    /// Waits until the lock `name` is ours, in FIFO order.
    ///
    /// # Errors
    /// [`LockError::InvalidName`] for a bad name, [`LockError::SessionLost`] when the session
    /// ends before or while waiting, a backend error when the backend cannot be reached.
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped future leaves the queue (or passes the lock on, if it had just
    /// been handed over), so later waiters are not held up.
    async fn lock(&self, name: &str) -> Result<LockGuard, LockError>;

    /// Takes the lock `name` if nobody holds it; `Ok(None)` when another owner (or another
    /// task of this session) holds it. Never waits behind the queue.
    ///
    /// # Errors
    /// As [`lock`](DistributedLock::lock).
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped call leaves nothing behind.
    async fn try_lock(&self, name: &str) -> Result<Option<LockGuard>, LockError>;

    /// Ends the session now: its guards report loss, its waiters fail with
    /// [`LockError::SessionLost`], and its locks pass on. Later calls fail the same way.
    ///
    /// # Errors
    /// A backend error if the backend could not be told; the session then ends with its TTL.
    ///
    /// # Cancel safety
    /// The session counts as closed locally from the first poll.
    async fn close(&self) -> Result<(), LockError>;
}
