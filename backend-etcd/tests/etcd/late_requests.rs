//! Late requests: attempts the client gave up on that reach etcd afterwards, against a real
//! etcd (found by an adversarial review of issue 10's fixes).
//!
//! The main tool is [`HoldProxy`] (in `common/hold_proxy.rs`), which can *delay* a request
//! instead of losing it: what a real network or a slow member can do to an attempt that the
//! client gave up on: it applies late.
//!
//! Each test reproduced a defect of the code under review and passes on the fixed code; the
//! probabilistic one against a stopped follower is `#[ignore]`d (slow; `-- --ignored` runs it).

use crate::common;

use std::task::Poll;
use std::time::Duration;

use common::hold_proxy::{proxied_session, wait_headers_held, HoldProxy};
use common::{within, Etcd};
use locksmith_api::{DistributedLock, LossReason};
use locksmith_etcd::{EtcdConfig, EtcdLock};

/// ATTACK 1 (a key left on a live lease). The queue transaction of `lock` is delayed on the
/// network; the client retries on a new connection, acquires, and unlocks. Then the first
/// attempt arrives: `If create_rev(own)==0 Then put(own, nonce) on the lease` applies, to a
/// key nobody waits for. Another session is blocked for as long as session A lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_queue_put_leaves_a_ghost_key_on_a_live_lease() {
    let etcd = Etcd::new();
    let proxy = HoldProxy::start(etcd.server.endpoint()).await;
    let a = proxied_session(&etcd, &proxy, 3).await;
    let b = etcd.session().await;
    // Warm the connection up.
    a.lock("warm").await.unwrap().unlock().await.unwrap();

    proxy.hold_all();
    let locking = {
        let a = a.clone();
        tokio::spawn(async move { a.lock("ghost").await })
    };
    wait_headers_held(&proxy, 1).await;
    proxy.cut_held();
    let guard = within("a to lock after the cut", locking)
        .await
        .unwrap()
        .unwrap();
    guard.unlock().await.unwrap();
    assert!(etcd.keys("ghost").await.is_empty());

    // The delayed first attempt reaches etcd now.
    proxy.deliver_held().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let keys = etcd.keys("ghost").await;
    // A's session sweeps what its unsure attempt left: B gets the lock although A lives on
    // and does nothing more with "ghost".
    let blocked = tokio::time::timeout(Duration::from_secs(6), b.lock("ghost")).await;
    assert!(
        blocked.is_ok(),
        "ghost key {keys:?} on A's live lease: B still waits after 6 s (2x TTL); A alive: {}",
        a.try_lock("warm").await.is_ok()
    );
}

/// ATTACK 2 (a lock held twice). A `lock` dropped before its queue task started withdraws with
/// revision 0: an *unguarded* delete of `{name}/{lease}`. That delete is delayed on the
/// network; the client retries on a new connection, the withdrawal "succeeds", the ticket is
/// freed, and A locks the name again (fresh key, owner). B queues. The delayed delete arrives
/// and deletes A's new hold: B acquires while A's guard still says it holds.
///
/// current_thread: the dropped `lock` must be dropped before its queue task ran once (in a
/// multi-thread runtime that is a race with the same outcome when it is lost).
#[tokio::test]
async fn a_late_unguarded_withdrawal_deletes_a_newer_hold_of_the_session() {
    let etcd = Etcd::new();
    let proxy = HoldProxy::start(etcd.server.endpoint()).await;
    let a = proxied_session(&etcd, &proxy, 3).await;
    let b = etcd.session().await;
    a.lock("warm").await.unwrap().unlock().await.unwrap();

    proxy.hold_all();
    // Polled once, then dropped: the queue task sees `abandoned` and stops; the withdrawal runs
    // with revision 0.
    // (As `select!` does when another branch is ready on the same poll.)
    let mut dropped = a.lock("twice");
    let polled = std::future::poll_fn(|cx| Poll::Ready(dropped.as_mut().poll(cx))).await;
    assert!(polled.is_pending());
    drop(dropped);
    // A withdrawal sends nothing when its queue task never sent a request; if anything was
    // sent (a multi-thread race), it is held here and delivered late below.
    let _ = tokio::time::timeout(Duration::from_secs(1), wait_headers_held(&proxy, 1)).await;
    proxy.cut_held();

    let a_guard = within("a to lock again", a.lock("twice")).await.unwrap();
    let b_waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.lock("twice").await })
    };
    etcd.wait_queued("twice", 2).await;

    let a_token = a_guard.fencing_token();
    let started = tokio::time::Instant::now();
    proxy.deliver_held().await;
    let (b_at, a_lost_at_b, b_token) =
        match tokio::time::timeout(Duration::from_secs(3), b_waiter).await {
            Err(_) => return, // B still waits: mutual exclusion kept.
            Ok(b) => (
                started.elapsed(),
                a_guard.is_lost(),
                b.unwrap().unwrap().fencing_token(),
            ),
        };
    let a_lost = within("a's loss", a_guard.lost()).await;
    panic!(
        "A's own late withdrawal deleted A's new hold (token {a_token}): B acquired (token \
         {b_token}) {b_at:?} after delivery while A's guard said lost={a_lost_at_b}; A learned \
         of it ({a_lost:?}) {:?} after delivery",
        started.elapsed()
    );
}

/// ATTACK 3 (finding 11). An operator's `etcdctl lease revoke` must report `Revoked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lease_revoke_reports_revoked() {
    let etcd = Etcd::new();
    let a = etcd.session().await;
    let guard = a.lock("revoked").await.unwrap();
    // Past the hold watch's delay, so both the hold watch and the keepalive can see it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    etcd.raw().await.lease_revoke(a.lease_id()).await.unwrap();
    let reason = within("the loss", guard.lost()).await;
    assert_eq!(reason, LossReason::Revoked);
}

/// ATTACK 3b: the same, seen by a waiter of the revoked session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lease_revoke_fails_waiters_with_revoked() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let held = b.lock("revoked-w").await.unwrap();
    let waiter = etcd.queued_waiter(&a, "revoked-w").await;
    etcd.raw().await.lease_revoke(a.lease_id()).await.unwrap();
    match within("the waiter", waiter).await.unwrap() {
        Err(locksmith_api::LockError::SessionLost { reason, .. }) => {
            assert_eq!(reason, LossReason::Revoked)
        }
        other => panic!("{other:?}"),
    }
    held.unlock().await.unwrap();
}

/// ATTACK 1 without a proxy: a follower SIGSTOPped while A locks and unlocks. A queue attempt
/// that went to the stopped follower times out; A retries elsewhere, locks and unlocks; the
/// follower resumes and may still apply the stale attempt: a ghost key on A's live lease.
/// Probabilistic (etcd races the request against the client's RST_STREAM); counts rounds.
#[ignore = "review reproduction: probabilistic; run with --ignored"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_follower_can_apply_a_stale_queue_put_after_unlock() {
    use locksmith_etcd::etcd_client::{Client, GetOptions};
    use locksmith_etcd::testing::EtcdCluster;
    let rounds: usize = std::env::var("REVIEW_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(12);
    let cluster = EtcdCluster::start(3).expect("cluster");
    let leader = cluster.leader_index().await.expect("leader");
    let follower = (leader + 1) % 3;
    let endpoints = cluster.endpoints();
    let config = EtcdConfig {
        ttl_secs: 6,
        namespace: common::fresh_namespace(),
        ..EtcdConfig::new([endpoints[follower].clone(), endpoints[leader].clone()])
    };
    let a = within("connect", EtcdLock::connect(&config)).await.unwrap();
    let mut raw = Client::connect([format!("http://{}", endpoints[leader])], None)
        .await
        .unwrap();
    let mut ghosts = Vec::new();
    for round in 0..rounds {
        let name = format!("stale-{round}");
        cluster.signal_member(follower, "-STOP").unwrap();
        let cycle = async {
            let guard = a.lock(&name).await?;
            guard.unlock().await
        };
        let cycled = tokio::time::timeout(Duration::from_secs(4), cycle).await;
        cluster.signal_member(follower, "-CONT").unwrap();
        // Room for the stale attempt to land and for the session's sweep to remove it.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let prefix = format!("{}{name}/", config.namespace);
        let left = raw
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        if matches!(cycled, Ok(Ok(()))) && !left.kvs().is_empty() {
            ghosts.push(name);
        }
    }
    assert!(
        ghosts.is_empty(),
        "ghost keys on A's live lease after a completed lock+unlock: {ghosts:?} of {rounds}"
    );
}
