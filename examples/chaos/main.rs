//! `make chaos`: lock clients in separate processes against a 3-member etcd cluster on
//! loopback, under random faults, with a checked history.
//!
//! ```text
//! cargo run --release --example chaos -- --secs 300      # CHAOS_SECS in `make chaos`
//! ```
//!
//! The last line is `chaos: N ops, F faults, O overlaps, S stale writes accepted, K stuck,
//! P panics`; the exit status is 0 only when O, S, K and P are 0.

mod checker;
mod client;
mod log;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use locksmith::etcd_client::{Client, CompactionOptions, GetOptions, SortOrder, SortTarget};
use locksmith_etcd::testing::EtcdCluster;
use rand::Rng;

use crate::log::{Event, Log};

#[derive(Parser)]
struct Args {
    /// How long to run, in seconds.
    #[arg(long, env = "CHAOS_SECS", default_value_t = 300)]
    secs: u64,
    /// Client processes.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Session TTL of the clients, in seconds.
    #[arg(long, default_value_t = 2)]
    ttl: u64,
    /// Where the logs go (a new temporary directory by default).
    #[arg(long)]
    logs: Option<PathBuf>,
    /// Internal: run as client ID.
    #[arg(long, hide = true)]
    client: Option<String>,
    /// Internal: the client's etcd endpoints.
    #[arg(long, hide = true, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Internal: the client's log file.
    #[arg(long, hide = true)]
    log: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let (Some(id), Some(log)) = (&args.client, &args.log) {
        client::run(id, args.endpoints.clone(), args.ttl, log).await;
        return std::process::ExitCode::SUCCESS;
    }
    match orchestrate(&args).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(err) => {
            eprintln!("chaos: {err}");
            std::process::ExitCode::from(2)
        }
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The client processes, by id.
struct Clients {
    dir: PathBuf,
    endpoints: String,
    ttl: u64,
    running: Vec<(String, Child)>,
    started: usize,
}

impl Clients {
    fn spawn(&mut self) -> Result<(), Error> {
        self.started += 1;
        let id = format!("c{}", self.started);
        let child = Command::new(std::env::current_exe()?)
            .args(["--client", &id, "--endpoints", &self.endpoints])
            .args(["--ttl", &self.ttl.to_string()])
            .arg("--log")
            .arg(self.dir.join(format!("{id}.log")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join(format!("{id}.err")))?)
            .spawn()?;
        self.running.push((id, child));
        Ok(())
    }

    fn signal(&self, index: usize, signal: &str) -> Option<String> {
        let (id, child) = self.running.get(index)?;
        let ok = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| id.clone())
    }

    fn kill(&mut self, index: usize) -> Option<String> {
        if index >= self.running.len() {
            return None;
        }
        let (id, mut child) = self.running.remove(index);
        let _ = child.kill();
        let _ = child.wait();
        Some(id)
    }

    /// SIGTERM to all (they close their sessions), then SIGKILL to the slow ones.
    fn stop_all(&mut self) {
        for index in 0..self.running.len() {
            self.signal(index, "-TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(6);
        for (_, child) in &mut self.running {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.running.clear();
    }
}

async fn orchestrate(args: &Args) -> Result<bool, Error> {
    let dir = match &args.logs {
        Some(dir) => dir.clone(),
        None => tempfile_dir()?,
    };
    std::fs::create_dir_all(&dir)?;
    println!(
        "chaos: {} s, {} clients, TTL {} s, logs in {}",
        args.secs,
        args.clients,
        args.ttl,
        dir.display()
    );
    let mut cluster = EtcdCluster::start(3)?;
    let endpoints = cluster.endpoints();
    let urls: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
    let mut etcd = Client::connect(urls, None).await?;
    for name in client::NAMES {
        etcd.put(client::fence_key(name), client::fence_value(0), None)
            .await?;
    }
    let mut log = Log::open(&dir.join("chaos.log"), "chaos")?;
    let mut clients = Clients {
        dir: dir.clone(),
        endpoints: endpoints.join(","),
        ttl: args.ttl,
        running: Vec::new(),
        started: 0,
    };
    for _ in 0..args.clients {
        clients.spawn()?;
    }

    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let ttl = Duration::from_secs(args.ttl);
    while Instant::now() < deadline {
        let pause = Duration::from_millis(rand::thread_rng().gen_range(1_000..2_500));
        tokio::time::sleep(pause).await;
        let kind = rand::thread_rng().gen_range(0..7);
        let member = rand::thread_rng().gen_range(0..3);
        let client_index = rand::thread_rng().gen_range(0..clients.running.len().max(1));
        let mut note = |detail: &str, target: String, name: String, lease: String| {
            log.write(Event {
                event: "fault".into(),
                detail: detail.into(),
                target,
                name,
                lease,
                ..Event::default()
            })
        };
        match kind {
            0 | 1 => {
                let victim = if kind == 1 {
                    cluster.leader_index().await.unwrap_or(member)
                } else {
                    member
                };
                cluster.kill_member(victim);
                note(
                    if kind == 1 {
                        "kill_leader"
                    } else {
                        "kill_member"
                    },
                    format!("m{victim}"),
                    String::new(),
                    String::new(),
                );
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                cluster.restart_member(victim)?;
                note(
                    "restart_member",
                    format!("m{victim}"),
                    String::new(),
                    String::new(),
                );
            }
            2 => {
                if cluster.signal_member(member, "-STOP").is_ok() {
                    note(
                        "stop_member",
                        format!("m{member}"),
                        String::new(),
                        String::new(),
                    );
                    tokio::time::sleep(Duration::from_millis(1_000)).await;
                    cluster.signal_member(member, "-CONT")?;
                    note(
                        "cont_member",
                        format!("m{member}"),
                        String::new(),
                        String::new(),
                    );
                }
            }
            3 => {
                if let Some(id) = clients.signal(client_index, "-STOP") {
                    note("pause_client", id.clone(), String::new(), String::new());
                    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
                    clients.signal(client_index, "-CONT");
                    note("cont_client", id, String::new(), String::new());
                }
            }
            4 => {
                if let Some(id) = clients.kill(client_index) {
                    note("kill_client", id, String::new(), String::new());
                    clients.spawn()?;
                }
            }
            5 => {
                let name = client::NAMES[rand::thread_rng().gen_range(0..client::NAMES.len())];
                if let Some((key, lease)) = holder_key(&mut etcd, name).await {
                    // A fault that could not be injected (etcd busy electing) is skipped.
                    if etcd.delete(key.as_str(), None).await.is_ok() {
                        note("delete_holder_key", String::new(), name.into(), lease);
                    }
                }
            }
            _ => {
                let Ok(now) = etcd.get("chaos", None).await else {
                    continue;
                };
                let revision = now.header().map_or(0, |h| h.revision());
                let physical = Some(CompactionOptions::new().with_physical());
                // Compacting at or below the last compaction is refused: nothing to do then.
                if etcd.compact(revision, physical).await.is_ok() {
                    note(
                        "compact",
                        String::new(),
                        String::new(),
                        revision.to_string(),
                    );
                }
            }
        }
    }
    let end_us = log::now_us();
    clients.stop_all();
    // Killed clients' leases run out within their TTL.
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    let orphans = etcd
        .get(
            client::NAMESPACE,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?
        .kvs()
        .len();
    let panics = count_panics(&dir)?;
    let events = log::read_all(&dir)?;
    let verdict = checker::check(&events, args.ttl * 1_000_000, end_us);
    drop(cluster);

    let faults: usize = verdict.faults.values().sum();
    let mut kinds: Vec<_> = verdict.faults.iter().collect();
    kinds.sort();
    println!("faults by kind: {kinds:?}");
    println!(
        "fenced writes rejected: {}; unfenced writes after the writer's hold ended (paused holders): {}; orphaned keys: {orphans}",
        verdict.writes_rejected, verdict.unfenced_after_loss
    );
    for overlap in &verdict.overlaps {
        println!("overlap: {overlap}");
    }
    for stuck in &verdict.stuck {
        println!("stuck: {stuck}");
    }
    let (o, s, k) = (
        verdict.overlaps.len(),
        verdict.stale_accepted,
        verdict.stuck.len(),
    );
    println!(
        "chaos: {} ops, {faults} faults, {o} overlaps, {s} stale writes accepted, {k} stuck, {panics} panics",
        verdict.ops
    );
    Ok(o == 0 && s == 0 && k == 0 && panics == 0 && orphans == 0)
}

/// The current holder's key of `name` and its lease in hex.
async fn holder_key(etcd: &mut Client, name: &str) -> Option<(String, String)> {
    let options = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1);
    let reply = etcd
        .get(format!("{}{name}/", client::NAMESPACE), Some(options))
        .await
        .ok()?;
    let kv = reply.kvs().first()?;
    Some((
        String::from_utf8_lossy(kv.key()).into_owned(),
        format!("{:x}", kv.lease()),
    ))
}

fn count_panics(dir: &Path) -> std::io::Result<usize> {
    let mut panics = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "err") {
            panics += std::fs::read_to_string(&path)?.matches("panicked").count();
        }
    }
    Ok(panics)
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("locksmith-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
