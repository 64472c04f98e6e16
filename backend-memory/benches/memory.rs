//! The memory backend beside `tokio::sync::Mutex` and `parking_lot::Mutex`, in one run.
//!
//! `cargo bench -p locksmith-memory`: uncontended lock+unlock, and a contended handoff where
//! 2 or 8 tasks take turns on one lock (time per lock+unlock, all tasks together).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use locksmith_api::{
    async_trait, DistributedLock, FencingToken, Hold, LockError, LockGuard, LostSignal,
};
use locksmith_memory::MemoryStore;
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => panic!("cannot build a tokio runtime: {err}"),
    }
}

/// What any backend pays before it locks anything: the trait's boxed future, a loss signal
/// and a boxed hold inside a `LockGuard`. Not a lock; the floor the API's shape sets.
struct ApiFloor {
    name: Arc<str>,
}

struct NoHold(#[allow(dead_code)] LostSignal);

#[async_trait]
impl Hold for NoHold {
    async fn release(self: Box<Self>) -> Result<(), LockError> {
        Ok(())
    }
}

#[async_trait]
impl DistributedLock for ApiFloor {
    async fn lock(&self, _name: &str) -> Result<LockGuard, LockError> {
        let (signal, watch) = LostSignal::new();
        Ok(LockGuard::with_session_key(
            Arc::clone(&self.name),
            1,
            FencingToken::new(1),
            watch,
            Box::new(NoHold(signal)),
        ))
    }

    async fn try_lock(&self, name: &str) -> Result<Option<LockGuard>, LockError> {
        self.lock(name).await.map(Some)
    }

    async fn close(&self) -> Result<(), LockError> {
        Ok(())
    }
}

fn uncontended(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("uncontended lock+unlock");
    let session = match rt.block_on(async { MemoryStore::new().connect() }) {
        Ok(session) => session,
        Err(err) => panic!("{err}"),
    };
    group.bench_function("locksmith-memory", |b| {
        b.to_async(&rt).iter(|| async {
            let guard = session.lock("bench").await;
            drop(guard);
        })
    });
    let floor = ApiFloor {
        name: Arc::from("bench"),
    };
    group.bench_function("api floor (guard only, no lock)", |b| {
        b.to_async(&rt).iter(|| async {
            let guard = floor.lock("bench").await;
            drop(guard);
        })
    });
    let tokio_mutex = tokio::sync::Mutex::new(0u64);
    group.bench_function("tokio::sync::Mutex", |b| {
        b.to_async(&rt).iter(|| async {
            *tokio_mutex.lock().await += 1;
        })
    });
    let parking_mutex = parking_lot::Mutex::new(0u64);
    group.bench_function("parking_lot::Mutex", |b| {
        b.iter(|| {
            *parking_mutex.lock() += 1;
        })
    });
    group.finish();
}

/// Runs `tasks` tasks that each take the lock `rounds` times; returns the elapsed time.
async fn contend_memory(tasks: usize, rounds: u64) -> Duration {
    let store = MemoryStore::new();
    let sessions: Vec<Arc<dyn DistributedLock>> = (0..tasks)
        .map(|_| match store.connect() {
            Ok(s) => Arc::new(s) as Arc<dyn DistributedLock>,
            Err(err) => panic!("{err}"),
        })
        .collect();
    let start = Instant::now();
    let handles: Vec<_> = sessions
        .into_iter()
        .map(|session| {
            tokio::spawn(async move {
                for _ in 0..rounds {
                    let guard = session.lock("bench").await;
                    tokio::task::yield_now().await;
                    drop(guard);
                }
            })
        })
        .collect();
    for handle in handles {
        let _ = handle.await;
    }
    start.elapsed()
}

async fn contend_tokio(tasks: usize, rounds: u64) -> Duration {
    let mutex = Arc::new(tokio::sync::Mutex::new(0u64));
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let mutex = Arc::clone(&mutex);
            tokio::spawn(async move {
                for _ in 0..rounds {
                    let mut guard = mutex.lock().await;
                    tokio::task::yield_now().await;
                    *guard += 1;
                }
            })
        })
        .collect();
    for handle in handles {
        let _ = handle.await;
    }
    start.elapsed()
}

fn contend_parking_lot(tasks: usize, rounds: u64) -> Duration {
    let mutex = Arc::new(parking_lot::Mutex::new(0u64));
    let start = Instant::now();
    let threads: Vec<_> = (0..tasks)
        .map(|_| {
            let mutex = Arc::clone(&mutex);
            std::thread::spawn(move || {
                for _ in 0..rounds {
                    let mut guard = mutex.lock();
                    std::thread::yield_now();
                    *guard += 1;
                }
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
    start.elapsed()
}

fn contended(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("contended handoff");
    for tasks in [2usize, 8] {
        // Each iteration is one lock+unlock of one task: `iters` handoffs spread over `tasks`.
        let per_task = |iters: u64| iters.div_ceil(tasks as u64).max(1);
        group.bench_with_input(
            BenchmarkId::new("locksmith-memory", tasks),
            &tasks,
            |b, &n| b.iter_custom(|iters| rt.block_on(contend_memory(n, per_task(iters)))),
        );
        group.bench_with_input(
            BenchmarkId::new("tokio::sync::Mutex", tasks),
            &tasks,
            |b, &n| b.iter_custom(|iters| rt.block_on(contend_tokio(n, per_task(iters)))),
        );
        group.bench_with_input(
            BenchmarkId::new("parking_lot::Mutex", tasks),
            &tasks,
            |b, &n| b.iter_custom(|iters| contend_parking_lot(n, per_task(iters))),
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = uncontended, contended
}
criterion_main!(benches);
