//! The revision-queue mutex of Go's `concurrency.Mutex`, key for key.
//!
//! A waiter puts `{namespace}{name}/{lease id in hex}` (on the session lease, its value a token
//! of the attempt, so that a key this attempt did not create is never taken for its own);
//! the owner is the direct child of `{namespace}{name}/` with the lowest create revision.
//!
//! The queue transaction reads the newest keys with ours. A waiter with at most [`TRACK`]
//! older keys knows them all and watches their deletes and its own key's on one watch, so it
//! owns the lock the moment the last older key's delete arrives, with no read (see
//! [`watch::all_gone`]). A waiter further back watches only the key [`TRACK`] + 1 places ahead
//! of it; once that key is gone it tracks the [`TRACK`] keys it knows are left. Every delete
//! reaches at most [`TRACK`] + 1 waiters, however long the queue.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use etcd_client::{
    Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};
use locksmith_api::{validate_name, LockError, LockGuard, LossReason};

use crate::hold::{why_deleted, PendingKey, Stamp};
use crate::retry::{self, Backoff};
use crate::session::{Link, Session};
use crate::watch::{self, QueueKey, Tracked, Watched};

/// Keys read per page when looking for older keys among nested lock names.
const PAGE: i64 = 64;

/// How many older keys a waiter tracks at most: the waiters this close to the head of the
/// queue learn of their turn from the delete event alone.
const TRACK: usize = 3;

/// Where this session's key for one lock name lives.
#[derive(Clone)]
struct LockKeys {
    /// The lock name.
    name: String,
    /// `{namespace}{name}/`: every waiter's key is a direct child.
    prefix: String,
    /// `{prefix}{lease id in hex}`.
    own: String,
}

impl LockKeys {
    fn new(session: &Session, name: &str) -> Self {
        let prefix = format!("{}{}/", session.namespace, name);
        let own = format!("{prefix}{:x}", session.lease_id);
        LockKeys {
            name: name.to_owned(),
            prefix,
            own,
        }
    }

    /// True for a key of this lock, not of a lock nested under it.
    fn is_direct_child(&self, key: &[u8]) -> bool {
        watch::is_direct_child(self.prefix.as_bytes(), key)
    }
}

/// Waits for the lock in FIFO order; see [`crate::EtcdLock`].
pub(crate) async fn lock(session: &Arc<Session>, name: &str) -> Result<LockGuard, LockError> {
    acquire(session, name, Stamp::Nonce).await
}

/// Queues a key stamped with `stamp` (a lock's nonce, a campaign's proposal) under `name` and
/// waits until it is the oldest.
pub(crate) async fn acquire(
    session: &Arc<Session>,
    name: &str,
    stamp: Stamp,
) -> Result<LockGuard, LockError> {
    validate_name(name)?;
    session.check_alive()?;
    let ticket = tokio::select! {
        biased;
        err = session.ended() => return Err(err),
        ticket = session.local.acquire(name, ()) => ticket?,
    };
    let keys = LockKeys::new(session, name);
    let pending = PendingKey::new(session, &keys.own, ticket, stamp);
    let acquired = tokio::select! {
        biased;
        err = session.ended() => Err(err),
        acquired = enqueue_and_wait(session, &keys, name, &pending) => acquired,
    }?;
    Ok(pending.into_guard(session, name, acquired.revision, acquired.header))
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
    let pending = PendingKey::new(session, &keys.own, ticket, Stamp::Nonce);
    let queued = enqueue(session, &keys, &pending).await?;
    // Older keys known to stand mean "taken" without another read.
    let owner = queued.owner
        || (queued.ahead.is_none()
            && matches!(
                ahead(session, &keys, queued.revision).await?,
                Ahead::Nobody { own: Some(own), .. } if own == queued.revision
            ));
    if !owner {
        // Withdraw before answering, so a failed try_lock leaves nothing behind. The
        // withdrawal runs in a task of its own: dropping this future does not stop it.
        pending.withdraw().await?;
        return Ok(None);
    }
    Ok(Some(pending.into_guard(
        session,
        name,
        queued.revision,
        queued.header,
    )))
}

/// What the enqueue transaction found.
#[derive(Debug, Clone)]
struct Queued {
    /// The create revision of our key: our place in the queue and the fencing token.
    revision: i64,
    /// The store revision the answer was read at.
    header: i64,
    /// True when our key is the oldest of all keys under the prefix.
    owner: bool,
    /// Who is ahead of us, as the queue transaction read it (`None` when nested lock names
    /// filled its page).
    ahead: Option<Ahead>,
}

/// Puts our key, fresh, and reads the newest keys under the prefix: one round trip unless a
/// key of ours was already there.
///
/// The attempts run in a task of their own that holds the pending key's gate and marks the key
/// sent: if this future is dropped mid-flight, the withdrawal waits for the gate and so never
/// races a put that commits after it (the "reply lost" case). The task stops at its next
/// attempt once nobody waits for it.
async fn enqueue(
    session: &Session,
    keys: &LockKeys,
    pending: &PendingKey,
) -> Result<Queued, LockError> {
    let link = session.link();
    let keys = keys.clone();
    let attempt = Attempt {
        value: pending.value.clone(),
        is_proposal: pending.is_proposal,
        revision: Arc::clone(&pending.revision),
    };
    let sent = Arc::clone(&pending.sent);
    let gate = Arc::clone(&pending.gate);
    let abandoned = Arc::clone(&pending.abandoned);
    let (unsure, local, runtime) = (
        Arc::clone(&session.unsure),
        Arc::clone(&session.local),
        session.runtime.clone(),
    );
    let flight = session.runtime.spawn(async move {
        let _in_flight = gate.lock_owned().await;
        let mut unanswered = false;
        let queued =
            queue_attempts(&link, &keys, &attempt, &abandoned, &sent, &mut unanswered).await;
        if let Ok(queued) = &queued {
            attempt.revision.store(queued.revision, Ordering::SeqCst);
        }
        // An attempt that failed or timed out after it was sent may still be applied later,
        // after this key is gone: the session sweeps for what it would leave behind.
        if unanswered {
            unsure.note(
                &link,
                &local,
                &runtime,
                &keys.name,
                &keys.own,
                &attempt.value,
            );
        }
        queued
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

/// One queue attempt's value, and where it records its key's create revision once known.
struct Attempt {
    value: Vec<u8>,
    /// See [`Stamp::Proposal`].
    is_proposal: bool,
    revision: Arc<AtomicI64>,
}

/// The queue attempts of [`enqueue`]. Sets `sent` before the first request goes out, and
/// `unanswered` once a sent request got no reply (its put may still land).
async fn queue_attempts(
    link: &Link,
    keys: &LockKeys,
    attempt: &Attempt,
    abandoned: &AtomicBool,
    sent: &AtomicBool,
    unanswered: &mut bool,
) -> Result<Queued, LockError> {
    let mut stale = 0;
    loop {
        if abandoned.load(Ordering::SeqCst) {
            return Err(LockError::LockLost {
                name: keys.name.clone(),
                reason: LossReason::Unknown,
            });
        }
        let txn = queue_txn(link, &keys.own, &keys.prefix, &attempt.value, stale);
        // `retry` calls again only after an attempt that failed or timed out.
        let mut calls = 0;
        let reply = retry::retry(link, "queue for the lock", |mut client| {
            calls += 1;
            sent.store(true, Ordering::SeqCst);
            let txn = txn.clone();
            async move { client.txn(txn).await }
        })
        .await;
        *unanswered |= calls > 1 || (calls == 1 && reply.is_err());
        let reply = reply?;
        match read_queue_reply(&reply, keys, attempt, calls > 1)? {
            QueueReply::Queued(queued) => return Ok(queued),
            // Our key is there but this attempt did not create it: a hold or withdrawal whose
            // delete may still be in flight. Never adopt it: delete it (guarded by its
            // revision) and queue afresh, so the token is new and no stale delete can remove
            // the new hold.
            QueueReply::Stale(found) => stale = found,
            QueueReply::Gone => stale = 0,
        }
    }
}

/// The queue transaction. With `stale == 0`: if our key is absent, put it with this attempt's
/// `value` and read the newest keys (ours and up to [`TRACK`] + 1 older); else read our key
/// and the newest. With `stale > 0`: delete
/// our key if it still has that create revision, and read it back.
fn queue_txn(link: &Link, own: &str, prefix: &str, value: &[u8], stale: i64) -> Txn {
    if stale > 0 {
        return Txn::new()
            .when([Compare::create_revision(own, CompareOp::Equal, stale)])
            .and_then([TxnOp::delete(own, None)])
            .or_else([TxnOp::get(own, None)]);
    }
    let newest = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_limit(TRACK as i64 + 2)
        .with_keys_only();
    Txn::new()
        .when([Compare::create_revision(own, CompareOp::Equal, 0)])
        .and_then([
            TxnOp::put(
                own,
                value,
                Some(PutOptions::new().with_lease(link.lease_id)),
            ),
            TxnOp::get(prefix, Some(newest.clone())),
        ])
        .or_else([TxnOp::get(own, None), TxnOp::get(prefix, Some(newest))])
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

/// A key of ours the put branch did not create is the attempt's own when it carries a lock's
/// unique value, or a campaign's proposal after a `retried` request (see [`Stamp::Proposal`]).
fn read_queue_reply(
    reply: &TxnResponse,
    keys: &LockKeys,
    attempt: &Attempt,
    retried: bool,
) -> Result<QueueReply, LockError> {
    let own = keys.own.as_str();
    let header = reply.header().map_or(0, |h| h.revision());
    let replies = reply.op_responses();
    let found = match replies.first() {
        // The put of a fresh key: its create revision is the transaction's.
        Some(TxnOpResponse::Put(_)) => None,
        Some(TxnOpResponse::Get(own)) => match own.kvs().first() {
            None => return Ok(QueueReply::Gone),
            Some(kv) if kv.value() != attempt.value || (attempt.is_proposal && !retried) => {
                return Ok(QueueReply::Stale(kv.create_revision()))
            }
            Some(kv) => Some(kv.create_revision()),
        },
        // The guarded delete of a stale key went through.
        Some(TxnOpResponse::Delete(_)) => return Ok(QueueReply::Gone),
        _ => return Err(malformed("the queue transaction")),
    };
    let revision = found.unwrap_or(header);
    let Some(TxnOpResponse::Get(newest)) = replies.get(1) else {
        return Err(malformed("the queue transaction"));
    };
    if revision <= 0 {
        return Err(malformed("the queue transaction"));
    }
    // Newest first: the keys after ours are the newest older ones.
    let ahead = newest
        .kvs()
        .iter()
        .position(|kv| kv.key() == own.as_bytes())
        .and_then(|at| {
            let mut sorter = AheadSorter::default();
            newest.kvs()[at + 1..]
                .iter()
                .filter(|kv| keys.is_direct_child(kv.key()))
                .find_map(|kv| sorter.push(kv))
                .or_else(|| sorter.finish(newest.more(), Some(revision), header))
        });
    Ok(QueueReply::Queued(Queued {
        revision,
        header,
        owner: matches!(ahead, Some(Ahead::Nobody { .. })),
        ahead,
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
    let own = QueueKey {
        key: keys.own.clone().into_bytes(),
        revision: queued.revision,
    };
    let owner = |header| Queued {
        header,
        owner: true,
        ahead: None,
        ..queued.clone()
    };
    // A watch that ends without settling (a broken or refused stream, compaction) is followed
    // by a read; back off between such rounds so that a failing stream is not a busy loop.
    let mut backoff = Backoff::default();
    let mut known = queued.ahead.clone();
    loop {
        let read = match known.take() {
            Some(known) => known,
            None => ahead(session, keys, queued.revision).await?,
        };
        let older = match read {
            // The session may have expired while we waited (etcd issue 9921): only our own
            // key, still there with our revision, proves ownership.
            Ahead::Nobody { own, header } if own == Some(queued.revision) => {
                return Ok(owner(header))
            }
            Ahead::Nobody { .. } => return Err(own_key_gone(session, name).await),
            Ahead::Near { own, .. } if own != Some(queued.revision) => {
                return Err(own_key_gone(session, name).await)
            }
            Ahead::Near { older, .. } => older,
            Ahead::Far { far, near } => {
                match watch::gone(session, &far.key, far.revision).await {
                    // Unless keys older than it withdrew, the ones we know are all that is
                    // left ahead of us; `all_gone` checks that.
                    Ok(Watched::Deleted) => {
                        backoff.reset();
                        known = Some(Ahead::Near {
                            older: near,
                            own: Some(queued.revision),
                        });
                    }
                    Ok(Watched::Reread) => backoff.wait(session).await?,
                    Err(err) => watch::failed(session, err, &mut backoff).await?,
                }
                continue;
            }
        };
        match watch::all_gone(session, &[keys.prefix.as_bytes()], &own, &older).await {
            Ok(Tracked::Owner { at }) => return Ok(owner(at)),
            Ok(Tracked::OwnGone) => return Err(own_key_gone(session, name).await),
            // Older keys than the ones we know (one ahead withdrew out of turn), or a watch
            // that could not go on: read the queue afresh after a pause. With older keys left
            // we are not next, so the pause costs nothing, and should the read and the check
            // ever disagree, it keeps the disagreement from becoming a busy loop.
            Ok(Tracked::Incomplete | Tracked::Reread) => backoff.wait(session).await?,
            Err(err) => watch::failed(session, err, &mut backoff).await?,
        }
    }
}

/// Our key went while we waited: with the session's lease (revoked or expired), or deleted
/// on its own.
async fn own_key_gone(session: &Session, name: &str) -> LockError {
    if let Some(reason) = session.ended_watch.reason() {
        return session.lost_error(reason);
    }
    match why_deleted(session).await {
        LossReason::Deleted => LockError::LockLost {
            name: name.to_owned(),
            reason: LossReason::Deleted,
        },
        reason => session.lost_error(session.ended_watch.reason().unwrap_or(reason)),
    }
}

/// Who is ahead of us in the queue.
#[derive(Debug, Clone)]
enum Ahead {
    /// Nobody: our own key's create revision (if it still exists), read in the same
    /// transaction at store revision `header`.
    Nobody { own: Option<i64>, header: i64 },
    /// At most [`TRACK`] keys, all of them (newest first), and our own key's create revision
    /// as in `Nobody`.
    Near {
        older: Vec<QueueKey>,
        own: Option<i64>,
    },
    /// More: the key [`TRACK`] + 1 places ahead of ours, whose delete brings us near, and the
    /// [`TRACK`] keys between it and ours.
    Far { far: QueueKey, near: Vec<QueueKey> },
}

/// Sorts the direct children older than our key, newest first, into an [`Ahead`].
#[derive(Default)]
struct AheadSorter {
    near: Vec<QueueKey>,
}

impl AheadSorter {
    /// Takes the next older key; `Some` once it is the one [`TRACK`] + 1 places ahead.
    fn push(&mut self, kv: &etcd_client::KeyValue) -> Option<Ahead> {
        let key = QueueKey {
            key: kv.key().to_vec(),
            revision: kv.create_revision(),
        };
        if self.near.len() < TRACK {
            self.near.push(key);
            return None;
        }
        Some(Ahead::Far {
            far: key,
            near: std::mem::take(&mut self.near),
        })
    }

    /// Every older key was pushed, unless the page had `more`: then nothing is known.
    fn finish(self, more: bool, own: Option<i64>, header: i64) -> Option<Ahead> {
        if more {
            None
        } else if self.near.is_empty() {
            Some(Ahead::Nobody { own, header })
        } else {
            Some(Ahead::Near {
                older: self.near,
                own,
            })
        }
    }
}

/// Reads who is ahead of the key created at `revision`, and our own key with it: one round
/// trip (unless nested lock names fill the pages) decides between owning the lock, tracking
/// every older key and waiting further back.
async fn ahead(session: &Session, keys: &LockKeys, revision: i64) -> Result<Ahead, LockError> {
    let mut below = revision - 1;
    let mut sorter = AheadSorter::default();
    loop {
        let page = GetOptions::new()
            .with_prefix()
            .with_max_create_revision(below)
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(PAGE)
            .with_keys_only();
        let txn = Txn::new().and_then([
            TxnOp::get(keys.prefix.as_str(), Some(page)),
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
        let direct = page
            .kvs()
            .iter()
            .filter(|kv| keys.is_direct_child(kv.key()));
        if let Some(far) = direct.into_iter().find_map(|kv| sorter.push(kv)) {
            return Ok(far);
        }
        match page.kvs().last() {
            Some(last) if page.more() => below = last.create_revision() - 1,
            _ => {
                let own = own.kvs().first().map(|kv| kv.create_revision());
                let finished = std::mem::take(&mut sorter).finish(false, own, header);
                return finished.ok_or_else(|| malformed("the queue read"));
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
