//! [`DistributedLock`] on a memory store: a lock is a [`Claim::Lock`] entry of the name's
//! queue.

use async_trait::async_trait;
use locksmith_api::instrument::AcquireKind;
use locksmith_api::{Claim, DistributedLock, LockError, LockGuard, LossReason};

use crate::session::MemoryLock;

#[async_trait]
impl DistributedLock for MemoryLock {
    async fn lock(&self, name: &str) -> Result<LockGuard, LockError> {
        self.telemetry()
            .acquire_with(AcquireKind::Lock, name, || self.hold(Claim::Lock, name))
            .await
    }

    async fn try_lock(&self, name: &str) -> Result<Option<LockGuard>, LockError> {
        self.telemetry()
            .acquire_with(AcquireKind::TryLock, name, || async {
                self.try_hold(Claim::Lock, name)
            })
            .await
    }

    async fn close(&self) -> Result<(), LockError> {
        self.end(LossReason::Closed);
        Ok(())
    }
}
