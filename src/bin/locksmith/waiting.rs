//! Whom a waiting `lock`, `read`, `write`, `semaphore` or `elect` waits behind: once the wait
//! passes a second, a line on stderr naming the holder (key, lease TTL left) and how many are
//! ahead, and a new line each time that changes. `--quiet` turns it off.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use locksmith::{EntryKind, Primitive, QueueEntry, QueueInfo, QueueView};

use crate::elect::printable;
use crate::Held;

/// How long a wait goes unreported.
const FIRST_REPORT: Duration = Duration::from_secs(1);
/// How often the queue is read again while waiting.
const POLL: Duration = Duration::from_millis(500);

/// What the reports need: the session's view and how to find our own key in a queue.
pub struct Waiting {
    view: Arc<dyn QueueView>,
    lease_id: Option<i64>,
    quiet: bool,
}

impl Waiting {
    pub fn new(session: &crate::session::Session, quiet: bool) -> Self {
        Waiting {
            view: Arc::clone(&session.view),
            lease_id: session.lease_id,
            quiet,
        }
    }

    /// Runs `wait` (an acquisition of `name`) to its end, reporting on stderr whom it waits
    /// behind while it waits, unless quiet. Dropping the future drops `wait`.
    pub async fn reported<T>(
        &self,
        wait: impl Future<Output = T>,
        name: &str,
        primitive: Primitive,
        held: &Held,
    ) -> T {
        if self.quiet {
            return wait.await;
        }
        tokio::select! {
            done = wait => done,
            never = self.report(name, primitive, held) => match never {},
        }
    }

    async fn report(&self, name: &str, primitive: Primitive, held: &Held) -> Infallible {
        tokio::time::sleep(FIRST_REPORT).await;
        let mut last: Option<Vec<String>> = None;
        loop {
            // A failed read only skips a report: the acquisition says what went wrong.
            if let Ok(queue) = self.view.queue(name, primitive).await {
                if let Some((blockers, line)) = behind(&queue, self.lease_id, held) {
                    if last.as_ref() != Some(&blockers) {
                        eprintln!("locksmith: {line}");
                        last = Some(blockers);
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Whom our first waiting key waits behind in `queue`: what identifies that situation (the
/// holders' keys and how many are ahead) and the line to print. `None` while our key is not
/// among the waiters (not queued yet, or granted).
fn behind(queue: &QueueInfo, lease_id: Option<i64>, held: &Held) -> Option<(Vec<String>, String)> {
    let lease_id = lease_id?;
    let place = queue
        .waiters
        .iter()
        .position(|w| w.lease_id == Some(lease_id))?;
    let ahead = queue.holders.len() + place;
    // A reader waits for writers only: behind readers that hold, the writer it waits for is
    // the one to name.
    let writer_ahead = queue
        .holders
        .iter()
        .chain(&queue.waiters[..place])
        .find(|e| e.kind == EntryKind::Write)
        .filter(|_| queue.waiters[place].kind == EntryKind::Read);
    let (named, others) = match (writer_ahead, queue.holders.first()) {
        (Some(writer), _) => (writer, 0),
        (None, Some(first)) => (first, queue.holders.len() - 1),
        // Nobody holds (a handoff under way): the first in line.
        (None, None) => (queue.waiters.first()?, 0),
    };
    let mut line = format!("waiting for {held} behind {}", describe(named));
    if others > 0 {
        line.push_str(&format!(" and {others} other holder{}", plural(others)));
    }
    line.push_str(&format!("; {ahead} ahead in the queue"));
    let mut blockers = vec![named.key.clone()];
    blockers.extend(queue.holders.iter().map(|h| h.key.clone()));
    blockers.push(ahead.to_string());
    Some((blockers, line))
}

/// `KEY (lease HEX, TTL 8s left)`, the key escaped as `elect --listen` prints values (a
/// semaphore's key starts with a control character).
pub fn describe(entry: &QueueEntry) -> String {
    let key = printable(entry.key.as_bytes());
    match (entry.lease_id, entry.ttl_left) {
        (Some(lease), Some(ttl)) => format!("{key} (lease {lease:x}, TTL {}s left)", ttl.as_secs()),
        (Some(lease), None) => format!("{key} (lease {lease:x}, expired)"),
        (None, _) => key,
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use locksmith::FencingToken;

    fn entry(key: &str, lease: i64) -> QueueEntry {
        kind_entry(key, lease, EntryKind::Lock)
    }

    fn kind_entry(key: &str, lease: i64, kind: EntryKind) -> QueueEntry {
        QueueEntry {
            key: key.to_owned(),
            lease_id: Some(lease),
            fencing_token: Some(FencingToken::new(1)),
            kind,
            value: None,
            ttl_left: Some(Duration::from_secs(8)),
        }
    }

    #[test]
    fn the_line_names_the_holder_and_the_place() {
        let queue = QueueInfo::from_ordered(
            "jobs",
            Primitive::Lock,
            vec![
                entry("jobs/a", 10),
                entry("jobs/b", 11),
                entry("jobs/c", 12),
            ],
            None,
        );
        let held = Held::new("lock", "jobs");
        let (blockers, line) = behind(&queue, Some(12), &held).unwrap();
        assert_eq!(
            line,
            "waiting for lock \"jobs\" behind jobs/a (lease a, TTL 8s left); 2 ahead in the queue"
        );
        assert_eq!(blockers, ["jobs/a", "jobs/a", "2"]);
        assert!(
            behind(&queue, Some(10), &held).is_none(),
            "the holder waits for nobody"
        );
        assert!(behind(&queue, None, &held).is_none());
    }

    #[test]
    fn a_reader_names_the_writer_it_waits_for() {
        use EntryKind::{Read, Write};
        let queue = QueueInfo::from_ordered(
            "cat",
            Primitive::RwLock,
            vec![
                kind_entry("cat/read/a", 1, Read),
                kind_entry("cat/read/b", 2, Read),
                kind_entry("cat/write/c", 3, Write),
                kind_entry("cat/read/d", 4, Read),
            ],
            None,
        );
        let held = Held::new("read lock", "cat");
        let (_, line) = behind(&queue, Some(4), &held).unwrap();
        assert!(line.contains("behind cat/write/c (lease 3,"), "{line}");
        assert!(line.ends_with("; 3 ahead in the queue"), "{line}");
        let (_, line) = behind(&queue, Some(3), &held).unwrap();
        assert!(
            line.contains("behind cat/read/a (lease 1, TTL 8s left) and 1 other holder;"),
            "{line}"
        );
    }
}
