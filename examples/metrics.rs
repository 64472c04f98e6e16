//! locksmith's metrics in Prometheus format: three clients contend for one lock on the memory
//! backend (and on etcd with `--etcd URL`) while an exporter serves the metrics on
//! `http://127.0.0.1:9898/metrics`.
//!
//! ```text
//! cargo run --example metrics --features metrics                       # until Ctrl-C
//! cargo run --example metrics --features metrics -- --secs 2           # then print a scrape
//! cargo run --example metrics --features metrics -- --etcd etcd://127.0.0.1:2379/demo/
//! ```
//!
//! With `--secs N` it stops after N seconds, scrapes its own listener once and prints what
//! it got on stdout.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use locksmith::{instrument, DistributedLock, LockConfig, LockError};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    /// Where the exporter listens: a loopback address only.
    #[arg(long, default_value = "127.0.0.1:9898")]
    listen: SocketAddr,
    /// Also contend on etcd, at this `etcd://` URL.
    #[arg(long)]
    etcd: Option<LockConfig>,
    /// The lock name.
    #[arg(long, default_value = "demo/metrics")]
    name: String,
    /// How long each client holds the lock, in milliseconds.
    #[arg(long, default_value_t = 50)]
    hold_ms: u64,
    /// Stop after this many seconds and print one scrape (default: run until Ctrl-C).
    #[arg(long)]
    secs: Option<u64>,
}

/// Wait, hold and keepalive times from 1 ms to 10 s, as Prometheus histograms.
const BUCKETS: &[f64] = &[0.001, 0.01, 0.1, 1.0, 10.0];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        return Err(format!("--listen {}: only loopback addresses", args.listen).into());
    }
    // Installs the recorder for the whole process and serves it from this runtime.
    PrometheusBuilder::new()
        .with_http_listener(args.listen)
        .set_buckets(BUCKETS)?
        .install()?;
    instrument::describe_metrics();
    println!("# metrics on http://{}/metrics", args.listen);

    let mut backends: Vec<LockConfig> = vec!["memory://".parse()?];
    backends.extend(args.etcd.clone());
    let hold = Duration::from_millis(args.hold_ms);
    for config in &backends {
        for client in 0..3 {
            let session = config.connect().await?;
            tokio::spawn(contend(session, args.name.clone(), client, hold));
        }
    }

    match args.secs {
        Some(secs) => {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            print!("{}", scrape(args.listen).await?);
        }
        None => tokio::signal::ctrl_c().await?,
    }
    Ok(())
}

/// One client: every round a `try_lock` (busy while another holds), then a `lock`, a hold
/// and an unlock; every tenth round it drops the guard instead, every seventh it gives up
/// waiting after 10 ms.
async fn contend(
    session: std::sync::Arc<dyn DistributedLock>,
    name: String,
    id: u64,
    hold: Duration,
) {
    for round in 0u64.. {
        let attempt = async {
            if let Some(guard) = session.try_lock(&name).await? {
                tokio::time::sleep(hold).await;
                return guard.unlock().await;
            }
            if (round + id) % 7 == 0 {
                let _ = tokio::time::timeout(Duration::from_millis(10), session.lock(&name)).await;
                return Ok(());
            }
            let guard = session.lock(&name).await?;
            tokio::time::sleep(hold).await;
            if round % 10 == 0 {
                drop(guard);
                Ok(())
            } else {
                guard.unlock().await
            }
        };
        if let Err(err) = attempt.await {
            eprintln!("client {id}: {err}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// `GET /metrics` from the exporter's own listener.
async fn scrape(at: SocketAddr) -> Result<String, Box<dyn std::error::Error>> {
    let mut stream = tokio::net::TcpStream::connect(at).await?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {at}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(LockError::config(format!("unexpected scrape reply: {response:.200}")).into()),
    }
}
