//! Counting semaphores. Go's `concurrency` package has none, so the layout is locksmith's own:
//! a permit (held or awaited) is the key `{namespace}\u{1f}semaphore/{NAME}/{lease id in
//! hex}-{n in hex}` on the session lease, its value the limit in decimal, a space and a token
//! of the attempt; `NAME` has `%` written
//! as `%25` and `/` as `%2F`, so that the keys of two names never nest. No lock, election or RW
//! key can start with `{namespace}\u{1f}`: names have no control characters.
//!
//! The permits of a name are its keys in create-revision order; a key holds one once fewer
//! than `limit` older keys are left. The name's limit is the oldest key's: an acquire with
//! another one withdraws its key and fails. An uncontended acquire is one transaction (put,
//! then read the oldest `limit` keys with it), a release one guarded delete.
//!
//! A waiter reads how many keys are older than its own and the newest [`TRACK`] + `limit` of
//! them, and watches each of those (and its own key) on the session's watch stream. When every
//! older key is among them it counts their delete events and holds as soon as fewer than
//! `limit` are left, with no read; further back it reads again at the first delete among them.
//! Either way each delete reaches at most `limit` + [`TRACK`] waiters, however long the queue.

use std::sync::Arc;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp};
use etcd_client::{KeyValue, TxnOpResponse};
use locksmith_api::{validate_limit, validate_name, LockError, LockGuard};

use crate::attempt::{malformed, own_key_gone, read, Attempt, Sent};
use crate::hub::{next_of, Notice, Subscription};
use crate::retry::Backoff;
use crate::session::Session;

/// How many keys beyond `limit` a waiter tracks.
const TRACK: usize = 2;

/// `{namespace}\u{1f}semaphore/{escaped name}/`.
fn prefix(session: &Session, name: &str) -> String {
    let escaped = name.replace('%', "%25").replace('/', "%2F");
    format!("{}\u{1f}semaphore/{escaped}/", session.namespace)
}

/// Waits for one of `limit` permits of `name`; see [`crate::EtcdLock`].
pub(crate) async fn acquire(
    session: &Arc<Session>,
    name: &str,
    limit: u32,
) -> Result<LockGuard, LockError> {
    validate_name(name)?;
    validate_limit(name, limit)?;
    session.check_alive()?;
    let prefix = prefix(session, name);
    let attempt = Attempt::new(session, name, &prefix, Some(&limit.to_string()))?;
    let acquired = tokio::select! {
        biased;
        err = session.ended() => Err(err),
        acquired = enqueue_and_wait(session, &prefix, &attempt, limit, true) => acquired,
    };
    match acquired {
        Ok(Some((revision, header))) => {
            Ok(attempt.pending.into_guard(session, name, revision, header))
        }
        Ok(None) => Err(malformed("the semaphore queue")),
        Err(err) => Err(withdrawn(attempt, err).await),
    }
}

/// Takes a permit of `name` if one is free now; see [`crate::EtcdLock`].
pub(crate) async fn try_acquire(
    session: &Arc<Session>,
    name: &str,
    limit: u32,
) -> Result<Option<LockGuard>, LockError> {
    validate_name(name)?;
    validate_limit(name, limit)?;
    session.check_alive()?;
    let prefix = prefix(session, name);
    let attempt = Attempt::new(session, name, &prefix, Some(&limit.to_string()))?;
    match enqueue_and_wait(session, &prefix, &attempt, limit, false).await {
        Err(err) => Err(withdrawn(attempt, err).await),
        Ok(Some((revision, header))) => Ok(Some(
            attempt.pending.into_guard(session, name, revision, header),
        )),
        Ok(None) => {
            // Withdraw before answering, so a refused try leaves nothing behind; the
            // withdrawal goes on if this future is dropped.
            attempt.pending.withdraw().await?;
            Ok(None)
        }
    }
}

/// `err`, once a refused attempt's key is gone: a `LimitMismatch` queues nothing, and its
/// key, left standing, could become the oldest and so set the name's limit for the callers
/// after it. Other errors leave the withdrawal to the background, as a dropped call does.
async fn withdrawn(attempt: Attempt, err: LockError) -> LockError {
    if matches!(err, LockError::LimitMismatch { .. }) {
        // The withdrawal reports no error of its own; it goes on if this future is dropped.
        let _ = attempt.pending.withdraw().await;
    }
    err
}

/// Queues our key; with `wait`, waits until it holds a permit, else answers `None` at once if
/// it does not. Returns the key's create revision and the store revision it was found to hold.
async fn enqueue_and_wait(
    session: &Session,
    prefix: &str,
    attempt: &Attempt,
    limit: u32,
    wait: bool,
) -> Result<Option<(i64, i64)>, LockError> {
    let oldest = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(i64::from(limit));
    let txn = Txn::new()
        .when([Compare::create_revision(
            attempt.own.as_str(),
            CompareOp::Equal,
            0,
        )])
        .and_then([
            TxnOp::put(
                attempt.own.as_str(),
                attempt.pending.value.clone(),
                Some(PutOptions::new().with_lease(session.lease_id)),
            ),
            TxnOp::get(prefix, Some(oldest.clone())),
            // Ours and the key just before it (the put is the newest key).
            TxnOp::get(prefix, Some(newest_two())),
        ])
        // A retry after a lost reply finds our key: the limit is checked all the same (the
        // put's own read never reached us), against the oldest keys read with it.
        .or_else([
            TxnOp::get(attempt.own.as_str(), None),
            TxnOp::get(prefix, Some(oldest)),
        ]);
    let Some(sent) = attempt.send(session, txn).await? else {
        return Err(own_key_gone(session, &attempt.name).await);
    };
    // Either branch read the oldest keys in the same transaction that put or found ours.
    let holders = oldest_keys(&sent)?;
    check_limit(attempt, holders.first(), limit)?;
    check_limit(
        attempt,
        predecessor(session, prefix, attempt, &sent).await?.as_ref(),
        limit,
    )?;
    if holders.iter().any(|kv| kv.key() == attempt.own.as_bytes()) {
        return Ok(Some((sent.revision, sent.header)));
    }
    if !wait {
        return Ok(None);
    }
    wait_for_permit(session, prefix, attempt, &sent, limit, wait).await
}

/// The oldest keys the queue transaction read (at its revision), in either branch.
fn oldest_keys(sent: &Sent) -> Result<Vec<KeyValue>, LockError> {
    match sent.reply.op_responses().get(1) {
        Some(TxnOpResponse::Get(found)) => Ok(found.kvs().to_vec()),
        _ => Err(malformed("the semaphore queue")),
    }
}

/// The newest two keys of a queue.
fn newest_two() -> GetOptions {
    GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_limit(2)
}

/// The key just before ours, which must carry our limit as the oldest must. Checking the
/// oldest alone let keys of two limits share a queue: a key whose limit was never compared
/// (its reply was lost, and the oldest had gone by its retry) becomes the oldest, a caller with
/// its limit is accepted behind waiters of the old limit and holds beside them. With both
/// checks every accepted key carries the limit of the key before it, so a queue's accepted
/// keys share one limit; a refused key ahead only makes later callers fail until it is gone.
/// From the put's own read, or (after a lost reply) one more read.
async fn predecessor(
    session: &Session,
    prefix: &str,
    attempt: &Attempt,
    sent: &Sent,
) -> Result<Option<KeyValue>, LockError> {
    let found = if sent.put_now {
        match sent.reply.op_responses().get(2) {
            Some(TxnOpResponse::Get(found)) => found.kvs().to_vec(),
            _ => return Err(malformed("the semaphore queue")),
        }
    } else {
        let older = newest_two().with_max_create_revision(sent.revision - 1);
        let reply = read(
            session,
            Txn::new().and_then([TxnOp::get(prefix, Some(older))]),
        )
        .await?;
        match reply.op_responses().into_iter().next() {
            Some(TxnOpResponse::Get(found)) => found.kvs().to_vec(),
            _ => return Err(malformed("the semaphore queue")),
        }
    };
    Ok(found
        .into_iter()
        .find(|kv| kv.key() != attempt.own.as_bytes() && kv.create_revision() < sent.revision))
}

/// The name's limit is its oldest key's: another limit withdraws this attempt and fails.
fn check_limit(attempt: &Attempt, oldest: Option<&KeyValue>, limit: u32) -> Result<(), LockError> {
    let Some(oldest) = oldest else {
        return Ok(());
    };
    if oldest.key() == attempt.own.as_bytes() {
        return Ok(());
    }
    let in_use = std::str::from_utf8(oldest.value())
        .ok()
        .and_then(|value| value.split(' ').next())
        .and_then(|limit| limit.parse::<u32>().ok());
    match in_use {
        Some(in_use) if in_use != limit => Err(LockError::LimitMismatch {
            name: attempt.name.clone(),
            limit,
            in_use,
        }),
        _ => Ok(()),
    }
}

/// What one read of the queue behind a waiter found.
struct Ahead {
    /// How many keys are older than ours, counted up to `limit` + [`TRACK`] + 1 (beyond that
    /// the waiter is far back, and the exact number does not matter).
    older: usize,
    /// The newest `limit` + [`TRACK`] of them (keys and create revisions).
    newest: Vec<(Vec<u8>, i64)>,
    /// Our key's create revision, if it is there.
    own: Option<i64>,
    /// The store revision of the read.
    header: i64,
}

/// Reads the keys older than the one created at `revision`, newest first (up to `limit` +
/// [`TRACK`] + 1 of them), and our own key. etcd applies `max_create_revision` after its
/// count, so a count-only read would count younger keys too: the keys themselves are read.
async fn ahead(
    session: &Session,
    prefix: &str,
    own: &str,
    revision: i64,
    limit: u32,
) -> Result<Ahead, LockError> {
    let tracked = limit as usize + TRACK;
    let older = GetOptions::new()
        .with_prefix()
        .with_max_create_revision(revision - 1)
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_limit(tracked as i64 + 1)
        .with_keys_only();
    let txn = Txn::new().and_then([
        TxnOp::get(prefix, Some(older)),
        TxnOp::get(own, Some(GetOptions::new().with_keys_only())),
    ]);
    let reply = read(session, txn).await?;
    let header = reply.header().map_or(0, |h| h.revision());
    let (newest, mine) = match reply.op_responses().as_slice() {
        [TxnOpResponse::Get(newest), TxnOpResponse::Get(mine)] => (newest.clone(), mine.clone()),
        _ => return Err(malformed("the semaphore queue read")),
    };
    let mut keys: Vec<(Vec<u8>, i64)> = newest
        .kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.create_revision()))
        .collect();
    let older = keys.len();
    keys.truncate(tracked);
    Ok(Ahead {
        older,
        newest: keys,
        own: mine.kvs().first().map(|kv| kv.create_revision()),
        header,
    })
}

/// Waits until fewer than `limit` keys older than ours are left.
async fn wait_for_permit(
    session: &Session,
    prefix: &str,
    attempt: &Attempt,
    sent: &Sent,
    limit: u32,
    wait: bool,
) -> Result<Option<(i64, i64)>, LockError> {
    let limit_count = limit as usize;
    let mut backoff = Backoff::default();
    loop {
        let read_now = ahead(session, prefix, &attempt.own, sent.revision, limit).await?;
        if read_now.own != Some(sent.revision) {
            return Err(own_key_gone(session, &attempt.name).await);
        }
        if read_now.older < limit_count {
            return Ok(Some((sent.revision, read_now.header)));
        }
        if !wait {
            return Ok(None);
        }
        // Watch the newest older keys and our own, then read again: whatever happened before
        // the watches existed is in that read, everything after in their events.
        let mut watched: Vec<Subscription> = read_now
            .newest
            .iter()
            .map(|(key, _)| session.watches.watch(key, 0))
            .chain([session.watches.watch(attempt.own.as_bytes(), 0)])
            .collect();
        if !all_created(&mut watched).await {
            backoff.wait(session).await?;
            continue;
        }
        let now = ahead(session, prefix, &attempt.own, sent.revision, limit).await?;
        if now.own != Some(sent.revision) {
            return Err(own_key_gone(session, &attempt.name).await);
        }
        if now.older < limit_count {
            return Ok(Some((sent.revision, now.header)));
        }
        let own_index = watched.len() - 1;
        // Of the keys we watch, those still there: their deletes are all we wait for.
        let mut alive: Vec<bool> = read_now
            .newest
            .iter()
            .map(|(key, revision)| now.newest.iter().any(|(k, r)| k == key && r == revision))
            .collect();
        // Every older key is one we watch: count their deletes.
        let watched_alive = alive.iter().filter(|a| **a).count();
        let all_known = now.older == watched_alive;
        if !all_known && watched_alive < limit_count {
            // Most watched keys went before their watches existed, and older keys we do not
            // watch remain: a permit could come free through those alone, and no event of
            // ours would tell. Watch the newest older keys as they are now.
            continue;
        }
        loop {
            let (index, notice) = next_of(&mut watched).await;
            match notice {
                Notice::Created => {}
                Notice::Deleted if index == own_index => {
                    return Err(own_key_gone(session, &attempt.name).await);
                }
                Notice::Deleted if all_known => {
                    if let Some(flag) = alive.get_mut(index) {
                        *flag = false;
                    }
                    if alive.iter().filter(|a| **a).count() < limit_count {
                        // A permit is ours unless our own key went meanwhile, which another
                        // watch may tell later: the read at the top of the loop decides.
                        break;
                    }
                }
                // Further back: one of the keys ahead went; read again.
                Notice::Deleted => break,
                _ => {
                    backoff.wait(session).await?;
                    break;
                }
            }
        }
        backoff.reset();
    }
}

/// Waits until every watch is created; false when one could not be.
async fn all_created(watched: &mut [Subscription]) -> bool {
    for subscription in watched.iter_mut() {
        if subscription.next().await != Notice::Created {
            return false;
        }
    }
    true
}
