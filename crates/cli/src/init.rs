//! `ferry init`: a new cluster's CA, node certificates and configs, admin token, client config.

use crate::args::InitArgs;
use crate::Failure;
use ferry_agent::config::{BrokerEntry, ClientConfig, WitnessEntry};
use ferry_agent::error::exit;
use ferry_broker::config::{Limits, NodeConfig, PeerConfig, RaftConfig, Role};
use ferry_transport::certs::ClusterCa;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// What `init` wrote, for callers (`ferry dev`, tests) that go on to use it.
pub struct Cluster {
    pub dir: PathBuf,
    pub node_configs: Vec<PathBuf>,
    pub client_config: PathBuf,
}

pub fn run(args: &InitArgs) -> Result<Cluster, Failure> {
    if args.brokers == 0 {
        return Err(Failure::new(exit::CONFIG, "--brokers must be at least 1"));
    }
    if u16::from(args.brokers) + u16::from(args.witnesses) > 99 {
        return Err(Failure::new(exit::CONFIG, "at most 99 nodes"));
    }
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
    if args.admin_plain_http && !args.admin_ip.is_loopback() {
        return Err(Failure::new(
            exit::CONFIG,
            format!(
                "--admin-plain-http is allowed only with a loopback --admin-ip, not {}: \
                 elsewhere the admin API answers HTTPS alone",
                args.admin_ip
            ),
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

    // Node i (from 0) listens on base+10i (relay), +1 (admin API), +2 (peers).
    let node_port = |i: u8, offset: u16| -> Result<SocketAddr, Failure> {
        let p = u32::from(args.base_port) + 10 * u32::from(i) + u32::from(offset);
        let p = u16::try_from(p).map_err(|_| {
            Failure::new(exit::CONFIG, "--base-port is too high for this many nodes")
        })?;
        Ok(SocketAddr::new(args.bind_ip, p))
    };
    let certified: Vec<std::net::IpAddr> = if args.admin_ip == args.bind_ip {
        vec![args.bind_ip]
    } else {
        vec![args.bind_ip, args.admin_ip]
    };
    // Brokers b1..bN take raft ids 1..N; witnesses w1..wW follow, with the next ports.
    let total = args.brokers + args.witnesses;
    let everyone: Vec<PeerConfig> = (0..total)
        .map(|i| {
            let (node_id, role) = if i < args.brokers {
                (format!("b{}", i + 1), Role::Broker)
            } else {
                (format!("w{}", i - args.brokers + 1), Role::Witness)
            };
            Ok(PeerConfig {
                node_id,
                raft_id: u64::from(i) + 1,
                peer_addr: node_port(i, 2)?,
                relay_addr: (role == Role::Broker)
                    .then(|| node_port(i, 0))
                    .transpose()?,
                role,
            })
        })
        .collect::<Result<_, Failure>>()?;
    let mut node_configs = Vec::new();
    let mut brokers = Vec::new();
    let mut witnesses = Vec::new();
    for (i, node) in (0u8..).zip(&everyone) {
        let node_id = node.node_id.clone();
        let port = |offset: u16| node_port(i, offset);
        let pair = ca
            .issue_node(&node_id, &certified, args.cert_validity)
            .map_err(|e| Failure::new(exit::FAILURE, e.to_string()))?;
        write(&format!("{node_id}.pem"), &pair.cert_pem, false)?;
        write(&format!("{node_id}.key"), &pair.key_pem, true)?;
        let admin_addr = SocketAddr::new(args.admin_ip, port(1)?.port());
        let mut config = node_config(
            &args.cluster_name,
            node,
            (port(0)?, admin_addr),
            (total > 1).then(|| port(2)).transpose()?,
            everyone
                .iter()
                .filter(|p| p.node_id != node_id)
                .cloned()
                .collect(),
            everyone.iter().map(|p| p.raft_id).collect(),
        );
        config.admin_api.plain_http = args.admin_plain_http;
        node_configs.push(write(
            &format!("{node_id}.toml"),
            &config_text(&config),
            false,
        )?);
        crate::bundle::write(dir, &config)?;
        let admin_url = format!("https://{}", config.admin_addr);
        match node.role {
            Role::Broker => brokers.push(BrokerEntry {
                node_id,
                relay_addr: config.relay_addr,
                admin_url,
            }),
            Role::Witness => witnesses.push(WitnessEntry { node_id, admin_url }),
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
    Ok(Cluster {
        dir: dir.clone(),
        node_configs,
        client_config,
    })
}

/// A node's config as `init` writes it: paths relative to the cluster directory.
/// `initial_voters` is empty for a node that joins a running cluster.
pub(crate) fn node_config(
    cluster_name: &str,
    node: &PeerConfig,
    (relay_addr, admin_addr): (SocketAddr, SocketAddr),
    peer_addr: Option<SocketAddr>,
    peers: Vec<PeerConfig>,
    initial_voters: Vec<u64>,
) -> NodeConfig {
    let node_id = &node.node_id;
    NodeConfig {
        node_id: node_id.clone(),
        role: node.role,
        cluster_name: cluster_name.to_owned(),
        data_dir: PathBuf::from(format!("data/{node_id}")),
        relay_addr,
        admin_addr,
        ca_cert: "ca.pem".into(),
        cert: format!("{node_id}.pem").into(),
        key: format!("{node_id}.key").into(),
        admin_token_file: "admin.token".into(),
        admin_api: Default::default(),
        peer_addr,
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
