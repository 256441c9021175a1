//! `ferry admin` commands that grant and withdraw access: users, hosts, grants, sessions and
//! admin tokens. Each is one admin API call; a withdrawal ends live access on every broker.

use crate::admin::{print_json, read_password, table, AdminClient};
use crate::args::{
    GrantArgs, GrantCommand, HostCommand, SessionCommand, TokenCommand, UserCommand,
};
use crate::CliResult;
use serde_json::json;

/// Prints `value` as JSON when asked, else `sentence` on stderr.
fn done(json: bool, value: &serde_json::Value, sentence: String) {
    if json {
        print_json(value);
    } else {
        eprintln!("{sentence}");
    }
}

pub async fn user(client: &AdminClient, command: UserCommand, json: bool) -> CliResult {
    match command {
        UserCommand::Add {
            name,
            groups,
            password_stdin,
        } => {
            let password = read_password(password_stdin)?;
            let body = json!({ "name": name, "groups": groups, "password": password });
            let answer = client.post("/v1/users", &body).await?;
            done(
                json,
                &answer,
                format!("user {name:?} added (groups: {})", groups.join(", ")),
            );
        }
        UserCommand::List => {
            let users = client.get("/v1/users").await?;
            table(
                json,
                &users,
                "users",
                &["name", "groups", "disabled", "failed_logins"],
            );
        }
        UserCommand::Disable { name } => {
            let answer = client
                .post(&format!("/v1/users/{name}/disable"), &json!({}))
                .await?;
            done(
                json,
                &answer,
                format!("user {name:?} disabled; their sessions are ending on every broker"),
            );
        }
        UserCommand::Enable { name } => {
            let answer = client
                .post(&format!("/v1/users/{name}/enable"), &json!({}))
                .await?;
            done(json, &answer, format!("user {name:?} enabled"));
        }
        UserCommand::Remove { name } => {
            let answer = client.delete(&format!("/v1/users/{name}")).await?;
            done(
                json,
                &answer,
                format!("user {name:?} removed with their login tokens; their sessions are ending"),
            );
        }
        UserCommand::Passwd {
            name,
            password_stdin,
        } => {
            let password = read_password(password_stdin)?;
            let answer = client
                .put(
                    &format!("/v1/users/{name}/password"),
                    &json!({ "password": password }),
                )
                .await?;
            done(
                json,
                &answer,
                format!(
                    "password of {name:?} set; tokens already issued still work (revoke them \
                     with `ferry admin token revoke --user {name}`)"
                ),
            );
        }
    }
    Ok(())
}

pub async fn host(client: &AdminClient, command: HostCommand, json: bool) -> CliResult {
    match command {
        HostCommand::Enroll { name, groups } => {
            let body = json!({ "name": name, "groups": groups });
            let enrollment = client.post("/v1/hosts", &body).await?;
            print_enrollment(&name, &enrollment);
        }
        HostCommand::ReEnroll { name } => {
            let enrollment = client
                .post(&format!("/v1/hosts/{name}/re-enroll"), &json!({}))
                .await?;
            print_enrollment(&name, &enrollment);
            eprintln!("the old credential of {name:?} no longer works; its agent was disconnected");
        }
        HostCommand::Remove { name } => {
            let answer = client.delete(&format!("/v1/hosts/{name}")).await?;
            done(
                json,
                &answer,
                format!("host {name:?} removed; its agent is disconnected and its sessions end"),
            );
        }
        HostCommand::List => {
            let hosts = client.get("/v1/hosts").await?;
            table(
                json,
                &hosts,
                "hosts",
                &[
                    "name",
                    "groups",
                    "enrolled",
                    "connected",
                    "attached_broker",
                    "services",
                ],
            );
        }
    }
    Ok(())
}

/// The token alone on stdout, so that `TOKEN=$(ferry admin ... host enroll ...)` works.
fn print_enrollment(name: &str, enrollment: &serde_json::Value) {
    let token = enrollment["token"].as_str().unwrap_or_default();
    println!("{token}");
    eprintln!(
        "one-time enrollment token for host {name:?}; on the host run:\n  \
         ferry host --config client.toml --name {name} --state-dir /var/lib/ferry \
         --enroll <token> --expose ssh=127.0.0.1:22"
    );
}

pub async fn grant(client: &AdminClient, args: GrantArgs, json: bool) -> CliResult {
    match args.command {
        Some(GrantCommand::Remove { group, host_group }) => {
            let answer = client
                .delete(&format!("/v1/grants/{group}/{host_group}"))
                .await?;
            done(
                json,
                &answer,
                format!(
                    "users of group {group:?} may no longer reach hosts of group {host_group:?}; \
                     their sessions there are ending"
                ),
            );
        }
        None => {
            // clap requires both when no subcommand is given.
            let group = args.group.unwrap_or_default();
            let host_group = args.host_group.unwrap_or_default();
            let body = json!({
                "user_group": group, "host_group": host_group, "services": args.services,
            });
            let answer = client.post("/v1/grants", &body).await?;
            let services = if args.services.is_empty() {
                "every service".to_owned()
            } else {
                format!("services {}", args.services.join(", "))
            };
            done(
                json,
                &answer,
                format!("users of group {group:?} may now open sessions to {services} of hosts of group {host_group:?}"),
            );
        }
    }
    Ok(())
}

pub async fn session(client: &AdminClient, command: SessionCommand, json: bool) -> CliResult {
    match command {
        SessionCommand::Kill { id, reason } => {
            let query: String = url_escape(&reason);
            let answer = client
                .delete(&format!("/v1/sessions/{id}?reason={query}"))
                .await?;
            done(
                json,
                &answer,
                format!("session {id} killed; both ends close on every broker"),
            );
        }
    }
    Ok(())
}

pub async fn token(client: &AdminClient, command: TokenCommand, json: bool) -> CliResult {
    match command {
        TokenCommand::Create { name, role } => {
            let answer = client
                .post("/v1/tokens", &json!({ "name": name, "role": role }))
                .await?;
            // The token alone on stdout: it is shown this once.
            println!("{}", answer["token"].as_str().unwrap_or_default());
            eprintln!("admin token {name:?} with role {role} created; keep it secret");
        }
        TokenCommand::List => {
            let tokens = client.get("/v1/tokens").await?;
            table(
                json,
                &tokens,
                "tokens",
                &["name", "role", "created_by", "created_at_ms"],
            );
        }
        TokenCommand::Revoke {
            name: _,
            user: Some(user),
        } => {
            let answer = client.delete(&format!("/v1/users/{user}/tokens")).await?;
            done(
                json,
                &answer,
                format!(
                    "every login token of {user:?} revoked; the sessions they opened are ending"
                ),
            );
        }
        TokenCommand::Revoke { name, user: None } => {
            // clap requires the name without --user.
            let name = name.unwrap_or_default();
            let answer = client.delete(&format!("/v1/tokens/{name}")).await?;
            done(json, &answer, format!("admin token {name:?} revoked"));
        }
    }
    Ok(())
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass).
fn url_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
