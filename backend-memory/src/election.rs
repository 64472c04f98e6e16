//! Leader election on a memory store.
//!
//! A candidate is an entry of the name's FIFO lock queue that carries a value, so campaigns
//! and locks of one name share one queue, one holder and one token sequence. Observers read a
//! [`LeaderFeed`] per name and session, which the lock table's holder hook publishes to under
//! the table's lock: publications are in the order of the changes, and so are their versions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use locksmith_api::{
    validate_name, FencingToken, LeaderElection, LeaderFeed, LeaderInfo, LeaderState, LeaderWatch,
    Leadership, LockError, LossReason, LostWatch, Proclaim,
};
use parking_lot::Mutex;

use crate::session::MemoryLock;
use crate::store::{HoldTag, MemoryStore};

/// The proclaimed value of one campaign, shared by its table entry and its leadership.
///
/// It is only written with the table locked (by a proclamation of the holder), so what the
/// holder hook reads is the value as of that change.
pub(crate) struct Candidate {
    value: Mutex<Vec<u8>>,
}

/// The observers of a store, by name and session.
#[derive(Default)]
pub(crate) struct Elections {
    /// The version of the last publication; only changed with the table locked.
    version: AtomicU64,
    /// How many names have feeds, so that the hook costs nothing while nobody observes.
    observed: AtomicUsize,
    feeds: Mutex<HashMap<String, Vec<SessionFeed>>>,
}

/// The feed the observers of one name in one session read: it ends with the session.
struct SessionFeed {
    session: u64,
    feed: Arc<LeaderFeed>,
}

/// Who leads `name` as observers see it: the holder's key, value and token. A plain lock
/// holder leads with an empty value.
fn leader_state(name: &str, holder: Option<(&HoldTag, FencingToken)>) -> LeaderState {
    holder.map(|(tag, token)| {
        let value = tag
            .candidate
            .as_ref()
            .map(|candidate| candidate.value.lock().clone())
            .unwrap_or_default();
        LeaderInfo::new(format!("{name}/{:x}", tag.session), value, token)
    })
}

impl Elections {
    /// The table's holder hook: publishes the new leader of `name` (called with the table
    /// locked).
    pub(crate) fn holder_changed(&self, name: &str, holder: Option<(&HoldTag, FencingToken)>) {
        if self.observed.load(Ordering::Acquire) == 0 {
            return;
        }
        self.publish(name, || leader_state(name, holder));
    }

    /// Publishes `state()` to every feed of `name`, with the next version; call it with the
    /// table locked.
    fn publish(&self, name: &str, state: impl FnOnce() -> LeaderState) {
        let feeds = self.feeds.lock();
        let Some(feeds) = feeds.get(name) else {
            return;
        };
        let version = self.version.fetch_add(1, Ordering::AcqRel) + 1;
        let state = state();
        for session_feed in feeds {
            session_feed.feed.publish(version, state.clone());
        }
    }

    /// A watch for `session` on `name`, whose leader is `state` now; call it with the table
    /// locked. Returns the feed too when it is new, for [`forget_when_unwatched`].
    fn watch(
        &self,
        session: u64,
        name: &str,
        state: LeaderState,
    ) -> (LeaderWatch, Option<Arc<LeaderFeed>>) {
        let version = self.version.load(Ordering::Acquire);
        let mut feeds = self.feeds.lock();
        let of_name = feeds.entry(name.to_owned()).or_insert_with(|| {
            self.observed.fetch_add(1, Ordering::AcqRel);
            Vec::new()
        });
        if let Some(existing) = of_name.iter().find(|f| f.session == session) {
            return (existing.feed.watch_from(version, state), None);
        }
        let feed = Arc::new(LeaderFeed::new(version, state));
        of_name.push(SessionFeed {
            session,
            feed: Arc::clone(&feed),
        });
        (feed.watch(), Some(feed))
    }

    /// Ends the observers of `session` with `error()`.
    pub(crate) fn end_session(&self, session: u64, error: impl Fn() -> LockError) {
        let mut feeds = self.feeds.lock();
        feeds.retain(|_, of_name| {
            of_name.retain(|f| {
                if f.session == session {
                    f.feed.end(error());
                    false
                } else {
                    true
                }
            });
            self.keep_name(of_name)
        });
    }

    /// Drops `feed` of `name` if nobody reads it; false when a watch took it up again.
    fn forget(&self, name: &str, feed: &Arc<LeaderFeed>) -> bool {
        let mut feeds = self.feeds.lock();
        // Watches subscribe with `feeds` locked: none can appear while we look.
        if feed.watchers() > 0 {
            return false;
        }
        if let Some(of_name) = feeds.get_mut(name) {
            of_name.retain(|f| !Arc::ptr_eq(&f.feed, feed));
            if !self.keep_name(of_name) {
                feeds.remove(name);
            }
        }
        true
    }

    /// True while `of_name` has feeds; counts the name out of `observed` otherwise.
    fn keep_name(&self, of_name: &[SessionFeed]) -> bool {
        if of_name.is_empty() {
            self.observed.fetch_sub(1, Ordering::AcqRel);
            false
        } else {
            true
        }
    }
}

/// Drops `feed` from the store's list once no watch reads it.
async fn forget_when_unwatched(elections: Weak<Elections>, name: String, feed: Arc<LeaderFeed>) {
    loop {
        feed.unwatched().await;
        let Some(elections) = elections.upgrade() else {
            return;
        };
        if elections.forget(&name, &feed) {
            return;
        }
    }
}

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
        validate_name(name)?;
        self.check_alive()?;
        let candidate = Arc::new(Candidate {
            value: Mutex::new(value.to_vec()),
        });
        let (tag, watch) = self.tag(Some(Arc::clone(&candidate)));
        let ticket = self.enqueue(name, &tag).await?;
        let proclaimer = MemoryProclaim {
            store: self.store().clone(),
            name: Arc::clone(ticket.shared_name()),
            candidate,
            lost: watch.clone(),
        };
        let guard = self.guard(ticket, tag, watch);
        Ok(Leadership::new(guard, value, Box::new(proclaimer)))
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

#[cfg(test)]
mod tests {
    use locksmith_api::LeaderElection;

    use crate::MemoryStore;

    fn feeds(store: &MemoryStore) -> (usize, usize) {
        let elections = store.elections();
        let feeds = elections.feeds.lock();
        (
            feeds.values().map(Vec::len).sum(),
            elections
                .observed
                .load(std::sync::atomic::Ordering::Acquire),
        )
    }

    async fn until_feeds(store: &MemoryStore, expected: (usize, usize)) {
        while feeds(store) != expected {
            tokio::task::yield_now().await;
        }
    }

    /// One feed per observed name and session, dropped with its last watch or its session.
    #[tokio::test]
    async fn feeds_live_as_long_as_their_watches_and_sessions() {
        let store = MemoryStore::new();
        let (a, b) = (store.connect().unwrap(), store.connect().unwrap());
        let first = a.observe("x").await.unwrap();
        let second = a.observe("x").await.unwrap();
        let other = b.observe("x").await.unwrap();
        let elsewhere = b.observe("y").await.unwrap();
        assert_eq!(feeds(&store), (3, 2));
        drop(first);
        tokio::task::yield_now().await;
        assert_eq!(feeds(&store), (3, 2), "a's second watch keeps its feed");
        drop(second);
        until_feeds(&store, (2, 2)).await;
        drop(b);
        assert_eq!(feeds(&store), (0, 0), "the session's end drops its feeds");
        drop((other, elsewhere));
        // Nothing left for the cleanup tasks, and nothing published while nobody observes.
        tokio::task::yield_now().await;
        assert_eq!(feeds(&store), (0, 0));
        let _guard = locksmith_api::DistributedLock::lock(&a, "x").await.unwrap();
        assert_eq!(feeds(&store), (0, 0));
    }
}
