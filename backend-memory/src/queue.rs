//! Who holds what on a memory store: [`QueueView`] over a snapshot of the store's table.
//!
//! Keys are those the guards get: `{name}/{session in hex}` for a lock or candidate,
//! `{name}/{read|write|permit}/{session in hex}_{token}` for a holder of the other
//! primitives, and the same without `_{token}` for their waiters (a waiter has no token yet).
//! Memory sessions have no lease: `lease_id` and `ttl_left` are `None`.

use async_trait::async_trait;
use locksmith_api::table::TableEntry;
use locksmith_api::{
    validate_name, Claim, EntryKind, Family, LockError, Primitive, QueueEntry, QueueInfo, QueueView,
};

use crate::hold::HoldTag;
use crate::session::MemoryLock;

fn family(primitive: Primitive) -> Family {
    match primitive {
        Primitive::RwLock => Family::RwLock,
        Primitive::Semaphore => Family::Semaphore,
        // `Primitive` is non-exhaustive only for users; every other one is a lock queue.
        _ => Family::Lock,
    }
}

/// The view of one queue of the table.
fn info(name: &str, primitive: Primitive, entries: Vec<TableEntry<HoldTag>>) -> QueueInfo {
    let limit = match entries.first().map(|e| e.claim) {
        Some(Claim::Permit { limit }) => Some(limit),
        _ => None,
    };
    let entries: Vec<QueueEntry> = entries
        .into_iter()
        .map(|entry| self::entry(name, primitive, entry))
        .collect();
    // The table's holders are a prefix, as `from_ordered` assumes; its own split is the
    // truth (a reader granted before a writer queued keeps holding), so count them here.
    let granted = entries
        .iter()
        .take_while(|e| e.fencing_token.is_some())
        .count();
    QueueInfo::split_at(name, primitive, entries, granted, limit)
}

fn entry(name: &str, primitive: Primitive, entry: TableEntry<HoldTag>) -> QueueEntry {
    let session = entry.tag.session;
    let value = entry
        .tag
        .candidate
        .as_ref()
        .map(|candidate| candidate.value.lock().clone());
    let (kind, path) = match entry.claim {
        Claim::Lock if primitive == Primitive::Election || value.is_some() => {
            (EntryKind::Candidate, None)
        }
        Claim::Lock => (EntryKind::Lock, None),
        Claim::Read => (EntryKind::Read, Some("read")),
        Claim::Write => (EntryKind::Write, Some("write")),
        Claim::Permit { .. } => (EntryKind::Permit, Some("permit")),
    };
    let key = match (path, entry.token) {
        (None, _) => format!("{name}/{session:x}"),
        (Some(path), Some(token)) => format!("{name}/{path}/{session:x}_{}", token.get()),
        (Some(path), None) => format!("{name}/{path}/{session:x}"),
    };
    QueueEntry {
        key,
        lease_id: None,
        fencing_token: entry.token,
        kind,
        value,
        ttl_left: None,
    }
}

/// Reads the store's table; a plain lock holder shows up in an election with no value.
#[async_trait]
impl QueueView for MemoryLock {
    async fn queue(&self, name: &str, primitive: Primitive) -> Result<QueueInfo, LockError> {
        validate_name(name)?;
        self.check_alive()?;
        let mut queues = self
            .store()
            .table()
            .snapshot(family(primitive), |queued| queued == name);
        let entries = queues.pop().map(|(_, entries)| entries).unwrap_or_default();
        Ok(info(name, primitive, entries))
    }

    async fn queues(&self, prefix: &str) -> Result<Vec<QueueInfo>, LockError> {
        self.check_alive()?;
        let table = self.store().table();
        let mut all = Vec::new();
        for primitive in [Primitive::Lock, Primitive::RwLock, Primitive::Semaphore] {
            let queues = table.snapshot(family(primitive), |name| name.starts_with(prefix));
            all.extend(
                queues
                    .into_iter()
                    .map(|(name, entries)| info(&name, primitive, entries)),
            );
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use locksmith_api::{DistributedLock, DistributedRwLock, DistributedSemaphore, LeaderElection};

    use super::*;
    use crate::MemoryStore;

    /// Waits until `name`'s queue of `primitive` has `len` entries.
    async fn until_len(session: &MemoryLock, name: &str, primitive: Primitive, len: usize) {
        while session.queue(name, primitive).await.unwrap().len() < len {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_lock_shows_its_holder_then_its_waiters_in_order() {
        let store = MemoryStore::new();
        let (a, b, c) = (
            store.connect().unwrap(),
            store.connect().unwrap(),
            store.connect().unwrap(),
        );
        let empty = a.queue("jobs", Primitive::Lock).await.unwrap();
        assert!(empty.is_empty() && empty.name == "jobs" && empty.limit.is_none());
        let guard = a.lock("jobs").await.unwrap();
        let waiting_b = tokio::spawn({
            let b = b.clone();
            async move { b.lock("jobs").await }
        });
        until_len(&a, "jobs", Primitive::Lock, 2).await;
        let waiting_c = tokio::spawn({
            let c = c.clone();
            async move { c.lock("jobs").await }
        });
        until_len(&a, "jobs", Primitive::Lock, 3).await;
        let info = c.queue("jobs", Primitive::Lock).await.unwrap();
        assert_eq!(info.holders.len(), 1);
        let holder = &info.holders[0];
        assert_eq!(holder.key, guard.key());
        assert_eq!(holder.fencing_token, Some(guard.fencing_token()));
        assert_eq!(holder.kind, EntryKind::Lock);
        let waiters: Vec<&str> = info.waiters.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(
            waiters,
            [
                format!("jobs/{:x}", b.session_id()),
                format!("jobs/{:x}", c.session_id())
            ]
        );
        assert!(info.waiters.iter().all(|w| w.fencing_token.is_none()));
        // Other families of the same name are other queues.
        assert!(a.queue("jobs", Primitive::RwLock).await.unwrap().is_empty());
        guard.unlock().await.unwrap();
        let next = waiting_b.await.unwrap().unwrap();
        let info = a.queue("jobs", Primitive::Lock).await.unwrap();
        assert_eq!(info.holders[0].key, next.key());
        assert_eq!(info.waiters.len(), 1);
        drop(next);
        drop(waiting_c.await.unwrap().unwrap());
        assert!(a.queue("jobs", Primitive::Lock).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_election_shows_the_leader_value() {
        let store = MemoryStore::new();
        let (a, b) = (store.connect().unwrap(), store.connect().unwrap());
        let leading = a.campaign("leader", b"host-a").await.unwrap();
        leading.proclaim(b"host-a v2").await.unwrap();
        let candidate = tokio::spawn({
            let b = b.clone();
            async move { b.campaign("leader", b"host-b").await }
        });
        until_len(&a, "leader", Primitive::Election, 2).await;
        let info = b.queue("leader", Primitive::Election).await.unwrap();
        assert_eq!(info.holders[0].value.as_deref(), Some(&b"host-a v2"[..]));
        assert_eq!(info.holders[0].kind, EntryKind::Candidate);
        assert_eq!(info.waiters[0].value.as_deref(), Some(&b"host-b"[..]));
        drop(leading);
        drop(candidate.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn rwlocks_and_semaphores_show_kinds_and_limits() {
        let store = MemoryStore::new();
        let (a, b) = (store.connect().unwrap(), store.connect().unwrap());
        let (r1, r2) = (a.read("cat").await.unwrap(), b.read("cat").await.unwrap());
        let writer = tokio::spawn({
            let b = b.clone();
            async move { b.write("cat").await }
        });
        until_len(&a, "cat", Primitive::RwLock, 3).await;
        let info = a.queue("cat", Primitive::RwLock).await.unwrap();
        let kinds = |entries: &[QueueEntry]| entries.iter().map(|e| e.kind).collect::<Vec<_>>();
        assert_eq!(kinds(&info.holders), [EntryKind::Read, EntryKind::Read]);
        assert_eq!(kinds(&info.waiters), [EntryKind::Write]);
        assert_eq!(info.holders[0].key, r1.key());
        assert_eq!(info.holders[1].key, r2.key());

        let p1 = a.acquire("pool", 2).await.unwrap();
        let _p2 = a.acquire("pool", 2).await.unwrap();
        let third = tokio::spawn({
            let b = b.clone();
            async move { b.acquire("pool", 2).await }
        });
        until_len(&a, "pool", Primitive::Semaphore, 3).await;
        let info = b.queue("pool", Primitive::Semaphore).await.unwrap();
        assert_eq!(info.limit, Some(2));
        assert_eq!((info.holders.len(), info.waiters.len()), (2, 1));
        assert_eq!(info.holders[0].key, p1.key());
        assert_eq!(info.waiters[0].kind, EntryKind::Permit);

        let _lock = a.lock("catalog").await.unwrap();
        let all = a.queues("ca").await.unwrap();
        let seen: Vec<(&str, Primitive, usize)> = all
            .iter()
            .map(|q| (q.name.as_str(), q.primitive, q.len()))
            .collect();
        assert_eq!(
            seen,
            [
                ("cat", Primitive::RwLock, 3),
                ("catalog", Primitive::Lock, 1)
            ]
        );
        assert_eq!(a.queues("").await.unwrap().len(), 3);
        drop((r1, r2));
        drop(writer.await.unwrap().unwrap());
        drop(p1);
        drop(third.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn bad_names_and_ended_sessions_are_refused() {
        let store = MemoryStore::new();
        let a = store.connect().unwrap();
        assert!(matches!(
            a.queue("", Primitive::Lock).await,
            Err(LockError::InvalidName { .. })
        ));
        a.expire();
        assert!(matches!(
            a.queues("").await,
            Err(LockError::SessionLost { .. })
        ));
    }
}
