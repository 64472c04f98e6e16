//! [`DistributedSemaphore`] on a memory store: a permit is a [`Claim::Permit`] entry of the
//! name's semaphore queue, which is independent of lock `name` and reader-writer lock `name`.

use async_trait::async_trait;
use locksmith_api::instrument::AcquireKind;
use locksmith_api::{Claim, DistributedSemaphore, LockError, LockGuard};

use crate::session::MemoryLock;

/// Counting semaphores with the etcd backend's semantics: FIFO, at most `limit` permits of a
/// name held at once over all sessions, one limit per name (the limit of the name's oldest
/// holder or waiter; another one fails with [`LockError::LimitMismatch`] and queues nothing).
///
/// [`MemoryStore::revoke_permits`](crate::MemoryStore::revoke_permits) removes the current
/// permit holders for fault-injection tests.
#[async_trait]
impl DistributedSemaphore for MemoryLock {
    async fn acquire(&self, name: &str, limit: u32) -> Result<LockGuard, LockError> {
        self.telemetry()
            .acquire_with(AcquireKind::Acquire, name, || {
                self.hold(Claim::Permit { limit }, name)
            })
            .await
    }

    async fn try_acquire(&self, name: &str, limit: u32) -> Result<Option<LockGuard>, LockError> {
        self.telemetry()
            .acquire_with(AcquireKind::TryAcquire, name, || async {
                self.try_hold(Claim::Permit { limit }, name)
            })
            .await
    }
}
