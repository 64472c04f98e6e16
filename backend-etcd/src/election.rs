//! Leader election with the keys of Go's `concurrency.Election`: a candidate is the session's
//! queue key of the name (`{namespace}{name}/{lease id in hex}`, as a lock's), its value the
//! proposal; the leader is the direct child of `{namespace}{name}/` with the lowest create
//! revision. Campaigning is queueing for the lock (`mutex.rs`) with the proposal as the value;
//! proclaiming is a put guarded by the leader key's create revision (as Go's) and by the mod
//! revision of its last proclamation (so a late attempt never lands over a later one);
//! resigning is the lock's release.
//!
//! Observers of one name in one session share one [`LeaderFeed`], driven by one task: it reads
//! every candidate, then follows one range watch (puts and deletes) on the session's watch
//! stream from the revision after that read, and publishes the leader whenever it changes (a
//! new leader, vacancy, or a put of the leader's key: a proclamation), not at every event of
//! the range. A compaction or a reset stream makes it read again, from which it follows on: no
//! change is missed, and the feed's versions (etcd revisions) never go back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use etcd_client::{
    Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use locksmith_api::{
    validate_name, FencingToken, LeaderFeed, LeaderInfo, LeaderState, LeaderWatch, Leadership,
    LockError, Proclaim,
};
use parking_lot::Mutex;

use crate::hold::{why_deleted, Stamp};
use crate::hub::{Change, Notice};
use crate::mutex;
use crate::retry::{self, Backoff};
use crate::session::{Link, Session};
use crate::watch::is_direct_child;

/// Keys read per page when looking for the oldest candidate among nested names.
const PAGE: i64 = 64;

/// The feeds of the names this session observes, by name.
pub(crate) type Observed = Mutex<HashMap<String, Arc<LeaderFeed>>>;

/// `{namespace}{name}/`: every candidate's key is a direct child.
fn prefix(session: &Session, name: &str) -> String {
    format!("{}{}/", session.namespace, name)
}

/// The end of the key range of `prefix` (which ends with `/`): every key starting with it
/// sorts before.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// Campaigns for `name`: queues the proposal and waits to be the oldest; see
/// [`crate::EtcdLock`].
pub(crate) async fn campaign(
    session: &Arc<Session>,
    name: &str,
    value: &[u8],
) -> Result<Leadership, LockError> {
    let guard = mutex::acquire(session, name, Stamp::Proposal(value.to_vec())).await?;
    let revision = i64::try_from(guard.fencing_token().get()).unwrap_or(i64::MAX);
    let proclaimer = EtcdProclaim {
        link: session.link(),
        name: name.to_owned(),
        key: guard.key().to_owned(),
        revision,
        // The campaign's put made the key: it was last modified at its creation.
        applied: AtomicI64::new(revision),
    };
    Ok(Leadership::new(guard, value, Box::new(proclaimer)))
}

/// Proclaims for one leadership: a put of its key, only while the key has the leadership's
/// create revision (so never on a later key of the session, nor after a resign), and only over
/// the value this leadership applied last (its mod revision): an attempt that reaches etcd
/// late (a delayed request, a slow member) can never overwrite a later proclamation.
struct EtcdProclaim {
    link: Arc<Link>,
    name: String,
    key: String,
    revision: i64,
    /// The key's mod revision as this leadership last saw it.
    applied: AtomicI64,
}

impl EtcdProclaim {
    /// `Put` while the key is still this leadership's, as last seen; else read it.
    fn txn(&self, value: &[u8], seen: i64) -> Txn {
        let key = self.key.as_str();
        Txn::new()
            .when([
                Compare::create_revision(key, CompareOp::Equal, self.revision),
                Compare::mod_revision(key, CompareOp::Equal, seen),
            ])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(self.link.lease_id)),
            )])
            .or_else([TxnOp::get(key, None)])
    }

    async fn lost(&self) -> LockError {
        let reason = match self.link.ended_watch.reason() {
            Some(reason) => reason,
            None => why_deleted(&self.link).await,
        };
        LockError::LockLost {
            name: self.name.clone(),
            reason,
        }
    }
}

#[async_trait]
impl Proclaim for EtcdProclaim {
    async fn proclaim(&self, value: &[u8]) -> Result<(), LockError> {
        loop {
            let seen = self.applied.load(Ordering::SeqCst);
            let txn = self.txn(value, seen);
            // Sending the same guarded put again is harmless: retry until etcd answers.
            let reply = retry::retry(&self.link, "proclaim the leader's value", |mut client| {
                let txn = txn.clone();
                async move { client.txn(txn).await }
            })
            .await;
            let reply = match reply {
                Ok(reply) => reply,
                // The leadership ended with its session, whether or not its guard has heard.
                Err(LockError::SessionLost { .. }) => return Err(self.lost().await),
                Err(err) => return Err(err),
            };
            if reply.succeeded() {
                // The put's revision is the transaction's.
                let at = reply.header().map_or(seen, |h| h.revision());
                self.applied.store(at, Ordering::SeqCst);
                return Ok(());
            }
            let now = match reply.op_responses().first() {
                Some(TxnOpResponse::Get(read)) => read.kvs().first().cloned(),
                _ => None,
            };
            match now {
                Some(kv) if kv.create_revision() == self.revision => {
                    self.applied.store(kv.mod_revision(), Ordering::SeqCst);
                    // Changed since we last saw it: by an earlier attempt of this call whose
                    // reply was lost (our value is there), or by someone else (an operator, a
                    // dropped proclamation of ours): put ours over it.
                    if kv.value() == value {
                        return Ok(());
                    }
                }
                _ => return Err(self.lost().await),
            }
        }
    }
}

/// The leader of `name` and the store revision it was read at.
pub(crate) async fn leader(session: &Session, name: &str) -> Result<(i64, LeaderState), LockError> {
    validate_name(name)?;
    session.check_alive()?;
    let prefix = prefix(session, name);
    let mut above = 0;
    loop {
        // Each page reads the store as it is now, not at the first page's revision (which a
        // compaction may remove between pages, failing every read of a long prefix while the
        // store is compacted often). The answer is still the leader as of this page's
        // revision: the earlier pages held every key created below `above` and none was a
        // candidate, and no key created later can have a create revision below `above`.
        let page = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(PAGE)
            .with_min_create_revision(above);
        let reply = retry::retry(session, "read the leader", |mut client| {
            let (prefix, page) = (prefix.clone(), page.clone());
            async move { client.get(prefix, Some(page)).await }
        })
        .await?;
        let at = reply.header().map_or(0, |h| h.revision());
        if let Some(kv) = reply
            .kvs()
            .iter()
            .find(|kv| is_direct_child(prefix.as_bytes(), kv.key()))
        {
            return Ok((at, Some(info(kv.key(), kv.value(), kv.create_revision()))));
        }
        match reply.kvs().last() {
            Some(last) if reply.more() => above = last.create_revision() + 1,
            _ => return Ok((at, None)),
        }
    }
}

fn info(key: &[u8], value: &[u8], create_revision: i64) -> LeaderInfo {
    LeaderInfo::new(
        String::from_utf8_lossy(key),
        value,
        FencingToken::new(create_revision.unsigned_abs()),
    )
}

/// Observes `name`: the leader read now, then every change, from the session's feed of the
/// name (started here if nobody in this session observes it yet).
pub(crate) async fn observe(session: &Arc<Session>, name: &str) -> Result<LeaderWatch, LockError> {
    let (at, state) = leader(session, name).await?;
    let mut observed = session.observed.lock();
    let feed = match observed.get(name) {
        Some(feed) if !feed.is_ended() => Arc::clone(feed),
        _ => {
            let feed = Arc::new(LeaderFeed::new(at.unsigned_abs(), state.clone()));
            observed.insert(name.to_owned(), Arc::clone(&feed));
            session.runtime.spawn(follow(
                session.link(),
                Arc::downgrade(&session.observed),
                name.to_owned(),
                prefix(session, name),
                Arc::clone(&feed),
            ));
            feed
        }
    };
    // Subscribed before the map's lock is released: the feed's task, which removes an
    // unwatched feed under that lock, sees this watch.
    Ok(feed.watch_from(at.unsigned_abs(), state))
}

/// Every candidate of a name: key → (create revision, value).
type Candidates = HashMap<Vec<u8>, (i64, Vec<u8>)>;

/// The oldest candidate.
fn oldest(candidates: &Candidates) -> LeaderState {
    candidates
        .iter()
        .min_by_key(|(key, (revision, _))| (*revision, (*key).clone()))
        .map(|(key, (revision, value))| info(key, value, *revision))
}

/// What ended one round of following.
enum Round {
    /// Read again (compaction, a reset stream, a failed read).
    Reread,
    /// The feed is done: nobody watches it, or the session ended.
    Done,
}

/// The task behind one feed: reads, follows, reads again, until the session ends or nobody
/// watches the feed.
async fn follow(
    link: Arc<Link>,
    observed: Weak<Observed>,
    name: String,
    prefix: String,
    feed: Arc<LeaderFeed>,
) {
    let mut backoff = Backoff::default();
    loop {
        let round = tokio::select! {
            biased;
            reason = link.ended_watch.wait() => {
                feed.end(link.lost_error(reason));
                Round::Done
            }
            round = follow_round(&link, &prefix, &feed, &mut backoff) => round,
            () = feed.unwatched() => Round::Done,
        };
        if let Round::Done = round {
            if feed.is_ended() {
                forget(&observed, &name, &feed);
                return;
            }
            if forget_if_unwatched(&observed, &name, &feed) {
                return;
            }
            // A new observer came as the last one left: go on.
            continue;
        }
        if backoff.wait(&link).await.is_err() {
            // The session ended: the next round says so.
            continue;
        }
    }
}

/// One read of every candidate, then the changes after it until the watch cannot go on.
async fn follow_round(
    link: &Link,
    prefix: &str,
    feed: &LeaderFeed,
    backoff: &mut Backoff,
) -> Round {
    let (at, mut candidates) = match read_candidates(link, prefix).await {
        Ok(read) => read,
        Err(err) => {
            tracing::debug!(%err, prefix, "reading the candidates failed");
            return Round::Reread;
        }
    };
    publish_if_changed(feed, at, oldest(&candidates), false);
    let mut watch = link
        .watches
        .watch_changes(prefix.as_bytes(), &prefix_end(prefix), at + 1);
    loop {
        match watch.next().await {
            Notice::Created => backoff.reset(),
            Notice::Changes(changes) => {
                if let Some(last) = apply(prefix, &mut candidates, &changes) {
                    let leader = oldest(&candidates);
                    let proclaimed = leader
                        .as_ref()
                        .is_some_and(|leader| changes.iter().any(|c| is_put_of(c, leader)));
                    publish_if_changed(feed, last, leader, proclaimed);
                }
            }
            Notice::Deleted | Notice::Deletes(_) | Notice::Reread => return Round::Reread,
        }
    }
}

/// Publishes `leader` as of `revision` when it is not what the feed shows already, or when
/// the leader `proclaimed` (a put of its key, even of the same value, is an item). A candidate
/// queueing or withdrawing behind the leader, a nested name's key, a reread that finds the
/// same leader: none is a change observers are promised.
fn publish_if_changed(feed: &LeaderFeed, revision: i64, leader: LeaderState, proclaimed: bool) {
    if proclaimed || feed.current().1 != leader {
        feed.publish(revision.unsigned_abs(), leader);
    }
}

/// True when `change` is a put of `leader`'s own key (same create revision): a proclamation,
/// or the put that made it a candidate.
fn is_put_of(change: &Change, leader: &LeaderInfo) -> bool {
    !change.is_delete()
        && change.key == leader.key().as_bytes()
        && change.create_revision.unsigned_abs() == leader.fencing_token().get()
}

/// Applies one reply's events; returns the revision of the last one.
fn apply(prefix: &str, candidates: &mut Candidates, changes: &[Change]) -> Option<i64> {
    for change in changes {
        if !is_direct_child(prefix.as_bytes(), &change.key) {
            continue;
        }
        if change.is_delete() {
            candidates.remove(&change.key);
        } else {
            candidates.insert(
                change.key.clone(),
                (change.create_revision, change.value.clone()),
            );
        }
    }
    changes.iter().map(|change| change.revision).max()
}

/// Every candidate under `prefix`, read at one revision, and that revision.
async fn read_candidates(link: &Link, prefix: &str) -> Result<(i64, Candidates), LockError> {
    let mut candidates = Candidates::new();
    let mut from = prefix.as_bytes().to_vec();
    let end = prefix_end(prefix);
    let mut at = 0;
    loop {
        let mut page = GetOptions::new()
            .with_range(end.clone())
            .with_sort(SortTarget::Key, SortOrder::Ascend)
            .with_limit(PAGE * 16);
        if at > 0 {
            page = page.with_revision(at);
        }
        let reply = retry::retry(link, "read the candidates", |mut client| {
            let (from, page) = (from.clone(), page.clone());
            async move { client.get(from, Some(page)).await }
        })
        .await?;
        if at == 0 {
            at = reply.header().map_or(0, |h| h.revision());
        }
        for kv in reply.kvs() {
            if is_direct_child(prefix.as_bytes(), kv.key()) {
                candidates.insert(
                    kv.key().to_vec(),
                    (kv.create_revision(), kv.value().to_vec()),
                );
            }
        }
        match reply.kvs().last() {
            Some(last) if reply.more() => from = [last.key(), &[0]].concat(),
            _ => return Ok((at, candidates)),
        }
    }
}

/// Removes `feed` from the session's map if nobody watches it (checked under the map's lock,
/// which `observe` holds while it subscribes); true when it was removed or is gone.
fn forget_if_unwatched(observed: &Weak<Observed>, name: &str, feed: &Arc<LeaderFeed>) -> bool {
    let Some(observed) = observed.upgrade() else {
        return true;
    };
    let mut observed = observed.lock();
    if feed.watchers() > 0 {
        return false;
    }
    if observed.get(name).is_some_and(|f| Arc::ptr_eq(f, feed)) {
        observed.remove(name);
    }
    true
}

fn forget(observed: &Weak<Observed>, name: &str, feed: &Arc<LeaderFeed>) {
    if let Some(observed) = observed.upgrade() {
        let mut observed = observed.lock();
        if observed.get(name).is_some_and(|f| Arc::ptr_eq(f, feed)) {
            observed.remove(name);
        }
    }
}
