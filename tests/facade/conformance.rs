//! Every backend through one suite, configured the way users configure them.

use std::sync::Arc;

use locksmith::{Coordination, DistributedLock, LockError, MemoryStore};
use locksmith_api::conformance::{CoordinationFactory, SessionFactory};

/// The memory backend as `LockConfig` builds it: a named store per test, new sessions on it.
struct MemoryThroughConfig {
    store: String,
}

impl MemoryThroughConfig {
    fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        MemoryThroughConfig {
            store: format!("facade-conformance-{n}"),
        }
    }
}

#[locksmith::async_trait]
impl SessionFactory for MemoryThroughConfig {
    async fn connect(&self) -> Result<Arc<dyn DistributedLock>, LockError> {
        let url = format!("memory://{}", self.store);
        url.parse::<locksmith::LockConfig>()?.connect().await
    }

    async fn queue_len(&self, name: &str) -> usize {
        MemoryStore::named(&self.store).queue_len(name)
    }
}

/// Election sessions as `LockConfig::connect_coordination` opens them on `memory://NAME`.
#[locksmith::async_trait]
impl CoordinationFactory for MemoryThroughConfig {
    async fn connect(&self) -> Result<Arc<dyn Coordination>, LockError> {
        let url = format!("memory://{}", self.store);
        url.parse::<locksmith::LockConfig>()?
            .connect_coordination()
            .await
    }

    async fn queue_len(&self, name: &str) -> usize {
        MemoryStore::named(&self.store).queue_len(name)
    }
}

mod memory {
    use super::*;
    locksmith_api::conformance_tests!(MemoryThroughConfig::new());

    mod election {
        use super::*;
        locksmith_api::election_conformance_tests!(MemoryThroughConfig::new());
    }
}
