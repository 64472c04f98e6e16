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
        let reading = self.hold(Claim::Read, name);
        self.telemetry()
            .acquire(AcquireKind::Read, name, reading)
            .await
    }

    async fn try_read(&self, name: &str) -> Result<Option<LockGuard>, LockError> {
        let trying = async { self.try_hold(Claim::Read, name) };
        self.telemetry()
            .acquire(AcquireKind::TryRead, name, trying)
            .await
    }

    async fn write(&self, name: &str) -> Result<LockGuard, LockError> {
        let writing = self.hold(Claim::Write, name);
        self.telemetry()
            .acquire(AcquireKind::Write, name, writing)
            .await
    }

    async fn try_write(&self, name: &str) -> Result<Option<LockGuard>, LockError> {
        let trying = async { self.try_hold(Claim::Write, name) };
        self.telemetry()
            .acquire(AcquireKind::TryWrite, name, trying)
            .await
    }
}
