//! `locksmith status NAME` and `locksmith list [PREFIX]`: who holds what, and who waits.

use locksmith::{EntryKind, Primitive, QueueEntry, QueueInfo, QueueView};
use serde_json::{json, Value};

use crate::elect::printable;
use crate::waiting::describe;
use crate::{print_lines, Outcome};

/// Which queues `status` reads.
#[derive(Clone, Copy)]
pub enum Which {
    /// Every primitive's; those with entries are shown.
    Detect,
    /// This primitive's, shown even when empty.
    Only(Primitive),
}

/// Prints the queues of `name`.
pub async fn status(view: &dyn QueueView, name: &str, which: Which, json: bool) -> Outcome {
    let queues = match read(view, name, which).await {
        Ok(queues) => queues,
        Err(err) => return err.into(),
    };
    if json {
        return print_json(&queues);
    }
    let mut lines = Vec::new();
    if queues.is_empty() {
        lines.push(format!("{name:?}: nobody holds or waits"));
    }
    for queue in &queues {
        lines.push(heading(queue));
        for (role, entry) in roles(queue) {
            lines.push(format!("  {role}  {}", entry_line(entry)));
        }
    }
    print_all(&lines)
}

/// Prints every queue under `prefix`, one line each.
pub async fn list(view: &dyn QueueView, prefix: &str, json: bool) -> Outcome {
    let queues = match view.queues(prefix).await {
        Ok(queues) => queues.into_iter().map(relabel).collect::<Vec<_>>(),
        Err(err) => return err.into(),
    };
    if json {
        return print_json(&queues);
    }
    let lines: Vec<String> = queues
        .iter()
        .map(|queue| {
            let holder = match queue.holders.first() {
                Some(first) if queue.holders.len() > 1 => {
                    format!("{} (+{} more)", describe(first), queue.holders.len() - 1)
                }
                Some(first) => describe(first),
                None => "-".to_owned(),
            };
            format!(
                "{}\t{}\t{holder}\twaiting {}",
                printable(queue.name.as_bytes()),
                label(queue),
                queue.waiters.len()
            )
        })
        .collect();
    print_all(&lines)
}

async fn read(
    view: &dyn QueueView,
    name: &str,
    which: Which,
) -> Result<Vec<QueueInfo>, locksmith::LockError> {
    match which {
        Which::Only(primitive) => Ok(vec![view.queue(name, primitive).await?]),
        Which::Detect => {
            let mut found = Vec::new();
            for primitive in [Primitive::Lock, Primitive::RwLock, Primitive::Semaphore] {
                let queue = view.queue(name, primitive).await?;
                if !queue.is_empty() {
                    found.push(relabel(queue));
                }
            }
            Ok(found)
        }
    }
}

/// A lock queue whose entries carry proposals is an election: `etcdctl elect` and Go's
/// `Election` store the proposal, `etcdctl lock` nothing and locksmith's `lock` a
/// `locksmith-…` marker.
fn relabel(mut queue: QueueInfo) -> QueueInfo {
    let proposals = |e: &QueueEntry| {
        e.kind == EntryKind::Candidate
            || e.value
                .as_deref()
                .is_some_and(|v| !v.is_empty() && !v.starts_with(b"locksmith-"))
    };
    if queue.primitive == Primitive::Lock
        && queue.holders.iter().chain(&queue.waiters).any(proposals)
    {
        queue.primitive = Primitive::Election;
        for entry in queue.holders.iter_mut().chain(queue.waiters.iter_mut()) {
            entry.kind = EntryKind::Candidate;
        }
    }
    queue
}

fn label(queue: &QueueInfo) -> String {
    match queue.limit {
        Some(limit) => format!("{} (limit {limit})", queue.primitive.as_str()),
        None => queue.primitive.as_str().to_owned(),
    }
}

fn heading(queue: &QueueInfo) -> String {
    let held = match queue.primitive {
        Primitive::Election => "leader",
        _ => "holder",
    };
    format!(
        "{} {:?}: {} {held}{}, {} waiting",
        label(queue),
        queue.name,
        queue.holders.len(),
        if queue.holders.len() == 1 { "" } else { "s" },
        queue.waiters.len()
    )
}

fn roles(queue: &QueueInfo) -> impl Iterator<Item = (&'static str, &QueueEntry)> {
    let holds = match queue.primitive {
        Primitive::Election => "leads",
        _ => "holds",
    };
    let holders = queue.holders.iter().map(move |e| (holds, e));
    holders.chain(queue.waiters.iter().map(|e| ("waits", e)))
}

/// `KIND KEY lease=HEX ttl=8s token=N [value=…]`.
fn entry_line(entry: &QueueEntry) -> String {
    let mut line = format!(
        "{:<9} {}",
        entry.kind.as_str(),
        printable(entry.key.as_bytes())
    );
    if let Some(lease) = entry.lease_id {
        line.push_str(&format!("  lease={lease:x}"));
        match entry.ttl_left {
            Some(ttl) => line.push_str(&format!(" ttl={}s", ttl.as_secs())),
            None => line.push_str(" ttl=expired"),
        }
    }
    if let Some(token) = entry.fencing_token {
        line.push_str(&format!(" token={token}"));
    }
    if let (EntryKind::Candidate, Some(value)) = (entry.kind, &entry.value) {
        line.push_str(&format!(" value={}", printable(value)));
    }
    line
}

/// The JSON form of a queue; its field names are part of the CLI's contract (`--help`).
fn queue_json(queue: &QueueInfo) -> Value {
    json!({
        "name": queue.name,
        "primitive": queue.primitive.as_str(),
        "limit": queue.limit,
        "holders": queue.holders.iter().map(entry_json).collect::<Vec<_>>(),
        "waiters": queue.waiters.iter().map(entry_json).collect::<Vec<_>>(),
    })
}

fn entry_json(entry: &QueueEntry) -> Value {
    json!({
        "key": entry.key,
        "kind": entry.kind.as_str(),
        "lease_id": entry.lease_id.map(|lease| format!("{lease:x}")),
        "ttl_left_secs": entry.ttl_left.map(|ttl| ttl.as_secs()),
        "fencing_token": entry.fencing_token.map(|token| token.get()),
        "value": entry.value.as_deref().map(String::from_utf8_lossy),
    })
}

fn print_json(queues: &[QueueInfo]) -> Outcome {
    let text = Value::Array(queues.iter().map(queue_json).collect()).to_string();
    print_all(&[text])
}

fn print_all(lines: &[String]) -> Outcome {
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    match print_lines(&lines) {
        Ok(()) => Outcome::Exit(0),
        Err(outcome) => outcome,
    }
}
