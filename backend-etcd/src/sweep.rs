//! Queue puts whose fate is unknown, and the sweep that removes what they leave behind.
//!
//! A queue attempt that timed out or broke after it was sent may still reach etcd later: a
//! stalled member holds the request and applies it when it wakes up. If that happens after the
//! session is done with the name (the lock was taken on a retry and released, or given up),
//! the late put creates a key nobody owns, on a live lease, and every other session waits for
//! it as long as this session lives. No compare in the put can tell "not queued yet" from
//! "already released", so instead the session remembers such attempts for a while and deletes
//! a key that still carries one's value, whenever no task of the session uses that name.

use std::sync::Arc;
use std::time::Duration;

use locksmith_api::LockTable;
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::hold::{delete_if_owned, Owned};
use crate::retry::{attempt, attempt_timeout};
use crate::session::Link;

/// How long an attempt is remembered: ten TTLs, and at least half a minute. A member that
/// holds a request for longer can still leave a key, which then goes with the session.
fn remembered_for(ttl: Duration) -> Duration {
    (ttl * 10).max(Duration::from_secs(30))
}

/// One queue attempt whose put may still land.
struct Unsure {
    name: String,
    key: String,
    value: Vec<u8>,
    until: Instant,
}

/// The attempts a session remembers, and whether its sweep task runs.
#[derive(Default)]
pub(crate) struct UnsurePuts {
    state: Mutex<SweepState>,
}

#[derive(Default)]
struct SweepState {
    attempts: Vec<Unsure>,
    sweeping: bool,
}

impl UnsurePuts {
    /// Remembers that a put of `key` with `value` (for lock `name`) may still land, and starts
    /// the sweep if it is not running.
    pub(crate) fn note(
        self: &Arc<Self>,
        link: &Arc<Link>,
        local: &Arc<LockTable<()>>,
        runtime: &Handle,
        name: &str,
        key: &str,
        value: &[u8],
    ) {
        let start = {
            let mut state = self.state.lock();
            state.attempts.push(Unsure {
                name: name.to_owned(),
                key: key.to_owned(),
                value: value.to_owned(),
                until: Instant::now() + remembered_for(link.ttl),
            });
            !std::mem::replace(&mut state.sweeping, true)
        };
        if start {
            runtime.spawn(sweep(Arc::clone(self), Arc::clone(link), Arc::clone(local)));
        }
    }

    /// The attempts to look at now; forgets those past their time. `None` (and the sweep
    /// stops) when none is left.
    fn due(&self) -> Option<Vec<(String, String, Vec<u8>)>> {
        let mut state = self.state.lock();
        let now = Instant::now();
        state.attempts.retain(|attempt| attempt.until > now);
        if state.attempts.is_empty() {
            state.sweeping = false;
            return None;
        }
        Some(
            state
                .attempts
                .iter()
                .map(|a| (a.name.clone(), a.key.clone(), a.value.clone()))
                .collect(),
        )
    }
}

/// Every attempt timeout, deletes each remembered attempt's key if it still carries that
/// attempt's value and no task of this session uses the name (a task that does has the name's
/// local ticket, and its own queue attempt replaces such a key). Ends with the session, or when
/// nothing is remembered any more.
async fn sweep(unsure: Arc<UnsurePuts>, link: Arc<Link>, local: Arc<LockTable<()>>) {
    let every = attempt_timeout(link.ttl);
    loop {
        tokio::select! {
            biased;
            _ = link.ended_watch.wait() => {
                unsure.state.lock().sweeping = false;
                return;
            }
            () = tokio::time::sleep(every) => {}
        }
        let Some(due) = unsure.due() else {
            return;
        };
        for (name, key, value) in due {
            let Some(ticket) = local.try_acquire(&name, ()) else {
                continue;
            };
            let delete = delete_if_owned(link.client.clone(), key, Owned::Value(value));
            if let Some(Ok(true)) = attempt(&link, delete).await {
                tracing::info!(lock = %name, "removed a key left by a late queue request");
            }
            drop(ticket);
        }
    }
}
