//! The etcd backend of locksmith: lease sessions, the revision-queue mutex of etcd's Go
//! `concurrency.Mutex`, the leader election of its `concurrency.Election` and the reader-writer
//! lock of its `recipe.RWMutex`, with the same key layouts, so locksmith, Go services,
//! `etcdctl lock` and `etcdctl elect` exclude each other on the same name; and counting
//! semaphores, which Go lacks, on a layout of their own.
//!
//! ```no_run
//! use locksmith_api::DistributedLock;
//! use locksmith_etcd::{EtcdConfig, EtcdLock};
//!
//! # #[tokio::main] async fn main() -> Result<(), locksmith_api::LockError> {
//! let locks = EtcdLock::connect(&EtcdConfig::new(["127.0.0.1:2379"])).await?;
//! let guard = locks.lock("billing/close-month").await?;
//! println!("holding {} with fencing token {}", guard.key(), guard.fencing_token());
//! guard.unlock().await?;
//! # Ok(()) }
//! ```
//!
//! # Keys
//! A waiter or holder of lock `NAME` is the key `{namespace}{NAME}/{lease id in hex}` on the
//! session's lease, whose value marks the queue attempt that created it (Go ignores values);
//! the holder is the one with the lowest create revision, and that revision is its
//! [`FencingToken`](locksmith_api::FencingToken). Unlike Go's Mutex, which
//! ranges over every key under `NAME/`, locksmith counts only direct children, so locks `a`
//! and `a/b` stay independent between locksmith clients (a Go client on `a` still waits for
//! `a/b`'s holders: Go's layout allows no better).
//!
//! # Leader election
//! [`EtcdLock`] implements [`LeaderElection`]: a candidate is the session's key of the name,
//! as a lock's, with the proposal as its value (Go's `Election` and `etcdctl elect` write the
//! same); the leader is the oldest direct child, its create revision the fencing token.
//! Proclaiming puts a new value only while the key still has that create revision; resigning is
//! a lock's release. A campaign whose queue request's reply was lost cannot tell its key by a
//! value unique to it (the value is the proposal): a key of the session carrying the proposal,
//! found on the retry, is taken as the campaign's, which is safe because nothing else of the
//! session uses the name meanwhile. Observers of one name in one session share one range watch
//! (puts and deletes) on the session's watch stream, started from the revision after a read of
//! every candidate and read again after a compaction or a reset stream.
//!
//! # Reader-writer locks and semaphores
//! [`EtcdLock`] implements [`DistributedRwLock`] with Go's recipe keys (`NAME/read/{unique}`,
//! `NAME/write/{unique}`) and [`DistributedSemaphore`] under
//! `{namespace}\u{1f}semaphore/{NAME}/` (see the impls). Each attempt puts a key unique to it,
//! so one session may hold several guards of a name, and the cleanup of every path that gives a
//! key up is the mutex's.
//!
//! # Cleanup and cancellation
//! Every path that gives a key up (an unlock, a dropped guard, a withdrawn or failed `lock`, a
//! `try_lock` that found the lock taken) deletes it in a task of its own and retries until
//! etcd answers or the session ends; dropping the future that started it changes nothing.
//! Until then the session's other tasks stay off that name. Each delete is guarded, so that a
//! late one can never remove a newer key of the session: a release, and a withdrawal whose
//! queue reply came, by the key's create revision; a withdrawal whose reply was lost by the value
//! its queue attempt put (a withdrawal whose queue attempt never went out sends nothing). A `lock` never adopts a key of its session that it did not
//! create itself: it deletes it and queues afresh. A queue attempt whose request may still
//! reach etcd after the attempt gave up (a timeout, a broken connection) is remembered for ten
//! TTLs (at least 30 s), and a key it leaves behind is deleted while no task of the session uses
//! the name. A cleanup that etcd keeps refusing (permissions for a third of the TTL, "too many
//! requests" or a rejected auth token for a whole TTL) ends the session and revokes its lease,
//! so the lock passes on instead of staying blocked; an unreachable etcd is waited out while
//! the session lives (if it stays unreachable, the session expires and its keys go with it).
//!
//! # Handoff
//! A waiter near the head of the queue (up to 3 keys ahead of it) knows every older key from
//! its queue transaction and watches their deletes and its own key's on one watch from the
//! store's current revision: it owns the lock the moment the last older key's delete event
//! arrives, with no read. A waiter further back watches one key 4 places ahead, so a release
//! reaches at most 4 waiters. Go watches its predecessor from an already-passed revision and so
//! waits for etcd's 100 ms catch-up loop on many contended handoffs, and reads after each.
//!
//! # Session
//! One lease per [`EtcdLock`], kept alive at TTL/3 and revoked when the last handle is dropped
//! or on [`close`](locksmith_api::DistributedLock::close). If no keepalive gets through before
//! the lease's deadline (a partition, a paused process) the session ends: guards report loss,
//! waiters fail with [`LockError::SessionLost`], and a
//! lock is never reported acquired on an expired lease.
#![warn(missing_docs, missing_debug_implementations)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod attempt;
mod config;
mod election;
mod error;
mod hold;
mod hub;
mod mutex;
mod queue;
mod retry;
mod rwlock;
mod semaphore;
mod session;
mod sweep;
mod transport;
mod watch;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

use std::sync::Arc;

use async_trait::async_trait;
use locksmith_api::instrument::AcquireKind;
use locksmith_api::{
    DistributedLock, DistributedRwLock, DistributedSemaphore, LeaderElection, LeaderInfo,
    LeaderWatch, Leadership, LockError, LockGuard, Primitive, QueueInfo, QueueView,
};

pub use config::{EtcdConfig, EtcdTls};
pub use etcd_client;

use session::Session;

/// One etcd client session (one lease); implements [`DistributedLock`].
///
/// Cloning gives another handle to the same session; dropping the last one revokes the lease,
/// which releases every lock the session held at once.
///
/// # Runtime
/// A session runs on the tokio runtime it was connected on: its keepalive, its watches and the
/// releases of its guards are tasks there. If that runtime shuts down while the session is
/// still in use, nothing keeps the lease alive any more: the session ends as
/// [`LossReason::Expired`](locksmith_api::LossReason::Expired) at once, and etcd expires the
/// lease, releasing its locks, within the TTL. From any other runtime, `lock` and `try_lock`
/// then fail with [`LockError::SessionLost`] and a guard's `unlock` returns an error; none of
/// them hangs or panics. Guards taken on that runtime report the loss too (their watches ran
/// there), as [`LossReason::Expired`](locksmith_api::LossReason::Expired) or, if the watch
/// went first, [`LossReason::Unknown`](locksmith_api::LossReason::Unknown). Keep the runtime
/// alive as long as the session, or [`close`](DistributedLock::close) the session first.
#[derive(Clone)]
pub struct EtcdLock {
    session: Arc<Session>,
}

impl EtcdLock {
    /// Connects to etcd and grants the session's lease, within the connect timeout.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] for bad settings (no endpoint, a zero TTL, unreadable TLS
    /// files); [`LockError::Unavailable`] naming the endpoints when etcd does not answer in
    /// time; [`LockError::Backend`] when etcd refuses (wrong credentials).
    ///
    /// # Cancel safety
    /// Cancel-safe: a lease granted by a dropped call expires with its TTL.
    pub async fn connect(config: &EtcdConfig) -> Result<EtcdLock, LockError> {
        Ok(EtcdLock {
            session: Session::open(config).await?,
        })
    }

    /// The session's lease id (the last part of every key, in hex).
    pub fn lease_id(&self) -> i64 {
        self.session.lease_id
    }

    /// The etcd client of this session, for your own requests.
    pub fn client(&self) -> etcd_client::Client {
        self.session.client.clone()
    }

    /// Runs `ops` in one etcd transaction only while `guard`'s hold is still in place (its key
    /// exists with its create revision, the fencing token), plus `compares` of your own.
    /// Returns the transaction's reply; `succeeded()` is false when the hold (or a compare of
    /// yours) failed and nothing was written.
    ///
    /// This is a fenced write: a holder that lost the lock without knowing (a paused process)
    /// cannot overwrite the newer holder's data.
    ///
    /// # Errors
    /// A backend error when etcd cannot be reached or refuses the transaction.
    ///
    /// # Cancel safety
    /// The transaction may or may not have been applied if the future is dropped.
    pub async fn txn_if_owner(
        &self,
        guard: &LockGuard,
        compares: impl IntoIterator<Item = etcd_client::Compare>,
        ops: impl IntoIterator<Item = etcd_client::TxnOp>,
    ) -> Result<etcd_client::TxnResponse, LockError> {
        let revision = i64::try_from(guard.fencing_token().get()).unwrap_or(i64::MAX);
        let mut all = vec![etcd_client::Compare::create_revision(
            guard.key(),
            etcd_client::CompareOp::Equal,
            revision,
        )];
        all.extend(compares);
        let ops: Vec<_> = ops.into_iter().collect();
        let txn = etcd_client::Txn::new().when(all).and_then(ops);
        let mut client = self.client();
        client.txn(txn).await.map_err(|err| {
            error::from_etcd(err, &self.session.endpoints, "run a fenced transaction")
        })
    }
}

#[async_trait]
impl DistributedLock for EtcdLock {
    /// Waits for the lock in FIFO order among all etcd clients using the same key layout.
    ///
    /// # Cancel safety
    /// A dropped future withdraws its key in the background, also when the put committed but
    /// its reply was lost; no later waiter is held up by it while the session lives.
    async fn lock(&self, name: &str) -> Result<LockGuard, LockError> {
        let locking = || mutex::lock(&self.session, name);
        self.session
            .telemetry
            .acquire_with(AcquireKind::Lock, name, locking)
            .await
    }

    async fn try_lock(&self, name: &str) -> Result<Option<LockGuard>, LockError> {
        let trying = || mutex::try_lock(&self.session, name);
        self.session
            .telemetry
            .acquire_with(AcquireKind::TryLock, name, trying)
            .await
    }

    async fn close(&self) -> Result<(), LockError> {
        self.session.close().await
    }
}

#[async_trait]
impl LeaderElection for EtcdLock {
    /// Campaigns with the keys of Go's `concurrency.Election` (and `etcdctl elect`): the
    /// candidate key is the session's key of the name, its value `value`; candidates lead in
    /// the order of their keys' create revisions.
    ///
    /// # Cancel safety
    /// A dropped future withdraws its key in the background, also when the put committed but
    /// its reply was lost.
    async fn campaign(&self, name: &str, value: &[u8]) -> Result<Leadership, LockError> {
        let campaigning = || election::campaign(&self.session, name, value);
        self.session
            .telemetry
            .acquire_with(AcquireKind::Campaign, name, campaigning)
            .await
    }

    /// The oldest direct child of `{namespace}{name}/`. Go's `Election.Leader` takes the
    /// oldest key anywhere under the prefix, nested names included; locksmith counts the
    /// name's own keys only, as its mutex does.
    async fn leader(&self, name: &str) -> Result<Option<LeaderInfo>, LockError> {
        Ok(election::leader(&self.session, name).await?.1)
    }

    /// Observers of one name in one session share one watch on the session's watch stream;
    /// each starts from a read made by its own call.
    async fn observe(&self, name: &str) -> Result<LeaderWatch, LockError> {
        election::observe(&self.session, name).await
    }
}

/// Go's `recipe.RWMutex` keys: readers `{namespace}{name}/read/{unique}`, writers
/// `{namespace}{name}/write/{unique}`, so locksmith and Go readers share and writers of either
/// exclude everyone. Locksmith counts only direct children of `read/` and `write/`; an RW lock
/// `NAME` and a mutex `NAME` are independent (their keys differ), while a mutex named
/// `NAME/read` would share keys with the readers of `NAME`, as in Go: do not mix them.
#[async_trait]
impl DistributedRwLock for EtcdLock {
    async fn read(&self, name: &str) -> Result<LockGuard, LockError> {
        let reading = || rwlock::acquire(&self.session, name, rwlock::Side::Read);
        self.session
            .telemetry
            .acquire_with(AcquireKind::Read, name, reading)
            .await
    }

    async fn try_read(&self, name: &str) -> Result<Option<LockGuard>, LockError> {
        let trying = || rwlock::try_acquire(&self.session, name, rwlock::Side::Read);
        self.session
            .telemetry
            .acquire_with(AcquireKind::TryRead, name, trying)
            .await
    }

    async fn write(&self, name: &str) -> Result<LockGuard, LockError> {
        let writing = || rwlock::acquire(&self.session, name, rwlock::Side::Write);
        self.session
            .telemetry
            .acquire_with(AcquireKind::Write, name, writing)
            .await
    }

    async fn try_write(&self, name: &str) -> Result<Option<LockGuard>, LockError> {
        let trying = || rwlock::try_acquire(&self.session, name, rwlock::Side::Write);
        self.session
            .telemetry
            .acquire_with(AcquireKind::TryWrite, name, trying)
            .await
    }
}

/// locksmith's own layout (Go has no semaphore): a permit is the key
/// `{namespace}\u{1f}semaphore/{NAME}/{lease id in hex}-{n}` (`%` and `/` in `NAME` written
/// `%25` and `%2F`), its value `{limit} {token}`; the unit separator keeps these keys apart
/// from every lock, election and RW key. An uncontended acquire is one transaction, a release
/// one guarded delete; each release reaches at most `limit` waiters far back in the queue and
/// three near its head.
#[async_trait]
impl DistributedSemaphore for EtcdLock {
    async fn acquire(&self, name: &str, limit: u32) -> Result<LockGuard, LockError> {
        let acquiring = || semaphore::acquire(&self.session, name, limit);
        self.session
            .telemetry
            .acquire_with(AcquireKind::Acquire, name, acquiring)
            .await
    }

    async fn try_acquire(&self, name: &str, limit: u32) -> Result<Option<LockGuard>, LockError> {
        let trying = || semaphore::try_acquire(&self.session, name, limit);
        self.session
            .telemetry
            .acquire_with(AcquireKind::TryAcquire, name, trying)
            .await
    }
}

/// Reads the keys of every etcd client with the same layouts (locksmith, Go, `etcdctl lock`,
/// `etcdctl elect`): a queue is its keys in create-revision order, split into holders and
/// waiters by the primitive's grant rule; each entry's `fencing_token` is its key's create
/// revision, its `value` the key's value, its `ttl_left` what etcd reports for its lease.
/// A lock and an election of one name are the same keys: [`Primitive::Election`] only marks
/// the entries as candidates. [`queues`](QueueView::queues) reads every key under
/// `{namespace}{prefix}` (and the semaphores' under their own prefix) in one read each, and
/// skips names none of whose keys has a lease: every client's queue keys have one.
#[async_trait]
impl QueueView for EtcdLock {
    async fn queue(&self, name: &str, primitive: Primitive) -> Result<QueueInfo, LockError> {
        queue::queue(&self.session, name, primitive).await
    }

    async fn queues(&self, prefix: &str) -> Result<Vec<QueueInfo>, LockError> {
        queue::queues(&self.session, prefix).await
    }
}

/// Written by hand: the etcd client inside holds the credentials and is left out.
impl std::fmt::Debug for EtcdLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdLock")
            .field("lease_id", &format_args!("{:x}", self.session.lease_id))
            .field("ttl", &self.session.ttl)
            .field("endpoints", &self.session.endpoints)
            .field("namespace", &self.session.namespace)
            .finish_non_exhaustive()
    }
}
