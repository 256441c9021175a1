//! A node's health: what it reports about itself every half second to every peer (and uses
//! for `/readyz` and metrics), the storage probe, and the reports received from peers.

use crate::context::Ctx;
use crate::supervisor::ServiceResult;
use ferry_gate::{Service, ServiceState};
use ferry_proto::peer::{HealthReport, ServiceReport};
use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often a node sends its report to every peer. The gate's contact window
/// (`gate.contact_max_ms`) must be several times longer.
pub const REPORT_EVERY: Duration = Duration::from_millis(500);
/// How often the storage probe writes.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// Bytes each probe writes: one file-system block, which a full disk cannot give.
const PROBE_BYTES: usize = 4096;
/// A probe write that takes longer than this counts as a failure (a hung disk is not writable).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Page size of /proc/self/statm (x86-64 and aarch64 Linux with 4 KiB pages).
const PAGE_BYTES: u64 = 4096;

/// The health of this node and what it knows of its peers'.
pub struct Health {
    /// Every supervised (and watched) service of this node and its state.
    pub services: Arc<crate::supervisor::Services>,
    /// The latest health report of each peer.
    pub reports: Arc<Reports>,
    /// Storage probe and quarantine findings.
    pub local: LocalHealth,
    /// When this process started (monotonic), for uptime.
    pub started: Instant,
    /// Wall-clock start of this process (ms since the Unix epoch), for status output.
    pub started_at_ms: u64,
    /// Random, nonzero, chosen at start: which process of this node a maintenance lease was
    /// taken on (a different one has restarted since).
    pub boot_id: u64,
    /// When the certificates this process presents and trusts expire (read at start).
    pub certificates: crate::certificates::Expiry,
}

/// Facts about the node that are not services: set by the storage probe and start-up.
#[derive(Default)]
pub struct LocalHealth {
    /// Why the last storage probe failed; `None` once one succeeds.
    pub storage_error: Mutex<Option<String>>,
    /// Why the store is quarantined (set at start-up when a corrupt store was moved aside).
    pub quarantine: Mutex<Option<String>>,
    /// A probe write is still running (a hung disk): no second one is started beside it, so
    /// a disk that never answers cannot pile up blocked threads.
    pub probe_in_flight: Arc<std::sync::atomic::AtomicBool>,
}

/// The latest report from each peer, by node id, and when it arrived. Bounded by the
/// membership: only identified peers' reports are stored.
#[derive(Default)]
pub struct Reports {
    latest: Mutex<HashMap<String, (HealthReport, Instant)>>,
}

impl Reports {
    pub fn store(&self, from: &str, report: HealthReport) {
        // A peer speaks only for itself: the certificate named it, the report must agree.
        if report.node_id != from {
            tracing::warn!(peer = from, claimed = %report.node_id, "health report about another node dropped");
            return;
        }
        self.lock()
            .insert(from.to_owned(), (report, Instant::now()));
    }

    pub fn get(&self, node_id: &str) -> Option<(HealthReport, Duration)> {
        self.lock()
            .get(node_id)
            .map(|(r, at)| (r.clone(), at.elapsed()))
    }

    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|k, _| keep(k));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (HealthReport, Instant)>> {
        self.latest
            .lock()
            .expect("never poisoned: no panics under the lock")
    }
}

/// Resident memory of this process, from /proc (0 where it cannot be read).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * PAGE_BYTES)
}

/// The machine's memory, the limit when none is configured.
fn machine_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(u64::MAX, |kib| kib * 1024)
}

/// The memory limit this node is judged against.
pub fn memory_limit_bytes(ctx: &Ctx) -> u64 {
    match ctx.config.limits.memory_bytes_max {
        0 => machine_bytes(),
        limit => limit,
    }
}

/// What this node says about itself now.
pub fn local_report(ctx: &Ctx) -> HealthReport {
    let status = ctx.replica.status();
    let services = ctx
        .health
        .services
        .snapshot()
        .into_iter()
        .map(|s| ServiceReport {
            name: s.name,
            state: s.state.as_str().to_owned(),
            detail: s.detail,
            restarts: s.restarts,
        })
        .collect();
    HealthReport {
        node_id: ctx.config.node_id.clone(),
        raft_id: ctx.replica.raft_id(),
        role: ctx.config.role.name().to_owned(),
        started_at_ms: ctx.health.started_at_ms,
        boot_id: ctx.health.boot_id,
        certificate_expires_at_ms: ctx.health.certificates.node_certificate_expires_at_ms,
        restart_verdicts: crate::gate::verdicts(ctx),
        services,
        term: status.term.load(Ordering::Acquire),
        commit: status.commit.load(Ordering::Acquire),
        applied: status.applied.load(Ordering::Acquire),
        leader: status.is_leader.load(Ordering::Acquire),
        leader_contact_ms: ctx
            .replica
            .since_leader_contact()
            .map(|d| d.as_millis() as u64),
        storage_error: lock(&ctx.health.local.storage_error)
            .clone()
            .unwrap_or_default(),
        quarantine: lock(&ctx.health.local.quarantine)
            .clone()
            .unwrap_or_default(),
        memory_rss_bytes: rss_bytes(),
        memory_limit_bytes: memory_limit_bytes(ctx),
        hosts: ctx.sessions.hosts.len() as u64,
        connections: ctx.metrics.connections_open.get().max(0) as u64,
        sessions: ctx.metrics.sessions_open.get().max(0) as u64,
        sessions_max: ctx.config.limits.sessions_max as u64,
        connections_max: ctx.config.limits.connections_max as u64,
        draining: crate::handoff::is_draining(ctx),
        relay_addr: ctx.config.relay_addr.to_string(),
        admin_addr: ctx.config.admin_addr.to_string(),
        version: crate::build_info::describe(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("never poisoned: no panics under the lock")
}

/// The gate's view of a report.
pub fn to_gate(report: &HealthReport) -> ferry_gate::Report {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    ferry_gate::Report {
        started_at_ms: report.started_at_ms,
        boot_id: report.boot_id,
        services: report
            .services
            .iter()
            .map(|s| Service {
                name: s.name.clone(),
                // A state this build does not know is not "running".
                state: ServiceState::parse(&s.state).unwrap_or(ServiceState::Stopped),
                detail: s.detail.clone(),
                restarts: s.restarts,
            })
            .collect(),
        term: report.term,
        commit: report.commit,
        applied: report.applied,
        leader: report.leader,
        leader_contact_ms: report.leader_contact_ms,
        storage_error: some(&report.storage_error),
        quarantine: some(&report.quarantine),
        memory_rss_bytes: report.memory_rss_bytes,
        memory_limit_bytes: report.memory_limit_bytes,
        hosts: report.hosts,
        connections: report.connections,
        sessions: report.sessions,
        sessions_max: report.sessions_max,
        connections_max: report.connections_max,
        draining: report.draining,
    }
}

/// Service "health": every half second, refreshes the consensus driver's state and the
/// health gauges, and sends this node's report to every peer.
pub async fn report_loop(ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) -> ServiceResult {
    let mut every = tokio::time::interval(REPORT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.changed() => return Ok(()),
        }
        let report = local_report(&ctx);
        crate::cluster::refresh_metrics(&ctx, &report);
        if let Some(peers) = &ctx.peers {
            peers.broadcast_health(&report);
            // Reports of nodes that left the cluster are forgotten with their links.
            let linked: Vec<String> = peers.all().into_iter().map(|p| p.node_id).collect();
            ctx.health
                .reports
                .retain(|node| linked.iter().any(|l| l == node));
        }
    }
}

/// Service "storage": writes and syncs a probe file in the data directory every few seconds.
/// A failure is reported (storage not writable) and fails the service, whose supervisor
/// retries with backoff.
pub async fn storage_probe(ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) -> ServiceResult {
    let path = ctx.config.data_dir.join("health-probe");
    let mut every = tokio::time::interval(PROBE_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.changed() => return Ok(()),
        }
        let in_flight = ctx.health.local.probe_in_flight.clone();
        if in_flight.swap(true, Ordering::AcqRel) {
            let error = format!(
                "an earlier probe write to {} has not finished (the disk hangs)",
                path.display()
            );
            ctx.metrics.storage_writable.set(0);
            *lock(&ctx.health.local.storage_error) = Some(error.clone());
            return Err(error);
        }
        let probe_path = path.clone();
        let write = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let result = (|| {
                // A new file each time, renamed over the last: rewriting the same small file
                // in place can reuse its block and pass on a full disk.
                let fresh = probe_path.with_extension("new");
                let mut file = std::fs::File::create(&fresh)?;
                let mut block = [0u8; PROBE_BYTES];
                block[..8].copy_from_slice(&crate::now_ms().to_le_bytes());
                file.write_all(&block)?;
                file.sync_data()?;
                std::fs::rename(&fresh, &probe_path)
            })();
            in_flight.store(false, Ordering::Release);
            result
        });
        let error = match tokio::time::timeout(PROBE_TIMEOUT, write).await {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(e))) => Some(format!("probe write to {} failed: {e}", path.display())),
            Ok(Err(e)) => Some(format!("probe write task failed: {e}")),
            Err(_) => Some(format!(
                "probe write to {} took longer than {PROBE_TIMEOUT:?}",
                path.display()
            )),
        };
        ctx.metrics.storage_writable.set(i64::from(error.is_none()));
        *lock(&ctx.health.local.storage_error) = error.clone();
        if let Some(error) = error {
            return Err(error);
        }
    }
}
