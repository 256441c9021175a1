//! `client.toml`: what a client or host agent needs to find and trust a cluster.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Name of the cluster; keys the cached login token.
    pub cluster_name: String,
    /// The cluster CA certificate; the only certificate this endpoint trusts.
    pub ca_cert: PathBuf,
    /// Largest UDP payload to send and accept (default 1452, Ethernet-safe). Raise it on
    /// loopback or jumbo-frame networks; must match what the brokers allow to help.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_payload_bytes_max: Option<u16>,
    /// Brokers to try, in order. Endpoints also learn the current list from the brokers.
    pub brokers: Vec<BrokerEntry>,
    /// Largest amount of a session's sent-but-unacknowledged bytes kept for replay after a
    /// broker fails (default 8 MiB). When it is full the sender waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_buffer_bytes_max: Option<usize>,
    /// Witnesses serve no hosts or clients; listed for `ferry admin --node`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub witnesses: Vec<WitnessEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WitnessEntry {
    pub node_id: String,
    /// Base URL of the witness's admin API.
    pub admin_url: String,
}

impl ClientConfig {
    /// Transport limits of this endpoint. Keep-alives are frequent and the idle timeout short,
    /// so that a dead broker is noticed within the stall budget of a resumed session
    /// (docs/DESIGN.md, P7).
    pub fn transport_limits(&self) -> ferry_transport::endpoint::Limits {
        let mut limits = ferry_transport::endpoint::Limits {
            idle_timeout: ENDPOINT_IDLE_TIMEOUT,
            keep_alive: ENDPOINT_KEEP_ALIVE,
            ..Default::default()
        };
        if let Some(bytes) = self.udp_payload_bytes_max {
            limits.udp_payload_bytes_max = bytes;
        }
        limits
    }

    /// The resumable stream's limits for this endpoint's sessions.
    pub fn session_stream_config(&self) -> ferry_session::Config {
        let mut config = ferry_session::Config::default();
        if let Some(bytes) = self.session_buffer_bytes_max {
            config.buffer_bytes_max =
                bytes.clamp(MIN_SESSION_BUFFER_BYTES, ferry_session::BUFFER_BYTES_LIMIT);
        }
        config
    }
}

/// A connection silent for this long is dead: its broker is gone. (Keep-alives every
/// `ENDPOINT_KEEP_ALIVE` keep a healthy idle connection well inside it.)
const ENDPOINT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);
const ENDPOINT_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_millis(300);
/// Smallest replay buffer accepted; smaller would stall every session on acknowledgements.
const MIN_SESSION_BUFFER_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BrokerEntry {
    /// Node id; also the name its certificate is checked against.
    pub node_id: String,
    /// Where the broker's relay listener is reached (QUIC): an IP or a DNS name, with port.
    pub relay_addr: ferry_transport::addr::HostPort,
    /// Base URL of the broker's admin API, for `ferry admin`.
    pub admin_url: String,
}

impl ClientConfig {
    /// The config file to use: `explicit` (`--config`), else `$FERRY_CONFIG` (used as given,
    /// even if missing: loading it then says so), else the first of
    /// `$XDG_CONFIG_HOME/ferry/client.toml` (`~/.config/...`) and `/etc/ferry/client.toml`
    /// that exists. The error names everything tried.
    pub fn find(explicit: Option<&Path>) -> Result<PathBuf, crate::Error> {
        if let Some(path) = explicit {
            return Ok(path.to_path_buf());
        }
        if let Some(path) = std::env::var_os("FERRY_CONFIG").filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(path));
        }
        let user = dirs::config_dir().map(|d| d.join("ferry").join("client.toml"));
        let system = PathBuf::from("/etc/ferry/client.toml");
        if let Some(found) = [user.clone(), Some(system.clone())]
            .into_iter()
            .flatten()
            .find(|p| p.exists())
        {
            return Ok(found);
        }
        let user = user.map_or("not set".to_owned(), |p| format!("{}: none", p.display()));
        Err(crate::Error::Config(format!(
            "no client config: pass --config FILE (the client.toml of `ferry init`); tried \
             $FERRY_CONFIG (not set), $XDG_CONFIG_HOME/ferry/client.toml ({user}), {} (none)",
            system.display()
        )))
    }

    /// [`ClientConfig::find`], then [`ClientConfig::load`]; returns the path too.
    pub fn find_and_load(explicit: Option<&Path>) -> Result<(PathBuf, Self), crate::Error> {
        let path = Self::find(explicit)?;
        let config = Self::load(&path)?;
        Ok((path, config))
    }

    pub fn load(path: &Path) -> Result<Self, crate::Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| crate::Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let mut config: ClientConfig = toml::from_str(&text)
            .map_err(|e| crate::Error::Config(format!("{} is invalid: {e}", path.display())))?;
        if config.ca_cert.is_relative() {
            config.ca_cert = path
                .parent()
                .unwrap_or(Path::new("."))
                .join(&config.ca_cert);
        }
        if let Some(bytes) = config.session_buffer_bytes_max {
            let (min, max) = (MIN_SESSION_BUFFER_BYTES, ferry_session::BUFFER_BYTES_LIMIT);
            if !(min..=max).contains(&bytes) {
                return Err(crate::Error::Config(format!(
                    "{}: session_buffer_bytes_max = {bytes} is outside {min}..={max}",
                    path.display()
                )));
            }
        }
        if config.brokers.is_empty() {
            return Err(crate::Error::Config(format!(
                "{} lists no brokers; add a [[brokers]] entry",
                path.display()
            )));
        }
        Ok(config)
    }
}
