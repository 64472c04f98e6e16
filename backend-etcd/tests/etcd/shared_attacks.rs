//! Issue 13, review: attacks on the etcd reader-writer locks and semaphores. Each test tries to
//! make a writer share, more than `limit` permits exist, a guard come after its key died, a key
//! stay behind, a waiter never be served, or a waiter spin, against a real etcd.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{within, Etcd};
use locksmith_api::conformance::{RwLockFactory, SemaphoreFactory};
use locksmith_api::{DistributedRwLock, DistributedSemaphore, LockError, LockGuard};
use locksmith_etcd::EtcdLock;
use rand::Rng;
use tokio::task::JoinHandle;

/// How long a blocked call is watched to make sure it stays blocked.
const QUIET: Duration = Duration::from_millis(300);

async fn permits_become(etcd: &Etcd, name: &str, count: usize) {
    within("the permits to settle", async {
        while <Etcd as SemaphoreFactory>::queue_len(etcd, name).await != count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

async fn rw_keys_become(etcd: &Etcd, name: &str, count: usize) {
    within("the RW keys to settle", async {
        while <Etcd as RwLockFactory>::queue_len(etcd, name).await != count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

fn spawn_acquire(
    session: &EtcdLock,
    name: &str,
    limit: u32,
) -> JoinHandle<Result<LockGuard, LockError>> {
    let (session, name) = (session.clone(), name.to_owned());
    tokio::spawn(async move { session.acquire(&name, limit).await })
}

fn spawn_write(session: &EtcdLock, name: &str) -> JoinHandle<Result<LockGuard, LockError>> {
    let (session, name) = (session.clone(), name.to_owned());
    tokio::spawn(async move { session.write(&name).await })
}

fn spawn_read(session: &EtcdLock, name: &str) -> JoinHandle<Result<LockGuard, LockError>> {
    let (session, name) = (session.clone(), name.to_owned());
    tokio::spawn(async move { session.read(&name).await })
}

/// Attack: the put of a permit with another limit commits but its reply is lost. The retry
/// finds the key in place and must still compare limits: the name's limit is 1 and a holder has
/// it, so the acquire is a `LimitMismatch`, never a second permit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_whose_reply_was_lost_still_checks_the_limit() {
    let etcd = Etcd::new();
    let b = etcd.session().await;
    let (proxy, a) = etcd.proxied().await;
    let held = b.acquire("pool", 1).await.unwrap();
    proxy.swallow_replies(true);
    let other = spawn_acquire(&a, "pool", 5);
    permits_become(&etcd, "pool", 2).await;
    proxy.swallow_replies(false);
    proxy.cut_connections();
    let outcome = within("the acquire", other).await.unwrap();
    assert!(
        matches!(
            outcome,
            Err(LockError::LimitMismatch {
                limit: 5,
                in_use: 1,
                ..
            })
        ),
        "a limit-5 permit next to a limit-1 holder: {outcome:?}"
    );
    permits_become(&etcd, "pool", 1).await;
    held.unlock().await.unwrap();
    permits_become(&etcd, "pool", 0).await;
}

/// Attack: `try_read`/`try_write` of `n` while reader-writer locks named `n/read`, `n/write`
/// and `n/write/x` are held. Names are independent (the blocking forms ignore nested names),
/// so both must succeed; the one-transaction range compare counted the nested keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_forms_ignore_names_nested_under_the_lock() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let mut nested = Vec::new();
    for name in ["n/read", "n/write", "n/write/x"] {
        nested.push(b.write(name).await.unwrap());
    }
    nested.push(b.read("n/read/y").await.unwrap());
    let reader = a.try_read("n").await.unwrap();
    assert!(reader.is_some(), "try_read(n) refused for nested names");
    drop(reader);
    rw_keys_become(&etcd, "n", 0).await;
    let writer = a.try_write("n").await.unwrap();
    assert!(writer.is_some(), "try_write(n) refused for nested names");
    // The blocking forms agree.
    writer.unwrap().unlock().await.unwrap();
    within("write", a.write("n"))
        .await
        .unwrap()
        .unlock()
        .await
        .unwrap();
    for guard in nested {
        guard.unlock().await.unwrap();
    }
}

/// Attack: two first acquirers with different limits at once, many times. Exactly one limit
/// wins each round; the other caller gets `LimitMismatch`, and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_first_acquirers_with_different_limits_at_once() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    for round in 0..20 {
        let name = format!("race{round}");
        let (one, three) = (spawn_acquire(&a, &name, 1), spawn_acquire(&b, &name, 3));
        let (one, three) = (
            within("1", one).await.unwrap(),
            within("3", three).await.unwrap(),
        );
        match (one, three) {
            (Ok(g), Err(LockError::LimitMismatch { in_use: 1, .. }))
            | (Err(LockError::LimitMismatch { in_use: 3, .. }), Ok(g)) => g.unlock().await.unwrap(),
            other => panic!("round {round}: {other:?}"),
        }
        permits_become(&etcd, &name, 0).await;
    }
}

/// Attack: many tasks over three sessions hammer `try_acquire` (and some `acquire` cut short
/// at random) on one name with limit 2 (kazoo #213); a counter proves never more than 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_try_acquire_never_exceeds_the_limit() {
    let etcd = Etcd::new();
    let sessions = [
        etcd.session().await,
        etcd.session().await,
        etcd.session().await,
    ];
    let holders = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let granted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..12 {
        let session = sessions[task % 3].clone();
        let (holders, most, granted) = (holders.clone(), most.clone(), granted.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..15 {
                let guard = if task % 4 == 0 {
                    let cut = rand::thread_rng().gen_range(0..20);
                    tokio::time::timeout(Duration::from_millis(cut), session.acquire("kazoo", 2))
                        .await
                        .ok()
                        .map(|r| r.unwrap())
                } else {
                    session.try_acquire("kazoo", 2).await.unwrap()
                };
                let Some(guard) = guard else { continue };
                granted.fetch_add(1, Ordering::SeqCst);
                let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(3)).await;
                holders.fetch_sub(1, Ordering::SeqCst);
                guard.unlock().await.unwrap();
            }
        }));
    }
    for task in tasks {
        within("the tasks", task).await.unwrap();
    }
    assert!(
        most.load(Ordering::SeqCst) <= 2,
        "more than 2 permits at once"
    );
    assert!(
        granted.load(Ordering::SeqCst) > 0,
        "nobody ever got a permit"
    );
    permits_become(&etcd, "kazoo", 0).await;
    // The name still works: two permits at once, no more.
    let (p1, p2) = (
        sessions[0].acquire("kazoo", 2).await.unwrap(),
        sessions[1].acquire("kazoo", 2).await.unwrap(),
    );
    assert!(sessions[2].try_acquire("kazoo", 2).await.unwrap().is_none());
    p1.unlock().await.unwrap();
    p2.unlock().await.unwrap();
}

/// Attack: semaphore and RW waiters cut at every few hundred microseconds of their life (put in
/// flight, reply read, watches being created, waiting) behind holders. Once the holders go,
/// nothing may be left, and fresh callers must be served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_cut_at_any_point_leave_nothing_behind() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let permit = a.acquire("cut", 1).await.unwrap();
    let writer = a.write("cutrw").await.unwrap();
    for step in 0..40u64 {
        let cut = Duration::from_micros(step * 250);
        let _ = tokio::time::timeout(cut, b.acquire("cut", 1)).await;
        let _ = tokio::time::timeout(cut, b.read("cutrw")).await;
        let _ = tokio::time::timeout(cut, b.write("cutrw")).await;
        let _ = tokio::time::timeout(cut, b.try_acquire("cut", 1)).await;
        let _ = tokio::time::timeout(cut, b.try_write("cutrw")).await;
    }
    permits_become(&etcd, "cut", 1).await;
    rw_keys_become(&etcd, "cutrw", 1).await;
    permit.unlock().await.unwrap();
    writer.unlock().await.unwrap();
    permits_become(&etcd, "cut", 0).await;
    rw_keys_become(&etcd, "cutrw", 0).await;
    assert!(b.try_acquire("cut", 1).await.unwrap().is_some());
    assert!(b.try_write("cutrw").await.unwrap().is_some());
}

/// Attack: the lease of a session with queued waiters is revoked from outside (it died). Every
/// waiter must fail with `SessionLost`, never be granted after its key died, even when the
/// holders release right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_whose_lease_died_are_never_granted() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let permit = a.acquire("sem", 1).await.unwrap();
    let writer = a.write("rw").await.unwrap();
    let waiters = [
        spawn_acquire(&b, "sem", 1),
        spawn_read(&b, "rw"),
        spawn_write(&b, "rw"),
    ];
    permits_become(&etcd, "sem", 2).await;
    rw_keys_become(&etcd, "rw", 3).await;
    etcd.raw().await.lease_revoke(b.lease_id()).await.unwrap();
    permit.unlock().await.unwrap();
    writer.unlock().await.unwrap();
    for waiter in waiters {
        let outcome = within("the waiter", waiter).await.unwrap();
        assert!(
            matches!(outcome, Err(LockError::SessionLost { .. })),
            "a waiter whose lease died: {outcome:?}"
        );
    }
}

/// Attack: an operator deletes a waiter's key. The waiter must fail (its place is gone) and not
/// be granted when the holder goes; the queue behind it goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_key_was_deleted_is_not_granted() {
    let etcd = Etcd::new();
    let (a, b, c) = (
        etcd.session().await,
        etcd.session().await,
        etcd.session().await,
    );
    let permit = a.acquire("sem", 1).await.unwrap();
    let doomed = spawn_acquire(&b, "sem", 1);
    permits_become(&etcd, "sem", 2).await;
    let behind = spawn_acquire(&c, "sem", 1);
    permits_become(&etcd, "sem", 3).await;
    let prefix = format!(
        "{}\u{1f}semaphore/sem/{:x}-",
        etcd.config.namespace,
        b.lease_id()
    );
    let mut raw = etcd.raw().await;
    let deleted = raw
        .delete(
            prefix.as_str(),
            Some(locksmith_etcd::etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(deleted.deleted(), 1);
    let outcome = within("the doomed waiter", doomed).await.unwrap();
    assert!(
        matches!(outcome, Err(LockError::LockLost { .. })),
        "{outcome:?}"
    );
    permit.unlock().await.unwrap();
    within("the waiter behind", behind)
        .await
        .unwrap()
        .unwrap()
        .unlock()
        .await
        .unwrap();
}

/// Attack: etcd stalls (SIGSTOP) for longer than one request may take while a queue of
/// semaphore and RW waiters waits; holders release during the stall. Every waiter must still
/// be served once etcd answers again (no missed wake-up across a stream reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_served_after_etcd_stalls() {
    let mut etcd = Etcd::new();
    etcd.config.ttl_secs = 6;
    let (a, b) = (etcd.session().await, etcd.session().await);
    let permits = [
        a.acquire("sem", 2).await.unwrap(),
        a.acquire("sem", 2).await.unwrap(),
    ];
    let writer = a.write("rw").await.unwrap();
    let mut waiters = Vec::new();
    for n in 0..3 {
        waiters.push(spawn_acquire(&b, "sem", 2));
        permits_become(&etcd, "sem", 3 + n).await;
    }
    let readers = [spawn_read(&b, "rw"), spawn_read(&b, "rw")];
    rw_keys_become(&etcd, "rw", 3).await;
    let late_writer = spawn_write(&b, "rw");
    rw_keys_become(&etcd, "rw", 4).await;
    tokio::time::sleep(QUIET).await;
    let releases = {
        let stalled = etcd.server.stop().unwrap();
        let releases = tokio::spawn(async move {
            for permit in permits {
                permit.unlock().await.unwrap();
            }
            writer.unlock().await.unwrap();
        });
        tokio::time::sleep(Duration::from_millis(2500)).await;
        drop(stalled);
        releases
    };
    within("the releases", releases).await.unwrap();
    let mut held = Vec::new();
    for waiter in waiters.into_iter().take(2) {
        held.push(within("a permit", waiter).await.unwrap().unwrap());
    }
    for reader in readers {
        held.push(within("a reader", reader).await.unwrap().unwrap());
    }
    for guard in held {
        guard.unlock().await.unwrap();
    }
    within("the late writer", late_writer)
        .await
        .unwrap()
        .unwrap()
        .unlock()
        .await
        .unwrap();
}

/// Attack: keys ahead of a semaphore waiter go in any order (withdrawn waiters out of turn,
/// the newest holder first). The waiter is served exactly when fewer than `limit` older keys
/// are left, never before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counting_survives_keys_ahead_going_in_any_order() {
    let etcd = Etcd::new();
    let (a, b, c) = (
        etcd.session().await,
        etcd.session().await,
        etcd.session().await,
    );
    let mut holders = vec![
        a.acquire("order", 3).await.unwrap(),
        a.acquire("order", 3).await.unwrap(),
        a.acquire("order", 3).await.unwrap(),
    ];
    let mut ahead = Vec::new();
    for n in 0..4 {
        ahead.push(spawn_acquire(&b, "order", 3));
        permits_become(&etcd, "order", 4 + n).await;
    }
    let last = spawn_acquire(&c, "order", 3);
    permits_become(&etcd, "order", 8).await;
    // Withdraw the waiters ahead out of turn: 7 older keys → 3 (the holders).
    for index in [2, 0, 3, 1] {
        ahead[index].abort();
    }
    permits_become(&etcd, "order", 4).await;
    tokio::time::sleep(QUIET).await;
    assert!(!last.is_finished(), "served with 3 holders of 3");
    // Release the newest holder first.
    holders.pop().unwrap().unlock().await.unwrap();
    let served = within("the last waiter", last).await.unwrap().unwrap();
    served.unlock().await.unwrap();
    for guard in holders {
        guard.unlock().await.unwrap();
    }
}

/// Attack: a long semaphore queue (limit 1, 16 waiters over 4 sessions). Each release must
/// reach O(1) waiters: the watch events and requests etcd serves per handoff stay bounded,
/// whatever the queue's length (no thundering herd, no busy loop while waiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_semaphore_queue_has_no_herd_and_no_spin() {
    let etcd = Etcd::new();
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(etcd.session().await);
    }
    let holder = sessions[0].acquire("herd", 1).await.unwrap();
    let mut waiters = Vec::new();
    for n in 0..16 {
        waiters.push(spawn_acquire(&sessions[n % 4], "herd", 1));
        permits_become(&etcd, "herd", n + 2).await;
    }
    tokio::time::sleep(QUIET).await;
    let quiet_from = etcd.requests();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = etcd.requests() - quiet_from;
    assert!(idle < 20.0, "{idle} requests in 1 s while everybody waits");
    let events_from = etcd
        .server
        .metric("etcd_debugging_mvcc_events_total")
        .unwrap();
    let requests_from = etcd.requests();
    holder.unlock().await.unwrap();
    let handoffs = 8;
    for waiter in waiters.drain(..handoffs) {
        let guard = within("a waiter", waiter).await.unwrap().unwrap();
        guard.unlock().await.unwrap();
    }
    let events = (etcd
        .server
        .metric("etcd_debugging_mvcc_events_total")
        .unwrap()
        - events_from)
        / 8.0;
    let per_request = (etcd.requests() - requests_from) / 8.0;
    eprintln!("per handoff: {events} watch events, {per_request} requests");
    assert!(events <= 12.0, "{events} watch events per handoff");
    assert!(per_request <= 40.0, "{per_request} requests per handoff");
    for waiter in waiters {
        waiter.abort();
    }
}

/// Attack: a refused acquire (limit mismatch) is read back at once. "Queuing nothing" must
/// hold when the error returns, not a moment later: a mismatched key left standing is, once
/// the holders go, the oldest key, and then sets the name's limit for the callers after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_acquire_has_withdrawn_when_it_fails() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let prefix = format!("{}\u{1f}semaphore/mm/", etcd.config.namespace);
    let mut raw = etcd.raw().await;
    let count_only = locksmith_etcd::etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    let held = a.acquire("mm", 2).await.unwrap();
    for round in 0..20 {
        let refused = if round % 2 == 0 {
            b.acquire("mm", 3).await.map(|_| ())
        } else {
            b.try_acquire("mm", 1).await.map(|_| ())
        };
        assert!(
            matches!(refused, Err(LockError::LimitMismatch { in_use: 2, .. })),
            "{refused:?}"
        );
        let left = raw
            .get(prefix.as_str(), Some(count_only.clone()))
            .await
            .unwrap()
            .count();
        assert_eq!(left, 1, "round {round}: the refused key was still there");
    }
    held.unlock().await.unwrap();
}

/// Attack: a limit-5 put whose reply is lost sits in a limit-1 queue (holder A, waiter L1
/// behind it). A goes; the limit-5 key is now the oldest, so a new limit-5 caller M is
/// accepted (the name's limit is "the oldest key's") and holds at once, counting only older
/// keys; the lost-reply retry checks against itself and holds too. When it releases, L1
/// (limit 1) is granted beside M: two guards where L1 was promised one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_one_permit_is_never_granted_beside_a_limit_five_one() {
    let etcd = Etcd::new();
    let (b, c, d) = (
        etcd.session().await,
        etcd.session().await,
        etcd.session().await,
    );
    let (proxy, k) = etcd.proxied().await;
    let first = b.acquire("mix", 1).await.unwrap();
    proxy.swallow_replies(true);
    let lost = spawn_acquire(&k, "mix", 5);
    permits_become(&etcd, "mix", 2).await;
    let limit_one = spawn_acquire(&c, "mix", 1);
    // Queued behind both, or refused (the key before it has another limit): either is fine.
    within("the limit-1 caller to queue or be refused", async {
        while !limit_one.is_finished()
            && <Etcd as SemaphoreFactory>::queue_len(&etcd, "mix").await != 3
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    first.unlock().await.unwrap();
    let late = tokio::time::timeout(QUIET, d.acquire("mix", 5)).await;
    proxy.swallow_replies(false);
    proxy.cut_connections();
    if let Ok(guard) = within("the lost-reply acquire", lost).await.unwrap() {
        guard.unlock().await.unwrap();
    }
    let limit_one = tokio::time::timeout(Duration::from_secs(2), limit_one).await;
    let both = matches!(&late, Ok(Ok(_))) && matches!(&limit_one, Ok(Ok(Ok(_))));
    assert!(
        !both,
        "a limit-1 permit beside a limit-5 one: late {late:?}, limit_one {limit_one:?}"
    );
}

/// Attack: the store is compacted to its current revision while semaphore and RW waiters wait
/// and holders hold (their loss watches started at the acquisition's revision, now compacted).
/// Waiters are still served; the holders are not told of a loss they did not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_waiting_and_holding_changes_nothing() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let mut raw = etcd.raw().await;
    // Compacted within the holders' first moment, before their loss watches start.
    let permit = a.acquire("sem", 1).await.unwrap();
    let writer = a.write("rw").await.unwrap();
    let waiters = [spawn_acquire(&b, "sem", 1), spawn_write(&b, "rw")];
    for _ in 0..5 {
        raw.put(format!("{}filler", etcd.config.namespace), "x", None)
            .await
            .unwrap();
    }
    let now = raw
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    raw.compact(now, None).await.unwrap();
    permits_become(&etcd, "sem", 2).await;
    rw_keys_become(&etcd, "rw", 2).await;
    tokio::time::sleep(QUIET).await;
    assert!(permit.lost_reason().is_none() && writer.lost_reason().is_none());
    permit.unlock().await.unwrap();
    writer.unlock().await.unwrap();
    for waiter in waiters {
        within("a waiter", waiter)
            .await
            .unwrap()
            .unwrap()
            .unlock()
            .await
            .unwrap();
    }
}

/// Attack: RW waiters (readers behind a writer, writers behind readers) stay quiet while they
/// wait, and a writer waiting behind many readers is served once they have all gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rw_waiters_do_not_spin_and_a_writer_outlasts_many_readers() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let mut readers = Vec::new();
    for _ in 0..8 {
        readers.push(a.read("quiet").await.unwrap());
    }
    let writer = spawn_write(&b, "quiet");
    rw_keys_become(&etcd, "quiet", 9).await;
    let mut behind = Vec::new();
    for n in 0..6 {
        behind.push(spawn_read(&b, "quiet"));
        rw_keys_become(&etcd, "quiet", 10 + n).await;
    }
    tokio::time::sleep(QUIET).await;
    let from = etcd.requests();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = etcd.requests() - from;
    assert!(
        idle < 10.0,
        "{idle} requests in 1 s while 7 RW waiters wait"
    );
    // Release oldest first: the writer rereads after each and waits for the next newest.
    for guard in readers {
        guard.unlock().await.unwrap();
    }
    let writer = within("the writer", writer).await.unwrap().unwrap();
    tokio::time::sleep(QUIET).await;
    assert!(
        behind.iter().all(|r| !r.is_finished()),
        "a reader beside the writer"
    );
    writer.unlock().await.unwrap();
    for reader in behind {
        within("a reader", reader)
            .await
            .unwrap()
            .unwrap()
            .unlock()
            .await
            .unwrap();
    }
}
