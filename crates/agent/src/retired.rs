//! Node ids the cluster removed, as brokers say in their `HelloAck`: an endpoint never trusts a
//! broker presenting one of their certificates again, though it stays valid (signed by the
//! cluster CA) until it expires. Remembered in a file, so that a process started later,
//! whose config still names the removed node, refuses it too.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;

/// Names remembered at most (a removal is rare; names are at most 64 bytes).
const RETIRED_MAX: usize = 1024;

pub(crate) struct Retired {
    names: Mutex<BTreeSet<String>>,
    /// Where the names are kept between runs; `None` keeps them in memory only.
    file: Option<PathBuf>,
}

impl Retired {
    /// The names remembered in `file` (none when it does not exist or cannot be read).
    pub(crate) fn load(file: Option<PathBuf>) -> Self {
        let names = file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .map(|text| {
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && l.len() <= 64)
                    .take(RETIRED_MAX)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Self {
            names: Mutex::new(names),
            file,
        }
    }

    pub(crate) fn contains(&self, node_id: &str) -> bool {
        self.lock().contains(node_id)
    }

    /// Adds what a broker said; writes the file when something was new.
    pub(crate) fn learn(&self, names: &[String]) {
        let text = {
            let mut known = self.lock();
            let before = known.len();
            for name in names.iter().filter(|n| !n.is_empty() && n.len() <= 64) {
                if known.len() >= RETIRED_MAX {
                    break;
                }
                if known.insert(name.clone()) {
                    tracing::info!(node = %name, "the cluster removed this node: its certificate is no longer trusted");
                }
            }
            if known.len() == before {
                return;
            }
            known.iter().map(|n| format!("{n}\n")).collect::<String>()
        };
        if let Some(file) = &self.file {
            if let Some(dir) = file.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if let Err(e) = crate::token_cache::write_private(file, text.as_bytes()) {
                tracing::warn!(file = %file.display(), error = %e, "cannot remember the removed nodes");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.names
            .lock()
            .expect("never poisoned: no panics under the lock")
    }
}
