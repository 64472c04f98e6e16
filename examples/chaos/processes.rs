//! The client processes the orchestrator starts, signals and kills.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use locksmith_etcd::testing::all_threads_stopped;
use rand::Rng;

use crate::Error;

/// The client processes, by id.
pub struct Clients {
    pub dir: PathBuf,
    pub endpoints: String,
    pub ttl: u64,
    pub auth: bool,
    pub running: Vec<(String, Child)>,
    pub started: usize,
}

impl Clients {
    pub fn spawn(&mut self) -> Result<(), Error> {
        self.started += 1;
        let id = format!("c{}", self.started);
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["--client", &id, "--endpoints", &self.endpoints])
            .args(["--ttl", &self.ttl.to_string()])
            .arg("--log")
            .arg(self.dir.join(format!("{id}.log")));
        if self.auth {
            command.arg("--auth");
        }
        let child = command
            .env_remove("CHAOS_AUTH")
            .env_remove("CHAOS_SECS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join(format!("{id}.err")))?)
            .spawn()?;
        self.running.push((id, child));
        Ok(())
    }

    pub fn random_index(&self) -> usize {
        rand::thread_rng().gen_range(0..self.running.len().max(1))
    }

    /// Sends `signal` to a client; a SIGSTOP returns once every thread of the process has
    /// stopped (`kill` returns earlier, and the client may go on for milliseconds: a pause
    /// stamped before that would miss the holds it still takes).
    pub fn signal(&self, index: usize, signal: &str) -> Option<String> {
        let (id, child) = self.running.get(index)?;
        let ok = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if ok && signal == "-STOP" {
            let tasks = PathBuf::from(format!("/proc/{}/task", child.id()));
            let deadline = Instant::now() + Duration::from_secs(5);
            while !all_threads_stopped(&tasks).unwrap_or(true) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        ok.then(|| id.clone())
    }

    pub fn kill(&mut self, index: usize) -> Option<String> {
        if index >= self.running.len() {
            return None;
        }
        let (id, mut child) = self.running.remove(index);
        let _ = child.kill();
        let _ = child.wait();
        Some(id)
    }

    /// SIGTERM to all (they close their sessions), then SIGKILL to the slow ones.
    pub fn stop_all(&mut self) {
        for index in 0..self.running.len() {
            self.signal(index, "-TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(6);
        for (_, child) in &mut self.running {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.running.clear();
    }
}
