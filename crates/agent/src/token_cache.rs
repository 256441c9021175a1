//! The login token cache: `ferry login` writes it, `ferry connect` reads it.
//!
//! One file per cluster under the user's config directory
//! (`$XDG_CONFIG_HOME/ferry/tokens/CLUSTER.toml`, usually `~/.config/...`), readable by the
//! user alone: the token is a bearer secret until it expires.

use crate::Error;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedToken {
    pub user: String,
    pub token: String,
    pub expires_at_ms: u64,
}

/// Where the token of `cluster_name` is cached.
pub fn path(cluster_name: &str) -> Result<PathBuf, Error> {
    let safe = !cluster_name.is_empty()
        && cluster_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !cluster_name.starts_with('.');
    if !safe {
        return Err(Error::Config(format!(
            "cluster name {cluster_name:?} is not usable as a file name"
        )));
    }
    let base = dirs::config_dir().ok_or_else(|| {
        Error::Config("no user config directory (set HOME or XDG_CONFIG_HOME)".into())
    })?;
    Ok(base
        .join("ferry")
        .join("tokens")
        .join(format!("{cluster_name}.toml")))
}

pub fn save(cluster_name: &str, token: &CachedToken) -> Result<PathBuf, Error> {
    let path = path(cluster_name)?;
    let local = |e: std::io::Error| Error::Local(format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(local)?;
    }
    let text = toml::to_string(token).expect("a struct of strings and integers serializes");
    write_private(&path, text.as_bytes()).map_err(local)?;
    Ok(path)
}

pub fn load(cluster_name: &str) -> Result<CachedToken, Error> {
    let path = path(cluster_name)?;
    let text = std::fs::read_to_string(&path).map_err(|_| Error::Refused {
        code: ferry_proto::wire::ErrorCode::Unauthenticated,
        message: format!(
            "not logged in to cluster {cluster_name:?}; run `ferry login --user NAME` first"
        ),
    })?;
    toml::from_str(&text).map_err(|e| {
        Error::Config(format!(
            "{} is damaged ({e}); run `ferry login` again",
            path.display()
        ))
    })
}

/// Deletes the cached token of `cluster_name`; false when there was none.
pub fn remove(cluster_name: &str) -> Result<bool, Error> {
    let path = path(cluster_name)?;
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::Local(format!(
            "cannot delete {}: {e}",
            path.display()
        ))),
    }
}

/// Writes a file only its owner can read, replacing it atomically.
pub(crate) fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
