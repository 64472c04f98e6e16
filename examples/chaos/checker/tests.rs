use super::*;

const TTL: u64 = 2_000_000;

fn event(t: u64, who: &str, kind: &str, name: &str, token: u64) -> Event {
    Event {
        t,
        who: who.into(),
        event: kind.into(),
        name: name.into(),
        token,
        lease: format!("l{who}"),
        ..Event::default()
    }
}

fn attempt(t: u64, who: &str, name: &str, detail: &str) -> Event {
    Event {
        detail: detail.into(),
        ..event(t, who, "attempt", name, 0)
    }
}

fn write(t: u64, who: &str, token: u64, rev: u64, accepted: bool) -> Event {
    Event {
        accepted: Some(accepted),
        rev,
        ..event(t, who, "write", "a", token)
    }
}

fn fault(t: u64, detail: &str, target: &str) -> Event {
    Event {
        detail: detail.into(),
        target: target.into(),
        lease: String::new(),
        ..event(t, "chaos", "fault", "", 0)
    }
}

fn lost(t: u64, who: &str, token: u64, lease_ttl: i64) -> Event {
    Event {
        detail: "deleted".into(),
        lease_ttl: Some(lease_ttl),
        ..event(t, who, "lost", "a", token)
    }
}

fn cancelled_unlock(t: u64, who: &str, token: u64) -> Event {
    Event {
        detail: "unlock".into(),
        ..event(t, who, "cancelled", "a", token)
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
    let verdict = check(&events, TTL, 100);
    assert_eq!(verdict.ops, 2);
    assert!(verdict.clean(), "{verdict:?}");
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
    let verdict = check(&events, TTL, 100);
    assert_eq!(verdict.overlaps.len(), 1);
    assert_eq!(verdict.stale_accepted, 1);
}

#[test]
fn a_paused_holder_is_no_live_owner_after_two_thirds_of_its_ttl() {
    let events = vec![
        event(10, "c1", "acquired", "a", 5),
        fault(11, "pause_client", "c1"),
        // c2 acquires after the pause outlived the TTL; c1 wakes and releases later.
        event(11 + 1_500_000, "c2", "acquired", "a", 7),
        event(11 + 3_000_000, "c1", "releasing", "a", 5),
        event(11 + 3_000_001, "c2", "releasing", "a", 7),
    ];
    let verdict = check(&events, TTL, 10_000_000);
    assert!(verdict.overlaps.is_empty(), "{:?}", verdict.overlaps);
}

#[test]
fn a_holder_paused_before_logging_its_acquisition_is_no_live_owner() {
    let events = vec![
        attempt(5, "c1", "a", "lock"),
        fault(11, "pause_client", "c1"),
        event(1_500_000, "c2", "acquired", "a", 7),
        event(1_500_010, "c2", "releasing", "a", 7),
        // c1's lock returned before the pause; it logs the hold after waking up.
        event(3_100_000, "c1", "acquired", "a", 5),
        event(3_100_010, "c1", "releasing", "a", 5),
    ];
    let verdict = check(&events, TTL, 10_000_000);
    assert!(verdict.clean(), "{verdict:?}");
}

#[test]
fn a_leader_change_extends_the_wait_for_a_killed_holder() {
    let events = vec![
        event(10, "c1", "acquired", "a", 5),
        attempt(15, "c2", "a", "lock"),
        fault(20, "kill_client", "c1"),
        fault(1_000_000, "kill_leader", "m0"),
        fault(2_500_000, "restart_member", "m0"),
        // Past kill + TTL + 2 s, within the restart + TTL + 2 s.
        event(5_000_000, "c2", "acquired", "a", 7),
    ];
    let verdict = check(&events, TTL, 20_000_000);
    assert!(verdict.stuck.is_empty(), "{:?}", verdict.stuck);
}

#[test]
fn a_killed_holder_whose_waiter_never_gets_the_lock_is_stuck() {
    let events = vec![
        event(10, "c1", "acquired", "a", 5),
        attempt(15, "c2", "a", "lock"),
        fault(20, "kill_client", "c1"),
    ];
    let verdict = check(&events, TTL, 10_000_000);
    assert_eq!(verdict.stuck.len(), 1);
}

#[test]
fn a_holder_after_a_cancelled_unlock_is_no_overlap() {
    let events = vec![
        event(10, "c1", "acquired", "a", 5),
        event(20, "c1", "releasing", "a", 5),
        cancelled_unlock(25, "c1", 5),
        // The release finished in the background; c2 takes over, then c1 again.
        event(30, "c2", "acquired", "a", 7),
        event(40, "c2", "releasing", "a", 7),
        attempt(41, "c1", "a", "relock"),
        event(50, "c1", "acquired", "a", 9),
        event(60, "c1", "releasing", "a", 9),
    ];
    let verdict = check(&events, TTL, 100);
    assert!(verdict.clean(), "{verdict:?}");
}

#[test]
fn a_relock_that_reuses_the_token_of_a_cancelled_unlock_is_caught() {
    let events = vec![
        event(10, "c1", "acquired", "a", 5),
        event(20, "c1", "releasing", "a", 5),
        cancelled_unlock(25, "c1", 5),
        attempt(26, "c1", "a", "relock"),
        event(30, "c1", "acquired", "a", 5),
        // The late delete of the first hold removes the key of the second.
        lost(35, "c1", 5, 2),
        event(36, "c1", "releasing", "a", 5),
    ];
    let verdict = check(&events, TTL, 100);
    assert_eq!(verdict.token_regressions.len(), 1, "{verdict:?}");
    assert!(verdict.token_regressions[0].contains("same session"));
    assert_eq!(verdict.holds_lost.len(), 1, "{verdict:?}");
    assert!(verdict.holds_lost[0].contains("lease alive"));
    assert!(verdict.holds_lost[0].contains("seen while held"));
    assert!(verdict.holds_lost[0].contains("Cancelled"));
}

#[test]
fn a_lower_token_across_sessions_is_caught() {
    let events = vec![
        event(10, "c1", "acquired", "a", 9),
        event(20, "c1", "releasing", "a", 9),
        event(30, "c2", "acquired", "a", 7),
        event(40, "c2", "releasing", "a", 7),
    ];
    let verdict = check(&events, TTL, 100);
    assert_eq!(verdict.token_regressions.len(), 1);
}

#[test]
fn a_loss_without_a_fault_counts_and_a_deleted_key_explains_one() {
    let delete = Event {
        name: "a".into(),
        lease: "lc2".into(),
        ..fault(1_000_010, "delete_holder_key", "")
    };
    let events = vec![
        attempt(5, "c1", "a", "lock"),
        event(10, "c1", "acquired", "a", 5),
        lost(20, "c1", 5, -1),
        attempt(1_000_000, "c2", "a", "lock"),
        event(1_000_005, "c2", "acquired", "a", 7),
        delete,
        lost(1_000_020, "c2", 7, 2),
    ];
    let verdict = check(&events, TTL, 10_000_000);
    assert_eq!(verdict.losses, 2);
    assert_eq!(verdict.holds_lost.len(), 1, "{:?}", verdict.holds_lost);
    assert!(verdict.holds_lost[0].starts_with("c1 lost a"));
    assert!(verdict.holds_lost[0].contains("lease gone"));
}

#[test]
fn a_follower_stall_does_not_explain_a_loss_but_a_leader_kill_does() {
    let events = vec![
        fault(0, "stall_follower", "m1"),
        attempt(5, "c1", "a", "lock"),
        event(10, "c1", "acquired", "a", 5),
        lost(2_000_000, "c1", 5, -1),
        fault(2_500_000, "cont_member", "m1"),
        fault(5_000_000, "kill_leader", "m0"),
        attempt(5_000_005, "c2", "b", "lock"),
        event(5_000_010, "c2", "acquired", "b", 7),
        Event {
            name: "b".into(),
            ..lost(6_000_000, "c2", 7, -1)
        },
        fault(6_500_000, "restart_member", "m0"),
    ];
    let verdict = check(&events, TTL, 10_000_000);
    assert_eq!(verdict.holds_lost.len(), 1, "{:?}", verdict.holds_lost);
    assert!(verdict.holds_lost[0].starts_with("c1 lost a"));
}

#[test]
fn a_client_refused_for_twenty_seconds_is_stuck() {
    let mut events = vec![event(10, "c1", "acquired", "a", 5)];
    for i in 1..30 {
        events.push(attempt(i * 1_000_000, "c1", "a", "lock"));
        events.push(Event {
            detail: "etcd failed to lock: invalid auth token".into(),
            ..event(i * 1_000_000 + 1, "c1", "error", "a", 0)
        });
    }
    let verdict = check(&events, TTL, 30_000_000);
    assert_eq!(verdict.stuck.len(), 1, "{:?}", verdict.stuck);
    assert!(verdict.stuck[0].contains("invalid auth token"));
    assert_eq!(verdict.errors.len(), 1);
}

#[test]
fn numbers_and_ids_are_masked_in_error_kinds() {
    assert_eq!(
        mask_numbers("lock session 7587ab12 is gone after 1.5s"),
        "lock session # is gone after #.#s"
    );
}

#[test]
fn a_member_fault_under_way_extends_the_wait_after_a_cancellation() {
    let events = vec![
        fault(0, "kill_leader", "m0"),
        attempt(10, "c2", "a", "lock"),
        cancelled_unlock(20, "c1", 5),
        fault(1_500_000, "restart_member", "m0"),
        // Past the cancellation + TTL + 2 s, within the restart + TTL + 2 s.
        event(5_000_000, "c2", "acquired", "a", 7),
    ];
    let verdict = check(&events, TTL, 20_000_000);
    assert!(verdict.stuck.is_empty(), "{:?}", verdict.stuck);
}

#[test]
fn a_loss_reported_by_a_hanging_unlock_counts() {
    let events = vec![
        attempt(5, "c1", "a", "lock"),
        event(10, "c1", "acquired", "a", 5),
        fault(15, "stall_follower", "m2"),
        event(20, "c1", "releasing", "a", 5),
        fault(3_500_000, "cont_member", "m2"),
        lost(3_500_020, "c1", 5, -1),
    ];
    let verdict = check(&events, TTL, 10_000_000);
    assert_eq!(verdict.holds_lost.len(), 1, "{:?}", verdict.holds_lost);
    assert!(verdict.holds_lost[0].contains("reported by an unlock that began 3500 ms earlier"));
    assert!(verdict.overlaps.is_empty());
}

/// An `acquired` event of an RW side (`read`, `write`) or of a permit of `limit` (`permit`).
fn acquired(t: u64, who: &str, name: &str, kind: &str, token: u64) -> Event {
    let limit = match name {
        "s2" => 2,
        "s3" => 3,
        _ => 0,
    };
    Event {
        detail: kind.into(),
        limit,
        ..event(t, who, "acquired", name, token)
    }
}

fn releasing(t: u64, who: &str, name: &str, token: u64) -> Event {
    Event {
        detail: "unlock".into(),
        ..event(t, who, "releasing", name, token)
    }
}

#[test]
fn readers_share_but_a_writer_beside_a_reader_is_caught() {
    let events = vec![
        acquired(10, "c1", "rw1", "read", 5),
        acquired(12, "c2", "rw1", "read", 6),
        acquired(14, "c3", "rw1", "write", 7),
        releasing(20, "c1", "rw1", 5),
        releasing(21, "c2", "rw1", 6),
        releasing(22, "c3", "rw1", 7),
        // A writer after both readers, then a reader after it: no overlap.
        acquired(30, "c1", "rw1", "write", 8),
        releasing(40, "c1", "rw1", 8),
        acquired(41, "c2", "rw1", "read", 9),
        releasing(50, "c2", "rw1", 9),
    ];
    let verdict = check(&events, TTL, 100);
    assert_eq!(verdict.ops, 5);
    assert_eq!(verdict.overlaps.len(), 2, "{:?}", verdict.overlaps);
    assert!(verdict.overlaps[0].contains("(read token 5)"));
    assert!(verdict.overlaps[0].contains("(write token 7)"));
    assert!(verdict.token_regressions.is_empty());
    assert_eq!(verdict.holds_by_kind["read"], 3);
}

#[test]
fn a_reader_beside_a_writer_is_caught_unless_the_writer_was_lost() {
    let delete = Event {
        name: "rw1".into(),
        lease: "lc1".into(),
        ..fault(15, "delete_holder_key", "")
    };
    let events = vec![
        acquired(10, "c1", "rw1", "write", 5),
        acquired(12, "c2", "rw1", "read", 6),
        releasing(14, "c2", "rw1", 6),
        delete,
        Event {
            name: "rw1".into(),
            ..lost(16, "c1", 5, 2)
        },
        // The writer's loss signal fired: a reader after it is no overlap.
        acquired(17, "c3", "rw1", "read", 7),
        releasing(20, "c3", "rw1", 7),
        releasing(21, "c1", "rw1", 5),
    ];
    let verdict = check(&events, TTL, 100);
    assert_eq!(verdict.overlaps.len(), 1, "{:?}", verdict.overlaps);
    assert!(verdict.overlaps[0].contains("by c2 (read token 6) from 12"));
    assert!(verdict.holds_lost.is_empty(), "{:?}", verdict.holds_lost);
}

#[test]
fn permits_up_to_the_limit_pass_and_one_more_is_caught() {
    let events = vec![
        acquired(10, "c1", "s2", "permit", 5),
        acquired(11, "c2", "s2", "permit", 6),
        releasing(12, "c1", "s2", 5),
        acquired(13, "c3", "s2", "permit", 7),
        // c2 and c3 hold: a third is one too many.
        acquired(14, "c4", "s2", "permit", 8),
        releasing(20, "c2", "s2", 6),
        releasing(21, "c3", "s2", 7),
        releasing(22, "c4", "s2", 8),
        // Three at once on the name of limit 3 is fine.
        acquired(30, "c1", "s3", "permit", 9),
        acquired(31, "c2", "s3", "permit", 10),
        acquired(32, "c3", "s3", "permit", 11),
        releasing(40, "c1", "s3", 9),
        releasing(41, "c2", "s3", 10),
        releasing(42, "c3", "s3", 11),
    ];
    let verdict = check(&events, TTL, 100);
    assert_eq!(verdict.overlaps.len(), 1, "{:?}", verdict.overlaps);
    assert!(verdict.overlaps[0].starts_with("s2 (limit 2) held by c4 (token 8) from 14 beside"));
    assert!(verdict.token_regressions.is_empty());
}

#[test]
fn a_writer_token_below_a_reader_released_before_it_asked_is_caught() {
    let events = vec![
        // Readers at once may have any order.
        acquired(10, "c1", "rw1", "read", 9),
        acquired(11, "c2", "rw1", "read", 6),
        releasing(20, "c1", "rw1", 9),
        releasing(21, "c2", "rw1", 6),
        // A writer that asked after both were released must be above both.
        attempt(25, "c3", "rw1", "write"),
        acquired(26, "c3", "rw1", "write", 8),
        releasing(30, "c3", "rw1", 8),
        // A reader that asked after that writer was released must be above it.
        attempt(35, "c1", "rw1", "read"),
        acquired(36, "c1", "rw1", "read", 7),
        releasing(40, "c1", "rw1", 7),
    ];
    let verdict = check(&events, TTL, 100);
    assert!(verdict.overlaps.is_empty(), "{:?}", verdict.overlaps);
    assert_eq!(verdict.token_regressions.len(), 2, "{verdict:?}");
    assert!(verdict.token_regressions[0]
        .contains("c3 got write token 8 at 26 after c1 had read token 9"));
    assert!(verdict.token_regressions[1]
        .contains("c1 got read token 7 at 36 after c3 had write token 8"));
}

#[test]
fn a_writer_that_asked_before_a_reader_was_released_may_be_below_it() {
    let events = vec![
        attempt(5, "c2", "rw1", "write"),
        acquired(10, "c1", "rw1", "read", 9),
        releasing(20, "c1", "rw1", 9),
        acquired(26, "c2", "rw1", "write", 8),
        releasing(30, "c2", "rw1", 8),
    ];
    let verdict = check(&events, TTL, 100);
    assert!(verdict.clean(), "{verdict:?}");
}

#[test]
fn a_permit_token_below_a_permit_released_before_it_asked_is_caught() {
    let events = vec![
        acquired(10, "c1", "s2", "permit", 9),
        acquired(11, "c2", "s2", "permit", 6),
        // Asked while c1 still held: any order.
        attempt(15, "c3", "s2", "acquire"),
        releasing(20, "c1", "s2", 9),
        acquired(21, "c3", "s2", "permit", 7),
        releasing(22, "c3", "s2", 7),
        releasing(23, "c2", "s2", 6),
        // Asked after c1's release: must be above 9.
        attempt(30, "c4", "s2", "try_acquire"),
        acquired(31, "c4", "s2", "permit", 8),
        releasing(32, "c4", "s2", 8),
    ];
    let verdict = check(&events, TTL, 100);
    assert!(verdict.overlaps.is_empty(), "{:?}", verdict.overlaps);
    assert_eq!(verdict.token_regressions.len(), 1, "{verdict:?}");
    assert!(
        verdict.token_regressions[0].starts_with("s2: c4 got token 8 at 31 after c1 had token 9")
    );
}

#[test]
fn a_killed_reader_whose_waiting_writer_never_gets_it_is_stuck() {
    let events = vec![
        acquired(10, "c1", "rw1", "read", 5),
        attempt(15, "c2", "rw1", "write"),
        fault(20, "kill_client", "c1"),
        // A try_read is no waiter: a cancelled one with nobody waiting is not stuck.
        attempt(30, "c3", "rw2", "try_read"),
        Event {
            detail: "try_read".into(),
            ..event(31, "c3", "cancelled", "rw2", 0)
        },
    ];
    let verdict = check(&events, TTL, 10_000_000);
    assert_eq!(verdict.stuck.len(), 1, "{:?}", verdict.stuck);
    assert!(verdict.stuck[0].starts_with("after kill: c1 killed holding rw1"));
}

#[test]
fn a_cancelled_acquire_that_leaves_waiters_blocked_is_stuck() {
    let events = vec![
        acquired(10, "c1", "s2", "permit", 5),
        acquired(11, "c2", "s2", "permit", 6),
        attempt(12, "c3", "s2", "acquire"),
        attempt(13, "c4", "s2", "acquire"),
        Event {
            detail: "acquire".into(),
            ..event(14, "c4", "cancelled", "s2", 0)
        },
        releasing(20, "c1", "s2", 5),
        Event {
            detail: "acquire took over 15 s".into(),
            ..event(15_000_012, "c3", "error", "s2", 0)
        },
    ];
    let verdict = check(&events, TTL, 20_000_000);
    assert_eq!(verdict.stuck.len(), 2, "{:?}", verdict.stuck);
    assert!(verdict.stuck[0].starts_with("long wait: c3 waited for s2"));
    assert!(verdict.stuck[1].starts_with("after cancel: c4 cancelled acquire of s2"));
}

#[test]
fn orphaned_keys_are_named_by_family() {
    assert_eq!(key_family("a/694d9a1b2c3d"), "lock");
    assert_eq!(key_family("rw1/read/694d9a1b2c3d-1"), "rw read");
    assert_eq!(key_family("rw1/write/694d9a1b2c3d-2"), "rw write");
    assert_eq!(key_family("\u{1f}semaphore/s2/694d9a1b2c3d-3"), "semaphore");
}
