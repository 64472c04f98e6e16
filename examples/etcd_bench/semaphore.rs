//! The semaphore mode of `etcd_bench`, over any [`DistributedSemaphore`] session:
//!
//! - `semaphore --limit K`: N clients (one session each) take a permit of one name in a loop
//!   and release it at once. `handoff_us`: from the release that let a waiting client in to
//!   its `acquire` returning. Grants are paired with releases in order: the first `limit`
//!   grants take the permits nobody held yet, grant `limit + i` the permit of release `i`
//!   (FIFO: each release frees one permit for the oldest waiter); a grant is a handoff when
//!   that release started after the client called `acquire` (it had to wait for it).
//!   `latency_us`: one acquire+release cycle; `release_us`: the unlock calls. `violations`
//!   counts more than K holders at once (a holder counts from its `acquire` returning to its
//!   unlock call), and a permit whose fencing token is not above every
//!   token released before it asked.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use locksmith::{DistributedSemaphore, LockError};
use serde::Serialize;

use crate::rw::{Released, SharedRun};

/// The report fields of the `semaphore` mode, beside the common ones.
#[derive(Default, Serialize)]
pub struct Fields {
    /// The permits of the name.
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u32>,
}

/// The handoff clock of a semaphore: the permits nobody held yet, the releases whose permit no
/// grant has taken yet (oldest first), and the handoffs timed from them. (The writers' clock in
/// `rw.rs`, the latest release, would pair a grant with another holder's release under way at
/// the same time.)
struct Handoffs(Mutex<HandoffState>);

struct HandoffState {
    fresh: usize,
    released: VecDeque<Instant>,
    handoffs: Vec<Duration>,
}

impl Handoffs {
    fn new(limit: u32) -> Self {
        Handoffs(Mutex::new(HandoffState {
            fresh: limit as usize,
            released: VecDeque::new(),
            handoffs: Vec::new(),
        }))
    }

    /// A holder starts its release now: one more permit will be free.
    fn releasing(&self) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        state.released.push_back(Instant::now());
    }

    /// A client that asked at `asked` was granted just now: it takes a permit nobody held yet
    /// or else the oldest one freed, a handoff if that one was released after it asked.
    fn granted(&self, asked: Instant) {
        let granted = Instant::now();
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if state.fresh > 0 {
            state.fresh -= 1;
            return;
        }
        if let Some(released) = state.released.pop_front().filter(|at| *at > asked) {
            state
                .handoffs
                .push(granted.saturating_duration_since(released));
        }
    }

    /// The handoffs timed so far.
    fn take(&self) -> Vec<Duration> {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut state.handoffs)
    }
}

/// Holders of permits, and the times there were more than the limit.
struct Occupancy {
    limit: usize,
    holders: AtomicUsize,
    violations: AtomicUsize,
}

impl Occupancy {
    /// A permit is held from now, counting a holder beyond the limit.
    fn enter(&self) {
        if self.holders.fetch_add(1, Ordering::SeqCst) >= self.limit {
            self.violations.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The holder is about to release.
    fn leave(&self) {
        self.holders.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `semaphore`: every session takes and releases a permit of `name` (of `limit`) in a loop for
/// `duration`.
pub async fn run<S: DistributedSemaphore + 'static>(
    sessions: Vec<S>,
    name: String,
    limit: u32,
    duration: Duration,
) -> Result<(SharedRun, Fields), LockError> {
    let occupancy = Arc::new(Occupancy {
        limit: limit as usize,
        holders: AtomicUsize::new(0),
        violations: AtomicUsize::new(0),
    });
    let handoffs = Arc::new(Handoffs::new(limit));
    let released = Arc::new(Released::default());
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for session in sessions {
        let (occupancy, handoffs) = (Arc::clone(&occupancy), Arc::clone(&handoffs));
        let (released, name) = (Arc::clone(&released), name.clone());
        tasks.push(tokio::spawn(async move {
            let (mut cycles, mut releases) = (Vec::new(), Vec::new());
            while Instant::now() < deadline {
                let bound = released.bound(true);
                let asked = Instant::now();
                let guard = session.acquire(&name, limit).await?;
                occupancy.enter();
                handoffs.granted(asked);
                let token = guard.fencing_token();
                if token.get() <= bound {
                    occupancy.violations.fetch_add(1, Ordering::SeqCst);
                }
                occupancy.leave();
                handoffs.releasing();
                let releasing = Instant::now();
                guard.unlock().await?;
                releases.push(releasing.elapsed());
                released.record(token, true);
                cycles.push(asked.elapsed());
            }
            Ok::<_, LockError>((cycles, releases))
        }));
    }
    let (mut latencies, mut releases) = (Vec::new(), Vec::new());
    for task in tasks {
        let (cycles, released) = task
            .await
            .map_err(|err| LockError::config_with("a bench client failed", err))??;
        latencies.extend(cycles);
        releases.extend(released);
    }
    let run = SharedRun {
        latencies,
        violations: occupancy.violations.load(Ordering::SeqCst),
        elapsed: started.elapsed(),
        handoffs: handoffs.take(),
        releases,
        fields: crate::rw::Fields::default(),
    };
    Ok((run, Fields { limit: Some(limit) }))
}
