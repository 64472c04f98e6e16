//! The client session: one lease, kept alive in the background, whose end every guard and
//! waiter of the session learns of.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, LeaseKeepAliveStream, LeaseKeeper};
use locksmith_api::instrument::{self, SessionTelemetry};
use locksmith_api::{LockError, LockTable, LossReason, LostSignal, LostWatch};
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::time::{sleep_until, Instant};

use crate::config::EtcdConfig;
use crate::election::Observed;
use crate::error::{from_etcd, is_lease_gone};
use crate::hub::WatchHub;
use crate::retry::{attempt_timeout, Backoff};
use crate::sweep::UnsurePuts;

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
    /// Queue puts that may still land after their attempt gave up (see `sweep.rs`).
    pub(crate) unsure: Arc<UnsurePuts>,
    /// The leader feeds of the names this session observes (see `election.rs`).
    pub(crate) observed: Arc<Observed>,
    /// Spans and metrics of the session's acquisitions.
    pub(crate) telemetry: SessionTelemetry,
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
    /// The earliest moment etcd may expire the lease: the TTL counted from the sending of the
    /// last keepalive etcd answered (etcd counts from its receipt, later). A lease etcd no
    /// longer knows before then was revoked, not expired.
    lease_deadline: Mutex<Instant>,
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
        let urls = config.endpoint_urls();
        let options = config.connect_options()?;
        let ttl = config.ttl();
        let timeout = config.connect_timeout();
        let grant = async {
            let mut client = crate::transport::connect(&urls, Some(options.clone()))
                .await
                .map_err(|err| from_etcd(err, &endpoints, "connect"))?;
            // With several endpoints a member that refuses or does not answer is passed over:
            // the grant is tried again (within the connect timeout), and the transport sends
            // the next attempt elsewhere (a refusing member counts as failed, one that let an
            // attempt time out in silence as suspect).
            let several = urls.len() > 1;
            // Short attempts: a silent first member costs at most one of them.
            let per_attempt = if several {
                crate::retry::attempt_timeout(ttl).min(Duration::from_secs(1))
            } else {
                crate::retry::attempt_timeout(ttl)
            };
            let mut backoff = crate::retry::Backoff::default();
            loop {
                let asked_at = Instant::now();
                let asked = client.lease_grant(ttl.as_secs() as i64, None);
                match tokio::time::timeout(per_attempt, asked).await {
                    Ok(Ok(lease)) => return Ok::<_, LockError>((client, lease.id(), asked_at)),
                    Ok(Err(err))
                        if several
                            && crate::retry::classify(&err)
                                == crate::retry::ErrorKind::Transient =>
                    {
                        tracing::debug!(%err, "etcd lease grant failed; trying again");
                    }
                    Ok(Err(err)) => return Err(from_etcd(err, &endpoints, "grant a lease")),
                    Err(_) if several => {
                        tracing::debug!("etcd lease grant unanswered; trying again")
                    }
                    Err(_) => {
                        return Err(LockError::Unavailable {
                            backend: "etcd",
                            endpoint: endpoints.clone(),
                            after: Some(per_attempt),
                            source: "no answer to the lease grant".into(),
                        })
                    }
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        };
        let (client, lease_id, asked_at) = match tokio::time::timeout(timeout, grant).await {
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
        let telemetry = SessionTelemetry::start("etcd", format!("{lease_id:x}"), &ended_watch);
        let link = Arc::new(Link {
            watches: WatchHub::start(client.clone(), config, &runtime),
            client,
            lease_id,
            ttl,
            endpoints,
            ended,
            ended_watch,
            lease_deadline: Mutex::new(asked_at + ttl),
        });
        runtime.spawn(KeepAlive::new(Arc::clone(&link), urls, options).run());
        Ok(Arc::new(Session {
            link,
            namespace: config.namespace.clone(),
            runtime,
            local: LockTable::new(),
            unsure: Arc::default(),
            observed: Arc::default(),
            telemetry,
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

    /// Ends the session because etcd no longer knows its lease: revoked (by an operator,
    /// another client) if that happens before the lease could have expired, else expired.
    pub(crate) fn lease_gone(&self) -> LockError {
        let reason = if Instant::now() < self.lease_deadline() {
            LossReason::Revoked
        } else {
            LossReason::Expired
        };
        self.ended.mark(reason);
        self.lost_error(self.ended_watch.reason().unwrap_or(reason))
    }

    /// The earliest moment etcd may expire the lease, as far as this client knows.
    fn lease_deadline(&self) -> Instant {
        *self.lease_deadline.lock()
    }

    /// Records that etcd renewed the lease until at least `deadline`.
    fn extend_lease_deadline(&self, deadline: Instant) {
        let mut current = self.lease_deadline.lock();
        if deadline > *current {
            *current = deadline;
        }
    }

    /// Ends the session because a cleanup could not complete, and revokes its lease so that
    /// its keys go and its locks pass on. If etcd cannot be told, the keepalive has stopped and
    /// the lease expires with its TTL.
    pub(crate) async fn abandon(&self) {
        if self.ended.mark(LossReason::Revoked) {
            let mut client = self.client.clone();
            let _ = crate::retry::attempt(self, client.lease_revoke(self.lease_id)).await;
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

/// The lease's keepalive: a request every TTL/3 on one stream to one endpoint at a time.
///
/// A stream that fails, or whose reply is overdue (a stalled member, a half-open connection),
/// is given up and reopened through the next endpoint, on a client of its own connected to
/// that endpoint alone: the session's balanced client could pick the stalled member again.
/// Each reply extends the lease's deadline from the sending of its own request.
///
/// The session ends when the keepalive does: as expired when no refresh got through before
/// the deadline, as revoked when etcd no longer knows the lease before it, and as expired when
/// the keepalive task is dropped unfinished (its runtime shut down: nothing keeps the lease
/// alive any more, and etcd expires it within its TTL).
struct KeepAlive {
    link: Arc<Link>,
    /// The endpoints' URLs, tried in this order, round and round.
    endpoints: Vec<String>,
    options: ConnectOptions,
    /// The index in `endpoints` of the endpoint in use.
    current: usize,
    /// A client of that endpoint alone, once connected.
    client: Option<Client>,
}

/// A keepalive stream, open.
struct OpenStream {
    keeper: LeaseKeeper,
    replies: LeaseKeepAliveStream,
    /// When its first request was sent (etcd's answer to it opened the stream).
    opened_at: Instant,
}

/// How one keepalive stream ended.
enum StreamEnd {
    /// The session ended elsewhere (closed, or etcd told a waiter its lease is gone).
    SessionEnded,
    /// The deadline passed without a refresh.
    Expired,
    /// etcd no longer knows the lease.
    LeaseGone,
    /// The stream failed or a reply is overdue: go on through the next endpoint.
    Failed(String),
}

impl KeepAlive {
    fn new(link: Arc<Link>, endpoints: Vec<String>, options: ConnectOptions) -> Self {
        KeepAlive {
            link,
            endpoints,
            options,
            current: 0,
            client: None,
        }
    }

    /// Keeps the lease alive until the session ends, and ends it if the lease goes.
    async fn run(mut self) {
        let mut backoff = Backoff::default();
        let end = loop {
            let end = match self.open().await {
                Ok(stream) => {
                    backoff.reset();
                    self.refresh(stream).await
                }
                Err(end) => end,
            };
            let StreamEnd::Failed(why) = end else {
                break end;
            };
            tracing::debug!(
                session = %self.link.id(),
                endpoint = %self.endpoints.get(self.current).map_or("", String::as_str),
                %why,
                "keepalive stream failed; reopening it through the next endpoint"
            );
            self.client = None;
            self.current = (self.current + 1) % self.endpoints.len().max(1);
            let pause = Instant::now() + backoff.next_delay();
            if let Some(end) = self.wait_until(pause).await {
                break end;
            }
        };
        match end {
            StreamEnd::Expired => {
                self.link.ended.mark(LossReason::Expired);
            }
            StreamEnd::LeaseGone => {
                let session = self.link.lease_gone();
                tracing::warn!(%session, "etcd lease is gone");
            }
            StreamEnd::SessionEnded | StreamEnd::Failed(_) => {}
        }
    }

    /// Waits until `at`, unless the session ends or the lease's deadline passes first.
    async fn wait_until(&self, at: Instant) -> Option<StreamEnd> {
        tokio::select! {
            biased;
            _ = self.link.ended_watch.wait() => Some(StreamEnd::SessionEnded),
            () = sleep_until(self.link.lease_deadline()) => Some(StreamEnd::Expired),
            () = sleep_until(at) => None,
        }
    }

    /// Opens a keepalive stream through the current endpoint: etcd's answer to its first
    /// request refreshes the lease. An open that takes longer than a reply may counts as failed.
    async fn open(&mut self) -> Result<OpenStream, StreamEnd> {
        let sent_at = Instant::now();
        let link = Arc::clone(&self.link);
        let opening = tokio::time::timeout(attempt_timeout(link.ttl), self.open_stream());
        let opened = tokio::select! {
            biased;
            _ = link.ended_watch.wait() => return Err(StreamEnd::SessionEnded),
            () = sleep_until(link.lease_deadline()) => return Err(StreamEnd::Expired),
            opened = opening => opened,
        };
        match opened {
            Ok(Ok((keeper, stream))) => {
                link.extend_lease_deadline(sent_at + link.ttl);
                instrument::keepalive_latency("etcd", sent_at.elapsed());
                Ok(OpenStream {
                    keeper,
                    replies: stream,
                    opened_at: sent_at,
                })
            }
            Ok(Err(err)) if is_lease_unknown(&err) => Err(StreamEnd::LeaseGone),
            Ok(Err(err)) => Err(StreamEnd::Failed(err.to_string())),
            Err(_) => Err(StreamEnd::Failed("no answer in time".to_owned())),
        }
    }

    async fn open_stream(
        &mut self,
    ) -> Result<(LeaseKeeper, LeaseKeepAliveStream), etcd_client::Error> {
        let mut client = match &self.client {
            Some(client) => client.clone(),
            None => {
                let endpoint = self
                    .endpoints
                    .get(self.current)
                    .cloned()
                    .unwrap_or_default();
                let client =
                    crate::transport::connect([endpoint], Some(self.options.clone())).await?;
                self.client = Some(client.clone());
                client
            }
        };
        client.lease_keep_alive(self.link.lease_id).await
    }

    /// Sends a request every TTL/3 on an open stream and credits each reply to its own
    /// request, until the stream fails, a reply is overdue, or the session ends.
    async fn refresh(&self, stream: OpenStream) -> StreamEnd {
        let OpenStream {
            mut keeper,
            mut replies,
            opened_at,
        } = stream;
        let link = &self.link;
        let every = link.ttl / 3;
        let overdue = attempt_timeout(link.ttl);
        // When each unanswered request was sent: etcd answers a stream's requests in order.
        let mut unanswered: VecDeque<Instant> = VecDeque::new();
        let mut next_send = opened_at + every;
        loop {
            let oldest = unanswered.front().copied();
            tokio::select! {
                biased;
                _ = link.ended_watch.wait() => return StreamEnd::SessionEnded,
                () = sleep_until(link.lease_deadline()) => return StreamEnd::Expired,
                reply = replies.message() => match reply {
                    Ok(Some(reply)) if reply.ttl() > 0 => {
                        let granted = Duration::from_secs(reply.ttl().unsigned_abs());
                        if let Some(sent_at) = unanswered.pop_front() {
                            link.extend_lease_deadline(sent_at + granted);
                            instrument::keepalive_latency("etcd", sent_at.elapsed());
                        }
                    }
                    Ok(Some(_)) => return StreamEnd::LeaseGone,
                    Ok(None) => return StreamEnd::Failed("the stream ended".to_owned()),
                    Err(err) => return StreamEnd::Failed(err.to_string()),
                },
                () = sleep_until(oldest.unwrap_or(next_send) + overdue), if oldest.is_some() => {
                    return StreamEnd::Failed(format!("no reply within {overdue:?}"));
                }
                () = sleep_until(next_send) => {
                    let sent_at = Instant::now();
                    if let Err(err) = keeper.keep_alive().await {
                        return StreamEnd::Failed(err.to_string());
                    }
                    unanswered.push_back(sent_at);
                    next_send = sent_at + every;
                }
            }
        }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        // Unfinished (its runtime shut down): nothing refreshes the lease any more.
        self.link.ended.mark(LossReason::Expired);
    }
}

/// True when etcd answered a keepalive for a lease it no longer knows.
fn is_lease_unknown(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("not found"),
        other => is_lease_gone(other),
    }
}
