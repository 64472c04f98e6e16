//! The reader-writer mode of `etcd_bench`, over any [`DistributedRwLock`] session, and what it
//! shares with the semaphore mode (`semaphore.rs`): the report and the token check.
//!
//! - `rw`: N clients (one session each) take one name in a loop, 90% of the time with `read`,
//!   10% with `write` (drawn at random per cycle), and release it at once.
//!   `writer_handoff_us`: from the release that let a waiting writer in (the latest release
//!   started after that writer called `write`) to its `write` returning. `latency_us`: one
//!   acquire+release cycle; `read_us`/`write_us`: the `read`/`write` calls alone;
//!   `release_us`: the unlock calls. `violations` counts a writer holding beside anyone else
//!   (a holder counts from its `read`/`write` returning to its unlock call),
//!   and a guard whose fencing token breaks the documented promise (a writer's above every
//!   token released before it asked, a reader's above every writer's released before it asked).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use locksmith::{DistributedRwLock, FencingToken, LockError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::{percentile, Distribution};

/// Percent of the cycles that write.
const WRITE_PERCENT: u32 = 10;

/// The report fields of the `rw` mode, beside the common ones.
#[derive(Default, Serialize)]
pub struct Fields {
    /// Cycles that read and that wrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    reads: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    writes: Option<usize>,
    /// From the release that let a waiting writer in to its `write` returning.
    #[serde(skip_serializing_if = "Option::is_none")]
    writer_handoff_p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    writer_handoff_p99_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    writer_handoff_us: Option<Distribution>,
    /// The `read` and `write` calls, start to return.
    #[serde(skip_serializing_if = "Option::is_none")]
    read_p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_us: Option<Distribution>,
    #[serde(skip_serializing_if = "Option::is_none")]
    write_p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    write_us: Option<Distribution>,
}

/// What the `rw` or `semaphore` mode measured.
pub struct SharedRun {
    /// Acquire+release cycles, behind `p50_us`, `p99_us` and `latency_us`.
    pub latencies: Vec<Duration>,
    /// Holds that broke the primitive's exclusion, or tokens that broke its promise.
    pub violations: usize,
    /// How long the clients ran, for `ops_per_s`.
    pub elapsed: Duration,
    /// The semaphore's handoffs (the `rw` mode's are in its fields, being writers' only).
    pub handoffs: Vec<Duration>,
    /// The unlock calls, start to return.
    pub releases: Vec<Duration>,
    pub fields: Fields,
}

/// p50, p99 and the distribution of `samples`, if there are any.
pub fn summary(mut samples: Vec<Duration>) -> (Option<f64>, Option<f64>, Option<Distribution>) {
    if samples.is_empty() {
        return (None, None, None);
    }
    samples.sort();
    (
        Some(percentile(&samples, 0.50).round()),
        Some(percentile(&samples, 0.99).round()),
        Some(Distribution::of(&samples)),
    )
}

/// The writers' handoff clock of one name: when a holder last started to release, and the
/// handoffs timed from it. A writer is granted once every older holder is gone, and no younger
/// one can hold before it, so every release between its `write` call and its grant is an older
/// holder's, and the latest of them let it in.
#[derive(Default)]
struct Handoffs(Mutex<(Option<Instant>, Vec<Duration>)>);

impl Handoffs {
    /// A holder starts its release now.
    fn releasing(&self) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 = Some(Instant::now());
    }

    /// A waiter that asked at `asked` was granted just now. If a release started after it
    /// asked, the latest such release let it in: that is a handoff. Otherwise it did not wait
    /// for a release (it was granted at once, or behind a release already under way when it
    /// asked) and is not counted.
    fn granted(&self, asked: Instant) {
        let granted = Instant::now();
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(released) = state.0.filter(|released| *released > asked) {
            state.1.push(granted.saturating_duration_since(released));
        }
    }

    /// The handoffs timed so far.
    fn take(&self) -> Vec<Duration> {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut state.1)
    }
}

/// The highest fencing tokens of guards whose unlock has returned: of any guard, and of
/// writers. A guard asked for after such an unlock was granted after that release.
#[derive(Default)]
pub struct Released {
    any: AtomicU64,
    writers: AtomicU64,
}

impl Released {
    /// A guard with `token` is released (its unlock returned).
    pub fn record(&self, token: FencingToken, writer: bool) {
        self.any.fetch_max(token.get(), Ordering::SeqCst);
        if writer {
            self.writers.fetch_max(token.get(), Ordering::SeqCst);
        }
    }

    /// The token a guard asked for now must exceed: every released token (`all`), or every
    /// released writer's.
    pub fn bound(&self, all: bool) -> u64 {
        let of = if all { &self.any } else { &self.writers };
        of.load(Ordering::SeqCst)
    }
}

/// Readers and writers inside the lock, and the exclusions broken.
#[derive(Default)]
struct Occupancy {
    readers: AtomicUsize,
    writers: AtomicUsize,
    violations: AtomicUsize,
}

impl Occupancy {
    fn count(&self, writer: bool) -> &AtomicUsize {
        if writer {
            &self.writers
        } else {
            &self.readers
        }
    }

    /// A reader or writer holds from now, counting a writer beside anyone else.
    fn enter(&self, writer: bool) {
        let before = self.count(writer).fetch_add(1, Ordering::SeqCst);
        if self.count(!writer).load(Ordering::SeqCst) != 0 || (writer && before != 0) {
            self.violations.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The holder is about to release.
    fn leave(&self, writer: bool) {
        self.count(writer).fetch_sub(1, Ordering::SeqCst);
    }
}

/// One client's samples: cycles, read calls, write calls, unlock calls.
type ClientRun = (Vec<Duration>, Vec<Duration>, Vec<Duration>, Vec<Duration>);

/// `rw`: every session reads (90%) or writes (10%) `name` in a loop for `duration`.
pub async fn run<S: DistributedRwLock + 'static>(
    sessions: Vec<S>,
    name: String,
    duration: Duration,
) -> Result<SharedRun, LockError> {
    let occupancy = Arc::new(Occupancy::default());
    let handoffs = Arc::new(Handoffs::default());
    let released = Arc::new(Released::default());
    let token_violations = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let seed = u64::from(std::process::id());
    let mut tasks = Vec::new();
    for (id, session) in sessions.into_iter().enumerate() {
        let (occupancy, handoffs) = (Arc::clone(&occupancy), Arc::clone(&handoffs));
        let (released, token_violations) = (Arc::clone(&released), Arc::clone(&token_violations));
        let name = name.clone();
        let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1000).wrapping_add(id as u64));
        tasks.push(tokio::spawn(async move {
            let mut samples: ClientRun = Default::default();
            while Instant::now() < deadline {
                let writer = rng.gen_range(0..100) < WRITE_PERCENT;
                let bound = released.bound(writer);
                let asked = Instant::now();
                let guard = if writer {
                    session.write(&name).await?
                } else {
                    session.read(&name).await?
                };
                let acquired = asked.elapsed();
                occupancy.enter(writer);
                if writer {
                    handoffs.granted(asked);
                }
                let token = guard.fencing_token();
                if token.get() <= bound {
                    token_violations.fetch_add(1, Ordering::SeqCst);
                }
                occupancy.leave(writer);
                handoffs.releasing();
                let releasing = Instant::now();
                guard.unlock().await?;
                samples.3.push(releasing.elapsed());
                released.record(token, writer);
                samples.0.push(asked.elapsed());
                if writer {
                    samples.2.push(acquired);
                } else {
                    samples.1.push(acquired);
                }
            }
            Ok::<_, LockError>(samples)
        }));
    }
    let mut all: ClientRun = Default::default();
    for task in tasks {
        let (cycles, reads, writes, releases) = task
            .await
            .map_err(|err| LockError::config_with("a bench client failed", err))??;
        all.0.extend(cycles);
        all.1.extend(reads);
        all.2.extend(writes);
        all.3.extend(releases);
    }
    let elapsed = started.elapsed();
    let (cycles, reads, writes, releases) = all;
    let mut fields = Fields {
        reads: Some(reads.len()),
        writes: Some(writes.len()),
        ..Fields::default()
    };
    (
        fields.writer_handoff_p50_us,
        fields.writer_handoff_p99_us,
        fields.writer_handoff_us,
    ) = summary(handoffs.take());
    (fields.read_p50_us, _, fields.read_us) = summary(reads);
    (fields.write_p50_us, _, fields.write_us) = summary(writes);
    Ok(SharedRun {
        latencies: cycles,
        violations: occupancy.violations.load(Ordering::SeqCst)
            + token_violations.load(Ordering::SeqCst),
        elapsed,
        handoffs: Vec::new(),
        releases,
        fields,
    })
}
