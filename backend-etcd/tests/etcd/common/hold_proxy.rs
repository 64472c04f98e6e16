//! [`HoldProxy`]: an HTTP/2-frame-aware TCP proxy that can *delay* a request instead of
//! losing it. It holds the client's frames, cuts the client side (so the client retries on a
//! fresh connection and moves on), and later delivers the held frames (without the client's
//! RST_STREAMs) on the still-open server side: what a real network or a slow member can do to
//! an attempt the client gave up on. Shared by `late_requests.rs` and `election_attacks.rs`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use locksmith_etcd::{EtcdConfig, EtcdLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Notify};

use super::{within, Etcd};

const PREFACE: usize = 24;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;

/// One proxied connection.
struct Conn {
    held: AtomicBool,
    /// Client frames held back, in order.
    frames: parking_lot::Mutex<Vec<Vec<u8>>>,
    headers_held: AtomicUsize,
    cut: Notify,
    server_write: Mutex<Option<OwnedWriteHalf>>,
}

/// A proxy that can hold the client's frames and deliver them late.
pub struct HoldProxy {
    pub endpoint: String,
    conns: Arc<parking_lot::Mutex<Vec<Arc<Conn>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl HoldProxy {
    pub async fn start(target: String) -> HoldProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let conns: Arc<parking_lot::Mutex<Vec<Arc<Conn>>>> = Arc::default();
        let shared = Arc::clone(&conns);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let (server_read, server_write) = server.into_split();
                let conn = Arc::new(Conn {
                    held: AtomicBool::new(false),
                    frames: parking_lot::Mutex::default(),
                    headers_held: AtomicUsize::new(0),
                    cut: Notify::new(),
                    server_write: Mutex::new(Some(server_write)),
                });
                shared.lock().push(Arc::clone(&conn));
                tokio::spawn(run_conn(client, server_read, conn));
            }
        });
        HoldProxy {
            endpoint,
            conns,
            accept,
        }
    }

    /// Every connection open now holds its client's frames from here on.
    pub fn hold_all(&self) {
        for conn in self.conns.lock().iter() {
            conn.held.store(true, Ordering::SeqCst);
        }
    }

    pub fn headers_held(&self) -> usize {
        self.conns
            .lock()
            .iter()
            .map(|c| c.headers_held.load(Ordering::SeqCst))
            .sum()
    }

    /// Closes the client side of every held connection; the server side stays open.
    pub fn cut_held(&self) {
        for conn in self.conns.lock().iter() {
            if conn.held.load(Ordering::SeqCst) {
                conn.cut.notify_one();
            }
        }
    }

    /// Delivers the held frames to etcd, minus RST_STREAM and GOAWAY.
    pub async fn deliver_held(&self) {
        let held: Vec<Arc<Conn>> = self
            .conns
            .lock()
            .iter()
            .filter(|c| c.held.load(Ordering::SeqCst))
            .cloned()
            .collect();
        for conn in held {
            let frames = std::mem::take(&mut *conn.frames.lock());
            let mut writer = conn.server_write.lock().await;
            if let Some(writer) = writer.as_mut() {
                for frame in frames {
                    if frame.len() >= 9 && (frame[3] == RST_STREAM || frame[3] == GOAWAY) {
                        continue;
                    }
                    writer.write_all(&frame).await.unwrap();
                }
                writer.flush().await.unwrap();
            }
        }
    }
}

impl Drop for HoldProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn run_conn(
    client: TcpStream,
    mut server_read: tokio::net::tcp::OwnedReadHalf,
    conn: Arc<Conn>,
) {
    let (mut client_read, client_write) = client.into_split();
    let client_write = Arc::new(Mutex::new(Some(client_write)));
    // Replies: copied to the client until it is cut, then read and thrown away.
    let _replies = {
        let client_write = Arc::clone(&client_write);
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                let Ok(read) = server_read.read(&mut buffer).await else {
                    return;
                };
                if read == 0 {
                    return;
                }
                if let Some(w) = client_write.lock().await.as_mut() {
                    let _ = w.write_all(&buffer[..read]).await;
                }
            }
        })
    };
    // Requests: parsed into frames; forwarded, or held.
    let requests = async {
        let mut pending: Vec<u8> = Vec::new();
        let mut preface_done = false;
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let read = client_read.read(&mut buffer).await?;
            if read == 0 {
                return Ok::<_, std::io::Error>(());
            }
            pending.extend_from_slice(&buffer[..read]);
            let mut out: Vec<Vec<u8>> = Vec::new();
            if !preface_done {
                if pending.len() < PREFACE {
                    continue;
                }
                out.push(pending.drain(..PREFACE).collect());
                preface_done = true;
            }
            while pending.len() >= 9 {
                let len = ((pending[0] as usize) << 16)
                    | ((pending[1] as usize) << 8)
                    | pending[2] as usize;
                if pending.len() < 9 + len {
                    break;
                }
                out.push(pending.drain(..9 + len).collect());
            }
            for frame in out {
                if conn.held.load(Ordering::SeqCst) {
                    if frame.len() >= 9 && frame[3] == HEADERS {
                        conn.headers_held.fetch_add(1, Ordering::SeqCst);
                    }
                    conn.frames.lock().push(frame);
                } else if let Some(w) = conn.server_write.lock().await.as_mut() {
                    w.write_all(&frame).await?;
                }
            }
        }
    };
    tokio::select! {
        _ = requests => {}
        () = conn.cut.notified() => {}
    }
    // The client side goes; the server side stays open (for a late delivery).
    client_write.lock().await.take();
    drop(client_read);
}

pub async fn proxied_session(etcd: &Etcd, proxy: &HoldProxy, ttl_secs: u64) -> EtcdLock {
    let config = EtcdConfig {
        endpoints: vec![proxy.endpoint.clone()],
        ttl_secs,
        ..etcd.config.clone()
    };
    within("connect", EtcdLock::connect(&config)).await.unwrap()
}

pub async fn wait_headers_held(proxy: &HoldProxy, at_least: usize) {
    within("a request to be held", async {
        while proxy.headers_held() < at_least {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    // Its DATA frame follows right behind.
    tokio::time::sleep(Duration::from_millis(50)).await;
}
