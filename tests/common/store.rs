//! Harness for the start-up and corruption tests: data directories, state digests, a
//! background writer that records which writes were acknowledged, and leadership per term.

use super::{admin_request, wait_for, World};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

impl World {
    /// Node `name`'s data directory (`ferry init` puts it in `<cluster>/data/<name>`).
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.cluster().join("data").join(name)
    }

    /// The quarantined stores of node `name`, oldest first.
    pub fn quarantined(&self, name: &str) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.data_dir(name).join("quarantine"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        dirs.sort();
        dirs
    }

    /// Node `i`'s (raft id, applied index, state digest).
    pub fn state_digest(&self, i: u8) -> Option<(u64, u64, String)> {
        let (code, body) = self.admin_get(i, "/v1/state/digest")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| code == 200)?;
        Some((
            v["raft_id"].as_u64()?,
            v["applied"].as_u64()?,
            v["digest"].as_str()?.to_owned(),
        ))
    }

    /// Waits until `nodes` have applied the same index with the same state digest; returns it.
    pub fn wait_same_state(&self, nodes: &[u8]) -> (u64, String) {
        wait_for(
            "the same state on every node",
            Duration::from_secs(30),
            || {
                let all: Vec<(u64, u64, String)> = nodes
                    .iter()
                    .map(|i| self.state_digest(*i))
                    .collect::<Option<_>>()?;
                let (_, applied, digest) = all[0].clone();
                all.iter()
                    .all(|(_, a, d)| *a == applied && *d == digest)
                    .then_some((applied, digest))
            },
        )
    }

    /// Names of the hosts in node `i`'s applied state.
    pub fn hosts_on(&self, i: u8) -> Option<BTreeSet<String>> {
        let (code, body) = self.admin_get(i, "/v1/hosts")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| code == 200)?;
        v["hosts"]
            .as_array()?
            .iter()
            .map(|h| h["name"].as_str().map(str::to_owned))
            .collect()
    }

    /// Every audit record node `i` holds, page by page.
    pub fn audit_records(&self, i: u8) -> Vec<serde_json::Value> {
        let mut records = Vec::new();
        let mut after = 0;
        loop {
            let (_, body) = self
                .admin_get(i, &format!("/v1/audit?after={after}"))
                .expect("the audit log");
            let page: serde_json::Value = serde_json::from_str(&body).unwrap();
            let page = page["records"].as_array().unwrap().clone();
            let Some(last) = page.last() else {
                return records;
            };
            after = last["seq"].as_u64().unwrap();
            records.extend(page);
        }
    }

    /// Node `i`'s `/readyz` answered 200.
    pub fn is_ready(&self, i: u8) -> bool {
        super::http_get(&format!("{}/readyz", self.admin_url_of(i)))
            .is_some_and(|(code, _)| code == 200)
    }
}

/// Enrolls hosts `w-1`, `w-2`, ... through the admin API of the nodes it is told to use, one
/// at a time, and records each name the API acknowledged (HTTP 200: durable on a quorum).
pub struct Writer {
    shared: Arc<WriterShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct WriterShared {
    stop: AtomicBool,
    paused: AtomicBool,
    /// Set by the thread while a write is in flight.
    busy: AtomicBool,
    /// Admin URLs to write through, in turn.
    targets: Mutex<Vec<String>>,
    acked: Mutex<Vec<String>>,
    attempted: Mutex<u64>,
}

impl Writer {
    pub fn start(world: &World, nodes: &[u8]) -> Self {
        let token = std::fs::read_to_string(world.cluster().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        let shared = Arc::new(WriterShared {
            stop: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            targets: Mutex::new(nodes.iter().map(|i| world.admin_url_of(*i)).collect()),
            acked: Mutex::new(Vec::new()),
            attempted: Mutex::new(0),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !shared.stop.load(Ordering::Acquire) {
                    if shared.paused.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    shared.busy.store(true, Ordering::Release);
                    if shared.paused.load(Ordering::Acquire) {
                        shared.busy.store(false, Ordering::Release);
                        continue;
                    }
                    n += 1;
                    let targets = shared.targets.lock().unwrap().clone();
                    let url = &targets[n as usize % targets.len()];
                    let name = format!("w-{n}");
                    let body = format!(r#"{{"name":"{name}","groups":["trial"]}}"#);
                    *shared.attempted.lock().unwrap() += 1;
                    if let Some((200, _)) = admin_request(url, &token, "POST", "/v1/hosts", &body) {
                        shared.acked.lock().unwrap().push(name);
                    }
                    shared.busy.store(false, Ordering::Release);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Self {
            shared,
            thread: Some(thread),
        }
    }

    /// Writes go only through these nodes from now on.
    pub fn use_nodes(&self, world: &World, nodes: &[u8]) {
        *self.shared.targets.lock().unwrap() =
            nodes.iter().map(|i| world.admin_url_of(*i)).collect();
    }

    /// Stops writing and waits for a write in flight to finish.
    pub fn pause(&self) {
        self.shared.paused.store(true, Ordering::Release);
        wait_for("the writer to pause", Duration::from_secs(130), || {
            (!self.shared.busy.load(Ordering::Acquire)).then_some(())
        });
    }

    pub fn resume(&self) {
        self.shared.paused.store(false, Ordering::Release);
    }

    pub fn acked(&self) -> Vec<String> {
        self.shared.acked.lock().unwrap().clone()
    }

    pub fn attempted(&self) -> u64 {
        *self.shared.attempted.lock().unwrap()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Every "this node leads" line of the given node logs: term -> the raft ids that led it.
pub fn leaders_by_term(logs: &[String]) -> BTreeMap<u64, BTreeSet<u64>> {
    let mut terms: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let field = |line: &str, name: &str| -> Option<u64> {
        let rest = &line[line.find(name)? + name.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    for line in logs.iter().flat_map(|l| l.lines()) {
        if !line.contains("this node leads") {
            continue;
        }
        if let (Some(term), Some(id)) = (field(line, "term="), field(line, "raft_id=")) {
            terms.entry(term).or_default().insert(id);
        }
    }
    terms
}
