//! Who leads each observed name, as observers see it: one [`LeaderFeed`] per name and
//! session, published to by the lock table's holder hook under the table's lock, so that
//! publications (and their versions) are in the order of the changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use locksmith_api::{FencingToken, LeaderFeed, LeaderInfo, LeaderState, LeaderWatch, LockError};
use parking_lot::Mutex;

use crate::hold::HoldTag;

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
pub(crate) fn leader_state(name: &str, holder: Option<(&HoldTag, FencingToken)>) -> LeaderState {
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
    pub(crate) fn publish(&self, name: &str, state: impl FnOnce() -> LeaderState) {
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
    pub(crate) fn watch(
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
pub(crate) async fn forget_when_unwatched(
    elections: Weak<Elections>,
    name: String,
    feed: Arc<LeaderFeed>,
) {
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
