//! The revision-queue mutex of Go's `concurrency.Mutex`, key for key.
//!
//! A waiter puts `{namespace}{name}/{lease id in hex}` (empty value, on the session lease);
//! the owner is the direct child of `{namespace}{name}/` with the lowest create revision. A
//! waiter watches the next-older key for its delete and goes on until none is left.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse, TxnResponse,
};
use locksmith_api::{
    validate_name, FencingToken, Hold, LockError, LockGuard, LossReason, LostSignal, LostWatch,
    Ticket,
};
use tokio::runtime::Handle;
use tokio::task::AbortHandle;

use crate::error::{from_etcd, is_lease_gone, is_unavailable};
use crate::session::{Link, Session};
use crate::watch::{self, Watched};

/// Keys read per page when looking for the predecessor among nested lock names.
const PAGE: i64 = 64;
/// How long a hold lives before its key is watched for deletes (see `watch_hold`).
const HOLD_WATCH_DELAY: Duration = Duration::from_millis(50);
/// Longest pause between retries of an unavailable etcd.
const MAX_RETRY: Duration = Duration::from_secs(1);

/// Where this session's key for one lock name lives.
struct LockKeys {
    /// `{namespace}{name}/`: every waiter's key is a direct child.
    prefix: String,
    /// `{prefix}{lease id in hex}`.
    own: String,
}

impl LockKeys {
    fn new(session: &Session, name: &str) -> Self {
        let prefix = format!("{}{}/", session.namespace, name);
        let own = format!("{prefix}{:x}", session.lease_id);
        LockKeys { prefix, own }
    }

    /// True for `{prefix}{x}` where `x` has no `/`: a key of this lock, not of a lock
    /// nested under it (`a/b`'s keys are under `a/` too).
    fn is_direct_child(&self, key: &[u8]) -> bool {
        key.strip_prefix(self.prefix.as_bytes())
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(&b'/'))
    }
}

/// Waits for the lock in FIFO order; see [`crate::EtcdLock`].
pub(crate) async fn lock(session: &Arc<Session>, name: &str) -> Result<LockGuard, LockError> {
    validate_name(name)?;
    session.check_alive()?;
    let ticket = tokio::select! {
        biased;
        err = session.ended() => return Err(err),
        ticket = session.local.acquire(name, ()) => ticket?,
    };
    let keys = LockKeys::new(session, name);
    let pending = PendingKey::new(session, &keys.own, ticket);
    let acquired = tokio::select! {
        biased;
        err = session.ended() => Err(err),
        acquired = enqueue_and_wait(session, &keys, &pending) => acquired,
    }?;
    Ok(pending.into_guard(session, name, acquired))
}

/// Takes the lock only if it is free; see [`crate::EtcdLock`].
pub(crate) async fn try_lock(
    session: &Arc<Session>,
    name: &str,
) -> Result<Option<LockGuard>, LockError> {
    validate_name(name)?;
    session.check_alive()?;
    let Some(ticket) = session.local.try_acquire(name, ()) else {
        return Ok(None);
    };
    let keys = LockKeys::new(session, name);
    let pending = PendingKey::new(session, &keys.own, ticket);
    let queued = enqueue(session, &keys, &pending).await?;
    let owner = queued.owner
        || matches!(
            ahead(session, &keys, queued.revision).await?,
            Ahead::Nobody { own: Some(own), .. } if own == queued.revision
        );
    if !owner {
        // Withdraw before answering, so a failed try_lock leaves nothing behind.
        pending.withdraw().await?;
        return Ok(None);
    }
    Ok(Some(pending.into_guard(session, name, queued)))
}

/// What the enqueue transaction found.
struct Queued {
    /// The create revision of our key: our place in the queue and the fencing token.
    revision: i64,
    /// The store revision the answer was read at.
    header: i64,
    /// True when our key is the oldest of all keys under the prefix.
    owner: bool,
}

/// One round trip: create our key if absent, and read the oldest key under the prefix.
async fn enqueue(
    session: &Session,
    keys: &LockKeys,
    pending: &PendingKey,
) -> Result<Queued, LockError> {
    let oldest = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1)
        .with_keys_only();
    let txn = Txn::new()
        .when([Compare::create_revision(
            keys.own.as_str(),
            CompareOp::Equal,
            0,
        )])
        .and_then([
            TxnOp::put(
                keys.own.as_str(),
                "",
                Some(PutOptions::new().with_lease(session.lease_id)),
            ),
            TxnOp::get(keys.prefix.as_str(), Some(oldest.clone())),
        ])
        .or_else([
            TxnOp::get(keys.own.as_str(), None),
            TxnOp::get(keys.prefix.as_str(), Some(oldest)),
        ]);
    // The transaction runs in a task of its own, holding the key's gate, and records our
    // revision there: if this future is dropped mid-flight, the withdrawal waits for the gate
    // and so never races a put that commits after it (the "reply lost" case).
    let reply: TxnResponse = retry(session, "queue for the lock", |mut client| {
        let txn = txn.clone();
        let gate = pending.gate.clone().try_lock_owned().ok();
        let revision = Arc::clone(&pending.revision);
        let flight = session.runtime.spawn(async move {
            let reply = client.txn(txn).await;
            if let Ok(reply) = &reply {
                revision.store(queue_revision(reply), Ordering::SeqCst);
            }
            drop(gate);
            reply
        });
        async move {
            flight
                .await
                .unwrap_or_else(|err| Err(etcd_client::Error::IoError(std::io::Error::other(err))))
        }
    })
    .await?;
    let header = reply.header().map_or(0, |h| h.revision());
    let revision = queue_revision(&reply);
    if revision == 0 {
        return Err(malformed("the queue transaction"));
    }
    let replies = reply.op_responses();
    let owner = match replies.get(1) {
        Some(TxnOpResponse::Get(oldest)) => oldest
            .kvs()
            .first()
            .is_some_and(|kv| kv.key() == keys.own.as_bytes()),
        _ => return Err(malformed("the queue transaction")),
    };
    Ok(Queued {
        revision,
        header,
        owner,
    })
}

/// Our create revision from the queue transaction's reply (0 if the reply makes no sense).
fn queue_revision(reply: &TxnResponse) -> i64 {
    if reply.succeeded() {
        return reply.header().map_or(0, |h| h.revision());
    }
    // Our key was already there (a retried put whose first reply was lost).
    match reply.op_responses().first() {
        Some(TxnOpResponse::Get(own)) => own.kvs().first().map_or(0, |kv| kv.create_revision()),
        _ => 0,
    }
}

/// Enqueues, then waits for every older key of this lock to go.
async fn enqueue_and_wait(
    session: &Session,
    keys: &LockKeys,
    pending: &PendingKey,
) -> Result<Queued, LockError> {
    let queued = enqueue(session, keys, pending).await?;
    if queued.owner {
        return Ok(queued);
    }
    loop {
        match ahead(session, keys, queued.revision).await? {
            Ahead::Waiter { key, revision } => match watch::gone(session, &key, revision).await {
                Ok(Watched::Deleted | Watched::Reread) => {}
                Err(err) if is_unavailable(&err) => {
                    backoff(session, Duration::from_millis(50)).await?
                }
                Err(err) => return Err(from_etcd(err, &session.endpoints, "watch the lock queue")),
            },
            // The session may have expired while we waited (etcd issue 9921): only our own
            // key, still there with our revision, proves ownership.
            Ahead::Nobody { own, header } if own == Some(queued.revision) => {
                return Ok(Queued {
                    revision: queued.revision,
                    header,
                    owner: true,
                })
            }
            Ahead::Nobody { .. } => {
                session.check_alive()?;
                return Err(LockError::LockLost {
                    name: keys.own.clone(),
                    reason: LossReason::Deleted,
                });
            }
        }
    }
}

/// Who is ahead of us in the queue.
enum Ahead {
    /// The newest direct-child key older than ours.
    Waiter { key: String, revision: i64 },
    /// Nobody: our own key's create revision (if it still exists), read in the same
    /// transaction at store revision `header`.
    Nobody { own: Option<i64>, header: i64 },
}

/// Reads who is ahead of the key created at `revision`, and our own key with it: one round
/// trip decides between waiting on and owning the lock.
async fn ahead(session: &Session, keys: &LockKeys, revision: i64) -> Result<Ahead, LockError> {
    let mut below = revision - 1;
    loop {
        let older = GetOptions::new()
            .with_prefix()
            .with_max_create_revision(below)
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(PAGE)
            .with_keys_only();
        let txn = Txn::new().and_then([
            TxnOp::get(keys.prefix.as_str(), Some(older)),
            TxnOp::get(keys.own.as_str(), Some(GetOptions::new().with_keys_only())),
        ]);
        let reply = retry(session, "read the lock queue", |mut client| {
            let txn = txn.clone();
            async move { client.txn(txn).await }
        })
        .await?;
        let header = reply.header().map_or(0, |h| h.revision());
        let (page, own) = match reply.op_responses().as_slice() {
            [TxnOpResponse::Get(page), TxnOpResponse::Get(own)] => (page.clone(), own.clone()),
            _ => return Err(malformed("the queue read")),
        };
        if let Some(kv) = page.kvs().iter().find(|kv| keys.is_direct_child(kv.key())) {
            return Ok(Ahead::Waiter {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                revision: kv.create_revision(),
            });
        }
        match page.kvs().last() {
            Some(last) if page.more() => below = last.create_revision() - 1,
            _ => {
                let own = own.kvs().first().map(|kv| kv.create_revision());
                return Ok(Ahead::Nobody { own, header });
            }
        }
    }
}

/// Runs an etcd call, retrying while etcd is unavailable and the session lives.
async fn retry<T, F, Fut>(session: &Link, operation: &str, mut call: F) -> Result<T, LockError>
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let mut delay = Duration::from_millis(20);
    loop {
        match call(session.client.clone()).await {
            Ok(value) => return Ok(value),
            Err(err) if is_lease_gone(&err) => return Err(session.lease_gone()),
            Err(err) if is_unavailable(&err) => {
                tracing::debug!(%err, operation, "etcd unavailable; retrying");
                backoff(session, delay).await?;
                delay = (delay * 2).min(MAX_RETRY);
            }
            Err(err) => return Err(from_etcd(err, &session.endpoints, operation)),
        }
    }
}

/// Sleeps `delay`, or fails at once if the session ends meanwhile.
async fn backoff(session: &Link, delay: Duration) -> Result<(), LockError> {
    tokio::select! {
        biased;
        err = session.ended() => Err(err),
        () = tokio::time::sleep(delay) => Ok(()),
    }
}

fn malformed(what: &str) -> LockError {
    LockError::Backend {
        backend: "etcd",
        operation: what.to_owned(),
        source: "etcd answered with an unexpected reply".into(),
    }
}

/// Deletes `key` only if it still has `revision` (0: whatever it has), so a stale release
/// never deletes a newer hold (etcd issue 22082). True when it deleted.
async fn delete_if_owned(
    client: &Client,
    key: &str,
    revision: i64,
) -> Result<bool, etcd_client::Error> {
    let mut client = client.clone();
    let txn = if revision > 0 {
        Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, revision)])
            .and_then([TxnOp::delete(key, None)])
    } else {
        Txn::new().and_then([TxnOp::delete(key, None)])
    };
    Ok(client.txn(txn).await?.succeeded())
}

/// Our key while we queue: if the `lock` future is dropped, or fails, the key is withdrawn
/// (also when the put committed but its reply was lost: the revision is then unknown and the
/// key is deleted whatever it holds, which is safe because the local ticket keeps every other
/// task of this session off the name). The local ticket is released only after that.
struct PendingKey {
    key: String,
    revision: Arc<AtomicI64>,
    /// Held by the queue transaction while it is in flight.
    gate: Arc<tokio::sync::Mutex<()>>,
    cleanup: Option<Cleanup>,
}

/// What it takes to withdraw a key in the background.
struct Cleanup {
    link: Arc<Link>,
    runtime: Handle,
    ticket: Ticket<()>,
}

impl Cleanup {
    /// Once no queue transaction is in flight (`gate`), deletes `key` if it still has
    /// `revision` (0: whatever it has), retrying while etcd is unavailable; then lets the next
    /// local task on the name go.
    fn spawn(self, key: String, revision: Arc<AtomicI64>, gate: Arc<tokio::sync::Mutex<()>>) {
        let Cleanup {
            link,
            runtime,
            ticket,
        } = self;
        runtime.spawn(async move {
            let _in_flight_done = gate.lock_owned().await;
            let revision = revision.load(Ordering::SeqCst);
            // Retries while etcd is unavailable and the session lives; an ended session's
            // keys went with its lease.
            let _ = retry(&link, "withdraw from the lock queue", |client| {
                let key = key.clone();
                async move { delete_if_owned(&client, &key, revision).await }
            })
            .await;
            drop(ticket);
        });
    }
}

impl PendingKey {
    fn new(session: &Session, key: &str, ticket: Ticket<()>) -> Self {
        PendingKey {
            key: key.to_owned(),
            revision: Arc::new(AtomicI64::new(0)),
            gate: Arc::new(tokio::sync::Mutex::new(())),
            cleanup: Some(Cleanup {
                link: session.link(),
                runtime: session.runtime.clone(),
                ticket,
            }),
        }
    }

    /// Withdraws the key now and waits for it (the queue transaction has completed).
    async fn withdraw(mut self) -> Result<(), LockError> {
        let revision = self.revision.load(Ordering::SeqCst);
        let Some(cleanup) = self.cleanup.take() else {
            return Ok(());
        };
        let key = self.key.clone();
        let withdrawn = retry(&cleanup.link, "withdraw from the lock queue", |client| {
            let key = key.clone();
            async move { delete_if_owned(&client, &key, revision).await }
        })
        .await;
        drop(cleanup);
        withdrawn.map(drop)
    }

    /// Turns the queued key into a held lock.
    fn into_guard(mut self, session: &Session, name: &str, acquired: Queued) -> LockGuard {
        let Some(Cleanup {
            link,
            runtime,
            ticket,
        }) = self.cleanup.take()
        else {
            // Only `withdraw`, `into_guard` and `drop` take the cleanup, and each consumes
            // `self`: a pending key reaching here still has it.
            unreachable!("a pending key is consumed once")
        };
        let (lost, lost_watch) = LostSignal::new();
        let watcher = runtime.spawn(watch_hold(
            Arc::clone(&link),
            self.key.clone(),
            acquired.revision,
            acquired.header + 1,
            lost.clone(),
            session.ended_watch.clone(),
        ));
        let hold = EtcdHold {
            name: name.to_owned(),
            key: self.key.clone(),
            revision: acquired.revision,
            lost,
            watcher: watcher.abort_handle(),
            cleanup: Some(Cleanup {
                link,
                runtime,
                ticket,
            }),
        };
        LockGuard::new(
            name,
            self.key.clone(),
            FencingToken::new(acquired.revision.unsigned_abs()),
            lost_watch,
            Box::new(hold),
        )
    }
}

impl Drop for PendingKey {
    fn drop(&mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            cleanup.spawn(
                self.key.clone(),
                Arc::clone(&self.revision),
                Arc::clone(&self.gate),
            );
        }
    }
}

/// Marks the hold lost when its key is deleted or the session ends.
async fn watch_hold(
    link: Arc<Link>,
    key: String,
    revision: i64,
    mut from: i64,
    lost: LostSignal,
    ended: LostWatch,
) {
    // Most holds are short: watch only those that outlive a moment. The watch starts from the
    // acquisition's revision, so a delete in the meantime is still seen.
    tokio::select! {
        biased;
        reason = ended.wait() => {
            lost.mark(reason);
            return;
        }
        () = tokio::time::sleep(HOLD_WATCH_DELAY) => {}
    }
    loop {
        let watched = tokio::select! {
            biased;
            reason = ended.wait() => {
                lost.mark(reason);
                return;
            }
            watched = watch::deleted_since(&link, &key, from) => watched,
        };
        if watched == Watched::Deleted {
            lost.mark(LossReason::Deleted);
            return;
        }
        // Compaction, a broken stream or an error: look at the key itself.
        let mut reader = link.client.clone();
        match reader.get(key.as_str(), None).await {
            Ok(now) => {
                let ours = now
                    .kvs()
                    .first()
                    .is_some_and(|kv| kv.create_revision() == revision);
                if !ours {
                    lost.mark(LossReason::Deleted);
                    return;
                }
                from = now.header().map_or(from, |h| h.revision() + 1);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A held lock on etcd.
struct EtcdHold {
    name: String,
    key: String,
    revision: i64,
    lost: LostSignal,
    watcher: AbortHandle,
    cleanup: Option<Cleanup>,
}

#[async_trait]
impl Hold for EtcdHold {
    async fn release(mut self: Box<Self>) -> Result<(), LockError> {
        self.watcher.abort();
        let Some(cleanup) = self.cleanup.take() else {
            return Ok(());
        };
        let (key, revision) = (self.key.clone(), self.revision);
        let released = retry(&cleanup.link, "release the lock", |client| {
            let key = key.clone();
            async move { delete_if_owned(&client, &key, revision).await }
        })
        .await;
        // The key is gone (or its session with it): the next local task may go.
        drop(cleanup);
        match released {
            Ok(true) => Ok(()),
            Ok(false) | Err(LockError::SessionLost { .. }) => Err(LockError::LockLost {
                name: self.name.clone(),
                reason: self.lost.reason().unwrap_or(LossReason::Deleted),
            }),
            Err(err) => Err(err),
        }
    }
}

impl Drop for EtcdHold {
    fn drop(&mut self) {
        self.watcher.abort();
        if let Some(cleanup) = self.cleanup.take() {
            let revision = Arc::new(AtomicI64::new(self.revision));
            cleanup.spawn(self.key.clone(), revision, Arc::default());
        }
    }
}
