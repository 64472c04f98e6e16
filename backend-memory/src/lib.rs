//! The in-process locksmith backend: Go `sync.Mutex` semantics behind the
//! [`DistributedLock`](locksmith_api::DistributedLock) trait, mirroring the etcd backend's
//! model (sessions with a TTL, fencing tokens, loss signals, cancel safety) so that code tested
//! here behaves the same on etcd.
//!
//! ```
//! use locksmith_api::DistributedLock;
//! use locksmith_memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), locksmith_api::LockError> {
//! let store = MemoryStore::new();
//! let (a, b) = (store.connect()?, store.connect()?);
//!
//! let guard = a.lock("invoices").await?;
//! assert!(b.try_lock("invoices").await?.is_none()); // another session holds it
//!
//! // Fault injection: the holder's session expires, as after a long process pause.
//! a.expire();
//! guard.lost().await;
//! let next = b.lock("invoices").await?;
//! assert!(next.fencing_token() > guard.fencing_token());
//! # Ok(())
//! # }
//! ```
//!
//! # Semantics
//! - Not reentrant: a second `lock` of a held name waits, also from the same session.
//! - FIFO handoff without polling; distinct names (`a`, `a/b`) never block each other.
//! - The state of a name is freed as soon as nobody holds or waits for it.
//! - Sessions have a TTL (default 10 s) kept alive while the client lives; dropping the last
//!   handle closes the session and releases its locks at once.
//! - Time follows tokio's clock: `tokio::time::pause()` makes TTL tests instant.
//!
//! # Leader election
//! [`MemoryLock`] implements [`LeaderElection`](locksmith_api::LeaderElection) with the etcd
//! backend's semantics. A candidate is an entry of the name's lock queue carrying its value:
//! the oldest leads, campaigns and locks of one name (also from one session) are served one at
//! a time in arrival order, and each new leader's fencing token is greater than every earlier
//! one's. The leader's key is `{name}/{session id in hex}`, as a lock's. `leader()` and
//! `observe()` report whoever holds the name, so a plain `lock` holder shows up as a leader
//! with an empty value. Observers see every change of holder and every proclamation, `None`
//! when nobody leads, and end with [`LockError::SessionLost`](locksmith_api::LockError) when
//! their session ends. The fault injection above works for leaders too.
//!
//! ```
//! use locksmith_api::{LeaderElection, LossReason};
//! use locksmith_memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), locksmith_api::LockError> {
//! let store = MemoryStore::new();
//! let (a, b, watcher) = (store.connect()?, store.connect()?, store.connect()?);
//!
//! let mut changes = watcher.observe("scheduler").await?;
//! assert_eq!(changes.next().await.transpose()?, Some(None)); // nobody leads yet
//!
//! let leadership = a.campaign("scheduler", b"host-a").await?;
//! leadership.proclaim(b"host-a, epoch 2").await?;
//! let leader = watcher.leader("scheduler").await?.expect("a leads");
//! assert_eq!(leader.value(), b"host-a, epoch 2");
//!
//! // b queues behind a; a's session expires and b takes over with a greater token.
//! // (The task gets a handle of b's session: dropping the last one would close it.)
//! let candidate = b.clone();
//! let waiting = tokio::spawn(async move { candidate.campaign("scheduler", b"host-b").await });
//! while store.queue_len("scheduler") < 2 {
//!     tokio::task::yield_now().await;
//! }
//! a.expire();
//! assert_eq!(leadership.lost().await, LossReason::Expired);
//! let next = waiting.await.expect("the candidate task")?;
//! assert!(next.fencing_token() > leadership.fencing_token());
//! next.resign().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Reader-writer locks and semaphores
//! [`MemoryLock`] implements [`DistributedRwLock`](locksmith_api::DistributedRwLock) and
//! [`DistributedSemaphore`](locksmith_api::DistributedSemaphore) with the etcd backend's
//! semantics, on the same table as locks: every name has one FIFO queue per family whose
//! entries are granted by one rule — a writer (like a lock) when it is the oldest entry, a
//! reader when no older writer holds or waits, a permit when fewer than `limit` older entries
//! hold. So readers share (also within one session), a waiting writer stops later readers,
//! a session's own read guard blocks its own `write`, and a free permit never goes to a later
//! waiter. Lock `x`, reader-writer lock `x` and semaphore `x` are independent, as on etcd,
//! where they use different keys.
//!
//! - **Limits:** a semaphore name's limit is that of its oldest holder or waiter; another
//!   limit fails with [`LockError::LimitMismatch`](locksmith_api::LockError) and queues
//!   nothing, 0 with `InvalidLimit`. Once nobody uses the name, any limit is accepted.
//! - **Fencing tokens** come from one counter per store, taken at each grant: a writer's token
//!   is greater than every earlier reader's and writer's of its name, a reader's than every
//!   earlier writer's, a permit's than every permit of its name released before it was
//!   granted.
//! - **Keys** are `{name}/read/…`, `{name}/write/…` and `{name}/permit/…`, unique per hold.
//! - **Loss:** expiry, a stalled keepalive and closing the session end these holds as they end
//!   locks. [`MemoryStore::revoke_rwlock`] removes every current holder of a reader-writer
//!   lock (the writer, or all readers) and [`MemoryStore::revoke_permits`] every permit holder
//!   of a semaphore, as an operator deleting their keys would; [`MemoryStore::revoke`] only
//!   touches locks and leaders.
//!
//! ```
//! use locksmith_api::{DistributedRwLock, DistributedSemaphore, LossReason};
//! use locksmith_memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), locksmith_api::LockError> {
//! let store = MemoryStore::new();
//! let (a, b) = (store.connect()?, store.connect()?);
//!
//! // Readers share; a writer waits for them, and later readers wait behind the writer.
//! let (r1, r2) = (a.read("catalog").await?, b.read("catalog").await?);
//! assert!(b.try_write("catalog").await?.is_none());
//! let writer = b.clone();
//! let waiting = tokio::spawn(async move { writer.write("catalog").await });
//! while store.rwlock_queue_len("catalog") < 3 {
//!     tokio::task::yield_now().await;
//! }
//! assert!(a.try_read("catalog").await?.is_none()); // a writer waits
//! let readers_token = r1.fencing_token().max(r2.fencing_token());
//! r1.unlock().await?;
//! r2.unlock().await?;
//! let written = waiting.await.expect("the writer task")?;
//! assert!(written.fencing_token() > readers_token);
//! written.unlock().await?;
//!
//! // At most two permits of "exports"; every user passes the same limit.
//! let p1 = a.acquire("exports", 2).await?;
//! let p2 = b.acquire("exports", 2).await?;
//! assert!(a.try_acquire("exports", 2).await?.is_none());
//! assert!(a.acquire("exports", 3).await.is_err()); // LimitMismatch
//! store.revoke_permits("exports");
//! assert_eq!(p1.lost().await, LossReason::Deleted);
//! assert!(p2.is_lost());
//! assert!(a.try_acquire("exports", 2).await?.is_some());
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs, missing_debug_implementations)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// Modules build on each other in this order, without cycles: `hold` (table entries) ←
// `observers` ← `store` ← `session` ← the primitives (`mutex`, `election`, `rwlock`,
// `semaphore`).
mod election;
mod hold;
mod mutex;
mod observers;
mod queue;
mod rwlock;
mod semaphore;
mod session;
mod store;

pub use session::MemoryLock;
pub use store::{MemoryStore, DEFAULT_TTL, MAX_TTL};
