//! Leader election on a real etcd: the Go `concurrency.Election` key layout, proclamations,
//! observers across compaction and stream resets, and the cleanup of every path that gives a
//! candidacy up.

use crate::common;

use std::time::Duration;

use common::observe::{next, until_vacant, until_value};
use common::{within, Etcd};
use locksmith_api::{DistributedLock, LeaderElection, LossReason};
use locksmith_etcd::etcd_client::GetOptions;

/// How long a blocked call is watched to make sure it stays blocked.
const QUIET: Duration = Duration::from_millis(200);

/// The keys and values stored under the name, as Go's election writes them.
async fn stored(etcd: &Etcd, name: &str) -> Vec<(String, Vec<u8>)> {
    let prefix = format!("{}{name}/", etcd.config.namespace);
    let reply = etcd
        .raw()
        .await
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    reply
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_owned(), kv.value().to_vec()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_writes_go_s_key_and_value_and_leads() {
    let etcd = Etcd::new();
    let a = etcd.session().await;
    assert_eq!(a.leader("svc").await.unwrap(), None);
    let leading = a.campaign("svc", b"host-a:8080").await.unwrap();
    let key = format!("{}svc/{:x}", etcd.config.namespace, a.lease_id());
    assert_eq!(leading.key(), key);
    assert_eq!(
        stored(&etcd, "svc").await,
        vec![(key.clone(), b"host-a:8080".to_vec())]
    );
    let info = a.leader("svc").await.unwrap().unwrap();
    assert_eq!(info, leading.info());
    leading.proclaim(b"host-a:9090").await.unwrap();
    assert_eq!(leading.value(), b"host-a:9090");
    let info = a.leader("svc").await.unwrap().unwrap();
    assert_eq!(info.value(), b"host-a:9090");
    assert_eq!(info.fencing_token(), leading.fencing_token());
    leading.resign().await.unwrap();
    assert_eq!(stored(&etcd, "svc").await, vec![]);
    assert_eq!(a.leader("svc").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_lead_in_arrival_order_and_observers_follow() {
    let etcd = Etcd::new();
    let (a, b, c, watcher) = (
        etcd.session().await,
        etcd.session().await,
        etcd.session().await,
        etcd.session().await,
    );
    let mut watch = watcher.observe("svc").await.unwrap();
    assert_eq!(next(&mut watch).await, None);
    let first = a.campaign("svc", b"a").await.unwrap();
    until_value(&mut watch, b"a").await;
    let second = {
        let b = b.clone();
        tokio::spawn(async move { b.campaign("svc", b"b").await })
    };
    etcd.wait_queued("svc", 2).await;
    let third = {
        let c = c.clone();
        tokio::spawn(async move { c.campaign("svc", b"c").await })
    };
    etcd.wait_queued("svc", 3).await;
    first.proclaim(b"a2").await.unwrap();
    let seen = until_value(&mut watch, b"a2").await.unwrap();
    assert_eq!(seen.fencing_token(), first.fencing_token());
    let first_token = first.fencing_token();
    first.resign().await.unwrap();
    let second = within("b to lead", second).await.unwrap().unwrap();
    assert!(second.fencing_token() > first_token);
    assert!(!third.is_finished());
    let seen = until_value(&mut watch, b"b").await.unwrap();
    assert_eq!(seen.fencing_token(), second.fencing_token());
    drop(second);
    let third = within("c to lead", third).await.unwrap().unwrap();
    until_value(&mut watch, b"c").await;
    third.resign().await.unwrap();
    until_vacant(&mut watch).await;
    assert_eq!(watcher.leader("svc").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_campaign_leaves_no_key() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let leading = a.campaign("svc", b"a").await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(300), b.campaign("svc", b"b")).await;
    assert!(waiting.is_err());
    common::keys_become(&etcd, "svc", vec![leading.key().to_owned()]).await;
    leading.resign().await.unwrap();
    common::keys_become(&etcd, "svc", vec![]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_and_a_lock_of_one_session_take_turns() {
    let etcd = Etcd::new();
    let a = etcd.session().await;
    // A lock waits for the session's leadership of the name...
    let leading = a.campaign("svc", b"a").await.unwrap();
    assert!(a.try_lock("svc").await.unwrap().is_none());
    let locking = {
        let a = a.clone();
        tokio::spawn(async move { a.lock("svc").await })
    };
    tokio::time::sleep(QUIET).await;
    assert!(!locking.is_finished(), "locked while leading");
    let token = leading.fencing_token();
    leading.resign().await.unwrap();
    let guard = within("the lock", locking).await.unwrap().unwrap();
    assert!(guard.fencing_token() > token);
    // ...and a campaign for the session's lock of it.
    let again = {
        let a = a.clone();
        tokio::spawn(async move { a.campaign("svc", b"again").await })
    };
    tokio::time::sleep(QUIET).await;
    assert!(!again.is_finished(), "elected while locked");
    let token = guard.fencing_token();
    guard.unlock().await.unwrap();
    let again = within("the second campaign", again).await.unwrap().unwrap();
    assert!(again.fencing_token() > token);
    assert_eq!(again.value(), b"again");
    assert_eq!(a.leader("svc").await.unwrap().unwrap().value(), b"again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_key_is_deleted_loses_and_the_next_leads() {
    let etcd = Etcd::new();
    let (a, b, watcher) = (
        etcd.session().await,
        etcd.session().await,
        etcd.session().await,
    );
    let leading = a.campaign("svc", b"a").await.unwrap();
    let mut watch = watcher.observe("svc").await.unwrap();
    until_value(&mut watch, b"a").await;
    let next_up = {
        let b = b.clone();
        tokio::spawn(async move { b.campaign("svc", b"b").await })
    };
    etcd.wait_queued("svc", 2).await;
    etcd.raw().await.delete(leading.key(), None).await.unwrap();
    assert_eq!(
        within("the loss", leading.lost()).await,
        LossReason::Deleted
    );
    let err = leading.proclaim(b"late").await.unwrap_err();
    assert!(
        matches!(err, locksmith_api::LockError::LockLost { .. }),
        "{err}"
    );
    let second = within("b to lead", next_up).await.unwrap().unwrap();
    assert!(second.fencing_token() > leading.fencing_token());
    until_value(&mut watch, b"b").await;
    // A proclamation of the lost leadership never lands on a later key of its session.
    let again = a.campaign("svc-2", b"x").await.unwrap();
    assert_eq!(again.value(), b"x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_session_s_campaign_fails_and_its_observers_end() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let leading = a.campaign("svc", b"a").await.unwrap();
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { b.campaign("svc", b"b").await })
    };
    etcd.wait_queued("svc", 2).await;
    let mut watch = b.observe("svc").await.unwrap();
    until_value(&mut watch, b"a").await;
    b.close().await.unwrap();
    let err = within("the campaign to fail", waiting)
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.is_session_lost(), "{err}");
    let ended = within("the watch to end", watch.next()).await;
    assert!(
        matches!(ended, Some(Err(ref err)) if err.is_session_lost()),
        "{ended:?}"
    );
    assert!(within("the end", watch.next()).await.is_none());
    assert!(b.campaign("svc", b"b").await.unwrap_err().is_session_lost());
    common::keys_become(&etcd, "svc", vec![leading.key().to_owned()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_go_on_across_compaction() {
    let etcd = Etcd::new();
    let (a, watcher) = (etcd.session().await, etcd.session().await);
    let leading = a.campaign("svc", b"v0").await.unwrap();
    let mut watch = watcher.observe("svc").await.unwrap();
    until_value(&mut watch, b"v0").await;
    let mut raw = etcd.raw().await;
    for round in 1..=20u32 {
        let value = format!("v{round}");
        leading.proclaim(value.as_bytes()).await.unwrap();
        if round % 5 == 0 {
            let now = raw
                .get("x", None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision();
            raw.compact(now, None).await.unwrap();
        }
    }
    let last = until_value(&mut watch, b"v20").await.unwrap();
    assert_eq!(last.fencing_token(), leading.fencing_token());
    assert_eq!(watcher.leader("svc").await.unwrap(), Some(last));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_go_on_across_a_stream_reset() {
    let etcd = Etcd::new();
    let (a, watcher) = (etcd.session().await, etcd.session().await);
    let leading = a.campaign("svc", b"before").await.unwrap();
    let mut watch = watcher.observe("svc").await.unwrap();
    until_value(&mut watch, b"before").await;
    let resets = etcd
        .server
        .metric("etcd_debugging_mvcc_watch_stream_total")
        .unwrap();
    {
        // Stalled past the hub's progress deadline: the hub gives the stream up.
        let _stopped = etcd.server.stop().unwrap();
        tokio::time::sleep(Duration::from_millis(2_000)).await;
    }
    leading.proclaim(b"after").await.unwrap();
    let seen = until_value(&mut watch, b"after").await.unwrap();
    assert_eq!(seen.fencing_token(), leading.fencing_token());
    leading.resign().await.unwrap();
    until_vacant(&mut watch).await;
    // The watcher's stream was replaced (the old one closed, a new one opened).
    let now = etcd
        .server
        .metric("etcd_debugging_mvcc_watch_stream_total")
        .unwrap();
    assert!(now >= resets, "{now} streams, {resets} before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_observers_in_one_session_share_one_watch() {
    const OBSERVERS: usize = 1_000;
    let etcd = Etcd::new();
    let (a, watcher) = (etcd.session().await, etcd.session().await);
    let leading = a.campaign("svc", b"v0").await.unwrap();
    let mut first = watcher.observe("svc").await.unwrap();
    until_value(&mut first, b"v0").await;
    // The leader's loss watch and the observers' feed.
    etcd.watches_settle(2.0).await;
    let watchers_before = etcd
        .server
        .metric("etcd_debugging_mvcc_watcher_total")
        .unwrap();
    let streams_before = etcd
        .server
        .metric("etcd_debugging_mvcc_watch_stream_total")
        .unwrap();
    let mut watches = Vec::with_capacity(OBSERVERS);
    for _ in 0..OBSERVERS {
        watches.push(watcher.observe("svc").await.unwrap());
    }
    assert_eq!(
        etcd.server
            .metric("etcd_debugging_mvcc_watcher_total")
            .unwrap(),
        watchers_before
    );
    assert_eq!(
        etcd.server
            .metric("etcd_debugging_mvcc_watch_stream_total")
            .unwrap(),
        streams_before
    );
    leading.proclaim(b"final").await.unwrap();
    let seen = futures_join_all(watches.iter_mut().map(|w| until_value(w, b"final"))).await;
    assert!(seen.iter().all(|s| s.as_ref().unwrap().value() == b"final"));
}

/// Waits for every future, concurrently on this task.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (slot, future) in done.iter_mut().zip(pending.iter_mut()) {
            if slot.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *slot = Some(value),
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resign_cut_short_still_hands_over() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let leading = a.campaign("svc", b"a").await.unwrap();
    let next_up = {
        let b = b.clone();
        tokio::spawn(async move { b.campaign("svc", b"b").await })
    };
    etcd.wait_queued("svc", 2).await;
    {
        let _stopped = etcd.server.stop().unwrap();
        let cut = tokio::time::timeout(Duration::from_millis(150), leading.resign()).await;
        assert!(cut.is_err(), "resign finished with etcd stopped: {cut:?}");
    }
    let second = within("b to lead", next_up).await.unwrap().unwrap();
    common::keys_become(&etcd, "svc", vec![second.key().to_owned()]).await;
    // The session's next campaign waits for the first one's key to be gone, then queues.
    let again = tokio::spawn(async move { a.campaign("svc", b"a2").await });
    etcd.wait_queued("svc", 2).await;
    second.resign().await.unwrap();
    let again = within("a to lead again", again).await.unwrap().unwrap();
    assert_eq!(again.value(), b"a2");
}
