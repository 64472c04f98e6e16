//! Reads the chaos logs and judges the run: [`check`] runs one function per check over the
//! holds that [`holds`] reconstructs from every process's log. Mutexes, leaderships, RW locks
//! and semaphore permits are all holds; their [`Mode`]s say which may be live together and
//! which tokens must be ordered, every other rule is the same for all of them.

use std::collections::HashMap;

use crate::log::Event;

#[cfg(test)]
mod tests;

/// What the checker found.
#[derive(Default, Debug)]
pub struct Verdict {
    pub ops: usize,
    pub faults: HashMap<String, usize>,
    pub overlaps: Vec<String>,
    pub stale_accepted: usize,
    pub writes_rejected: usize,
    pub unfenced_after_end: usize,
    /// Each with its kind first: `no progress`, `long wait`, `after kill`, `after cancel`.
    pub stuck: Vec<String>,
    pub token_regressions: Vec<String>,
    pub holds_lost: Vec<String>,
    /// Every hold loss with its reason, the unexcused ones included (context only).
    pub losses: usize,
    pub cancelled: HashMap<String, usize>,
    /// Client errors by message (ids and numbers masked).
    pub errors: HashMap<String, usize>,
    /// Live holds by [`Mode::kind`] (context only).
    pub holds_by_kind: HashMap<String, usize>,
}

impl Verdict {
    /// True when every failure count is 0.
    pub fn clean(&self) -> bool {
        self.overlaps.is_empty()
            && self.stale_accepted == 0
            && self.stuck.is_empty()
            && self.token_regressions.is_empty()
            && self.holds_lost.is_empty()
    }
}

/// Member faults: each stops one member until its `restart_member` or `cont_member`.
const MEMBER_FAULTS: [&str; 5] = [
    "kill_member",
    "kill_leader",
    "stop_member",
    "stop_leader",
    "stall_follower",
];
/// Member faults that stop the leader: an election, during which no keepalive is answered.
const LEADER_FAULTS: [&str; 2] = ["kill_leader", "stop_leader"];
/// A client that neither acquires nor finds a lock busy for this long is stuck.
const IDLE_LIMIT_US: u64 = 20_000_000;
/// The `attempt` details of calls that wait (the others are `try_` calls).
const WAITING_CALLS: [&str; 6] = ["lock", "campaign", "relock", "read", "write", "acquire"];

/// What a hold is, from its `acquired` event: which holds of its name may be live beside it,
/// and which earlier tokens its own must exceed (lock-api's `shared.rs` documents the promises).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A mutex or a leadership: alone, its token above every earlier hold's.
    Exclusive,
    /// An RW reader: beside other readers, its token above every writer's released before it
    /// asked.
    Read,
    /// An RW writer: alone, its token above every hold's released before it asked.
    Write,
    /// A semaphore permit, with the name's limit: beside fewer than `limit` other permits, its
    /// token above every permit's released before it asked.
    Permit(u64),
}

impl Mode {
    fn of(acquired: &Event) -> Mode {
        match acquired.detail.as_str() {
            "read" => Mode::Read,
            "write" => Mode::Write,
            "permit" => Mode::Permit(acquired.limit.max(1)),
            _ => Mode::Exclusive,
        }
    }

    /// The mode's name in the report.
    pub fn kind(self) -> &'static str {
        match self {
            Mode::Exclusive => "mutex",
            Mode::Read => "read",
            Mode::Write => "write",
            Mode::Permit(_) => "permit",
        }
    }

    /// True if a hold of this mode may be live while one of `other` is (permits up to their
    /// limit: [`overlaps`] counts them).
    fn shares_with(self, other: Mode) -> bool {
        matches!(
            (self, other),
            (Mode::Read, Mode::Read) | (Mode::Permit(_), Mode::Permit(_))
        )
    }

    /// True if a hold of this mode promises a token above that of a hold of `earlier` mode
    /// released before it asked.
    fn fenced_after(self, earlier: Mode) -> bool {
        match self {
            Mode::Exclusive | Mode::Write => true,
            Mode::Read => earlier == Mode::Write,
            Mode::Permit(_) => matches!(earlier, Mode::Permit(_)),
        }
    }
}

/// How a hold ended, as its client logged it.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// Not logged: the process was killed or the run ended first.
    Open,
    /// `unlock` returned `Ok`.
    Released,
    /// The guard was dropped: the release runs in the background.
    Dropped,
    /// `unlock`'s future was dropped at this time; the release runs in the background.
    Cancelled(u64),
    /// `unlock` failed with an error other than a loss at this time.
    Failed(u64),
    /// Reported lost (while held or by `unlock`).
    Lost,
}

/// One hold: from `acquired` to the end of its live interval.
#[derive(Debug)]
pub struct Hold {
    pub who: String,
    pub name: String,
    pub mode: Mode,
    pub lease: String,
    pub token: u64,
    /// When the attempt that took it began (faults from then on can touch it).
    pub attempt: u64,
    pub start: u64,
    /// The end of the client's live interval: the first of its `releasing` or `lost`, the kill
    /// of its process, the deletion of its key, and a pause of its process (plus 2/3 of the
    /// TTL: the lease's last keepalive may be up to TTL/3 old when the pause starts).
    pub end: u64,
    pub ending: Ending,
    /// When the client began to release it (`releasing`).
    pub releasing: Option<u64>,
    /// The `lost` event, if the client reported one.
    pub lost: Option<Event>,
}

impl Hold {
    /// False for a hold whose interval was cut before its `acquired` was logged (its client
    /// was paused or its key deleted in between): it was never a live owner here.
    fn was_live(&self) -> bool {
        self.end > self.start
    }
}

fn faults<'a>(events: &'a [Event]) -> impl Iterator<Item = &'a Event> + 'a {
    events.iter().filter(|e| e.event == "fault")
}

fn fault<'a>(events: &'a [Event], kind: &'a str) -> impl Iterator<Item = &'a Event> + 'a {
    faults(events).filter(move |e| e.detail == kind)
}

/// Judges `events` (every log, in time order) of a run that ended at `end_us`, with sessions
/// of `ttl_us`.
pub fn check(events: &[Event], ttl_us: u64, end_us: u64) -> Verdict {
    let holds = holds(events, ttl_us, end_us);
    let (stale_accepted, writes_rejected) = fenced_writes(events);
    let stuck = [
        ("no progress", idle_clients(events, end_us)),
        ("long wait", long_waits(events)),
        (
            "after kill",
            stuck_after_kill(events, &holds, ttl_us, end_us),
        ),
        (
            "after cancel",
            stuck_after_cancel(events, &holds, ttl_us, end_us),
        ),
    ]
    .into_iter()
    .flat_map(|(kind, list)| list.into_iter().map(move |line| format!("{kind}: {line}")))
    .collect();
    Verdict {
        ops: holds.len(),
        faults: count_faults(events),
        overlaps: overlaps(&holds),
        stale_accepted,
        writes_rejected,
        unfenced_after_end: unfenced_after_end(events, &holds),
        stuck,
        token_regressions: token_regressions(&holds),
        holds_lost: holds_lost(events, &holds, ttl_us, end_us),
        losses: holds.iter().filter(|h| h.lost.is_some()).count(),
        cancelled: count_by(events, "cancelled", |e| e.detail.clone()),
        errors: count_by(events, "error", |e| mask_numbers(&e.detail)),
        holds_by_kind: holds_by_kind(&holds),
    }
}

/// Faults by kind; recoveries are part of their fault.
fn count_faults(events: &[Event]) -> HashMap<String, usize> {
    let mut counts = count_by(events, "fault", |e| e.detail.clone());
    for recovery in ["cont_member", "cont_client", "restart_member"] {
        counts.remove(recovery);
    }
    counts
}

fn count_by(
    events: &[Event],
    kind: &str,
    key: impl Fn(&Event) -> String,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for e in events.iter().filter(|e| e.event == kind) {
        *counts.entry(key(e)).or_default() += 1;
    }
    counts
}

/// `lease 7587ab` and `after 1.5s` become `lease #` and `after #.#s`: one entry per kind.
fn mask_numbers(message: &str) -> String {
    let mut masked = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, masked: &mut String| {
        let hex_id =
            word.chars().any(|c| c.is_ascii_digit()) && word.chars().all(|c| c.is_ascii_hexdigit());
        if hex_id {
            masked.push('#');
        } else {
            let mut digits = false;
            for c in word.chars() {
                match (c.is_ascii_digit(), digits) {
                    (true, true) => {}
                    (true, false) => masked.push('#'),
                    (false, _) => masked.push(c),
                }
                digits = c.is_ascii_digit();
            }
        }
        word.clear();
    };
    for c in message.chars() {
        if c.is_ascii_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut masked);
            masked.push(c);
        }
    }
    flush(&mut word, &mut masked);
    masked.chars().take(160).collect()
}

/// Every event of each client, in time order.
fn by_client(events: &[Event]) -> HashMap<&str, Vec<&Event>> {
    let mut clients: HashMap<&str, Vec<&Event>> = HashMap::new();
    for e in events.iter().filter(|e| e.who != "chaos") {
        clients.entry(e.who.as_str()).or_default().push(e);
    }
    clients
}

/// Every hold, with its live interval and how it ended.
///
/// A cancelled unlock ends the client's live interval at its `releasing`: from there on the
/// client no longer acts as owner (no write, no critical section), so a holder that acquires
/// after it is no overlap. Its key may outlive that point while the release finishes in the
/// background: that tail is "possibly live" until the next successful lock of the same name by
/// the same session (which must not find the old release outstanding: the backend may not
/// reuse the key while its delete is in flight) or until the lease is gone. The tail is judged
/// by its effects, not as a live interval: a newer hold of the session that loses its key to
/// the late delete is a hold lost with its lease alive ([`holds_lost`] names the cancelled
/// unlock), a re-lock that adopts the old key repeats its token ([`token_regressions`]), a
/// key left behind blocks the waiters ([`stuck_after_cancel`]) or is an orphan at the end.
/// Any other owner that acts during the tail has an interval of its own, so nothing is missed.
pub fn holds(events: &[Event], ttl_us: u64, end_us: u64) -> Vec<Hold> {
    let mut holds = Vec::new();
    for (who, list) in by_client(events) {
        let mut attempt = 0;
        let mut current: Option<usize> = None;
        for e in list {
            match e.event.as_str() {
                "attempt" => {
                    attempt = e.t;
                    current = None;
                }
                "session" => current = None,
                "acquired" => {
                    current = Some(holds.len());
                    holds.push(Hold {
                        who: who.to_owned(),
                        name: e.name.clone(),
                        mode: Mode::of(e),
                        lease: e.lease.clone(),
                        token: e.token,
                        attempt: if attempt == 0 { e.t } else { attempt },
                        start: e.t,
                        end: end_us,
                        ending: Ending::Open,
                        releasing: None,
                        lost: None,
                    });
                }
                _ => {
                    if let Some(hold) = current.and_then(|i| holds.get_mut(i)) {
                        note_ending(hold, e);
                    }
                }
            }
        }
    }
    for hold in &mut holds {
        hold.end = hold.end.min(fault_cut(events, hold, ttl_us));
    }
    holds.sort_by_key(|h| h.start);
    holds
}

/// Applies one of the hold's own later events.
fn note_ending(hold: &mut Hold, e: &Event) {
    match e.event.as_str() {
        "releasing" => {
            hold.end = hold.end.min(e.t);
            hold.releasing = Some(e.t);
            if e.detail == "drop" {
                hold.ending = Ending::Dropped;
            }
        }
        "released" => hold.ending = Ending::Released,
        "cancelled" if e.detail == "unlock" => hold.ending = Ending::Cancelled(e.t),
        "unlock_failed" => hold.ending = Ending::Failed(e.t),
        "lost" => {
            hold.end = hold.end.min(e.t);
            hold.ending = Ending::Lost;
            hold.lost = Some(e.clone());
        }
        _ => {}
    }
}

/// The earliest end a fault puts on `hold`: faults from its attempt on count, since one that
/// lands between the acquisition and the `acquired` line cuts it too.
fn fault_cut(events: &[Event], hold: &Hold, ttl_us: u64) -> u64 {
    faults(events)
        .filter(|f| f.t >= hold.attempt && f.t < hold.end)
        .filter_map(|f| match f.detail.as_str() {
            "kill_client" if f.target == hold.who => Some(f.t),
            "pause_client" if f.target == hold.who => Some(f.t + ttl_us * 2 / 3),
            "delete_holder_key" if f.name == hold.name && f.lease == hold.lease => Some(f.t),
            _ => None,
        })
        .min()
        .unwrap_or(u64::MAX)
}

/// Live holds of one name that their modes forbid together: two live owners of a mutex, a
/// writer beside any other holder of its RW lock, more than `limit` permits of a semaphore.
fn overlaps(holds: &[Hold]) -> Vec<String> {
    let mut found = Vec::new();
    for (name, list) in holds_by_name(holds) {
        let mut live: Vec<&Hold> = Vec::new();
        for later in list {
            live.retain(|earlier| earlier.end > later.start);
            if let Mode::Permit(limit) = later.mode {
                let permits: Vec<&Hold> = live
                    .iter()
                    .copied()
                    .filter(|earlier| matches!(earlier.mode, Mode::Permit(_)))
                    .collect();
                if permits.len() as u64 >= limit {
                    let holders: Vec<String> = permits
                        .iter()
                        .map(|h| format!("{} (token {}, until {})", h.who, h.token, h.end))
                        .collect();
                    found.push(format!(
                        "{name} (limit {limit}) held by {} (token {}) from {} beside {}",
                        later.who,
                        later.token,
                        later.start,
                        holders.join(", ")
                    ));
                }
            }
            for earlier in live.iter().filter(|e| !later.mode.shares_with(e.mode)) {
                found.push(format!(
                    "{name} held by {} ({}token {}) until {} and by {} ({}token {}) from {}",
                    earlier.who,
                    mode_label(earlier.mode),
                    earlier.token,
                    earlier.end,
                    later.who,
                    mode_label(later.mode),
                    later.token,
                    later.start
                ));
            }
            live.push(later);
        }
    }
    found
}

/// `read ` or `write ` before the token of an RW hold in a report line; nothing for a mutex.
fn mode_label(mode: Mode) -> &'static str {
    match mode {
        Mode::Read => "read ",
        Mode::Write => "write ",
        Mode::Exclusive | Mode::Permit(_) => "",
    }
}

/// Live holds by their mode's kind.
fn holds_by_kind(holds: &[Hold]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for hold in holds.iter().filter(|h| h.was_live()) {
        *counts.entry(hold.mode.kind().to_owned()).or_default() += 1;
    }
    counts
}

/// The live holds of each name, by start.
fn holds_by_name(holds: &[Hold]) -> HashMap<&str, Vec<&Hold>> {
    let mut by_name: HashMap<&str, Vec<&Hold>> = HashMap::new();
    for hold in holds.iter().filter(|h| h.was_live()) {
        by_name.entry(hold.name.as_str()).or_default().push(hold);
    }
    for list in by_name.values_mut() {
        list.sort_by_key(|h| h.start);
    }
    by_name
}

/// Fencing tokens must strictly increase across successive holds of a mutex, also when one
/// session takes the same name twice: a repeated or lower token means a hold reused a key
/// (or its revision) that an earlier hold, or a withdrawn waiter, had. RW and semaphore holds
/// must exceed the holds their [`Mode::fenced_after`] names that had ended before they asked
/// (holds at once may have any order). Each hold is judged against the highest such token.
fn token_regressions(holds: &[Hold]) -> Vec<String> {
    let mut found = Vec::new();
    for (name, list) in holds_by_name(holds) {
        for (i, later) in list.iter().enumerate() {
            let Some(earlier) = list
                .iter()
                .enumerate()
                .filter(|(j, earlier)| must_exceed(later, (*j, earlier), i))
                .map(|(_, earlier)| earlier)
                .max_by_key(|earlier| earlier.token)
            else {
                continue;
            };
            if later.token > earlier.token {
                continue;
            }
            let same = if later.lease == earlier.lease {
                format!(", same session {}", later.lease)
            } else {
                String::new()
            };
            found.push(format!(
                "{name}: {} got {}token {} at {} after {} had {}token {} at {} (ended {:?}){same}",
                later.who,
                mode_label(later.mode),
                later.token,
                later.start,
                earlier.who,
                mode_label(earlier.mode),
                earlier.token,
                earlier.start,
                earlier.ending
            ));
        }
    }
    found
}

/// True if the hold at `index` of its name's list (by start) must have a token above the
/// `earlier` one's (its index and hold): a mutex hold above every hold before it, others above
/// the holds of a mode they are fenced after that ended before their attempt began.
fn must_exceed(later: &Hold, (earlier_index, earlier): (usize, &&Hold), index: usize) -> bool {
    match later.mode {
        Mode::Exclusive => earlier_index < index,
        mode => earlier.end <= later.attempt && mode.fenced_after(earlier.mode),
    }
}

/// Fenced writes: in etcd's commit order, accepted tokens only grow. Returns the stale ones
/// accepted and the count of writes rejected.
fn fenced_writes(events: &[Event]) -> (usize, usize) {
    let mut writes: Vec<&Event> = events
        .iter()
        .filter(|e| e.event == "write" && e.accepted.is_some())
        .collect();
    writes.sort_by_key(|e| e.rev);
    let mut highest: HashMap<&str, u64> = HashMap::new();
    let (mut stale, mut rejected) = (0, 0);
    for write in writes {
        if write.accepted == Some(true) {
            let top = highest.entry(write.name.as_str()).or_default();
            if write.token <= *top {
                stale += 1;
            }
            *top = (*top).max(write.token);
        } else {
            rejected += 1;
        }
    }
    (stale, rejected)
}

/// Unfenced writes made after the writer's hold had ended (a paused holder): counted only.
fn unfenced_after_end(events: &[Event], holds: &[Hold]) -> usize {
    events
        .iter()
        .filter(|e| e.event == "plain_write")
        .filter(|write| {
            let hold = holds
                .iter()
                .find(|h| h.who == write.who && h.name == write.name && h.token == write.token);
            hold.is_some_and(|h| write.t > h.end)
        })
        .count()
}

/// A killed holder must not leave its waiters stuck past TTL + 2 s.
fn stuck_after_kill(events: &[Event], holds: &[Hold], ttl_us: u64, end_us: u64) -> Vec<String> {
    let mut found = Vec::new();
    for kill in fault(events, "kill_client") {
        let Some(held) = holds
            .iter()
            .find(|h| h.who == kill.target && h.start <= kill.t && h.end >= kill.t)
        else {
            continue;
        };
        if !served(
            events,
            holds,
            &held.name,
            &kill.target,
            kill.t,
            ttl_us,
            end_us,
        ) {
            found.push(format!(
                "{} killed holding {} at {}: nobody acquired it within TTL + 2 s",
                kill.target, held.name, kill.t
            ));
        }
    }
    found
}

/// A cancelled `lock`, `try_lock` or `unlock` (or a failed unlock) must leave nothing that
/// blocks the name: its cleanup goes on in the background, so the waiters present then get
/// the lock within TTL + 2 s (extended by member faults as for a killed holder).
fn stuck_after_cancel(events: &[Event], holds: &[Hold], ttl_us: u64, end_us: u64) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event == "cancelled" || e.event == "unlock_failed")
        .filter(|e| !served(events, holds, &e.name, &e.who, e.t, ttl_us, end_us))
        .map(|e| {
            let what = if e.event == "cancelled" {
                format!("cancelled {}", e.detail)
            } else {
                "failed unlock".to_owned()
            };
            format!(
                "{} {what} of {} at {}: waiters did not get it within TTL + 2 s",
                e.who, e.name, e.t
            )
        })
        .collect()
}

/// False when, at `t`, a client other than `except` waited for `name` and nobody acquired it
/// before the deadline (which must have passed within the run).
fn served(
    events: &[Event],
    holds: &[Hold],
    name: &str,
    except: &str,
    t: u64,
    ttl_us: u64,
    end_us: u64,
) -> bool {
    let deadline = unblock_deadline(events, t, ttl_us + 2_000_000);
    if deadline >= end_us || !waiting_at(events, name, except, t) {
        return true;
    }
    holds
        .iter()
        .any(|h| h.name == name && h.start > t && h.start <= deadline)
}

/// When the waiters of a name blocked at `t` must have the lock: `grace` later, unless the
/// cluster lost a member meanwhile. etcd extends every lease when a new leader takes over, so
/// each member fault under way in the window (begun before `t` and not yet over, or begun
/// within it) moves the deadline to its recovery + `grace`.
fn unblock_deadline(events: &[Event], t: u64, grace: u64) -> u64 {
    let mut deadline = t + grace;
    for (i, f) in events.iter().enumerate() {
        if f.event != "fault" || !MEMBER_FAULTS.contains(&f.detail.as_str()) {
            continue;
        }
        if f.t > deadline {
            break;
        }
        let recovered = recovery(&events[i + 1..], f).unwrap_or(f.t);
        if recovered >= t {
            deadline = deadline.max(recovered + grace);
        }
    }
    deadline
}

/// When the member fault `f` ended (its restart or SIGCONT), searched in the later `events`.
fn recovery(events: &[Event], f: &Event) -> Option<u64> {
    events
        .iter()
        .find(|e| {
            e.event == "fault"
                && e.target == f.target
                && matches!(e.detail.as_str(), "restart_member" | "cont_member")
        })
        .map(|e| e.t)
}

/// True if a client other than `except` was in a waiting call on `name` at `t` (its last
/// event by then is an attempt at it that waits: one of [`WAITING_CALLS`]).
fn waiting_at(events: &[Event], name: &str, except: &str, t: u64) -> bool {
    let mut last: HashMap<&str, &Event> = HashMap::new();
    for e in events.iter().take_while(|e| e.t <= t) {
        if e.who != except && e.who != "chaos" {
            last.insert(e.who.as_str(), e);
        }
    }
    last.values().any(|e| {
        e.event == "attempt" && e.name == name && WAITING_CALLS.contains(&e.detail.as_str())
    })
}

/// A waiting call that waited longer than the client's patience (15 s, many TTLs and fault
/// recoveries): the name was blocked.
fn long_waits(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event == "error" && e.detail.contains(" took over "))
        .map(|e| {
            format!(
                "{} waited for {} until {}: {}",
                e.who, e.name, e.t, e.detail
            )
        })
        .collect()
}

/// A client process that runs but neither acquires nor finds a lock busy for 20 s (for
/// example every call refused with an expired auth token).
fn idle_clients(events: &[Event], end_us: u64) -> Vec<String> {
    let mut found = Vec::new();
    for (who, list) in by_client(events) {
        let Some(first) = list.first() else { continue };
        let killed = fault(events, "kill_client").find(|f| f.target == who);
        let until = killed.map_or(end_us, |f| f.t);
        let mut since = first.t;
        let mut errors: Vec<&Event> = Vec::new();
        let mut progress: Vec<u64> = list
            .iter()
            .filter(|e| e.event == "acquired" || e.event == "busy")
            .map(|e| e.t)
            .collect();
        progress.push(until);
        for next in progress {
            if next > since + IDLE_LIMIT_US {
                errors.clear();
                errors.extend(
                    list.iter()
                        .filter(|e| e.event == "error" && e.t > since && e.t < next),
                );
                let last = errors.last().map_or("none", |e| e.detail.as_str());
                found.push(format!(
                    "{who} made no progress from {since} to {next} ({} errors, last: {last})",
                    errors.len()
                ));
            }
            since = since.max(next);
        }
    }
    found
}

/// Holds lost while their lease should have been alive: the client reported the loss (while
/// holding, or as the answer of its unlock: an unlock that hangs until the lease is gone is a
/// session lost all the same) and nothing the orchestrator did explains it.
///
/// What "targeted" the hold, and so explains its loss (faults from TTL + 1 s before its
/// attempt up to the loss):
/// - a pause or kill of its client process: the lease ran out without keepalives;
/// - the deletion of its key (`delete_holder_key` of its name and lease);
/// - a fault that stops the leader (`kill_leader`, `stop_leader`) within TTL + 1 s before the
///   loss: during the election no keepalive is answered, and a session that cannot confirm
///   its lease within its TTL may rightly declare its holds lost.
///
/// A fault on a follower (kill, stop, a stall longer than the TTL) does not explain a loss:
/// every session talks to all three members, a quorum remains, and a keepalive overdue on one
/// member must be sent through another. Neither do compaction, cancellation, or an expired
/// auth token. The lease's remaining TTL, as etcd told the client right after the loss, is
/// printed with each: "lease alive" means the key went while the lease lived (a stale unlock,
/// a wrong loss report), "lease gone" that the keepalives failed.
fn holds_lost(events: &[Event], holds: &[Hold], ttl_us: u64, end_us: u64) -> Vec<String> {
    let mut found = Vec::new();
    for (i, hold) in holds.iter().enumerate() {
        let Some(lost) = &hold.lost else { continue };
        if lost.t > end_us || loss_explained(events, hold, lost.t, ttl_us) {
            continue;
        }
        let lease = match lost.lease_ttl {
            Some(ttl) if ttl >= 0 => format!("lease alive, {ttl} s left"),
            Some(_) => "lease gone".to_owned(),
            None => "lease state unknown".to_owned(),
        };
        let seen = match hold.releasing {
            Some(t) if t <= lost.t => format!(
                "reported by an unlock that began {} ms earlier",
                (lost.t - t) / 1_000
            ),
            _ => "seen while held".to_owned(),
        };
        let mut line = format!(
            "{} lost {} (token {}, held from {}) at {} ({seen}): {}; {lease}",
            hold.who, hold.name, hold.token, hold.start, lost.t, lost.detail
        );
        if let Some(previous) = previous_pending_release(holds, i) {
            line.push_str(&format!(
                "; the same session's previous hold of {} (token {}) ended {:?}",
                hold.name, previous.token, previous.ending
            ));
        }
        found.push(line);
    }
    found
}

fn loss_explained(events: &[Event], hold: &Hold, loss: u64, ttl_us: u64) -> bool {
    let from = hold.attempt.saturating_sub(ttl_us + 1_000_000);
    faults(events)
        .filter(|f| f.t <= loss)
        .any(|f| match f.detail.as_str() {
            "pause_client" | "kill_client" => f.target == hold.who && f.t >= from,
            "delete_holder_key" => {
                f.name == hold.name && f.lease == hold.lease && f.t >= hold.attempt
            }
            detail if LEADER_FAULTS.contains(&detail) => {
                let ended = recovery(events_after(events, f), f).unwrap_or(loss);
                ended + ttl_us + 1_000_000 >= loss
            }
            _ => false,
        })
}

/// The events after `f` (which is one of `events`).
fn events_after<'a>(events: &'a [Event], f: &Event) -> &'a [Event] {
    let at = events.partition_point(|e| e.t <= f.t);
    &events[at..]
}

/// The same session's previous hold of the same name, if its release was cancelled or failed
/// (its delete may have been still in flight when this hold began).
fn previous_pending_release(holds: &[Hold], index: usize) -> Option<&Hold> {
    let hold = &holds[index];
    let previous = holds[..index]
        .iter()
        .rev()
        .find(|h| h.lease == hold.lease && h.name == hold.name)?;
    matches!(previous.ending, Ending::Cancelled(_) | Ending::Failed(_)).then_some(previous)
}

/// What kind of key an etcd key left under the namespace is (the part after the namespace):
/// a semaphore permit, an RW reader or writer, or a mutex or election key.
pub fn key_family(key: &str) -> &'static str {
    let mut parts = key.split('/');
    let first = parts.next().unwrap_or_default();
    if first == "\u{1f}semaphore" {
        return "semaphore";
    }
    match (parts.next(), parts.next()) {
        (Some("read"), Some(_)) => "rw read",
        (Some("write"), Some(_)) => "rw write",
        _ => "lock",
    }
}
