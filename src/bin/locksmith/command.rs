//! Running a command while a lock or leadership is held, and stopping it when the hold ends:
//! a command must not go on believing it holds what it lost.

use std::process::ExitStatus;
use std::time::Duration;

use locksmith::LockGuard;
use tokio::process::{Child, Command};

use crate::signals::Signals;
use crate::{Held, Outcome};

/// How a command that was asked to stop ended.
enum Ending {
    Exited(ExitStatus),
    /// Still running after the grace period (or a second signal to `locksmith`): SIGKILL.
    Killed,
}

/// Runs `program args` while `guard` holds, with `LOCKSMITH_KEY` and
/// `LOCKSMITH_FENCING_TOKEN` in its environment, and exits with its status.
///
/// If the hold is lost, or `locksmith` gets SIGINT or SIGTERM, the command gets SIGTERM and
/// `kill_after` to exit, then SIGKILL. A loss is a failure whatever the command's status.
pub async fn run_while_held(
    guard: &LockGuard,
    held: &Held,
    program: &str,
    args: &[String],
    kill_after: Duration,
    stop: &mut Signals,
) -> Outcome {
    // Lost between acquiring and here: the command never starts.
    if let Some(reason) = guard.lost_reason() {
        return Outcome::Failed(format!("{held} lost ({reason}); {program:?} not started"));
    }
    let child = Command::new(program)
        .args(args)
        .env("LOCKSMITH_KEY", guard.key())
        .env("LOCKSMITH_FENCING_TOKEN", guard.fencing_token().to_string())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) => return Outcome::Failed(format!("cannot run {program:?}: {err}")),
    };
    tokio::select! {
        status = child.wait() => match status {
            Ok(status) => Outcome::Exit(exit_code(status)),
            Err(err) => Outcome::Failed(format!("waiting for {program:?} failed: {err}")),
        },
        signal = stop.recv() => {
            stop_child(&mut child, kill_after, stop).await;
            Outcome::Exit(signal.exit_code())
        }
        reason = guard.lost() => {
            let ending = match stop_child(&mut child, kill_after, stop).await {
                Ending::Exited(status) => format!("it exited with {}", describe(status)),
                Ending::Killed => format!("it was still running after {kill_after:?}: sent SIGKILL"),
            };
            Outcome::Failed(format!("{held} lost ({reason}): sent SIGTERM to {program:?}; {ending}"))
        }
    }
}

/// SIGTERM, then up to `kill_after` for the command to exit (cut short by another SIGINT or
/// SIGTERM to `locksmith`), then SIGKILL.
async fn stop_child(child: &mut Child, kill_after: Duration, stop: &mut Signals) -> Ending {
    terminate(child);
    let exited = tokio::select! {
        waited = tokio::time::timeout(kill_after, child.wait()) => match waited {
            Ok(Ok(status)) => Some(status),
            Ok(Err(_)) | Err(_) => None,
        },
        _ = stop.recv() => None,
    };
    match exited {
        Some(status) => Ending::Exited(status),
        None => {
            // An error here means the child is already gone.
            let _ = child.kill().await;
            Ending::Killed
        }
    }
}

/// Sends SIGTERM to the child, unless it has already been reaped.
fn terminate(child: &Child) {
    let Some(pid) = child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()) else {
        return;
    };
    // SAFETY: kill(2) takes two integers and touches no memory. The pid is our own child,
    // not yet reaped (`id()` is `None` once it is), so it cannot name another process.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// The status `locksmith` exits with for a command that ended with `status`: its code, or
/// 128 + the signal that ended it, as a shell reports it.
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}
