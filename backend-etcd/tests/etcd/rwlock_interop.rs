//! Reader-writer locks against Go's `recipe.RWMutex` (etcd 3.4, Debian's sources): the Go
//! program `tests/go/rwmutex` holds one side of a name while locksmith takes the other, on one
//! etcd. A Go writer excludes locksmith readers and writers and the other way round, Go and
//! locksmith readers share, and writer preference holds across clients.
//!
//! The Go program is built once per run of this file, GOPATH-style against
//! `/usr/share/gocode` (`golang-go` and `golang-etcd-server-dev`, installed by
//! `scripts/install-deps.sh`). A machine without them fails these tests: they never skip.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use common::{within, Etcd};
use locksmith_api::conformance::RwLockFactory;
use locksmith_api::{DistributedRwLock, LockError, LockGuard};
use locksmith_etcd::EtcdLock;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

/// How long a blocked call is watched to make sure it stays blocked. Go's waiters learn of a
/// delete through etcd's 100 ms catch-up loop, so this is several of its rounds.
const QUIET: Duration = Duration::from_millis(500);

/// Where Debian's `golang-etcd-server-dev` puts etcd's Go sources.
const GOPATH: &str = "/usr/share/gocode";

/// The Go peer's binary, built on first use.
fn go_peer() -> &'static Path {
    static PEER: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PEER.get_or_init(build_go_peer) {
        Ok(path) => path,
        Err(err) => panic!("{err}"),
    }
}

fn build_go_peer() -> Result<PathBuf, String> {
    let recipes = Path::new(GOPATH).join("src/go.etcd.io/etcd/contrib/recipes");
    if !recipes.is_dir() {
        return Err(format!(
            "{} is missing: run scripts/install-deps.sh (apt package golang-etcd-server-dev)",
            recipes.display()
        ));
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/go/rwmutex");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-rwmutex");
    let binary = out.join("rwmutex");
    let built = std::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(&source)
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOCACHE", out.join("cache"))
        .env("GOFLAGS", "")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status();
    match built {
        Ok(status) if status.success() => Ok(binary),
        Ok(status) => Err(format!(
            "go build of {} failed ({status}): see the output above",
            source.display()
        )),
        Err(err) => Err(format!(
            "cannot run `go` ({err}): run scripts/install-deps.sh (apt package golang-go)"
        )),
    }
}

/// One running `tests/go/rwmutex`: a Go process taking one side of a name.
struct GoRwMutex {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl GoRwMutex {
    /// Starts a Go `RLock` (`mode` "read") or `Lock` ("write") of `name` in the test's
    /// namespace; it has not necessarily queued when this returns.
    fn start(etcd: &Etcd, name: &str, mode: &str) -> GoRwMutex {
        let full_name = format!("{}{name}", etcd.config.namespace);
        let mut child = Command::new(go_peer())
            .args(["-endpoints", &etcd.server.endpoint()])
            .args(["-name", &full_name, "-mode", mode])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the Go peer starts");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        GoRwMutex {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// Starts a Go waiter and returns once its key is in the queue, `entries` keys in all.
    async fn queued(etcd: &Etcd, name: &str, mode: &str, entries: usize) -> GoRwMutex {
        let peer = GoRwMutex::start(etcd, name, mode);
        queue_becomes(etcd, name, entries).await;
        peer
    }

    async fn expect_line(&mut self, expected: &str) {
        match within("a line from the Go peer", self.lines.next_line()).await {
            Ok(Some(line)) => assert_eq!(line, expected, "the Go peer"),
            other => panic!("the Go peer printed no {expected:?}: {other:?}"),
        }
    }

    /// Waits until Go holds.
    async fn locked(&mut self) {
        self.expect_line("locked").await;
    }

    /// True if Go printed nothing (still waits) for [`QUIET`].
    async fn waits(&mut self) -> bool {
        tokio::time::timeout(QUIET, self.lines.next_line())
            .await
            .is_err()
    }

    /// Closes Go's stdin: it unlocks, says so, and exits 0.
    async fn unlock(mut self) {
        drop(self.stdin.take());
        self.expect_line("unlocked").await;
        let status = within("the Go peer to exit", self.child.wait())
            .await
            .expect("the Go peer's exit status");
        assert!(status.success(), "the Go peer exited with {status}");
    }
}

/// Readers and writers of `name`, Go's and locksmith's alike.
async fn queue_len(etcd: &Etcd, name: &str) -> usize {
    RwLockFactory::queue_len(etcd, name).await
}

/// Waits until `name` has `entries` readers and writers (holding or waiting). Polls the store:
/// a Go waiter's put has no other signal.
async fn queue_becomes(etcd: &Etcd, name: &str, entries: usize) {
    within("the RW queue to settle", async {
        while queue_len(etcd, name).await != entries {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

type Waiter = JoinHandle<Result<LockGuard, LockError>>;

fn spawn_read(session: &EtcdLock, name: &'static str) -> Waiter {
    let session = session.clone();
    tokio::spawn(async move { session.read(name).await })
}

fn spawn_write(session: &EtcdLock, name: &'static str) -> Waiter {
    let session = session.clone();
    tokio::spawn(async move { session.write(name).await })
}

/// True if the locksmith waiter is still waiting after [`QUIET`].
async fn still_waits(waiter: &Waiter) -> bool {
    tokio::time::sleep(QUIET).await;
    !waiter.is_finished()
}

async fn granted(what: &str, waiter: Waiter) -> LockGuard {
    match within(what, waiter).await {
        Ok(Ok(guard)) => guard,
        other => panic!("{what}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_writer_excludes_locksmith_readers_and_writers() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let mut go_writer = GoRwMutex::start(&etcd, "doc", "write");
    go_writer.locked().await;
    let keys = etcd.keys("doc").await;
    let write_prefix = format!("{}doc/write/", etcd.config.namespace);
    assert!(
        keys.len() == 1 && keys[0].starts_with(&write_prefix),
        "Go's writer key: {keys:?}"
    );

    assert!(a.try_read("doc").await.unwrap().is_none());
    assert!(a.try_write("doc").await.unwrap().is_none());
    let reading = spawn_read(&a, "doc");
    queue_becomes(&etcd, "doc", 2).await;
    let writing = spawn_write(&b, "doc");
    queue_becomes(&etcd, "doc", 3).await;
    assert!(still_waits(&reading).await, "a reader beside Go's writer");
    assert!(!writing.is_finished(), "a writer beside Go's writer");

    go_writer.unlock().await;
    let reader = granted("the locksmith reader", reading).await;
    assert!(still_waits(&writing).await, "a writer beside a reader");
    let token = reader.fencing_token();
    reader.unlock().await.unwrap();
    let writer = granted("the locksmith writer", writing).await;
    assert!(writer.fencing_token() > token);
    writer.unlock().await.unwrap();
    queue_becomes(&etcd, "doc", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locksmith_writer_excludes_go_readers_and_writers() {
    let etcd = Etcd::new();
    let a = etcd.session().await;
    let writer = a.write("doc").await.unwrap();
    let mut go_reader = GoRwMutex::queued(&etcd, "doc", "read", 2).await;
    let mut go_writer = GoRwMutex::queued(&etcd, "doc", "write", 3).await;
    assert!(
        go_reader.waits().await,
        "Go's reader beside a locksmith writer"
    );
    assert!(
        go_writer.waits().await,
        "Go's writer beside a locksmith writer"
    );

    writer.unlock().await.unwrap();
    go_reader.locked().await;
    assert!(go_writer.waits().await, "Go's writer beside Go's reader");
    // Go's waiting writer keeps new locksmith readers out too.
    assert!(a.try_read("doc").await.unwrap().is_none());
    go_reader.unlock().await;
    go_writer.locked().await;
    assert!(a.try_read("doc").await.unwrap().is_none());
    assert!(a.try_write("doc").await.unwrap().is_none());
    go_writer.unlock().await;
    queue_becomes(&etcd, "doc", 0).await;
    let writer = a.try_write("doc").await.unwrap();
    assert!(writer.is_some(), "the name is free once Go is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_and_locksmith_readers_share() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let mut first_go_reader = GoRwMutex::start(&etcd, "doc", "read");
    first_go_reader.locked().await;
    let reader = within("a locksmith reader", a.read("doc")).await.unwrap();
    let tried = b.try_read("doc").await.unwrap();
    assert!(tried.is_some(), "try_read beside Go's reader");
    let mut second_go_reader = GoRwMutex::start(&etcd, "doc", "read");
    second_go_reader.locked().await;
    queue_becomes(&etcd, "doc", 4).await;

    // Four readers hold: a locksmith writer waits for all of them, Go's and locksmith's.
    assert!(b.try_write("doc").await.unwrap().is_none());
    let writing = spawn_write(&b, "doc");
    queue_becomes(&etcd, "doc", 5).await;
    first_go_reader.unlock().await;
    reader.unlock().await.unwrap();
    drop(tried);
    assert!(still_waits(&writing).await, "a writer beside Go's reader");
    second_go_reader.unlock().await;
    let writer = granted("the locksmith writer", writing).await;
    writer.unlock().await.unwrap();
    queue_becomes(&etcd, "doc", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locksmith_reader_queues_behind_a_waiting_go_writer() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let first = a.read("doc").await.unwrap();
    let mut go_writer = GoRwMutex::queued(&etcd, "doc", "write", 2).await;
    assert!(go_writer.waits().await, "Go's writer beside a reader");

    // Go's writer waits: a new locksmith reader neither tries nor waits past it.
    assert!(b.try_read("doc").await.unwrap().is_none());
    let reading = spawn_read(&b, "doc");
    queue_becomes(&etcd, "doc", 3).await;
    assert!(
        still_waits(&reading).await,
        "a reader overtook Go's waiting writer"
    );
    first.unlock().await.unwrap();
    go_writer.locked().await;
    assert!(still_waits(&reading).await, "a reader beside Go's writer");
    go_writer.unlock().await;
    let reader = granted("the reader behind Go's writer", reading).await;
    reader.unlock().await.unwrap();
    queue_becomes(&etcd, "doc", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_reader_queues_behind_a_waiting_locksmith_writer() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let first = a.read("doc").await.unwrap();
    let writing = spawn_write(&b, "doc");
    queue_becomes(&etcd, "doc", 2).await;
    let mut go_reader = GoRwMutex::queued(&etcd, "doc", "read", 3).await;
    assert!(
        go_reader.waits().await,
        "Go's reader overtook a waiting writer"
    );
    first.unlock().await.unwrap();
    let writer = granted("the locksmith writer", writing).await;
    assert!(go_reader.waits().await, "Go's reader beside a writer");
    writer.unlock().await.unwrap();
    go_reader.locked().await;
    go_reader.unlock().await;
    queue_becomes(&etcd, "doc", 0).await;
}
