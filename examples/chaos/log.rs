//! The event log every chaos process writes: one JSON object per line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One thing that happened, stamped with the wall clock (all processes share one machine).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Event {
    /// Microseconds since the Unix epoch.
    pub t: u64,
    /// Who: a client id (`c3`) or `chaos` for the orchestrator.
    pub who: String,
    /// What: `session` (a new lease), `attempt` (detail: the call, `lock`, `try_lock`,
    /// `campaign`, `read`, `try_read`, `write`, `try_write`, `acquire`, `try_acquire`, or
    /// `relock` for the waiting call again after a cancelled one), `acquired` (detail: empty for
    /// a mutex or leadership, `read`, `write` or `permit`), `busy` (a `try_` call found it
    /// taken), `cancelled` (detail: the call whose future was dropped, or `unlock`), `write`,
    /// `plain_write`,
    /// `releasing` (detail: `unlock`, `unlock_timeout` or `drop`), `released`, `unlock_failed`,
    /// `lost`, `error`, and `fault` from the orchestrator.
    pub event: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub token: u64,
    /// The session's lease id, hex.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lease: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<bool>,
    /// For writes: the etcd revision of the transaction's reply.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rev: u64,
    /// For faults: the kind; for errors: the message.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// For faults on a client: which one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// For operations run under a short timeout (to be cancelled): the timeout in ms.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout_ms: u64,
    /// For `lost`: the lease's remaining TTL in seconds as etcd reported it right after the
    /// loss (-1: the lease is gone); absent when etcd did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<i64>,
    /// For permits (`acquired` with detail `permit`): the semaphore's limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub limit: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Appends events to one file, flushed line by line so a SIGKILL loses at most the last one.
pub struct Log {
    file: File,
    who: String,
}

impl Log {
    pub fn open(path: &Path, who: &str) -> std::io::Result<Log> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Log {
            file,
            who: who.to_owned(),
        })
    }

    pub fn write(&mut self, event: Event) {
        self.write_at(now_us(), event);
    }

    /// Writes `event` stamped `t` (a fault is stamped when its injection began: its effect can
    /// start before the injecting call returns).
    pub fn write_at(&mut self, t: u64, mut event: Event) {
        event.t = t;
        event.who = self.who.clone();
        if let Ok(line) = serde_json::to_string(&event) {
            let _ = writeln!(self.file, "{line}");
        }
    }
}

/// Every event of every log under `dir`, in time order.
pub fn read_all(dir: &Path) -> std::io::Result<Vec<Event>> {
    let mut events = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "log") {
            for line in std::fs::read_to_string(&path)?.lines() {
                if let Ok(event) = serde_json::from_str::<Event>(line) {
                    events.push(event);
                }
            }
        }
    }
    events.sort_by_key(|e| e.t);
    Ok(events)
}
