//! What one node needs on its machine, and nothing more: `DIR/nodes/NODE/` holds its config
//! (paths relative to that directory), its certificate and key, the cluster's `ca.pem`, the
//! admin token it checks callers against, and `client.toml` (how `ferry admin` on the
//! machine, and the stop hooks of deploy/, reach the cluster). Never `ca.key`: the CA stays where `ferry init`
//! ran, which signs renewals, rotations and new nodes.
//!
//! `ferry init` writes one such directory per node; `--join` writes the new node's; `--renew`,
//! `--rotate-ca` and `--retire-old-ca` bring them up to date. Copy `DIR/nodes/NODE/` to the
//! node's machine and run `ferry broker --config NODE.toml` there. (The files at the top of
//! DIR serve running every node on the machine that holds DIR, as `ferry dev` and tests do.)

use crate::init::replace_file;
use crate::Failure;
use ferry_agent::error::exit;
use ferry_broker::config::NodeConfig;
use std::path::{Path, PathBuf};

/// The directory of node `node_id` inside the cluster directory `dir`.
pub fn path(dir: &Path, node_id: &str) -> PathBuf {
    dir.join("nodes").join(node_id)
}

fn failure(path: &Path, e: std::io::Error) -> Failure {
    Failure::new(
        exit::FAILURE,
        format!("cannot write {}: {e}", path.display()),
    )
}

/// Writes node `config`'s directory: `config` is the node's config as written at the top of
/// `dir` (relative paths); its files are copied from there, with `client.toml` (so that
/// `ferry admin` and a stop hook on the node's machine find the cluster). `data_dir` is
/// where the node keeps its store on its machine (default: `data` beside its config).
pub fn write(dir: &Path, config: &NodeConfig, data_dir: Option<&Path>) -> Result<PathBuf, Failure> {
    let node_id = &config.node_id;
    let node_dir = path(dir, node_id);
    std::fs::create_dir_all(&node_dir).map_err(|e| failure(&node_dir, e))?;
    let copy = |from: &Path, name: &str, private: bool| -> Result<(), Failure> {
        let source = dir.join(from);
        let bytes = std::fs::read(&source).map_err(|e| {
            Failure::new(
                exit::FAILURE,
                format!("cannot read {}: {e}", source.display()),
            )
        })?;
        replace_file(&node_dir.join(name), &bytes, private)
    };
    let (cert, key) = (format!("{node_id}.pem"), format!("{node_id}.key"));
    copy(&config.ca_cert, "ca.pem", false)?;
    copy(&config.cert, &cert, false)?;
    copy(&config.key, &key, true)?;
    copy(&config.admin_token_file, "admin.token", true)?;
    copy(Path::new("client.toml"), "client.toml", false)?;
    let mut local = config.clone();
    local.data_dir = data_dir.unwrap_or(Path::new("data")).to_owned();
    local.ca_cert = "ca.pem".into();
    local.cert = cert.into();
    local.key = key.into();
    local.admin_token_file = "admin.token".into();
    let config_path = node_dir.join(format!("{node_id}.toml"));
    replace_file(
        &config_path,
        crate::init::config_text(&local).as_bytes(),
        false,
    )?;
    Ok(node_dir)
}

/// Brings node `node_id`'s directory up to date with its files at the top of `dir` (after a
/// renewal), if the directory exists.
pub fn refresh(dir: &Path, node_id: &str) -> Result<(), Failure> {
    let node_dir = path(dir, node_id);
    if !node_dir.exists() {
        return Ok(());
    }
    for (name, private) in [
        (format!("{node_id}.pem"), false),
        (format!("{node_id}.key"), true),
    ] {
        let source = dir.join(&name);
        if let Ok(bytes) = std::fs::read(&source) {
            replace_file(&node_dir.join(&name), &bytes, private)?;
        }
    }
    refresh_ca(dir)
}

/// Copies `dir/ca.pem` into every node's directory (after a CA rotation step).
pub fn refresh_ca(dir: &Path) -> Result<(), Failure> {
    let ca = std::fs::read(dir.join("ca.pem")).map_err(|e| failure(&dir.join("ca.pem"), e))?;
    let Ok(nodes) = std::fs::read_dir(dir.join("nodes")) else {
        return Ok(());
    };
    for node in nodes.flatten().filter(|e| e.path().is_dir()) {
        replace_file(&node.path().join("ca.pem"), &ca, false)?;
    }
    Ok(())
}
