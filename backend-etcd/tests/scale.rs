//! Many waiters and many holds from one process: bounded watch streams, FIFO, throughput.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Etcd;
use locksmith_api::DistributedLock;
use parking_lot::Mutex;

/// Waits for every task, each within a minute; panics on a task that failed or hung.
async fn join_within_a_minute(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .unwrap()
            .unwrap();
    }
}

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
    join_within_a_minute(tasks).await;
    let rate = WAITERS as f64 / started.elapsed().as_secs_f64();
    let peak = peak_rss_kib();
    println!("{WAITERS} handoffs at {rate:.0}/s over {streams} watch streams, peak RSS {peak} KiB");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
    assert_eq!(*order.lock(), (0..WAITERS).collect::<Vec<_>>());
    // A regression guard for a debug build on a loaded machine; BENCHMARKS.md has the figure.
    assert!(rate >= 100.0, "{rate:.0} handoffs/s");
}

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

/// This process's peak resident set size (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Issue 11: 100 sessions queue on one name. They are served in the order they queued, and
/// each release reaches only the few waiters that track it: the first waiters track every
/// older key, the ones further back watch a single key far ahead. Counted by etcd itself
/// (`etcd_debugging_mvcc_events_total`, events sent to watchers): were every waiter to watch
/// every older key, each delete would reach about half the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_release_of_a_long_queue_reaches_few_waiters() {
    const SESSIONS: usize = 100;
    const EVENTS: &str = "etcd_debugging_mvcc_events_total";
    const WATCHERS: &str = "etcd_debugging_mvcc_watcher_total";
    let etcd = Etcd::new();
    let holder = etcd.session().await;
    let held = holder.lock("long").await.unwrap();
    let order = Arc::new(Mutex::new(Vec::with_capacity(SESSIONS)));
    let mut tasks = Vec::new();
    for i in 0..SESSIONS {
        let session = etcd.session().await;
        let order = Arc::clone(&order);
        tasks.push(tokio::spawn(async move {
            let guard = session.lock("long").await.unwrap();
            order.lock().push(i);
            guard.unlock().await.unwrap();
        }));
        // Queued one after the other: `i` is each waiter's place in the queue.
        etcd.wait_queued("long", i + 2).await;
    }
    // Every waiter watches something before the first release.
    let settled = async {
        while etcd.server.metric(WATCHERS).unwrap_or(0.0) < SESSIONS as f64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), settled)
        .await
        .expect("every waiter watches");
    let before = etcd.server.metric(EVENTS).unwrap();
    held.unlock().await.unwrap();
    join_within_a_minute(tasks).await;
    let events = etcd.server.metric(EVENTS).unwrap() - before;
    let per_release = events / (SESSIONS + 1) as f64;
    println!("{per_release:.1} watch events per release for {SESSIONS} waiters");
    assert_eq!(*order.lock(), (0..SESSIONS).collect::<Vec<_>>());
    // 3 trackers and one waiter further back per release, and a few twins.
    assert!(per_release <= 14.0, "{per_release:.1} events per release");
}
