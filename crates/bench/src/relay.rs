//! `ferry bench relay`: one session's goodput and the broker's CPU per GB, against direct quinn
//! between the same kind of endpoints, in the same run (docs/DESIGN.md, P1, P2).
//!
//! The broker runs as a real `ferry broker` child process so its CPU time can be read from
//! /proc on its own. This process plays the client and the host agent (the real agent code,
//! delivering into a local TCP sink). The baseline moves the same bytes over one quinn stream
//! between two endpoints in this process, with the same TLS and transport settings.

use crate::cluster::{self, Cluster};
use crate::report::{cpu_seconds, machine, median, Figure, Report};
use anyhow::{bail, Context};
use bytes::Bytes;
use ferry_agent::host::HostOptions;
use ferry_agent::{client, ClientConfig};
use ferry_transport::{endpoint, tls};
use std::net::SocketAddr;
use std::path::Path;
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
/// The host agent's name; its service is a TCP sink.
const HOST: &str = "sink-host";

struct Run {
    seconds: f64,
    broker_cpu_seconds: f64,
    endpoints_cpu_seconds: f64,
}

pub async fn run(options: Options) -> anyhow::Result<Report> {
    if options.bytes == 0 || options.runs == 0 {
        bail!("--bytes and --runs must be greater than 0");
    }
    let mut cluster = Cluster::init("relay", 1)?;
    set_udp_payload(&cluster.files(), options.udp_payload_bytes_max)?;
    cluster.start_all()?;
    cluster.nodes[0]
        .wait_listening(Duration::from_secs(20))
        .await?;
    let broker_pid = cluster.nodes[0]
        .pid()
        .expect("the broker was started just above");
    let token = cluster.provision(HOST)?;

    // The host agent delivers into a TCP sink that reports how many bytes each connection got.
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sink_addr = sink.local_addr()?;
    let (received_tx, mut received) = mpsc::channel::<u64>(16);
    tokio::spawn(run_sink(sink, received_tx));
    let client_config = ClientConfig::load(&cluster.client_config())?;
    let host = HostOptions {
        config: client_config.clone(),
        name: HOST.into(),
        state_dir: cluster.scratch().join("host"),
        enroll_token: Some(token),
        services: [("sink".to_owned(), sink_addr)].into_iter().collect(),
    };
    tokio::spawn(ferry_agent::host::run(host, std::future::pending()));
    cluster
        .wait_host_attached(0, HOST, Duration::from_secs(20))
        .await?;
    let login = client::login(&client_config, cluster::USER, cluster::PASSWORD).await?;
    let opener = client::SessionOpener::new(&client_config, login.token, Default::default())?;

    let direct = Direct::start(&cluster.files(), client_config.transport_limits()).await?;
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
        relayed_runs
            .push(relayed(&opener, &mut received, broker_pid, options.bytes, &payload).await?);
        eprintln!(
            "run {}/{}: direct {} MiB",
            i + 1,
            options.runs,
            options.bytes >> 20
        );
        direct_runs.push(direct.transfer(options.bytes, &payload).await?);
    }
    cluster.nodes[0].kill();

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
        notes: Vec::new(),
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
    let opened = opener.open(HOST, "sink").await?;
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
