//! The known pitfalls of the revision-queue mutex (see DESIGN.md), each against a real etcd.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{within, Etcd};
use locksmith_api::{DistributedLock, LockError, LossReason};
use locksmith_etcd::etcd_client::{CompactionOptions, DeleteOptions, Txn, TxnOp};
use parking_lot::Mutex;
use rand::Rng;

/// Watching the older keys from the store's current revision delivers their deletes at once,
/// where Go's already-passed revision waits for etcd's 100 ms sync loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contended_handoff_is_fast() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let mut handoffs = Vec::new();
    let mut holder = a.lock("handoff").await.unwrap();
    for round in 0..20 {
        let next = if round % 2 == 0 { b.clone() } else { a.clone() };
        let waiter = tokio::spawn(async move {
            let guard = next.lock("handoff").await;
            (guard, Instant::now())
        });
        etcd.wait_queued("handoff", 2).await;
        let released = Instant::now();
        holder.unlock().await.unwrap();
        let (guard, acquired) = within("the handoff", waiter).await.unwrap();
        holder = guard.unwrap();
        handoffs.push(acquired.duration_since(released));
    }
    handoffs.sort();
    let median = handoffs[handoffs.len() / 2];
    println!(
        "handoff median {median:?}, max {:?}",
        handoffs[handoffs.len() - 1]
    );
    assert!(
        median < Duration::from_millis(50),
        "median handoff {median:?}"
    );
}

/// Three sessions take one lock in a tight loop, so etcd sees a write every few hundred µs. A
/// watch "from now" created just as a write commits starts behind the store, and etcd delivers
/// its events only in its 100 ms catch-up loop: 1–2% of handoffs used to take 70–100 ms here.
/// Each wait's watch is asked for twice (see `hub.rs`); waits that long must now be rare, and
/// no watch may be left on the server afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_queue_handoffs_skip_etcds_catch_up_loop() {
    const ROUNDS: usize = 300;
    const SLOW: Duration = Duration::from_millis(60);
    let etcd = Etcd::new();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let session = etcd.session().await;
        clients.push(tokio::spawn(async move {
            let mut waits = Vec::with_capacity(ROUNDS);
            for _ in 0..ROUNDS {
                let asked = Instant::now();
                let guard = session.lock("busy").await.unwrap();
                waits.push(asked.elapsed());
                guard.unlock().await.unwrap();
            }
            (session, waits)
        }));
    }
    // The sessions stay open to the end: closing them would drop their watches anyway.
    let mut sessions = Vec::new();
    let mut waits = Vec::new();
    for client in clients {
        let (session, client_waits) = within("300 rounds", client).await.unwrap();
        sessions.push(session);
        waits.extend(client_waits);
    }
    let slow = waits.iter().filter(|w| **w >= SLOW).count();
    waits.sort();
    println!(
        "{} waits: median {:?}, p99 {:?}, {slow} over {SLOW:?}",
        waits.len(),
        waits[waits.len() / 2],
        waits[waits.len() * 99 / 100]
    );
    // Two stalled handoffs would already make about four slow waits.
    assert!(
        slow <= 4,
        "{slow} of {} waits took over {SLOW:?}",
        waits.len()
    );
    let watchers = within("the watches to be cancelled", async {
        loop {
            let left = etcd
                .server
                .metric("etcd_debugging_mvcc_watcher_total")
                .unwrap();
            if left == 0.0 {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(watchers, 0.0);
    drop(sessions);
}

/// 200 waiters over 50 sessions, half cancelled at random points: everyone alive acquires, and
/// no key is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_cancellation_leaves_no_stuck_keys() {
    let etcd = Etcd::new();
    let mut sessions = Vec::new();
    for _ in 0..50 {
        sessions.push(Arc::new(etcd.session().await));
    }
    let holder = sessions[0].lock("cancel").await.unwrap();
    let mut waiters = Vec::new();
    let mut rng = rand::thread_rng();
    for i in 0..200 {
        let session = Arc::clone(&sessions[i % sessions.len()]);
        let cancel_after = rng
            .gen_bool(0.5)
            .then(|| Duration::from_micros(rng.gen_range(0..30_000)));
        waiters.push(tokio::spawn(async move {
            match cancel_after {
                Some(after) => {
                    let _ = tokio::time::timeout(after, session.lock("cancel")).await;
                    false
                }
                None => {
                    let guard = session.lock("cancel").await.unwrap();
                    guard.unlock().await.unwrap();
                    true
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(40)).await;
    holder.unlock().await.unwrap();
    let mut acquired = 0;
    for waiter in waiters {
        if within("every live waiter to acquire", waiter)
            .await
            .unwrap()
        {
            acquired += 1;
        }
    }
    assert!(acquired > 0);
    within("withdrawn keys to go", async {
        while !etcd.keys("cancel").await.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A waiter whose lease is revoked from outside fails with `SessionLost`, never acquires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_revoked_while_waiting_fails_the_waiter() {
    let etcd = Etcd::with_ttl(3);
    let (a, b) = (etcd.session().await, etcd.session().await);
    let held = a.lock("revoke").await.unwrap();
    let waiter = etcd.queued_waiter(&b, "revoke").await;
    etcd.raw().await.lease_revoke(b.lease_id()).await.unwrap();
    match within("the waiter to fail", waiter).await.unwrap() {
        Err(err) => assert!(err.is_session_lost(), "{err}"),
        Ok(_) => panic!("a waiter acquired on a revoked lease"),
    }
    assert!(!held.is_lost());
    held.unlock().await.unwrap();
}

/// A holder whose lease is revoked learns of it through `lost()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_revoked_while_holding_reports_loss() {
    let etcd = Etcd::with_ttl(3);
    let (a, b) = (etcd.session().await, etcd.session().await);
    let held = a.lock("revoke").await.unwrap();
    etcd.raw().await.lease_revoke(a.lease_id()).await.unwrap();
    within("lost()", held.lost()).await;
    let next = within("the next holder", b.lock("revoke")).await.unwrap();
    assert!(next.fencing_token() > held.fencing_token());
    assert!(held.unlock().await.is_err());
    match within("lock on the dead session", a.lock("other")).await {
        Err(err) => assert!(err.is_session_lost(), "{err}"),
        Ok(_) => panic!("acquired on a revoked lease"),
    }
}

/// etcd stopped for longer than the TTL: the session expires, the guard reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_etcd_past_the_ttl_ends_the_session() {
    let etcd = Etcd::with_ttl(2);
    let a = etcd.session().await;
    let held = a.lock("pause").await.unwrap();
    etcd.server.signal("-STOP").unwrap();
    let reason = within("lost()", held.lost()).await;
    etcd.server.signal("-CONT").unwrap();
    assert_eq!(reason, LossReason::Expired);
    match within("lock after expiry", a.lock("pause")).await {
        Err(err) => assert!(err.is_session_lost(), "{err}"),
        Ok(_) => panic!("acquired on an expired session"),
    }
    // A new session works once etcd is back.
    let b = etcd.session().await;
    let guard = within("lock after recovery", b.lock("pause"))
        .await
        .unwrap();
    guard.unlock().await.unwrap();
}

/// An operator deleting the holder's key: the guard reports loss, the next waiter acquires,
/// and the stale unlock neither succeeds nor touches the new hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_key_is_lost_and_stale_unlock_spares_the_new_hold() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let held = a.lock("op").await.unwrap();
    let waiter = etcd.queued_waiter(&b, "op").await;
    etcd.raw().await.delete(held.key(), None).await.unwrap();
    assert_eq!(within("lost()", held.lost()).await, LossReason::Deleted);
    let next = within("the next holder", waiter).await.unwrap().unwrap();
    match held.unlock().await {
        Err(LockError::LockLost { reason, .. }) => assert_eq!(reason, LossReason::Deleted),
        other => panic!("{other:?}"),
    }
    assert_eq!(etcd.keys("op").await, vec![next.key().to_owned()]);
    assert!(!next.is_lost());
    next.unlock().await.unwrap();
}

/// Issue 11: a waiter learns of its turn from the delete event alone, with no read. An
/// operator deleting the waiter's key and the holder's in one transaction must not make the
/// waiter the owner: its key went at the very revision the lock came free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_key_goes_with_the_holders_never_acquires() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    for round in 0..3 {
        let held = a.lock("both").await.unwrap();
        let waiter = etcd.queued_waiter(&b, "both").await;
        etcd.watches_settle(2.0).await;
        let waiting = format!("{}both/{:x}", etcd.config.namespace, b.lease_id());
        // The holder's key first: a waiter deciding event by event would own the lock first.
        let both = Txn::new().and_then([
            TxnOp::delete(held.key(), None),
            TxnOp::delete(waiting.as_str(), None),
        ]);
        etcd.raw().await.txn(both).await.unwrap();
        match within("the waiter to fail", waiter).await.unwrap() {
            Err(LockError::LockLost { reason, .. }) => assert_eq!(reason, LossReason::Deleted),
            other => panic!("round {round}: {other:?}"),
        }
        assert_eq!(within("lost()", held.lost()).await, LossReason::Deleted);
        assert!(held.unlock().await.is_err());
        // Both sessions live on.
        within("b to lock", b.lock("both"))
            .await
            .unwrap()
            .unlock()
            .await
            .unwrap();
    }
}

/// Issue 11: an operator deleting a waiter's key fails that wait at once (its own key is on
/// the waiter's watch), while the holder keeps the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_key_is_deleted_fails_at_once() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let held = a.lock("gone").await.unwrap();
    let waiter = etcd.queued_waiter(&b, "gone").await;
    etcd.watches_settle(2.0).await;
    let waiting = format!("{}gone/{:x}", etcd.config.namespace, b.lease_id());
    etcd.raw().await.delete(waiting, None).await.unwrap();
    match within("the waiter to fail", waiter).await.unwrap() {
        Err(LockError::LockLost { reason, .. }) => assert_eq!(reason, LossReason::Deleted),
        other => panic!("{other:?}"),
    }
    assert!(!held.is_lost());
    held.unlock().await.unwrap();
}

/// Issue 11: a waiter far back watches one key four places ahead, and once that key goes it
/// tracks the three it knows are left. When that key went out of turn (withdrawn while the
/// holder still holds) and then the three withdraw too, the waiter must find the holder still
/// there, never take the lock beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_far_back_never_overtakes_when_keys_ahead_withdraw() {
    const AHEAD: usize = 4;
    let etcd = Etcd::new();
    let holder = etcd.session().await;
    let held = holder.lock("far").await.unwrap();
    let mut ahead = Vec::new();
    for i in 0..AHEAD {
        let session = etcd.session().await;
        ahead.push(tokio::spawn(async move { session.lock("far").await }));
        etcd.wait_queued("far", i + 2).await;
    }
    let last = etcd.session().await;
    let mut waiter = {
        let last = last.clone();
        tokio::spawn(async move { last.lock("far").await })
    };
    etcd.wait_queued("far", AHEAD + 2).await;
    etcd.watches_settle((AHEAD + 2) as f64).await;
    // The key the last waiter watches withdraws first; it then tracks the other three.
    let mut ahead = ahead.into_iter();
    if let Some(first) = ahead.next() {
        first.abort();
    }
    within("the first withdrawal", async {
        while etcd.keys("far").await.len() > AHEAD + 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for task in ahead {
        task.abort();
    }
    within("the withdrawals", async {
        while etcd.keys("far").await.len() > 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut waiter)
            .await
            .is_err(),
        "the last waiter took the lock while it was held"
    );
    assert!(!held.is_lost());
    held.unlock().await.unwrap();
    let guard = within("the last waiter", waiter).await.unwrap().unwrap();
    assert_eq!(etcd.keys("far").await, vec![guard.key().to_owned()]);
    guard.unlock().await.unwrap();
}

/// A stale unlock after the same session re-acquired (same key, newer revision) does not
/// delete the newer hold: the delete is guarded by the create revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_release_is_guarded_by_revision() {
    let etcd = Etcd::new();
    let a = etcd.session().await;
    let old = a.lock("stale").await.unwrap();
    let (key, old_token) = (old.key().to_owned(), old.fencing_token());
    // An operator deletes the key and this session's next hold recreates it.
    let mut raw = etcd.raw().await;
    raw.delete(key.as_str(), None).await.unwrap();
    within("lost()", old.lost()).await;
    drop(old); // the background release of the stale hold runs now
    let new = within("re-acquire", a.lock("stale")).await.unwrap();
    assert_eq!(new.key(), key);
    assert!(new.fencing_token() > old_token);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(etcd.keys("stale").await, vec![key]);
    assert!(!new.is_lost());
    new.unlock().await.unwrap();
}

/// Compacting the keyspace while a waiter waits does not break or hang it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_during_a_wait() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let held = a.lock("compact").await.unwrap();
    let waiter = etcd.queued_waiter(&b, "compact").await;
    let mut raw = etcd.raw().await;
    let mut revision = 0;
    for i in 0..50 {
        let put = raw.put(format!("noise/{i}"), "x", None).await.unwrap();
        revision = put.header().map_or(0, |h| h.revision());
    }
    raw.compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    raw.delete("noise/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    held.unlock().await.unwrap();
    let guard = within("the waiter after compaction", waiter)
        .await
        .unwrap()
        .unwrap();
    guard.unlock().await.unwrap();
}

/// Two tasks of one session on one name: one key in etcd, one holder at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_session_tasks_share_one_key_in_turn() {
    let etcd = Etcd::new();
    let a = Arc::new(etcd.session().await);
    let first = a.lock("twins").await.unwrap();
    let second = {
        let a = Arc::clone(&a);
        tokio::spawn(async move { a.lock("twins").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!second.is_finished(), "the second task got a held lock");
    assert_eq!(etcd.keys("twins").await.len(), 1);
    let first_token = first.fencing_token();
    first.unlock().await.unwrap();
    let second = within("the second task", second).await.unwrap().unwrap();
    assert!(second.fencing_token() > first_token);
}

/// `a` and `a/b` share Go's key layout (`a/…` contains `a/b/…`) but stay independent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_names_stay_independent() {
    let etcd = Etcd::new();
    let (x, y) = (etcd.session().await, etcd.session().await);
    let nested = x.lock("a/b").await.unwrap();
    let deeper = x.lock("a/b/c").await.unwrap();
    // `a/b`'s key sorts first under `a/`, yet `a` is free.
    let outer = within("lock a", y.lock("a")).await.unwrap();
    assert!(y.try_lock("a/b").await.unwrap().is_none());
    let waiter = {
        let y = y.clone();
        tokio::spawn(async move { y.lock("a/b").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished());
    outer.unlock().await.unwrap();
    assert!(
        !waiter.is_finished(),
        "releasing `a` must not hand over `a/b`"
    );
    nested.unlock().await.unwrap();
    let guard = within("a/b after its holder", waiter)
        .await
        .unwrap()
        .unwrap();
    guard.unlock().await.unwrap();
    deeper.unlock().await.unwrap();
}

/// Bad settings and unreachable endpoints are typed errors within the connect timeout.
#[tokio::test]
async fn connect_errors_are_typed_and_prompt() {
    use locksmith_etcd::{EtcdConfig, EtcdLock, EtcdTls};
    let unreachable = EtcdConfig {
        connect_timeout_ms: 300,
        ..EtcdConfig::new(["127.0.0.1:1"])
    };
    let started = Instant::now();
    match EtcdLock::connect(&unreachable).await {
        Err(err @ LockError::Unavailable { .. }) => {
            assert!(err.to_string().contains("127.0.0.1:1"), "{err}")
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));

    for (config, says) in [
        (
            EtcdConfig {
                ttl_secs: 0,
                ..EtcdConfig::default()
            },
            "ttl_secs",
        ),
        (EtcdConfig::new(Vec::<String>::new()), "no endpoint"),
        (
            EtcdConfig {
                tls: Some(EtcdTls {
                    ca: Some("/nonexistent/ca.pem".into()),
                    ..EtcdTls::default()
                }),
                ..EtcdConfig::default()
            },
            "ca.pem",
        ),
    ] {
        match EtcdLock::connect(&config).await {
            Err(err @ LockError::InvalidConfig { .. }) => {
                assert!(err.to_string().contains(says), "{err}")
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Issue 11: 100 sessions queue on one name (here, not in `scale.rs`: those tests bound
/// their process's peak memory). They are served in the order they queued, and
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
    for task in tasks {
        within("every waiter to be served", task).await.unwrap();
    }
    let events = etcd.server.metric(EVENTS).unwrap() - before;
    let per_release = events / (SESSIONS + 1) as f64;
    println!("{per_release:.1} watch events per release for {SESSIONS} waiters");
    assert_eq!(*order.lock(), (0..SESSIONS).collect::<Vec<_>>());
    // 3 trackers and one waiter further back per release, and a few twins.
    assert!(per_release <= 14.0, "{per_release:.1} events per release");
}
