//! The store: one table of FIFO queues shared by every session connected to it.
//!
//! Sessions are opened here ([`MemoryStore::connect`]) but defined in `session.rs`, which
//! builds on this module, not the other way round.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use locksmith_api::{Family, LockTable, LossReason};
use parking_lot::Mutex;

use crate::hold::HoldTag;
use crate::observers::Elections;

/// The default session TTL, as the etcd backend's and `etcdctl lock`'s (Go's
/// `concurrency.NewSession` defaults to 60 s).
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// The longest session TTL: 9,000,000,000 s (about 285 years), the longest lease etcd grants.
/// Longer TTLs are refused, so that deadlines stay within the range of tokio's clock.
pub const MAX_TTL: Duration = Duration::from_secs(9_000_000_000);

/// An in-process lock store: every [`MemoryLock`](crate::MemoryLock) connected to one store excludes every
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

    /// A new session number, unique within this store.
    pub(crate) fn next_session_id(&self) -> u64 {
        self.inner.last_session.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Removes the current holder of the lock `name`, as an operator deleting its key would: the
    /// holder's guard (or leadership) reports [`LossReason::Deleted`] and the next waiter (or
    /// candidate) acquires; observers see the next leader, or `None`.
    /// Returns false when nobody held `name`.
    pub fn revoke(&self, name: &str) -> bool {
        self.inner.table.evict_holder(name, |tag| {
            tag.lost.mark(LossReason::Deleted);
        })
    }

    /// Removes every current holder of the reader-writer lock `name` (the writer, or all
    /// readers), as an operator deleting their `NAME/read/…` and `NAME/write/…` keys would:
    /// each guard reports [`LossReason::Deleted`] and the next waiters are granted. Returns
    /// how many holds were removed. Lock `name` and semaphore `name` are not touched.
    pub fn revoke_rwlock(&self, name: &str) -> usize {
        self.inner.table.evict_holders(Family::RwLock, name, |tag| {
            tag.lost.mark(LossReason::Deleted);
        })
    }

    /// Removes every permit holder of the semaphore `name`, as an operator deleting their
    /// keys would: each guard reports [`LossReason::Deleted`] and as many waiters as permits
    /// are free are granted. Returns how many permits were removed.
    pub fn revoke_permits(&self, name: &str) -> usize {
        self.inner
            .table
            .evict_holders(Family::Semaphore, name, |tag| {
                tag.lost.mark(LossReason::Deleted);
            })
    }

    /// How many sessions hold or wait for the lock `name` (holder plus waiters; election
    /// candidates count, they are lock entries).
    pub fn queue_len(&self, name: &str) -> usize {
        self.inner.table.queue_len(name)
    }

    /// How many readers and writers hold or wait for the reader-writer lock `name`.
    pub fn rwlock_queue_len(&self, name: &str) -> usize {
        self.inner.table.queue_len_of(Family::RwLock, name)
    }

    /// How many permits of the semaphore `name` are held or waited for.
    pub fn semaphore_queue_len(&self, name: &str) -> usize {
        self.inner.table.queue_len_of(Family::Semaphore, name)
    }

    /// How many names (locks, reader-writer locks and semaphores) are held or waited for. Names nobody uses take no memory beyond a
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
