//! `ferry bench replicate`: replicated writes/s and write latency of a 3-broker cluster under
//! N concurrent proposers, against a 3-member etcd cluster on the same machine in the same run
//! (docs/DESIGN.md, P4; this scenario checks >= 1.0x etcd at 256 proposers, fsync on).
//!
//! Both systems run as real processes on loopback and get the identical workload: N proposers,
//! each doing one write after another for a fixed time, write k of proposer p going to node
//! `(p + k) % 3` (followers forward to the leader). A Ferry write is the admin API's
//! `POST /v1/grants` with a unique user group; an etcd write is `POST /v3/kv/put` on etcd's
//! JSON gateway with the same group name as key and the same host group as value. Both go
//! over one shared HTTP/1.1 client with keep-alive.

use crate::report::{cpu_seconds, machine, Figure, Report};
use anyhow::bail;
// A server of the run (a Ferry broker or an etcd member): killed when dropped.
use ferry_harness::Process as Proc;
use hdrhistogram::Histogram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Options {
    /// Concurrency levels, run one after the other.
    pub proposers: Vec<usize>,
    /// Measured duration of each level.
    pub duration: Duration,
}

const NODES: u16 = 3;
/// Unmeasured load before each level's measurement: opens the connections and fills caches.
const WARMUP: Duration = Duration::from_secs(1);
/// A write that takes longer than this counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The host group of every grant, and the value of every etcd key.
const VALUE: &str = "bench";
/// The concurrency at which P4 is checked (docs/DESIGN.md section 8).
const P4_PROPOSERS: usize = 256;

/// CPU seconds a server has used so far (NaN where /proc cannot say).
fn cpu_of(proc: &Proc) -> f64 {
    cpu_seconds(proc.pid()).unwrap_or(f64::NAN)
}

/// Fails if the server has exited.
fn check_alive(proc: &mut Proc) -> anyhow::Result<()> {
    if let Some(status) = proc.child.try_wait()? {
        bail!("{} exited with {status}", proc.name);
    }
    Ok(())
}

/// The system under load: how to address a write to node `i`.
enum Target {
    Ferry { admins: Vec<String>, token: String },
    Etcd { clients: Vec<String> },
}

impl Target {
    fn nodes(&self) -> usize {
        match self {
            Target::Ferry { admins, .. } => admins.len(),
            Target::Etcd { clients } => clients.len(),
        }
    }

    async fn write(&self, http: &reqwest::Client, node: usize, name: &str) -> bool {
        let request = match self {
            Target::Ferry { admins, token } => http
                .post(format!("{}/v1/grants", admins[node]))
                .bearer_auth(token)
                .json(&serde_json::json!({ "user_group": name, "host_group": VALUE })),
            Target::Etcd { clients } => http
                .post(format!("{}/v3/kv/put", clients[node]))
                .json(&serde_json::json!({ "key": base64(name), "value": base64(VALUE) })),
        };
        match request.send().await {
            // Read the body so the connection goes back to the pool.
            Ok(response) => {
                let ok = response.status().is_success();
                response.bytes().await.is_ok() && ok
            }
            Err(_) => false,
        }
    }
}

/// One concurrency level against one system.
struct Level {
    proposers: usize,
    writes: u64,
    failures: u64,
    seconds: f64,
    latency_us: Histogram<u64>,
    /// Successful writes completed in each second of the measurement: shows stalls.
    per_second: Vec<u64>,
    /// CPU seconds used by each server process during the measurement.
    server_cpu: Vec<f64>,
    /// CPU seconds used by this (load generating) process during the measurement.
    bench_cpu: f64,
}

impl Level {
    fn writes_per_s(&self) -> f64 {
        self.writes as f64 / self.seconds
    }

    fn ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn json(&self) -> serde_json::Value {
        let h = &self.latency_us;
        serde_json::json!({
            "proposers": self.proposers,
            "writes": self.writes,
            "failures": self.failures,
            "seconds": self.seconds,
            "writes_per_s": self.writes_per_s(),
            "latency_ms": {
                "p50": self.ms(0.5), "p90": self.ms(0.9), "p99": self.ms(0.99),
                "p999": self.ms(0.999), "max": h.max() as f64 / 1000.0,
                "mean": h.mean() / 1000.0,
            },
            "writes_per_second_timeline": self.per_second,
            "server_cpu_seconds": self.server_cpu,
            "server_cores_busy": self.server_cpu.iter().sum::<f64>() / self.seconds,
            "bench_cpu_seconds": self.bench_cpu,
        })
    }
}

/// Runs `proposers` concurrent proposers against `target` for `WARMUP` (not measured) and then
/// `measure`.
async fn load(
    http: &reqwest::Client,
    target: &std::sync::Arc<Target>,
    procs: &mut [Proc],
    label: &str,
    proposers: usize,
    measure: Duration,
) -> anyhow::Result<Level> {
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let deadline = measure_from + measure;
    let cpu_at = |procs: &[Proc]| -> Vec<f64> { procs.iter().map(cpu_of).collect() };
    let tasks: Vec<_> = (0..proposers)
        .map(|p| {
            let (http, target, label) = (http.clone(), target.clone(), label.to_owned());
            tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                    .expect("valid histogram bounds");
                let (mut writes, mut failures, mut last) = (0u64, 0u64, Instant::now());
                let mut n = 0usize;
                let mut per_second = Vec::<u64>::new();
                loop {
                    let begin = Instant::now();
                    if begin >= deadline {
                        break;
                    }
                    n += 1;
                    let name = format!("{label}-{p}-{n}");
                    let ok = target.write(&http, (p + n) % target.nodes(), &name).await;
                    let end = Instant::now();
                    if begin >= measure_from {
                        last = end;
                        if ok {
                            writes += 1;
                            let second = end.duration_since(measure_from).as_secs() as usize;
                            if per_second.len() <= second {
                                per_second.resize(second + 1, 0);
                            }
                            per_second[second] += 1;
                            latency.saturating_record(
                                end.duration_since(begin).as_micros().max(1) as u64
                            );
                        } else {
                            failures += 1;
                        }
                    }
                }
                (writes, failures, last, latency, per_second)
            })
        })
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let (server_before, bench_before) = (cpu_at(procs), cpu_seconds(std::process::id())?);
    let mut level = Level {
        proposers,
        writes: 0,
        failures: 0,
        seconds: 0.0,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        per_second: Vec::new(),
        server_cpu: Vec::new(),
        bench_cpu: 0.0,
    };
    let mut end = measure_from;
    for task in tasks {
        let (writes, failures, last, latency, per_second) = task.await?;
        if level.per_second.len() < per_second.len() {
            level.per_second.resize(per_second.len(), 0);
        }
        for (total, count) in level.per_second.iter_mut().zip(per_second) {
            *total += count;
        }
        level.writes += writes;
        level.failures += failures;
        end = end.max(last);
        level.latency_us.add(latency)?;
    }
    // The server CPU is read when the last write has finished, so it covers all the measured
    // writes (and at most one warm-up write per proposer more).
    level.server_cpu = cpu_at(procs)
        .iter()
        .zip(&server_before)
        .map(|(a, b)| a - b)
        .collect();
    level.bench_cpu = cpu_seconds(std::process::id())? - bench_before;
    level.seconds = end.duration_since(measure_from).as_secs_f64();
    for proc in procs.iter_mut() {
        check_alive(proc)?;
    }
    if level.writes == 0 {
        bail!("{label}: no write succeeded with {proposers} proposers");
    }
    Ok(level)
}

fn progress(system: &str, l: &Level) {
    eprintln!(
        "{system:<5} {:>4} proposers: {:>8.0} writes/s  p50 {:.2} ms  p90 {:.2}  p99 {:.2}  \
         p999 {:.2}  max {:.2}  ({} writes, {} failed, servers {:.2} cores, bench {:.2} cores)",
        l.proposers,
        l.writes_per_s(),
        l.ms(0.5),
        l.ms(0.9),
        l.ms(0.99),
        l.ms(0.999),
        l.latency_us.max() as f64 / 1000.0,
        l.writes,
        l.failures,
        l.server_cpu.iter().sum::<f64>() / l.seconds,
        l.bench_cpu / l.seconds,
    );
}

pub async fn run(options: Options) -> anyhow::Result<Report> {
    if options.proposers.is_empty() || options.proposers.contains(&0) {
        bail!("--proposers must list concurrency levels greater than 0");
    }
    if options.duration.is_zero() {
        bail!("--duration must be greater than 0");
    }
    let measure = options.duration;
    let max_proposers = options.proposers.iter().copied().max().unwrap_or(1);
    let http = reqwest::Client::builder()
        .timeout(WRITE_TIMEOUT)
        .pool_max_idle_per_host(max_proposers.max(P4_PROPOSERS))
        .pool_idle_timeout(Duration::from_secs(300))
        .tcp_nodelay(true)
        .build()?;
    let dir = tempfile::Builder::new()
        .prefix("ferry-bench-replicate-")
        .tempdir()?;

    // Both clusters run side by side (idle raft heartbeats cost next to nothing) and each level
    // runs against Ferry and then against etcd, so that drift in the machine's speed during a
    // run hits both systems alike.
    let (ferry, mut ferry_procs) = start_ferry(dir.path(), &http).await?;
    let ferry = std::sync::Arc::new(ferry);
    let etcd_version = etcd_version();
    let mut etcd = match etcd_version {
        Some(_) => {
            let (target, procs) = start_etcd(dir.path(), &http).await?;
            Some((std::sync::Arc::new(target), procs))
        }
        None => {
            eprintln!(
                "etcd is not on PATH (Debian: apt-get install etcd-server): reporting Ferry alone"
            );
            None
        }
    };
    let (mut ferry_levels, mut etcd_levels) = (Vec::new(), Vec::new());
    for (i, &proposers) in options.proposers.iter().enumerate() {
        // The same names, so the same write sizes, for both systems.
        let label = format!("l{i}p{proposers}");
        let level = load(&http, &ferry, &mut ferry_procs, &label, proposers, measure).await?;
        progress("ferry", &level);
        ferry_levels.push(level);
        if let Some((target, procs)) = &mut etcd {
            let level = load(&http, target, procs, &label, proposers, measure).await?;
            progress("etcd", &level);
            etcd_levels.push(level);
        }
    }
    drop((ferry_procs, etcd));

    let mut figures = Vec::new();
    for (i, f) in ferry_levels.iter().enumerate() {
        let e = etcd_levels.get(i);
        let p = f.proposers;
        let figure = |metric: String, unit, ferry: f64, baseline: Option<f64>, higher_better| {
            let baseline = baseline.unwrap_or(f64::NAN);
            let ratio = ferry / baseline;
            Figure {
                id: "P4",
                metric,
                unit,
                ferry,
                baseline,
                ratio,
                goal: match (baseline.is_nan(), higher_better) {
                    (true, _) => "n/a: no etcd",
                    (false, true) => "ratio >= 1",
                    (false, false) => "ratio <= 1",
                },
                met: if higher_better {
                    ratio >= 1.0
                } else {
                    ratio <= 1.0
                },
            }
        };
        figures.push(figure(
            format!("writes/s, {p} proposers"),
            "1/s",
            f.writes_per_s(),
            e.map(Level::writes_per_s),
            true,
        ));
        for (name, q) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
            figures.push(figure(
                format!("write latency {name}, {p} proposers"),
                "ms",
                f.ms(q),
                e.map(|e| e.ms(q)),
                false,
            ));
        }
    }
    Ok(Report {
        scenario: "replicate",
        machine: machine(),
        parameters: serde_json::json!({
            "proposers": options.proposers, "secs": options.duration.as_secs_f64(),
            "warmup_secs": WARMUP.as_secs_f64(), "nodes": NODES,
            "baseline": etcd_version.as_deref().map_or("none: etcd not on PATH".to_owned(), |v| format!("etcd {v}")),
            "p4_goal": format!("ferry writes/s >= etcd writes/s at {P4_PROPOSERS} proposers"),
        }),
        figures,
        notes: Vec::new(),
        runs: serde_json::json!({
            "ferry": ferry_levels.iter().map(Level::json).collect::<Vec<_>>(),
            "etcd": etcd_levels.iter().map(Level::json).collect::<Vec<_>>(),
        }),
    })
}

/// Report figures want `&'static str` labels; a bench runs once per process.
fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

async fn start_ferry(dir: &Path, http: &reqwest::Client) -> anyhow::Result<(Target, Vec<Proc>)> {
    let cluster = dir.join("ferry");
    let base = ferry_harness::free_port_block(NODES)?;
    let layout = ferry_harness::Layout { base_port: base };
    crate::cluster::ferry(
        &[
            "init",
            "--out",
            path(&cluster),
            "--base-port",
            &base.to_string(),
            "--brokers",
            &NODES.to_string(),
            "--cluster-name",
            "bench",
            "--admin-plain-http",
        ],
        None,
    )?;
    let token = std::fs::read_to_string(cluster.join("admin.token"))?
        .trim()
        .to_owned();
    let mut procs = Vec::new();
    let mut admins = Vec::new();
    for i in 1..=NODES {
        let config = cluster.join(format!("b{i}.toml"));
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["broker", "--config", path(&config)])
            .env("FERRY_LOG", "warn");
        let name = format!("ferry broker b{i}");
        procs.push(Proc::spawn(&name, command, &dir.join(format!("b{i}.log")))?);
        admins.push(layout.admin_url(i));
    }
    // Ready when some node leads and every node knows it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut leaders = Vec::new();
        for admin in &admins {
            let status: Option<serde_json::Value> = match http
                .get(format!("{admin}/v1/status"))
                .bearer_auth(&token)
                .send()
                .await
            {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            leaders.push(status.and_then(|s| s["raft"]["leader"].as_u64()));
        }
        if leaders[0].is_some_and(|l| l != 0) && leaders.iter().all(|l| *l == leaders[0]) {
            break;
        }
        for proc in &mut procs {
            check_alive(proc)?;
        }
        if Instant::now() > deadline {
            bail!("the Ferry cluster elected no leader within 30 s (logs in {dir:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((Target::Ferry { admins, token }, procs))
}

/// `etcd --version`'s version, or `None` if etcd is not on PATH.
fn etcd_version() -> Option<String> {
    let out = Command::new("etcd").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("etcd Version:"))
        .map(|v| v.trim().to_owned())
        .or(Some("unknown version".into()))
}

/// A TCP port free on 127.0.0.1 (for the moment).
fn free_tcp_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind(("127.0.0.1", 0)))
        .collect::<Result<_, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?)
}

async fn start_etcd(dir: &Path, http: &reqwest::Client) -> anyhow::Result<(Target, Vec<Proc>)> {
    let ports = free_tcp_ports(2 * NODES as usize)?;
    let (client_ports, peer_ports) = ports.split_at(NODES as usize);
    let initial_cluster = peer_ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("e{}=http://127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Vec::new();
    let mut clients = Vec::new();
    for (i, (client, peer)) in client_ports.iter().zip(peer_ports).enumerate() {
        let name = format!("e{}", i + 1);
        let data: PathBuf = dir.join(format!("etcd-{name}"));
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut command = Command::new("etcd");
        command.args([
            "--name",
            &name,
            "--data-dir",
            path(&data),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &initial_cluster,
            "--initial-cluster-token",
            "ferry-bench",
            "--initial-cluster-state",
            "new",
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ]);
        let log = dir.join(format!("{name}.log"));
        procs.push(Proc::spawn(&format!("etcd {name}"), command, &log)?);
        clients.push(client_url);
    }
    // Ready when every member answers /health with a leader elected.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut healthy = 0;
        for client in &clients {
            if let Ok(r) = http.get(format!("{client}/health")).send().await {
                if r.json::<serde_json::Value>()
                    .await
                    .is_ok_and(|h| h["health"] == "true")
                {
                    healthy += 1;
                }
            }
        }
        if healthy == clients.len() {
            break;
        }
        for proc in &mut procs {
            check_alive(proc)?;
        }
        if Instant::now() > deadline {
            bail!("the etcd cluster was not healthy within 30 s (logs in {dir:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((Target::Etcd { clients }, procs))
}

/// Standard base64 with padding (RFC 4648), as etcd's JSON gateway expects for bytes.
fn base64(input: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(input)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(input), output);
        }
    }
}
