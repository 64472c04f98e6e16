//! Lock throughput and latency on a real etcd, locksmith beside etcd's server-side lock API.
//!
//! ```text
//! cargo run --release -p locksmith --example etcd_bench -- \
//!     --endpoints 127.0.0.1:2379 --mode contended --clients 3 --duration 10 [--impl v3lock]
//! ```
//!
//! `--endpoints` takes `HOST:PORT[,HOST:PORT…]` (each may start with `http://`) or a
//! locksmith URL, `etcd://HOST:PORT[,HOST:PORT…]/[NAMESPACE][?…]`, read by
//! [`LockConfig::from_url`] like every other locksmith entry point.
//!
//! Prints one JSON line: `{"impl","mode","clients","ops","ops_per_s","p50_us","p99_us","violations"}`,
//! latency per lock+unlock (per delete→event for `floor`). `violations` counts overlapping
//! holds seen by an in-process check and must be 0. Contended runs add `handoff_p50_us` and
//! `handoff_p99_us`: from a holder starting its unlock to the next holder's `lock` returning.
//! Every line also carries `latency_us`, the distribution of those latencies, and contended
//! runs `handoff_us`, that of the handoffs: `{"n","min","p1",…,"p99.9","max"}` in µs (the
//! field names `bench/go` prints too, and what `bench/chart` draws). Contended runs also give
//! `release_p50_us` and `release_us`: how long the holders' unlock calls took, i.e. the delete's
//! round trip on etcd under this very load, which a handoff cannot beat by much (etcd sends
//! the delete's watch event and its reply as it applies it). With `--probe-floor`, contended
//! and failover runs also sample the floor while the clients contend (`loaded_floor_p50_us`,
//! `loaded_floor_us`). `--setup TEXT` adds
//! `"setup": TEXT`, which `bench/run.sh` uses to say what etcd the run measured.
//!
//! The election modes (`failover`, `observe`, `observers --observers N`) measure
//! [`LeaderElection`](locksmith::LeaderElection): the failover from a leader's `resign` to the
//! next `campaign` returning (`failover_us`), proclaim → an observer in another session
//! yielding the value (`observe_us`), and N observers of one name on one session (time until
//! all have seen a proclamation, the process's RSS, etcd's watch gauges); see
//! `etcd_bench/election.rs` for every field.
//!
//! The shared modes measure [`DistributedRwLock`](locksmith::DistributedRwLock) and
//! [`DistributedSemaphore`](locksmith::DistributedSemaphore) on one name: `rw` (90% `read`,
//! 10% `write`; `writer_handoff_us`: the release that let a waiting writer in → its `write`
//! returning) and `semaphore --limit K` (`handoff_us`: the release that let a waiting client in
//! → its `acquire` returning); see `etcd_bench/rw.rs` and `etcd_bench/semaphore.rs`.

#[path = "etcd_bench/election.rs"]
mod election;
#[path = "etcd_bench/rw.rs"]
mod rw;
#[path = "etcd_bench/semaphore.rs"]
mod semaphore;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use locksmith::etcd_client::{EventType, LockOptions, WatchOptions};
use locksmith::{DistributedLock, EtcdConfig, EtcdLock, LockConfig, LockError};
use serde::Serialize;

#[derive(Parser)]
struct Args {
    /// etcd endpoints, comma-separated (`127.0.0.1:2379` or `http://127.0.0.1:2379`), or a
    /// locksmith URL (`etcd://127.0.0.1:2379,127.0.0.1:22379/`).
    #[arg(long, default_value = "127.0.0.1:2379")]
    endpoints: String,
    /// What to measure.
    #[arg(long, value_enum, default_value = "contended")]
    mode: Mode,
    /// Concurrent clients, each with its own session (lease).
    #[arg(long, default_value_t = 3)]
    clients: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// The lock implementation.
    #[arg(long = "impl", value_enum, default_value = "locksmith")]
    implementation: Impl,
    /// What etcd this run measures (e.g. `3 members, follower first`), copied to the report.
    #[arg(long)]
    setup: Option<String>,
    /// Contended, failover, rw and semaphore modes: also sample the floor while the clients run, one
    /// delete → event every 10 ms on a key of its own (`loaded_floor_p50_us`,
    /// `loaded_floor_us`): what a delete's event costs on etcd under this very load.
    #[arg(long)]
    probe_floor: bool,
    /// Observers mode: how many observers of one name this process runs (on one session).
    #[arg(long, default_value_t = 1000)]
    observers: usize,
    /// Semaphore mode: the permits of the name.
    #[arg(long, default_value_t = 2)]
    limit: u32,
}

/// The session settings `--endpoints` names.
fn etcd_config(endpoints: &str) -> Result<EtcdConfig, LockError> {
    let scheme = endpoints.split_once("://").map(|(scheme, _)| scheme);
    if matches!(scheme, None | Some("http" | "https")) {
        let list = endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty());
        return Ok(EtcdConfig::new(list));
    }
    match LockConfig::from_url(endpoints)? {
        LockConfig::Etcd(config) => Ok(config),
        other => Err(LockError::config(format!(
            "--endpoints {endpoints:?} is not an etcd config ({other})"
        ))),
    }
}

#[derive(Clone, Copy, ValueEnum, Serialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// One client: lock+unlock in a loop.
    Uncontended,
    /// N clients, one name, empty critical section.
    Contended,
    /// N clients, one name each.
    Distinct,
    /// Delete → watch event of a waiter watching from the next revision: the lower bound of
    /// a handoff on this etcd.
    Floor,
    /// N candidates, one name: the leader resigns at once and campaigns again.
    Failover,
    /// One leader proclaims, one observer in another session sees each value.
    Observe,
    /// `--observers` observers of one name on one session see a leader's proclamations.
    Observers,
    /// N clients, one reader-writer lock: 90% reads, 10% writes, empty critical section.
    Rw,
    /// N clients, one semaphore of `--limit` permits, empty critical section.
    Semaphore,
}

#[derive(Clone, Copy, ValueEnum, Serialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Impl {
    /// This library's etcd backend.
    Locksmith,
    /// etcd's server-side lock service (v3lock), through etcd-client.
    V3lock,
}

#[derive(Serialize)]
struct Report {
    #[serde(rename = "impl")]
    implementation: Impl,
    mode: Mode,
    clients: usize,
    ops: usize,
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    violations: usize,
    /// Contended mode only: from the moment a holder starts its unlock to the moment the next
    /// holder's `lock` returns (what `floor` bounds from below).
    #[serde(skip_serializing_if = "Option::is_none")]
    handoff_p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    handoff_p99_us: Option<f64>,
    /// The distribution behind `p50_us` and `p99_us`.
    latency_us: Distribution,
    /// Contended mode only: the distribution behind `handoff_p50_us` and `handoff_p99_us`.
    #[serde(skip_serializing_if = "Option::is_none")]
    handoff_us: Option<Distribution>,
    /// Contended mode only: the holders' unlock calls (start to return).
    #[serde(skip_serializing_if = "Option::is_none")]
    release_p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    release_us: Option<Distribution>,
    /// `--probe-floor` only: delete → event under the run's load.
    #[serde(skip_serializing_if = "Option::is_none")]
    loaded_floor_p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    loaded_floor_us: Option<Distribution>,
    /// The election modes' own fields.
    #[serde(flatten)]
    election: election::Fields,
    /// The `rw` mode's own fields.
    #[serde(flatten)]
    rw: rw::Fields,
    /// The `semaphore` mode's own fields.
    #[serde(flatten)]
    semaphore: semaphore::Fields,
    /// `--setup`, as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    setup: Option<String>,
}

/// A latency distribution in whole µs: count, extremes and percentiles (nearest rank), enough
/// to draw its cumulative curve. `bench/go` prints the same fields.
#[derive(Serialize)]
struct Distribution {
    n: usize,
    min: f64,
    p1: f64,
    p5: f64,
    p10: f64,
    p20: f64,
    p30: f64,
    p40: f64,
    p50: f64,
    p60: f64,
    p70: f64,
    p80: f64,
    p90: f64,
    p95: f64,
    p99: f64,
    #[serde(rename = "p99.9")]
    p99_9: f64,
    max: f64,
}

impl Distribution {
    fn of(sorted: &[Duration]) -> Self {
        let at = |p| percentile(sorted, p).round();
        Distribution {
            n: sorted.len(),
            min: at(0.0),
            p1: at(0.01),
            p5: at(0.05),
            p10: at(0.10),
            p20: at(0.20),
            p30: at(0.30),
            p40: at(0.40),
            p50: at(0.50),
            p60: at(0.60),
            p70: at(0.70),
            p80: at(0.80),
            p90: at(0.90),
            p95: at(0.95),
            p99: at(0.99),
            p99_9: at(0.999),
            max: at(1.0),
        }
    }
}

/// One client session of either implementation.
enum Locker {
    Locksmith(EtcdLock),
    /// The lock service, on the lease of a locksmith session kept for its keepalive; names
    /// get the config's namespace in front, as locksmith's keys do.
    V3 {
        session: EtcdLock,
        namespace: String,
    },
}

impl Locker {
    async fn connect(implementation: Impl, config: &EtcdConfig) -> Result<Self, LockError> {
        let session = EtcdLock::connect(config).await?;
        Ok(match implementation {
            Impl::Locksmith => Locker::Locksmith(session),
            Impl::V3lock => Locker::V3 {
                session,
                namespace: config.namespace.clone(),
            },
        })
    }

    /// Takes and releases `name` once; `inside` runs while holding. Returns how long the
    /// release took.
    async fn cycle(&self, name: &str, inside: impl FnOnce()) -> Result<Duration, LockError> {
        match self {
            Locker::Locksmith(session) => {
                let guard = session.lock(name).await?;
                inside();
                let releasing = Instant::now();
                guard.unlock().await?;
                Ok(releasing.elapsed())
            }
            Locker::V3 { session, namespace } => {
                let mut client = session.client();
                let options = LockOptions::new().with_lease(session.lease_id());
                let held = client
                    .lock(format!("{namespace}{name}"), Some(options))
                    .await
                    .map_err(v3_error)?;
                inside();
                let releasing = Instant::now();
                client.unlock(held.key()).await.map_err(v3_error)?;
                Ok(releasing.elapsed())
            }
        }
    }
}

fn v3_error(err: locksmith::etcd_client::Error) -> LockError {
    LockError::Backend {
        backend: "etcd",
        operation: "v3lock".into(),
        source: Box::new(err),
    }
}

/// Counts overlapping holds of one name, and times the handoffs between holders.
#[derive(Default)]
struct OverlapCheck {
    inside: AtomicUsize,
    violations: AtomicUsize,
    /// Whether to time handoffs (contended mode only; elsewhere nobody waits).
    time_handoffs: bool,
    /// When the last holder left (and went on to unlock), and the handoffs seen so far.
    handoffs: std::sync::Mutex<(Option<Instant>, Vec<Duration>)>,
}

impl OverlapCheck {
    fn enter_and_leave(&self) {
        let entered = Instant::now();
        if self.inside.fetch_add(1, Ordering::SeqCst) != 0 {
            self.violations.fetch_add(1, Ordering::SeqCst);
        }
        std::hint::spin_loop();
        self.inside.fetch_sub(1, Ordering::SeqCst);
        if !self.time_handoffs {
            return;
        }
        let mut handoffs = self.handoffs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(left) = handoffs.0 {
            let gap = entered.saturating_duration_since(left);
            handoffs.1.push(gap);
        }
        handoffs.0 = Some(Instant::now());
    }
}

/// Latencies per lock+unlock, overlapping holds seen, handoff times (contended mode) and
/// release times.
type LockRun = (Vec<Duration>, usize, Vec<Duration>, Vec<Duration>);

async fn run_locks(args: &Args, config: &EtcdConfig) -> Result<LockRun, LockError> {
    let clients = if args.mode == Mode::Uncontended {
        1
    } else {
        args.clients.max(1)
    };
    let run = format!("bench/{}", std::process::id());
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let checks: Arc<Vec<OverlapCheck>> = Arc::new(
        (0..clients)
            .map(|_| OverlapCheck {
                time_handoffs: args.mode == Mode::Contended,
                ..OverlapCheck::default()
            })
            .collect(),
    );
    let mut tasks = Vec::new();
    for id in 0..clients {
        let locker = Locker::connect(args.implementation, config).await?;
        let (checks, run, mode) = (Arc::clone(&checks), run.clone(), args.mode);
        tasks.push(tokio::spawn(async move {
            let slot = if mode == Mode::Distinct { id } else { 0 };
            let name = format!("{run}/{slot}");
            let (mut latencies, mut releases) = (Vec::new(), Vec::new());
            while Instant::now() < deadline {
                let started = Instant::now();
                let released = locker
                    .cycle(&name, || checks[slot].enter_and_leave())
                    .await?;
                latencies.push(started.elapsed());
                releases.push(released);
            }
            Ok::<_, LockError>((latencies, releases))
        }));
    }
    let (mut latencies, mut releases) = (Vec::new(), Vec::new());
    for task in tasks {
        let (done, released) = task
            .await
            .map_err(|err| LockError::config_with("a bench client failed", err))??;
        latencies.extend(done);
        releases.extend(released);
    }
    let violations = checks
        .iter()
        .map(|c| c.violations.load(Ordering::SeqCst))
        .sum();
    let handoffs = {
        let mut handoffs = checks[0]
            .handoffs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut handoffs.1)
    };
    Ok((latencies, violations, handoffs, releases))
}

async fn run_floor(args: &Args, config: &EtcdConfig) -> Result<Vec<Duration>, LockError> {
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    floor_samples(config, deadline, None).await
}

/// Delete → watch event of a waiter that watches the key from the revision after its put, until
/// `deadline`: back to back, or with `pause` between samples (a probe beside other clients,
/// which then watches from the store's current revision instead: with other writes going on, a
/// watch from an earlier revision starts behind the store and waits for etcd's 100 ms catch-up
/// loop).
async fn floor_samples(
    config: &EtcdConfig,
    deadline: Instant,
    pause: Option<Duration>,
) -> Result<Vec<Duration>, LockError> {
    let session = EtcdLock::connect(config).await?;
    let mut client = session.client();
    let key = format!("{}bench-floor/{}", config.namespace, std::process::id());
    let mut latencies = Vec::new();
    let failed = |err| LockError::Backend {
        backend: "etcd",
        operation: "floor".into(),
        source: Box::new(err),
    };
    while Instant::now() < deadline {
        let put = client.put(key.as_str(), "", None).await.map_err(failed)?;
        let next = match pause {
            Some(_) => 0,
            None => put.header().map_or(0, |h| h.revision()) + 1,
        };
        let options = WatchOptions::new().with_start_revision(next);
        let mut stream = client
            .watch(key.as_str(), Some(options))
            .await
            .map_err(failed)?;
        let started = Instant::now();
        client.delete(key.as_str(), None).await.map_err(failed)?;
        loop {
            let Some(reply) = stream.message().await.map_err(failed)? else {
                break;
            };
            if reply
                .events()
                .iter()
                .any(|e| e.event_type() == EventType::Delete)
            {
                latencies.push(started.elapsed());
                break;
            }
        }
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
    Ok(latencies)
}

/// Connects the sessions of an election mode and runs it.
async fn run_election(
    args: &Args,
    config: &EtcdConfig,
) -> Result<election::ElectionRun, LockError> {
    if args.implementation != Impl::Locksmith {
        return Err(LockError::config(
            "the election modes measure locksmith only (--impl locksmith)",
        ));
    }
    let name = format!("bench/{}/election", std::process::id());
    let sessions = match args.mode {
        Mode::Failover => args.clients.max(1),
        _ => 2,
    };
    let mut connected = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        connected.push(EtcdLock::connect(config).await?);
    }
    let duration = Duration::from_secs_f64(args.duration);
    if args.mode == Mode::Failover {
        return election::failover(connected, name, duration).await;
    }
    let (Some(observer), Some(leader)) = (connected.pop(), connected.pop()) else {
        return Err(LockError::config(
            "two sessions were connected, fewer came back",
        ));
    };
    match args.mode {
        Mode::Observe => election::observe(leader, observer, name, duration).await,
        _ => {
            let (count, endpoints) = (args.observers, &config.endpoints);
            election::observers(leader, observer, count, name, duration, endpoints).await
        }
    }
}

/// Connects the sessions of the `rw` or `semaphore` mode and runs it.
async fn run_shared(
    args: &Args,
    config: &EtcdConfig,
) -> Result<(rw::SharedRun, semaphore::Fields), LockError> {
    if args.implementation != Impl::Locksmith {
        return Err(LockError::config(
            "the rw and semaphore modes measure locksmith only (--impl locksmith)",
        ));
    }
    let mut sessions = Vec::with_capacity(args.clients.max(1));
    for _ in 0..args.clients.max(1) {
        sessions.push(EtcdLock::connect(config).await?);
    }
    let duration = Duration::from_secs_f64(args.duration);
    let name = format!("bench/{}/shared", std::process::id());
    match args.mode {
        Mode::Rw => Ok((
            rw::run(sessions, name, duration).await?,
            semaphore::Fields::default(),
        )),
        _ => semaphore::run(sessions, name, args.limit, duration).await,
    }
}

/// The report of the `rw` or `semaphore` mode, with the floor sampled during the run
/// (`--probe-floor`).
fn report_shared(
    args: &Args,
    run: rw::SharedRun,
    semaphore: semaphore::Fields,
    loaded_floor: Vec<Duration>,
) -> Result<(), LockError> {
    let elapsed = run.elapsed.as_secs_f64();
    let mut latencies = run.latencies;
    latencies.sort();
    let (handoff_p50_us, handoff_p99_us, handoff_us) = rw::summary(run.handoffs);
    let (release_p50_us, _, release_us) = rw::summary(run.releases);
    let report = Report {
        implementation: args.implementation,
        mode: args.mode,
        clients: args.clients.max(1),
        ops: latencies.len(),
        ops_per_s: (latencies.len() as f64 / elapsed * 10.0).round() / 10.0,
        p50_us: percentile(&latencies, 0.50).round(),
        p99_us: percentile(&latencies, 0.99).round(),
        violations: run.violations,
        handoff_p50_us,
        handoff_p99_us,
        latency_us: Distribution::of(&latencies),
        handoff_us,
        release_p50_us,
        release_us,
        loaded_floor_p50_us: (!loaded_floor.is_empty())
            .then(|| percentile(&loaded_floor, 0.50).round()),
        loaded_floor_us: (!loaded_floor.is_empty()).then(|| Distribution::of(&loaded_floor)),
        election: election::Fields::default(),
        rw: run.fields,
        semaphore,
        setup: args.setup.clone(),
    };
    print_report(&report)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)].as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() -> Result<(), LockError> {
    let args = Args::parse();
    let config = etcd_config(&args.endpoints)?;
    let started = Instant::now();
    let probed = matches!(
        args.mode,
        Mode::Contended | Mode::Failover | Mode::Rw | Mode::Semaphore
    );
    let probe = (args.probe_floor && probed).then(|| {
        let deadline = started + Duration::from_secs_f64(args.duration);
        let config = config.clone();
        tokio::spawn(async move {
            floor_samples(&config, deadline, Some(Duration::from_millis(10))).await
        })
    });
    let (mut latencies, violations, mut handoffs, mut releases) = match args.mode {
        Mode::Floor => (run_floor(&args, &config).await?, 0, Vec::new(), Vec::new()),
        Mode::Failover | Mode::Observe | Mode::Observers => {
            let run = run_election(&args, &config).await?;
            return report_election(&args, run, probe_samples(probe).await?);
        }
        Mode::Rw | Mode::Semaphore => {
            let (run, fields) = run_shared(&args, &config).await?;
            return report_shared(&args, run, fields, probe_samples(probe).await?);
        }
        _ => run_locks(&args, &config).await?,
    };
    let loaded_floor = probe_samples(probe).await?;
    if args.mode != Mode::Contended {
        releases.clear();
    }
    releases.sort();
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    handoffs.sort();
    let handoff = |p| (!handoffs.is_empty()).then(|| percentile(&handoffs, p).round());
    let report = Report {
        implementation: args.implementation,
        mode: args.mode,
        clients: if args.mode == Mode::Uncontended || args.mode == Mode::Floor {
            1
        } else {
            args.clients
        },
        ops: latencies.len(),
        ops_per_s: (latencies.len() as f64 / elapsed * 10.0).round() / 10.0,
        p50_us: percentile(&latencies, 0.50).round(),
        p99_us: percentile(&latencies, 0.99).round(),
        violations,
        handoff_p50_us: handoff(0.50),
        handoff_p99_us: handoff(0.99),
        latency_us: Distribution::of(&latencies),
        handoff_us: (!handoffs.is_empty()).then(|| Distribution::of(&handoffs)),
        release_p50_us: (!releases.is_empty()).then(|| percentile(&releases, 0.50).round()),
        release_us: (!releases.is_empty()).then(|| Distribution::of(&releases)),
        loaded_floor_p50_us: (!loaded_floor.is_empty())
            .then(|| percentile(&loaded_floor, 0.50).round()),
        loaded_floor_us: (!loaded_floor.is_empty()).then(|| Distribution::of(&loaded_floor)),
        election: election::Fields::default(),
        rw: rw::Fields::default(),
        semaphore: semaphore::Fields::default(),
        setup: args.setup.clone(),
    };
    print_report(&report)
}

/// The floor probe's samples, sorted (none without `--probe-floor`).
async fn probe_samples(
    probe: Option<tokio::task::JoinHandle<Result<Vec<Duration>, LockError>>>,
) -> Result<Vec<Duration>, LockError> {
    let mut samples = match probe {
        Some(probe) => probe
            .await
            .map_err(|err| LockError::config_with("the floor probe failed", err))??,
        None => Vec::new(),
    };
    samples.sort();
    Ok(samples)
}

/// The report of an election mode: its own fields beside the common ones, and the floor
/// sampled during the run (`--probe-floor`).
fn report_election(
    args: &Args,
    run: election::ElectionRun,
    loaded_floor: Vec<Duration>,
) -> Result<(), LockError> {
    let elapsed = run.elapsed.as_secs_f64();
    let mut latencies = run.latencies;
    latencies.sort();
    let report = Report {
        implementation: args.implementation,
        mode: args.mode,
        clients: if args.mode == Mode::Failover {
            args.clients.max(1)
        } else {
            1
        },
        ops: run.ops,
        ops_per_s: (run.ops as f64 / elapsed * 10.0).round() / 10.0,
        p50_us: percentile(&latencies, 0.50).round(),
        p99_us: percentile(&latencies, 0.99).round(),
        violations: run.violations,
        handoff_p50_us: None,
        handoff_p99_us: None,
        latency_us: Distribution::of(&latencies),
        handoff_us: None,
        release_p50_us: None,
        release_us: None,
        loaded_floor_p50_us: (!loaded_floor.is_empty())
            .then(|| percentile(&loaded_floor, 0.50).round()),
        loaded_floor_us: (!loaded_floor.is_empty()).then(|| Distribution::of(&loaded_floor)),
        election: run.fields,
        rw: rw::Fields::default(),
        semaphore: semaphore::Fields::default(),
        setup: args.setup.clone(),
    };
    print_report(&report)
}

fn print_report(report: &Report) -> Result<(), LockError> {
    match serde_json::to_string(report) {
        Ok(line) => println!("{line}"),
        Err(err) => return Err(LockError::config_with("cannot print the report", err)),
    }
    Ok(())
}
