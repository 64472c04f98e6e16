//! A key of ours on its way out or held: the pending key of a waiter (withdrawn if the wait
//! is given up), the hold behind a guard (released on unlock or drop), and the background
//! cleanup both share, which outlives the future that started it.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use locksmith_api::{
    FencingToken, Hold, LockError, LockGuard, LossReason, LostSignal, LostWatch, Ticket,
};
use tokio::runtime::Handle;
use tokio::task::{AbortHandle, JoinHandle};

use crate::retry::{self, Backoff, Cleaned, ErrorKind};
use crate::session::{Link, Session};
use crate::watch::{self, Watched};

/// How long a hold lives before its key is watched for deletes (see `watch_hold`).
const HOLD_WATCH_DELAY: Duration = Duration::from_millis(50);

/// How a cleanup recognizes the key it may delete.
#[derive(Debug, Clone)]
pub(crate) enum Owned {
    /// A hold: the key's create revision, so that a stale release never deletes a newer hold
    /// (etcd issue 22082).
    Revision(i64),
    /// A queue attempt whose create revision is unknown (its reply was lost): the value it
    /// put. A lock attempt's value is unique to it; a campaign's is its proposal (see
    /// [`Stamp::Proposal`]), so [`delete_if_owned`] reads the key's create revision first and
    /// deletes by that.
    Value(Vec<u8>),
}

/// What a queue attempt puts as its key's value, and so how it tells its own key.
#[derive(Debug, Clone)]
pub(crate) enum Stamp {
    /// A lock: a value unique to the attempt ([`new_nonce`]); a key of ours with another
    /// value was not created by it.
    Nonce,
    /// A campaign: the proposal, which observers and other clients read as the leader's value,
    /// so it cannot be unique. A key of ours with this value found on a retry, after a request
    /// whose reply was lost, is taken as this attempt's (it is, or it is the key of an earlier
    /// attempt's late put, which is as good: nothing else of this session uses the name while
    /// the attempt holds the session's ticket for it); found on the first request, it is stale.
    Proposal(Vec<u8>),
}

/// Deletes `key` only if it is still the one `owned` describes. True when it deleted.
///
/// Only a delete guarded by the key's create revision is ever sent: one delayed on the network
/// (or by a slow member) can land after this session made a newer key of the name, and must
/// not delete that one. A key described by its value is first read, and deleted with the
/// create revision it has then; a campaign's value (its proposal) is not unique to it.
pub(crate) async fn delete_if_owned(
    mut client: Client,
    key: String,
    owned: Owned,
) -> Result<bool, etcd_client::Error> {
    let revision = match owned {
        Owned::Revision(revision) => revision,
        Owned::Value(value) => {
            let read = client.get(key.as_str(), None).await?;
            match read.kvs().first() {
                Some(kv) if kv.value() == value.as_slice() => kv.create_revision(),
                _ => return Ok(false),
            }
        }
    };
    let txn = Txn::new()
        .when([Compare::create_revision(
            key.as_str(),
            CompareOp::Equal,
            revision,
        )])
        .and_then([TxnOp::delete(key.as_str(), None)]);
    Ok(client.txn(txn).await?.succeeded())
}

/// A unique value for each queue attempt of this process: a key of ours whose value is not
/// the attempt's own was not created by it.
pub(crate) fn new_nonce() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("locksmith-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Our key while we queue: if the `lock` future is dropped, or fails, the key is withdrawn
/// (also when the put committed but its reply was lost): deleted if it still has the create
/// revision the queue reported, or, when no reply came, if it still carries this attempt's
/// value. The local ticket is released only after that.
pub(crate) struct PendingKey {
    key: String,
    /// The value this attempt puts.
    pub(crate) value: Vec<u8>,
    /// True when the value is a proposal (see [`Stamp::Proposal`]).
    pub(crate) is_proposal: bool,
    /// The key's create revision once a queue reply has told it; 0 before.
    pub(crate) revision: Arc<AtomicI64>,
    /// Set by the queue task before its first request: until then there is nothing to withdraw.
    pub(crate) sent: Arc<AtomicBool>,
    /// Held by the queue task while it runs.
    pub(crate) gate: Arc<tokio::sync::Mutex<()>>,
    /// Set when nobody waits for the queue task any more.
    pub(crate) abandoned: Arc<AtomicBool>,
    cleanup: Option<Cleanup>,
}

/// What it takes to give a key up in the background: the session, and the local ticket that
/// keeps this session's other tasks off the name until etcd has answered.
struct Cleanup {
    link: Arc<Link>,
    runtime: Handle,
    ticket: Ticket<()>,
}

impl Cleanup {
    /// Spawns the deletion of `key` if it is still the one `ready` describes, once `ready`
    /// says there is something to delete (a queue task in flight has finished). The task goes
    /// on whatever happens to the caller: it retries until etcd answers or the session ends
    /// (see [`retry::cleanup`]), and only then lets the next local task on the name go.
    fn spawn(
        self,
        operation: &'static str,
        key: String,
        ready: impl std::future::Future<Output = Option<Owned>> + Send + 'static,
    ) -> JoinHandle<Cleaned<bool>> {
        let Cleanup {
            link,
            runtime,
            ticket,
        } = self;
        runtime.spawn(async move {
            let cleaned = match ready.await {
                Some(owned) => {
                    retry::cleanup(&link, operation, |client| {
                        delete_if_owned(client, key.clone(), owned.clone())
                    })
                    .await
                }
                None => Cleaned::Done {
                    value: false,
                    maybe_applied_before: false,
                },
            };
            drop(ticket);
            cleaned
        })
    }
}

impl PendingKey {
    pub(crate) fn new(session: &Session, key: &str, ticket: Ticket<()>, stamp: Stamp) -> Self {
        let (value, is_proposal) = match stamp {
            Stamp::Nonce => (new_nonce().into_bytes(), false),
            Stamp::Proposal(value) => (value, true),
        };
        PendingKey {
            key: key.to_owned(),
            value,
            is_proposal,
            revision: Arc::new(AtomicI64::new(0)),
            sent: Arc::new(AtomicBool::new(false)),
            gate: Arc::new(tokio::sync::Mutex::new(())),
            abandoned: Arc::new(AtomicBool::new(false)),
            cleanup: Some(Cleanup {
                link: session.link(),
                runtime: session.runtime.clone(),
                ticket,
            }),
        }
    }

    /// Starts the withdrawal of the key, in the background.
    fn spawn_withdrawal(&mut self) -> Option<JoinHandle<Cleaned<bool>>> {
        self.abandoned.store(true, Ordering::SeqCst);
        let cleanup = self.cleanup.take()?;
        let (gate, sent) = (Arc::clone(&self.gate), Arc::clone(&self.sent));
        let (revision, value) = (Arc::clone(&self.revision), self.value.clone());
        // Once the gate is ours, the queue task has finished, or will see `abandoned` and
        // send nothing; what it learnt of the key's revision is then known.
        let ready = async move {
            drop(gate.lock_owned().await);
            if !sent.load(Ordering::SeqCst) {
                return None;
            }
            Some(match revision.load(Ordering::SeqCst) {
                0 => Owned::Value(value),
                known => Owned::Revision(known),
            })
        };
        Some(cleanup.spawn("withdraw from the lock queue", self.key.clone(), ready))
    }

    /// Withdraws the key and waits until etcd has answered (or the session ended, taking the
    /// key with it). If this future is dropped, the withdrawal goes on.
    pub(crate) async fn withdraw(mut self) -> Result<(), LockError> {
        if let Some(withdrawal) = self.spawn_withdrawal() {
            let _ = withdrawal.await;
        }
        Ok(())
    }

    /// Turns the queued key, created at `revision` and owning the lock as of store revision
    /// `header`, into a held lock.
    pub(crate) fn into_guard(
        mut self,
        session: &Session,
        name: &str,
        revision: i64,
        header: i64,
    ) -> LockGuard {
        let Some(cleanup) = self.cleanup.take() else {
            // Only `spawn_withdrawal` and `into_guard` take the cleanup, and each is reached at
            // most once per pending key: a pending key reaching here still has it.
            unreachable!("a pending key is consumed once")
        };
        let link = Arc::clone(&cleanup.link);
        let (lost, lost_watch) = LostSignal::new();
        let watcher = cleanup.runtime.spawn(watch_hold(
            link,
            self.key.clone(),
            revision,
            header + 1,
            lost,
            session.ended_watch.clone(),
        ));
        let hold = EtcdHold {
            name: name.to_owned(),
            key: self.key.clone(),
            revision,
            lost: lost_watch.clone(),
            watcher: watcher.abort_handle(),
            cleanup: Some(cleanup),
        };
        LockGuard::new(
            name,
            self.key.clone(),
            FencingToken::new(revision.unsigned_abs()),
            lost_watch,
            Box::new(hold),
        )
    }
}

impl Drop for PendingKey {
    fn drop(&mut self) {
        drop(self.spawn_withdrawal());
    }
}

/// Marks the hold lost when its key is deleted or the session ends.
async fn watch_hold(
    link: Arc<Link>,
    key: String,
    revision: i64,
    mut from: i64,
    lost: LostSignal,
    ended: LostWatch,
) {
    // Most holds are short: watch only those that outlive a moment. The watch starts from the
    // acquisition's revision, so a delete in the meantime is still seen.
    tokio::select! {
        biased;
        reason = ended.wait() => {
            lost.mark(reason);
            return;
        }
        () = tokio::time::sleep(HOLD_WATCH_DELAY) => {}
    }
    let mut backoff = Backoff::default();
    loop {
        let watched = tokio::select! {
            biased;
            reason = ended.wait() => {
                lost.mark(reason);
                return;
            }
            watched = watch::deleted_since(&link, key.as_bytes(), from) => watched,
        };
        if watched == Watched::Deleted {
            lost.mark(why_deleted(&link).await);
            return;
        }
        // Compaction, a broken stream or an error: look at the key itself.
        let mut reader = link.client.clone();
        if let Some(Ok(now)) = retry::attempt(&link, reader.get(key.as_str(), None)).await {
            let ours = now
                .kvs()
                .first()
                .is_some_and(|kv| kv.create_revision() == revision);
            if !ours {
                lost.mark(why_deleted(&link).await);
                return;
            }
            from = now.header().map_or(from, |h| h.revision() + 1);
        }
        if backoff.wait(&link).await.is_err() {
            // The session ended: the next round reports it.
            continue;
        }
    }
}

/// Why a hold's key went: with its lease (revoked or expired: the session is over), or
/// deleted on its own while the session lives.
pub(crate) async fn why_deleted(link: &Link) -> LossReason {
    let mut client = link.client.clone();
    let asked = retry::attempt(link, client.lease_time_to_live(link.lease_id, None)).await;
    match asked {
        // etcd answers -1 for a lease it no longer knows.
        Some(Ok(lease)) if lease.ttl() < 0 => {
            let _ = link.lease_gone();
            link.ended_watch.reason().unwrap_or(LossReason::Expired)
        }
        Some(Err(err)) if retry::classify(&err) == ErrorKind::LeaseGone => {
            let _ = link.lease_gone();
            link.ended_watch.reason().unwrap_or(LossReason::Expired)
        }
        _ => LossReason::Deleted,
    }
}

/// A held lock on etcd.
struct EtcdHold {
    name: String,
    key: String,
    revision: i64,
    /// The hold's loss as its watch task records it. The task owns the only sending half, so
    /// if it dies with its runtime the guard learns that ownership is unknown.
    lost: LostWatch,
    watcher: AbortHandle,
    cleanup: Option<Cleanup>,
}

impl EtcdHold {
    /// Starts the release in the background: it goes on if the caller goes away.
    fn spawn_release(&mut self) -> Option<JoinHandle<Cleaned<bool>>> {
        self.watcher.abort();
        let cleanup = self.cleanup.take()?;
        Some(cleanup.spawn(
            "release the lock",
            self.key.clone(),
            std::future::ready(Some(Owned::Revision(self.revision))),
        ))
    }

    fn lost_error(&self, reason: Option<LossReason>) -> LockError {
        LockError::LockLost {
            name: self.name.clone(),
            reason: reason.unwrap_or(LossReason::Deleted),
        }
    }
}

#[async_trait]
impl Hold for EtcdHold {
    /// Releases and waits for etcd's answer. The release runs in a task of its own and keeps
    /// the local ticket until etcd has answered, so a dropped `unlock()` still releases, and no
    /// new hold of this session on the name can start while the delete is outstanding.
    async fn release(mut self: Box<Self>) -> Result<(), LockError> {
        // Read before the watch task is stopped: stopping it marks the loss unknown.
        let known_loss = self.lost.reason();
        let Some(release) = self.spawn_release() else {
            return Ok(());
        };
        match release.await {
            Ok(Cleaned::Done { value: true, .. }) => Ok(()),
            // Gone already: by this very release when an earlier attempt's reply was lost,
            // else someone else deleted it.
            Ok(Cleaned::Done {
                value: false,
                maybe_applied_before,
            }) => {
                if maybe_applied_before {
                    Ok(())
                } else {
                    Err(self.lost_error(known_loss))
                }
            }
            Ok(Cleaned::SessionEnded(reason)) => Err(self.lost_error(Some(reason))),
            // The release task could not run: its runtime is shutting down, taking the session
            // (and, with its lease, the key) with it.
            Err(_) => Err(self.lost_error(Some(known_loss.unwrap_or(LossReason::Unknown)))),
        }
    }
}

impl Drop for EtcdHold {
    fn drop(&mut self) {
        drop(self.spawn_release());
    }
}
