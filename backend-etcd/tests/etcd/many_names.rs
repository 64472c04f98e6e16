//! Many holds from one process: one session holds 10,000 names at once over one watch stream.

use std::time::Instant;

use crate::common::Etcd;
use locksmith_api::DistributedLock;

const STREAMS: &str = "etcd_debugging_mvcc_watch_stream_total";

/// One session holds 10,000 names at once; its loss watches share one stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_names_held_by_one_session() {
    const NAMES: usize = 10_000;
    let etcd = Etcd::new();
    let session = etcd.session().await;
    let started = Instant::now();
    let mut guards = Vec::with_capacity(NAMES);
    for i in 0..NAMES {
        guards.push(session.lock(&format!("many/{i}")).await.unwrap());
    }
    println!("{NAMES} names locked in {:?}", started.elapsed());
    let streams = etcd.server.metric(STREAMS).unwrap();
    assert!(streams <= 3.0, "{streams} watch streams for {NAMES} holds");
    assert!(guards.iter().all(|g| !g.is_lost()));
    let other = etcd.session().await;
    assert!(other.try_lock("many/9999").await.unwrap().is_none());
    for guard in guards {
        guard.unlock().await.unwrap();
    }
    assert!(other.try_lock("many/0").await.unwrap().is_some());
}
