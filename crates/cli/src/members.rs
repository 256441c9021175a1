//! `ferry admin member ...`: list, add, promote and remove cluster members.

use crate::admin::{table, AdminClient};
use crate::args::MemberCommand;
use crate::{CliResult, Failure};
use ferry_agent::error::exit;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often `member add --wait` looks at the membership.
const WAIT_POLL: Duration = Duration::from_millis(500);

pub async fn run(
    client: &AdminClient,
    config: &Path,
    token_file: Option<&Path>,
    command: MemberCommand,
    json: bool,
) -> CliResult {
    match command {
        MemberCommand::List => {
            let members = members_from_leader(client, config, token_file).await?;
            if !json && !members["progress_known"].as_bool().unwrap_or(false) {
                eprintln!(
                    "(no leader answered: replication progress is unknown; showing {}'s view)",
                    members["answered_by"].as_str().unwrap_or("?")
                );
            }
            table(
                json,
                &members,
                "members",
                &[
                    "node_id",
                    "raft_id",
                    "role",
                    "suffrage",
                    "is_leader",
                    "matched_index",
                    "reachable",
                    "peer_addr",
                ],
            );
            if members["change_pending"].as_bool() == Some(true) {
                eprintln!("a membership change is being applied");
            }
        }
        MemberCommand::Add {
            node_id,
            raft_id,
            peer_addr,
            relay_addr,
            witness,
            learner,
            wait,
        } => {
            let body = serde_json::json!({
                "node_id": node_id,
                "raft_id": raft_id,
                "peer_addr": peer_addr,
                "relay_addr": relay_addr,
                "role": if witness { "witness" } else { "broker" },
                "learner": learner,
            });
            let answer = client.post("/v1/members", &body).await?;
            eprintln!("{}", answer["message"].as_str().unwrap_or("added"));
            if let Some(wait) = wait.filter(|_| !learner) {
                wait_for_voter(client, &node_id, wait).await?;
                eprintln!("{node_id} is a voter");
            }
        }
        MemberCommand::Promote { node_id } => {
            let answer = client
                .post(&format!("/v1/members/{node_id}/promote"), &Value::Null)
                .await?;
            eprintln!("{}", answer["message"].as_str().unwrap_or("promoted"));
        }
        MemberCommand::Remove { node_id, force } => {
            if force {
                eprintln!("WARNING: --force skips the quorum check; this is audited");
            }
            let answer = client
                .delete(&format!("/v1/members/{node_id}?force={force}"))
                .await?;
            eprintln!("{}", answer["message"].as_str().unwrap_or("removed"));
        }
    }
    Ok(())
}

/// The membership as the leader sees it (with progress), else as any node does.
async fn members_from_leader(
    client: &AdminClient,
    config: &Path,
    token_file: Option<&Path>,
) -> Result<Value, Failure> {
    let members = client.get("/v1/members").await?;
    if members["progress_known"].as_bool() == Some(true) {
        return Ok(members);
    }
    let leader = members["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["is_leader"].as_bool() == Some(true))
        .and_then(|m| m["node_id"].as_str());
    let Some(leader) = leader else {
        return Ok(members);
    };
    match AdminClient::for_node(config, token_file, Some(leader)) {
        Ok(at_leader) => Ok(at_leader.get("/v1/members").await.unwrap_or(members)),
        Err(_) => Ok(members), // the leader is not in client.toml
    }
}

async fn wait_for_voter(client: &AdminClient, node_id: &str, limit: Duration) -> CliResult {
    let deadline = Instant::now() + limit;
    loop {
        let members = client.get("/v1/members").await?;
        let me = members["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["node_id"].as_str() == Some(node_id));
        if me.is_some_and(|m| m["suffrage"].as_str() == Some("voter")) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Failure::new(
                exit::UNAVAILABLE,
                format!(
                    "{node_id} was not promoted within {}s: is its process running and reachable \
                     from the leader? (`ferry admin member list` shows its progress)",
                    limit.as_secs()
                ),
            ));
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}
