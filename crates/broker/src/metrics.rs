//! Prometheus metrics of a node. Label values are `&'static str` chosen in code, never input,
//! so the number of series is bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Certificate {
    pub certificate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Result_ {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Direction {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Service {
    pub service: &'static str,
}

/// A gauge per label set whose sets come and go (members, leases): replacing the whole set
/// removes only the labels that are gone, so a scrape never sees a series that persists
/// briefly missing (which would reset an alert's `for:` clock).
pub struct GaugeSet<L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug> {
    family: Family<L, Gauge>,
    /// The label sets currently exported.
    current: std::sync::Mutex<Vec<L>>,
}

impl<L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug> GaugeSet<L> {
    fn new(family: Family<L, Gauge>) -> Self {
        Self {
            family,
            current: Default::default(),
        }
    }

    /// Makes the exported series exactly `values`.
    pub fn replace(&self, values: Vec<(L, i64)>) {
        let mut current = self
            .current
            .lock()
            .expect("never poisoned: no panics under the lock");
        for old in current.iter() {
            if !values.iter().any(|(l, _)| l == old) {
                self.family.remove(old);
            }
        }
        for (label, value) in &values {
            self.family.get_or_create(label).set(*value);
        }
        *current = values.into_iter().map(|(l, _)| l).collect();
    }
}

/// A member of the cluster by node id: bounded by the membership, not by input.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberLabel {
    pub member: String,
}

/// A node holding a maintenance lease: bounded by the membership.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaseLabel {
    pub lease_node: String,
}

pub struct Metrics {
    registry: Registry,
    pub connections_accepted: Counter,
    pub connections_refused: Family<Reason, Counter>,
    /// Requests and connections refused by an admission limit (`admission.rs`), by reason.
    pub admission_refused: Family<Reason, Counter>,
    /// Passwords verified or hashed (argon2id) on this node.
    pub password_checks: Counter,
    pub connections_open: Gauge,
    pub protocol_errors: Family<Reason, Counter>,
    pub logins: Family<Result_, Counter>,
    pub enrollments: Family<Result_, Counter>,
    pub sessions_opened: Counter,
    pub sessions_refused: Family<Reason, Counter>,
    pub sessions_open: Gauge,
    pub sessions_resumed: Counter,
    /// Sessions this node cut because the state no longer allows them (`withdraw.rs`).
    pub sessions_withdrawn: Counter,
    /// When this node's certificate and the cluster CA it trusts (the earliest of a bundle)
    /// stop being valid (Unix seconds), for the alert that comes before.
    pub certificate_expiry: Family<Certificate, Gauge>,
    /// Second agents refused because another agent with the same host identity is attached,
    /// and when the last one was (Unix seconds; 0 never), for an alert on recent ones.
    pub host_duplicate_attach: Counter,
    pub host_duplicate_attach_last: Gauge,
    /// Admin API connections held now, refused (every one busy at the cap) and displaced
    /// (the oldest idle one, to make room at the cap).
    pub admin_connections_open: Gauge,
    pub admin_connections_refused: Counter,
    pub admin_connections_displaced: Counter,
    /// Seconds from a resume request to the session flowing again (host reached, offsets
    /// exchanged).
    pub resume_seconds: Histogram,
    /// Bytes the endpoints replayed after resumes (both directions).
    pub replay_bytes: Counter,
    pub sessions_lost: Family<Reason, Counter>,
    pub relay_bytes: Family<Direction, Counter>,
    pub hosts_attached: Gauge,
    pub proposals: Family<Result_, Counter>,
    /// Authorizations that had to confirm freshness with the leader (read_index) first.
    pub read_index_reads: Counter,
    pub applied_index: Gauge,
    pub store_bytes: Gauge,
    pub service_up: Family<Service, Gauge>,
    pub service_restarts: Family<Service, Counter>,
    /// This node's own health (1: healthy), as the restart gate would judge it.
    pub node_healthy: Gauge,
    /// Healthy voters minus the quorum, as this node sees the cluster.
    pub failure_tolerance: Gauge,
    /// Each member's health as this node sees it (a dead node exports nothing itself).
    pub member_healthy: GaugeSet<MemberLabel>,
    pub memory_rss_bytes: Gauge,
    pub memory_limit_bytes: Gauge,
    pub memory_headroom_floor_bytes: Gauge,
    pub storage_writable: Gauge,
    pub quarantined: Gauge,
    /// Stores found damaged at start-up and moved aside since this process started.
    pub quarantines: Counter,
    /// Quarantined stores kept in `<data-dir>/quarantine/` (an operator deletes them).
    pub quarantined_dirs: Gauge,
    /// Damage repaired in place at start-up (e.g. leftovers of an interrupted compaction).
    pub store_repairs: Counter,
    /// The last start-up scan of the store: how long it took and how many records it verified.
    pub store_scan_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub store_scan_records: Gauge,
    pub leader_contact_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub apply_lag_entries: Gauge,
    pub draining: Gauge,
    /// Age of each maintenance lease held in the cluster.
    pub lease_seconds: GaugeSet<LeaseLabel>,
    /// On the leader: whether the restart gate allows each member's restart now.
    pub restart_allowed: GaugeSet<MemberLabel>,
}

impl Metrics {
    pub fn new(node_id: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "ferry",
            [(
                std::borrow::Cow::Borrowed("node"),
                std::borrow::Cow::Owned(node_id.to_owned()),
            )]
            .into_iter(),
        );
        macro_rules! register {
            ($name:literal, $help:literal, $metric:expr) => {{
                let metric = $metric;
                registry.register($name, $help, metric.clone());
                metric
            }};
        }
        // ferry_build_info{version, revision} 1: which build runs here (rolling upgrades).
        registry.register(
            "build",
            "The build this node runs: release version and git commit",
            prometheus_client::metrics::info::Info::new(vec![
                ("version", crate::build_info::VERSION),
                ("revision", crate::build_info::REVISION),
            ]),
        );
        Self {
            connections_accepted: register!(
                "connections_accepted",
                "QUIC connections accepted",
                Counter::default()
            ),
            connections_refused: register!(
                "connections_refused",
                "QUIC connections refused, by reason",
                Family::default()
            ),
            admission_refused: register!(
                "admission_refused",
                "Connections and requests refused by an admission limit, by reason",
                Family::default()
            ),
            password_checks: register!(
                "password_checks",
                "Passwords verified or hashed (argon2id) on this node",
                Counter::default()
            ),
            connections_open: register!(
                "connections_open",
                "QUIC connections open now",
                Gauge::default()
            ),
            protocol_errors: register!(
                "protocol_errors",
                "Connections closed for bad input, by reason",
                Family::default()
            ),
            logins: register!("logins", "Login attempts, by result", Family::default()),
            enrollments: register!(
                "enrollments",
                "Host enrollments, by result",
                Family::default()
            ),
            sessions_opened: register!("sessions_opened", "Sessions opened", Counter::default()),
            sessions_refused: register!(
                "sessions_refused",
                "Session requests refused, by reason",
                Family::default()
            ),
            sessions_open: register!(
                "sessions_open",
                "Sessions relayed by this node now",
                Gauge::default()
            ),
            sessions_resumed: register!(
                "sessions_resumed",
                "Sessions resumed through this node after their path broke or moved",
                Counter::default()
            ),
            admin_connections_open: register!(
                "admin_connections_open",
                "Connections to the admin API held now",
                Gauge::default()
            ),
            admin_connections_refused: register!(
                "admin_connections_refused",
                "Admin API connections closed at once: the cap was reached and every held \
                 connection had a request in progress",
                Counter::default()
            ),
            admin_connections_displaced: register!(
                "admin_connections_displaced",
                "Idle admin API connections closed to make room for a new one at the cap",
                Counter::default()
            ),
            host_duplicate_attach: register!(
                "host_duplicate_attach",
                "Host agents refused because another agent with the same identity is attached \
                 (a copied host key, or two agents configured alike)",
                Counter::default()
            ),
            host_duplicate_attach_last: register!(
                "host_duplicate_attach_last_timestamp_seconds",
                "When this node last refused a second agent with a host's identity (Unix \
                 seconds; 0 never)",
                Gauge::default()
            ),
            certificate_expiry: register!(
                "certificate_expiry_timestamp_seconds",
                "When a certificate this node uses stops being valid (Unix seconds): its own \
                 (certificate=\"node\") and the earliest-expiring CA it trusts \
                 (certificate=\"ca\")",
                Family::default()
            ),
            sessions_withdrawn: register!(
                "sessions_withdrawn",
                "Sessions this node cut because their access was withdrawn (killed, user \
                 disabled or removed, token revoked, grant or host removed)",
                Counter::default()
            ),
            resume_seconds: register!(
                "session_resume_seconds",
                "Time to resume a session: from the client's request to the host's answer",
                Histogram::new(
                    [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0].into_iter()
                )
            ),
            replay_bytes: register!(
                "session_replay_bytes",
                "Bytes the endpoints replayed after resumes through this node",
                Counter::default()
            ),
            sessions_lost: register!(
                "sessions_lost",
                "Sessions that could not be resumed, by reason",
                Family::default()
            ),
            relay_bytes: register!(
                "relay_bytes",
                "Session bytes relayed, by direction",
                Family::default()
            ),
            hosts_attached: register!(
                "hosts_attached",
                "Host agents attached to this node",
                Gauge::default()
            ),
            proposals: register!(
                "proposals",
                "State-machine commands proposed, by result",
                Family::default()
            ),
            read_index_reads: register!(
                "read_index_reads",
                "Authorizations that confirmed the state with the leader first (read_index), because this node had not heard from a leader within raft.read_staleness_ms",
                Counter::default()
            ),
            applied_index: register!(
                "applied_index",
                "Index of the last applied command",
                Gauge::default()
            ),
            store_bytes: register!(
                "store_bytes",
                "Bytes the store occupies on disk",
                Gauge::default()
            ),
            service_up: register!(
                "service_up",
                "1 when the named service of this node is running",
                Family::default()
            ),
            service_restarts: register!(
                "service_restarts",
                "Restarts of the named service by its supervisor",
                Family::default()
            ),
            node_healthy: register!(
                "node_healthy",
                "1 when this node is healthy: every service running, in contact with the leader, caught up, storage writable, not quarantined, memory under its limit",
                Gauge::default()
            ),
            failure_tolerance: register!(
                "cluster_failure_tolerance",
                "Healthy voters minus the quorum, as this node sees the cluster (0: one more failure stops writes)",
                Gauge::default()
            ),
            member_healthy: GaugeSet::new(register!(
                "cluster_member_healthy",
                "1 when the member is healthy, as this node sees it",
                Family::default()
            )),
            memory_rss_bytes: register!(
                "memory_rss_bytes",
                "Resident memory of this node's process",
                Gauge::default()
            ),
            memory_limit_bytes: register!(
                "memory_limit_bytes",
                "This node's configured memory limit (limits.memory_bytes_max, else the machine's memory)",
                Gauge::default()
            ),
            memory_headroom_floor_bytes: register!(
                "memory_headroom_floor_bytes",
                "Memory headroom a broker needs to count as room for another's load (gate.memory_headroom_floor_bytes)",
                Gauge::default()
            ),
            storage_writable: register!(
                "storage_writable",
                "1 when the last storage probe write succeeded",
                Gauge::default()
            ),
            quarantined: register!(
                "quarantined",
                "1 when this node's store is in quarantine",
                Gauge::default()
            ),
            quarantines: register!(
                "store_quarantines",
                "Stores found damaged at start-up and moved to <data-dir>/quarantine/",
                Counter::default()
            ),
            quarantined_dirs: register!(
                "store_quarantined_dirs",
                "Quarantined stores kept in <data-dir>/quarantine/ until an operator deletes them",
                Gauge::default()
            ),
            store_repairs: register!(
                "store_repairs",
                "Damage in the store repaired in place at start-up",
                Counter::default()
            ),
            store_scan_seconds: register!(
                "store_scan_seconds",
                "Duration of the last start-up scan of the store (every record verified)",
                Gauge::default()
            ),
            store_scan_records: register!(
                "store_scan_records",
                "Records the last start-up scan of the store verified",
                Gauge::default()
            ),
            leader_contact_seconds: register!(
                "leader_contact_seconds",
                "Seconds since this node last heard from a leader",
                Gauge::default()
            ),
            apply_lag_entries: register!(
                "raft_apply_lag_entries",
                "Entries committed but not yet applied on this node",
                Gauge::default()
            ),
            draining: register!(
                "draining",
                "1 while this node hands its hosts and clients off",
                Gauge::default()
            ),
            lease_seconds: GaugeSet::new(register!(
                "maintenance_lease_seconds",
                "Age of each maintenance lease held in the cluster, by the node under maintenance",
                Family::default()
            )),
            restart_allowed: GaugeSet::new(register!(
                "restart_allowed",
                "On the leader: 1 when the restart gate allows the member's restart now",
                Family::default()
            )),
            registry,
        }
    }

    pub fn refuse_connection(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&Reason { reason })
            .inc();
    }

    pub fn refuse_admission(&self, reason: &'static str) {
        self.admission_refused
            .get_or_create(&Reason { reason })
            .inc();
    }

    pub fn protocol_error(&self, reason: &'static str) {
        self.protocol_errors.get_or_create(&Reason { reason }).inc();
    }

    pub fn refuse_session(&self, reason: &'static str) {
        self.sessions_refused
            .get_or_create(&Reason { reason })
            .inc();
    }

    pub fn lose_session(&self, reason: &'static str) {
        self.sessions_lost.get_or_create(&Reason { reason }).inc();
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gauge_set_keeps_persisting_series_and_drops_only_the_gone() {
        let metrics = Metrics::new("b1");
        let member = |m: &str| MemberLabel { member: m.into() };
        // Sorted: a family encodes its series in hash order.
        let series = |m: &Metrics| -> Vec<String> {
            let mut lines: Vec<String> = m
                .encode()
                .lines()
                .filter(|l| l.starts_with("ferry_cluster_member_healthy{"))
                .map(str::to_owned)
                .collect();
            lines.sort();
            lines
        };
        metrics
            .member_healthy
            .replace(vec![(member("b1"), 1), (member("b2"), 0)]);
        assert_eq!(
            series(&metrics),
            [
                "ferry_cluster_member_healthy{node=\"b1\",member=\"b1\"} 1",
                "ferry_cluster_member_healthy{node=\"b1\",member=\"b2\"} 0"
            ]
        );
        metrics.member_healthy.replace(vec![(member("b2"), 1)]);
        assert_eq!(
            series(&metrics),
            ["ferry_cluster_member_healthy{node=\"b1\",member=\"b2\"} 1"]
        );
    }
}
