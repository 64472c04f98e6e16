//! Many waiters on one name from one process: bounded watch streams, FIFO, throughput and the
//! process's peak memory, which is why this test is a binary of its own with nothing beside it
//! (many holds at once are in `tests/etcd/many_names.rs`).

#[path = "etcd/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Etcd;
use locksmith_api::DistributedLock;
use parking_lot::Mutex;

const STREAMS: &str = "etcd_debugging_mvcc_watch_stream_total";

/// 1,000 tasks of one client wait on one name held by another client: they drain in arrival
/// order, at well over 300 handoffs/s, over a bounded number of watch streams.
#[tokio::test(flavor = "current_thread")]
async fn thousand_waiters_drain_in_order_over_few_streams() {
    const WAITERS: usize = 1_000;
    let etcd = Etcd::new();
    let (holder, waiters) = (etcd.session().await, Arc::new(etcd.session().await));
    let held = holder.lock("crowd").await.unwrap();
    let order = Arc::new(Mutex::new(Vec::with_capacity(WAITERS)));
    let mut tasks = Vec::new();
    for i in 0..WAITERS {
        let (session, order) = (Arc::clone(&waiters), Arc::clone(&order));
        // A current-thread runtime polls spawned tasks in spawn order: arrival order is `i`.
        tasks.push(tokio::spawn(async move {
            let guard = session.lock("crowd").await.unwrap();
            order.lock().push(i);
            guard.unlock().await.unwrap();
        }));
        tokio::task::yield_now().await;
    }
    while etcd.keys("crowd").await.len() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let streams = etcd.server.metric(STREAMS).unwrap();
    assert!(
        streams <= 4.0,
        "{streams} watch streams for {WAITERS} waiters"
    );

    let started = Instant::now();
    held.unlock().await.unwrap();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .unwrap()
            .unwrap();
    }
    let rate = WAITERS as f64 / started.elapsed().as_secs_f64();
    let peak = peak_rss_kib();
    println!("{WAITERS} handoffs at {rate:.0}/s over {streams} watch streams, peak RSS {peak} KiB");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
    assert_eq!(*order.lock(), (0..WAITERS).collect::<Vec<_>>());
    // A regression guard for a debug build on a loaded machine; BENCHMARKS.md has the figure.
    assert!(rate >= 100.0, "{rate:.0} handoffs/s");
}

/// This process's peak resident set size (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap()
}
