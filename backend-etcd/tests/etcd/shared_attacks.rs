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

// ---------------------------------------------------------------------------------------------
// Review 2 (the waits of 4501ec7 and 1216d3e): a model of the semaphore queue driven at random.

use std::collections::HashSet;

use locksmith_etcd::etcd_client::{
    CompactionOptions, GetOptions, SortOrder, SortTarget, Txn, TxnOp,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Where one entry of the model queue stands.
enum State {
    Waiting(JoinHandle<Result<LockGuard, LockError>>),
    Held(LockGuard),
    Gone,
}

/// What an entry of the model queue asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Permit,
    Read,
    Write,
}

/// One key of the queue, in create-revision order.
struct Entry {
    key: Vec<u8>,
    kind: Kind,
    state: State,
}

/// A semaphore or RW queue as the test drives it: every entry's key, and what the grant rule
/// says of it (a permit holds exactly when fewer than `limit` live entries are older; a reader
/// when no older writer is live, a writer when no older entry is). After each step
/// [`SemModel::settle`] waits for every grant the rule gives and checks that no other waiter
/// was granted.
struct SemModel {
    name: String,
    prefix: String,
    /// 0 for a reader-writer lock.
    limit: u32,
    entries: Vec<Entry>,
    seen: HashSet<Vec<u8>>,
    /// Waiters whose key was deleted by hand: they must end with an error, never a guard.
    doomed: Vec<JoinHandle<Result<LockGuard, LockError>>>,
    /// Holders whose key was deleted by hand: they must be told.
    lost: Vec<LockGuard>,
}

impl SemModel {
    fn new(etcd: &Etcd, name: &str, limit: u32) -> Self {
        SemModel {
            name: name.to_owned(),
            prefix: format!("{}\u{1f}semaphore/{name}/", etcd.config.namespace),
            limit,
            entries: Vec::new(),
            seen: HashSet::new(),
            doomed: Vec::new(),
            lost: Vec::new(),
        }
    }

    /// The model of the reader-writer lock `name` (no other name may be nested under it).
    fn rw(etcd: &Etcd, name: &str) -> Self {
        SemModel {
            prefix: format!("{}{name}/", etcd.config.namespace),
            ..SemModel::new(etcd, name, 0)
        }
    }

    /// Which live entries the rule grants now, in queue order.
    fn due(&self) -> Vec<bool> {
        let (mut older, mut writers) = (0usize, 0usize);
        self.entries
            .iter()
            .map(|entry| {
                if matches!(entry.state, State::Gone) {
                    return false;
                }
                let due = match entry.kind {
                    Kind::Permit => older < self.limit as usize,
                    Kind::Read => writers == 0,
                    Kind::Write => older == 0,
                };
                older += 1;
                writers += usize::from(entry.kind == Kind::Write);
                due
            })
            .collect()
    }

    fn live(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| !matches!(e.state, State::Gone))
            .count()
    }

    fn indices(&self, held: bool) -> Vec<usize> {
        (0..self.entries.len())
            .filter(|&i| match self.entries[i].state {
                State::Held(_) => held,
                State::Waiting(_) => !held,
                State::Gone => false,
            })
            .collect()
    }

    /// Queues an acquire of `session` and learns its key.
    async fn join(&mut self, etcd: &Etcd, session: &EtcdLock) {
        self.join_as(etcd, session, Kind::Permit).await;
    }

    /// Queues an acquire of `kind` of `session` and learns its key.
    async fn join_as(&mut self, etcd: &Etcd, session: &EtcdLock, kind: Kind) {
        let handle = match kind {
            Kind::Permit => spawn_acquire(session, &self.name, self.limit),
            Kind::Read => spawn_read(session, &self.name),
            Kind::Write => spawn_write(session, &self.name),
        };
        let mut raw = etcd.raw().await;
        let options = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(1);
        let key = within("the new key", async {
            loop {
                let reply = raw
                    .get(self.prefix.as_str(), Some(options.clone()))
                    .await
                    .unwrap();
                if let Some(kv) = reply.kvs().first() {
                    if !self.seen.contains(kv.key()) {
                        return kv.key().to_vec();
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        self.seen.insert(key.clone());
        self.entries.push(Entry {
            key,
            kind,
            state: State::Waiting(handle),
        });
    }

    /// Waits for every grant the rule gives now, then (with `quiet`) checks for a while that
    /// no other waiter is granted.
    async fn settle(&mut self, quiet: Option<Duration>) {
        let due = self.due();
        for (entry, due) in self.entries.iter_mut().zip(due) {
            if !due {
                continue;
            }
            if let State::Waiting(handle) = &mut entry.state {
                let outcome = within("a grant the rule gives", handle).await.unwrap();
                let guard = match outcome {
                    Ok(guard) => guard,
                    Err(err) => panic!("a waiter due a permit failed: {err:?}"),
                };
                assert_eq!(guard.key().as_bytes(), entry.key.as_slice());
                entry.state = State::Held(guard);
            }
        }
        if let Some(quiet) = quiet {
            tokio::time::sleep(quiet).await;
        }
        let due = self.due();
        for (index, entry) in self.entries.iter().enumerate() {
            if let State::Waiting(handle) = &entry.state {
                assert!(
                    !handle.is_finished(),
                    "entry {index} ({:?}) finished while the rule does not grant it ({:?})",
                    entry.kind,
                    self.entries
                        .iter()
                        .map(|e| (e.kind, matches!(e.state, State::Held(_))))
                        .collect::<Vec<_>>()
                );
            }
        }
        assert!(
            due.iter()
                .zip(&self.entries)
                .all(|(due, e)| *due || !matches!(e.state, State::Held(_))),
            "a holder the rule does not grant"
        );
    }

    async fn release(&mut self, index: usize) {
        match std::mem::replace(&mut self.entries[index].state, State::Gone) {
            State::Held(guard) => guard.unlock().await.unwrap(),
            _ => panic!("entry {index} does not hold"),
        }
    }

    /// Cancels a waiting acquire and waits for its key to go.
    async fn withdraw(&mut self, etcd: &Etcd, index: usize) {
        match std::mem::replace(&mut self.entries[index].state, State::Gone) {
            State::Waiting(handle) => {
                handle.abort();
                if let Ok(Ok(guard)) = handle.await {
                    // Granted just before the abort: a hold like any other, given up.
                    guard.unlock().await.unwrap();
                }
            }
            _ => panic!("entry {index} does not wait"),
        }
        self.key_gone(etcd, index).await;
    }

    async fn key_gone(&self, etcd: &Etcd, index: usize) {
        let mut raw = etcd.raw().await;
        let key = self.entries[index].key.clone();
        within("a withdrawn key to go", async {
            while raw.get(key.as_slice(), None).await.unwrap().count() != 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
    }

    /// Deletes the keys of `indices` in one transaction, as an operator might.
    async fn delete_by_hand(&mut self, etcd: &Etcd, indices: &[usize]) {
        let deletes: Vec<TxnOp> = indices
            .iter()
            .map(|&i| TxnOp::delete(self.entries[i].key.as_slice(), None))
            .collect();
        etcd.raw()
            .await
            .txn(Txn::new().and_then(deletes))
            .await
            .unwrap();
        for &index in indices {
            match std::mem::replace(&mut self.entries[index].state, State::Gone) {
                State::Waiting(handle) => self.doomed.push(handle),
                State::Held(guard) => self.lost.push(guard),
                State::Gone => {}
            }
        }
    }

    /// Releases everything left in random order, checking the rule on the way, then checks the
    /// waiters and holders whose keys were deleted by hand.
    async fn drain(&mut self, etcd: &Etcd, rng: &mut StdRng, quiet: Option<Duration>) {
        for step in 0.. {
            // Long queues are checked for a while every few releases only.
            let quiet = quiet.filter(|_| self.live() < 24 || step % 4 == 0);
            self.settle(quiet).await;
            let held = self.indices(true);
            let Some(&index) = held.choose(rng) else {
                break;
            };
            self.release(index).await;
        }
        assert_eq!(self.live(), 0);
        for doomed in self.doomed.drain(..) {
            let outcome = within("a waiter whose key was deleted", doomed)
                .await
                .unwrap();
            assert!(
                matches!(outcome, Err(LockError::LockLost { .. })),
                "a waiter whose key was deleted by hand: {outcome:?}"
            );
        }
        for guard in self.lost.drain(..) {
            within("a holder whose key was deleted to be told", guard.lost()).await;
        }
        if self.limit == 0 {
            rw_keys_become(etcd, &self.name, 0).await;
        } else {
            permits_become(etcd, &self.name, 0).await;
        }
    }
}

/// A seeded generator whose seed is printed, so that a failure can be replayed.
fn seeded() -> StdRng {
    let seed: u64 = std::env::var("ATTACK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("ATTACK_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// Drives a queue of `limit` at random for `steps` steps over `sessions`: joins, releases out of
/// order, withdrawals (cancelled acquires) anywhere, keys deleted by hand (one, or a waiter's
/// together with an older key in one transaction), checking the grant rule after each.
async fn random_semaphore_queue(limit: u32, start: usize, steps: usize) {
    random_semaphore_queue_with(limit, start, steps, false).await;
}

/// Writes of another key of the namespace, back to back, until aborted: watches created "from
/// now" then often start behind the store (unsynced) and keep their twins, whose deliveries
/// interleave.
fn write_noise(etcd: &Etcd) -> JoinHandle<()> {
    let (url, key) = (
        etcd.server.client_url(),
        format!("{}noise", etcd.config.namespace),
    );
    tokio::spawn(async move {
        let mut raw = locksmith_etcd::etcd_client::Client::connect([url], None)
            .await
            .unwrap();
        loop {
            let _ = raw.put(key.as_str(), "x", None).await;
        }
    })
}

async fn random_semaphore_queue_with(limit: u32, start: usize, steps: usize, noise: bool) {
    let etcd = Etcd::new();
    let noise = noise.then(|| write_noise(&etcd));
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(etcd.session().await);
    }
    let mut rng = seeded();
    let mut model = SemModel::new(&etcd, "model", limit);
    for n in 0..start {
        model.join(&etcd, &sessions[n % 3]).await;
        model.settle(None).await;
    }
    let quiet = Some(Duration::from_millis(120));
    model.settle(quiet).await;
    for _ in 0..steps {
        let (held, waiting) = (model.indices(true), model.indices(false));
        match rng.gen_range(0..100) {
            0..=39 if !held.is_empty() => {
                // Out of order: any holder, often the newest.
                let index = if rng.gen_bool(0.5) {
                    *held.last().unwrap()
                } else {
                    *held.choose(&mut rng).unwrap()
                };
                model.release(index).await;
            }
            40..=59 if !waiting.is_empty() => {
                let index = *waiting.choose(&mut rng).unwrap();
                model.withdraw(&etcd, index).await;
            }
            60..=67 if !waiting.is_empty() => {
                let index = *waiting.choose(&mut rng).unwrap();
                model.delete_by_hand(&etcd, &[index]).await;
            }
            68..=75 if !waiting.is_empty() => {
                // A waiter's key and an older live key in one transaction: the waiter never
                // held, whatever the count at that revision.
                let index = *waiting.choose(&mut rng).unwrap();
                let older: Vec<usize> = (0..index)
                    .filter(|&i| !matches!(model.entries[i].state, State::Gone))
                    .collect();
                let mut pair = vec![index];
                pair.extend(older.choose(&mut rng));
                model.delete_by_hand(&etcd, &pair).await;
            }
            _ => {
                let session = sessions.choose(&mut rng).unwrap().clone();
                model.join(&etcd, &session).await;
            }
        }
        model.settle(quiet).await;
    }
    model.drain(&etcd, &mut rng, quiet).await;
    if let Some(noise) = noise {
        noise.abort();
    }
}

/// Attack: a limit-1 queue long enough for far waiters (more than 3 older keys), driven at
/// random: holders released, waiters withdrawn out of turn, keys deleted by hand (alone, or a
/// waiter's with an older one in the same transaction). Every grant follows the rule at once,
/// no other grant happens, a waiter whose key died never holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_limit_one_queue_follows_the_grant_rule() {
    random_semaphore_queue(1, 10, 30).await;
}

/// Attack: as above with limit 5 (far waiters watch 5 keys, some of them holders; a long hold
/// at the head while the others move).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_limit_five_queue_follows_the_grant_rule() {
    random_semaphore_queue(5, 16, 30).await;
}

/// Compacts the store to its current revision, physically.
async fn compact_now(etcd: &Etcd) {
    let mut raw = etcd.raw().await;
    // A write of its own first: the store may have been compacted to its revision already.
    let now = raw
        .put(format!("{}filler", etcd.config.namespace), "x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    raw.compact(now, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
}

/// Attack: a limit-2 queue with far waiters, some on a session whose connections are cut at
/// random (every watch stream it has breaks: `Reread` everywhere), while the store is
/// compacted physically at random and holders release out of order. Nobody is granted out of
/// turn and nobody is left waiting while the rule grants it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_waiters_survive_stream_resets_and_compaction() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let (proxy, cut) = etcd.proxied().await;
    let sessions = [a, b, cut];
    let mut rng = seeded();
    let mut model = SemModel::new(&etcd, "reset", 2);
    for n in 0..12 {
        model.join(&etcd, &sessions[n % 3]).await;
    }
    let quiet = Some(Duration::from_millis(120));
    model.settle(quiet).await;
    for _ in 0..25 {
        let (held, waiting) = (model.indices(true), model.indices(false));
        match rng.gen_range(0..100) {
            0..=19 => proxy.cut_connections(),
            20..=34 => compact_now(&etcd).await,
            35..=44 => {
                // Both at once, then a release before anything is read again.
                proxy.cut_connections();
                compact_now(&etcd).await;
                if let Some(&index) = held.first() {
                    model.release(index).await;
                }
            }
            45..=74 if !held.is_empty() => {
                let index = *held.choose(&mut rng).unwrap();
                model.release(index).await;
            }
            75..=84 if !waiting.is_empty() => {
                let index = *waiting.choose(&mut rng).unwrap();
                model.withdraw(&etcd, index).await;
            }
            _ => {
                let session = sessions.choose(&mut rng).unwrap().clone();
                model.join(&etcd, &session).await;
            }
        }
        model.settle(quiet).await;
    }
    model.drain(&etcd, &mut rng, quiet).await;
}

/// Attack: the lease of a waiter far back (limit 1, five keys ahead: it watches only the key
/// just ahead, not its own) is revoked, then the queue moves. It fails with `SessionLost`,
/// never holds; the waiter behind it is served once the keys ahead are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_waiter_whose_lease_died_fails_and_never_holds() {
    let etcd = Etcd::new();
    let (a, b, c) = (
        etcd.session().await,
        etcd.session().await,
        etcd.session().await,
    );
    let holder = a.acquire("far", 1).await.unwrap();
    let mut ahead = Vec::new();
    for n in 0..4 {
        ahead.push(spawn_acquire(&a, "far", 1));
        permits_become(&etcd, "far", n + 2).await;
    }
    let doomed = spawn_acquire(&b, "far", 1);
    permits_become(&etcd, "far", 6).await;
    let behind = spawn_acquire(&c, "far", 1);
    permits_become(&etcd, "far", 7).await;
    tokio::time::sleep(QUIET).await;
    etcd.raw().await.lease_revoke(b.lease_id()).await.unwrap();
    permits_become(&etcd, "far", 6).await;
    holder.unlock().await.unwrap();
    for waiter in ahead {
        within("a waiter ahead", waiter)
            .await
            .unwrap()
            .unwrap()
            .unlock()
            .await
            .unwrap();
    }
    let outcome = within("the far waiter whose lease died", doomed)
        .await
        .unwrap();
    assert!(
        matches!(outcome, Err(LockError::SessionLost { .. })),
        "a far waiter whose lease died: {outcome:?}"
    );
    within("the waiter behind", behind)
        .await
        .unwrap()
        .unwrap()
        .unlock()
        .await
        .unwrap();
}

/// A queue of `limit` holders and `waiters` waiters behind them, released at random (the newest
/// holder first half the time), the rule checked at every step and for a while every few.
async fn big_limit_queue(
    etcd: &Etcd,
    sessions: &[EtcdLock],
    name: &str,
    limit: u32,
    waiters: usize,
) {
    let mut rng = seeded();
    let mut model = SemModel::new(etcd, name, limit);
    for n in 0..limit as usize + waiters {
        model.join(etcd, &sessions[n % sessions.len()]).await;
    }
    let quiet = Some(Duration::from_millis(120));
    model.settle(quiet).await;
    let mut step = 0;
    while !model.indices(false).is_empty() {
        let held = model.indices(true);
        let index = if rng.gen_bool(0.5) {
            *held.last().unwrap()
        } else {
            *held.choose(&mut rng).unwrap()
        };
        model.release(index).await;
        step += 1;
        model.settle(if step % 4 == 0 { quiet } else { None }).await;
    }
    model.drain(etcd, &mut rng, None).await;
}

/// Attack: limits around and beyond the near bound (64 older keys on one watch, whose read-back
/// must stay within etcd's 128 operations per transaction): 62 (window 64, the largest near),
/// 64 (64 older keys near, 66 far), 100 (always far: 100 watches per waiter). Holders release
/// out of order; every grant follows the rule, no request is refused for its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_beyond_the_near_bound_follow_the_grant_rule() {
    let etcd = Etcd::new();
    let sessions = [etcd.session().await, etcd.session().await];
    for limit in [62, 64, 100] {
        big_limit_queue(&etcd, &sessions, &format!("big{limit}"), limit, 4).await;
    }
}

/// Attack: the largest limit (`u32::MAX`: window arithmetic, `with_limit` conversions). Nothing
/// panics, every acquire holds at once, a mismatched limit is still a typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_limit_holds_at_once() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(within("acquire", a.acquire("max", u32::MAX)).await.unwrap());
        held.push(
            within("try_acquire", b.try_acquire("max", u32::MAX))
                .await
                .unwrap()
                .expect("a free permit"),
        );
    }
    let refused = b.acquire("max", u32::MAX - 1).await;
    assert!(
        matches!(
            refused,
            Err(LockError::LimitMismatch {
                in_use: u32::MAX,
                ..
            })
        ),
        "{refused:?}"
    );
    for guard in held {
        guard.unlock().await.unwrap();
    }
    permits_become(&etcd, "max", 0).await;
}

/// Watch events etcd has sent so far.
fn watch_events(etcd: &Etcd) -> f64 {
    etcd.server
        .metric("etcd_debugging_mvcc_events_total")
        .unwrap()
}

/// Attack: a 40-waiter queue of limit 3 over 4 sessions (most waiters far back). While
/// everybody waits etcd hears (almost) nothing; each handoff costs a bounded number of watch
/// events and requests, not one per waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forty_waiter_limit_three_queue_has_no_herd_and_no_spin() {
    let etcd = Etcd::new();
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(etcd.session().await);
    }
    let mut holders = Vec::new();
    for session in &sessions[..3] {
        holders.push(session.acquire("forty", 3).await.unwrap());
    }
    let mut waiters = std::collections::VecDeque::new();
    for n in 0..40 {
        waiters.push_back(spawn_acquire(&sessions[n % 4], "forty", 3));
        permits_become(&etcd, "forty", n + 4).await;
    }
    tokio::time::sleep(QUIET).await;
    let (requests_from, events_from) = (etcd.requests(), watch_events(&etcd));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = etcd.requests() - requests_from;
    let idle_events = watch_events(&etcd) - events_from;
    assert!(idle < 10.0, "{idle} requests in 1 s while 40 waiters wait");
    assert!(
        idle_events < 1.0,
        "{idle_events} watch events in 1 s with no change"
    );
    let (requests_from, events_from) = (etcd.requests(), watch_events(&etcd));
    let handoffs = 12;
    for _ in 0..handoffs {
        holders.remove(0).unlock().await.unwrap();
        let next = waiters.pop_front().unwrap();
        holders.push(within("the next waiter", next).await.unwrap().unwrap());
    }
    let events = (watch_events(&etcd) - events_from) / f64::from(handoffs);
    let requests = (etcd.requests() - requests_from) / f64::from(handoffs);
    eprintln!("limit 3, 40 waiters, per handoff: {events} watch events, {requests} requests");
    assert!(events <= 16.0, "{events} watch events per handoff");
    assert!(requests <= 12.0, "{requests} requests per handoff");
    for guard in holders {
        guard.unlock().await.unwrap();
    }
    for waiter in waiters {
        waiter.abort();
    }
}

/// Attack: limit 100 (always the far path: a waiter watches the newest 100 keys ahead), 100
/// holders and 30 waiters; the newest holder is watched by every waiter, so its release wakes
/// them all. Each hears one event and reads once (O(1) per waiter, as the issue asks), and
/// sets up its 100 watches again: the cost of a release grows with the queue (reported).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_watched_by_every_far_waiter_costs_one_read_each() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let mut holders = Vec::new();
    for _ in 0..100 {
        holders.push(a.acquire("wide", 100).await.unwrap());
    }
    let mut waiters = Vec::new();
    for n in 0..30 {
        waiters.push(spawn_acquire(&b, "wide", 100));
        permits_become(&etcd, "wide", 101 + n).await;
    }
    tokio::time::sleep(QUIET).await;
    let txns = || etcd.server.metric("etcd_mvcc_txn_total").unwrap();
    let (txns_from, events_from) = (txns(), watch_events(&etcd));
    let watchers_from = etcd
        .server
        .metric("etcd_debugging_mvcc_watcher_total")
        .unwrap();
    holders.pop().unwrap().unlock().await.unwrap();
    let first = waiters.remove(0);
    let served = within("the first waiter", first).await.unwrap().unwrap();
    // Until the 29 others watch their 100 keys again and the count of watchers stays put.
    let watchers = || {
        etcd.server
            .metric("etcd_debugging_mvcc_watcher_total")
            .unwrap()
    };
    let before = watchers_from;
    within("the waiters to watch again", async {
        loop {
            let now = watchers();
            tokio::time::sleep(QUIET).await;
            if now >= 2900.0 && watchers() == now {
                break;
            }
        }
    })
    .await;
    let events = watch_events(&etcd) - events_from;
    let txns = txns() - txns_from;
    eprintln!(
        "limit 100, 30 far waiters, one release: {events} watch events, {txns} txns, \
         watchers {before} -> {}",
        watchers()
    );
    assert!(events <= 31.0, "{events} watch events for one release");
    // Each woken waiter reads twice: once woken, once its new watches exist.
    assert!(txns <= 3.0 * 31.0, "{txns} transactions for one release");
    // The others wait on, quietly.
    assert!(waiters.iter().all(|w| !w.is_finished()));
    served.unlock().await.unwrap();
    for waiter in waiters {
        waiter.abort();
    }
    for guard in holders {
        guard.unlock().await.unwrap();
    }
}

/// Attack: RW names nested under `doc` (`doc/read/x` and `doc/write/y`, 140 keys each, more
/// than any page) before and after `doc`'s own keys, some released while `doc`'s waiters wait.
/// The writer of `doc` waits for `doc`'s reader only; the reader behind it for the writer only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_rw_names_with_many_keys_neither_block_nor_free_the_waits() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let mut nested = Vec::new();
    for _ in 0..70 {
        nested.push(b.read("doc/read/x").await.unwrap());
        nested.push(b.read("doc/write/y").await.unwrap());
    }
    let reader = a.read("doc").await.unwrap();
    for _ in 0..70 {
        nested.push(b.read("doc/read/x").await.unwrap());
        nested.push(b.read("doc/write/y").await.unwrap());
    }
    let writer = spawn_write(&a, "doc");
    rw_keys_become(&etcd, "doc", 2).await;
    let behind = spawn_read(&a, "doc");
    rw_keys_become(&etcd, "doc", 3).await;
    for _ in 0..20 {
        nested.push(b.read("doc/write/y").await.unwrap());
    }
    // Deletes of nested keys inside the waiters' watch ranges, old and new.
    let mut rng = seeded();
    nested.shuffle(&mut rng);
    for guard in nested.drain(..100) {
        guard.unlock().await.unwrap();
    }
    tokio::time::sleep(QUIET).await;
    assert!(!writer.is_finished(), "the writer of doc beside its reader");
    assert!(
        !behind.is_finished(),
        "a reader of doc behind a waiting writer"
    );
    reader.unlock().await.unwrap();
    let writer = within("the writer", writer).await.unwrap().unwrap();
    tokio::time::sleep(QUIET).await;
    assert!(!behind.is_finished(), "a reader of doc beside its writer");
    writer.unlock().await.unwrap();
    within("the reader behind", behind)
        .await
        .unwrap()
        .unwrap()
        .unlock()
        .await
        .unwrap();
    for guard in nested {
        guard.unlock().await.unwrap();
    }
}

/// Attack: the waiter's own key is the lexicographic minimum, then the maximum, of the key
/// range its watch covers (keys start with the lease id in hex, so the sessions are picked by
/// their lease ids). Semaphore (limit 1) and RW writers: served at the release, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_key_at_either_end_of_the_watched_range() {
    let etcd = Etcd::new();
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(etcd.session().await);
    }
    sessions.sort_by_key(|s| format!("{:x}-", s.lease_id()));
    let (low, middle, high) = (&sessions[0], &sessions[1], &sessions[2]);
    for (round, waiter_session) in [low, high].into_iter().enumerate() {
        let permit = middle.acquire("ends", 1).await.unwrap();
        let writer = middle.write("endsrw").await.unwrap();
        let waiters = [
            spawn_acquire(waiter_session, "ends", 1),
            spawn_write(waiter_session, "endsrw"),
        ];
        permits_become(&etcd, "ends", 2).await;
        rw_keys_become(&etcd, "endsrw", 2).await;
        tokio::time::sleep(QUIET).await;
        assert!(
            waiters.iter().all(|w| !w.is_finished()),
            "round {round}: served beside the holder"
        );
        permit.unlock().await.unwrap();
        writer.unlock().await.unwrap();
        for waiter in waiters {
            within("the waiter", waiter)
                .await
                .unwrap()
                .unwrap()
                .unlock()
                .await
                .unwrap();
        }
    }
}

/// Attack: a session holds a permit and a read guard and waits for another permit and a write
/// of the same names (near the head: the keys it waits for include its own holds). Its lease
/// dies: its holds and its waiting keys go in one revision, which leaves fewer than `limit`
/// older keys. The waiters must fail with `SessionLost`, never hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_lease_took_an_older_key_with_it_never_holds() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    for round in 0..5 {
        let (sem, rw) = (format!("own{round}"), format!("ownrw{round}"));
        let b = if round == 0 {
            b.clone()
        } else {
            etcd.session().await
        };
        let other = a.acquire(&sem, 2).await.unwrap();
        let held = b.acquire(&sem, 2).await.unwrap();
        let read = b.read(&rw).await.unwrap();
        let waiters = [spawn_acquire(&b, &sem, 2), spawn_write(&b, &rw)];
        permits_become(&etcd, &sem, 3).await;
        rw_keys_become(&etcd, &rw, 2).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        etcd.raw().await.lease_revoke(b.lease_id()).await.unwrap();
        for waiter in waiters {
            let outcome = within("the waiter", waiter).await.unwrap();
            assert!(
                matches!(outcome, Err(LockError::SessionLost { .. })),
                "round {round}: a waiter whose lease died with an older key: {outcome:?}"
            );
        }
        // Its holds are told.
        within("the permit's loss", held.lost()).await;
        within("the reader's loss", read.lost()).await;
        drop((held, read));
        other.unlock().await.unwrap();
    }
}

/// Attack: a far-back waiter on a session whose connection stops answering (every request
/// swallowed) until its lease expires in etcd, while the queue ahead of it moves. It fails
/// with `SessionLost` once the session ends and never holds; the waiters behind are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_waiter_whose_lease_expired_unseen_never_holds() {
    let mut etcd = Etcd::new();
    etcd.config.ttl_secs = 2;
    let (a, c) = (etcd.session().await, etcd.session().await);
    let (proxy, b) = etcd.proxied().await;
    let holder = a.acquire("exp", 1).await.unwrap();
    let mut ahead = Vec::new();
    for n in 0..4 {
        ahead.push(spawn_acquire(&a, "exp", 1));
        permits_become(&etcd, "exp", n + 2).await;
    }
    let doomed = spawn_acquire(&b, "exp", 1);
    permits_become(&etcd, "exp", 6).await;
    let behind = spawn_acquire(&c, "exp", 1);
    permits_become(&etcd, "exp", 7).await;
    tokio::time::sleep(QUIET).await;
    proxy.swallow_requests(true);
    // The lease expires in etcd: its key goes.
    permits_become(&etcd, "exp", 6).await;
    holder.unlock().await.unwrap();
    for waiter in ahead {
        within("a waiter ahead", waiter)
            .await
            .unwrap()
            .unwrap()
            .unlock()
            .await
            .unwrap();
    }
    proxy.swallow_requests(false);
    let outcome = within("the far waiter", doomed).await.unwrap();
    assert!(
        matches!(outcome, Err(LockError::SessionLost { .. })),
        "a far waiter whose lease expired: {outcome:?}"
    );
    within("the waiter behind", behind)
        .await
        .unwrap()
        .unwrap()
        .unlock()
        .await
        .unwrap();
}

/// Attack (scale): a semaphore with a limit nobody reaches (`u32::MAX`, "count the holders")
/// and a long name (1024 bytes, `/` escaped to 3). Every acquire's queue transaction reads the
/// oldest `limit` keys and the newest `limit` + 4 keys with their values, i.e. the whole queue
/// twice: with 1000 holders (put here as another client would, on a lease of their own) the
/// reply exceeds the client's 4 MiB message limit, and the acquire of a free permit fails.
/// (Taking the 1000 permits through `acquire` shows it too, at acquire 979, in 25 s: each
/// acquire reads more than the one before.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "defect: the queue transaction of a big limit reads the whole queue twice"]
async fn many_holders_of_a_big_limit_can_still_acquire() {
    let etcd = Etcd::new();
    let a = etcd.session().await;
    let name = "a/".repeat(512);
    let prefix = format!(
        "{}\u{1f}semaphore/{}/",
        etcd.config.namespace,
        name.replace('/', "%2F")
    );
    let mut raw = etcd.raw().await;
    let lease = raw.lease_grant(60, None).await.unwrap().id();
    for batch in 0..10 {
        let puts: Vec<TxnOp> = (0..100)
            .map(|n| {
                TxnOp::put(
                    format!("{prefix}{lease:x}-{:x}", batch * 100 + n + 1),
                    format!("{} 0123456789abcdef", u32::MAX),
                    Some(locksmith_etcd::etcd_client::PutOptions::new().with_lease(lease)),
                )
            })
            .collect();
        raw.txn(Txn::new().and_then(puts)).await.unwrap();
    }
    let outcome = within("the acquire", a.acquire(&name, u32::MAX)).await;
    // A refused acquire leaves nothing behind at least.
    permits_become(&etcd, &name, 1000 + usize::from(outcome.is_ok())).await;
    assert!(outcome.is_ok(), "a free permit refused: {outcome:?}");
    raw.lease_revoke(lease).await.unwrap();
}

/// Drives the RW lock `name` at random for `steps` steps after `start` (kinds in queue order):
/// releases out of order, withdrawals, keys deleted by hand (a waiter's with an older key in
/// one transaction too), new readers and writers; the rule is checked after each.
async fn random_rw_queue(start: &[Kind], steps: usize) {
    let etcd = Etcd::new();
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(etcd.session().await);
    }
    let mut rng = seeded();
    let mut model = SemModel::rw(&etcd, "rwmodel");
    for (n, kind) in start.iter().enumerate() {
        model.join_as(&etcd, &sessions[n % 3], *kind).await;
        model.settle(None).await;
    }
    let quiet = Some(Duration::from_millis(120));
    model.settle(quiet).await;
    for _ in 0..steps {
        let (held, waiting) = (model.indices(true), model.indices(false));
        match rng.gen_range(0..100) {
            0..=44 if !held.is_empty() => {
                let index = *held.choose(&mut rng).unwrap();
                model.release(index).await;
            }
            45..=59 if !waiting.is_empty() => {
                let index = *waiting.choose(&mut rng).unwrap();
                model.withdraw(&etcd, index).await;
            }
            60..=64 if !waiting.is_empty() => {
                let index = *waiting.choose(&mut rng).unwrap();
                model.delete_by_hand(&etcd, &[index]).await;
            }
            65..=71 if !waiting.is_empty() => {
                let index = *waiting.choose(&mut rng).unwrap();
                let older: Vec<usize> = (0..index)
                    .filter(|&i| !matches!(model.entries[i].state, State::Gone))
                    .collect();
                let mut pair = vec![index];
                pair.extend(older.choose(&mut rng));
                model.delete_by_hand(&etcd, &pair).await;
            }
            _ => {
                let session = sessions.choose(&mut rng).unwrap().clone();
                let kind = if rng.gen_bool(0.6) {
                    Kind::Read
                } else {
                    Kind::Write
                };
                model.join_as(&etcd, &session, kind).await;
            }
        }
        model.settle(quiet).await;
    }
    model.drain(&etcd, &mut rng, quiet).await;
}

/// Attack: a writer behind 55 readers (more than the 48 a waiter tracks: the `Many` path),
/// readers and writers behind it, driven at random (readers released in random order,
/// withdrawals, keys deleted by hand).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_rw_queue_behind_many_readers_follows_the_rule() {
    let mut start = vec![Kind::Read; 55];
    start.extend([Kind::Write, Kind::Read, Kind::Read, Kind::Write, Kind::Read]);
    random_rw_queue(&start, 30).await;
}

/// Attack: readers behind 52 writers (the `Many` path of a reader), driven at random.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_rw_queue_behind_many_writers_follows_the_rule() {
    let mut start = vec![Kind::Write; 52];
    start.extend([Kind::Read, Kind::Read, Kind::Write, Kind::Read]);
    random_rw_queue(&start, 20).await;
}

/// Attack: the random limit-2 queue under a stream of unrelated writes (unsynced watches, twins
/// kept, deliveries of two watches interleaved; a waiter's key deleted with an older one in one
/// transaction among them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_queue_under_write_noise_follows_the_grant_rule() {
    random_semaphore_queue_with(2, 10, 30, true).await;
}

/// Probe: a mutex named `doc/read` and the RW lock `doc`. Distinct names are distinct locks
/// (`validate_name`), but the mutex's key `doc/read/{lease}` is a direct child of the RW
/// lock's reader prefix, exactly like a reader's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "probe: a mutex named NAME/read or NAME/write collides with the RW lock NAME"]
async fn a_mutex_named_like_the_reader_prefix_does_not_block_the_rw_lock() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let mutex = locksmith_api::DistributedLock::lock(&a, "doc/read")
        .await
        .unwrap();
    let writer = within("try_write", b.try_write("doc")).await.unwrap();
    assert!(
        writer.is_some(),
        "try_write(doc) refused while the mutex doc/read is held"
    );
    drop(writer);
    let writer = tokio::time::timeout(Duration::from_secs(2), b.write("doc")).await;
    assert!(writer.is_ok(), "write(doc) waits for the mutex doc/read");
    drop(mutex);
}

/// Attack: etcd stalls (SIGSTOP) for longer than a request may take while far waiters of a
/// limit-1 queue (up to 7 keys ahead) wait on their single-key watches, and the holder and two
/// waiters ahead go during the stall (a release, a withdrawal, a key deleted by hand). Once
/// etcd answers again each waiter is served in turn; none is granted out of turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_waiters_are_served_in_turn_after_etcd_stalls() {
    let mut etcd = Etcd::new();
    etcd.config.ttl_secs = 6;
    let sessions = [etcd.session().await, etcd.session().await];
    let mut rng = seeded();
    let mut model = SemModel::new(&etcd, "stall", 1);
    for n in 0..8 {
        model.join(&etcd, &sessions[n % 2]).await;
    }
    let quiet = Some(Duration::from_millis(120));
    model.settle(quiet).await;
    let (raw_url, deleted_key) = (etcd.server.client_url(), model.entries[4].key.clone());
    // A client connected before the stall deletes a key during it, as an operator would.
    let mut raw = locksmith_etcd::etcd_client::Client::connect([raw_url], None)
        .await
        .unwrap();
    let State::Waiting(withdrawn) = std::mem::replace(&mut model.entries[2].state, State::Gone)
    else {
        panic!("entry 2 waits")
    };
    let State::Held(holder) = std::mem::replace(&mut model.entries[0].state, State::Gone) else {
        panic!("entry 0 holds")
    };
    let State::Waiting(doomed) = std::mem::replace(&mut model.entries[4].state, State::Gone) else {
        panic!("entry 4 waits")
    };
    model.doomed.push(doomed);
    {
        let _stalled = etcd.server.stop().unwrap();
        withdrawn.abort();
        let moves = tokio::spawn(async move {
            holder.unlock().await.unwrap();
            raw.delete(deleted_key, None).await.unwrap();
        });
        tokio::time::sleep(Duration::from_millis(2500)).await;
        drop(_stalled);
        within("the moves", moves).await.unwrap();
    }
    model.key_gone(&etcd, 2).await;
    model.drain(&etcd, &mut rng, quiet).await;
}

/// Probe: a far-back waiter (limit 1, five keys ahead) whose own key an operator deletes while
/// the queue ahead stays put. Near the head the wait ends at once with `LockLost`; far back it
/// does not watch its own key (1216d3e), so `acquire` goes on waiting, holding nothing, until a
/// key it watches goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "probe: a far waiter whose key was deleted by hand learns it only when the queue moves"]
async fn a_far_waiter_whose_key_was_deleted_fails_at_once() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let mut model = SemModel::new(&etcd, "gone", 1);
    for _ in 0..5 {
        model.join(&etcd, &a).await;
    }
    model.join(&etcd, &b).await;
    model.settle(Some(QUIET)).await;
    model.delete_by_hand(&etcd, &[5]).await;
    let doomed = model.doomed.pop().unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(3), doomed).await;
    assert!(
        matches!(outcome, Ok(Ok(Err(LockError::LockLost { .. })))),
        "3 s after its key was deleted the far waiter still waits: {outcome:?}"
    );
}
