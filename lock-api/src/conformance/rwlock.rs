//! The reader-writer cases: the specification of [`DistributedRwLock`], run on every backend
//! with [`rwlock_conformance_tests!`](crate::rwlock_conformance_tests).
//!
//! Each case is a plain `async fn` taking a [`RwLockFactory`]. Sessions are
//! [`RwLockSession`]s (a [`DistributedRwLock`] that is also a [`DistributedLock`], for
//! `close` and for checking that lock `x` and reader-writer lock `x` are independent).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use super::{
    acquired, joined, joined_cancelled, queue_reaches, stays_blocked, unlock, within, Chaos, Odds,
};
use crate::{DistributedLock, DistributedRwLock, LockError, LockGuard};

/// A client session offering reader-writer locks and plain locks.
pub trait RwLockSession: DistributedLock + DistributedRwLock {}

impl<T: DistributedLock + DistributedRwLock + ?Sized> RwLockSession for T {}

/// Opens sessions with reader-writer locks on the store under test.
#[async_trait]
pub trait RwLockFactory: Send + Sync {
    /// Opens a new client session on the store (a new lease on etcd); every session of one
    /// factory contends on the same names.
    async fn connect(&self) -> Result<Arc<dyn RwLockSession>, LockError>;

    /// How many readers and writers hold or wait for the reader-writer lock `name` in the
    /// store, as the backend records it.
    async fn queue_len(&self, name: &str) -> usize;
}

/// Every reader-writer case, by name, for backends that drive the suite themselves.
pub const RWLOCK_CASES: &[&str] = &[
    "readers_share_across_sessions_and_within_one",
    "writer_excludes_readers_and_writers",
    "fifo_with_writer_preference",
    "try_read_is_none_while_a_writer_holds_or_waits",
    "try_write_is_none_while_anyone_holds_or_waits",
    "own_read_guard_blocks_own_write",
    "cancelled_rw_waiters_leave_no_trace",
    "rw_waiters_fail_when_their_session_closes",
    "rw_guards_report_loss",
    "rw_unlock_frees_at_once",
    "rw_fencing_tokens_increase",
    "rw_names_are_independent",
    "invalid_names_are_rejected_by_rwlock",
    "rw_invariants_under_random_cancellation",
];

/// Writes one `#[tokio::test]` per reader-writer case, each with a fresh factory from
/// `$factory` (an [`RwLockFactory`]).
///
/// The invoking crate needs `tokio` with the `macros` and `rt-multi-thread` features.
#[macro_export]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
macro_rules! rwlock_conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@cases $factory;
            readers_share_across_sessions_and_within_one,
            writer_excludes_readers_and_writers,
            fifo_with_writer_preference,
            try_read_is_none_while_a_writer_holds_or_waits,
            try_write_is_none_while_anyone_holds_or_waits,
            own_read_guard_blocks_own_write,
            cancelled_rw_waiters_leave_no_trace,
            rw_waiters_fail_when_their_session_closes,
            rw_guards_report_loss,
            rw_unlock_frees_at_once,
            rw_fencing_tokens_increase,
            rw_names_are_independent,
            invalid_names_are_rejected_by_rwlock,
            rw_invariants_under_random_cancellation,
        );
    };
}

type Session = Arc<dyn RwLockSession>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Read,
    Write,
}

async fn session(f: &dyn RwLockFactory) -> Session {
    match within("connect", f.connect()).await {
        Ok(session) => session,
        Err(err) => panic!("conformance: connect failed: {err}"),
    }
}

async fn take(l: &dyn RwLockSession, mode: Mode, name: &str) -> LockGuard {
    let taken = match mode {
        Mode::Read => within("read", l.read(name)).await,
        Mode::Write => within("write", l.write(name)).await,
    };
    match taken {
        Ok(guard) => guard,
        Err(err) => panic!("conformance: {mode:?} {name:?} failed: {err}"),
    }
}

async fn try_take(l: &dyn RwLockSession, mode: Mode, name: &str) -> Option<LockGuard> {
    let taken = match mode {
        Mode::Read => within("try_read", l.try_read(name)).await,
        Mode::Write => within("try_write", l.try_write(name)).await,
    };
    match taken {
        Ok(guard) => guard,
        Err(err) => panic!("conformance: try {mode:?} {name:?} failed: {err}"),
    }
}

fn spawn_take(l: &Session, mode: Mode, name: &str) -> JoinHandle<Result<LockGuard, LockError>> {
    let (l, name) = (Arc::clone(l), name.to_owned());
    tokio::spawn(async move {
        match mode {
            Mode::Read => l.read(&name).await,
            Mode::Write => l.write(&name).await,
        }
    })
}

/// Waits until the store records `n` readers and writers for `name`.
async fn queued(f: &dyn RwLockFactory, name: &str, n: usize) {
    queue_reaches(n, || f.queue_len(name)).await;
}

/// Readers of several sessions, and several readers of one session, hold at once.
pub async fn readers_share_across_sessions_and_within_one(f: &dyn RwLockFactory) {
    let (a, b, c) = (session(f).await, session(f).await, session(f).await);
    let first = take(&*a, Mode::Read, "share").await;
    let second = take(&*a, Mode::Read, "share").await;
    let other = take(&*b, Mode::Read, "share").await;
    let tried = try_take(&*c, Mode::Read, "share").await;
    assert!(tried.is_some(), "try_read refused while only readers hold");
    queued(f, "share", 4).await;
    assert!(!first.is_lost() && !second.is_lost() && !other.is_lost());
    for guard in [first, second, other].into_iter().chain(tried) {
        unlock(guard).await;
    }
    queued(f, "share", 0).await;
}

/// A writer holds alone: readers and writers of every session wait until it unlocks, and
/// then are served in arrival order.
pub async fn writer_excludes_readers_and_writers(f: &dyn RwLockFactory) {
    let (a, b, c) = (session(f).await, session(f).await, session(f).await);
    let writer = take(&*a, Mode::Write, "excl").await;
    assert!(try_take(&*b, Mode::Read, "excl").await.is_none());
    assert!(try_take(&*b, Mode::Write, "excl").await.is_none());
    let reader = spawn_take(&b, Mode::Read, "excl");
    queued(f, "excl", 2).await;
    let next_writer = spawn_take(&c, Mode::Write, "excl");
    queued(f, "excl", 3).await;
    assert!(
        stays_blocked(&reader).await,
        "a reader got in beside a writer"
    );
    assert!(
        !next_writer.is_finished(),
        "a writer got in beside a writer"
    );
    unlock(writer).await;
    let reader = acquired(reader).await;
    assert!(
        stays_blocked(&next_writer).await,
        "a writer got in beside a reader"
    );
    unlock(reader).await;
    unlock(acquired(next_writer).await).await;
}

/// A writer waits for every older reader; readers arriving after a waiting writer queue
/// behind it (no writer starvation).
pub async fn fifo_with_writer_preference(f: &dyn RwLockFactory) {
    let (a, b, c, d) = (
        session(f).await,
        session(f).await,
        session(f).await,
        session(f).await,
    );
    let first = take(&*a, Mode::Read, "pref").await;
    let second = take(&*b, Mode::Read, "pref").await;
    let writer = spawn_take(&c, Mode::Write, "pref");
    queued(f, "pref", 3).await;
    let late_reader = spawn_take(&d, Mode::Read, "pref");
    queued(f, "pref", 4).await;
    assert!(
        stays_blocked(&late_reader).await,
        "a reader overtook a waiting writer"
    );
    unlock(first).await;
    assert!(
        stays_blocked(&writer).await,
        "a writer got in beside an older reader"
    );
    unlock(second).await;
    let writer = acquired(writer).await;
    assert!(
        stays_blocked(&late_reader).await,
        "a reader got in beside a writer"
    );
    unlock(writer).await;
    unlock(acquired(late_reader).await).await;
    queued(f, "pref", 0).await;
}

/// `try_read` is `None` while a writer holds and while one waits behind readers, and
/// leaves nothing queued.
pub async fn try_read_is_none_while_a_writer_holds_or_waits(f: &dyn RwLockFactory) {
    let (a, b, c) = (session(f).await, session(f).await, session(f).await);
    let reader = take(&*a, Mode::Read, "try-read").await;
    let writer = spawn_take(&b, Mode::Write, "try-read");
    queued(f, "try-read", 2).await;
    assert!(
        try_take(&*c, Mode::Read, "try-read").await.is_none(),
        "try_read overtook a waiting writer"
    );
    assert_eq!(f.queue_len("try-read").await, 2, "a failed try_read queued");
    unlock(reader).await;
    let writer = acquired(writer).await;
    assert!(try_take(&*c, Mode::Read, "try-read").await.is_none());
    unlock(writer).await;
    let reader = try_take(&*c, Mode::Read, "try-read").await;
    assert!(reader.is_some(), "try_read refused on a free name");
}

/// `try_write` is `None` while a reader or a writer holds, or anyone waits.
pub async fn try_write_is_none_while_anyone_holds_or_waits(f: &dyn RwLockFactory) {
    let (a, b, c) = (session(f).await, session(f).await, session(f).await);
    let reader = take(&*a, Mode::Read, "try-write").await;
    assert!(try_take(&*c, Mode::Write, "try-write").await.is_none());
    let writer = spawn_take(&b, Mode::Write, "try-write");
    queued(f, "try-write", 2).await;
    assert!(try_take(&*c, Mode::Write, "try-write").await.is_none());
    assert_eq!(
        f.queue_len("try-write").await,
        2,
        "a failed try_write queued"
    );
    unlock(reader).await;
    let writer = acquired(writer).await;
    assert!(try_take(&*c, Mode::Write, "try-write").await.is_none());
    unlock(writer).await;
    let writer = try_take(&*c, Mode::Write, "try-write").await;
    assert!(writer.is_some(), "try_write refused on a free name");
}

/// Not reentrant: a session's own read guard blocks its own `write`, and `try_write` says so.
pub async fn own_read_guard_blocks_own_write(f: &dyn RwLockFactory) {
    let a = session(f).await;
    let reader = take(&*a, Mode::Read, "own").await;
    assert!(
        try_take(&*a, Mode::Write, "own").await.is_none(),
        "try_write beside this session's own reader"
    );
    let writer = spawn_take(&a, Mode::Write, "own");
    assert!(
        stays_blocked(&writer).await,
        "write beside this session's own reader"
    );
    unlock(reader).await;
    unlock(acquired(writer).await).await;
}

/// Aborted and timed-out readers and writers leave the queue; a reader queued behind a
/// cancelled writer is served as soon as only readers are ahead of it.
pub async fn cancelled_rw_waiters_leave_no_trace(f: &dyn RwLockFactory) {
    let (a, b, c) = (session(f).await, session(f).await, session(f).await);
    let reader = take(&*a, Mode::Read, "cancel-rw").await;
    let writer = spawn_take(&b, Mode::Write, "cancel-rw");
    queued(f, "cancel-rw", 2).await;
    let late_reader = spawn_take(&c, Mode::Read, "cancel-rw");
    queued(f, "cancel-rw", 3).await;
    writer.abort();
    assert!(joined_cancelled(writer).await);
    let late_reader = acquired(late_reader).await;
    queued(f, "cancel-rw", 2).await;
    let timed_out = tokio::time::timeout(Duration::from_millis(100), b.write("cancel-rw")).await;
    assert!(timed_out.is_err(), "write returned beside readers");
    queued(f, "cancel-rw", 2).await;
    unlock(reader).await;
    unlock(late_reader).await;
    let writer = try_take(&*b, Mode::Write, "cancel-rw").await;
    assert!(writer.is_some(), "a cancelled waiter left something behind");
}

/// Waiting readers and writers fail with `SessionLost` when their session closes, and the
/// session takes nothing afterwards.
pub async fn rw_waiters_fail_when_their_session_closes(f: &dyn RwLockFactory) {
    let (a, b) = (session(f).await, session(f).await);
    let writer = take(&*a, Mode::Write, "close-rw").await;
    let reader = spawn_take(&b, Mode::Read, "close-rw");
    let other_writer = spawn_take(&b, Mode::Write, "close-rw");
    queued(f, "close-rw", 3).await;
    if let Err(err) = within("close", b.close()).await {
        panic!("conformance: close failed: {err}");
    }
    for waiter in [reader, other_writer] {
        match joined(waiter).await {
            Err(err) => assert!(err.is_session_lost(), "waiter failed with {err}"),
            Ok(_) => panic!("conformance: a waiter of a closed session was granted"),
        }
    }
    queued(f, "close-rw", 1).await;
    unlock(writer).await;
    for result in [
        within("read", b.read("close-rw")).await,
        within("write", b.write("close-rw")).await,
    ] {
        match result {
            Err(err) => assert!(err.is_session_lost(), "after close: {err}"),
            Ok(_) => panic!("conformance: a closed session was granted"),
        }
    }
}

/// Read and write guards of a closed session report the loss, and `unlock` says so.
pub async fn rw_guards_report_loss(f: &dyn RwLockFactory) {
    let (a, b, c) = (session(f).await, session(f).await, session(f).await);
    let reader = take(&*a, Mode::Read, "lost-rw/r").await;
    let writer = take(&*b, Mode::Write, "lost-rw/w").await;
    let waiter = spawn_take(&c, Mode::Write, "lost-rw/r");
    queued(f, "lost-rw/r", 2).await;
    within("close", a.close()).await.ok();
    within("close", b.close()).await.ok();
    within("lost()", reader.lost()).await;
    within("lost()", writer.lost()).await;
    for guard in [reader, writer] {
        match within("unlock", guard.unlock()).await {
            Err(LockError::LockLost { .. }) => {}
            other => panic!("conformance: unlock of a lost guard gave {other:?}"),
        }
    }
    unlock(acquired(waiter).await).await;
}

/// `unlock` frees the name at once: the next `try_write` succeeds.
pub async fn rw_unlock_frees_at_once(f: &dyn RwLockFactory) {
    let (a, b) = (session(f).await, session(f).await);
    for mode in [Mode::Read, Mode::Write] {
        let guard = take(&*a, mode, "free-rw").await;
        unlock(guard).await;
        match try_take(&*b, Mode::Write, "free-rw").await {
            Some(next) => unlock(next).await,
            None => panic!("conformance: still taken after {mode:?} unlock"),
        }
    }
}

/// A writer's token exceeds every earlier writer's and reader's; a reader's every earlier
/// writer's.
pub async fn rw_fencing_tokens_increase(f: &dyn RwLockFactory) {
    let sessions = [session(f).await, session(f).await];
    let mut last_writer = None;
    for round in 0..4 {
        let l = &sessions[round % 2];
        let readers = [
            take(&**l, Mode::Read, "fence-rw").await,
            take(&*sessions[(round + 1) % 2], Mode::Read, "fence-rw").await,
        ];
        let highest_reader = readers.iter().map(LockGuard::fencing_token).max();
        for reader in &readers {
            if let Some(writer) = last_writer {
                assert!(reader.fencing_token() > writer, "reader token after writer");
            }
        }
        for reader in readers {
            unlock(reader).await;
        }
        let writer = take(&**l, Mode::Write, "fence-rw").await;
        let token = writer.fencing_token();
        assert!(Some(token) > highest_reader, "writer token after readers");
        if let Some(previous) = last_writer {
            assert!(token > previous, "writer token {token} after {previous}");
        }
        last_writer = Some(token);
        unlock(writer).await;
    }
}

/// Reader-writer lock `x` is independent of lock `x` and of reader-writer locks whose names
/// extend `x` (`x/read`, `x/write`, `x/y`), whatever the backend's key layout.
pub async fn rw_names_are_independent(f: &dyn RwLockFactory) {
    let (a, b) = (session(f).await, session(f).await);
    let lock = match within("lock", a.lock("indep")).await {
        Ok(guard) => guard,
        Err(err) => panic!("conformance: lock failed: {err}"),
    };
    let writer = try_take(&*b, Mode::Write, "indep").await;
    assert!(writer.is_some(), "lock `indep` blocked rwlock `indep`");
    let mut held = vec![lock];
    held.extend(writer);
    for name in ["indep/read", "indep/write", "indep/y", "inde"] {
        let guard = try_take(&*a, Mode::Write, name).await;
        assert!(guard.is_some(), "writer of {name:?} blocked by `indep`");
        held.extend(guard);
    }
    for name in ["indep", "indep/read", "indep/write"] {
        assert!(try_take(&*b, Mode::Read, name).await.is_none(), "{name:?}");
    }
    for guard in held {
        unlock(guard).await;
    }
}

/// Bad names fail with `InvalidName` on every reader-writer entry point.
pub async fn invalid_names_are_rejected_by_rwlock(f: &dyn RwLockFactory) {
    let l = session(f).await;
    for bad in ["", "nul\0byte", "new\nline"] {
        let results = [
            within("read", l.read(bad)).await.map(drop),
            within("write", l.write(bad)).await.map(drop),
            within("try_read", l.try_read(bad)).await.map(drop),
            within("try_write", l.try_write(bad)).await.map(drop),
        ];
        for result in results {
            match result {
                Err(LockError::InvalidName { .. }) => {}
                other => panic!("conformance: {bad:?} gave {other:?}"),
            }
        }
    }
}

/// The invariant checker: 12 tasks over 4 sessions take 200 random read and write guards,
/// some with `try_`, some cancelled by a timeout or an abort at a random moment. Never a
/// writer beside anyone; every waiter that is not cancelled is served; nothing is left.
pub async fn rw_invariants_under_random_cancellation(f: &dyn RwLockFactory) {
    const TASKS: usize = 12;
    const OPS: usize = 200;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(session(f).await);
    }
    let readers = Arc::new(AtomicUsize::new(0));
    let writers = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(Mutex::new((0usize, 0usize)));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let l = Arc::clone(&sessions[task % sessions.len()]);
        let (readers, writers, served) = (
            Arc::clone(&readers),
            Arc::clone(&writers),
            Arc::clone(&served),
        );
        tasks.push(tokio::spawn(async move {
            let mut odds = Odds::new(task as u64);
            for _ in 0..OPS / TASKS + usize::from(task < OPS % TASKS) {
                let mode = if odds.one_in(3) {
                    Mode::Write
                } else {
                    Mode::Read
                };
                let chaos = Chaos::pick(&mut odds);
                let name = "invariant-rw";
                let guard = chaos
                    .run(
                        &l,
                        |l| async move {
                            match mode {
                                Mode::Read => l.read(name).await,
                                Mode::Write => l.write(name).await,
                            }
                        },
                        |l| async move {
                            match mode {
                                Mode::Read => l.try_read(name).await,
                                Mode::Write => l.try_write(name).await,
                            }
                        },
                    )
                    .await;
                let Some(guard) = guard else { continue };
                match mode {
                    Mode::Read => {
                        readers.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(
                            writers.load(Ordering::SeqCst),
                            0,
                            "a reader beside a writer"
                        );
                    }
                    Mode::Write => {
                        assert_eq!(writers.fetch_add(1, Ordering::SeqCst), 0, "two writers");
                        assert_eq!(readers.load(Ordering::SeqCst), 0, "a writer beside readers");
                    }
                }
                odds.pause().await;
                match mode {
                    Mode::Read => readers.fetch_sub(1, Ordering::SeqCst),
                    Mode::Write => writers.fetch_sub(1, Ordering::SeqCst),
                };
                {
                    let mut served = served.lock();
                    match mode {
                        Mode::Read => served.0 += 1,
                        Mode::Write => served.1 += 1,
                    }
                }
                unlock(guard).await;
            }
        }));
    }
    for task in tasks {
        joined(task).await;
    }
    queued(f, "invariant-rw", 0).await;
    let (reads, writes) = *served.lock();
    assert!(
        reads > 0 && writes > 0,
        "served {reads} reads and {writes} writes"
    );
}
