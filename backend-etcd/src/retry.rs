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
/// How many attempts in a row a cleanup makes on errors that are not transient (and for at
/// least a third of the TTL) before it gives up.
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

/// The outcome of one attempt: the call's own result, or `None` when it took too long.
async fn attempt<T, Fut>(link: &Link, call: Fut) -> Option<Result<T, etcd_client::Error>>
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
                    refresh_if_stale(link, &err).await;
                }
            },
            None => tracing::debug!(operation, "etcd call timed out; retrying"),
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

/// Runs a cleanup call (a release, a withdrawal) until it succeeds or the session ends,
/// retrying every failure with backoff. A cleanup that cannot succeed (errors that are not
/// transient on [`PERMANENT_ATTEMPTS`] attempts in a row, or failures of any kind for longer
/// than the session's TTL) ends the session and revokes its lease, so the key goes and the lock
/// passes on: a key is never left behind on a live lease.
pub(crate) async fn cleanup<T, F, Fut>(link: &Link, operation: &str, mut call: F) -> Cleaned<T>
where
    F: FnMut(etcd_client::Client) -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let mut backoff = Backoff::default();
    let started = Instant::now();
    let mut permanent_failures = 0;
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
                // Only a request that may have reached etcd unanswered can have been applied;
                // a refusal was not.
                maybe_applied_before |= is_unavailable(&err);
                match kind {
                    ErrorKind::LeaseGone => {
                        let _ = link.lease_gone();
                        return Cleaned::SessionEnded(
                            link.ended_watch.reason().unwrap_or(LossReason::Expired),
                        );
                    }
                    ErrorKind::Permanent => permanent_failures += 1,
                    ErrorKind::Transient => permanent_failures = 0,
                }
                tracing::warn!(%err, operation, "etcd cleanup failed; retrying");
                refresh_if_stale(link, &err).await;
                err.to_string()
            }
            None => {
                maybe_applied_before = true;
                tracing::debug!(operation, "etcd cleanup timed out; retrying");
                "no answer in time".to_owned()
            }
        };
        // Give up only on a failure that lasted: refusals for a third of the TTL, or any
        // failure for the whole TTL.
        let refused_for_long =
            permanent_failures >= PERMANENT_ATTEMPTS && started.elapsed() >= link.ttl / 3;
        if refused_for_long || started.elapsed() > link.ttl {
            tracing::error!(
                failure,
                operation,
                session = %link.id(),
                "etcd cleanup keeps failing: revoking the session so its locks pass on"
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
