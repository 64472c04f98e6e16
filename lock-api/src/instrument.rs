//! Tracing and (feature `metrics`) metrics for every backend, in one place.
//!
//! A backend opens one [`SessionTelemetry`] per client session and runs each acquisition
//! through [`SessionTelemetry::acquire`]; the etcd-only signals (retries, watch-stream resets,
//! keepalive latency) have a function each. Nothing here logs at `info` or above on the hot
//! path: acquisitions are `debug` spans and events, losses and abnormal session ends `warn`.
//!
//! # Tracing
//! - span `locksmith.acquire` (level `debug`) around every acquisition, with fields
//!   `backend`, `kind` (see [`AcquireKind`]), `name`, `session`, and, once it completes,
//!   `wait_us`, `outcome` (`acquired`, `busy`, `failed`; `cancelled` when the future is
//!   dropped) and `fencing_token`.
//! - event at `warn` when a hold is lost (`reason`: see [`LossReason`]), at `debug` when it
//!   is released (`hold_us`).
//! - events when a session starts (`debug`) and ends (`debug` when closed, else `warn`).
//!
//! # Metrics
//! With the `metrics` feature, these go to whatever recorder the application installs (for
//! example `metrics-exporter-prometheus`); without one they cost a few atomic loads.
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `locksmith_acquisitions_total` | counter | `backend`, `kind`, `outcome` | acquisitions by how they ended: `acquired`, `busy` (a `try_*` found it taken), `failed`, `cancelled` (future dropped) |
//! | `locksmith_acquisition_failures_total` | counter | `backend`, `kind`, `error` | failed acquisitions by error: `invalid_name`, `invalid_limit`, `limit_mismatch`, `session_lost`, `unavailable`, `backend`, `invalid_config`, `lock_lost` |
//! | `locksmith_wait_seconds` | histogram | `backend`, `kind`, `outcome` | time from the call to its outcome |
//! | `locksmith_hold_seconds` | histogram | `backend`, `kind`, `end` | time from the grant to its end: `released` (unlock, resign), `dropped` (guard dropped), `lost` |
//! | `locksmith_losses_total` | counter | `backend`, `kind`, `reason` | holds lost: `expired`, `closed`, `revoked`, `deleted`, `unknown` |
//! | `locksmith_waiters` | gauge | `backend`, `session` | acquisitions of the session waiting now (`try_*` calls do not count) |
//! | `locksmith_holds` | gauge | `backend`, `session` | guards and leaderships of the session held now |
//! | `locksmith_sessions_started_total` | counter | `backend` | sessions opened |
//! | `locksmith_sessions_ended_total` | counter | `backend`, `reason` | sessions ended, by [`LossReason`] |
//! | `locksmith_retries_total` | counter | `backend`, `operation` | backend calls retried after a transient failure or a timeout (etcd) |
//! | `locksmith_watch_stream_resets_total` | counter | `backend`, `cause` | watch streams given up and reopened: `broken`, `stalled`, `refused` (etcd) |
//! | `locksmith_keepalive_seconds` | histogram | `backend` | from sending a lease keepalive to its reply (etcd) |
//!
//! `kind` is the [`AcquireKind`] (`lock`, `try_lock`, `campaign`, `read`, `try_read`,
//! `write`, `try_write`, `acquire`, `try_acquire`), `backend` `memory` or `etcd`, `session`
//! the session id in hex (on etcd the lease id, as in the keys). Lock names are
//! never labels (unbounded); they are in the spans and events. The two gauges keep a series
//! per session that ever ran: recorders with an idle timeout drop those of ended sessions.
//!
//! # Writing a backend
//! Open a [`SessionTelemetry`] with the session's end signal and wrap each trait method:
//!
//! ```
//! use locksmith_api::instrument::{AcquireKind, SessionTelemetry};
//! use locksmith_api::{LockError, LockGuard, LostSignal};
//!
//! struct MySession {
//!     telemetry: SessionTelemetry,
//!     ended: LostSignal,
//! }
//!
//! impl MySession {
//!     fn open(id: u64) -> Self {
//!         let (ended, ended_watch) = LostSignal::new();
//!         let telemetry = SessionTelemetry::start("mine", format!("{id:x}"), &ended_watch);
//!         MySession { telemetry, ended }
//!     }
//!
//!     async fn wait_for(&self, name: &str) -> Result<LockGuard, LockError> {
//!         # unimplemented!()
//!         // the backend's own queue
//!     }
//!
//!     async fn lock(&self, name: &str) -> Result<LockGuard, LockError> {
//!         self.telemetry.acquire(AcquireKind::Lock, name, self.wait_for(name)).await
//!     }
//! }
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{field, Instrument, Level};

use crate::{Hold, Leadership, LockError, LockGuard, LossReason, LostWatch};

/// What an acquisition asks for: the `kind` field and label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AcquireKind {
    /// [`DistributedLock::lock`](crate::DistributedLock::lock).
    Lock,
    /// [`DistributedLock::try_lock`](crate::DistributedLock::try_lock).
    TryLock,
    /// [`LeaderElection::campaign`](crate::LeaderElection::campaign).
    Campaign,
    /// [`DistributedRwLock::read`](crate::DistributedRwLock::read).
    Read,
    /// [`DistributedRwLock::try_read`](crate::DistributedRwLock::try_read).
    TryRead,
    /// [`DistributedRwLock::write`](crate::DistributedRwLock::write).
    Write,
    /// [`DistributedRwLock::try_write`](crate::DistributedRwLock::try_write).
    TryWrite,
    /// [`DistributedSemaphore::acquire`](crate::DistributedSemaphore::acquire).
    Acquire,
    /// [`DistributedSemaphore::try_acquire`](crate::DistributedSemaphore::try_acquire).
    TryAcquire,
}

impl AcquireKind {
    /// The label value: `lock`, `try_lock`, `campaign`, `read`, `try_read`, `write`,
    /// `try_write`, `acquire` or `try_acquire`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AcquireKind::Lock => "lock",
            AcquireKind::TryLock => "try_lock",
            AcquireKind::Campaign => "campaign",
            AcquireKind::Read => "read",
            AcquireKind::TryRead => "try_read",
            AcquireKind::Write => "write",
            AcquireKind::TryWrite => "try_write",
            AcquireKind::Acquire => "acquire",
            AcquireKind::TryAcquire => "try_acquire",
        }
    }

    /// True for the kinds that queue and wait (not the `try_*` ones).
    const fn waits(self) -> bool {
        matches!(
            self,
            AcquireKind::Lock
                | AcquireKind::Campaign
                | AcquireKind::Read
                | AcquireKind::Write
                | AcquireKind::Acquire
        )
    }
}

impl std::fmt::Display for AcquireKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an acquisition returns: a guard, maybe a guard (`try_*`), or a leadership.
///
/// Sealed: implemented for [`LockGuard`], `Option<LockGuard>` and [`Leadership`].
pub trait Acquired: Send + sealed::Sealed {
    /// The guard acquired, `None` when a `try_*` call found the lock taken.
    #[doc(hidden)]
    fn acquired_guard(&mut self) -> Option<&mut LockGuard>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::LockGuard {}
    impl Sealed for Option<crate::LockGuard> {}
    impl Sealed for crate::Leadership {}
}

impl Acquired for LockGuard {
    fn acquired_guard(&mut self) -> Option<&mut LockGuard> {
        Some(self)
    }
}

impl Acquired for Option<LockGuard> {
    fn acquired_guard(&mut self) -> Option<&mut LockGuard> {
        self.as_mut()
    }
}

impl Acquired for Leadership {
    fn acquired_guard(&mut self) -> Option<&mut LockGuard> {
        Some(self.guard_mut())
    }
}

/// The tracing and metrics of one client session; every acquisition of the session goes
/// through [`acquire`](Self::acquire).
///
/// Cloning shares it.
#[derive(Clone)]
pub struct SessionTelemetry {
    session: Arc<SessionLabels>,
}

/// The labels every record of a session carries.
struct SessionLabels {
    backend: &'static str,
    id: Arc<str>,
    /// Set once the session's end has been recorded.
    ended: AtomicBool,
}

impl SessionTelemetry {
    /// Records that a session started and watches `ended` (the session's end signal) to
    /// record its end with the reason.
    pub fn start(backend: &'static str, session: impl Into<String>, ended: &LostWatch) -> Self {
        let labels = Arc::new(SessionLabels {
            backend,
            id: Arc::from(session.into()),
            ended: AtomicBool::new(false),
        });
        tracing::debug!(backend, session = %labels.id, "locksmith session started");
        #[cfg(feature = "metrics")]
        metrics::counter!("locksmith_sessions_started_total", "backend" => backend).increment(1);
        ended.observe(Arc::clone(&labels) as Arc<dyn LossObserver>);
        SessionTelemetry { session: labels }
    }

    /// The backend label.
    pub fn backend(&self) -> &'static str {
        self.session.backend
    }

    /// The session label.
    pub fn session(&self) -> &str {
        &self.session.id
    }

    /// Runs `acquisition` (a `lock`, `try_lock`, `campaign`, `read`, …) of `name` inside a
    /// `locksmith.acquire` span, records its wait and outcome, and has the guard it returns
    /// record its hold time and its loss.
    ///
    /// # Errors
    /// Those of `acquisition`, unchanged.
    ///
    /// # Cancel safety
    /// As `acquisition`'s; a dropped call is recorded as `cancelled`.
    pub async fn acquire<T, F>(
        &self,
        kind: AcquireKind,
        name: &str,
        acquisition: F,
    ) -> Result<T, LockError>
    where
        T: Acquired,
        F: Future<Output = Result<T, LockError>>,
    {
        let span = tracing::debug_span!(
            "locksmith.acquire",
            backend = self.session.backend,
            kind = kind.as_str(),
            name,
            session = %self.session.id,
            wait_us = field::Empty,
            outcome = field::Empty,
            fencing_token = field::Empty,
        );
        if span.is_disabled() && !cfg!(feature = "metrics") && !tracing::enabled!(Level::WARN) {
            // Nobody listens: no clock reads, no hold probe.
            return acquisition.await;
        }
        let mut in_flight = InFlight::new(&self.session, kind, span.clone());
        let mut result = acquisition.instrument(span).await;
        let outcome = match &mut result {
            Ok(acquired) => match acquired.acquired_guard() {
                Some(guard) => {
                    in_flight.done("acquired", None, Some(guard.fencing_token().get()));
                    let probe = HoldProbe {
                        session: Arc::clone(&self.session),
                        kind,
                        name: guard.shared_name(),
                        token: guard.fencing_token().get(),
                        granted_at: Instant::now(),
                        ended: AtomicBool::new(false),
                    };
                    probe.started();
                    guard.probe(Arc::new(probe));
                    return result;
                }
                None => "busy",
            },
            Err(_) => "failed",
        };
        in_flight.done(outcome, result.as_ref().err(), None);
        result
    }
}

impl SessionTelemetry {
    /// As [`acquire`](Self::acquire), for a backend's hot path: when nothing can be recorded
    /// (no tracing subscriber enabled at any level, feature `metrics` off) it awaits
    /// `start()` as it is; otherwise it runs [`acquire`](Self::acquire) in a box of its own.
    /// Either way the caller's future is only as large as `start()`'s: the instrumented one,
    /// several times larger, no longer makes every acquisition's boxed future large enough
    /// to leave the allocator's fast path (measured on the memory backend: 440 bytes instead
    /// of 1056, and 243 ns back to 199 ns per uncontended lock+unlock).
    ///
    /// # Errors
    /// Those of `start()`'s future, unchanged.
    ///
    /// # Cancel safety
    /// As `start()`'s future's; a dropped call is recorded as `cancelled` when recorded.
    pub async fn acquire_with<T, S, F>(
        &self,
        kind: AcquireKind,
        name: &str,
        start: S,
    ) -> Result<T, LockError>
    where
        T: Acquired,
        S: FnOnce() -> F,
        F: Future<Output = Result<T, LockError>>,
    {
        if Self::nothing_records() {
            start().await
        } else {
            // Boxed twice: `acquire` keeps its argument for its whole life beside the
            // instrumented copy, which would double the size of a large backend future.
            Box::pin(self.acquire(kind, name, Box::pin(start()))).await
        }
    }

    /// True when no subscriber is enabled at any level and metrics are compiled out: one
    /// atomic load. Implies the fast path inside [`acquire`](Self::acquire).
    fn nothing_records() -> bool {
        !cfg!(feature = "metrics")
            && tracing::level_filters::LevelFilter::current()
                == tracing::level_filters::LevelFilter::OFF
    }
}

impl std::fmt::Debug for SessionTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTelemetry")
            .field("backend", &self.session.backend)
            .field("session", &self.session.id)
            .finish()
    }
}

/// Told once when a [`LostSignal`](crate::LostSignal) is marked; see [`LostWatch::observe`].
pub(crate) trait LossObserver: Send + Sync {
    fn lost(&self, reason: LossReason);
}

impl LossObserver for SessionLabels {
    fn lost(&self, reason: LossReason) {
        if self.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        let (backend, session) = (self.backend, &*self.id);
        match reason {
            LossReason::Closed => {
                tracing::debug!(backend, session, %reason, "locksmith session ended")
            }
            _ => tracing::warn!(backend, session, %reason, "locksmith session ended"),
        }
        #[cfg(feature = "metrics")]
        metrics::counter!(
            "locksmith_sessions_ended_total",
            "backend" => backend,
            "reason" => reason.label(),
        )
        .increment(1);
    }
}

/// One acquisition on its way: counts as a waiter, and as `cancelled` if dropped unfinished.
struct InFlight<'a> {
    session: &'a Arc<SessionLabels>,
    kind: AcquireKind,
    span: tracing::Span,
    started: Instant,
    finished: bool,
}

impl<'a> InFlight<'a> {
    fn new(session: &'a Arc<SessionLabels>, kind: AcquireKind, span: tracing::Span) -> Self {
        if kind.waits() {
            session.gauge_waiters(1.0);
        }
        InFlight {
            session,
            kind,
            span,
            started: Instant::now(),
            finished: false,
        }
    }

    fn done(&mut self, outcome: &'static str, error: Option<&LockError>, token: Option<u64>) {
        self.finished = true;
        let wait = self.started.elapsed();
        if self.kind.waits() {
            self.session.gauge_waiters(-1.0);
        }
        let wait_us = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
        self.span.record("wait_us", wait_us);
        self.span.record("outcome", outcome);
        if let Some(token) = token {
            self.span.record("fencing_token", token);
        }
        let _entered = self.span.enter();
        match error {
            Some(error) => tracing::debug!(wait_us, outcome, %error, "locksmith acquisition"),
            None => tracing::debug!(wait_us, outcome, "locksmith acquisition"),
        }
        #[cfg(feature = "metrics")]
        {
            let (backend, kind) = (self.session.backend, self.kind.as_str());
            metrics::counter!(
                "locksmith_acquisitions_total",
                "backend" => backend, "kind" => kind, "outcome" => outcome,
            )
            .increment(1);
            metrics::histogram!(
                "locksmith_wait_seconds",
                "backend" => backend, "kind" => kind, "outcome" => outcome,
            )
            .record(wait.as_secs_f64());
            if let Some(error) = error {
                metrics::counter!(
                    "locksmith_acquisition_failures_total",
                    "backend" => backend, "kind" => kind, "error" => error.label(),
                )
                .increment(1);
            }
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.done("cancelled", None, None);
        }
    }
}

impl SessionLabels {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn gauge_waiters(&self, by: f64) {
        #[cfg(feature = "metrics")]
        metrics::gauge!(
            "locksmith_waiters",
            "backend" => self.backend,
            "session" => metrics::SharedString::from(Arc::clone(&self.id)),
        )
        .increment(by);
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn gauge_holds(&self, by: f64) {
        #[cfg(feature = "metrics")]
        metrics::gauge!(
            "locksmith_holds",
            "backend" => self.backend,
            "session" => metrics::SharedString::from(Arc::clone(&self.id)),
        )
        .increment(by);
    }
}

/// One granted hold: records its end (release, drop or loss) once.
pub(crate) struct HoldProbe {
    session: Arc<SessionLabels>,
    kind: AcquireKind,
    name: Arc<str>,
    token: u64,
    granted_at: Instant,
    ended: AtomicBool,
}

/// How a hold ended.
#[derive(Clone, Copy)]
pub(crate) enum HoldEnd {
    Released,
    Dropped,
    Lost(LossReason),
}

impl HoldProbe {
    fn started(&self) {
        self.session.gauge_holds(1.0);
    }

    /// Records the end of the hold, the first time only.
    pub(crate) fn end(&self, how: HoldEnd) {
        if self.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        let held = self.granted_at.elapsed();
        let hold_us = u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
        let (backend, kind, session) =
            (self.session.backend, self.kind.as_str(), &*self.session.id);
        let (name, fencing_token) = (&*self.name, self.token);
        let end = match how {
            HoldEnd::Released => "released",
            HoldEnd::Dropped => "dropped",
            HoldEnd::Lost(_) => "lost",
        };
        match how {
            HoldEnd::Lost(reason) => tracing::warn!(
                backend, kind, name, session, fencing_token, hold_us, %reason,
                "locksmith hold lost"
            ),
            _ => tracing::debug!(
                backend,
                kind,
                name,
                session,
                fencing_token,
                hold_us,
                end,
                "locksmith hold ended"
            ),
        }
        self.session.gauge_holds(-1.0);
        #[cfg(feature = "metrics")]
        {
            metrics::histogram!(
                "locksmith_hold_seconds",
                "backend" => backend, "kind" => kind, "end" => end,
            )
            .record(held.as_secs_f64());
            if let HoldEnd::Lost(reason) = how {
                metrics::counter!(
                    "locksmith_losses_total",
                    "backend" => backend, "kind" => kind, "reason" => reason.label(),
                )
                .increment(1);
            }
        }
    }
}

impl LossObserver for HoldProbe {
    fn lost(&self, reason: LossReason) {
        self.end(HoldEnd::Lost(reason));
    }
}

/// The hold of an instrumented guard: records the end before the backend's hold goes.
pub(crate) struct ProbedHold {
    pub(crate) probe: Arc<HoldProbe>,
    pub(crate) inner: Box<dyn Hold>,
}

#[async_trait::async_trait]
impl Hold for ProbedHold {
    async fn release(mut self: Box<Self>) -> Result<(), LockError> {
        self.probe.end(HoldEnd::Released);
        let inner = std::mem::replace(&mut self.inner, Box::new(Vacant));
        inner.release().await
    }

    fn release_now(&mut self) -> Option<Result<(), LockError>> {
        let released = self.inner.release_now();
        if released.is_some() {
            self.probe.end(HoldEnd::Released);
        }
        released
    }
}

impl Drop for ProbedHold {
    fn drop(&mut self) {
        self.probe.end(HoldEnd::Dropped);
    }
}

/// Stands in for a hold that was moved out (wrapped, or released); never released itself.
pub(crate) struct Vacant;

#[async_trait::async_trait]
impl Hold for Vacant {
    async fn release(self: Box<Self>) -> Result<(), LockError> {
        Ok(())
    }
}

/// Describes every metric of the table above to the installed recorder (units and help text,
/// as Prometheus `# HELP` lines); call it once after installing one.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "locksmith_acquisitions_total",
        "Acquisitions by backend, kind and outcome (acquired, busy, failed, cancelled)."
    );
    describe_counter!(
        "locksmith_acquisition_failures_total",
        "Failed acquisitions by backend, kind and error."
    );
    describe_histogram!(
        "locksmith_wait_seconds",
        Unit::Seconds,
        "Time from an acquisition's call to its outcome."
    );
    describe_histogram!(
        "locksmith_hold_seconds",
        Unit::Seconds,
        "Time from a grant to its end (released, dropped, lost)."
    );
    describe_counter!("locksmith_losses_total", "Holds lost, by reason.");
    describe_gauge!(
        "locksmith_waiters",
        "Acquisitions of a session waiting now."
    );
    describe_gauge!(
        "locksmith_holds",
        "Guards and leaderships of a session held now."
    );
    describe_counter!("locksmith_sessions_started_total", "Sessions opened.");
    describe_counter!(
        "locksmith_sessions_ended_total",
        "Sessions ended, by reason."
    );
    describe_counter!(
        "locksmith_retries_total",
        "Backend calls retried after a transient failure or a timeout."
    );
    describe_counter!(
        "locksmith_watch_stream_resets_total",
        "Watch streams given up and reopened, by cause."
    );
    describe_histogram!(
        "locksmith_keepalive_seconds",
        Unit::Seconds,
        "Time from sending a lease keepalive to its reply."
    );
}

/// Records that an etcd call (`operation`) failed or timed out and is retried.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub fn retried(backend: &'static str, operation: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "locksmith_retries_total",
        "backend" => backend,
        "operation" => operation.to_owned(),
    )
    .increment(1);
}

/// Records that a session's watch stream was given up and will be reopened; `cause` is
/// `broken`, `stalled` or `refused`.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub fn watch_stream_reset(backend: &'static str, cause: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "locksmith_watch_stream_resets_total",
        "backend" => backend,
        "cause" => cause,
    )
    .increment(1);
}

/// Records how long a lease keepalive took from its sending to its reply.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub fn keepalive_latency(backend: &'static str, latency: Duration) {
    tracing::trace!(
        backend,
        latency_us = latency.as_micros() as u64,
        "keepalive answered"
    );
    #[cfg(feature = "metrics")]
    metrics::histogram!("locksmith_keepalive_seconds", "backend" => backend)
        .record(latency.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FencingToken, LostSignal};

    /// What a fmt subscriber wrote.
    #[derive(Clone, Default)]
    struct Log(Arc<parking_lot::Mutex<Vec<u8>>>);

    impl std::io::Write for Log {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// `acquire_with` skips the instrumented wrapper only when nothing listens: with a
    /// subscriber (here a thread-local one) the span and outcome are still recorded.
    #[tokio::test]
    async fn acquire_with_records_whenever_a_subscriber_listens() {
        let (_ended, ended_watch) = LostSignal::new();
        let telemetry = SessionTelemetry::start("test", "2b", &ended_watch);
        let busy = || async { Ok(None::<LockGuard>) };
        let silent = telemetry
            .acquire_with(AcquireKind::TryLock, "q", busy)
            .await;
        assert!(silent.unwrap().is_none());

        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let heard = telemetry
            .acquire_with(AcquireKind::TryLock, "q", busy)
            .await;
        assert!(heard.unwrap().is_none());
        let text = String::from_utf8(log.0.lock().clone()).unwrap();
        assert!(
            text.contains("locksmith acquisition") && text.contains(r#"outcome="busy""#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn acquisitions_are_spans_and_losses_warnings() {
        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::DEBUG)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);

        let (ended, ended_watch) = LostSignal::new();
        let telemetry = SessionTelemetry::start("test", "2a", &ended_watch);
        let (lost, watch) = LostSignal::new();
        let granted = async {
            let token = FencingToken::new(7);
            Ok(LockGuard::new(
                "jobs/a",
                "jobs/a/2a",
                token,
                watch,
                Box::new(Vacant),
            ))
        };
        let guard = telemetry
            .acquire(AcquireKind::Lock, "jobs/a", granted)
            .await;
        let guard = guard.unwrap();
        lost.mark(LossReason::Deleted);
        drop(guard);
        let busy = async { Ok(None) };
        let none = telemetry
            .acquire(AcquireKind::TryLock, "jobs/a", busy)
            .await;
        assert!(none.unwrap().is_none());
        let refused = async { Err::<LockGuard, _>(LockError::config("no")) };
        assert!(telemetry
            .acquire(AcquireKind::Read, "r", refused)
            .await
            .is_err());
        ended.mark(LossReason::Expired);

        let text = String::from_utf8(log.0.lock().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let has = |level: &str, parts: &[&str]| {
            lines
                .iter()
                .any(|line| line.contains(level) && parts.iter().all(|p| line.contains(p)))
        };
        assert!(
            has("DEBUG", &["locksmith session started", "session=2a"]),
            "{text}"
        );
        let span = r#"locksmith.acquire{backend="test" kind="lock" name="jobs/a" session=2a"#;
        assert!(
            has(
                "DEBUG",
                &[span, "outcome=\"acquired\"", "fencing_token=7", "close"]
            ),
            "{text}"
        );
        assert!(
            has(
                "WARN",
                &[
                    "locksmith hold lost",
                    "reason=hold deleted",
                    "fencing_token=7"
                ]
            ),
            "{text}"
        );
        assert!(
            !has("DEBUG", &["locksmith hold ended"]),
            "a lost hold ends once: {text}"
        );
        assert!(
            has("DEBUG", &[r#"kind="try_lock""#, r#"outcome="busy""#]),
            "{text}"
        );
        assert!(
            has("DEBUG", &[r#"outcome="failed""#, "error=invalid"]),
            "{text}"
        );
        assert!(
            has("WARN", &["locksmith session ended", "session expired"]),
            "{text}"
        );
        assert!(!lines.iter().any(|line| line.contains(" INFO ")), "{text}");
    }
}
