//! The semaphore mode of `etcd_bench`, over any [`DistributedSemaphore`] session:
//!
//! - `semaphore --limit K`: N clients (one session each) take a permit of one name in a loop
//!   and release it at once. `handoff_us`: from the release that let a waiting client in (the
//!   latest release started after it called `acquire`) to its `acquire` returning.
//!   `latency_us`: one acquire+release cycle; `release_us`: the unlock calls. `violations`
//!   counts more than K holders at once, and a permit whose fencing token is not above every
//!   token released before it asked.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use locksmith::{DistributedSemaphore, LockError};
use serde::Serialize;

use crate::rw::{Handoffs, Released, SharedRun};

/// The report fields of the `semaphore` mode, beside the common ones.
#[derive(Default, Serialize)]
pub struct Fields {
    /// The permits of the name.
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u32>,
}

/// Holders of permits, and the times there were more than the limit.
struct Occupancy {
    limit: usize,
    holders: AtomicUsize,
    violations: AtomicUsize,
}

impl Occupancy {
    /// Enters and leaves at once, counting a holder beyond the limit.
    fn enter_and_leave(&self) {
        if self.holders.fetch_add(1, Ordering::SeqCst) >= self.limit {
            self.violations.fetch_add(1, Ordering::SeqCst);
        }
        std::hint::spin_loop();
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
    let handoffs = Arc::new(Handoffs::default());
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
                handoffs.granted(asked);
                let token = guard.fencing_token();
                if token.get() <= bound {
                    occupancy.violations.fetch_add(1, Ordering::SeqCst);
                }
                occupancy.enter_and_leave();
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
