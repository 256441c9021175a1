//! Shared harness of the end-to-end tests: real `ferry` processes on loopback.
//!
//! Every process is killed when its handle drops (also when a test fails), every wait has a
//! deadline, and each test works in its own temporary directory, printed on failure.

#![allow(dead_code)]

pub mod chromium;
pub mod echo;
pub mod gate;
pub mod promtool;
pub mod ssh;
pub mod store;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
/// Password of user alice in [`World::alice_reaching`].
pub const ALICE_PASSWORD: &str = "correct horse battery";

/// Polls `check` every 25 ms until it returns `Some`, or panics after `deadline` naming `what`.
pub fn wait_for<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A port `p` such that UDP `p` and TCP `p + 1` are free on 127.0.0.1 (a broker's relay and admin).
pub fn free_base_port() -> u16 {
    free_port_block(1)
}

/// A base port for `nodes` nodes in `ferry init`'s layout, free on 127.0.0.1 (the harness's
/// `free_port_block`).
pub fn free_port_block(nodes: u8) -> u16 {
    ferry_harness::free_port_block(nodes.into()).expect("loopback has free ports")
}

/// A child process killed on drop, its output in `<dir>/<name>.log` (the shared harness's
/// `Process`).
pub use ferry_harness::Process as Proc;

/// Output of a finished command.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Asserts success and returns stdout.
    pub fn ok(self) -> String {
        assert_eq!(self.code, 0, "command failed: {self:?}");
        self.stdout
    }

    /// Asserts failure with `code` and that stderr mentions `fragment`.
    pub fn fails(self, code: i32, fragment: &str) {
        assert_eq!(self.code, code, "wrong exit code: {self:?}");
        assert!(
            self.stderr.contains(fragment),
            "stderr should mention {fragment:?}: {self:?}"
        );
    }
}

/// A test's world: a temporary directory, a cluster in it, a private config home.
pub struct World {
    pub dir: tempfile::TempDir,
    pub base_port: u16,
}

impl World {
    /// Runs `ferry init` in a new temporary directory.
    pub fn init() -> Self {
        Self::init_brokers(1)
    }

    /// Runs `ferry init --brokers N`: node i (from 1) uses base+10(i-1) (relay), +1 (admin),
    /// +2 (peers).
    pub fn init_brokers(brokers: u8) -> Self {
        Self::init_cluster(brokers, 0)
    }

    /// `ferry init --brokers B --witnesses W`: brokers b1..bB, then witnesses w1..wW, node i
    /// (from 1, brokers first) on base+10(i-1).
    pub fn init_cluster(brokers: u8, witnesses: u8) -> Self {
        Self::init_with_room(brokers, witnesses, 0)
    }

    /// As `init_cluster`, with free ports for `spare` nodes added later (`ferry init --join`).
    pub fn init_with_room(brokers: u8, witnesses: u8, spare: u8) -> Self {
        Self::init_using(Path::new(FERRY), brokers, witnesses, spare)
    }

    /// As `init_with_room`, with `ferry init` run by the binary `bin` (another release).
    pub fn init_using(bin: &Path, brokers: u8, witnesses: u8, spare: u8) -> Self {
        let mut dir = tempfile::Builder::new()
            .prefix("ferry-e2e-")
            .tempdir()
            .expect("temp dir");
        // For investigations: keep the directory (configs, stores, every process's log).
        if std::env::var_os("FERRY_E2E_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping {}", dir.path().display());
        }
        let base_port = free_port_block(brokers + witnesses + spare);
        let world = Self { dir, base_port };
        world
            .ferry_using(
                bin,
                &[
                    "init",
                    "--out",
                    world.cluster().to_str().unwrap(),
                    "--base-port",
                    &base_port.to_string(),
                    "--cluster-name",
                    "e2e",
                    // The tests' own HTTP helpers speak plain HTTP on loopback; `ferry admin`
                    // speaks HTTPS through client.toml.
                    "--admin-plain-http",
                    "--brokers",
                    &brokers.to_string(),
                    "--witnesses",
                    &witnesses.to_string(),
                ],
            )
            .ok();
        world
    }

    /// A pair and a witness (`ferry init --brokers 2 --witnesses 1`), started, with a leader
    /// (`ferry admin status` answers): the nodes b1, b2, w1, in that order.
    pub fn pair_with_witness() -> (Self, Vec<Proc>) {
        let w = Self::init_cluster(2, 1);
        let nodes = vec![
            w.start_named("b1", 1),
            w.start_named("b2", 2),
            w.start_named("w1", 3),
        ];
        wait_for("a leader", Duration::from_secs(20), || {
            (w.admin(&["status"]).code == 0).then_some(())
        });
        (w, nodes)
    }

    /// Admin API base URL of node `i` (from 1).
    pub fn admin_url_of(&self, i: u8) -> String {
        self.layout().admin_url(i.into())
    }

    /// `ferry init`'s port layout of this world's cluster.
    pub fn layout(&self) -> ferry_harness::Layout {
        ferry_harness::Layout {
            base_port: self.base_port,
        }
    }

    /// Starts broker b`i` and waits until its admin API answers (it need not have a leader).
    pub fn start_node(&self, i: u8) -> Proc {
        self.start_named(&format!("b{i}"), i)
    }

    /// Starts node `name` (`b2`, `w1`), the `position`-th node (from 1) in port order.
    pub fn start_named(&self, name: &str, position: u8) -> Proc {
        self.start_named_using(Path::new(FERRY), name, position)
    }

    /// As `start_named`, running the binary `bin` (another release).
    pub fn start_named_using(&self, bin: &Path, name: &str, position: u8) -> Proc {
        let i = position;
        let config = self.cluster().join(format!("{name}.toml"));
        let mut broker = self.spawn_using(
            bin,
            &format!("node-{name}"),
            &["broker", "--config", config.to_str().unwrap()],
        );
        let url = format!("{}/healthz", self.admin_url_of(i));
        wait_for(
            &format!("node {name} to answer"),
            Duration::from_secs(20),
            || {
                if let Ok(Some(status)) = broker.child.try_wait() {
                    panic!(
                        "node {name} exited early with {status}:\n{}",
                        broker.log_text()
                    );
                }
                http_get(&url).filter(|(code, _)| *code == 200)
            },
        );
        broker
    }

    /// `ferry admin --node b<i> ARGS`.
    pub fn admin_on(&self, i: u8, args: &[&str]) -> Output {
        let config = self.client_config();
        let node = format!("b{i}");
        let mut full = vec![
            "admin",
            "--config",
            config.as_str(),
            "--node",
            node.as_str(),
        ];
        full.extend_from_slice(args);
        self.ferry(&full)
    }

    /// A copy of client.toml that names only broker b<i>, so endpoints using it attach there.
    pub fn client_config_for(&self, i: u8) -> String {
        let text = std::fs::read_to_string(self.cluster().join("client.toml")).unwrap();
        let only = ferry_harness::naming_only(&text, &format!("b{i}"))
            .expect("client.toml lists the node");
        let path = self.cluster().join(format!("client-b{i}.toml"));
        std::fs::write(&path, only).unwrap();
        path.display().to_string()
    }

    /// Which of `nodes` (broker numbers) says it leads, if any answers so.
    pub fn leader_among(&self, nodes: &[u8]) -> Option<u8> {
        nodes.iter().copied().find(|&i| {
            self.status_of(i)
                .is_some_and(|status| status["raft"]["role"] == "leader")
        })
    }

    /// The user groups of every grant on broker b<i> (the tests' writes are grants).
    pub fn grants_on(&self, i: u8) -> std::collections::BTreeSet<String> {
        let out = self.admin_on(i, &["grants", "--json"]).ok();
        let grants: serde_json::Value = serde_json::from_str(&out).unwrap();
        grants["grants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["user_group"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Node b<i>'s status as JSON, if it answers.
    pub fn status_of(&self, i: u8) -> Option<serde_json::Value> {
        let out = self.admin_on(i, &["node", "--json"]);
        (out.code == 0)
            .then(|| serde_json::from_str(&out.stdout).ok())
            .flatten()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cluster(&self) -> PathBuf {
        self.path().join("cluster")
    }

    pub fn client_config(&self) -> String {
        self.cluster().join("client.toml").display().to_string()
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.base_port + 1)
    }

    pub fn relay_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base_port))
    }

    /// A `ferry` command with this world's private config home (token cache).
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_using(Path::new(FERRY), args)
    }

    /// A `bin` command (this build's `ferry` or another release's) in this world.
    pub fn command_using(&self, bin: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env("XDG_CONFIG_HOME", self.path().join("config-home"))
            .env_remove("FERRY_PASSWORD")
            .env_remove("FERRY_ADMIN_TOKEN")
            .env_remove("FERRY_CONFIG")
            .env("FERRY_LOG", "info");
        cmd
    }

    /// Runs a `ferry` command to completion (at most 60 s) with optional stdin.
    pub fn ferry_with(&self, args: &[&str], stdin: Option<&str>, envs: &[(&str, &str)]) -> Output {
        self.run_using(Path::new(FERRY), args, stdin, envs)
    }

    /// `bin ARGS` to completion (at most 60 s).
    pub fn ferry_using(&self, bin: &Path, args: &[&str]) -> Output {
        self.run_using(bin, args, None, &[])
    }

    fn run_using(
        &self,
        bin: &Path,
        args: &[&str],
        stdin: Option<&str>,
        envs: &[(&str, &str)],
    ) -> Output {
        let mut cmd = self.command_using(bin, args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let input = stdin.map(|s| s.as_bytes().to_vec());
        let (code, stdout, stderr) = run_with_deadline(cmd, input, Duration::from_secs(60));
        Output {
            code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr,
        }
    }

    pub fn ferry(&self, args: &[&str]) -> Output {
        self.ferry_with(args, None, &[])
    }

    /// Starts a long-running `ferry` process (broker, host, connect).
    pub fn spawn(&self, name: &str, args: &[&str]) -> Proc {
        self.spawn_using(Path::new(FERRY), name, args)
    }

    /// As `spawn`, running the binary `bin` (another release).
    pub fn spawn_using(&self, bin: &Path, name: &str, args: &[&str]) -> Proc {
        let log = self.path().join(format!("{name}.log"));
        // A fresh log per start: a test reads what this run of the process said.
        std::fs::File::create(&log).unwrap();
        Proc::spawn(name, self.command_using(bin, args), &log).expect("spawn ferry")
    }

    /// Starts broker b1 and waits until its admin API answers.
    pub fn start_broker(&self) -> Proc {
        let config = self.cluster().join("b1.toml");
        let mut broker = self.spawn(
            "broker-b1",
            &["broker", "--config", config.to_str().unwrap()],
        );
        let url = format!("{}/readyz", self.admin_url());
        wait_for("broker b1 to be ready", Duration::from_secs(20), || {
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!("broker exited early with {status}:\n{}", broker.log_text());
            }
            http_get(&url).filter(|(code, _)| *code == 200)
        });
        broker
    }

    pub fn admin(&self, args: &[&str]) -> Output {
        let config = self.client_config();
        let mut full = vec!["admin", "--config", config.as_str()];
        full.extend_from_slice(args);
        self.ferry(&full)
    }

    pub fn add_user(&self, name: &str, group: &str, password: &str) {
        let config = self.client_config();
        self.ferry_with(
            &[
                "admin",
                "--config",
                &config,
                "user",
                "add",
                name,
                "--group",
                group,
                "--password-stdin",
            ],
            Some(&format!("{password}\n")),
            &[],
        )
        .ok();
    }

    /// Enrolls a host and returns its one-time token.
    pub fn enroll(&self, name: &str, group: &str) -> String {
        self.admin(&["host", "enroll", name, "--group", group])
            .ok()
            .trim()
            .to_owned()
    }

    /// Starts a host agent exposing `services` and waits until the broker lists it as connected.
    pub fn start_host(
        &self,
        name: &str,
        token: Option<&str>,
        services: &[(&str, SocketAddr)],
    ) -> Proc {
        self.start_host_via(&self.client_config(), name, token, services)
    }

    /// Like [`World::start_host`], with a chosen client config (e.g. naming one broker).
    pub fn start_host_via(
        &self,
        config: &str,
        name: &str,
        token: Option<&str>,
        services: &[(&str, SocketAddr)],
    ) -> Proc {
        let state = self.path().join(format!("host-{name}"));
        let config = config.to_owned();
        let mut args: Vec<String> = vec![
            "host".into(),
            "--config".into(),
            config,
            "--name".into(),
            name.into(),
            "--state-dir".into(),
            state.display().to_string(),
        ];
        if let Some(token) = token {
            args.extend(["--enroll".into(), token.into()]);
        }
        for (svc, addr) in services {
            args.extend(["--expose".into(), format!("{svc}={addr}")]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut host = self.spawn(&format!("host-{name}"), &refs);
        wait_for(
            &format!("host {name} to attach"),
            Duration::from_secs(20),
            || {
                if let Ok(Some(status)) = host.child.try_wait() {
                    panic!(
                        "host agent exited early with {status}:\n{}",
                        host.log_text()
                    );
                }
                let hosts = self.admin(&["host", "list", "--json"]).ok();
                let hosts: serde_json::Value = serde_json::from_str(&hosts).ok()?;
                hosts["hosts"]
                    .as_array()?
                    .iter()
                    .any(|h| h["name"] == name && h["connected"] == true)
                    .then_some(())
            },
        );
        host
    }

    pub fn login(&self, user: &str, password: &str) -> Output {
        self.login_via(&self.client_config(), user, password)
    }

    pub fn login_via(&self, config: &str, user: &str, password: &str) -> Output {
        let config = config.to_owned();
        self.ferry_with(
            &["login", "--config", &config, "--user", user],
            None,
            &[("FERRY_PASSWORD", password)],
        )
    }

    /// Starts `ferry connect HOST SVC --listen` on a free port and waits until it listens.
    pub fn forward(&self, host: &str, service: &str) -> (Proc, SocketAddr) {
        self.forward_via(&self.client_config(), host, service)
    }

    pub fn forward_via(&self, config: &str, host: &str, service: &str) -> (Proc, SocketAddr) {
        self.forward_with(config, host, service, &[])
    }

    /// Like [`World::forward_via`], with more arguments for `ferry connect`.
    pub fn forward_with(
        &self,
        config: &str,
        host: &str,
        service: &str,
        extra: &[&str],
    ) -> (Proc, SocketAddr) {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec![
            "connect", host, service, "--listen", &listen, "--config", config,
        ];
        args.extend_from_slice(extra);
        let mut proc = self.spawn(&format!("connect-{host}-{service}-{port}"), &args);
        let addr: SocketAddr = listen.parse().unwrap();
        wait_for(
            "the forwarded port to listen",
            Duration::from_secs(20),
            || {
                if let Ok(Some(status)) = proc.child.try_wait() {
                    panic!(
                        "ferry connect exited early with {status}:\n{}",
                        proc.log_text()
                    );
                }
                proc.log_text().contains("forwarding").then_some(())
            },
        );
        (proc, addr)
    }

    /// `ferry connect HOST SVC --stdio` with `input` on stdin.
    pub fn connect_stdio(&self, host: &str, service: &str, input: &str) -> Output {
        let config = self.client_config();
        self.ferry_with(
            &["connect", host, service, "--stdio", "--config", &config],
            Some(input),
            &[],
        )
    }
}

/// Runs `cmd` to completion within `deadline`, feeding `stdin` (on a thread of its own, so
/// that a large input cannot block against the output); (exit code, stdout, stderr). The
/// process is killed at the deadline and the test fails naming it.
pub fn run_with_deadline(
    mut cmd: Command,
    stdin: Option<Vec<u8>>,
    deadline: Duration,
) -> (i32, Vec<u8>, String) {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let described = format!("{cmd:?}");
    let mut child = cmd.spawn().expect("spawn");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    // Collect output on a thread while it runs: waiting first would deadlock as soon as the
    // output outgrows the pipe's buffer.
    let pid = child.id();
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match result.recv_timeout(deadline) {
        Ok(out) => {
            let out = out.expect("waiting for the process");
            (
                out.status.code().unwrap_or(-1),
                out.stdout,
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{described} did not finish within {deadline:?}");
        }
    }
}

/// Minimal HTTP GET over std (status, body), for readiness polling without an async runtime.
pub fn http_get(url: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest
        .split_once('/')
        .map(|(a, p)| (a, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = std::net::TcpStream::connect(authority).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    status_and_body(&response)
}

/// One authenticated request to an admin API at `url` (`http://host:port`); (status, body).
pub fn admin_request(
    url: &str,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Option<(u16, String)> {
    use std::io::Read;
    let authority = url.strip_prefix("http://")?;
    let mut stream = std::net::TcpStream::connect(authority).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    status_and_body(&response)
}

/// The status code and body of a raw HTTP/1.1 response.
fn status_and_body(response: &str) -> Option<(u16, String)> {
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((code, body))
}

/// A TCP echo server on a background thread; returns its address.
pub fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let mut writer = stream;
                let _ = std::io::copy(&mut reader, &mut writer);
                let _ = writer.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// Sends `len` seeded random bytes to `addr` while reading the echo; returns (sent, received)
/// SHA-256 digests and the byte count received.
pub fn push_through(addr: SocketAddr, len: usize, seed: u64) -> ([u8; 32], [u8; 32], usize) {
    use rand::{RngCore, SeedableRng};
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let stream = std::net::TcpStream::connect(addr).expect("connect to forwarded port");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len());
            rng.fill_bytes(&mut buf[..n]);
            hash.update(&buf[..n]);
            writer
                .write_all(&buf[..n])
                .expect("write to forwarded port");
            left -= n;
        }
        writer.shutdown(std::net::Shutdown::Write).unwrap();
        hash.finalize().into()
    });
    let mut reader = stream;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0;
    loop {
        let n = reader.read(&mut buf).expect("read from forwarded port");
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        received += n;
    }
    let sent = sender.join().unwrap();
    (sent, hash.finalize().into(), received)
}

/// What one end of a [`duplex_service`] / [`duplex_client`] transfer saw.
#[derive(Debug, Clone)]
pub struct TransferEnd {
    /// SHA-256 of the bytes this end sent, and of those it received.
    pub sent: [u8; 32],
    pub received: [u8; 32],
    pub received_bytes: u64,
    /// Longest time between two reads once bytes had started to arrive: the stall.
    pub longest_gap: Duration,
    /// A reset, a read or write error, or an early end of stream: none may happen.
    pub error: Option<String>,
}

/// Bytes of a seeded stream (cheap to generate; the SHA-256 of what went through is compared).
fn fill_seeded(rng: &mut rand::rngs::SmallRng, buf: &mut [u8]) {
    use rand::RngCore;
    rng.fill_bytes(buf);
}

/// A transfer's read that waits this long has hung: it fails with that error.
const READ_DEADLINE: Duration = Duration::from_secs(30);

/// Runs both directions of a transfer over `stream`: sends `len` seeded bytes (then shuts
/// down its write side) while reading until end of stream.
pub(crate) fn run_transfer(
    stream: std::net::TcpStream,
    len: u64,
    seed: u64,
    seen: Option<&std::sync::atomic::AtomicU64>,
    pace: Option<u64>,
) -> TransferEnd {
    use rand::SeedableRng;
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let mut hash = Sha256::new();
        // Paced senders write small chunks on a schedule; bulk senders write as fast as
        // the path takes them.
        let chunk = if pace.is_some() {
            16 * 1024
        } else {
            256 * 1024
        };
        let mut buf = vec![0u8; chunk];
        let mut left = len;
        let started = Instant::now();
        while left > 0 {
            if let Some(bytes_per_sec) = pace {
                let due = Duration::from_secs_f64((len - left) as f64 / bytes_per_sec as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            let n = left.min(buf.len() as u64) as usize;
            fill_seeded(&mut rng, &mut buf[..n]);
            hash.update(&buf[..n]);
            if let Err(e) = writer.write_all(&buf[..n]) {
                return (hash.finalize().into(), Some(format!("write: {e}")));
            }
            left -= n as u64;
        }
        let error = writer
            .shutdown(std::net::Shutdown::Write)
            .err()
            .map(|e| format!("shutdown: {e}"));
        (hash.finalize().into(), error)
    });
    let mut reader = stream;
    reader.set_read_timeout(Some(READ_DEADLINE)).unwrap();
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let (mut received_bytes, mut longest_gap, mut last, mut error) =
        (0u64, Duration::ZERO, None::<Instant>, None);
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let now = Instant::now();
                if let Some(last) = last {
                    longest_gap = longest_gap.max(now - last);
                }
                last = Some(now);
                hash.update(&buf[..n]);
                received_bytes += n as u64;
                if let Some(seen) = seen {
                    seen.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Err(e) => {
                let hang = matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
                error = Some(format!(
                    "read after {received_bytes} bytes: {e}{}",
                    if hang {
                        format!(" (nothing for {READ_DEADLINE:?}: a hang)")
                    } else {
                        String::new()
                    }
                ));
                // Unblock the sender, which may wait on a full path for ever.
                let _ = reader.shutdown(std::net::Shutdown::Both);
                break;
            }
        }
    }
    let (sent, send_error) = sender.join().unwrap();
    TransferEnd {
        sent,
        received: hash.finalize().into(),
        received_bytes,
        longest_gap,
        error: error.or(send_error),
    }
}

/// A TCP service that, on each connection, sends `len` seeded bytes (seed `seed`; at
/// `pace` bytes per second if given) while reading and hashing whatever arrives. Reports each connection's [`TransferEnd`], and the
/// bytes received so far (to time a fault mid-transfer).
pub fn duplex_service(
    len: u64,
    seed: u64,
    pace: Option<u64>,
) -> (
    SocketAddr,
    std::sync::mpsc::Receiver<TransferEnd>,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = progress.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let (tx, seen) = (tx.clone(), seen.clone());
            std::thread::spawn(move || {
                let end = run_transfer(stream, len, seed, Some(&seen), pace);
                let _ = tx.send(end);
            });
        }
    });
    (addr, rx, progress)
}

/// Connects to `addr` and runs a transfer: `len` seeded bytes each way (sent at `pace` bytes
/// per second if given, like an interactive or streaming session; else in bulk).
pub fn duplex_client(
    addr: SocketAddr,
    len: u64,
    seed: u64,
    pace: Option<u64>,
) -> std::thread::JoinHandle<TransferEnd> {
    let stream = std::net::TcpStream::connect(addr).expect("connect to the forwarded port");
    std::thread::spawn(move || run_transfer(stream, len, seed, None, pace))
}

impl World {
    /// `POST` to node `i`'s admin API with the cluster's bearer token; (status, body).
    pub fn admin_post(&self, i: u8, path: &str, body: &str) -> Option<(u16, String)> {
        let token = std::fs::read_to_string(self.cluster().join("admin.token")).unwrap();
        admin_request(&self.admin_url_of(i), token.trim(), "POST", path, body)
    }

    /// `GET` from node `i`'s admin API with the cluster's bearer token; (status, body).
    pub fn admin_get(&self, i: u8, path: &str) -> Option<(u16, String)> {
        let token = std::fs::read_to_string(self.cluster().join("admin.token")).unwrap();
        admin_request(&self.admin_url_of(i), token.trim(), "GET", path, "")
    }

    /// One client request to broker b`node` on a connection of its own, as a client would send
    /// it; the broker's first answer.
    pub fn client_request(
        &self,
        node: u8,
        request: ferry_proto::wire::client_request::Request,
    ) -> ferry_proto::wire::client_response::Response {
        use ferry_proto::frame::FrameLimits;
        use ferry_proto::wire;
        let config = ferry_agent::ClientConfig::load(Path::new(&self.client_config_for(node)))
            .expect("the world's client config loads");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let dialer = ferry_agent::dial::Dialer::new(&config, wire::Role::Client).unwrap();
            let connected = dialer.connect().await.unwrap();
            let (mut send, mut recv) = connected.conn.open_bi().await.unwrap();
            let request = wire::ClientRequest {
                request: Some(request),
            };
            ferry_transport::framed::write(&mut send, &request, FrameLimits::default())
                .await
                .unwrap();
            let response: wire::ClientResponse =
                ferry_transport::framed::read(&mut recv, FrameLimits::default())
                    .await
                    .unwrap();
            response.response.expect("a response")
        })
    }

    /// A value of metric `name` (first series whose line contains `filter`) on node `i`.
    pub fn metric(&self, i: u8, name: &str, filter: &str) -> f64 {
        let (_, text) = http_get(&format!("{}/metrics", self.admin_url_of(i))).unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
                    && l.contains(filter)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// A host agent exposing one paced duplex service and a client forwarding a local port to it,
/// both attached to one broker: the set-up of the drain tests.
pub struct PacedSessions {
    /// The forwarded local port; each connection to it is one session.
    pub addr: SocketAddr,
    /// Each session's end as the service saw it.
    pub service: std::sync::mpsc::Receiver<TransferEnd>,
    /// Bytes the service has received so far, over all sessions.
    pub progress: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The host agent and the forwarding client; killed on drop.
    pub processes: [Proc; 2],
    /// The broker both attach to (b<n>), bytes each way per session, and bytes/s.
    broker: u8,
    len: u64,
    pace: u64,
}

impl PacedSessions {
    /// Opens `count` sessions (client seeds from `first_seed`) and returns once a quarter of
    /// their traffic has flowed and the broker carries every one of them.
    pub fn start(
        &self,
        w: &World,
        count: usize,
        first_seed: u64,
    ) -> Vec<std::thread::JoinHandle<TransferEnd>> {
        let clients: Vec<_> = (0..count)
            .map(|i| duplex_client(self.addr, self.len, first_seed + i as u64, Some(self.pace)))
            .collect();
        let total = self.len * count as u64;
        wait_for("a quarter of the traffic", Duration::from_secs(120), || {
            (self.progress.load(std::sync::atomic::Ordering::Relaxed) >= total / 4).then_some(())
        });
        wait_for(
            &format!("b{} to carry every session", self.broker),
            Duration::from_secs(30),
            || (w.metric(self.broker, "ferry_sessions_open", "") == count as f64).then_some(()),
        );
        clients
    }
}

impl World {
    /// The usual cast of a session test: user alice (group staff, [`ALICE_PASSWORD`]) granted
    /// the hosts of group lab; host `host` (in lab) enrolled, its agent exposing `services`
    /// and attached through the client config `config`; alice logged in through `config`.
    /// Returns the host agent.
    pub fn alice_reaching(
        &self,
        config: &str,
        host: &str,
        services: &[(&str, SocketAddr)],
    ) -> Proc {
        self.add_user("alice", "staff", ALICE_PASSWORD);
        let token = self.enroll(host, "lab");
        self.admin(&["grant", "staff", "lab"]).ok();
        let agent = self.start_host_via(config, host, Some(&token), services);
        self.login_via(config, "alice", ALICE_PASSWORD).ok();
        agent
    }

    /// User alice (group staff) granted host lab-pc, whose agent exposes service `service` that
    /// moves `len` bytes each way per session at `pace` bytes/s; the agent and the client
    /// attach to broker b<`broker`>.
    pub fn paced_sessions_via(
        &self,
        broker: u8,
        service: &str,
        len: u64,
        pace: u64,
    ) -> PacedSessions {
        let (service_addr, ends, progress) = duplex_service(len, 2, Some(pace));
        let config = self.client_config_for(broker);
        let host = self.alice_reaching(&config, "lab-pc", &[(service, service_addr)]);
        let (forward, addr) = self.forward_via(&config, "lab-pc", service);
        PacedSessions {
            addr,
            service: ends,
            progress,
            processes: [host, forward],
            broker,
            len,
            pace,
        }
    }
}
