//! A follower that stops answering (SIGSTOP) while a session's watch stream goes through it
//! (issue 10, finding 9): the waiter still gets the lock, and a hold's loss is still reported,
//! within 3 s.

use std::time::{Duration, Instant};

use locksmith_api::{DistributedLock, LossReason};
use locksmith_etcd::etcd_client::{Client, GetOptions};
use locksmith_etcd::testing::EtcdCluster;
use locksmith_etcd::{EtcdConfig, EtcdLock};

const GUARD: Duration = Duration::from_secs(30);
/// The bound of the issue: handoff and loss within 3 s while the member is stopped.
const BOUND: Duration = Duration::from_secs(3);
/// Long enough for a watch to be created on the session's stream.
const SETTLE: Duration = Duration::from_millis(500);

/// The cluster, the index of its leader and of one follower.
async fn cluster() -> (EtcdCluster, usize, usize) {
    let cluster = EtcdCluster::start(3).expect("cluster");
    let leader = cluster.leader_index().await.expect("leader");
    let follower = (leader + 1) % 3;
    (cluster, leader, follower)
}

/// Endpoints in this order, by member index.
fn config(cluster: &EtcdCluster, order: &[usize], namespace: &str) -> EtcdConfig {
    let endpoints = cluster.endpoints();
    EtcdConfig {
        ttl_secs: 10,
        namespace: namespace.into(),
        ..EtcdConfig::new(order.iter().map(|&i| endpoints[i].clone()))
    }
}

async fn connect(config: &EtcdConfig) -> EtcdLock {
    tokio::time::timeout(GUARD, EtcdLock::connect(config))
        .await
        .expect("connect hung")
        .expect("connect")
}

async fn raw(cluster: &EtcdCluster, member: usize) -> Client {
    let url = format!("http://{}", cluster.endpoints()[member]);
    Client::connect([url], None).await.expect("raw client")
}

async fn wait_for_keys(client: &mut Client, prefix: &str, count: usize) {
    let queued = async {
        loop {
            let options = GetOptions::new().with_prefix().with_keys_only();
            let reply = client.get(prefix, Some(options)).await.expect("get");
            if reply.kvs().len() >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(GUARD, queued)
        .await
        .expect("the queue never filled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_watch_stream_is_on_a_stopped_member_gets_the_lock_in_time() {
    let (cluster, leader, follower) = cluster().await;
    let other = 3 - leader - follower;
    let holder = connect(&config(&cluster, &[leader], "stall/")).await;
    // The waiter's watch stream goes through the first endpoint: the follower.
    let waiter = connect(&config(&cluster, &[follower, leader, other], "stall/")).await;
    let guard = holder.lock("n").await.expect("lock");
    let waiting = tokio::spawn(async move { waiter.lock("n").await.map(|g| (g, waiter)) });
    wait_for_keys(&mut raw(&cluster, leader).await, "stall/n/", 2).await;
    tokio::time::sleep(SETTLE).await;

    let stopped = cluster.stop_member(follower).unwrap();
    tokio::time::timeout(GUARD, guard.unlock())
        .await
        .expect("unlock hung")
        .expect("unlock");
    let released = Instant::now();
    let acquired = tokio::time::timeout(BOUND, waiting).await;
    let took = released.elapsed();
    drop(stopped);
    let (guard, _waiter) = acquired
        .unwrap_or_else(|_| panic!("the waiter did not get the lock within {BOUND:?}"))
        .expect("waiter task")
        .expect("waiter lock");
    eprintln!("handoff with the follower stopped took {took:?}");
    assert!(!guard.is_lost());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_whose_watch_stream_is_on_a_stopped_member_learns_of_its_loss_in_time() {
    let (cluster, leader, follower) = cluster().await;
    let other = 3 - leader - follower;
    let session = connect(&config(&cluster, &[follower, leader, other], "stall-loss/")).await;
    let guard = session.lock("m").await.expect("lock");
    // The hold's watch starts after a moment; let it be created on the follower's stream.
    tokio::time::sleep(SETTLE).await;

    let stopped = cluster.stop_member(follower).unwrap();
    let mut operator = raw(&cluster, leader).await;
    operator.delete(guard.key(), None).await.expect("delete");
    let deleted = Instant::now();
    let lost = tokio::time::timeout(BOUND, guard.lost()).await;
    let took = deleted.elapsed();
    drop(stopped);
    let reason = lost.unwrap_or_else(|_| panic!("no loss reported within {BOUND:?}"));
    eprintln!("loss with the follower stopped reported after {took:?}");
    assert_eq!(reason, LossReason::Deleted);
}
