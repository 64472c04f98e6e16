//! A real etcd for tests: [`EtcdServer`] starts one member, [`EtcdCluster`] three, each on
//! free loopback ports with a temporary data directory, killed and removed on drop.
//!
//! A missing `etcd` binary is an error that says how to install it, never a silent skip.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a member may take to answer after start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a member may take to stop after SIGSTOP.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong starting etcd.
pub type HarnessError = Box<dyn std::error::Error + Send + Sync>;

/// The etcd binary: `$ETCD_BIN`, else `etcd` on the PATH.
fn etcd_binary() -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os("ETCD_BIN") {
        return Ok(PathBuf::from(path));
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcd"))
            .find(|candidate| candidate.is_file())
    });
    found.ok_or_else(|| {
        "the `etcd` binary is not installed: run `make test` (which runs scripts/install-deps.sh) \
         or `sudo apt-get install etcd-server etcd-client`"
            .into()
    })
}

/// A free loopback port (bound and released; etcd binds it right after).
fn free_port() -> Result<u16, HarnessError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One member's ports, directory and process.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    /// Flags added to every start (`--auth-token-ttl 2`, …).
    extra_args: Vec<String>,
    process: Option<Child>,
}

impl Member {
    fn new(root: &Path, index: usize, extra_args: &[&str]) -> Result<Self, HarnessError> {
        let name = format!("m{index}");
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir)?;
        Ok(Member {
            name,
            client_port: free_port()?,
            peer_port: free_port()?,
            dir,
            extra_args: extra_args.iter().map(|arg| (*arg).to_owned()).collect(),
            process: None,
        })
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn start(&mut self, initial_cluster: &str, token: &str) -> Result<(), HarnessError> {
        let client_url = format!("http://{}", self.endpoint());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))?;
        let child = Command::new(etcd_binary()?)
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &self.peer_url()])
            .args(["--initial-advertise-peer-urls", &self.peer_url()])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-token", token])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|err| format!("cannot start etcd: {err}"))?;
        self.process = Some(child);
        Ok(())
    }

    /// SIGKILL, as a crash.
    fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` with `kill`. A stop signal returns once every thread of the process has
    /// stopped: `kill` returns when the signal is queued, and on a busy machine some threads of
    /// etcd run on for milliseconds after that (long enough to answer a request).
    fn signal(&self, signal: &str) -> Result<(), HarnessError> {
        let Some(child) = &self.process else {
            return Err(format!("member {} is not running", self.name).into());
        };
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()?;
        if !status.success() {
            return Err(format!("kill {signal} failed for member {}", self.name).into());
        }
        let tasks = PathBuf::from(format!("/proc/{}/task", child.id()));
        // Without procfs the signal is all there is to wait on.
        if !matches!(signal, "-STOP" | "-SIGSTOP" | "-19") || !tasks.is_dir() {
            return Ok(());
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !all_threads_stopped(&tasks)? {
            if Instant::now() > deadline {
                return Err(
                    format!("member {} did not stop within {STOP_TIMEOUT:?}", self.name).into(),
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// SIGSTOP until the returned value is dropped.
    fn stop(&self) -> Result<Stopped<'_>, HarnessError> {
        self.signal("-STOP")?;
        Ok(Stopped { member: self })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }
}

/// True when every thread listed under `tasks` (`/proc/PID/task`) is in the stopped state
/// (`T`): a SIGSTOP has taken effect, which `kill` returning does not promise.
///
/// # Errors
/// Reading procfs failed.
pub fn all_threads_stopped(tasks: &Path) -> Result<bool, HarnessError> {
    for task in std::fs::read_dir(tasks)? {
        let stat = match std::fs::read_to_string(task?.path().join("stat")) {
            Ok(stat) => stat,
            // A thread that exited meanwhile.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err.into()),
        };
        // "pid (comm) S ...": the state follows the last ')', as comm may hold one.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if state != Some("T") {
            return Ok(false);
        }
    }
    Ok(true)
}

/// True when `endpoints` serve a linearizable read within a second.
///
/// Runs on a thread of its own, so it works from inside an async test too.
fn answers(endpoints: &[String]) -> bool {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return false;
                };
                runtime.block_on(async {
                    let probe = async {
                        let urls: Vec<String> =
                            endpoints.iter().map(|e| format!("http://{e}")).collect();
                        let mut client = etcd_client::Client::connect(urls, None).await?;
                        client.get("locksmith-harness-probe", None).await?;
                        Ok::<_, etcd_client::Error>(())
                    };
                    matches!(
                        tokio::time::timeout(Duration::from_secs(1), probe).await,
                        Ok(Ok(()))
                    )
                })
            })
            .join()
            .unwrap_or(false)
    })
}

/// How waiting for members to come up ended.
enum Startup {
    Ready,
    /// A member exited (most likely a port taken between choosing and binding it).
    Exited,
}

/// Waits until the members answer, or one exits, or the start timeout passes.
fn wait_ready(members: &mut [Member]) -> Result<Startup, HarnessError> {
    let endpoints: Vec<String> = members.iter().map(Member::endpoint).collect();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if answers(&endpoints) {
            return Ok(Startup::Ready);
        }
        for member in members.iter_mut() {
            if let Some(child) = &mut member.process {
                if child.try_wait()?.is_some() {
                    member.process = None;
                    return Ok(Startup::Exited);
                }
            }
        }
        if Instant::now() > deadline {
            let logs: String = members
                .iter()
                .map(|m| format!("--- {} ---\n{}", m.name, m.log()))
                .collect();
            return Err(
                format!("etcd did not answer within {START_TIMEOUT:?}; logs:\n{logs}").into(),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Attempts at starting, each on fresh ports.
const START_ATTEMPTS: usize = 5;

/// Starts `size` fresh members under `root` until they all answer.
fn start_members(
    root: &Path,
    size: usize,
    extra_args: &[&str],
) -> Result<(Vec<Member>, String, String), HarnessError> {
    for attempt in 0..START_ATTEMPTS {
        let mut members = (0..size)
            .map(|i| Member::new(&root.join(format!("attempt{attempt}")), i, extra_args))
            .collect::<Result<Vec<_>, _>>()?;
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("locksmith-{}", members[0].client_port);
        for member in &mut members {
            member.start(&initial_cluster, &token)?;
        }
        match wait_ready(&mut members)? {
            Startup::Ready => return Ok((members, initial_cluster, token)),
            Startup::Exited => {
                for member in &mut members {
                    member.kill();
                }
            }
        }
    }
    Err(format!("etcd exited at start {START_ATTEMPTS} times (ports taken?)").into())
}

/// One etcd member on loopback; killed and its data removed on drop.
pub struct EtcdServer {
    member: Member,
    _dir: TempDir,
}

impl EtcdServer {
    /// Starts etcd on free loopback ports and waits until it answers.
    ///
    /// # Errors
    /// When `etcd` is not installed (with the install command), or does not come up.
    pub fn start() -> Result<EtcdServer, HarnessError> {
        EtcdServer::start_with(&[])
    }

    /// Starts etcd with extra flags, such as `["--auth-token-ttl", "2"]`.
    ///
    /// # Errors
    /// As [`start`](EtcdServer::start).
    pub fn start_with(extra_args: &[&str]) -> Result<EtcdServer, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("locksmith-etcd-")
            .tempdir()?;
        let (mut members, _, _) = start_members(dir.path(), 1, extra_args)?;
        let member = members.pop().ok_or("no member started")?;
        Ok(EtcdServer { member, _dir: dir })
    }

    /// `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.member.endpoint()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn client_url(&self) -> String {
        format!("http://{}", self.endpoint())
    }

    /// The value of a Prometheus metric from etcd's `/metrics` (summed over its label sets),
    /// such as `etcd_debugging_mvcc_watch_stream_total`.
    ///
    /// # Errors
    /// When etcd does not answer or has no such metric.
    pub fn metric(&self, name: &str) -> Result<f64, HarnessError> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.endpoint())?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.endpoint()
        )?;
        let mut body = String::new();
        stream.read_to_string(&mut body)?;
        let values: Vec<f64> = body
            .lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
            .collect();
        if values.is_empty() {
            return Err(format!("etcd reports no metric {name}").into());
        }
        Ok(values.iter().sum())
    }

    /// Sends a signal to the etcd process (`-STOP`, `-CONT`, …); `-STOP` returns once every
    /// thread of etcd has stopped.
    ///
    /// # Errors
    /// When the member is not running or `kill` fails.
    pub fn signal(&self, signal: &str) -> Result<(), HarnessError> {
        self.member.signal(signal)
    }
}

/// A member stopped with SIGSTOP (a stalled process: its connections stay open, nothing is
/// answered); SIGCONT when dropped, also when the test fails.
#[must_use = "the member goes on as soon as this is dropped"]
pub struct Stopped<'a> {
    member: &'a Member,
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let _ = self.member.signal("-CONT");
    }
}

impl EtcdServer {
    /// Stops etcd (SIGSTOP) until the returned value is dropped; returns once every thread of
    /// the process has stopped.
    ///
    /// # Errors
    /// When the member is not running or `kill` fails.
    pub fn stop(&self) -> Result<Stopped<'_>, HarnessError> {
        self.member.stop()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.member.kill();
    }
}

/// A cluster of etcd members on loopback; killed and removed on drop.
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    _dir: TempDir,
}

impl EtcdCluster {
    /// Starts `size` members and waits until the cluster answers.
    ///
    /// # Errors
    /// When `etcd` is not installed, or the cluster does not come up.
    pub fn start(size: usize) -> Result<EtcdCluster, HarnessError> {
        EtcdCluster::start_with(size, &[])
    }

    /// Starts `size` members, each with extra flags (such as `["--auth-token-ttl", "2"]`).
    ///
    /// # Errors
    /// As [`start`](EtcdCluster::start).
    pub fn start_with(size: usize, extra_args: &[&str]) -> Result<EtcdCluster, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("locksmith-etcd-cluster-")
            .tempdir()?;
        let (members, initial_cluster, token) = start_members(dir.path(), size, extra_args)?;
        Ok(EtcdCluster {
            members,
            initial_cluster,
            token,
            _dir: dir,
        })
    }

    /// Every member's `127.0.0.1:PORT`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// Kills member `index` with SIGKILL.
    pub fn kill_member(&mut self, index: usize) {
        if let Some(member) = self.members.get_mut(index) {
            member.kill();
        }
    }

    /// Sends a signal (`-STOP`, `-CONT`, …) to member `index`; `-STOP` returns once every
    /// thread of the member has stopped.
    ///
    /// # Errors
    /// When there is no such running member or `kill` fails.
    pub fn signal_member(&self, index: usize, signal: &str) -> Result<(), HarnessError> {
        match self.members.get(index) {
            Some(member) => member.signal(signal),
            None => Err(format!("no member {index}").into()),
        }
    }

    /// Stops member `index` (SIGSTOP) until the returned value is dropped; returns once every
    /// thread of the process has stopped.
    ///
    /// # Errors
    /// When there is no such running member or `kill` fails.
    pub fn stop_member(&self, index: usize) -> Result<Stopped<'_>, HarnessError> {
        let member = self
            .members
            .get(index)
            .ok_or_else(|| format!("no member {index}"))?;
        member.stop()
    }

    /// True while member `index` runs (it was not killed, or was restarted).
    pub fn is_running(&self, index: usize) -> bool {
        self.members.get(index).is_some_and(|m| m.process.is_some())
    }

    /// Restarts a killed member `index` on its old ports and data.
    ///
    /// # Errors
    /// When the member cannot be started.
    pub fn restart_member(&mut self, index: usize) -> Result<(), HarnessError> {
        let (cluster, token) = (self.initial_cluster.clone(), self.token.clone());
        match self.members.get_mut(index) {
            Some(member) => member.start(&cluster, &token),
            None => Err(format!("no member {index}").into()),
        }
    }

    /// The index of the current leader, asked of the running members.
    ///
    /// # Errors
    /// When no running member answers with a leader.
    pub async fn leader_index(&self) -> Result<usize, HarnessError> {
        for member in self.members.iter().filter(|m| m.process.is_some()) {
            let url = format!("http://{}", member.endpoint());
            let Ok(Ok(mut client)) = tokio::time::timeout(
                Duration::from_secs(2),
                etcd_client::Client::connect([url], None),
            )
            .await
            else {
                continue;
            };
            let Ok(Ok(status)) =
                tokio::time::timeout(Duration::from_secs(2), client.status()).await
            else {
                continue;
            };
            let leader = status.leader();
            let Ok(Ok(list)) =
                tokio::time::timeout(Duration::from_secs(2), client.member_list()).await
            else {
                continue;
            };
            for listed in list.members() {
                if listed.id() == leader {
                    if let Some(index) = self.members.iter().position(|m| m.name == listed.name()) {
                        return Ok(index);
                    }
                }
            }
        }
        Err("no member reports a leader".into())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.kill();
        }
    }
}

/// Turns on etcd authentication: adds `user` with `password`, grants it the `root` role
/// (which etcd requires to exist before auth can be enabled), and enables auth. Connect with
/// `EtcdConfig { user, password, .. }` afterwards.
///
/// # Errors
/// When etcd refuses or cannot be reached.
pub async fn enable_auth(
    endpoints: &[String],
    user: &str,
    password: &str,
) -> Result<(), HarnessError> {
    let urls: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
    let mut admin = etcd_client::Client::connect(urls, None).await?;
    if user != "root" {
        admin.user_add("root", password, None).await?;
        admin.user_grant_role("root", "root").await?;
    }
    admin.user_add(user, password, None).await?;
    admin.user_grant_role(user, "root").await?;
    admin.auth_enable().await?;
    Ok(())
}

/// A TCP proxy on loopback in front of one etcd endpoint, for faults that a real network has
/// and a local etcd does not: replies that never arrive, connections that break mid-request.
///
/// Connect a client to [`endpoint`](TcpProxy::endpoint) instead of etcd's. Runs on the tokio
/// runtime it was started on; dropping it closes every connection.
pub struct TcpProxy {
    endpoint: String,
    faults: std::sync::Arc<ProxyFaults>,
    accept: tokio::task::JoinHandle<()>,
}

/// The faults a [`TcpProxy`] applies, shared with its connections.
struct ProxyFaults {
    /// While set, bytes from etcd to the client are read and thrown away.
    swallow_replies: std::sync::atomic::AtomicBool,
    /// While set, bytes from the client to etcd are read and thrown away.
    swallow_requests: std::sync::atomic::AtomicBool,
    /// Bumped to cut every open connection.
    cuts: tokio::sync::watch::Sender<u64>,
}

impl TcpProxy {
    /// Starts a proxy to `target` (`HOST:PORT`) on a free loopback port.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start(target: &str) -> Result<TcpProxy, HarnessError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = listener.local_addr()?.to_string();
        let faults = std::sync::Arc::new(ProxyFaults {
            swallow_replies: std::sync::atomic::AtomicBool::new(false),
            swallow_requests: std::sync::atomic::AtomicBool::new(false),
            cuts: tokio::sync::watch::channel(0).0,
        });
        let target = target.to_owned();
        let shared = std::sync::Arc::clone(&faults);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                tokio::spawn(proxy_connection(
                    client,
                    server,
                    std::sync::Arc::clone(&shared),
                ));
            }
        });
        Ok(TcpProxy {
            endpoint,
            faults,
            accept,
        })
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// From now on (`true`) or no longer (`false`), etcd's replies are thrown away: requests
    /// still reach etcd and take effect, but the client never hears back.
    pub fn swallow_replies(&self, swallow: bool) {
        self.faults
            .swallow_replies
            .store(swallow, std::sync::atomic::Ordering::SeqCst);
    }

    /// From now on (`true`) or no longer (`false`), the client's requests are thrown away: they
    /// never reach etcd. The connections' byte streams are broken from then on; follow with
    /// [`cut_connections`](TcpProxy::cut_connections).
    pub fn swallow_requests(&self, swallow: bool) {
        self.faults
            .swallow_requests
            .store(swallow, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes every open connection, as a network failure would. New connections work.
    pub fn cut_connections(&self) {
        self.faults.cuts.send_modify(|cuts| *cuts += 1);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut_connections();
    }
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint())
            .field("pid", &self.process.as_ref().map(Child::id))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for EtcdServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdServer")
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Stopped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stopped")
            .field("member", &self.member)
            .finish()
    }
}

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::sync::atomic::Ordering;
        f.debug_struct("TcpProxy")
            .field("endpoint", &self.endpoint)
            .field(
                "swallow_replies",
                &self.faults.swallow_replies.load(Ordering::SeqCst),
            )
            .field(
                "swallow_requests",
                &self.faults.swallow_requests.load(Ordering::SeqCst),
            )
            .finish_non_exhaustive()
    }
}

async fn proxy_connection(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    faults: std::sync::Arc<ProxyFaults>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cuts = faults.cuts.subscribe();
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let read = client_read.read(&mut buffer).await?;
            if read == 0 {
                return Ok::<_, std::io::Error>(());
            }
            if !faults
                .swallow_requests
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                server_write.write_all(&buffer[..read]).await?;
            }
        }
    };
    let replies = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let read = server_read.read(&mut buffer).await?;
            if read == 0 {
                return Ok::<_, std::io::Error>(());
            }
            if !faults
                .swallow_replies
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                client_write.write_all(&buffer[..read]).await?;
            }
        }
    };
    tokio::select! {
        _ = requests => {}
        _ = replies => {}
        _ = cuts.changed() => {}
    }
}
