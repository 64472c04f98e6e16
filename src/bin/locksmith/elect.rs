//! `locksmith elect`: campaign to lead a name, as `etcdctl elect` does, or watch who leads.

use std::sync::Arc;

use locksmith::{Coordination, LeaderState, Primitive};

use crate::signals::Signals;
use crate::waiting::Waiting;
use crate::{
    command, hold_until_signal, one_line, print_lines, release, Held, Outcome, RunOptions,
};

/// The line `--listen` prints while nobody leads.
pub const VACANT: &str = "<none>";

/// What `elect NAME PROPOSAL [-- COMMAND]` asks for.
pub struct Campaign<'a> {
    pub name: &'a str,
    pub proposal: &'a [u8],
    pub command: &'a [String],
    pub run: &'a RunOptions,
}

/// Campaigns for `name` with `proposal`; once elected runs `command` while leading, or prints
/// the key and the value and leads until SIGINT or SIGTERM, then resigns.
pub async fn campaign(
    session: &Arc<dyn Coordination>,
    campaign: Campaign<'_>,
    waiting: &Waiting,
) -> Outcome {
    let Campaign {
        name,
        proposal,
        command,
        run,
    } = campaign;
    let mut stop = match Signals::new() {
        Ok(stop) => stop,
        Err(message) => return Outcome::Failed(message),
    };
    let held = Held::leadership(name);
    let elected = waiting.reported(
        session.campaign(name, proposal),
        name,
        Primitive::Election,
        &held,
    );
    let leadership = tokio::select! {
        elected = elected => match elected {
            Ok(leadership) => leadership,
            Err(err) => return err.into(),
        },
        // Dropping the campaign withdraws the candidate key.
        signal = stop.recv() => return Outcome::Exit(signal.exit_code()),
    };
    match command.split_first() {
        Some((program, args)) => {
            // The same key, token and loss signal, as the command sees them.
            let guard = leadership.into_guard();
            let outcome =
                command::run_while_held(&guard, &held, program, args, run.kill_after, &mut stop)
                    .await;
            release(guard.unlock().await, outcome)
        }
        None => {
            let printed = print_lines(&[leadership.key(), &printable(&leadership.value())]);
            let outcome = match printed {
                Ok(()) => hold_until_signal(leadership.lost(), &held, &mut stop).await,
                Err(outcome) => outcome,
            };
            release(leadership.resign().await, outcome)
        }
    }
}

/// Prints who leads `name` now, then each change, until SIGINT or SIGTERM.
pub async fn listen(session: &Arc<dyn Coordination>, name: &str) -> Outcome {
    let mut stop = match Signals::new() {
        Ok(stop) => stop,
        Err(message) => return Outcome::Failed(message),
    };
    let mut watch = tokio::select! {
        watch = session.observe(name) => match watch {
            Ok(watch) => watch,
            Err(err) => return err.into(),
        },
        signal = stop.recv() => return Outcome::Exit(signal.exit_code()),
    };
    // The backend may yield an unchanged state again (another candidate joining the queue
    // is a change to it); a line is printed only when the leader or its value changed.
    let mut printed: Option<LeaderState> = None;
    loop {
        let item = tokio::select! {
            item = watch.next() => item,
            _ = stop.recv() => return Outcome::Exit(0),
        };
        match item {
            Some(Ok(state)) => {
                if printed.as_ref() == Some(&state) {
                    continue;
                }
                if let Err(outcome) = print_lines(&[&state_line(&state)]) {
                    return outcome;
                }
                printed = Some(state);
            }
            Some(Err(err)) => {
                return Outcome::Failed(format!("observing {name:?} ended: {}", one_line(&err)))
            }
            None => return Outcome::Failed(format!("observing {name:?} ended")),
        }
    }
}

/// One `--listen` line: `KEY<TAB>FENCING_TOKEN<TAB>VALUE` for a leader, [`VACANT`] for none.
fn state_line(state: &LeaderState) -> String {
    match state {
        Some(leader) => format!(
            "{}\t{}\t{}",
            printable(leader.key().as_bytes()),
            leader.fencing_token(),
            printable(leader.value())
        ),
        None => VACANT.to_owned(),
    }
}

/// `bytes` as one line of text: UTF-8 as it is, except `\` `\n` `\r` `\t` escaped as in Rust,
/// other control characters as `\u{HEX}`, and bytes that are not UTF-8 as `\xHH`.
pub fn printable(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => text.push_str("\\\\"),
                '\n' => text.push_str("\\n"),
                '\r' => text.push_str("\\r"),
                '\t' => text.push_str("\\t"),
                c if c.is_control() => text.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
                c => text.push(c),
            }
        }
        for byte in chunk.invalid() {
            text.push_str(&format!("\\x{byte:02x}"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use locksmith::{FencingToken, LeaderInfo};

    #[test]
    fn values_print_as_one_line() {
        assert_eq!(printable(b"plain value"), "plain value");
        assert_eq!(printable("ünï".as_bytes()), "ünï");
        assert_eq!(printable(b"a\tb\nc\\d\r"), "a\\tb\\nc\\\\d\\r");
        assert_eq!(printable(b"\x07\xff"), "\\u{7}\\xff");
    }

    #[test]
    fn listen_lines() {
        let leader = LeaderInfo::new("e/694d", "v 1", FencingToken::new(7));
        assert_eq!(state_line(&Some(leader)), "e/694d\t7\tv 1");
        assert_eq!(state_line(&None), "<none>");
    }
}
