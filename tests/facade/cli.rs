//! The `locksmith` binary on the memory backend (the etcd runs are in etcd_cli.rs).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn locksmith() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_locksmith"));
    cmd.env_remove("LOCKSMITH_URL");
    cmd
}

#[test]
fn runs_the_command_with_key_and_token_and_passes_its_status() {
    let out = locksmith()
        .args(["lock", "cli/run", "--", "sh", "-c"])
        .arg("echo \"$LOCKSMITH_KEY $LOCKSMITH_FENCING_TOKEN\"; exit 7")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (key, token) = stdout.trim().split_once(' ').unwrap();
    assert!(key.starts_with("cli/run/"), "{stdout}");
    assert!(token.parse::<u64>().unwrap() > 0, "{stdout}");
}

#[test]
fn without_a_command_prints_the_key_and_holds_until_sigterm() {
    let mut child = locksmith()
        .args(["lock", "cli/hold"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("cli/hold/"), "{line}");
    assert_eq!(child.try_wait().unwrap(), None, "still holding");
    let sent = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert!(sent.elapsed() < Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn bad_input_is_one_line_and_a_nonzero_exit() {
    for args in [
        vec!["lock", ""],
        vec!["--url", "redis://x", "lock", "a"],
        vec!["--url", "memory://?ttl=0", "lock", "a"],
        vec!["lock", "a", "--", "/nonexistent/program"],
        vec!["--frobnicate", "lock", "a"],
        vec!["lock"],
    ] {
        let out = locksmith().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("locksmith: ") || first.starts_with("error: "),
            "{args:?}: {stderr}"
        );
    }
}

/// A password in the URL never reaches the terminal: not in a parse error, not in a connect
/// error, not in `--help` (which would show `$LOCKSMITH_URL`).
#[test]
fn output_never_shows_a_password() {
    let secret = "hunter2-Secret";
    for url in [
        format!("etcd://127.0.0.1:1/?user=u&password={secret}&connect_timeout_ms=300"),
        format!("etcd://127.0.0.1:1/?user=u&password={secret}&ttl=0"),
        format!("etcd://127.0.0.1:1/?user=u&password={secret}&colour=red"),
        format!("etcd://u:{secret}@127.0.0.1:1/"),
        format!("memory://?password={secret}"),
    ] {
        let out = locksmith()
            .args(["--url", &url, "lock", "a"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{url}");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(stderr.starts_with("locksmith: "), "{url}: {stderr}");
        assert!(
            !stderr.contains(secret) && !stdout.contains(secret),
            "{stderr}{stdout}"
        );
    }
    let help = locksmith()
        .env(
            "LOCKSMITH_URL",
            format!("etcd://h:1/?user=u&password={secret}"),
        )
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("LOCKSMITH_URL") && !help.contains(secret),
        "{help}"
    );
}

/// SIGTERM to `locksmith` reaches the command as SIGTERM (it may clean up), and `locksmith`
/// exits as a process stopped by SIGTERM.
#[test]
fn sigterm_is_passed_on_to_the_command() {
    let mut child = locksmith()
        .args(["lock", "cli/term", "--", "sh", "-c"])
        .arg("trap 'echo got-term; kill $!; exit 3' TERM; sleep 60 & echo started; wait")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "got-term\n");
    assert_eq!(child.wait().unwrap().code(), Some(143));
}

#[test]
fn elect_runs_the_command_while_leading_and_passes_its_status() {
    let out = locksmith()
        .args(["elect", "cli/elect", "proposal", "--", "sh", "-c"])
        .arg("echo \"$LOCKSMITH_KEY $LOCKSMITH_FENCING_TOKEN\"; exit 6")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (key, token) = stdout.trim().split_once(' ').unwrap();
    assert!(key.starts_with("cli/elect/"), "{stdout}");
    assert!(token.parse::<u64>().unwrap() > 0, "{stdout}");
}

/// Starts `locksmith ARGS` and returns it with its stdout lines.
fn spawn_reading(args: &[&str]) -> (std::process::Child, std::io::Lines<impl BufRead>) {
    let mut child = locksmith()
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

fn terminate(child: &std::process::Child) {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
}

#[test]
fn elect_without_a_command_prints_key_and_value_and_leads_until_sigterm() {
    let (mut child, mut lines) = spawn_reading(&["elect", "cli/lead", "line\none"]);
    let key = lines.next().unwrap().unwrap();
    assert!(key.starts_with("cli/lead/"), "{key}");
    assert_eq!(lines.next().unwrap().unwrap(), "line\\none", "one line");
    assert_eq!(child.try_wait().unwrap(), None, "still leading");
    terminate(&child);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn listen_prints_vacancy_and_stops_on_sigterm() {
    let (mut child, mut lines) = spawn_reading(&["elect", "--listen", "cli/nobody"]);
    assert_eq!(lines.next().unwrap().unwrap(), "<none>");
    terminate(&child);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn elect_refuses_bad_input_with_one_line() {
    for args in [
        vec!["elect", "cli/x"],
        vec!["elect", "--listen", "cli/x", "value"],
        vec!["elect", "--listen", "cli/x", "--", "true"],
        vec!["elect", "", "value"],
        vec!["elect", "--listen", "bad\u{7}name"],
    ] {
        let out = locksmith().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("locksmith: ") || first.starts_with("error: "),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn elect_help_documents_the_listen_format() {
    let out = locksmith().args(["elect", "--help"]).output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        help.contains("KEY<TAB>FENCING_TOKEN<TAB>VALUE") && help.contains("<none>"),
        "{help}"
    );
}

// ---- read, write, semaphore ----

#[test]
fn read_write_and_semaphore_run_the_command_with_key_and_token() {
    for (args, status) in [
        (vec!["read", "cli/rw"], 3),
        (vec!["write", "cli/rw"], 4),
        (vec!["semaphore", "cli/sem", "--limit", "2"], 5),
    ] {
        let out = locksmith()
            .args(&args)
            .args(["--", "sh", "-c"])
            .arg(format!(
                "echo \"$LOCKSMITH_KEY $LOCKSMITH_FENCING_TOKEN\"; exit {status}"
            ))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(status), "{args:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let (key, token) = stdout.trim().split_once(' ').unwrap();
        assert!(key.contains(args[1]), "{args:?}: {stdout}");
        assert!(token.parse::<u64>().unwrap() > 0, "{args:?}: {stdout}");
    }
}

#[test]
fn semaphore_without_a_command_prints_the_key_and_holds_until_sigterm() {
    let (mut child, mut lines) = spawn_reading(&["semaphore", "cli/permit", "--limit", "1"]);
    let key = lines.next().unwrap().unwrap();
    assert!(key.contains("cli/permit"), "{key}");
    assert_eq!(child.try_wait().unwrap(), None, "still holding");
    terminate(&child);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn a_zero_limit_is_the_library_error_on_one_line() {
    let out = locksmith()
        .args(["semaphore", "cli/zero", "--limit", "0", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "locksmith: invalid limit 0 for semaphore \"cli/zero\": must be at least 1\n"
    );
}

#[test]
fn read_write_and_semaphore_refuse_bad_input_with_one_line() {
    for args in [
        vec!["read", ""],
        vec!["write", "bad\u{7}name"],
        vec!["read"],
        vec!["write", "a", "--", "/nonexistent/program"],
        vec!["semaphore", "a"],
        vec!["semaphore", "a", "--limit", "-1"],
        vec!["semaphore", "a", "--limit", "many"],
        vec!["semaphore", "", "--limit", "1"],
    ] {
        let out = locksmith().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("locksmith: ") || first.starts_with("error: "),
            "{args:?}: {stderr}"
        );
        if first.starts_with("locksmith: ") {
            assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        }
    }
}

#[test]
fn help_lists_every_hold_command() {
    let out = locksmith().arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for command in ["lock", "read", "write", "semaphore", "elect"] {
        assert!(
            help.lines()
                .any(|line| line.trim_start().starts_with(command)),
            "{command}: {help}"
        );
    }
    let out = locksmith().args(["semaphore", "--help"]).output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        help.contains("--limit <N>") && help.contains("LOCKSMITH_KEY"),
        "{help}"
    );
}
