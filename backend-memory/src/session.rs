//! A client session on a memory store: TTL, keepalive, and the end of the session.

use std::sync::{Arc, Weak};
use std::time::Duration;

use locksmith_api::instrument::SessionTelemetry;
use locksmith_api::{
    validate_name, Claim, LockError, LockGuard, LossReason, LostSignal, LostWatch, Ticket,
};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::hold::{Candidate, HoldTag, MemoryHold};
use crate::store::{MemoryStore, DEFAULT_TTL, MAX_TTL};

/// One client session on a [`MemoryStore`]; implements
/// [`DistributedLock`](locksmith_api::DistributedLock),
/// [`LeaderElection`](locksmith_api::LeaderElection),
/// [`DistributedRwLock`](locksmith_api::DistributedRwLock) and
/// [`DistributedSemaphore`](locksmith_api::DistributedSemaphore).
///
/// Cloning gives another handle to the same session. Dropping the last handle closes the
/// session: its locks are released at once and its guards report the loss, as an etcd client
/// that revokes its lease on drop.
///
/// The session has a TTL and a keepalive, driven by tokio's clock: under
/// `tokio::time::pause()` TTL tests run instantly. For tests of your own lost-lock handling,
/// [`expire`](MemoryLock::expire) ends the session now, [`pause_keepalive`](MemoryLock::pause_keepalive)
/// simulates a stalled process, and [`MemoryStore::revoke`] deletes one hold.
#[derive(Clone)]
pub struct MemoryLock {
    session: Arc<Session>,
}

struct Session {
    id: u64,
    store: MemoryStore,
    ttl: Duration,
    ended: LostSignal,
    ended_watch: LostWatch,
    /// Spans and metrics of the session's acquisitions.
    telemetry: SessionTelemetry,
    keeper: mpsc::UnboundedSender<Duration>,
    /// The runtime the session was opened on, for its background tasks.
    runtime: tokio::runtime::Handle,
}

/// Opening sessions: here rather than in `store.rs`, so that the store does not depend on
/// the sessions built on it.
impl MemoryStore {
    /// Opens a new client session with the default TTL (10 s).
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] when called outside a tokio runtime (the session's
    /// keepalive runs on it).
    pub fn connect(&self) -> Result<MemoryLock, LockError> {
        self.connect_with_ttl(DEFAULT_TTL)
    }

    /// Opens a new client session whose TTL is `ttl`.
    ///
    /// The TTL matters only when the keepalive stops: after
    /// [`MemoryLock::pause_keepalive`] for longer than the TTL the session expires, as an etcd
    /// lease of a paused process would.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] for a zero TTL, one longer than [`MAX_TTL`], or outside a
    /// tokio runtime.
    pub fn connect_with_ttl(&self, ttl: Duration) -> Result<MemoryLock, LockError> {
        if ttl.is_zero() {
            return Err(LockError::config(
                "memory session TTL must be greater than zero (the default is 10 s)",
            ));
        }
        if ttl > MAX_TTL {
            return Err(LockError::config(format!(
                "memory session TTL {} s is too long: at most {} s (the default is 10 s)",
                ttl.as_secs(),
                MAX_TTL.as_secs()
            )));
        }
        let id = self.next_session_id();
        MemoryLock::start(self.clone(), id, ttl)
    }
}

impl MemoryLock {
    /// Opens a session on the process-wide store (`memory://`) with the default TTL.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] outside a tokio runtime.
    pub fn connect() -> Result<MemoryLock, LockError> {
        MemoryStore::global().connect()
    }

    pub(crate) fn start(store: MemoryStore, id: u64, ttl: Duration) -> Result<Self, LockError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|err| {
            LockError::config_with(
                "the memory backend needs a tokio runtime: connect from within one",
                err,
            )
        })?;
        let (ended, ended_watch) = LostSignal::new();
        let (keeper, pauses) = mpsc::unbounded_channel();
        let telemetry = SessionTelemetry::start("memory", format!("{id:x}"), &ended_watch);
        let session = Arc::new(Session {
            id,
            store,
            ttl,
            ended,
            ended_watch,
            telemetry,
            keeper,
            runtime,
        });
        session
            .runtime
            .spawn(keep_alive(Arc::downgrade(&session), pauses));
        Ok(MemoryLock { session })
    }

    /// This session's number, unique within its store.
    pub fn session_id(&self) -> u64 {
        self.session.id
    }

    /// The session's TTL.
    pub fn ttl(&self) -> Duration {
        self.session.ttl
    }

    /// The tracing and metrics every acquisition of the session goes through.
    pub(crate) fn telemetry(&self) -> &SessionTelemetry {
        &self.session.telemetry
    }

    /// The store this session belongs to.
    pub fn store(&self) -> &MemoryStore {
        &self.session.store
    }

    /// Why the session ended, or `None` while it is alive.
    pub fn ended(&self) -> Option<LossReason> {
        self.session.ended_watch.reason()
    }

    /// Expires the session now, as a TTL running out would: its guards report
    /// [`LossReason::Expired`], its waiters fail with [`LockError::SessionLost`].
    pub fn expire(&self) {
        self.session.end(LossReason::Expired);
    }

    /// Stops the keepalive for `pause`, as a stalled process (GC pause, SIGSTOP) would. A
    /// pause longer than what is left of the TTL expires the session; a shorter one does not.
    /// Any length is accepted: pauses of a TTL or more (up to `Duration::MAX`) all expire it.
    pub fn pause_keepalive(&self, pause: Duration) {
        // The keeper only stops after the session has ended, when pausing means nothing.
        let _ = self.session.keeper.send(pause);
    }

    /// Ends the session now (see [`Session::end`]).
    pub(crate) fn end(&self, reason: LossReason) {
        self.session.end(reason);
    }

    /// Waits for `claim` of `name` (a lock, read, write or permit) and guards it.
    pub(crate) async fn hold(&self, claim: Claim, name: &str) -> Result<LockGuard, LockError> {
        validate_name(name)?;
        self.check_alive()?;
        let (tag, watch) = self.tag(None);
        let ticket = self.enqueue(claim, name, &tag).await?;
        Ok(self.guard(ticket, tag, watch))
    }

    /// Takes `claim` of `name` if it is granted now and nobody waits, and guards it.
    pub(crate) fn try_hold(
        &self,
        claim: Claim,
        name: &str,
    ) -> Result<Option<LockGuard>, LockError> {
        validate_name(name)?;
        self.check_alive()?;
        let (tag, watch) = self.tag(None);
        let ticket = self.try_enqueue(claim, name, &tag)?;
        Ok(ticket.map(|ticket| self.guard(ticket, tag, watch)))
    }

    pub(crate) fn check_alive(&self) -> Result<(), LockError> {
        match self.session.ended_watch.reason() {
            Some(reason) => Err(self.session.lost_error(reason)),
            None => Ok(()),
        }
    }

    /// Runs `task` in the background on the session's runtime.
    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.session.runtime.spawn(task);
    }

    /// A new table entry of this session: a campaign when `candidate` is given, else a lock,
    /// read, write or permit.
    pub(crate) fn tag(&self, candidate: Option<Arc<Candidate>>) -> (HoldTag, LostWatch) {
        let (lost, watch) = LostSignal::new();
        let tag = HoldTag {
            session: self.session.id,
            lost,
            candidate,
        };
        (tag, watch)
    }

    /// Waits in the queue of `claim`'s family and `name` for `tag`'s turn, failing when the
    /// session ends first.
    pub(crate) async fn enqueue(
        &self,
        claim: Claim,
        name: &str,
        tag: &HoldTag,
    ) -> Result<Ticket<HoldTag>, LockError> {
        let table = self.session.store.table();
        // The queue first: a free name is taken without registering for the session's end.
        let ticket = tokio::select! {
            biased;
            ticket = table.claim(claim, name, tag.clone()) => ticket?,
            reason = self.session.ended_watch.wait() => {
                return Err(self.session.lost_error(reason));
            }
        };
        // The session may have ended in the same instant; the ticket then goes back.
        self.check_alive()?;
        Ok(ticket)
    }

    /// Takes `claim` of `name` for `tag` if the table grants it now and nobody waits.
    pub(crate) fn try_enqueue(
        &self,
        claim: Claim,
        name: &str,
        tag: &HoldTag,
    ) -> Result<Option<Ticket<HoldTag>>, LockError> {
        let ticket = self
            .session
            .store
            .table()
            .try_claim(claim, name, tag.clone())?;
        // A session that ended meanwhile did not evict this entry: give it back.
        self.check_alive()?;
        Ok(ticket)
    }

    /// The guard of a granted entry. A lock's (or leader's) key is `{name}/{session:x}`;
    /// readers, writers and permits, of which one session may hold several, get
    /// `{name}/read/…`, `{name}/write/…` and `{name}/permit/…` keys ending in
    /// `{session:x}_{token}`, unique per hold.
    pub(crate) fn guard(
        &self,
        ticket: Ticket<HoldTag>,
        tag: HoldTag,
        watch: LostWatch,
    ) -> LockGuard {
        let kind = match ticket.claim() {
            Claim::Lock => None,
            Claim::Read => Some("read"),
            Claim::Write => Some("write"),
            Claim::Permit { .. } => Some("permit"),
        };
        let name = Arc::clone(ticket.shared_name());
        let (id, token) = (self.session.id, ticket.token());
        let hold = Box::new(MemoryHold {
            ticket,
            lost: tag.lost,
        });
        match kind {
            None => LockGuard::with_session_key(name, id, token, watch, hold),
            Some(kind) => {
                let key = format!("{name}/{kind}/{id:x}_{}", token.get());
                LockGuard::new(&*name, key, token, watch, hold)
            }
        }
    }
}

impl Session {
    /// Ends the session once: records why, then frees its holds and fails its waiters.
    fn end(&self, reason: LossReason) {
        if !self.ended.mark(reason) {
            return;
        }
        let id = self.id;
        self.store.table().evict_where(
            |tag| tag.session == id,
            |_, tag| {
                tag.lost.mark(reason);
            },
            || self.lost_error(reason),
        );
        self.store
            .elections()
            .end_session(id, || self.lost_error(reason));
    }

    fn lost_error(&self, reason: LossReason) -> LockError {
        LockError::SessionLost {
            session: format!("memory:{:x}", self.id),
            reason,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.end(LossReason::Closed);
    }
}

/// Refreshes the session every TTL/3 and expires it when a pause outlasts the TTL.
///
/// Ends with the session: it holds only a weak reference.
async fn keep_alive(session: Weak<Session>, mut pauses: mpsc::UnboundedReceiver<Duration>) {
    let (ttl, ended) = match session.upgrade() {
        Some(s) => (s.ttl, s.ended_watch.clone()),
        None => return,
    };
    let mut refreshed = Instant::now();
    // `None` is "never": an instant past the end of the clock's range. TTLs are at most
    // `MAX_TTL` and pauses count up to one TTL, so this only matters on a clock near its end;
    // it keeps any user-supplied duration from panicking this task.
    let mut paused_until = Some(refreshed);
    loop {
        let expires_at = refreshed.checked_add(ttl);
        let refresh_at = latest(refreshed.checked_add(ttl / 3), paused_until);
        tokio::select! {
            biased;
            _ = ended.wait() => return,
            pause = pauses.recv() => match pause {
                // A pause of one TTL already expires the session; longer ones change nothing.
                Some(pause) => {
                    paused_until = latest(paused_until, Instant::now().checked_add(pause.min(ttl)));
                }
                None => return,
            },
            () = sleep_until_or_never(expires_at) => {
                if let Some(session) = session.upgrade() {
                    session.end(LossReason::Expired);
                }
                return;
            }
            () = sleep_until_or_never(refresh_at) => refreshed = Instant::now(),
        }
    }
}

/// The later of two deadlines, where `None` is "never".
fn latest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    a.zip(b).map(|(a, b)| a.max(b))
}

async fn sleep_until_or_never(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl std::fmt::Debug for MemoryLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLock")
            .field("session", &self.session.id)
            .field("ttl", &self.session.ttl)
            .field("ended", &self.ended())
            .finish()
    }
}
