//! One session of the configured backend, seen both as the primitives it offers and as a
//! read-only view of its queues (for `status`, `list` and the waiting-behind messages).

use std::sync::Arc;

use locksmith::{Coordination, LockConfig, LockError, QueueView};

/// The session, twice typed.
pub struct Session {
    /// Locks, elections, reader-writer locks and semaphores.
    pub coordination: Arc<dyn Coordination>,
    /// Who holds what.
    pub view: Arc<dyn QueueView>,
    /// The etcd lease of the session (`None` on the memory backend): how a waiter finds its
    /// own key in a queue.
    pub lease_id: Option<i64>,
}

impl Session {
    /// Opens a session as `config` says.
    pub async fn connect(config: &LockConfig) -> Result<Session, LockError> {
        match config {
            #[cfg(feature = "etcd")]
            LockConfig::Etcd(config) => {
                let session = Arc::new(locksmith::EtcdLock::connect(config).await?);
                Ok(Session {
                    lease_id: Some(session.lease_id()),
                    coordination: session.clone(),
                    view: session,
                })
            }
            #[cfg(feature = "memory")]
            LockConfig::Memory(config) => {
                let store = match &config.store {
                    Some(name) => locksmith::MemoryStore::named(name),
                    None => locksmith::MemoryStore::global(),
                };
                let ttl = std::time::Duration::from_secs(config.ttl_secs);
                let session = Arc::new(store.connect_with_ttl(ttl)?);
                Ok(Session {
                    lease_id: None,
                    coordination: session.clone(),
                    view: session,
                })
            }
            #[cfg(not(feature = "memory"))]
            LockConfig::Memory(_) => Err(LockError::config(
                "locksmith was built without the `memory` feature",
            )),
        }
    }

    /// Ends the session, within the close timeout.
    pub async fn close(&self) {
        let _ = tokio::time::timeout(crate::CLOSE_TIMEOUT, self.coordination.close()).await;
    }
}
