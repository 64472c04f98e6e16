//! The metrics of a scripted run on the memory backend (feature `metrics`), read from a
//! debugging recorder installed for this thread only.

use std::collections::BTreeMap;
use std::time::Duration;

use locksmith_api::{
    DistributedLock, DistributedRwLock, DistributedSemaphore, LeaderElection, LossReason,
};
use locksmith_memory::{MemoryLock, MemoryStore};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

/// A metric: its name and its labels as `k=v`, sorted.
type Series = (String, Vec<String>);

fn series(name: &str, labels: &[(&str, &str)]) -> Series {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    (name.to_owned(), labels)
}

fn hex(session: &MemoryLock) -> String {
    format!("{:x}", session.session_id())
}

#[test]
fn scripted_run_is_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    // One thread, so that the thread-local recorder sees every record, and tokio's clock
    // paused, so that waits and holds have known lengths.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let (a_id, b_id, c_id, values) = runtime.block_on(async {
        let store = MemoryStore::new();
        let (a, b, c) = (
            store.connect().unwrap(),
            store.connect().unwrap(),
            store.connect().unwrap(),
        );

        // a holds x for 100 ms; b finds it taken, then waits for it.
        let x = a.lock("x").await.unwrap();
        assert!(b.try_lock("x").await.unwrap().is_none());
        let waiter = b.clone();
        let waiting = tokio::spawn(async move { waiter.lock("x").await });
        while store.queue_len("x") < 2 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        x.unlock().await.unwrap();
        let b_x = waiting.await.unwrap().unwrap();

        // b's session expires under its hold.
        b.expire();
        assert_eq!(b_x.lost().await, LossReason::Expired);
        drop(b_x);

        // A wait given up, a dropped guard, two refused calls.
        let y = a.lock("y").await.unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(10), c.lock("y")).await;
        assert!(gave_up.is_err());
        drop(y);
        assert!(a.lock("").await.is_err());
        assert!(a.acquire("s", 0).await.is_err());

        // A leadership resigned, a read guard dropped.
        let leader = a.campaign("e", b"a").await.unwrap();
        leader.resign().await.unwrap();
        drop(a.read("rw").await.unwrap());

        // At the snapshot: a holds z, c waits for it.
        let z = a.lock("z").await.unwrap();
        let waiter = c.clone();
        let waiting = tokio::spawn(async move { waiter.lock("z").await });
        while store.queue_len("z") < 2 {
            tokio::task::yield_now().await;
        }
        let mut values: BTreeMap<Series, DebugValue> = BTreeMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            values.insert((key.name().to_owned(), labels), value);
        }
        drop(z);
        drop(waiting.await.unwrap().unwrap());
        (hex(&a), hex(&b), hex(&c), values)
    });

    let counter = |name: &str, labels: &[(&str, &str)]| match values.get(&series(name, labels)) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} {labels:?}: {other:?}"),
    };
    let gauge = |name: &str, labels: &[(&str, &str)]| match values.get(&series(name, labels)) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("{name} {labels:?}: {other:?}"),
    };
    let histogram = |name: &str, labels: &[(&str, &str)]| match values.get(&series(name, labels)) {
        Some(DebugValue::Histogram(v)) => v.iter().map(|x| x.into_inner()).collect::<Vec<_>>(),
        other => panic!("{name} {labels:?}: {other:?}"),
    };
    let m = |kind: &'static str, outcome: &'static str| {
        [("backend", "memory"), ("kind", kind), ("outcome", outcome)]
    };

    // Acquisitions by kind and outcome.
    let acquisitions = "locksmith_acquisitions_total";
    assert_eq!(counter(acquisitions, &m("lock", "acquired")), 4); // a x, b x, a y, a z
    assert_eq!(counter(acquisitions, &m("try_lock", "busy")), 1);
    assert_eq!(counter(acquisitions, &m("lock", "cancelled")), 1);
    assert_eq!(counter(acquisitions, &m("lock", "failed")), 1);
    assert_eq!(counter(acquisitions, &m("acquire", "failed")), 1);
    assert_eq!(counter(acquisitions, &m("campaign", "acquired")), 1);
    assert_eq!(counter(acquisitions, &m("read", "acquired")), 1);
    let failures = "locksmith_acquisition_failures_total";
    let f = |kind, error| [("backend", "memory"), ("kind", kind), ("error", error)];
    assert_eq!(counter(failures, &f("lock", "invalid_name")), 1);
    assert_eq!(counter(failures, &f("acquire", "invalid_limit")), 1);

    // Waits: b waited the 100 ms a held x; the others did not wait.
    let mut waits = histogram("locksmith_wait_seconds", &m("lock", "acquired"));
    waits.sort_by(f64::total_cmp);
    assert_eq!(waits.len(), 4);
    assert!(waits[..3].iter().all(|w| *w < 0.001), "{waits:?}");
    assert!((0.1..0.2).contains(&waits[3]), "{waits:?}");
    let cancelled = histogram("locksmith_wait_seconds", &m("lock", "cancelled"));
    assert!(
        matches!(cancelled[..], [w] if (0.01..0.02).contains(&w)),
        "{cancelled:?}"
    );

    // Holds by how they ended, and the loss by its reason.
    let h = |kind, end| [("backend", "memory"), ("kind", kind), ("end", end)];
    let released = histogram("locksmith_hold_seconds", &h("lock", "released"));
    assert!(
        matches!(released[..], [s] if (0.1..0.2).contains(&s)),
        "{released:?}"
    );
    assert_eq!(
        histogram("locksmith_hold_seconds", &h("lock", "lost")).len(),
        1
    );
    assert_eq!(
        histogram("locksmith_hold_seconds", &h("lock", "dropped")).len(),
        1
    );
    assert_eq!(
        histogram("locksmith_hold_seconds", &h("campaign", "released")).len(),
        1
    );
    assert_eq!(
        histogram("locksmith_hold_seconds", &h("read", "dropped")).len(),
        1
    );
    let lost = [
        ("backend", "memory"),
        ("kind", "lock"),
        ("reason", "expired"),
    ];
    assert_eq!(counter("locksmith_losses_total", &lost), 1);

    // Sessions, and what each holds or waits for now.
    assert_eq!(
        counter("locksmith_sessions_started_total", &[("backend", "memory")]),
        3
    );
    let ended = [("backend", "memory"), ("reason", "expired")];
    assert_eq!(counter("locksmith_sessions_ended_total", &ended), 1);
    fn of(session: &str) -> [(&str, &str); 2] {
        [("backend", "memory"), ("session", session)]
    }
    assert_eq!(gauge("locksmith_holds", &of(&a_id)), 1.0);
    assert_eq!(gauge("locksmith_holds", &of(&b_id)), 0.0);
    assert_eq!(gauge("locksmith_waiters", &of(&c_id)), 1.0);
    assert_eq!(gauge("locksmith_waiters", &of(&b_id)), 0.0);
    assert!(
        !values.contains_key(&series("locksmith_holds", &of(&c_id))),
        "c never held anything"
    );
}

/// The gauges come back to 0: waits given up (timed out, aborted, dropped unpolled after
/// the grant), holds revoked and then unlocked or dropped, a leadership lost; each end is
/// recorded once.
#[test]
fn gauges_return_to_zero_after_cancelled_waits_and_lost_holds() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let (a_id, b_id) = runtime.block_on(async {
        let store = MemoryStore::new();
        let (a, b) = (store.connect().unwrap(), store.connect().unwrap());
        let held = a.lock("x").await.unwrap();
        for _ in 0..3 {
            let gave_up = tokio::time::timeout(Duration::from_millis(5), b.lock("x")).await;
            assert!(gave_up.is_err());
        }
        let waiter = b.clone();
        let waiting = tokio::spawn(async move { waiter.lock("x").await });
        while store.queue_len("x") < 2 {
            tokio::task::yield_now().await;
        }
        waiting.abort();
        assert!(waiting.await.unwrap_err().is_cancelled());
        // Granted while nobody polls it, then dropped: counts as cancelled, holds nothing.
        let mut late = Box::pin(b.lock("x"));
        assert!(futures_poll_once(late.as_mut()).await.is_none());
        drop(held);
        drop(late);
        assert_eq!(store.queue_len("x"), 0);

        // Holds lost: one unlocked after the loss, one dropped, one leadership.
        let revoked = a.lock("r").await.unwrap();
        assert!(store.revoke("r"));
        assert!(revoked.unlock().await.is_err());
        let dropped = a.read("rw").await.unwrap();
        assert_eq!(store.revoke_rwlock("rw"), 1);
        drop(dropped);
        let leading = b.campaign("e", b"b").await.unwrap();
        assert!(store.revoke("e"));
        assert_eq!(leading.lost().await, LossReason::Deleted);
        drop(leading);
        (hex(&a), hex(&b))
    });
    let values: BTreeMap<Series, DebugValue> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            ((key.name().to_owned(), labels), value)
        })
        .collect();
    let gauge = |name: &str, session: &str| match values.get(&series(
        name,
        &[("backend", "memory"), ("session", session)],
    )) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("{name} {session}: {other:?}"),
    };
    let counter = |name: &str, labels: &[(&str, &str)]| match values.get(&series(name, labels)) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} {labels:?}: {other:?}"),
    };
    let histogram_len =
        |name: &str, labels: &[(&str, &str)]| match values.get(&series(name, labels)) {
            Some(DebugValue::Histogram(v)) => v.len(),
            None => 0,
            other => panic!("{name} {labels:?}: {other:?}"),
        };
    assert_eq!(gauge("locksmith_waiters", &b_id), 0.0);
    assert_eq!(gauge("locksmith_holds", &b_id), 0.0);
    assert_eq!(gauge("locksmith_holds", &a_id), 0.0);
    let cancelled = [
        ("backend", "memory"),
        ("kind", "lock"),
        ("outcome", "cancelled"),
    ];
    assert_eq!(counter("locksmith_acquisitions_total", &cancelled), 5);
    // The lock's one dropped hold is `held` of x; the late grant never became a hold.
    for (kind, dropped) in [("lock", 1), ("read", 0), ("campaign", 0)] {
        let lost = [("backend", "memory"), ("kind", kind), ("reason", "deleted")];
        assert_eq!(counter("locksmith_losses_total", &lost), 1, "{kind}");
        let h = |end| [("backend", "memory"), ("kind", kind), ("end", end)];
        assert_eq!(
            histogram_len("locksmith_hold_seconds", &h("lost")),
            1,
            "{kind}"
        );
        let ends = (
            histogram_len("locksmith_hold_seconds", &h("released")),
            histogram_len("locksmith_hold_seconds", &h("dropped")),
        );
        assert_eq!(ends, (0, dropped), "{kind}: a lost hold ends once");
    }
}

/// Polls `future` once; `Some` with its output if it was ready.
async fn futures_poll_once<F: std::future::Future + Unpin>(mut future: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut future).poll(cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        })
    })
    .await
}
