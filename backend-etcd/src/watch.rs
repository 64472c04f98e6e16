//! Waiting for a key to be deleted.

use etcd_client::{GetOptions, GetResponse, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse};

use locksmith_api::LockError;

use crate::error::from_etcd;
use crate::hub::Notice;
use crate::retry::{self, Backoff, ErrorKind};
use crate::session::Link;

/// How a wait for a delete ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Watched {
    /// The key was deleted.
    Deleted,
    /// The watch could not go on (compaction, a broken stream, a cancelled watch): read the
    /// state again and decide.
    Reread,
}

/// Waits until the queue key `key`, created at `create_revision`, is gone: the wait of a
/// waiter far back in the queue on the key it watches, which should end as soon as etcd can
/// tell.
///
/// The watch starts at the store's current revision, never at one read earlier: by the time
/// the watch is created other clients' writes may have moved the store past any revision read
/// before, and a watch starting behind the store is "unsynced", served only by etcd's 100 ms
/// catch-up loop. Even "from now" can start behind when a write commits while etcd creates
/// the watch; the hub then keeps a twin watch created right after it (see `hub.rs`). Once the
/// watch exists, one read covers everything before it: a key already gone (or recreated under
/// a newer revision) ends the wait at once.
///
/// # Errors
/// The etcd error of that read.
pub(crate) async fn gone(
    link: &Link,
    key: &[u8],
    create_revision: i64,
) -> Result<Watched, etcd_client::Error> {
    let mut watch = link.watches.watch(key, 0);
    if watch.next().await != Notice::Created {
        return Ok(Watched::Reread);
    }
    let mut client = link.client.clone();
    // A member that stops answering must not hold the waiter longer than one attempt: the
    // caller reads again (through a member that answers) after a `Reread`.
    let Some(now) = crate::retry::attempt(link, client.get(key, None)).await else {
        return Ok(Watched::Reread);
    };
    let now = now?;
    if now
        .kvs()
        .first()
        .is_none_or(|kv| kv.create_revision() != create_revision)
    {
        return Ok(Watched::Deleted);
    }
    Ok(outcome(watch.next().await))
}

/// A wait's read failed with `err`: backs off when another read may help, else fails.
///
/// # Errors
/// `SessionLost` once etcd no longer knows the lease; the etcd error when retrying cannot help.
pub(crate) async fn failed(
    link: &Link,
    err: etcd_client::Error,
    backoff: &mut Backoff,
) -> Result<(), LockError> {
    match retry::classify(&err) {
        ErrorKind::Transient => backoff.wait(link).await,
        ErrorKind::LeaseGone => Err(link.lease_gone()),
        ErrorKind::Permanent => Err(from_etcd(err, &link.endpoints, "watch the lock queue")),
    }
}

/// Waits for a delete of `key` at or after `from_revision`: the loss watch of a hold.
///
/// Starting from a known revision means no delete can be missed without an extra read; the
/// delivery may take etcd's 100 ms catch-up loop when the store has moved on, which is fine
/// for learning of a loss (and saves a round trip on every acquisition).
pub(crate) async fn deleted_since(link: &Link, key: &[u8], from_revision: i64) -> Watched {
    let mut watch = link.watches.watch(key, from_revision);
    match watch.next().await {
        Notice::Created => outcome(watch.next().await),
        other => outcome(other),
    }
}

fn outcome(notice: Notice) -> Watched {
    match notice {
        Notice::Deleted => Watched::Deleted,
        Notice::Created | Notice::Deletes(_) | Notice::Changes(_) | Notice::Reread => {
            Watched::Reread
        }
    }
}

/// Keys read per page when looking for keys older than the ones a waiter knows.
const PAGE: i64 = 16;

/// A key of a lock queue, as etcd stores it, with its create revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueKey {
    pub(crate) key: Vec<u8>,
    pub(crate) revision: i64,
}

/// How a wait for every older key of a queue ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Tracked {
    /// Every older key was gone (for [`fewer_than`]: all but fewer than its limit) while
    /// ours still stood, at store revision `at`.
    Owner { at: i64 },
    /// Our own key is gone.
    OwnGone,
    /// There are older keys than the ones we know (some withdrew out of turn): read the
    /// queue again.
    Incomplete,
    /// The watch could not go on: read the queue again and decide.
    Reread,
}

/// Whether no key of the queue under `prefix` is left older than the keys a waiter knows,
/// given `first`, the newest page of the keys older than those. Keys of nested lock names can
/// fill whole pages (they share the prefix); re-reading the queue would find the same keys and
/// loop, so read on past them, page by page. The later pages are read at a newer revision,
/// which is safe: no key older than a known one can be created, only go. `None` when a read
/// took too long.
///
/// # Errors
/// The etcd error of a read.
async fn nothing_older_left(
    link: &Link,
    prefix: &[u8],
    first: &GetResponse,
) -> Result<Option<bool>, etcd_client::Error> {
    let mut client = link.client.clone();
    let mut page = first.clone();
    loop {
        if page
            .kvs()
            .iter()
            .any(|kv| is_direct_child(prefix, kv.key()))
        {
            return Ok(Some(false));
        }
        let below = match page.kvs().last() {
            // No key is created at revision 1 (the empty store), and a maximum of 0 is none.
            Some(last) if page.more() && last.create_revision() > 1 => last.create_revision() - 1,
            _ => return Ok(Some(true)),
        };
        let options = GetOptions::new()
            .with_prefix()
            .with_max_create_revision(below)
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(PAGE)
            .with_keys_only();
        let Some(next) = crate::retry::attempt(link, client.get(prefix, Some(options))).await
        else {
            return Ok(None);
        };
        page = next?;
    }
}

/// True for `{prefix}{x}` where `x` has no `/`: a key of the lock whose keys live under
/// `prefix`, not of a lock nested under it (`a/b`'s keys are under `a/` too).
pub(crate) fn is_direct_child(prefix: &[u8], key: &[u8]) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|rest| !rest.is_empty() && !rest.contains(&b'/'))
}

/// Waits until every key of `older` (the keys of the queue under `prefixes` older than `own`
/// that `own` waits for, as far as an earlier read showed them) is gone, and tells whether
/// `own` still stood at that moment: a handoff that costs the delete event and nothing more.
/// A mutex's queue is one prefix; a writer of a reader-writer lock waits for the keys under
/// two (readers and writers).
///
/// `older` must hold every key under `prefixes` created between its oldest and `own`; the
/// read made here checks that nothing older than its oldest is left there (a key further
/// ahead that withdrew out of turn leaves keys before it), else the answer is
/// [`Tracked::Incomplete`].
///
/// One watch covers `own` and every older key (the key range between them, deletes only), so
/// its events come in revision order: the delete of the last older key arrives after any
/// earlier delete of our own key. A read made once the watch exists covers everything before
/// it; the events after that read tell the rest. The range may hold other keys (younger
/// waiters, nested lock names): their deletes are ignored.
///
/// The hub may keep a twin of the watch (see `hub.rs`), and the two deliver interleaved.
/// Both exist before the read, so each alone is complete after it and in order: whichever
/// delivers the delete that removes an older key has delivered an earlier delete of our own
/// key before it. Taking keys off `left` from either watch is therefore safe.
///
/// # Errors
/// The etcd error of that read.
pub(crate) async fn all_gone(
    link: &Link,
    prefixes: &[&[u8]],
    own: &QueueKey,
    older: &[QueueKey],
) -> Result<Tracked, etcd_client::Error> {
    fewer_than(link, prefixes, own, older, 1).await
}

/// As [`all_gone`], but ends as soon as fewer than `limit` keys of `older` are left: the wait
/// of a semaphore's waiter near the head of its queue (`limit` 1 is [`all_gone`]).
///
/// # Errors
/// The etcd error of a read.
pub(crate) async fn fewer_than(
    link: &Link,
    prefixes: &[&[u8]],
    own: &QueueKey,
    older: &[QueueKey],
    limit: usize,
) -> Result<Tracked, etcd_client::Error> {
    let keys = || std::iter::once(own).chain(older).map(|k| k.key.as_slice());
    let (Some(start), Some(last)) = (keys().min(), keys().max()) else {
        return Ok(Tracked::Reread);
    };
    let end = [last, &[0]].concat();
    let mut watch = link.watches.watch_deletes(start, &end);
    if watch.next().await != Notice::Created {
        return Ok(Tracked::Reread);
    }
    let oldest = older
        .iter()
        .chain([own])
        .map(|k| k.revision)
        .min()
        .unwrap_or(0);
    let before = GetOptions::new()
        .with_prefix()
        .with_max_create_revision(oldest - 1)
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_limit(PAGE)
        .with_keys_only();
    let read = Txn::new().and_then(
        keys()
            .map(|key| TxnOp::get(key, Some(GetOptions::new().with_keys_only())))
            .chain(
                prefixes
                    .iter()
                    .map(|prefix| TxnOp::get(*prefix, Some(before.clone()))),
            )
            .collect::<Vec<_>>(),
    );
    let mut client = link.client.clone();
    let Some(reply) = crate::retry::attempt(link, client.txn(read)).await else {
        return Ok(Tracked::Reread);
    };
    let reply = reply?;
    let read_at = reply.header().map_or(0, |h| h.revision());
    let found = reply.op_responses();
    // Still there, and the very key we know (not one created again after it).
    let stands = |index: usize, wanted: &QueueKey| match found.get(index) {
        Some(TxnOpResponse::Get(got)) => got
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == wanted.revision),
        _ => false,
    };
    if !stands(0, own) {
        return Ok(Tracked::OwnGone);
    }
    let befores = found.get(older.len() + 1..).unwrap_or_default();
    if befores.len() != prefixes.len() {
        return Ok(Tracked::Incomplete);
    }
    for (prefix, before) in prefixes.iter().zip(befores) {
        let TxnOpResponse::Get(before) = before else {
            return Ok(Tracked::Incomplete);
        };
        match nothing_older_left(link, prefix, before).await? {
            Some(true) => {}
            Some(false) => return Ok(Tracked::Incomplete),
            None => return Ok(Tracked::Reread),
        }
    }
    let mut left: Vec<&[u8]> = older
        .iter()
        .enumerate()
        .filter(|(index, key)| stands(index + 1, key))
        .map(|(_, key)| key.key.as_slice())
        .collect();
    if left.len() < limit {
        return Ok(Tracked::Owner { at: read_at });
    }
    loop {
        let Notice::Deletes(deletes) = watch.next().await else {
            return Ok(Tracked::Reread);
        };
        let deletes: Vec<_> = deletes.iter().filter(|d| d.revision > read_at).collect();
        // One revision at a time, whole: a transaction may delete an older key and ours at
        // once, and then we never owned the lock.
        for at in deletes.chunk_by(|a, b| a.revision == b.revision) {
            if at.iter().any(|deletion| deletion.key == own.key) {
                return Ok(Tracked::OwnGone);
            }
            left.retain(|key| at.iter().all(|deletion| deletion.key != *key));
            if let (true, Some(deletion)) = (left.len() < limit, at.first()) {
                return Ok(Tracked::Owner {
                    at: deletion.revision,
                });
            }
        }
    }
}
