//! The semaphore cases: the specification of [`DistributedSemaphore`], run on every backend
//! with [`semaphore_conformance_tests!`](crate::semaphore_conformance_tests).
//!
//! Each case is a plain `async fn` taking a [`SemaphoreFactory`]. Sessions are
//! [`SemaphoreSession`]s (a [`DistributedSemaphore`] that is also a [`DistributedLock`], for
//! `close` and for checking that lock `x` and semaphore `x` are independent).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use super::{
    acquired, joined, joined_cancelled, queue_reaches, stays_blocked, unlock, within, Chaos, Odds,
};
use crate::{DistributedLock, DistributedSemaphore, LockError, LockGuard};

/// A client session offering semaphores and plain locks.
pub trait SemaphoreSession: DistributedLock + DistributedSemaphore {}

impl<T: DistributedLock + DistributedSemaphore + ?Sized> SemaphoreSession for T {}

/// Opens sessions with semaphores on the store under test.
#[async_trait]
pub trait SemaphoreFactory: Send + Sync {
    /// Opens a new client session on the store (a new lease on etcd); every session of one
    /// factory contends on the same names.
    async fn connect(&self) -> Result<Arc<dyn SemaphoreSession>, LockError>;

    /// How many permits of the semaphore `name` are held or waited for in the store, as the
    /// backend records it.
    async fn queue_len(&self, name: &str) -> usize;
}

/// Every semaphore case, by name, for backends that drive the suite themselves.
pub const SEMAPHORE_CASES: &[&str] = &[
    "limit_zero_is_an_error",
    "limit_mismatch_is_an_error_and_leaves_nothing",
    "at_most_limit_permits",
    "permits_are_fifo",
    "one_session_holds_several_permits",
    "cancelled_permit_waiters_leave_no_trace",
    "permit_waiters_fail_when_their_session_closes",
    "permit_guards_report_loss",
    "permit_unlock_frees_at_once",
    "permit_fencing_tokens_increase",
    "semaphore_names_are_independent",
    "invalid_names_are_rejected_by_semaphore",
    "semaphore_invariants_under_random_cancellation",
];

/// Writes one `#[tokio::test]` per semaphore case, each with a fresh factory from `$factory`
/// (a [`SemaphoreFactory`]).
///
/// The invoking crate needs `tokio` with the `macros` and `rt-multi-thread` features.
#[macro_export]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
macro_rules! semaphore_conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@cases $factory;
            limit_zero_is_an_error,
            limit_mismatch_is_an_error_and_leaves_nothing,
            at_most_limit_permits,
            permits_are_fifo,
            one_session_holds_several_permits,
            cancelled_permit_waiters_leave_no_trace,
            permit_waiters_fail_when_their_session_closes,
            permit_guards_report_loss,
            permit_unlock_frees_at_once,
            permit_fencing_tokens_increase,
            semaphore_names_are_independent,
            invalid_names_are_rejected_by_semaphore,
            semaphore_invariants_under_random_cancellation,
        );
    };
}

type Session = Arc<dyn SemaphoreSession>;

async fn session(f: &dyn SemaphoreFactory) -> Session {
    match within("connect", f.connect()).await {
        Ok(session) => session,
        Err(err) => panic!("conformance: connect failed: {err}"),
    }
}

async fn acquire(l: &dyn SemaphoreSession, name: &str, limit: u32) -> LockGuard {
    match within("acquire", l.acquire(name, limit)).await {
        Ok(guard) => guard,
        Err(err) => panic!("conformance: acquire({name:?}, {limit}) failed: {err}"),
    }
}

async fn try_acquire(l: &dyn SemaphoreSession, name: &str, limit: u32) -> Option<LockGuard> {
    match within("try_acquire", l.try_acquire(name, limit)).await {
        Ok(guard) => guard,
        Err(err) => panic!("conformance: try_acquire({name:?}, {limit}) failed: {err}"),
    }
}

fn spawn_acquire(l: &Session, name: &str, limit: u32) -> JoinHandle<Result<LockGuard, LockError>> {
    let (l, name) = (Arc::clone(l), name.to_owned());
    tokio::spawn(async move { l.acquire(&name, limit).await })
}

/// Waits until the store records `n` permits held or waited for of `name`.
async fn queued(f: &dyn SemaphoreFactory, name: &str, n: usize) {
    queue_reaches(n, || f.queue_len(name)).await;
}

/// A limit of 0 fails with `InvalidLimit` on both entry points.
pub async fn limit_zero_is_an_error(f: &dyn SemaphoreFactory) {
    let l = session(f).await;
    match within("acquire", l.acquire("zero", 0)).await {
        Err(LockError::InvalidLimit { limit: 0, .. }) => {}
        other => panic!("conformance: acquire with limit 0 gave {other:?}"),
    }
    match within("try_acquire", l.try_acquire("zero", 0)).await {
        Err(LockError::InvalidLimit { limit: 0, .. }) => {}
        other => panic!("conformance: try_acquire with limit 0 gave {other:?}"),
    }
    assert_eq!(f.queue_len("zero").await, 0);
}

/// A name in use with one limit refuses another with `LimitMismatch`, queuing nothing; once
/// the name is free, a new limit is accepted.
pub async fn limit_mismatch_is_an_error_and_leaves_nothing(f: &dyn SemaphoreFactory) {
    let (a, b) = (session(f).await, session(f).await);
    let held = acquire(&*a, "mismatch", 2).await;
    for limit in [1, 3] {
        match within("acquire", b.acquire("mismatch", limit)).await {
            Err(LockError::LimitMismatch {
                limit: asked,
                in_use: 2,
                ..
            }) => assert_eq!(asked, limit),
            other => panic!("conformance: acquire with limit {limit} gave {other:?}"),
        }
        match within("try_acquire", b.try_acquire("mismatch", limit)).await {
            Err(LockError::LimitMismatch { in_use: 2, .. }) => {}
            other => panic!("conformance: try_acquire with limit {limit} gave {other:?}"),
        }
    }
    assert_eq!(f.queue_len("mismatch").await, 1, "a refused acquire queued");
    let second = acquire(&*b, "mismatch", 2).await;
    unlock(held).await;
    unlock(second).await;
    queued(f, "mismatch", 0).await;
    unlock(acquire(&*b, "mismatch", 3).await).await;
}

/// `limit` sessions hold at once; the next waits until one unlocks; `try_acquire` is `None`
/// while all permits are held.
pub async fn at_most_limit_permits(f: &dyn SemaphoreFactory) {
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(session(f).await);
    }
    let mut held = Vec::new();
    for l in &sessions[..3] {
        held.push(acquire(&**l, "limit", 3).await);
    }
    assert!(try_acquire(&*sessions[3], "limit", 3).await.is_none());
    let waiter = spawn_acquire(&sessions[3], "limit", 3);
    queued(f, "limit", 4).await;
    assert!(stays_blocked(&waiter).await, "a fourth permit of three");
    unlock(held.remove(1)).await;
    held.push(acquired(waiter).await);
    for guard in held {
        unlock(guard).await;
    }
}

/// Waiters get permits in arrival order, and `try_acquire` does not overtake them.
pub async fn permits_are_fifo(f: &dyn SemaphoreFactory) {
    let holder = session(f).await;
    let mut held = vec![
        acquire(&*holder, "fifo-permits", 2).await,
        acquire(&*holder, "fifo-permits", 2).await,
    ];
    let order = Arc::new(Mutex::new(Vec::new()));
    let (mut sessions, mut waiters) = (Vec::new(), Vec::new());
    for i in 0..4 {
        sessions.push(session(f).await);
        let (l, order) = (Arc::clone(&sessions[i]), Arc::clone(&order));
        waiters.push(tokio::spawn(async move {
            let guard = acquire(&*l, "fifo-permits", 2).await;
            order.lock().push(i);
            // The permit stays held (the session lives on in `sessions`), so that permits
            // free one at a time.
            guard
        }));
        queued(f, "fifo-permits", i + 3).await;
    }
    let late = session(f).await;
    for waiter in waiters {
        unlock(held.remove(0)).await;
        assert!(
            try_acquire(&*late, "fifo-permits", 2).await.is_none(),
            "try_acquire overtook a waiter"
        );
        held.push(joined(waiter).await);
    }
    assert_eq!(*order.lock(), vec![0, 1, 2, 3]);
    for guard in held {
        unlock(guard).await;
    }
}

/// One session may hold several permits of a name, up to the limit.
pub async fn one_session_holds_several_permits(f: &dyn SemaphoreFactory) {
    let (a, b) = (session(f).await, session(f).await);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(acquire(&*a, "several", 3).await);
    }
    assert!(try_acquire(&*a, "several", 3).await.is_none());
    assert!(try_acquire(&*b, "several", 3).await.is_none());
    let keys: std::collections::HashSet<&str> = held.iter().map(LockGuard::key).collect();
    assert_eq!(keys.len(), 3, "every permit has its own key");
    let mut tokens: Vec<_> = held.iter().map(LockGuard::fencing_token).collect();
    tokens.dedup();
    assert_eq!(tokens.len(), 3, "every permit has its own token");
    unlock(held.remove(0)).await;
    held.extend(try_acquire(&*b, "several", 3).await);
    assert_eq!(held.len(), 3, "a freed permit was not free");
    for guard in held {
        unlock(guard).await;
    }
}

/// Aborted and timed-out waiters leave the queue and hold no permit.
pub async fn cancelled_permit_waiters_leave_no_trace(f: &dyn SemaphoreFactory) {
    let (a, b, c) = (session(f).await, session(f).await, session(f).await);
    let held = acquire(&*a, "cancel-permit", 1).await;
    let aborted = spawn_acquire(&b, "cancel-permit", 1);
    queued(f, "cancel-permit", 2).await;
    let behind = spawn_acquire(&c, "cancel-permit", 1);
    queued(f, "cancel-permit", 3).await;
    aborted.abort();
    assert!(joined_cancelled(aborted).await);
    queued(f, "cancel-permit", 2).await;
    let timed_out =
        tokio::time::timeout(Duration::from_millis(100), b.acquire("cancel-permit", 1)).await;
    assert!(
        timed_out.is_err(),
        "acquire returned while the permit was held"
    );
    queued(f, "cancel-permit", 2).await;
    unlock(held).await;
    unlock(acquired(behind).await).await;
    let free = try_acquire(&*b, "cancel-permit", 1).await;
    assert!(free.is_some(), "a cancelled waiter kept a permit");
}

/// Waiters fail with `SessionLost` when their session closes; the session gets no permit
/// afterwards.
pub async fn permit_waiters_fail_when_their_session_closes(f: &dyn SemaphoreFactory) {
    let (a, b) = (session(f).await, session(f).await);
    let held = acquire(&*a, "close-permit", 1).await;
    let waiter = spawn_acquire(&b, "close-permit", 1);
    queued(f, "close-permit", 2).await;
    if let Err(err) = within("close", b.close()).await {
        panic!("conformance: close failed: {err}");
    }
    match joined(waiter).await {
        Err(err) => assert!(err.is_session_lost(), "waiter failed with {err}"),
        Ok(_) => panic!("conformance: a waiter of a closed session got a permit"),
    }
    queued(f, "close-permit", 1).await;
    unlock(held).await;
    match within("acquire", b.acquire("close-permit", 1)).await {
        Err(err) => assert!(err.is_session_lost(), "after close: {err}"),
        Ok(_) => panic!("conformance: a closed session got a permit"),
    }
}

/// Permits of a closed session report the loss, `unlock` says so, and the permits pass on.
pub async fn permit_guards_report_loss(f: &dyn SemaphoreFactory) {
    let (a, b) = (session(f).await, session(f).await);
    let first = acquire(&*a, "lost-permit", 2).await;
    let second = acquire(&*a, "lost-permit", 2).await;
    let waiter = spawn_acquire(&b, "lost-permit", 2);
    queued(f, "lost-permit", 3).await;
    within("close", a.close()).await.ok();
    for guard in [first, second] {
        within("lost()", guard.lost()).await;
        match within("unlock", guard.unlock()).await {
            Err(LockError::LockLost { .. }) => {}
            other => panic!("conformance: unlock of a lost permit gave {other:?}"),
        }
    }
    let got = acquired(waiter).await;
    let other = try_acquire(&*b, "lost-permit", 2).await;
    assert!(other.is_some(), "a lost permit stayed taken");
    unlock(got).await;
}

/// `unlock` frees the permit at once.
pub async fn permit_unlock_frees_at_once(f: &dyn SemaphoreFactory) {
    let (a, b) = (session(f).await, session(f).await);
    for _ in 0..3 {
        unlock(acquire(&*a, "free-permit", 1).await).await;
        match try_acquire(&*b, "free-permit", 1).await {
            Some(guard) => unlock(guard).await,
            None => panic!("conformance: the permit stayed taken after unlock"),
        }
    }
}

/// A permit's token exceeds every permit's of the name released before it was granted.
pub async fn permit_fencing_tokens_increase(f: &dyn SemaphoreFactory) {
    let sessions = [session(f).await, session(f).await];
    let mut last = None;
    for round in 0..6 {
        let guard = acquire(&*sessions[round % 2], "fence-permit", 1).await;
        let token = guard.fencing_token();
        if let Some(previous) = last {
            assert!(token > previous, "permit token {token} after {previous}");
        }
        last = Some(token);
        unlock(guard).await;
    }
    // With two permits: each new permit beats the one it replaces.
    let mut held = vec![
        acquire(&*sessions[0], "fence-permit/2", 2).await,
        acquire(&*sessions[1], "fence-permit/2", 2).await,
    ];
    for round in 0..4 {
        let released = held.remove(0);
        let token = released.fencing_token();
        unlock(released).await;
        let next = acquire(&*sessions[round % 2], "fence-permit/2", 2).await;
        assert!(
            next.fencing_token() > token,
            "permit token after its slot's last"
        );
        held.push(next);
    }
    for guard in held {
        unlock(guard).await;
    }
}

/// Semaphore `x` is independent of lock `x` and of semaphores whose names extend `x`.
pub async fn semaphore_names_are_independent(f: &dyn SemaphoreFactory) {
    let (a, b) = (session(f).await, session(f).await);
    let lock = match within("lock", a.lock("indep-sem")).await {
        Ok(guard) => guard,
        Err(err) => panic!("conformance: lock failed: {err}"),
    };
    let mut held = vec![lock];
    for name in ["indep-sem", "indep-sem/x", "indep-sem/1", "indep"] {
        let permit = try_acquire(&*b, name, 1).await;
        assert!(permit.is_some(), "semaphore {name:?} blocked");
        held.extend(permit);
    }
    let lock_again = within("try_lock", a.try_lock("indep-sem/x")).await;
    assert!(matches!(lock_again, Ok(Some(_))), "a permit blocked a lock");
    for guard in held {
        unlock(guard).await;
    }
}

/// Bad names fail with `InvalidName` on both entry points.
pub async fn invalid_names_are_rejected_by_semaphore(f: &dyn SemaphoreFactory) {
    let l = session(f).await;
    for bad in ["", "nul\0byte", "new\nline"] {
        match within("acquire", l.acquire(bad, 1)).await {
            Err(LockError::InvalidName { .. }) => {}
            other => panic!("conformance: acquire({bad:?}) gave {other:?}"),
        }
        match within("try_acquire", l.try_acquire(bad, 1)).await {
            Err(LockError::InvalidName { .. }) => {}
            other => panic!("conformance: try_acquire({bad:?}) gave {other:?}"),
        }
    }
}

/// The invariant checker: 12 tasks over 4 sessions take 200 random permits of a limit-3
/// semaphore, some with `try_acquire`, some cancelled by a timeout or an abort at a random
/// moment. Never more than 3 holders; every waiter that is not cancelled is served; nothing
/// is left.
pub async fn semaphore_invariants_under_random_cancellation(f: &dyn SemaphoreFactory) {
    const TASKS: usize = 12;
    const OPS: usize = 200;
    const LIMIT: u32 = 3;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(session(f).await);
    }
    let holders = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let l = Arc::clone(&sessions[task % sessions.len()]);
        let (holders, served) = (Arc::clone(&holders), Arc::clone(&served));
        tasks.push(tokio::spawn(async move {
            let mut odds = Odds::new(100 + task as u64);
            for _ in 0..OPS / TASKS + usize::from(task < OPS % TASKS) {
                let name = "invariant-permits";
                let guard = Chaos::pick(&mut odds)
                    .run(
                        &l,
                        |l| async move { l.acquire(name, LIMIT).await },
                        |l| async move { l.try_acquire(name, LIMIT).await },
                    )
                    .await;
                let Some(guard) = guard else { continue };
                let before = holders.fetch_add(1, Ordering::SeqCst);
                assert!(before < LIMIT as usize, "more than {LIMIT} permits");
                odds.pause().await;
                holders.fetch_sub(1, Ordering::SeqCst);
                served.fetch_add(1, Ordering::SeqCst);
                unlock(guard).await;
            }
        }));
    }
    for task in tasks {
        joined(task).await;
    }
    queued(f, "invariant-permits", 0).await;
    assert!(served.load(Ordering::SeqCst) > 0);
}
