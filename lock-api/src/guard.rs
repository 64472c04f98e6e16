//! The guard a caller holds while it owns a lock, and the loss signal behind it.

use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::instrument::{HoldProbe, LossObserver, ProbedHold, Vacant};
use crate::{FencingToken, LockError, LossReason};

/// What a backend implements for one acquired hold; [`LockGuard`] wraps it.
///
/// Users never see this type: it is the small contract a backend fulfils so that one
/// concrete guard serves every backend.
///
/// Dropping a hold (or a `release` future before it completes) must give the lock up
/// without blocking: a backend that needs I/O for that spawns it on its runtime.
#[async_trait]
pub trait Hold: Send + Sync + 'static {
    /// Gives the lock up and waits until the backend has recorded it.
    ///
    /// # Errors
    /// [`LockError::LockLost`] when the hold had already ended; a backend error when the
    /// release could not be confirmed.
    async fn release(self: Box<Self>) -> Result<(), LockError>;

    /// Releases at once if the backend needs no I/O for it (an in-process backend) and
    /// returns what [`release`](Hold::release) would have; `None`, the default, means the
    /// release must be awaited. After `Some`, dropping the hold must do nothing more.
    fn release_now(&mut self) -> Option<Result<(), LockError>> {
        None
    }
}

/// The sending half of a hold's loss signal, kept by the backend.
///
/// Cloning shares one signal. The first [`mark`](LostSignal::mark) wins; dropping every
/// clone without marking also counts as a loss ([`LossReason::Unknown`]), so a guard never
/// waits forever on a backend that went away.
pub struct LostSignal(Arc<LossCell>);

/// The state one signal and its watches share: one allocation per hold.
struct LossCell {
    /// 0 while owned, else the [`LossReason`] encoded by [`encode`].
    reason: AtomicU8,
    /// How many [`LostSignal`] clones are alive.
    signals: AtomicUsize,
    /// Wakes every [`LostWatch::wait`] once `reason` is set.
    notify: Notify,
    /// Told of the mark, for tracing and metrics (see `instrument`).
    observer: OnceLock<Arc<dyn LossObserver>>,
}

const OWNED: u8 = 0;

fn encode(reason: LossReason) -> u8 {
    match reason {
        LossReason::Expired => 1,
        LossReason::Closed => 2,
        LossReason::Revoked => 3,
        LossReason::Deleted => 4,
        LossReason::Unknown => 5,
    }
}

fn decode(code: u8) -> Option<LossReason> {
    match code {
        OWNED => None,
        1 => Some(LossReason::Expired),
        2 => Some(LossReason::Closed),
        3 => Some(LossReason::Revoked),
        4 => Some(LossReason::Deleted),
        _ => Some(LossReason::Unknown),
    }
}

impl LossCell {
    fn reason(&self) -> Option<LossReason> {
        decode(self.reason.load(Ordering::Acquire))
    }

    fn mark(&self, reason: LossReason) -> bool {
        let marked = self
            .reason
            .compare_exchange(OWNED, encode(reason), Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if marked {
            self.notify.notify_waiters();
            // Pairs with the fence in `observe`: one of the two sees the other's write.
            std::sync::atomic::fence(Ordering::SeqCst);
            if let Some(observer) = self.observer.get() {
                observer.lost(reason);
            }
        }
        marked
    }

    /// Tells `observer` of the mark, now if it was already made. It may be told twice when the
    /// two race; observers ignore all but the first.
    fn observe(&self, observer: Arc<dyn LossObserver>) {
        if self.observer.set(observer).is_err() {
            return;
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        if let (Some(reason), Some(observer)) = (self.reason(), self.observer.get()) {
            observer.lost(reason);
        }
    }
}

impl LostSignal {
    /// Creates a signal and the watch a [`LockGuard`] is built with.
    pub fn new() -> (LostSignal, LostWatch) {
        let cell = Arc::new(LossCell {
            reason: AtomicU8::new(OWNED),
            signals: AtomicUsize::new(1),
            notify: Notify::new(),
            observer: OnceLock::new(),
        });
        (LostSignal(Arc::clone(&cell)), LostWatch(cell))
    }

    /// Records that ownership ended; returns false when it was already recorded.
    pub fn mark(&self, reason: LossReason) -> bool {
        self.0.mark(reason)
    }

    /// The recorded reason, if ownership has ended.
    pub fn reason(&self) -> Option<LossReason> {
        self.0.reason()
    }
}

impl Clone for LostSignal {
    fn clone(&self) -> Self {
        self.0.signals.fetch_add(1, Ordering::Relaxed);
        LostSignal(Arc::clone(&self.0))
    }
}

impl Drop for LostSignal {
    fn drop(&mut self) {
        // With no watch left (the guard is gone too) nobody could see the mark: skip it.
        if self.0.signals.fetch_sub(1, Ordering::AcqRel) == 1 && Arc::strong_count(&self.0) > 1 {
            self.0.mark(LossReason::Unknown);
        }
    }
}

impl fmt::Debug for LostSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LostSignal").field(&self.reason()).finish()
    }
}

/// The receiving half of a [`LostSignal`].
#[derive(Clone)]
pub struct LostWatch(Arc<LossCell>);

impl LostWatch {
    /// The reason ownership ended, or `None` while it is held.
    pub fn reason(&self) -> Option<LossReason> {
        self.0.reason()
    }

    /// Has `observer` told of the mark (once set, the first observer stays).
    pub(crate) fn observe(&self, observer: Arc<dyn LossObserver>) {
        self.0.observe(observer);
    }

    /// Completes when ownership ends, with the reason.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only watches.
    pub async fn wait(&self) -> LossReason {
        if let Some(reason) = self.0.reason() {
            return reason;
        }
        loop {
            let notified = self.0.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Register before looking, so a mark between the look and the await still wakes us.
            notified.as_mut().enable();
            if let Some(reason) = self.0.reason() {
                return reason;
            }
            notified.await;
        }
    }
}

impl fmt::Debug for LostWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LostWatch").field(&self.reason()).finish()
    }
}

/// Proof that the caller owns a named lock; releases it when dropped.
///
/// # Releasing
/// [`unlock`](LockGuard::unlock) releases and waits for the backend to confirm. Dropping the
/// guard releases too, on the backend's runtime, without blocking the dropping thread.
///
/// # Loss
/// Ownership can end without the guard: the session expires (a process pause or network
/// partition longer than the TTL), the client is closed or dropped, or an operator deletes the
/// hold. [`is_lost`](LockGuard::is_lost) tells, and [`lost`](LockGuard::lost) completes when
/// it happens, so critical sections can `select!` on it. Between the loss and the moment the
/// holder learns of it another owner may already hold the lock: pass the
/// [`fencing_token`](LockGuard::fencing_token) to the storage you protect.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    name: Arc<str>,
    key: GuardKey,
    token: FencingToken,
    lost: LostWatch,
    hold: Box<dyn Hold>,
}

/// A guard's key: given by the backend, or `{name}/{session in hex}` formatted on first use.
enum GuardKey {
    Given(String),
    Session {
        id: u64,
        formatted: OnceLock<String>,
    },
}

impl LockGuard {
    /// Builds a guard; for backends.
    pub fn new(
        name: impl Into<String>,
        key: impl Into<String>,
        token: FencingToken,
        lost: LostWatch,
        hold: Box<dyn Hold>,
    ) -> Self {
        LockGuard {
            name: Arc::from(name.into()),
            key: GuardKey::Given(key.into()),
            token,
            lost,
            hold,
        }
    }

    /// Builds a guard whose key is `{name}/{session:x}`, formatted only if asked for; for
    /// in-process backends, where a lock+unlock costs less than formatting a key.
    pub fn with_session_key(
        name: Arc<str>,
        session: u64,
        token: FencingToken,
        lost: LostWatch,
        hold: Box<dyn Hold>,
    ) -> Self {
        LockGuard {
            name,
            key: GuardKey::Session {
                id: session,
                formatted: OnceLock::new(),
            },
            token,
            lost,
            hold,
        }
    }

    /// The lock name, as passed to `lock`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn shared_name(&self) -> Arc<str> {
        Arc::clone(&self.name)
    }

    /// Has `probe` record how this hold ends: its release or drop through the hold, its loss
    /// through the loss signal.
    pub(crate) fn probe(&mut self, probe: Arc<HoldProbe>) {
        self.lost
            .observe(Arc::clone(&probe) as Arc<dyn LossObserver>);
        let inner = std::mem::replace(&mut self.hold, Box::new(Vacant));
        self.hold = Box::new(ProbedHold { probe, inner });
    }

    /// The backend's key for this hold (on etcd `{namespace}{name}/{lease id in hex}`).
    pub fn key(&self) -> &str {
        match &self.key {
            GuardKey::Given(key) => key,
            GuardKey::Session { id, formatted } => {
                formatted.get_or_init(|| format!("{}/{id:x}", self.name))
            }
        }
    }

    /// The fencing token of this hold: greater than every earlier holder's of this name.
    pub fn fencing_token(&self) -> FencingToken {
        self.token
    }

    /// True once ownership has ended without an unlock.
    pub fn is_lost(&self) -> bool {
        self.lost.reason().is_some()
    }

    /// Why ownership ended, or `None` while the lock is held.
    pub fn lost_reason(&self) -> Option<LossReason> {
        self.lost.reason()
    }

    /// Completes when ownership ends (session expired, closed or revoked, hold deleted).
    ///
    /// # Examples
    /// Stop the work when the lock goes (here: its session expires, as after a long pause):
    /// ```
    /// use locksmith_api::{DistributedLock, LossReason};
    /// use locksmith_memory::MemoryStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), locksmith_api::LockError> {
    /// let store = MemoryStore::new();
    /// let session = store.connect()?;
    /// let guard = session.lock("reports/nightly").await?;
    ///
    /// let work = async {
    ///     session.expire(); // fault injection of the memory backend
    ///     std::future::pending::<()>().await // work that would run on
    /// };
    /// tokio::select! {
    ///     () = work => unreachable!(),
    ///     reason = guard.lost() => assert_eq!(reason, LossReason::Expired),
    /// }
    /// assert!(guard.is_lost());
    /// # Ok(())
    /// # }
    /// ```
    /// [`DistributedLockExt::with_lock`](crate::DistributedLockExt::with_lock) does this for
    /// you.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only watches; dropping it changes nothing.
    pub async fn lost(&self) -> LossReason {
        self.lost.wait().await
    }

    /// Releases the lock and waits until the backend has recorded it.
    ///
    /// # Examples
    /// ```
    /// use locksmith_api::{DistributedLock, LockError, LossReason};
    /// use locksmith_memory::MemoryStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), LockError> {
    /// let store = MemoryStore::new();
    /// let (a, b) = (store.connect()?, store.connect()?);
    ///
    /// let guard = a.lock("exports").await?;
    /// guard.unlock().await?; // released and confirmed
    /// assert!(b.try_lock("exports").await?.is_some());
    ///
    /// // A guard that lost its lock says so instead of releasing someone else's.
    /// let guard = a.lock("exports").await?;
    /// store.revoke("exports"); // an operator deletes the hold
    /// match guard.unlock().await {
    ///     Err(LockError::LockLost { reason, .. }) => assert_eq!(reason, LossReason::Deleted),
    ///     other => panic!("unlock gave {other:?}"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`LockError::LockLost`] when ownership had already ended (the lock may be someone
    /// else's by now); a backend error when the release could not be confirmed, in which case
    /// the hold still ends with its session.
    ///
    /// # Cancel safety
    /// If the future is dropped before it completes, the release goes on in the background as
    /// for a dropped guard.
    pub async fn unlock(self) -> Result<(), LockError> {
        let LockGuard {
            name,
            lost,
            mut hold,
            ..
        } = self;
        match lost.reason() {
            // Dropping the hold still cleans up whatever the backend keeps for it.
            Some(reason) => Err(LockError::LockLost {
                name: name.to_string(),
                reason,
            }),
            None => match hold.release_now() {
                Some(released) => released,
                None => hold.release().await,
            },
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.name)
            .field("key", &self.key())
            .field("fencing_token", &self.token)
            .field("lost", &self.lost.reason())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoHold;

    #[async_trait]
    impl Hold for NoHold {
        async fn release(self: Box<Self>) -> Result<(), LockError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn first_mark_wins_and_wakes_waiters() {
        let (signal, watch) = LostSignal::new();
        let waiter = {
            let watch = watch.clone();
            tokio::spawn(async move { watch.wait().await })
        };
        tokio::task::yield_now().await;
        assert_eq!(watch.reason(), None);
        assert!(signal.mark(LossReason::Deleted));
        assert!(!signal.mark(LossReason::Expired));
        assert_eq!(waiter.await.unwrap(), LossReason::Deleted);
        assert_eq!(watch.wait().await, LossReason::Deleted);
    }

    #[tokio::test]
    async fn dropping_every_signal_is_an_unknown_loss() {
        let (signal, watch) = LostSignal::new();
        let second = signal.clone();
        drop(signal);
        assert_eq!(watch.reason(), None);
        drop(second);
        assert_eq!(watch.reason(), Some(LossReason::Unknown));
        assert_eq!(watch.wait().await, LossReason::Unknown);
    }

    #[test]
    fn session_keys_are_formatted_on_demand() {
        let (_signal, watch) = LostSignal::new();
        let guard = LockGuard::with_session_key(
            Arc::from("jobs/a"),
            0x2a,
            FencingToken::new(3),
            watch,
            Box::new(NoHold),
        );
        assert_eq!(guard.name(), "jobs/a");
        assert_eq!(guard.key(), "jobs/a/2a");
        assert_eq!(guard.fencing_token().get(), 3);
    }
}
