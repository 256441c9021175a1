//! Names of users, hosts, groups and services: parsed once at the edge so that logs, audit
//! records and TOML files never carry control characters or unbounded strings.

use crate::{Refusal, RefusalKind};

/// Longest accepted name, in bytes.
pub const NAME_BYTES_MAX: usize = 64;

/// What a name names, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    User,
    Host,
    Group,
    Service,
    Node,
    /// An admin API token's name.
    Token,
}

impl NameKind {
    fn as_str(self) -> &'static str {
        match self {
            NameKind::User => "user",
            NameKind::Host => "host",
            NameKind::Group => "group",
            NameKind::Service => "service",
            NameKind::Node => "node",
            NameKind::Token => "token",
        }
    }
}

/// Accepts 1 to 64 ASCII letters, digits, `.`, `_` and `-`, starting with a letter or digit.
pub fn validate_name(kind: NameKind, name: &str) -> Result<(), Refusal> {
    let what = kind.as_str();
    let invalid = |why: String| Err(Refusal::new(RefusalKind::Invalid, why));
    if name.is_empty() {
        return invalid(format!("{what} name is empty"));
    }
    if name.len() > NAME_BYTES_MAX {
        return invalid(format!(
            "{what} name is {} bytes long; the limit is {NAME_BYTES_MAX}",
            name.len()
        ));
    }
    let first_ok = name.as_bytes()[0].is_ascii_alphanumeric();
    let all_ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !first_ok || !all_ok {
        return invalid(format!(
            "{what} name {name:?} may contain only letters, digits, '.', '_' and '-', \
             and must start with a letter or digit"
        ));
    }
    Ok(())
}
