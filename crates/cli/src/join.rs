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
use std::path::{Path, PathBuf};

/// Writes the new node's files; returns the path of its config.
pub fn run(args: &InitArgs, node_id: &str) -> Result<PathBuf, Failure> {
    let dir = &args.out;
    let config_error = |why: String| Failure::new(exit::CONFIG, why);
    crate::args::node_id_ok(node_id).map_err(config_error)?;
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
    // Where it is reached: --host, else the first node's host. Ports as `init` lays them
    // out: the first block of ten, from the first node's relay port, that no node on the
    // same host uses.
    let host = match &args.host {
        Some(host) => crate::args::host_spec(host).map_err(config_error)?,
        None => existing[0].relay_addr.with_port(0),
    };
    let used: Vec<u16> = existing
        .iter()
        .flat_map(|c| {
            [
                Some(&c.relay_addr),
                Some(&c.admin_addr),
                c.peer_addr.as_ref(),
            ]
        })
        .flatten()
        .filter(|a| a.host() == host.host())
        .map(|a| a.port())
        .collect();
    let base = existing
        .iter()
        .map(|c| c.relay_addr.port())
        .min()
        .unwrap_or(args.base_port);
    let relay_port = (0..100u32)
        .map(|i| u32::from(base) + 10 * i)
        .filter_map(|p| u16::try_from(p).ok().filter(|p| *p <= u16::MAX - 2))
        .find(|p| (*p..*p + 3).all(|q| !used.contains(&q)))
        .ok_or_else(|| config_error("no free ports above the existing nodes'".into()))?;
    // The admin API as the first node's: on the node's own host, or on the same (say
    // loopback) address, with the same plain-HTTP choice.
    let first = &existing[0];
    let admin_ip = if first.admin_addr.host() == first.relay_addr.host() {
        None
    } else {
        first.admin_addr.as_ip()
    };
    let addrs = crate::init::Addresses::new(&host, relay_port, admin_ip, args.bind_ip);
    let role = if args.join_as_witness {
        Role::Witness
    } else {
        Role::Broker
    };
    let node = PeerConfig {
        node_id: node_id.to_owned(),
        raft_id,
        peer_addr: addrs.peer.clone(),
        relay_addr: (role == Role::Broker).then(|| addrs.relay.clone()),
        role,
    };
    let peers: Vec<PeerConfig> = existing
        .iter()
        .filter_map(|c| {
            Some(PeerConfig {
                node_id: c.node_id.clone(),
                raft_id: c.raft.id,
                peer_addr: c.peer_addr.clone()?,
                relay_addr: (c.role == Role::Broker).then(|| c.relay_addr.clone()),
                role: c.role,
            })
        })
        .collect();
    let mut config = node_config(&cluster_name, &node, &addrs, peers, Vec::new());
    config.admin_api.plain_http = first.admin_api.plain_http;
    let (names, ips) = crate::certificates::subjects(&config);
    let pair = ca
        .issue_node(node_id, &names, &ips, args.cert_validity)
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
    let path = write(format!("{node_id}.toml"), &config_text(&config), false)?;
    add_to_client_config(&dir.join("client.toml"), &config)?;
    crate::bundle::write(dir, &config, args.data_dir.as_deref())?;
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
            relay_addr: node.relay_addr.clone(),
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
