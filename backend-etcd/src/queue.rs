//! Who holds what: the queues of names read from their keys, as any etcd client (locksmith,
//! Go, `etcdctl lock`, `etcdctl elect`) leaves them, without queueing.
//!
//! The layouts are those of the primitives (see `mutex.rs`, `election.rs`, `rwlock.rs`,
//! `semaphore.rs`): a lock or candidate is a direct child of `{namespace}{NAME}/`, a reader
//! of `{namespace}{NAME}/read/`, a writer of `{namespace}{NAME}/write/`, a permit of
//! `{namespace}\u{1f}semaphore/{escaped NAME}/`. Each queue is read in create-revision order
//! and split into holders and waiters by its grant rule
//! ([`QueueInfo::from_ordered`]); each key's lease is asked for its TTL left
//! (LeaseTimeToLive), once per lease per call.
//!
//! One range read per call (two for [`queues`]: the names, the semaphores), not paged: a
//! prefix with very many keys is read whole. [`queues`] skips names none of whose keys has
//! a lease (every client's queue keys have one: those are application data).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use etcd_client::{GetOptions, KeyValue, SortOrder, SortTarget};
use locksmith_api::{
    validate_name, EntryKind, FencingToken, LockError, Primitive, QueueEntry, QueueInfo,
};

use crate::error::{from_etcd, is_lease_gone};
use crate::retry::{self, Backoff, ErrorKind};
use crate::session::Session;
use crate::watch::is_direct_child;

/// `{namespace}\u{1f}semaphore/`, before every semaphore's escaped name.
fn semaphore_root(session: &Session) -> String {
    format!("{}\u{1f}semaphore/", session.namespace)
}

fn escape(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

fn unescape(escaped: &str) -> String {
    escaped.replace("%2F", "/").replace("%25", "%")
}

/// The queue of `name` as `primitive` sees it; see [`crate::EtcdLock`].
pub(crate) async fn queue(
    session: &Session,
    name: &str,
    primitive: Primitive,
) -> Result<QueueInfo, LockError> {
    validate_name(name)?;
    session.check_alive()?;
    let base = format!("{}{}/", session.namespace, name);
    let keyed: Keyed = match primitive {
        Primitive::RwLock => {
            let (readers, writers) = (format!("{base}read/"), format!("{base}write/"));
            read_prefix(session, &base)
                .await?
                .into_iter()
                .filter_map(|kv| {
                    if is_direct_child(readers.as_bytes(), kv.key()) {
                        Some((EntryKind::Read, kv))
                    } else if is_direct_child(writers.as_bytes(), kv.key()) {
                        Some((EntryKind::Write, kv))
                    } else {
                        None
                    }
                })
                .collect()
        }
        Primitive::Semaphore => {
            let prefix = format!("{}{}/", semaphore_root(session), escape(name));
            read_prefix(session, &prefix)
                .await?
                .into_iter()
                .filter(|kv| is_direct_child(prefix.as_bytes(), kv.key()))
                .map(|kv| (EntryKind::Permit, kv))
                .collect()
        }
        // Lock, election (and any later primitive sharing their keys).
        _ => {
            let kind = match primitive {
                Primitive::Election => EntryKind::Candidate,
                _ => EntryKind::Lock,
            };
            let (direct, nested): (Vec<_>, Vec<_>) = read_prefix(session, &base)
                .await?
                .into_iter()
                .partition(|kv| is_direct_child(base.as_bytes(), kv.key()));
            let oldest_nested = nested.iter().map(KeyValue::create_revision).min();
            let keyed = direct.into_iter().map(|kv| (kind, kv)).collect();
            let mut ttls = Ttls::default();
            let mut info = build(session, name, primitive, keyed, &mut ttls).await?;
            demote_blocked_go_holder(&mut info, oldest_nested);
            return Ok(info);
        }
    };
    let mut ttls = Ttls::default();
    build(session, name, primitive, keyed, &mut ttls).await
}

/// A lock key of `etcdctl lock` or Go's `concurrency.Mutex` (an empty value, where
/// locksmith's lock has a `locksmith-…` marker) waits, as Go does, for every older key under
/// `NAME/`, also those of nested names (`NAME/b/…`), which locksmith's own clients keep
/// apart. Such a key at the head of the queue does not hold while a nested key older than it
/// (`oldest_nested`, a create revision) is left: it is the first waiter. Candidates (a
/// proposal for a value) are left as they are: Go's and locksmith's look alike, and only
/// Go's wait for nested keys.
fn demote_blocked_go_holder(info: &mut QueueInfo, oldest_nested: Option<i64>) {
    let Some(oldest_nested) = oldest_nested.and_then(|rev| u64::try_from(rev).ok()) else {
        return;
    };
    if info.primitive != Primitive::Lock {
        return;
    }
    let blocked = info.holders.first().is_some_and(|holder| {
        let go_mutex = holder.value.as_deref().is_some_and(<[u8]>::is_empty);
        let rev = holder.fencing_token.map(FencingToken::get);
        go_mutex && rev.is_some_and(|rev| oldest_nested < rev)
    });
    if blocked {
        let holders = std::mem::take(&mut info.holders);
        info.waiters.splice(0..0, holders);
    }
}

/// Every queue under `prefix`; see [`locksmith_api::QueueView::queues`].
pub(crate) async fn queues(session: &Session, prefix: &str) -> Result<Vec<QueueInfo>, LockError> {
    session.check_alive()?;
    let mut found = Found::default();
    let namespace = session.namespace.as_bytes();
    // Every key read, by key: what a Go client of a lock waits for under its prefix.
    let mut revisions: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    for kv in read_prefix(session, &format!("{}{prefix}", session.namespace)).await? {
        revisions.insert(kv.key().to_vec(), kv.create_revision());
        let Some(rest) = kv.key().strip_prefix(namespace) else {
            continue;
        };
        // Semaphore keys are read below, from their own prefix.
        if rest.first() == Some(&0x1f) {
            continue;
        }
        let Some((name, primitive, kind)) = classify(rest) else {
            continue;
        };
        if !name.starts_with(prefix) {
            continue;
        }
        found.add(name, primitive, kind, kv);
    }
    let root = semaphore_root(session);
    for kv in read_prefix(session, &format!("{root}{}", escape(prefix))).await? {
        let Some(rest) = kv.key().strip_prefix(root.as_bytes()) else {
            continue;
        };
        let Ok(rest) = std::str::from_utf8(rest) else {
            continue;
        };
        let Some((escaped, id)) = rest.split_once('/') else {
            continue;
        };
        if id.is_empty() || id.contains('/') {
            continue;
        }
        found.add(
            unescape(escaped),
            Primitive::Semaphore,
            EntryKind::Permit,
            kv,
        );
    }
    let mut ttls = Ttls::default();
    let mut all = Vec::with_capacity(found.queues.len());
    // Every client's queue keys are on a lease: a name with no such key is application data
    // sharing the prefix. (A key without a lease in a queue that has leased keys still blocks
    // the waiters behind it, and is shown.)
    let queues = found
        .queues
        .into_iter()
        .filter(|(_, (_, keyed))| keyed.iter().any(|(_, kv)| kv.lease() != 0));
    for ((name, _), (primitive, keyed)) in queues {
        let mut info = build(session, &name, primitive, keyed, &mut ttls).await?;
        if primitive == Primitive::Lock {
            // Keys nested under the name: deeper than its direct children.
            let base = format!("{}{name}/", session.namespace).into_bytes();
            let oldest_nested = revisions
                .range(base.clone()..)
                .take_while(|(key, _)| key.starts_with(&base))
                .filter(|(key, _)| !is_direct_child(&base, key))
                .map(|(_, rev)| *rev)
                .min();
            demote_blocked_go_holder(&mut info, oldest_nested);
        }
        all.push(info);
    }
    Ok(all)
}

/// A queue's keys, each with the kind of entry it is, oldest first.
type Keyed = Vec<(EntryKind, KeyValue)>;

/// The queues found under a prefix: by name, then primitive (lock, RW lock, semaphore).
#[derive(Default)]
struct Found {
    queues: BTreeMap<(String, u8), (Primitive, Keyed)>,
}

impl Found {
    /// Appends a key to its queue; keys come in create-revision order (the reads sort so).
    fn add(&mut self, name: String, primitive: Primitive, kind: EntryKind, kv: KeyValue) {
        let order = match primitive {
            Primitive::RwLock => 1,
            Primitive::Semaphore => 2,
            _ => 0,
        };
        self.queues
            .entry((name, order))
            .or_insert_with(|| (primitive, Vec::new()))
            .1
            .push((kind, kv));
    }
}

/// The name, primitive and kind a key (without the namespace) belongs to: `NAME/read/X` and
/// `NAME/write/X` a reader-writer lock's, `NAME/X` a lock's (X without `/`, not empty).
fn classify(rest: &[u8]) -> Option<(String, Primitive, EntryKind)> {
    let rest = std::str::from_utf8(rest).ok()?;
    let (parent, last) = rest.rsplit_once('/')?;
    if last.is_empty() || parent.is_empty() {
        return None;
    }
    for (side, kind) in [("read", EntryKind::Read), ("write", EntryKind::Write)] {
        if let Some(name) = parent.strip_suffix(side).and_then(|p| p.strip_suffix('/')) {
            if !name.is_empty() {
                return Some((name.to_owned(), Primitive::RwLock, kind));
            }
        }
    }
    Some((parent.to_owned(), Primitive::Lock, EntryKind::Lock))
}

/// Every key under `prefix`, oldest first.
async fn read_prefix(session: &Session, prefix: &str) -> Result<Vec<KeyValue>, LockError> {
    let options = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend);
    let mut reply = retry::retry(session, "read the lock queues", |mut client| {
        let options = options.clone();
        let prefix = prefix.to_owned();
        async move { client.get(prefix, Some(options)).await }
    })
    .await?;
    Ok(reply.take_kvs())
}

/// The queue of one name from its keys, oldest first.
async fn build(
    session: &Session,
    name: &str,
    primitive: Primitive,
    keyed: Keyed,
    ttls: &mut Ttls,
) -> Result<QueueInfo, LockError> {
    // A semaphore's limit is its oldest key's: the value is `{limit} {marker}`.
    let limit = match primitive {
        Primitive::Semaphore => keyed.first().and_then(|(_, kv)| {
            let value = std::str::from_utf8(kv.value()).ok()?;
            value.split(' ').next()?.parse::<u32>().ok()
        }),
        _ => None,
    };
    let mut entries = Vec::with_capacity(keyed.len());
    for (kind, kv) in keyed {
        let lease_id = Some(kv.lease()).filter(|&lease| lease != 0);
        let ttl_left = match lease_id {
            Some(lease) => ttls.get(session, lease).await?,
            None => None,
        };
        entries.push(QueueEntry {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            lease_id,
            fencing_token: u64::try_from(kv.create_revision())
                .ok()
                .map(FencingToken::new),
            kind,
            value: Some(kv.value().to_vec()),
            ttl_left,
        });
    }
    Ok(QueueInfo::from_ordered(name, primitive, entries, limit))
}

/// The TTL left of each lease asked for in one call.
#[derive(Default)]
struct Ttls {
    known: HashMap<i64, Option<Duration>>,
}

impl Ttls {
    /// The TTL left of `lease`; `None` when etcd no longer knows it.
    async fn get(&mut self, session: &Session, lease: i64) -> Result<Option<Duration>, LockError> {
        if let Some(ttl) = self.known.get(&lease) {
            return Ok(*ttl);
        }
        let ttl = time_to_live(session, lease).await?;
        self.known.insert(lease, ttl);
        Ok(ttl)
    }
}

/// Asks etcd how long `lease` has left. Not through [`retry::retry`]: "lease not found" there
/// means this session's own lease is gone, here only that the key's lease just expired.
async fn time_to_live(session: &Session, lease: i64) -> Result<Option<Duration>, LockError> {
    let mut backoff = Backoff::default();
    loop {
        session.check_alive()?;
        let mut client = session.client.clone();
        match retry::attempt(session, client.lease_time_to_live(lease, None)).await {
            // etcd answers -1 for a lease it does not know.
            Some(Ok(reply)) => return Ok(u64::try_from(reply.ttl()).ok().map(Duration::from_secs)),
            Some(Err(err)) if is_lease_gone(&err) => return Ok(None),
            Some(Err(err)) if retry::classify(&err) == ErrorKind::Permanent => {
                return Err(from_etcd(err, &session.endpoints, "read a lease's TTL"));
            }
            Some(Err(_)) | None => {}
        }
        backoff.wait(session).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_classified_by_layout() {
        let lock = classify(b"billing/close-month/694d8a1b2c3d4e5f").unwrap();
        assert_eq!(
            lock,
            (
                "billing/close-month".to_owned(),
                Primitive::Lock,
                EntryKind::Lock
            )
        );
        let reader = classify(b"catalog/read/694d-1").unwrap();
        assert_eq!(
            reader,
            ("catalog".to_owned(), Primitive::RwLock, EntryKind::Read)
        );
        let writer = classify(b"a/b/write/694d-2").unwrap();
        assert_eq!(
            writer,
            ("a/b".to_owned(), Primitive::RwLock, EntryKind::Write)
        );
        // A lock named `read` is a lock; keys without a name or an id are nobody's.
        assert_eq!(classify(b"read/694d").unwrap().1, Primitive::Lock);
        assert_eq!(classify(b"plain"), None);
        assert_eq!(classify(b"name/"), None);
        assert_eq!(unescape(&escape("a/%2F/b")), "a/%2F/b");
    }
}
