//! The gRPC transport under every etcd client locksmith opens: a unary call goes out as
//! HEADERS + DATA(END_STREAM) in one TCP segment, as Go's gRPC client sends it, instead of
//! tonic/hyper/h2's HEADERS, DATA, empty DATA(END_STREAM) over three writes.
//!
//! Two pieces, both below etcd-client's public [`BalancedChannelBuilder`]:
//! - [`LastFrameBody`] wraps every request body and looks one frame ahead, so the body reports
//!   its end together with its last message and h2 sets END_STREAM on that DATA frame.
//! - [`BurstConnector`] opens the TCP connections; their [`BurstStream`] keeps what h2 writes
//!   and sends it at the next flush after yielding once to the scheduler. h2 writes a new
//!   stream's HEADERS before the body task has handed over its DATA (a stream's DATA waits for
//!   the HEADERS that open it); the yield lets that DATA join the same write.
//!
//! Everything else is tonic's: each endpoint is a lazily connecting tonic channel built from
//! the [`Endpoint`] etcd-client configured (TLS, HTTP/2 keep-alive, connect and request
//! timeouts), and [`Members`] spreads calls over the endpoints, preferring one whose
//! connection is up, as tonic's balanced channel prefers ready connections, and avoiding one
//! whose calls have gone unanswered for [`STALL_AFTER`] or that left a call unanswered until
//! it was given up (a stopped or black-holed member keeps its TCP connection open, so
//! "connected" alone would keep choosing it; a retry after a timed-out attempt goes elsewhere).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use etcd_client::{BalancedChannelBuilder, Channel, Client, ConnectOptions};
use http::Uri;
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tonic::transport::channel::Change;
use tonic::transport::Endpoint;
use tower::Service;

/// Connects an etcd client over `endpoints` through locksmith's transport; the same contract
/// as [`Client::connect`] (options, authentication, one balanced channel over all endpoints).
///
/// # Errors
/// What [`Client::connect`] returns: invalid endpoints or options, or a failed authentication.
///
/// # Cancel safety
/// Dropping the future drops the half-built client and its connections.
pub(crate) async fn connect<E: AsRef<str>, S: AsRef<[E]>>(
    endpoints: S,
    options: Option<ConnectOptions>,
) -> Result<Client, etcd_client::Error> {
    Client::connect_with_balanced_channel(endpoints, options, Transport).await
}

/// Builds the channel of one client: [`Members`] fed by etcd-client's endpoint changes.
struct Transport;

impl BalancedChannelBuilder for Transport {
    type Error = etcd_client::Error;

    fn balanced_channel(
        self,
        buffer_size: usize,
    ) -> Result<(Channel, mpsc::Sender<Change<Uri, Endpoint>>), etcd_client::Error> {
        let (changes, received) = mpsc::channel(buffer_size.max(1));
        let members = Members {
            shared: Arc::new(Mutex::new(MemberList {
                changes: received,
                members: Vec::new(),
                next: 0,
            })),
            chosen: None,
        };
        let channel = tower::util::BoxCloneSyncService::new(members);
        Ok((Channel::Custom(channel), changes))
    }
}

/// How one endpoint's connection stands, as its connector and streams saw it last.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[repr(u8)]
enum Link {
    /// Connected: calls go here first.
    Up = 0,
    /// Never connected, or the connection closed: a call reconnects it.
    Idle = 1,
    /// A connection attempt is under way.
    Connecting = 2,
    /// Connected, but a call was given up (its attempt timed out, or it failed at the
    /// transport) without a byte from the server while it waited: the next calls, a retry of
    /// that one among them, go to any other member that is up, idle or connecting first.
    Suspect = 3,
    /// The last connection attempt failed.
    Failed = 4,
    /// Connected, but calls have waited longer than [`STALL_AFTER`] without a byte from the
    /// server (a stopped member, a black-holed connection): calls go anywhere else first.
    Stalled = 5,
}

/// How long a connection may leave its calls without a byte in return before it counts as
/// [`Link::Stalled`]. An answering etcd sends something (a reply, a window update, a ping)
/// well within this even under load; a wrong guess only steers new calls to another member.
const STALL_AFTER: Duration = Duration::from_secs(1);

/// Milliseconds since the first use, never 0 (0 stands for "not waiting").
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let elapsed = START.get_or_init(Instant::now).elapsed();
    u64::try_from(elapsed.as_millis())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

/// [`Link`] shared by an endpoint's connector, its streams and [`Members`]: up while a
/// stream of it is open and unbroken, else how the last connection attempt went.
#[derive(Default)]
struct LinkState {
    /// Streams open and unbroken (a reconnect can overlap the old stream's end).
    open: AtomicUsize,
    /// [`Link::Idle`], [`Link::Connecting`] or [`Link::Failed`].
    attempt: AtomicU8,
    /// Calls sent through this endpoint and not yet answered (their response head).
    calls: AtomicUsize,
    /// Since when (`now_ms`) calls have waited without a byte read from the server; 0 when
    /// none waits. A call given up after waiting longer than [`STALL_AFTER`] leaves it set
    /// until the server is heard from (or the connection is replaced).
    waiting_since: AtomicU64,
    /// How many times the server has been heard from: a call compares it at its start and
    /// end to tell whether the server said anything while it waited.
    heard: AtomicU64,
    /// A call was given up without a byte from the server while it waited, and the server
    /// has not been heard from since (see [`Link::Suspect`]).
    suspect: AtomicBool,
}

impl LinkState {
    fn get(&self) -> Link {
        if self.open.load(Ordering::Relaxed) > 0 {
            return if self.stalled() {
                Link::Stalled
            } else if self.suspect.load(Ordering::Relaxed) {
                Link::Suspect
            } else {
                Link::Up
            };
        }
        match self.attempt.load(Ordering::Relaxed) {
            state if state == Link::Connecting as u8 => Link::Connecting,
            state if state == Link::Failed as u8 => Link::Failed,
            _ => Link::Idle,
        }
    }

    fn attempt(&self, link: Link) {
        self.attempt.store(link as u8, Ordering::Relaxed);
    }

    fn stream_opened(&self) {
        self.attempt(Link::Idle);
        self.waiting_since.store(0, Ordering::Relaxed);
        self.suspect.store(false, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    fn stream_closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Calls have waited longer than [`STALL_AFTER`] without hearing from the server.
    fn stalled(&self) -> bool {
        let since = self.waiting_since.load(Ordering::Relaxed);
        since != 0 && now_ms().saturating_sub(since) > STALL_AFTER.as_millis() as u64
    }

    /// A call starts waiting; returns how often the server had been heard from by then.
    fn call_started(&self) -> u64 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let _ =
            self.waiting_since
                .compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed);
        self.heard.load(Ordering::Relaxed)
    }

    /// A call was answered, or given up (`answered` false): the last one out clears the
    /// wait, unless it was given up after the connection had already stalled. A call given up
    /// while the server stayed silent (`heard_at_start` unchanged) makes the link suspect.
    fn call_ended(&self, answered: bool, heard_at_start: u64) {
        if !answered && self.heard.load(Ordering::Relaxed) == heard_at_start {
            self.suspect.store(true, Ordering::Relaxed);
        }
        let left = self.calls.fetch_sub(1, Ordering::Relaxed) - 1;
        if left == 0 && (answered || !self.stalled()) {
            self.waiting_since.store(0, Ordering::Relaxed);
        }
    }

    /// The server sent something: waiting calls start their wait again, and a stall left by
    /// given-up calls is over.
    fn heard(&self) {
        self.heard.fetch_add(1, Ordering::Relaxed);
        self.suspect.store(false, Ordering::Relaxed);
        let now = now_ms();
        let _ = self
            .waiting_since
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |since| {
                if since == 0 {
                    None
                } else if self.calls.load(Ordering::Relaxed) > 0 {
                    Some(now)
                } else {
                    Some(0)
                }
            });
    }
}

/// Counts one call on its endpoint until the call is answered, fails or is dropped.
struct CallInFlight {
    link: Arc<LinkState>,
    /// The response head arrived.
    answered: bool,
    /// [`LinkState::heard`] when the call started.
    heard_at_start: u64,
}

impl CallInFlight {
    fn new(link: Arc<LinkState>) -> Self {
        let heard_at_start = link.call_started();
        CallInFlight {
            link,
            answered: false,
            heard_at_start,
        }
    }
}

impl Drop for CallInFlight {
    fn drop(&mut self) {
        self.link.call_ended(self.answered, self.heard_at_start);
    }
}

/// One endpoint: its tonic channel and how its connection stands.
struct Member {
    uri: Uri,
    channel: tonic::transport::Channel,
    link: Arc<LinkState>,
}

/// The endpoints of one client and the endpoint changes not yet applied.
struct MemberList {
    changes: mpsc::Receiver<Change<Uri, Endpoint>>,
    members: Vec<Member>,
    /// Round-robin position among equally good members.
    next: usize,
}

impl MemberList {
    fn apply(&mut self, change: Change<Uri, Endpoint>) {
        match change {
            Change::Insert(uri, endpoint) => {
                self.members.retain(|member| member.uri != uri);
                let link = Arc::new(LinkState::default());
                let connector = BurstConnector {
                    link: Arc::clone(&link),
                };
                let channel = endpoint.connect_with_connector_lazy(connector);
                self.members.push(Member { uri, channel, link });
            }
            Change::Remove(uri) => self.members.retain(|member| member.uri != uri),
        }
    }

    /// The channel of the best member: connected first, then idle, connecting, failed; in
    /// turn among equals. Pending (waker registered) while no endpoint has arrived yet.
    fn choose(&mut self, cx: &mut Context<'_>) -> Poll<Result<Chosen, tower::BoxError>> {
        loop {
            while let Ok(change) = self.changes.try_recv() {
                self.apply(change);
            }
            if !self.members.is_empty() {
                break;
            }
            match self.changes.poll_recv(cx) {
                Poll::Ready(Some(change)) => self.apply(change),
                Poll::Ready(None) => {
                    return Poll::Ready(Err("etcd client has no endpoints".into()))
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        let links: Vec<Link> = self.members.iter().map(|m| m.link.get()).collect();
        let index = pick(&links, self.next);
        self.next = index + 1;
        let member = &self.members[index];
        Poll::Ready(Ok((member.channel.clone(), Arc::clone(&member.link))))
    }
}

/// A member's channel and link, as chosen for a call.
type Chosen = (tonic::transport::Channel, Arc<LinkState>);

/// The member to call among `links` (not empty): the best link (up, then idle, connecting,
/// suspect, failed, stalled), the first such at or after `next`, round robin.
fn pick(links: &[Link], next: usize) -> usize {
    let best = links.iter().min().copied().unwrap_or(Link::Idle);
    (0..links.len())
        .map(|step| (next + step) % links.len())
        .find(|&index| links[index] == best)
        .unwrap_or(0)
}

/// The service etcd-client calls: picks a member per call and wraps the request body in
/// [`LastFrameBody`].
struct Members {
    shared: Arc<Mutex<MemberList>>,
    /// The member chosen by `poll_ready`, used by the next `call`.
    chosen: Option<Chosen>,
}

impl Clone for Members {
    fn clone(&self) -> Self {
        Members {
            shared: Arc::clone(&self.shared),
            chosen: None,
        }
    }
}

type TonicRequest = http::Request<tonic::body::Body>;
type TonicResponse = http::Response<tonic::body::Body>;

impl Service<TonicRequest> for Members {
    type Response = TonicResponse;
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TonicResponse, tower::BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.chosen.is_none() {
            let chosen = match self.shared.lock().choose(cx) {
                Poll::Ready(chosen) => chosen?,
                Poll::Pending => return Poll::Pending,
            };
            self.chosen = Some(chosen);
        }
        let ready = match &mut self.chosen {
            Some((channel, _)) => channel.poll_ready(cx).map_err(Into::into),
            None => Poll::Ready(Err("etcd client has no endpoints".into())),
        };
        // A member that failed its readiness is chosen afresh next time: etcd-client polls
        // the same service for every call of one of its clients.
        if let Poll::Ready(Err(_)) = ready {
            self.chosen = None;
        }
        ready
    }

    fn call(&mut self, request: TonicRequest) -> Self::Future {
        let request = request.map(|body| tonic::body::Body::new(LastFrameBody::new(body)));
        match self.chosen.take() {
            Some((mut channel, link)) => {
                let mut in_flight = CallInFlight::new(link);
                let call = channel.call(request);
                Box::pin(async move {
                    let response = call.await;
                    // An error here is the transport's (no response head): not an answer.
                    in_flight.answered = response.is_ok();
                    drop(in_flight);
                    response.map_err(Into::into)
                })
            }
            // tower's contract: `call` only after `poll_ready` returned ready.
            None => Box::pin(async { Err("etcd client called before it was ready".into()) }),
        }
    }
}

/// A request body that reports its end together with its last frame: it asks the body for
/// the next frame before handing over the current one, so `is_end_stream` is true as soon as
/// the last message has been yielded (h2 then sets END_STREAM on its DATA frame instead of
/// sending an empty DATA frame after it). A body whose next frame is not ready yet (a watch
/// or keep-alive stream) is passed through frame by frame: nothing is held back or dropped.
struct LastFrameBody {
    inner: tonic::body::Body,
    /// The frame (or error) taken from `inner` ahead of time.
    ahead: Option<Result<Frame<BodyData>, tonic::Status>>,
    /// `inner` returned its end.
    ended: bool,
}

type BodyData = <tonic::body::Body as Body>::Data;

impl LastFrameBody {
    fn new(inner: tonic::body::Body) -> Self {
        LastFrameBody {
            inner,
            ahead: None,
            ended: false,
        }
    }
}

impl Body for LastFrameBody {
    type Data = BodyData;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<BodyData>, tonic::Status>>> {
        let this = self.get_mut();
        let current = match this.ahead.take() {
            Some(frame) => frame,
            None if this.ended => return Poll::Ready(None),
            None => match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(frame)) => frame,
                Poll::Ready(None) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            },
        };
        // Look one frame ahead: a body that ends now ends with this frame.
        if !this.ended {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(next)) => this.ahead = Some(next),
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => {}
            }
        }
        Poll::Ready(Some(current))
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_none() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.ahead.is_some() {
            SizeHint::default()
        } else if self.ended {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

/// Opens the TCP connections of one endpoint as [`BurstStream`]s (TLS, when configured, is
/// layered on top by tonic) and records how the last attempt went.
#[derive(Clone)]
struct BurstConnector {
    link: Arc<LinkState>,
}

impl Service<Uri> for BurstConnector {
    type Response = TokioIo<BurstStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<BurstStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let link = Arc::clone(&self.link);
        Box::pin(async move {
            link.attempt(Link::Connecting);
            // Set back to failed unless the attempt gets through (also when the connect
            // timeout drops this future).
            let mut attempt = Attempt(Some(Arc::clone(&link)));
            let stream = open_tcp(&uri).await?;
            attempt.0 = None;
            link.stream_opened();
            Ok(TokioIo::new(BurstStream::new(stream, link)))
        })
    }
}

/// Marks its link failed when dropped while still holding it.
struct Attempt(Option<Arc<LinkState>>);

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(link) = &self.0 {
            link.attempt(Link::Failed);
        }
    }
}

async fn open_tcp(uri: &Uri) -> io::Result<TcpStream> {
    let host = uri
        .host()
        .map(|host| host.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}")))?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let stream = TcpStream::connect((host, port)).await?;
    // What tonic's own connector does: small gRPC writes go out at once.
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Most bytes a [`BurstStream`] keeps before it writes through without waiting for a flush.
const BURST_LIMIT: usize = 64 * 1024;

/// A TCP stream that gathers the writes of a burst and sends them at the next flush, after
/// yielding once to the scheduler so that frames queued by other tasks in the meantime (a
/// request body's DATA behind its HEADERS) join the same write. Go's gRPC writer does the
/// same.
struct BurstStream {
    stream: TcpStream,
    /// Bytes accepted and not yet written.
    pending: Vec<u8>,
    /// Of `pending`, the bytes already written.
    written: usize,
    /// The current flush has yielded once already.
    yielded: bool,
    link: Arc<LinkState>,
    /// Still counted among its endpoint's open streams.
    counted: bool,
}

impl BurstStream {
    fn new(stream: TcpStream, link: Arc<LinkState>) -> Self {
        BurstStream {
            stream,
            pending: Vec::new(),
            written: 0,
            yielded: false,
            link,
            counted: true,
        }
    }

    /// Writes what is pending; ready once all of it is written.
    fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let wrote =
                match Pin::new(&mut self.stream).poll_write(cx, &self.pending[self.written..]) {
                    Poll::Ready(Ok(wrote)) => wrote,
                    Poll::Ready(Err(err)) => {
                        self.close_link();
                        return Poll::Ready(Err(err));
                    }
                    Poll::Pending => return Poll::Pending,
                };
            if wrote == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += wrote;
        }
        self.pending.clear();
        self.written = 0;
        self.yielded = false;
        Poll::Ready(Ok(()))
    }

    /// Counts this stream out of its endpoint's open ones, once.
    fn close_link(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.link.stream_closed();
        }
    }

    /// Makes room for more bytes: writes through once `BURST_LIMIT` is reached.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.len() >= BURST_LIMIT {
            return self.poll_write_pending(cx);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for BurstStream {
    fn drop(&mut self) {
        self.close_link();
    }
}

impl AsyncRead for BurstStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.link.heard();
        }
        read
    }
}

impl AsyncWrite for BurstStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(err) = std::task::ready!(this.poll_room(cx)) {
            return Poll::Ready(Err(err));
        }
        this.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(err) = std::task::ready!(this.poll_room(cx)) {
            return Poll::Ready(Err(err));
        }
        let mut taken = 0;
        for buf in bufs {
            this.pending.extend_from_slice(buf);
            taken += buf.len();
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending.is_empty() {
            return Pin::new(&mut this.stream).poll_flush(cx);
        }
        if !this.yielded {
            // Let the tasks woken by this burst (a body's DATA) run before the write.
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Err(err) = std::task::ready!(this.poll_write_pending(cx)) {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(err) = std::task::ready!(this.poll_write_pending(cx)) {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::{pick, Link, LinkState};

    /// A link with one connection open.
    fn connected() -> LinkState {
        let link = LinkState::default();
        link.stream_opened();
        link
    }

    #[test]
    fn a_call_given_up_on_a_silent_member_makes_it_suspect() {
        let link = connected();
        let heard_at_start = link.call_started();
        link.call_ended(false, heard_at_start);
        assert_eq!(link.get(), Link::Suspect);
        // The retry goes to any other member that is up, idle or connecting...
        assert_eq!(pick(&[link.get(), Link::Idle], 0), 1);
        assert_eq!(pick(&[link.get(), Link::Connecting], 0), 1);
        // ...and stays on the only member there is.
        assert_eq!(pick(&[link.get()], 0), 0);
        assert_eq!(pick(&[link.get(), Link::Failed, Link::Stalled], 1), 0);
        // The server speaks again: calls may go there again.
        link.heard();
        assert_eq!(link.get(), Link::Up);
    }

    #[test]
    fn a_new_connection_clears_suspicion() {
        let link = connected();
        let heard_at_start = link.call_started();
        link.call_ended(false, heard_at_start);
        link.stream_closed();
        link.stream_opened();
        assert_eq!(link.get(), Link::Up);
    }

    #[test]
    fn answered_calls_and_calls_given_up_while_the_server_spoke_leave_a_member_up() {
        let link = connected();
        let heard_at_start = link.call_started();
        link.call_ended(true, heard_at_start);
        assert_eq!(link.get(), Link::Up);
        // A slow request given up while the server answered others: the member is alive.
        let heard_at_start = link.call_started();
        link.heard();
        link.call_ended(false, heard_at_start);
        assert_eq!(link.get(), Link::Up);
    }

    #[test]
    fn calls_go_to_connected_members_in_turn() {
        let links = [Link::Failed, Link::Up, Link::Idle, Link::Up];
        assert_eq!(pick(&links, 0), 1);
        assert_eq!(pick(&links, 2), 3);
        assert_eq!(pick(&links, 4), 1);
    }

    #[test]
    fn without_a_connected_member_idle_ones_go_before_connecting_and_failed_ones() {
        assert_eq!(pick(&[Link::Failed, Link::Connecting, Link::Idle], 0), 2);
        assert_eq!(pick(&[Link::Failed, Link::Connecting], 0), 1);
        assert_eq!(pick(&[Link::Failed, Link::Failed], 1), 1);
    }

    #[test]
    fn a_stalled_member_goes_last() {
        assert_eq!(pick(&[Link::Stalled, Link::Failed], 0), 1);
        assert_eq!(pick(&[Link::Stalled, Link::Idle, Link::Up], 0), 2);
        assert_eq!(pick(&[Link::Stalled, Link::Stalled], 1), 1);
    }
}
