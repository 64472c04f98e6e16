//! The shared behaviour suite on the memory backend: locks, leader election, reader-writer
//! locks and semaphores.

use std::sync::Arc;

use locksmith_api::conformance::{
    CoordinationFactory, RwLockFactory, RwLockSession, SemaphoreFactory, SemaphoreSession,
    SessionFactory,
};
use locksmith_api::{Coordination, DistributedLock, LockError};
use locksmith_memory::MemoryStore;

struct Memory(MemoryStore);

#[locksmith_api::async_trait]
impl SessionFactory for Memory {
    async fn connect(&self) -> Result<Arc<dyn DistributedLock>, LockError> {
        Ok(Arc::new(self.0.connect()?))
    }

    async fn queue_len(&self, name: &str) -> usize {
        self.0.queue_len(name)
    }
}

#[locksmith_api::async_trait]
impl CoordinationFactory for Memory {
    async fn connect(&self) -> Result<Arc<dyn Coordination>, LockError> {
        Ok(Arc::new(self.0.connect()?))
    }

    async fn queue_len(&self, name: &str) -> usize {
        self.0.queue_len(name)
    }
}

#[locksmith_api::async_trait]
impl RwLockFactory for Memory {
    async fn connect(&self) -> Result<Arc<dyn RwLockSession>, LockError> {
        Ok(Arc::new(self.0.connect()?))
    }

    async fn queue_len(&self, name: &str) -> usize {
        self.0.rwlock_queue_len(name)
    }
}

#[locksmith_api::async_trait]
impl SemaphoreFactory for Memory {
    async fn connect(&self) -> Result<Arc<dyn SemaphoreSession>, LockError> {
        Ok(Arc::new(self.0.connect()?))
    }

    async fn queue_len(&self, name: &str) -> usize {
        self.0.semaphore_queue_len(name)
    }
}

locksmith_api::conformance_tests!(Memory(MemoryStore::new()));

mod election {
    use super::*;
    locksmith_api::election_conformance_tests!(Memory(MemoryStore::new()));
}

mod rwlock {
    use super::*;
    locksmith_api::rwlock_conformance_tests!(Memory(MemoryStore::new()));
}

mod semaphore {
    use super::*;
    locksmith_api::semaphore_conformance_tests!(Memory(MemoryStore::new()));
}
