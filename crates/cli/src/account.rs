//! The technician's own commands: `ferry login`, `ls`, `whoami` and `logout`. Machine-readable
//! answers go to stdout, guidance to stderr.

use crate::admin::{print_json, table};
use crate::args::{ListArgs, LoginArgs, WhoamiArgs};
use crate::time::{now_ms, relative, rfc3339};
use crate::{CliResult, Failure};
use ferry_agent::error::exit;
use ferry_agent::{client, token_cache, ClientConfig};
use serde_json::{json, Value};
use std::path::Path;

pub async fn login(config: Option<&Path>, args: LoginArgs) -> CliResult {
    let (_, config) = ClientConfig::find_and_load(config)?;
    let password = if args.password_stdin {
        crate::admin::password_from_stdin()?
    } else if let Ok(password) = std::env::var("FERRY_PASSWORD") {
        password
    } else {
        rpassword::prompt_password(format!("Password for {}: ", args.user)).map_err(|e| {
            Failure::new(
                exit::FAILURE,
                format!("cannot read the password: {e} (use --password-stdin or FERRY_PASSWORD)"),
            )
        })?
    };
    let ok = client::login(&config, &args.user, &password).await?;
    let path = token_cache::save(
        &config.cluster_name,
        &token_cache::CachedToken {
            user: args.user.clone(),
            token: ok.token,
            expires_at_ms: ok.expires_at_ms,
        },
    )?;
    eprintln!(
        "logged in to {:?} as {:?} until {} ({}); token cached in {}",
        config.cluster_name,
        args.user,
        rfc3339(ok.expires_at_ms),
        relative(ok.expires_at_ms, now_ms()),
        path.display()
    );
    Ok(())
}

/// `ferry ls`: the hosts the logged-in user may reach.
pub async fn list(config: Option<&Path>, args: ListArgs) -> CliResult {
    let (_, config) = ClientConfig::find_and_load(config)?;
    let cached = token_cache::load(&config.cluster_name)?;
    let (hosts, answered_by) = client::list_hosts(&config, &cached.token).await?;
    let rows: Vec<Value> = hosts
        .iter()
        .map(|h| {
            json!({
                "host": h.name,
                "status": if h.online { "online" } else { "offline" },
                "online": h.online,
                "broker": if h.broker.is_empty() { Value::Null } else { json!(h.broker) },
                "services": h.services,
                "groups": h.groups,
            })
        })
        .collect();
    let answer = json!({ "cluster": config.cluster_name, "user": cached.user, "answered_by": answered_by, "hosts": rows });
    table(
        args.json,
        &answer,
        "hosts",
        &["host", "status", "broker", "services", "groups"],
    );
    if !args.json && hosts.is_empty() {
        eprintln!(
            "no host is granted to {:?}'s groups; an administrator can run `ferry admin grant USERGROUP HOSTGROUP`",
            cached.user
        );
    }
    Ok(())
}

/// `ferry whoami` (and `ferry status`): who the cached token belongs to, as the cluster says.
pub async fn whoami(config: Option<&Path>, args: WhoamiArgs) -> CliResult {
    let (path, config) = ClientConfig::find_and_load(config)?;
    let cached = token_cache::load(&config.cluster_name)?;
    let identity = client::who_am_i(&config, &cached.token).await?;
    if args.json {
        print_json(&json!({
            "user": identity.user,
            "groups": identity.groups,
            "cluster": config.cluster_name,
            "config": path.display().to_string(),
            "expires_at_ms": identity.expires_at_ms,
            "expires_at": rfc3339(identity.expires_at_ms),
            "answered_by": identity.answered_by,
        }));
        return Ok(());
    }
    println!("user      {}", identity.user);
    println!("groups    {}", identity.groups.join(", "));
    println!("cluster   {} ({})", config.cluster_name, path.display());
    println!(
        "token     valid until {} ({})",
        rfc3339(identity.expires_at_ms),
        relative(identity.expires_at_ms, now_ms())
    );
    println!("broker    {} answered", identity.answered_by);
    Ok(())
}

/// `ferry logout`: revokes the cached token on the cluster, then deletes it. When the
/// cluster cannot be reached nothing is deleted, so that the logout can be tried again.
pub async fn logout(config: Option<&Path>) -> CliResult {
    let (_, config) = ClientConfig::find_and_load(config)?;
    let cached = match token_cache::load(&config.cluster_name) {
        Ok(cached) => cached,
        Err(ferry_agent::Error::Refused { .. }) => {
            eprintln!("not logged in to {:?}; nothing to do", config.cluster_name);
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let revoked = client::logout(&config, &cached.token).await.map_err(|e| {
        Failure::new(
            e.exit_code(),
            format!("{e}; the token was not revoked and stays cached: try `ferry logout` again"),
        )
    })?;
    let path = token_cache::path(&config.cluster_name)?;
    token_cache::remove(&config.cluster_name)?;
    if revoked {
        eprintln!(
            "logged out of {:?}: {:?}'s token is revoked on every broker, and {} is deleted",
            config.cluster_name,
            cached.user,
            path.display()
        );
    } else {
        eprintln!(
            "logged out of {:?}: the token was no longer valid (expired or revoked); {} is deleted",
            config.cluster_name,
            path.display()
        );
    }
    Ok(())
}

/// `ferry passwd`: changes the logged-in user's own password on the cluster.
pub async fn passwd(config: Option<&Path>, args: crate::args::PasswdArgs) -> CliResult {
    let (_, config) = ClientConfig::find_and_load(config)?;
    let cached = token_cache::load(&config.cluster_name)?;
    let (current, new) = if args.password_stdin {
        let current = crate::admin::password_from_stdin()?;
        let new = crate::admin::password_from_stdin()?;
        (current, new)
    } else {
        let current = rpassword::prompt_password("Current password: ").map_err(|e| {
            Failure::new(
                exit::FAILURE,
                format!("cannot read the password: {e} (use --password-stdin)"),
            )
        })?;
        (current, crate::admin::read_password(false)?)
    };
    client::change_password(&config, &cached.token, &current, &new).await?;
    eprintln!(
        "password of {:?} changed on cluster {:?}; tokens already issued stay valid",
        cached.user, config.cluster_name
    );
    Ok(())
}
