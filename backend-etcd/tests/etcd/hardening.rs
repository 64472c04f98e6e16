//! Regression tests of issue 10's findings on cleanup paths: each drops, cuts or refuses a
//! release or a withdrawal at the worst moment, against a real etcd, and checks that the lock
//! is never held twice and nothing is left behind.

use crate::common;

use std::time::Duration;

use common::{keys_become, within, Etcd};
use locksmith_api::{DistributedLock, LockError, LossReason};
use locksmith_etcd::etcd_client::{ConnectOptions, Permission, PutOptions};
use locksmith_etcd::testing::{enable_auth, TcpProxy};
use locksmith_etcd::EtcdConfig;
use locksmith_etcd::EtcdLock;

/// Finding 1: a key of this session found in place (here: planted on its lease, as a stale
/// hold whose delete is still in flight would be) is never adopted. The new hold gets a key
/// of its own with a newer revision, so tokens strictly increase within a session too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_key_of_the_session_is_never_adopted() {
    let etcd = Etcd::new();
    let a = etcd.session().await;
    let key = format!("{}adopt/{:x}", etcd.config.namespace, a.lease_id());
    let planted = etcd
        .raw()
        .await
        .put(
            key.as_str(),
            "",
            Some(PutOptions::new().with_lease(a.lease_id())),
        )
        .await
        .unwrap();
    let planted_revision = planted.header().unwrap().revision();
    let guard = within("lock", a.lock("adopt")).await.unwrap();
    assert_eq!(guard.key(), key);
    assert!(
        guard.fencing_token().get() > planted_revision as u64,
        "adopted the stale key: token {} vs planted {planted_revision}",
        guard.fencing_token()
    );
    let now = etcd.raw().await.get(key.as_str(), None).await.unwrap();
    assert_eq!(
        now.kvs()[0].create_revision() as u64,
        guard.fencing_token().get()
    );
    guard.unlock().await.unwrap();
    keys_become(&etcd, "adopt", vec![]).await;
}

/// Finding 1, the reported sequence: an `unlock` cancelled by a timeout while etcd stalls, then
/// a re-lock from the same session. The re-lock waits for the release, queues behind the other
/// session's waiter with a fresh key, and nobody ever holds twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relock_after_a_cancelled_unlock_never_holds_twice() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let first = a.lock("twice").await.unwrap();
    let first_token = first.fencing_token();
    let b_waiter = etcd.queued_waiter(&b, "twice").await;
    let again = {
        let stopped = etcd.server.stop().unwrap();
        let cancelled = tokio::time::timeout(Duration::from_millis(150), first.unlock()).await;
        assert!(
            cancelled.is_err(),
            "unlock completed on a stopped etcd: {cancelled:?}"
        );
        // The release is still outstanding: the session's ticket on the name stays taken.
        assert!(a.try_lock("twice").await.unwrap().is_none());
        let a2 = a.clone();
        let again = tokio::spawn(async move { a2.lock("twice").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(stopped);
        again
    };
    let b_guard = within("b to acquire", b_waiter).await.unwrap().unwrap();
    assert!(b_guard.fencing_token() > first_token);
    // a's new lock queued behind b with a key of its own: it must still be waiting.
    etcd.wait_queued("twice", 2).await;
    assert!(!again.is_finished(), "a acquired while b holds");
    assert!(!b_guard.is_lost());
    let b_token = b_guard.fencing_token();
    b_guard.unlock().await.unwrap();
    let a_guard = within("a to acquire again", again).await.unwrap().unwrap();
    assert!(a_guard.fencing_token() > b_token);
    a_guard.unlock().await.unwrap();
    keys_become(&etcd, "twice", vec![]).await;
}

/// Finding 2: a cancelled `unlock()` still releases, in the background: the waiter of another
/// session acquires, and no key is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_unlock_still_releases() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let held = a.lock("cancel-unlock").await.unwrap();
    let waiter = etcd.queued_waiter(&b, "cancel-unlock").await;
    {
        let _stopped = etcd.server.stop().unwrap();
        let cancelled = tokio::time::timeout(Duration::from_millis(150), held.unlock()).await;
        assert!(
            cancelled.is_err(),
            "unlock finished with the server stopped: {cancelled:?}"
        );
    }
    let next = within("the waiter to acquire", waiter)
        .await
        .unwrap()
        .unwrap();
    let key = next.key().to_owned();
    keys_become(&etcd, "cancel-unlock", vec![key]).await;
    next.unlock().await.unwrap();
}

/// Finding 3: `try_lock` dropped while it withdraws after finding the lock taken. The
/// withdrawal's request is lost on the way (the connection breaks), and the caller's future is
/// dropped meanwhile: the withdrawal goes on, and no waiter key is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_lock_dropped_while_withdrawing_leaves_no_key() {
    const TXNS: &str = "etcd_mvcc_txn_total";
    let etcd = Etcd::with_ttl(2);
    let proxy = TcpProxy::start(&etcd.server.endpoint()).await.unwrap();
    let a = EtcdLock::connect(&EtcdConfig {
        endpoints: vec![proxy.endpoint()],
        ..etcd.config.clone()
    })
    .await
    .unwrap();
    let b = etcd.session().await;
    let held = b.lock("try").await.unwrap();
    let holder_key = held.key().to_owned();
    let a_key = format!("{}try/{:x}", etcd.config.namespace, a.lease_id());
    let mut raw = etcd.raw().await;
    for _ in 0..5 {
        // a's queue request reaches etcd but its answer does not: a's key is in place while a
        // still waits to hear of it (a try_lock that sees the lock held withdraws at once).
        proxy.swallow_replies(true);
        let attempt = {
            let a = a.clone();
            tokio::spawn(async move { a.try_lock("try").await.map(|guard| guard.is_some()) })
        };
        // The moment a's key is in place, a is retrying its queue request or withdrawing:
        // from then on its requests are lost too, and the caller gives up.
        within("a's key to appear", async {
            while raw
                .get(a_key.as_str(), None)
                .await
                .unwrap()
                .kvs()
                .is_empty()
            {}
        })
        .await;
        proxy.swallow_requests(true);
        tokio::time::sleep(Duration::from_millis(20)).await;
        attempt.abort();
        assert!(
            !matches!(attempt.await, Ok(Ok(true))),
            "try_lock took a held lock"
        );
        proxy.swallow_requests(false);
        proxy.swallow_replies(false);
        proxy.cut_connections();
        keys_become(&etcd, "try", vec![holder_key.clone()]).await;
        // The withdrawal's delete has landed, but its reply may still be on the way, and until
        // it arrives the name stays busy in a's session (a try_lock then answers "taken"
        // without asking etcd). Wait until a try_lock of a's reaches etcd again.
        within("a's withdrawal to finish", async {
            loop {
                let before = etcd.server.metric(TXNS).unwrap_or(0.0);
                assert!(a.try_lock("try").await.unwrap().is_none());
                if etcd.server.metric(TXNS).unwrap_or(0.0) > before {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
    held.unlock().await.unwrap();
    let guard = within("a to lock", a.lock("try")).await.unwrap();
    guard.unlock().await.unwrap();
}

/// Finding 5: the release's delete reached etcd but its reply was lost (the connection broke
/// before it arrived). The retry finds the key gone, which is this very release: `Ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_whose_reply_was_lost_is_ok() {
    let etcd = Etcd::new();
    let proxy = TcpProxy::start(&etcd.server.endpoint()).await.unwrap();
    let config = EtcdConfig {
        endpoints: vec![proxy.endpoint()],
        ..etcd.config.clone()
    };
    let a = EtcdLock::connect(&config).await.unwrap();
    let held = a.lock("lost-reply").await.unwrap();
    proxy.swallow_replies(true);
    let unlock = tokio::spawn(held.unlock());
    keys_become(&etcd, "lost-reply", vec![]).await;
    proxy.swallow_replies(false);
    proxy.cut_connections();
    match within("unlock", unlock).await.unwrap() {
        Ok(()) => {}
        Err(err) => panic!("a release that went through reported {err}"),
    }
}

/// Finding 4: a release that etcd refuses for good (here: the user lost its permission on the
/// keys) does not leave the key on a live lease. The session is ended and its lease left to
/// expire or revoked, so the lock passes on; `unlock` says the hold was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_etcd_keeps_refusing_ends_the_session() {
    let etcd = Etcd::with_ttl(2);
    let endpoints = vec![etcd.server.endpoint()];
    enable_auth(&endpoints, "root", "rootpw").await.unwrap();
    let mut admin = locksmith_etcd::etcd_client::Client::connect(
        [etcd.server.client_url()],
        Some(ConnectOptions::new().with_user("root", "rootpw")),
    )
    .await
    .unwrap();
    admin.role_add("locker").await.unwrap();
    admin
        .role_grant_permission(
            "locker",
            Permission::read_write(etcd.config.namespace.as_str()).with_prefix(),
        )
        .await
        .unwrap();
    admin.user_add("alice", "alicepw", None).await.unwrap();
    admin.user_grant_role("alice", "locker").await.unwrap();
    let as_user = |user: &str, password: &str| EtcdConfig {
        user: Some(user.to_owned()),
        password: Some(password.to_owned()),
        ..etcd.config.clone()
    };
    let alice = EtcdLock::connect(&as_user("alice", "alicepw"))
        .await
        .unwrap();
    let root = EtcdLock::connect(&as_user("root", "rootpw")).await.unwrap();
    let held = alice.lock("refused").await.unwrap();
    let waiter = {
        let root = root.clone();
        tokio::spawn(async move { root.lock("refused").await })
    };
    admin
        .role_revoke_permission(
            "locker",
            etcd.config.namespace.as_str(),
            Some(locksmith_etcd::etcd_client::RoleRevokePermissionOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    match within("unlock", held.unlock()).await {
        Err(LockError::LockLost { name, .. }) => assert_eq!(name, "refused"),
        other => panic!("a refused release reported {other:?}"),
    }
    let next = within("the waiter to acquire", waiter)
        .await
        .unwrap()
        .unwrap();
    match alice.lock("other").await {
        Err(err) => assert!(err.is_session_lost(), "{err}"),
        Ok(_) => panic!("the abandoned session still takes locks"),
    }
    next.unlock().await.unwrap();
}

/// Finding 11: a waiter whose own key was deleted fails with `LockLost` naming the lock, not
/// the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_losing_its_key_names_the_lock() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let held = a.lock("named").await.unwrap();
    let waiter = etcd.queued_waiter(&b, "named").await;
    let waiter_key = format!("{}named/{:x}", etcd.config.namespace, b.lease_id());
    etcd.raw().await.delete(waiter_key, None).await.unwrap();
    held.unlock().await.unwrap();
    match within("the waiter", waiter).await.unwrap() {
        Err(LockError::LockLost { name, reason }) => {
            assert_eq!(name, "named");
            assert_eq!(reason, LossReason::Deleted);
        }
        other => panic!("{other:?}"),
    }
}
