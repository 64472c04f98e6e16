//! Counting semaphores on a real etcd: the limit, FIFO, limits that disagree, and cleanup of
//! every path that gives a permit or a wait up.

use crate::common;

use std::time::Duration;

use common::{within, Etcd};
use locksmith_api::{DistributedLock, DistributedSemaphore, LockError};
use locksmith_etcd::etcd_client::GetOptions;

/// How long a blocked call is watched to make sure it stays blocked.
const QUIET: Duration = Duration::from_millis(300);

/// The semaphore keys of `name` (escaped as the backend writes them).
async fn permits(etcd: &Etcd, escaped: &str) -> Vec<(String, String)> {
    let prefix = format!("{}\u{1f}semaphore/{escaped}/", etcd.config.namespace);
    let reply = etcd
        .raw()
        .await
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    reply
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap()[prefix.len()..].to_owned(),
                kv.value_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn permits_become(etcd: &Etcd, escaped: &str, count: usize) {
    within("the permits to settle", async {
        while permits(etcd, escaped).await.len() != count {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_limit_permits_in_fifo_order() {
    let etcd = Etcd::new();
    let (a, b, c) = (
        etcd.session().await,
        etcd.session().await,
        etcd.session().await,
    );
    // One session may hold several permits.
    let p1 = a.acquire("pool", 2).await.unwrap();
    let p2 = a.acquire("pool", 2).await.unwrap();
    let stored = permits(&etcd, "pool").await;
    assert_eq!(stored.len(), 2);
    assert!(
        stored.iter().all(|(_, value)| value.starts_with("2 ")),
        "{stored:?}"
    );
    assert!(b.try_acquire("pool", 2).await.unwrap().is_none());
    permits_become(&etcd, "pool", 2).await;
    let first = {
        let b = b.clone();
        tokio::spawn(async move { b.acquire("pool", 2).await })
    };
    permits_become(&etcd, "pool", 3).await;
    let second = {
        let c = c.clone();
        tokio::spawn(async move { c.acquire("pool", 2).await })
    };
    permits_become(&etcd, "pool", 4).await;
    tokio::time::sleep(QUIET).await;
    assert!(
        !first.is_finished() && !second.is_finished(),
        "more than 2 permits"
    );
    let released = p2.fencing_token().max(p1.fencing_token());
    p2.unlock().await.unwrap();
    let p3 = within("the first waiter", first).await.unwrap().unwrap();
    assert!(p3.fencing_token() > released);
    tokio::time::sleep(QUIET).await;
    assert!(!second.is_finished(), "a third permit");
    drop(p1);
    let p4 = within("the second waiter", second).await.unwrap().unwrap();
    p3.unlock().await.unwrap();
    p4.unlock().await.unwrap();
    permits_become(&etcd, "pool", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_must_agree_and_be_positive() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    assert!(matches!(
        a.acquire("pool", 0).await,
        Err(LockError::InvalidLimit { limit: 0, .. })
    ));
    assert!(matches!(
        a.try_acquire("pool", 0).await,
        Err(LockError::InvalidLimit { .. })
    ));
    let held = a.acquire("pool", 3).await.unwrap();
    let err = b.acquire("pool", 5).await.unwrap_err();
    assert!(
        matches!(
            err,
            LockError::LimitMismatch {
                limit: 5,
                in_use: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        b.try_acquire("pool", 1).await,
        Err(LockError::LimitMismatch { in_use: 3, .. })
    ));
    permits_become(&etcd, "pool", 1).await;
    held.unlock().await.unwrap();
    // Once nobody uses the name, another limit is fine.
    let again = b.acquire("pool", 5).await.unwrap();
    again.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_waits_and_closed_sessions_leave_no_permit() {
    let etcd = Etcd::new();
    let (a, b, c) = (
        etcd.session().await,
        etcd.session().await,
        etcd.session().await,
    );
    let held = a.acquire("pool", 1).await.unwrap();
    for cut in [0u64, 1, 3, 10, 50] {
        let _ = tokio::time::timeout(Duration::from_millis(cut), b.acquire("pool", 1)).await;
        assert!(b.try_acquire("pool", 1).await.unwrap().is_none());
    }
    permits_become(&etcd, "pool", 1).await;
    let waiting = {
        let c = c.clone();
        tokio::spawn(async move { c.acquire("pool", 1).await })
    };
    permits_become(&etcd, "pool", 2).await;
    c.close().await.unwrap();
    let err = within("the waiter to fail", waiting)
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.is_session_lost(), "{err}");
    permits_become(&etcd, "pool", 1).await;
    held.unlock().await.unwrap();
    permits_become(&etcd, "pool", 0).await;
    let free = b.try_acquire("pool", 1).await.unwrap().unwrap();
    free.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_names_never_share_keys_with_locks_or_each_other() {
    let etcd = Etcd::new();
    let a = etcd.session().await;
    let nested = a.acquire("a/b", 1).await.unwrap();
    let outer = a.acquire("a", 1).await.unwrap();
    let lock = a.lock("a").await.unwrap();
    assert_eq!(permits(&etcd, "a").await.len(), 1);
    assert_eq!(permits(&etcd, "a%2Fb").await.len(), 1);
    assert!(
        etcd.keys("a").await.len() == 1,
        "the mutex a sees only its own key"
    );
    nested.unlock().await.unwrap();
    outer.unlock().await.unwrap();
    lock.unlock().await.unwrap();
}

/// A long queue on a small limit: every waiter is served, in order, and no more than the limit
/// at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_queue_is_served_in_order_within_the_limit() {
    const WAITERS: usize = 12;
    let etcd = Etcd::new();
    let holder = etcd.session().await;
    let mut sessions = Vec::new();
    for _ in 0..WAITERS {
        sessions.push(etcd.session().await);
    }
    let first = holder.acquire("pool", 2).await.unwrap();
    let second = holder.acquire("pool", 2).await.unwrap();
    let inside = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(2));
    let order = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (index, session) in sessions.iter().enumerate() {
        let (session, inside, order) = (session.clone(), inside.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let permit = session.acquire("pool", 2).await.unwrap();
            let now = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            assert!(now <= 2, "{now} permits at once");
            order.lock().push(index);
            tokio::time::sleep(Duration::from_millis(5)).await;
            inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            permit.unlock().await.unwrap();
        }));
        permits_become(&etcd, "pool", index + 3).await;
    }
    inside.fetch_sub(2, std::sync::atomic::Ordering::SeqCst);
    first.unlock().await.unwrap();
    second.unlock().await.unwrap();
    for task in tasks {
        within("a waiter", task).await.unwrap();
    }
    let order = order.lock().clone();
    // Two at a time: each waiter starts no later than one place after its turn.
    for (position, index) in order.iter().enumerate() {
        assert!(position.abs_diff(*index) <= 1, "order {order:?}");
    }
    permits_become(&etcd, "pool", 0).await;
}

/// A permit held at the head of the queue for the whole test does not stall the waiters far
/// behind it: the other permits turn over among them, and each is served while it still
/// holds. (A waiter far back that waited for the delete of one key ahead of it, as a mutex's
/// does, would wait here for the long holder.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_hold_at_the_head_does_not_stall_the_queue() {
    const WAITERS: usize = 14;
    let etcd = Etcd::new();
    let holder = etcd.session().await;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(etcd.session().await);
    }
    let long = holder.acquire("turnover", 3).await.unwrap();
    let short: Vec<_> = vec![
        holder.acquire("turnover", 3).await.unwrap(),
        holder.acquire("turnover", 3).await.unwrap(),
    ];
    let mut tasks = Vec::new();
    for index in 0..WAITERS {
        let session = sessions[index % sessions.len()].clone();
        tasks.push(tokio::spawn(async move {
            let permit = session.acquire("turnover", 3).await.unwrap();
            // Out of order: later waiters release sooner.
            let pause = (WAITERS - index) % 4;
            tokio::time::sleep(Duration::from_millis(pause as u64)).await;
            permit.unlock().await.unwrap();
        }));
        permits_become(&etcd, "turnover", index + 4).await;
    }
    for permit in short {
        permit.unlock().await.unwrap();
    }
    for task in tasks {
        within("a waiter behind a long hold", task).await.unwrap();
    }
    assert!(!long.is_lost());
    long.unlock().await.unwrap();
    permits_become(&etcd, "turnover", 0).await;
}
