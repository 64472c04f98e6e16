//! Leader election against Go's `concurrency.Election`, as `etcdctl elect` runs it: the same
//! keys, one queue, FIFO handover in both directions, and values read across clients.

use crate::common;

use std::process::Stdio;
use std::time::Duration;

use common::observe::until_value;
use common::{within, Etcd, GUARD};
use locksmith_api::LeaderElection;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long a blocked candidate is watched to make sure it stays blocked.
const QUIET: Duration = Duration::from_millis(500);

/// A running `etcdctl elect` and its output lines.
struct Etcdctl {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Etcdctl {
    fn elect(etcd: &Etcd, name: &str, args: &[&str]) -> Etcdctl {
        let full_name = format!("{}{name}", etcd.config.namespace);
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.server.endpoint(), "elect", &full_name])
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("etcdctl (installed by scripts/install-deps.sh)");
        let stdout = child.stdout.take().expect("piped stdout");
        Etcdctl {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    async fn line(&mut self) -> String {
        match within("a line from etcdctl", self.lines.next_line()).await {
            Ok(Some(line)) => line,
            other => panic!("etcdctl printed no line: {other:?}"),
        }
    }

    async fn quiet(&mut self) -> bool {
        tokio::time::timeout(QUIET, self.lines.next_line())
            .await
            .is_err()
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

/// locksmith leads, `etcdctl elect` queues behind it, then a second locksmith candidate: the
/// resign hands over to etcdctl (FIFO across clients), whose key and value are what
/// `etcdctl elect` prints and what locksmith observes; when etcdctl stops, the second
/// locksmith candidate leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locksmith_and_etcdctl_elect_hand_over_in_fifo_order() {
    let etcd = Etcd::new();
    let (a, b, watcher) = (
        etcd.session().await,
        etcd.session().await,
        etcd.session().await,
    );
    let mut watch = watcher.observe("svc").await.unwrap();
    let leading = a.campaign("svc", b"rust-a").await.unwrap();
    let mut go = Etcdctl::elect(&etcd, "svc", &["go-1"]);
    etcd.wait_queued("svc", 2).await;
    assert!(go.quiet().await, "etcdctl elected while locksmith leads");
    let second = {
        let b = b.clone();
        tokio::spawn(async move { b.campaign("svc", b"rust-b").await })
    };
    etcd.wait_queued("svc", 3).await;
    let mut listen = Etcdctl::elect(&etcd, "svc", &["--listen"]);
    assert_eq!(listen.line().await, leading.key());
    assert_eq!(listen.line().await, "rust-a");
    leading.proclaim(b"rust-a2").await.unwrap();
    assert_eq!(listen.line().await, leading.key());
    assert_eq!(listen.line().await, "rust-a2");
    let token = leading.fencing_token();
    leading.resign().await.unwrap();

    let go_key = go.line().await;
    assert!(
        go_key.starts_with(&format!("{}svc/", etcd.config.namespace)),
        "{go_key}"
    );
    assert_eq!(go.line().await, "go-1");
    let seen = until_value(&mut watch, b"go-1").await.unwrap();
    assert_eq!(seen.key(), go_key);
    assert!(seen.fencing_token() > token);
    assert_eq!(watcher.leader("svc").await.unwrap(), Some(seen.clone()));
    assert!(
        !second.is_finished(),
        "locksmith elected while etcdctl leads"
    );
    assert_eq!(listen.line().await, go_key);
    assert_eq!(listen.line().await, "go-1");

    // etcdctl resigns and revokes its session on SIGINT.
    go.signal("-INT");
    let second = within("b to lead", second).await.unwrap().unwrap();
    assert!(second.fencing_token() > seen.fencing_token());
    until_value(&mut watch, b"rust-b").await;
    assert_eq!(listen.line().await, second.key());
    assert_eq!(listen.line().await, "rust-b");
    second.resign().await.unwrap();
}

/// A killed `etcdctl elect` leader (SIGKILL: no resign; its session's TTL is 60 s) holds the
/// election until its lease expires; then the locksmith candidate queued behind it leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_etcdctl_leader_is_succeeded_once_its_lease_expires() {
    let etcd = Etcd::new();
    let a = etcd.session().await;
    let mut go = Etcdctl::elect(&etcd, "svc", &["go"]);
    let go_key = go.line().await;
    assert_eq!(go.line().await, "go");
    let waiting = {
        let a = a.clone();
        tokio::spawn(async move { a.campaign("svc", b"rust").await })
    };
    etcd.wait_queued("svc", 2).await;
    go.signal("-KILL");
    let killed_at = tokio::time::Instant::now();
    tokio::time::sleep(QUIET).await;
    assert!(
        !waiting.is_finished(),
        "elected while the killed leader's lease lives"
    );
    let leading = tokio::time::timeout(Duration::from_secs(60) + GUARD, waiting)
        .await
        .expect("the killed leader's lease to expire")
        .unwrap()
        .unwrap();
    assert!(killed_at.elapsed() > Duration::from_secs(50));
    assert_ne!(leading.key(), go_key);
    assert_eq!(a.leader("svc").await.unwrap(), Some(leading.info()));
}
