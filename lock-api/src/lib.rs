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
//! use locksmith_api::{DistributedLock, DistributedLockExt, LockError};
//!
//! /// Writes the nightly report while holding its lock, on any backend: the work stops
//! /// with `LockLost` if the lock goes first.
//! async fn nightly_report<L: DistributedLock + ?Sized>(locks: &L) -> Result<usize, LockError> {
//!     locks
//!         .with_lock("reports/nightly", async {
//!             // … the work; its output is returned once the lock is released.
//!             42
//!         })
//!         .await
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
//! [`LostWatch`] (how the guard learns of a loss), and run the `conformance` suite (feature
//! `conformance`) from your tests. A [`LockTable`] keeps the FIFO queues and fencing tokens,
//! whether it is the whole store (an in-process backend) or serializes one session's own tasks
//! (as the etcd backend's does). For leader election, build a [`Leadership`] from such a guard
//! and a [`Proclaim`], and serve observers from a [`LeaderFeed`] per observed name.
//!
//! A whole backend, for the sessions of one process, checked by conformance cases:
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//!
//! use locksmith_api::{
//!     async_trait, validate_name, DistributedLock, Hold, LockError, LockGuard, LockTable,
//!     LossReason, LostSignal, LostWatch, Ticket,
//! };
//! use tokio::sync::watch;
//!
//! /// What the table keeps per holder and waiter: its session, and the loss signal of its
//! /// guard.
//! #[derive(Clone)]
//! struct Entry {
//!     session: u64,
//!     lost: LostSignal,
//! }
//!
//! /// One client session on a shared table.
//! struct LocalLock {
//!     table: Arc<LockTable<Entry>>,
//!     id: u64,
//!     closed: watch::Sender<bool>,
//! }
//!
//! /// How a guard gives its lock up: the table entry goes, the next waiter holds.
//! struct LocalHold(Ticket<Entry>);
//!
//! #[async_trait]
//! impl Hold for LocalHold {
//!     async fn release(self: Box<Self>) -> Result<(), LockError> {
//!         // A hold evicted by `end` has marked its loss, which `unlock` reports first.
//!         self.0.release();
//!         Ok(())
//!     }
//! }
//!
//! impl LocalLock {
//!     fn ended(&self) -> LockError {
//!         let session = self.id.to_string();
//!         LockError::SessionLost { session, reason: LossReason::Closed }
//!     }
//!
//!     /// A table entry of this session, and the watch its guard will have.
//!     fn entry(&self) -> Result<(Entry, LostWatch), LockError> {
//!         if *self.closed.borrow() {
//!             return Err(self.ended());
//!         }
//!         let (lost, watch) = LostSignal::new();
//!         Ok((Entry { session: self.id, lost }, watch))
//!     }
//!
//!     fn guard(&self, ticket: Ticket<Entry>, lost: LostWatch) -> LockGuard {
//!         let (name, token) = (ticket.name().to_owned(), ticket.token());
//!         let key = format!("{name}/{:x}", self.id);
//!         LockGuard::new(name, key, token, lost, Box::new(LocalHold(ticket)))
//!     }
//!
//!     /// Ends the session: its guards learn of the loss, its waiters fail.
//!     fn end(&self) {
//!         self.closed.send_replace(true);
//!         self.table.evict_where(
//!             |entry| entry.session == self.id,
//!             |_name, entry| {
//!                 entry.lost.mark(LossReason::Closed);
//!             },
//!             || self.ended(),
//!         );
//!     }
//! }
//!
//! #[async_trait]
//! impl DistributedLock for LocalLock {
//!     async fn lock(&self, name: &str) -> Result<LockGuard, LockError> {
//!         validate_name(name)?;
//!         let (entry, lost) = self.entry()?;
//!         let mut closed = self.closed.subscribe();
//!         // Dropping the losing branch's `acquire` withdraws it from the queue.
//!         tokio::select! {
//!             ticket = self.table.acquire(name, entry) => Ok(self.guard(ticket?, lost)),
//!             _ = closed.wait_for(|closed| *closed) => Err(self.ended()),
//!         }
//!     }
//!
//!     async fn try_lock(&self, name: &str) -> Result<Option<LockGuard>, LockError> {
//!         validate_name(name)?;
//!         let (entry, lost) = self.entry()?;
//!         let ticket = self.table.try_acquire(name, entry);
//!         Ok(ticket.map(|ticket| self.guard(ticket, lost)))
//!     }
//!
//!     async fn close(&self) -> Result<(), LockError> {
//!         self.end();
//!         Ok(())
//!     }
//! }
//!
//! impl Drop for LocalLock {
//!     fn drop(&mut self) {
//!         self.end(); // dropping the client ends its session
//!     }
//! }
//! # #[cfg(feature = "conformance")]
//! # mod check {
//! # use super::*;
//!
//! // The conformance suite opens sessions through a factory (in your tests).
//! use locksmith_api::conformance::{self, SessionFactory};
//!
//! struct Sessions {
//!     table: Arc<LockTable<Entry>>,
//!     next_id: AtomicU64,
//! }
//!
//! #[async_trait]
//! impl SessionFactory for Sessions {
//!     async fn connect(&self) -> Result<Arc<dyn DistributedLock>, LockError> {
//!         Ok(Arc::new(LocalLock {
//!             table: Arc::clone(&self.table),
//!             id: self.next_id.fetch_add(1, Ordering::Relaxed),
//!             closed: watch::Sender::new(false),
//!         }))
//!     }
//!
//!     async fn queue_len(&self, name: &str) -> usize {
//!         self.table.queue_len(name)
//!     }
//! }
//!
//! # pub async fn run() {
//! let sessions = Sessions { table: LockTable::new(), next_id: AtomicU64::new(1) };
//! conformance::mutual_exclusion_under_contention(&sessions).await;
//! conformance::fifo_order_is_arrival_order(&sessions).await;
//! conformance::cancelled_waiter_does_not_block_queue(&sessions).await;
//! conformance::session_close_releases_and_fails_waiters(&sessions).await;
//! conformance::dropping_client_releases_holds(&sessions).await;
//! conformance::fencing_tokens_increase_across_holders(&sessions).await;
//! // In a test file, `locksmith_api::conformance_tests!(Sessions { … })` writes one
//! // `#[tokio::test]` per case instead.
//! # }
//! # }
//! # #[tokio::main]
//! # async fn main() {
//! #     #[cfg(feature = "conformance")]
//! #     check::run().await;
//! # }
//! ```
#![warn(missing_docs, missing_debug_implementations)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod election;
mod error;
mod ext;
mod fencing;
mod guard;
pub mod instrument;
mod name;
mod pointer;
mod queue;
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
pub use ext::DistributedLockExt;
pub use fencing::FencingToken;
pub use guard::{Hold, LockGuard, LostSignal, LostWatch};
pub use name::{validate_name, MAX_NAME_LEN};
pub use queue::{EntryKind, Primitive, QueueEntry, QueueInfo, QueueView};
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
/// `L: DistributedLock`: it is implemented for `&T`, `Box<T>` and `Arc<T>` of every session
/// type `T` (also `dyn`), as are [`LeaderElection`], [`DistributedRwLock`] and
/// [`DistributedSemaphore`]. [`DistributedLockExt`] adds
/// [`with_lock`](DistributedLockExt::with_lock) to every session.
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
    /// # Examples
    /// ```
    /// use std::time::Duration;
    ///
    /// use locksmith_api::DistributedLock;
    /// use locksmith_memory::MemoryStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), locksmith_api::LockError> {
    /// let store = MemoryStore::new();
    /// let (a, b) = (store.connect()?, store.connect()?);
    ///
    /// let guard = a.lock("billing/close-month").await?;
    /// let first = guard.fencing_token();
    ///
    /// // A deadline on the wait: the timed-out waiter leaves the queue.
    /// let wait = tokio::time::timeout(Duration::from_millis(10), b.lock("billing/close-month"));
    /// assert!(wait.await.is_err());
    ///
    /// // b waits behind a until a unlocks, then holds with a greater token.
    /// let waiting = tokio::spawn(async move { b.lock("billing/close-month").await });
    /// while store.queue_len("billing/close-month") < 2 {
    ///     tokio::task::yield_now().await;
    /// }
    /// guard.unlock().await?;
    /// let next = waiting.await.expect("the waiter task")?;
    /// assert!(next.fencing_token() > first);
    /// # Ok(())
    /// # }
    /// ```
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
    /// # Examples
    /// ```
    /// use locksmith_api::DistributedLock;
    /// use locksmith_memory::MemoryStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), locksmith_api::LockError> {
    /// let store = MemoryStore::new();
    /// let (a, b) = (store.connect()?, store.connect()?);
    ///
    /// match a.try_lock("cache/rebuild").await? {
    ///     Some(guard) => {
    ///         // Ours: b cannot have it, not even from its own session twice.
    ///         assert!(b.try_lock("cache/rebuild").await?.is_none());
    ///         assert!(a.try_lock("cache/rebuild").await?.is_none());
    ///         guard.unlock().await?;
    ///     }
    ///     None => unreachable!("nobody else holds it"),
    /// }
    /// assert!(b.try_lock("cache/rebuild").await?.is_some());
    /// # Ok(())
    /// # }
    /// ```
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
