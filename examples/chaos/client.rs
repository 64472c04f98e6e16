//! One chaos client process: take a random name (a mutex or a leadership, a side of an RW
//! lock, or a semaphore permit; waiting, or trying, sometimes under a short timeout that
//! cancels the call), write fenced (mutex holders), hold a moment, unlock (sometimes under a
//! short timeout too); after a cancelled or failed call, take the same name again from the same
//! session.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use locksmith::etcd_client::{Compare, CompareOp, TxnOp};
use locksmith::{
    DistributedLock, DistributedRwLock, DistributedSemaphore, EtcdConfig, EtcdLock, LeaderElection,
    LockError, LockGuard,
};
use rand::Rng;
use tokio::signal::unix::{signal, SignalKind};

use crate::log::{now_us, Event, Log};

pub const NAMESPACE: &str = "chaos/locks/";
/// The mutex (and election) names.
pub const NAMES: [&str; 3] = ["a", "b", "c"];
/// The reader-writer lock names.
pub const RW_NAMES: [&str; 2] = ["rw1", "rw2"];
/// The semaphore names, each with its limit.
pub const SEMAPHORES: [(&str, u32); 2] = [("s2", 2), ("s3", 3)];
/// The etcd user and password of auth mode (`--auth`).
pub const USER: &str = "chaos";
pub const PASSWORD: &str = "chaos-password";

/// How long a waiting `lock` may take before the client gives up and logs it (the checker
/// counts such a wait as stuck).
pub const LOCK_PATIENCE: Duration = Duration::from_secs(15);
/// A bound on the client's own writes, so a request stuck on a stopped member does not keep
/// the lock held for long (a write cut short counts as neither accepted nor rejected).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// The key holding the last accepted fencing token of `name`.
pub fn fence_key(name: &str) -> String {
    format!("chaos/fence/{name}")
}

/// Where the keys of the name `name` of any primitive live (see `backend-etcd`'s `rwlock.rs`
/// and `semaphore.rs`); the oldest key under it by create revision is a holder's.
pub fn key_prefix(name: &str) -> String {
    if SEMAPHORES.iter().any(|(semaphore, _)| *semaphore == name) {
        // The semaphore names have no `%` or `/` to escape.
        format!("{NAMESPACE}\u{1f}semaphore/{name}/")
    } else {
        format!("{NAMESPACE}{name}/")
    }
}

/// Every name of every primitive.
pub fn all_names() -> impl Iterator<Item = &'static str> {
    let semaphores = SEMAPHORES.iter().map(|(name, _)| *name);
    NAMES.into_iter().chain(RW_NAMES).chain(semaphores)
}

/// Tokens as fixed-width decimal, so etcd's byte comparison orders them as numbers.
pub fn fence_value(token: u64) -> String {
    format!("{token:020}")
}

/// What a client process is told by the orchestrator.
pub struct Settings<'a> {
    pub id: &'a str,
    pub endpoints: Vec<String>,
    pub ttl_secs: u64,
    pub auth: bool,
    pub log: &'a Path,
}

pub async fn run(settings: Settings<'_>) {
    let id = settings.id;
    let Ok(mut log) = Log::open(settings.log, id) else {
        eprintln!("chaos client {id}: cannot open {}", settings.log.display());
        return;
    };
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        return;
    };
    let config = EtcdConfig {
        namespace: NAMESPACE.into(),
        ttl_secs: settings.ttl_secs,
        connect_timeout_ms: 3_000,
        user: settings.auth.then(|| USER.to_owned()),
        password: settings.auth.then(|| PASSWORD.to_owned()),
        ..EtcdConfig::new(settings.endpoints)
    };
    let mut session: Option<EtcdLock> = None;
    loop {
        let current = match &session {
            Some(current) => current.clone(),
            None => match EtcdLock::connect(&config).await {
                Ok(opened) => {
                    log.write(Event {
                        event: "session".into(),
                        lease: format!("{:x}", opened.lease_id()),
                        ..Event::default()
                    });
                    session = Some(opened.clone());
                    opened
                }
                Err(err) => {
                    log.write(error_event("", &err));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let stop = tokio::select! {
            biased;
            _ = terminate.recv() => true,
            outcome = Round::new(&current, &mut log).run() => {
                if let Err(err) = outcome {
                    let lost = err.is_session_lost();
                    log.write(error_event("", &err));
                    if lost {
                        session = None;
                    } else {
                        // Not a busy loop when etcd refuses everything (expired auth token).
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                false
            }
        };
        if stop {
            if let Some(current) = session.take() {
                let _ = tokio::time::timeout(Duration::from_secs(3), current.close()).await;
            }
            return;
        }
    }
}

fn error_event(name: &str, err: &LockError) -> Event {
    Event {
        event: "error".into(),
        name: name.into(),
        detail: err.to_string(),
        ..Event::default()
    }
}

/// A random timeout for a call that is meant to be cancelled at a random point: half of them
/// within the first 10 ms (inside a single request), the rest up to 200 ms (across retries,
/// waits, a stalled or restarting member).
fn cancel_after() -> Duration {
    let mut rng = rand::thread_rng();
    let ms = if rng.gen_bool(0.5) {
        rng.gen_range(0..10)
    } else {
        rng.gen_range(10..200)
    };
    Duration::from_millis(ms)
}

/// What a round takes: a mutex (or a leadership) of [`NAMES`], a side of an RW lock of
/// [`RW_NAMES`], or a permit of a semaphore of [`SEMAPHORES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Primitive {
    Mutex,
    Read,
    Write,
    /// A permit, with the name's limit.
    Permit(u32),
}

impl Primitive {
    /// A random primitive and one of its names: half of the rounds take a mutex.
    fn random() -> (Primitive, &'static str) {
        let mut rng = rand::thread_rng();
        match rng.gen_range(0..4) {
            0 | 1 => (Primitive::Mutex, NAMES[rng.gen_range(0..NAMES.len())]),
            2 => {
                let side = if rng.gen_bool(0.5) {
                    Primitive::Read
                } else {
                    Primitive::Write
                };
                (side, RW_NAMES[rng.gen_range(0..RW_NAMES.len())])
            }
            _ => {
                let (name, limit) = SEMAPHORES[rng.gen_range(0..SEMAPHORES.len())];
                (Primitive::Permit(limit), name)
            }
        }
    }

    /// The `acquired` event's detail: what kind of hold it is.
    fn hold_kind(self) -> &'static str {
        match self {
            Primitive::Mutex => "",
            Primitive::Read => "read",
            Primitive::Write => "write",
            Primitive::Permit(_) => "permit",
        }
    }
}

/// Which call a round makes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    /// The waiting call (`lock`, `read`, `write`, `acquire`), up to [`LOCK_PATIENCE`].
    Wait,
    /// The `try_` call.
    Try,
    /// `campaign` with the session's proposal (mutex names only), the leadership then held as
    /// a guard.
    Campaign,
    /// The waiting call again, on the name whose last call was cancelled or failed, from the
    /// same session (`lock` after a campaign).
    Again,
}

/// How a round takes its hold: a call, maybe under a short timeout that cancels it.
#[derive(Clone, Copy)]
struct Acquire {
    call: Call,
    cancel: bool,
}

impl Acquire {
    fn random(primitive: Primitive) -> Acquire {
        let (call, cancel) = match rand::thread_rng().gen_range(0..24) {
            0..=9 => (Call::Wait, false),
            10..=12 => (Call::Wait, true),
            13..=16 => (Call::Try, false),
            17..=19 => (Call::Try, true),
            // Campaigns are a mutex name's; other primitives wait instead.
            20..=21 if primitive == Primitive::Mutex => (Call::Campaign, false),
            _ if primitive == Primitive::Mutex => (Call::Campaign, true),
            20..=21 => (Call::Wait, false),
            _ => (Call::Wait, true),
        };
        Acquire { call, cancel }
    }

    /// The call as the log names it; the checker counts `lock`, `campaign`, `read`, `write`,
    /// `acquire` and `relock` as waiting attempts.
    fn operation(self, primitive: Primitive) -> &'static str {
        match (self.call, primitive) {
            (Call::Again, _) => "relock",
            (Call::Campaign, _) => "campaign",
            (Call::Wait, Primitive::Mutex) => "lock",
            (Call::Try, Primitive::Mutex) => "try_lock",
            (Call::Wait, Primitive::Read) => "read",
            (Call::Try, Primitive::Read) => "try_read",
            (Call::Wait, Primitive::Write) => "write",
            (Call::Try, Primitive::Write) => "try_write",
            (Call::Wait, Primitive::Permit(_)) => "acquire",
            (Call::Try, Primitive::Permit(_)) => "try_acquire",
        }
    }

    fn timeout(self) -> Option<Duration> {
        self.cancel.then(cancel_after)
    }
}

/// How a hold ends.
#[derive(Clone, Copy)]
enum Release {
    /// `unlock().await`.
    Unlock,
    /// `unlock()` under a short timeout.
    UnlockCancelled,
    /// Dropping the guard.
    Drop,
}

impl Release {
    fn random() -> Release {
        match rand::thread_rng().gen_range(0..20) {
            0..=12 => Release::Unlock,
            13..=18 => Release::UnlockCancelled,
            _ => Release::Drop,
        }
    }

    fn detail(self) -> &'static str {
        match self {
            Release::Unlock => "unlock",
            Release::UnlockCancelled => "unlock_timeout",
            Release::Drop => "drop",
        }
    }
}

/// How an attempt to take the lock ended.
enum Taken {
    Guard(LockGuard),
    /// Its future was dropped by the short timeout.
    Cancelled,
    /// Busy (`try_lock`), or the wait outlasted [`LOCK_PATIENCE`].
    Nothing,
}

/// What ending a hold left behind.
enum Released {
    /// Confirmed, dropped, or reported lost: nothing of this hold is left to wait for.
    Done,
    /// The unlock was cancelled or failed: its release may still be running in the background.
    Pending,
}

/// One round: take one name (again and again while calls on it are cancelled), hold, release.
struct Round<'a> {
    session: &'a EtcdLock,
    log: &'a mut Log,
    primitive: Primitive,
    name: &'static str,
    lease: String,
}

impl<'a> Round<'a> {
    fn new(session: &'a EtcdLock, log: &'a mut Log) -> Round<'a> {
        let (primitive, name) = Primitive::random();
        Round {
            session,
            log,
            primitive,
            name,
            lease: format!("{:x}", session.lease_id()),
        }
    }

    fn event(&self, event: &str) -> Event {
        Event {
            event: event.into(),
            name: self.name.into(),
            lease: self.lease.clone(),
            ..Event::default()
        }
    }

    async fn run(mut self) -> Result<(), LockError> {
        let mut how = Acquire::random(self.primitive);
        let again = Acquire {
            call: Call::Again,
            cancel: false,
        };
        loop {
            let guard = match self.acquire(how).await? {
                Taken::Guard(guard) => guard,
                // A cancelled call: take the same name again from the same session.
                Taken::Cancelled => {
                    how = again;
                    continue;
                }
                Taken::Nothing => return Ok(()),
            };
            let token = guard.fencing_token().get();
            // Mutex holders write fenced; readers and permits hold together, so their tokens
            // have no order to fence with.
            if self.primitive == Primitive::Mutex {
                self.write_fenced(token).await;
            }
            match self.hold_and_release(guard, token).await {
                Released::Done => return Ok(()),
                Released::Pending => how = again,
            }
        }
    }

    /// Takes the lock, or says why not.
    async fn acquire(&mut self, how: Acquire) -> Result<Taken, LockError> {
        let timeout = how.timeout();
        let operation = how.operation(self.primitive);
        self.log.write(Event {
            detail: operation.into(),
            timeout_ms: timeout.map_or(0, |t| t.as_millis() as u64),
            ..self.event("attempt")
        });
        let limit = timeout.unwrap_or(LOCK_PATIENCE);
        let guard = match tokio::time::timeout(limit, self.call(how.call)).await {
            Ok(Ok(Some(guard))) => guard,
            Ok(Ok(None)) => {
                self.log.write(self.event("busy"));
                return Ok(Taken::Nothing);
            }
            Ok(Err(err)) => {
                self.log.write(error_event(self.name, &err));
                return Err(err);
            }
            Err(_) if timeout.is_some() => {
                self.log.write(Event {
                    detail: operation.into(),
                    ..self.event("cancelled")
                });
                return Ok(Taken::Cancelled);
            }
            Err(_) => {
                self.log.write(Event {
                    detail: format!("{operation} took over {} s", LOCK_PATIENCE.as_secs()),
                    ..self.event("error")
                });
                return Ok(Taken::Nothing);
            }
        };
        let limit = match self.primitive {
            Primitive::Permit(limit) => u64::from(limit),
            _ => 0,
        };
        self.log.write(Event {
            token: guard.fencing_token().get(),
            detail: self.primitive.hold_kind().into(),
            limit,
            ..self.event("acquired")
        });
        Ok(Taken::Guard(guard))
    }

    /// Makes `call` on the round's primitive: `None` when a `try_` call finds it taken.
    async fn call(&self, call: Call) -> Result<Option<LockGuard>, LockError> {
        let (session, name) = (self.session, self.name);
        match (call, self.primitive) {
            // The same proposal on every campaign of the session: a key of an earlier attempt
            // that lands late carries it too, which is the case a campaign must get right.
            (Call::Campaign, _) => {
                let proposal = format!("chaos-{}", self.lease);
                let leading = session.campaign(name, proposal.as_bytes()).await?;
                Ok(Some(leading.into_guard()))
            }
            (Call::Wait | Call::Again, Primitive::Mutex) => session.lock(name).await.map(Some),
            (Call::Try, Primitive::Mutex) => session.try_lock(name).await,
            (Call::Wait | Call::Again, Primitive::Read) => session.read(name).await.map(Some),
            (Call::Try, Primitive::Read) => session.try_read(name).await,
            (Call::Wait | Call::Again, Primitive::Write) => session.write(name).await.map(Some),
            (Call::Try, Primitive::Write) => session.try_write(name).await,
            (Call::Wait | Call::Again, Primitive::Permit(limit)) => {
                session.acquire(name, limit).await.map(Some)
            }
            (Call::Try, Primitive::Permit(limit)) => session.try_acquire(name, limit).await,
        }
    }

    /// The fenced write (accepted only if our token is above the last accepted one), then the
    /// unfenced write a paused holder would also make (counted, not prevented).
    async fn write_fenced(&mut self, token: u64) {
        let fence = fence_key(self.name);
        let mut client = self.session.client();
        let txn = locksmith::etcd_client::Txn::new()
            .when([Compare::value(
                fence.as_str(),
                CompareOp::Less,
                fence_value(token),
            )])
            .and_then([TxnOp::put(fence.as_str(), fence_value(token), None)]);
        let (accepted, rev) = match tokio::time::timeout(REQUEST_TIMEOUT, client.txn(txn)).await {
            Ok(Ok(reply)) => (
                Some(reply.succeeded()),
                reply.header().map_or(0, |h| h.revision().unsigned_abs()),
            ),
            _ => (None, 0),
        };
        self.log.write(Event {
            token,
            accepted,
            rev,
            ..self.event("write")
        });
        let plain = client.put(
            format!("chaos/plain/{}", self.name),
            fence_value(token),
            None,
        );
        let plain = matches!(
            tokio::time::timeout(REQUEST_TIMEOUT, plain).await,
            Ok(Ok(_))
        );
        self.log.write(Event {
            token,
            accepted: Some(plain),
            ..self.event("plain_write")
        });
    }

    /// Holds a moment (watching for loss), then releases the way [`Release::random`] says.
    async fn hold_and_release(&mut self, guard: LockGuard, token: u64) -> Released {
        let hold = Duration::from_millis(rand::thread_rng().gen_range(0..40));
        let lost_while_held = tokio::select! {
            () = tokio::time::sleep(hold) => false,
            reason = guard.lost() => {
                self.lost(token, reason.to_string()).await;
                true
            }
        };
        let release = Release::random();
        self.log.write(Event {
            token,
            detail: release.detail().into(),
            ..self.event("releasing")
        });
        let unlock = guard.unlock();
        let outcome = match release {
            Release::Drop => {
                drop(unlock);
                return Released::Done;
            }
            Release::Unlock => Some(unlock.await),
            Release::UnlockCancelled => tokio::time::timeout(cancel_after(), unlock).await.ok(),
        };
        match outcome {
            Some(Ok(())) => {
                self.log.write(Event {
                    token,
                    ..self.event("released")
                });
                Released::Done
            }
            Some(Err(err @ LockError::LockLost { .. })) => {
                if !lost_while_held {
                    self.lost(token, err.to_string()).await;
                }
                Released::Done
            }
            Some(Err(err)) => {
                self.log.write(Event {
                    token,
                    detail: err.to_string(),
                    ..self.event("unlock_failed")
                });
                Released::Pending
            }
            None => {
                self.log.write(Event {
                    token,
                    detail: "unlock".into(),
                    ..self.event("cancelled")
                });
                Released::Pending
            }
        }
    }

    /// Logs the loss of the hold with `token`, with what etcd says of the lease right after.
    /// The event is stamped when the loss was seen, not when etcd answered the query.
    async fn lost(&mut self, token: u64, detail: String) {
        let seen = now_us();
        let lease_ttl = lease_ttl(self.session).await;
        let event = Event {
            token,
            detail,
            lease_ttl,
            ..self.event("lost")
        };
        self.log.write_at(seen, event);
    }
}

/// The session lease's remaining TTL in seconds (-1: gone), if etcd answers in time.
async fn lease_ttl(session: &EtcdLock) -> Option<i64> {
    let mut client = session.client();
    let query = client.lease_time_to_live(session.lease_id(), None);
    with_deadline(query).await.map(|reply| reply.ttl())
}

async fn with_deadline<T, E>(call: impl Future<Output = Result<T, E>>) -> Option<T> {
    tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .ok()?
        .ok()
}
