//! The revision-queue mutex of Go's `concurrency.Mutex`, key for key.
//!
//! A waiter puts `{namespace}{name}/{lease id in hex}` (on the session lease, its value a token
//! of the attempt, so that a key this attempt did not create is never taken for its own);
//! the owner is the direct child of `{namespace}{name}/` with the lowest create revision. A
//! waiter watches the next-older key for its delete and goes on until none is left.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
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
use tokio::task::{AbortHandle, JoinHandle};

use crate::error::from_etcd;
use crate::retry::{self, Backoff, Cleaned, ErrorKind};
use crate::session::{Link, Session};
use crate::watch::{self, Watched};

/// Keys read per page when looking for the predecessor among nested lock names.
const PAGE: i64 = 64;
/// How long a hold lives before its key is watched for deletes (see `watch_hold`).
const HOLD_WATCH_DELAY: Duration = Duration::from_millis(50);

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
        acquired = enqueue_and_wait(session, &keys, name, &pending) => acquired,
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
        // Withdraw before answering, so a failed try_lock leaves nothing behind. The
        // withdrawal runs in a task of its own: dropping this future does not stop it.
        pending.withdraw().await?;
        return Ok(None);
    }
    Ok(Some(pending.into_guard(session, name, queued)))
}

/// What the enqueue transaction found.
#[derive(Debug, Clone, Copy)]
struct Queued {
    /// The create revision of our key: our place in the queue and the fencing token.
    revision: i64,
    /// The store revision the answer was read at.
    header: i64,
    /// True when our key is the oldest of all keys under the prefix.
    owner: bool,
}

/// Puts our key, fresh, and reads the oldest key under the prefix: one round trip unless a key
/// of ours was already there.
///
/// The attempts run in a task of their own that holds the pending key's gate and records our
/// revision there: if this future is dropped mid-flight, the withdrawal waits for the gate and
/// so never races a put that commits after it (the "reply lost" case). The task stops at its
/// next attempt once nobody waits for it.
async fn enqueue(
    session: &Session,
    keys: &LockKeys,
    pending: &PendingKey,
) -> Result<Queued, LockError> {
    let link = session.link();
    let own = keys.own.clone();
    let prefix = keys.prefix.clone();
    let nonce = pending.nonce.clone();
    let revision = Arc::clone(&pending.revision);
    let gate = Arc::clone(&pending.gate);
    let abandoned = Arc::clone(&pending.abandoned);
    let flight = session.runtime.spawn(async move {
        let _in_flight = gate.lock_owned().await;
        let mut stale = 0;
        loop {
            if abandoned.load(Ordering::SeqCst) {
                return Err(LockError::LockLost {
                    name: prefix.trim_end_matches('/').to_owned(),
                    reason: LossReason::Unknown,
                });
            }
            let txn = queue_txn(&link, &own, &prefix, &nonce, stale);
            let reply = retry::retry(&link, "queue for the lock", |mut client| {
                let txn = txn.clone();
                async move { client.txn(txn).await }
            })
            .await?;
            match read_queue_reply(&reply, &own, &nonce)? {
                QueueReply::Queued(queued) => {
                    revision.store(queued.revision, Ordering::SeqCst);
                    return Ok(queued);
                }
                // Our key is there but this attempt did not create it: a hold or withdrawal
                // whose delete may still be in flight. Never adopt it: delete it (guarded by
                // its revision) and queue afresh, so the token is new and no stale delete can
                // remove the new hold.
                QueueReply::Stale(found) => stale = found,
                QueueReply::Gone => stale = 0,
            }
        }
    });
    match flight.await {
        Ok(queued) => queued,
        Err(err) => Err(LockError::Backend {
            backend: "etcd",
            operation: "queue for the lock".to_owned(),
            source: Box::new(err),
        }),
    }
}

/// The queue transaction. With `stale == 0`: if our key is absent, put it with this attempt's
/// `nonce` and read the oldest key; else read our key and the oldest. With `stale > 0`: delete
/// our key if it still has that create revision, and read it back.
fn queue_txn(link: &Link, own: &str, prefix: &str, nonce: &str, stale: i64) -> Txn {
    if stale > 0 {
        return Txn::new()
            .when([Compare::create_revision(own, CompareOp::Equal, stale)])
            .and_then([TxnOp::delete(own, None)])
            .or_else([TxnOp::get(own, None)]);
    }
    let oldest = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1)
        .with_keys_only();
    Txn::new()
        .when([Compare::create_revision(own, CompareOp::Equal, 0)])
        .and_then([
            TxnOp::put(
                own,
                nonce,
                Some(PutOptions::new().with_lease(link.lease_id)),
            ),
            TxnOp::get(prefix, Some(oldest.clone())),
        ])
        .or_else([TxnOp::get(own, None), TxnOp::get(prefix, Some(oldest))])
}

/// What one queue transaction found.
enum QueueReply {
    /// Our key, created by this attempt (now or by an earlier try whose reply was lost).
    Queued(Queued),
    /// A key of ours not created by this attempt, with its create revision.
    Stale(i64),
    /// Our key is not there (a stale key was just deleted, or vanished).
    Gone,
}

fn read_queue_reply(reply: &TxnResponse, own: &str, nonce: &str) -> Result<QueueReply, LockError> {
    let header = reply.header().map_or(0, |h| h.revision());
    let replies = reply.op_responses();
    let found = match replies.first() {
        // The put of a fresh key: its create revision is the transaction's.
        Some(TxnOpResponse::Put(_)) => None,
        Some(TxnOpResponse::Get(own)) => match own.kvs().first() {
            None => return Ok(QueueReply::Gone),
            Some(kv) if kv.value() != nonce.as_bytes() => {
                return Ok(QueueReply::Stale(kv.create_revision()))
            }
            Some(kv) => Some(kv.create_revision()),
        },
        // The guarded delete of a stale key went through.
        Some(TxnOpResponse::Delete(_)) => return Ok(QueueReply::Gone),
        _ => return Err(malformed("the queue transaction")),
    };
    let revision = found.unwrap_or(header);
    let owner = match replies.get(1) {
        Some(TxnOpResponse::Get(oldest)) => oldest
            .kvs()
            .first()
            .is_some_and(|kv| kv.key() == own.as_bytes()),
        _ => return Err(malformed("the queue transaction")),
    };
    if revision <= 0 {
        return Err(malformed("the queue transaction"));
    }
    Ok(QueueReply::Queued(Queued {
        revision,
        header,
        owner,
    }))
}

/// Enqueues, then waits for every older key of this lock to go.
async fn enqueue_and_wait(
    session: &Session,
    keys: &LockKeys,
    name: &str,
    pending: &PendingKey,
) -> Result<Queued, LockError> {
    let queued = enqueue(session, keys, pending).await?;
    if queued.owner {
        return Ok(queued);
    }
    // A watch that ends without a delete (a broken or refused stream, compaction) is followed
    // by a read; back off between such rounds so that a failing stream is not a busy loop.
    let mut backoff = Backoff::default();
    loop {
        match ahead(session, keys, queued.revision).await? {
            Ahead::Waiter { key, revision } => match watch::gone(session, &key, revision).await {
                Ok(Watched::Deleted) => backoff.reset(),
                Ok(Watched::Reread) => backoff.wait(session).await?,
                Err(err) => match retry::classify(&err) {
                    ErrorKind::Transient => backoff.wait(session).await?,
                    ErrorKind::LeaseGone => return Err(session.lease_gone()),
                    ErrorKind::Permanent => {
                        return Err(from_etcd(err, &session.endpoints, "watch the lock queue"))
                    }
                },
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
                    name: name.to_owned(),
                    reason: LossReason::Deleted,
                });
            }
        }
    }
}

/// Who is ahead of us in the queue.
enum Ahead {
    /// The newest direct-child key older than ours (as etcd stores it: keys are bytes).
    Waiter { key: Vec<u8>, revision: i64 },
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
        let reply = retry::retry(session, "read the lock queue", |mut client| {
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
                key: kv.key().to_vec(),
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
    mut client: Client,
    key: String,
    revision: i64,
) -> Result<bool, etcd_client::Error> {
    let txn = if revision > 0 {
        Txn::new()
            .when([Compare::create_revision(
                key.as_str(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::delete(key.as_str(), None)])
    } else {
        Txn::new().and_then([TxnOp::delete(key.as_str(), None)])
    };
    Ok(client.txn(txn).await?.succeeded())
}

/// A unique value for each queue attempt of this process: a key of ours whose value is not
/// the attempt's own was not created by it.
fn new_nonce() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("locksmith-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Our key while we queue: if the `lock` future is dropped, or fails, the key is withdrawn
/// (also when the put committed but its reply was lost: the revision is then unknown and the
/// key is deleted whatever it holds, which is safe because the local ticket keeps every other
/// task of this session off the name). The local ticket is released only after that.
struct PendingKey {
    key: String,
    /// The value this attempt puts, telling its own key from a stale one.
    nonce: String,
    revision: Arc<AtomicI64>,
    /// Held by the queue task while it runs.
    gate: Arc<tokio::sync::Mutex<()>>,
    /// Set when nobody waits for the queue task any more.
    abandoned: Arc<AtomicBool>,
    cleanup: Option<Cleanup>,
}

/// What it takes to give a key up in the background: the session, and the local ticket that
/// keeps this session's other tasks off the name until etcd has answered.
struct Cleanup {
    link: Arc<Link>,
    runtime: Handle,
    ticket: Ticket<()>,
}

impl Cleanup {
    /// Spawns the deletion of `key` if it still has `revision` (0: whatever it has), once no
    /// queue task is in flight (`gate`). The task goes on whatever happens to the caller: it
    /// retries until etcd answers or the session ends (see [`retry::cleanup`]), and only then
    /// lets the next local task on the name go.
    fn spawn(
        self,
        operation: &'static str,
        key: String,
        revision: Arc<AtomicI64>,
        gate: Arc<tokio::sync::Mutex<()>>,
    ) -> JoinHandle<Cleaned<bool>> {
        let Cleanup {
            link,
            runtime,
            ticket,
        } = self;
        runtime.spawn(async move {
            let _in_flight_done = gate.lock_owned().await;
            let revision = revision.load(Ordering::SeqCst);
            let cleaned = retry::cleanup(&link, operation, |client| {
                delete_if_owned(client, key.clone(), revision)
            })
            .await;
            drop(ticket);
            cleaned
        })
    }
}

impl PendingKey {
    fn new(session: &Session, key: &str, ticket: Ticket<()>) -> Self {
        PendingKey {
            key: key.to_owned(),
            nonce: new_nonce(),
            revision: Arc::new(AtomicI64::new(0)),
            gate: Arc::new(tokio::sync::Mutex::new(())),
            abandoned: Arc::new(AtomicBool::new(false)),
            cleanup: Some(Cleanup {
                link: session.link(),
                runtime: session.runtime.clone(),
                ticket,
            }),
        }
    }

    /// Starts the withdrawal of the key, in the background.
    fn spawn_withdrawal(&mut self) -> Option<JoinHandle<Cleaned<bool>>> {
        self.abandoned.store(true, Ordering::SeqCst);
        let cleanup = self.cleanup.take()?;
        Some(cleanup.spawn(
            "withdraw from the lock queue",
            self.key.clone(),
            Arc::clone(&self.revision),
            Arc::clone(&self.gate),
        ))
    }

    /// Withdraws the key and waits until etcd has answered (or the session ended, taking the
    /// key with it). If this future is dropped, the withdrawal goes on.
    async fn withdraw(mut self) -> Result<(), LockError> {
        if let Some(withdrawal) = self.spawn_withdrawal() {
            let _ = withdrawal.await;
        }
        Ok(())
    }

    /// Turns the queued key into a held lock.
    fn into_guard(mut self, session: &Session, name: &str, acquired: Queued) -> LockGuard {
        let Some(cleanup) = self.cleanup.take() else {
            // Only `spawn_withdrawal` and `into_guard` take the cleanup, and each is reached at
            // most once per pending key: a pending key reaching here still has it.
            unreachable!("a pending key is consumed once")
        };
        let link = Arc::clone(&cleanup.link);
        let (lost, lost_watch) = LostSignal::new();
        let watcher = cleanup.runtime.spawn(watch_hold(
            link,
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
            cleanup: Some(cleanup),
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
        drop(self.spawn_withdrawal());
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
    let mut backoff = Backoff::default();
    loop {
        let watched = tokio::select! {
            biased;
            reason = ended.wait() => {
                lost.mark(reason);
                return;
            }
            watched = watch::deleted_since(&link, key.as_bytes(), from) => watched,
        };
        if watched == Watched::Deleted {
            lost.mark(why_deleted(&link).await);
            return;
        }
        // Compaction, a broken stream or an error: look at the key itself.
        let mut reader = link.client.clone();
        let read = tokio::time::timeout(
            retry::attempt_timeout(link.ttl),
            reader.get(key.as_str(), None),
        )
        .await;
        if let Ok(Ok(now)) = read {
            let ours = now
                .kvs()
                .first()
                .is_some_and(|kv| kv.create_revision() == revision);
            if !ours {
                lost.mark(why_deleted(&link).await);
                return;
            }
            from = now.header().map_or(from, |h| h.revision() + 1);
        }
        if backoff.wait(&link).await.is_err() {
            // The session ended: the next round reports it.
            continue;
        }
    }
}

/// Why a hold's key went: with its lease (revoked or expired: the session is over), or
/// deleted on its own while the session lives.
async fn why_deleted(link: &Link) -> LossReason {
    let mut client = link.client.clone();
    let asked = tokio::time::timeout(
        retry::attempt_timeout(link.ttl),
        client.lease_time_to_live(link.lease_id, None),
    )
    .await;
    match asked {
        // etcd answers -1 for a lease it no longer knows.
        Ok(Ok(lease)) if lease.ttl() < 0 => {
            let _ = link.lease_gone();
            link.ended_watch.reason().unwrap_or(LossReason::Expired)
        }
        Ok(Err(err)) if retry::classify(&err) == ErrorKind::LeaseGone => {
            let _ = link.lease_gone();
            link.ended_watch.reason().unwrap_or(LossReason::Expired)
        }
        _ => LossReason::Deleted,
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

impl EtcdHold {
    /// Starts the release in the background: it goes on if the caller goes away.
    fn spawn_release(&mut self) -> Option<JoinHandle<Cleaned<bool>>> {
        self.watcher.abort();
        let cleanup = self.cleanup.take()?;
        Some(cleanup.spawn(
            "release the lock",
            self.key.clone(),
            Arc::new(AtomicI64::new(self.revision)),
            Arc::default(),
        ))
    }

    fn lost_error(&self, reason: Option<LossReason>) -> LockError {
        LockError::LockLost {
            name: self.name.clone(),
            reason: reason
                .or_else(|| self.lost.reason())
                .unwrap_or(LossReason::Deleted),
        }
    }
}

#[async_trait]
impl Hold for EtcdHold {
    /// Releases and waits for etcd's answer. The release runs in a task of its own and keeps
    /// the local ticket until etcd has answered, so a dropped `unlock()` still releases, and no
    /// new hold of this session on the name can start while the delete is outstanding.
    async fn release(mut self: Box<Self>) -> Result<(), LockError> {
        let Some(release) = self.spawn_release() else {
            return Ok(());
        };
        match release.await {
            Ok(Cleaned::Done { value: true, .. }) => Ok(()),
            // Gone already: by this very release when an earlier attempt's reply was lost,
            // else someone else deleted it.
            Ok(Cleaned::Done {
                value: false,
                maybe_applied_before,
            }) => {
                if maybe_applied_before {
                    Ok(())
                } else {
                    Err(self.lost_error(None))
                }
            }
            Ok(Cleaned::SessionEnded(reason)) => Err(self.lost_error(Some(reason))),
            Err(err) => Err(LockError::Backend {
                backend: "etcd",
                operation: "release the lock".to_owned(),
                source: Box::new(err),
            }),
        }
    }
}

impl Drop for EtcdHold {
    fn drop(&mut self) {
        drop(self.spawn_release());
    }
}
