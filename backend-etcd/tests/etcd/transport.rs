//! What a session's etcd client writes on the wire (issue 11, "Transport: one segment per
//! unary request"). A recording proxy between the client and a real etcd keeps the bytes the
//! client sent and counts the TCP segments they came in (the kernel's count, `TCP_INFO`,
//! since reads merge segments); the tests read the HTTP/2 frames back: a unary call is
//! HEADERS + DATA(END_STREAM) in one segment, as Go's client sends it (tonic/hyper/h2 alone
//! send HEADERS, DATA and an empty DATA(END_STREAM) in two or three).

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;

use locksmith_api::DistributedLock;
use locksmith_etcd::etcd_client::{EventType, WatchOptions};
use locksmith_etcd::{EtcdConfig, EtcdLock};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{Etcd, GUARD};

/// Unary calls each test makes.
const CALLS: usize = 200;

/// The client → etcd bytes of one connection, and the TCP segments that carried data.
#[derive(Default)]
struct Recorded {
    bytes: Vec<u8>,
    segments: u32,
}

/// A proxy to etcd that records what clients send, per connection.
struct RecordingProxy {
    endpoint: String,
    connections: Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl RecordingProxy {
    async fn start(target: String) -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = listener.local_addr().expect("address").to_string();
        let connections: Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>> = Arc::default();
        let shared = Arc::clone(&connections);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let recorded = Arc::new(Mutex::new(Recorded::default()));
                shared.lock().push(Arc::clone(&recorded));
                tokio::spawn(relay(client, server, recorded));
            }
        });
        RecordingProxy {
            endpoint,
            connections,
            accept,
        }
    }

    /// What the client sent so far, over every connection.
    fn traffic(&self) -> Traffic {
        let mut traffic = Traffic::default();
        for recorded in self.connections.lock().iter() {
            let recorded = recorded.lock();
            traffic.segments += recorded.segments as usize;
            let (calls, ping_acks) = frames(&recorded.bytes);
            traffic.calls.extend(calls);
            traffic.ping_acks += ping_acks;
        }
        traffic
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// TCP segments with data that `stream` has received, as the kernel counts them.
fn data_segments_in(stream: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain integers, for which all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the descriptor is open (borrowed from `stream`); `info` and `length` are valid
    // for writes of the sizes given.
    let result = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut length,
        )
    };
    assert_eq!(result, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_data_segs_in
}

async fn relay(client: TcpStream, server: TcpStream, recorded: Arc<Mutex<Recorded>>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = client_read.read(&mut buffer).await?;
            if read == 0 {
                return Ok::<_, std::io::Error>(());
            }
            let segments = data_segments_in(client_read.as_ref());
            {
                let mut recorded = recorded.lock();
                recorded.bytes.extend_from_slice(&buffer[..read]);
                recorded.segments = segments;
            }
            server_write.write_all(&buffer[..read]).await?;
        }
    };
    let replies = tokio::io::copy(&mut server_read, &mut client_write);
    let _ = tokio::join!(requests, replies);
}

/// What the client sent over the connections of a test.
#[derive(Default)]
struct Traffic {
    /// TCP segments carrying data.
    segments: usize,
    calls: Vec<UnaryCall>,
    /// PING acknowledgements: etcd pings at every request it receives (gRPC's bandwidth
    /// probe), and each acknowledgement takes a segment of its own, with Go's client too.
    ping_acks: usize,
}

/// A request stream the client opened, sent one message on and ended.
#[derive(Debug, Default)]
struct UnaryCall {
    /// Lengths of its DATA frames, in order, an empty one included.
    data: Vec<usize>,
    ended: bool,
}

impl UnaryCall {
    /// END_STREAM rode on the message's DATA frame, not on an empty one after it.
    fn ends_on_its_message(&self) -> bool {
        self.data.len() == 1
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const PING: u8 = 6;
const END_STREAM: u8 = 1;
const ACK: u8 = 1;

/// The unary calls of one connection's bytes, and its PING acknowledgements.
fn frames(bytes: &[u8]) -> (Vec<UnaryCall>, usize) {
    let mut streams: BTreeMap<u32, UnaryCall> = BTreeMap::new();
    let mut ping_acks = 0;
    let mut position = if bytes.starts_with(PREFACE) {
        PREFACE.len()
    } else {
        0
    };
    while position + 9 <= bytes.len() {
        let length =
            u32::from_be_bytes([0, bytes[position], bytes[position + 1], bytes[position + 2]])
                as usize;
        let (kind, flags) = (bytes[position + 3], bytes[position + 4]);
        let stream = u32::from_be_bytes([
            bytes[position + 5] & 0x7f,
            bytes[position + 6],
            bytes[position + 7],
            bytes[position + 8],
        ]);
        match kind {
            HEADERS => {
                let call = streams.entry(stream).or_default();
                call.ended |= flags & END_STREAM != 0;
            }
            DATA => {
                if let Some(call) = streams.get_mut(&stream) {
                    call.data.push(length);
                    call.ended |= flags & END_STREAM != 0;
                }
            }
            PING if flags & ACK != 0 => ping_acks += 1,
            _ => {}
        }
        position += 9 + length;
    }
    let calls = streams
        .into_values()
        .filter(|call| call.ended && call.data.iter().any(|&length| length > 0))
        .collect();
    (calls, ping_acks)
}

/// An etcd, a recording proxy to it, and a session connected through the proxy.
async fn recorded_session() -> (Etcd, RecordingProxy, EtcdLock) {
    let etcd = Etcd::new();
    let proxy = RecordingProxy::start(etcd.server.endpoint()).await;
    let config = EtcdConfig {
        namespace: etcd.config.namespace.clone(),
        ..EtcdConfig::new([proxy.endpoint.clone()])
    };
    let session = tokio::time::timeout(GUARD, EtcdLock::connect(&config))
        .await
        .expect("connect hung")
        .expect("connect");
    (etcd, proxy, session)
}

/// `CALLS` unary calls: lock+unlock cycles (the session's own requests) and plain reads.
async fn make_calls(session: &EtcdLock) {
    let work = async {
        for _ in 0..CALLS / 4 {
            let guard = session.lock("wire").await.expect("lock");
            guard.unlock().await.expect("unlock");
        }
        let mut client = session.client();
        for _ in 0..CALLS / 2 {
            client.get("wire", None).await.expect("get");
        }
    };
    tokio::time::timeout(GUARD, work).await.expect("calls hung");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_ends_on_its_message() {
    let (_etcd, proxy, session) = recorded_session().await;
    make_calls(&session).await;
    let calls = proxy.traffic().calls;
    assert!(
        calls.len() >= CALLS,
        "only {} unary calls seen",
        calls.len()
    );
    let apart = calls.iter().filter(|c| !c.ends_on_its_message()).count();
    assert_eq!(
        apart,
        0,
        "{apart} of {} unary calls sent END_STREAM apart from their message, e.g. {:?}",
        calls.len(),
        calls.iter().find(|c| !c.ends_on_its_message())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_takes_one_segment() {
    let (_etcd, proxy, session) = recorded_session().await;
    make_calls(&session).await;
    let traffic = proxy.traffic();
    let calls = traffic.calls.len();
    assert!(calls >= CALLS, "only {calls} unary calls seen");
    let for_calls = traffic.segments.saturating_sub(traffic.ping_acks);
    eprintln!(
        "{calls} unary calls: {} segments, {} of them PING acks: {:.2} segments per call",
        traffic.segments,
        traffic.ping_acks,
        for_calls as f64 / calls as f64
    );
    // One per call, as Go writes them (the old transport: two, HEADERS and then the DATA
    // frames). A busy machine may run the body's task only after the yield and split a few.
    assert!(
        for_calls * 2 <= calls * 3,
        "{for_calls} segments for {calls} unary calls ({} segments, {} PING acks in all)",
        traffic.segments,
        traffic.ping_acks
    );
}

/// A watch stream is a request body that stays open: a request sent on it after the body had
/// nothing more to send (the first watch already created) still reaches etcd, and so does
/// the event it asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_stream_carries_every_request() {
    let (_etcd, _proxy, session) = recorded_session().await;
    let mut client = session.client();
    let flow = async {
        let (mut watcher, mut replies) = client
            .watch("first", None)
            .await
            .expect("watch first")
            .split();
        let mut created = 0;
        loop {
            let reply = replies.message().await.expect("watch reply").expect("open");
            if reply.created() {
                created += 1;
                match created {
                    1 => watcher
                        .watch("second", Some(WatchOptions::new()))
                        .await
                        .expect("watch second"),
                    _ => {
                        client.put("second", "v", None).await.expect("put");
                    }
                }
            }
            let second = |e: &locksmith_etcd::etcd_client::Event| {
                e.event_type() == EventType::Put
                    && e.kv().map(|kv| kv.key()) == Some(b"second".as_slice())
            };
            if reply.events().iter().any(second) {
                return;
            }
        }
    };
    tokio::time::timeout(GUARD, flow)
        .await
        .expect("the second watch never delivered its event");
}

/// TLS still wraps the connections (tonic layers it over the transport's TCP streams), with
/// the locks working through it and each unary call still one HEADERS + DATA(END_STREAM).
/// The certificates come from the `openssl` command; etcd serves https on a port of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_work_over_tls() {
    use locksmith_etcd::EtcdTls;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = |name: &str| dir.path().join(name);
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    openssl(
        dir.path(),
        &format!("req -x509 {ec} -keyout ca.key -out ca.pem -days 1 -subj /CN=locksmith-test-CA"),
    );
    openssl(
        dir.path(),
        &format!("req {ec} -keyout server.key -out server.csr -subj /CN=127.0.0.1"),
    );
    std::fs::write(
        path("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    )
    .expect("write server.ext");
    openssl(
        dir.path(),
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile server.ext",
    );

    let port = |listener: std::net::TcpListener| listener.local_addr().expect("port").port();
    let client_port = port(std::net::TcpListener::bind("127.0.0.1:0").expect("bind"));
    let peer_port = port(std::net::TcpListener::bind("127.0.0.1:0").expect("bind"));
    let client_url = format!("https://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let mut etcd = std::process::Command::new("etcd")
        .args(["--name", "tls", "--data-dir"])
        .arg(path("data"))
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("tls={peer_url}")])
        .args(["--cert-file", "server.pem", "--key-file", "server.key"])
        .args(["--log-level", "error"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start etcd");
    let proxy = RecordingProxy::start(format!("127.0.0.1:{client_port}")).await;
    let config = EtcdConfig {
        connect_timeout_ms: 1_000,
        tls: Some(EtcdTls {
            ca: Some(path("ca.pem")),
            ..EtcdTls::default()
        }),
        ..EtcdConfig::new([format!("https://{}", proxy.endpoint)])
    };
    // etcd answers once it is up; until then connecting fails and is tried again.
    let session = tokio::time::timeout(GUARD, async {
        loop {
            match EtcdLock::connect(&config).await {
                Ok(session) => return session,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("no TLS session within the guard");
    for _ in 0..20 {
        let guard = session.lock("tls").await.expect("lock over TLS");
        guard.unlock().await.expect("unlock over TLS");
    }
    drop(session);
    let _ = etcd.kill();
    let _ = etcd.wait();
    // The proxy saw ciphertext only: no HTTP/2 preface in the clear.
    let clear = proxy
        .connections
        .lock()
        .iter()
        .any(|recorded| recorded.lock().bytes.starts_with(PREFACE));
    assert!(!clear, "a connection went out in the clear");
}

/// Runs the `openssl` command with `args` (split at spaces) in `dir`.
fn openssl(dir: &std::path::Path, args: &str) {
    let status = std::process::Command::new("openssl")
        .args(args.split(' '))
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the openssl command (apt-get install openssl) makes the test certificates");
    assert!(status.success(), "openssl {args} failed");
}
