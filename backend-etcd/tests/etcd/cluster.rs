//! A 3-member cluster: the leader dies while clients hold and wait.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use locksmith_api::DistributedLock;
use locksmith_etcd::testing::EtcdCluster;
use locksmith_etcd::{EtcdConfig, EtcdLock};

const GUARD: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_keeps_mutual_exclusion() {
    let mut cluster = EtcdCluster::start(3).unwrap();
    let config = EtcdConfig {
        ttl_secs: 5,
        namespace: "failover/".into(),
        ..EtcdConfig::new(cluster.endpoints())
    };
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(Arc::new(EtcdLock::connect(&config).await.unwrap()));
    }
    let holder = sessions[0].lock("x").await.unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut waiters = Vec::new();
    for session in &sessions[1..] {
        let (session, inside, done) = (Arc::clone(session), Arc::clone(&inside), Arc::clone(&done));
        waiters.push(tokio::spawn(async move {
            for _ in 0..3 {
                let guard = session.lock("x").await.unwrap();
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two live owners");
                tokio::time::sleep(Duration::from_millis(20)).await;
                assert!(!guard.is_lost());
                inside.fetch_sub(1, Ordering::SeqCst);
                guard.unlock().await.unwrap();
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let leader = cluster.leader_index().await.unwrap();
    cluster.kill_member(leader);
    // The holder's lease lives through the election (TTL 5 s, election ~0.5 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !holder.is_lost(),
        "the holder lost its lock in a leader election"
    );
    holder.unlock().await.unwrap();
    for waiter in waiters {
        tokio::time::timeout(GUARD, waiter).await.unwrap().unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 9);
    cluster.restart_member(leader).unwrap();
}
