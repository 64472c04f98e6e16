//! Reader-writer locks with the keys of Go's `recipe.RWMutex`: a reader is the key
//! `{namespace}{name}/read/{unique}`, a writer `{namespace}{name}/write/{unique}`, each on the
//! session lease and ordered by create revision. A reader holds once no older writer key is
//! left; a writer once no older key of either kind is left. Readers arriving after a waiting
//! writer queue behind it (writer preference), and a session may hold several keys of a name.
//!
//! Every attempt puts a key of its own (unique to the attempt), so a key found on a retry after
//! a lost reply is the attempt's, and the mutex's session ticket per name is not needed: each
//! attempt takes a local ticket on its own key only to reuse the cleanup of [`PendingKey`].
//!
//! A waiter waits like Go's: for the delete of the newest older key that blocks it, then reads
//! again, until none is left. The wait is [`watch::gone`] (a watch from now, synced, then a
//! read), so a handoff costs the delete event plus one read, never etcd's catch-up loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use etcd_client::{
    Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};
use locksmith_api::{validate_name, LockError, LockGuard, LossReason};

use crate::hold::{why_deleted, PendingKey, Stamp};
use crate::retry::{self, Backoff};
use crate::session::{Link, Session};
use crate::watch::{self, is_direct_child, Watched};

/// Keys read per page when looking past nested names for the newest older key.
const PAGE: i64 = 64;

/// Which side of the lock a key takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Read,
    Write,
}

/// The keys of one attempt on one RW name.
struct RwKeys {
    name: String,
    /// `{namespace}{name}/read/`.
    readers: String,
    /// `{namespace}{name}/write/`.
    writers: String,
    /// This attempt's key.
    own: String,
    side: Side,
}

impl RwKeys {
    fn new(session: &Session, name: &str, side: Side) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let base = format!("{}{}/", session.namespace, name);
        let readers = format!("{base}read/");
        let writers = format!("{base}write/");
        let unique = format!(
            "{:x}-{:x}",
            session.lease_id,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let own = match side {
            Side::Read => format!("{readers}{unique}"),
            Side::Write => format!("{writers}{unique}"),
        };
        RwKeys {
            name: name.to_owned(),
            readers,
            writers,
            own,
            side,
        }
    }

    /// The prefixes whose older keys block this attempt: writers for a reader, both for a
    /// writer.
    fn blockers(&self) -> Vec<&str> {
        match self.side {
            Side::Read => vec![self.writers.as_str()],
            Side::Write => vec![self.readers.as_str(), self.writers.as_str()],
        }
    }
}

/// The end of the key range of `prefix` (which ends with `/`).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// Waits for `side` of `name` in FIFO order with writer preference; see [`crate::EtcdLock`].
pub(crate) async fn acquire(
    session: &Arc<Session>,
    name: &str,
    side: Side,
) -> Result<LockGuard, LockError> {
    validate_name(name)?;
    session.check_alive()?;
    let keys = RwKeys::new(session, name, side);
    let pending = pending_key(session, &keys)?;
    let acquired = tokio::select! {
        biased;
        err = session.ended() => Err(err),
        acquired = enqueue_and_wait(session, &keys, &pending) => acquired,
    }?;
    Ok(pending.into_guard(session, name, acquired.revision, acquired.header))
}

/// Takes `side` of `name` only if nothing blocks it now: one transaction that puts the key
/// only if no key of the blocking kinds exists (a reader: no writer holds or waits; a writer:
/// nobody holds or waits), so a refusal leaves nothing to clean up.
pub(crate) async fn try_acquire(
    session: &Arc<Session>,
    name: &str,
    side: Side,
) -> Result<Option<LockGuard>, LockError> {
    validate_name(name)?;
    session.check_alive()?;
    let keys = RwKeys::new(session, name, side);
    let pending = pending_key(session, &keys)?;
    // Our key absent (a retry after a lost reply finds it, and takes it: nothing blocked it
    // when it was put) and no blocking key anywhere in the blocking ranges.
    let own_absent = Compare::create_revision(keys.own.as_str(), CompareOp::Equal, 0);
    let none_of = keys.blockers().into_iter().map(|prefix| {
        Compare::create_revision(prefix, CompareOp::Equal, 0).with_range(prefix_end(prefix))
    });
    let txn = Txn::new()
        .when(
            std::iter::once(own_absent)
                .chain(none_of)
                .collect::<Vec<_>>(),
        )
        .and_then([TxnOp::put(
            keys.own.as_str(),
            pending.value.clone(),
            Some(PutOptions::new().with_lease(session.lease_id)),
        )])
        .or_else([TxnOp::get(keys.own.as_str(), None)]);
    match send_queue_txn(session, &keys, &pending, txn).await? {
        Some(queued) => Ok(Some(pending.into_guard(
            session,
            name,
            queued.revision,
            queued.header,
        ))),
        None => {
            // Nothing was put: the withdrawal finds no key.
            pending.withdraw().await?;
            Ok(None)
        }
    }
}

/// A pending key for the attempt, on a local ticket of its own key (never contended: the key
/// is unique), so that its withdrawal and release are the mutex's.
fn pending_key(session: &Session, keys: &RwKeys) -> Result<PendingKey, LockError> {
    let ticket = session
        .local
        .try_acquire(&keys.own, ())
        .ok_or_else(|| LockError::Backend {
            backend: "etcd",
            operation: format!("queue for {:?}", keys.name),
            source: "a key of this attempt is already in use in this session".into(),
        })?;
    Ok(PendingKey::new(session, &keys.own, ticket, Stamp::Nonce))
}

/// Where a queued key stands.
#[derive(Debug, Clone)]
struct Queued {
    /// The key's create revision: its place and its fencing token.
    revision: i64,
    /// The store revision of the answer.
    header: i64,
    /// What the put's own reads found blocking it: `Some(None)` nothing, `Some(Some(key))`
    /// the newest blocking key; `None` when they could not tell (a retry's answer, or pages
    /// full of nested names).
    blocker: Option<Option<(Vec<u8>, i64)>>,
}

/// Puts our key (if `txn` does) in a task of its own that holds the pending key's gate, as the
/// mutex's queue does: a dropped caller's withdrawal then waits for it. `None` when the
/// transaction's compares failed (a `try_` refused).
async fn send_queue_txn(
    session: &Session,
    keys: &RwKeys,
    pending: &PendingKey,
    txn: Txn,
) -> Result<Option<Queued>, LockError> {
    let link = session.link();
    let (sent, gate, abandoned, revision_cell) = (
        Arc::clone(&pending.sent),
        Arc::clone(&pending.gate),
        Arc::clone(&pending.abandoned),
        Arc::clone(&pending.revision),
    );
    let (unsure, local, runtime) = (
        Arc::clone(&session.unsure),
        Arc::clone(&session.local),
        session.runtime.clone(),
    );
    let (own, value) = (keys.own.clone(), pending.value.clone());
    let prefixes: Vec<String> = keys.blockers().into_iter().map(str::to_owned).collect();
    let flight = session.runtime.spawn(async move {
        let _in_flight = gate.lock_owned().await;
        if abandoned.load(Ordering::SeqCst) {
            return Err(LockError::LockLost {
                name: own.clone(),
                reason: LossReason::Unknown,
            });
        }
        let mut calls = 0;
        let reply = retry::retry(&link, "queue for the lock", |mut client| {
            calls += 1;
            sent.store(true, Ordering::SeqCst);
            let txn = txn.clone();
            async move { client.txn(txn).await }
        })
        .await;
        if calls > 1 || (calls == 1 && reply.is_err()) {
            // A put that may still land after this attempt is over: swept later.
            unsure.note(&link, &local, &runtime, &own, &own, &value);
        }
        let reply = reply?;
        let queued = queued(&reply, &own, &value, &prefixes)?;
        if let Some(queued) = &queued {
            revision_cell.store(queued.revision, Ordering::SeqCst);
        }
        Ok(queued)
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

/// Reads our key's revision from a queue reply: the put's (the transaction's revision), or
/// the key found in place by a retry after a lost reply (the key is unique to the attempt, and
/// carries its value).
fn queued(
    reply: &TxnResponse,
    own: &str,
    value: &[u8],
    prefixes: &[String],
) -> Result<Option<Queued>, LockError> {
    let header = reply.header().map_or(0, |h| h.revision());
    if !reply.succeeded() {
        return Ok(match reply.op_responses().first() {
            Some(TxnOpResponse::Get(found)) => found
                .kvs()
                .first()
                .filter(|kv| kv.key() == own.as_bytes() && kv.value() == value)
                .map(|kv| Queued {
                    revision: kv.create_revision(),
                    header,
                    blocker: None,
                }),
            _ => None,
        });
    }
    if header <= 0 {
        return Err(malformed("the queue transaction"));
    }
    Ok(Some(Queued {
        revision: header,
        header,
        blocker: blocker_in(reply, prefixes, own),
    }))
}

/// The newest blocking key among the put's own reads (one per blocking prefix, newest first,
/// taken at the put's revision: every key there is older than ours, or ours).
fn blocker_in(
    reply: &TxnResponse,
    prefixes: &[String],
    own: &str,
) -> Option<Option<(Vec<u8>, i64)>> {
    let mut newest: Option<(Vec<u8>, i64)> = None;
    let gets = reply.op_responses().into_iter().skip(1);
    for (prefix, response) in prefixes.iter().zip(gets) {
        let TxnOpResponse::Get(found) = response else {
            return None;
        };
        let direct = found
            .kvs()
            .iter()
            .filter(|kv| kv.key() != own.as_bytes())
            .find(|kv| is_direct_child(prefix.as_bytes(), kv.key()));
        match direct {
            Some(kv) => keep_newest(&mut newest, kv),
            // A full page of nested names (or our own key alone and more): read further.
            None if found.more() => return None,
            None => {}
        }
    }
    Some(newest)
}

/// Queues our key, then waits until no older key blocks it.
async fn enqueue_and_wait(
    session: &Session,
    keys: &RwKeys,
    pending: &PendingKey,
) -> Result<Queued, LockError> {
    let put = TxnOp::put(
        keys.own.as_str(),
        pending.value.clone(),
        Some(PutOptions::new().with_lease(session.lease_id)),
    );
    // Put unless a retry finds our key already there (its reply was lost): then read it. The
    // put branch also reads the newest keys that may block us, so that an uncontended attempt
    // takes one round trip.
    let newest = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_limit(PAGE)
        .with_keys_only();
    let reads = keys
        .blockers()
        .into_iter()
        .map(|prefix| TxnOp::get(prefix, Some(newest.clone())));
    let txn = Txn::new()
        .when([Compare::create_revision(
            keys.own.as_str(),
            CompareOp::Equal,
            0,
        )])
        .and_then(std::iter::once(put).chain(reads).collect::<Vec<_>>())
        .or_else([TxnOp::get(keys.own.as_str(), None)]);
    let Some(queued) = send_queue_txn(session, keys, pending, txn).await? else {
        return Err(own_key_gone(session, &keys.name).await);
    };
    let mut backoff = Backoff::default();
    let mut known = queued.blocker.clone();
    loop {
        let (blocker, own, header) = match known.take() {
            Some(blocker) => (blocker, Some(queued.revision), queued.header),
            None => newest_blocker(session, keys, queued.revision).await?,
        };
        if own != Some(queued.revision) {
            return Err(own_key_gone(session, &keys.name).await);
        }
        let Some((key, revision)) = blocker else {
            return Ok(Queued {
                revision: queued.revision,
                header,
                blocker: None,
            });
        };
        match watch::gone(session, &key, revision).await {
            Ok(Watched::Deleted) => backoff.reset(),
            Ok(Watched::Reread) => backoff.wait(session).await?,
            Err(err) => match retry::classify(&err) {
                retry::ErrorKind::Transient => backoff.wait(session).await?,
                retry::ErrorKind::LeaseGone => return Err(session.lease_gone()),
                retry::ErrorKind::Permanent => {
                    return Err(crate::error::from_etcd(
                        err,
                        &session.endpoints,
                        "watch the lock queue",
                    ))
                }
            },
        }
    }
}

/// The newest key older than `revision` under the blocking prefixes (direct children only),
/// our own key's create revision, and the store revision they were read at: one round trip,
/// unless pages full of nested names need more.
async fn newest_blocker(
    session: &Session,
    keys: &RwKeys,
    revision: i64,
) -> Result<(Option<(Vec<u8>, i64)>, Option<i64>, i64), LockError> {
    let older = |below: i64| {
        GetOptions::new()
            .with_prefix()
            .with_max_create_revision(below)
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(PAGE)
            .with_keys_only()
    };
    let prefixes = keys.blockers();
    let txn = Txn::new().and_then(
        prefixes
            .iter()
            .map(|prefix| TxnOp::get(*prefix, Some(older(revision - 1))))
            .chain([TxnOp::get(
                keys.own.as_str(),
                Some(GetOptions::new().with_keys_only()),
            )])
            .collect::<Vec<_>>(),
    );
    let reply = read(session, txn).await?;
    let header = reply.header().map_or(0, |h| h.revision());
    let responses = reply.op_responses();
    let own = match responses.get(prefixes.len()) {
        Some(TxnOpResponse::Get(mine)) => mine.kvs().first().map(|kv| kv.create_revision()),
        _ => return Err(malformed("the queue read")),
    };
    let mut newest: Option<(Vec<u8>, i64)> = None;
    for (prefix, response) in prefixes.iter().zip(responses) {
        let TxnOpResponse::Get(mut found) = response else {
            return Err(malformed("the queue read"));
        };
        loop {
            if let Some(kv) = found
                .kvs()
                .iter()
                .find(|kv| is_direct_child(prefix.as_bytes(), kv.key()))
            {
                keep_newest(&mut newest, kv);
                break;
            }
            // A page of nested names only: look further back.
            let below = match found.kvs().last() {
                Some(last) if found.more() => last.create_revision() - 1,
                _ => break,
            };
            let page = read(
                session,
                Txn::new().and_then([TxnOp::get(*prefix, Some(older(below)))]),
            )
            .await?;
            found = match page.op_responses().into_iter().next() {
                Some(TxnOpResponse::Get(found)) => found,
                _ => return Err(malformed("the queue read")),
            };
        }
    }
    Ok((newest, own, header))
}

/// Keeps `kv` in `newest` if it was created later than what is there.
fn keep_newest(newest: &mut Option<(Vec<u8>, i64)>, kv: &etcd_client::KeyValue) {
    if newest
        .as_ref()
        .is_none_or(|(_, revision)| kv.create_revision() > *revision)
    {
        *newest = Some((kv.key().to_vec(), kv.create_revision()));
    }
}

async fn read(session: &Session, txn: Txn) -> Result<TxnResponse, LockError> {
    retry::retry(session, "read the lock queue", |mut client| {
        let txn = txn.clone();
        async move { client.txn(txn).await }
    })
    .await
}

/// Our key went while we waited: with the session's lease, or deleted on its own.
async fn own_key_gone(link: &Link, name: &str) -> LockError {
    if let Some(reason) = link.ended_watch.reason() {
        return link.lost_error(reason);
    }
    match why_deleted(link).await {
        LossReason::Deleted => LockError::LockLost {
            name: name.to_owned(),
            reason: LossReason::Deleted,
        },
        reason => link.lost_error(link.ended_watch.reason().unwrap_or(reason)),
    }
}

fn malformed(what: &str) -> LockError {
    LockError::Backend {
        backend: "etcd",
        operation: what.to_owned(),
        source: "etcd answered with an unexpected reply".into(),
    }
}
