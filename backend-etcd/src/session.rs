//! The client session: one lease, kept alive in the background, whose end every guard and
//! waiter of the session learns of.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use locksmith_api::{LockError, LockTable, LossReason, LostSignal, LostWatch};
use tokio::runtime::Handle;
use tokio::time::{sleep_until, Instant};

use crate::config::EtcdConfig;
use crate::error::from_etcd;
use crate::hub::WatchHub;

/// Longest pause between attempts to reopen a broken keepalive stream.
const MAX_RETRY: Duration = Duration::from_secs(1);

/// One lease and what hangs off it. Dropping it ends the session and revokes the lease.
///
/// It derefs to its [`Link`], the part that holds share without keeping the session alive.
pub(crate) struct Session {
    link: Arc<Link>,
    pub(crate) namespace: String,
    pub(crate) runtime: Handle,
    /// Serializes this session's own tasks per name before they touch etcd: one lease owns
    /// one key per name, so two tasks must never share it.
    pub(crate) local: Arc<LockTable<()>>,
}

/// The client, the lease and the session's end signal: what a hold needs to release itself
/// and to learn that the session ended.
pub(crate) struct Link {
    pub(crate) client: Client,
    /// The session's one watch stream, shared by its waits and holds.
    pub(crate) watches: WatchHub,
    pub(crate) lease_id: i64,
    /// The lease's TTL.
    pub(crate) ttl: Duration,
    pub(crate) endpoints: String,
    ended: LostSignal,
    pub(crate) ended_watch: LostWatch,
}

impl std::ops::Deref for Session {
    type Target = Link;

    fn deref(&self) -> &Link {
        &self.link
    }
}

impl Session {
    /// Connects, grants the lease and starts its keepalive, all within the connect timeout.
    pub(crate) async fn open(config: &EtcdConfig) -> Result<Arc<Session>, LockError> {
        config.validate()?;
        let runtime = Handle::try_current()
            .map_err(|err| LockError::config_with("the etcd backend needs a tokio runtime", err))?;
        let endpoints = config.endpoint_list();
        let options = config.connect_options()?;
        let ttl = config.ttl();
        let timeout = config.connect_timeout();
        let grant = async {
            let mut client = Client::connect(config.endpoint_urls(), Some(options))
                .await
                .map_err(|err| from_etcd(err, &endpoints, "connect"))?;
            let lease = client
                .lease_grant(ttl.as_secs() as i64, None)
                .await
                .map_err(|err| from_etcd(err, &endpoints, "grant a lease"))?;
            Ok::<_, LockError>((client, lease.id()))
        };
        let (client, lease_id) = match tokio::time::timeout(timeout, grant).await {
            Ok(granted) => granted?,
            Err(_) => {
                return Err(LockError::Unavailable {
                    backend: "etcd",
                    endpoint: endpoints,
                    after: Some(timeout),
                    source: "no answer (is etcd running and reachable there?)".into(),
                })
            }
        };
        let (ended, ended_watch) = LostSignal::new();
        let granted_at = Instant::now();
        runtime.spawn(keep_alive(
            client.clone(),
            lease_id,
            ttl,
            granted_at,
            ended.clone(),
            ended_watch.clone(),
        ));
        Ok(Arc::new(Session {
            link: Arc::new(Link {
                watches: WatchHub::start(client.clone(), config, &runtime),
                client,
                lease_id,
                ttl,
                endpoints,
                ended,
                ended_watch,
            }),
            namespace: config.namespace.clone(),
            runtime,
            local: LockTable::new(),
        }))
    }

    /// The shared part, for holds.
    pub(crate) fn link(&self) -> Arc<Link> {
        Arc::clone(&self.link)
    }
}

impl Link {
    /// The session id used in messages: the lease id in hex, as in the keys.
    pub(crate) fn id(&self) -> String {
        format!("{:x}", self.lease_id)
    }

    /// The error for work on an ended session.
    pub(crate) fn lost_error(&self, reason: LossReason) -> LockError {
        LockError::SessionLost {
            session: self.id(),
            reason,
        }
    }

    /// `Err(SessionLost)` once the session has ended.
    pub(crate) fn check_alive(&self) -> Result<(), LockError> {
        match self.ended_watch.reason() {
            Some(reason) => Err(self.lost_error(reason)),
            None => Ok(()),
        }
    }

    /// Completes when the session ends, with the error waiters fail with.
    pub(crate) async fn ended(&self) -> LockError {
        let reason = self.ended_watch.wait().await;
        self.lost_error(reason)
    }

    /// Ends the session because etcd no longer knows its lease (expired or revoked).
    pub(crate) fn lease_gone(&self) -> LockError {
        self.ended.mark(LossReason::Expired);
        self.lost_error(self.ended_watch.reason().unwrap_or(LossReason::Expired))
    }

    /// Ends the session because a cleanup could not complete, and revokes its lease so that
    /// its keys go and its locks pass on. If etcd cannot be told, the keepalive has stopped and
    /// the lease expires with its TTL.
    pub(crate) async fn abandon(&self) {
        if self.ended.mark(LossReason::Revoked) {
            let mut client = self.client.clone();
            let revoke = client.lease_revoke(self.lease_id);
            let _ = tokio::time::timeout(crate::retry::attempt_timeout(self.ttl), revoke).await;
        }
    }

    /// Ends the session and revokes its lease, so its keys go at once.
    pub(crate) async fn close(&self) -> Result<(), LockError> {
        if !self.ended.mark(LossReason::Closed) {
            return Ok(());
        }
        let mut client = self.client.clone();
        match client.lease_revoke(self.lease_id).await {
            Ok(_) => Ok(()),
            // Already gone: expired or revoked elsewhere; nothing is left to release.
            Err(etcd_client::Error::GRpcStatus(status))
                if status.code() == tonic::Code::NotFound =>
            {
                Ok(())
            }
            Err(err) => Err(from_etcd(err, &self.endpoints, "revoke the lease")),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.ended.mark(LossReason::Closed) {
            let mut client = self.client.clone();
            let lease = self.lease_id;
            // Without a running runtime the lease simply expires with its TTL.
            self.runtime.spawn(async move {
                let _ = client.lease_revoke(lease).await;
            });
        }
    }
}

/// Refreshes the lease every TTL/3, reopening the stream on errors, until the session ends;
/// ends it as expired when no refresh got through before the lease's deadline.
async fn keep_alive(
    mut client: Client,
    lease: i64,
    ttl: Duration,
    granted_at: Instant,
    ended: LostSignal,
    ended_watch: LostWatch,
) {
    let mut deadline = granted_at + ttl;
    let mut retry = Duration::from_millis(50);
    loop {
        let sent_at = Instant::now();
        let opened = tokio::select! {
            biased;
            _ = ended_watch.wait() => return,
            () = sleep_until(deadline) => break,
            opened = client.lease_keep_alive(lease) => opened,
        };
        let (mut keeper, mut stream) = match opened {
            Ok(pair) => pair,
            Err(etcd_client::Error::LeaseKeepAliveError(message)) => {
                tracing::warn!(lease = %format!("{lease:x}"), %message, "etcd lease is gone");
                break;
            }
            Err(err) => {
                tracing::debug!(lease = %format!("{lease:x}"), %err, "keepalive failed; retrying");
                tokio::select! {
                    biased;
                    _ = ended_watch.wait() => return,
                    () = sleep_until(deadline) => break,
                    () = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(MAX_RETRY);
                continue;
            }
        };
        // Opening the stream refreshed the lease.
        deadline = deadline.max(sent_at + ttl);
        retry = Duration::from_millis(50);
        let mut sent_at = sent_at;
        let mut next_send = sent_at + ttl / 3;
        let lease_gone = loop {
            tokio::select! {
                biased;
                _ = ended_watch.wait() => return,
                () = sleep_until(deadline) => break true,
                reply = stream.message() => match reply {
                    Ok(Some(reply)) if reply.ttl() > 0 => {
                        let granted = Duration::from_secs(reply.ttl().unsigned_abs());
                        deadline = deadline.max(sent_at + granted);
                    }
                    Ok(Some(_)) => break true,
                    Ok(None) | Err(_) => break false,
                },
                () = sleep_until(next_send) => {
                    sent_at = Instant::now();
                    next_send = sent_at + ttl / 3;
                    if keeper.keep_alive().await.is_err() {
                        break false;
                    }
                }
            }
        };
        if lease_gone {
            break;
        }
    }
    ended.mark(LossReason::Expired);
}
