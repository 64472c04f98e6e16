//! Shared and counted locks: the [`DistributedRwLock`] and [`DistributedSemaphore`] traits.
//!
//! Both hand out the same [`LockGuard`] as [`DistributedLock`](crate::DistributedLock), so code
//! that runs work while a guard holds (select on [`LockGuard::lost`], pass the fencing token on,
//! unlock or drop) works for every primitive.

use async_trait::async_trait;

use crate::{LockError, LockGuard};

/// Reader-writer locks by name: any number of readers, or one writer.
///
/// # Fairness
/// FIFO with writer preference, as Go's `recipe.RWMutex`: a reader waits only for older
/// writers, a writer for every older reader and writer, so readers arriving after a waiting
/// writer queue behind it and a stream of readers never starves a writer.
///
/// # Reentrancy
/// None: a session's own read guard blocks its own `write` (and `try_write` returns `None`),
/// as any other reader's would. One session may hold several read guards of a name.
///
/// # Fencing tokens
/// A writer's token is greater than every earlier writer's and reader's of the name; a
/// reader's token is greater than every earlier writer's (readers holding at once may have any
/// order among themselves). Storage that accepts a write only with a token at least as high as
/// the last one it saw refuses a writer that lost the lock without knowing.
///
/// # Cancellation and session end
/// As [`DistributedLock`](crate::DistributedLock): every method is cancel-safe (a dropped call
/// leaves nothing behind), waiters fail with [`LockError::SessionLost`] when their session ends,
/// and guards report [`LockGuard::lost`].
#[async_trait]
pub trait DistributedRwLock: Send + Sync {
    /// Waits until `name` is ours to read: no older writer holds or waits.
    ///
    /// # Errors
    /// [`LockError::InvalidName`], [`LockError::SessionLost`], or a backend error.
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped future leaves the queue.
    async fn read(&self, name: &str) -> Result<LockGuard, LockError>;

    /// Reads `name` if no writer holds or waits for it; `Ok(None)` otherwise. Never waits.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped call leaves nothing behind.
    async fn try_read(&self, name: &str) -> Result<Option<LockGuard>, LockError>;

    /// Waits until `name` is ours alone: every older reader and writer is gone.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped future leaves the queue.
    async fn write(&self, name: &str) -> Result<LockGuard, LockError>;

    /// Writes `name` if nobody holds or waits for it; `Ok(None)` otherwise. Never waits.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped call leaves nothing behind.
    async fn try_write(&self, name: &str) -> Result<Option<LockGuard>, LockError>;
}

/// Counting semaphores by name: at most `limit` permits of a name are held at once.
///
/// # Fairness
/// FIFO: a free permit never goes to a later waiter while an earlier one waits. One session
/// may hold several permits of a name.
///
/// # Limits
/// `limit` is at least 1 ([`LockError::InvalidLimit`] otherwise), and every user of a name
/// must pass the same one: an `acquire` whose limit differs from the one the name's current
/// holders and waiters use fails with [`LockError::LimitMismatch`].
///
/// # Fencing tokens
/// A permit's token is greater than every earlier permit's of the name that had been released
/// when this one was granted: permits held at once may have any order among themselves.
///
/// # Cancellation and session end
/// As [`DistributedLock`](crate::DistributedLock).
#[async_trait]
pub trait DistributedSemaphore: Send + Sync {
    /// Waits for one of `limit` permits of `name`, in FIFO order.
    ///
    /// # Errors
    /// [`LockError::InvalidName`], [`LockError::InvalidLimit`], [`LockError::LimitMismatch`],
    /// [`LockError::SessionLost`], or a backend error.
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped future leaves the queue and holds no permit.
    async fn acquire(&self, name: &str, limit: u32) -> Result<LockGuard, LockError>;

    /// Takes a permit of `name` if one is free and nobody waits; `Ok(None)` otherwise.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped call leaves nothing behind.
    async fn try_acquire(&self, name: &str, limit: u32) -> Result<Option<LockGuard>, LockError>;
}

/// Checks a semaphore limit: at least 1.
///
/// # Errors
/// [`LockError::InvalidLimit`] for 0.
pub fn validate_limit(name: &str, limit: u32) -> Result<(), LockError> {
    if limit == 0 {
        return Err(LockError::InvalidLimit {
            name: name.chars().take(64).collect(),
            limit,
        });
    }
    Ok(())
}
