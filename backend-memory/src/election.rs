//! Leader election on a memory store.
//!
//! A candidate is an entry of the name's FIFO lock queue that carries a value, so campaigns
//! and locks of one name share one queue, one holder and one token sequence. Observers are served
//! by [`crate::observers`].

use std::sync::Arc;

use async_trait::async_trait;
use locksmith_api::instrument::AcquireKind;
use locksmith_api::{
    validate_name, Claim, LeaderElection, LeaderInfo, LeaderWatch, Leadership, LockError,
    LossReason, LostWatch, Proclaim,
};

use crate::hold::Candidate;
use crate::observers::{forget_when_unwatched, leader_state};
use crate::session::MemoryLock;
use crate::store::MemoryStore;

/// Proclaims for one campaign, only while its entry holds the name.
struct MemoryProclaim {
    store: MemoryStore,
    name: Arc<str>,
    candidate: Arc<Candidate>,
    lost: LostWatch,
}

#[async_trait]
impl Proclaim for MemoryProclaim {
    async fn proclaim(&self, value: &[u8]) -> Result<(), LockError> {
        let elections = self.store.elections();
        self.store
            .table()
            .with_holder(&self.name, |holder| match holder {
                Some((tag, token))
                    if tag
                        .candidate
                        .as_ref()
                        .is_some_and(|c| Arc::ptr_eq(c, &self.candidate)) =>
                {
                    *self.candidate.value.lock() = value.to_vec();
                    elections.publish(&self.name, || leader_state(&self.name, Some((tag, token))));
                    Ok(())
                }
                _ => Err(LockError::LockLost {
                    name: self.name.to_string(),
                    reason: self.lost.reason().unwrap_or(LossReason::Unknown),
                }),
            })
    }
}

impl MemoryLock {
    /// Queues a candidate carrying `value` in the name's lock queue and waits for its turn.
    async fn enter_campaign(&self, name: &str, value: &[u8]) -> Result<Leadership, LockError> {
        validate_name(name)?;
        self.check_alive()?;
        let candidate = Candidate::new(value);
        let (tag, watch) = self.tag(Some(Arc::clone(&candidate)));
        let ticket = self.enqueue(Claim::Lock, name, &tag).await?;
        let proclaimer = MemoryProclaim {
            store: self.store().clone(),
            name: Arc::clone(ticket.shared_name()),
            candidate,
            lost: watch.clone(),
        };
        let guard = self.guard(ticket, tag, watch);
        Ok(Leadership::new(guard, value, Box::new(proclaimer)))
    }
}

/// Leader election on the memory store, with the semantics of the etcd backend.
///
/// A campaign is an entry of the name's lock queue: campaigns and locks of one name are
/// served in arrival order, one at a time, also within one session. The leader's key is
/// `{name}/{session id in hex}`, as a lock's. [`leader`](LeaderElection::leader) and
/// [`observe`](LeaderElection::observe) report whoever holds the name, so a plain
/// [`lock`](locksmith_api::DistributedLock::lock) holder shows up as a leader with an empty
/// value (on etcd, too, a lock and a candidate are the same key).
///
/// Observers see every change of holder (acquire, release, handoff, eviction when a session
/// ends or a hold is revoked) and every proclamation; their stream ends with
/// [`LockError::SessionLost`] when the observing session ends.
#[async_trait]
impl LeaderElection for MemoryLock {
    async fn campaign(&self, name: &str, value: &[u8]) -> Result<Leadership, LockError> {
        self.telemetry()
            .acquire_with(AcquireKind::Campaign, name, || {
                self.enter_campaign(name, value)
            })
            .await
    }

    async fn leader(&self, name: &str) -> Result<Option<LeaderInfo>, LockError> {
        validate_name(name)?;
        self.check_alive()?;
        Ok(self
            .store()
            .table()
            .with_holder(name, |holder| leader_state(name, holder)))
    }

    async fn observe(&self, name: &str) -> Result<LeaderWatch, LockError> {
        validate_name(name)?;
        self.check_alive()?;
        let store = self.store();
        let elections = store.elections();
        let (watch, new_feed) = store.table().with_holder(name, |holder| {
            elections.watch(self.session_id(), name, leader_state(name, holder))
        });
        if let Some(feed) = new_feed {
            self.spawn(forget_when_unwatched(
                Arc::downgrade(elections),
                name.to_owned(),
                feed,
            ));
        }
        // A session that ended before the feed was listed did not end it: refuse the watch
        // (dropping it lets the feed go).
        self.check_alive()?;
        Ok(watch)
    }
}
