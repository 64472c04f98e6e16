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
#![warn(missing_docs)]

mod election;
mod session;
mod store;

pub use session::MemoryLock;
pub use store::{MemoryStore, DEFAULT_TTL, MAX_TTL};
