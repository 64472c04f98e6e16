//! Memory-only behaviour of reader-writer locks and semaphores: loss through fault injection
//! (expire, a stalled keepalive, revoke) and the independence of the queue families.

use std::time::Duration;

use locksmith_api::{
    DistributedLock, DistributedRwLock, DistributedSemaphore, LockError, LockGuard, LossReason,
};
use locksmith_memory::{MemoryLock, MemoryStore};
use tokio::task::JoinHandle;

async fn until(mut done: impl FnMut() -> bool) {
    while !done() {
        tokio::task::yield_now().await;
    }
}

fn spawn_write(session: &MemoryLock, name: &str) -> JoinHandle<Result<LockGuard, LockError>> {
    let (session, name) = (session.clone(), name.to_owned());
    tokio::spawn(async move { session.write(&name).await })
}

fn spawn_permit(
    session: &MemoryLock,
    name: &str,
    limit: u32,
) -> JoinHandle<Result<LockGuard, LockError>> {
    let (session, name) = (session.clone(), name.to_owned());
    tokio::spawn(async move { session.acquire(&name, limit).await })
}

async fn expect_lost(guard: LockGuard, expected: LossReason) {
    assert_eq!(guard.lost().await, expected);
    match guard.unlock().await {
        Err(LockError::LockLost { reason, .. }) => assert_eq!(reason, expected),
        other => panic!("unlock of a lost guard gave {other:?}"),
    }
}

/// `expire` ends every read, write and permit hold of the session and fails its waiters;
/// the next waiters are granted with greater tokens.
#[tokio::test]
async fn expire_loses_reads_writes_and_permits() {
    let store = MemoryStore::new();
    let (a, b) = (store.connect().unwrap(), store.connect().unwrap());
    let read = a.read("rw").await.unwrap();
    let write = a.write("other").await.unwrap();
    let permit = a.acquire("sem", 1).await.unwrap();
    let _b_holds = b.acquire("sem2", 1).await.unwrap();
    let a_waits = spawn_permit(&a, "sem2", 1);
    let writer = spawn_write(&b, "rw");
    let permit_waiter = spawn_permit(&b, "sem", 1);
    until(|| {
        store.rwlock_queue_len("rw") == 2
            && store.semaphore_queue_len("sem") == 2
            && store.semaphore_queue_len("sem2") == 2
    })
    .await;
    let highest = [&read, &write, &permit].map(|g| g.fencing_token());
    a.expire();
    match a_waits.await.unwrap() {
        Err(LockError::SessionLost { reason, .. }) => assert_eq!(reason, LossReason::Expired),
        other => panic!("{other:?}"),
    }
    let writer = writer.await.unwrap().unwrap();
    let permit_next = permit_waiter.await.unwrap().unwrap();
    assert!(highest.iter().all(|t| *t < writer.fencing_token()));
    assert!(highest.iter().all(|t| *t < permit_next.fencing_token()));
    expect_lost(read, LossReason::Expired).await;
    expect_lost(write, LossReason::Expired).await;
    expect_lost(permit, LossReason::Expired).await;
    match a.read("rw").await {
        Err(err) => assert!(err.is_session_lost()),
        Ok(_) => panic!("an expired session read"),
    }
}

/// A keepalive stalled past the TTL expires the session, on tokio's paused clock.
#[tokio::test(start_paused = true)]
async fn stalled_keepalive_loses_permits_and_reads() {
    let store = MemoryStore::new();
    let a = store.connect_with_ttl(Duration::from_secs(3)).unwrap();
    let b = store.connect().unwrap();
    let permit = a.acquire("sem", 2).await.unwrap();
    let read = a.read("rw").await.unwrap();
    a.pause_keepalive(Duration::from_secs(10));
    expect_lost(permit, LossReason::Expired).await;
    expect_lost(read, LossReason::Expired).await;
    assert!(b.try_write("rw").await.unwrap().is_some());
    assert_eq!(store.semaphore_queue_len("sem"), 0);
}

/// `revoke_rwlock` removes every current holder (all readers here) with
/// `LossReason::Deleted`; the waiting writer is granted; lock `rw` is not touched.
#[tokio::test]
async fn revoke_rwlock_removes_all_readers() {
    let store = MemoryStore::new();
    let (a, b) = (store.connect().unwrap(), store.connect().unwrap());
    let lock = a.lock("rw").await.unwrap();
    let readers = [a.read("rw").await.unwrap(), b.read("rw").await.unwrap()];
    let writer = spawn_write(&b, "rw");
    until(|| store.rwlock_queue_len("rw") == 3).await;
    assert_eq!(store.revoke_rwlock("rw"), 2);
    let writer = writer.await.unwrap().unwrap();
    for reader in readers {
        expect_lost(reader, LossReason::Deleted).await;
    }
    assert!(!lock.is_lost(), "revoking rwlock `rw` touched lock `rw`");
    assert_eq!(store.revoke_rwlock("rw"), 1);
    expect_lost(writer, LossReason::Deleted).await;
    assert_eq!(store.revoke_rwlock("rw"), 0);
    assert!(!store.revoke("nothing"));
    lock.unlock().await.unwrap();
}

/// `revoke_permits` removes every permit holder; as many waiters as permits are granted.
#[tokio::test]
async fn revoke_permits_frees_every_permit() {
    let store = MemoryStore::new();
    let (a, b) = (store.connect().unwrap(), store.connect().unwrap());
    let held = [
        a.acquire("sem", 2).await.unwrap(),
        a.acquire("sem", 2).await.unwrap(),
    ];
    let waiters = [spawn_permit(&b, "sem", 2), spawn_permit(&b, "sem", 2)];
    until(|| store.semaphore_queue_len("sem") == 4).await;
    assert!(!store.revoke("sem"), "lock `sem` has no holder");
    assert_eq!(store.revoke_permits("sem"), 2);
    for guard in held {
        expect_lost(guard, LossReason::Deleted).await;
    }
    for waiter in waiters {
        waiter.await.unwrap().unwrap().unlock().await.unwrap();
    }
    assert_eq!(store.active_names(), 0);
}

/// Lock, reader-writer lock and semaphore `x` are three queues; all are freed when unused.
#[tokio::test]
async fn families_are_independent_and_freed() {
    let store = MemoryStore::new();
    let a = store.connect().unwrap();
    let guards = [
        a.lock("x").await.unwrap(),
        a.write("x").await.unwrap(),
        a.acquire("x", 1).await.unwrap(),
    ];
    assert_eq!(store.active_names(), 3);
    assert_eq!(
        (
            store.queue_len("x"),
            store.rwlock_queue_len("x"),
            store.semaphore_queue_len("x")
        ),
        (1, 1, 1)
    );
    let keys: Vec<&str> = guards.iter().map(LockGuard::key).collect();
    assert_eq!(keys[0], format!("x/{:x}", a.session_id()));
    assert!(keys[1].starts_with("x/write/") && keys[2].starts_with("x/permit/"));
    drop(guards);
    assert_eq!(store.active_names(), 0);
}
