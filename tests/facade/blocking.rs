//! The blocking client on the memory backend: plain threads, no runtime of the caller's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use locksmith::blocking::Client;
use locksmith::{LockConfig, LockError, LossReason, MemoryStore};

/// A guard against hanging forever on a signal that never comes.
const GUARD: Duration = Duration::from_secs(10);

/// Waits (yielding: the memory store has no signal for it) until `name` has `len` entries.
fn wait_for_queue(store: &str, name: &str, len: usize) {
    let store = MemoryStore::named(store);
    let deadline = Instant::now() + GUARD;
    while store.queue_len(name) != len {
        assert!(Instant::now() < deadline, "{name} never had {len} entries");
        std::thread::yield_now();
    }
}

fn client(store: &str) -> Client {
    let config: LockConfig = format!("memory://{store}").parse().unwrap();
    Client::connect(&config).unwrap()
}

#[test]
fn lock_excludes_across_threads_and_tokens_grow() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 25;
    let inside = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (inside, start) = (inside.clone(), start.clone());
            std::thread::spawn(move || {
                let client = client("blocking-threads");
                start.wait();
                let mut tokens = Vec::new();
                for _ in 0..ROUNDS {
                    let guard = client.lock("shared").unwrap();
                    assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                    tokens.push(guard.fencing_token());
                    std::thread::yield_now();
                    inside.store(false, Ordering::SeqCst);
                    guard.unlock().unwrap();
                }
                tokens
            })
        })
        .collect();
    let mut all = Vec::new();
    for thread in threads {
        let tokens = thread.join().unwrap();
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
        all.extend(tokens);
    }
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        THREADS * ROUNDS,
        "every hold has a token of its own"
    );
}

#[test]
fn lock_timeout_expires_then_succeeds_after_release() {
    let (a, b) = (client("blocking-timeout"), client("blocking-timeout"));
    let held = a.lock("report").unwrap();
    let started = Instant::now();
    assert!(b
        .lock_timeout("report", Duration::from_millis(100))
        .unwrap()
        .is_none());
    assert!(started.elapsed() >= Duration::from_millis(100));
    // The timed-out wait left the queue: after the release, a try_lock gets the lock.
    assert_eq!(
        MemoryStore::named("blocking-timeout").queue_len("report"),
        1
    );

    let waiter = std::thread::spawn(move || b.lock_timeout("report", GUARD).unwrap());
    wait_for_queue("blocking-timeout", "report", 2);
    let token = held.fencing_token();
    drop(held);
    let next = waiter.join().unwrap().expect("the lock after its release");
    assert!(next.fencing_token() > token);
}

#[test]
fn dropping_a_guard_releases_before_drop_returns() {
    let (a, b) = (client("blocking-drop"), client("blocking-drop"));
    let guard = a.lock("job").unwrap();
    assert!(b.try_lock("job").unwrap().is_none());
    drop(guard);
    let next = b.try_lock("job").unwrap().expect("released by the drop");
    // A guard keeps its client's session: it outlives the client handle it came from.
    drop(b);
    assert!(!next.is_lost());
    drop(next);
    assert!(a.try_lock("job").unwrap().is_some());
}

#[test]
fn closing_the_client_ends_its_holds_and_passes_the_lock_on() {
    let (a, b) = (client("blocking-close"), client("blocking-close"));
    let guard = a.lock("job").unwrap();
    let waiter = std::thread::spawn(move || b.lock_timeout("job", GUARD).unwrap().is_some());
    wait_for_queue("blocking-close", "job", 2);
    a.close().unwrap();
    assert_eq!(guard.lost_timeout(GUARD).unwrap(), Some(LossReason::Closed));
    assert!(waiter.join().unwrap());
}

#[test]
fn a_revoked_lock_is_visible_to_its_holder() {
    let (a, b) = (client("blocking-lost"), client("blocking-lost"));
    let guard = a.lock("ledger").unwrap();
    assert_eq!(guard.lost_reason(), None);
    assert_eq!(guard.lost_timeout(Duration::from_millis(10)).unwrap(), None);
    assert!(MemoryStore::named("blocking-lost").revoke("ledger"));
    assert_eq!(guard.lost().unwrap(), LossReason::Deleted);
    assert!(guard.is_lost());
    let next = b
        .try_lock("ledger")
        .unwrap()
        .expect("the revoked lock is free");
    assert!(next.fencing_token() > guard.fencing_token());
    match guard.unlock() {
        Err(LockError::LockLost { name, reason }) => {
            assert_eq!((name.as_str(), reason), ("ledger", LossReason::Deleted))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn calls_inside_an_async_runtime_are_refused() {
    let config: LockConfig = "memory://blocking-refused".parse().unwrap();
    let outside = Client::connect(&config).unwrap();
    let guard = outside.lock("held").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for result in [
            Client::connect(&config).map(drop),
            outside.lock("x").map(drop),
            outside.try_lock("x").map(drop),
            outside.lock_timeout("x", GUARD).map(drop),
            outside.campaign("x", b"v").map(drop),
            outside.read("x").map(drop),
            outside.write("x").map(drop),
            outside.acquire("x", 2).map(drop),
            guard.lost().map(drop),
        ] {
            match result {
                Err(err @ LockError::InvalidConfig { .. }) => {
                    assert!(err.to_string().contains("inside an async runtime"), "{err}")
                }
                other => panic!("{other:?}"),
            }
        }
        // Dropped inside a runtime, the guard does not block; its release still happens.
        drop(guard);
    });
    wait_for_queue("blocking-refused", "held", 0);
    assert!(outside.try_lock("held").unwrap().is_some());
    // The client's last handle may go away inside a runtime too, without a panic.
    runtime.block_on(async move { drop(outside) });
}

#[test]
fn campaign_read_write_and_acquire_block_and_release() {
    let (a, b) = (client("blocking-kinds"), client("blocking-kinds"));
    let leading = a.campaign("scheduler", b"host-a").unwrap();
    assert_eq!(b.leader("scheduler").unwrap(), Some(leading.info()));
    leading.proclaim(b"host-a, epoch 2").unwrap();
    assert_eq!(
        b.leader("scheduler")
            .unwrap()
            .map(|info| info.value().to_vec()),
        Some(b"host-a, epoch 2".to_vec())
    );
    drop(leading);
    assert_eq!(b.leader("scheduler").unwrap(), None);

    let reading = (a.read("catalog").unwrap(), b.read("catalog").unwrap());
    assert!(a.try_write("catalog").unwrap().is_none());
    assert!(b
        .write_timeout("catalog", Duration::from_millis(20))
        .unwrap()
        .is_none());
    drop(reading);
    let writing = a.write("catalog").unwrap();
    assert!(b.try_read("catalog").unwrap().is_none());
    writing.unlock().unwrap();

    let permits = (
        a.acquire("exports", 2).unwrap(),
        b.acquire("exports", 2).unwrap(),
    );
    assert!(a.try_acquire("exports", 2).unwrap().is_none());
    drop(permits.0);
    assert!(b.try_acquire("exports", 2).unwrap().is_some());
    assert!(matches!(
        a.acquire("exports", 3),
        Err(LockError::LimitMismatch { .. })
    ));
}

/// On etcd the client's own runtime keeps the lease alive while the caller's thread does
/// something else for longer than the TTL, and a dropped guard and client let go at once.
#[cfg(feature = "etcd-testing")]
#[test]
fn etcd_session_lives_while_the_caller_blocks_elsewhere() {
    use locksmith_etcd::testing::EtcdServer;

    let etcd = EtcdServer::start().expect("etcd (run `make test`, which installs it)");
    let config: LockConfig = format!("etcd://{}/blocking/?ttl=1", etcd.endpoint())
        .parse()
        .unwrap();
    let (a, b) = (
        Client::connect(&config).unwrap(),
        Client::connect(&config).unwrap(),
    );
    let guard = a.lock("job").unwrap();
    // Work that is not locksmith's, three TTLs long: only the keepalive keeps the lease.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(guard.lost_reason(), None);
    assert!(b
        .lock_timeout("job", Duration::from_millis(300))
        .unwrap()
        .is_none());
    let token = guard.fencing_token();
    drop(guard);
    // A third session: `b`'s timed-out wait may still be withdrawing its key (a few ms), and
    // until etcd has answered, `b` serializes its own try_lock of the name behind it.
    let c = Client::connect(&config).unwrap();
    let next = c.try_lock("job").unwrap().expect("released by the drop");
    assert!(next.fencing_token() > token);
    drop(next);

    // A guard outlives its client handle; its drop, the session's last handle, releases.
    let held = b.lock("job").unwrap();
    let waiter = std::thread::spawn(move || a.lock_timeout("job", GUARD).unwrap().is_some());
    let started = Instant::now();
    drop(b);
    assert!(!held.is_lost(), "a guard keeps its client's session");
    drop(held);
    assert!(waiter.join().unwrap());
    assert!(started.elapsed() < GUARD);
}

#[test]
fn a_guard_dropped_on_another_thread_releases() {
    let (a, b) = (client("blocking-moved"), client("blocking-moved"));
    let guard = a.lock("job").unwrap();
    let token = guard.fencing_token();
    std::thread::spawn(move || drop(guard)).join().unwrap();
    let next = b
        .try_lock("job")
        .unwrap()
        .expect("released by the other thread");
    assert!(next.fencing_token() > token);
}

/// The last handle of a client is a guard, dropped inside a tokio runtime (a worker of a
/// multi-thread one, a current-thread one, a task): no panic, and the lock passes on.
#[test]
fn a_guard_outliving_its_client_drops_inside_runtimes_without_panic() {
    let store = "blocking-outlive";
    let other = client(store);
    let multi = tokio::runtime::Runtime::new().unwrap();
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for round in 0..3 {
        let guard = client(store).lock("job").unwrap();
        assert_eq!(MemoryStore::named(store).queue_len("job"), 1);
        match round {
            0 => multi.block_on(async move { drop(guard) }),
            1 => single.block_on(async move { drop(guard) }),
            _ => multi
                .block_on(multi.spawn(async move { drop(guard) }))
                .unwrap(),
        }
        wait_for_queue(store, "job", 0);
        drop(other.try_lock("job").unwrap().expect("released"));
    }
}

/// A timed-out `lock_timeout` leaves no hold behind, also when the grant comes just as the
/// time runs out (the granted future is dropped unpolled): at most one holder at any time,
/// and the queue is empty after every round.
#[test]
fn lock_timeout_racing_a_grant_leaves_no_hold() {
    let store = "blocking-race";
    let (a, b, c) = (client(store), client(store), client(store));
    let (mut granted, mut timed_out) = (0, 0);
    for round in 0..200u64 {
        let held = a.lock("job").unwrap();
        let b = b.clone();
        let waiter =
            std::thread::spawn(move || b.lock_timeout("job", Duration::from_millis(2)).unwrap());
        // Queued, or already timed out (2 ms is short on a loaded machine).
        let deadline = Instant::now() + GUARD;
        while MemoryStore::named(store).queue_len("job") != 2 && !waiter.is_finished() {
            assert!(Instant::now() < deadline, "the waiter never queued");
            std::thread::yield_now();
        }
        // Released from well before to just after the waiter's time runs out.
        std::thread::sleep(Duration::from_micros((round % 10) * 250));
        drop(held);
        match waiter.join().unwrap() {
            Some(guard) => {
                granted += 1;
                assert!(c.try_lock("job").unwrap().is_none(), "two holders");
                drop(guard);
            }
            None => timed_out += 1,
        }
        wait_for_queue(store, "job", 0);
        drop(c.try_lock("job").unwrap().expect("nothing left behind"));
    }
    eprintln!("granted {granted}, timed out {timed_out}");
}

/// Closing a client while another thread of it waits: the wait fails with `SessionLost`
/// and its entry leaves the queue.
#[test]
fn closing_a_client_fails_its_waiting_threads() {
    let store = "blocking-close-waiter";
    let (a, b) = (client(store), client(store));
    let held = a.lock("job").unwrap();
    let waiting = b.clone();
    let waiter = std::thread::spawn(move || waiting.lock("job").map(drop));
    wait_for_queue(store, "job", 2);
    b.close().unwrap();
    match waiter.join().unwrap() {
        Err(err) => assert!(err.is_session_lost(), "{err}"),
        Ok(()) => panic!("a closed client's wait succeeded"),
    }
    assert_eq!(MemoryStore::named(store).queue_len("job"), 1);
    assert!(!held.is_lost());
    drop(b);
    drop(held);
    assert!(a.try_lock("job").unwrap().is_some());
}

/// `spawn_blocking` runs on a thread inside the runtime's context: the client refuses there
/// (typed error, no panic), as the module docs say, and a guard dropped there still releases.
#[test]
fn spawn_blocking_is_inside_the_runtime_and_refused() {
    let store = "blocking-spawn-blocking";
    let outside = client(store);
    let guard = outside.lock("job").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let inner = outside.clone();
    let refused = runtime
        .block_on(runtime.spawn_blocking(move || {
            let refused = inner.try_lock("other").map(drop);
            drop(guard);
            refused
        }))
        .unwrap();
    match refused {
        Err(err @ LockError::InvalidConfig { .. }) => {
            assert!(err.to_string().contains("inside an async runtime"), "{err}")
        }
        other => panic!("{other:?}"),
    }
    wait_for_queue(store, "job", 0);
    assert!(outside.try_lock("job").unwrap().is_some());
}

/// On etcd, `lock_timeout` racing the grant: whichever way each round goes, at most one
/// holder at a time, and nothing is left behind (a third client then gets the lock).
#[cfg(feature = "etcd-testing")]
#[test]
fn etcd_lock_timeout_racing_a_grant_leaves_no_hold() {
    use locksmith_etcd::testing::EtcdServer;

    let etcd = EtcdServer::start().expect("etcd (run `make test`, which installs it)");
    let config: LockConfig = format!("etcd://{}/blocking-race/", etcd.endpoint())
        .parse()
        .unwrap();
    let connect = || Client::connect(&config).unwrap();
    let (a, b, c) = (connect(), connect(), connect());
    let (mut granted, mut timed_out) = (0, 0);
    for round in 0..40u64 {
        let held = a.lock("job").unwrap();
        let waiting = b.clone();
        let waiter = std::thread::spawn(move || {
            waiting
                .lock_timeout("job", Duration::from_millis(20))
                .unwrap()
        });
        std::thread::sleep(Duration::from_millis(5 + (round % 8) * 4));
        drop(held);
        match waiter.join().unwrap() {
            Some(guard) => {
                granted += 1;
                assert!(c.try_lock("job").unwrap().is_none(), "two holders");
                drop(guard);
            }
            None => timed_out += 1,
        }
        let next = c.lock_timeout("job", GUARD).unwrap();
        drop(next.expect("a timed-out or released wait left a hold behind"));
    }
    eprintln!("granted {granted}, timed out {timed_out}");
}

/// A guard kept in a thread-local is dropped while the thread's locals are torn down, where
/// tokio's own thread-local context may be gone already: no panic, and the lock passes on.
#[test]
fn a_guard_in_a_thread_local_releases_at_thread_exit() {
    use std::cell::RefCell;
    thread_local! {
        static KEPT: RefCell<Option<locksmith::blocking::LockGuard>> = const { RefCell::new(None) };
    }
    let store = "blocking-thread-local";
    let (a, b) = (client(store), client(store));
    let keeper = std::thread::spawn(move || {
        // `lock` has used tokio's thread-local context before the guard is stored.
        let guard = a.lock("job").unwrap();
        KEPT.with(|kept| *kept.borrow_mut() = Some(guard));
    });
    keeper.join().expect("the thread exits without a panic");
    wait_for_queue(store, "job", 0);
    assert!(b.try_lock("job").unwrap().is_some());
}

/// A guard dropped while its thread unwinds, inside tokio code that holds tokio's thread-local
/// context (here `tokio::spawn` called outside a runtime, which panics and drops the task,
/// our guard with it): the drop must not enter a runtime, which would panic again and abort
/// the process. The panic stays the caller's, catchable; the lock passes on.
#[test]
fn a_guard_dropped_while_unwinding_inside_tokio_does_not_abort() {
    let store = "blocking-unwinding";
    let (a, b) = (client(store), client(store));
    for last_handle in [false, true] {
        let guard = if last_handle {
            client(store).lock("job").unwrap()
        } else {
            a.lock("job").unwrap()
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            drop(tokio::spawn(async move { drop(guard) }));
        }));
        assert!(outcome.is_err(), "tokio::spawn outside a runtime panics");
        wait_for_queue(store, "job", 0);
        drop(b.try_lock("job").unwrap().expect("released"));
    }
}
