//! The store: one FIFO lock table shared by every session connected to it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use locksmith_api::{LockError, LockTable, LossReason, LostSignal};
use parking_lot::Mutex;

use crate::election::{Candidate, Elections};
use crate::session::MemoryLock;

/// The default session TTL, as Go's `concurrency.Session`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// The longest session TTL: 9,000,000,000 s (about 285 years), the longest lease etcd grants.
/// Longer TTLs are refused, so that deadlines stay within the range of tokio's clock.
pub const MAX_TTL: Duration = Duration::from_secs(9_000_000_000);

/// What the table records for each holder and waiter.
#[derive(Clone)]
pub(crate) struct HoldTag {
    pub(crate) session: u64,
    pub(crate) lost: LostSignal,
    /// The proclaimed value of a campaign; `None` for a plain lock.
    pub(crate) candidate: Option<Arc<Candidate>>,
}

/// An in-process lock store: every [`MemoryLock`] connected to one store excludes every
/// other on the same name.
///
/// Cloning is cheap and shares the store. [`MemoryStore::global`] is the process-wide store
/// behind `memory://`, [`MemoryStore::named`] a process-wide store by name (`memory://NAME`),
/// and [`MemoryStore::new`] a private one (the usual choice in unit tests).
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    table: Arc<LockTable<HoldTag>>,
    /// The observers of each name; told of every holder change by the table's hook.
    elections: Arc<Elections>,
    last_session: AtomicU64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A new, private store.
    pub fn new() -> Self {
        let elections = Arc::new(Elections::default());
        let table = {
            let elections = Arc::clone(&elections);
            LockTable::with_holder_hook(move |name, holder| elections.holder_changed(name, holder))
        };
        MemoryStore {
            inner: Arc::new(StoreInner {
                table,
                elections,
                last_session: AtomicU64::new(0),
            }),
        }
    }

    /// The process-wide store behind `memory://`.
    pub fn global() -> Self {
        static GLOBAL: OnceLock<MemoryStore> = OnceLock::new();
        GLOBAL.get_or_init(MemoryStore::new).clone()
    }

    /// The process-wide store called `name` (`memory://NAME`), created on first use.
    pub fn named(name: &str) -> Self {
        static NAMED: OnceLock<Mutex<HashMap<String, MemoryStore>>> = OnceLock::new();
        let stores = NAMED.get_or_init(Default::default);
        stores.lock().entry(name.to_owned()).or_default().clone()
    }

    /// Opens a new client session with the default TTL (10 s).
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] when called outside a tokio runtime (the session's
    /// keepalive runs on it).
    pub fn connect(&self) -> Result<MemoryLock, LockError> {
        self.connect_with_ttl(DEFAULT_TTL)
    }

    /// Opens a new client session whose TTL is `ttl`.
    ///
    /// The TTL matters only when the keepalive stops: after
    /// [`MemoryLock::pause_keepalive`] for longer than the TTL the session expires, as an etcd
    /// lease of a paused process would.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] for a zero TTL, one longer than [`MAX_TTL`], or outside a
    /// tokio runtime.
    pub fn connect_with_ttl(&self, ttl: Duration) -> Result<MemoryLock, LockError> {
        if ttl.is_zero() {
            return Err(LockError::config(
                "memory session TTL must be greater than zero (the default is 10 s)",
            ));
        }
        if ttl > MAX_TTL {
            return Err(LockError::config(format!(
                "memory session TTL {} s is too long: at most {} s (the default is 10 s)",
                ttl.as_secs(),
                MAX_TTL.as_secs()
            )));
        }
        let id = self.inner.last_session.fetch_add(1, Ordering::Relaxed) + 1;
        MemoryLock::start(self.clone(), id, ttl)
    }

    /// Removes the current holder of `name`, as an operator deleting its key would: the
    /// holder's guard (or leadership) reports [`LossReason::Deleted`] and the next waiter (or
    /// candidate) acquires; observers see the next leader, or `None`.
    /// Returns false when nobody held `name`.
    pub fn revoke(&self, name: &str) -> bool {
        self.inner.table.evict_holder(name, |tag| {
            tag.lost.mark(LossReason::Deleted);
        })
    }

    /// How many sessions hold or wait for `name` (holder plus waiters).
    pub fn queue_len(&self, name: &str) -> usize {
        self.inner.table.queue_len(name)
    }

    /// How many names are held or waited for. Names nobody uses take no memory beyond a
    /// small cache of the most recently freed ones.
    pub fn active_names(&self) -> usize {
        self.inner.table.active_names()
    }

    pub(crate) fn table(&self) -> &Arc<LockTable<HoldTag>> {
        &self.inner.table
    }

    pub(crate) fn elections(&self) -> &Arc<Elections> {
        &self.inner.elections
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("active_names", &self.active_names())
            .finish()
    }
}
