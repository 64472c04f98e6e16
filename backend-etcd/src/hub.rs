//! One gRPC watch stream per session, shared by every wait and every hold of that session.
//!
//! A task owns the stream. Subscribers ask it to watch one key from a revision and hear back
//! once: created, then deleted, or "read again" when the watch could not go on (compaction,
//! a broken stream). Dropping a subscription cancels its watch on the stream.
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

use std::collections::{HashMap, VecDeque};

use etcd_client::{Client, EventType, WatchOptions, WatchRequestSender, WatchResponse};
use tokio::sync::mpsc;

/// What a subscriber hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notice {
    /// The server has registered the watch: nothing from `from` on can be missed now.
    Created,
    /// The key was deleted.
    Deleted,
    /// The watch ended without a delete: read the key again and decide.
    Reread,
}

enum Command {
    Watch {
        id: u64,
        key: Vec<u8>,
        from: i64,
        notices: mpsc::UnboundedSender<Notice>,
    },
    Cancel {
        id: u64,
    },
}

/// The handle to a session's watch task; the task ends when the last handle is dropped.
#[derive(Clone)]
pub(crate) struct WatchHub {
    commands: mpsc::UnboundedSender<Command>,
    next_id: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// One watched key; dropping it cancels the watch.
pub(crate) struct Subscription {
    id: u64,
    notices: mpsc::UnboundedReceiver<Notice>,
    commands: mpsc::UnboundedSender<Command>,
}

impl WatchHub {
    /// Starts the watch task for `client` on `runtime`.
    pub(crate) fn start(client: Client, runtime: &tokio::runtime::Handle) -> Self {
        let (commands, requests) = mpsc::unbounded_channel();
        runtime.spawn(run(client, requests));
        WatchHub {
            commands,
            next_id: Default::default(),
        }
    }

    /// Watches `key` for a delete at or after revision `from`.
    pub(crate) fn watch(&self, key: &[u8], from: i64) -> Subscription {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (notices_tx, notices) = mpsc::unbounded_channel();
        // If the task is gone the subscription hears nothing but `Reread` (see `next`).
        let _ = self.commands.send(Command::Watch {
            id,
            key: key.to_owned(),
            from,
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
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Cancel { id: self.id });
    }
}

/// A subscriber as the task knows it.
struct Watcher {
    key: Vec<u8>,
    from: i64,
    notices: mpsc::UnboundedSender<Notice>,
    /// The server's ids of this subscriber's watches, once created.
    watch_ids: Vec<i64>,
    /// The revision etcd reported when creating the first watch (watches from now only).
    first_created_at: Option<i64>,
    /// Creates still in flight for this subscriber.
    in_flight: usize,
}

/// The task's state: the stream (opened lazily), the watchers, and the creates in flight.
struct Task {
    client: Client,
    sender: Option<WatchRequestSender>,
    watchers: HashMap<u64, Watcher>,
    /// Our ids in the order their create requests went out: etcd answers creates on one
    /// stream in order.
    creating: VecDeque<u64>,
    by_watch_id: HashMap<i64, u64>,
}

async fn run(client: Client, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut task = Task {
        client,
        sender: None,
        watchers: HashMap::new(),
        creating: VecDeque::new(),
        by_watch_id: HashMap::new(),
    };
    let mut responses: Option<etcd_client::WatchResponseStream> = None;
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(Command::Watch { id, key, from, notices }) => {
                    let creates = if from == 0 { 2 } else { 1 };
                    task.watchers.insert(id, Watcher {
                        key,
                        from,
                        notices,
                        watch_ids: Vec::new(),
                        first_created_at: None,
                        in_flight: 0,
                    });
                    for _ in 0..creates {
                        if let Err(()) = task.request(id, &mut responses).await {
                            task.reset(&mut responses);
                            break;
                        }
                    }
                }
                Some(Command::Cancel { id }) => task.cancel(id).await,
            },
            reply = next_response(&mut responses) => match reply {
                Some(reply) => task.dispatch(reply).await,
                None => task.reset(&mut responses),
            },
        }
    }
}

async fn next_response(
    responses: &mut Option<etcd_client::WatchResponseStream>,
) -> Option<WatchResponse> {
    match responses {
        Some(stream) => stream.message().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

impl Task {
    /// Sends the create request for watcher `id`, opening the stream if there is none.
    async fn request(
        &mut self,
        id: u64,
        responses: &mut Option<etcd_client::WatchResponseStream>,
    ) -> Result<(), ()> {
        let Some(watcher) = self.watchers.get_mut(&id) else {
            return Ok(());
        };
        let options = WatchOptions::new().with_start_revision(watcher.from);
        let key = watcher.key.clone();
        watcher.in_flight += 1;
        self.creating.push_back(id);
        match &mut self.sender {
            Some(sender) => sender.watch(key, Some(options)).await.map_err(drop),
            None => {
                let stream = self.client.watch(key, Some(options)).await.map_err(drop)?;
                let (sender, receiver) = stream.split();
                self.sender = Some(sender);
                *responses = Some(receiver);
                Ok(())
            }
        }
    }

    async fn cancel(&mut self, id: u64) {
        let Some(watcher) = self.watchers.remove(&id) else {
            return;
        };
        self.cancel_watches(&watcher.watch_ids).await;
        // A create still in flight is cancelled when its answer arrives.
    }

    /// Cancels server watches that nobody needs any more.
    async fn cancel_watches(&mut self, watch_ids: &[i64]) {
        for watch_id in watch_ids {
            self.by_watch_id.remove(watch_id);
            if let Some(sender) = &mut self.sender {
                let _ = sender.cancel(*watch_id).await;
            }
        }
    }

    async fn dispatch(&mut self, reply: WatchResponse) {
        let watch_id = reply.watch_id();
        if reply.created() {
            self.created(watch_id, &reply).await;
            return;
        }
        let Some(&id) = self.by_watch_id.get(&watch_id) else {
            return;
        };
        if reply.canceled() || reply.compact_revision() > 0 {
            self.by_watch_id.remove(&watch_id);
            self.end_watch(id, watch_id);
        } else if reply
            .events()
            .iter()
            .any(|event| event.event_type() == EventType::Delete)
        {
            self.by_watch_id.remove(&watch_id);
            if let Some(watcher) = self.finish(id, Notice::Deleted) {
                self.cancel_watches(&watcher.watch_ids).await;
            }
        }
    }

    /// The answer to the oldest create in flight.
    async fn created(&mut self, watch_id: i64, reply: &WatchResponse) {
        let Some(id) = self.creating.pop_front() else {
            return;
        };
        let revision = reply.header().map_or(0, |h| h.revision());
        let Some(watcher) = self.watchers.get_mut(&id) else {
            // Its subscriber left while the create was in flight.
            self.cancel_watches(&[watch_id]).await;
            return;
        };
        watcher.in_flight = watcher.in_flight.saturating_sub(1);
        if reply.canceled() {
            if watcher.watch_ids.is_empty() && watcher.in_flight == 0 {
                self.finish(id, Notice::Reread);
            }
            return;
        }
        match watcher.first_created_at {
            // The twin of a watch that is known to be synced (see the module docs).
            Some(first) if first == revision => {
                self.cancel_watches(&[watch_id]).await;
            }
            Some(_) => {
                watcher.watch_ids.push(watch_id);
                self.by_watch_id.insert(watch_id, id);
            }
            None => {
                watcher.first_created_at = Some(revision);
                watcher.watch_ids.push(watch_id);
                self.by_watch_id.insert(watch_id, id);
                let _ = watcher.notices.send(Notice::Created);
            }
        }
    }

    /// One of watcher `id`'s watches ended without a delete: the subscriber reads again once
    /// none is left.
    fn end_watch(&mut self, id: u64, watch_id: i64) {
        let Some(watcher) = self.watchers.get_mut(&id) else {
            return;
        };
        watcher.watch_ids.retain(|w| *w != watch_id);
        if watcher.watch_ids.is_empty() && watcher.in_flight == 0 {
            self.finish(id, Notice::Reread);
        }
    }

    /// Tells watcher `id` how its watch ended and forgets it; returns it so that its other
    /// watches can be cancelled.
    fn finish(&mut self, id: u64, notice: Notice) -> Option<Watcher> {
        let watcher = self.watchers.remove(&id)?;
        let _ = watcher.notices.send(notice);
        Some(watcher)
    }

    /// The stream broke: every watcher reads again, and the next watch opens a new stream.
    fn reset(&mut self, responses: &mut Option<etcd_client::WatchResponseStream>) {
        self.sender = None;
        *responses = None;
        self.creating.clear();
        self.by_watch_id.clear();
        for (_, watcher) in self.watchers.drain() {
            let _ = watcher.notices.send(Notice::Reread);
        }
    }
}
