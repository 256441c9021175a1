//! One harness for Ferry clusters made of real processes, shared by the end-to-end tests
//! (`tests/common`) and `ferry bench` (`ferry-bench`'s `cluster.rs`): what both need and wrote
//! twice before.
//!
//! - [`free_port_block`]: ports for `ferry init --base-port`, free on 127.0.0.1;
//! - [`Layout`]: `ferry init`'s port layout (node i: relay, admin, peers);
//! - [`naming_only`]: a client.toml that names one broker, so endpoints attach there;
//! - [`Process`]: a child process with its output in a log file, killed when dropped (also
//!   when a test or a scenario fails), whose log is printed when dropped during a panic.
//!
//! Architecture invariant: no waiting here without a deadline, and nothing left running: every
//! process started through [`Process`] dies with its handle.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Why the harness could not do something.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no free block of ports for {nodes} nodes found on 127.0.0.1 in {tries} tries")]
    NoPorts { nodes: u16, tries: u32 },
    #[error("cannot start {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("cannot open the log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How long [`Process::terminate`] waits for a clean exit before it kills.
const TERMINATE_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(15);
/// Tries at finding a free block before giving up.
const PORT_TRIES_MAX: u32 = 200;

/// A base port `p` such that for each of `nodes` nodes i (from 0), UDP `p+10i`, TCP `p+10i+1`
/// and UDP `p+10i+2` (relay, admin, peers: [`Layout`]) are free on 127.0.0.1. Another process
/// may take one before it is used: the caller's start-up fails then, and says which.
pub fn free_port_block(nodes: u16) -> Result<u16, Error> {
    use rand::Rng;
    use std::net::{TcpListener, UdpSocket};
    'search: for _ in 0..PORT_TRIES_MAX {
        let p: u16 = rand::thread_rng().gen_range(20_000..60_000);
        let mut held = Vec::new();
        for i in 0..nodes {
            let base = p + 10 * i;
            let (Ok(a), Ok(b), Ok(c)) = (
                UdpSocket::bind(("127.0.0.1", base)),
                TcpListener::bind(("127.0.0.1", base + 1)),
                UdpSocket::bind(("127.0.0.1", base + 2)),
            ) else {
                continue 'search;
            };
            held.push((a, b, c));
        }
        return Ok(p);
    }
    Err(Error::NoPorts {
        nodes,
        tries: PORT_TRIES_MAX,
    })
}

/// `ferry init --base-port BASE`'s layout: node `i` (from 1, brokers first, then witnesses)
/// has its relay on UDP `BASE + 10(i-1)`, its admin API on TCP `+1`, its peer link on UDP
/// `+2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub base_port: u16,
}

impl Layout {
    pub fn relay_port(&self, i: u16) -> u16 {
        self.base_port + 10 * (i - 1)
    }

    pub fn admin_port(&self, i: u16) -> u16 {
        self.relay_port(i) + 1
    }

    pub fn peer_port(&self, i: u16) -> u16 {
        self.relay_port(i) + 2
    }

    /// The admin API's base URL of node `i` (plain HTTP on loopback, as `ferry init` sets it).
    pub fn admin_url(&self, i: u16) -> String {
        format!("http://127.0.0.1:{}", self.admin_port(i))
    }
}

/// `client_toml` (a cluster's client.toml) with only broker `node_id` in its broker list, so
/// that an endpoint using it attaches there (it learns the other brokers at connect time).
/// `None` when the file lists no such broker.
pub fn naming_only(client_toml: &str, node_id: &str) -> Option<String> {
    let mut blocks = client_toml.split("[[brokers]]");
    let header = blocks.next().unwrap_or_default();
    let wanted = format!("node_id = \"{node_id}\"");
    let block = blocks.find(|b| b.contains(&wanted))?;
    Some(format!("{header}[[brokers]]{block}"))
}

/// A child process whose stdout and stderr go to a log file (appended: a restarted node keeps
/// one log), killed (SIGKILL) and reaped when dropped. Dropped while the thread panics, it
/// prints its log, so a failed test shows what each process said.
pub struct Process {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    /// Starts `command` (as the caller prepared it: program, arguments, environment) with its
    /// stdin closed and its stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Self, Error> {
        let log_error = |source| Error::Log {
            path: log.to_owned(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(log_error)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().map_err(log_error)?)
            .stderr(file)
            .spawn()
            .map_err(|source| Error::Spawn {
                name: name.to_owned(),
                source,
            })?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL (`Child::kill` on unix), then reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (at most `TERMINATE_WAIT_MAX`, 15 s) for the process to exit;
    /// past that, kills it. Returns how it ended: a process that had to be killed shows it.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg(self.pid().to_string()).status();
        let deadline = std::time::Instant::now() + TERMINATE_WAIT_MAX;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        let _ = self.child.kill();
        self.child
            .wait()
            .expect("waiting for our own child, killed a moment ago, cannot fail")
    }

    /// What the process has written so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident memory in KiB, from /proc (0 where it cannot be read).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log_text()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_ferry_inits() {
        let layout = Layout { base_port: 30_000 };
        assert_eq!(
            (
                layout.relay_port(1),
                layout.admin_port(1),
                layout.peer_port(1)
            ),
            (30_000, 30_001, 30_002)
        );
        assert_eq!(layout.admin_url(3), "http://127.0.0.1:30021");
    }

    #[test]
    fn naming_only_keeps_the_header_and_one_broker() {
        let toml = "cluster = \"c\"\n[[brokers]]\nnode_id = \"b1\"\naddr = \"x\"\n\
                    [[brokers]]\nnode_id = \"b2\"\naddr = \"y\"\n";
        let only = naming_only(toml, "b2").expect("b2 is listed");
        assert_eq!(
            only,
            "cluster = \"c\"\n[[brokers]]\nnode_id = \"b2\"\naddr = \"y\"\n"
        );
        assert!(naming_only(toml, "b9").is_none());
    }

    #[test]
    fn a_process_dies_with_its_handle() {
        let dir = std::env::temp_dir().join(format!("ferry-harness-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let log = dir.join("sleep.log");
        let mut sleep = Command::new("sleep");
        sleep.arg("30");
        let process = Process::spawn("sleep", sleep, &log).expect("sleep starts");
        let pid = process.pid();
        drop(process);
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ");
        assert!(!alive, "process {pid} outlived its handle");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
