//! One chaos client process: lock a random name (waiting, or trying, sometimes under a short
//! timeout that cancels the call), write fenced, hold a moment, unlock (sometimes under a short
//! timeout too); after a cancelled or failed call, lock the same name again from the same
//! session.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use locksmith::etcd_client::{Compare, CompareOp, TxnOp};
use locksmith::{DistributedLock, EtcdConfig, EtcdLock, LeaderElection, LockError, LockGuard};
use rand::Rng;
use tokio::signal::unix::{signal, SignalKind};

use crate::log::{now_us, Event, Log};

pub const NAMESPACE: &str = "chaos/locks/";
pub const NAMES: [&str; 3] = ["a", "b", "c"];
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

/// How a round takes its lock.
#[derive(Clone, Copy)]
enum Acquire {
    /// `lock`, waiting up to [`LOCK_PATIENCE`].
    Lock,
    /// `lock` under a short timeout.
    LockCancelled,
    /// `try_lock`.
    TryLock,
    /// `try_lock` under a short timeout.
    TryLockCancelled,
    /// `campaign` with the session's proposal, the leadership then held as a guard.
    Campaign,
    /// `campaign` under a short timeout.
    CampaignCancelled,
    /// `lock` of the name whose last call was cancelled or failed, from the same session.
    Relock,
}

impl Acquire {
    fn random() -> Acquire {
        match rand::thread_rng().gen_range(0..24) {
            0..=9 => Acquire::Lock,
            10..=12 => Acquire::LockCancelled,
            13..=16 => Acquire::TryLock,
            17..=19 => Acquire::TryLockCancelled,
            20..=21 => Acquire::Campaign,
            _ => Acquire::CampaignCancelled,
        }
    }

    /// The operation as the log names it; a campaign waits like a `lock` (the checker counts
    /// both as waiting attempts).
    fn operation(self) -> &'static str {
        match self {
            Acquire::Lock | Acquire::LockCancelled => "lock",
            Acquire::TryLock | Acquire::TryLockCancelled => "try_lock",
            Acquire::Campaign | Acquire::CampaignCancelled => "campaign",
            Acquire::Relock => "relock",
        }
    }

    fn timeout(self) -> Option<Duration> {
        match self {
            Acquire::LockCancelled | Acquire::TryLockCancelled | Acquire::CampaignCancelled => {
                Some(cancel_after())
            }
            Acquire::Lock | Acquire::TryLock | Acquire::Campaign | Acquire::Relock => None,
        }
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
    name: &'static str,
    lease: String,
}

impl<'a> Round<'a> {
    fn new(session: &'a EtcdLock, log: &'a mut Log) -> Round<'a> {
        Round {
            session,
            log,
            name: NAMES[rand::thread_rng().gen_range(0..NAMES.len())],
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
        let mut how = Acquire::random();
        loop {
            let guard = match self.acquire(how).await? {
                Taken::Guard(guard) => guard,
                // A cancelled call: take the same name again from the same session.
                Taken::Cancelled => {
                    how = Acquire::Relock;
                    continue;
                }
                Taken::Nothing => return Ok(()),
            };
            let token = guard.fencing_token().get();
            self.write_fenced(token).await;
            match self.hold_and_release(guard, token).await {
                Released::Done => return Ok(()),
                Released::Pending => how = Acquire::Relock,
            }
        }
    }

    /// Takes the lock, or says why not.
    async fn acquire(&mut self, how: Acquire) -> Result<Taken, LockError> {
        let timeout = how.timeout();
        self.log.write(Event {
            detail: how.operation().into(),
            timeout_ms: timeout.map_or(0, |t| t.as_millis() as u64),
            ..self.event("attempt")
        });
        let limit = timeout.unwrap_or(LOCK_PATIENCE);
        let outcome = match how {
            Acquire::TryLock | Acquire::TryLockCancelled => {
                tokio::time::timeout(limit, self.session.try_lock(self.name)).await
            }
            Acquire::Lock | Acquire::LockCancelled | Acquire::Relock => {
                tokio::time::timeout(limit, async {
                    self.session.lock(self.name).await.map(Some)
                })
                .await
            }
            // The same proposal on every campaign of the session: a key of an earlier attempt
            // that lands late carries it too, which is the case a campaign must get right.
            Acquire::Campaign | Acquire::CampaignCancelled => {
                let proposal = format!("chaos-{}", self.lease);
                tokio::time::timeout(limit, async {
                    let leading = self
                        .session
                        .campaign(self.name, proposal.as_bytes())
                        .await?;
                    Ok(Some(leading.into_guard()))
                })
                .await
            }
        };
        let guard = match outcome {
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
                let operation = match how {
                    Acquire::TryLockCancelled => "try_lock",
                    Acquire::CampaignCancelled => "campaign",
                    _ => "lock",
                };
                self.log.write(Event {
                    detail: operation.into(),
                    ..self.event("cancelled")
                });
                return Ok(Taken::Cancelled);
            }
            Err(_) => {
                self.log.write(Event {
                    detail: format!("lock took over {} s", LOCK_PATIENCE.as_secs()),
                    ..self.event("error")
                });
                return Ok(Taken::Nothing);
            }
        };
        self.log.write(Event {
            token: guard.fencing_token().get(),
            ..self.event("acquired")
        });
        Ok(Taken::Guard(guard))
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
