//! The faults the orchestrator injects: each [`Fault`] has an [`inject`](Fault::inject) step
//! and, where it stops something, a [`Recovery`] that the orchestrator runs after it.

use std::time::Duration;

use locksmith::etcd_client::{Client, CompactionOptions, ConnectOptions, GetOptions};
use locksmith::etcd_client::{SortOrder, SortTarget};
use locksmith_etcd::testing::EtcdCluster;
use rand::Rng;

use crate::client;
use crate::log::{now_us, Event, Log};
use crate::processes::Clients;
use crate::Error;

/// A bound on the orchestrator's own etcd requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// What a fault acts on.
pub struct Chaos {
    pub cluster: EtcdCluster,
    pub clients: Clients,
    pub log: Log,
    pub ttl: Duration,
    /// Auth mode: the orchestrator's own requests log in as root.
    pub auth: bool,
}

impl Chaos {
    /// A fresh etcd client (in auth mode a fresh token too: an idle one expires in 2 s).
    pub async fn etcd(&self) -> Option<Client> {
        let urls: Vec<String> = self
            .cluster
            .endpoints()
            .iter()
            .map(|e| format!("http://{e}"))
            .collect();
        let options = self
            .auth
            .then(|| ConnectOptions::new().with_user("root", client::PASSWORD));
        tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(urls, options))
            .await
            .ok()?
            .ok()
    }

    /// Logs a fault event stamped `t`.
    fn note(&mut self, t: u64, detail: &str, target: String, name: &str, lease: String) {
        self.log.write_at(
            t,
            Event {
                event: "fault".into(),
                detail: detail.into(),
                target,
                name: name.into(),
                lease,
                ..Event::default()
            },
        );
    }

    fn note_member(&mut self, t: u64, detail: &str, member: usize) {
        self.note(t, detail, format!("m{member}"), "", String::new());
    }

    fn note_client(&mut self, t: u64, detail: &str, id: String) {
        self.note(t, detail, id, "", String::new());
    }

    /// The leader's index and a follower's (random), if a member names the leader.
    async fn roles(&self) -> Option<(usize, usize)> {
        let leader = self.cluster.leader_index().await.ok()?;
        let follower = (leader + rand::thread_rng().gen_range(1..3)) % 3;
        Some((leader, follower))
    }
}

/// One fault kind. The names in the log are [`Fault::name`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the leader; restart it 1.5 s later.
    KillLeader,
    /// SIGKILL a follower; restart it 1.5 s later.
    KillFollower,
    /// SIGSTOP the leader for 1 s (an election follows).
    StopLeader,
    /// SIGSTOP a follower for 1 s.
    StopFollower,
    /// SIGSTOP a follower for longer than the TTL (TTL + 1.5 s): sessions whose keepalive or
    /// watch streams run through it must move to another member in time.
    StallFollower,
    /// SIGSTOP a client process for TTL + 1 s: its lease expires, it wakes as a stale holder.
    PauseClient,
    /// SIGKILL a client process and start a new one.
    KillClient,
    /// Delete the key of a name's current holder (of a mutex, an RW lock or a semaphore)
    /// behind its back.
    DeleteHolderKey,
    /// Compact etcd's history up to now (watches from older revisions must recover).
    Compact,
}

/// What undoes a fault, after a wait.
pub enum Recovery {
    RestartMember(usize),
    ContMember(usize),
    ContClient(usize, String),
}

impl Fault {
    pub const ALL: [Fault; 9] = [
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::StopLeader,
        Fault::StopFollower,
        Fault::StallFollower,
        Fault::PauseClient,
        Fault::KillClient,
        Fault::DeleteHolderKey,
        Fault::Compact,
    ];

    pub fn random() -> Fault {
        Fault::ALL[rand::thread_rng().gen_range(0..Fault::ALL.len())]
    }

    /// The fault's name in the log.
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill_leader",
            Fault::KillFollower => "kill_member",
            Fault::StopLeader => "stop_leader",
            Fault::StopFollower => "stop_member",
            Fault::StallFollower => "stall_follower",
            Fault::PauseClient => "pause_client",
            Fault::KillClient => "kill_client",
            Fault::DeleteHolderKey => "delete_holder_key",
            Fault::Compact => "compact",
        }
    }

    /// How long the fault lasts before its recovery.
    fn duration(self, ttl: Duration) -> Duration {
        match self {
            Fault::KillLeader | Fault::KillFollower => Duration::from_millis(1_500),
            Fault::StallFollower => ttl + Duration::from_millis(1_500),
            Fault::PauseClient => ttl + Duration::from_secs(1),
            _ => Duration::from_secs(1),
        }
    }

    /// Injects the fault and logs it, stamped when the injection began (a client pause: once
    /// the client has stopped). A fault that cannot be injected now (no leader known, no
    /// holder, etcd busy electing) is skipped: `Ok(None)`.
    pub async fn inject(self, chaos: &mut Chaos) -> Result<Option<Recovery>, Error> {
        let t = now_us();
        let recovery = match self {
            Fault::KillLeader | Fault::KillFollower => {
                let Some((leader, follower)) = chaos.roles().await else {
                    return Ok(None);
                };
                let victim = if self == Fault::KillLeader {
                    leader
                } else {
                    follower
                };
                let t = now_us();
                chaos.cluster.kill_member(victim);
                chaos.note_member(t, self.name(), victim);
                Some(Recovery::RestartMember(victim))
            }
            Fault::StopLeader | Fault::StopFollower | Fault::StallFollower => {
                let Some((leader, follower)) = chaos.roles().await else {
                    return Ok(None);
                };
                let victim = if self == Fault::StopLeader {
                    leader
                } else {
                    follower
                };
                let t = now_us();
                if chaos.cluster.signal_member(victim, "-STOP").is_err() {
                    return Ok(None);
                }
                chaos.note_member(t, self.name(), victim);
                Some(Recovery::ContMember(victim))
            }
            Fault::PauseClient => {
                let index = chaos.clients.random_index();
                let Some(id) = chaos.clients.signal(index, "-STOP") else {
                    return Ok(None);
                };
                // Stamped once the client has stopped: it may log acquisitions until then,
                // and the checker cuts only holds attempted before the pause's stamp.
                chaos.note_client(now_us(), self.name(), id.clone());
                Some(Recovery::ContClient(index, id))
            }
            Fault::KillClient => {
                let index = chaos.clients.random_index();
                if let Some(id) = chaos.clients.kill(index) {
                    chaos.note_client(t, self.name(), id);
                    chaos.clients.spawn()?;
                }
                None
            }
            Fault::DeleteHolderKey => {
                delete_holder_key(chaos).await;
                None
            }
            Fault::Compact => {
                compact(chaos).await;
                None
            }
        };
        if recovery.is_some() {
            tokio::time::sleep(self.duration(chaos.ttl)).await;
        }
        Ok(recovery)
    }
}

impl Recovery {
    /// Undoes the fault and logs it.
    pub fn run(self, chaos: &mut Chaos) -> Result<(), Error> {
        let t = now_us();
        match self {
            Recovery::RestartMember(member) => {
                chaos.cluster.restart_member(member)?;
                chaos.note_member(t, "restart_member", member);
            }
            Recovery::ContMember(member) => {
                chaos.cluster.signal_member(member, "-CONT")?;
                chaos.note_member(t, "cont_member", member);
            }
            Recovery::ContClient(index, id) => {
                chaos.clients.signal(index, "-CONT");
                chaos.note_client(t, "cont_client", id);
            }
        }
        Ok(())
    }
}

async fn delete_holder_key(chaos: &mut Chaos) {
    let Some(mut etcd) = chaos.etcd().await else {
        return;
    };
    let names: Vec<&str> = client::all_names().collect();
    let name = names[rand::thread_rng().gen_range(0..names.len())];
    let Some((key, lease)) = holder_key(&mut etcd, name).await else {
        return;
    };
    let t = now_us();
    let deleted = tokio::time::timeout(REQUEST_TIMEOUT, etcd.delete(key, None)).await;
    if matches!(deleted, Ok(Ok(_))) {
        chaos.note(t, Fault::DeleteHolderKey.name(), String::new(), name, lease);
    }
}

async fn compact(chaos: &mut Chaos) {
    let Some(mut etcd) = chaos.etcd().await else {
        return;
    };
    let t = now_us();
    let Ok(Ok(now)) = tokio::time::timeout(REQUEST_TIMEOUT, etcd.get("chaos", None)).await else {
        return;
    };
    let revision = now.header().map_or(0, |h| h.revision());
    let physical = Some(CompactionOptions::new().with_physical());
    // Compacting at or below the last compaction is refused: nothing to do then.
    let compacted = tokio::time::timeout(REQUEST_TIMEOUT, etcd.compact(revision, physical)).await;
    if matches!(compacted, Ok(Ok(_))) {
        chaos.note(
            t,
            Fault::Compact.name(),
            String::new(),
            "",
            revision.to_string(),
        );
    }
}

/// The key of a current holder of `name` (the oldest key, which holds for every primitive) and
/// its lease in hex.
async fn holder_key(etcd: &mut Client, name: &str) -> Option<(Vec<u8>, String)> {
    let options = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1);
    let prefix = client::key_prefix(name);
    let reply = tokio::time::timeout(REQUEST_TIMEOUT, etcd.get(prefix, Some(options)))
        .await
        .ok()?
        .ok()?;
    let kv = reply.kvs().first()?;
    Some((kv.key().to_vec(), format!("{:x}", kv.lease())))
}
