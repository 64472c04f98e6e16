//! The `locksmith` binary against a real etcd, with `etcdctl lock` as the reference peer.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use locksmith_etcd::testing::EtcdServer;

/// The longest any step may take before the test fails.
const GUARD: Duration = Duration::from_secs(20);
/// How long a blocked waiter is watched to make sure it stays blocked.
const QUIET: Duration = Duration::from_millis(500);

fn etcd() -> EtcdServer {
    match EtcdServer::start() {
        Ok(server) => server,
        Err(err) => panic!("cannot start etcd (run `make test`, which installs it): {err}"),
    }
}

/// A child process whose stdout lines arrive on a channel, and whose stderr is collected.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let mut stderr: ChildStderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (tx, stderr_text) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            let _ = tx.send(text);
        });
        Running {
            child,
            lines,
            stderr: stderr_text,
        }
    }

    fn line_within(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Everything the process (and its children) wrote on stderr, once they have closed it.
    fn stderr(&self) -> String {
        self.stderr.recv_timeout(GUARD).expect("stderr closed")
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + GUARD;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "process did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn locksmith(endpoint: &str, name: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_locksmith"));
    cmd.args(["--url", &format!("etcd://{endpoint}/"), "lock", name]);
    cmd
}

fn etcdctl(endpoint: &str, name: &str) -> Command {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "lock", name]);
    cmd
}

#[test]
fn etcdctl_waits_for_locksmith() {
    let server = etcd();
    let ours = Running::spawn(locksmith(&server.endpoint(), "interop"));
    let key = ours.line_within(GUARD).expect("locksmith printed its key");
    assert!(key.starts_with("interop/"), "{key}");
    let theirs = Running::spawn(etcdctl(&server.endpoint(), "interop"));
    assert_eq!(theirs.line_within(QUIET), None, "etcdctl got a held lock");
    ours.signal("-TERM");
    let their_key = theirs
        .line_within(GUARD)
        .expect("etcdctl acquired after release");
    assert!(their_key.starts_with("interop/"), "{their_key}");
}

#[test]
fn locksmith_waits_for_etcdctl() {
    let server = etcd();
    let theirs = Running::spawn(etcdctl(&server.endpoint(), "interop"));
    theirs.line_within(GUARD).expect("etcdctl printed its key");
    let mut ours = Running::spawn(locksmith(&server.endpoint(), "interop"));
    assert_eq!(ours.line_within(QUIET), None, "locksmith got a held lock");
    theirs.signal("-INT");
    ours.line_within(GUARD)
        .expect("locksmith acquired after release");
    ours.signal("-TERM");
    assert_eq!(ours.wait().code(), Some(0));
}

#[test]
fn killed_etcdctl_holder_is_replaced_within_its_ttl() {
    let server = etcd();
    let theirs = Running::spawn(etcdctl(&server.endpoint(), "interop"));
    theirs.line_within(GUARD).expect("etcdctl printed its key");
    let ours = Running::spawn(locksmith(&server.endpoint(), "interop"));
    theirs.signal("-KILL");
    let started = std::time::Instant::now();
    ours.line_within(Duration::from_secs(15))
        .expect("locksmith acquired within etcdctl's 10 s TTL (plus slack)");
    assert!(
        started.elapsed() < Duration::from_secs(13),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn signal_while_waiting_withdraws_the_key() {
    let server = etcd();
    let holder = Running::spawn(locksmith(&server.endpoint(), "withdraw"));
    holder.line_within(GUARD).expect("holder printed its key");
    let mut waiter = Running::spawn(locksmith(&server.endpoint(), "withdraw"));
    assert_eq!(waiter.line_within(QUIET), None);
    waiter.signal("-INT");
    assert_eq!(waiter.wait().code(), Some(130));
    let keys = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &server.endpoint(),
            "get",
            "--prefix",
            "--keys-only",
            "withdraw/",
        ])
        .output()
        .unwrap();
    let keys = String::from_utf8(keys.stdout).unwrap();
    let count = keys.lines().filter(|l| !l.is_empty()).count();
    assert_eq!(count, 1, "only the holder's key is left: {keys}");
}

#[test]
fn command_runs_under_the_lock_with_key_and_token() {
    let server = etcd();
    let out = locksmith(&server.endpoint(), "cmd")
        .args([
            "--",
            "sh",
            "-c",
            "echo \"$LOCKSMITH_KEY $LOCKSMITH_FENCING_TOKEN\"; exit 5",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (key, token) = stdout.trim().split_once(' ').unwrap();
    assert!(key.starts_with("cmd/"), "{stdout}");
    assert!(token.parse::<u64>().unwrap() > 0);
}

#[test]
fn unreachable_etcd_is_one_line_and_nonzero() {
    let out = Command::new(env!("CARGO_BIN_EXE_locksmith"))
        .args([
            "--url",
            "etcd://127.0.0.1:1/?connect_timeout_ms=500",
            "lock",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
}

/// Refusals leave nothing behind: no key, no lease.
async fn nothing_left(endpoint: &str, user: Option<(&str, &str)>) {
    use locksmith::etcd_client::{Client, ConnectOptions, GetOptions};
    let options = user.map(|(u, p)| ConnectOptions::new().with_user(u, p));
    let mut client = Client::connect([format!("http://{endpoint}")], options)
        .await
        .unwrap();
    let keys = client
        .get("", Some(GetOptions::new().with_all_keys().with_keys_only()))
        .await
        .unwrap();
    assert_eq!(keys.kvs().len(), 0, "keys left behind");
    let leases = client.leases().await.unwrap();
    assert_eq!(leases.leases().len(), 0, "leases left behind");
}

#[tokio::test]
async fn bad_names_are_one_line_errors_and_leave_nothing() {
    let server = etcd();
    // A NUL cannot travel in argv at all; other control characters can, and are refused.
    for name in ["", "line\nbreak", "bell\u{7}", &"x".repeat(2000)] {
        let out = locksmith(&server.endpoint(), name).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{name:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("invalid lock name"), "{stderr}");
    }
    nothing_left(&server.endpoint(), None).await;
}

#[tokio::test]
async fn wrong_credentials_are_one_line_errors_and_leave_nothing() {
    use locksmith::etcd_client::Client;
    let server = etcd();
    let mut admin = Client::connect([server.client_url()], None).await.unwrap();
    admin.user_add("root", "secret", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();

    for url in [
        format!("etcd://{}/?user=root&password=wrong", server.endpoint()),
        format!("etcd://{}/", server.endpoint()),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_locksmith"))
            .args(["--url", &url, "lock", "guarded"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{url}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("authentication failed")
                || stderr.contains("permission denied")
                || stderr.contains("user name is empty"),
            "{stderr}"
        );
    }
    nothing_left(&server.endpoint(), Some(("root", "secret"))).await;
}

/// Prints the key once it has started (and a `sleep` to wait on); on SIGTERM says so and exits 3.
const TRAPS_TERM: &str =
    "trap 'echo got-term; kill $!; exit 3' TERM; sleep 60 & echo \"$LOCKSMITH_KEY\"; wait";

async fn etcd_client(endpoint: &str) -> locksmith::etcd_client::Client {
    locksmith::etcd_client::Client::connect([format!("http://{endpoint}")], None)
        .await
        .unwrap()
}

/// The lines `locksmith` itself wrote on stderr (the command may write there too).
fn locksmith_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| line.starts_with("locksmith: "))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_lock_key_stops_the_command_with_sigterm() {
    let server = etcd();
    let mut cmd = locksmith(&server.endpoint(), "lost");
    cmd.args(["--", "sh", "-c", TRAPS_TERM]);
    let mut ours = Running::spawn(cmd);
    let key = ours.line_within(GUARD).expect("the command started");
    assert!(key.starts_with("lost/"), "{key}");
    let mut client = etcd_client(&server.endpoint()).await;
    let deleted = client.delete(key.as_str(), None).await.unwrap();
    assert_eq!(deleted.deleted(), 1);
    assert_eq!(ours.line_within(GUARD).as_deref(), Some("got-term"));
    assert_eq!(ours.wait().code(), Some(1));
    let stderr = ours.stderr();
    assert_eq!(
        locksmith_lines(&stderr),
        [
            r#"locksmith: lock "lost" lost (hold deleted): sent SIGTERM to "sh"; it exited with status 3"#
        ],
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_lease_stops_the_command_with_sigterm() {
    let server = etcd();
    let mut cmd = locksmith(&server.endpoint(), "revoked");
    cmd.args(["--", "sh", "-c", TRAPS_TERM]);
    let mut ours = Running::spawn(cmd);
    let key = ours.line_within(GUARD).expect("the command started");
    let lease = key.rsplit_once('/').unwrap().1;
    let lease = i64::from_str_radix(lease, 16).unwrap();
    let mut client = etcd_client(&server.endpoint()).await;
    client.lease_revoke(lease).await.unwrap();
    assert_eq!(ours.line_within(GUARD).as_deref(), Some("got-term"));
    assert_eq!(ours.wait().code(), Some(1));
    let stderr = ours.stderr();
    let lines = locksmith_lines(&stderr);
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with(r#"locksmith: lock "revoked" lost (session revoked): sent SIGTERM"#),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let server = etcd();
    let mut cmd = locksmith(&server.endpoint(), "stubborn");
    cmd.args(["--kill-after", "0.5", "--", "sh", "-c"])
        .arg("trap '' TERM; echo \"$LOCKSMITH_KEY\"; exec sleep 60");
    let mut ours = Running::spawn(cmd);
    let key = ours.line_within(GUARD).expect("the command started");
    let mut client = etcd_client(&server.endpoint()).await;
    client.delete(key.as_str(), None).await.unwrap();
    let deleted = std::time::Instant::now();
    assert_eq!(ours.wait().code(), Some(1));
    assert!(deleted.elapsed() >= Duration::from_millis(500));
    let stderr = ours.stderr();
    assert_eq!(
        locksmith_lines(&stderr),
        [
            r#"locksmith: lock "stubborn" lost (hold deleted): sent SIGTERM to "sh"; it was still running after 500ms: sent SIGKILL"#
        ],
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_lock_without_a_command_is_one_line_and_nonzero() {
    let server = etcd();
    let mut ours = Running::spawn(locksmith(&server.endpoint(), "held"));
    let key = ours.line_within(GUARD).expect("locksmith printed its key");
    let mut client = etcd_client(&server.endpoint()).await;
    client.delete(key.as_str(), None).await.unwrap();
    assert_eq!(ours.wait().code(), Some(1));
    assert_eq!(
        ours.stderr(),
        "locksmith: lock \"held\" lost (hold deleted)\n"
    );
}

// ---- elect ----

fn elect(endpoint: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_locksmith"));
    cmd.args(["--url", &format!("etcd://{endpoint}/"), "elect"])
        .args(args);
    cmd
}

fn etcdctl_elect(endpoint: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "elect"])
        .args(args);
    cmd
}

/// The keys under `prefix`, oldest first.
async fn keys(endpoint: &str, prefix: &str) -> Vec<String> {
    use locksmith::etcd_client::{GetOptions, SortOrder, SortTarget};
    let mut client = etcd_client(endpoint).await;
    let options = GetOptions::new()
        .with_prefix()
        .with_keys_only()
        .with_sort(SortTarget::Create, SortOrder::Ascend);
    let reply = client.get(prefix, Some(options)).await.unwrap();
    reply
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_owned())
        .collect()
}

async fn coordination(endpoint: &str) -> std::sync::Arc<dyn locksmith::Coordination> {
    locksmith::LockConfig::from_url(&format!("etcd://{endpoint}/"))
        .unwrap()
        .connect_coordination()
        .await
        .unwrap()
}

/// Reads a `--listen` line: `KEY<TAB>TOKEN<TAB>VALUE`.
fn leader_line(line: &str) -> (String, u64, String) {
    let mut fields = line.splitn(3, '\t');
    let (Some(key), Some(token), Some(value)) = (fields.next(), fields.next(), fields.next())
    else {
        panic!("not a leader line: {line:?}");
    };
    (key.to_owned(), token.parse().unwrap(), value.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn elect_runs_the_command_while_leading() {
    let server = etcd();
    let script = format!(
        "echo \"$LOCKSMITH_KEY $LOCKSMITH_FENCING_TOKEN\"; \
         ETCDCTL_API=3 etcdctl --endpoints {} get --print-value-only \"$LOCKSMITH_KEY\"; exit 4",
        server.endpoint()
    );
    let out = elect(
        &server.endpoint(),
        &["job", "v 1", "--", "sh", "-c", &script],
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let (key, token) = lines.next().unwrap().split_once(' ').unwrap();
    assert!(key.starts_with("job/"), "{stdout}");
    assert!(token.parse::<u64>().unwrap() > 0, "{stdout}");
    assert_eq!(lines.next(), Some("v 1"), "the proposal is the key's value");
    assert_eq!(keys(&server.endpoint(), "job/").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn elect_without_a_command_prints_key_and_value_and_resigns_on_sigterm() {
    let server = etcd();
    let mut ours = Running::spawn(elect(&server.endpoint(), &["svc", "host-a:80"]));
    let key = ours.line_within(GUARD).expect("locksmith printed its key");
    assert!(key.starts_with("svc/"), "{key}");
    assert_eq!(ours.line_within(GUARD).as_deref(), Some("host-a:80"));
    assert_eq!(keys(&server.endpoint(), "svc/").await, [key]);
    let next = Running::spawn(elect(&server.endpoint(), &["svc", "host-b:80"]));
    assert_eq!(next.line_within(QUIET), None, "two leaders at once");
    ours.signal("-TERM");
    assert_eq!(ours.wait().code(), Some(0));
    let next_key = next.line_within(GUARD).expect("the next candidate leads");
    assert_eq!(next.line_within(GUARD).as_deref(), Some("host-b:80"));
    assert_eq!(keys(&server.endpoint(), "svc/").await, [next_key]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signal_while_campaigning_withdraws_the_candidate() {
    let server = etcd();
    let leader = Running::spawn(elect(&server.endpoint(), &["queue", "first"]));
    let leader_key = leader
        .line_within(GUARD)
        .expect("the leader printed its key");
    let mut candidate = Running::spawn(elect(&server.endpoint(), &["queue", "second"]));
    assert_eq!(candidate.line_within(QUIET), None);
    assert_eq!(keys(&server.endpoint(), "queue/").await.len(), 2);
    candidate.signal("-INT");
    assert_eq!(candidate.wait().code(), Some(130));
    assert_eq!(keys(&server.endpoint(), "queue/").await, [leader_key]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_leadership_stops_the_command_with_sigterm() {
    let server = etcd();
    let mut ours = Running::spawn(elect(
        &server.endpoint(),
        &["lost", "v", "--", "sh", "-c", TRAPS_TERM],
    ));
    let key = ours.line_within(GUARD).expect("the command started");
    let mut client = etcd_client(&server.endpoint()).await;
    client.delete(key.as_str(), None).await.unwrap();
    assert_eq!(ours.line_within(GUARD).as_deref(), Some("got-term"));
    assert_eq!(ours.wait().code(), Some(1));
    let stderr = ours.stderr();
    assert_eq!(
        locksmith_lines(&stderr),
        [
            r#"locksmith: leadership of "lost" lost (hold deleted): sent SIGTERM to "sh"; it exited with status 3"#
        ],
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_prints_the_leader_its_proclamations_a_new_leader_and_vacancy() {
    let server = etcd();
    let endpoint = server.endpoint();
    let mut listener = Running::spawn(elect(&endpoint, &["--listen", "watched"]));
    assert_eq!(listener.line_within(GUARD).as_deref(), Some("<none>"));

    let session = coordination(&endpoint).await;
    let leadership = session.campaign("watched", b"a").await.unwrap();
    let token = leadership.fencing_token().get();
    let line = listener.line_within(GUARD).expect("the new leader");
    assert_eq!(
        leader_line(&line),
        (leadership.key().to_owned(), token, "a".to_owned())
    );
    leadership.proclaim(b"b\tc").await.unwrap();
    let line = listener.line_within(GUARD).expect("the proclamation");
    assert_eq!(
        leader_line(&line),
        (leadership.key().to_owned(), token, "b\\tc".to_owned())
    );

    let mut next = Running::spawn(elect(&endpoint, &["watched", "d"]));
    assert_eq!(next.line_within(QUIET), None);
    leadership.resign().await.unwrap();
    let next_key = next.line_within(GUARD).expect("the next candidate leads");
    let line = listener.line_within(GUARD).expect("the next leader");
    let (key, next_token, value) = leader_line(&line);
    assert_eq!((key, value), (next_key, "d".to_owned()));
    assert!(next_token > token, "{next_token} > {token}");

    next.signal("-TERM");
    assert_eq!(next.wait().code(), Some(0));
    assert_eq!(listener.line_within(GUARD).as_deref(), Some("<none>"));
    listener.signal("-TERM");
    assert_eq!(listener.wait().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_fails_with_one_line_when_its_session_ends() {
    let server = etcd();
    let mut listener = Running::spawn(elect(&server.endpoint(), &["--listen", "ended"]));
    assert_eq!(listener.line_within(GUARD).as_deref(), Some("<none>"));
    let mut client = etcd_client(&server.endpoint()).await;
    let leases = client.leases().await.unwrap();
    assert_eq!(leases.leases().len(), 1, "the listener's session");
    client.lease_revoke(leases.leases()[0].id()).await.unwrap();
    assert_eq!(listener.wait().code(), Some(1));
    let stderr = listener.stderr();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("locksmith: observing \"ended\" ended: ") && stderr.contains("revoked"),
        "{stderr}"
    );
}

/// Leads `name` from `etcdctl elect` and returns it with its key (after its value line).
fn etcdctl_leader(endpoint: &str, name: &str, value: &str) -> (Running, String) {
    let theirs = Running::spawn(etcdctl_elect(endpoint, &[name, value]));
    let key = theirs.line_within(GUARD).expect("etcdctl printed its key");
    assert_eq!(theirs.line_within(GUARD).as_deref(), Some(value));
    (theirs, key)
}

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_elect_waits_for_locksmith_and_hands_over_in_order() {
    let server = etcd();
    let endpoint = server.endpoint();
    let mut first = Running::spawn(elect(&endpoint, &["fifo", "ours-1"]));
    first.line_within(GUARD).expect("locksmith leads");
    assert_eq!(first.line_within(GUARD).as_deref(), Some("ours-1"));
    let second = Running::spawn(etcdctl_elect(&endpoint, &["fifo", "theirs-2"]));
    assert_eq!(
        second.line_within(QUIET),
        None,
        "etcdctl led beside locksmith"
    );
    let third = Running::spawn(elect(&endpoint, &["fifo", "ours-3"]));
    assert_eq!(third.line_within(QUIET), None);

    first.signal("-TERM");
    assert_eq!(first.wait().code(), Some(0));
    second.line_within(GUARD).expect("etcdctl leads next");
    assert_eq!(second.line_within(GUARD).as_deref(), Some("theirs-2"));
    assert_eq!(
        third.line_within(QUIET),
        None,
        "locksmith led beside etcdctl"
    );

    second.signal("-INT");
    third.line_within(GUARD).expect("locksmith leads last");
    assert_eq!(third.line_within(GUARD).as_deref(), Some("ours-3"));
}

#[tokio::test(flavor = "multi_thread")]
async fn locksmith_elect_waits_for_etcdctl_and_hands_over_in_order() {
    let server = etcd();
    let endpoint = server.endpoint();
    let (first, _) = etcdctl_leader(&endpoint, "fifo", "theirs-1");
    let mut second = Running::spawn(elect(&endpoint, &["fifo", "ours-2"]));
    assert_eq!(
        second.line_within(QUIET),
        None,
        "locksmith led beside etcdctl"
    );
    let third = Running::spawn(etcdctl_elect(&endpoint, &["fifo", "theirs-3"]));
    assert_eq!(third.line_within(QUIET), None);

    first.signal("-INT");
    second.line_within(GUARD).expect("locksmith leads next");
    assert_eq!(second.line_within(GUARD).as_deref(), Some("ours-2"));
    assert_eq!(
        third.line_within(QUIET),
        None,
        "etcdctl led beside locksmith"
    );

    second.signal("-TERM");
    assert_eq!(second.wait().code(), Some(0));
    third.line_within(GUARD).expect("etcdctl leads last");
    assert_eq!(third.line_within(GUARD).as_deref(), Some("theirs-3"));
}

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_listen_prints_locksmith_proclamations() {
    let server = etcd();
    let endpoint = server.endpoint();
    let theirs = Running::spawn(etcdctl_elect(&endpoint, &["-l", "news"]));

    let mut ours = Running::spawn(elect(&endpoint, &["news", "from-cli"]));
    let key = ours.line_within(GUARD).expect("locksmith leads");
    assert_eq!(theirs.line_within(GUARD), Some(key));
    assert_eq!(theirs.line_within(GUARD).as_deref(), Some("from-cli"));
    ours.signal("-TERM");
    assert_eq!(ours.wait().code(), Some(0));

    let session = coordination(&endpoint).await;
    let leadership = session.campaign("news", b"elected").await.unwrap();
    let key = Some(leadership.key());
    assert_eq!(theirs.line_within(GUARD).as_deref(), key);
    assert_eq!(theirs.line_within(GUARD).as_deref(), Some("elected"));
    leadership.proclaim(b"proclaimed").await.unwrap();
    assert_eq!(theirs.line_within(GUARD).as_deref(), key);
    assert_eq!(theirs.line_within(GUARD).as_deref(), Some("proclaimed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn locksmith_listen_prints_etcdctl_values() {
    let server = etcd();
    let endpoint = server.endpoint();
    let listener = Running::spawn(elect(&endpoint, &["--listen", "peer"]));
    assert_eq!(listener.line_within(GUARD).as_deref(), Some("<none>"));
    let (theirs, key) = etcdctl_leader(&endpoint, "peer", "their value");
    let (listened_key, token, value) = leader_line(&listener.line_within(GUARD).unwrap());
    assert_eq!((listened_key, value.as_str()), (key, "their value"));
    assert!(token > 0);
    theirs.signal("-INT");
    assert_eq!(listener.line_within(GUARD).as_deref(), Some("<none>"));
}

// ---- read, write, semaphore ----

/// `locksmith --url etcd://ENDPOINT/ ARGS…`.
fn locksmith_args(endpoint: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_locksmith"));
    cmd.args(["--url", &format!("etcd://{endpoint}/")])
        .args(args);
    cmd
}

/// Every key in etcd, oldest first.
async fn all_keys(endpoint: &str) -> Vec<String> {
    use locksmith::etcd_client::{GetOptions, SortOrder, SortTarget};
    let mut client = etcd_client(endpoint).await;
    let options = GetOptions::new()
        .with_all_keys()
        .with_keys_only()
        .with_sort(SortTarget::Create, SortOrder::Ascend);
    let reply = client.get("", Some(options)).await.unwrap();
    reply
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_owned())
        .collect()
}

/// Waits (on an etcd watch) until etcd holds `count` keys: a waiter has queued.
async fn until_keys(endpoint: &str, count: usize) -> Vec<String> {
    use locksmith::etcd_client::WatchOptions;
    let mut client = etcd_client(endpoint).await;
    // Watching first, then reading: a change after the read arrives as an event.
    let mut watch = client
        .watch("", Some(WatchOptions::new().with_all_keys()))
        .await
        .unwrap();
    loop {
        let keys = all_keys(endpoint).await;
        if keys.len() == count {
            return keys;
        }
        tokio::time::timeout(GUARD, watch.message())
            .await
            .unwrap_or_else(|_| panic!("never {count} keys: {keys:?}"))
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn readers_share_a_writer_waits_for_them_and_later_readers_wait_behind_it() {
    let server = etcd();
    let endpoint = server.endpoint();
    let mut first = Running::spawn(locksmith_args(&endpoint, &["read", "rw"]));
    let key = first.line_within(GUARD).expect("the first reader holds");
    assert!(key.starts_with("rw/read/"), "{key}");
    let mut second = Running::spawn(locksmith_args(&endpoint, &["read", "rw"]));
    second
        .line_within(GUARD)
        .expect("the second reader holds beside the first");
    let mut writer = Running::spawn(locksmith_args(&endpoint, &["write", "rw"]));
    until_keys(&endpoint, 3).await;
    assert_eq!(writer.line_within(QUIET), None, "a writer beside readers");
    let mut late = Running::spawn(locksmith_args(&endpoint, &["read", "rw"]));
    until_keys(&endpoint, 4).await;
    assert_eq!(
        late.line_within(QUIET),
        None,
        "a reader passed a waiting writer"
    );

    first.signal("-TERM");
    assert_eq!(first.wait().code(), Some(0));
    assert_eq!(writer.line_within(QUIET), None, "a writer beside a reader");
    second.signal("-TERM");
    assert_eq!(second.wait().code(), Some(0));
    let key = writer.line_within(GUARD).expect("the writer holds");
    assert!(key.starts_with("rw/write/"), "{key}");
    assert_eq!(late.line_within(QUIET), None, "a reader beside the writer");

    writer.signal("-TERM");
    assert_eq!(writer.wait().code(), Some(0));
    late.line_within(GUARD).expect("the late reader holds");
    late.signal("-TERM");
    assert_eq!(late.wait().code(), Some(0));
    assert_eq!(all_keys(&endpoint).await, Vec::<String>::new());
}

/// A command that prints its key and runs until its stdin closes.
fn permit_command(endpoint: &str) -> Command {
    let mut cmd = locksmith_args(
        endpoint,
        &["semaphore", "pool", "--limit", "2", "--", "sh", "-c"],
    );
    cmd.arg("echo \"$LOCKSMITH_KEY\"; read -r line; exit 0")
        .stdin(Stdio::piped());
    cmd
}

impl Running {
    /// Closes the process's stdin (a `permit_command` then exits).
    fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_semaphore_admits_limit_commands_and_the_next_when_one_exits() {
    let server = etcd();
    let endpoint = server.endpoint();
    let mut first = Running::spawn(permit_command(&endpoint));
    let mut second = Running::spawn(permit_command(&endpoint));
    let first_key = first.line_within(GUARD).expect("the first command runs");
    let second_key = second.line_within(GUARD).expect("the second command runs");
    assert_ne!(first_key, second_key);
    let mut third = Running::spawn(permit_command(&endpoint));
    until_keys(&endpoint, 3).await;
    assert_eq!(third.line_within(QUIET), None, "three permits of two");

    first.close_stdin();
    assert_eq!(first.wait().code(), Some(0));
    let third_key = third.line_within(GUARD).expect("the third command runs");
    assert_eq!(all_keys(&endpoint).await, [second_key, third_key]);

    second.close_stdin();
    third.close_stdin();
    assert_eq!(second.wait().code(), Some(0));
    assert_eq!(third.wait().code(), Some(0));
    assert_eq!(all_keys(&endpoint).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signal_while_waiting_for_a_read_write_or_permit_leaves_no_key() {
    let server = etcd();
    let endpoint = server.endpoint();
    for (holding, waiting) in [
        (["write", "w"].as_slice(), ["read", "w"].as_slice()),
        (&["read", "r"], &["write", "r"]),
        (
            &["semaphore", "s", "--limit", "1"],
            &["semaphore", "s", "--limit", "1"],
        ),
    ] {
        let mut holder = Running::spawn(locksmith_args(&endpoint, holding));
        let key = holder.line_within(GUARD).expect("the holder holds");
        let mut waiter = Running::spawn(locksmith_args(&endpoint, waiting));
        until_keys(&endpoint, 2).await;
        assert_eq!(waiter.line_within(QUIET), None, "{waiting:?}");
        waiter.signal("-INT");
        assert_eq!(waiter.wait().code(), Some(130));
        assert_eq!(all_keys(&endpoint).await, [key], "{waiting:?}");
        holder.signal("-TERM");
        assert_eq!(holder.wait().code(), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_read_write_or_permit_key_stops_the_command_with_sigterm() {
    let server = etcd();
    let endpoint = server.endpoint();
    let mut client = etcd_client(&endpoint).await;
    for (args, what) in [
        (["read", "lost"].as_slice(), "read lock"),
        (&["write", "lost"], "write lock"),
        (
            &["semaphore", "lost", "--limit", "3"],
            "permit of semaphore",
        ),
    ] {
        let mut cmd = locksmith_args(&endpoint, args);
        cmd.args(["--", "sh", "-c", TRAPS_TERM]);
        let mut ours = Running::spawn(cmd);
        let key = ours.line_within(GUARD).expect("the command started");
        let deleted = client.delete(key.as_str(), None).await.unwrap();
        assert_eq!(deleted.deleted(), 1, "{args:?}");
        assert_eq!(ours.line_within(GUARD).as_deref(), Some("got-term"));
        assert_eq!(ours.wait().code(), Some(1), "{args:?}");
        let stderr = ours.stderr();
        assert_eq!(
            locksmith_lines(&stderr),
            [format!(
                r#"locksmith: {what} "lost" lost (hold deleted): sent SIGTERM to "sh"; it exited with status 3"#
            )],
            "{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_limits_are_one_line_errors_and_leave_nothing() {
    let server = etcd();
    let endpoint = server.endpoint();
    let mut holder = Running::spawn(locksmith_args(
        &endpoint,
        &["semaphore", "jobs", "--limit", "2"],
    ));
    let key = holder.line_within(GUARD).expect("the holder holds");
    for (limit, message) in [
        (
            "3",
            r#"locksmith: semaphore "jobs" is in use with limit 2, not 3: every user of a name must pass the same limit"#,
        ),
        (
            "0",
            r#"locksmith: invalid limit 0 for semaphore "jobs": must be at least 1"#,
        ),
    ] {
        let out = locksmith_args(&endpoint, &["semaphore", "jobs", "--limit", limit])
            .args(["--", "echo", "ran"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{limit}");
        assert!(out.stdout.is_empty(), "the command ran with limit {limit}");
        assert_eq!(
            String::from_utf8(out.stderr).unwrap(),
            format!("{message}\n")
        );
    }
    assert_eq!(all_keys(&endpoint).await, [key]);
    let leases = etcd_client(&endpoint).await.leases().await.unwrap();
    assert_eq!(leases.leases().len(), 1, "only the holder's session");
    holder.signal("-TERM");
    assert_eq!(holder.wait().code(), Some(0));
}
