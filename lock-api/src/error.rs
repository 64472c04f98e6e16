//! The one error type every backend returns.

use std::time::Duration;

/// A boxed error from below locksmith (a transport, a parser, an etcd reply).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong when taking, holding or configuring a lock.
///
/// `Display` says what failed and how to fix it; [`std::error::Error::source`] says why,
/// where a lower layer had a cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The lock name breaks one of the naming rules (see [`validate_name`](crate::validate_name)).
    #[error("invalid lock name {name:?}: {rule}")]
    InvalidName {
        /// The name as given (cut to 64 characters).
        name: String,
        /// The rule it breaks.
        rule: &'static str,
    },

    /// A configuration value, URL or file could not be used.
    #[error("invalid locksmith config: {message}")]
    InvalidConfig {
        /// What is wrong and how to fix it.
        message: String,
        /// The parser's own error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The client session ended (expired, revoked or closed) before or while the operation ran.
    ///
    /// A waiter whose session ends fails with this error instead of acquiring; no lock is held.
    /// Open a new client to go on.
    #[error("lock session {session} is gone ({reason}): open a new client to take locks again")]
    SessionLost {
        /// The session id (the etcd lease id in hex, or the memory session number).
        session: String,
        /// Why it ended.
        reason: LossReason,
    },

    /// A semaphore limit that cannot be used (0).
    #[error("invalid limit {limit} for semaphore {name:?}: must be at least 1")]
    InvalidLimit {
        /// The semaphore name (cut to 64 characters).
        name: String,
        /// The limit as given.
        limit: u32,
    },

    /// A semaphore acquired with another limit than its current holders and waiters use.
    #[error(
        "semaphore {name:?} is in use with limit {in_use}, not {limit}: every user of a name \
         must pass the same limit"
    )]
    LimitMismatch {
        /// The semaphore name.
        name: String,
        /// The limit this call passed.
        limit: u32,
        /// The limit the name is in use with.
        in_use: u32,
    },

    /// The lock was no longer held when the guard tried to release it.
    #[error("lock {name:?} was lost before unlock ({reason})")]
    LockLost {
        /// The lock name.
        name: String,
        /// Why ownership ended.
        reason: LossReason,
    },

    /// The backend could not be reached in time.
    #[error("{backend} at {endpoint} unavailable{}: {source}", after_text(.after))]
    Unavailable {
        /// The backend kind, such as `"etcd"`.
        backend: &'static str,
        /// The endpoint or endpoints tried.
        endpoint: String,
        /// How long was waited, where a deadline applied.
        after: Option<Duration>,
        /// The cause reported by the transport.
        #[source]
        source: BoxError,
    },

    /// The backend refused or failed an operation (authentication, permissions, a bad reply).
    #[error("{backend} failed to {operation}: {source}")]
    Backend {
        /// The backend kind, such as `"etcd"`.
        backend: &'static str,
        /// What was being done, such as `"grant a lease"`.
        operation: String,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
}

fn after_text(after: &Option<Duration>) -> String {
    match after {
        Some(d) => format!(" after {d:?}"),
        None => String::new(),
    }
}

impl LockError {
    /// Builds an [`LockError::InvalidConfig`] with no underlying cause.
    pub fn config(message: impl Into<String>) -> Self {
        LockError::InvalidConfig {
            message: message.into(),
            source: None,
        }
    }

    /// Builds an [`LockError::InvalidConfig`] that keeps the parser's error as its source.
    pub fn config_with(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        LockError::InvalidConfig {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// An equal error for a second receiver (sources are kept as their message): how one
    /// ending is reported to every observer of a name.
    pub(crate) fn duplicate(&self) -> LockError {
        fn text(source: &BoxError) -> BoxError {
            source.to_string().into()
        }
        match self {
            LockError::InvalidName { name, rule } => LockError::InvalidName {
                name: name.clone(),
                rule,
            },
            LockError::InvalidConfig { message, source } => LockError::InvalidConfig {
                message: message.clone(),
                source: source.as_ref().map(text),
            },
            LockError::SessionLost { session, reason } => LockError::SessionLost {
                session: session.clone(),
                reason: *reason,
            },
            LockError::LockLost { name, reason } => LockError::LockLost {
                name: name.clone(),
                reason: *reason,
            },
            LockError::InvalidLimit { name, limit } => LockError::InvalidLimit {
                name: name.clone(),
                limit: *limit,
            },
            LockError::LimitMismatch {
                name,
                limit,
                in_use,
            } => LockError::LimitMismatch {
                name: name.clone(),
                limit: *limit,
                in_use: *in_use,
            },
            LockError::Unavailable {
                backend,
                endpoint,
                after,
                source,
            } => LockError::Unavailable {
                backend,
                endpoint: endpoint.clone(),
                after: *after,
                source: text(source),
            },
            LockError::Backend {
                backend,
                operation,
                source,
            } => LockError::Backend {
                backend,
                operation: operation.clone(),
                source: text(source),
            },
        }
    }

    /// The `error` label of the failure metrics (see `instrument`).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn label(&self) -> &'static str {
        match self {
            LockError::InvalidName { .. } => "invalid_name",
            LockError::InvalidConfig { .. } => "invalid_config",
            LockError::SessionLost { .. } => "session_lost",
            LockError::InvalidLimit { .. } => "invalid_limit",
            LockError::LimitMismatch { .. } => "limit_mismatch",
            LockError::LockLost { .. } => "lock_lost",
            LockError::Unavailable { .. } => "unavailable",
            LockError::Backend { .. } => "backend",
        }
    }

    /// True for [`LockError::SessionLost`].
    pub fn is_session_lost(&self) -> bool {
        matches!(self, LockError::SessionLost { .. })
    }

    /// True when trying the same call again, on the same client, may succeed: the cause may
    /// pass by itself. A retry loop (with backoff) needs no other predicate.
    ///
    /// | error | retryable | why |
    /// |---|---|---|
    /// | [`Unavailable`](LockError::Unavailable) | yes | the backend did not answer in time or the connection broke; it may come back |
    /// | [`LockLost`](LockError::LockLost) with [`Deleted`](LossReason::Deleted) or [`Unknown`](LossReason::Unknown) | yes | the hold ended but the session lives on: taking the lock again may succeed |
    /// | [`LockLost`](LockError::LockLost) with [`Expired`](LossReason::Expired), [`Closed`](LossReason::Closed) or [`Revoked`](LossReason::Revoked) | no | the session ended with the hold; see below |
    /// | [`SessionLost`](LockError::SessionLost) | no | the session is gone for good: every later call on this client fails the same way; open a new client (see [`is_session_lost`](Self::is_session_lost)) |
    /// | [`InvalidName`](LockError::InvalidName) | no | the name breaks a rule; fix the name |
    /// | [`InvalidConfig`](LockError::InvalidConfig) | no | fix the configuration |
    /// | [`InvalidLimit`](LockError::InvalidLimit) | no | fix the limit |
    /// | [`LimitMismatch`](LockError::LimitMismatch) | no | every user of the name must pass the same limit; fix the caller |
    /// | [`Backend`](LockError::Backend) | no | the backend refused (authentication, permissions, a bad request): retrying sends the same request |
    ///
    /// A session that ended is not retryable on its client, but a new client may succeed:
    /// code that reconnects treats [`is_session_lost`](Self::is_session_lost) (and a
    /// [`LockLost`](LockError::LockLost) whose session ended) as "reconnect, then retry".
    ///
    /// ```
    /// use locksmith_api::{LockError, LossReason};
    ///
    /// let lost = LockError::LockLost { name: "jobs".into(), reason: LossReason::Deleted };
    /// assert!(lost.is_retryable()); // the session lives on: lock again
    /// assert!(!LockError::config("no endpoints").is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            LockError::Unavailable { .. } => true,
            LockError::LockLost { reason, .. } => match reason {
                LossReason::Deleted | LossReason::Unknown => true,
                LossReason::Expired | LossReason::Closed | LossReason::Revoked => false,
            },
            LockError::SessionLost { .. }
            | LockError::InvalidName { .. }
            | LockError::InvalidConfig { .. }
            | LockError::InvalidLimit { .. }
            | LockError::LimitMismatch { .. }
            | LockError::Backend { .. } => false,
        }
    }
}

/// Why a session or a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LossReason {
    /// The session's TTL ran out without a keepalive (a crash, a pause, a partition).
    Expired,
    /// The session was closed by its client (`close()` or the last handle dropped).
    Closed,
    /// The session's lease was revoked: from outside (an operator or another client), or by the
    /// backend itself when it could not release a hold and ended the session rather than leave
    /// the lock blocked.
    Revoked,
    /// The hold itself was removed from outside (its key deleted), the session lives on.
    Deleted,
    /// The backend could no longer tell whether the hold is still owned.
    Unknown,
}

impl LossReason {
    /// The `reason` label of the loss metrics (see `instrument`).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn label(self) -> &'static str {
        match self {
            LossReason::Expired => "expired",
            LossReason::Closed => "closed",
            LossReason::Revoked => "revoked",
            LossReason::Deleted => "deleted",
            LossReason::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LossReason::Expired => "session expired",
            LossReason::Closed => "session closed",
            LossReason::Revoked => "session revoked",
            LossReason::Deleted => "hold deleted",
            LossReason::Unknown => "ownership unknown",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock_lost(reason: LossReason) -> LockError {
        LockError::LockLost {
            name: "jobs".into(),
            reason,
        }
    }

    #[test]
    fn unavailable_is_retryable() {
        let err = LockError::Unavailable {
            backend: "etcd",
            endpoint: "127.0.0.1:2379".into(),
            after: Some(Duration::from_secs(5)),
            source: "connection refused".into(),
        };
        assert!(err.is_retryable());
    }

    #[test]
    fn lock_lost_while_the_session_lives_is_retryable() {
        assert!(lock_lost(LossReason::Deleted).is_retryable());
        assert!(lock_lost(LossReason::Unknown).is_retryable());
    }

    #[test]
    fn lock_lost_with_its_session_is_not_retryable() {
        for reason in [LossReason::Expired, LossReason::Closed, LossReason::Revoked] {
            assert!(!lock_lost(reason).is_retryable(), "{reason}");
        }
    }

    #[test]
    fn session_lost_is_not_retryable() {
        let err = LockError::SessionLost {
            session: "2a".into(),
            reason: LossReason::Expired,
        };
        assert!(!err.is_retryable());
        assert!(err.is_session_lost());
    }

    #[test]
    fn invalid_name_is_not_retryable() {
        let err = crate::validate_name("").unwrap_err();
        assert!(matches!(err, LockError::InvalidName { .. }));
        assert!(!err.is_retryable());
    }

    #[test]
    fn invalid_config_is_not_retryable() {
        assert!(!LockError::config("no endpoint").is_retryable());
        assert!(!LockError::config_with("bad TOML", "expected `=`").is_retryable());
    }

    #[test]
    fn invalid_limit_is_not_retryable() {
        let err = crate::validate_limit("exports", 0).unwrap_err();
        assert!(matches!(err, LockError::InvalidLimit { .. }));
        assert!(!err.is_retryable());
    }

    #[test]
    fn limit_mismatch_is_not_retryable() {
        let err = LockError::LimitMismatch {
            name: "exports".into(),
            limit: 3,
            in_use: 2,
        };
        assert!(!err.is_retryable());
    }

    #[test]
    fn backend_refusal_is_not_retryable() {
        let err = LockError::Backend {
            backend: "etcd",
            operation: "grant a lease".into(),
            source: "authentication failed".into(),
        };
        assert!(!err.is_retryable());
    }

    #[test]
    fn a_duplicate_is_as_retryable_as_its_original() {
        let original = LockError::Unavailable {
            backend: "etcd",
            endpoint: "127.0.0.1:2379".into(),
            after: None,
            source: "reset".into(),
        };
        assert!(original.duplicate().is_retryable());
        assert!(!lock_lost(LossReason::Closed).duplicate().is_retryable());
    }
}
