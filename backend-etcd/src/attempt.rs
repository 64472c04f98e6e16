//! Queue attempts whose key is unique to the attempt (reader-writer locks, semaphores): one
//! session may hold several keys of a name, so the mutex's one-key-per-session ticket is not
//! needed, and a key found in place on a retry after a lost reply is the attempt's own.
//!
//! Each attempt still takes a local ticket, on its own key (never contended), so that its
//! withdrawal, release and sweep are the mutex's ([`PendingKey`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use etcd_client::{Txn, TxnOpResponse, TxnResponse};
use locksmith_api::{LockError, LossReason};

use crate::hold::{new_nonce, why_deleted, PendingKey, Stamp};
use crate::retry;
use crate::session::{Link, Session};

/// One attempt: the name it is for, its key, and the key's cleanup.
pub(crate) struct Attempt {
    pub(crate) name: String,
    pub(crate) own: String,
    pub(crate) pending: PendingKey,
}

/// Where an attempt's key stands after its queue transaction.
pub(crate) struct Sent {
    /// The key's create revision: its place and its fencing token.
    pub(crate) revision: i64,
    /// The store revision of the answer.
    pub(crate) header: i64,
    /// True when this reply's put made the key (its other reads then see the store as of the
    /// put); false when a retry found it in place.
    pub(crate) put_now: bool,
    /// The transaction's reply.
    pub(crate) reply: TxnResponse,
}

impl Attempt {
    /// A new attempt on `name` whose key is `{prefix}{lease id in hex}-{n in hex}`, its value
    /// a token unique to the attempt, after `value_head` and a space if given (a semaphore
    /// puts its limit there).
    pub(crate) fn new(
        session: &Session,
        name: &str,
        prefix: &str,
        value_head: Option<&str>,
    ) -> Result<Attempt, LockError> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let own = format!(
            "{prefix}{:x}-{:x}",
            session.lease_id,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let ticket = session
            .local
            .try_acquire(&own, ())
            .ok_or_else(|| LockError::Backend {
                backend: "etcd",
                operation: format!("queue for {name:?}"),
                source: "a key of this attempt is already in use in this session".into(),
            })?;
        let stamp = match value_head {
            None => Stamp::Nonce,
            // Unique to the attempt all the same: the nonce follows.
            Some(head) => Stamp::Proposal(format!("{head} {}", new_nonce()).into_bytes()),
        };
        let pending = PendingKey::new(session, &own, ticket, stamp);
        Ok(Attempt {
            name: name.to_owned(),
            own,
            pending,
        })
    }

    /// Sends the attempt's queue transaction (which puts the key in its success branch, and
    /// reads the key in its failure branch) in a task of its own that holds the pending key's
    /// gate, as the mutex's queue does: a dropped caller's withdrawal then waits for it.
    /// `None` when the transaction's compares failed and the key is not there.
    pub(crate) async fn send(
        &self,
        session: &Session,
        txn: Txn,
    ) -> Result<Option<Sent>, LockError> {
        let link = session.link();
        let pending = &self.pending;
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
        let (own, value) = (self.own.clone(), pending.value.clone());
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
            let sent = read_sent(reply?, &own, &value)?;
            if let Some(sent) = &sent {
                revision_cell.store(sent.revision, Ordering::SeqCst);
            }
            Ok(sent)
        });
        match flight.await {
            Ok(sent) => sent,
            Err(err) => Err(LockError::Backend {
                backend: "etcd",
                operation: "queue for the lock".to_owned(),
                source: Box::new(err),
            }),
        }
    }
}

/// Our key's revision from a queue reply: the put's (the transaction's revision), or the key
/// found in place by a retry after a lost reply (unique to the attempt, with its value).
fn read_sent(reply: TxnResponse, own: &str, value: &[u8]) -> Result<Option<Sent>, LockError> {
    let header = reply.header().map_or(0, |h| h.revision());
    if reply.succeeded() {
        if header <= 0 {
            return Err(malformed("the queue transaction"));
        }
        return Ok(Some(Sent {
            revision: header,
            header,
            put_now: true,
            reply,
        }));
    }
    let found = match reply.op_responses().first() {
        Some(TxnOpResponse::Get(found)) => found
            .kvs()
            .first()
            .filter(|kv| kv.key() == own.as_bytes() && kv.value() == value)
            .map(|kv| kv.create_revision()),
        _ => None,
    };
    Ok(found.map(|revision| Sent {
        revision,
        header,
        put_now: false,
        reply,
    }))
}

/// Our key went while we waited: with the session's lease, or deleted on its own.
pub(crate) async fn own_key_gone(link: &Link, name: &str) -> LockError {
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

/// One read-only transaction, retried until etcd answers.
pub(crate) async fn read(session: &Session, txn: Txn) -> Result<TxnResponse, LockError> {
    retry::retry(session, "read the lock queue", |mut client| {
        let txn = txn.clone();
        async move { client.txn(txn).await }
    })
    .await
}

/// The end of the key range of `prefix` (which ends with `/`).
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

pub(crate) fn malformed(what: &str) -> LockError {
    LockError::Backend {
        backend: "etcd",
        operation: what.to_owned(),
        source: "etcd answered with an unexpected reply".into(),
    }
}
