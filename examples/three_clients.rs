//! Three clients, each with its own session, take the same lock in turn: the printout shows
//! strict alternation (every acquire follows the previous holder's release).
//!
//! ```text
//! cargo run --example three_clients                       # memory backend
//! cargo run --example three_clients -- --url etcd://127.0.0.1:2379/demo/
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use locksmith::{LockConfig, LockError};

#[derive(Parser)]
struct Args {
    /// Where the lock lives.
    #[arg(long, env = "LOCKSMITH_URL", default_value = "memory://")]
    url: LockConfig,
    /// The lock name.
    #[arg(long, default_value = "demo/three-clients")]
    name: String,
    /// How long each client holds the lock, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    hold_ms: u64,
}

#[tokio::main]
async fn main() -> Result<(), LockError> {
    let args = Args::parse();
    let start = Instant::now();
    let hold = Duration::from_millis(args.hold_ms);
    println!("three clients on {} contend for {:?}", args.url, args.name);
    let mut clients = Vec::new();
    for id in 1..=3 {
        let session = args.url.connect().await?;
        let name = args.name.clone();
        clients.push(tokio::spawn(async move {
            let guard = session.lock(&name).await?;
            let at = start.elapsed().as_secs_f64();
            println!(
                "{at:7.3}s client {id} acquired {} (token {})",
                guard.key(),
                guard.fencing_token()
            );
            tokio::time::sleep(hold).await;
            let at = start.elapsed().as_secs_f64();
            println!("{at:7.3}s client {id} releases");
            guard.unlock().await
        }));
    }
    for client in clients {
        client
            .await
            .map_err(|err| LockError::config_with("a client task failed", err))??;
    }
    println!(
        "{:7.3}s all three clients done",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
