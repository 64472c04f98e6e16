//! The election modes of `etcd_bench`, over any [`LeaderElection`] session:
//!
//! - `failover`: N candidates (one session each) campaign on one name; the leader resigns at
//!   once and campaigns again, at the back of the queue. `failover_us`: from the leader's
//!   `resign` call to the next `campaign` returning (the successor's). `latency_us`: one
//!   campaign+resign cycle of a candidate; `resign_us`: the `resign` call itself.
//! - `observe`: a leader proclaims `v1`, `v2`, …; an observer in another session sees each
//!   before the next is proclaimed. `observe_us`: from the `proclaim` call to the observer's
//!   stream yielding that value. `latency_us`: the `proclaim` call.
//! - `observers`: `--observers` watches of one name on one session; a leader in another
//!   session proclaims one value per round. `latency_us`: proclaim → each observer yields it;
//!   `all_seen_us`: proclaim → the last one yields it; the process's RSS and etcd's watch
//!   gauges (`/metrics`) while they observe.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use locksmith::{FencingToken, LeaderElection, LeaderWatch, LockError};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::{percentile, Distribution};

/// How long an observer may take to yield a proclaimed value before the run fails.
const SEEN_TIMEOUT: Duration = Duration::from_secs(60);

/// The report fields of the election modes, beside the common ones.
#[derive(Default, Serialize)]
pub struct Fields {
    /// failover: from the leader's `resign` call to the next `campaign` returning.
    #[serde(skip_serializing_if = "Option::is_none")]
    failover_p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failover_p99_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failover_us: Option<Distribution>,
    /// failover: the `resign` call, start to return.
    #[serde(skip_serializing_if = "Option::is_none")]
    resign_p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resign_us: Option<Distribution>,
    /// observe: from the `proclaim` call to the observer yielding that value.
    #[serde(skip_serializing_if = "Option::is_none")]
    observe_p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    observe_p99_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    observe_us: Option<Distribution>,
    /// observers: how many watched, and per round the time until the last one yielded.
    #[serde(skip_serializing_if = "Option::is_none")]
    observers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    all_seen_p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    all_seen_p99_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    all_seen_us: Option<Distribution>,
    /// observers: `VmRSS` and `VmHWM` of this process in KiB, read once every observer has
    /// yielded the first round's value (later, the latencies kept would count too: 16 bytes
    /// per observer per round).
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hwm_kib: Option<u64>,
    /// observers: etcd's `etcd_debugging_mvcc_watch_stream_total` and
    /// `etcd_debugging_mvcc_watcher_total`, summed over the endpoints, before the observers
    /// started (the leader's session alone, once its leadership's loss watch is in place) and
    /// while all of them observed.
    #[serde(skip_serializing_if = "Option::is_none")]
    watch_streams_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    watchers_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    watch_streams: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    watchers: Option<u64>,
}

/// What an election mode measured.
pub struct ElectionRun {
    /// The per-operation latencies behind `p50_us`, `p99_us` and `latency_us`.
    pub latencies: Vec<Duration>,
    /// Operations for `ops` and `ops_per_s` (cycles, proclamations, rounds).
    pub ops: usize,
    /// Two leaders at once, or a leader whose token is not above its predecessor's.
    pub violations: usize,
    /// How long the timed part took (set-up excluded), for `ops_per_s`.
    pub elapsed: Duration,
    pub fields: Fields,
}

/// p50, p99 and the distribution of `samples`, if there are any.
fn summary(mut samples: Vec<Duration>) -> (Option<f64>, Option<f64>, Option<Distribution>) {
    if samples.is_empty() {
        return (None, None, None);
    }
    samples.sort();
    (
        Some(percentile(&samples, 0.50).round()),
        Some(percentile(&samples, 0.99).round()),
        Some(Distribution::of(&samples)),
    )
}

/// The leaders of the failover run, in turn: overlaps, tokens and the failover times.
#[derive(Default)]
struct Leaders {
    inside: AtomicUsize,
    violations: AtomicUsize,
    /// When the last leader started to resign, its token, and the failovers seen so far.
    turns: std::sync::Mutex<(Option<Instant>, Option<FencingToken>, Vec<Duration>)>,
}

impl Leaders {
    /// A candidate was elected with `token`; it resigns right after this returns.
    fn elected(&self, token: FencingToken) {
        let elected = Instant::now();
        if self.inside.fetch_add(1, Ordering::SeqCst) != 0 {
            self.violations.fetch_add(1, Ordering::SeqCst);
        }
        std::hint::spin_loop();
        self.inside.fetch_sub(1, Ordering::SeqCst);
        let mut turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(resigned) = turns.0 {
            turns.2.push(elected.saturating_duration_since(resigned));
        }
        if turns.1.is_some_and(|previous| previous >= token) {
            self.violations.fetch_add(1, Ordering::SeqCst);
        }
        turns.1 = Some(token);
        turns.0 = Some(Instant::now());
    }
}

/// `failover`: every session campaigns on `name`, resigns at once when elected, and campaigns
/// again, for `duration`.
pub async fn failover<S: LeaderElection + 'static>(
    sessions: Vec<S>,
    name: String,
    duration: Duration,
) -> Result<ElectionRun, LockError> {
    let leaders = Arc::new(Leaders::default());
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for (id, session) in sessions.into_iter().enumerate() {
        let (leaders, name) = (Arc::clone(&leaders), name.clone());
        tasks.push(tokio::spawn(async move {
            let (mut cycles, mut resigns) = (Vec::new(), Vec::new());
            let mut round = 0u64;
            while Instant::now() < deadline {
                let started = Instant::now();
                let value = format!("candidate {id} round {round}");
                let leadership = session.campaign(&name, value.as_bytes()).await?;
                leaders.elected(leadership.fencing_token());
                let resigning = Instant::now();
                leadership.resign().await?;
                resigns.push(resigning.elapsed());
                cycles.push(started.elapsed());
                round += 1;
            }
            Ok::<_, LockError>((cycles, resigns))
        }));
    }
    let (mut latencies, mut resigns) = (Vec::new(), Vec::new());
    for task in tasks {
        let (cycles, resigned) = task
            .await
            .map_err(|err| LockError::config_with("a candidate failed", err))??;
        latencies.extend(cycles);
        resigns.extend(resigned);
    }
    let failovers = {
        let mut turns = leaders.turns.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut turns.2)
    };
    let mut fields = Fields::default();
    (
        fields.failover_p50_us,
        fields.failover_p99_us,
        fields.failover_us,
    ) = summary(failovers);
    (fields.resign_p50_us, _, fields.resign_us) = summary(resigns);
    Ok(ElectionRun {
        ops: latencies.len(),
        latencies,
        violations: leaders.violations.load(Ordering::SeqCst),
        elapsed: started.elapsed(),
        fields,
    })
}

/// One value an observer yielded, and when.
struct Seen {
    observer: usize,
    value: Vec<u8>,
    at: Instant,
}

/// Sends every leader value `watch` yields to `seen` (vacancies are skipped), and the error
/// that ends it.
async fn forward(
    observer: usize,
    mut watch: LeaderWatch,
    seen: mpsc::UnboundedSender<Result<Seen, LockError>>,
) {
    while let Some(item) = watch.next().await {
        let at = Instant::now();
        let item = match item {
            Ok(Some(leader)) => Ok(Seen {
                observer,
                value: leader.value().to_vec(),
                at,
            }),
            Ok(None) => continue,
            Err(err) => Err(err),
        };
        let failed = item.is_err();
        if seen.send(item).is_err() || failed {
            return;
        }
    }
}

/// Waits until each of `observers` has yielded `value`; returns when each did, in arrival
/// order.
async fn wait_seen(
    seen: &mut mpsc::UnboundedReceiver<Result<Seen, LockError>>,
    value: &[u8],
    observers: Range<usize>,
) -> Result<Vec<Instant>, LockError> {
    let want = observers.len();
    let mut by = vec![false; observers.end];
    let mut at = Vec::with_capacity(want);
    let timeout = tokio::time::sleep(SEEN_TIMEOUT);
    tokio::pin!(timeout);
    while at.len() < want {
        let item = tokio::select! {
            item = seen.recv() => item,
            () = &mut timeout => None,
        };
        let Some(item) = item else {
            return Err(LockError::config(format!(
                "{} of {want} observers yielded {:?} within {SEEN_TIMEOUT:?}",
                at.len(),
                String::from_utf8_lossy(value)
            )));
        };
        let seen = item?;
        if seen.value == value && observers.contains(&seen.observer) && !by[seen.observer] {
            by[seen.observer] = true;
            at.push(seen.at);
        }
    }
    Ok(at)
}

/// `observe`: `leader` proclaims values for `duration`, each once the observer on `observer`
/// has yielded the one before.
pub async fn observe<S: LeaderElection + 'static>(
    leader: S,
    observer: S,
    name: String,
    duration: Duration,
) -> Result<ElectionRun, LockError> {
    let leadership = leader.campaign(&name, b"v0").await?;
    let (sender, mut seen) = mpsc::unbounded_channel();
    let forwarding = tokio::spawn(forward(0, observer.observe(&name).await?, sender));
    wait_seen(&mut seen, b"v0", 0..1).await?;
    let started = Instant::now();
    let deadline = started + duration;
    let (mut proclaims, mut observed) = (Vec::new(), Vec::new());
    for round in 1.. {
        if Instant::now() >= deadline {
            break;
        }
        let value = format!("v{round}");
        let started = Instant::now();
        leadership.proclaim(value.as_bytes()).await?;
        proclaims.push(started.elapsed());
        for at in wait_seen(&mut seen, value.as_bytes(), 0..1).await? {
            observed.push(at.saturating_duration_since(started));
        }
    }
    let elapsed = started.elapsed();
    forwarding.abort();
    leadership.resign().await?;
    let mut fields = Fields::default();
    (
        fields.observe_p50_us,
        fields.observe_p99_us,
        fields.observe_us,
    ) = summary(observed);
    Ok(ElectionRun {
        ops: proclaims.len(),
        latencies: proclaims,
        violations: 0,
        elapsed,
        fields,
    })
}

/// `observers`: `count` watches of `name` on the session `observer`; `leader` proclaims one
/// value per round (at least one round) for `duration`. `endpoints` are read for etcd's
/// watch gauges.
pub async fn observers<S: LeaderElection + 'static>(
    leader: S,
    observer: S,
    count: usize,
    name: String,
    duration: Duration,
    endpoints: &[String],
) -> Result<ElectionRun, LockError> {
    let count = count.max(1);
    let leadership = leader.campaign(&name, b"r0").await?;
    let before = leader_watch_gauges(endpoints).await?;
    let (sender, mut seen) = mpsc::unbounded_channel();
    let mut forwarding = Vec::with_capacity(count);
    for id in 0..count {
        let watch = observer.observe(&name).await?;
        forwarding.push(tokio::spawn(forward(id, watch, sender.clone())));
    }
    drop(sender);
    wait_seen(&mut seen, b"r0", 0..count).await?;
    // The rounds are timed from here: setting up the observers is not part of them.
    let started = Instant::now();
    let deadline = started + duration;
    let (mut each, mut all) = (Vec::new(), Vec::new());
    let mut memory = (None, None);
    for round in 1.. {
        if round > 1 && Instant::now() >= deadline {
            break;
        }
        let value = format!("r{round}");
        let started = Instant::now();
        leadership.proclaim(value.as_bytes()).await?;
        let at = wait_seen(&mut seen, value.as_bytes(), 0..count).await?;
        each.extend(at.iter().map(|at| at.saturating_duration_since(started)));
        if let Some(last) = at.last() {
            all.push(last.saturating_duration_since(started));
        }
        if round == 1 {
            memory = (memory_kib("VmRSS:"), memory_kib("VmHWM:"));
        }
    }
    let elapsed = started.elapsed();
    let (streams, watchers) = watch_gauges(endpoints).await?;
    let (rss_kib, hwm_kib) = memory;
    for task in forwarding {
        task.abort();
    }
    leadership.resign().await?;
    let mut fields = Fields {
        observers: Some(count),
        rss_kib,
        hwm_kib,
        watch_streams_before: Some(before.0),
        watchers_before: Some(before.1),
        watch_streams: Some(streams),
        watchers: Some(watchers),
        ..Fields::default()
    };
    let rounds = all.len();
    (
        fields.all_seen_p50_us,
        fields.all_seen_p99_us,
        fields.all_seen_us,
    ) = summary(all);
    Ok(ElectionRun {
        latencies: each,
        ops: rounds,
        violations: 0,
        elapsed,
        fields,
    })
}

/// One field of `/proc/self/status` in KiB (`None` where there is none, as off Linux).
fn memory_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|line| line.strip_prefix(field))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

/// The watch gauges with the leader's session alone: its leadership watches its key for loss
/// from a task of its own, registered on etcd a moment after `campaign` returns. etcd's gauges
/// send no signal, so they are read every 10 ms until that watcher shows (for 5 s at most).
async fn leader_watch_gauges(endpoints: &[String]) -> Result<(u64, u64), LockError> {
    let give_up = Instant::now() + Duration::from_secs(5);
    loop {
        let gauges = watch_gauges(endpoints).await?;
        if gauges.1 > 0 || Instant::now() >= give_up {
            return Ok(gauges);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// etcd's watch stream and watcher gauges, summed over `endpoints` (plain `http` only).
async fn watch_gauges(endpoints: &[String]) -> Result<(u64, u64), LockError> {
    let (mut streams, mut watchers) = (0, 0);
    for endpoint in endpoints {
        let metrics = read_metrics(endpoint).await.map_err(|err| {
            LockError::config_with(format!("cannot read {endpoint}/metrics"), err)
        })?;
        for line in metrics.lines() {
            let Some((metric, value)) = line.split_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            match metric {
                "etcd_debugging_mvcc_watch_stream_total" => streams += value as u64,
                "etcd_debugging_mvcc_watcher_total" => watchers += value as u64,
                _ => {}
            }
        }
    }
    Ok((streams, watchers))
}

/// `GET /metrics` from an etcd client endpoint (`HOST:PORT` or `http://HOST:PORT`).
async fn read_metrics(endpoint: &str) -> std::io::Result<String> {
    let address = endpoint.strip_prefix("http://").unwrap_or(endpoint);
    if address.contains("://") {
        return Err(std::io::Error::other("only plain http endpoints are read"));
    }
    let address = address.trim_end_matches('/');
    let mut connection = tokio::net::TcpStream::connect(address).await?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n");
    connection.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    connection.read_to_end(&mut response).await?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}
