//! `locksmith status`, `locksmith list` and the waiting-behind lines against a real etcd, with
//! keys made by locksmith, `etcdctl lock` and `etcdctl elect`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use locksmith_etcd::testing::EtcdServer;
use serde_json::Value;

/// The longest any step may take before the test fails.
const GUARD: Duration = Duration::from_secs(20);

fn etcd() -> EtcdServer {
    match EtcdServer::start() {
        Ok(server) => server,
        Err(err) => panic!("cannot start etcd (run `make test`, which installs it): {err}"),
    }
}

/// A child whose stdout and stderr lines arrive on channels, stderr lines with their time.
struct Running {
    child: Child,
    started: Instant,
    lines: mpsc::Receiver<String>,
    errors: mpsc::Receiver<(Instant, String)>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let started = Instant::now();
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (tx, errors) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            started,
            lines,
            errors,
        }
    }

    fn line(&self) -> String {
        self.lines.recv_timeout(GUARD).expect("a line on stdout")
    }

    /// The next stderr line, with how long after the start it came.
    fn error_line(&self) -> (Duration, String) {
        let (at, line) = self.errors.recv_timeout(GUARD).expect("a line on stderr");
        (at - self.started, line)
    }

    fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + GUARD;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "process did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every stderr line written so far (after the process exited: all of them).
    fn errors_so_far(&self) -> Vec<String> {
        self.errors.try_iter().map(|(_, line)| line).collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn locksmith(endpoint: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_locksmith"));
    cmd.args(["--url", &format!("etcd://{endpoint}/")])
        .args(args);
    cmd
}

fn etcdctl(endpoint: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint])
        .args(args);
    cmd
}

/// Runs `locksmith ARGS` to its end; returns stdout, after checking it succeeded.
fn run(endpoint: &str, args: &[&str]) -> String {
    let out = locksmith(endpoint, args).output().unwrap();
    assert!(
        out.status.success(),
        "locksmith {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `status --json` of `name` (with `flags`), parsed.
fn status(endpoint: &str, name: &str, flags: &[&str]) -> Vec<Value> {
    let mut args = vec!["status", name, "--json"];
    args.extend(flags);
    let text = run(endpoint, &args);
    match serde_json::from_str(&text) {
        Ok(Value::Array(queues)) => queues,
        other => panic!("not a JSON array: {text} ({other:?})"),
    }
}

/// Polls `status --json` until its first queue has `len` entries (there is no signal to wait
/// on across processes; each poll is one read).
fn until_queued(endpoint: &str, name: &str, flags: &[&str], len: usize) -> Value {
    let deadline = Instant::now() + GUARD;
    loop {
        if let Some(queue) = status(endpoint, name, flags).into_iter().next() {
            let count = entries(&queue, "holders").len() + entries(&queue, "waiters").len();
            if count == len {
                return queue;
            }
        }
        assert!(Instant::now() < deadline, "{name} never had {len} entries");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn entries<'a>(queue: &'a Value, role: &str) -> &'a Vec<Value> {
    queue[role].as_array().expect("an array of entries")
}

fn keys(queue: &Value, role: &str) -> Vec<String> {
    entries(queue, role)
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_owned())
        .collect()
}

/// Checks the fields every etcd entry has: its lease is the key's (for keys that end in it),
/// a TTL left within `ttl`, a token.
fn check_entry(entry: &Value, ttl: u64) {
    let key = entry["key"].as_str().unwrap();
    let lease = entry["lease_id"].as_str().expect("a lease");
    assert!(key.contains(lease), "{key} is not on lease {lease}");
    let left = entry["ttl_left_secs"].as_u64().expect("a TTL left");
    assert!(left <= ttl, "{left} s left of {ttl}");
    assert!(entry["fencing_token"].as_u64().unwrap() > 0);
}

#[test]
fn status_and_list_show_a_lock_held_and_awaited_by_locksmith_and_etcdctl() {
    let server = etcd();
    let endpoint = server.endpoint();
    let holder = Running::spawn(locksmith(&endpoint, &["lock", "billing/close-month"]));
    let held_key = holder.line();
    let theirs = Running::spawn(etcdctl(&endpoint, &["lock", "billing/close-month"]));
    until_queued(&endpoint, "billing/close-month", &[], 2);
    let ours = Running::spawn(locksmith(
        &endpoint,
        &["lock", "--quiet", "billing/close-month"],
    ));
    let queue = until_queued(&endpoint, "billing/close-month", &[], 3);
    assert_eq!(queue["primitive"], "lock");
    assert_eq!(queue["name"], "billing/close-month");
    assert!(queue["limit"].is_null());
    assert_eq!(keys(&queue, "holders"), vec![held_key.clone()]);
    let waiters = entries(&queue, "waiters");
    assert_eq!(waiters.len(), 2);
    // etcdctl's session TTL is 10 s; locksmith's default is longer.
    check_entry(&waiters[0], 10);
    check_entry(&entries(&queue, "holders")[0], 60);
    check_entry(&waiters[1], 60);
    let tokens: Vec<u64> = [&entries(&queue, "holders")[0], &waiters[0], &waiters[1]]
        .iter()
        .map(|e| e["fencing_token"].as_u64().unwrap())
        .collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    assert_eq!(waiters[0]["value"], "", "etcdctl lock stores no value");
    assert!(waiters.iter().all(|w| w["kind"] == "lock"));

    // The same in text, and with --lock.
    let text = run(&endpoint, &["status", "billing/close-month"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "lock \"billing/close-month\": 1 holder, 2 waiting"
    );
    assert!(lines[1].starts_with("  holds  lock") && lines[1].contains(&held_key));
    assert!(lines[2].starts_with("  waits") && lines[2].contains("ttl="));
    assert_eq!(lines.len(), 4);
    assert_eq!(
        status(&endpoint, "billing/close-month", &["--lock"]).len(),
        1
    );
    assert_eq!(
        status(&endpoint, "billing/close-month", &["--rw"])[0]["holders"],
        Value::Array(vec![])
    );

    // list: one line per name under the prefix, with its holder and queue length.
    let _other = Running::spawn(locksmith(&endpoint, &["lock", "billing/open-month"]));
    until_queued(&endpoint, "billing/open-month", &[], 1);
    let listed = run(&endpoint, &["list", "billing/"]);
    let rows: Vec<Vec<&str>> = listed.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 2, "{listed}");
    assert_eq!(rows[0][0], "billing/close-month");
    assert_eq!(rows[0][1], "lock");
    assert!(rows[0][2].starts_with(&held_key), "{listed}");
    assert_eq!(rows[0][3], "waiting 2");
    assert_eq!(rows[1][0], "billing/open-month");
    assert_eq!(rows[1][3], "waiting 0");
    let json: Value =
        serde_json::from_str(&run(&endpoint, &["list", "--json", "billing/c"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["waiters"].as_array().unwrap().len(), 2);
    assert_eq!(run(&endpoint, &["list", "nothing/"]), "");
    drop((holder, theirs, ours));
}

#[test]
fn status_shows_an_etcdctl_election_with_the_leaders_value() {
    let server = etcd();
    let endpoint = server.endpoint();
    let theirs = Running::spawn(etcdctl(&endpoint, &["elect", "scheduler", "host-a"]));
    let their_key = theirs.line();
    let ours = Running::spawn(locksmith(
        &endpoint,
        &["elect", "--quiet", "scheduler", "host-b"],
    ));
    let queue = until_queued(&endpoint, "scheduler", &[], 2);
    assert_eq!(queue["primitive"], "election", "detected from the values");
    let leader = &entries(&queue, "holders")[0];
    assert_eq!(leader["key"], their_key.as_str());
    assert_eq!(leader["value"], "host-a");
    assert_eq!(leader["kind"], "candidate");
    // etcdctl elect's session TTL is 60 s.
    check_entry(leader, 60);
    assert_eq!(entries(&queue, "waiters")[0]["value"], "host-b");
    let flagged = status(&endpoint, "scheduler", &["--election"]);
    assert_eq!(flagged[0]["holders"][0]["value"], "host-a");
    let text = run(&endpoint, &["status", "scheduler"]);
    assert!(
        text.starts_with("election \"scheduler\": 1 leader, 1 waiting"),
        "{text}"
    );
    assert!(text.contains("value=host-a"), "{text}");
    let listed = run(&endpoint, &["list"]);
    assert!(listed.starts_with("scheduler\telection\t"), "{listed}");
    drop((theirs, ours));
}

#[test]
fn status_shows_readers_writers_and_permits() {
    let server = etcd();
    let endpoint = server.endpoint();
    let r1 = Running::spawn(locksmith(&endpoint, &["read", "catalog"]));
    let r1_key = r1.line();
    let r2 = Running::spawn(locksmith(&endpoint, &["read", "catalog"]));
    r2.line();
    let w = Running::spawn(locksmith(&endpoint, &["write", "--quiet", "catalog"]));
    let queue = until_queued(&endpoint, "catalog", &["--rw"], 3);
    assert_eq!(queue["primitive"], "rwlock");
    let holders = entries(&queue, "holders");
    assert_eq!(holders.len(), 2);
    assert_eq!(holders[0]["key"], r1_key.as_str());
    assert!(holders.iter().all(|h| h["kind"] == "read"));
    assert_eq!(entries(&queue, "waiters")[0]["kind"], "write");
    // Detected without a flag, and nothing else is there.
    assert_eq!(status(&endpoint, "catalog", &[]), vec![queue]);

    let p1 = Running::spawn(locksmith(
        &endpoint,
        &["semaphore", "--limit", "2", "exports"],
    ));
    p1.line();
    let p2 = Running::spawn(locksmith(
        &endpoint,
        &["semaphore", "--limit", "2", "exports"],
    ));
    p2.line();
    let p3 = Running::spawn(locksmith(
        &endpoint,
        &["semaphore", "--quiet", "--limit", "2", "exports"],
    ));
    let queue = until_queued(&endpoint, "exports", &["--semaphore"], 3);
    assert_eq!(queue["primitive"], "semaphore");
    assert_eq!(queue["limit"], 2);
    assert_eq!(entries(&queue, "holders").len(), 2);
    assert_eq!(entries(&queue, "waiters")[0]["kind"], "permit");
    check_entry(&entries(&queue, "waiters")[0], 60);
    let listed = run(&endpoint, &["list"]);
    let rows: Vec<&str> = listed.lines().collect();
    assert_eq!(rows.len(), 2, "{listed}");
    assert!(rows[0].starts_with("catalog\trwlock\t") && rows[0].ends_with("(+1 more)\twaiting 1"));
    assert!(
        rows[1].starts_with("exports\tsemaphore (limit 2)\t") && rows[1].ends_with("waiting 1")
    );
    drop((r1, r2, w, p1, p2, p3));
}

#[test]
fn a_waiter_says_whom_it_waits_behind_after_a_second_unless_quiet() {
    let server = etcd();
    let endpoint = server.endpoint();
    let mut holder = Running::spawn(locksmith(&endpoint, &["lock", "jobs"]));
    let holder_key = holder.line();
    let mut first = Running::spawn(locksmith(&endpoint, &["lock", "jobs"]));
    until_queued(&endpoint, "jobs", &[], 2);
    let mut quiet = Running::spawn(locksmith(&endpoint, &["lock", "--quiet", "jobs"]));
    until_queued(&endpoint, "jobs", &[], 3);
    let last = Running::spawn(locksmith(&endpoint, &["lock", "jobs"]));
    until_queued(&endpoint, "jobs", &[], 4);

    let (after, line) = first.error_line();
    assert!(after >= Duration::from_secs(1), "reported after {after:?}");
    assert!(
        line.starts_with(&format!(
            "locksmith: waiting for lock \"jobs\" behind {holder_key} (lease "
        )),
        "{line}"
    );
    assert!(line.contains("s left); 1 ahead in the queue"), "{line}");
    let (_, line) = last.error_line();
    assert!(line.ends_with("; 3 ahead in the queue"), "{line}");

    // The queue moves: the last waiter says so on a new line.
    holder.terminate();
    let first_key = first.line();
    let (_, line) = last.error_line();
    assert!(line.contains(&format!("behind {first_key} ")), "{line}");
    assert!(line.ends_with("; 2 ahead in the queue"), "{line}");
    first.terminate();
    quiet.line();
    quiet.terminate();
    assert_eq!(quiet.errors_so_far(), Vec::<String>::new());
    drop(last);
}

/// The library call under the CLI: nested names stay apart, names whose keys have no lease
/// (application data) are not listed, semaphore names with `/` come back unescaped, the namespace is left out.
#[tokio::test]
async fn queue_and_queues_read_the_layouts_under_a_namespace() {
    use locksmith::{DistributedLock, DistributedSemaphore, Primitive, QueueView};
    let server = etcd();
    let endpoint = server.endpoint();
    let config: locksmith::EtcdConfig =
        match locksmith::LockConfig::from_url(&format!("etcd://{endpoint}/team/")).unwrap() {
            locksmith::LockConfig::Etcd(config) => config,
            _ => unreachable!("an etcd URL"),
        };
    let a = locksmith::EtcdLock::connect(&config).await.unwrap();
    let b = locksmith::EtcdLock::connect(&config).await.unwrap();
    let outer = a.lock("jobs").await.unwrap();
    let inner = b.lock("jobs/nightly").await.unwrap();
    let permit = a.acquire("pool/gpu", 3).await.unwrap();
    let mut client = b.client();
    client
        .put("team/settings/theme", "dark", None)
        .await
        .unwrap();

    let jobs = b.queue("jobs", Primitive::Lock).await.unwrap();
    assert_eq!(jobs.holders.len(), 1);
    assert!(jobs.waiters.is_empty(), "{jobs:?}");
    assert_eq!(jobs.holders[0].key, outer.key());
    assert_eq!(jobs.holders[0].lease_id, Some(a.lease_id()));
    assert_eq!(jobs.holders[0].fencing_token, Some(outer.fencing_token()));
    assert!(jobs.holders[0].ttl_left.is_some());

    let all = b.queues("").await.unwrap();
    let seen: Vec<(&str, Primitive, usize, Option<u32>)> = all
        .iter()
        .map(|q| (q.name.as_str(), q.primitive, q.len(), q.limit))
        .collect();
    assert_eq!(
        seen,
        [
            ("jobs", Primitive::Lock, 1, None),
            ("jobs/nightly", Primitive::Lock, 1, None),
            ("pool/gpu", Primitive::Semaphore, 1, Some(3)),
        ]
    );
    assert_eq!(b.queues("pool/").await.unwrap().len(), 1);
    assert_eq!(b.queues("jobs/").await.unwrap()[0].name, "jobs/nightly");
    drop((outer, inner, permit));
}

/// The holder `status` reports must be the one actually holding. `etcdctl lock a` (Go's
/// `concurrency.Mutex`) ranges over `a/`, so an older key of the nested lock `a/b` keeps it
/// waiting: `status a` and `list` must show it waiting, not holding, until `a/b` is released.
#[test]
fn status_does_not_call_a_waiting_etcdctl_the_holder_behind_a_nested_name() {
    let server = etcd();
    let endpoint = server.endpoint();
    let mut nested = Running::spawn(locksmith(&endpoint, &["lock", "a/b"]));
    let nested_key = nested.line();
    let theirs = Running::spawn(etcdctl(&endpoint, &["lock", "a"]));
    let queue = until_queued(&endpoint, "a", &["--lock"], 1);
    // etcdctl prints its key once it holds the lock; it waits behind a/b instead.
    let acquired = theirs.lines.recv_timeout(Duration::from_secs(1)).ok();
    assert_eq!(
        acquired, None,
        "etcdctl took `a` while `{nested_key}` was held"
    );
    let holders = keys(&queue, "holders");
    assert!(
        holders.is_empty(),
        "status says {holders:?} holds `a`, but etcdctl waits behind {nested_key}"
    );
    let waiting = keys(&queue, "waiters");
    assert_eq!(waiting.len(), 1);
    let listed = run(&endpoint, &["list", "a"]);
    let rows: Vec<Vec<&str>> = listed.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 2, "{listed}");
    assert_eq!(
        (rows[0][0], rows[0][2], rows[0][3]),
        ("a", "-", "waiting 1"),
        "{listed}"
    );
    assert!(rows[1][2].starts_with(&nested_key), "{listed}");

    // Once a/b is released, etcdctl holds `a`, and status says so.
    nested.terminate();
    assert_eq!(theirs.line(), waiting[0]);
    let queue = until_queued(&endpoint, "a", &["--lock"], 1);
    assert_eq!(keys(&queue, "holders"), waiting);
    drop(theirs);
}

/// One name used by every primitive, nested names and semaphore names with `/` and `%`: each
/// queue keeps its own entries, `queues` finds each once under the prefixes that match it,
/// and every reported holder is one that another session's `try_*` finds holding.
#[tokio::test]
async fn queues_keep_shared_prefixes_apart_and_name_the_real_holders() {
    use locksmith::{
        DistributedLock, DistributedRwLock, DistributedSemaphore, LeaderElection, Primitive,
        QueueView,
    };
    let server = etcd();
    let endpoint = server.endpoint();
    let config: locksmith::EtcdConfig =
        match locksmith::LockConfig::from_url(&format!("etcd://{endpoint}/")).unwrap() {
            locksmith::LockConfig::Etcd(config) => config,
            _ => unreachable!("an etcd URL"),
        };
    let a = locksmith::EtcdLock::connect(&config).await.unwrap();
    let b = locksmith::EtcdLock::connect(&config).await.unwrap();
    let lock = a.lock("x").await.unwrap();
    let nested = b.lock("x/read").await.unwrap();
    let reading = a.read("x").await.unwrap();
    let permit = b.acquire("x", 1).await.unwrap();
    let slash = a.acquire("p/a/b", 2).await.unwrap();
    let percent = b.acquire("p/a%2Fb", 2).await.unwrap();
    let percent_too = a.acquire("p/a%2Fb", 2).await.unwrap();

    let x = a.queue("x", Primitive::Lock).await.unwrap();
    assert_eq!(x.holders.len(), 1, "{x:?}");
    assert!(x.waiters.is_empty(), "{x:?}");
    assert_eq!(x.holders[0].key, lock.key());
    let rw = a.queue("x", Primitive::RwLock).await.unwrap();
    let rw_keys: Vec<&str> = rw.holders.iter().map(|e| e.key.as_str()).collect();
    // `x/read`'s lock key sits among the readers' keys of `x` (Go's layout cannot tell them
    // apart) and is shown as a reader: a writer of `x` would wait for it as for one.
    assert!(rw_keys.contains(&reading.key()), "{rw:?}");
    let sem = a.queue("x", Primitive::Semaphore).await.unwrap();
    assert_eq!(sem.holders.len(), 1);
    assert_eq!(sem.holders[0].key, permit.key());
    assert_eq!(sem.limit, Some(1));
    let slash_q = a.queue("p/a/b", Primitive::Semaphore).await.unwrap();
    assert_eq!(slash_q.len(), 1);
    assert_eq!(slash_q.holders[0].key, slash.key());
    let percent_q = a.queue("p/a%2Fb", Primitive::Semaphore).await.unwrap();
    assert_eq!(percent_q.holders.len(), 2);
    assert_eq!(percent_q.limit, Some(2));

    // The holders reported are the holders: another session's try_* calls find them taken.
    let c = locksmith::EtcdLock::connect(&config).await.unwrap();
    assert!(c.try_lock("x").await.unwrap().is_none());
    assert!(c.try_write("x").await.unwrap().is_none());
    assert!(c.try_acquire("x", 1).await.unwrap().is_none());
    assert!(c.try_acquire("p/a%2Fb", 2).await.unwrap().is_none());
    assert!(c.try_acquire("p/a/b", 2).await.unwrap().is_some());

    let names = |queues: Vec<locksmith::QueueInfo>| -> Vec<(String, Primitive)> {
        queues.into_iter().map(|q| (q.name, q.primitive)).collect()
    };
    let under_p = names(a.queues("p/a").await.unwrap());
    assert_eq!(
        under_p,
        [
            ("p/a%2Fb".to_owned(), Primitive::Semaphore),
            ("p/a/b".to_owned(), Primitive::Semaphore)
        ]
    );
    assert_eq!(
        names(a.queues("p/a%").await.unwrap()),
        [("p/a%2Fb".to_owned(), Primitive::Semaphore)]
    );
    assert_eq!(
        names(a.queues("p/a/").await.unwrap()),
        [("p/a/b".to_owned(), Primitive::Semaphore)]
    );
    let under_x = names(a.queues("x").await.unwrap());
    assert!(
        under_x.contains(&("x".to_owned(), Primitive::Lock)),
        "{under_x:?}"
    );
    assert!(
        under_x.contains(&("x".to_owned(), Primitive::RwLock)),
        "{under_x:?}"
    );
    assert!(
        under_x.contains(&("x".to_owned(), Primitive::Semaphore)),
        "{under_x:?}"
    );
    // A locksmith election ignores nested names' keys, older or not: its leader leads.
    let nested_first = b.lock("e/x").await.unwrap();
    let leading = a.campaign("e", b"host-a").await.unwrap();
    let e = c.queue("e", Primitive::Election).await.unwrap();
    assert_eq!(e.holders.len(), 1, "{e:?}");
    assert_eq!(e.holders[0].key, leading.key());
    let e = c.queue("e", Primitive::Lock).await.unwrap();
    assert_eq!(e.holders.len(), 1, "{e:?}");
    let listed = c.queues("e").await.unwrap();
    assert_eq!(listed[0].name, "e");
    assert_eq!(listed[0].holders.len(), 1, "{listed:?}");
    drop((leading, nested_first));
    drop((lock, nested, reading, permit, slash, percent, percent_too));
}

/// `--json` is for scripts: the field names of a queue and of an entry are a contract, the
/// same for `status` and `list`, and every value has its documented JSON type.
#[test]
fn json_fields_are_stable() {
    let server = etcd();
    let endpoint = server.endpoint();
    let holder = Running::spawn(locksmith(&endpoint, &["lock", "jobs/json"]));
    holder.line();
    let queue = until_queued(&endpoint, "jobs/json", &[], 1);
    let listed: Value =
        serde_json::from_str(&run(&endpoint, &["list", "--json", "jobs/"])).unwrap();
    for queue in [&queue, &listed[0]] {
        let mut fields: Vec<&str> = queue
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort();
        assert_eq!(fields, ["holders", "limit", "name", "primitive", "waiters"]);
        let entry = &queue["holders"][0];
        let mut fields: Vec<&str> = entry
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "fencing_token",
                "key",
                "kind",
                "lease_id",
                "ttl_left_secs",
                "value"
            ]
        );
        assert!(entry["key"].is_string() && entry["kind"].is_string());
        assert!(entry["lease_id"].is_string(), "hex, as in the keys");
        assert!(entry["ttl_left_secs"].is_u64() && entry["fencing_token"].is_u64());
        assert!(entry["value"].is_string());
        assert!(queue["limit"].is_null());
    }
    drop(holder);
}
