//! Issue 11, review: attacks on the handoff at the floor (a waiter near the head owns the lock
//! from the last older key's delete event, with no read). Each test tries to make a lock held
//! twice, a waiter succeed after its own key died, or a key stay behind, against a real etcd.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{within, Etcd};
use locksmith_api::{DistributedLock, LockGuard, LossReason};
use locksmith_etcd::etcd_client::{CompactionOptions, Txn, TxnOp};
use locksmith_etcd::EtcdLock;
use parking_lot::Mutex;
use rand::Rng;

/// Ranges (reads) etcd has served so far, counting those inside transactions.
fn ranges(etcd: &Etcd) -> f64 {
    etcd.server.metric("etcd_mvcc_range_total").unwrap()
}

/// Records who holds a name, across sessions: a second holder while the first has neither
/// released nor been told of a loss is the bug we must never ship. Tokens must also rise in
/// the order the holds begin.
#[derive(Default)]
struct Exclusion {
    holders: AtomicUsize,
    overlaps: AtomicUsize,
    tokens: Mutex<Vec<u64>>,
}

impl Exclusion {
    /// Call right after `lock()` returned.
    fn enter(&self, guard: &LockGuard) {
        if self.holders.fetch_add(1, Ordering::SeqCst) != 0 {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        self.tokens.lock().push(guard.fencing_token().get());
    }

    /// Call before `unlock()`: the next holder may start as soon as the delete commits.
    fn leave(&self) {
        self.holders.fetch_sub(1, Ordering::SeqCst);
    }

    fn check(&self) {
        assert_eq!(self.overlaps.load(Ordering::SeqCst), 0, "a lock held twice");
        let tokens = self.tokens.lock();
        assert!(
            tokens.windows(2).all(|w| w[0] < w[1]),
            "fencing tokens out of order: {tokens:?}"
        );
    }
}

/// Attack: keys of nested lock names (`a/x/…` lives under `a/`) older than every key of `a`'s
/// queue. The tracking read checks "nothing older than the keys I know is left" on one page of
/// 16 keys; when nested keys alone fill it the answer is `Incomplete`, the waiter reads the
/// queue again, finds the same keys and tracks them again: a loop with no pause for as long as
/// the holder holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_keys_older_than_the_queue_do_not_make_a_waiter_spin() {
    const NESTED: usize = 20;
    let etcd = Etcd::new();
    let (nester, holder, waiter) = (
        etcd.session().await,
        etcd.session().await,
        etcd.session().await,
    );
    let mut nested = Vec::new();
    for i in 0..NESTED {
        nested.push(nester.lock(&format!("a/n{i}")).await.unwrap());
    }
    let held = holder.lock("a").await.unwrap();
    let waiting = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.lock("a").await })
    };
    etcd.wait_queued("a", 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = ranges(&etcd);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = ranges(&etcd) - before;
    assert!(!waiting.is_finished(), "the waiter took a held lock");
    held.unlock().await.unwrap();
    let guard = within("the waiter", waiting).await.unwrap().unwrap();
    guard.unlock().await.unwrap();
    for guard in nested {
        guard.unlock().await.unwrap();
    }
    println!("{spent} reads in one second of waiting");
    assert!(
        spent < 50.0,
        "a waiter behind one holder made etcd serve {spent} reads in one second"
    );
}

/// Each of `sessions` takes `name` `rounds` times, checking exclusion; with `cancel_one_in`
/// > 0, about one wait in that many is dropped after a random moment (up to 3 ms) instead.
async fn contend(
    sessions: &[EtcdLock],
    name: &str,
    rounds: usize,
    cancel_one_in: u32,
    exclusion: &Arc<Exclusion>,
) {
    let mut tasks = Vec::new();
    for session in sessions {
        let (session, name, exclusion) = (session.clone(), name.to_owned(), Arc::clone(exclusion));
        tasks.push(tokio::spawn(async move {
            for _ in 0..rounds {
                let cancel_after = (cancel_one_in > 0
                    && rand::thread_rng().gen_ratio(1, cancel_one_in))
                .then(|| Duration::from_micros(rand::thread_rng().gen_range(0..3_000)));
                let guard = match cancel_after {
                    Some(after) => match tokio::time::timeout(after, session.lock(&name)).await {
                        Ok(guard) => guard.unwrap(),
                        Err(_) => continue,
                    },
                    None => session.lock(&name).await.unwrap(),
                };
                exclusion.enter(&guard);
                tokio::task::yield_now().await;
                assert!(!guard.is_lost(), "a hold lost with nobody deleting it");
                exclusion.leave();
                guard.unlock().await.unwrap();
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the contenders finished")
            .unwrap();
    }
}

/// Waits until no key is left under `name`.
async fn no_keys_left(etcd: &Etcd, name: &str) {
    within("every key to go", async {
        while !etcd.keys(name).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

async fn sessions(etcd: &Etcd, count: usize) -> Vec<EtcdLock> {
    let mut sessions = Vec::new();
    for _ in 0..count {
        sessions.push(etcd.session().await);
    }
    sessions
}

/// Attack: a released holder re-queues at once, so its key is deleted and created again under
/// the same name while waiters track it. 4 sessions keep every waiter near the head (tracking
/// every older key); 13 put some far back (watching one key four places ahead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_requeueing_at_once_never_hold_twice() {
    let etcd = Etcd::new();
    for (count, rounds) in [(4, 60), (13, 15)] {
        let sessions = sessions(&etcd, count).await;
        let exclusion = Arc::new(Exclusion::default());
        let name = format!("requeue{count}");
        contend(&sessions, &name, rounds, 0, &exclusion).await;
        exclusion.check();
        assert_eq!(exclusion.tokens.lock().len(), count * rounds);
        no_keys_left(&etcd, &name).await;
    }
}

/// Attack: waits dropped at random moments (mid-queue, mid-tracking, just as their turn
/// comes), near the head and far back: withdrawals out of order. No lock held twice, no key
/// left behind, every wait not dropped ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_cancels_near_and_far_never_hold_twice_nor_strand_a_key() {
    let etcd = Etcd::new();
    let sessions = sessions(&etcd, 14).await;
    let exclusion = Arc::new(Exclusion::default());
    contend(&sessions, "cancels", 20, 3, &exclusion).await;
    exclusion.check();
    no_keys_left(&etcd, "cancels").await;
}

/// Attack (etcd issue 9921): the waiter's lease is revoked, then the holder releases at
/// once. The waiter's own key went first, so it must fail, never own the lock from the
/// holder's delete event. Raced the other way round too: whatever the order, an acquired
/// guard whose lease is gone learns it is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_revoked_as_the_holder_releases_never_holds_a_dead_key() {
    let etcd = Etcd::new();
    let holder = etcd.session().await;
    let mut raw = etcd.raw().await;
    for round in 0..6 {
        let held = holder.lock("revoked").await.unwrap();
        let waiter_session = etcd.session().await;
        let waiter = etcd.queued_waiter(&waiter_session, "revoked").await;
        etcd.watches_settle(2.0).await;
        let lease = waiter_session.lease_id();
        if round % 2 == 0 {
            raw.lease_revoke(lease).await.unwrap();
            held.unlock().await.unwrap();
            match within("the waiter to fail", waiter).await.unwrap() {
                Err(err) => assert!(err.is_session_lost(), "round {round}: {err}"),
                Ok(_) => panic!("round {round}: a waiter acquired after its lease was revoked"),
            }
        } else {
            let mut revoker = raw.clone();
            let (revoked, released) = tokio::join!(revoker.lease_revoke(lease), held.unlock());
            revoked.unwrap();
            released.unwrap();
            if let Ok(guard) = within("the waiter to end", waiter).await.unwrap() {
                within("the revoked hold to be lost", guard.lost()).await;
            }
        }
        no_keys_left(&etcd, "revoked").await;
    }
}

/// Attack: the key just ahead withdraws (here: is deleted in the very transaction) as the
/// holder releases, and in the other order. The waiter behind must own the lock only once
/// both are gone, and exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_ahead_withdrawn_as_the_holder_releases() {
    let etcd = Etcd::new();
    let (holder, middle, last) = (
        etcd.session().await,
        etcd.session().await,
        etcd.session().await,
    );
    let mut raw = etcd.raw().await;
    for round in 0..6 {
        let held = holder.lock("ahead").await.unwrap();
        let middle_wait = {
            let middle = middle.clone();
            tokio::spawn(async move { middle.lock("ahead").await })
        };
        etcd.wait_queued("ahead", 2).await;
        let last_wait = {
            let last = last.clone();
            tokio::spawn(async move { last.lock("ahead").await })
        };
        etcd.wait_queued("ahead", 3).await;
        etcd.watches_settle(3.0).await;
        let middle_key = format!("{}ahead/{:x}", etcd.config.namespace, middle.lease_id());
        match round % 3 {
            // An operator removes both in one transaction.
            0 => {
                let both = Txn::new().and_then([
                    TxnOp::delete(held.key(), None),
                    TxnOp::delete(middle_key.as_str(), None),
                ]);
                raw.txn(both).await.unwrap();
                assert_eq!(
                    within("the holder's loss", held.lost()).await,
                    LossReason::Deleted
                );
                assert!(middle_wait.await.unwrap().is_err());
            }
            // The middle waiter gives up while the holder releases.
            1 => {
                middle_wait.abort();
                held.unlock().await.unwrap();
            }
            // The holder releases while an operator deletes the middle waiter's key.
            _ => {
                let mut operator = raw.clone();
                let (released, deleted) =
                    tokio::join!(held.unlock(), operator.delete(middle_key.as_str(), None));
                released.unwrap();
                deleted.unwrap();
                // Owner for a moment at most: its guard then learns of the delete.
                if let Ok(guard) = within("the middle waiter", middle_wait).await.unwrap() {
                    assert_eq!(within("lost()", guard.lost()).await, LossReason::Deleted);
                }
            }
        }
        let guard = within("the last waiter", last_wait).await.unwrap().unwrap();
        assert_eq!(etcd.keys("ahead").await, vec![guard.key().to_owned()]);
        guard.unlock().await.unwrap();
        no_keys_left(&etcd, "ahead").await;
    }
}

/// Attack: keys of nested lock names sort between the queue keys a waiter tracks (its range
/// watch covers them); one is even named after the holder's key (`a/{lease}` as a lock name
/// gives keys `a/{lease}/…`). Their churn must neither hand the lock over nor stall it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_names_churning_inside_the_watched_range() {
    let etcd = Etcd::new();
    let sessions = sessions(&etcd, 4).await;
    let churner = etcd.session().await;
    let mut nested: Vec<String> = (0..16).map(|d| format!("a/{d:x}")).collect();
    nested.extend(sessions.iter().map(|s| format!("a/{:x}", s.lease_id())));
    let stop = Arc::new(AtomicUsize::new(0));
    let churn = {
        let (stop, churner) = (Arc::clone(&stop), churner.clone());
        tokio::spawn(async move {
            while stop.load(Ordering::SeqCst) == 0 {
                for name in &nested {
                    churner.lock(name).await.unwrap().unlock().await.unwrap();
                }
            }
        })
    };
    let exclusion = Arc::new(Exclusion::default());
    contend(&sessions, "a", 40, 0, &exclusion).await;
    stop.store(1, Ordering::SeqCst);
    within("the churn to stop", churn).await.unwrap();
    exclusion.check();
    no_keys_left(&etcd, "a").await;
}

/// Attack: compaction while waiters track (a twin watch created behind the store is served
/// from history, which compaction removes: that watch ends, the wait reads again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_under_contention_never_holds_twice() {
    let etcd = Etcd::new();
    let sessions = sessions(&etcd, 4).await;
    let stop = Arc::new(AtomicUsize::new(0));
    let compactor = {
        let (stop, mut raw) = (Arc::clone(&stop), etcd.raw().await);
        tokio::spawn(async move {
            let mut compactions = 0;
            while stop.load(Ordering::SeqCst) == 0 {
                let put = raw.put("noise", "x", None).await.unwrap();
                let revision = put.header().map_or(0, |h| h.revision());
                let options = CompactionOptions::new().with_physical();
                if raw.compact(revision, Some(options)).await.is_ok() {
                    compactions += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            compactions
        })
    };
    let exclusion = Arc::new(Exclusion::default());
    contend(&sessions, "compact", 50, 0, &exclusion).await;
    stop.store(1, Ordering::SeqCst);
    let compactions = within("the compactor", compactor).await.unwrap();
    println!("{compactions} compactions during 200 handoffs");
    exclusion.check();
    no_keys_left(&etcd, "compact").await;
}

/// Attack: stream resets while waiters track. etcd stopped past the hub's probe deadline makes
/// it reset the stream (every subscriber reads again); contenders go on afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reset_while_tracking_never_holds_twice() {
    let etcd = Etcd::new();
    let sessions = sessions(&etcd, 3).await;
    let holder = etcd.session().await;
    for round in 0..2 {
        let held = holder.lock("reset").await.unwrap();
        let exclusion = Arc::new(Exclusion::default());
        let contenders = {
            let (sessions, exclusion) = (sessions.clone(), Arc::clone(&exclusion));
            tokio::spawn(async move { contend(&sessions, "reset", 10, 0, &exclusion).await })
        };
        etcd.wait_queued("reset", 4).await;
        etcd.watches_settle(4.0).await;
        etcd.server.signal("-STOP").unwrap();
        // Past the probe (0.5 s of silence) and its deadline (1 s), well within the TTL.
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        etcd.server.signal("-CONT").unwrap();
        assert!(!held.is_lost(), "round {round}");
        held.unlock().await.unwrap();
        within("the contenders", contenders).await.unwrap();
        exclusion.check();
        no_keys_left(&etcd, "reset").await;
    }
}

/// Attack: `etcdctl lock` (Go's `concurrency.Mutex`) queued between our holder and our
/// waiter. Our waiter tracks the Go key too and owns the lock only after Go released it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcdctl_waiter_between_ours_is_waited_for() {
    let etcd = Etcd::new();
    let (holder, waiter) = (etcd.session().await, etcd.session().await);
    let name = "peer";
    let full_name = format!("{}{name}", etcd.config.namespace);
    for round in 0..3 {
        let held = holder.lock(name).await.unwrap();
        let mut go = tokio::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.server.endpoint(), "lock", &full_name])
            .args(["--", "sleep", "0.3"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("etcdctl");
        etcd.wait_queued(name, 2).await;
        let waiting = {
            let waiter = waiter.clone();
            tokio::spawn(async move { waiter.lock(name).await })
        };
        etcd.wait_queued(name, 3).await;
        held.unlock().await.unwrap();
        let guard = within("our waiter", waiting).await.unwrap().unwrap();
        // Go's key is gone before ours owns the lock (etcdctl exits once it released).
        let keys = etcd.keys(name).await;
        assert_eq!(keys, vec![guard.key().to_owned()], "round {round}");
        let status = within("etcdctl", go.wait()).await.unwrap();
        assert!(status.success(), "round {round}: etcdctl {status}");
        guard.unlock().await.unwrap();
    }
}

/// Attack: a 3-member cluster whose endpoint list starts with a follower (the watch stream
/// goes through it), stopped for 2 s while 4 sessions contend: the hub resets the stream,
/// waiters read again through the other members, and tracking goes on from a new stream
/// through another member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_stopped_while_waiters_track_never_holds_twice() {
    const ROUNDS: usize = 400;
    use locksmith_etcd::testing::EtcdCluster;
    use locksmith_etcd::EtcdConfig;
    let cluster = EtcdCluster::start(3).unwrap();
    let leader = cluster.leader_index().await.unwrap();
    let follower = (leader + 1) % 3;
    let mut endpoints = cluster.endpoints();
    endpoints.rotate_left(follower);
    let config = EtcdConfig {
        ttl_secs: 6,
        namespace: common::fresh_namespace(),
        ..EtcdConfig::new(endpoints)
    };
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(within("connect", EtcdLock::connect(&config)).await.unwrap());
    }
    let exclusion = Arc::new(Exclusion::default());
    let contenders = {
        let (sessions, exclusion) = (sessions.clone(), Arc::clone(&exclusion));
        tokio::spawn(async move { contend(&sessions, "member", ROUNDS, 0, &exclusion).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.signal_member(follower, "-STOP").unwrap();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    cluster.signal_member(follower, "-CONT").unwrap();
    let during = exclusion.tokens.lock().len();
    // Enough rounds to outlast the stop: the other members serve on while it lasts.
    assert!(
        during < 4 * ROUNDS,
        "the run ended before the member came back"
    );
    tokio::time::timeout(Duration::from_secs(60), contenders)
        .await
        .expect("the contenders finished")
        .unwrap();
    exclusion.check();
    assert_eq!(exclusion.tokens.lock().len(), 4 * ROUNDS);
}

/// Attack (etcd issue 9921): the waiter's keepalives stop reaching etcd, its lease expires
/// while it tracks the holder (its key goes with it), then the holder releases. The waiter,
/// which still hears the stream's events, must fail, never own the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_lease_expires_while_tracking_never_acquires() {
    use locksmith_etcd::testing::TcpProxy;
    let etcd = Etcd::with_ttl(2);
    let holder = etcd.session().await;
    let proxy = TcpProxy::start(&etcd.server.endpoint()).await.unwrap();
    let through_proxy = locksmith_etcd::EtcdConfig {
        endpoints: vec![proxy.endpoint()],
        ..etcd.config.clone()
    };
    let waiter_session = within("connect", EtcdLock::connect(&through_proxy))
        .await
        .unwrap();
    let held = holder.lock("expiry").await.unwrap();
    let waiter = etcd.queued_waiter(&waiter_session, "expiry").await;
    etcd.watches_settle(2.0).await;
    proxy.swallow_requests(true);
    // The lease expires on etcd: only the holder's key is left.
    within("the waiter's key to expire", async {
        while etcd.keys("expiry").await.len() > 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    held.unlock().await.unwrap();
    match within("the waiter to fail", waiter).await.unwrap() {
        Err(err) => println!("the waiter failed: {err}"),
        Ok(_) => panic!("a waiter acquired after its lease expired"),
    }
    assert!(etcd.keys("expiry").await.is_empty());
}

/// Attack: Go clients (`etcdctl lock`, Go's `concurrency.Mutex`) and ours contend on one
/// name, with waiters near and far. Exclusion is checked across processes: every holder
/// creates one directory while it holds and removes it before it releases; creating it fails
/// if another holder still has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_and_rust_contenders_never_hold_at_once() {
    const OURS: usize = 4;
    const ROUNDS: usize = 15;
    const GO_RUNS: usize = 12;
    let etcd = Etcd::new();
    let name = "mixed";
    let full_name = format!("{}{name}", etcd.config.namespace);
    let marker = std::env::temp_dir().join(format!(
        "locksmith-mixed-{}-{}",
        std::process::id(),
        etcd.config.namespace.trim_end_matches('/')
    ));
    let _ = std::fs::remove_dir(&marker);
    let mut tasks = Vec::new();
    for session in sessions(&etcd, OURS).await {
        let marker = marker.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let guard = session.lock(name).await.unwrap();
                std::fs::create_dir(&marker).expect("a Go or Rust holder still holds");
                tokio::time::sleep(Duration::from_millis(2)).await;
                std::fs::remove_dir(&marker).unwrap();
                guard.unlock().await.unwrap();
            }
        }));
    }
    let log = marker.with_extension("log");
    let script = format!(
        "mkdir '{0}' || exit 3; echo held >> '{1}'; sleep 0.005; rmdir '{0}'",
        marker.display(),
        log.display()
    );
    let endpoint = etcd.server.endpoint();
    let go = tokio::spawn(async move {
        let mut runs = Vec::new();
        for _ in 0..GO_RUNS {
            runs.push(
                tokio::process::Command::new("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .args(["--endpoints", &endpoint, "lock", &full_name])
                    .args(["--", "sh", "-c", &script])
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("etcdctl"),
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for mut run in runs {
            let status = run.wait().await.unwrap();
            assert!(status.success(), "etcdctl: {status}");
        }
    });
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("our contenders finished")
            .unwrap();
    }
    within("the Go contenders", go).await.unwrap();
    assert!(!marker.exists());
    let go_holds = std::fs::read_to_string(&log).unwrap().lines().count();
    let _ = std::fs::remove_file(&log);
    assert_eq!(go_holds, GO_RUNS);
    no_keys_left(&etcd, name).await;
}
