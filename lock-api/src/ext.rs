//! Conveniences every caller would otherwise write by hand: [`DistributedLockExt`].

use std::future::Future;

use crate::{DistributedLock, LockError};

/// What every [`DistributedLock`] can do on top of its own methods; implemented for every
/// session type, also `dyn DistributedLock` and pointers to sessions.
///
/// Bring it into scope (`use locksmith_api::DistributedLockExt;`) and call its methods on any
/// session.
pub trait DistributedLockExt: DistributedLock {
    /// Takes the lock `name`, runs `future` while holding it, then unlocks and returns the
    /// future's output.
    ///
    /// If the lock is lost before `future` completes (session expired, closed or revoked, hold
    /// deleted), `future` is dropped at once, without being polled again, and the call fails
    /// with [`LockError::LockLost`]. The loss is checked before each poll of `future`, so the
    /// work never goes on after the loss is known. Between a loss and the moment it is known
    /// another owner may already hold the lock: pass
    /// [`fencing_token`](crate::LockGuard::fencing_token)s to the storage you protect where
    /// that matters (take the guard with [`lock`](DistributedLock::lock) yourself then).
    ///
    /// ```
    /// use locksmith_api::{DistributedLock, DistributedLockExt, LockError};
    /// use locksmith_memory::MemoryStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), LockError> {
    /// let store = MemoryStore::new();
    /// let (a, b) = (store.connect()?, store.connect()?);
    ///
    /// let total = a
    ///     .with_lock("ledger", async {
    ///         // Nobody else holds "ledger" while this runs.
    ///         assert!(b.try_lock("ledger").await.is_ok_and(|g| g.is_none()));
    ///         40 + 2
    ///     })
    ///     .await?;
    /// assert_eq!(total, 42);
    /// assert!(b.try_lock("ledger").await?.is_some()); // released
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// - What [`lock`](DistributedLock::lock) returns (an invalid name, the session lost
    ///   before or while waiting, a backend error); `future` has not started then.
    /// - [`LockError::LockLost`] when the lock is lost while `future` runs; `future` has been
    ///   dropped.
    /// - What [`unlock`](crate::LockGuard::unlock) returns after `future` completed:
    ///   [`LockError::LockLost`] if the lock was lost during its last poll or just after, a
    ///   backend error if the release could not be confirmed (the hold then ends with its
    ///   session). `future` did complete then, and its output is dropped; a caller that needs
    ///   the output whatever the release does takes the guard with
    ///   [`lock`](DistributedLock::lock) and unlocks it itself.
    ///
    /// # Cancel safety
    /// Cancel-safe, and nothing is left behind: dropped while waiting, it leaves the queue as
    /// a dropped [`lock`](DistributedLock::lock) does; dropped while `future` runs, `future`
    /// is dropped first and then the guard, whose drop releases the lock in the background;
    /// dropped while unlocking, the release goes on in the background.
    fn with_lock<'a, F>(
        &'a self,
        name: &'a str,
        future: F,
    ) -> impl Future<Output = Result<F::Output, LockError>> + Send + 'a
    where
        F: Future + Send + 'a,
        F::Output: Send;
}

impl<L: DistributedLock + ?Sized> DistributedLockExt for L {
    async fn with_lock<'a, F>(&'a self, name: &'a str, future: F) -> Result<F::Output, LockError>
    where
        F: Future + Send + 'a,
        F::Output: Send,
    {
        let guard = self.lock(name).await?;
        // Both futures are dropped when `select!` ends: `future` before the guard.
        let outcome = tokio::select! {
            biased;
            reason = guard.lost() => Err(reason),
            output = future => Ok(output),
        };
        match outcome {
            Ok(output) => guard.unlock().await.map(|()| output),
            Err(reason) => Err(LockError::LockLost {
                name: name.to_owned(),
                reason,
            }),
        }
    }
}
