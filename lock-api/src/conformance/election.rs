//! The election cases: the specification of [`LeaderElection`], run on every backend with
//! [`election_conformance_tests!`](crate::election_conformance_tests).
//!
//! Each case is a plain `async fn` taking a [`CoordinationFactory`]. Observers are checked
//! with the stream's own rules: items may be coalesced, so a case waits until the expected
//! state shows up, and fails if a token goes backwards on the way.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use super::{joined, joined_cancelled, queue_reaches, stays_blocked, within};
use crate::{
    Coordination, FencingToken, LeaderState, LeaderWatch, Leadership, LockError, LossReason,
};

/// Opens sessions offering every primitive ([`Coordination`]) on the store under test.
#[async_trait]
pub trait CoordinationFactory: Send + Sync {
    /// Opens a new client session on the store (a new lease on etcd); every session of one
    /// factory contends on the same names.
    async fn connect(&self) -> Result<Arc<dyn Coordination>, LockError>;

    /// How many sessions hold or wait for `name` in the store (holder plus queued candidates
    /// and waiters), as the backend records it. Tasks that queue inside one session before
    /// reaching the store need not be counted.
    async fn queue_len(&self, name: &str) -> usize;
}

/// Every election case, by name, for backends that drive the suite themselves.
pub const ELECTION_CASES: &[&str] = &[
    "first_candidate_leads_with_its_value",
    "candidates_lead_in_arrival_order",
    "leader_is_none_until_someone_leads",
    "proclaim_changes_the_value_and_keeps_the_token",
    "proclaim_after_loss_is_lock_lost",
    "resign_hands_over_with_a_greater_token",
    "dropped_leadership_resigns",
    "abandoned_campaign_leaves_no_trace",
    "campaign_and_lock_of_one_session_take_turns",
    "campaigns_of_one_session_take_turns",
    "campaign_fails_when_its_session_closes",
    "closing_the_leaders_session_elects_the_next",
    "observe_reports_leaders_values_and_vacancy",
    "observe_never_goes_back_under_churn",
    "observer_of_a_closed_session_ends_with_an_error",
    "invalid_names_are_rejected_by_election",
];

/// Writes one `#[tokio::test]` per election case, each with a fresh factory from `$factory`
/// (a [`CoordinationFactory`]).
///
/// The invoking crate needs `tokio` with the `macros` and `rt-multi-thread` features.
#[macro_export]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
macro_rules! election_conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@cases $factory;
            first_candidate_leads_with_its_value,
            candidates_lead_in_arrival_order,
            leader_is_none_until_someone_leads,
            proclaim_changes_the_value_and_keeps_the_token,
            proclaim_after_loss_is_lock_lost,
            resign_hands_over_with_a_greater_token,
            dropped_leadership_resigns,
            abandoned_campaign_leaves_no_trace,
            campaign_and_lock_of_one_session_take_turns,
            campaigns_of_one_session_take_turns,
            campaign_fails_when_its_session_closes,
            closing_the_leaders_session_elects_the_next,
            observe_reports_leaders_values_and_vacancy,
            observe_never_goes_back_under_churn,
            observer_of_a_closed_session_ends_with_an_error,
            invalid_names_are_rejected_by_election,
        );
    };
}

type Session = Arc<dyn Coordination>;

async fn session(f: &dyn CoordinationFactory) -> Session {
    match within("connect", f.connect()).await {
        Ok(session) => session,
        Err(err) => panic!("conformance: connect failed: {err}"),
    }
}

async fn campaign(l: &dyn Coordination, name: &str, value: &str) -> Leadership {
    match within("campaign", l.campaign(name, value.as_bytes())).await {
        Ok(leadership) => leadership,
        Err(err) => panic!("conformance: campaign({name:?}) failed: {err}"),
    }
}

fn spawn_campaign(
    l: &Session,
    name: &str,
    value: &str,
) -> JoinHandle<Result<Leadership, LockError>> {
    let (l, name, value) = (Arc::clone(l), name.to_owned(), value.to_owned());
    tokio::spawn(async move { l.campaign(&name, value.as_bytes()).await })
}

async fn elected(handle: JoinHandle<Result<Leadership, LockError>>) -> Leadership {
    match joined(handle).await {
        Ok(leadership) => leadership,
        Err(err) => panic!("conformance: candidate failed: {err}"),
    }
}

async fn resign(leadership: Leadership) {
    let name = leadership.name().to_owned();
    if let Err(err) = within("resign", leadership.resign()).await {
        panic!("conformance: resign({name:?}) failed: {err}");
    }
}

async fn leader(l: &dyn Coordination, name: &str) -> LeaderState {
    match within("leader", l.leader(name)).await {
        Ok(state) => state,
        Err(err) => panic!("conformance: leader({name:?}) failed: {err}"),
    }
}

async fn observe(l: &dyn Coordination, name: &str) -> Observer {
    match within("observe", l.observe(name)).await {
        Ok(watch) => Observer {
            watch,
            newest: None,
        },
        Err(err) => panic!("conformance: observe({name:?}) failed: {err}"),
    }
}

/// Waits until the store records `n` entries (holder plus waiters) for `name`.
async fn queued(f: &dyn CoordinationFactory, name: &str, n: usize) {
    queue_reaches(n, || f.queue_len(name)).await;
}

/// A [`LeaderWatch`] read with its rules checked: no item older than one before it.
struct Observer {
    watch: LeaderWatch,
    /// The greatest fencing token seen so far.
    newest: Option<FencingToken>,
}

impl Observer {
    /// The next item, which must be a state whose token is not older than any before it.
    async fn next(&mut self) -> LeaderState {
        let state = match within("an observed item", self.watch.next()).await {
            Some(Ok(state)) => state,
            Some(Err(err)) => panic!("conformance: the observer failed: {err}"),
            None => panic!("conformance: the observer ended"),
        };
        if let Some(info) = &state {
            let token = info.fencing_token();
            if let Some(newest) = self.newest {
                assert!(
                    token >= newest,
                    "conformance: observed token {token} after {newest}"
                );
            }
            self.newest = Some(token);
        }
        state
    }

    /// Reads items until one equals `expected` (states in between may be skipped).
    async fn until(&mut self, expected: &LeaderState) {
        loop {
            if self.next().await == *expected {
                return;
            }
        }
    }
}

/// The first candidate leads at once, with its value; `leader()` elsewhere agrees.
pub async fn first_candidate_leads_with_its_value(f: &dyn CoordinationFactory) {
    let (a, b) = (session(f).await, session(f).await);
    let leadership = campaign(&*a, "elect/first", "alpha").await;
    assert_eq!(leadership.name(), "elect/first");
    assert!(
        leadership.key().contains("elect/first"),
        "key {:?}",
        leadership.key()
    );
    assert_eq!(leadership.value(), b"alpha");
    assert!(!leadership.is_lost());
    assert_eq!(leadership.lost_reason(), None);
    assert_eq!(leader(&*b, "elect/first").await, Some(leadership.info()));
    resign(leadership).await;
}

/// Candidates of three sessions lead one after the other in the order they campaigned.
pub async fn candidates_lead_in_arrival_order(f: &dyn CoordinationFactory) {
    let first = session(f).await;
    let leadership = campaign(&*first, "elect/fifo", "first").await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut candidates = Vec::new();
    for i in 0..3 {
        let l = session(f).await;
        let order = Arc::clone(&order);
        candidates.push(tokio::spawn(async move {
            let leadership = campaign(&*l, "elect/fifo", &format!("c{i}")).await;
            assert_eq!(leadership.value(), format!("c{i}").as_bytes());
            order.lock().push((i, leadership.fencing_token()));
            resign(leadership).await;
        }));
        queued(f, "elect/fifo", i + 2).await;
    }
    let token = leadership.fencing_token();
    resign(leadership).await;
    for candidate in candidates {
        joined(candidate).await;
    }
    let order = order.lock().clone();
    let sessions: Vec<usize> = order.iter().map(|(i, _)| *i).collect();
    assert_eq!(sessions, vec![0, 1, 2], "leaders out of arrival order");
    let mut last = token;
    for (_, token) in order {
        assert!(token > last, "token {token} after {last}");
        last = token;
    }
}

/// `leader()` is `None` on a name nobody leads, the leadership's info while it stands, and
/// `None` again after it resigned.
pub async fn leader_is_none_until_someone_leads(f: &dyn CoordinationFactory) {
    let (a, b) = (session(f).await, session(f).await);
    assert_eq!(leader(&*b, "elect/fresh").await, None);
    let leadership = campaign(&*a, "elect/fresh", "here").await;
    let info = leadership.info();
    assert_eq!(info.key(), leadership.key());
    assert_eq!(info.value(), b"here");
    assert_eq!(info.fencing_token(), leadership.fencing_token());
    assert_eq!(leader(&*a, "elect/fresh").await, Some(info.clone()));
    assert_eq!(leader(&*b, "elect/fresh").await, Some(info));
    resign(leadership).await;
    assert_eq!(leader(&*b, "elect/fresh").await, None);
}

/// A proclamation changes the value (for the leader, `leader()` and observers) and keeps
/// the key and fencing token.
pub async fn proclaim_changes_the_value_and_keeps_the_token(f: &dyn CoordinationFactory) {
    let (a, b) = (session(f).await, session(f).await);
    let leadership = campaign(&*a, "elect/proclaim", "v1").await;
    let mut observer = observe(&*b, "elect/proclaim").await;
    assert_eq!(observer.next().await, Some(leadership.info()));
    let (key, token) = (leadership.key().to_owned(), leadership.fencing_token());
    for value in ["v2", "v3", ""] {
        if let Err(err) = within("proclaim", leadership.proclaim(value.as_bytes())).await {
            panic!("conformance: proclaim failed: {err}");
        }
        assert_eq!(leadership.value(), value.as_bytes());
        assert_eq!(leadership.fencing_token(), token);
        assert_eq!(leadership.key(), key);
        let expected = Some(leadership.info());
        observer.until(&expected).await;
        assert_eq!(leader(&*b, "elect/proclaim").await, expected);
    }
    resign(leadership).await;
}

/// Once leadership is lost, `proclaim` fails with `LockLost` and changes nothing.
pub async fn proclaim_after_loss_is_lock_lost(f: &dyn CoordinationFactory) {
    let (a, b) = (session(f).await, session(f).await);
    let leadership = campaign(&*a, "elect/lost", "before").await;
    within("close", a.close()).await.ok();
    within("lost()", leadership.lost()).await;
    match within("proclaim", leadership.proclaim(b"after")).await {
        Err(LockError::LockLost { name, .. }) => assert_eq!(name, "elect/lost"),
        other => panic!("conformance: proclaim after loss gave {other:?}"),
    }
    assert_eq!(leadership.value(), b"before");
    assert_eq!(leader(&*b, "elect/lost").await, None);
}

/// Resigning hands leadership to the next candidate, whose token is greater.
pub async fn resign_hands_over_with_a_greater_token(f: &dyn CoordinationFactory) {
    let (a, b) = (session(f).await, session(f).await);
    let first = campaign(&*a, "elect/resign", "a").await;
    let next = spawn_campaign(&b, "elect/resign", "b");
    queued(f, "elect/resign", 2).await;
    let token = first.fencing_token();
    resign(first).await;
    let second = elected(next).await;
    assert!(second.fencing_token() > token);
    assert_eq!(second.value(), b"b");
    assert_eq!(leader(&*a, "elect/resign").await, Some(second.info()));
    resign(second).await;
}

/// Dropping a leadership resigns it: the next candidate leads.
pub async fn dropped_leadership_resigns(f: &dyn CoordinationFactory) {
    let (a, b) = (session(f).await, session(f).await);
    let first = campaign(&*a, "elect/drop", "a").await;
    let next = spawn_campaign(&b, "elect/drop", "b");
    queued(f, "elect/drop", 2).await;
    drop(first);
    let second = elected(next).await;
    assert_eq!(leader(&*a, "elect/drop").await, Some(second.info()));
    resign(second).await;
}

/// A campaign that is dropped or times out leaves the queue: the queue shrinks back to the
/// holder, and candidates behind it are not held up.
pub async fn abandoned_campaign_leaves_no_trace(f: &dyn CoordinationFactory) {
    let name = "elect/abandon";
    let (a, b, c, d) = (
        session(f).await,
        session(f).await,
        session(f).await,
        session(f).await,
    );
    let leadership = campaign(&*a, name, "a").await;
    let timed_out = tokio::time::timeout(Duration::from_millis(100), b.campaign(name, b"b")).await;
    assert!(
        timed_out.is_err(),
        "campaign returned while the name was led"
    );
    queued(f, name, 1).await;
    let middle = spawn_campaign(&c, name, "c");
    queued(f, name, 2).await;
    let last = spawn_campaign(&d, name, "d");
    queued(f, name, 3).await;
    middle.abort();
    assert!(joined_cancelled(middle).await);
    queued(f, name, 2).await;
    resign(leadership).await;
    let next = elected(last).await;
    assert_eq!(next.value(), b"d");
    resign(next).await;
    queued(f, name, 0).await;
    assert_eq!(leader(&*b, name).await, None);
}

/// A lock and a campaign of one name from one session are served one after the other, in
/// either order, never both at once.
pub async fn campaign_and_lock_of_one_session_take_turns(f: &dyn CoordinationFactory) {
    let name = "elect/mixed";
    let l = session(f).await;
    let guard = match within("lock", l.lock(name)).await {
        Ok(guard) => guard,
        Err(err) => panic!("conformance: lock failed: {err}"),
    };
    let candidate = spawn_campaign(&l, name, "after the lock");
    assert!(
        stays_blocked(&candidate).await,
        "a campaign led while its own session held the lock"
    );
    let token = guard.fencing_token();
    if let Err(err) = within("unlock", guard.unlock()).await {
        panic!("conformance: unlock failed: {err}");
    }
    let leadership = elected(candidate).await;
    assert!(leadership.fencing_token() > token);

    let locker = {
        let (l, name) = (Arc::clone(&l), name.to_owned());
        tokio::spawn(async move { l.lock(&name).await })
    };
    assert!(
        stays_blocked(&locker).await,
        "a lock was taken while its own session led"
    );
    let token = leadership.fencing_token();
    resign(leadership).await;
    match joined(locker).await {
        Ok(guard) => {
            assert!(guard.fencing_token() > token);
            if let Err(err) = within("unlock", guard.unlock()).await {
                panic!("conformance: unlock failed: {err}");
            }
        }
        Err(err) => panic!("conformance: lock failed: {err}"),
    }
}

/// Two campaigns of one name from one session lead one after the other.
pub async fn campaigns_of_one_session_take_turns(f: &dyn CoordinationFactory) {
    let name = "elect/twice";
    let l = session(f).await;
    let first = campaign(&*l, name, "one").await;
    let second = spawn_campaign(&l, name, "two");
    assert!(
        stays_blocked(&second).await,
        "two campaigns of one session led at once"
    );
    assert_eq!(leader(&*l, name).await, Some(first.info()));
    let token = first.fencing_token();
    resign(first).await;
    let second = elected(second).await;
    assert!(second.fencing_token() > token);
    assert_eq!(second.value(), b"two");
    resign(second).await;
}

/// A candidate whose session closes fails with `SessionLost` and never leads afterwards.
pub async fn campaign_fails_when_its_session_closes(f: &dyn CoordinationFactory) {
    let name = "elect/closed";
    let (a, b, c) = (session(f).await, session(f).await, session(f).await);
    let leadership = campaign(&*a, name, "a").await;
    let doomed = spawn_campaign(&b, name, "b");
    queued(f, name, 2).await;
    if let Err(err) = within("close", b.close()).await {
        panic!("conformance: close failed: {err}");
    }
    match joined(doomed).await {
        Err(err) => assert!(err.is_session_lost(), "campaign failed with {err}"),
        Ok(_) => panic!("conformance: a candidate of a closed session led"),
    }
    queued(f, name, 1).await;
    let next = spawn_campaign(&c, name, "c");
    queued(f, name, 2).await;
    resign(leadership).await;
    let next = elected(next).await;
    assert_eq!(next.value(), b"c", "the closed session's candidate led");
    match within("campaign", b.campaign(name, b"again")).await {
        Err(err) => assert!(
            err.is_session_lost(),
            "campaign after close failed with {err}"
        ),
        Ok(_) => panic!("conformance: a closed session campaigned"),
    }
    resign(next).await;
}

/// Closing the leader's session fires `lost()` with `Closed`, and the next candidate leads.
pub async fn closing_the_leaders_session_elects_the_next(f: &dyn CoordinationFactory) {
    let name = "elect/leader-closed";
    let (a, b, c) = (session(f).await, session(f).await, session(f).await);
    let first = campaign(&*a, name, "a").await;
    let next = spawn_campaign(&b, name, "b");
    queued(f, name, 2).await;
    if let Err(err) = within("close", a.close()).await {
        panic!("conformance: close failed: {err}");
    }
    assert_eq!(within("lost()", first.lost()).await, LossReason::Closed);
    assert!(first.is_lost());
    let second = elected(next).await;
    assert!(second.fencing_token() > first.fencing_token());
    assert_eq!(leader(&*c, name).await, Some(second.info()));
    resign(second).await;
}

/// An observer yields the state at once, then each new leader, each new value, and `None`
/// when nobody leads; its last item equals `leader()`.
pub async fn observe_reports_leaders_values_and_vacancy(f: &dyn CoordinationFactory) {
    let name = "elect/observe";
    let (a, b, o) = (session(f).await, session(f).await, session(f).await);
    let mut vacant = observe(&*o, name).await;
    assert_eq!(
        vacant.next().await,
        None,
        "first item of a name nobody leads"
    );

    let first = campaign(&*a, name, "a1").await;
    let mut late = observe(&*o, name).await;
    assert_eq!(
        late.next().await,
        Some(first.info()),
        "first item of a led name"
    );
    vacant.until(&Some(first.info())).await;

    if let Err(err) = within("proclaim", first.proclaim(b"a2")).await {
        panic!("conformance: proclaim failed: {err}");
    }
    let proclaimed = Some(first.info());
    let next = spawn_campaign(&b, name, "b1");
    queued(f, name, 2).await;
    for observer in [&mut vacant, &mut late] {
        observer.until(&proclaimed).await;
    }

    resign(first).await;
    let second = elected(next).await;
    for observer in [&mut vacant, &mut late] {
        observer.until(&Some(second.info())).await;
    }
    resign(second).await;
    for observer in [&mut vacant, &mut late] {
        observer.until(&None).await;
    }
    assert_eq!(leader(&*o, name).await, None);
}

/// Under leaders coming and going in three sessions, an observer's tokens never go back and
/// its last item equals `leader()`.
pub async fn observe_never_goes_back_under_churn(f: &dyn CoordinationFactory) {
    let name = "elect/churn";
    let o = session(f).await;
    let mut observer = observe(&*o, name).await;
    let mut tasks = Vec::new();
    for s in 0..3 {
        let l = session(f).await;
        tasks.push(tokio::spawn(async move {
            for round in 0..5 {
                let leadership = campaign(&*l, name, &format!("{s}/{round}")).await;
                if let Err(err) = leadership
                    .proclaim(format!("{s}/{round}!").as_bytes())
                    .await
                {
                    panic!("conformance: proclaim failed: {err}");
                }
                resign(leadership).await;
            }
        }));
    }
    // Read while the others churn; the checks are in `Observer::next`.
    let reading = async {
        loop {
            observer.next().await;
        }
    };
    let churn = async {
        for task in tasks {
            joined(task).await;
        }
    };
    tokio::select! {
        () = churn => {}
        () = reading => {}
    }
    let last = campaign(&*o, name, "last").await;
    observer.until(&Some(last.info())).await;
    assert_eq!(leader(&*o, name).await, Some(last.info()));
    resign(last).await;
}

/// An observer of a session that closes ends with a `SessionLost` error; the closed session
/// can no longer observe or ask for the leader.
pub async fn observer_of_a_closed_session_ends_with_an_error(f: &dyn CoordinationFactory) {
    let name = "elect/observer-closed";
    let (a, o) = (session(f).await, session(f).await);
    let leadership = campaign(&*a, name, "a").await;
    let mut observer = observe(&*o, name).await;
    assert_eq!(observer.next().await, Some(leadership.info()));
    if let Err(err) = within("close", o.close()).await {
        panic!("conformance: close failed: {err}");
    }
    let ended = within("the observer to end", async {
        loop {
            match observer.watch.next().await {
                Some(Ok(_)) => continue,
                Some(Err(err)) => return err,
                None => panic!("conformance: the observer ended without an error"),
            }
        }
    })
    .await;
    assert!(ended.is_session_lost(), "observer ended with {ended}");
    assert!(
        within("the end of the stream", observer.watch.next())
            .await
            .is_none(),
        "the observer goes on after its error"
    );
    match within("observe", o.observe(name)).await {
        Err(err) => assert!(
            err.is_session_lost(),
            "observe after close failed with {err}"
        ),
        Ok(_) => panic!("conformance: a closed session observed"),
    }
    match within("leader", o.leader(name)).await {
        Err(err) => assert!(
            err.is_session_lost(),
            "leader after close failed with {err}"
        ),
        Ok(_) => panic!("conformance: a closed session read the leader"),
    }
    resign(leadership).await;
}

/// Bad names fail with `InvalidName` on `campaign`, `leader` and `observe`.
pub async fn invalid_names_are_rejected_by_election(f: &dyn CoordinationFactory) {
    let l = session(f).await;
    let long = "n".repeat(crate::MAX_NAME_LEN + 1);
    for bad in ["", "nul\0byte", "new\nline", long.as_str()] {
        match within("campaign", l.campaign(bad, b"v")).await {
            Err(LockError::InvalidName { .. }) => {}
            other => panic!("conformance: campaign({bad:?}) gave {other:?}"),
        }
        match within("leader", l.leader(bad)).await {
            Err(LockError::InvalidName { .. }) => {}
            other => panic!("conformance: leader({bad:?}) gave {other:?}"),
        }
        match within("observe", l.observe(bad)).await {
            Err(LockError::InvalidName { .. }) => {}
            other => panic!("conformance: observe({bad:?}) gave {other:?}"),
        }
    }
    let longest = "n".repeat(crate::MAX_NAME_LEN);
    resign(campaign(&*l, &longest, "v").await).await;
}
