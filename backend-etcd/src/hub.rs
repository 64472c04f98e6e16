//! One gRPC watch stream per session, shared by every wait and every hold of that session.
//!
//! A task owns the stream. Subscribers ask it to watch one key from a revision and hear back
//! once: created, then deleted, or "read again" when the watch could not go on (compaction,
//! a broken, stalled or refused stream). A subscriber to a range of keys hears every delete
//! in it until it leaves or is told to read again. Dropping a subscription cancels its watch.
//!
//! # Reading never waits for sending
//! Creates, cancels and progress requests go to a sender task of their own, through an
//! unbounded queue, so the hub task is always free to read. Were it to wait on a send while
//! etcd waits for it to read a burst of events, HTTP/2 flow control would stall both sides for
//! good.
//!
//! # A stalled member
//! A stream through a member that stopped answering (SIGSTOP, a half-open connection) says
//! nothing, which looks like a quiet stream. So while watches exist, a stream that has been
//! silent for [`PROBE_AFTER`] gets a progress request, which etcd answers at once; no answer
//! within [`PROBE_DEADLINE`] resets the stream. Every subscriber then reads again, and the
//! next stream opens through the next endpoint, with a client of its own per endpoint (the
//! session's balanced channel may well pick the stalled member again). The stalled endpoint is
//! also taken out of the session's balanced channel, so that the reads that follow a reset go
//! elsewhere, and put back once it answers again.
//!
//! # A refused create
//! etcd checks a stream's auth token on every create; a simple token expires after
//! `--auth-token-ttl` without use, so a quiet stream's creates end up refused. The hub then
//! resets the stream and opens the next one with a fresh token. Reopening backs off while
//! streams keep failing.
//!
//! # Watching "from now" on etcd
//! etcd turns a create without a start revision into "from the revision I just read + 1" and
//! registers the watcher a moment later. A write that commits in between leaves the watcher
//! behind the store, "unsynced": its events then wait for etcd's 100 ms catch-up loop. Under
//! contention that hit 1–2% of waits and cost those handoffs 70–100 ms. So a watch from now is
//! asked for twice, back to back on the stream. etcd serves a stream's creates in order, so if
//! both creates report the same revision no write came between the first watcher's
//! registration and the second's read: the first is synced and the twin is cancelled at once.
//! If they differ, both stay; the twin, registered after that write, misses its delete only if
//! yet another write races it too.

mod registry;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, WatchRequestSender, WatchResponse, WatchResponseStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::{sleep_until, Instant};

use crate::config::EtcdConfig;
use crate::retry::{attempt_timeout, Backoff};
use registry::{Registry, Reply, Request, Target};

/// How long a stream with watches may stay silent before it is asked for progress.
const PROBE_AFTER: Duration = Duration::from_millis(500);
/// How long etcd may take to answer a progress request before the stream counts as stalled.
const PROBE_DEADLINE: Duration = Duration::from_secs(1);
/// How often an endpoint taken out of the balanced channel is asked whether it answers again.
const HEALTH_CHECK_EVERY: Duration = Duration::from_secs(1);

/// What a subscriber hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// The server has registered the watch: nothing from `from` on can be missed now.
    Created,
    /// The key was deleted (a watch of one key; it ends here).
    Deleted,
    /// Keys of a watched range were deleted, in revision order (a range watch goes on).
    Deletes(Vec<Deletion>),
    /// Keys of a range watched with its puts changed, in revision order (it goes on).
    Changes(Vec<Change>),
    /// The watch ended without a delete: read the key again and decide.
    Reread,
}

/// One delete event of a watched range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Deletion {
    pub(crate) key: Vec<u8>,
    /// The revision of the delete.
    pub(crate) revision: i64,
}

/// One event of a range watched with its puts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) key: Vec<u8>,
    /// The value put; empty for a delete.
    pub(crate) value: Vec<u8>,
    /// The key's create revision; 0 for a delete.
    pub(crate) create_revision: i64,
    /// The revision of the event.
    pub(crate) revision: i64,
}

impl Change {
    /// True for a delete.
    pub(crate) fn is_delete(&self) -> bool {
        self.create_revision == 0
    }
}

enum Command {
    Watch {
        id: u64,
        target: Target,
        notices: mpsc::UnboundedSender<Notice>,
    },
    Cancel {
        id: u64,
    },
    /// Endpoint `index`, taken out of the balanced channel, answers again.
    Healthy {
        index: usize,
    },
}

/// The handle to a session's watch task; the task ends when the last handle is dropped.
#[derive(Clone)]
pub(crate) struct WatchHub {
    commands: mpsc::UnboundedSender<Command>,
    next_id: Arc<AtomicU64>,
}

/// One watched key; dropping it cancels the watch.
pub(crate) struct Subscription {
    id: u64,
    notices: mpsc::UnboundedReceiver<Notice>,
    commands: mpsc::UnboundedSender<Command>,
}

impl WatchHub {
    /// Starts the watch task of the session whose balanced client is `client`, connected with
    /// `config`, on `runtime`.
    pub(crate) fn start(
        client: Client,
        config: &EtcdConfig,
        runtime: &tokio::runtime::Handle,
    ) -> Self {
        let (commands, requests) = mpsc::unbounded_channel();
        let endpoints = Endpoints::new(client, config, commands.downgrade());
        runtime.spawn(run(endpoints, requests));
        WatchHub {
            commands,
            next_id: Arc::default(),
        }
    }

    /// Watches `key` for a delete at or after revision `from` (0: from now).
    pub(crate) fn watch(&self, key: &[u8], from: i64) -> Subscription {
        self.subscribe(Target {
            key: key.to_owned(),
            range_end: Vec::new(),
            from,
            puts: false,
        })
    }

    /// Watches the keys in `[start, end)` from now for deletes (puts are not sent at all):
    /// the subscriber hears `Created`, then every delete, until it drops the subscription
    /// or hears `Reread`. `Created` comes once both watches of the twin pair exist (or the
    /// twin turned out needless), and from then on each watch delivers every delete, in
    /// revision order: a read made after `Created` plus the deletes with a newer revision
    /// tell the state of every key in the range. The two watches' deliveries interleave: a
    /// delete may come twice, and one watch's later delete before the other's earlier one.
    pub(crate) fn watch_deletes(&self, start: &[u8], end: &[u8]) -> Subscription {
        self.subscribe(Target {
            key: start.to_owned(),
            range_end: end.to_owned(),
            from: 0,
            puts: false,
        })
    }

    /// Watches every put and delete of the keys in `[start, end)` from revision `from` (> 0,
    /// the revision after a read of the range): the subscriber hears `Created`, then each
    /// reply's events as [`Notice::Changes`], in revision order, until it drops the
    /// subscription or hears `Reread` (compaction, a reset stream: read the range again).
    pub(crate) fn watch_changes(&self, start: &[u8], end: &[u8], from: i64) -> Subscription {
        self.subscribe(Target {
            key: start.to_owned(),
            range_end: end.to_owned(),
            from: from.max(1),
            puts: true,
        })
    }

    fn subscribe(&self, target: Target) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (notices_tx, notices) = mpsc::unbounded_channel();
        // If the task is gone the subscription hears nothing but `Reread` (see `next`).
        let _ = self.commands.send(Command::Watch {
            id,
            target,
            notices: notices_tx,
        });
        Subscription {
            id,
            notices,
            commands: self.commands.clone(),
        }
    }
}

impl Subscription {
    /// The next notice; `Reread` once the watch task is gone.
    pub(crate) async fn next(&mut self) -> Notice {
        self.notices.recv().await.unwrap_or(Notice::Reread)
    }

    /// Polls for the next notice, as [`next`](Self::next).
    fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Notice> {
        self.notices
            .poll_recv(cx)
            .map(|notice| notice.unwrap_or(Notice::Reread))
    }
}

/// The next notice of any of `subscriptions`, with the index of the one it came from.
pub(crate) async fn next_of(subscriptions: &mut [Subscription]) -> (usize, Notice) {
    std::future::poll_fn(|cx| {
        for (index, subscription) in subscriptions.iter_mut().enumerate() {
            if let std::task::Poll::Ready(notice) = subscription.poll_next(cx) {
                return std::task::Poll::Ready((index, notice));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Cancel { id: self.id });
    }
}

/// One endpoint of the session: its URL and, once needed, a client of its own.
struct Endpoint {
    url: String,
    client: Option<Client>,
    /// False while it is taken out of the session's balanced channel.
    balanced: bool,
}

/// The session's endpoints, the one the stream goes through, and the session's balanced client.
struct Endpoints {
    session: Client,
    options: Option<ConnectOptions>,
    list: Vec<Endpoint>,
    current: usize,
    ttl: Duration,
    /// For health checks, which must not keep the task alive.
    commands: mpsc::WeakUnboundedSender<Command>,
}

impl Endpoints {
    fn new(
        session: Client,
        config: &EtcdConfig,
        commands: mpsc::WeakUnboundedSender<Command>,
    ) -> Self {
        let urls = config.endpoint_urls();
        // One endpoint: the session's own client is that endpoint's client.
        let single = urls.len() == 1;
        let list = urls
            .into_iter()
            .map(|url| Endpoint {
                url,
                client: single.then(|| session.clone()),
                balanced: true,
            })
            .collect();
        Endpoints {
            // The options were accepted when the session connected; without them the hub uses
            // the session's client for every stream.
            options: config.connect_options().ok(),
            session,
            list,
            current: 0,
            ttl: config.ttl(),
            commands,
        }
    }

    /// Opens a stream through the current endpoint with its first create, refreshing the
    /// auth token first if `refresh`; gives up after an attempt timeout.
    fn open(&self, target: Target, refresh: bool) -> Opening {
        let index = self.current;
        let known = match self.list.get(index) {
            Some(endpoint) => endpoint.client.clone(),
            None => Some(self.session.clone()),
        };
        let url = self.list.get(index).map(|e| e.url.clone());
        let options = self.options.clone();
        let timeout = attempt_timeout(self.ttl);
        let session = self.session.clone();
        Box::pin(async move {
            let attempt = async {
                let client = match (known, url, options) {
                    (Some(client), _, _) => {
                        if refresh {
                            client.refresh_token().await?;
                        }
                        client
                    }
                    // Connecting authenticates: the token is fresh.
                    (None, Some(url), Some(options)) => {
                        crate::transport::connect([url], Some(options)).await?
                    }
                    (None, _, _) => session,
                };
                let options = target.options();
                let stream = client.clone().watch(target.key, Some(options)).await?;
                Ok::<_, etcd_client::Error>((client, stream.split()))
            };
            match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok((client, (sender, responses)))) => Opened {
                    index,
                    client: Some(client),
                    stream: Some((sender, responses)),
                },
                Ok(Err(err)) => {
                    tracing::debug!(%err, "etcd watch stream did not open");
                    Opened {
                        index,
                        client: None,
                        stream: None,
                    }
                }
                Err(_) => {
                    tracing::debug!("etcd watch stream did not open in time");
                    Opened {
                        index,
                        client: None,
                        stream: None,
                    }
                }
            }
        })
    }

    /// Keeps the client an opening connected.
    fn remember(&mut self, index: usize, client: Client) {
        if let Some(endpoint) = self.list.get_mut(index) {
            endpoint.client.get_or_insert(client);
        }
    }

    /// The next stream goes through the next endpoint.
    fn rotate(&mut self) {
        if !self.list.is_empty() {
            self.current = (self.current + 1) % self.list.len();
        }
    }

    /// Endpoint `index` stopped answering: takes it out of the session's balanced channel
    /// (never the last one) until a health check finds it answering again.
    async fn suspect(&mut self, index: usize) {
        let balanced = self.list.iter().filter(|e| e.balanced).count();
        let Some(endpoint) = self.list.get_mut(index) else {
            return;
        };
        if !endpoint.balanced || balanced < 2 {
            return;
        }
        if self.session.remove_endpoint(&endpoint.url).await.is_err() {
            return;
        }
        tracing::warn!(endpoint = %endpoint.url, "etcd member does not answer; avoiding it");
        endpoint.balanced = false;
        tokio::spawn(health_check(
            self.commands.clone(),
            index,
            endpoint.url.clone(),
            endpoint.client.clone(),
            self.options.clone(),
        ));
    }

    /// Endpoint `index` answers again: back into the balanced channel.
    async fn restore(&mut self, index: usize) {
        if let Some(endpoint) = self.list.get_mut(index) {
            if !endpoint.balanced && self.session.add_endpoint(&endpoint.url).await.is_ok() {
                tracing::info!(endpoint = %endpoint.url, "etcd member answers again");
                endpoint.balanced = true;
            }
        }
    }
}

/// Asks a suspected endpoint for its status every [`HEALTH_CHECK_EVERY`] until it answers,
/// then tells the hub; ends with the hub.
async fn health_check(
    commands: mpsc::WeakUnboundedSender<Command>,
    index: usize,
    url: String,
    client: Option<Client>,
    options: Option<ConnectOptions>,
) {
    let mut client = client;
    loop {
        tokio::time::sleep(HEALTH_CHECK_EVERY).await;
        if commands.upgrade().is_none() {
            return;
        }
        let probe = async {
            let mut probed = match client.take() {
                Some(known) => known,
                None => crate::transport::connect([url.as_str()], options.clone()).await?,
            };
            let status = probed.status().await;
            client = Some(probed);
            status
        };
        if let Ok(Ok(_)) = tokio::time::timeout(PROBE_DEADLINE, probe).await {
            if let Some(commands) = commands.upgrade() {
                let _ = commands.send(Command::Healthy { index });
            }
            return;
        }
    }
}

/// A stream being opened.
type Opening = Pin<Box<dyn Future<Output = Opened> + Send>>;

/// How opening a stream went.
struct Opened {
    index: usize,
    /// The endpoint's client, to keep.
    client: Option<Client>,
    stream: Option<(WatchRequestSender, WatchResponseStream)>,
}

/// An open stream.
struct Live {
    /// The sender task's queue.
    outgoing: mpsc::UnboundedSender<Request>,
    sender_task: AbortHandle,
    responses: WatchResponseStream,
    /// When the stream last said anything.
    last_heard: Instant,
    /// When an unanswered progress request makes the stream count as stalled.
    probe_deadline: Option<Instant>,
}

impl Live {
    fn new(sender: WatchRequestSender, responses: WatchResponseStream) -> Self {
        let (outgoing, queue) = mpsc::unbounded_channel();
        let sender_task = tokio::spawn(send_requests(sender, queue)).abort_handle();
        Live {
            outgoing,
            sender_task,
            responses,
            last_heard: Instant::now(),
            probe_deadline: None,
        }
    }

    /// When the liveness check is due: the probe's deadline, or the moment to send one.
    fn check_at(&self) -> Instant {
        self.probe_deadline.unwrap_or(self.last_heard + PROBE_AFTER)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.sender_task.abort();
    }
}

/// Sends the hub's requests on the stream, in order, until the stream or the hub goes.
async fn send_requests(
    mut sender: WatchRequestSender,
    mut queue: mpsc::UnboundedReceiver<Request>,
) {
    while let Some(request) = queue.recv().await {
        let sent = match request {
            Request::Create(target) => {
                let options = target.options();
                sender.watch(target.key, Some(options)).await
            }
            Request::Cancel { watch_id } => sender.cancel(watch_id).await,
            Request::Progress => sender.request_progress().await,
        };
        if sent.is_err() {
            // The stream is gone; the hub learns it from the response side.
            return;
        }
    }
}

/// Why a stream is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// It broke or did not open: try the next endpoint.
    Broken,
    /// It did not answer a progress request: the member is suspect.
    Stalled,
    /// etcd refused a create on it: open the next one with a fresh token.
    Refused,
}

impl Failure {
    /// The `cause` label of the reset metric.
    fn label(&self) -> &'static str {
        match self {
            Failure::Broken => "broken",
            Failure::Stalled => "stalled",
            Failure::Refused => "refused",
        }
    }
}

/// The hub task's state.
struct Hub {
    endpoints: Endpoints,
    registry: Registry,
    live: Option<Live>,
    opening: Option<Opening>,
    /// Refresh the auth token before opening the next stream.
    refresh: bool,
    /// No stream opens before then (backoff after failures).
    reopen_at: Instant,
    backoff: Backoff,
}

async fn run(endpoints: Endpoints, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut hub = Hub {
        endpoints,
        registry: Registry::default(),
        live: None,
        opening: None,
        refresh: false,
        reopen_at: Instant::now(),
        backoff: Backoff::default(),
    };
    loop {
        hub.flush();
        let wants_stream = hub.live.is_none() && hub.opening.is_none() && !hub.registry.is_idle();
        let check_at = hub
            .live
            .as_ref()
            .filter(|_| !hub.registry.is_idle())
            .map(Live::check_at);
        tokio::select! {
            biased;
            reply = next_reply(&mut hub.live) => match reply {
                Some(reply) => hub.reply(&reply).await,
                None => hub.fail(Failure::Broken).await,
            },
            opened = poll_opening(&mut hub.opening) => hub.opened(opened).await,
            command = commands.recv() => match command {
                None => return,
                Some(Command::Watch { id, target, notices }) => {
                    hub.registry.subscribe(id, target, notices);
                }
                Some(Command::Cancel { id }) => hub.registry.unsubscribe(id),
                Some(Command::Healthy { index }) => hub.endpoints.restore(index).await,
            },
            () = sleep_until(hub.reopen_at), if wants_stream => hub.open(),
            () = sleep_until(check_at.unwrap_or(hub.reopen_at)), if check_at.is_some() => {
                hub.check_liveness().await;
            }
        }
    }
}

async fn next_reply(live: &mut Option<Live>) -> Option<WatchResponse> {
    match live {
        Some(live) => match live.responses.message().await {
            Ok(reply) => reply,
            Err(err) => {
                tracing::debug!(%err, "etcd watch stream failed");
                None
            }
        },
        None => std::future::pending().await,
    }
}

async fn poll_opening(opening: &mut Option<Opening>) -> Opened {
    match opening {
        Some(future) => {
            let opened = future.await;
            *opening = None;
            opened
        }
        None => std::future::pending().await,
    }
}

impl Hub {
    /// Hands the registry's requests to the sender task (they wait while a stream opens).
    fn flush(&mut self) {
        let Some(live) = &self.live else {
            return;
        };
        while let Some(request) = self.registry.next_request() {
            if live.outgoing.send(request).is_err() {
                // The sender task ended: the response side reports the broken stream.
                return;
            }
        }
    }

    /// Opens a stream with the first create waiting.
    fn open(&mut self) {
        // Only creates wait while no stream is open; anything else was for a gone stream.
        while let Some(request) = self.registry.next_request() {
            if let Request::Create(target) = request {
                self.opening = Some(self.endpoints.open(target, self.refresh));
                self.refresh = false;
                return;
            }
        }
        // Nothing to create: nobody can be waiting on a stream that will not open.
        self.registry.reset();
    }

    async fn opened(&mut self, opened: Opened) {
        if let Some(client) = opened.client {
            self.endpoints.remember(opened.index, client);
        }
        match opened.stream {
            Some((sender, responses)) => self.live = Some(Live::new(sender, responses)),
            None => self.fail(Failure::Broken).await,
        }
    }

    async fn reply(&mut self, reply: &WatchResponse) {
        let reply = Reply::from(reply);
        if let Some(live) = &mut self.live {
            live.last_heard = Instant::now();
            live.probe_deadline = None;
        }
        if reply.created && !reply.canceled {
            self.backoff.reset();
        }
        if self.registry.reply(reply) {
            self.fail(Failure::Refused).await;
        }
    }

    /// Sends a progress request to a silent stream, or gives up a stream that did not answer.
    async fn check_liveness(&mut self) {
        let Some(live) = &mut self.live else {
            return;
        };
        let now = Instant::now();
        match live.probe_deadline {
            Some(deadline) if now >= deadline => self.fail(Failure::Stalled).await,
            Some(_) => {}
            None if now >= live.last_heard + PROBE_AFTER => {
                live.probe_deadline = Some(now + PROBE_DEADLINE);
                self.registry.request_progress();
            }
            None => {}
        }
    }

    /// Gives the stream up: every subscriber reads again, and the next stream opens after a
    /// pause, through the next endpoint unless only the token was stale.
    async fn fail(&mut self, failure: Failure) {
        tracing::debug!(?failure, "etcd watch stream reset");
        locksmith_api::instrument::watch_stream_reset("etcd", failure.label());
        self.live = None;
        self.opening = None;
        self.registry.reset();
        match failure {
            Failure::Refused => self.refresh = true,
            Failure::Stalled => {
                self.endpoints.suspect(self.endpoints.current).await;
                self.endpoints.rotate();
            }
            Failure::Broken => self.endpoints.rotate(),
        }
        self.reopen_at = Instant::now() + self.backoff.next_delay();
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::testing::EtcdServer;
    use etcd_client::{Txn, TxnOp};

    const GUARD: Duration = Duration::from_secs(90);

    async fn next_within(subscription: &mut Subscription) -> Notice {
        match tokio::time::timeout(GUARD, subscription.next()).await {
            Ok(notice) => notice,
            Err(_) => panic!("no notice within {GUARD:?}"),
        }
    }

    /// Issue 10, finding 10: a burst of events on watched keys (80 MB: 100 watches on each of
    /// 10 keys, 8 KB puts) while tens of thousands of creates and cancels go out on the same
    /// stream. Every watch still hears its delete: the hub never stops reading to send.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_events_during_creates_and_cancels_does_not_stall_the_stream() {
        const KEYS: usize = 10;
        const PER_KEY: usize = 100;
        const ROUNDS: usize = 10;
        const CHURN: usize = 20_000;
        let server = EtcdServer::start().expect("etcd");
        let config = EtcdConfig::new([server.endpoint()]);
        let client = Client::connect([server.client_url()], None)
            .await
            .expect("connect");
        let hub = WatchHub::start(client.clone(), &config, &tokio::runtime::Handle::current());
        let keys: Vec<Vec<u8>> = (0..KEYS)
            .map(|i| format!("burst/{i:04}").into_bytes())
            .collect();
        let mut writer = client.clone();
        let start = writer.put("burst/start", "", None).await.expect("put");
        let from = start.header().map_or(1, |h| h.revision()) + 1;
        let mut watched: Vec<Subscription> = (0..KEYS * PER_KEY)
            .map(|i| hub.watch(&keys[i % KEYS], from))
            .collect();
        for subscription in &mut watched {
            assert_eq!(next_within(subscription).await, Notice::Created);
        }

        let value = vec![b'x'; 8 * 1024];
        let burst = {
            let (keys, mut writer) = (keys.clone(), client.clone());
            tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    let puts: Vec<TxnOp> = keys
                        .iter()
                        .map(|k| TxnOp::put(k.clone(), value.clone(), None))
                        .collect();
                    writer.txn(Txn::new().and_then(puts)).await.expect("txn");
                }
            })
        };
        // Meanwhile: tens of thousands of creates (twins: from now), then as many cancels.
        let churn = {
            let (hub, keys) = (hub.clone(), keys.clone());
            tokio::spawn(async move {
                let mut batch: Vec<Subscription> =
                    (0..CHURN).map(|i| hub.watch(&keys[i % KEYS], 0)).collect();
                let mut last = batch.pop().expect("not empty");
                assert_eq!(next_within(&mut last).await, Notice::Created);
            })
        };
        tokio::time::timeout(GUARD, burst)
            .await
            .expect("the writer finished")
            .expect("writer");
        tokio::time::timeout(GUARD, churn)
            .await
            .expect("the churn finished")
            .expect("churn");
        for chunk in keys.chunks(KEYS) {
            let deletes: Vec<TxnOp> = chunk
                .iter()
                .map(|k| TxnOp::delete(k.clone(), None))
                .collect();
            writer
                .txn(Txn::new().and_then(deletes))
                .await
                .expect("delete");
        }
        // Every watch ends: with its delete, or with `Reread` where the burst of small replies
        // outran h2's budget for unread DATA frames (h2 then closes the connection).
        for subscription in &mut watched {
            let notice = next_within(subscription).await;
            assert_ne!(notice, Notice::Created);
        }
        // And the hub still serves watches.
        writer.put("burst/after", "", None).await.expect("put");
        let mut after = hub.watch(b"burst/after", 0);
        assert_eq!(next_within(&mut after).await, Notice::Created);
        writer.delete("burst/after", None).await.expect("delete");
        assert_eq!(next_within(&mut after).await, Notice::Deleted);
    }
}
