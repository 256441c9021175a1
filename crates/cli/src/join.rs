//! `ferry init --out DIR --join NODE_ID`: the files for a node that joins the cluster in DIR.
//!
//! It signs the node's certificate with the cluster CA (`DIR/ca.key`), writes `DIR/NODE_ID.toml`
//! with an empty `initial_voters` (the node waits for the leader to add it) and the existing
//! nodes as peers, adds the node to `DIR/client.toml`, and prints the command that adds it.

use crate::args::InitArgs;
use crate::init::{config_text, node_config, write_file};
use crate::Failure;
use ferry_agent::config::{BrokerEntry, ClientConfig, WitnessEntry};
use ferry_agent::error::exit;
use ferry_broker::config::{NodeConfig, PeerConfig, Role};
use ferry_transport::certs::ClusterCa;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Writes the new node's files; returns the path of its config.
pub fn run(args: &InitArgs, node_id: &str) -> Result<PathBuf, Failure> {
    let dir = &args.out;
    let config_error = |why: String| Failure::new(exit::CONFIG, why);
    ferry_state::validate_name(ferry_state::NameKind::Host, node_id)
        .map_err(|r| config_error(format!("node id {node_id:?}: {r}")))?;
    let existing = existing_nodes(dir)?;
    if existing.is_empty() {
        return Err(config_error(format!(
            "{} holds no node configs; run `ferry init --out {}` first",
            dir.display(),
            dir.display()
        )));
    }
    if existing.iter().any(|c| c.node_id == node_id) || dir.join(format!("{node_id}.toml")).exists()
    {
        return Err(config_error(format!(
            "{} already has a node {node_id:?}; pick another node id",
            dir.display()
        )));
    }
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| config_error(format!("cannot read {}: {e}", dir.join(name).display())))
    };
    let cluster_name = existing[0].cluster_name.clone();
    let ca = ClusterCa::load(&read("ca.pem")?, &read("ca.key")?)
        .map_err(|e| Failure::new(exit::FAILURE, e.to_string()))?;
    // Raft ids are never reused: one past the highest any config in DIR has used.
    let raft_id = args
        .raft_id
        .unwrap_or_else(|| existing.iter().map(|c| c.raft.id).max().unwrap_or(0) + 1);
    // Ports: as `init` lays them out, the next block of ten after the last node's relay port.
    let last_relay = existing
        .iter()
        .map(|c| c.relay_addr.port())
        .max()
        .unwrap_or(args.base_port);
    let relay_port = last_relay
        .checked_add(10)
        .filter(|p| *p <= u16::MAX - 2)
        .ok_or_else(|| config_error("no free ports above the existing nodes'".into()))?;
    let used: Vec<u16> = existing
        .iter()
        .flat_map(|c| [Some(c.relay_addr), Some(c.admin_addr), c.peer_addr])
        .flatten()
        .map(|a| a.port())
        .collect();
    if let Some(port) = (relay_port..relay_port + 3).find(|p| used.contains(p)) {
        return Err(config_error(format!(
            "port {port} is already used by a node in {}; edit the new config's ports by hand",
            dir.display()
        )));
    }
    let ip = existing[0].relay_addr.ip();
    let addr = |offset: u16| SocketAddr::new(ip, relay_port + offset);
    // The admin API as the first node's: same address and plain-HTTP choice.
    let admin_ip = existing[0].admin_addr.ip();
    let certified: Vec<std::net::IpAddr> = if admin_ip == ip {
        vec![ip]
    } else {
        vec![ip, admin_ip]
    };
    let role = if args.join_as_witness {
        Role::Witness
    } else {
        Role::Broker
    };
    let node = PeerConfig {
        node_id: node_id.to_owned(),
        raft_id,
        peer_addr: addr(2),
        relay_addr: (role == Role::Broker).then(|| addr(0)),
        role,
    };
    let peers: Vec<PeerConfig> = existing
        .iter()
        .filter_map(|c| {
            Some(PeerConfig {
                node_id: c.node_id.clone(),
                raft_id: c.raft.id,
                peer_addr: c.peer_addr?,
                relay_addr: (c.role == Role::Broker).then_some(c.relay_addr),
                role: c.role,
            })
        })
        .collect();
    let pair = ca
        .issue_node(node_id, &certified, args.cert_validity)
        .map_err(|e| Failure::new(exit::FAILURE, e.to_string()))?;
    let write = |name: String, contents: &str, private: bool| {
        let path = dir.join(name);
        write_file(&path, contents.as_bytes(), private).map_err(|e| {
            Failure::new(
                exit::FAILURE,
                format!("cannot write {}: {e}", path.display()),
            )
        })?;
        Ok::<_, Failure>(path)
    };
    write(format!("{node_id}.pem"), &pair.cert_pem, false)?;
    write(format!("{node_id}.key"), &pair.key_pem, true)?;
    let mut config = node_config(
        &cluster_name,
        &node,
        (addr(0), SocketAddr::new(admin_ip, relay_port + 1)),
        Some(addr(2)),
        peers,
        Vec::new(),
    );
    config.admin_api.plain_http = existing[0].admin_api.plain_http;
    let path = write(format!("{node_id}.toml"), &config_text(&config), false)?;
    crate::bundle::write(dir, &config)?;
    add_to_client_config(&dir.join("client.toml"), &config)?;
    Ok(path)
}

/// The node configs in `dir` (every `*.toml` but `client.toml`).
fn existing_nodes(dir: &Path) -> Result<Vec<NodeConfig>, Failure> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Failure::new(exit::CONFIG, format!("cannot read {}: {e}", dir.display())))?;
    let mut configs = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let is_node = path.extension().is_some_and(|e| e == "toml")
            && path.file_name().is_some_and(|n| n != "client.toml");
        if is_node {
            let config =
                NodeConfig::load(&path).map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
            configs.push(config);
        }
    }
    configs.sort_by_key(|c| c.raft.id);
    Ok(configs)
}

/// Adds the node to client.toml, keeping its relative paths (so not through
/// `ClientConfig::load`, which resolves them).
fn add_to_client_config(path: &Path, node: &NodeConfig) -> Result<(), Failure> {
    let fail = |why: String| Failure::new(exit::CONFIG, why);
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    let mut client: ClientConfig =
        toml::from_str(&text).map_err(|e| fail(format!("{} is invalid: {e}", path.display())))?;
    let admin_url = format!("https://{}", node.admin_addr);
    match node.role {
        Role::Broker => client.brokers.push(BrokerEntry {
            node_id: node.node_id.clone(),
            relay_addr: node.relay_addr,
            admin_url,
        }),
        Role::Witness => client.witnesses.push(WitnessEntry {
            node_id: node.node_id.clone(),
            admin_url,
        }),
    }
    let text = format!(
        "# How clients, host agents and `ferry admin` find and trust cluster {:?}.\n{}",
        client.cluster_name,
        toml::to_string(&client).expect("ClientConfig serializes")
    );
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| fail(format!("cannot update {}: {e}", path.display())))
}
