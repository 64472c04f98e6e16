//! A table of named in-process FIFO queues: the queue bookkeeping every backend needs.
//!
//! Every entry of a queue makes a [`Claim`] — a lock (or election candidate), a reader, a
//! writer, or a semaphore permit — and one grant rule decides which entries hold: a lock or a
//! writer when it is the oldest entry, a reader when no older writer holds or waits, a permit
//! when fewer than `limit` older entries hold. Waiters are served strictly in arrival order.
//!
//! Locks, reader-writer locks and semaphores are separate [`Family`]s of queues: lock `x`,
//! reader-writer lock `x` and semaphore `x` never block each other, as on etcd, where they
//! use different keys.
//!
//! The memory backend keeps its whole store in one [`LockTable`]; the etcd backend uses one
//! per session to serialize its own tasks on a name before they touch etcd. Each entry carries
//! a backend-defined tag (the memory backend stores the session and loss signal there).
//!
//! # Fencing tokens
//! One counter per table, taken at each grant: a token is greater than every token granted
//! before it, in every queue. So a writer's token exceeds every earlier reader's and writer's
//! of its name, a reader's every earlier writer's, and a permit's every permit of its name
//! released before it was granted; holders at once (readers, permits) have no order among
//! themselves beyond the order of their grants.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::{validate_limit, FencingToken, LockError, LossReason};

mod queue;

use queue::{EntryState, NameQueue};

/// What an entry of a queue asks for; decides its [`Family`] and its grant rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// A mutex hold (or an election candidate): holds alone, when it is the oldest entry.
    Lock,
    /// A reader of a reader-writer lock: holds when no older writer holds or waits.
    Read,
    /// A writer of a reader-writer lock: holds alone, when it is the oldest entry.
    Write,
    /// A semaphore permit: holds when fewer than `limit` older entries hold. Every entry of a
    /// name must use the same limit (that of the oldest entry).
    Permit {
        /// How many permits of the name exist; at least 1.
        limit: u32,
    },
}

impl Claim {
    /// The family of queues this claim waits in.
    pub fn family(self) -> Family {
        match self {
            Claim::Lock => Family::Lock,
            Claim::Read | Claim::Write => Family::RwLock,
            Claim::Permit { .. } => Family::Semaphore,
        }
    }
}

/// A family of queues: names of different families are independent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// Mutexes and election candidates ([`Claim::Lock`]).
    Lock,
    /// Reader-writer locks ([`Claim::Read`], [`Claim::Write`]).
    RwLock,
    /// Semaphores ([`Claim::Permit`]).
    Semaphore,
}

/// FIFO queues by family and name, with the state for a name freed as soon as nobody holds
/// or waits.
///
/// `claim` (and `acquire`) is cancel-safe: a dropped waiter leaves the queue, and a handoff
/// that reaches a waiter just as it is dropped passes on to the next one.
pub struct LockTable<T> {
    state: Mutex<TableState<T>>,
}

/// A function the table calls, under its lock, each time the holder of a lock name
/// ([`Family::Lock`]) changes: with the new holder's tag and token, or `None` when the name
/// falls free.
///
/// It runs with the table locked, so the calls are in the order of the changes; it must not
/// call back into the table (that would deadlock) and should be quick.
pub type HolderHook<T> = Box<dyn Fn(&str, Option<(&T, FencingToken)>) + Send + Sync>;

/// Lock names are short and looked up on every lock and unlock: hashbrown's seeded foldhash,
/// not SipHash, and `entry_ref` so a name is copied only when its queue is created.
type Names<T> = hashbrown::HashMap<String, NameQueue<T>>;

struct TableState<T> {
    locks: Names<T>,
    rwlocks: Names<T>,
    semaphores: Names<T>,
    /// Names that went idle, oldest first; at most [`IDLE_KEPT`] stay in their maps.
    idle: VecDeque<(Family, Arc<str>)>,
    next_ticket: u64,
    last_token: u64,
    on_holder_change: Option<HolderHook<T>>,
}

/// How many names nobody holds or waits for the table keeps, so that a lock taken over and
/// over in a loop does not allocate and free its queue each time.
const IDLE_KEPT: usize = 64;

type Woken = Result<(Arc<str>, FencingToken), LockError>;

impl<T: Clone + Send + 'static> LockTable<T> {
    /// An empty table whose fencing tokens start at 1.
    pub fn new() -> Arc<Self> {
        Self::build(None)
    }

    /// An empty table that calls `on_holder_change` (under its lock, in the order of the
    /// changes) whenever the holder of a lock name changes; see [`HolderHook`].
    pub fn with_holder_hook(
        on_holder_change: impl Fn(&str, Option<(&T, FencingToken)>) + Send + Sync + 'static,
    ) -> Arc<Self> {
        Self::build(Some(Box::new(on_holder_change)))
    }

    fn build(on_holder_change: Option<HolderHook<T>>) -> Arc<Self> {
        Arc::new(LockTable {
            state: Mutex::new(TableState {
                locks: Names::default(),
                rwlocks: Names::default(),
                semaphores: Names::default(),
                idle: VecDeque::new(),
                next_ticket: 0,
                last_token: 0,
                on_holder_change,
            }),
        })
    }

    /// Waits in FIFO order until the lock `name` is ours: [`claim`](Self::claim) of
    /// [`Claim::Lock`].
    ///
    /// # Errors
    /// Whatever error [`evict_where`](Self::evict_where) failed this waiter with.
    ///
    /// # Cancel safety
    /// As [`claim`](Self::claim).
    pub async fn acquire(self: &Arc<Self>, name: &str, tag: T) -> Result<Ticket<T>, LockError> {
        self.claim(Claim::Lock, name, tag).await
    }

    /// Waits in FIFO order until the grant rule gives `claim` of `name` to us.
    ///
    /// # Errors
    /// [`LockError::InvalidLimit`] for a permit of limit 0, [`LockError::LimitMismatch`] for
    /// a permit whose limit differs from the name's (nothing is queued then), or whatever
    /// error [`evict_where`](Self::evict_where) failed this waiter with.
    ///
    /// # Cancel safety
    /// Dropping the future withdraws the waiter, or passes what it was granted on if the
    /// grant came in the meantime: nobody is ever left waiting behind an abandoned entry.
    pub async fn claim(
        self: &Arc<Self>,
        claim: Claim,
        name: &str,
        tag: T,
    ) -> Result<Ticket<T>, LockError> {
        let (ticket, wake) = match self.enqueue(claim, name, tag)? {
            Enqueued::Granted(ticket) => return Ok(ticket),
            Enqueued::Waiting(ticket, wake) => (ticket, wake),
        };
        let mut withdraw = Withdraw {
            table: self,
            family: claim.family(),
            name,
            ticket,
            armed: true,
        };
        let outcome = wake.await;
        withdraw.armed = false;
        match outcome {
            Ok(Ok((shared, token))) => Ok(self.ticket(claim, shared, ticket, token)),
            Ok(Err(err)) => Err(err),
            // Waiters are only removed after being sent a result; this is defensive.
            Err(_) => Err(LockError::LockLost {
                name: name.to_owned(),
                reason: LossReason::Unknown,
            }),
        }
    }

    // The `#[inline]`s on this, `take`, `queue`, `change`, `release` and the small
    // `NameQueue` helpers are measured: the table is generic, so it is compiled in each
    // backend crate, where LLVM otherwise kept them as calls and an uncontended memory
    // lock+unlock cost about 140 instructions more (callgrind; see BENCHMARKS.md).
    #[inline]
    fn enqueue(
        self: &Arc<Self>,
        claim: Claim,
        name: &str,
        tag: T,
    ) -> Result<Enqueued<T>, LockError> {
        if let Claim::Permit { limit } = claim {
            validate_limit(name, limit)?;
        }
        let mut state = self.state.lock();
        let ticket = state.new_ticket();
        let (queue, last_token, hook) = state.queue(claim.family(), name);
        queue.check_limit(claim)?;
        if queue.admits_now(claim) {
            let (shared, token) = take(queue, ticket, claim, tag, last_token, hook);
            return Ok(Enqueued::Granted(self.ticket(claim, shared, ticket, token)));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        queue.entries.push_back(queue::Entry {
            ticket,
            claim,
            tag,
            state: EntryState::Waiting(tx),
        });
        Ok(Enqueued::Waiting(ticket, rx))
    }

    /// Takes the lock `name` only if nobody holds it and nobody waits for it.
    pub fn try_acquire(self: &Arc<Self>, name: &str, tag: T) -> Option<Ticket<T>> {
        // A lock claim has no limit to check: it never fails.
        self.try_claim(Claim::Lock, name, tag).ok().flatten()
    }

    /// Takes `claim` of `name` only if the grant rule gives it now and nobody waits.
    ///
    /// # Errors
    /// As [`claim`](Self::claim), for limits.
    pub fn try_claim(
        self: &Arc<Self>,
        claim: Claim,
        name: &str,
        tag: T,
    ) -> Result<Option<Ticket<T>>, LockError> {
        if let Claim::Permit { limit } = claim {
            validate_limit(name, limit)?;
        }
        let mut state = self.state.lock();
        let ticket = state.new_ticket();
        let (queue, last_token, hook) = state.queue(claim.family(), name);
        queue.check_limit(claim)?;
        // An empty queue admits every claim, so a refusal never leaves a new name behind.
        if !queue.admits_now(claim) {
            return Ok(None);
        }
        let (shared, token) = take(queue, ticket, claim, tag, last_token, hook);
        Ok(Some(self.ticket(claim, shared, ticket, token)))
    }

    /// Removes every holder and waiter whose tag matches, in every family, as a session
    /// ending does.
    ///
    /// `on_evicted` sees each removed holder's tag before what it held passes to the next
    /// waiters, so a loss can be signalled before anyone else owns it. Matching waiters are
    /// failed with `error()`.
    pub fn evict_where(
        &self,
        matches: impl Fn(&T) -> bool,
        mut on_evicted: impl FnMut(&str, &T),
        error: impl Fn() -> LockError,
    ) {
        let mut state = self.state.lock();
        for family in [Family::Lock, Family::RwLock, Family::Semaphore] {
            let names: Vec<Arc<str>> = state
                .names(family)
                .values()
                .filter(|q| q.entries.iter().any(|e| matches(&e.tag)))
                .map(|q| Arc::clone(&q.name))
                .collect();
            for name in names {
                state.change(family, &name, |queue| {
                    for entry in queue.extract(|e| matches(&e.tag)) {
                        match entry.state {
                            EntryState::Waiting(wake) => {
                                let _ = wake.send(Err(error()));
                            }
                            EntryState::Granted(_) => on_evicted(&name, &entry.tag),
                        }
                    }
                    true
                });
            }
        }
    }

    /// Removes the current holder of the lock `name` (as an operator deleting the hold would)
    /// and passes the lock on; `on_evicted` sees the removed holder's tag before the next
    /// waiter owns the lock. Returns false when nobody held `name`.
    pub fn evict_holder(&self, name: &str, on_evicted: impl FnMut(&T)) -> bool {
        self.evict_holders(Family::Lock, name, on_evicted) > 0
    }

    /// Removes every current holder of `name` in `family` (the writer, or all readers, or all
    /// permit holders) and grants the next waiters; `on_evicted` sees each removed holder's
    /// tag first. Returns how many were removed.
    pub fn evict_holders(
        &self,
        family: Family,
        name: &str,
        mut on_evicted: impl FnMut(&T),
    ) -> usize {
        let mut evicted = 0;
        self.state.lock().change(family, name, |queue| {
            let granted = queue.granted;
            for entry in queue.entries.drain(..granted) {
                on_evicted(&entry.tag);
                evicted += 1;
            }
            queue.granted = 0;
            evicted > 0
        });
        evicted
    }

    /// The tag of the current holder of the lock `name`.
    pub fn holder(&self, name: &str) -> Option<T> {
        self.with_holder(name, |holder| holder.map(|(tag, _)| tag.clone()))
    }

    /// Runs `read` on the current holder of the lock `name` (its tag and token), with the
    /// table locked: no holder change can come between what `read` sees and what it does.
    /// `read` must not call back into the table (that would deadlock).
    pub fn with_holder<R>(
        &self,
        name: &str,
        read: impl FnOnce(Option<(&T, FencingToken)>) -> R,
    ) -> R {
        let state = self.state.lock();
        read(state.locks.get(name).and_then(NameQueue::front_holder))
    }

    /// How many entries the lock `name` has: its holder (if any) plus its waiters.
    pub fn queue_len(&self, name: &str) -> usize {
        self.queue_len_of(Family::Lock, name)
    }

    /// How many entries `name` has in `family`: holders plus waiters.
    pub fn queue_len_of(&self, family: Family, name: &str) -> usize {
        let state = self.state.lock();
        state.names(family).get(name).map_or(0, |q| q.entries.len())
    }

    /// How many names, over all families, have a holder or a waiter.
    pub fn active_names(&self) -> usize {
        let state = self.state.lock();
        [Family::Lock, Family::RwLock, Family::Semaphore]
            .into_iter()
            .map(|family| {
                state
                    .names(family)
                    .values()
                    .filter(|q| !q.is_idle())
                    .count()
            })
            .sum()
    }

    /// A copy of the queues of `family` whose names `selects` picks and that have a holder
    /// or a waiter: by name, each queue oldest entry first, holders before waiters (for
    /// operators' views; nothing is changed).
    pub fn snapshot(
        &self,
        family: Family,
        selects: impl Fn(&str) -> bool,
    ) -> Vec<(String, Vec<TableEntry<T>>)> {
        let state = self.state.lock();
        let mut queues: Vec<_> = state
            .names(family)
            .values()
            .filter(|q| !q.is_idle() && selects(&q.name))
            .map(|q| {
                let entries = q
                    .entries
                    .iter()
                    .map(|e| TableEntry {
                        claim: e.claim,
                        token: match e.state {
                            EntryState::Granted(token) => Some(token),
                            EntryState::Waiting(_) => None,
                        },
                        tag: e.tag.clone(),
                    })
                    .collect();
                (q.name.to_string(), entries)
            })
            .collect();
        drop(state);
        queues.sort_by(|a, b| a.0.cmp(&b.0));
        queues
    }

    fn ticket(
        self: &Arc<Self>,
        claim: Claim,
        name: Arc<str>,
        ticket: u64,
        token: FencingToken,
    ) -> Ticket<T> {
        Ticket {
            table: Arc::clone(self),
            claim,
            name,
            ticket,
            token,
            released: false,
        }
    }

    /// Releases `ticket` if it still holds `name`; true when it did.
    #[inline]
    fn release(&self, family: Family, name: &str, ticket: u64) -> bool {
        self.state
            .lock()
            .change(family, name, |queue| queue.release(ticket))
    }

    /// Undoes an abandoned `claim`: leaves the queue, or releases what was handed over.
    fn withdraw(&self, family: Family, name: &str, ticket: u64) {
        self.state
            .lock()
            .change(family, name, |queue| queue.remove(ticket).is_some());
    }
}

/// One entry of a queue in a [`LockTable::snapshot`].
#[derive(Clone, Debug)]
pub struct TableEntry<T> {
    /// What the entry asks for.
    pub claim: Claim,
    /// The fencing token of a holder; `None` for a waiter.
    pub token: Option<FencingToken>,
    /// The backend's tag.
    pub tag: T,
}

enum Enqueued<T: Clone + Send + 'static> {
    Granted(Ticket<T>),
    Waiting(u64, tokio::sync::oneshot::Receiver<Woken>),
}

/// Grants a new entry at once and tells the hook of a new lock holder.
#[inline]
fn take<T>(
    queue: &mut NameQueue<T>,
    ticket: u64,
    claim: Claim,
    tag: T,
    last_token: &mut u64,
    hook: Option<&HolderHook<T>>,
) -> (Arc<str>, FencingToken) {
    let first = queue.granted == 0;
    let granted = queue.push_granted(ticket, claim, tag, last_token);
    if let (Some(hook), true) = (hook, first) {
        hook(&queue.name, queue.front_holder());
    }
    granted
}

impl<T> TableState<T> {
    fn names(&self, family: Family) -> &Names<T> {
        match family {
            Family::Lock => &self.locks,
            Family::RwLock => &self.rwlocks,
            Family::Semaphore => &self.semaphores,
        }
    }

    fn names_mut(&mut self, family: Family) -> &mut Names<T> {
        match family {
            Family::Lock => &mut self.locks,
            Family::RwLock => &mut self.rwlocks,
            Family::Semaphore => &mut self.semaphores,
        }
    }

    /// The queue of `name` in `family` (created empty if nobody uses it), the token counter
    /// and the holder hook (for lock names only), so that the queue can be granted to.
    #[inline]
    fn queue(
        &mut self,
        family: Family,
        name: &str,
    ) -> (&mut NameQueue<T>, &mut u64, Option<&HolderHook<T>>) {
        let names = match family {
            Family::Lock => &mut self.locks,
            Family::RwLock => &mut self.rwlocks,
            Family::Semaphore => &mut self.semaphores,
        };
        let queue = names
            .entry_ref(name)
            .or_insert_with(|| NameQueue::new(name));
        let hook = match family {
            Family::Lock => self.on_holder_change.as_ref(),
            Family::RwLock | Family::Semaphore => None,
        };
        (queue, &mut self.last_token, hook)
    }

    fn new_ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// Applies `change` to the queue of `name` in `family` (one lookup) and, if it reports a
    /// change, grants waiters as [`NameQueue::hand_over`] does. Returns what `change`
    /// returned; false for a name nobody uses.
    #[inline]
    fn change(
        &mut self,
        family: Family,
        name: &str,
        change: impl FnOnce(&mut NameQueue<T>) -> bool,
    ) -> bool {
        let TableState {
            locks,
            rwlocks,
            semaphores,
            idle,
            last_token,
            on_holder_change,
            ..
        } = self;
        let (names, hook) = match family {
            Family::Lock => (locks, on_holder_change.as_ref()),
            Family::RwLock => (rwlocks, None),
            Family::Semaphore => (semaphores, None),
        };
        let Some(queue) = names.get_mut(name) else {
            return false;
        };
        let before = queue.front_holder_ticket();
        if !change(queue) {
            return false;
        }
        let freed = queue.hand_over(last_token, idle, family);
        if let Some(hook) = hook {
            if queue.front_holder_ticket() != before {
                hook(name, queue.front_holder());
            }
        }
        if freed && idle.len() > IDLE_KEPT {
            self.trim_idle();
        }
        true
    }

    /// Forgets the oldest idle names beyond [`IDLE_KEPT`], so names nobody uses cost at most
    /// a bounded cache.
    fn trim_idle(&mut self) {
        while self.idle.len() > IDLE_KEPT {
            let Some((family, oldest)) = self.idle.pop_front() else {
                break;
            };
            let names = self.names_mut(family);
            if let Some(queue) = names.get_mut(&*oldest) {
                queue.listed_idle = false;
                if queue.is_idle() {
                    names.remove(&*oldest);
                }
            }
        }
    }
}

struct Withdraw<'a, T: Clone + Send + 'static> {
    table: &'a LockTable<T>,
    family: Family,
    name: &'a str,
    ticket: u64,
    armed: bool,
}

impl<T: Clone + Send + 'static> Drop for Withdraw<'_, T> {
    fn drop(&mut self) {
        if self.armed {
            self.table.withdraw(self.family, self.name, self.ticket);
        }
    }
}

/// One granted entry of a [`LockTable`] queue; released when dropped.
pub struct Ticket<T: Clone + Send + 'static> {
    table: Arc<LockTable<T>>,
    claim: Claim,
    name: Arc<str>,
    ticket: u64,
    token: FencingToken,
    released: bool,
}

impl<T: Clone + Send + 'static> Ticket<T> {
    /// The name this ticket holds.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name as the table shares it (no copy).
    pub fn shared_name(&self) -> &Arc<str> {
        &self.name
    }

    /// What this ticket holds: a lock, a read, a write or a permit.
    pub fn claim(&self) -> Claim {
        self.claim
    }

    /// The table's fencing token for this hold.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// True while this ticket still holds (it was not evicted).
    pub fn is_held(&self) -> bool {
        let state = self.table.state.lock();
        state
            .names(self.claim.family())
            .get(&*self.name)
            .is_some_and(|q| q.holds(self.ticket))
    }

    /// Releases the hold; false when the ticket had already been evicted.
    pub fn release(mut self) -> bool {
        self.release_in_place()
    }

    /// Releases the hold now, leaving nothing for drop to do; false when the ticket had
    /// already been evicted or released.
    pub fn release_in_place(&mut self) -> bool {
        if std::mem::replace(&mut self.released, true) {
            return false;
        }
        self.table
            .release(self.claim.family(), &self.name, self.ticket)
    }
}

impl<T: Clone + Send + 'static> Drop for Ticket<T> {
    fn drop(&mut self) {
        if !self.released {
            self.table
                .release(self.claim.family(), &self.name, self.ticket);
        }
    }
}

/// Takes the table's lock for a moment: not for use inside a [`HolderHook`].
impl<T: Clone + Send + 'static> fmt::Debug for LockTable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockTable")
            .field("active_names", &self.active_names())
            .finish_non_exhaustive()
    }
}

impl<T: Clone + Send + 'static> fmt::Debug for Ticket<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("claim", &self.claim)
            .field("name", &self.name)
            .field("token", &self.token)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn fifo_handoff_and_tokens() {
        let table = LockTable::<u32>::new();
        let first = table.acquire("a", 0).await.unwrap();
        let mut waiters = Vec::new();
        for i in 1..=3 {
            let shared = Arc::clone(&table);
            waiters.push(tokio::spawn(async move {
                let t = shared.acquire("a", i).await.unwrap();
                let token = t.token();
                drop(t);
                (i, token)
            }));
            while table.queue_len("a") < (i as usize) + 1 {
                tokio::task::yield_now().await;
            }
        }
        let first_token = first.token();
        assert!(first.release());
        let mut last = first_token;
        for (n, w) in waiters.into_iter().enumerate() {
            let (i, token) = w.await.unwrap();
            assert_eq!(i as usize, n + 1);
            assert!(token > last);
            last = token;
        }
        assert_eq!(table.active_names(), 0);
    }

    #[tokio::test]
    async fn dropped_waiter_is_skipped() {
        let table = LockTable::<u32>::new();
        let held = table.acquire("a", 0).await.unwrap();
        let gone = {
            let table = Arc::clone(&table);
            tokio::spawn(async move { table.acquire("a", 1).await.map(drop) })
        };
        while table.queue_len("a") < 2 {
            tokio::task::yield_now().await;
        }
        let next = {
            let table = Arc::clone(&table);
            tokio::spawn(async move { table.acquire("a", 2).await.map(|t| t.token()) })
        };
        while table.queue_len("a") < 3 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        assert_eq!(table.queue_len("a"), 2);
        drop(held);
        let token = tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(token.get() >= 2);
        assert_eq!(table.active_names(), 0);
    }

    #[tokio::test]
    async fn handoff_to_dropped_receiver_passes_on() {
        let table = LockTable::<u32>::new();
        let held = table.acquire("a", 0).await.unwrap();
        // A waiter future that is polled once (queued) and then dropped after the handoff
        // reached it but before it ran again.
        let mut fut = Box::pin(table.acquire("a", 1));
        assert!(futures_poll_once(fut.as_mut()).is_none());
        let third = {
            let table = Arc::clone(&table);
            tokio::spawn(async move { table.acquire("a", 2).await.map(|t| t.token()) })
        };
        while table.queue_len("a") < 3 {
            tokio::task::yield_now().await;
        }
        drop(held); // hands over to the polled-but-idle future
        assert_eq!(table.holder("a"), Some(1));
        drop(fut); // which passes it on
        let token = third.await.unwrap().unwrap();
        assert!(token.get() >= 3);
    }

    #[tokio::test]
    async fn evict_fails_waiters_and_frees_holds() {
        let table = LockTable::<u32>::new();
        let a = table.acquire("a", 7).await.unwrap();
        let _b = table.acquire("b", 1).await.unwrap();
        let waiter = {
            let table = Arc::clone(&table);
            tokio::spawn(async move { table.acquire("b", 7).await.map(drop) })
        };
        while table.queue_len("b") < 2 {
            tokio::task::yield_now().await;
        }
        let mut evicted = Vec::new();
        table.evict_where(
            |tag| *tag == 7,
            |name, _| evicted.push(name.to_owned()),
            || LockError::config("gone"),
        );
        assert_eq!(evicted, vec!["a".to_owned()]);
        assert!(waiter.await.unwrap().is_err());
        assert!(!a.is_held());
        assert!(!a.release());
        assert!(table.try_acquire("a", 3).is_some());
    }

    #[tokio::test]
    async fn idle_names_are_a_bounded_cache() {
        let table = LockTable::<u32>::new();
        for i in 0..1_000 {
            let name = format!("n{i}");
            let ticket = table.acquire(&name, 0).await.unwrap();
            assert_eq!(table.active_names(), 1);
            drop(ticket);
            assert_eq!(table.active_names(), 0);
        }
        let (kept, listed) = {
            let state = table.state.lock();
            (state.locks.len(), state.idle.len())
        };
        assert!(kept <= IDLE_KEPT, "{kept} names kept");
        assert!(listed <= IDLE_KEPT);
        // A kept idle name works like a new one, with a fresh, greater token.
        let again = table.acquire("n999", 0).await.unwrap();
        assert!(again.token().get() > 1_000);
        assert!(table.try_acquire("n999", 1).is_none());
    }

    #[tokio::test]
    async fn release_in_place_releases_once() {
        let table = LockTable::<u32>::new();
        let mut ticket = table.acquire("a", 0).await.unwrap();
        assert!(ticket.release_in_place());
        assert!(!ticket.release_in_place());
        let other = table.try_acquire("a", 1).unwrap();
        drop(ticket); // must not release `other`
        assert!(other.is_held());
    }

    /// The hook sees every holder change, in order, with the new holder's token.
    #[tokio::test]
    async fn the_hook_sees_every_holder_change() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let table = {
            let seen = Arc::clone(&seen);
            LockTable::<u32>::with_holder_hook(move |name, holder| {
                seen.lock().push((
                    name.to_owned(),
                    holder.map(|(tag, token)| (*tag, token.get())),
                ));
            })
        };
        let first = table.acquire("a", 1).await.unwrap();
        let waiter = {
            let table = Arc::clone(&table);
            tokio::spawn(async move { table.acquire("a", 2).await })
        };
        while table.queue_len("a") < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(table.with_holder("a", |h| h.map(|(tag, _)| *tag)), Some(1));
        drop(first);
        let second = waiter.await.unwrap().unwrap();
        assert!(table.evict_holder("a", |_| {}));
        assert!(!second.is_held());
        let third = table.try_acquire("a", 3).unwrap();
        table.evict_where(|tag| *tag == 3, |_, _| {}, || LockError::config("gone"));
        assert!(!third.is_held());
        let a = |holder: Option<(u32, u64)>| ("a".to_owned(), holder);
        assert_eq!(
            *seen.lock(),
            vec![
                a(Some((1, 1))),
                a(Some((2, 2))),
                a(None),
                a(Some((3, 3))),
                a(None)
            ]
        );
    }

    /// Readers share, a waiting writer stops later readers, and the writer holds alone.
    #[tokio::test]
    async fn readers_share_and_a_waiting_writer_goes_first() {
        let table = LockTable::<u32>::new();
        let r1 = table.claim(Claim::Read, "rw", 1).await.unwrap();
        let r2 = table.try_claim(Claim::Read, "rw", 2).unwrap().unwrap();
        let mut writer = Box::pin(table.claim(Claim::Write, "rw", 3));
        assert!(futures_poll_once(writer.as_mut()).is_none());
        assert!(table.try_claim(Claim::Read, "rw", 4).unwrap().is_none());
        let mut late_reader = Box::pin(table.claim(Claim::Read, "rw", 5));
        assert!(futures_poll_once(late_reader.as_mut()).is_none());
        assert_eq!(table.queue_len_of(Family::RwLock, "rw"), 4);
        drop(r1);
        assert!(futures_poll_once(writer.as_mut()).is_none());
        drop(r2);
        let w = futures_poll_once(writer.as_mut()).unwrap().unwrap();
        assert!(futures_poll_once(late_reader.as_mut()).is_none());
        let token = w.token();
        drop(w);
        let r = futures_poll_once(late_reader.as_mut()).unwrap().unwrap();
        assert!(r.token() > token);
        // Lock "rw" and semaphore "rw" are other queues.
        assert!(table.try_acquire("rw", 6).is_some());
        assert!(table
            .try_claim(Claim::Permit { limit: 1 }, "rw", 7)
            .unwrap()
            .is_some());
    }

    /// At most `limit` permits, FIFO, one limit per name.
    #[tokio::test]
    async fn permits_respect_the_limit_and_the_order() {
        let table = LockTable::<u32>::new();
        let two = Claim::Permit { limit: 2 };
        let p1 = table.claim(two, "s", 1).await.unwrap();
        let p2 = table.claim(two, "s", 2).await.unwrap();
        let mut third = Box::pin(table.claim(two, "s", 3));
        assert!(futures_poll_once(third.as_mut()).is_none());
        assert!(table.try_claim(two, "s", 4).unwrap().is_none());
        match table.try_claim(Claim::Permit { limit: 3 }, "s", 5) {
            Err(LockError::LimitMismatch {
                limit: 3,
                in_use: 2,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            table.try_claim(Claim::Permit { limit: 0 }, "s", 6),
            Err(LockError::InvalidLimit { .. })
        ));
        assert_eq!(table.queue_len_of(Family::Semaphore, "s"), 3);
        drop(p2);
        let p3 = futures_poll_once(third.as_mut()).unwrap().unwrap();
        assert!(p3.token() > p1.token());
        assert_eq!(table.evict_holders(Family::Semaphore, "s", |_| {}), 2);
        assert!(!p1.is_held() && !p3.is_held());
        assert_eq!(table.active_names(), 0);
    }

    fn futures_poll_once<F: std::future::Future>(fut: std::pin::Pin<&mut F>) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match fut.poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
