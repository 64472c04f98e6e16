//! The bookkeeping of one watch stream: which server watch belongs to which subscriber, what
//! to send next, and what each subscriber hears. No I/O: the hub task feeds it the stream's
//! replies and sends the requests it queues, in order.

use std::collections::{HashMap, VecDeque};

use etcd_client::{EventType, WatchFilterType, WatchOptions, WatchResponse};
use tokio::sync::mpsc;

use super::{Change, Deletion, Notice};

/// What one server watch covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The key, or the first key of a range.
    pub(crate) key: Vec<u8>,
    /// Empty for one key; else the end of the range `[key, range_end)`, watched for deletes
    /// only (puts are filtered out by etcd) unless `puts`.
    pub(crate) range_end: Vec<u8>,
    /// The first revision watched; 0: from now.
    pub(crate) from: i64,
    /// For a range: its subscriber hears every put too, as [`Notice::Changes`].
    pub(crate) puts: bool,
}

impl Target {
    /// True for a range of keys: its subscriber hears every delete, not just the first.
    fn is_range(&self) -> bool {
        !self.range_end.is_empty()
    }

    /// The watch options of this target's create request (the key goes separately).
    pub(super) fn options(&self) -> WatchOptions {
        let options = WatchOptions::new().with_start_revision(self.from);
        match (self.is_range(), self.puts) {
            (false, _) => options,
            (true, true) => options.with_range(self.range_end.clone()),
            (true, false) => options
                .with_range(self.range_end.clone())
                .with_filters([WatchFilterType::NoPut]),
        }
    }
}

/// A request for the stream, in the order it must go out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Request {
    /// Create a server watch.
    Create(Target),
    /// Stop a server watch.
    Cancel { watch_id: i64 },
    /// Ask etcd to answer at once: the stream's proof of life.
    Progress,
}

/// What the registry needs of one reply.
#[derive(Debug, Clone, Default)]
pub(super) struct Reply {
    pub(super) watch_id: i64,
    pub(super) created: bool,
    pub(super) canceled: bool,
    pub(super) compacted: bool,
    /// The store revision of the reply's header.
    pub(super) revision: i64,
    /// The reply's delete events, in revision order.
    pub(super) deletes: Vec<Deletion>,
    /// Every event of the reply, puts and deletes, in revision order.
    pub(super) changes: Vec<Change>,
}

impl From<&WatchResponse> for Reply {
    fn from(response: &WatchResponse) -> Self {
        Reply {
            watch_id: response.watch_id(),
            created: response.created(),
            canceled: response.canceled(),
            compacted: response.compact_revision() > 0,
            revision: response.header().map_or(0, |h| h.revision()),
            deletes: response
                .events()
                .iter()
                .filter(|event| event.event_type() == EventType::Delete)
                .filter_map(|event| event.kv())
                .map(|kv| Deletion {
                    key: kv.key().to_vec(),
                    revision: kv.mod_revision(),
                })
                .collect(),
            changes: response
                .events()
                .iter()
                .filter_map(|event| {
                    let kv = event.kv()?;
                    let deleted = event.event_type() == EventType::Delete;
                    Some(Change {
                        key: kv.key().to_vec(),
                        value: if deleted {
                            Vec::new()
                        } else {
                            kv.value().to_vec()
                        },
                        create_revision: if deleted { 0 } else { kv.create_revision() },
                        revision: kv.mod_revision(),
                    })
                })
                .collect(),
        }
    }
}

/// A subscriber as the registry knows it.
struct Watcher {
    notices: mpsc::UnboundedSender<Notice>,
    /// True for a range: it hears every delete and ends only when its subscriber leaves.
    streams: bool,
    /// True for a range watched with its puts: it hears [`Notice::Changes`].
    changes: bool,
    /// The server's ids of this subscriber's watches, once created.
    watch_ids: Vec<i64>,
    /// The revision etcd reported when creating the first watch.
    first_created_at: Option<i64>,
    /// Creates of this subscriber not answered yet.
    creates_left: usize,
}

/// The subscribers of one stream and the requests it still has to send.
#[derive(Default)]
pub(super) struct Registry {
    watchers: HashMap<u64, Watcher>,
    /// Our ids in the order their create requests were queued: etcd answers the creates of
    /// one stream in order.
    creating: VecDeque<u64>,
    by_watch_id: HashMap<i64, u64>,
    outbox: VecDeque<Request>,
}

impl Registry {
    /// Registers subscriber `id` and queues its creates: two for a watch from now (the twin,
    /// see the hub's docs), one otherwise.
    pub(super) fn subscribe(
        &mut self,
        id: u64,
        target: Target,
        notices: mpsc::UnboundedSender<Notice>,
    ) {
        let creates = if target.from == 0 { 2 } else { 1 };
        let streams = target.is_range();
        let changes = streams && target.puts;
        for _ in 0..creates {
            self.creating.push_back(id);
            self.outbox.push_back(Request::Create(target.clone()));
        }
        self.watchers.insert(
            id,
            Watcher {
                notices,
                streams,
                changes,
                watch_ids: Vec::new(),
                first_created_at: None,
                creates_left: creates,
            },
        );
    }

    /// Forgets subscriber `id` and cancels its watches; a create still in flight is cancelled
    /// when its answer arrives.
    pub(super) fn unsubscribe(&mut self, id: u64) {
        if let Some(watcher) = self.watchers.remove(&id) {
            self.cancel_watches(&watcher.watch_ids);
        }
    }

    /// The next request to send, in order.
    pub(super) fn next_request(&mut self) -> Option<Request> {
        self.outbox.pop_front()
    }

    /// Queues a progress request.
    pub(super) fn request_progress(&mut self) {
        self.outbox.push_back(Request::Progress);
    }

    /// True when nobody waits on the stream: no subscriber and no create in flight.
    pub(super) fn is_idle(&self) -> bool {
        self.watchers.is_empty() && self.creating.is_empty()
    }

    /// Takes in one reply. Returns true when etcd refused a create (a stale auth token on
    /// the stream, or a permission): the stream is of no use for new watches.
    pub(super) fn reply(&mut self, reply: Reply) -> bool {
        if reply.created {
            return self.created(&reply);
        }
        let Some(&id) = self.by_watch_id.get(&reply.watch_id) else {
            return false;
        };
        if reply.canceled || reply.compacted {
            // etcd ended this watch itself: nothing to cancel.
            self.by_watch_id.remove(&reply.watch_id);
            if let Some(watcher) = self.watchers.get_mut(&id) {
                watcher.watch_ids.retain(|w| *w != reply.watch_id);
            }
            self.end(id, Notice::Reread);
        } else if let Some(watcher) = self.watchers.get(&id).filter(|w| w.changes) {
            // A range with its puts: every event, once the watch exists.
            if watcher.creates_left == 0 && !reply.changes.is_empty() {
                let _ = watcher.notices.send(Notice::Changes(reply.changes));
            }
        } else if !reply.deletes.is_empty() {
            match self.watchers.get(&id) {
                // A range's watches (the first and a twin) each report every delete: each one
                // alone is complete and in revision order from before the subscriber's read.
                Some(watcher) if watcher.streams => {
                    // Before `Created` (the twin not answered yet) a delete is older than the
                    // read the subscriber makes after it: nothing to tell.
                    if watcher.creates_left == 0 {
                        let _ = watcher.notices.send(Notice::Deletes(reply.deletes));
                    }
                }
                _ => self.end(id, Notice::Deleted),
            }
        }
        false
    }

    /// The answer to the oldest create in flight.
    fn created(&mut self, reply: &Reply) -> bool {
        let Some(id) = self.creating.pop_front() else {
            return false;
        };
        let Some(watcher) = self.watchers.get_mut(&id) else {
            // Its subscriber left while the create was in flight.
            if !reply.canceled {
                self.cancel_watches(&[reply.watch_id]);
            }
            return reply.canceled;
        };
        if reply.canceled {
            self.end(id, Notice::Reread);
            return true;
        }
        watcher.creates_left = watcher.creates_left.saturating_sub(1);
        let first = watcher.first_created_at.is_none();
        // A key's subscriber reads once the first watch exists, and takes the first delete
        // of either. A range's subscriber reads once, then goes by the deletes of both
        // watches, each taken as complete from that read on: so it hears `Created` only once
        // the twin exists too. A twin created after its read would miss the deletes between,
        // and its later events could then overtake a first watch left behind the store.
        let announce = if watcher.streams {
            watcher.creates_left == 0
        } else {
            first
        };
        if announce {
            let _ = watcher.notices.send(Notice::Created);
        }
        match watcher.first_created_at {
            // The twin of a watch that is known to be synced (see the hub's docs).
            Some(first) if first == reply.revision => self.cancel_watches(&[reply.watch_id]),
            Some(_) => {
                watcher.watch_ids.push(reply.watch_id);
                self.by_watch_id.insert(reply.watch_id, id);
            }
            None => {
                watcher.first_created_at = Some(reply.revision);
                watcher.watch_ids.push(reply.watch_id);
                self.by_watch_id.insert(reply.watch_id, id);
            }
        }
        false
    }

    /// One of subscriber `id`'s watches ended (with a delete, or without: cancelled,
    /// compacted, refused): it hears `notice` and its other watches are cancelled. A watch that
    /// ends without a delete may have missed one, whatever its twin saw, so any such end is a
    /// `Reread`; no subscriber is left waiting on a twin that may be cancelled.
    fn end(&mut self, id: u64, notice: Notice) {
        if let Some(watcher) = self.watchers.remove(&id) {
            let _ = watcher.notices.send(notice);
            self.cancel_watches(&watcher.watch_ids);
        }
    }

    /// Cancels server watches that nobody needs any more.
    fn cancel_watches(&mut self, watch_ids: &[i64]) {
        for &watch_id in watch_ids {
            self.by_watch_id.remove(&watch_id);
            self.outbox.push_back(Request::Cancel { watch_id });
        }
    }

    /// The stream is gone: every subscriber reads again, and nothing is left to send.
    pub(super) fn reset(&mut self) {
        self.creating.clear();
        self.by_watch_id.clear();
        self.outbox.clear();
        for (_, watcher) in self.watchers.drain() {
            let _ = watcher.notices.send(Notice::Reread);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber(registry: &mut Registry, id: u64, from: i64) -> mpsc::UnboundedReceiver<Notice> {
        let (notices, heard) = mpsc::unbounded_channel();
        let target = Target {
            key: b"k".to_vec(),
            range_end: Vec::new(),
            from,
            puts: false,
        };
        registry.subscribe(id, target, notices);
        heard
    }

    /// Subscribes `id` to the range `q/a`..`q/z` from now.
    fn range_subscriber(
        registry: &mut Registry,
        id: u64,
    ) -> (Target, mpsc::UnboundedReceiver<Notice>) {
        let (notices, heard) = mpsc::unbounded_channel();
        let target = Target {
            key: b"q/a".to_vec(),
            range_end: b"q/z".to_vec(),
            from: 0,
            puts: false,
        };
        registry.subscribe(id, target.clone(), notices);
        (target, heard)
    }

    fn created(watch_id: i64, revision: i64) -> Reply {
        Reply {
            watch_id,
            created: true,
            revision,
            ..Reply::default()
        }
    }

    fn drain(registry: &mut Registry) -> Vec<Request> {
        std::iter::from_fn(|| registry.next_request()).collect()
    }

    #[test]
    fn a_watch_from_now_is_asked_twice_and_a_synced_twin_is_cancelled() {
        let mut registry = Registry::default();
        let mut heard = subscriber(&mut registry, 1, 0);
        assert_eq!(drain(&mut registry).len(), 2);
        assert!(!registry.reply(created(7, 10)));
        assert_eq!(heard.try_recv(), Ok(Notice::Created));
        assert!(!registry.reply(created(8, 10)));
        assert_eq!(drain(&mut registry), [Request::Cancel { watch_id: 8 }]);
        registry.reply(Reply {
            watch_id: 7,
            deletes: vec![Deletion {
                key: b"k".to_vec(),
                revision: 11,
            }],
            ..Reply::default()
        });
        assert_eq!(heard.try_recv(), Ok(Notice::Deleted));
        assert!(registry.is_idle());
    }

    /// Issue 11: a range hears every delete from each of its watches (the first and a twin
    /// that stayed) and goes on until its subscriber leaves.
    #[test]
    fn a_range_hears_every_delete_of_both_watches_until_it_leaves() {
        let mut registry = Registry::default();
        let (target, mut heard) = range_subscriber(&mut registry, 1);
        assert_eq!(
            drain(&mut registry),
            [Request::Create(target.clone()), Request::Create(target)]
        );
        registry.reply(created(7, 10));
        // Not before the twin exists: the subscriber's read must come after both.
        assert!(heard.try_recv().is_err());
        registry.reply(created(8, 11));
        assert_eq!(heard.try_recv(), Ok(Notice::Created));
        let deletes = |watch_id, revision| Reply {
            watch_id,
            deletes: vec![Deletion {
                key: b"q/b".to_vec(),
                revision,
            }],
            ..Reply::default()
        };
        for (watch_id, revision) in [(7, 12), (8, 12), (7, 13)] {
            registry.reply(deletes(watch_id, revision));
            match heard.try_recv() {
                Ok(Notice::Deletes(heard)) => assert_eq!(heard[0].revision, revision),
                other => panic!("{other:?}"),
            }
        }
        assert!(!registry.is_idle());
        registry.unsubscribe(1);
        assert_eq!(
            drain(&mut registry),
            [
                Request::Cancel { watch_id: 7 },
                Request::Cancel { watch_id: 8 }
            ]
        );
        assert!(registry.is_idle());
    }

    /// Issue 11 review: a range whose twin turns out synced hears `Created` once the twin's
    /// answer is in (and the twin is cancelled).
    #[test]
    fn a_range_hears_created_once_its_twin_is_answered() {
        let mut registry = Registry::default();
        let (_, mut heard) = range_subscriber(&mut registry, 1);
        drain(&mut registry);
        registry.reply(created(7, 10));
        // A delete on the first watch before the twin's answer predates the subscriber's read.
        registry.reply(Reply {
            watch_id: 7,
            deletes: vec![Deletion {
                key: b"q/b".to_vec(),
                revision: 10,
            }],
            ..Reply::default()
        });
        assert!(heard.try_recv().is_err());
        registry.reply(created(8, 10));
        assert_eq!(heard.try_recv(), Ok(Notice::Created));
        assert_eq!(drain(&mut registry), [Request::Cancel { watch_id: 8 }]);
    }

    /// Issue 10, finding 10: the first watch ends (compaction, cancel) while its twin's create
    /// is in flight, and the twin then turns out synced and is cancelled. The subscriber must
    /// hear `Reread`, not wait forever.
    #[test]
    fn a_subscriber_whose_first_watch_ended_is_not_stranded_by_its_twin() {
        let mut registry = Registry::default();
        let mut heard = subscriber(&mut registry, 1, 0);
        drain(&mut registry);
        registry.reply(created(7, 10));
        assert_eq!(heard.try_recv(), Ok(Notice::Created));
        registry.reply(Reply {
            watch_id: 7,
            canceled: true,
            compacted: true,
            ..Reply::default()
        });
        registry.reply(created(8, 10));
        assert_eq!(heard.try_recv(), Ok(Notice::Reread));
        // The twin, created for nobody, is cancelled; nothing is left.
        assert_eq!(drain(&mut registry), [Request::Cancel { watch_id: 8 }]);
        assert!(registry.is_idle());
    }

    #[test]
    fn a_refused_create_means_reread_and_is_reported() {
        let mut registry = Registry::default();
        let mut heard = subscriber(&mut registry, 1, 5);
        drain(&mut registry);
        let refused = Reply {
            canceled: true,
            ..created(-1, 10)
        };
        assert!(registry.reply(refused));
        assert_eq!(heard.try_recv(), Ok(Notice::Reread));
        assert!(registry.is_idle());
    }

    #[test]
    fn a_create_answered_after_its_subscriber_left_is_cancelled() {
        let mut registry = Registry::default();
        let _heard = subscriber(&mut registry, 1, 5);
        drain(&mut registry);
        registry.unsubscribe(1);
        registry.reply(created(3, 10));
        assert_eq!(drain(&mut registry), [Request::Cancel { watch_id: 3 }]);
        assert!(registry.is_idle());
    }

    #[test]
    fn reset_tells_everyone_to_read_again() {
        let mut registry = Registry::default();
        let mut first = subscriber(&mut registry, 1, 5);
        let mut second = subscriber(&mut registry, 2, 0);
        registry.reset();
        assert_eq!(first.try_recv(), Ok(Notice::Reread));
        assert_eq!(second.try_recv(), Ok(Notice::Reread));
        assert!(registry.is_idle());
        assert_eq!(registry.next_request(), None);
    }
}
