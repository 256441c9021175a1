//! Issue 9/12, acceptance 1: the compose deployment (deploy/compose/) of a pair and a
//! witness, from the image deploy/image/build.sh makes of this build's binary, each node with
//! its own address on a private network and its own volume. A host agent and a client run in
//! containers too; one session carries paced traffic (echoed back) through the whole
//! sequence: `docker network disconnect` of the broker carrying it and reconnect; `docker
//! kill` of the broker carrying it and start; a rolling restart of all three nodes one at a
//! time through `ferry admin drain --wait`, stop, start, healthy again, during each node's
//! absence a second restart refused by the gate. The transfer ends with identical SHA-256
//! and the session never lost; the longest stall of each step is printed.
//!
//! Needs a Docker engine with Compose; without one the test says so loudly and does nothing
//! (`.ci/run` prints the same before the tests).

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery";
/// Paced traffic: bytes per second each way, written in small chunks so that the gap
/// between two reads is short when nothing is wrong (~30 ms).
const PACE: u64 = 128 * 1024;
const CHUNK: usize = 4096;
/// Each docker or ferry command's bound.
const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn docker_answers() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("docker-compose")
            .arg("version")
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Runs a command within [`COMMAND_DEADLINE`]; its output.
fn run(program: &str, args: &[&str], envs: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let (code, stdout, stderr) = run_with_deadline(cmd, None, COMMAND_DEADLINE);
    Output {
        code,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr,
    }
}

fn docker(args: &[&str]) -> Output {
    run("docker", args, &[])
}

/// The deployment: its compose project, network, cluster directory and the containers and
/// volumes the test made beside it. Dropping it takes all of it down (also on failure).
struct Deployment {
    project: String,
    /// The first three octets of the private network (FERRY_NET).
    net: String,
    image: String,
    dir: PathBuf,
    extra_containers: Mutex<Vec<String>>,
    extra_volumes: Mutex<Vec<String>>,
}

impl Deployment {
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("FERRY_IMAGE", self.image.clone()),
            ("FERRY_NET", self.net.clone()),
            ("FERRY_CLUSTER", self.cluster().display().to_string()),
            ("FERRY_ADMIN_PORT_B1", free_tcp_port().to_string()),
            ("FERRY_ADMIN_PORT_B2", free_tcp_port().to_string()),
            ("FERRY_ADMIN_PORT_W1", free_tcp_port().to_string()),
        ]
    }

    fn cluster(&self) -> PathBuf {
        self.dir.join("cluster")
    }

    fn compose(&self, args: &[&str]) -> Output {
        let file = repo().join("deploy/compose/compose.yaml");
        let mut all = vec!["-p", &self.project, "-f", file.to_str().unwrap()];
        all.extend_from_slice(args);
        run("docker-compose", &all, &self.env())
    }

    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }

    fn network(&self) -> String {
        format!("{}_ferry", self.project)
    }

    fn ip(&self, last: u8) -> String {
        format!("{}.{last}", self.net)
    }

    fn admin(&self, args: &[&str]) -> Output {
        let config = self.cluster().join("client.toml");
        let mut all = vec!["admin", "--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        run(FERRY, &all, &[])
    }

    fn admin_stdin(&self, args: &[&str], input: &str) -> Output {
        let config = self.cluster().join("client.toml");
        let mut cmd = Command::new(FERRY);
        cmd.args(["admin", "--config", config.to_str().unwrap()])
            .args(args);
        let (code, stdout, stderr) =
            run_with_deadline(cmd, Some(input.as_bytes().to_vec()), COMMAND_DEADLINE);
        Output {
            code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr,
        }
    }

    /// A container of the image on the private network at `.last`, with the client config
    /// (client.toml and ca.pem) at /etc/ferry and `volume` at /var/lib/ferry.
    fn run_container(&self, name: &str, last: u8, volume: &str, args: &[&str]) -> Output {
        let clients = self.dir.join("clients");
        let (mount, data) = (
            format!("{}:/etc/ferry:ro", clients.display()),
            format!("{volume}:/var/lib/ferry"),
        );
        let (network, ip) = (self.network(), self.ip(last));
        let mut all = vec!["run", "--name", name, "--network", &network, "--ip", &ip];
        all.extend_from_slice(&[
            "-v",
            &mount,
            "-v",
            &data,
            "-e",
            "XDG_CONFIG_HOME=/var/lib/ferry/config",
            "-e",
        ]);
        let password = format!("FERRY_PASSWORD={PASSWORD}");
        all.push(&password);
        all.extend_from_slice(args);
        self.extra_containers.lock().unwrap().push(name.to_owned());
        self.extra_volumes.lock().unwrap().push(volume.to_owned());
        docker(&all)
    }

    fn status(&self) -> Option<serde_json::Value> {
        let out = self.admin(&["status", "--json"]);
        (out.code == 0)
            .then(|| serde_json::from_str(&out.stdout).ok())
            .flatten()
    }

    /// Waits until all three nodes are healthy and none holds a maintenance lease.
    fn wait_healthy(&self, what: &str) {
        wait_for(what, Duration::from_secs(90), || {
            let status = self.status()?;
            let nodes = status["nodes"].as_array()?;
            let all = nodes.len() == 3
                && nodes
                    .iter()
                    .all(|n| n["healthy"] == true && n["maintenance"].is_null());
            all.then_some(())
        });
    }

    /// The one open session: its id and the broker its client is on, once both brokers
    /// agree (one just back from a fault may not have applied the latest resume yet).
    fn session(&self) -> (u64, String) {
        let on = |node: &str| -> Option<(u64, String)> {
            let out = self.admin(&["--node", node, "sessions", "--json"]);
            let sessions: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
            let all = sessions["sessions"].as_array()?;
            assert!(all.len() <= 1, "at most one session open: {sessions}");
            let s = all.first()?;
            Some((s["id"].as_u64()?, s["broker"].as_str()?.to_owned()))
        };
        wait_for(
            "b1 and b2 to agree on the session's broker",
            Duration::from_secs(20),
            || {
                let (b1, b2) = (on("b1")?, on("b2")?);
                (b1 == b2).then_some(b1)
            },
        )
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for name in self.extra_containers.lock().unwrap().iter() {
            let _ = docker(&["rm", "-f", name]);
        }
        let _ = self.compose(&["down", "-v", "--timeout", "5"]);
        for volume in self.extra_volumes.lock().unwrap().iter() {
            let _ = docker(&["volume", "rm", "-f", volume]);
        }
        let _ = docker(&["rmi", &self.image]);
        if std::env::var_os("FERRY_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An echo service listening on `ip` (the network's gateway: this machine, as seen from the
/// host agent's container).
fn echo_on(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).expect("bind the echo service on the gateway");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let _ = std::io::copy(&mut stream, &mut writer);
                let _ = writer.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// One paced session, echoed: the bytes sent and received are hashed; the reader notes
/// when each read came, and a watcher keeps the longest gap since it was last asked.
struct Traffic {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    /// Milliseconds since `start` of the last read.
    last_read_ms: Arc<AtomicU64>,
    longest_gap_ms: Arc<AtomicU64>,
    start: Instant,
    sender: std::thread::JoinHandle<(Vec<u8>, u64)>,
    reader: std::thread::JoinHandle<Result<Vec<u8>, String>>,
}

impl Traffic {
    fn start(addr: SocketAddr) -> Self {
        use sha2::{Digest, Sha256};
        let stream = TcpStream::connect(addr).expect("connect to the client's --listen");
        let mut writer = stream.try_clone().unwrap();
        let mut reader = stream;
        reader
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let last_read_ms = Arc::new(AtomicU64::new(0));
        let longest_gap_ms = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let sender = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut hash = Sha256::new();
                let mut sent = 0u64;
                let mut byte = 0u8;
                let mut buf = vec![0u8; CHUNK];
                while !stop.load(Ordering::Relaxed) {
                    let due = Duration::from_secs_f64(sent as f64 / PACE as f64);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    for b in buf.iter_mut() {
                        byte = byte.wrapping_mul(31).wrapping_add(7);
                        *b = byte;
                    }
                    if writer.write_all(&buf).is_err() {
                        break;
                    }
                    hash.update(&buf);
                    sent += buf.len() as u64;
                }
                let _ = writer.shutdown(std::net::Shutdown::Write);
                (hash.finalize().to_vec(), sent)
            })
        };
        let reader = {
            let (received, last) = (received.clone(), last_read_ms.clone());
            std::thread::spawn(move || {
                let mut hash = Sha256::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => return Ok(hash.finalize().to_vec()),
                        Ok(n) => {
                            hash.update(&buf[..n]);
                            received.fetch_add(n as u64, Ordering::Relaxed);
                            last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            return Err(format!(
                                "read after {} bytes: {e}",
                                received.load(Ordering::Relaxed)
                            ))
                        }
                    }
                }
            })
        };
        {
            let (stop, last, longest) =
                (stop.clone(), last_read_ms.clone(), longest_gap_ms.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let now = start.elapsed().as_millis() as u64;
                    let gap = now.saturating_sub(last.load(Ordering::Relaxed));
                    longest.fetch_max(gap, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
        Traffic {
            stop,
            received,
            last_read_ms,
            longest_gap_ms,
            start,
            sender,
            reader,
        }
    }

    /// The longest time without a byte arriving since the last call.
    fn take_longest_gap(&self) -> Duration {
        Duration::from_millis(self.longest_gap_ms.swap(0, Ordering::Relaxed))
    }

    /// Waits until bytes flow again (a read within the last 100 ms and `bytes` more).
    fn wait_flowing(&self, what: &str) {
        let before = self.received.load(Ordering::Relaxed);
        wait_for(what, Duration::from_secs(30), || {
            let now = self.start.elapsed().as_millis() as u64;
            let fresh = now.saturating_sub(self.last_read_ms.load(Ordering::Relaxed)) < 100;
            (fresh && self.received.load(Ordering::Relaxed) > before + 64 * 1024).then_some(())
        });
    }

    fn finish(self) -> (Vec<u8>, u64, Result<Vec<u8>, String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (sent_hash, sent) = self.sender.join().unwrap();
        let received = self.reader.join().unwrap();
        (sent_hash, sent, received)
    }
}

fn set_up(dir: &Path) -> Deployment {
    let tag = format!("ferry:t31-{}", std::process::id());
    let build = run(
        "bash",
        &[
            repo().join("deploy/image/build.sh").to_str().unwrap(),
            FERRY,
            &tag,
        ],
        &[],
    );
    assert_eq!(build.code, 0, "image build failed: {build:?}");
    eprintln!("{}", build.stdout.trim());
    // A /24 of its own, away from Docker's default pools (172.17-31, 192.168).
    let net = format!("10.213.{}", 10 + std::process::id() % 200);
    let d = Deployment {
        project: format!("ferryt31{}", std::process::id()),
        net,
        image: tag,
        dir: dir.to_owned(),
        extra_containers: Mutex::new(Vec::new()),
        extra_volumes: Mutex::new(Vec::new()),
    };
    let init = run(
        repo().join("deploy/compose/init.sh").to_str().unwrap(),
        &[],
        &d.env(),
    );
    assert_eq!(init.code, 0, "init.sh failed: {init:?}");
    // The gate's steadiness, 30 s by default, would make the rolling restart take minutes.
    for node in ["b1", "b2", "w1"] {
        let path = d.cluster().join(format!("nodes/{node}/{node}.toml"));
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("\n[gate]\nstabilization_secs = 2\n");
        std::fs::write(&path, text).unwrap();
    }
    // What clients and host agents get: client.toml and ca.pem, naming b1 alone, so that
    // both ends start on b1 (they learn b2 from it).
    let clients = d.dir.join("clients");
    std::fs::create_dir_all(&clients).unwrap();
    std::fs::copy(d.cluster().join("ca.pem"), clients.join("ca.pem")).unwrap();
    let client_toml = std::fs::read_to_string(d.cluster().join("client.toml")).unwrap();
    let b2_entry = client_toml
        .find("[[brokers]]\nnode_id = \"b2\"")
        .expect("client.toml lists b2");
    let rest = &client_toml[b2_entry..];
    let b2_end = rest[1..].find("[[").map_or(rest.len(), |i| i + 1);
    let only_b1 = format!("{}{}", &client_toml[..b2_entry], &rest[b2_end..]);
    std::fs::write(clients.join("client.toml"), only_b1).unwrap();
    d
}

#[test]
fn compose_pair_survives_partition_kill_and_rolling_restart() {
    if !docker_answers() {
        eprintln!(
            "\n!!!!!!!! SKIPPED: no Docker engine (or docker-compose) answers: the compose \
             deployment test did not run !!!!!!!!\n"
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("ferry-t31-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    eprintln!("test directory: {}", dir.display());
    let d = set_up(&dir);

    let up = d.compose(&["up", "-d"]);
    assert_eq!(up.code, 0, "compose up failed: {up:?}");
    d.wait_healthy("the compose pair and witness to be healthy");
    eprintln!("compose pair up: b1, b2, w1 healthy");

    // Alice may reach pc1; pc1's agent (in a container) exposes the echo service that runs
    // here, on the network's gateway.
    d.admin_stdin(
        &[
            "user",
            "add",
            "alice",
            "--group",
            "staff",
            "--password-stdin",
        ],
        &format!("{PASSWORD}\n"),
    )
    .ok();
    let token = d.admin(&["host", "enroll", "pc1", "--group", "lab"]).ok();
    d.admin(&["grant", "staff", "lab"]).ok();
    let echo = echo_on(&d.ip(1));
    let expose = format!("data={echo}");
    let agent = format!("{}-agent", d.project);
    let enroll = token.trim().to_owned();
    d.run_container(
        &agent,
        21,
        &format!("{}-agent-state", d.project),
        &[
            "-d",
            &d.image,
            "host",
            "--config",
            "/etc/ferry/client.toml",
            "--name",
            "pc1",
            "--state-dir",
            "/var/lib/ferry/host",
            "--enroll",
            &enroll,
            "--expose",
            &expose,
        ],
    )
    .ok();
    // The technician: log in (the token is cached in the volume), then forward a port.
    let client_volume = format!("{}-client-state", d.project);
    let login = format!("{}-login", d.project);
    d.run_container(
        &login,
        22,
        &client_volume,
        &[
            &d.image,
            "login",
            "--config",
            "/etc/ferry/client.toml",
            "--user",
            "alice",
        ],
    )
    .ok();
    let client = format!("{}-client", d.project);
    d.run_container(
        &client,
        22,
        &client_volume,
        &[
            "-d",
            &d.image,
            "connect",
            "pc1",
            "data",
            "--listen",
            "0.0.0.0:9000",
            "--config",
            "/etc/ferry/client.toml",
        ],
    )
    .ok();
    let listen: SocketAddr = format!("{}:9000", d.ip(22)).parse().unwrap();
    wait_for(
        "the client's --listen to accept connections",
        Duration::from_secs(30),
        || TcpStream::connect_timeout(&listen, Duration::from_millis(200)).ok(),
    );
    let traffic = Traffic::start(listen);
    traffic.wait_flowing("the session's traffic to flow");
    let (session, first) = d.session();
    eprintln!("session {session} open through {first}");
    assert_eq!(
        first, "b1",
        "the client starts on b1 (its config names b1 alone)"
    );
    let _ = traffic.take_longest_gap();
    let mut stalls: Vec<(String, Duration)> = Vec::new();

    // 1. The broker carrying the session loses its network, then gets it back.
    let carrier = d.session().1;
    let container = d.container(&carrier);
    let ip = d.ip(match carrier.as_str() {
        "b1" => 11,
        _ => 12,
    });
    docker(&["network", "disconnect", &d.network(), &container]).ok();
    traffic.wait_flowing(&format!("traffic to flow again with {carrier} cut off"));
    std::thread::sleep(Duration::from_secs(2));
    docker(&["network", "connect", "--ip", &ip, &d.network(), &container]).ok();
    d.wait_healthy(&format!("{carrier} back after its partition"));
    traffic.wait_flowing("traffic after the partition healed");
    stalls.push((
        format!("network disconnect of {carrier}"),
        traffic.take_longest_gap(),
    ));

    // 2. The broker carrying it now is killed, then started again.
    let carrier = d.session().1;
    docker(&["kill", &d.container(&carrier)]).ok();
    traffic.wait_flowing(&format!("traffic to flow again with {carrier} killed"));
    docker(&["start", &d.container(&carrier)]).ok();
    d.wait_healthy(&format!("{carrier} back after its kill"));
    stalls.push((
        format!("docker kill of {carrier}"),
        traffic.take_longest_gap(),
    ));

    // 3. A rolling restart: each node drained through the gate, stopped, started, healthy.
    for node in ["b1", "b2", "w1"] {
        // As an operator would: ask until the gate allows it (it wants the cluster steady).
        wait_for(
            &format!("the gate to allow {node}'s restart"),
            Duration::from_secs(60),
            || (d.admin(&["restart-check", node]).code == 0).then_some(()),
        );
        let drained = d.admin(&["drain", node, "--wait", "60s"]);
        assert_eq!(drained.code, 0, "drain {node}: {drained:?}");
        let stop = docker(&["stop", "--time", "20", &d.container(node)]);
        assert_eq!(stop.code, 0, "{stop:?}");
        // While it is away no other node may go: the gate says why.
        for other in ["b1", "b2", "w1"].iter().filter(|o| **o != node) {
            let refused = d.admin(&["restart-check", other]);
            assert_eq!(
                refused.code, 3,
                "restart-check {other} with {node} down must be refused: {refused:?}"
            );
        }
        eprintln!("{node} down: restart-check refuses the other two nodes");
        docker(&["start", &d.container(node)]).ok();
        d.wait_healthy(&format!("{node} back, healthy, its lease released"));
        traffic.wait_flowing(&format!("traffic after {node}'s restart"));
        stalls.push((
            format!("drained restart of {node}"),
            traffic.take_longest_gap(),
        ));
    }

    // The same session throughout, never replaced by another.
    assert_eq!(d.session().0, session, "the session survived every step");
    let sent_total = traffic.received.load(Ordering::Relaxed);
    let (sent_hash, sent, received) = traffic.finish();
    let received = received.unwrap_or_else(|e| panic!("the session broke: {e}"));
    assert_eq!(
        sent_hash, received,
        "the echoed bytes differ from those sent ({sent} bytes sent)"
    );
    eprintln!(
        "transfer complete: {sent} bytes each way ({} received before the end), SHA-256 {} \
         identical both ways",
        sent_total,
        hex(&sent_hash)
    );
    for (step, stall) in &stalls {
        eprintln!("longest stall, {step}: {} ms", stall.as_millis());
    }
    drop(agent);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
