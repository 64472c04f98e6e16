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
//! A waiter knows every older key that blocks it from its queue transaction's own reads (up to
//! [`TRACK`] of them) and watches their deletes and its own key's on one watch, so it holds the
//! moment the last one's delete arrives, with no read ([`watch::all_gone`]); readers ahead may
//! release in any order. Behind more than [`TRACK`] it waits for the newest of them to go
//! ([`watch::gone`]), then reads again. Go's waiter instead waits for the newest older key from
//! a revision etcd has passed, then reads again: a read after every delete, and etcd's 100 ms
//! catch-up loop on most handoffs.

use std::sync::Arc;

use etcd_client::{
    Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use locksmith_api::{validate_name, LockError, LockGuard};

use crate::attempt::{malformed, own_key_gone, prefix_end, read, Attempt, Sent};
use crate::retry::Backoff;
use crate::session::Session;
use crate::watch::{self, is_direct_child, QueueKey, Tracked, Watched};

/// Keys read per page when looking past nested names for the newest older key.
const PAGE: i64 = 64;

/// Which side of the lock a key takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Read,
    Write,
}

/// The prefixes of one RW name.
struct RwKeys {
    /// `{namespace}{name}/read/`.
    readers: String,
    /// `{namespace}{name}/write/`.
    writers: String,
    side: Side,
}

impl RwKeys {
    fn new(session: &Session, name: &str, side: Side) -> Self {
        let base = format!("{}{}/", session.namespace, name);
        RwKeys {
            readers: format!("{base}read/"),
            writers: format!("{base}write/"),
            side,
        }
    }

    /// Where this side's keys live.
    fn own_prefix(&self) -> &str {
        match self.side {
            Side::Read => &self.readers,
            Side::Write => &self.writers,
        }
    }

    /// The prefixes whose older keys block this side: writers for a reader, both for a writer.
    fn blockers(&self) -> Vec<&str> {
        match self.side {
            Side::Read => vec![self.writers.as_str()],
            Side::Write => vec![self.readers.as_str(), self.writers.as_str()],
        }
    }
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
    let attempt = Attempt::new(session, name, keys.own_prefix(), None)?;
    let acquired = tokio::select! {
        biased;
        err = session.ended() => Err(err),
        acquired = enqueue_and_wait(session, &keys, &attempt) => acquired,
    }?;
    let (revision, header) = acquired;
    Ok(attempt.pending.into_guard(session, name, revision, header))
}

/// Takes `side` of `name` only if nothing blocks it now: one transaction that puts the key
/// only if no key of the blocking kinds exists (a reader: no writer holds or waits; a writer:
/// nobody holds or waits), so a refusal leaves nothing to clean up.
///
/// Keys of nested names (`{name}/read/x/…` of the lock `{name}/read/x`) share the blocking
/// ranges, and a range compare cannot tell them apart. So a refusal reads the ranges: if every
/// key there belongs to a nested name, the transaction is made again allowing keys created up
/// to that read (none of them is ours to wait for). A few rounds at most: nested names busy
/// enough to outrun them get a refusal.
pub(crate) async fn try_acquire(
    session: &Arc<Session>,
    name: &str,
    side: Side,
) -> Result<Option<LockGuard>, LockError> {
    validate_name(name)?;
    session.check_alive()?;
    let keys = RwKeys::new(session, name, side);
    let attempt = Attempt::new(session, name, keys.own_prefix(), None)?;
    // Every key in the blocking ranges created before this revision is a nested name's.
    let mut created_before = 1;
    for _ in 0..TRY_ROUNDS {
        if let Some(sent) = attempt
            .send(session, try_txn(session, &keys, &attempt, created_before))
            .await?
        {
            return Ok(Some(attempt.pending.into_guard(
                session,
                name,
                sent.revision,
                sent.header,
            )));
        }
        match nested_only(session, &keys).await? {
            Some(read_at) => created_before = read_at + 1,
            None => break,
        }
    }
    // Nothing was put: the withdrawal finds no key.
    attempt.pending.withdraw().await?;
    Ok(None)
}

/// How many times a `try_` form tries again past keys of nested names.
const TRY_ROUNDS: usize = 4;

/// Puts our key if it is absent (a retry after a lost reply finds it, and takes it: nothing
/// blocked it when it was put) and every key in the blocking ranges was created before
/// `created_before` (1: there is none).
fn try_txn(session: &Session, keys: &RwKeys, attempt: &Attempt, created_before: i64) -> Txn {
    let own_absent = Compare::create_revision(attempt.own.as_str(), CompareOp::Equal, 0);
    let none_of = keys.blockers().into_iter().map(|prefix| {
        Compare::create_revision(prefix, CompareOp::Less, created_before)
            .with_range(prefix_end(prefix))
    });
    Txn::new()
        .when(
            std::iter::once(own_absent)
                .chain(none_of)
                .collect::<Vec<_>>(),
        )
        .and_then([TxnOp::put(
            attempt.own.as_str(),
            attempt.pending.value.clone(),
            Some(PutOptions::new().with_lease(session.lease_id)),
        )])
        .or_else([TxnOp::get(attempt.own.as_str(), None)])
}

/// The store revision of a read of the blocking ranges that found only keys of nested names;
/// `None` when a key of this lock blocks us.
async fn nested_only(session: &Session, keys: &RwKeys) -> Result<Option<i64>, LockError> {
    let prefixes = keys.blockers();
    let all = GetOptions::new().with_prefix().with_keys_only();
    let txn = Txn::new().and_then(
        prefixes
            .iter()
            .map(|prefix| TxnOp::get(*prefix, Some(all.clone())))
            .collect::<Vec<_>>(),
    );
    let reply = read(session, txn).await?;
    for (prefix, response) in prefixes.iter().zip(reply.op_responses()) {
        let TxnOpResponse::Get(found) = response else {
            return Err(malformed("the queue read"));
        };
        if found
            .kvs()
            .iter()
            .any(|kv| is_direct_child(prefix.as_bytes(), kv.key()))
        {
            return Ok(None);
        }
    }
    Ok(reply.header().map(|h| h.revision()))
}

/// Queues our key, then waits until no older key blocks it; returns the key's create revision
/// and the store revision at which it was found to hold.
async fn enqueue_and_wait(
    session: &Session,
    keys: &RwKeys,
    attempt: &Attempt,
) -> Result<(i64, i64), LockError> {
    let put = TxnOp::put(
        attempt.own.as_str(),
        attempt.pending.value.clone(),
        Some(PutOptions::new().with_lease(session.lease_id)),
    );
    // Put unless a retry finds our key already there (its reply was lost): then read it. The
    // put branch also reads the newest keys that may block us, so that an uncontended attempt
    // takes one round trip, and a contended one knows what to wait for.
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
            attempt.own.as_str(),
            CompareOp::Equal,
            0,
        )])
        .and_then(std::iter::once(put).chain(reads).collect::<Vec<_>>())
        .or_else([TxnOp::get(attempt.own.as_str(), None)]);
    let Some(sent) = attempt.send(session, txn).await? else {
        return Err(own_key_gone(session, &attempt.name).await);
    };
    let own = QueueKey {
        key: attempt.own.clone().into_bytes(),
        revision: sent.revision,
    };
    let prefixes: Vec<&[u8]> = keys.blockers().into_iter().map(str::as_bytes).collect();
    let mut known = ahead_in(&sent, &prefixes, &own);
    let mut backoff = Backoff::default();
    loop {
        let (ahead, own_revision, header) = match known.take() {
            Some(ahead) => (ahead, Some(sent.revision), sent.header),
            None => read_ahead(session, &prefixes, &own).await?,
        };
        // Only our own key, still there with our revision, proves the hold: the session may
        // have ended while we waited (etcd issue 9921, and Go's RWMutex #16221).
        if own_revision != Some(sent.revision) {
            return Err(own_key_gone(session, &attempt.name).await);
        }
        let waited = match ahead {
            Ahead::All(older) if older.is_empty() => return Ok((sent.revision, header)),
            Ahead::All(older) => match watch::all_gone(session, &prefixes, &own, &older).await {
                Ok(Tracked::Owner { at }) => return Ok((sent.revision, at)),
                Ok(Tracked::OwnGone) => return Err(own_key_gone(session, &attempt.name).await),
                // Older keys than the ones we know, or a watch that could not go on.
                Ok(Tracked::Incomplete | Tracked::Reread) => Ok(Watched::Reread),
                Err(err) => Err(err),
            },
            Ahead::Many(newest) => watch::gone(session, &newest.key, newest.revision).await,
        };
        match waited {
            Ok(Watched::Deleted) => backoff.reset(),
            Ok(Watched::Reread) => backoff.wait(session).await?,
            Err(err) => watch::failed(session, err, &mut backoff).await?,
        }
    }
}

/// Who blocks our key, as one read showed it.
#[derive(Debug)]
enum Ahead {
    /// Every older key that blocks ours, at most [`TRACK`] of them (none: ours holds). The
    /// waiter watches them all on one watch and holds at the last one's delete.
    All(Vec<QueueKey>),
    /// More than [`TRACK`]: the newest blocking key found, whose delete the waiter waits for
    /// before it reads again.
    Many(QueueKey),
}

/// How many blocking keys a waiter tracks at once: a waiter behind more waits for the newest
/// of them, then reads again. One transaction reads them all back (etcd allows 128 operations).
const TRACK: usize = 48;

/// Collects the keys that block ours from pages of the blocking prefixes (newest first).
#[derive(Default)]
struct AheadSorter {
    older: Vec<QueueKey>,
}

impl AheadSorter {
    /// Takes the direct children of `prefix` on one page, except `own`; false once there are
    /// more than [`TRACK`].
    fn take(&mut self, prefix: &[u8], page: &[etcd_client::KeyValue], own: &QueueKey) -> bool {
        self.older.extend(
            page.iter()
                .filter(|kv| kv.key() != own.key.as_slice() && kv.create_revision() < own.revision)
                .filter(|kv| is_direct_child(prefix, kv.key()))
                .map(|kv| QueueKey {
                    key: kv.key().to_vec(),
                    revision: kv.create_revision(),
                }),
        );
        self.older.len() <= TRACK
    }

    fn finish(mut self) -> Ahead {
        if self.older.len() <= TRACK {
            return Ahead::All(self.older);
        }
        self.older
            .sort_by_key(|key| std::cmp::Reverse(key.revision));
        let newest = self.older.swap_remove(0);
        Ahead::Many(newest)
    }
}

/// The keys that block ours, from the put's own reads (one page per blocking prefix, newest
/// first, taken at the put's revision: every key there is older than ours, or ours); `None`
/// when a page was full and its rest matters.
fn ahead_in(sent: &Sent, prefixes: &[&[u8]], own: &QueueKey) -> Option<Ahead> {
    if !sent.put_now {
        return None;
    }
    let mut sorter = AheadSorter::default();
    let gets = sent.reply.op_responses().into_iter().skip(1);
    for (prefix, response) in prefixes.iter().zip(gets) {
        let TxnOpResponse::Get(found) = response else {
            return None;
        };
        if !sorter.take(prefix, found.kvs(), own) {
            return Some(sorter.finish());
        }
        if found.more() {
            return None;
        }
    }
    Some(sorter.finish())
}

/// Reads the keys older than ours under the blocking prefixes (direct children only), our own
/// key's create revision, and the store revision they were read at: one round trip, unless
/// pages full of nested names (or of keys beyond [`TRACK`]) need more.
async fn read_ahead(
    session: &Session,
    prefixes: &[&[u8]],
    own: &QueueKey,
) -> Result<(Ahead, Option<i64>, i64), LockError> {
    let older = |below: i64| {
        GetOptions::new()
            .with_prefix()
            .with_max_create_revision(below)
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(PAGE)
            .with_keys_only()
    };
    let txn = Txn::new().and_then(
        prefixes
            .iter()
            .map(|prefix| TxnOp::get(*prefix, Some(older(own.revision - 1))))
            .chain([TxnOp::get(
                own.key.as_slice(),
                Some(GetOptions::new().with_keys_only()),
            )])
            .collect::<Vec<_>>(),
    );
    let reply = read(session, txn).await?;
    let header = reply.header().map_or(0, |h| h.revision());
    let responses = reply.op_responses();
    let own_revision = match responses.get(prefixes.len()) {
        Some(TxnOpResponse::Get(mine)) => mine.kvs().first().map(|kv| kv.create_revision()),
        _ => return Err(malformed("the queue read")),
    };
    let mut sorter = AheadSorter::default();
    'prefixes: for (prefix, response) in prefixes.iter().zip(responses) {
        let TxnOpResponse::Get(mut found) = response else {
            return Err(malformed("the queue read"));
        };
        loop {
            if !sorter.take(prefix, found.kvs(), own) {
                break 'prefixes;
            }
            // The rest of a full page, further back. Keys older than ours can only go, so a
            // later read misses none that matter.
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
    Ok((sorter.finish(), own_revision, header))
}
