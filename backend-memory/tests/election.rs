//! Memory-only leader election: fault injection on leaders, candidates and observers.

use std::future::Future;
use std::time::Duration;

use locksmith_api::{
    DistributedLock, LeaderElection, LeaderState, LeaderWatch, Leadership, LockError, LossReason,
};
use locksmith_memory::{MemoryLock, MemoryStore};
use tokio::task::JoinHandle;

/// Spawns `session.campaign(name, value)` and returns once it waits in the queue.
async fn queued_candidate(
    store: &MemoryStore,
    session: &MemoryLock,
    name: &str,
    value: &str,
) -> JoinHandle<Result<Leadership, LockError>> {
    let before = store.queue_len(name);
    let (session, owned, value) = (session.clone(), name.to_owned(), value.to_owned());
    let candidate = tokio::spawn(async move { session.campaign(&owned, value.as_bytes()).await });
    while store.queue_len(name) == before {
        tokio::task::yield_now().await;
    }
    candidate
}

async fn next(watch: &mut LeaderWatch) -> LeaderState {
    match tokio::time::timeout(Duration::from_secs(20), watch.next()).await {
        Ok(Some(Ok(state))) => state,
        other => panic!("expected an observed state, got {other:?}"),
    }
}

/// Reads `watch` until it shows `expected`.
async fn until(watch: &mut LeaderWatch, expected: &LeaderState) {
    while next(watch).await != *expected {}
}

#[tokio::test]
async fn expiring_the_leaders_session_elects_the_next_candidate() {
    let store = MemoryStore::new();
    let (a, b, o) = (
        store.connect().unwrap(),
        store.connect().unwrap(),
        store.connect().unwrap(),
    );
    let leadership = a.campaign("job", b"a").await.unwrap();
    let mut watch = o.observe("job").await.unwrap();
    assert_eq!(next(&mut watch).await, Some(leadership.info()));
    let candidate = queued_candidate(&store, &b, "job", "b").await;

    a.expire();
    assert_eq!(leadership.lost().await, LossReason::Expired);
    let next_leader = candidate.await.unwrap().unwrap();
    assert!(next_leader.fencing_token() > leadership.fencing_token());
    assert_eq!(next(&mut watch).await, Some(next_leader.info()));
    match leadership.proclaim(b"stale").await {
        Err(LockError::LockLost { reason, .. }) => assert_eq!(reason, LossReason::Expired),
        other => panic!("{other:?}"),
    }
    match leadership.resign().await {
        Err(LockError::LockLost { reason, .. }) => assert_eq!(reason, LossReason::Expired),
        other => panic!("{other:?}"),
    }
    assert!(
        !next_leader.is_lost(),
        "the stale resign left the new leader alone"
    );
    match a.campaign("job", b"again").await {
        Err(LockError::SessionLost { reason, .. }) => assert_eq!(reason, LossReason::Expired),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_keepalive_pause_longer_than_the_ttl_ends_leadership() {
    let store = MemoryStore::new();
    let a = store.connect_with_ttl(Duration::from_secs(3)).unwrap();
    let (b, o) = (store.connect().unwrap(), store.connect().unwrap());
    let leadership = a.campaign("job", b"a").await.unwrap();
    let mut watch = o.observe("job").await.unwrap();
    assert_eq!(next(&mut watch).await, Some(leadership.info()));
    let candidate = queued_candidate(&store, &b, "job", "b").await;

    // A short pause changes nothing.
    a.pause_keepalive(Duration::from_secs(1));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!leadership.is_lost());
    assert!(!candidate.is_finished());

    let started = tokio::time::Instant::now();
    a.pause_keepalive(Duration::from_secs(10));
    assert_eq!(leadership.lost().await, LossReason::Expired);
    assert!(started.elapsed() <= Duration::from_secs(3));
    let next_leader = candidate.await.unwrap().unwrap();
    assert!(next_leader.fencing_token() > leadership.fencing_token());
    assert_eq!(next(&mut watch).await, Some(next_leader.info()));
}

#[tokio::test]
async fn revoking_the_leader_hands_over_or_leaves_the_name_vacant() {
    let store = MemoryStore::new();
    let (a, b, o) = (
        store.connect().unwrap(),
        store.connect().unwrap(),
        store.connect().unwrap(),
    );
    let first = a.campaign("job", b"a").await.unwrap();
    let mut watch = o.observe("job").await.unwrap();
    assert_eq!(next(&mut watch).await, Some(first.info()));
    let candidate = queued_candidate(&store, &b, "job", "b").await;

    assert!(store.revoke("job"));
    assert_eq!(first.lost().await, LossReason::Deleted);
    let second = candidate.await.unwrap().unwrap();
    assert!(second.fencing_token() > first.fencing_token());
    assert_eq!(next(&mut watch).await, Some(second.info()));
    assert!(first.proclaim(b"stale").await.is_err());
    second.proclaim(b"b2").await.unwrap();
    assert_eq!(next(&mut watch).await, Some(second.info()));
    assert_eq!(a.ended(), None, "revoking leaves the session alive");

    assert!(store.revoke("job"));
    assert_eq!(second.lost().await, LossReason::Deleted);
    assert_eq!(next(&mut watch).await, None);
    assert_eq!(o.leader("job").await.unwrap(), None);
    // The revoked sessions campaign again as new candidates.
    let third = a.campaign("job", b"a3").await.unwrap();
    assert!(third.fencing_token() > second.fencing_token());
    assert_eq!(next(&mut watch).await, Some(third.info()));
}

#[tokio::test]
async fn a_candidate_whose_session_expires_leaves_the_queue() {
    let store = MemoryStore::new();
    let (a, b, c) = (
        store.connect().unwrap(),
        store.connect().unwrap(),
        store.connect().unwrap(),
    );
    let leadership = a.campaign("job", b"a").await.unwrap();
    let doomed = queued_candidate(&store, &b, "job", "b").await;
    let next_one = queued_candidate(&store, &c, "job", "c").await;
    b.expire();
    match doomed.await.unwrap() {
        Err(LockError::SessionLost { reason, .. }) => assert_eq!(reason, LossReason::Expired),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.queue_len("job"), 2);
    leadership.resign().await.unwrap();
    assert_eq!(next_one.await.unwrap().unwrap().value(), b"c");
}

#[tokio::test]
async fn observers_end_when_their_session_expires_or_is_dropped() {
    let store = MemoryStore::new();
    let (expiring, dropped) = (store.connect().unwrap(), store.connect().unwrap());
    let mut first = expiring.observe("job").await.unwrap();
    let mut second = dropped.observe("job").await.unwrap();
    assert_eq!(next(&mut first).await, None);
    assert_eq!(next(&mut second).await, None);

    expiring.expire();
    match first.next().await {
        Some(Err(LockError::SessionLost { reason, .. })) => {
            assert_eq!(reason, LossReason::Expired)
        }
        other => panic!("{other:?}"),
    }
    assert!(first.next().await.is_none());

    drop(dropped);
    match second.next().await {
        Some(Err(LockError::SessionLost { reason, .. })) => assert_eq!(reason, LossReason::Closed),
        other => panic!("{other:?}"),
    }
    assert!(second.next().await.is_none());
}

#[tokio::test]
async fn a_lock_holder_leads_with_an_empty_value() {
    let store = MemoryStore::new();
    let (a, o) = (store.connect().unwrap(), store.connect().unwrap());
    let mut watch = o.observe("job").await.unwrap();
    assert_eq!(next(&mut watch).await, None);
    let guard = a.lock("job").await.unwrap();
    let expected = o.leader("job").await.unwrap();
    let info = expected.clone().unwrap();
    assert_eq!(info.key(), guard.key());
    assert_eq!(info.value(), b"");
    assert_eq!(info.fencing_token(), guard.fencing_token());
    assert_eq!(next(&mut watch).await, expected);
    guard.unlock().await.unwrap();
    assert_eq!(next(&mut watch).await, None);
}

#[tokio::test]
async fn the_leaders_key_mirrors_the_etcd_layout() {
    let a = MemoryStore::new().connect().unwrap();
    let leadership = a.campaign("jobs/a", b"v").await.unwrap();
    assert_eq!(leadership.key(), format!("jobs/a/{:x}", a.session_id()));
}

/// A withdrawn handoff (a candidate dropped after it was elected, before it resumed) is a
/// change the observers see, and they settle on `leader()`.
#[tokio::test]
async fn observers_see_a_withdrawn_handoff_and_settle_on_the_leader() {
    let store = MemoryStore::new();
    let (a, b, c, o) = (
        store.connect().unwrap(),
        store.connect().unwrap(),
        store.connect().unwrap(),
        store.connect().unwrap(),
    );
    let mut watch = o.observe("job").await.unwrap();
    assert_eq!(next(&mut watch).await, None);
    let first = a.campaign("job", b"a").await.unwrap();
    // Polled once, then left idle: queued, but never resumed.
    let mut idle = Box::pin(b.campaign("job", b"b"));
    let waker = std::task::Waker::noop();
    let polled = idle
        .as_mut()
        .poll(&mut std::task::Context::from_waker(waker));
    assert!(polled.is_pending());
    let last = queued_candidate(&store, &c, "job", "c").await;
    until(&mut watch, &Some(first.info())).await;

    drop(first);
    let handed = o
        .leader("job")
        .await
        .unwrap()
        .expect("handed to the idle candidate");
    assert_eq!(handed.value(), b"b");
    assert_eq!(next(&mut watch).await, Some(handed.clone()));
    drop(idle);
    let leader = last.await.unwrap().unwrap();
    assert!(leader.fencing_token() > handed.fencing_token());
    assert_eq!(next(&mut watch).await, Some(leader.info()));
    assert_eq!(o.leader("job").await.unwrap(), Some(leader.info()));
}
