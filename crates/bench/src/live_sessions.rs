//! The fixture of the session scenarios (docs/DESIGN.md, P7, P8): a 3-broker cluster of real
//! `ferry broker` processes; a host agent and a client in this process, both attached to b1 (their
//! client.toml names only b1, and they learn the other brokers from it); N sessions carrying
//! seeded traffic both ways (see [`crate::traffic`]). Then what the sessions lived through:
//! which were lost, how many bytes, and the stalls each fault caused next to steady traffic.

use crate::cluster::{self, Cluster};
use crate::report::Figure;
use crate::stall::{quantiles, Quantiles, GAP_RESOLUTION_US};
use crate::traffic::{FlowResult, Traffic};
use anyhow::{bail, Context};
use ferry_agent::client::{self, SessionOpener};
use ferry_agent::host::HostOptions;
use ferry_agent::resumable::{self, Ending};
use ferry_agent::ClientConfig;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub use crate::traffic::Pace;

/// The brokers of the cluster.
const BROKERS: u16 = 3;
/// The host agent's name and the service it exposes.
const HOST: &str = "bench-host";
const SERVICE: &str = "duplex";
/// Opening one session may take this long.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Once the senders stop, every session must have ended within this.
const FINISH_DEADLINE: Duration = Duration::from_secs(30);

/// The traffic of a session scenario and its timeline around each fault.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Sessions open at once.
    pub sessions: usize,
    pub pace: Pace,
    /// Steady traffic before each fault; the baseline window lies at its end.
    pub steady: Duration,
    /// Traffic after every direction of every session flows again.
    pub after: Duration,
}

impl Load {
    /// Defaults (as the command line writes them): 256 KiB/s each way per session, 5 s of
    /// steady traffic before the fault, 3 s after recovery.
    pub const RATE_DEFAULT: &'static str = "256KiB";
    pub const STEADY_DEFAULT: &'static str = "5s";
    pub const AFTER_DEFAULT: &'static str = "3s";

    /// `rate` bytes/s each way per session, 0 meaning as fast as flow control allows.
    pub fn new(
        sessions: usize,
        rate: u64,
        steady: Duration,
        after: Duration,
    ) -> anyhow::Result<Self> {
        if sessions == 0 {
            bail!("--sessions must be greater than 0");
        }
        if steady < Duration::from_secs(1) {
            bail!("--steady must be at least 1s: the baseline is measured in it");
        }
        let max = crate::traffic::PACED_BYTES_PER_SECOND_MAX;
        if rate > max {
            bail!(
                "--rate {rate} bytes/s is above {max} ({}/s); use 0 for as fast as possible",
                max / 1024 / 1024
            );
        }
        Ok(Self {
            sessions,
            pace: match rate {
                0 => Pace::Unlimited,
                bytes => Pace::BytesPerSecond(bytes),
            },
            steady,
            after,
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "sessions": self.sessions,
            "bytes_per_s_each_way": match self.pace {
                Pace::Unlimited => None,
                Pace::BytesPerSecond(b) => Some(b),
            },
            "steady_s": self.steady.as_secs_f64(),
            "after_s": self.after.as_secs_f64(),
            "brokers": BROKERS,
            "stall_resolution_s": GAP_RESOLUTION_US as f64 / 1e6,
        })
    }
}

/// The running fixture.
pub(crate) struct LiveSessions {
    pub cluster: Cluster,
    pub traffic: Arc<Traffic>,
    opener: Arc<SessionOpener>,
    /// Client side of each session, by index.
    sessions: Vec<resumable::Session>,
    /// Stops the host agent.
    host_shutdown: Option<oneshot::Sender<()>>,
    host: tokio::task::JoinHandle<Result<(), ferry_agent::Error>>,
}

impl LiveSessions {
    /// Starts the cluster, the host agent and the client, opens every session and waits
    /// until each direction of each has delivered bytes.
    pub async fn start(name: &str, load: &Load) -> anyhow::Result<Self> {
        let mut cluster = Cluster::init(name, BROKERS)?;
        cluster.start_all()?;
        cluster.wait_caught_up(Duration::from_secs(30)).await?;
        let enroll_token = cluster.provision(HOST)?;
        let traffic = Traffic::new(load.sessions, load.pace);
        let service = traffic.start_service().await?;
        let config = ClientConfig::load(&cluster.client_config_for(0)?)?;
        let (host_shutdown, stopped) = oneshot::channel::<()>();
        let host = tokio::spawn(ferry_agent::host::run(
            HostOptions {
                config: config.clone(),
                name: HOST.into(),
                state_dir: cluster.scratch().join("host"),
                enroll_token: Some(enroll_token),
                services: [(SERVICE.to_owned(), service)].into_iter().collect(),
            },
            async move {
                let _ = stopped.await;
            },
        ));
        cluster
            .wait_host_attached(0, HOST, Duration::from_secs(20))
            .await?;
        let login = client::login(&config, cluster::USER, cluster::PASSWORD).await?;
        let opener = SessionOpener::new(&config, login.token, Default::default())?;
        eprintln!("opening {} sessions through b1", load.sessions);
        let opening = Instant::now();
        let mut sessions = Vec::with_capacity(load.sessions);
        for i in 0..load.sessions {
            let opened = tokio::time::timeout(OPEN_TIMEOUT, opener.open(HOST, SERVICE))
                .await
                .with_context(|| format!("opening session {i} took over {OPEN_TIMEOUT:?}"))??;
            let (read, write) = traffic.start_client(i);
            sessions.push(opener.carry(opened, read, write));
        }
        let live = Self {
            cluster,
            traffic,
            opener,
            sessions,
            host_shutdown: Some(host_shutdown),
            host,
        };
        if let Err(still) = live
            .wait_flowing_since(opening, Duration::from_secs(30))
            .await
        {
            bail!("{still} directions of the new sessions delivered nothing within 30 s");
        }
        live.wait_carried_by_b1(load.sessions, Duration::from_secs(10))
            .await?;
        Ok(live)
    }

    /// Waits until b1 reports every session open: the fault must hit all of them.
    async fn wait_carried_by_b1(&self, sessions: usize, deadline: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut open = None;
        while start.elapsed() < deadline {
            open = self.cluster.metric(0, "ferry_sessions_open").await;
            if open == Some(sessions as f64) {
                eprintln!("b1 carries all {sessions} sessions");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("b1 reports {open:?} open sessions, not {sessions}, after {deadline:?}")
    }

    /// Waits until every direction of every session has read since `t`; returns how long
    /// after `t`, or how many directions had not when `deadline` passed.
    pub async fn wait_flowing_since(&self, t: Instant, deadline: Duration) -> Result<f64, usize> {
        loop {
            let still = self.traffic.flows_not_read_since(t);
            if still == 0 {
                return Ok(t.elapsed().as_secs_f64());
            }
            if t.elapsed() > deadline {
                return Err(still);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the traffic, waits (bounded) for every session to end, and stops the endpoints.
    pub async fn finish(mut self) -> Outcome {
        let stopped = Instant::now();
        self.traffic.stop_sending();
        eprintln!("stopping the traffic; waiting for every session to end");
        let mut endings = Vec::with_capacity(self.sessions.len());
        for session in &self.sessions {
            let left = FINISH_DEADLINE.saturating_sub(stopped.elapsed());
            endings.push(match tokio::time::timeout(left, session.ended()).await {
                Ok(ending) => ending,
                Err(_) => Ending::Lost(format!(
                    "still open {FINISH_DEADLINE:?} after the traffic stopped"
                )),
            });
        }
        let flows = self
            .traffic
            .finish(FINISH_DEADLINE.saturating_sub(stopped.elapsed()))
            .await;
        let mut broker_metrics = Vec::new();
        for (i, node) in self.cluster.nodes.iter().enumerate() {
            let mut m = serde_json::Map::new();
            for name in BROKER_METRICS {
                if let Some(v) = self.cluster.metric(i, name).await {
                    m.insert((*name).to_owned(), v.into());
                }
            }
            broker_metrics.push(serde_json::json!({ "node": node.name, "metrics": m }));
        }
        self.opener.close().await;
        if let Some(stop) = self.host_shutdown.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.host).await;
        let sessions = endings
            .into_iter()
            .zip(flows)
            .zip(&self.sessions)
            .enumerate()
            .map(|(i, ((ending, flows), session))| {
                let (_, _, resumes, replayed_bytes) = session.totals();
                SessionOutcome {
                    ending,
                    flows,
                    resumes,
                    replayed_bytes,
                    service_connections: self.traffic.connections(i),
                }
            })
            .collect();
        Outcome {
            sessions,
            traffic_end_us: self.traffic.us(stopped),
            broker_metrics,
        }
    }
}

/// Broker metrics reported with the results (summed over their series).
const BROKER_METRICS: &[&str] = &[
    "ferry_sessions_resumed_total",
    "ferry_session_resume_seconds_sum",
    "ferry_session_resume_seconds_count",
    "ferry_session_replay_bytes_total",
    "ferry_sessions_lost_total",
    "ferry_sessions_open",
];

/// One session, at the end.
pub(crate) struct SessionOutcome {
    pub ending: Ending,
    /// `[up, down]`.
    pub flows: [FlowResult; 2],
    /// Times the client resumed it, and bytes it replayed.
    pub resumes: u32,
    pub replayed_bytes: u64,
    /// Connections the service saw for it (1 unless the host lost the session).
    pub service_connections: u32,
}

impl SessionOutcome {
    /// Why the session counts as lost, if it does.
    pub fn lost(&self) -> Option<String> {
        if self.ending != Ending::Complete {
            return Some(format!("ended {:?}", self.ending));
        }
        if self.service_connections != 1 {
            return Some(format!(
                "the service saw {} connections for it",
                self.service_connections
            ));
        }
        for (flow, direction) in self.flows.iter().zip(["up", "down"]) {
            if let Some(e) = flow.error() {
                return Some(format!("{direction}: {e}"));
            }
            if flow.lost_bytes() > 0 {
                return Some(format!("{direction}: {} bytes lost", flow.lost_bytes()));
            }
        }
        None
    }

    pub fn lost_bytes(&self) -> u64 {
        self.flows.iter().map(FlowResult::lost_bytes).sum()
    }

    fn json(&self) -> serde_json::Value {
        let flow = |f: &FlowResult| {
            serde_json::json!({
                "sent_bytes": f.sent_bytes, "received_bytes": f.received.bytes,
                "lost_bytes": f.lost_bytes(), "error": f.error(),
            })
        };
        serde_json::json!({
            "ending": format!("{:?}", self.ending),
            "lost": self.lost(),
            "resumes": self.resumes,
            "replayed_bytes": self.replayed_bytes,
            "service_connections": self.service_connections,
            "up": flow(&self.flows[0]),
            "down": flow(&self.flows[1]),
        })
    }
}

/// Every session at the end, and the brokers' own counts.
pub(crate) struct Outcome {
    pub sessions: Vec<SessionOutcome>,
    /// When the senders were told to stop (µs since the traffic's epoch).
    pub traffic_end_us: u64,
    pub broker_metrics: Vec<serde_json::Value>,
}

/// A target of a session scenario (docs/DESIGN.md section 8).
pub(crate) struct Target {
    /// Target id in docs/DESIGN.md (P7, P8).
    pub id: &'static str,
    /// The bound on the longest stall, and as docs/DESIGN.md writes it.
    pub stall_max_s: f64,
    pub stall_goal: &'static str,
    /// What docs/DESIGN.md calls a session that did not survive: "lost" or "dropped".
    pub lost: &'static str,
}

/// A fault: from when it was caused until the cluster said it was over (the same instant for
/// a kill; the hand-off's answer for a drain).
pub(crate) struct Fault {
    pub label: String,
    pub start_us: u64,
    pub end_us: u64,
}

/// What one fault did to the sessions, next to steady traffic just before it.
pub(crate) struct FaultStalls {
    pub label: String,
    /// Per session: the longest gap between reads (either direction) overlapping the fault.
    pub stall_us: Vec<u64>,
    /// Per session: the longest gap ending in the baseline window.
    pub baseline_us: Vec<u64>,
    /// Length of the baseline window: from the fault until every direction read again after
    /// it ended, at most the steady time before it.
    pub window_us: u64,
}

impl Outcome {
    /// The stalls `fault` caused; `steady` is the steady traffic that preceded it.
    pub fn stalls(&self, fault: &Fault, steady: Duration) -> FaultStalls {
        let flows = || self.sessions.iter().flat_map(|s| &s.flows);
        let steady_us = steady.as_micros() as u64;
        let recovered_us = flows()
            .map(|f| f.received.reads.first_read_after(fault.end_us))
            .try_fold(fault.end_us, |latest, r| r.map(|r| latest.max(r)));
        let window_us = recovered_us
            .map_or(steady_us, |r| r - fault.start_us)
            .clamp(GAP_RESOLUTION_US, steady_us);
        let per_session = |f: &dyn Fn(&FlowResult) -> u64| -> Vec<u64> {
            self.sessions
                .iter()
                .map(|s| s.flows.iter().map(f).max().unwrap_or(0))
                .collect()
        };
        FaultStalls {
            label: fault.label.clone(),
            stall_us: per_session(&|f| {
                f.received
                    .reads
                    .stall_over(fault.start_us, fault.end_us, self.traffic_end_us)
            }),
            baseline_us: per_session(&|f| {
                f.received
                    .reads
                    .longest_gap_ending_in(fault.start_us.saturating_sub(window_us), fault.start_us)
            }),
            window_us,
        }
    }

    /// The figures of a session scenario (docs/DESIGN.md section 8): stall p50/p99/max across
    /// sessions and faults against the steady-state baseline, sessions lost, bytes lost; and the
    /// details as JSON.
    pub fn figures(
        &self,
        target: &Target,
        faults: &[FaultStalls],
    ) -> anyhow::Result<(Vec<Figure>, serde_json::Value)> {
        let id = target.id;
        let all = |f: fn(&FaultStalls) -> &Vec<u64>| -> Vec<u64> {
            faults.iter().flat_map(f).copied().collect()
        };
        let stall = quantiles(&all(|f| &f.stall_us))?;
        let baseline = quantiles(&all(|f| &f.baseline_us))?;
        let lost: Vec<(usize, String)> = self
            .sessions
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.lost().map(|why| (i, why)))
            .collect();
        let lost_bytes: u64 = self.sessions.iter().map(SessionOutcome::lost_bytes).sum();
        let stall_figure = |which: &str, ferry: f64, base: f64| Figure {
            id,
            metric: format!("longest stall per session, {which} (baseline: steady traffic)"),
            unit: "s",
            ferry,
            baseline: base,
            ratio: ferry / base,
            goal: target.stall_goal,
            met: ferry <= target.stall_max_s,
        };
        let count_figure = |metric: &str, unit: &'static str, n: u64| Figure {
            id,
            metric: metric.to_owned(),
            unit,
            ferry: n as f64,
            baseline: 0.0,
            ratio: f64::NAN,
            goal: "0",
            met: n == 0,
        };
        let figures = vec![
            stall_figure("p50", stall.p50, baseline.p50),
            stall_figure("p99", stall.p99, baseline.p99),
            stall_figure("max", stall.max, baseline.max),
            count_figure(
                &format!("sessions {}", target.lost),
                "sessions",
                lost.len() as u64,
            ),
            count_figure("bytes lost", "bytes", lost_bytes),
        ];
        let fault_json = |f: &FaultStalls| -> anyhow::Result<serde_json::Value> {
            let secs = |v: &Vec<u64>| v.iter().map(|u| *u as f64 / 1e6).collect::<Vec<_>>();
            Ok(serde_json::json!({
                "fault": f.label,
                "baseline_window_s": f.window_us as f64 / 1e6,
                "stall": quantiles(&f.stall_us)?,
                "baseline": quantiles(&f.baseline_us)?,
                "stall_s_per_session": secs(&f.stall_us),
                "baseline_s_per_session": secs(&f.baseline_us),
            }))
        };
        let runs = serde_json::json!({
            "stall": stall,
            "baseline": baseline,
            "faults": faults.iter().map(fault_json).collect::<anyhow::Result<Vec<_>>>()?,
            "sessions_lost": lost,
            "sessions": self.sessions.iter().map(SessionOutcome::json).collect::<Vec<_>>(),
            "brokers": self.broker_metrics,
        });
        Ok((figures, runs))
    }

    /// Lines for the reader under the table: what the baseline is, what was lost and why.
    pub fn notes(&self, target: &Target, faults: &[FaultStalls], stall: &str) -> Vec<String> {
        let mut notes = vec![format!(
            "stall = longest gap between reads, either direction of a session, that overlaps \
             the {stall}; baseline = longest gap of the same session ending in an equally long \
             window of steady traffic just before it (resolution {} ms)",
            GAP_RESOLUTION_US / 1000
        )];
        for f in faults {
            notes.push(format!(
                "{}: baseline window {:.3} s",
                f.label,
                f.window_us as f64 / 1e6
            ));
        }
        let resumed = self.sessions.iter().filter(|s| s.resumes > 0).count();
        let replayed: u64 = self.sessions.iter().map(|s| s.replayed_bytes).sum();
        let sent: u64 = self
            .sessions
            .iter()
            .flat_map(|s| &s.flows)
            .map(|f| f.sent_bytes)
            .sum();
        notes.push(format!(
            "{resumed} of {} sessions resumed at least once; {replayed} bytes replayed; \
             {sent} bytes sent in all, each checked on receipt",
            self.sessions.len()
        ));
        for (i, s) in self.sessions.iter().enumerate() {
            if let Some(why) = s.lost() {
                notes.push(format!("session {i} {}: {why}", target.lost));
            }
        }
        notes
    }
}

/// Quantiles as a short human string, for progress lines.
pub(crate) fn describe(q: &Quantiles) -> String {
    format!("p50 {:.3} s, p99 {:.3} s, max {:.3} s", q.p50, q.p99, q.max)
}
