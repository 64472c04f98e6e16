//! `DistributedLockExt::with_lock` and the session traits on pointers, run on the memory
//! backend.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use locksmith_api::{Coordination, DistributedLock, DistributedLockExt, LockError, LossReason};
use locksmith_memory::{MemoryLock, MemoryStore};
use tokio::sync::oneshot;

/// A guard against hangs: every wait in these tests ends on a signal long before this.
async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("the step to finish")
}

/// Sends on drop: tells the test that the future owning it was dropped.
struct DropSignal(Option<oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(sender) = self.0.take() {
            let _ = sender.send(());
        }
    }
}

#[tokio::test]
async fn with_lock_runs_the_future_holding_the_lock_and_releases_after() {
    let store = MemoryStore::new();
    let (a, b) = (store.connect().unwrap(), store.connect().unwrap());
    let output = within(a.with_lock("ledger", async {
        assert_eq!(store.queue_len("ledger"), 1);
        assert!(b.try_lock("ledger").await.unwrap().is_none(), "held");
        "done"
    }))
    .await
    .unwrap();
    assert_eq!(output, "done");
    assert_eq!(
        store.queue_len("ledger"),
        0,
        "released when with_lock returns"
    );
    assert!(b.try_lock("ledger").await.unwrap().is_some());
}

#[tokio::test]
async fn with_lock_drops_the_future_and_fails_when_the_lock_is_lost_first() {
    let store = MemoryStore::new();
    let a = store.connect().unwrap();
    let (started_tx, started) = oneshot::channel();
    let (dropped_tx, mut dropped) = oneshot::channel();
    let session = a.clone();
    let task = tokio::spawn(async move {
        session
            .with_lock("ledger", async move {
                let _signal = DropSignal(Some(dropped_tx));
                let _ = started_tx.send(());
                std::future::pending::<()>().await
            })
            .await
    });
    within(started).await.unwrap();
    assert!(dropped.try_recv().is_err(), "the future runs");
    a.expire();
    match within(task).await.unwrap() {
        Err(LockError::LockLost { name, reason }) => {
            assert_eq!(name, "ledger");
            assert_eq!(reason, LossReason::Expired);
        }
        other => panic!("with_lock gave {other:?}"),
    }
    // Dropped before with_lock returned, not merely abandoned.
    assert_eq!(dropped.try_recv(), Ok(()));
    assert_eq!(store.queue_len("ledger"), 0);
}

#[tokio::test]
async fn with_lock_passes_the_next_waiter_on_after_a_loss() {
    let store = MemoryStore::new();
    let (a, b) = (store.connect().unwrap(), store.connect().unwrap());
    let (started_tx, started) = oneshot::channel();
    let session = a.clone();
    let holder = tokio::spawn(async move {
        session
            .with_lock("ledger", async move {
                let _ = started_tx.send(());
                std::future::pending::<()>().await
            })
            .await
    });
    within(started).await.unwrap();
    let waiter = tokio::spawn(async move { b.lock("ledger").await });
    while store.queue_len("ledger") < 2 {
        tokio::task::yield_now().await;
    }
    assert!(store.revoke("ledger"), "a holds the lock");
    let lost = within(holder).await.unwrap();
    assert!(
        matches!(
            lost,
            Err(LockError::LockLost {
                reason: LossReason::Deleted,
                ..
            })
        ),
        "{lost:?}"
    );
    assert!(lost.unwrap_err().is_retryable(), "the session lives on");
    let _next = within(waiter).await.unwrap().unwrap();
}

#[tokio::test]
async fn with_lock_reports_a_loss_that_comes_as_the_future_completes() {
    let store = MemoryStore::new();
    let a = store.connect().unwrap();
    // The hold is deleted in the future's last poll: the output is ready, the unlock finds
    // the lock gone.
    let outcome = within(a.with_lock("ledger", async {
        assert!(store.revoke("ledger"));
        7
    }))
    .await;
    assert!(
        matches!(
            outcome,
            Err(LockError::LockLost {
                reason: LossReason::Deleted,
                ..
            })
        ),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn with_lock_fails_before_running_when_the_lock_cannot_be_taken() {
    let store = MemoryStore::new();
    let a = store.connect().unwrap();
    let (dropped_tx, mut dropped) = oneshot::channel();
    let signal = DropSignal(Some(dropped_tx));
    let outcome = a
        .with_lock("", async move {
            let _signal = signal;
            panic!("the future must not run");
        })
        .await;
    assert!(matches!(outcome, Err(LockError::InvalidName { .. })));
    assert_eq!(dropped.try_recv(), Ok(()));

    a.expire();
    let outcome = a.with_lock("ledger", async {}).await;
    assert!(outcome.is_err_and(|err| err.is_session_lost()));
}

#[tokio::test]
async fn a_dropped_with_lock_releases() {
    let store = MemoryStore::new();
    let (a, b) = (store.connect().unwrap(), store.connect().unwrap());
    let (started_tx, started) = oneshot::channel();
    let session = a.clone();
    let task = tokio::spawn(async move {
        session
            .with_lock("ledger", async move {
                let _ = started_tx.send(());
                std::future::pending::<()>().await
            })
            .await
    });
    within(started).await.unwrap();
    task.abort();
    assert!(within(task).await.unwrap_err().is_cancelled());
    let _next = within(b.lock("ledger")).await.unwrap();
}

#[tokio::test]
async fn with_lock_works_on_trait_objects() {
    let store = MemoryStore::new();
    let arc: Arc<dyn DistributedLock> = Arc::new(store.connect().unwrap());
    assert_eq!(arc.with_lock("x", async { 1 }).await.unwrap(), 1);
    let object: &dyn DistributedLock = &*arc;
    assert_eq!(object.with_lock("x", async { 2 }).await.unwrap(), 2);
    let coordination: Arc<dyn Coordination> = Arc::new(store.connect().unwrap());
    assert_eq!(coordination.with_lock("x", async { 3 }).await.unwrap(), 3);
}

/// Generic over every session trait: takes, checks and releases one of each, then closes
/// the session.
async fn use_every_primitive<S: Coordination>(session: S, store: &MemoryStore) {
    let guard = session.lock("pointer/lock").await.unwrap();
    assert!(session.try_lock("pointer/lock").await.unwrap().is_none());
    guard.unlock().await.unwrap();

    let leadership = session.campaign("pointer/lead", b"me").await.unwrap();
    let leader = session.leader("pointer/lead").await.unwrap().unwrap();
    assert_eq!(leader.value(), b"me");
    let mut watch = session.observe("pointer/lead").await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap(), Some(leader));
    leadership.resign().await.unwrap();

    let read = session.read("pointer/rw").await.unwrap();
    assert!(session.try_read("pointer/rw").await.unwrap().is_some());
    assert!(session.try_write("pointer/rw").await.unwrap().is_none());
    read.unlock().await.unwrap();
    session
        .write("pointer/rw")
        .await
        .unwrap()
        .unlock()
        .await
        .unwrap();

    let permit = session.acquire("pointer/sem", 1).await.unwrap();
    assert!(session
        .try_acquire("pointer/sem", 1)
        .await
        .unwrap()
        .is_none());
    permit.unlock().await.unwrap();

    assert_eq!(store.active_names(), 0);
    session.close().await.unwrap();
    assert!(session
        .lock("pointer/lock")
        .await
        .unwrap_err()
        .is_session_lost());
}

fn is_coordination<S: Coordination + ?Sized>() {}

#[tokio::test]
async fn the_session_traits_hold_for_pointers() {
    let store = MemoryStore::new();
    use_every_primitive(&store.connect().unwrap(), &store).await;
    use_every_primitive(Arc::new(store.connect().unwrap()), &store).await;
    use_every_primitive(Box::new(store.connect().unwrap()), &store).await;

    let boxed: Box<dyn Coordination> = Box::new(store.connect().unwrap());
    use_every_primitive(boxed, &store).await;
    let shared: Arc<dyn Coordination> = Arc::new(store.connect().unwrap());
    use_every_primitive(&shared, &store).await;
    let shared: Arc<dyn Coordination> = Arc::new(store.connect().unwrap());
    use_every_primitive(shared, &store).await;
    let session = store.connect().unwrap();
    let object: &dyn Coordination = &session;
    use_every_primitive(object, &store).await;

    // Pointers coerce to trait objects as before, and nest.
    is_coordination::<Arc<Box<&MemoryLock>>>();
    let plain: Arc<dyn DistributedLock> = Arc::new(store.connect().unwrap());
    let nested: Box<dyn DistributedLock> = Box::new(Arc::clone(&plain));
    let guard = nested.lock("nested").await.unwrap();
    assert!(plain.try_lock("nested").await.unwrap().is_none());
    guard.unlock().await.unwrap();
}

#[tokio::test]
async fn sessions_and_tables_have_debug() {
    let store = MemoryStore::new();
    let session = store.connect().unwrap();
    let _guard = session.lock("debugged").await.unwrap();
    assert!(
        format!("{session:?}").starts_with("MemoryLock {"),
        "{session:?}"
    );
    assert_eq!(format!("{store:?}"), "MemoryStore { active_names: 1 }");
    let table = locksmith_api::LockTable::<u64>::new();
    let _ticket = table.try_acquire("a", 1).unwrap();
    assert_eq!(format!("{table:?}"), "LockTable { active_names: 1, .. }");
}

/// A panic in the future unwinds through `with_lock`: the guard is dropped on the way out,
/// so the lock passes on, and nothing is poisoned (the same session takes it again).
#[tokio::test]
async fn a_panicking_with_lock_future_releases_and_poisons_nothing() {
    let store = MemoryStore::new();
    let (a, b) = (store.connect().unwrap(), store.connect().unwrap());
    let (started_tx, started) = oneshot::channel();
    let waiter = tokio::spawn({
        let b = b.clone();
        async move {
            let _ = within(started).await;
            b.lock("ledger").await.map(|guard| guard.fencing_token())
        }
    });
    let session = a.clone();
    let task = tokio::spawn(async move {
        session
            .with_lock("ledger", async move {
                let _ = started_tx.send(());
                tokio::task::yield_now().await;
                panic!("the work failed");
            })
            .await
    });
    assert!(within(task).await.unwrap_err().is_panic());
    let token = within(waiter)
        .await
        .unwrap()
        .expect("the waiter gets the lock");
    assert_eq!(
        store.queue_len("ledger"),
        0,
        "the waiter's guard is gone too"
    );
    let again = within(a.with_lock("ledger", async { 7 })).await.unwrap();
    assert_eq!(again, 7);
    let next = within(b.lock("ledger")).await.unwrap();
    assert!(next.fencing_token() > token);
}
