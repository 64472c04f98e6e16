//! Memory-only behaviour: TTL and keepalive on tokio's clock, fault injection, memory use.

use std::time::Duration;

use locksmith_api::LockGuard;
use locksmith_api::{DistributedLock, LockError, LossReason};
use locksmith_memory::{MemoryLock, MemoryStore};
use tokio::task::JoinHandle;

/// Spawns `session.lock(name)` and returns once it waits behind one holder.
async fn queued_waiter(
    store: &MemoryStore,
    session: &MemoryLock,
    name: &str,
) -> JoinHandle<Result<LockGuard, LockError>> {
    let (session, owned) = (session.clone(), name.to_owned());
    let waiter = tokio::spawn(async move { session.lock(&owned).await });
    while store.queue_len(name) < 2 {
        tokio::task::yield_now().await;
    }
    waiter
}

#[tokio::test(start_paused = true)]
async fn live_session_outlasts_many_ttls() {
    let store = MemoryStore::new();
    let a = store.connect_with_ttl(Duration::from_secs(3)).unwrap();
    let guard = a.lock("job").await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!guard.is_lost());
    assert_eq!(a.ended(), None);
    guard.unlock().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn keepalive_pause_longer_than_ttl_expires_the_session() {
    let store = MemoryStore::new();
    let a = store.connect_with_ttl(Duration::from_secs(3)).unwrap();
    let b = store.connect().unwrap();
    let guard = a.lock("job").await.unwrap();
    let started = tokio::time::Instant::now();
    a.pause_keepalive(Duration::from_secs(10));
    assert_eq!(guard.lost().await, LossReason::Expired);
    let waited = started.elapsed();
    assert!(waited <= Duration::from_secs(3), "expired after {waited:?}");
    assert!(waited >= Duration::from_secs(2), "expired after {waited:?}");
    let next = b.lock("job").await.unwrap();
    assert!(next.fencing_token() > guard.fencing_token());
    match guard.unlock().await {
        Err(LockError::LockLost { reason, .. }) => assert_eq!(reason, LossReason::Expired),
        other => panic!("{other:?}"),
    }
    match a.lock("other").await {
        Err(LockError::SessionLost { reason, .. }) => assert_eq!(reason, LossReason::Expired),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn keepalive_pause_shorter_than_ttl_is_harmless() {
    let store = MemoryStore::new();
    let a = store.connect_with_ttl(Duration::from_secs(3)).unwrap();
    let guard = a.lock("job").await.unwrap();
    a.pause_keepalive(Duration::from_secs(1));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!guard.is_lost());
    guard.unlock().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn expiry_fails_waiters_of_the_session() {
    let store = MemoryStore::new();
    let (a, b) = (store.connect().unwrap(), store.connect().unwrap());
    let held = b.lock("x").await.unwrap();
    let waiter = queued_waiter(&store, &a, "x").await;
    a.expire();
    match waiter.await.unwrap() {
        Err(err) => assert!(err.is_session_lost(), "{err}"),
        Ok(_) => panic!("waiter of an expired session acquired"),
    }
    assert_eq!(store.queue_len("x"), 1);
    held.unlock().await.unwrap();
    assert_eq!(store.active_names(), 0);
}

#[tokio::test]
async fn revoke_hands_the_lock_to_the_next_waiter() {
    let store = MemoryStore::new();
    let (a, b) = (store.connect().unwrap(), store.connect().unwrap());
    let guard = a.lock("x").await.unwrap();
    let waiter = queued_waiter(&store, &b, "x").await;
    assert!(store.revoke("x"));
    assert_eq!(guard.lost().await, LossReason::Deleted);
    let next = waiter.await.unwrap().unwrap();
    assert!(next.fencing_token() > guard.fencing_token());
    assert!(guard.unlock().await.is_err());
    assert!(
        !next.is_lost(),
        "the stale unlock did not touch the new hold"
    );
    assert_eq!(a.ended(), None, "revoking a hold leaves the session alive");
    assert!(!store.revoke("free"));
}

#[tokio::test]
async fn memory_stays_flat_over_many_names() {
    let store = MemoryStore::new();
    let a = store.connect().unwrap();
    for i in 0..200_000u32 {
        let guard = a.lock(&format!("name/{i}")).await.unwrap();
        drop(guard);
        assert_eq!(store.active_names(), 0);
    }
}

#[tokio::test]
async fn stores_are_separate_and_named_stores_shared() {
    let (one, two) = (MemoryStore::new(), MemoryStore::new());
    let holder = one.connect().unwrap();
    let _held = holder.lock("x").await.unwrap();
    assert!(two
        .connect()
        .unwrap()
        .try_lock("x")
        .await
        .unwrap()
        .is_some());

    let name = "stores_are_separate_and_named_stores_shared";
    let holder = MemoryStore::named(name).connect().unwrap();
    let _held = holder.lock("x").await.unwrap();
    let other = MemoryStore::named(name).connect().unwrap();
    assert!(other.try_lock("x").await.unwrap().is_none());
}

#[tokio::test]
async fn key_mirrors_the_etcd_layout() {
    let a = MemoryStore::new().connect().unwrap();
    let guard = a.lock("jobs/a").await.unwrap();
    assert_eq!(guard.key(), format!("jobs/a/{:x}", a.session_id()));
}

#[tokio::test]
async fn zero_ttl_is_a_config_error() {
    match MemoryStore::new().connect_with_ttl(Duration::ZERO) {
        Err(err @ LockError::InvalidConfig { .. }) => {
            assert!(err.to_string().contains("TTL"), "{err}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn connecting_outside_a_runtime_is_an_error_not_a_panic() {
    match MemoryLock::connect() {
        Err(err @ LockError::InvalidConfig { .. }) => {
            assert!(err.to_string().contains("tokio runtime"), "{err}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn handles_share_the_session_until_the_last_drops() {
    let store = MemoryStore::new();
    let a = store.connect().unwrap();
    let a2 = a.clone();
    let guard = a.lock("x").await.unwrap();
    drop(a);
    assert!(!guard.is_lost(), "another handle keeps the session");
    drop(a2);
    assert_eq!(guard.lost().await, LossReason::Closed);
    assert!(store
        .connect()
        .unwrap()
        .try_lock("x")
        .await
        .unwrap()
        .is_some());
}

/// A TTL past the clock's range is refused at connect (it used to panic the keepalive task).
#[tokio::test(start_paused = true)]
async fn ttl_beyond_the_maximum_is_a_config_error() {
    let store = MemoryStore::new();
    for ttl in [
        Duration::MAX,
        Duration::from_secs(u64::MAX),
        locksmith_memory::MAX_TTL + Duration::from_secs(1),
    ] {
        match store.connect_with_ttl(ttl) {
            Err(err @ LockError::InvalidConfig { .. }) => {
                assert!(err.to_string().contains("at most 9000000000 s"), "{err}")
            }
            other => panic!("{ttl:?}: {other:?}"),
        }
    }
}

/// The longest TTL works: the session outlives its refreshes and expires a TTL after a pause.
#[tokio::test(start_paused = true)]
async fn the_maximum_ttl_keeps_and_expires_the_session() {
    let store = MemoryStore::new();
    let a = store.connect_with_ttl(locksmith_memory::MAX_TTL).unwrap();
    let guard = a.lock("job").await.unwrap();
    tokio::time::sleep(locksmith_memory::MAX_TTL / 2).await;
    assert!(!guard.is_lost());
    a.pause_keepalive(Duration::MAX);
    let lost = tokio::time::timeout(locksmith_memory::MAX_TTL * 2, guard.lost()).await;
    assert_eq!(lost, Ok(LossReason::Expired));
}

/// A pause of `Duration::MAX` expires the session after its TTL (it used to panic the
/// keepalive task, leaving the session alive forever).
#[tokio::test(start_paused = true)]
async fn endless_keepalive_pause_expires_the_session() {
    let store = MemoryStore::new();
    let a = store.connect_with_ttl(Duration::from_secs(3)).unwrap();
    let guard = a.lock("job").await.unwrap();
    let started = tokio::time::Instant::now();
    a.pause_keepalive(Duration::MAX);
    let lost = tokio::time::timeout(Duration::from_secs(60), guard.lost()).await;
    assert_eq!(lost, Ok(LossReason::Expired));
    assert!(started.elapsed() <= Duration::from_secs(3));
}
