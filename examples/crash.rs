//! The deadlock test: one client takes the lock and returns without unlocking (its guard is
//! leaked, as a crashed process would). Closing its session releases the lock, and the other
//! clients still get it.
//!
//! ```text
//! cargo run --example crash
//! cargo run --example crash -- --url etcd://127.0.0.1:2379/demo/
//! ```

use std::time::Instant;

use clap::Parser;
use locksmith::{LockConfig, LockError};

#[derive(Parser)]
struct Args {
    /// Where the lock lives.
    #[arg(long, env = "LOCKSMITH_URL", default_value = "memory://")]
    url: LockConfig,
    /// The lock name.
    #[arg(long, default_value = "demo/crash")]
    name: String,
}

/// Takes the lock and "crashes": returns without unlocking, leaking the guard.
async fn careless_client(config: &LockConfig, name: &str) -> Result<(), LockError> {
    let session = config.connect().await?;
    let guard = session.lock(name).await?;
    println!(
        "careless client acquired {} and returns without unlocking",
        guard.key()
    );
    std::mem::forget(guard);
    Ok(()) // `session` is dropped here: the session closes and its lock is released
}

#[tokio::main]
async fn main() -> Result<(), LockError> {
    let args = Args::parse();
    let start = Instant::now();
    careless_client(&args.url, &args.name).await?;
    for id in 1..=2 {
        let session = args.url.connect().await?;
        let guard =
            tokio::time::timeout(std::time::Duration::from_secs(30), session.lock(&args.name))
                .await
                .map_err(|_| LockError::config("deadlock: the lock was never released"))??;
        let at = start.elapsed().as_secs_f64();
        println!(
            "{at:7.3}s client {id} acquired {} (token {})",
            guard.key(),
            guard.fencing_token()
        );
        guard.unlock().await?;
    }
    println!("no deadlock: the leaked hold ended with its session");
    Ok(())
}
