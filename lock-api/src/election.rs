//! Leader election: the [`LeaderElection`] trait, the [`Leadership`] a leader holds, and the
//! [`LeaderWatch`] observers read, with the [`LeaderFeed`] backends publish through.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;

use crate::{
    DistributedLock, DistributedRwLock, DistributedSemaphore, FencingToken, LockError, LockGuard,
    LossReason,
};

/// Who leads a name: `None` while nobody does.
pub type LeaderState = Option<LeaderInfo>;

/// The leader of a name as observers see it: its key, its proclaimed value and its token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaderInfo {
    key: String,
    value: Vec<u8>,
    token: FencingToken,
}

impl LeaderInfo {
    /// Builds the description of a leader; for backends.
    pub fn new(key: impl Into<String>, value: impl Into<Vec<u8>>, token: FencingToken) -> Self {
        LeaderInfo {
            key: key.into(),
            value: value.into(),
            token,
        }
    }

    /// The leader's key (on etcd `{namespace}{name}/{lease id in hex}`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value the leader proclaimed last.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// The leader's fencing token: greater than every earlier leader's of this name, and the
    /// same for every proclamation of one leadership.
    pub fn fencing_token(&self) -> FencingToken {
        self.token
    }
}

/// Sessions that campaign to lead a name, and observe who leads.
///
/// A candidate is one queue entry of the name, as a [`lock`](DistributedLock::lock) is: the
/// oldest candidate leads, the others wait in arrival order (FIFO), and one session's
/// campaigns and locks of one name are served one after the other, never at once (on etcd
/// they are the same key). The leader's [`Leadership`] carries a value it can change
/// ([`proclaim`](Leadership::proclaim)) and a fencing token, and ends as a lock does:
/// [`resign`](Leadership::resign), drop, or a loss (session expired, closed or revoked, key
/// deleted).
///
/// # Cancellation
/// Every method is cancel-safe: a dropped `campaign` leaves the queue and leaves no key.
///
/// # Session end
/// When the session ends, its leaderships report [`Leadership::lost`], its campaigns fail with
/// [`LockError::SessionLost`] (never succeed afterwards), and its observers end with that error.
#[async_trait]
pub trait LeaderElection: Send + Sync {
    /// Waits until this session leads `name` (FIFO among candidates), with `value` proclaimed.
    ///
    /// # Examples
    /// ```
    /// use locksmith_api::LeaderElection;
    /// use locksmith_memory::MemoryStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), locksmith_api::LockError> {
    /// let store = MemoryStore::new();
    /// let (a, b) = (store.connect()?, store.connect()?);
    ///
    /// let leadership = a.campaign("scheduler", b"host-a").await?;
    /// let leader = b.leader("scheduler").await?.expect("a leads");
    /// assert_eq!(leader.value(), b"host-a");
    /// assert_eq!(leader.fencing_token(), leadership.fencing_token());
    ///
    /// // b campaigns too and leads once a resigns.
    /// let candidate = tokio::spawn(async move { b.campaign("scheduler", b"host-b").await });
    /// while store.queue_len("scheduler") < 2 {
    ///     tokio::task::yield_now().await;
    /// }
    /// leadership.resign().await?;
    /// let next = candidate.await.expect("the candidate task")?;
    /// assert_eq!(next.value(), b"host-b");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`LockError::InvalidName`] for a bad name, [`LockError::SessionLost`] when the session
    /// ends before or while campaigning, a backend error when the backend cannot be reached.
    /// No candidate key is left behind after an error.
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped future withdraws the candidate (or resigns, if it had just been
    /// elected), so later candidates are not held up.
    async fn campaign(&self, name: &str, value: &[u8]) -> Result<Leadership, LockError>;

    /// The current leader of `name`, if any.
    ///
    /// # Errors
    /// [`LockError::InvalidName`], [`LockError::SessionLost`], or a backend error.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads.
    async fn leader(&self, name: &str) -> Result<Option<LeaderInfo>, LockError>;

    /// The leader of `name` now, then one item per change: a new leader, a new proclaimed
    /// value, or `None` when nobody leads.
    ///
    /// Intermediate states may be coalesced, but an item never shows an older state than one
    /// already yielded, and once changes settle the last item equals [`leader`](Self::leader).
    /// The stream ends with an error when the session ends.
    ///
    /// # Errors
    /// As [`leader`](Self::leader).
    ///
    /// # Cancel safety
    /// Cancel-safe; dropping the [`LeaderWatch`] stops observing.
    async fn observe(&self, name: &str) -> Result<LeaderWatch, LockError>;
}

/// Every primitive one session offers: locks, leader election, reader-writer locks and
/// semaphores; blanket-implemented.
pub trait Coordination:
    DistributedLock + LeaderElection + DistributedRwLock + DistributedSemaphore
{
}

impl<T> Coordination for T where
    T: DistributedLock + LeaderElection + DistributedRwLock + DistributedSemaphore + ?Sized
{
}

/// What a backend implements so a [`Leadership`] can change its value.
#[async_trait]
pub trait Proclaim: Send + Sync + 'static {
    /// Replaces the leader's value, only while the leadership it was made for still stands.
    ///
    /// # Errors
    /// [`LockError::LockLost`] when the leadership is gone; a backend error otherwise.
    async fn proclaim(&self, value: &[u8]) -> Result<(), LockError>;
}

/// Proof that this session leads a name; resigns when dropped.
///
/// A leadership is a lock hold with a value: [`fencing_token`](Leadership::fencing_token),
/// [`is_lost`](Leadership::is_lost) and [`lost`](Leadership::lost) mean what they mean on a
/// [`LockGuard`], and [`proclaim`](Leadership::proclaim) changes the value observers see.
///
/// # Resigning
/// [`resign`](Leadership::resign) gives the leadership up and waits for the backend; dropping
/// it resigns in the background. A resignation that fails keeps being retried in the
/// background until the key is gone or the session ends.
#[must_use = "leadership is resigned as soon as it is dropped"]
pub struct Leadership {
    guard: LockGuard,
    value: parking_lot::Mutex<Vec<u8>>,
    /// Serializes proclamations, so `value()` ends as the last one applied.
    proclaiming: tokio::sync::Mutex<()>,
    proclaimer: Box<dyn Proclaim>,
}

impl Leadership {
    /// Builds a leadership from the hold of the leader's key, its proclaimed value, and how to
    /// proclaim; for backends.
    pub fn new(guard: LockGuard, value: impl Into<Vec<u8>>, proclaimer: Box<dyn Proclaim>) -> Self {
        Leadership {
            guard,
            value: parking_lot::Mutex::new(value.into()),
            proclaiming: tokio::sync::Mutex::new(()),
            proclaimer,
        }
    }

    pub(crate) fn guard_mut(&mut self) -> &mut LockGuard {
        &mut self.guard
    }

    /// The name led, as passed to `campaign`.
    pub fn name(&self) -> &str {
        self.guard.name()
    }

    /// The leader's key (on etcd `{namespace}{name}/{lease id in hex}`).
    pub fn key(&self) -> &str {
        self.guard.key()
    }

    /// The value proclaimed last (by `campaign` or a completed [`proclaim`](Self::proclaim)).
    pub fn value(&self) -> Vec<u8> {
        self.value.lock().clone()
    }

    /// The fencing token of this leadership: greater than every earlier leader's of this
    /// name; proclamations keep it.
    pub fn fencing_token(&self) -> FencingToken {
        self.guard.fencing_token()
    }

    /// This leadership as observers see it now.
    pub fn info(&self) -> LeaderInfo {
        LeaderInfo::new(self.key(), self.value(), self.fencing_token())
    }

    /// True once leadership has ended without a resign.
    pub fn is_lost(&self) -> bool {
        self.guard.is_lost()
    }

    /// Why leadership ended, or `None` while it stands.
    pub fn lost_reason(&self) -> Option<LossReason> {
        self.guard.lost_reason()
    }

    /// Completes when leadership ends (session expired, closed or revoked, key deleted).
    ///
    /// # Cancel safety
    /// Cancel-safe: it only watches.
    pub async fn lost(&self) -> LossReason {
        self.guard.lost().await
    }

    /// Proclaims a new value, keeping the leadership and its fencing token.
    ///
    /// # Errors
    /// [`LockError::LockLost`] once leadership is gone; a backend error when the backend could
    /// not be reached (the value may or may not have been applied then).
    ///
    /// # Cancel safety
    /// A dropped call may or may not have changed the value observers see; [`value`](Self::value)
    /// changes only when a proclamation completes.
    pub async fn proclaim(&self, value: &[u8]) -> Result<(), LockError> {
        let _turn = self.proclaiming.lock().await;
        self.check_held()?;
        match self.proclaimer.proclaim(value).await {
            Ok(()) => {
                *self.value.lock() = value.to_vec();
                Ok(())
            }
            // A refused proclamation because the key is gone is a loss, whatever the backend
            // saw first.
            Err(LockError::LockLost { reason, .. }) => Err(LockError::LockLost {
                name: self.name().to_owned(),
                reason: self.lost_reason().unwrap_or(reason),
            }),
            Err(err) => Err(err),
        }
    }

    /// Gives leadership up and waits until the backend has recorded it; the next candidate
    /// leads.
    ///
    /// # Errors
    /// [`LockError::LockLost`] when leadership had already ended; a backend error when the
    /// resignation could not be confirmed, in which case it goes on in the background until
    /// the key is gone or the session ends.
    ///
    /// # Cancel safety
    /// If the future is dropped before it completes, the resignation goes on in the background
    /// as for a dropped leadership.
    pub async fn resign(self) -> Result<(), LockError> {
        self.guard.unlock().await
    }

    /// The leadership as a lock guard (same key, token and loss signal), dropping the
    /// ability to proclaim.
    pub fn into_guard(self) -> LockGuard {
        self.guard
    }

    fn check_held(&self) -> Result<(), LockError> {
        match self.lost_reason() {
            Some(reason) => Err(LockError::LockLost {
                name: self.name().to_owned(),
                reason,
            }),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leadership")
            .field("name", &self.name())
            .field("key", &self.key())
            .field("value", &String::from_utf8_lossy(&self.value.lock()))
            .field("fencing_token", &self.fencing_token())
            .field("lost", &self.lost_reason())
            .finish()
    }
}

/// One published state of a name: a version that only grows, who leads, and whether the
/// feed has ended (and why).
#[derive(Clone)]
struct Published {
    version: u64,
    state: LeaderState,
    ended: Option<Arc<LockError>>,
}

/// The publishing half behind every [`LeaderWatch`] of one name; for backends.
///
/// A backend keeps one feed per observed name and [`publish`](LeaderFeed::publish)es each
/// change (a new leader, a proclamation, vacancy; not a candidate joining behind the leader)
/// with a version that grows with the state's age (the etcd revision it was read at, a store
/// counter in memory); an older or equal version is ignored, so watches never go backwards
/// however late a publication arrives. Watches coalesce states they did not get to yield.
/// Dropping the feed (or [`end`](LeaderFeed::end)) ends every watch with an error.
pub struct LeaderFeed {
    sender: tokio::sync::watch::Sender<Published>,
}

impl LeaderFeed {
    /// A feed whose state is `state` at `version`.
    pub fn new(version: u64, state: LeaderState) -> Self {
        let (sender, _) = tokio::sync::watch::channel(Published {
            version,
            state,
            ended: None,
        });
        LeaderFeed { sender }
    }

    /// Publishes `state` as of `version`; true when it was newer than the last state.
    pub fn publish(&self, version: u64, state: LeaderState) -> bool {
        self.sender.send_if_modified(|published| {
            if published.ended.is_some() || version <= published.version {
                return false;
            }
            published.version = version;
            published.state = state;
            true
        })
    }

    /// The last published state and its version.
    pub fn current(&self) -> (u64, LeaderState) {
        let published = self.sender.borrow();
        (published.version, published.state.clone())
    }

    /// Ends every watch with `error` (after the states they have not yet yielded).
    pub fn end(&self, error: LockError) {
        let error = Arc::new(error);
        self.sender.send_if_modified(|published| {
            if published.ended.is_some() {
                return false;
            }
            published.ended = Some(error);
            true
        });
    }

    /// True once the feed has ended.
    pub fn is_ended(&self) -> bool {
        self.sender.borrow().ended.is_some()
    }

    /// How many watches read this feed.
    pub fn watchers(&self) -> usize {
        self.sender.receiver_count()
    }

    /// Completes when no watch reads this feed any more.
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub async fn unwatched(&self) {
        self.sender.closed().await;
    }

    /// A watch whose first item is `first` (a state read at `version`, usually just now),
    /// unless the feed already holds a newer one, followed by every newer state.
    pub fn watch_from(&self, version: u64, first: LeaderState) -> LeaderWatch {
        LeaderWatch {
            first: Some((version, first)),
            last_version: 0,
            receiver: Some(self.sender.subscribe()),
            waiting: None,
            finished: false,
        }
    }

    /// A watch whose first item is the feed's current state.
    pub fn watch(&self) -> LeaderWatch {
        let (version, state) = self.current();
        self.watch_from(version, state)
    }
}

impl Drop for LeaderFeed {
    fn drop(&mut self) {
        self.end(LockError::Backend {
            backend: "locksmith",
            operation: "observe the leader".into(),
            source: "the backend stopped observing this name".into(),
        });
    }
}

impl fmt::Debug for LeaderFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let published = self.sender.borrow();
        f.debug_struct("LeaderFeed")
            .field("version", &published.version)
            .field("state", &published.state)
            .field("ended", &published.ended.is_some())
            .finish()
    }
}

type Receiver = tokio::sync::watch::Receiver<Published>;
type Changed = Pin<Box<dyn Future<Output = Receiver> + Send>>;

/// The leader of a name, then each change: a [`Stream`](futures_core::Stream) of
/// `Result<LeaderState, LockError>` from [`LeaderElection::observe`].
///
/// Items never go back in time: each shows a state at least as new as the one before (fencing
/// tokens never decrease), states in between may be skipped, and the last item after changes
/// settle is what [`LeaderElection::leader`] returns. The stream yields an error and then ends
/// when the session (or the backend's observation) ends.
///
/// Read it with `StreamExt::next` from `futures` or `tokio-stream`, or with
/// [`LeaderWatch::next`] without either.
#[must_use = "a LeaderWatch does nothing unless read"]
pub struct LeaderWatch {
    /// The state read when observing started, yielded first unless the feed is newer.
    first: Option<(u64, LeaderState)>,
    last_version: u64,
    /// `None` while `waiting` owns it.
    receiver: Option<Receiver>,
    waiting: Option<Changed>,
    finished: bool,
}

/// What a watch does next, decided with the feed's state borrowed.
enum Step {
    Yield(u64, LeaderState),
    End(Arc<LockError>),
    Wait,
}

impl LeaderWatch {
    /// The next item, or `None` after the stream has ended.
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped call loses no state (the next call yields the newest one).
    pub async fn next(&mut self) -> Option<Result<LeaderState, LockError>> {
        std::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<LeaderState, LockError>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        loop {
            if let Some(waiting) = self.waiting.as_mut() {
                match waiting.as_mut().poll(cx) {
                    Poll::Ready(receiver) => {
                        self.waiting = None;
                        self.receiver = Some(receiver);
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            let Some(receiver) = self.receiver.as_mut() else {
                self.finished = true;
                return Poll::Ready(None);
            };
            let step = {
                let published = receiver.borrow_and_update();
                match self.first.take() {
                    Some((version, state)) if version >= published.version => {
                        Step::Yield(version, state)
                    }
                    _ if published.version > self.last_version => {
                        Step::Yield(published.version, published.state.clone())
                    }
                    _ => match &published.ended {
                        Some(error) => Step::End(Arc::clone(error)),
                        None => Step::Wait,
                    },
                }
            };
            match step {
                Step::Yield(version, state) => {
                    self.last_version = version;
                    return Poll::Ready(Some(Ok(state)));
                }
                Step::End(error) => {
                    self.finished = true;
                    self.receiver = None;
                    return Poll::Ready(Some(Err(error.duplicate())));
                }
                Step::Wait => {
                    if let Some(mut receiver) = self.receiver.take() {
                        self.waiting = Some(Box::pin(async move {
                            // An error means the feed is gone; its drop ended it first, and
                            // the next look at the state says so.
                            let _ = receiver.changed().await;
                            receiver
                        }));
                    }
                }
            }
        }
    }
}

impl futures_core::Stream for LeaderWatch {
    type Item = Result<LeaderState, LockError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_item(cx)
    }
}

impl fmt::Debug for LeaderWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderWatch")
            .field("last_version", &self.last_version)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn leader(key: &str, value: &str, token: u64) -> LeaderState {
        Some(LeaderInfo::new(
            key,
            value.as_bytes(),
            FencingToken::new(token),
        ))
    }

    async fn next(watch: &mut LeaderWatch) -> Option<Result<LeaderState, LockError>> {
        tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("the watch to yield")
    }

    #[tokio::test]
    async fn a_watch_yields_the_first_state_then_newer_ones_only() {
        let feed = LeaderFeed::new(5, None);
        let mut watch = feed.watch_from(7, leader("a/1", "x", 7));
        assert_eq!(
            next(&mut watch).await.unwrap().unwrap(),
            leader("a/1", "x", 7)
        );
        // Older than what was yielded: ignored by the watch.
        assert!(feed.publish(6, None));
        assert!(feed.publish(9, leader("a/1", "y", 7)));
        assert_eq!(
            next(&mut watch).await.unwrap().unwrap(),
            leader("a/1", "y", 7)
        );
        // Older than what the feed holds: ignored by the feed.
        assert!(!feed.publish(8, None));
        assert!(feed.publish(10, None));
        assert!(feed.publish(11, leader("a/2", "z", 11)));
        // Coalesced to the newest.
        assert_eq!(
            next(&mut watch).await.unwrap().unwrap(),
            leader("a/2", "z", 11)
        );
    }

    #[tokio::test]
    async fn a_newer_feed_state_replaces_the_first_one() {
        let feed = LeaderFeed::new(9, leader("a/2", "z", 9));
        let mut watch = feed.watch_from(3, None);
        assert_eq!(
            next(&mut watch).await.unwrap().unwrap(),
            leader("a/2", "z", 9)
        );
    }

    #[tokio::test]
    async fn an_ended_feed_ends_its_watches_with_an_error() {
        let feed = LeaderFeed::new(1, None);
        let mut watch = feed.watch();
        assert_eq!(next(&mut watch).await.unwrap().unwrap(), None);
        let waiting = tokio::spawn(async move {
            let item = watch.next().await;
            (item, watch.next().await)
        });
        tokio::task::yield_now().await;
        feed.end(LockError::SessionLost {
            session: "1".into(),
            reason: LossReason::Closed,
        });
        let (item, after) = waiting.await.unwrap();
        assert!(item.unwrap().unwrap_err().is_session_lost());
        assert!(after.is_none());
    }

    #[tokio::test]
    async fn a_dropped_feed_ends_its_watches() {
        let feed = LeaderFeed::new(1, None);
        let mut watch = feed.watch();
        assert!(next(&mut watch).await.unwrap().is_ok());
        assert_eq!(feed.watchers(), 1);
        drop(feed);
        assert!(next(&mut watch).await.unwrap().is_err());
        assert!(next(&mut watch).await.is_none());
    }

    #[test]
    fn a_watch_is_send_unpin_and_static() {
        fn check<T: Send + Unpin + 'static>() {}
        check::<LeaderWatch>();
        fn sync<T: Send + Sync>() {}
        sync::<Leadership>();
    }
}
