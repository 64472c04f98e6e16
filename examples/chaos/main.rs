//! `make chaos`: lock clients in separate processes against a 3-member etcd cluster on
//! loopback, under random faults, with a checked history. Clients take mutexes, leaderships,
//! RW locks and semaphore permits.
//!
//! ```text
//! cargo run --release --example chaos -- --secs 300          # CHAOS_SECS in `make chaos`
//! cargo run --release --example chaos -- --secs 300 --auth   # CHAOS_AUTH=1: etcd auth on
//! ```
//!
//! The last line is `chaos: N ops, F faults, O overlaps, S stale writes accepted, K stuck,
//! P panics, T token regressions, L holds lost, Z orphaned keys`; the exit status is 0 only
//! when O, S, K, P, T, L and Z are 0.

mod checker;
mod client;
mod fault;
mod log;
mod processes;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use locksmith::etcd_client::{Client, GetOptions};
use locksmith_etcd::testing::{enable_auth, EtcdCluster};
use rand::Rng;

use crate::checker::Verdict;
use crate::fault::{Chaos, Fault};
use crate::log::Log;
use crate::processes::Clients;

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
    /// Auth mode: etcd runs with authentication on and `--auth-token-ttl 2`; clients log in.
    #[arg(long, env = "CHAOS_AUTH", value_parser = clap::builder::FalseyValueParser::new())]
    auth: bool,
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
        client::run(client::Settings {
            id,
            endpoints: args.endpoints.clone(),
            ttl_secs: args.ttl,
            auth: args.auth,
            log,
        })
        .await;
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

/// etcd's simple-token lifetime in auth mode, in seconds: shorter than a client pause, so
/// tokens expire during the run.
const AUTH_TOKEN_TTL: &str = "2";

async fn orchestrate(args: &Args) -> Result<bool, Error> {
    let dir = match &args.logs {
        Some(dir) => dir.clone(),
        None => tempfile_dir()?,
    };
    std::fs::create_dir_all(&dir)?;
    println!(
        "chaos: {} s, {} clients, TTL {} s, auth {}, logs in {}",
        args.secs,
        args.clients,
        args.ttl,
        if args.auth {
            "on (token TTL 2 s)"
        } else {
            "off"
        },
        dir.display()
    );
    let mut chaos = start(args, &dir).await?;
    let deadline = Instant::now() + Duration::from_secs(args.secs);
    while Instant::now() < deadline {
        let pause = Duration::from_millis(rand::thread_rng().gen_range(1_000..2_500));
        tokio::time::sleep(pause).await;
        if let Some(recovery) = Fault::random().inject(&mut chaos).await? {
            recovery.run(&mut chaos)?;
        }
    }
    let end_us = log::now_us();
    chaos.clients.stop_all();
    // Killed clients' leases run out within their TTL.
    tokio::time::sleep(chaos.ttl + Duration::from_secs(1)).await;
    let orphans = orphaned_keys(&chaos).await?;
    let orphans_by_family = count_keys_by_family(&orphans);
    let orphans = orphans.len();
    let panics = count_panics(&dir)?;
    let events = log::read_all(&dir)?;
    let verdict = checker::check(&events, args.ttl * 1_000_000, end_us);
    drop(chaos);
    if orphans > 0 {
        println!("orphaned keys by family: {:?}", sorted(&orphans_by_family));
    }
    report(&verdict, orphans, panics);
    Ok(verdict.clean() && panics == 0 && orphans == 0)
}

/// Starts the cluster (with auth in auth mode), the fence keys and the clients.
async fn start(args: &Args, dir: &Path) -> Result<Chaos, Error> {
    let cluster = if args.auth {
        EtcdCluster::start_with(3, &["--auth-token-ttl", AUTH_TOKEN_TTL])?
    } else {
        EtcdCluster::start(3)?
    };
    let endpoints = cluster.endpoints();
    let urls: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
    let mut etcd = Client::connect(urls, None).await?;
    for name in client::NAMES {
        etcd.put(client::fence_key(name), client::fence_value(0), None)
            .await?;
    }
    if args.auth {
        enable_auth(&endpoints, client::USER, client::PASSWORD).await?;
    }
    let mut clients = Clients {
        dir: dir.to_owned(),
        endpoints: endpoints.join(","),
        ttl: args.ttl,
        auth: args.auth,
        running: Vec::new(),
        started: 0,
    };
    for _ in 0..args.clients {
        clients.spawn()?;
    }
    Ok(Chaos {
        cluster,
        clients,
        log: Log::open(&dir.join("chaos.log"), "chaos")?,
        ttl: Duration::from_secs(args.ttl),
        auth: args.auth,
    })
}

/// Keys left under the lock namespace once every client has stopped (mutex, election, RW and
/// semaphore keys alike), without the namespace.
async fn orphaned_keys(chaos: &Chaos) -> Result<Vec<String>, Error> {
    let mut etcd = chaos
        .etcd()
        .await
        .ok_or("etcd did not answer after the run")?;
    let options = GetOptions::new().with_prefix().with_keys_only();
    let reply = etcd.get(client::NAMESPACE, Some(options)).await?;
    Ok(reply
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()))
        .map(|key| key.trim_start_matches(client::NAMESPACE).to_owned())
        .collect())
}

fn count_keys_by_family(keys: &[String]) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for key in keys {
        *counts
            .entry(checker::key_family(key).to_owned())
            .or_default() += 1;
    }
    counts
}

/// At most this many examples of each failure are printed.
const EXAMPLES: usize = 10;

fn report(verdict: &Verdict, orphans: usize, panics: usize) {
    let faults: usize = verdict.faults.values().sum();
    println!("faults by kind: {:?}", sorted(&verdict.faults));
    println!("holds by kind: {:?}", sorted(&verdict.holds_by_kind));
    println!("cancelled calls: {:?}", sorted(&verdict.cancelled));
    println!(
        "fenced writes rejected: {}; unfenced writes after the writer's hold ended (paused holders): {}; orphaned keys: {orphans}; holds reported lost: {} ({} unexplained)",
        verdict.writes_rejected,
        verdict.unfenced_after_end,
        verdict.losses,
        verdict.holds_lost.len()
    );
    let mut errors = sorted(&verdict.errors);
    errors.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    for (message, count) in errors.iter().take(EXAMPLES) {
        println!("client errors: {count} x {message}");
    }
    let mut stuck_kinds: std::collections::HashMap<String, usize> = Default::default();
    for line in &verdict.stuck {
        let kind = line.split(':').next().unwrap_or_default();
        *stuck_kinds.entry(kind.to_owned()).or_default() += 1;
    }
    if !stuck_kinds.is_empty() {
        println!("stuck by kind: {:?}", sorted(&stuck_kinds));
    }
    for (label, list) in [
        ("overlap", &verdict.overlaps),
        ("stuck", &verdict.stuck),
        ("token regression", &verdict.token_regressions),
        ("hold lost", &verdict.holds_lost),
    ] {
        for line in list.iter().take(EXAMPLES) {
            println!("{label}: {line}");
        }
        if list.len() > EXAMPLES {
            println!("{label}: … and {} more", list.len() - EXAMPLES);
        }
    }
    println!(
        "chaos: {} ops, {faults} faults, {} overlaps, {} stale writes accepted, {} stuck, {panics} panics, {} token regressions, {} holds lost, {orphans} orphaned keys",
        verdict.ops,
        verdict.overlaps.len(),
        verdict.stale_accepted,
        verdict.stuck.len(),
        verdict.token_regressions.len(),
        verdict.holds_lost.len(),
    );
}

fn sorted(counts: &std::collections::HashMap<String, usize>) -> Vec<(&str, usize)> {
    let mut list: Vec<_> = counts.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    list.sort();
    list
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

/// A new, empty directory for this run's logs. Never one left by an earlier run: process ids
/// come round again, and the checker would read that run's events as this one's (a run of
/// 2026-11-26 appended to a 10-hour-old directory of the same pid and saw thousands of
/// overlaps between the two clusters' tokens).
fn tempfile_dir() -> std::io::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_micros());
    let dir = std::env::temp_dir().join(format!("locksmith-chaos-{}-{stamp}", std::process::id()));
    // `create_dir`, not `create_dir_all`: an existing directory is an error, never reused.
    std::fs::create_dir(&dir)?;
    Ok(dir)
}
