//! Who holds what: a read-only view of a name's queue, for operators and scripts.
//!
//! [`QueueView::queue`] returns the holders and the waiters of one name, oldest first, for
//! any primitive; [`QueueView::queues`] every name under a prefix. Both only read: nothing is
//! queued, and what they return may be out of date the moment it arrives.

use std::time::Duration;

use async_trait::async_trait;

use crate::{FencingToken, LockError};

/// Which primitive's queue to read. Lock and election share one queue per name (a lock
/// holder leads with an empty value); reader-writer locks and semaphores have their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Primitive {
    /// A mutex ([`DistributedLock`](crate::DistributedLock)).
    Lock,
    /// A leader election ([`LeaderElection`](crate::LeaderElection)): the lock queue, with
    /// each candidate's value.
    Election,
    /// A reader-writer lock ([`DistributedRwLock`](crate::DistributedRwLock)).
    RwLock,
    /// A counting semaphore ([`DistributedSemaphore`](crate::DistributedSemaphore)).
    Semaphore,
}

impl Primitive {
    /// The name used in messages and JSON: `lock`, `election`, `rwlock`, `semaphore`.
    pub fn as_str(self) -> &'static str {
        match self {
            Primitive::Lock => "lock",
            Primitive::Election => "election",
            Primitive::RwLock => "rwlock",
            Primitive::Semaphore => "semaphore",
        }
    }
}

/// What one entry of a queue asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EntryKind {
    /// A lock hold (read as [`Primitive::Lock`]).
    Lock,
    /// An election candidate (read as [`Primitive::Election`]).
    Candidate,
    /// A reader of a reader-writer lock.
    Read,
    /// A writer of a reader-writer lock.
    Write,
    /// A semaphore permit.
    Permit,
}

impl EntryKind {
    /// The name used in messages and JSON: `lock`, `candidate`, `read`, `write`, `permit`.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Lock => "lock",
            EntryKind::Candidate => "candidate",
            EntryKind::Read => "read",
            EntryKind::Write => "write",
            EntryKind::Permit => "permit",
        }
    }
}

/// One holder or waiter of a queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueEntry {
    /// The backend key (on etcd the full key, namespace included).
    pub key: String,
    /// The etcd lease the key is attached to; `None` on the memory backend.
    pub lease_id: Option<i64>,
    /// The entry's fencing token: on etcd the key's create revision (the token it holds, or
    /// will hold, with); on the memory backend a holder's token and `None` for a waiter,
    /// whose token is drawn when it is granted.
    pub fencing_token: Option<FencingToken>,
    /// What the entry asks for.
    pub kind: EntryKind,
    /// The value stored with the entry: a candidate's proposal (the leader's value, for the
    /// holder of an election). On etcd every key's value as stored (a locksmith lock's is a
    /// `locksmith-…` marker, `etcdctl lock`'s empty, a permit's `{limit} {marker}`); on the
    /// memory backend only candidates have one.
    pub value: Option<Vec<u8>>,
    /// How long the entry's lease has left before it expires unless kept alive, as etcd
    /// reports it (whole seconds); `None` on the memory backend and when etcd no longer
    /// knows the lease.
    pub ttl_left: Option<Duration>,
}

/// The holders and waiters of one name, as read at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueInfo {
    /// The name, without the backend's namespace.
    pub name: String,
    /// Which primitive's queue this is.
    pub primitive: Primitive,
    /// The entries that hold, oldest first: one for a lock or election (the leader), the
    /// writer or every reader of a reader-writer lock, up to `limit` for a semaphore.
    pub holders: Vec<QueueEntry>,
    /// The entries that wait, in the order they will be served.
    pub waiters: Vec<QueueEntry>,
    /// A semaphore's limit (that of its oldest entry); `None` for the other primitives and
    /// for a semaphore nobody uses.
    pub limit: Option<u32>,
}

impl QueueInfo {
    /// Splits `entries` (every entry of the name, oldest first) into holders and waiters by
    /// the grant rule of `primitive`: a lock, candidate or writer holds when it is the
    /// oldest entry; a reader when no older writer holds or waits; a permit when fewer than
    /// `limit` older entries hold. The holders are always a prefix of the queue.
    pub fn from_ordered(
        name: &str,
        primitive: Primitive,
        entries: Vec<QueueEntry>,
        limit: Option<u32>,
    ) -> QueueInfo {
        let granted = match primitive {
            Primitive::Lock | Primitive::Election => entries.len().min(1),
            Primitive::RwLock => match entries.first().map(|e| e.kind) {
                Some(EntryKind::Write) => 1,
                _ => entries
                    .iter()
                    .take_while(|e| e.kind == EntryKind::Read)
                    .count(),
            },
            Primitive::Semaphore => {
                let limit = limit.map_or(usize::MAX, |limit| limit as usize);
                entries.len().min(limit)
            }
        };
        Self::split_at(name, primitive, entries, granted, limit)
    }

    /// The queue whose first `granted` entries of `entries` (oldest first) hold and the rest
    /// wait: for a backend that knows the split itself (as a lock table does).
    pub fn split_at(
        name: &str,
        primitive: Primitive,
        entries: Vec<QueueEntry>,
        granted: usize,
        limit: Option<u32>,
    ) -> QueueInfo {
        let mut holders = entries;
        let waiters = holders.split_off(granted.min(holders.len()));
        QueueInfo {
            name: name.to_owned(),
            primitive,
            holders,
            waiters,
            limit,
        }
    }

    /// True when nobody holds or waits.
    pub fn is_empty(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty()
    }

    /// Holders plus waiters.
    pub fn len(&self) -> usize {
        self.holders.len() + self.waiters.len()
    }
}

/// A session that can tell who holds and who waits for a name, without queueing.
#[async_trait]
pub trait QueueView: Send + Sync {
    /// The holders and waiters of `name` as `primitive` sees them. A name nobody uses gives
    /// an empty [`QueueInfo`].
    ///
    /// # Errors
    /// [`LockError::InvalidName`] for a bad name, [`LockError::SessionLost`] once the session
    /// has ended, a backend error when the backend cannot be read.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads.
    async fn queue(&self, name: &str, primitive: Primitive) -> Result<QueueInfo, LockError>;

    /// Every queue with a holder or a waiter whose name starts with `prefix` (all of them
    /// for `""`), sorted by name, then primitive. Lock and election queues are reported as
    /// [`Primitive::Lock`]; on etcd, a reader-writer lock `NAME` and a lock `NAME/read` (or
    /// `NAME/write`) share keys, which are reported as the reader-writer lock's.
    ///
    /// # Errors
    /// As [`queue`](QueueView::queue), except that any prefix is accepted.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads.
    async fn queues(&self, prefix: &str) -> Result<Vec<QueueInfo>, LockError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: EntryKind, n: u64) -> QueueEntry {
        QueueEntry {
            key: format!("k{n}"),
            lease_id: None,
            fencing_token: Some(FencingToken::new(n)),
            kind,
            value: None,
            ttl_left: None,
        }
    }

    fn split(primitive: Primitive, kinds: &[EntryKind], limit: Option<u32>) -> (usize, usize) {
        let entries = (1..).zip(kinds).map(|(n, k)| entry(*k, n)).collect();
        let info = QueueInfo::from_ordered("n", primitive, entries, limit);
        (info.holders.len(), info.waiters.len())
    }

    #[test]
    fn the_grant_rule_splits_holders_from_waiters() {
        use EntryKind::*;
        assert_eq!(split(Primitive::Lock, &[], None), (0, 0));
        assert_eq!(split(Primitive::Lock, &[Lock, Lock, Lock], None), (1, 2));
        assert_eq!(
            split(Primitive::RwLock, &[Read, Read, Write, Read], None),
            (2, 2)
        );
        assert_eq!(split(Primitive::RwLock, &[Write, Read], None), (1, 1));
        assert_eq!(split(Primitive::Semaphore, &[Permit; 5], Some(3)), (3, 2));
        assert_eq!(split(Primitive::Semaphore, &[Permit; 2], Some(3)), (2, 0));
    }
}
