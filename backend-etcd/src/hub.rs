//! One gRPC watch stream per session, shared by every wait and every hold of that session.
//!
//! A task owns the stream. Subscribers ask it to watch one key from a revision and hear back
//! once: created, then deleted, or "read again" when the watch could not go on (compaction,
//! a broken stream). Dropping a subscription cancels its watch on the stream.

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
        key: String,
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
    pub(crate) fn watch(&self, key: &str, from: i64) -> Subscription {
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
    key: String,
    from: i64,
    notices: mpsc::UnboundedSender<Notice>,
    /// The server's id, once created.
    watch_id: Option<i64>,
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
                    task.watchers.insert(id, Watcher { key, from, notices, watch_id: None });
                    if let Err(()) = task.request(id, &mut responses).await {
                        task.reset(&mut responses);
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
        let Some(watcher) = self.watchers.get(&id) else {
            return Ok(());
        };
        let options = WatchOptions::new().with_start_revision(watcher.from);
        let key = watcher.key.clone();
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
        if let (Some(watch_id), Some(sender)) = (watcher.watch_id, &mut self.sender) {
            self.by_watch_id.remove(&watch_id);
            let _ = sender.cancel(watch_id).await;
        }
        // A create still in flight is cancelled when its answer arrives.
    }

    async fn dispatch(&mut self, reply: WatchResponse) {
        let watch_id = reply.watch_id();
        if reply.created() {
            let Some(id) = self.creating.pop_front() else {
                return;
            };
            match self.watchers.get_mut(&id) {
                Some(watcher) if !reply.canceled() => {
                    watcher.watch_id = Some(watch_id);
                    self.by_watch_id.insert(watch_id, id);
                    let _ = watcher.notices.send(Notice::Created);
                }
                Some(_) => self.finish(id, Notice::Reread),
                None => {
                    // Its subscriber left while the create was in flight.
                    if let Some(sender) = &mut self.sender {
                        let _ = sender.cancel(watch_id).await;
                    }
                }
            }
            return;
        }
        let Some(&id) = self.by_watch_id.get(&watch_id) else {
            return;
        };
        if reply.canceled() || reply.compact_revision() > 0 {
            self.by_watch_id.remove(&watch_id);
            self.finish(id, Notice::Reread);
        } else if reply
            .events()
            .iter()
            .any(|event| event.event_type() == EventType::Delete)
        {
            self.by_watch_id.remove(&watch_id);
            self.finish(id, Notice::Deleted);
            if let Some(sender) = &mut self.sender {
                let _ = sender.cancel(watch_id).await;
            }
        }
    }

    /// Tells watcher `id` how its watch ended and forgets it.
    fn finish(&mut self, id: u64, notice: Notice) {
        if let Some(watcher) = self.watchers.remove(&id) {
            let _ = watcher.notices.send(notice);
        }
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
