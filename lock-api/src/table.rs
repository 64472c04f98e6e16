//! A FIFO table of named in-process locks: the queue bookkeeping every backend needs.
//!
//! The memory backend keeps its whole store in one [`LockTable`]; the etcd backend uses one
//! per session to serialize its own tasks on a name before they touch etcd. Each entry carries
//! a backend-defined tag (the memory backend stores the session and loss signal there).

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::{FencingToken, LockError, LossReason};

/// FIFO locks by name, with the state for a name freed as soon as nobody holds or waits.
///
/// `acquire` is cancel-safe: a dropped waiter leaves the queue, and a handoff that reaches a
/// waiter just as it is dropped passes on to the next one.
pub struct LockTable<T> {
    state: Mutex<TableState<T>>,
}

/// A function the table calls, under its lock, each time the holder of a name changes: with
/// the new holder's tag and token, or `None` when the name falls free.
///
/// It runs with the table locked, so the calls are in the order of the changes; it must not
/// call back into the table (that would deadlock) and should be quick.
pub type HolderHook<T> = Box<dyn Fn(&str, Option<(&T, FencingToken)>) + Send + Sync>;

/// Lock names are short and looked up on every lock and unlock: hashbrown's seeded foldhash,
/// not SipHash, and `entry_ref` so a name is copied only when its queue is created.
type Names<T> = hashbrown::HashMap<String, NameQueue<T>>;

struct TableState<T> {
    names: Names<T>,
    /// Names that went idle, oldest first; at most [`IDLE_KEPT`] stay in `names`.
    idle: VecDeque<Arc<str>>,
    next_ticket: u64,
    last_token: u64,
    on_holder_change: Option<HolderHook<T>>,
}

struct NameQueue<T> {
    /// The name, shared with every ticket and guard of it.
    name: Arc<str>,
    holder: Option<Holder<T>>,
    waiters: VecDeque<Waiter<T>>,
    /// True while the name is in [`TableState::idle`].
    listed_idle: bool,
}

/// How many names nobody holds or waits for the table keeps, so that a lock taken over and
/// over in a loop does not allocate and free its queue each time.
const IDLE_KEPT: usize = 64;

struct Holder<T> {
    ticket: u64,
    tag: T,
    token: FencingToken,
}

struct Waiter<T> {
    ticket: u64,
    tag: T,
    wake: oneshot::Sender<Result<(Arc<str>, FencingToken), LockError>>,
}

impl<T: Clone + Send + 'static> LockTable<T> {
    /// An empty table whose fencing tokens start at 1.
    pub fn new() -> Arc<Self> {
        Self::build(None)
    }

    /// An empty table that calls `on_holder_change` (under its lock, in the order of the
    /// changes) whenever the holder of a name changes; see [`HolderHook`].
    pub fn with_holder_hook(
        on_holder_change: impl Fn(&str, Option<(&T, FencingToken)>) + Send + Sync + 'static,
    ) -> Arc<Self> {
        Self::build(Some(Box::new(on_holder_change)))
    }

    fn build(on_holder_change: Option<HolderHook<T>>) -> Arc<Self> {
        Arc::new(LockTable {
            state: Mutex::new(TableState {
                names: Names::default(),
                idle: VecDeque::new(),
                next_ticket: 0,
                last_token: 0,
                on_holder_change,
            }),
        })
    }

    /// Waits in FIFO order until `name` is ours.
    ///
    /// # Errors
    /// Whatever error [`evict_where`](Self::evict_where) failed this waiter with.
    ///
    /// # Cancel safety
    /// Dropping the future withdraws the waiter, or passes the lock on if it was handed over
    /// in the meantime: nobody is ever left waiting behind an abandoned entry.
    pub async fn acquire(self: &Arc<Self>, name: &str, tag: T) -> Result<Ticket<T>, LockError> {
        let (ticket, wake) = {
            let mut state = self.state.lock();
            let ticket = state.new_ticket();
            let (queue, last_token, hook) = state.queue(name);
            if queue.is_idle() {
                let (shared, token) = queue.take(ticket, tag, last_token, hook);
                return Ok(self.ticket(shared, ticket, token));
            }
            let (tx, rx) = oneshot::channel();
            queue.waiters.push_back(Waiter {
                ticket,
                tag,
                wake: tx,
            });
            (ticket, rx)
        };
        let mut withdraw = Withdraw {
            table: self,
            name,
            ticket,
            armed: true,
        };
        let outcome = wake.await;
        withdraw.armed = false;
        match outcome {
            Ok(Ok((shared, token))) => Ok(self.ticket(shared, ticket, token)),
            Ok(Err(err)) => Err(err),
            // Waiters are only removed after being sent a result; this is defensive.
            Err(_) => Err(LockError::LockLost {
                name: name.to_owned(),
                reason: LossReason::Unknown,
            }),
        }
    }

    /// Takes `name` only if nobody holds it and nobody waits for it.
    pub fn try_acquire(self: &Arc<Self>, name: &str, tag: T) -> Option<Ticket<T>> {
        let mut state = self.state.lock();
        let ticket = state.new_ticket();
        let (queue, last_token, hook) = state.queue(name);
        if !queue.is_idle() {
            return None;
        }
        let (shared, token) = queue.take(ticket, tag, last_token, hook);
        Some(self.ticket(shared, ticket, token))
    }

    /// Removes every holder and waiter whose tag matches, as a session ending does.
    ///
    /// `on_evicted` sees each removed holder's tag before the lock passes to the next waiter,
    /// so a loss can be signalled before anyone else owns the lock. Matching waiters are failed
    /// with `error()`.
    pub fn evict_where(
        &self,
        matches: impl Fn(&T) -> bool,
        mut on_evicted: impl FnMut(&str, &T),
        error: impl Fn() -> LockError,
    ) {
        let mut state = self.state.lock();
        let names: Vec<Arc<str>> = state
            .names
            .iter()
            .filter(|(_, q)| {
                q.holder.as_ref().is_some_and(|h| matches(&h.tag))
                    || q.waiters.iter().any(|w| matches(&w.tag))
            })
            .map(|(_, q)| Arc::clone(&q.name))
            .collect();
        for name in names {
            state.change(&name, |queue| {
                for waiter in extract(&mut queue.waiters, |w| matches(&w.tag)) {
                    let _ = waiter.wake.send(Err(error()));
                }
                if let Some(holder) = queue.holder.take_if(|h| matches(&h.tag)) {
                    on_evicted(&name, &holder.tag);
                }
                true
            });
        }
    }

    /// Removes the current holder of `name` (as an operator deleting the hold would) and
    /// passes the lock on; `on_evicted` sees the removed holder's tag before the next waiter
    /// owns the lock. Returns false when nobody held `name`.
    pub fn evict_holder(&self, name: &str, on_evicted: impl FnOnce(&T)) -> bool {
        self.state
            .lock()
            .change(name, |queue| match queue.holder.take() {
                Some(holder) => {
                    on_evicted(&holder.tag);
                    true
                }
                None => false,
            })
    }

    /// The tag of the current holder of `name`.
    pub fn holder(&self, name: &str) -> Option<T> {
        let state = self.state.lock();
        state
            .names
            .get(name)?
            .holder
            .as_ref()
            .map(|h| h.tag.clone())
    }

    /// Runs `read` on the current holder of `name` (its tag and token), with the table locked:
    /// no holder change can come between what `read` sees and what it does. `read` must not
    /// call back into the table (that would deadlock).
    pub fn with_holder<R>(
        &self,
        name: &str,
        read: impl FnOnce(Option<(&T, FencingToken)>) -> R,
    ) -> R {
        let state = self.state.lock();
        let holder = state.names.get(name).and_then(|q| q.holder.as_ref());
        read(holder.map(|h| (&h.tag, h.token)))
    }

    /// How many entries `name` has: its holder (if any) plus its waiters.
    pub fn queue_len(&self, name: &str) -> usize {
        let state = self.state.lock();
        state
            .names
            .get(name)
            .map_or(0, |q| usize::from(q.holder.is_some()) + q.waiters.len())
    }

    /// How many names have a holder or a waiter.
    pub fn active_names(&self) -> usize {
        let state = self.state.lock();
        state.names.values().filter(|q| !q.is_idle()).count()
    }

    fn ticket(self: &Arc<Self>, name: Arc<str>, ticket: u64, token: FencingToken) -> Ticket<T> {
        Ticket {
            table: Arc::clone(self),
            name,
            ticket,
            token,
            released: false,
        }
    }

    /// Releases `ticket` if it still holds `name`; true when it did.
    fn release(&self, name: &str, ticket: u64) -> bool {
        self.state.lock().change(name, |queue| {
            queue.holder.take_if(|h| h.ticket == ticket).is_some()
        })
    }

    /// Undoes an abandoned `acquire`: leaves the queue, or releases what was handed over.
    fn withdraw(&self, name: &str, ticket: u64) {
        self.state.lock().change(name, |queue| {
            let before = queue.waiters.len();
            queue.waiters.retain(|w| w.ticket != ticket);
            if queue.waiters.len() == before {
                queue.holder.take_if(|h| h.ticket == ticket);
            }
            true
        });
    }
}

impl<T> TableState<T> {
    /// The queue of `name` (created empty if nobody uses it), the token counter and the holder
    /// hook, so that the queue can be handed a new holder.
    fn queue(&mut self, name: &str) -> (&mut NameQueue<T>, &mut u64, &Option<HolderHook<T>>) {
        let queue = self
            .names
            .entry_ref(name)
            .or_insert_with(|| NameQueue::new(name));
        (queue, &mut self.last_token, &self.on_holder_change)
    }

    fn new_ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// Applies `change` to the queue of `name` (one lookup) and, if it reports a change, passes
    /// the lock on as [`NameQueue::hand_over`] does. Returns what `change` returned;
    /// false for a name nobody uses.
    fn change(&mut self, name: &str, change: impl FnOnce(&mut NameQueue<T>) -> bool) -> bool {
        let TableState {
            names,
            idle,
            last_token,
            on_holder_change,
            ..
        } = self;
        let Some(queue) = names.get_mut(name) else {
            return false;
        };
        let before = queue.holder.as_ref().map(|h| h.ticket);
        if !change(queue) {
            return false;
        }
        let freed = queue.hand_over(last_token, idle);
        if let Some(hook) = on_holder_change {
            if queue.holder.as_ref().map(|h| h.ticket) != before {
                hook(name, queue.holder.as_ref().map(|h| (&h.tag, h.token)));
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
            let Some(oldest) = self.idle.pop_front() else {
                break;
            };
            if let Some(queue) = self.names.get_mut(&*oldest) {
                queue.listed_idle = false;
                if queue.is_idle() {
                    self.names.remove(&*oldest);
                }
            }
        }
    }
}

impl<T> NameQueue<T> {
    fn new(name: &str) -> Self {
        NameQueue {
            name: Arc::from(name),
            holder: None,
            waiters: VecDeque::new(),
            listed_idle: false,
        }
    }

    fn is_idle(&self) -> bool {
        self.holder.is_none() && self.waiters.is_empty()
    }

    /// Makes `ticket` the holder; returns the shared name and the hold's fencing token.
    /// Tells `hook` of the new holder.
    fn take(
        &mut self,
        ticket: u64,
        tag: T,
        last_token: &mut u64,
        hook: &Option<HolderHook<T>>,
    ) -> (Arc<str>, FencingToken) {
        let token = next_token(last_token);
        if let Some(hook) = hook {
            hook(&self.name, Some((&tag, token)));
        }
        self.holder = Some(Holder { ticket, tag, token });
        (Arc::clone(&self.name), token)
    }

    /// If free, gives the lock to the first waiter still listening; true when it stays free
    /// (the name is then listed in `idle`).
    fn hand_over(&mut self, last_token: &mut u64, idle: &mut VecDeque<Arc<str>>) -> bool {
        if self.holder.is_some() {
            return false;
        }
        while let Some(waiter) = self.waiters.pop_front() {
            let token = next_token(last_token);
            // A waiter whose future was dropped no longer listens: skip it.
            if waiter
                .wake
                .send(Ok((Arc::clone(&self.name), token)))
                .is_ok()
            {
                self.holder = Some(Holder {
                    ticket: waiter.ticket,
                    tag: waiter.tag,
                    token,
                });
                return false;
            }
        }
        if !self.listed_idle {
            self.listed_idle = true;
            idle.push_back(Arc::clone(&self.name));
        }
        true
    }
}

fn next_token(last_token: &mut u64) -> FencingToken {
    *last_token += 1;
    FencingToken::new(*last_token)
}

fn extract<W>(queue: &mut VecDeque<W>, matches: impl Fn(&W) -> bool) -> Vec<W> {
    let mut taken = Vec::new();
    let mut kept = VecDeque::with_capacity(queue.len());
    for item in queue.drain(..) {
        if matches(&item) {
            taken.push(item);
        } else {
            kept.push_back(item);
        }
    }
    *queue = kept;
    taken
}

struct Withdraw<'a, T: Clone + Send + 'static> {
    table: &'a LockTable<T>,
    name: &'a str,
    ticket: u64,
    armed: bool,
}

impl<T: Clone + Send + 'static> Drop for Withdraw<'_, T> {
    fn drop(&mut self) {
        if self.armed {
            self.table.withdraw(self.name, self.ticket);
        }
    }
}

/// Ownership of one name in a [`LockTable`]; released when dropped.
pub struct Ticket<T: Clone + Send + 'static> {
    table: Arc<LockTable<T>>,
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

    /// The table's fencing token for this hold.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// True while this ticket is still the holder (it was not evicted).
    pub fn is_held(&self) -> bool {
        let state = self.table.state.lock();
        state
            .names
            .get(&*self.name)
            .and_then(|q| q.holder.as_ref())
            .is_some_and(|h| h.ticket == self.ticket)
    }

    /// Releases the name; false when the ticket had already been evicted.
    pub fn release(mut self) -> bool {
        self.release_in_place()
    }

    /// Releases the name now, leaving nothing for drop to do; false when the ticket had
    /// already been evicted or released.
    pub fn release_in_place(&mut self) -> bool {
        if std::mem::replace(&mut self.released, true) {
            return false;
        }
        self.table.release(&self.name, self.ticket)
    }
}

impl<T: Clone + Send + 'static> Drop for Ticket<T> {
    fn drop(&mut self) {
        if !self.released {
            self.table.release(&self.name, self.ticket);
        }
    }
}

impl<T: Clone + Send + 'static> fmt::Debug for Ticket<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
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
            (state.names.len(), state.idle.len())
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

    fn futures_poll_once<F: std::future::Future>(fut: std::pin::Pin<&mut F>) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match fut.poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
