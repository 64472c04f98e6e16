//! The shared behaviour suite on the memory backend: locks, then leader election.

use std::sync::Arc;

use locksmith_api::conformance::{CoordinationFactory, SessionFactory};
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

locksmith_api::conformance_tests!(Memory(MemoryStore::new()));

mod election {
    use super::*;
    locksmith_api::election_conformance_tests!(Memory(MemoryStore::new()));
}
