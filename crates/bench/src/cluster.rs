//! A Ferry cluster for the benches: `ferry init` in a temporary directory, brokers as real
//! `ferry broker` child processes (`ferry_harness::Process`: killed when dropped, also when a
//! scenario fails), and the admin-API calls the scenarios make. Every wait has a deadline.
//! The ports, `ferry init`'s layout and the one-broker client configs come from
//! `ferry-harness`, which the end-to-end tests share.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Deadline of one admin-API call made while waiting for a condition: a dead node answers
/// at once (connection refused), a live one well within it.
const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The user every bench logs in as, the group it is in, and its password.
pub(crate) const USER: &str = "bench";
pub(crate) const PASSWORD: &str = "bench-password";
/// Group of the benches' hosts; the bench user is granted it.
const HOST_GROUP: &str = "sinks";

/// A `ferry init` cluster whose brokers this process runs as children.
pub(crate) struct Cluster {
    /// Broker processes, b1 first. Declared before `dir` so they are killed before their
    /// files are removed.
    pub nodes: Vec<Broker>,
    /// Holds the cluster's files and the brokers' logs; removed on drop.
    dir: tempfile::TempDir,
    /// The admin API's bearer token (`admin.token`).
    pub token: String,
    /// Client for admin-API calls; each call bounds itself with a timeout.
    pub http: reqwest::Client,
}

impl Cluster {
    /// Runs `ferry init --brokers N` in a new temporary directory named `ferry-bench-<name>-`.
    /// No broker is started yet (a scenario may edit the configs first).
    pub fn init(name: &str, brokers: u16) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ferry-bench-{name}-"))
            .tempdir()?;
        let files = dir.path().join("cluster");
        let base = ferry_harness::free_port_block(brokers)?;
        let layout = ferry_harness::Layout { base_port: base };
        ferry(
            &[
                "init",
                "--out",
                path(&files),
                "--base-port",
                &base.to_string(),
                "--brokers",
                &brokers.to_string(),
                "--cluster-name",
                "bench",
                "--admin-plain-http",
            ],
            None,
        )?;
        let token = std::fs::read_to_string(files.join("admin.token"))?
            .trim()
            .to_owned();
        let nodes = (1..=brokers)
            .map(|i| Broker {
                name: format!("b{i}"),
                config: files.join(format!("b{i}.toml")),
                log: dir.path().join(format!("b{i}.log")),
                process: None,
                admin: layout.admin_url(i),
            })
            .collect();
        Ok(Self {
            nodes,
            dir,
            token,
            http: reqwest::Client::builder().build()?,
        })
    }

    /// The directory of the cluster's files (configs, certificates, client.toml).
    pub fn files(&self) -> PathBuf {
        self.dir.path().join("cluster")
    }

    /// The run's scratch directory (logs, host state).
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    pub fn client_config(&self) -> PathBuf {
        self.files().join("client.toml")
    }

    /// Admin API base URLs, b1 first.
    pub fn admins(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.admin.clone()).collect()
    }

    pub fn start_all(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            node.start()?;
        }
        Ok(())
    }

    /// Writes a copy of client.toml that names only broker `nodes[node]`, so that endpoints
    /// using it attach there (they learn the other brokers from it at connect time).
    pub fn client_config_for(&self, node: usize) -> anyhow::Result<PathBuf> {
        let name = &self.nodes[node].name;
        let text = std::fs::read_to_string(self.client_config())?;
        let only = ferry_harness::naming_only(&text, name)
            .with_context(|| format!("client.toml lists no broker {name}"))?;
        let out = self.files().join(format!("client-{name}.toml"));
        std::fs::write(&out, only)?;
        Ok(out)
    }

    /// Adds the bench user, enrolls host `host` and grants the user its group; returns the
    /// host's one-time enrollment token.
    pub fn provision(&self, host: &str) -> anyhow::Result<String> {
        let config = self.client_config();
        let config = path(&config);
        ferry(
            &[
                "admin",
                "--config",
                config,
                "user",
                "add",
                USER,
                "--group",
                USER,
                "--password-stdin",
            ],
            Some(&format!("{PASSWORD}\n")),
        )?;
        let token = ferry(
            &[
                "admin", "--config", config, "host", "enroll", host, "--group", HOST_GROUP,
            ],
            None,
        )?;
        ferry(
            &["admin", "--config", config, "grant", USER, HOST_GROUP],
            None,
        )?;
        Ok(token.trim().to_owned())
    }

    /// `GET /v1/status` of node `node`, if it answers.
    pub async fn status(&self, node: usize) -> Option<serde_json::Value> {
        status(&self.http, &self.nodes[node].admin, &self.token).await
    }

    /// Waits until node `node` says host `host` is attached to it.
    pub async fn wait_host_attached(
        &self,
        node: usize,
        host: &str,
        deadline: Duration,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < deadline {
            let attached = self.status(node).await.is_some_and(|s| {
                s["hosts_attached"]
                    .as_array()
                    .is_some_and(|hs| hs.iter().any(|h| h == host))
            });
            if attached {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "host {host} did not attach to {} within {deadline:?}",
            self.nodes[node].name
        )
    }

    /// Index (from 0) of the node that leads.
    pub async fn wait_for_leader(&self, deadline: Duration) -> anyhow::Result<usize> {
        wait_for_leader(&self.http, &self.admins(), &self.token, deadline).await
    }

    /// See [`wait_caught_up`].
    pub async fn wait_caught_up(&self, deadline: Duration) -> anyhow::Result<()> {
        wait_caught_up(&self.http, &self.admins(), &self.token, deadline).await
    }

    /// Sum of every series of metric `name` on node `node` (`/metrics`, no token needed), or
    /// `None` if the node does not answer.
    pub async fn metric(&self, node: usize, name: &str) -> Option<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.nodes[node].admin))
            .timeout(ADMIN_CALL_TIMEOUT)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(
            text.lines()
                .filter(|l| {
                    l.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with(['{', ' ']))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                // Not `sum()`: that gives -0.0 for no series at all.
                .fold(0.0, |total, v| total + v),
        )
    }
}

/// One `ferry broker` child process; killed (SIGKILL) when dropped (by its `Process`).
pub(crate) struct Broker {
    /// Node id (`b1`, ...).
    pub name: String,
    config: PathBuf,
    /// Its stdout and stderr, appended across restarts.
    log: PathBuf,
    /// The running process, if it runs.
    process: Option<ferry_harness::Process>,
    /// Admin API base URL.
    pub admin: String,
}

impl Broker {
    pub fn start(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["broker", "--config", path(&self.config)])
            .env("FERRY_LOG", "warn");
        self.process = Some(ferry_harness::Process::spawn(
            &self.name, command, &self.log,
        )?);
        Ok(())
    }

    /// SIGKILL, then reaps the process.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ferry_harness::Process::pid)
    }

    /// Waits until the admin API accepts connections.
    pub async fn wait_listening(&self, deadline: Duration) -> anyhow::Result<()> {
        let authority = self
            .admin
            .strip_prefix("http://")
            .expect("admin URLs are built as http://ip:port above");
        let start = Instant::now();
        while start.elapsed() < deadline {
            if tokio::net::TcpStream::connect(authority).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!(
            "the admin API of broker {} did not come up within {deadline:?} (log: {})",
            self.name,
            self.log.display()
        )
    }
}

pub(crate) fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// Runs a `ferry` subcommand (this very binary) and returns its stdout.
pub(crate) fn ferry(args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ferry {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) async fn status(
    http: &reqwest::Client,
    admin: &str,
    token: &str,
) -> Option<serde_json::Value> {
    let response = http
        .get(format!("{admin}/v1/status"))
        .bearer_auth(token)
        .timeout(ADMIN_CALL_TIMEOUT)
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

/// Index (from 0) of the node that leads.
pub(crate) async fn wait_for_leader(
    http: &reqwest::Client,
    admins: &[String],
    token: &str,
    deadline: Duration,
) -> anyhow::Result<usize> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        for (i, admin) in admins.iter().enumerate() {
            if status(http, admin, token)
                .await
                .is_some_and(|s| s["raft"]["role"] == "leader")
            {
                return Ok(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("no leader within {deadline:?}")
}

/// Waits for a steady cluster: every node answers, all name the same leader, and every node
/// has applied what that leader had committed when first asked. A scenario's next fault is
/// about a healthy cluster, not about one still catching up from the previous one.
pub(crate) async fn wait_caught_up(
    http: &reqwest::Client,
    admins: &[String],
    token: &str,
    deadline: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        let mut statuses = Vec::new();
        for admin in admins {
            statuses.push(status(http, admin, token).await.map(|s| s["raft"].clone()));
        }
        let statuses: Option<Vec<serde_json::Value>> = statuses.into_iter().collect();
        if let Some(raft) = statuses {
            let leader = &raft[0]["leader"];
            let commit = raft
                .iter()
                .find(|r| r["role"] == "leader")
                .and_then(|r| r["commit"].as_u64());
            let steady = leader.as_u64().is_some_and(|l| l != 0)
                && raft.iter().all(|r| &r["leader"] == leader)
                && commit.is_some_and(|c| raft.iter().all(|r| r["applied"].as_u64() >= Some(c)));
            if steady {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the cluster did not settle within {deadline:?}")
}
