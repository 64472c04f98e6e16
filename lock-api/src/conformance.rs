//! The behaviour suite every backend runs: the specification of [`DistributedLock`].
//!
//! Each case is a plain `async fn` taking a [`SessionFactory`], which opens fresh client
//! sessions on one store under test. Run the whole suite with
//! [`conformance_tests!`](crate::conformance_tests), which writes one `#[tokio::test]` per
//! case, or call the cases yourself.
//!
//! ```ignore
//! struct MyFactory(MyStore);
//! #[locksmith_api::async_trait]
//! impl SessionFactory for MyFactory { /* connect, queue_len */ }
//! locksmith_api::conformance_tests!(MyFactory(MyStore::new()));
//! ```
//!
//! The election cases ([`ELECTION_CASES`]) take a [`CoordinationFactory`], whose sessions
//! offer locks and leader election; [`election_conformance_tests!`](crate::election_conformance_tests)
//! writes them as tests.
//!
//! The reader-writer cases ([`RWLOCK_CASES`], [`RwLockFactory`],
//! [`rwlock_conformance_tests!`](crate::rwlock_conformance_tests)) and the semaphore cases
//! ([`SEMAPHORE_CASES`], [`SemaphoreFactory`],
//! [`semaphore_conformance_tests!`](crate::semaphore_conformance_tests)) follow the same
//! pattern; each ends with an invariant checker that takes guards at random under random
//! cancellation.
//!
//! Cases wait on observable state ([`SessionFactory::queue_len`], guard signals) with a
//! generous [`GUARD`] timeout; they never sleep for correctness. The few negative checks
//! ("this waiter is still blocked") give the backend [`QUIET`] to misbehave.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use crate::{DistributedLock, LockError, LockGuard};

/// A small deterministic pseudo-random source (xorshift64) for the invariant checkers, so
/// that a failing run is the same run again.
struct Odds(u64);

impl Odds {
    fn new(seed: u64) -> Self {
        Odds(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    /// Holds a guard for a random short while: not at all, a yield, or up to 2 ms.
    async fn pause(&mut self) {
        match self.below(3) {
            0 => {}
            1 => tokio::task::yield_now().await,
            _ => tokio::time::sleep(Duration::from_micros(self.below(2_000))).await,
        }
    }
}

/// How an invariant checker asks for a guard.
#[derive(Clone, Copy, Debug)]
enum Chaos {
    /// Waits: a live waiter, which must be served.
    Wait,
    /// Tries once.
    Try,
    /// Waits at most this long (`tokio::time::timeout`).
    Timeout(Duration),
    /// Waits in a task aborted after this long.
    Abort(Duration),
}

impl Chaos {
    fn pick(odds: &mut Odds) -> Self {
        let after = Duration::from_micros(odds.below(3_000));
        match odds.below(4) {
            0 => Chaos::Wait,
            1 => Chaos::Try,
            2 => Chaos::Timeout(after),
            _ => Chaos::Abort(after),
        }
    }

    /// Asks `session` for a guard with `wait` or `try_take`; `None` when it was cancelled or
    /// refused. Panics on any error: no case expects one here.
    async fn run<S, W, WF, T, TF>(self, session: &Arc<S>, wait: W, try_take: T) -> Option<LockGuard>
    where
        S: ?Sized + Send + Sync + 'static,
        W: FnOnce(Arc<S>) -> WF,
        WF: Future<Output = Result<LockGuard, LockError>> + Send + 'static,
        T: FnOnce(Arc<S>) -> TF,
        TF: Future<Output = Result<Option<LockGuard>, LockError>>,
    {
        let session = Arc::clone(session);
        let outcome = match self {
            Chaos::Wait => Some(within("a live waiter to be served", wait(session)).await),
            Chaos::Try => match within("a try", try_take(session)).await {
                Ok(guard) => return guard,
                Err(err) => Some(Err(err)),
            },
            Chaos::Timeout(after) => tokio::time::timeout(after, wait(session)).await.ok(),
            Chaos::Abort(after) => {
                let waiter = tokio::spawn(wait(session));
                tokio::time::sleep(after).await;
                waiter.abort();
                // A waiter that finished before the abort hands its result over.
                within("an aborted waiter to end", waiter).await.ok()
            }
        };
        match outcome {
            None => None,
            Some(Ok(guard)) => Some(guard),
            Some(Err(err)) => panic!("conformance: {self:?} failed: {err}"),
        }
    }
}

mod election;
mod rwlock;
mod semaphore;
pub use election::*;
pub use rwlock::*;
pub use semaphore::*;

/// The longest any single step of a case may take before the case fails.
pub const GUARD: Duration = Duration::from_secs(20);

/// How long a negative check watches for a waiter that should stay blocked.
pub const QUIET: Duration = Duration::from_millis(200);

/// Opens client sessions on the store under test.
#[async_trait]
pub trait SessionFactory: Send + Sync {
    /// Opens a new client session on the store (a new lease on etcd); every session of one
    /// factory contends on the same names.
    async fn connect(&self) -> Result<Arc<dyn DistributedLock>, LockError>;

    /// How many sessions hold or wait for `name` in the store (holder plus queued waiters),
    /// as the backend records it. Tasks that queue inside one session before reaching the
    /// store need not be counted.
    async fn queue_len(&self, name: &str) -> usize;
}

/// Every case, by name, for backends that drive the suite themselves.
pub const CASES: &[&str] = &[
    "mutual_exclusion_under_contention",
    "fifo_order_is_arrival_order",
    "try_lock_never_waits",
    "cancelled_waiter_does_not_block_queue",
    "timeout_leaves_no_trace",
    "same_session_tasks_exclude_each_other",
    "dropping_guard_releases",
    "unlock_returns_ok_once",
    "lost_guard_unlock_reports_loss",
    "session_close_releases_and_fails_waiters",
    "dropping_client_releases_holds",
    "names_are_independent",
    "invalid_names_are_rejected",
    "fencing_tokens_increase_across_holders",
    "many_names_at_once",
    "guard_reports_name_and_key",
];

/// Writes one `#[tokio::test]` per conformance case, each with a fresh factory from `$factory`.
///
/// The invoking crate needs `tokio` with the `macros` and `rt-multi-thread` features.
#[macro_export]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@cases $factory;
            mutual_exclusion_under_contention,
            fifo_order_is_arrival_order,
            try_lock_never_waits,
            cancelled_waiter_does_not_block_queue,
            timeout_leaves_no_trace,
            same_session_tasks_exclude_each_other,
            dropping_guard_releases,
            unlock_returns_ok_once,
            lost_guard_unlock_reports_loss,
            session_close_releases_and_fails_waiters,
            dropping_client_releases_holds,
            names_are_independent,
            invalid_names_are_rejected,
            fencing_tokens_increase_across_holders,
            many_names_at_once,
            guard_reports_name_and_key,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = $factory;
                $crate::conformance::$case(&factory).await;
            }
        )*
    };
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(GUARD, fut).await {
        Ok(value) => value,
        Err(_) => panic!("conformance: {what} took longer than {GUARD:?}"),
    }
}

async fn session(f: &dyn SessionFactory) -> Arc<dyn DistributedLock> {
    match within("connect", f.connect()).await {
        Ok(session) => session,
        Err(err) => panic!("conformance: connect failed: {err}"),
    }
}

async fn lock(l: &dyn DistributedLock, name: &str) -> LockGuard {
    match within("lock", l.lock(name)).await {
        Ok(guard) => guard,
        Err(err) => panic!("conformance: lock({name:?}) failed: {err}"),
    }
}

async fn try_lock(l: &dyn DistributedLock, name: &str) -> Option<LockGuard> {
    match within("try_lock", l.try_lock(name)).await {
        Ok(guard) => guard,
        Err(err) => panic!("conformance: try_lock({name:?}) failed: {err}"),
    }
}

async fn unlock(guard: LockGuard) {
    let name = guard.name().to_owned();
    if let Err(err) = within("unlock", guard.unlock()).await {
        panic!("conformance: unlock({name:?}) failed: {err}");
    }
}

/// Waits until the store records `n` entries (holder plus waiters) for `name`.
async fn queued(f: &dyn SessionFactory, name: &str, n: usize) {
    queue_reaches(n, || f.queue_len(name)).await;
}

/// Waits until `len` (a backend's count of holders and waiters) answers `n`.
async fn queue_reaches<F, Fut>(n: usize, len: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = usize>,
{
    within("the queue to reach its expected length", async {
        while len().await != n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

fn spawn_lock(
    l: &Arc<dyn DistributedLock>,
    name: &str,
) -> JoinHandle<Result<LockGuard, LockError>> {
    let l = Arc::clone(l);
    let name = name.to_owned();
    tokio::spawn(async move { l.lock(&name).await })
}

async fn joined<T>(handle: JoinHandle<T>) -> T {
    match within("a waiter to finish", handle).await {
        Ok(value) => value,
        Err(err) => panic!("conformance: task failed: {err}"),
    }
}

async fn acquired(handle: JoinHandle<Result<LockGuard, LockError>>) -> LockGuard {
    match joined(handle).await {
        Ok(guard) => guard,
        Err(err) => panic!("conformance: waiter failed: {err}"),
    }
}

/// True if `handle` is still running after [`QUIET`].
async fn stays_blocked<T>(handle: &JoinHandle<T>) -> bool {
    tokio::time::sleep(QUIET).await;
    !handle.is_finished()
}

/// 32 tasks over 4 sessions increment a shared counter inside the critical section with a
/// yield between read and write; no increment is lost and nobody ever sees another holder.
pub async fn mutual_exclusion_under_contention(f: &dyn SessionFactory) {
    const TASKS: usize = 32;
    const ROUNDS: usize = 4;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(session(f).await);
    }
    let inside = Arc::new(AtomicUsize::new(0));
    let counter = Arc::new(Mutex::new(0usize));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let l = Arc::clone(&sessions[task % sessions.len()]);
        let (inside, counter) = (Arc::clone(&inside), Arc::clone(&counter));
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let guard = lock(&*l, "mutex").await;
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                let seen = *counter.lock();
                tokio::task::yield_now().await;
                *counter.lock() = seen + 1;
                assert_eq!(
                    inside.fetch_sub(1, Ordering::SeqCst),
                    1,
                    "two holders at once"
                );
                unlock(guard).await;
            }
        }));
    }
    for task in tasks {
        joined(task).await;
    }
    assert_eq!(*counter.lock(), TASKS * ROUNDS);
}

/// Waiters from different sessions acquire in the order they queued.
pub async fn fifo_order_is_arrival_order(f: &dyn SessionFactory) {
    let holder = session(f).await;
    let guard = lock(&*holder, "fifo").await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..5 {
        let l = session(f).await;
        let order = Arc::clone(&order);
        waiters.push(tokio::spawn(async move {
            let guard = lock(&*l, "fifo").await;
            order.lock().push(i);
            unlock(guard).await;
        }));
        queued(f, "fifo", i + 2).await;
    }
    unlock(guard).await;
    for waiter in waiters {
        joined(waiter).await;
    }
    assert_eq!(*order.lock(), vec![0, 1, 2, 3, 4]);
}

/// `try_lock` returns `None` while another session holds the name and never joins the queue.
pub async fn try_lock_never_waits(f: &dyn SessionFactory) {
    let (a, b) = (session(f).await, session(f).await);
    let guard = lock(&*a, "try").await;
    assert!(
        try_lock(&*b, "try").await.is_none(),
        "held by another session"
    );
    assert!(try_lock(&*a, "try").await.is_none(), "held by this session");
    assert_eq!(
        f.queue_len("try").await,
        1,
        "a failed try_lock leaves nothing queued"
    );
    unlock(guard).await;
    let guard = try_lock(&*b, "try").await;
    assert!(guard.is_some(), "free after unlock");
}

/// A waiter cancelled in the middle of the queue does not hold up those behind it.
pub async fn cancelled_waiter_does_not_block_queue(f: &dyn SessionFactory) {
    let holder = session(f).await;
    let guard = lock(&*holder, "cancel").await;
    let (s1, s2, s3) = (session(f).await, session(f).await, session(f).await);
    let first = spawn_lock(&s1, "cancel");
    queued(f, "cancel", 2).await;
    let middle = spawn_lock(&s2, "cancel");
    queued(f, "cancel", 3).await;
    let last = spawn_lock(&s3, "cancel");
    queued(f, "cancel", 4).await;
    middle.abort();
    assert!(joined_cancelled(middle).await);
    queued(f, "cancel", 3).await;
    unlock(guard).await;
    unlock(acquired(first).await).await;
    unlock(acquired(last).await).await;
    queued(f, "cancel", 0).await;
}

async fn joined_cancelled<T>(handle: JoinHandle<T>) -> bool {
    match within("a cancelled task to end", handle).await {
        Ok(_) => false,
        Err(err) => err.is_cancelled(),
    }
}

/// `tokio::time::timeout` around `lock` gives up in time and leaves nothing queued.
pub async fn timeout_leaves_no_trace(f: &dyn SessionFactory) {
    let (a, b) = (session(f).await, session(f).await);
    let guard = lock(&*a, "timeout").await;
    let waited = tokio::time::timeout(Duration::from_millis(100), b.lock("timeout")).await;
    assert!(waited.is_err(), "lock returned while the name was held");
    queued(f, "timeout", 1).await;
    unlock(guard).await;
    let guard = try_lock(&*b, "timeout").await;
    assert!(
        guard.is_some(),
        "nothing left behind by the timed-out waiter"
    );
}

/// Two tasks of one session exclude each other: the lock is not reentrant.
pub async fn same_session_tasks_exclude_each_other(f: &dyn SessionFactory) {
    let l = session(f).await;
    let guard = lock(&*l, "same").await;
    let second = spawn_lock(&l, "same");
    assert!(
        stays_blocked(&second).await,
        "second task of the session got the lock"
    );
    let token = guard.fencing_token();
    unlock(guard).await;
    let guard = acquired(second).await;
    assert!(guard.fencing_token() > token);
    unlock(guard).await;
}

/// Dropping a guard releases the lock to the next waiter.
pub async fn dropping_guard_releases(f: &dyn SessionFactory) {
    let (a, b) = (session(f).await, session(f).await);
    let guard = lock(&*a, "drop").await;
    let waiter = spawn_lock(&b, "drop");
    queued(f, "drop", 2).await;
    drop(guard);
    unlock(acquired(waiter).await).await;
}

/// `unlock` succeeds for a held lock, and the name is free afterwards.
pub async fn unlock_returns_ok_once(f: &dyn SessionFactory) {
    let (a, b) = (session(f).await, session(f).await);
    let guard = lock(&*a, "unlock").await;
    assert!(!guard.is_lost());
    assert!(within("unlock", guard.unlock()).await.is_ok());
    let guard = try_lock(&*b, "unlock").await;
    assert!(guard.is_some(), "free after unlock");
}

/// A guard whose session ended reports the loss from `lost()` and from `unlock()`.
pub async fn lost_guard_unlock_reports_loss(f: &dyn SessionFactory) {
    let a = session(f).await;
    let guard = lock(&*a, "lost").await;
    within("close", a.close()).await.ok();
    within("lost()", guard.lost()).await;
    assert!(guard.is_lost());
    match within("unlock", guard.unlock()).await {
        Err(LockError::LockLost { name, .. }) => assert_eq!(name, "lost"),
        other => panic!("conformance: unlock of a lost guard gave {other:?}"),
    }
}

/// Closing a session releases its locks, fails its waiters and refuses later calls.
pub async fn session_close_releases_and_fails_waiters(f: &dyn SessionFactory) {
    let (a, b, c) = (session(f).await, session(f).await, session(f).await);
    let held_by_a = lock(&*a, "close/held").await;
    let held_by_b = lock(&*b, "close/wait").await;
    let a_waits = spawn_lock(&a, "close/wait");
    queued(f, "close/wait", 2).await;
    let c_waits = spawn_lock(&c, "close/held");
    queued(f, "close/held", 2).await;

    if let Err(err) = within("close", a.close()).await {
        panic!("conformance: close failed: {err}");
    }
    match joined(a_waits).await {
        Err(err) => assert!(err.is_session_lost(), "waiter failed with {err}"),
        Ok(_) => panic!("conformance: a waiter of a closed session acquired"),
    }
    within("lost()", held_by_a.lost()).await;
    unlock(acquired(c_waits).await).await;
    match within("lock", a.lock("close/later")).await {
        Err(err) => assert!(err.is_session_lost(), "lock after close failed with {err}"),
        Ok(_) => panic!("conformance: a closed session acquired a lock"),
    }
    unlock(held_by_b).await;
}

/// Dropping the last handle of a client ends its session and releases what it held.
pub async fn dropping_client_releases_holds(f: &dyn SessionFactory) {
    let (a, b) = (session(f).await, session(f).await);
    let guard = lock(&*a, "client-drop").await;
    let waiter = spawn_lock(&b, "client-drop");
    queued(f, "client-drop", 2).await;
    drop(a);
    within("lost()", guard.lost()).await;
    unlock(acquired(waiter).await).await;
}

/// Distinct names never block each other, including names that are prefixes of others.
pub async fn names_are_independent(f: &dyn SessionFactory) {
    let (a, b) = (session(f).await, session(f).await);
    let names = ["a", "a/b", "a/", "a/b/c", "ab", "b/a", "A", "a b", "ä"];
    let mut guards = Vec::new();
    for name in names {
        guards.push(lock(&*a, name).await);
    }
    let other = try_lock(&*b, "a/c").await;
    assert!(
        other.is_some(),
        "an unheld name under a held prefix is free"
    );
    // An explicit unlock: a dropped guard's release finishes in the background.
    unlock(guards.remove(0)).await;
    let free = try_lock(&*b, "a").await;
    assert!(free.is_some(), "'a' released while 'a/...' are held");
    for name in &names[1..] {
        assert!(try_lock(&*b, name).await.is_none(), "{name:?} still held");
    }
}

/// Bad names fail with `InvalidName` on every entry point.
pub async fn invalid_names_are_rejected(f: &dyn SessionFactory) {
    let l = session(f).await;
    let long = "n".repeat(crate::MAX_NAME_LEN + 1);
    for bad in ["", "nul\0byte", "new\nline", long.as_str()] {
        match within("lock", l.lock(bad)).await {
            Err(LockError::InvalidName { .. }) => {}
            other => panic!("conformance: lock({bad:?}) gave {other:?}"),
        }
        match within("try_lock", l.try_lock(bad)).await {
            Err(LockError::InvalidName { .. }) => {}
            other => panic!("conformance: try_lock({bad:?}) gave {other:?}"),
        }
    }
    let longest = "n".repeat(crate::MAX_NAME_LEN);
    unlock(lock(&*l, &longest).await).await;
}

/// Each holder of a name gets a greater fencing token than every holder before it.
pub async fn fencing_tokens_increase_across_holders(f: &dyn SessionFactory) {
    let sessions = [session(f).await, session(f).await, session(f).await];
    let mut last = None;
    for round in 0..9 {
        let guard = lock(&*sessions[round % 3], "fence").await;
        let token = guard.fencing_token();
        if let Some(previous) = last {
            assert!(token > previous, "token {token} after {previous}");
        }
        last = Some(token);
        unlock(guard).await;
    }
    // Under contention too: the order of acquisition is the order of tokens.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for l in &sessions {
        for _ in 0..3 {
            let (l, seen) = (Arc::clone(l), Arc::clone(&seen));
            tasks.push(tokio::spawn(async move {
                let guard = lock(&*l, "fence").await;
                seen.lock().push(guard.fencing_token());
                unlock(guard).await;
            }));
        }
    }
    for task in tasks {
        joined(task).await;
    }
    let seen = seen.lock().clone();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "tokens out of order: {seen:?}"
    );
    assert!(seen.first().is_some_and(|first| Some(*first) > last));
}

/// One session holds many names at once; another sees each held, then each free.
pub async fn many_names_at_once(f: &dyn SessionFactory) {
    const NAMES: usize = 200;
    let (a, b) = (session(f).await, session(f).await);
    let mut guards = Vec::new();
    for i in 0..NAMES {
        guards.push(lock(&*a, &format!("many/{i}")).await);
    }
    let keys: HashSet<&str> = guards.iter().map(LockGuard::key).collect();
    assert_eq!(keys.len(), NAMES, "every hold has its own key");
    for i in (0..NAMES).step_by(17) {
        assert!(try_lock(&*b, &format!("many/{i}")).await.is_none());
    }
    for guard in guards {
        unlock(guard).await;
    }
    for i in (0..NAMES).step_by(17) {
        assert!(try_lock(&*b, &format!("many/{i}")).await.is_some());
    }
}

/// A guard tells its name and a key that contains the name.
pub async fn guard_reports_name_and_key(f: &dyn SessionFactory) {
    let l = session(f).await;
    let guard = lock(&*l, "report/me").await;
    assert_eq!(guard.name(), "report/me");
    assert!(guard.key().contains("report/me"), "key {:?}", guard.key());
    assert!(!guard.is_lost());
    assert_eq!(guard.lost_reason(), None);
    unlock(guard).await;
}
