//! `locksmith`: take a lock, a read or write lock or a semaphore permit, or lead a name from
//! the command line, like `etcdctl lock` and `etcdctl elect`.
//!
//! ```text
//! locksmith --url etcd://127.0.0.1:2379/ lock NAME -- CMD ARGS...   # hold while CMD runs
//! locksmith --url etcd://127.0.0.1:2379/ lock NAME                  # print the key, hold until SIGINT/SIGTERM
//! locksmith --url etcd://127.0.0.1:2379/ read NAME -- CMD            # the same for a shared read lock,
//! locksmith --url etcd://127.0.0.1:2379/ write NAME -- CMD           # the write lock,
//! locksmith --url etcd://127.0.0.1:2379/ semaphore NAME --limit 3 -- CMD   # or one of 3 permits
//! locksmith --url etcd://127.0.0.1:2379/ elect NAME VALUE -- CMD    # lead while CMD runs
//! locksmith --url etcd://127.0.0.1:2379/ elect NAME VALUE           # print key and value, lead until SIGINT/SIGTERM
//! locksmith --url etcd://127.0.0.1:2379/ elect --listen NAME        # print the leader and each change
//! locksmith --url etcd://127.0.0.1:2379/ status NAME [--json]       # who holds NAME, who waits
//! locksmith --url etcd://127.0.0.1:2379/ list [PREFIX] [--json]     # every name in use, its holder
//! ```

mod command;
mod elect;
mod hold;
mod session;
mod signals;
mod status;
mod waiting;

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use locksmith::{LockConfig, LockError, LossReason, Primitive};

use hold::{Acquire, HoldArgs};
use session::Session;
use signals::Signals;
use waiting::Waiting;

/// What `lock`, `read`, `write` and `semaphore` do once they hold NAME.
const HOLD_HELP: &str = "\
With a command: holds NAME while the command runs (with LOCKSMITH_KEY and \
LOCKSMITH_FENCING_TOKEN in its environment) and exits with its status. Without: prints the \
key and holds until SIGINT or SIGTERM (status 0). A signal while waiting withdraws from the \
queue (status 130 or 143).

While waiting longer than a second, a line on stderr names whom it waits behind (the \
holder's key, lease and TTL left) and how many are ahead, and a new line each time that \
changes; --quiet turns these lines off.

If the hold is lost (session expired or revoked, key deleted), the command gets SIGTERM (and \
SIGKILL after --kill-after) and locksmith exits with status 1 and a one-line message naming \
what was lost and why.";

/// How long a release or session close may take on the way out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(
    name = "locksmith",
    version,
    about = "Named distributed locks from the command line"
)]
struct Cli {
    /// Where the locks live: etcd://HOST:PORT[,HOST:PORT…]/[NAMESPACE][?ttl=SECS] or memory://
    // Read as text and parsed in `main`: clap quotes a value it cannot parse, and a URL may
    // carry a password. For the same reason `--help` does not show the environment's value.
    #[arg(
        long,
        env = "LOCKSMITH_URL",
        hide_env_values = true,
        default_value = "memory://",
        global = true
    )]
    url: String,

    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Holds the lock NAME while a command runs, or until SIGINT or SIGTERM.
    #[command(after_long_help = HOLD_HELP)]
    Lock(HoldArgs),

    /// Holds a read lock on NAME, shared with other readers.
    ///
    /// Readers wait for older writers only; a reader that comes after a waiting writer queues
    /// behind it. On etcd the keys are those of Go's `recipe.RWMutex`.
    #[command(after_long_help = HOLD_HELP)]
    Read(HoldArgs),

    /// Holds the write lock on NAME, alone: no reader or other writer at once.
    ///
    /// A writer waits for every older reader and writer.
    #[command(after_long_help = HOLD_HELP)]
    Write(HoldArgs),

    /// Holds one of --limit permits of the semaphore NAME.
    ///
    /// At most --limit holders at once, served in arrival order. Every user of NAME must pass
    /// the same limit: another one fails with a message naming the limit in use.
    #[command(after_long_help = HOLD_HELP)]
    Semaphore {
        /// How many may hold NAME at once (at least 1).
        #[arg(long, value_name = "N")]
        limit: u32,
        #[command(flatten)]
        args: HoldArgs,
    },

    /// Campaigns to lead NAME, as `etcdctl elect` does, or prints who leads it (--listen).
    ///
    /// Campaigning: waits behind earlier candidates (first come, first served), then leads
    /// with PROPOSAL as its value. With a command: runs it while leading (with LOCKSMITH_KEY
    /// and LOCKSMITH_FENCING_TOKEN in its environment) and exits with its status. Without:
    /// prints the leader key, then the value (one line each), and leads until SIGINT or
    /// SIGTERM, then resigns. A signal while campaigning withdraws the candidate.
    /// If leadership is lost (session expired or revoked, key deleted), the command gets
    /// SIGTERM and locksmith exits with status 1 and a one-line message naming NAME and why.
    ///
    /// Listening (--listen): prints the leader now, then one line per change, until SIGINT
    /// or SIGTERM (status 0); status 1 with a message if observing fails:
    ///   KEY<TAB>FENCING_TOKEN<TAB>VALUE   someone leads (a new leader or a new value)
    ///   <none>                            nobody leads
    /// The token is the same for every value of one leadership and grows with each leader.
    ///
    /// Values print as text on one line: \\ \n \r \t are escaped, other control characters
    /// print as \u{HEX} and bytes that are not UTF-8 as \xHH.
    #[command(verbatim_doc_comment)]
    Elect {
        /// Print the leader and each change instead of campaigning.
        #[arg(short = 'l', long, conflicts_with_all = ["proposal", "command"])]
        listen: bool,
        /// The election name.
        name: String,
        /// The value to lead with (required unless --listen).
        #[arg(required_unless_present = "listen")]
        proposal: Option<OsString>,
        /// The command to run while leading (after `--`).
        #[arg(last = true)]
        command: Vec<String>,
        #[command(flatten)]
        run: RunOptions,
        /// Print nothing on stderr while waiting behind earlier candidates.
        #[arg(short, long)]
        quiet: bool,
    },

    /// Shows who holds NAME (key, lease, TTL left, fencing token) and every waiter in order.
    #[command(after_long_help = STATUS_HELP)]
    Status {
        /// The name to show.
        name: String,
        #[command(flatten)]
        primitive: PrimitiveFlags,
        /// Print JSON (see below) instead of text.
        #[arg(long)]
        json: bool,
    },

    /// Lists every name in use under PREFIX (all by default): its holder and how many wait.
    #[command(after_long_help = LIST_HELP)]
    List {
        /// Only names starting with this.
        #[arg(default_value = "")]
        prefix: String,
        /// Print JSON (the array `status --json` prints) instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Which primitive `status` reads; none: every one that has keys.
#[derive(Args)]
#[group(multiple = false)]
struct PrimitiveFlags {
    /// The lock NAME (`lock`, `etcdctl lock`).
    #[arg(long)]
    lock: bool,
    /// The election NAME (`elect`, `etcdctl elect`): the same keys as the lock, with values.
    #[arg(long)]
    election: bool,
    /// The reader-writer lock NAME (`read`, `write`).
    #[arg(long)]
    rw: bool,
    /// The semaphore NAME (`semaphore`).
    #[arg(long)]
    semaphore: bool,
}

impl PrimitiveFlags {
    fn which(&self) -> status::Which {
        let only = [
            (self.lock, Primitive::Lock),
            (self.election, Primitive::Election),
            (self.rw, Primitive::RwLock),
            (self.semaphore, Primitive::Semaphore),
        ]
        .into_iter()
        .find_map(|(set, primitive)| set.then_some(primitive));
        only.map_or(status::Which::Detect, status::Which::Only)
    }
}

/// The text and JSON `status` prints.
const STATUS_HELP: &str = "\
Without --lock, --election, --rw or --semaphore, every primitive's queue of NAME is read and \
those with keys are shown. A lock and an election share keys: a queue whose keys carry \
values (proposals, as `elect` and `etcdctl elect` store) shows as an election, one whose \
values are empty (`etcdctl lock`) or locksmith markers as a lock. Keys made by Go clients, \
`etcdctl lock` and `etcdctl elect` are read the same way as locksmith's. Status 0 whether \
or not anyone holds NAME.

Text: per queue a heading, then one line per entry, holders first, then waiters in the \
order they will be served:
  lock \"NAME\": 1 holder, 2 waiting
    holds  lock      KEY  lease=HEX ttl=8s token=42
    waits  lock      KEY  lease=HEX ttl=9s token=57
Elections add value=VALUE (escaped as `elect --listen` does); semaphores show their limit.

--json prints one JSON array of queues (an empty array when nothing is found):
  {\"name\", \"primitive\": \"lock\"|\"election\"|\"rwlock\"|\"semaphore\", \"limit\": N|null,
   \"holders\": [ENTRY...], \"waiters\": [ENTRY...]}
  ENTRY: {\"key\", \"kind\": \"lock\"|\"candidate\"|\"read\"|\"write\"|\"permit\",
   \"lease_id\": \"HEX\"|null, \"ttl_left_secs\": N|null, \"fencing_token\": N|null,
   \"value\": \"TEXT\"|null}
ttl_left_secs is null when the lease has just expired (or on memory://); fencing_token is \
the key's create revision on etcd (null for a memory waiter); value is the key's value as \
text (invalid UTF-8 replaced).";

/// The text `list` prints.
const LIST_HELP: &str = "\
One line per queue with a holder or a waiter, sorted by name, tab-separated:
  NAME  PRIMITIVE  HOLDER-KEY (lease HEX, TTL 8s left) [(+N more)]  waiting N
A reader-writer lock NAME and a lock NAME/read (or NAME/write) share keys on etcd; they are \
listed as the reader-writer lock. --json prints the array `status --json` prints.";

/// How a command run under a hold is stopped.
#[derive(Args)]
struct RunOptions {
    /// Seconds a command has to exit after SIGTERM (sent when the hold is lost or locksmith
    /// is asked to stop) before it gets SIGKILL.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    kill_after: Duration,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| format!("{text:?} is not a number of seconds"))
}

/// Why the program stops, and with which status.
pub enum Outcome {
    /// Exit with this status.
    Exit(u8),
    /// Print this line (after `locksmith: `) and exit with status 1.
    Failed(String),
}

impl From<LockError> for Outcome {
    fn from(err: LockError) -> Self {
        Outcome::Failed(one_line(&err))
    }
}

/// What is held, for messages: `lock "NAME"`.
pub struct Held {
    what: &'static str,
    name: String,
}

impl Held {
    fn new(what: &'static str, name: &str) -> Self {
        Held {
            what,
            name: name.to_owned(),
        }
    }

    fn leadership(name: &str) -> Self {
        Held::new("leadership of", name)
    }
}

impl fmt::Display for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.what, self.name)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match LockConfig::from_url(&cli.url) {
        Ok(config) => config,
        Err(err) => return finish(err.into()),
    };
    let outcome = match cli.command {
        Commands::Lock(args) => hold::run(&config, Acquire::Lock, args).await,
        Commands::Read(args) => hold::run(&config, Acquire::Read, args).await,
        Commands::Write(args) => hold::run(&config, Acquire::Write, args).await,
        Commands::Semaphore { limit, args } => {
            hold::run(&config, Acquire::Permit { limit }, args).await
        }
        Commands::Elect {
            listen,
            name,
            proposal,
            command,
            run,
            quiet,
        } => match Session::connect(&config).await {
            Ok(session) => {
                let outcome = match proposal {
                    Some(proposal) if !listen => {
                        use std::os::unix::ffi::OsStrExt;
                        let waiting = Waiting::new(&session, quiet);
                        let campaign = elect::Campaign {
                            name: &name,
                            proposal: proposal.as_bytes(),
                            command: &command,
                            run: &run,
                        };
                        elect::campaign(&session.coordination, campaign, &waiting).await
                    }
                    _ => elect::listen(&session.coordination, &name).await,
                };
                session.close().await;
                outcome
            }
            Err(err) => err.into(),
        },
        Commands::Status {
            name,
            primitive,
            json,
        } => match Session::connect(&config).await {
            Ok(session) => {
                let outcome =
                    status::status(session.view.as_ref(), &name, primitive.which(), json).await;
                session.close().await;
                outcome
            }
            Err(err) => err.into(),
        },
        Commands::List { prefix, json } => match Session::connect(&config).await {
            Ok(session) => {
                let outcome = status::list(session.view.as_ref(), &prefix, json).await;
                session.close().await;
                outcome
            }
            Err(err) => err.into(),
        },
    };
    finish(outcome)
}

fn finish(outcome: Outcome) -> ExitCode {
    match outcome {
        Outcome::Exit(code) => ExitCode::from(code),
        Outcome::Failed(message) => {
            eprintln!("locksmith: {}", message.replace('\n', " "));
            ExitCode::from(1)
        }
    }
}

/// The outcome after releasing: a failed release fails an otherwise successful run.
fn release(released: Result<(), LockError>, outcome: Outcome) -> Outcome {
    match (released, outcome) {
        (Err(err), Outcome::Exit(0)) => err.into(),
        (_, outcome) => outcome,
    }
}

/// Holds until SIGINT or SIGTERM (success) or `lost` (failure).
async fn hold_until_signal(
    lost: impl Future<Output = LossReason>,
    held: &Held,
    stop: &mut Signals,
) -> Outcome {
    tokio::select! {
        _ = stop.recv() => Outcome::Exit(0),
        reason = lost => Outcome::Failed(format!("{held} lost ({reason})")),
    }
}

/// Prints lines on stdout; a closed stdout (a reader that went away) is a failure.
fn print_lines(lines: &[&str]) -> Result<(), Outcome> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    lines
        .iter()
        .try_for_each(|line| writeln!(stdout, "{line}"))
        .and_then(|()| stdout.flush())
        .map_err(|err| Outcome::Failed(format!("cannot write to stdout: {err}")))
}

/// The error and its causes on one line.
fn one_line(err: &LockError) -> String {
    let mut line = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        // Messages that already quote their cause are not repeated.
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line.replace('\n', " ")
}
