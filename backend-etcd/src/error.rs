//! Mapping etcd-client errors to [`LockError`].

use locksmith_api::LockError;

/// Turns an etcd error into a [`LockError`]: transport failures are `Unavailable` (naming the
/// endpoints), everything else (auth, permissions, bad requests) is a `Backend` error.
pub(crate) fn from_etcd(err: etcd_client::Error, endpoints: &str, operation: &str) -> LockError {
    if is_unavailable(&err) {
        LockError::Unavailable {
            backend: "etcd",
            endpoint: endpoints.to_owned(),
            after: None,
            source: Box::new(err),
        }
    } else {
        LockError::Backend {
            backend: "etcd",
            operation: operation.to_owned(),
            source: Box::new(err),
        }
    }
}

/// True for errors that a retry may cure: the transport, or an unavailable or leaderless member.
pub(crate) fn is_unavailable(err: &etcd_client::Error) -> bool {
    use etcd_client::Error;
    use tonic::Code;
    match err {
        Error::TransportError(_) | Error::IoError(_) => true,
        Error::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Aborted
                | Code::Internal
        ),
        Error::WatchError(_) | Error::LeaseKeepAliveError(_) => true,
        _ => false,
    }
}

/// True when etcd refused a request because the lease no longer exists.
pub(crate) fn is_lease_gone(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::NotFound && status.message().contains("lease not found")
        }
        _ => false,
    }
}
