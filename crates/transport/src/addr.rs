//! Where a node is reached: a host (a DNS name or an IP address) and a port.
//!
//! Configs name nodes by the addresses others dial, which across machines, in containers and
//! in Kubernetes are often DNS names (`b1.example.net:7100`, a StatefulSet pod's stable name)
//! rather than IPs that change when a pod moves. A name is resolved each time it is dialled,
//! so a node that comes back at a new IP is found again.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// Longest DNS name accepted (RFC 1035's limit on a name's text form).
const HOST_CHARS_MAX: usize = 253;

/// A host and a port: `10.0.0.5:7100`, `[2001:db8::5]:7100` or `b1.example.net:7100`.
/// Parsed once at the edge, so a value of this type always names something dialable.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPort {
    host: Host,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

/// Why a text is not a `host:port`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{text:?} is not an address: {reason} (write host:port, e.g. 10.0.0.5:7100, [2001:db8::5]:7100 or b1.example.net:7100)")]
pub struct ParseError {
    text: String,
    reason: &'static str,
}

impl ParseError {
    /// What is wrong, without the text.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl HostPort {
    /// An IP address and port.
    pub fn ip(addr: SocketAddr) -> Self {
        Self {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        }
    }

    /// A host (name or IP, without port) and a port.
    pub fn new(host: &str, port: u16) -> Result<Self, ParseError> {
        Ok(Self {
            host: parse_host(host, host)?,
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The IP address, when the host is one (no lookup).
    pub fn as_ip(&self) -> Option<IpAddr> {
        match &self.host {
            Host::Ip(ip) => Some(*ip),
            Host::Name(_) => None,
        }
    }

    /// The socket address, when the host is an IP (no lookup).
    pub fn as_socket_addr(&self) -> Option<SocketAddr> {
        self.as_ip().map(|ip| SocketAddr::new(ip, self.port))
    }

    /// The host as certificates name it: an IP's text or the DNS name.
    pub fn host(&self) -> String {
        match &self.host {
            Host::Ip(ip) => ip.to_string(),
            Host::Name(name) => name.clone(),
        }
    }

    /// The same host with another port.
    pub fn with_port(&self, port: u16) -> Self {
        Self {
            host: self.host.clone(),
            port,
        }
    }

    /// Resolves the address to dial: an IP as it is; a name through the system's resolver,
    /// preferring an address of the family of `local` (the endpoint that will dial).
    pub async fn resolve(&self, local: Option<SocketAddr>) -> std::io::Result<SocketAddr> {
        if let Some(addr) = self.as_socket_addr() {
            return Ok(addr);
        }
        let found: Vec<SocketAddr> = tokio::net::lookup_host((self.host(), self.port))
            .await?
            .collect();
        let v4 = local.is_none_or(|l| l.is_ipv4());
        found
            .iter()
            .find(|a| a.is_ipv4() == v4)
            .or(found.first())
            .copied()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{} has no address", self.host()),
                )
            })
    }
}

fn parse_host(text: &str, host: &str) -> Result<Host, ParseError> {
    let fail = |reason| ParseError {
        text: text.to_owned(),
        reason,
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Host::Ip(ip));
    }
    if host.is_empty() {
        return Err(fail("the host is empty"));
    }
    if host.len() > HOST_CHARS_MAX {
        return Err(fail("the host name is longer than 253 characters"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !host.trim_end_matches('.').split('.').all(label_ok) {
        return Err(fail(
            "a host name is dot-separated labels of letters, digits and inner '-'",
        ));
    }
    Ok(Host::Name(host.to_ascii_lowercase()))
}

impl FromStr for HostPort {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Self::ip(addr));
        }
        let fail = |reason| ParseError {
            text: text.to_owned(),
            reason,
        };
        let (host, port) = text.rsplit_once(':').ok_or(fail("no :port"))?;
        if host.contains(':') {
            return Err(fail("an IPv6 address goes in brackets"));
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| fail("the port is not a number from 0 to 65535"))?;
        Ok(Self {
            host: parse_host(text, host)?,
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(ip) => SocketAddr::new(*ip, self.port).fmt(f),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

impl From<SocketAddr> for HostPort {
    fn from(addr: SocketAddr) -> Self {
        Self::ip(addr)
    }
}

impl TryFrom<String> for HostPort {
    type Error = ParseError;
    fn try_from(text: String) -> Result<Self, ParseError> {
        text.parse()
    }
}

impl From<HostPort> for String {
    fn from(addr: HostPort) -> String {
        addr.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<&str, &str>) {
        let parsed = text.parse::<HostPort>();
        match (parsed, expected) {
            (Ok(addr), Ok(shown)) => assert_eq!(addr.to_string(), shown, "{text}"),
            (Err(e), Err(reason)) => assert!(e.to_string().contains(reason), "{text}: {e}"),
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn parses_ips_names_and_refuses_the_rest() {
        check("10.0.0.5:7100", Ok("10.0.0.5:7100"));
        check("[2001:db8::5]:7100", Ok("[2001:db8::5]:7100"));
        check("B1.Example.NET:7100", Ok("b1.example.net:7100"));
        check(
            "ferry-broker-0.ferry-broker:7100",
            Ok("ferry-broker-0.ferry-broker:7100"),
        );
        check("localhost:1", Ok("localhost:1"));
        check("b1.example.net", Err("no :port"));
        check("2001:db8::5:7100", Err("brackets"));
        check("b1:http", Err("the port is not a number"));
        check(":7100", Err("the host is empty"));
        check("-b1:7100", Err("dot-separated labels"));
        check("b_1:7100", Err("dot-separated labels"));
        check(&format!("{}:1", "a".repeat(254)), Err("longer than 253"));
    }

    #[test]
    fn serializes_as_text() {
        #[derive(Serialize, Deserialize)]
        struct C {
            addr: HostPort,
        }
        let c: C = toml::from_str("addr = \"b1.example.net:7100\"").expect("parses");
        assert_eq!(c.addr.host(), "b1.example.net");
        assert_eq!(
            toml::to_string(&c).expect("serializes"),
            "addr = \"b1.example.net:7100\"\n"
        );
        assert!(toml::from_str::<C>("addr = \"b1\"").is_err());
    }
}
