//! `locksmith`: take a lock from the command line, like `etcdctl lock`.
//!
//! ```text
//! locksmith --url etcd://127.0.0.1:2379/ lock NAME -- CMD ARGS...   # hold while CMD runs
//! locksmith --url etcd://127.0.0.1:2379/ lock NAME                  # print the key, hold until SIGINT/SIGTERM
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use locksmith::{DistributedLock, LockConfig, LockError, LockGuard};
use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};

/// How long a release or session close may take on the way out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(
    name = "locksmith",
    version,
    about = "Named distributed locks from the command line"
)]
struct Cli {
    /// Where the locks live: etcd://HOST:PORT[,HOST:PORT…]/[NAMESPACE][?ttl=SECS] or memory://
    // Read as text and parsed in `main`: clap quotes a value it cannot parse, and a URL may
    // carry a password. For the same reason `--help` does not show the environment's value.
    #[arg(
        long,
        env = "LOCKSMITH_URL",
        hide_env_values = true,
        default_value = "memory://",
        global = true
    )]
    url: String,

    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Takes the lock NAME. With a command: holds it while the command runs (with
    /// LOCKSMITH_KEY and LOCKSMITH_FENCING_TOKEN in its environment) and exits with its
    /// status. Without: prints the key and holds until SIGINT or SIGTERM.
    Lock {
        /// The lock name.
        name: String,
        /// The command to run while holding the lock (after `--`).
        #[arg(last = true)]
        command: Vec<String>,
    },
}

/// Why the program stops, and with which status.
enum Outcome {
    Exit(u8),
    Failed(LockError),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let Commands::Lock { name, command } = cli.command;
    let connected = match LockConfig::from_url(&cli.url) {
        Ok(config) => config.connect().await,
        Err(err) => Err(err),
    };
    let outcome = match connected {
        Ok(session) => {
            let outcome = lock(&session, &name, &command).await;
            // Revoke the session before exiting: background cleanup would not outlive main.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.close()).await;
            outcome
        }
        Err(err) => Outcome::Failed(err),
    };
    match outcome {
        Outcome::Exit(code) => ExitCode::from(code),
        Outcome::Failed(err) => {
            eprintln!("locksmith: {}", one_line(&err));
            ExitCode::from(1)
        }
    }
}

async fn lock(session: &Arc<dyn DistributedLock>, name: &str, command: &[String]) -> Outcome {
    let mut stop = match Signals::new() {
        Ok(stop) => stop,
        Err(err) => return Outcome::Failed(err),
    };
    let guard = tokio::select! {
        guard = session.lock(name) => match guard {
            Ok(guard) => guard,
            Err(err) => return Outcome::Failed(err),
        },
        // Dropping the lock future withdraws our key from the queue.
        code = stop.recv() => return Outcome::Exit(code),
    };
    let outcome = match command.split_first() {
        Some((program, args)) => run_holding(&guard, program, args, &mut stop).await,
        None => hold_until_signal(&guard, &mut stop).await,
    };
    match guard.unlock().await {
        Ok(()) => outcome,
        Err(err) => match outcome {
            Outcome::Exit(0) => Outcome::Failed(err),
            other => other,
        },
    }
}

async fn hold_until_signal(guard: &LockGuard, stop: &mut Signals) -> Outcome {
    println!("{}", guard.key());
    tokio::select! {
        _ = stop.recv() => Outcome::Exit(0),
        reason = guard.lost() => Outcome::Failed(LockError::LockLost {
            name: guard.name().to_owned(),
            reason,
        }),
    }
}

async fn run_holding(
    guard: &LockGuard,
    program: &str,
    args: &[String],
    stop: &mut Signals,
) -> Outcome {
    let child = Command::new(program)
        .args(args)
        .env("LOCKSMITH_KEY", guard.key())
        .env("LOCKSMITH_FENCING_TOKEN", guard.fencing_token().to_string())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) => {
            return Outcome::Failed(LockError::config_with(
                format!("cannot run {program:?}"),
                err,
            ))
        }
    };
    tokio::select! {
        status = child.wait() => match status {
            Ok(status) => Outcome::Exit(exit_code(status)),
            Err(err) => Outcome::Failed(LockError::config_with(format!("waiting for {program:?} failed"), err)),
        },
        code = stop.recv() => {
            let _ = child.kill().await;
            Outcome::Exit(code)
        }
        reason = guard.lost() => {
            let _ = child.kill().await;
            Outcome::Failed(LockError::LockLost { name: guard.name().to_owned(), reason })
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

/// SIGINT and SIGTERM, answered with the conventional exit status.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, LockError> {
        let listen = |kind| {
            signal(kind).map_err(|err| LockError::config_with("cannot listen for signals", err))
        };
        Ok(Signals {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) -> u8 {
        tokio::select! {
            _ = self.interrupt.recv() => 130,
            _ = self.terminate.recv() => 143,
        }
    }
}

/// The error and its causes on one line.
fn one_line(err: &LockError) -> String {
    let mut line = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        // Messages that already quote their cause are not repeated.
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line.replace('\n', " ")
}
