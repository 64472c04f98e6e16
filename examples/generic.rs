//! A service function generic over the lock provider, and its unit test on the memory backend.
//!
//! ```text
//! cargo run --example generic
//! cargo test --example generic
//! ```

use std::sync::Arc;

use clap::Parser;
use locksmith::{DistributedLock, LockConfig, LockError};

/// Runs the nightly report at most once at a time across every process sharing the lock
/// store. Returns false when another process is already running it.
pub async fn run_nightly_report<L>(locks: &L, report: &mut Vec<String>) -> Result<bool, LockError>
where
    L: DistributedLock + ?Sized,
{
    let Some(guard) = locks.try_lock("reports/nightly").await? else {
        return Ok(false);
    };
    report.push(format!(
        "report written under fencing token {}",
        guard.fencing_token()
    ));
    guard.unlock().await?;
    Ok(true)
}

#[derive(Parser)]
struct Args {
    /// Where the lock lives.
    #[arg(long, env = "LOCKSMITH_URL", default_value = "memory://")]
    url: LockConfig,
}

#[tokio::main]
async fn main() -> Result<(), LockError> {
    let args = Args::parse();
    let locks: Arc<dyn DistributedLock> = args.url.connect().await?;
    let mut report = Vec::new();
    let ran = run_nightly_report(&*locks, &mut report).await?;
    println!("ran: {ran}; {report:?}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use locksmith::MemoryStore;

    #[tokio::test]
    async fn skips_when_another_process_runs_it() {
        let store = MemoryStore::new();
        let (ours, theirs) = (store.connect().unwrap(), store.connect().unwrap());
        let mut report = Vec::new();

        let held = theirs.lock("reports/nightly").await.unwrap();
        assert!(!run_nightly_report(&ours, &mut report).await.unwrap());
        assert!(report.is_empty());

        held.unlock().await.unwrap();
        assert!(run_nightly_report(&ours, &mut report).await.unwrap());
        assert_eq!(report.len(), 1);
    }
}
