//! [`DistributedRwLock`] on a memory store: readers and writers are [`Claim::Read`] and
//! [`Claim::Write`] entries of the name's reader-writer queue, which is independent of lock
//! `name` and semaphore `name` (on etcd they use other keys).

use async_trait::async_trait;
use locksmith_api::instrument::AcquireKind;
use locksmith_api::{Claim, DistributedRwLock, LockError, LockGuard};

use crate::session::MemoryLock;

/// Reader-writer locks with the etcd backend's semantics (Go's `recipe.RWMutex`): FIFO with
/// writer preference, not reentrant (a session's own read guard blocks its own `write`).
///
/// A guard's key is `{name}/{session id in hex}`, as a lock's. [`MemoryStore::revoke_rwlock`]
/// removes the current holders for fault-injection tests.
///
/// [`MemoryStore::revoke_rwlock`]: crate::MemoryStore::revoke_rwlock
#[async_trait]
impl DistributedRwLock for MemoryLock {
    async fn read(&self, name: &str) -> Result<LockGuard, LockError> {
        self.telemetry()
            .acquire_with(AcquireKind::Read, name, || self.hold(Claim::Read, name))
            .await
    }

    async fn try_read(&self, name: &str) -> Result<Option<LockGuard>, LockError> {
        self.telemetry()
            .acquire_with(AcquireKind::TryRead, name, || async {
                self.try_hold(Claim::Read, name)
            })
            .await
    }

    async fn write(&self, name: &str) -> Result<LockGuard, LockError> {
        self.telemetry()
            .acquire_with(AcquireKind::Write, name, || self.hold(Claim::Write, name))
            .await
    }

    async fn try_write(&self, name: &str) -> Result<Option<LockGuard>, LockError> {
        self.telemetry()
            .acquire_with(AcquireKind::TryWrite, name, || async {
                self.try_hold(Claim::Write, name)
            })
            .await
    }
}
