//! Issue 12, review: attacks on the etcd leader election. Each test tries to make two leaders
//! at once, a campaign succeed after its session ended, a key stay behind, an observer go
//! backwards, repeat itself, miss the final state or never end, or a quiet observer spin,
//! against a real etcd.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::hold_proxy::{proxied_session, wait_headers_held, HoldProxy};
use common::observe::{next, until_value};
use common::{within, Etcd};
use locksmith_api::{DistributedLock, LeaderElection, LeaderState, LeaderWatch, Leadership};
use locksmith_etcd::etcd_client::{GetOptions, PutOptions};
use parking_lot::Mutex;
use rand::Rng;

/// The next item if one comes within `quiet`.
async fn item_within(watch: &mut LeaderWatch, quiet: Duration) -> Option<LeaderState> {
    match tokio::time::timeout(quiet, watch.next()).await {
        Ok(Some(Ok(state))) => Some(state),
        Ok(other) => panic!("the watch ended: {other:?}"),
        Err(_) => None,
    }
}

/// Attack: a candidate queueing behind the leader and withdrawing again, and a nested name's
/// key under the prefix, change nothing an observer is promised to see ("one item per change:
/// a new leader, a new proclaimed value, or None"). The memory backend publishes on a holder
/// change only; etcd's feed published the unchanged leader again at every event of the range,
/// so every observer woke and yielded a repeat for each candidate that came or went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_coming_and_going_behind_the_leader_are_not_items() {
    let etcd = Etcd::new();
    let (a, b, watcher) = (
        etcd.session().await,
        etcd.session().await,
        etcd.session().await,
    );
    let leading = a.campaign("svc", b"a").await.unwrap();
    let mut watch = watcher.observe("svc").await.unwrap();
    assert_eq!(next(&mut watch).await, Some(leading.info()));
    let queued = tokio::time::timeout(Duration::from_millis(300), b.campaign("svc", b"b")).await;
    assert!(queued.is_err(), "b led while a did");
    common::keys_become(&etcd, "svc", vec![leading.key().to_owned()]).await;
    let nested = b.lock("svc/inner").await.unwrap();
    nested.unlock().await.unwrap();
    let repeat = item_within(&mut watch, Duration::from_millis(500)).await;
    assert_eq!(repeat, None, "an item without a change");
    // A proclamation, even of the same value, is an item (as on the memory backend).
    leading.proclaim(b"a").await.unwrap();
    assert_eq!(next(&mut watch).await, Some(leading.info()));
    leading.resign().await.unwrap();
    assert_eq!(next(&mut watch).await, None);
}

/// Attack: campaigns cut at many points (queued behind a leader, and uncontended, where the
/// cut falls on the put, its reply, or the election itself) and campaign tasks aborted at
/// random points. Afterwards only the leader's key may be left, and a later candidate of the
/// same session leads as soon as the leader resigns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_cut_at_many_points_leave_no_key() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    // Uncontended: a cut campaign either led (and its drop resigned) or withdrew.
    for step in 0..40u64 {
        let cut = Duration::from_micros(step * 150);
        let _ = tokio::time::timeout(cut, b.campaign("free", b"b")).await;
    }
    common::keys_become(&etcd, "free", vec![]).await;
    // Contended: every cut campaign queued, or was about to.
    let leading = a.campaign("svc", b"a").await.unwrap();
    for step in 0..40u64 {
        let cut = Duration::from_micros(step * 250);
        let _ = tokio::time::timeout(cut, b.campaign("svc", b"b")).await;
    }
    let mut rng = rand::thread_rng();
    for _ in 0..20 {
        let b = b.clone();
        let task = tokio::spawn(async move { b.campaign("svc", b"b").await.map(|_| ()) });
        tokio::time::sleep(Duration::from_micros(rng.gen_range(0..8_000))).await;
        task.abort();
        let _ = task.await;
    }
    common::keys_become(&etcd, "svc", vec![leading.key().to_owned()]).await;
    let last = {
        let b = b.clone();
        tokio::spawn(async move { b.campaign("svc", b"last").await })
    };
    etcd.wait_queued("svc", 2).await;
    leading.resign().await.unwrap();
    let last = within("b to lead", last).await.unwrap().unwrap();
    assert_eq!(b.leader("svc").await.unwrap(), Some(last.info()));
    last.resign().await.unwrap();
    common::keys_become(&etcd, "svc", vec![]).await;
}

/// Attack: the session's lease revoked by an operator while it campaigns and observes. The
/// campaign must fail (never lead on a dead lease, etcd #11051), its observers must end, and
/// the next candidate leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_lease_fails_the_campaign_and_ends_the_observers() {
    let etcd = Etcd::new();
    let (a, b, c) = (
        etcd.session().await,
        etcd.session().await,
        etcd.session().await,
    );
    let leading = a.campaign("svc", b"a").await.unwrap();
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { b.campaign("svc", b"b").await })
    };
    let next_up = {
        etcd.wait_queued("svc", 2).await;
        let c = c.clone();
        tokio::spawn(async move { c.campaign("svc", b"c").await })
    };
    etcd.wait_queued("svc", 3).await;
    let mut watch = b.observe("svc").await.unwrap();
    assert_eq!(next(&mut watch).await, Some(leading.info()));
    etcd.raw().await.lease_revoke(b.lease_id()).await.unwrap();
    leading.resign().await.unwrap();
    let err = within("b's campaign to fail", waiting)
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.is_session_lost(), "{err}");
    let third = within("c to lead", next_up).await.unwrap().unwrap();
    loop {
        match within("b's watch to end", watch.next()).await {
            Some(Ok(state)) => {
                // Whatever it showed before ending is a state that was, never b.
                assert!(state.is_none_or(|l| l.value() != b"b"), "b shown as leader");
            }
            Some(Err(err)) => {
                assert!(err.is_session_lost(), "{err}");
                break;
            }
            None => panic!("the watch ended without an error"),
        }
    }
    assert!(within("the end", watch.next()).await.is_none());
    common::keys_become(&etcd, "svc", vec![third.key().to_owned()]).await;
}

/// Attack: the last handle of a session dropped while its observers read on. The session
/// ends (its lease is revoked), so its observers must end too rather than wait forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_session_ends_its_observers() {
    let etcd = Etcd::new();
    let (a, watcher) = (etcd.session().await, etcd.session().await);
    let leading = a.campaign("svc", b"a").await.unwrap();
    let mut watch = watcher.observe("svc").await.unwrap();
    assert_eq!(next(&mut watch).await, Some(leading.info()));
    drop(watcher);
    match within("the watch to end", watch.next()).await {
        Some(Err(_)) => {}
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(within("the end", watch.next()).await.is_none());
}

/// One observer's record: every item, in order.
type Seen = Arc<Mutex<Vec<LeaderState>>>;

/// Reads `watch` into `seen` until it ends or the task is aborted.
fn record(mut watch: LeaderWatch) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen = Seen::default();
    let sink = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        while let Some(Ok(state)) = watch.next().await {
            sink.lock().push(state);
        }
    });
    (seen, task)
}

/// `value` is `"{session}-{n}"`: the proclamation counter of one leadership.
fn counter(state: &LeaderState) -> Option<(u64, u64)> {
    let leader = state.as_ref()?;
    let text = std::str::from_utf8(leader.value()).ok()?;
    let n = text.rsplit('-').next()?.parse().ok()?;
    Some((leader.fencing_token().get(), n))
}

/// Attack: five sessions campaign, proclaim a rising counter and resign over and over while
/// observers in other sessions (some starting midway, several on one feed) read. No observer
/// may go back (a lower token, or an older value of one leadership), and once quiet each one's
/// last item is `leader()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_never_go_back_and_settle_on_the_leader_under_churn() {
    const CANDIDATES: usize = 5;
    const ROUNDS: usize = 8;
    let etcd = Etcd::new();
    let (o1, o2) = (etcd.session().await, etcd.session().await);
    let mut observers = vec![
        record(o1.observe("svc").await.unwrap()),
        record(o1.observe("svc").await.unwrap()),
        record(o2.observe("svc").await.unwrap()),
    ];
    let mut candidates = Vec::new();
    for i in 0..CANDIDATES {
        let session = etcd.session().await;
        candidates.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let leading = session
                    .campaign("svc", format!("{i}-0").as_bytes())
                    .await
                    .unwrap();
                for n in 1..=3 {
                    leading
                        .proclaim(format!("{i}-{n}").as_bytes())
                        .await
                        .unwrap();
                }
                if round % 2 == 0 {
                    leading.resign().await.unwrap();
                } else {
                    drop(leading);
                }
            }
        }));
    }
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        observers.push(record(o1.observe("svc").await.unwrap()));
        observers.push(record(o2.observe("svc").await.unwrap()));
    }
    for candidate in candidates {
        within("the candidates", candidate).await.unwrap();
    }
    // A last, settled state everybody must end on.
    let last = etcd.session().await;
    let leading = last.campaign("svc", b"9-7").await.unwrap();
    let settled = Some(leading.info());
    within("every observer to settle", async {
        while observers
            .iter()
            .any(|(seen, _)| seen.lock().last() != Some(&settled))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(o1.leader("svc").await.unwrap(), settled);
    for (index, (seen, task)) in observers.iter().enumerate() {
        task.abort();
        let seen = seen.lock();
        let mut last: Option<(u64, u64)> = None;
        for state in seen.iter() {
            let Some(now) = counter(state) else { continue };
            if let Some(before) = last {
                assert!(
                    now >= before,
                    "observer {index} went back from {before:?} to {now:?}: {seen:?}"
                );
            }
            last = Some(now);
        }
    }
}

/// Attack: a quiet name with an observer, a leader and a queued candidate costs etcd no
/// requests: no feed rereads in a loop, no waiter polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_election_sends_etcd_no_requests() {
    let etcd = Etcd::new();
    let (a, b, watcher) = (
        etcd.session().await,
        etcd.session().await,
        etcd.session().await,
    );
    let leading = a.campaign("svc", b"a").await.unwrap();
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { b.campaign("svc", b"b").await })
    };
    etcd.wait_queued("svc", 2).await;
    let mut watch = watcher.observe("svc").await.unwrap();
    assert_eq!(next(&mut watch).await, Some(leading.info()));
    // The leader's loss watch, the waiter's watch, the observers' feed.
    etcd.watches_settle(3.0).await;
    let before = etcd.requests();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let during = etcd.requests() - before;
    assert!(during <= 2.0, "{during} requests while nothing changed");
    leading.resign().await.unwrap();
    let second = within("b to lead", waiting).await.unwrap().unwrap();
    assert_eq!(until_value(&mut watch, b"b").await, Some(second.info()));
}

/// Waits until `key` exists.
async fn key_appears(etcd: &Etcd, key: &str) {
    let mut raw = etcd.raw().await;
    within("the key to appear", async {
        while raw.get(key, None).await.unwrap().kvs().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

/// Attack: the campaign's put commits but its reply is lost. The retry finds the key with the
/// proposal: it is this campaign's, which leads once, with one key, the token of that key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_whose_reply_was_lost_leads_with_its_one_key() {
    let etcd = Etcd::new();
    let (proxy, a) = etcd.proxied().await;
    let key = format!("{}svc/{:x}", etcd.config.namespace, a.lease_id());
    proxy.swallow_replies(true);
    let campaign = {
        let a = a.clone();
        tokio::spawn(async move { a.campaign("svc", b"a").await })
    };
    key_appears(&etcd, &key).await;
    proxy.swallow_replies(false);
    proxy.cut_connections();
    let leading = within("the campaign", campaign).await.unwrap().unwrap();
    let stored = etcd.raw().await.get(key.as_str(), None).await.unwrap();
    let kv = &stored.kvs()[0];
    assert_eq!(leading.fencing_token().get(), kv.create_revision() as u64);
    assert_eq!(kv.value(), b"a");
    common::keys_become(&etcd, "svc", vec![key.clone()]).await;
    leading.resign().await.unwrap();
    common::keys_become(&etcd, "svc", vec![]).await;
}

/// Attack: a campaign queued behind a leader whose reply was lost is dropped before it hears
/// back: its key (revision unknown, withdrawn by its proposal) must go, and the name must not
/// stay blocked for the session's next campaign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_dropped_after_its_reply_was_lost_leaves_no_key() {
    let etcd = Etcd::new();
    let b = etcd.session().await;
    let leading = b.campaign("svc", b"b").await.unwrap();
    // A session (and proxy) per round: a round's withdrawal may still wait for the reply of a
    // delete that etcd already applied, and swallowing the next round's replies on the same
    // session would hold that withdrawal, and with it the session's ticket on the name, for
    // as long as the swallowing lasts (by design: the name stays off limits until etcd answers).
    let mut last = None;
    for _ in 0..3 {
        let (proxy, a) = etcd.proxied().await;
        let key = format!("{}svc/{:x}", etcd.config.namespace, a.lease_id());
        proxy.swallow_replies(true);
        let campaign = {
            let a = a.clone();
            tokio::spawn(async move { a.campaign("svc", b"a").await.map(|_| ()) })
        };
        key_appears(&etcd, &key).await;
        campaign.abort();
        let _ = campaign.await;
        proxy.swallow_replies(false);
        proxy.cut_connections();
        common::keys_become(&etcd, "svc", vec![leading.key().to_owned()]).await;
        last = Some((proxy, a));
    }
    let Some((_proxy, a)) = last else {
        unreachable!("three rounds ran")
    };
    let again = {
        let a = a.clone();
        tokio::spawn(async move { a.campaign("svc", b"again").await })
    };
    etcd.wait_queued("svc", 2).await;
    leading.resign().await.unwrap();
    let again = within("a to lead", again).await.unwrap().unwrap();
    assert_eq!(again.value(), b"again");
}

/// Attack: a proclamation cut short while etcd is stopped, then a resign. Whenever the cut
/// request reaches etcd, it never brings the key back after the resign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proclamation_cut_short_does_not_outlive_the_resign() {
    let etcd = Etcd::new();
    let (a, watcher) = (etcd.session().await, etcd.session().await);
    let leading = a.campaign("svc", b"a").await.unwrap();
    {
        let _stopped = etcd.server.stop().unwrap();
        let cut = tokio::time::timeout(Duration::from_millis(100), leading.proclaim(b"late")).await;
        assert!(cut.is_err(), "proclaimed with etcd stopped");
    }
    assert_eq!(
        leading.value(),
        b"a",
        "value() changed by an unfinished proclamation"
    );
    leading.resign().await.unwrap();
    let mut watch = watcher.observe("svc").await.unwrap();
    assert_eq!(next(&mut watch).await, None);
    assert_eq!(
        item_within(&mut watch, Duration::from_millis(700)).await,
        None
    );
    common::keys_become(&etcd, "svc", vec![]).await;
}

/// Attack: keys of nested names under the prefix, older than every candidate, filling the
/// `leader()` read's pages, while the store is compacted over and over. The nested keys
/// never lead, and a read whose later pages were compacted away reads again rather than
/// failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_names_never_lead_and_leader_reads_survive_compaction() {
    const NESTED: usize = 300;
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let mut raw = etcd.raw().await;
    let lease = raw.lease_grant(60, None).await.unwrap().id();
    for i in 0..NESTED {
        raw.put(
            format!("{}svc/inner/{i}", etcd.config.namespace),
            "x",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    }
    let leading = a.campaign("svc", b"a").await.unwrap();
    let mut watch = b.observe("svc").await.unwrap();
    assert_eq!(next(&mut watch).await, Some(leading.info()));
    let compactor = {
        let mut raw = raw.clone();
        tokio::spawn(async move {
            loop {
                let put = raw.put("churn", "x", None).await.unwrap();
                let now = put.header().unwrap().revision();
                let _ = raw.compact(now, None).await;
            }
        })
    };
    let mut failures = Vec::new();
    for _ in 0..100 {
        match b.leader("svc").await {
            Ok(state) => assert_eq!(state, Some(leading.info())),
            Err(err) => failures.push(err.to_string()),
        }
    }
    compactor.abort();
    assert!(
        failures.is_empty(),
        "{} reads failed: {:?}",
        failures.len(),
        failures.first()
    );
    leading.proclaim(b"a2").await.unwrap();
    assert_eq!(until_value(&mut watch, b"a2").await, Some(leading.info()));
    // The prefix as Go reads it: the nested keys are older, yet never shown.
    let all = raw
        .get(
            format!("{}svc/", etcd.config.namespace),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    assert_eq!(all.kvs().len(), NESTED + 1);
}

/// Attack: a lock in one session and a campaign of the same name in another are one queue:
/// never both at once, in arrival order either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_and_a_campaign_in_two_sessions_exclude_each_other() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let held = a.lock("svc").await.unwrap();
    let campaign = {
        let b = b.clone();
        tokio::spawn(async move { b.campaign("svc", b"b").await })
    };
    etcd.wait_queued("svc", 2).await;
    let locking = {
        let a = a.clone();
        tokio::spawn(async move { a.lock("svc").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!campaign.is_finished());
    let token = held.fencing_token();
    held.unlock().await.unwrap();
    let leading: Leadership = within("b to lead", campaign).await.unwrap().unwrap();
    assert!(leading.fencing_token() > token);
    etcd.wait_queued("svc", 2).await;
    assert!(!locking.is_finished());
    let token = leading.fencing_token();
    leading.resign().await.unwrap();
    let held = within("a's lock", locking).await.unwrap().unwrap();
    assert!(held.fencing_token() > token);
}

/// Attack: a waiting candidate cut off from etcd (its requests lost) until its lease expires,
/// while the leader resigns. Its campaign must fail when the session ends (Go's Campaign
/// returns success here, etcd #11051), never lead, its observer must end, and the next
/// candidate leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_whose_lease_expired_while_cut_off_never_leads() {
    let etcd = Etcd::with_ttl(2);
    let a = etcd.session().await;
    let (proxy, b) = etcd.proxied().await;
    let c = etcd.session().await;
    let leading = a.campaign("svc", b"a").await.unwrap();
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { b.campaign("svc", b"b").await })
    };
    etcd.wait_queued("svc", 2).await;
    let next_up = {
        let c = c.clone();
        tokio::spawn(async move { c.campaign("svc", b"c").await })
    };
    etcd.wait_queued("svc", 3).await;
    let mut watch = b.observe("svc").await.unwrap();
    assert_eq!(next(&mut watch).await, Some(leading.info()));
    proxy.swallow_requests(true);
    proxy.cut_connections();
    // b's key goes with its lease, 2 s after its last refresh.
    common::keys_become(&etcd, "svc", {
        let mut keys = vec![
            leading.key().to_owned(),
            format!("{}svc/{:x}", etcd.config.namespace, c.lease_id()),
        ];
        keys.sort();
        keys
    })
    .await;
    leading.resign().await.unwrap();
    let third = within("c to lead", next_up).await.unwrap().unwrap();
    proxy.swallow_requests(false);
    let err = within("b's campaign to fail", waiting)
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.is_session_lost(), "{err}");
    assert_eq!(c.leader("svc").await.unwrap(), Some(third.info()));
    // b's observer, cut off with it, ends with the session.
    loop {
        match within("b's watch to end", watch.next()).await {
            Some(Ok(_)) => {}
            Some(Err(err)) => {
                assert!(err.is_session_lost(), "{err}");
                break;
            }
            None => panic!("the watch ended without an error"),
        }
    }
}

/// Attack: etcd stopped (SIGSTOP) for longer than the hub's progress deadline while candidates
/// come, proclaim and go. Observers in two sessions must come back and settle on the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_settle_after_etcd_stalls_during_changes() {
    let etcd = Etcd::new();
    let (a, b, o1, o2) = (
        etcd.session().await,
        etcd.session().await,
        etcd.session().await,
        etcd.session().await,
    );
    let (seen1, task1) = record(o1.observe("svc").await.unwrap());
    let (seen2, task2) = record(o2.observe("svc").await.unwrap());
    let first = a.campaign("svc", b"a").await.unwrap();
    let second = {
        let b = b.clone();
        tokio::spawn(async move {
            let leading = b.campaign("svc", b"b").await.unwrap();
            leading.proclaim(b"b-1").await.unwrap();
            leading
        })
    };
    etcd.wait_queued("svc", 2).await;
    {
        let _stopped = etcd.server.stop().unwrap();
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        // The resign and the proclamation go out while etcd is stopped.
        tokio::spawn(first.resign());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let second = within("b to lead", second).await.unwrap();
    let settled = Some(second.info());
    assert_eq!(second.value(), b"b-1");
    within("both observers to settle", async {
        while seen1.lock().last() != Some(&settled) || seen2.lock().last() != Some(&settled) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    task1.abort();
    task2.abort();
}

/// Attack: more candidate keys under the prefix than one page of the feed's read (nested
/// names), while the store is compacted over and over. The feed's paged read is pinned to
/// its first page's revision; if every round is compacted away between its pages, the
/// observers stall (Go's Observe live-locks after compaction, etcd #7815).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_keep_up_with_a_long_prefix_under_constant_compaction() {
    const NESTED: usize = 1_100;
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let mut raw = etcd.raw().await;
    let lease = raw.lease_grant(60, None).await.unwrap().id();
    for chunk in (0..NESTED).collect::<Vec<_>>().chunks(100) {
        let puts: Vec<_> = chunk
            .iter()
            .map(|i| {
                locksmith_etcd::etcd_client::TxnOp::put(
                    format!("{}svc/inner/{i:04}", etcd.config.namespace),
                    "x",
                    Some(PutOptions::new().with_lease(lease)),
                )
            })
            .collect();
        raw.txn(locksmith_etcd::etcd_client::Txn::new().and_then(puts))
            .await
            .unwrap();
    }
    let leading = a.campaign("svc", b"v0").await.unwrap();
    let compactor = {
        let mut raw = raw.clone();
        tokio::spawn(async move {
            loop {
                let put = raw.put("churn", "x", None).await.unwrap();
                let now = put.header().unwrap().revision();
                let _ = raw.compact(now, None).await;
            }
        })
    };
    let mut watch = b.observe("svc").await.unwrap();
    assert_eq!(next(&mut watch).await, Some(leading.info()));
    leading.proclaim(b"v1").await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), until_value(&mut watch, b"v1")).await;
    compactor.abort();
    assert!(seen.is_ok(), "the observer stalled under compaction");
}

/// Attack: observers that come and go, one at a time and in crowds. Once the last one of a
/// name is gone its server watch must go too (none leaks), and a later observer of the name
/// starts afresh and sees changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_that_come_and_go_leak_no_watch() {
    let etcd = Etcd::new();
    let (a, watcher) = (etcd.session().await, etcd.session().await);
    let leading = a.campaign("svc", b"v0").await.unwrap();
    // The leader's loss watch.
    etcd.watches_settle(1.0).await;
    let baseline = etcd
        .server
        .metric("etcd_debugging_mvcc_watcher_total")
        .unwrap();
    for round in 0..30 {
        let mut watches = Vec::new();
        for _ in 0..(1 + round % 4) {
            watches.push(watcher.observe("svc").await.unwrap());
        }
        for watch in &mut watches {
            assert!(next(watch).await.is_some());
        }
        drop(watches);
    }
    within("the feed's watch to go", async {
        while etcd
            .server
            .metric("etcd_debugging_mvcc_watcher_total")
            .unwrap()
            > baseline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let mut watch = watcher.observe("svc").await.unwrap();
    assert_eq!(next(&mut watch).await, Some(leading.info()));
    leading.proclaim(b"v1").await.unwrap();
    assert_eq!(until_value(&mut watch, b"v1").await, Some(leading.info()));
}

/// Attack: a waiting candidate's session is closed at the moment the leader resigns. Its
/// campaign either fails with `SessionLost`, or was granted first, and then its leadership
/// reports the loss at once; no key of the closed session stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_racing_its_session_s_close_never_leads_unknowingly() {
    let etcd = Etcd::new();
    let a = etcd.session().await;
    let mut rng = rand::thread_rng();
    for round in 0..12 {
        let b = etcd.session().await;
        let leading = a.campaign("svc", b"a").await.unwrap();
        let waiting = {
            let b = b.clone();
            tokio::spawn(async move { b.campaign("svc", b"b").await })
        };
        etcd.wait_queued("svc", 2).await;
        let delay = Duration::from_micros(rng.gen_range(0..3_000));
        let closing = {
            let b = b.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                b.close().await
            })
        };
        leading.resign().await.unwrap();
        match within("b's campaign", waiting).await.unwrap() {
            Ok(leadership) => {
                within("the loss", leadership.lost()).await;
                assert!(leadership.proclaim(b"late").await.is_err());
            }
            Err(err) => assert!(err.is_session_lost(), "round {round}: {err}"),
        }
        let _ = within("the close", closing).await.unwrap();
        common::keys_become(&etcd, "svc", vec![]).await;
    }
}

/// Attack: a resign issued while etcd is stopped for longer than one attempt's timeout. It
/// must not give up (Go's Resign forgets the key on an error, etcd #22123): it completes
/// once etcd answers, the key is gone and the next candidate leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resign_while_etcd_is_stopped_completes_when_it_is_back() {
    let etcd = Etcd::with_ttl(6);
    let (a, b) = (etcd.session().await, etcd.session().await);
    let leading = a.campaign("svc", b"a").await.unwrap();
    let next_up = {
        let b = b.clone();
        tokio::spawn(async move { b.campaign("svc", b"b").await })
    };
    etcd.wait_queued("svc", 2).await;
    let resigning = {
        let _stopped = etcd.server.stop().unwrap();
        let resigning = tokio::spawn(leading.resign());
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert!(!resigning.is_finished(), "resigned with etcd stopped");
        resigning
    };
    let resigned = within("the resign", resigning).await.unwrap();
    assert!(resigned.is_ok(), "{resigned:?}");
    let second = within("b to lead", next_up).await.unwrap().unwrap();
    common::keys_become(&etcd, "svc", vec![second.key().to_owned()]).await;
}

/// Attack: a proclamation right after the leader's session ended (closed here), before the
/// leadership's loss watch has run. "proclaim fails with `LockLost` once leadership is gone"
/// (as on the memory backend), whichever part of the backend sees the end first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proclamation_after_the_session_ended_fails_with_lock_lost() {
    let etcd = Etcd::new();
    for _ in 0..20 {
        let a = etcd.session().await;
        let leading = a.campaign("svc", b"a").await.unwrap();
        a.close().await.unwrap();
        let err = leading.proclaim(b"late").await.unwrap_err();
        assert!(
            matches!(err, locksmith_api::LockError::LockLost { .. }),
            "{err:?}"
        );
    }
}

/// Attack: a proclamation delayed on the network (a slow member does the same). The client
/// gives up on the first attempt, retries on a fresh connection and succeeds; the leader then
/// proclaims again. When the delayed first attempt reaches etcd it is still guarded only by
/// the key's create revision, which still matches: it overwrote the later value, so etcd,
/// `leader()` and every observer's last item showed the older value while `value()` showed
/// the newer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_proclamation_never_overwrites_a_later_one() {
    let etcd = Etcd::new();
    let proxy = HoldProxy::start(etcd.server.endpoint()).await;
    let a = proxied_session(&etcd, &proxy, 6).await;
    let watcher = etcd.session().await;
    let leading = a.campaign("svc", b"v1").await.unwrap();
    let mut watch = watcher.observe("svc").await.unwrap();
    assert_eq!(next(&mut watch).await, Some(leading.info()));

    proxy.hold_all();
    let proclaiming = tokio::spawn(async move { leading.proclaim(b"v2").await.map(|()| leading) });
    wait_headers_held(&proxy, 1).await;
    proxy.cut_held();
    let leading = within("the retried proclamation", proclaiming)
        .await
        .unwrap()
        .unwrap();
    leading.proclaim(b"v3").await.unwrap();
    until_value(&mut watch, b"v3").await;

    // The first attempt of "v2" arrives now.
    proxy.deliver_held().await;
    let late = item_within(&mut watch, Duration::from_millis(700)).await;
    let stored = watcher.leader("svc").await.unwrap().unwrap();
    assert_eq!(
        (late, stored.value()),
        (None, &b"v3"[..]),
        "a late proclamation replaced the later one"
    );
    assert_eq!(leading.value(), b"v3");
}

/// Attack on the guarded proclamation: the leader's value overwritten by an operator, and a
/// proclamation cut short before its reply. The next proclamation still lands (over whatever
/// is there) and keeps the token; one of the deleted key fails with `LockLost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proclamations_go_on_over_an_operator_s_value_and_a_cut_one() {
    let etcd = Etcd::new();
    let a = etcd.session().await;
    let leading = a.campaign("svc", b"v1").await.unwrap();
    let mut raw = etcd.raw().await;
    raw.put(
        leading.key(),
        "operator",
        Some(PutOptions::new().with_lease(a.lease_id())),
    )
    .await
    .unwrap();
    leading.proclaim(b"v2").await.unwrap();
    assert_eq!(a.leader("svc").await.unwrap(), Some(leading.info()));
    for step in 0..20u64 {
        let cut = Duration::from_micros(step * 100);
        let _ = tokio::time::timeout(cut, leading.proclaim(format!("cut-{step}").as_bytes())).await;
    }
    leading.proclaim(b"v3").await.unwrap();
    let info = a.leader("svc").await.unwrap().unwrap();
    assert_eq!(
        (info.value(), info.fencing_token()),
        (&b"v3"[..], leading.fencing_token())
    );
    raw.delete(leading.key(), None).await.unwrap();
    let err = leading.proclaim(b"v4").await.unwrap_err();
    assert!(
        matches!(err, locksmith_api::LockError::LockLost { .. }),
        "{err}"
    );
}

/// Attack: a campaign's proposal is not unique, yet the session's sweep (for a queue put whose
/// fate was unknown) deleted "a key of ours that still carries the attempt's value". The
/// sweep's delete is delayed on the network; it gives up, and the session campaigns again
/// with the same proposal and leads. When the delayed delete reaches etcd, the value still
/// matches: it deleted the new leader's key, and the session lost a leadership it had just
/// won. A lock's value is unique to its attempt, so only campaigns are exposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_sweep_never_deletes_a_later_campaign_s_key() {
    let etcd = Etcd::new();
    let proxy = HoldProxy::start(etcd.server.endpoint()).await;
    // TTL 3 s: the sweep looks every second.
    let a = proxied_session(&etcd, &proxy, 3).await;
    a.lock("warm").await.unwrap().unlock().await.unwrap();

    // A campaign whose first queue request is cut off: the session remembers it as unsure
    // and starts sweeping for what it may leave behind.
    proxy.hold_all();
    let campaign = {
        let a = a.clone();
        tokio::spawn(async move { a.campaign("svc", b"v").await })
    };
    wait_headers_held(&proxy, 1).await;
    proxy.cut_held();
    let first = within("the first campaign", campaign)
        .await
        .unwrap()
        .unwrap();
    proxy.deliver_held().await;
    first.resign().await.unwrap();

    // The sweep's next delete is held back, then the client side is cut: it gives up.
    let before = proxy.headers_held();
    proxy.hold_all();
    wait_headers_held(&proxy, before + 1).await;
    proxy.cut_held();

    let second = within("the second campaign", a.campaign("svc", b"v"))
        .await
        .unwrap();
    proxy.deliver_held().await;
    let lost = tokio::time::timeout(Duration::from_millis(1_500), second.lost()).await;
    assert!(
        lost.is_err(),
        "the session's own late sweep deleted its new leader key: {lost:?}"
    );
    assert_eq!(a.leader("svc").await.unwrap(), Some(second.info()));
}
