//! The one retry policy of the backend: which etcd errors are worth another attempt, how long
//! to wait between attempts, and how long one attempt may take.
//!
//! Two callers need it. Ordinary steps (queueing, reading the queue) retry what a retry can
//! cure and fail on the rest. Cleanups (a release, a withdrawal) must not give up while the
//! session lives, whatever the error: a key left behind on a live lease blocks its lock for the
//! session's life. A cleanup that still fails after a while ends the session and revokes its
//! lease instead (see [`cleanup`]).

use std::future::Future;
use std::time::Duration;

use locksmith_api::{LockError, LossReason};
use tokio::time::Instant;

use crate::error::{from_etcd, is_lease_gone, is_unavailable};
use crate::session::Link;

/// The first pause after a failed attempt.
const FIRST_DELAY: Duration = Duration::from_millis(20);
/// The longest pause between attempts.
const MAX_DELAY: Duration = Duration::from_secs(1);
/// How many permanent refusals in a row (over at least a third of the TTL) end a cleanup.
const PERMANENT_ATTEMPTS: u32 = 4;

/// What an etcd error means for the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// The transport, an unavailable or leaderless member, an overloaded server ("too many
    /// requests"), an expired auth token: the same request may well succeed later.
    Transient,
    /// etcd no longer knows the session's lease: the session is over.
    LeaseGone,
    /// etcd refused the request itself (permissions, a bad request): retrying will not help.
    Permanent,
}

/// Classifies an etcd error.
pub(crate) fn classify(err: &etcd_client::Error) -> ErrorKind {
    use tonic::Code;
    if is_lease_gone(err) {
        return ErrorKind::LeaseGone;
    }
    if is_unavailable(err) {
        return ErrorKind::Transient;
    }
    match err {
        etcd_client::Error::GRpcStatus(status)
            if matches!(
                status.code(),
                Code::ResourceExhausted | Code::Unauthenticated
            ) || is_stale_auth(status) =>
        {
            ErrorKind::Transient
        }
        _ => ErrorKind::Permanent,
    }
}

/// True when etcd refused the request's auth token (expired, or issued before the last change
/// of users or roles): a fresh token cures it. Not "user name is empty": a client without
/// credentials on an etcd with auth on gets no token by asking again.
pub(crate) fn is_stale_auth(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unauthenticated
        || ["invalid auth token", "revision of auth store is old"]
            .iter()
            .any(|message| status.message().contains(message))
}

/// Before retrying after `err`: asks for a fresh auth token if the old one was refused.
async fn refresh_if_stale(link: &Link, err: &etcd_client::Error) {
    if let etcd_client::Error::GRpcStatus(status) = err {
        if is_stale_auth(status) {
            let refresh = link.client.refresh_token();
            let _ = tokio::time::timeout(attempt_timeout(link.ttl), refresh).await;
        }
    }
}

/// Exponential backoff: 20 ms doubling up to 1 s.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: FIRST_DELAY }
    }
}

impl Backoff {
    /// The pause to take now; the next one is twice as long, up to the maximum.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        delay
    }

    /// Starts again from the shortest pause (after a success).
    pub(crate) fn reset(&mut self) {
        self.next = FIRST_DELAY;
    }

    /// Sleeps the next pause, or fails at once if the session ends meanwhile.
    pub(crate) async fn wait(&mut self, link: &Link) -> Result<(), LockError> {
        let delay = self.next_delay();
        tokio::select! {
            biased;
            err = link.ended() => Err(err),
            () = tokio::time::sleep(delay) => Ok(()),
        }
    }
}

/// How long one attempt of a unary call may take before it counts as failed (its outcome then
/// unknown): a third of the TTL, between 0.5 and 5 s. A member that stopped answering
/// (SIGSTOP, a half-open connection) would otherwise hold the call until HTTP/2 notices.
pub(crate) fn attempt_timeout(ttl: Duration) -> Duration {
    (ttl / 3).clamp(Duration::from_millis(500), Duration::from_secs(5))
}

/// The outcome of one attempt, bounded by [`attempt_timeout`]: the call's own result, or
/// `None` when it took too long. An attempt given up while its member stayed silent makes the
/// transport send the next one (the retry) to another member, if there is one.
pub(crate) async fn attempt<T, Fut>(link: &Link, call: Fut) -> Option<Result<T, etcd_client::Error>>
where
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    tokio::time::timeout(attempt_timeout(link.ttl), call)
        .await
        .ok()
}

/// Runs an etcd call, retrying transient failures and attempts that take too long, while the
/// session lives.
///
/// # Errors
/// [`LockError::SessionLost`] when the session ends (or etcd reports its lease gone); the
/// backend error of a failure a retry cannot cure.
pub(crate) async fn retry<T, F, Fut>(
    link: &Link,
    operation: &str,
    mut call: F,
) -> Result<T, LockError>
where
    F: FnMut(etcd_client::Client) -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let mut backoff = Backoff::default();
    loop {
        link.check_alive()?;
        match attempt(link, call(link.client.clone())).await {
            Some(Ok(value)) => return Ok(value),
            Some(Err(err)) => match classify(&err) {
                ErrorKind::LeaseGone => return Err(link.lease_gone()),
                ErrorKind::Permanent => return Err(from_etcd(err, &link.endpoints, operation)),
                ErrorKind::Transient => {
                    tracing::debug!(%err, operation, "etcd call failed; retrying");
                    locksmith_api::instrument::retried("etcd", operation);
                    refresh_if_stale(link, &err).await;
                }
            },
            None => {
                tracing::debug!(operation, "etcd call timed out; retrying");
                locksmith_api::instrument::retried("etcd", operation);
            }
        }
        backoff.wait(link).await?;
    }
}

/// What a cleanup learned.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Cleaned<T> {
    /// The call succeeded; `maybe_applied_before` is true when an earlier attempt may have
    /// been applied by etcd although its reply never arrived (an error or a timeout after the
    /// request was sent).
    Done {
        value: T,
        maybe_applied_before: bool,
    },
    /// The session ended first: its keys go (or went) with its lease.
    SessionEnded(LossReason),
}

/// Refusals in a row: etcd answered, but not with success (permissions, "too many requests",
/// an auth token it keeps refusing). A failure of the transport or a timeout ends the run: an
/// unreachable etcd ends the session by itself, through its keepalive.
#[derive(Default)]
struct Refusals {
    /// When the run began.
    since: Option<Instant>,
    /// How many of the run's last refusals in a row were permanent.
    permanent: u32,
}

impl Refusals {
    fn refused(&mut self, kind: ErrorKind) {
        self.since.get_or_insert_with(Instant::now);
        if kind == ErrorKind::Permanent {
            self.permanent += 1;
        } else {
            self.permanent = 0;
        }
    }

    fn interrupted(&mut self) {
        *self = Refusals::default();
    }

    /// True when the refusals have lasted: permanent ones [`PERMANENT_ATTEMPTS`] times in a
    /// row over a third of the TTL, any for a whole TTL.
    fn hopeless(&self, ttl: Duration) -> bool {
        let Some(since) = self.since else {
            return false;
        };
        let lasted = since.elapsed();
        (self.permanent >= PERMANENT_ATTEMPTS && lasted >= ttl / 3) || lasted > ttl
    }
}

/// Runs a cleanup call (a release, a withdrawal) until it succeeds or the session ends,
/// retrying every failure with backoff. A cleanup that etcd keeps refusing (see [`Refusals`])
/// ends the session and revokes its lease, so the key goes and the lock passes on: a key is
/// never left behind on a live lease. Unavailability is waited out while the session lives.
pub(crate) async fn cleanup<T, F, Fut>(link: &Link, operation: &str, mut call: F) -> Cleaned<T>
where
    F: FnMut(etcd_client::Client) -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let mut backoff = Backoff::default();
    let mut refusals = Refusals::default();
    let mut maybe_applied_before = false;
    loop {
        if let Some(reason) = link.ended_watch.reason() {
            return Cleaned::SessionEnded(reason);
        }
        let failure = match attempt(link, call(link.client.clone())).await {
            Some(Ok(value)) => {
                return Cleaned::Done {
                    value,
                    maybe_applied_before,
                }
            }
            Some(Err(err)) => {
                let kind = classify(&err);
                if kind == ErrorKind::LeaseGone {
                    let _ = link.lease_gone();
                    return Cleaned::SessionEnded(
                        link.ended_watch.reason().unwrap_or(LossReason::Expired),
                    );
                }
                // Only a request that may have reached etcd unanswered can have been applied;
                // a refusal was not.
                if is_unavailable(&err) {
                    maybe_applied_before = true;
                    refusals.interrupted();
                } else {
                    refusals.refused(kind);
                }
                tracing::warn!(%err, operation, "etcd cleanup failed; retrying");
                locksmith_api::instrument::retried("etcd", operation);
                refresh_if_stale(link, &err).await;
                err.to_string()
            }
            None => {
                maybe_applied_before = true;
                refusals.interrupted();
                tracing::debug!(operation, "etcd cleanup timed out; retrying");
                locksmith_api::instrument::retried("etcd", operation);
                "no answer in time".to_owned()
            }
        };
        if refusals.hopeless(link.ttl) {
            tracing::error!(
                failure,
                operation,
                session = %link.id(),
                "etcd keeps refusing a cleanup: revoking the session so its locks pass on"
            );
            link.abandon().await;
            return Cleaned::SessionEnded(link.ended_watch.reason().unwrap_or(LossReason::Revoked));
        }
        if backoff.wait(link).await.is_err() {
            // The session ended while we waited: loop once more to report it.
            continue;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code, message: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, message))
    }

    #[test]
    fn classification() {
        use tonic::Code;
        for (err, kind) in [
            (status(Code::Unavailable, "x"), ErrorKind::Transient),
            (
                status(Code::ResourceExhausted, "etcdserver: too many requests"),
                ErrorKind::Transient,
            ),
            (
                status(Code::Unauthenticated, "etcdserver: invalid auth token"),
                ErrorKind::Transient,
            ),
            (
                status(Code::NotFound, "etcdserver: requested lease not found"),
                ErrorKind::LeaseGone,
            ),
            (
                status(
                    Code::InvalidArgument,
                    "etcdserver: revision of auth store is old",
                ),
                ErrorKind::Transient,
            ),
            (
                status(Code::PermissionDenied, "etcdserver: permission denied"),
                ErrorKind::Permanent,
            ),
            (
                status(Code::InvalidArgument, "etcdserver: key is not provided"),
                ErrorKind::Permanent,
            ),
        ] {
            assert_eq!(classify(&err), kind, "{err}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_lasting_refusals_are_hopeless() {
        let ttl = Duration::from_secs(3);
        let mut permanent = Refusals::default();
        for _ in 0..PERMANENT_ATTEMPTS {
            permanent.refused(ErrorKind::Permanent);
        }
        assert!(!permanent.hopeless(ttl), "given up at once");
        tokio::time::advance(ttl / 3).await;
        assert!(permanent.hopeless(ttl));

        let mut overloaded = Refusals::default();
        overloaded.refused(ErrorKind::Transient);
        tokio::time::advance(ttl).await;
        overloaded.refused(ErrorKind::Transient);
        assert!(!overloaded.hopeless(ttl));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(overloaded.hopeless(ttl));
        // A timeout or an unreachable member in between starts the count again.
        overloaded.interrupted();
        assert!(!overloaded.hopeless(ttl));
    }

    #[test]
    fn backoff_doubles_to_a_bound_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..8).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays[0], FIRST_DELAY);
        assert_eq!(delays[1], FIRST_DELAY * 2);
        assert_eq!(*delays.last().unwrap(), MAX_DELAY);
        backoff.reset();
        assert_eq!(backoff.next_delay(), FIRST_DELAY);
    }

    #[test]
    fn attempts_get_a_third_of_the_ttl_within_bounds() {
        assert_eq!(
            attempt_timeout(Duration::from_secs(1)),
            Duration::from_millis(500)
        );
        assert_eq!(
            attempt_timeout(Duration::from_secs(6)),
            Duration::from_secs(2)
        );
        assert_eq!(
            attempt_timeout(Duration::from_secs(60)),
            Duration::from_secs(5)
        );
    }
}
