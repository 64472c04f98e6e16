//! Reads the chaos logs and judges the run.

use std::collections::HashMap;

use crate::log::Event;

/// What the checker found.
#[derive(Default, Debug)]
pub struct Verdict {
    pub ops: usize,
    pub faults: HashMap<String, usize>,
    pub overlaps: Vec<String>,
    pub stale_accepted: usize,
    pub writes_rejected: usize,
    pub unfenced_after_loss: usize,
    pub stuck: Vec<String>,
}

/// One hold: from `acquired` to the end of its live interval.
#[derive(Debug)]
struct Hold {
    who: String,
    name: String,
    token: u64,
    start: u64,
    end: u64,
}

fn fault<'a>(events: &'a [Event], kind: &'a str) -> impl Iterator<Item = &'a Event> + 'a {
    events
        .iter()
        .filter(move |e| e.event == "fault" && e.detail == kind)
}

/// Judges `events` (every log, in time order) of a run that ended at `end_us`, with sessions
/// of `ttl_us`.
pub fn check(events: &[Event], ttl_us: u64, end_us: u64) -> Verdict {
    let mut verdict = Verdict::default();
    for e in events.iter().filter(|e| e.event == "fault") {
        *verdict.faults.entry(e.detail.clone()).or_default() += 1;
    }
    verdict.faults.remove("cont_member");
    verdict.faults.remove("cont_client");
    verdict.faults.remove("restart_member");

    let holds = holds(events, ttl_us, end_us);
    verdict.ops = holds.len();

    // Two holds of one name whose live intervals overlap: two live owners at once.
    let mut by_name: HashMap<&str, Vec<&Hold>> = HashMap::new();
    for hold in &holds {
        by_name.entry(hold.name.as_str()).or_default().push(hold);
    }
    for list in by_name.values_mut() {
        list.sort_by_key(|h| h.start);
        for (i, earlier) in list.iter().enumerate() {
            for later in &list[i + 1..] {
                if later.start >= earlier.end {
                    break;
                }
                verdict.overlaps.push(format!(
                    "{} held by {} (token {}) until {} and by {} (token {}) from {}",
                    earlier.name,
                    earlier.who,
                    earlier.token,
                    earlier.end,
                    later.who,
                    later.token,
                    later.start
                ));
            }
        }
    }

    // Fenced writes: in etcd's commit order, accepted tokens only grow.
    let mut writes: Vec<&Event> = events
        .iter()
        .filter(|e| e.event == "write" && e.accepted.is_some())
        .collect();
    writes.sort_by_key(|e| e.rev);
    let mut highest: HashMap<&str, u64> = HashMap::new();
    for write in writes {
        if write.accepted == Some(true) {
            let top = highest.entry(write.name.as_str()).or_default();
            if write.token <= *top {
                verdict.stale_accepted += 1;
            }
            *top = (*top).max(write.token);
        } else {
            verdict.writes_rejected += 1;
        }
    }

    // Unfenced writes made after the writer's hold had ended (a paused holder): counted only.
    for write in events.iter().filter(|e| e.event == "plain_write") {
        let hold = holds
            .iter()
            .find(|h| h.who == write.who && h.name == write.name && h.token == write.token);
        if hold.is_some_and(|h| write.t > h.end) {
            verdict.unfenced_after_loss += 1;
        }
    }

    // A killed holder must not leave its waiters stuck past TTL + 2 s.
    let grace = ttl_us + 2_000_000;
    for kill in fault(events, "kill_client") {
        let Some(held) = holds
            .iter()
            .find(|h| h.who == kill.target && h.start <= kill.t && h.end >= kill.t)
        else {
            continue;
        };
        let waiting = waiting_at(events, &held.name, &kill.target, kill.t);
        let deadline = unblock_deadline(events, kill.t, grace);
        if waiting && deadline < end_us {
            let served = holds
                .iter()
                .any(|h| h.name == held.name && h.start > kill.t && h.start <= deadline);
            if !served {
                verdict.stuck.push(format!(
                    "{} killed holding {} at {}: nobody acquired it within TTL + 2 s",
                    kill.target, held.name, kill.t
                ));
            }
        }
    }
    verdict
}

/// When the waiters of a holder killed at `t` must have the lock: TTL + 2 s later, unless the
/// cluster lost a member meanwhile. etcd extends every lease when a new leader takes over, so
/// each member fault in the window moves the deadline to its recovery + TTL + 2 s.
fn unblock_deadline(events: &[Event], t: u64, grace: u64) -> u64 {
    let mut deadline = t + grace;
    for (i, f) in events.iter().enumerate() {
        let member_fault = matches!(
            f.detail.as_str(),
            "kill_member" | "kill_leader" | "stop_member"
        );
        if f.event != "fault" || !member_fault || f.t < t || f.t > deadline {
            continue;
        }
        let recovered = events[i + 1..]
            .iter()
            .find(|e| {
                e.event == "fault"
                    && e.target == f.target
                    && matches!(e.detail.as_str(), "restart_member" | "cont_member")
            })
            .map_or(f.t, |e| e.t);
        deadline = deadline.max(recovered + grace);
    }
    deadline
}

/// True if a client other than `except` had an attempt on `name` outstanding at `t`.
fn waiting_at(events: &[Event], name: &str, except: &str, t: u64) -> bool {
    let mut outstanding: HashMap<&str, bool> = HashMap::new();
    for e in events.iter().take_while(|e| e.t <= t) {
        if e.who == except || e.event == "fault" {
            continue;
        }
        match e.event.as_str() {
            "attempt" => {
                outstanding.insert(e.who.as_str(), e.name == name);
            }
            "acquired" | "error" => {
                outstanding.insert(e.who.as_str(), false);
            }
            _ => {}
        }
    }
    outstanding.values().any(|w| *w)
}

/// Every hold with the end of its live interval: the first of its `releasing` or `lost`, the
/// kill of its process, the deletion of its key, and a pause of its process (plus 2/3 of the
/// TTL: the lease's last keepalive may be up to TTL/3 old when the pause starts).
fn holds(events: &[Event], ttl_us: u64, end_us: u64) -> Vec<Hold> {
    let lease_owner: HashMap<&str, &str> = events
        .iter()
        .filter(|e| e.event == "session")
        .map(|e| (e.lease.as_str(), e.who.as_str()))
        .collect();
    let mut holds = Vec::new();
    for (i, acquired) in events.iter().enumerate() {
        if acquired.event != "acquired" {
            continue;
        }
        let mut end = end_us;
        for e in &events[i + 1..] {
            if e.who == acquired.who
                && e.name == acquired.name
                && (e.event == "releasing" || e.event == "lost")
            {
                end = e.t;
                break;
            }
        }
        let released = end;
        for f in events[i + 1..]
            .iter()
            .filter(|e| e.event == "fault" && e.t < released)
        {
            let cut = match f.detail.as_str() {
                "kill_client" if f.target == acquired.who => f.t,
                "pause_client" if f.target == acquired.who => f.t + ttl_us * 2 / 3,
                "delete_holder_key"
                    if f.name == acquired.name
                        && lease_owner.get(f.lease.as_str()) == Some(&acquired.who.as_str()) =>
                {
                    f.t
                }
                _ => continue,
            };
            end = end.min(cut);
        }
        holds.push(Hold {
            who: acquired.who.clone(),
            name: acquired.name.clone(),
            token: acquired.token,
            start: acquired.t,
            end,
        });
    }
    holds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(t: u64, who: &str, kind: &str, name: &str, token: u64) -> Event {
        Event {
            t,
            who: who.into(),
            event: kind.into(),
            name: name.into(),
            token,
            ..Event::default()
        }
    }

    fn write(t: u64, who: &str, token: u64, rev: u64, accepted: bool) -> Event {
        Event {
            accepted: Some(accepted),
            rev,
            ..event(t, who, "write", "a", token)
        }
    }

    #[test]
    fn clean_history_passes() {
        let events = vec![
            event(10, "c1", "acquired", "a", 5),
            write(11, "c1", 5, 100, true),
            event(20, "c1", "releasing", "a", 5),
            event(21, "c2", "acquired", "a", 7),
            write(22, "c2", 7, 101, true),
            event(30, "c2", "releasing", "a", 7),
        ];
        let verdict = check(&events, 2_000_000, 100);
        assert_eq!(verdict.ops, 2);
        assert!(verdict.overlaps.is_empty() && verdict.stuck.is_empty());
        assert_eq!(verdict.stale_accepted, 0);
    }

    #[test]
    fn overlap_and_stale_write_are_caught() {
        let events = vec![
            event(10, "c1", "acquired", "a", 5),
            event(15, "c2", "acquired", "a", 7),
            write(16, "c2", 7, 100, true),
            write(17, "c1", 5, 101, true),
            event(20, "c1", "releasing", "a", 5),
            event(30, "c2", "releasing", "a", 7),
        ];
        let verdict = check(&events, 2_000_000, 100);
        assert_eq!(verdict.overlaps.len(), 1);
        assert_eq!(verdict.stale_accepted, 1);
    }

    #[test]
    fn a_paused_holder_is_no_live_owner_after_two_thirds_of_its_ttl() {
        let pause = Event {
            detail: "pause_client".into(),
            target: "c1".into(),
            ..event(11, "chaos", "fault", "", 0)
        };
        let events = vec![
            event(10, "c1", "acquired", "a", 5),
            pause,
            // c2 acquires after the pause outlived the TTL; c1 wakes and releases later.
            event(11 + 1_500_000, "c2", "acquired", "a", 7),
            event(11 + 3_000_000, "c1", "releasing", "a", 5),
            event(11 + 3_000_001, "c2", "releasing", "a", 7),
        ];
        let verdict = check(&events, 2_000_000, 10_000_000);
        assert!(verdict.overlaps.is_empty(), "{:?}", verdict.overlaps);
    }

    #[test]
    fn a_leader_change_extends_the_wait_for_a_killed_holder() {
        let fault = |t: u64, detail: &str, target: &str| Event {
            detail: detail.into(),
            target: target.into(),
            ..event(t, "chaos", "fault", "", 0)
        };
        let events = vec![
            event(10, "c1", "acquired", "a", 5),
            event(15, "c2", "attempt", "a", 0),
            fault(20, "kill_client", "c1"),
            fault(1_000_000, "kill_leader", "m0"),
            fault(2_500_000, "restart_member", "m0"),
            // Past kill + TTL + 2 s, within the restart + TTL + 2 s.
            event(5_000_000, "c2", "acquired", "a", 7),
        ];
        let verdict = check(&events, 2_000_000, 20_000_000);
        assert!(verdict.stuck.is_empty(), "{:?}", verdict.stuck);
    }

    #[test]
    fn a_killed_holder_whose_waiter_never_gets_the_lock_is_stuck() {
        let kill = Event {
            detail: "kill_client".into(),
            target: "c1".into(),
            ..event(20, "chaos", "fault", "", 0)
        };
        let events = vec![
            event(10, "c1", "acquired", "a", 5),
            event(15, "c2", "attempt", "a", 0),
            kill,
        ];
        let verdict = check(&events, 2_000_000, 10_000_000);
        assert_eq!(verdict.stuck.len(), 1);
    }
}
