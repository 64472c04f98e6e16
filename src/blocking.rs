//! A blocking client, for synchronous programs: the async API run on a small runtime of its
//! own.
//!
//! A [`Client`] is one client session, opened from a [`LockConfig`] like
//! [`LockConfig::connect`](crate::LockConfig::connect) opens one, together with a tokio runtime
//! that the client owns (one worker thread, which keeps the session alive while the program
//! does something else). Every method blocks the calling thread until the backend answers;
//! guards release on drop, and the drop waits until the release is done.
//!
//! The seed's three-clients demo in plain threads: each client holds the lock in turn.
//!
//! ```
//! use std::time::Duration;
//! use locksmith::blocking::Client;
//!
//! # fn main() -> Result<(), locksmith::LockError> {
//! let config: locksmith::LockConfig = "memory://three-clients-blocking".parse()?;
//! let threads: Vec<_> = (1..=3)
//!     .map(|id| {
//!         let config = config.clone();
//!         std::thread::spawn(move || -> Result<_, locksmith::LockError> {
//!             let client = Client::connect(&config)?;
//!             let guard = client.lock("demo/three-clients")?;
//!             println!("client {id} acquired {} (token {})", guard.key(), guard.fencing_token());
//!             std::thread::sleep(Duration::from_millis(20));
//!             println!("client {id} releases");
//!             let token = guard.fencing_token();
//!             guard.unlock()?;
//!             Ok(token)
//!         })
//!     })
//!     .collect();
//! let mut tokens = Vec::new();
//! for thread in threads {
//!     tokens.push(thread.join().expect("a client thread panicked")?);
//! }
//! tokens.sort();
//! tokens.dedup();
//! assert_eq!(tokens.len(), 3, "every holder had a token of its own");
//! # Ok(())
//! # }
//! ```
//!
//! # Inside an async runtime
//! Blocking a runtime's thread stalls every task on it, so every call refuses with
//! [`LockError::InvalidConfig`] when the calling thread is inside a tokio runtime (also in
//! `spawn_blocking`): use the async API there. A guard or client dropped inside a runtime does
//! not wait: the release is handed to the client's runtime (a guard) or to a thread of its own
//! (the last handle of a client, which closes the session). The same holds for a drop while
//! the thread unwinds from a panic.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};

use crate::{Coordination, FencingToken, LeaderInfo, LockConfig, LockError, LossReason};

/// A blocking client session; cheap to clone (clones share the session and its runtime).
///
/// The session ends when the last clone and the last guard it issued are dropped, or on
/// [`close`](Client::close). See the [module docs](self) for an example.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// The session and the runtime it lives on.
struct Inner {
    session: Arc<dyn Coordination>,
    /// `None` only while the client is being dropped.
    runtime: Option<Runtime>,
    /// What was connected to, for `Debug` (which redacts passwords).
    config: LockConfig,
    /// How long a drop waits for a release or the session's close: the session TTL, after
    /// which the backend lets go of the locks by itself.
    release_wait: Duration,
}

impl Client {
    /// Opens a new client session on the configured backend, with a runtime of its own.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] inside an async runtime, when the runtime cannot be
    /// started, or as [`LockConfig::connect`](crate::LockConfig::connect).
    pub fn connect(config: &LockConfig) -> Result<Client, LockError> {
        refuse_inside_runtime("connect")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("locksmith-blocking")
            .enable_all()
            .build()
            .map_err(|err| {
                LockError::config_with("cannot start the blocking client's runtime", err)
            })?;
        let session = runtime.block_on(config.connect_coordination())?;
        let ttl_secs = match config {
            LockConfig::Memory(memory) => memory.ttl_secs,
            #[cfg(feature = "etcd")]
            LockConfig::Etcd(etcd) => etcd.ttl_secs,
        };
        Ok(Client {
            inner: Arc::new(Inner {
                session,
                runtime: Some(runtime),
                config: config.clone(),
                release_wait: Duration::from_secs(ttl_secs),
            }),
        })
    }

    /// Waits until the lock `name` is ours, as [`DistributedLock::lock`](crate::DistributedLock::lock).
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] inside an async runtime; otherwise as the async `lock`.
    pub fn lock(&self, name: &str) -> Result<LockGuard, LockError> {
        let guard = self.run("lock", self.inner.session.lock(name))??;
        Ok(self.guard(guard))
    }

    /// Takes the lock `name` if nobody holds it; `Ok(None)` otherwise. Never waits behind the
    /// queue.
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    pub fn try_lock(&self, name: &str) -> Result<Option<LockGuard>, LockError> {
        let guard = self.run("try_lock", self.inner.session.try_lock(name))??;
        Ok(guard.map(|guard| self.guard(guard)))
    }

    /// Waits at most `timeout` for the lock `name`; `Ok(None)` when the time ran out, leaving
    /// nothing in the queue.
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    pub fn lock_timeout(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<LockGuard>, LockError> {
        self.within("lock_timeout", timeout, self.inner.session.lock(name))
    }

    /// Waits until `name` is ours to read, as
    /// [`DistributedRwLock::read`](crate::DistributedRwLock::read).
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    pub fn read(&self, name: &str) -> Result<LockGuard, LockError> {
        let guard = self.run("read", self.inner.session.read(name))??;
        Ok(self.guard(guard))
    }

    /// Takes a read hold of `name` if no writer holds or waits; `Ok(None)` otherwise.
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    pub fn try_read(&self, name: &str) -> Result<Option<LockGuard>, LockError> {
        let guard = self.run("try_read", self.inner.session.try_read(name))??;
        Ok(guard.map(|guard| self.guard(guard)))
    }

    /// Waits at most `timeout` to read `name`; `Ok(None)` when the time ran out.
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    pub fn read_timeout(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<LockGuard>, LockError> {
        self.within("read_timeout", timeout, self.inner.session.read(name))
    }

    /// Waits until `name` is ours to write, as
    /// [`DistributedRwLock::write`](crate::DistributedRwLock::write).
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    pub fn write(&self, name: &str) -> Result<LockGuard, LockError> {
        let guard = self.run("write", self.inner.session.write(name))??;
        Ok(self.guard(guard))
    }

    /// Takes the write hold of `name` if nobody holds or waits; `Ok(None)` otherwise.
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    pub fn try_write(&self, name: &str) -> Result<Option<LockGuard>, LockError> {
        let guard = self.run("try_write", self.inner.session.try_write(name))??;
        Ok(guard.map(|guard| self.guard(guard)))
    }

    /// Waits at most `timeout` to write `name`; `Ok(None)` when the time ran out.
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    pub fn write_timeout(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<LockGuard>, LockError> {
        self.within("write_timeout", timeout, self.inner.session.write(name))
    }

    /// Waits for one of `limit` permits of the semaphore `name`, as
    /// [`DistributedSemaphore::acquire`](crate::DistributedSemaphore::acquire).
    ///
    /// # Errors
    /// As [`lock`](Self::lock), and [`LockError::InvalidLimit`] or
    /// [`LockError::LimitMismatch`] for the limit.
    pub fn acquire(&self, name: &str, limit: u32) -> Result<LockGuard, LockError> {
        let guard = self.run("acquire", self.inner.session.acquire(name, limit))??;
        Ok(self.guard(guard))
    }

    /// Takes a permit of `name` if one is free and nobody waits; `Ok(None)` otherwise.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    pub fn try_acquire(&self, name: &str, limit: u32) -> Result<Option<LockGuard>, LockError> {
        let guard = self.run("try_acquire", self.inner.session.try_acquire(name, limit))??;
        Ok(guard.map(|guard| self.guard(guard)))
    }

    /// Waits at most `timeout` for a permit of `name`; `Ok(None)` when the time ran out.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    pub fn acquire_timeout(
        &self,
        name: &str,
        limit: u32,
        timeout: Duration,
    ) -> Result<Option<LockGuard>, LockError> {
        self.within(
            "acquire_timeout",
            timeout,
            self.inner.session.acquire(name, limit),
        )
    }

    /// Waits until this client leads the election `name` with `value`, as
    /// [`LeaderElection::campaign`](crate::LeaderElection::campaign).
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    pub fn campaign(&self, name: &str, value: &[u8]) -> Result<Leadership, LockError> {
        let leadership = self.run("campaign", self.inner.session.campaign(name, value))??;
        Ok(Leadership {
            leadership: Some(leadership),
            client: self.inner.clone(),
        })
    }

    /// The current leader of the election `name`, or `None` when nobody leads.
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    pub fn leader(&self, name: &str) -> Result<Option<LeaderInfo>, LockError> {
        self.run("leader", self.inner.session.leader(name))?
    }

    /// Ends the session now, as [`DistributedLock::close`](crate::DistributedLock::close):
    /// its guards report loss and later calls fail with [`LockError::SessionLost`].
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] inside an async runtime; a backend error if the backend
    /// could not be told (the session then ends with its TTL).
    pub fn close(&self) -> Result<(), LockError> {
        self.run("close", self.inner.session.close())?
    }

    /// Runs `future` to completion on the client's runtime.
    fn run<F: Future>(&self, call: &str, future: F) -> Result<F::Output, LockError> {
        refuse_inside_runtime(call)?;
        Ok(self.inner.runtime()?.block_on(future))
    }

    /// Runs an acquisition for at most `timeout`; a late one is dropped, which withdraws it.
    fn within<F>(
        &self,
        call: &str,
        timeout: Duration,
        acquire: F,
    ) -> Result<Option<LockGuard>, LockError>
    where
        F: Future<Output = Result<crate::LockGuard, LockError>>,
    {
        // The timer must be created inside the runtime: `tokio::time::timeout` needs its clock.
        match self.run(call, async { tokio::time::timeout(timeout, acquire).await })? {
            Ok(guard) => Ok(Some(self.guard(guard?))),
            Err(_elapsed) => Ok(None),
        }
    }

    fn guard(&self, guard: crate::LockGuard) -> LockGuard {
        LockGuard {
            guard: Some(guard),
            client: self.inner.clone(),
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn runtime(&self) -> Result<&Runtime, LockError> {
        self.runtime
            .as_ref()
            .ok_or_else(|| LockError::config("the blocking client is shutting down"))
    }

    /// Finishes a release that a dropped guard started: waits for it (at most the session
    /// TTL) on a plain thread; inside an async runtime, hands it to the client's runtime,
    /// which the guard's client handle keeps running until it is queued.
    fn release_on_drop<F>(&self, release: F)
    where
        F: Future<Output = Result<(), LockError>> + Send + 'static,
    {
        let Some(runtime) = &self.runtime else {
            return;
        };
        if must_not_block() {
            drop(runtime.spawn(release));
        } else {
            // A lost hold (an error here) has nothing left to release.
            let wait = self.release_wait;
            let _ = runtime.block_on(async { tokio::time::timeout(wait, release).await });
        }
    }
}

impl Drop for Inner {
    /// Closes the session (its locks pass on at once rather than after the TTL), then stops
    /// the runtime. Inside an async runtime, where blocking is not allowed, a thread of its
    /// own does it.
    fn drop(&mut self) {
        let runtime = OwnedRuntime(self.runtime.take());
        let session = self.session.clone();
        let wait = self.release_wait;
        let close = move || {
            if let Some(runtime) = &runtime.0 {
                let _ =
                    runtime.block_on(async { tokio::time::timeout(wait, session.close()).await });
            }
            drop(session);
            drop(runtime);
        };
        if must_not_block() {
            // If no thread can be started, the closure is dropped: the runtime stops without
            // waiting and the session ends with its TTL.
            let _ = std::thread::Builder::new()
                .name("locksmith-close".into())
                .spawn(close);
        } else {
            close();
        }
    }
}

/// A runtime that may be dropped anywhere: inside an async runtime (where a blocking shutdown
/// would panic) it stops without waiting for its worker.
struct OwnedRuntime(Option<Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            if must_not_block() {
                runtime.shutdown_background();
            }
        }
    }
}

/// True where a drop must not block on the client's runtime: inside an async runtime, and
/// while the thread unwinds from a panic (tokio's thread-local context may be borrowed then,
/// by the very call that panicked, and entering the runtime would panic again and abort).
fn must_not_block() -> bool {
    std::thread::panicking() || Handle::try_current().is_ok()
}

/// Refuses a blocking call made inside an async runtime.
fn refuse_inside_runtime(call: &str) -> Result<(), LockError> {
    match Handle::try_current() {
        Ok(_) => Err(LockError::config(format!(
            "locksmith::blocking::Client::{call} called inside an async runtime, whose thread \
             it would block: use the async API there (LockConfig::connect)"
        ))),
        Err(_) => Ok(()),
    }
}

/// Proof of a hold taken through a blocking [`Client`]: a lock, a read or write hold, or a
/// semaphore permit. Dropping it releases and waits until the backend has recorded the
/// release (at most the session TTL).
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    /// `None` only once unlocked or dropped.
    guard: Option<crate::LockGuard>,
    /// Keeps the runtime, and the session the hold belongs to, alive.
    client: Arc<Inner>,
}

impl LockGuard {
    fn held(&self) -> &crate::LockGuard {
        // Taken out only by `unlock` and `drop`, which consume the guard.
        self.guard
            .as_ref()
            .unwrap_or_else(|| unreachable!("a blocking guard is used after its release"))
    }

    /// The lock name, as passed to `lock`.
    pub fn name(&self) -> &str {
        self.held().name()
    }

    /// The backend's key for this hold.
    pub fn key(&self) -> &str {
        self.held().key()
    }

    /// The fencing token of this hold: pass it to the storage you protect.
    pub fn fencing_token(&self) -> FencingToken {
        self.held().fencing_token()
    }

    /// True once ownership has ended without an unlock.
    pub fn is_lost(&self) -> bool {
        self.held().is_lost()
    }

    /// Why ownership ended, or `None` while the lock is held.
    pub fn lost_reason(&self) -> Option<LossReason> {
        self.held().lost_reason()
    }

    /// Blocks until ownership ends (session expired, closed or revoked, hold deleted).
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] inside an async runtime.
    pub fn lost(&self) -> Result<LossReason, LockError> {
        refuse_inside_runtime("LockGuard::lost")?;
        Ok(self.client.runtime()?.block_on(self.held().lost()))
    }

    /// Blocks at most `timeout` for ownership to end; `Ok(None)` while it is still held.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] inside an async runtime.
    pub fn lost_timeout(&self, timeout: Duration) -> Result<Option<LossReason>, LockError> {
        refuse_inside_runtime("LockGuard::lost_timeout")?;
        let lost = self.held().lost();
        let waited = self
            .client
            .runtime()?
            .block_on(async { tokio::time::timeout(timeout, lost).await });
        Ok(waited.ok())
    }

    /// Releases the lock and waits until the backend has recorded it.
    ///
    /// # Errors
    /// [`LockError::LockLost`] when ownership had already ended; a backend error when the
    /// release could not be confirmed; [`LockError::InvalidConfig`] inside an async runtime
    /// (the guard is then released as on drop).
    pub fn unlock(mut self) -> Result<(), LockError> {
        refuse_inside_runtime("LockGuard::unlock")?;
        let runtime = self.client.runtime()?;
        match self.guard.take() {
            Some(guard) => runtime.block_on(guard.unlock()),
            None => Ok(()),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(guard) = self.guard.take() {
            self.client.release_on_drop(guard.unlock());
        }
    }
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.guard {
            Some(guard) => guard.fmt(f),
            None => f.write_str("LockGuard(released)"),
        }
    }
}

/// Leadership of an election won through a blocking [`Client`]. Dropping it resigns and
/// waits until the backend has recorded it (at most the session TTL).
#[must_use = "leadership ends as soon as it is dropped"]
pub struct Leadership {
    /// `None` only once resigned or dropped.
    leadership: Option<crate::Leadership>,
    client: Arc<Inner>,
}

impl Leadership {
    fn held(&self) -> &crate::Leadership {
        // Taken out only by `resign` and `drop`, which consume the leadership.
        self.leadership
            .as_ref()
            .unwrap_or_else(|| unreachable!("a blocking leadership is used after it ended"))
    }

    /// The election name.
    pub fn name(&self) -> &str {
        self.held().name()
    }

    /// The backend's key of this candidacy.
    pub fn key(&self) -> &str {
        self.held().key()
    }

    /// The value this leader proclaims.
    pub fn value(&self) -> Vec<u8> {
        self.held().value()
    }

    /// The fencing token of this leadership.
    pub fn fencing_token(&self) -> FencingToken {
        self.held().fencing_token()
    }

    /// Who leads, as observers see it.
    pub fn info(&self) -> LeaderInfo {
        self.held().info()
    }

    /// True once leadership has ended without a resignation.
    pub fn is_lost(&self) -> bool {
        self.held().is_lost()
    }

    /// Why leadership ended, or `None` while it stands.
    pub fn lost_reason(&self) -> Option<LossReason> {
        self.held().lost_reason()
    }

    /// Blocks until leadership ends.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] inside an async runtime.
    pub fn lost(&self) -> Result<LossReason, LockError> {
        refuse_inside_runtime("Leadership::lost")?;
        Ok(self.client.runtime()?.block_on(self.held().lost()))
    }

    /// Replaces the leader's value, as [`Leadership::proclaim`](crate::Leadership::proclaim).
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] inside an async runtime; otherwise as the async
    /// `proclaim`.
    pub fn proclaim(&self, value: &[u8]) -> Result<(), LockError> {
        refuse_inside_runtime("Leadership::proclaim")?;
        self.client.runtime()?.block_on(self.held().proclaim(value))
    }

    /// Gives leadership up and waits until the backend has recorded it.
    ///
    /// # Errors
    /// As the async [`resign`](crate::Leadership::resign), and [`LockError::InvalidConfig`]
    /// inside an async runtime (leadership then ends as on drop).
    pub fn resign(mut self) -> Result<(), LockError> {
        refuse_inside_runtime("Leadership::resign")?;
        let runtime = self.client.runtime()?;
        match self.leadership.take() {
            Some(leadership) => runtime.block_on(leadership.resign()),
            None => Ok(()),
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if let Some(leadership) = self.leadership.take() {
            self.client.release_on_drop(leadership.resign());
        }
    }
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.leadership {
            Some(leadership) => leadership.fmt(f),
            None => f.write_str("Leadership(resigned)"),
        }
    }
}
