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
//! A waiter knows how many keys are older than its own (counted up to `limit` + [`TRACK`] + 1)
//! and the newest `limit` + [`TRACK`] of them, from its queue transaction's own read. Near the
//! head (every older key known) it watches the key range holding them and its own key on one
//! watch and holds the moment fewer than `limit` older keys are left, with no read
//! ([`watch::fewer_than`]). Further back it watches the newest `limit` older keys, one watch
//! each, and reads the queue again once one of them goes: it cannot hold before that, and by
//! then the keys further ahead, granted first, have mostly gone, so it is near. A release
//! reaches at most `limit` waiters far back and the [`TRACK`] + 1 near the head.

use std::sync::Arc;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp};
use etcd_client::{KeyValue, TxnOpResponse};
use locksmith_api::{validate_limit, validate_name, LockError, LockGuard};

use crate::attempt::{malformed, own_key_gone, read, Attempt, Sent};
use crate::hub::{next_of, Notice, Subscription};
use crate::retry::Backoff;
use crate::session::Session;
use crate::watch::{self, QueueKey, Tracked, Watched};

/// How many keys beyond `limit` a waiter keeps in view.
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
            // Ours (the put is the newest key) and the keys just before it: the one whose
            // limit must match, and those a waiter watches.
            TxnOp::get(prefix, Some(newest(window(limit) + 2))),
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
    let (predecessor, known) = match put_read(&sent, attempt, limit)? {
        Some((predecessor, ahead)) => (predecessor, Some(ahead)),
        None => (predecessor(session, prefix, attempt, &sent).await?, None),
    };
    check_limit(attempt, predecessor.as_ref(), limit)?;
    if holders.iter().any(|kv| kv.key() == attempt.own.as_bytes()) {
        return Ok(Some((sent.revision, sent.header)));
    }
    if !wait {
        return Ok(None);
    }
    wait_for_permit(session, prefix, attempt, &sent, limit, known).await
}

/// The oldest keys the queue transaction read (at its revision), in either branch.
fn oldest_keys(sent: &Sent) -> Result<Vec<KeyValue>, LockError> {
    match sent.reply.op_responses().get(1) {
        Some(TxnOpResponse::Get(found)) => Ok(found.kvs().to_vec()),
        _ => Err(malformed("the semaphore queue")),
    }
}

/// The newest `count` keys of a queue, newest first.
fn newest(count: usize) -> GetOptions {
    GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_limit(i64::try_from(count).unwrap_or(i64::MAX))
}

/// How many of the newest older keys a waiter keeps in view: `limit` + [`TRACK`].
fn window(limit: u32) -> usize {
    limit as usize + TRACK
}

/// From the put's own read of the newest keys (ours first: the put is the newest): the key
/// just before ours, and what is ahead of us. `None` when a retry found our key in place (the
/// put's read never reached us).
fn put_read(
    sent: &Sent,
    attempt: &Attempt,
    limit: u32,
) -> Result<Option<(Option<KeyValue>, Ahead)>, LockError> {
    if !sent.put_now {
        return Ok(None);
    }
    let Some(TxnOpResponse::Get(found)) = sent.reply.op_responses().get(2).cloned() else {
        return Err(malformed("the semaphore queue"));
    };
    let older: Vec<&KeyValue> = found
        .kvs()
        .iter()
        .filter(|kv| kv.key() != attempt.own.as_bytes() && kv.create_revision() < sent.revision)
        .collect();
    let predecessor = older.first().map(|kv| (*kv).clone());
    let ahead = Ahead::from_newest(older.into_iter(), limit, Some(sent.revision), sent.header);
    Ok(Some((predecessor, ahead)))
}

/// The key just before ours, which must carry our limit as the oldest must. Checking the
/// oldest alone let keys of two limits share a queue: a key whose limit was never compared
/// (its reply was lost, and the oldest had gone by its retry) becomes the oldest, a caller with
/// its limit is accepted behind waiters of the old limit and holds beside them. With both
/// checks every accepted key carries the limit of the key before it, so a queue's accepted
/// keys share one limit; a refused key ahead only makes later callers fail until it is gone.
/// Read here when the put's own read is not ours (after a lost reply).
async fn predecessor(
    session: &Session,
    prefix: &str,
    attempt: &Attempt,
    sent: &Sent,
) -> Result<Option<KeyValue>, LockError> {
    let older = newest(2).with_max_create_revision(sent.revision - 1);
    let reply = read(
        session,
        Txn::new().and_then([TxnOp::get(prefix, Some(older))]),
    )
    .await?;
    let found = match reply.op_responses().into_iter().next() {
        Some(TxnOpResponse::Get(found)) => found.kvs().to_vec(),
        _ => return Err(malformed("the semaphore queue")),
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

/// Waiters near the head track at most this many older keys on one watch (whose read-back
/// must stay within etcd's 128 operations per transaction); with a larger limit they wait as
/// the waiters further back do.
const NEAR: usize = 64;

/// What one read of the queue ahead of a waiter found.
struct Ahead {
    /// How many keys are older than ours, counted up to the [`window`] + 1 (beyond that the
    /// waiter is far back, and the exact number does not matter).
    older: usize,
    /// The newest [`window`] of them.
    newest: Vec<QueueKey>,
    /// Our key's create revision, if it is there.
    own: Option<i64>,
    /// The store revision of the read.
    header: i64,
}

impl Ahead {
    /// From the keys older than ours, newest first (at most [`window`] + 1 of them).
    fn from_newest<'a>(
        older: impl Iterator<Item = &'a KeyValue>,
        limit: u32,
        own: Option<i64>,
        header: i64,
    ) -> Ahead {
        let mut newest: Vec<QueueKey> = older
            .map(|kv| QueueKey {
                key: kv.key().to_vec(),
                revision: kv.create_revision(),
            })
            .collect();
        let older = newest.len();
        newest.truncate(window(limit));
        Ahead {
            older,
            newest,
            own,
            header,
        }
    }

    /// True when `newest` holds every older key, few enough for one watch.
    fn knows_all(&self) -> bool {
        self.older == self.newest.len() && self.older <= NEAR
    }
}

/// Reads the keys older than the one created at `revision`, newest first (up to the
/// [`window`] + 1 of them), and our own key. etcd applies `max_create_revision` after its
/// count, so a count-only read would count younger keys too: the keys themselves are read.
async fn ahead(
    session: &Session,
    prefix: &str,
    own: &QueueKey,
    limit: u32,
) -> Result<Ahead, LockError> {
    let older = newest(window(limit) + 1)
        .with_max_create_revision(own.revision - 1)
        .with_keys_only();
    let txn = Txn::new().and_then([
        TxnOp::get(prefix, Some(older)),
        TxnOp::get(own.key.as_slice(), Some(GetOptions::new().with_keys_only())),
    ]);
    let reply = read(session, txn).await?;
    let header = reply.header().map_or(0, |h| h.revision());
    match reply.op_responses().as_slice() {
        [TxnOpResponse::Get(newest), TxnOpResponse::Get(mine)] => Ok(Ahead::from_newest(
            newest.kvs().iter(),
            limit,
            mine.kvs().first().map(|kv| kv.create_revision()),
            header,
        )),
        _ => Err(malformed("the semaphore queue read")),
    }
}

/// Waits until fewer than `limit` keys older than ours are left, starting from `known` (the
/// put's own read) if given.
async fn wait_for_permit(
    session: &Session,
    prefix: &str,
    attempt: &Attempt,
    sent: &Sent,
    limit: u32,
    mut known: Option<Ahead>,
) -> Result<Option<(i64, i64)>, LockError> {
    let own = QueueKey {
        key: attempt.own.clone().into_bytes(),
        revision: sent.revision,
    };
    let prefixes = [prefix.as_bytes()];
    let mut backoff = Backoff::default();
    loop {
        let now = match known.take() {
            Some(known) => known,
            None => ahead(session, prefix, &own, limit).await?,
        };
        if now.own != Some(sent.revision) {
            return Err(own_key_gone(session, &attempt.name).await);
        }
        if now.older < limit as usize {
            return Ok(Some((sent.revision, now.header)));
        }
        let waited = if now.knows_all() {
            let near = watch::fewer_than(session, &prefixes, &own, &now.newest, limit as usize);
            match near.await {
                Ok(Tracked::Owner { at }) => return Ok(Some((sent.revision, at))),
                Ok(Tracked::OwnGone) => return Err(own_key_gone(session, &attempt.name).await),
                // Older keys than the ones we know, or a watch that could not go on.
                Ok(Tracked::Incomplete | Tracked::Reread) => Ok(Watched::Reread),
                Err(err) => Err(err),
            }
        } else {
            match far_back(session, prefix, &own, limit, &now.newest).await? {
                Far::Read(read) => {
                    known = Some(read);
                    Ok(Watched::Deleted)
                }
                Far::Moved => Ok(Watched::Deleted),
                Far::Reread => Ok(Watched::Reread),
            }
        };
        match waited {
            Ok(Watched::Deleted) => backoff.reset(),
            Ok(Watched::Reread) => backoff.wait(session).await?,
            Err(err) => watch::failed(session, err, &mut backoff).await?,
        }
    }
}

/// How a wait far back in the queue ended.
enum Far {
    /// The read made once the watches existed, when the queue had moved before them: go on
    /// from it.
    Read(Ahead),
    /// One of the watched keys went: read again.
    Moved,
    /// A watch could not be set up or went on: read again after a pause.
    Reread,
}

/// The wait of a waiter behind more than the [`window`]: watches the newest `limit` older keys
/// of `newest` (ours cannot hold before one of them goes: `limit` - 1 older keys at most may be
/// left then), reads the queue once they exist, and waits for the first of them to go. Our own
/// key is not watched: a session that ends fails the wait anyway, and a key deleted by hand is
/// found at the next read.
async fn far_back(
    session: &Session,
    prefix: &str,
    own: &QueueKey,
    limit: u32,
    newest: &[QueueKey],
) -> Result<Far, LockError> {
    let watched = newest.get(..limit as usize).unwrap_or(newest);
    let mut subscriptions: Vec<Subscription> = watched
        .iter()
        .map(|key| session.watches.watch(&key.key, 0))
        .collect();
    for subscription in subscriptions.iter_mut() {
        if subscription.next().await != Notice::Created {
            return Ok(Far::Reread);
        }
    }
    // Whatever happened before the watches existed is in this read, everything after in
    // their events.
    let now = ahead(session, prefix, own, limit).await?;
    let stands = watched.iter().all(|key| now.newest.contains(key));
    if now.own != Some(own.revision) || now.knows_all() || !stands {
        return Ok(Far::Read(now));
    }
    loop {
        match next_of(&mut subscriptions).await {
            (_, Notice::Created) => {}
            (_, Notice::Deleted) => return Ok(Far::Moved),
            _ => return Ok(Far::Reread),
        }
    }
}
