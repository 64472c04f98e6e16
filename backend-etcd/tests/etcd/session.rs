//! Session behaviour around the network and credentials, and the fenced-write helper.

use crate::common;

use std::time::Duration;

use common::{Etcd, GUARD};
use locksmith_api::{DistributedLock, LockError, LossReason};
use locksmith_etcd::etcd_client::{Compare, CompareOp, TxnOp};
use locksmith_etcd::{EtcdConfig, EtcdLock};

/// A stall shorter than the TTL (etcd paused, then back) is ridden out: the session and its
/// hold survive and work goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_outage_is_ridden_out() {
    let etcd = Etcd::with_ttl(6);
    let a = etcd.session().await;
    let held = a.lock("stall").await.unwrap();
    etcd.server.signal("-STOP").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    etcd.server.signal("-CONT").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !held.is_lost(),
        "the hold ended in an outage shorter than the TTL"
    );
    tokio::time::timeout(GUARD, held.unlock())
        .await
        .unwrap()
        .unwrap();
    let again = tokio::time::timeout(GUARD, a.lock("stall"))
        .await
        .unwrap()
        .unwrap();
    again.unlock().await.unwrap();
}

/// A fenced write lands while the hold is ours and is refused once it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_write_only_while_owned() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let held = a.lock("fenced").await.unwrap();
    let write = |value: &str| [TxnOp::put("data/fenced", value, None)];
    let ok = a.txn_if_owner(&held, [], write("first")).await.unwrap();
    assert!(ok.succeeded());
    let no_compare = a
        .txn_if_owner(
            &held,
            [Compare::value("data/fenced", CompareOp::Equal, "other")],
            write("x"),
        )
        .await
        .unwrap();
    assert!(
        !no_compare.succeeded(),
        "the caller's own compare is honoured"
    );

    // The hold is deleted behind the holder's back (as after a pause past the TTL).
    etcd.raw().await.delete(held.key(), None).await.unwrap();
    let next = b.lock("fenced").await.unwrap();
    let stale = a.txn_if_owner(&held, [], write("stale")).await.unwrap();
    assert!(!stale.succeeded(), "a stale holder's write was accepted");
    let value = etcd.raw().await.get("data/fenced", None).await.unwrap();
    assert_eq!(value.kvs()[0].value(), b"first");
    next.unlock().await.unwrap();
}

/// With authentication on: wrong credentials are a typed error, right ones work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked() {
    let etcd = Etcd::new();
    let mut raw = etcd.raw().await;
    raw.user_add("root", "secret", None).await.unwrap();
    raw.user_grant_role("root", "root").await.unwrap();
    raw.auth_enable().await.unwrap();

    let with = |password: &str| EtcdConfig {
        user: Some("root".into()),
        password: Some(password.into()),
        connect_timeout_ms: 2_000,
        ..etcd.config.clone()
    };
    match EtcdLock::connect(&with("wrong")).await {
        Err(err @ (LockError::Backend { .. } | LockError::Unavailable { .. })) => {
            let text = format!("{err}: {:?}", std::error::Error::source(&err));
            assert!(text.contains("authentication failed"), "{text}");
        }
        other => panic!("wrong password gave {other:?}"),
    }
    let session = EtcdLock::connect(&with("secret")).await.unwrap();
    let guard = session.lock("authed").await.unwrap();
    guard.unlock().await.unwrap();
    // Without credentials etcd still grants leases, but refuses the lock's keys.
    let anonymous = EtcdLock::connect(&etcd.config).await.unwrap();
    match tokio::time::timeout(GUARD, anonymous.lock("authed"))
        .await
        .unwrap()
    {
        Err(err @ LockError::Backend { .. }) => {
            let text = format!("{err}: {:?}", std::error::Error::source(&err));
            assert!(
                text.contains("permission denied") || text.contains("user name"),
                "{text}"
            );
        }
        other => panic!("no credentials gave {other:?}"),
    }
}

/// An operator revokes the session's lease (`etcdctl lease revoke`): its holds report
/// `Revoked`, not `Expired` or `Deleted`, and its waiters fail with the same reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_lease_reports_revoked() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let held = a.lock("mine").await.unwrap();
    let blocker = b.lock("theirs").await.unwrap();
    let waiter = etcd.queued_waiter(&a, "theirs").await;

    etcd.raw().await.lease_revoke(a.lease_id()).await.unwrap();

    let reason = tokio::time::timeout(GUARD, held.lost()).await.unwrap();
    assert_eq!(reason, LossReason::Revoked);
    match tokio::time::timeout(GUARD, waiter).await.unwrap().unwrap() {
        Err(LockError::SessionLost { reason, .. }) => assert_eq!(reason, LossReason::Revoked),
        other => panic!("the waiter of a revoked session got {other:?}"),
    }
    blocker.unlock().await.unwrap();
}

/// A revoked session that only waits learns of it from its keepalive: the waiter fails with
/// `Revoked` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_lease_fails_its_waiters() {
    let etcd = Etcd::with_ttl(3);
    let (a, b) = (etcd.session().await, etcd.session().await);
    let blocker = b.lock("held").await.unwrap();
    let waiter = etcd.queued_waiter(&a, "held").await;

    etcd.raw().await.lease_revoke(a.lease_id()).await.unwrap();

    match tokio::time::timeout(GUARD, waiter).await.unwrap().unwrap() {
        Err(LockError::SessionLost { reason, .. }) => assert_eq!(reason, LossReason::Revoked),
        other => panic!("the waiter of a revoked session got {other:?}"),
    }
    blocker.unlock().await.unwrap();
}

/// A session whose runtime shuts down has nothing left to keep its lease alive: it reports
/// the loss to callers on another runtime instead of hanging or panicking.
#[test]
fn session_outliving_its_runtime_reports_loss() {
    let etcd = Etcd::new();
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (session, guard) = first.block_on(async {
        let session = etcd.session().await;
        let guard = session.lock("orphan").await.unwrap();
        (session, guard)
    });
    first.shutdown_timeout(Duration::from_secs(5));

    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The guard's watch ran on that runtime too: with it gone, ownership is unknown.
    assert!(guard.is_lost());
    second.block_on(async {
        match tokio::time::timeout(GUARD, session.lock("orphan")).await {
            Ok(Err(LockError::SessionLost { reason, .. })) => {
                assert_eq!(reason, LossReason::Expired)
            }
            other => panic!("lock on a session whose runtime is gone gave {other:?}"),
        }
        match tokio::time::timeout(GUARD, session.try_lock("other")).await {
            Ok(Err(LockError::SessionLost { .. })) => {}
            other => panic!("try_lock on a session whose runtime is gone gave {other:?}"),
        }
        // The release cannot run any more (the key goes with the lease): an error, not a hang.
        let unlocked = tokio::time::timeout(GUARD, guard.unlock()).await;
        assert!(
            matches!(unlocked, Ok(Err(LockError::LockLost { .. }))),
            "{unlocked:?}"
        );
        drop(session);
    });
}

/// `with_lock` on etcd: when the hold is lost while the future runs (its key deleted by an
/// operator, then its lease revoked), the future is dropped at once and the call fails with
/// `LockLost` and the reason; the lock passes on to a waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_drops_the_future_when_the_hold_is_lost() {
    use locksmith_api::DistributedLockExt;
    use tokio::sync::oneshot;

    struct DropSignal(Option<oneshot::Sender<()>>);
    impl Drop for DropSignal {
        fn drop(&mut self) {
            if let Some(sender) = self.0.take() {
                let _ = sender.send(());
            }
        }
    }

    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    for reason in [LossReason::Deleted, LossReason::Revoked] {
        let (key_tx, key_rx) = oneshot::channel();
        let (dropped_tx, dropped_rx) = oneshot::channel();
        let session = a.clone();
        let running = tokio::spawn(async move {
            session
                .with_lock("job", async move {
                    let _signal = DropSignal(Some(dropped_tx));
                    let _ = key_tx.send(());
                    std::future::pending::<()>().await
                })
                .await
        });
        tokio::time::timeout(GUARD, key_rx).await.unwrap().unwrap();
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.lock("job").await })
        };
        let mut raw = etcd.raw().await;
        match reason {
            LossReason::Deleted => {
                let key = format!("{}job/{:x}", etcd.config.namespace, a.lease_id());
                assert_eq!(raw.delete(key, None).await.unwrap().deleted(), 1);
            }
            _ => {
                raw.lease_revoke(a.lease_id()).await.unwrap();
            }
        }
        match tokio::time::timeout(GUARD, running).await.unwrap().unwrap() {
            Err(LockError::LockLost { name, reason: got }) => {
                assert_eq!((name.as_str(), got), ("job", reason))
            }
            other => panic!("with_lock after {reason:?} gave {other:?}"),
        }
        tokio::time::timeout(GUARD, dropped_rx)
            .await
            .unwrap()
            .expect("the future was dropped");
        let next = tokio::time::timeout(GUARD, waiter).await.unwrap().unwrap();
        next.unwrap().unlock().await.unwrap();
    }
}
