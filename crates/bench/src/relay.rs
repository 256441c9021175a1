//! `ferry bench relay`: one session's goodput and the broker's CPU per GB, against direct quinn
//! between the same kind of endpoints, in the same run (SPEC P1, P2).
//!
//! The broker runs as a real `ferry broker` child process so its CPU time can be read from
//! /proc on its own. This process plays the client and the host agent (the real agent code,
//! delivering into a local TCP sink). The baseline moves the same bytes over one quinn stream
//! between two endpoints in this process, with the same TLS and transport settings.

use crate::report::{cpu_seconds, machine, median, Figure, Report};
use anyhow::{bail, Context};
use bytes::Bytes;
use ferry_agent::host::HostOptions;
use ferry_agent::{client, ClientConfig};
use ferry_transport::{endpoint, tls};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

pub struct Options {
    pub bytes: u64,
    pub runs: u32,
    /// UDP payload bound for every endpoint in both runs (broker, client, host, direct pair).
    pub udp_payload_bytes_max: u16,
}

/// Size of each write; matches the relay's chunk size.
const WRITE_BYTES: usize = 64 * 1024;
/// Longest any single transfer may take before the benchmark gives up.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(300);

/// A child process killed when dropped, so the benchmark never leaves a broker behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Run {
    seconds: f64,
    broker_cpu_seconds: f64,
    endpoints_cpu_seconds: f64,
}

pub async fn run(options: Options) -> anyhow::Result<Report> {
    if options.bytes == 0 || options.runs == 0 {
        bail!("--bytes and --runs must be greater than 0");
    }
    let dir = tempfile::Builder::new().prefix("ferry-bench-").tempdir()?;
    let cluster = dir.path().join("cluster");
    let base_port = free_base_port()?;
    ferry(
        &[
            "init",
            "--out",
            path(&cluster),
            "--base-port",
            &base_port.to_string(),
            "--cluster-name",
            "bench",
        ],
        None,
    )?;
    set_udp_payload(&cluster, options.udp_payload_bytes_max)?;
    let log = std::fs::File::create(dir.path().join("broker.log"))?;
    let broker = ChildGuard(
        Command::new(std::env::current_exe()?)
            .args(["broker", "--config", path(&cluster.join("b1.toml"))])
            .env("FERRY_LOG", "warn")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the broker")?,
    );
    wait_healthy(base_port + 1).await?;
    let config_path = cluster.join("client.toml");
    let config = path(&config_path);
    ferry(
        &[
            "admin",
            "--config",
            config,
            "user",
            "add",
            "bench",
            "--group",
            "bench",
            "--password-stdin",
        ],
        Some("bench-password\n"),
    )?;
    let token = ferry(
        &[
            "admin",
            "--config",
            config,
            "host",
            "enroll",
            "sink-host",
            "--group",
            "sinks",
        ],
        None,
    )?;
    ferry(
        &["admin", "--config", config, "grant", "bench", "sinks"],
        None,
    )?;

    // The host agent delivers into a TCP sink that reports how many bytes each connection got.
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sink_addr = sink.local_addr()?;
    let (received_tx, mut received) = mpsc::channel::<u64>(16);
    tokio::spawn(run_sink(sink, received_tx));
    let client_config = ClientConfig::load(&config_path)?;
    let host = HostOptions {
        config: client_config.clone(),
        name: "sink-host".into(),
        state_dir: dir.path().join("host"),
        enroll_token: Some(token.trim().to_owned()),
        services: [("sink".to_owned(), sink_addr)].into_iter().collect(),
    };
    tokio::spawn(ferry_agent::host::run(host, std::future::pending()));
    wait_attached(config).await?;
    let login = client::login(&client_config, "bench", "bench-password").await?;
    let opener = client::SessionOpener::new(&client_config, login.token)?;

    let direct = Direct::start(&cluster, client_config.transport_limits()).await?;
    let payload = Bytes::from(vec![0x5a; WRITE_BYTES]);
    let mut relayed_runs = Vec::new();
    let mut direct_runs = Vec::new();
    for i in 0..options.runs {
        eprintln!(
            "run {}/{}: relayed {} MiB",
            i + 1,
            options.runs,
            options.bytes >> 20
        );
        relayed_runs.push(
            relayed(
                &opener,
                &mut received,
                broker.0.id(),
                options.bytes,
                &payload,
            )
            .await?,
        );
        eprintln!(
            "run {}/{}: direct {} MiB",
            i + 1,
            options.runs,
            options.bytes >> 20
        );
        direct_runs.push(direct.transfer(options.bytes, &payload).await?);
    }
    drop(broker);

    let gb = options.bytes as f64 / 1e9;
    let goodput = |runs: &[Run]| {
        median(
            &mut runs
                .iter()
                .map(|r| options.bytes as f64 * 8.0 / r.seconds / 1e9)
                .collect::<Vec<_>>(),
        )
    };
    let relayed_gbps = goodput(&relayed_runs);
    let direct_gbps = goodput(&direct_runs);
    let broker_cpu_per_gb = median(
        &mut relayed_runs
            .iter()
            .map(|r| r.broker_cpu_seconds / gb)
            .collect::<Vec<_>>(),
    );
    let direct_cpu_per_gb = median(
        &mut direct_runs
            .iter()
            .map(|r| r.endpoints_cpu_seconds / gb)
            .collect::<Vec<_>>(),
    );
    let p1 = broker_cpu_per_gb / direct_cpu_per_gb;
    let p2 = relayed_gbps / direct_gbps;
    let runs_json = |runs: &[Run]| {
        runs.iter()
            .map(|r| {
                serde_json::json!({
                    "seconds": r.seconds, "broker_cpu_seconds": r.broker_cpu_seconds,
                    "endpoints_cpu_seconds": r.endpoints_cpu_seconds,
                })
            })
            .collect::<Vec<_>>()
    };
    Ok(Report {
        scenario: "relay",
        machine: machine(),
        parameters: serde_json::json!({
            "bytes": options.bytes, "runs": options.runs,
            "udp_payload_bytes_max": options.udp_payload_bytes_max,
        }),
        figures: vec![
            Figure {
                id: "P1",
                metric: "broker CPU per GB vs client+host CPU per GB direct".into(),
                unit: "CPU-s/GB",
                ferry: broker_cpu_per_gb,
                baseline: direct_cpu_per_gb,
                ratio: p1,
                goal: "ratio <= 1.1",
                met: p1 <= 1.1,
            },
            Figure {
                id: "P2",
                metric: "single-session goodput, relayed vs direct".into(),
                unit: "Gbit/s",
                ferry: relayed_gbps,
                baseline: direct_gbps,
                ratio: p2,
                goal: "ratio >= 0.6",
                met: p2 >= 0.6,
            },
        ],
        runs: serde_json::json!({ "relayed": runs_json(&relayed_runs), "direct": runs_json(&direct_runs) }),
    })
}

/// One relayed session: the client writes `bytes`, the sink behind the host agent reads them.
async fn relayed(
    opener: &std::sync::Arc<client::SessionOpener>,
    received: &mut mpsc::Receiver<u64>,
    broker_pid: u32,
    bytes: u64,
    payload: &Bytes,
) -> anyhow::Result<Run> {
    let opened = opener.open("sink-host", "sink").await?;
    // The session's local side is an in-memory pipe, as a TCP connection would be.
    let (mut app, local) = tokio::io::duplex(LOCAL_PIPE_BYTES);
    let (local_read, local_write) = tokio::io::split(local);
    let (broker_cpu, own_cpu, start) = (
        cpu_seconds(broker_pid)?,
        cpu_seconds(std::process::id())?,
        Instant::now(),
    );
    let _session = opener.carry(opened, local_read, local_write);
    send_local(&mut app, bytes, payload).await?;
    let got = tokio::time::timeout(TRANSFER_DEADLINE, received.recv())
        .await
        .context("relayed transfer timed out")?
        .context("sink stopped")?;
    let seconds = start.elapsed().as_secs_f64();
    if got != bytes {
        bail!("the sink received {got} bytes of {bytes}");
    }
    Ok(Run {
        seconds,
        broker_cpu_seconds: cpu_seconds(broker_pid)? - broker_cpu,
        endpoints_cpu_seconds: cpu_seconds(std::process::id())? - own_cpu,
    })
}

/// Buffer of the in-memory pipe standing in for a session's local TCP connection.
const LOCAL_PIPE_BYTES: usize = 256 * 1024;

async fn send_local(
    local: &mut tokio::io::DuplexStream,
    bytes: u64,
    payload: &Bytes,
) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(payload.len() as u64) as usize;
        local.write_all(&payload[..n]).await?;
        left -= n as u64;
    }
    local.shutdown().await?;
    Ok(())
}

async fn send(stream: &mut quinn::SendStream, bytes: u64, payload: &Bytes) -> anyhow::Result<()> {
    let mut left = bytes;
    while left > 0 {
        let n = left.min(payload.len() as u64) as usize;
        stream.write_chunk(payload.slice(..n)).await?;
        left -= n as u64;
    }
    stream.finish()?;
    Ok(())
}

async fn run_sink(listener: tokio::net::TcpListener, report: mpsc::Sender<u64>) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let report = report.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            let _ = report.send(total).await;
        });
    }
}

/// The baseline: a quinn server and client in this process, one stream, same TLS and limits.
struct Direct {
    client: quinn::Endpoint,
    server_addr: SocketAddr,
    received: tokio::sync::Mutex<mpsc::Receiver<u64>>,
}

impl Direct {
    async fn start(cluster: &Path, limits: endpoint::Limits) -> anyhow::Result<Self> {
        let identity = tls::Identity::load(&cluster.join("b1.pem"), &cluster.join("b1.key"))?;
        let server = endpoint::server("127.0.0.1:0".parse()?, identity, &limits)?;
        let server_addr = server.local_addr()?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((_send, mut recv)) = conn.accept_bi().await {
                        let mut total = 0u64;
                        while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
                            total += chunk.bytes.len() as u64;
                        }
                        let _ = tx.send(total).await;
                    }
                });
            }
        });
        let trust = tls::Trust::load(&cluster.join("ca.pem"))?;
        let client = endpoint::client(&trust, &limits)?;
        Ok(Self {
            client,
            server_addr,
            received: tokio::sync::Mutex::new(rx),
        })
    }

    async fn transfer(&self, bytes: u64, payload: &Bytes) -> anyhow::Result<Run> {
        let conn = self.client.connect(self.server_addr, "b1")?.await?;
        let (mut send, _recv) = conn.open_bi().await?;
        let (own_cpu, start) = (cpu_seconds(std::process::id())?, Instant::now());
        send_and_wait(&mut send, bytes, payload, &self.received).await?;
        let seconds = start.elapsed().as_secs_f64();
        let endpoints = cpu_seconds(std::process::id())? - own_cpu;
        conn.close(0u32.into(), b"done");
        Ok(Run {
            seconds,
            broker_cpu_seconds: 0.0,
            endpoints_cpu_seconds: endpoints,
        })
    }
}

async fn send_and_wait(
    stream: &mut quinn::SendStream,
    bytes: u64,
    payload: &Bytes,
    received: &tokio::sync::Mutex<mpsc::Receiver<u64>>,
) -> anyhow::Result<()> {
    send(stream, bytes, payload).await?;
    let got = tokio::time::timeout(TRANSFER_DEADLINE, received.lock().await.recv())
        .await
        .context("direct transfer timed out")?
        .context("direct server stopped")?;
    if got != bytes {
        bail!("the direct server received {got} bytes of {bytes}");
    }
    Ok(())
}

/// Writes the UDP payload bound into the broker's and the endpoints' configs.
fn set_udp_payload(cluster: &Path, bytes: u16) -> anyhow::Result<()> {
    let node = cluster.join("b1.toml");
    let text = std::fs::read_to_string(&node)?;
    let key = format!(
        "udp_payload_bytes_max = {}",
        endpoint::UDP_PAYLOAD_BYTES_DEFAULT
    );
    anyhow::ensure!(text.contains(&key), "b1.toml does not hold {key:?}");
    std::fs::write(
        &node,
        text.replace(&key, &format!("udp_payload_bytes_max = {bytes}")),
    )?;
    let client = cluster.join("client.toml");
    let text = std::fs::read_to_string(&client)?;
    std::fs::write(&client, format!("udp_payload_bytes_max = {bytes}\n{text}"))?;
    Ok(())
}

fn path(p: &Path) -> &str {
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

/// A port `p` with UDP `p` and TCP `p + 1` free on 127.0.0.1.
fn free_base_port() -> anyhow::Result<u16> {
    free_port_block(1)
}

/// A base port `p` such that for each of `nodes` nodes i, UDP p+10i, TCP p+10i+1 and UDP
/// p+10i+2 (relay, admin, peers: `ferry init`'s layout) are free on 127.0.0.1.
pub(crate) fn free_port_block(nodes: u16) -> anyhow::Result<u16> {
    use rand::Rng;
    'search: for _ in 0..100 {
        let p: u16 = rand::thread_rng().gen_range(30_000..60_000);
        let mut held = Vec::new();
        for i in 0..nodes {
            let base = p + 10 * i;
            let (Ok(a), Ok(b), Ok(c)) = (
                std::net::UdpSocket::bind(("127.0.0.1", base)),
                std::net::TcpListener::bind(("127.0.0.1", base + 1)),
                std::net::UdpSocket::bind(("127.0.0.1", base + 2)),
            ) else {
                continue 'search;
            };
            held.push((a, b, c));
        }
        return Ok(p);
    }
    bail!("no free block of ports found on 127.0.0.1")
}

async fn wait_healthy(admin_port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", admin_port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("the broker's admin API did not come up within 20 s")
}

async fn wait_attached(config: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let hosts = ferry(
            &["admin", "--config", config, "host", "list", "--json"],
            None,
        )?;
        let hosts: serde_json::Value = serde_json::from_str(&hosts)?;
        if hosts["hosts"]
            .as_array()
            .is_some_and(|hs| hs.iter().any(|h| h["connected"] == true))
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the benchmark's host agent did not attach within 20 s")
}
