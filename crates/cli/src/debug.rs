//! `ferry debug corrupt`: damage a stopped node's data directory on purpose, from a seed.
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
