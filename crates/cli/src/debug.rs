//! `ferry debug`: damage a stopped node's data directory on purpose, from a seed (`corrupt`);
//! ask a node on this machine whether it is alive or ready (`probe`).
//!
//! The corruption trials (docs/DESIGN.md section 9: "flipped bytes and truncation anywhere in
//! a node's store: the node starts, quarantines, rejoins") use it between a node's stop and
//! its start.

use rand::{Rng as _, SeedableRng as _};
use std::path::{Path, PathBuf};

/// Files in a data directory at most; a directory is not walked further than this.
const FILES_MAX: usize = 10_000;
/// Bytes flipped at most in one trial.
const FLIPS_MAX: usize = 16;

/// Flips random bytes in, or truncates, one random file under `data_dir` (outside its
/// quarantine), chosen by `seed`. Returns what it did, as one line of JSON.
pub fn corrupt(data_dir: &Path, seed: u64) -> anyhow::Result<String> {
    let mut files = Vec::new();
    walk(data_dir, &mut files)?;
    files.sort();
    anyhow::ensure!(
        !files.is_empty(),
        "{} holds no files to damage (is it a node's data_dir?)",
        data_dir.display()
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let file = &files[rng.gen_range(0..files.len())];
    let mut bytes =
        std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let len = bytes.len();
    let relative = file
        .strip_prefix(data_dir)
        .unwrap_or(file)
        .display()
        .to_string();
    let damage = if len == 0 || rng.gen_bool(0.3) {
        let keep = if len == 0 { 0 } else { rng.gen_range(0..len) };
        bytes.truncate(keep);
        serde_json::json!({
            "seed": seed, "file": relative, "action": "truncate", "bytes_before": len,
            "bytes_after": keep,
        })
    } else {
        let flips = rng.gen_range(1..=FLIPS_MAX);
        let mut offsets = Vec::with_capacity(flips);
        for _ in 0..flips {
            let at = rng.gen_range(0..len);
            // Never a no-op: xor with a nonzero byte.
            bytes[at] ^= rng.gen_range(1..=255u8);
            offsets.push(at);
        }
        serde_json::json!({
            "seed": seed, "file": relative, "action": "flip", "bytes": len, "offsets": offsets,
        })
    };
    std::fs::write(file, &bytes)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))?;
    Ok(damage.to_string())
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if entry.file_name() != ferry_broker::startup::QUARANTINE_DIR {
                walk(&path, files)?;
            }
        } else if kind.is_file() && files.len() < FILES_MAX {
            files.push(path);
        }
    }
    Ok(())
}

/// How long a probe waits for the node's answer.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `ferry debug probe`: asks the node of `config`, on this machine, for `/healthz` or
/// `/readyz` over HTTPS under the cluster CA. The node's certificate names `localhost`, so
/// the request goes to `localhost` resolved to the admin API's local address.
pub async fn probe(
    config: &ferry_broker::NodeConfig,
    probe: crate::args::Probe,
) -> Result<(), crate::Failure> {
    use crate::Failure;
    use ferry_agent::error::exit;
    let mut addr = config.admin_listen();
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let path = match probe {
        crate::args::Probe::Healthz => "healthz",
        crate::args::Probe::Readyz => "readyz",
    };
    let trust = ferry_transport::tls::Trust::load(&config.ca_cert)
        .map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
    let tls = ferry_transport::tls::https_client(&trust)
        .map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .resolve("localhost", addr)
        .timeout(PROBE_TIMEOUT)
        .build()
        .map_err(|e| Failure::new(exit::FAILURE, e.to_string()))?;
    let url = format!("https://localhost:{}/{path}", addr.port());
    let answer = client.get(&url).send().await.map_err(|e| {
        Failure::new(
            exit::FAILURE,
            format!(
                "node {} at {addr}: no answer to /{path}: {e}",
                config.node_id
            ),
        )
    })?;
    let status = answer.status();
    let body = answer.text().await.unwrap_or_default();
    if status.is_success() {
        eprintln!("node {}: /{path}: {}", config.node_id, body.trim());
        Ok(())
    } else {
        Err(Failure::new(
            exit::FAILURE,
            format!(
                "node {}: /{path} answered {status}: {}",
                config.node_id,
                body.trim()
            ),
        ))
    }
}
