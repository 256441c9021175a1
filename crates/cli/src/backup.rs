//! `ferry admin snapshot save FILE` and `ferry debug restore --snapshot FILE`: backups of the
//! replicated state (the file's layout: crates/state/src/backup.rs).

use crate::admin::AdminClient;
use crate::Failure;
use ferry_agent::error::exit;
use std::path::Path;
use std::time::Duration;

/// A backup's whole transfer may take this long (a large audit log over a slow link).
const SAVE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Saves a backup to `file`: streamed into `FILE.partial`, made durable, read back and checked
/// (every frame and the checksum), then renamed into place. Nothing is left at `file` unless
/// the whole backup is there.
pub async fn save(client: &AdminClient, file: &Path, json: bool) -> Result<(), Failure> {
    // FILE.partial beside it (the rename stays on one file system).
    let partial = {
        let mut name = file.as_os_str().to_owned();
        name.push(".partial");
        std::path::PathBuf::from(name)
    };
    let fail = |what: &str, path: &Path, e: std::io::Error| {
        Failure::new(
            exit::FAILURE,
            format!("cannot {what} {}: {e}", path.display()),
        )
    };
    let result = async {
        // Owner-only: a backup holds password and token hashes.
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let out = options
            .open(&partial)
            .map_err(|e| fail("create", &partial, e))?;
        let mut out = std::io::BufWriter::new(out);
        let bytes = client
            .download("/v1/snapshot", &mut out, SAVE_TIMEOUT)
            .await?;
        let out = out
            .into_inner()
            .map_err(|e| fail("write", &partial, e.into_error()))?;
        out.sync_all().map_err(|e| fail("sync", &partial, e))?;
        let (header, snapshot) = read(&partial)?;
        std::fs::rename(&partial, file).map_err(|e| fail("rename to", file, e))?;
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        Ok::<_, Failure>((bytes, header, snapshot))
    }
    .await;
    let (bytes, header, snapshot) = result.inspect_err(|_| {
        let _ = std::fs::remove_file(&partial);
    })?;
    let summary = serde_json::json!({
        "file": file.display().to_string(),
        "bytes": bytes,
        "cluster_name": header.cluster_name,
        "node_id": header.node_id,
        "applied_index": header.applied_index,
        "users": snapshot.users.len(),
        "hosts": snapshot.hosts.len(),
        "grants": snapshot.grants.len(),
        "audit_records": snapshot.audit.len(),
    });
    if json {
        println!("{summary:#}");
    } else {
        eprintln!(
            "saved {} ({bytes} bytes, checked): cluster {:?} at index {} as {} had applied it; \
             {} users, {} hosts, {} grants, {} audit records",
            file.display(),
            header.cluster_name,
            header.applied_index,
            header.node_id,
            snapshot.users.len(),
            snapshot.hosts.len(),
            snapshot.grants.len(),
            snapshot.audit.len()
        );
    }
    Ok(())
}

/// Reads and checks a backup file.
fn read(path: &Path) -> Result<(ferry_state::BackupHeader, ferry_state::Snapshot), Failure> {
    let file = std::fs::File::open(path)
        .map_err(|e| Failure::new(exit::CONFIG, format!("cannot open {}: {e}", path.display())))?;
    ferry_state::backup::read(std::io::BufReader::new(file)).map_err(|e| {
        Failure::new(
            exit::CONFIG,
            format!("{} cannot be restored: {e}", path.display()),
        )
    })
}

/// Seeds the node of `config` from the backup in `file`.
pub async fn restore(config: ferry_broker::NodeConfig, file: &Path) -> Result<(), Failure> {
    let file = file.to_owned();
    let done = tokio::task::spawn_blocking(move || {
        let (header, snapshot) = read(&file)?;
        ferry_broker::restore::restore_backup(&config, &header, snapshot).map_err(|e| {
            let code = match e {
                ferry_broker::startup::ForceError::Refused(_) => exit::REFUSED,
                _ => exit::FAILURE,
            };
            Failure::new(code, e.to_string())
        })
    })
    .await
    .map_err(|e| Failure::new(exit::FAILURE, e.to_string()))??;
    eprintln!("{done}");
    Ok(())
}
