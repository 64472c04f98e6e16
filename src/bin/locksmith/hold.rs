//! `locksmith lock`, `read`, `write` and `semaphore`: one way to hold a name, four ways to take it.

use std::sync::Arc;

use clap::Args;
use locksmith::{Coordination, LockConfig, LockError, LockGuard, Primitive};

use crate::session::Session;
use crate::signals::Signals;
use crate::waiting::Waiting;
use crate::{command, hold_until_signal, print_lines, release, Held, Outcome, RunOptions};

/// What every hold command takes on its command line.
#[derive(Args)]
pub struct HoldArgs {
    /// The name to take.
    name: String,
    /// The command to run while holding (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
    #[command(flatten)]
    run: RunOptions,
    /// Print nothing on stderr while waiting behind earlier holders.
    #[arg(short, long)]
    quiet: bool,
}

/// How a hold command takes its name.
#[derive(Clone, Copy)]
pub enum Acquire {
    /// The exclusive lock (`DistributedLock::lock`).
    Lock,
    /// A shared read lock (`DistributedRwLock::read`).
    Read,
    /// The exclusive write lock (`DistributedRwLock::write`).
    Write,
    /// One of `limit` permits (`DistributedSemaphore::acquire`).
    Permit { limit: u32 },
}

impl Acquire {
    /// Waits until `name` is held. Dropping the future withdraws from the queue.
    async fn acquire(self, session: &dyn Coordination, name: &str) -> Result<LockGuard, LockError> {
        match self {
            Acquire::Lock => session.lock(name).await,
            Acquire::Read => session.read(name).await,
            Acquire::Write => session.write(name).await,
            Acquire::Permit { limit } => session.acquire(name, limit).await,
        }
    }

    /// Refuses what can be refused before connecting.
    fn check(self, name: &str) -> Result<(), LockError> {
        match self {
            Acquire::Permit { limit } => locksmith_api::validate_limit(name, limit),
            Acquire::Lock | Acquire::Read | Acquire::Write => Ok(()),
        }
    }

    /// The queue this acquisition waits in.
    fn primitive(self) -> Primitive {
        match self {
            Acquire::Lock => Primitive::Lock,
            Acquire::Read | Acquire::Write => Primitive::RwLock,
            Acquire::Permit { .. } => Primitive::Semaphore,
        }
    }

    fn held(self, name: &str) -> Held {
        let what = match self {
            Acquire::Lock => "lock",
            Acquire::Read => "read lock",
            Acquire::Write => "write lock",
            Acquire::Permit { .. } => "permit of semaphore",
        };
        Held::new(what, name)
    }
}

/// Connects, takes `args.name` as `acquire` says, holds it (while the command runs, or until
/// SIGINT or SIGTERM), releases it and closes the session.
pub async fn run(config: &LockConfig, acquire: Acquire, args: HoldArgs) -> Outcome {
    if let Err(err) = acquire.check(&args.name) {
        return err.into();
    }
    let session = match Session::connect(config).await {
        Ok(session) => session,
        Err(err) => return err.into(),
    };
    let waiting = Waiting::new(&session, args.quiet);
    let outcome = hold(&session.coordination, acquire, &args, &waiting).await;
    // Revoke the session before exiting: background cleanup would not outlive main.
    session.close().await;
    outcome
}

async fn hold(
    session: &Arc<dyn Coordination>,
    acquire: Acquire,
    args: &HoldArgs,
    waiting: &Waiting,
) -> Outcome {
    let mut stop = match Signals::new() {
        Ok(stop) => stop,
        Err(message) => return Outcome::Failed(message),
    };
    let held = acquire.held(&args.name);
    let acquired = waiting.reported(
        acquire.acquire(session.as_ref(), &args.name),
        &args.name,
        acquire.primitive(),
        &held,
    );
    let guard = tokio::select! {
        guard = acquired => match guard {
            Ok(guard) => guard,
            Err(err) => return err.into(),
        },
        // Dropping the acquire future withdraws our key from the queue.
        signal = stop.recv() => return Outcome::Exit(signal.exit_code()),
    };
    let kill_after = args.run.kill_after;
    let outcome = match args.command.split_first() {
        Some((program, rest)) => {
            command::run_while_held(&guard, &held, program, rest, kill_after, &mut stop).await
        }
        None => match print_lines(&[guard.key()]) {
            Ok(()) => hold_until_signal(guard.lost(), &held, &mut stop).await,
            Err(outcome) => outcome,
        },
    };
    release(guard.unlock().await, outcome)
}
