//! The guard a caller holds while it owns a lock, and the loss signal behind it.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

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
}

/// The sending half of a hold's loss signal, kept by the backend.
///
/// Cloning shares one signal. The first [`mark`](LostSignal::mark) wins; dropping every
/// clone without marking also counts as a loss ([`LossReason::Unknown`]), so a guard never
/// waits forever on a backend that went away.
#[derive(Clone)]
pub struct LostSignal(Arc<watch::Sender<Option<LossReason>>>);

impl LostSignal {
    /// Creates a signal and the watch a [`LockGuard`] is built with.
    pub fn new() -> (LostSignal, LostWatch) {
        let (tx, rx) = watch::channel(None);
        (LostSignal(Arc::new(tx)), LostWatch(rx))
    }

    /// Records that ownership ended; returns false when it was already recorded.
    pub fn mark(&self, reason: LossReason) -> bool {
        self.0.send_if_modified(|current| {
            if current.is_some() {
                false
            } else {
                *current = Some(reason);
                true
            }
        })
    }

    /// The recorded reason, if ownership has ended.
    pub fn reason(&self) -> Option<LossReason> {
        *self.0.borrow()
    }
}

impl fmt::Debug for LostSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LostSignal").field(&self.reason()).finish()
    }
}

/// The receiving half of a [`LostSignal`].
#[derive(Clone, Debug)]
pub struct LostWatch(watch::Receiver<Option<LossReason>>);

impl LostWatch {
    /// The reason ownership ended, or `None` while it is held.
    pub fn reason(&self) -> Option<LossReason> {
        match *self.0.borrow() {
            Some(reason) => Some(reason),
            None if self.0.has_changed().is_err() => Some(LossReason::Unknown),
            None => None,
        }
    }

    /// Completes when ownership ends, with the reason.
    pub async fn wait(&self) -> LossReason {
        let mut rx = self.0.clone();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(reason) => *reason,
            Err(_) => None,
        };
        reason.unwrap_or(LossReason::Unknown)
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
    name: String,
    key: String,
    token: FencingToken,
    lost: LostWatch,
    hold: Box<dyn Hold>,
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
            name: name.into(),
            key: key.into(),
            token,
            lost,
            hold,
        }
    }

    /// The lock name, as passed to `lock`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backend's key for this hold (on etcd `{namespace}{name}/{lease id in hex}`).
    pub fn key(&self) -> &str {
        &self.key
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
    /// # Cancel safety
    /// Cancel-safe: it only watches; dropping it changes nothing.
    pub async fn lost(&self) -> LossReason {
        self.lost.wait().await
    }

    /// Releases the lock and waits until the backend has recorded it.
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
            name, lost, hold, ..
        } = self;
        match lost.reason() {
            // Dropping the hold still cleans up whatever the backend keeps for it.
            Some(reason) => Err(LockError::LockLost { name, reason }),
            None => hold.release().await,
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("fencing_token", &self.token)
            .field("lost", &self.lost.reason())
            .finish()
    }
}
