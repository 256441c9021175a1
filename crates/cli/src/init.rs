//! `ferry init`: a new cluster's CA, node certificates and configs, admin token, client config.

use crate::args::{InitArgs, NodeSpec};
use crate::Failure;
use ferry_agent::config::{BrokerEntry, ClientConfig, WitnessEntry};
use ferry_agent::error::exit;
use ferry_broker::config::{HostPort, Limits, Listen, NodeConfig, PeerConfig, RaftConfig, Role};
use ferry_transport::certs::ClusterCa;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// What `init` wrote, for callers (`ferry dev`, tests) that go on to use it.
pub struct Cluster {
    pub dir: PathBuf,
    pub node_configs: Vec<PathBuf>,
    pub client_config: PathBuf,
}

pub fn run(args: &InitArgs) -> Result<Cluster, Failure> {
    if !args
        .cluster_name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        || args.cluster_name.is_empty()
    {
        return Err(Failure::new(
            exit::CONFIG,
            format!(
                "cluster name {:?} may contain only letters, digits, '-' and '_'",
                args.cluster_name
            ),
        ));
    }
    let named = !args.node.is_empty() || !args.witness.is_empty();
    let admin_loopback = match args.admin_ip {
        Some(ip) => ip.is_loopback(),
        None => !named,
    };
    if args.admin_plain_http && !admin_loopback {
        return Err(Failure::new(
            exit::CONFIG,
            "--admin-plain-http is allowed only with a loopback --admin-ip (127.0.0.1): \
             elsewhere the admin API answers HTTPS alone",
        ));
    }
    let dir = &args.out;
    if dir.join("ca.pem").exists() {
        return Err(Failure::new(
            exit::CONFIG,
            format!(
                "{} already holds a cluster (ca.pem exists); choose another --out",
                dir.display()
            ),
        ));
    }
    let plan = plan(args)?;
    let io = |what: &str, path: &Path, e: std::io::Error| {
        Failure::new(
            exit::FAILURE,
            format!("cannot {what} {}: {e}", path.display()),
        )
    };
    std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    let write = |name: &str, contents: &str, private: bool| -> Result<PathBuf, Failure> {
        let path = dir.join(name);
        write_file(&path, contents.as_bytes(), private).map_err(|e| io("write", &path, e))?;
        Ok(path)
    };

    let ca = ClusterCa::generate(&args.cluster_name, None)
        .map_err(|e| Failure::new(exit::FAILURE, e.to_string()))?;
    write("ca.pem", &ca.cert_pem(), false)?;
    // Kept to sign certificates of nodes added later; guard it like the cluster itself.
    write("ca.key", &ca.key_pem(), true)?;
    let admin_token = ferry_broker::auth::new_secret();
    write("admin.token", &format!("{admin_token}\n"), true)?;

    let everyone: Vec<PeerConfig> = plan
        .iter()
        .map(|n| PeerConfig {
            node_id: n.node_id.clone(),
            raft_id: n.raft_id,
            peer_addr: n.addrs.peer.clone(),
            relay_addr: (n.role == Role::Broker).then(|| n.addrs.relay.clone()),
            role: n.role,
        })
        .collect();
    let mut configs = Vec::new();
    for (node, peer) in plan.iter().zip(&everyone) {
        let mut config = node_config(
            &args.cluster_name,
            peer,
            &node.addrs,
            everyone
                .iter()
                .filter(|p| p.node_id != node.node_id)
                .cloned()
                .collect(),
            everyone.iter().map(|p| p.raft_id).collect(),
        );
        if everyone.len() == 1 {
            config.peer_addr = None;
            config.listen.peer = None;
        }
        config.admin_api.plain_http = args.admin_plain_http;
        let (names, ips) = crate::certificates::subjects(&config);
        let pair = ca
            .issue_node(&node.node_id, &names, &ips, args.cert_validity)
            .map_err(|e| Failure::new(exit::FAILURE, e.to_string()))?;
        write(&format!("{}.pem", node.node_id), &pair.cert_pem, false)?;
        write(&format!("{}.key", node.node_id), &pair.key_pem, true)?;
        configs.push(config);
    }
    let mut node_configs = Vec::new();
    let mut brokers = Vec::new();
    let mut witnesses = Vec::new();
    for config in &configs {
        node_configs.push(write(
            &format!("{}.toml", config.node_id),
            &config_text(config),
            false,
        )?);
        let admin_url = format!("https://{}", config.admin_addr);
        match config.role {
            Role::Broker => brokers.push(BrokerEntry {
                node_id: config.node_id.clone(),
                relay_addr: config.relay_addr.clone(),
                admin_url,
            }),
            Role::Witness => witnesses.push(WitnessEntry {
                node_id: config.node_id.clone(),
                admin_url,
            }),
        }
    }
    let client = ClientConfig {
        cluster_name: args.cluster_name.clone(),
        ca_cert: "ca.pem".into(),
        udp_payload_bytes_max: None,
        session_buffer_bytes_max: None,
        brokers,
        witnesses,
    };
    let text = format!(
        "# How clients, host agents and `ferry admin` find and trust cluster {:?}.\n{}",
        args.cluster_name,
        toml::to_string(&client).expect("ClientConfig serializes")
    );
    let client_config = write("client.toml", &text, false)?;
    for config in &configs {
        crate::bundle::write(dir, config, args.data_dir.as_deref())?;
    }
    Ok(Cluster {
        dir: dir.clone(),
        node_configs,
        client_config,
    })
}

/// Where a node is reached, and where it listens when that differs.
pub(crate) struct Addresses {
    pub relay: HostPort,
    pub admin: HostPort,
    pub peer: HostPort,
    pub listen: Listen,
}

impl Addresses {
    /// The addresses of a node reached at `host`, whose relay port is `relay_port` (the
    /// admin API takes the next port, the peer listener the one after).
    pub(crate) fn new(
        host: &HostPort,
        relay_port: u16,
        admin_ip: Option<IpAddr>,
        bind_ip: Option<IpAddr>,
    ) -> Self {
        let (admin_port, peer_port) = (relay_port + 1, relay_port + 2);
        let at = |ip: IpAddr, port: u16| SocketAddr::new(ip, port);
        Addresses {
            relay: host.with_port(relay_port),
            admin: match admin_ip {
                Some(ip) => HostPort::ip(at(ip, admin_port)),
                None => host.with_port(admin_port),
            },
            peer: host.with_port(peer_port),
            listen: match bind_ip.filter(|ip| Some(*ip) != host.as_ip()) {
                Some(ip) => Listen {
                    relay: Some(at(ip, relay_port)),
                    admin: admin_ip.is_none().then(|| at(ip, admin_port)),
                    peer: Some(at(ip, peer_port)),
                },
                None => Listen::default(),
            },
        }
    }
}

/// One node `init` lays out.
struct Planned {
    node_id: String,
    role: Role,
    raft_id: u64,
    addrs: Addresses,
}

/// The nodes, their raft ids and ports. Brokers come first and take raft ids 1..N, the
/// witnesses follow. Node i of a host uses ports base+10*i.. (relay, admin, peer), so nodes
/// on separate hosts all use the same ports and nodes sharing one host do not collide.
fn plan(args: &InitArgs) -> Result<Vec<Planned>, Failure> {
    let named = !args.node.is_empty() || !args.witness.is_empty();
    let nodes: Vec<(String, Role, HostPort)> = if named {
        let as_role = |spec: &NodeSpec, role| (spec.node_id.clone(), role, spec.host.clone());
        let brokers = args.node.iter().map(|s| as_role(s, Role::Broker));
        brokers
            .chain(args.witness.iter().map(|s| as_role(s, Role::Witness)))
            .collect()
    } else {
        let host = HostPort::ip(SocketAddr::new(
            args.bind_ip.unwrap_or(Ipv4Addr::LOCALHOST.into()),
            0,
        ));
        (1..=args.brokers)
            .map(|i| (format!("b{i}"), Role::Broker, host.clone()))
            .chain((1..=args.witnesses).map(|i| (format!("w{i}"), Role::Witness, host.clone())))
            .collect()
    };
    if nodes.iter().all(|(_, role, _)| *role == Role::Witness) {
        return Err(Failure::new(
            exit::CONFIG,
            "a cluster needs at least one broker (--brokers, or --node NODE_ID=HOST)",
        ));
    }
    if nodes.len() > 99 {
        return Err(Failure::new(exit::CONFIG, "at most 99 nodes"));
    }
    let (admin_ip, bind_ip) = if named {
        (args.admin_ip, args.bind_ip)
    } else {
        (
            Some(args.admin_ip.unwrap_or(Ipv4Addr::LOCALHOST.into())),
            None,
        )
    };
    let mut planned: Vec<Planned> = Vec::new();
    for (i, (node_id, role, host)) in nodes.into_iter().enumerate() {
        if planned.iter().any(|p| p.node_id == node_id) {
            return Err(Failure::new(
                exit::CONFIG,
                format!("node id {node_id:?} is given twice"),
            ));
        }
        let on_host = planned
            .iter()
            .filter(|p| p.addrs.relay.host() == host.host())
            .count();
        let relay_port = u16::try_from(u32::from(args.base_port) + 10 * on_host as u32)
            .ok()
            .filter(|p| *p <= u16::MAX - 2)
            .ok_or_else(|| {
                Failure::new(exit::CONFIG, "--base-port is too high for this many nodes")
            })?;
        planned.push(Planned {
            node_id,
            role,
            raft_id: i as u64 + 1,
            addrs: Addresses::new(&host, relay_port, admin_ip, bind_ip),
        });
    }
    Ok(planned)
}

/// A node's config as `init` writes it: paths relative to the cluster directory.
/// `initial_voters` is empty for a node that joins a running cluster.
pub(crate) fn node_config(
    cluster_name: &str,
    node: &PeerConfig,
    addrs: &Addresses,
    peers: Vec<PeerConfig>,
    initial_voters: Vec<u64>,
) -> NodeConfig {
    let node_id = &node.node_id;
    NodeConfig {
        node_id: node_id.clone(),
        role: node.role,
        cluster_name: cluster_name.to_owned(),
        data_dir: PathBuf::from(format!("data/{node_id}")),
        relay_addr: addrs.relay.clone(),
        admin_addr: addrs.admin.clone(),
        ca_cert: "ca.pem".into(),
        cert: format!("{node_id}.pem").into(),
        key: format!("{node_id}.key").into(),
        admin_token_file: "admin.token".into(),
        admin_api: Default::default(),
        peer_addr: Some(addrs.peer.clone()),
        listen: addrs.listen.clone(),
        peers,
        limits: Limits::default(),
        faults: Default::default(),
        gate: Default::default(),
        raft: RaftConfig {
            id: node.raft_id,
            initial_voters,
            ..RaftConfig::default()
        },
    }
}

pub(crate) fn config_text(config: &NodeConfig) -> String {
    format!(
        "# Ferry node {}. Relative paths are relative to this file.\n\
         # Every limit and its default: docs/OPERATIONS.md.\n{}",
        config.node_id,
        toml::to_string(config).expect("NodeConfig serializes")
    )
}

pub(crate) fn write_file(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Replaces (or creates) `path` with `bytes`, through a file beside it and a rename, so that a
/// reader never sees half a file (renewals and rotations replace what nodes read).
pub(crate) fn replace_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), Failure> {
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    write_file(&tmp, bytes, private)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            Failure::new(
                exit::FAILURE,
                format!("cannot write {}: {e}", path.display()),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn planned(args: &[&str]) -> Result<Vec<Planned>, String> {
        let mut line = vec!["ferry", "init", "--out", "/nonexistent"];
        line.extend_from_slice(args);
        let cli = crate::args::Cli::try_parse_from(line).map_err(|e| e.to_string())?;
        let crate::args::Command::Init(args) = cli.command else {
            unreachable!("parsed as init")
        };
        plan(&args).map_err(|f| f.message)
    }

    /// (node, relay, admin, peer, listen relay) as text.
    fn check(args: &[&str], want: &[(&str, &str, &str, &str, Option<&str>)]) {
        let plan = planned(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let got: Vec<_> = plan
            .iter()
            .map(|p| {
                (
                    p.node_id.clone(),
                    p.addrs.relay.to_string(),
                    p.addrs.admin.to_string(),
                    p.addrs.peer.to_string(),
                    p.addrs.listen.relay.map(|a| a.to_string()),
                )
            })
            .collect();
        let want: Vec<_> = want
            .iter()
            .map(|(n, r, a, p, l)| {
                (
                    n.to_string(),
                    r.to_string(),
                    a.to_string(),
                    p.to_string(),
                    l.map(str::to_owned),
                )
            })
            .collect();
        assert_eq!(got, want, "{args:?}");
    }

    #[test]
    fn lays_out_nodes_on_one_machine_and_on_many() {
        check(
            &["--brokers", "2", "--witnesses", "1", "--base-port", "7100"],
            &[
                (
                    "b1",
                    "127.0.0.1:7100",
                    "127.0.0.1:7101",
                    "127.0.0.1:7102",
                    None,
                ),
                (
                    "b2",
                    "127.0.0.1:7110",
                    "127.0.0.1:7111",
                    "127.0.0.1:7112",
                    None,
                ),
                (
                    "w1",
                    "127.0.0.1:7120",
                    "127.0.0.1:7121",
                    "127.0.0.1:7122",
                    None,
                ),
            ],
        );
        // Separate hosts share ports; a host with two nodes gives the second the next block.
        check(
            &[
                "--node",
                "b1=10.0.0.5",
                "--node",
                "b2=b2.example.net",
                "--witness",
                "w1=10.0.0.5",
            ],
            &[
                (
                    "b1",
                    "10.0.0.5:7100",
                    "10.0.0.5:7101",
                    "10.0.0.5:7102",
                    None,
                ),
                (
                    "b2",
                    "b2.example.net:7100",
                    "b2.example.net:7101",
                    "b2.example.net:7102",
                    None,
                ),
                (
                    "w1",
                    "10.0.0.5:7110",
                    "10.0.0.5:7111",
                    "10.0.0.5:7112",
                    None,
                ),
            ],
        );
        // Behind NAT or in a container: listen on every address, advertise the node's.
        check(
            &[
                "--node",
                "b1=203.0.113.5",
                "--bind-ip",
                "0.0.0.0",
                "--admin-ip",
                "127.0.0.1",
            ],
            &[(
                "b1",
                "203.0.113.5:7100",
                "127.0.0.1:7101",
                "203.0.113.5:7102",
                Some("0.0.0.0:7100"),
            )],
        );
    }

    #[test]
    fn refuses_what_cannot_be_laid_out() {
        let refused = |args: &[&str], fragment: &str| {
            let e = planned(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} accepted"));
            assert!(e.contains(fragment), "{args:?}: {e}");
        };
        refused(
            &["--node", "b1=10.0.0.5", "--node", "b1=10.0.0.6"],
            "given twice",
        );
        refused(&["--witness", "w1=10.0.0.5"], "at least one broker");
        refused(&["--node", "B1=10.0.0.5"], "lowercase letters");
        refused(&["--node", "b1"], "is not NODE_ID=HOST");
        refused(&["--node", "b1=bad_host"], "not an IP address or DNS name");
        refused(
            &["--node", "b1=10.0.0.5", "--brokers", "2"],
            "cannot be used with",
        );
    }
}
