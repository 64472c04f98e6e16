//! SIGINT and SIGTERM, the two ways to stop `locksmith`.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// A signal that asks `locksmith` to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Interrupt,
    Terminate,
}

impl Stop {
    /// The conventional status of a program that stops on this signal (128 + its number).
    pub fn exit_code(self) -> u8 {
        match self {
            Stop::Interrupt => 130,
            Stop::Terminate => 143,
        }
    }
}

/// Listens for SIGINT and SIGTERM from its creation on.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    pub fn new() -> Result<Self, String> {
        let listen = |kind| signal(kind).map_err(|err| format!("cannot listen for signals: {err}"));
        Ok(Signals {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
        })
    }

    /// The next SIGINT or SIGTERM. Cancel-safe: a signal that arrives while nobody waits is
    /// kept for the next call.
    pub async fn recv(&mut self) -> Stop {
        tokio::select! {
            _ = self.interrupt.recv() => Stop::Interrupt,
            _ = self.terminate.recv() => Stop::Terminate,
        }
    }
}
