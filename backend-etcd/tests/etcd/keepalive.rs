//! The session's keepalive on a 3-member cluster: one stalled member expires no session.

use std::time::Duration;

use locksmith_api::DistributedLock;
use locksmith_etcd::testing::EtcdCluster;
use locksmith_etcd::{EtcdConfig, EtcdLock};

/// The longest one step of a test may take.
const GUARD: Duration = Duration::from_secs(30);

/// A follower stopped for twice the TTL: the sessions whose keepalive went to it carry on
/// through the other members, so no hold is lost and every unlock succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_follower_expires_no_session() {
    const SESSIONS: usize = 9;
    let cluster = EtcdCluster::start(3).unwrap();
    let endpoints = cluster.endpoints();
    let follower = (cluster.leader_index().await.unwrap() + 1) % endpoints.len();

    let mut holds = Vec::new();
    for i in 0..SESSIONS {
        // Each member comes first in the endpoint list of a third of the sessions.
        let mut order = endpoints.clone();
        order.rotate_left(i % endpoints.len());
        let config = EtcdConfig {
            ttl_secs: 3,
            namespace: "keepalive/".into(),
            ..EtcdConfig::new(order)
        };
        let session = tokio::time::timeout(GUARD, EtcdLock::connect(&config))
            .await
            .unwrap()
            .unwrap();
        let guard = tokio::time::timeout(GUARD, session.lock(&format!("n{i}")))
            .await
            .unwrap()
            .unwrap();
        holds.push((session, guard));
    }

    {
        let _stalled = cluster.stop_member(follower).unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
    }

    let lost: Vec<_> = holds
        .iter()
        .filter_map(|(_, guard)| guard.lost_reason().map(|reason| (guard.name(), reason)))
        .collect();
    assert!(
        lost.is_empty(),
        "holds lost to a stalled follower: {lost:?}"
    );
    for (session, guard) in holds {
        let name = guard.name().to_owned();
        match tokio::time::timeout(GUARD, guard.unlock()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => panic!("unlock of {name} failed: {err}"),
            Err(_) => panic!("unlock of {name} hung"),
        }
        drop(session);
    }
}

/// With the `metrics` feature, a session of TTL 2 s that runs 3 s has recorded its keepalive
/// round trips (a refresh every TTL/3), and its lock the etcd acquisition metrics.
#[cfg(feature = "metrics")]
#[test]
fn keepalive_latency_is_recorded() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // One thread: the thread-local recorder sees the keepalive task too.
    let _local = metrics::set_default_local_recorder(&recorder);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = locksmith_etcd::testing::EtcdServer::start().unwrap();
    runtime.block_on(async {
        let config = EtcdConfig {
            ttl_secs: 2,
            ..EtcdConfig::new([server.endpoint()])
        };
        let session = tokio::time::timeout(GUARD, EtcdLock::connect(&config))
            .await
            .unwrap()
            .unwrap();
        let guard = session.lock("metrics").await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        guard.unlock().await.unwrap();
        session.close().await.unwrap();
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let find = |name: &str, label: Option<(&str, &str)>| {
        snapshot
            .iter()
            .find(|(key, ..)| {
                key.key().name() == name
                    && label.is_none_or(|(k, v)| {
                        key.key().labels().any(|l| l.key() == k && l.value() == v)
                    })
            })
            .map(|(.., value)| value)
    };
    match find("locksmith_keepalive_seconds", Some(("backend", "etcd"))) {
        Some(DebugValue::Histogram(samples)) => {
            assert!(samples.len() >= 3, "{samples:?}");
            assert!(samples.iter().all(|s| s.into_inner() < 1.0), "{samples:?}");
        }
        other => panic!("no keepalive histogram: {other:?}"),
    }
    assert!(matches!(
        find(
            "locksmith_acquisitions_total",
            Some(("outcome", "acquired"))
        ),
        Some(DebugValue::Counter(1))
    ));
    assert!(matches!(
        find("locksmith_sessions_ended_total", Some(("reason", "closed"))),
        Some(DebugValue::Counter(1))
    ));
}

/// With the `metrics` feature, an etcd run with a cancelled wait and a revoked lease: the
/// waiters and holds gauges come back to 0 for the revoked session and the waiter, losses
/// are counted by reason once per hold, and the session's end by its reason.
#[cfg(feature = "metrics")]
#[test]
fn revoked_holds_and_cancelled_waits_are_counted() {
    use locksmith_api::LossReason;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = locksmith_etcd::testing::EtcdServer::start().unwrap();
    let (a_id, b_id) = runtime.block_on(async {
        let config = EtcdConfig::new([server.endpoint()]);
        let connect = || async {
            tokio::time::timeout(GUARD, EtcdLock::connect(&config))
                .await
                .unwrap()
                .unwrap()
        };
        let (a, b) = (connect().await, connect().await);
        let x = a.lock("x").await.unwrap();
        let y = a.lock("y").await.unwrap();
        // A wait given up, then one that the revocation ends.
        let gave_up = tokio::time::timeout(Duration::from_millis(50), b.lock("y")).await;
        assert!(gave_up.is_err());
        let waiter = b.clone();
        let waiting = tokio::spawn(async move { waiter.lock("x").await });
        let mut raw = a.client();
        // Queued: b's key under x/ is there.
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let keys = raw
                .get(
                    "x/",
                    Some(locksmith_etcd::etcd_client::GetOptions::new().with_prefix()),
                )
                .await
                .unwrap();
            if keys.kvs().len() == 2 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "b never queued");
            tokio::task::yield_now().await;
        }
        raw.lease_revoke(a.lease_id()).await.unwrap();
        for guard in [&x, &y] {
            let reason = tokio::time::timeout(GUARD, guard.lost()).await.unwrap();
            assert_eq!(reason, LossReason::Revoked);
        }
        let next = tokio::time::timeout(GUARD, waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        drop((x, y));
        next.unlock().await.unwrap();
        b.close().await.unwrap();
        (format!("{:x}", a.lease_id()), format!("{:x}", b.lease_id()))
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let value = |name: &str, labels: &[(&str, &str)]| {
        snapshot
            .iter()
            .find(|(key, ..)| {
                key.key().name() == name
                    && labels
                        .iter()
                        .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v))
            })
            .map(|(.., value)| value)
    };
    let gauge = |name: &str, session: &str| match value(name, &[("session", session)]) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("{name} {session}: {other:?}"),
    };
    assert_eq!(gauge("locksmith_holds", &a_id), 0.0);
    assert_eq!(gauge("locksmith_holds", &b_id), 0.0);
    assert_eq!(gauge("locksmith_waiters", &b_id), 0.0);
    let lost = [("backend", "etcd"), ("kind", "lock"), ("reason", "revoked")];
    assert!(matches!(
        value("locksmith_losses_total", &lost),
        Some(DebugValue::Counter(2))
    ));
    assert!(matches!(
        value("locksmith_acquisitions_total", &[("outcome", "cancelled")]),
        Some(DebugValue::Counter(1))
    ));
    assert!(matches!(
        value("locksmith_sessions_ended_total", &[("reason", "revoked")]),
        Some(DebugValue::Counter(1))
    ));
    match value(
        "locksmith_hold_seconds",
        &[("kind", "lock"), ("end", "dropped")],
    ) {
        None => {}
        Some(DebugValue::Histogram(samples)) => {
            assert!(samples.is_empty(), "a lost hold ended twice: {samples:?}")
        }
        other => panic!("{other:?}"),
    }
}
