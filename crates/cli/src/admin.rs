//! `ferry admin`: a client of the admin API. Tries each broker in client.toml in turn.

use crate::args::{AdminArgs, AdminCommand};
use crate::{CliResult, Failure};
use ferry_agent::error::exit;
use ferry_agent::ClientConfig;
use reqwest::StatusCode;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Per-request deadline; admin calls are small and a hung node should not hang the operator.
/// Longer than the slowest answer (a drain asked through a follower: the leader's read index,
/// its proposal, and the forwarding, about 12 s at most).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

pub struct AdminClient {
    http: reqwest::Client,
    urls: Vec<String>,
    token: String,
}

impl AdminClient {
    pub fn new(config_path: &Path, token_file: Option<&Path>) -> Result<Self, Failure> {
        Self::for_node(config_path, token_file, None)
    }

    /// A client of one node's admin API (`node`), or of the first node that answers.
    pub fn for_node(
        config_path: &Path,
        token_file: Option<&Path>,
        node: Option<&str>,
    ) -> Result<Self, Failure> {
        let config = ClientConfig::load(config_path)?;
        let nodes = config
            .brokers
            .iter()
            .map(|b| (b.node_id.as_str(), b.admin_url.as_str()))
            .chain(
                config
                    .witnesses
                    .iter()
                    .map(|w| (w.node_id.as_str(), w.admin_url.as_str())),
            );
        // Without --node: the brokers, in order (any node answers; followers forward writes).
        let urls: Vec<String> = match node {
            Some(node) => nodes
                .filter(|(id, _)| *id == node)
                .map(|(_, url)| url.to_owned())
                .collect(),
            None => config.brokers.iter().map(|b| b.admin_url.clone()).collect(),
        };
        if urls.is_empty() {
            return Err(Failure::new(
                exit::CONFIG,
                format!(
                    "{} lists no node {:?}",
                    config_path.display(),
                    node.unwrap_or_default()
                ),
            ));
        }
        let token = match std::env::var("FERRY_ADMIN_TOKEN") {
            Ok(token) if token_file.is_none() => token,
            _ => {
                let path: PathBuf = token_file.map(Path::to_path_buf).unwrap_or_else(|| {
                    config_path
                        .parent()
                        .unwrap_or(Path::new("."))
                        .join("admin.token")
                });
                std::fs::read_to_string(&path).map_err(|e| {
                    Failure::new(
                        exit::CONFIG,
                        format!(
                            "cannot read the admin token {}: {e} (pass --token-file or set FERRY_ADMIN_TOKEN)",
                            path.display()
                        ),
                    )
                })?
            }
        };
        let mut headers = reqwest::header::HeaderMap::new();
        if let Ok(operator) = reqwest::header::HeaderValue::from_str(&operator()) {
            headers.insert("x-ferry-operator", operator);
        }
        let http = https_client(&config)?
            .default_headers(headers)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| Failure::new(exit::FAILURE, e.to_string()))?;
        Ok(Self {
            http,
            urls,
            token: token.trim().to_owned(),
        })
    }

    /// POSTs and returns the status and body whatever the status (for answers that carry
    /// details with a refusal, like the restart gate's 409).
    pub async fn post_with_status(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<(StatusCode, Value), Failure> {
        let mut unreachable = Vec::new();
        for url in &self.urls {
            let request = self
                .http
                .post(format!("{url}{path}"))
                .json(body)
                .bearer_auth(&self.token);
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    return Ok((status, response.json().await.unwrap_or(Value::Null)));
                }
                Err(e) => unreachable.push(format!("{url}: {e}")),
            }
        }
        Err(Failure::new(
            exit::UNAVAILABLE,
            format!("no admin API answered: {}", unreachable.join("; ")),
        ))
    }

    /// GETs `path` from the first node that answers and writes the response body to `out` as
    /// it arrives (bounded by `timeout` in all); the bytes written.
    pub async fn download(
        &self,
        path: &str,
        out: &mut impl std::io::Write,
        timeout: Duration,
    ) -> Result<u64, Failure> {
        let mut unreachable = Vec::new();
        for url in &self.urls {
            let request = self
                .http
                .get(format!("{url}{path}"))
                .bearer_auth(&self.token)
                .timeout(timeout);
            let mut response = match request.send().await {
                Ok(r) => r,
                Err(e) => {
                    unreachable.push(format!("{url}: {e}"));
                    continue;
                }
            };
            let status = response.status();
            if !status.is_success() {
                let body: Value = response.json().await.unwrap_or(Value::Null);
                let code = match status {
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => exit::DENIED,
                    StatusCode::SERVICE_UNAVAILABLE => exit::UNAVAILABLE,
                    _ => exit::FAILURE,
                };
                let reason = body["error"].as_str().unwrap_or("no reason given");
                return Err(Failure::new(code, format!("{reason} ({status})")));
            }
            let mut written = 0u64;
            loop {
                let chunk = response.chunk().await.map_err(|e| {
                    Failure::new(
                        exit::UNAVAILABLE,
                        format!("{url}: the transfer broke after {written} bytes: {e}"),
                    )
                })?;
                let Some(chunk) = chunk else { break };
                out.write_all(&chunk)
                    .map_err(|e| Failure::new(exit::FAILURE, format!("cannot write: {e}")))?;
                written += chunk.len() as u64;
            }
            return Ok(written);
        }
        Err(Failure::new(
            exit::UNAVAILABLE,
            format!("no admin API answered: {}", unreachable.join("; ")),
        ))
    }

    pub async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(|url| self.http.get(format!("{url}{path}"))).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.call(|url| self.http.post(format!("{url}{path}")).json(body))
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.call(|url| self.http.put(format!("{url}{path}")).json(body))
            .await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, Failure> {
        self.call(|url| self.http.delete(format!("{url}{path}")))
            .await
    }

    async fn call(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<Value, Failure> {
        let mut unreachable = Vec::new();
        for url in &self.urls {
            let response = match build(url).bearer_auth(&self.token).send().await {
                Ok(r) => r,
                Err(e) => {
                    unreachable.push(format!("{url}: {e}"));
                    continue;
                }
            };
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if status.is_success() {
                return Ok(body);
            }
            let message = body["error"]
                .as_str()
                .unwrap_or("no reason given")
                .to_owned();
            let code = match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => exit::DENIED,
                StatusCode::NOT_FOUND => exit::NOT_FOUND,
                StatusCode::SERVICE_UNAVAILABLE => exit::UNAVAILABLE,
                _ => exit::FAILURE,
            };
            return Err(Failure::new(code, format!("{message} ({status})")));
        }
        Err(Failure::new(
            exit::UNAVAILABLE,
            format!("no admin API answered: {}", unreachable.join("; ")),
        ))
    }
}

/// An HTTP client that trusts the cluster's CA alone (the admin API is HTTPS under it).
pub fn https_client(config: &ClientConfig) -> Result<reqwest::ClientBuilder, Failure> {
    let trust = ferry_transport::tls::Trust::load(&config.ca_cert)
        .map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
    let tls = ferry_transport::tls::https_client(&trust)
        .map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
    Ok(reqwest::Client::builder().use_preconfigured_tls(tls))
}

/// Who runs this command, for the audit log: `FERRY_OPERATOR`, else `$USER@hostname`.
fn operator() -> String {
    let name = std::env::var("FERRY_OPERATOR").unwrap_or_else(|_| {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into());
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{user}@{}", host.trim())
    });
    name.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}

pub async fn run(config: Option<&Path>, args: AdminArgs) -> CliResult {
    let config_path = ClientConfig::find(config)?;
    let client = AdminClient::for_node(
        &config_path,
        args.token_file.as_deref(),
        args.node.as_deref(),
    )?;
    let json = args.json;
    match args.command {
        AdminCommand::Status => {
            let status = client.get("/v1/cluster").await?;
            if json {
                print_json(&status);
            } else {
                crate::operations::print_cluster(&status);
            }
        }
        AdminCommand::RestartCheck { node } => {
            crate::operations::restart_check(&client, &node, json).await?;
        }
        AdminCommand::Drain { node, wait, force } => {
            crate::operations::drain(&client, &node, force, wait, json).await?;
        }
        AdminCommand::Undrain { node } => {
            client
                .delete(&format!("/v1/nodes/{node}/maintenance"))
                .await?;
            eprintln!("{node}: maintenance lease released; it serves new sessions again");
        }
        AdminCommand::Node => {
            let status = client.get("/v1/status").await?;
            if json {
                print_json(&status);
            } else {
                print_status(&status);
            }
        }
        AdminCommand::User(command) => crate::access::user(&client, command, json).await?,
        AdminCommand::Host(command) => crate::access::host(&client, command, json).await?,
        AdminCommand::Grant(grant) => crate::access::grant(&client, grant, json).await?,
        AdminCommand::Session(command) => crate::access::session(&client, command, json).await?,
        AdminCommand::Token(command) => crate::access::token(&client, command, json).await?,
        AdminCommand::Grants => {
            let grants = client.get("/v1/grants").await?;
            table(
                json,
                &grants,
                "grants",
                &["user_group", "host_group", "services"],
            );
        }
        AdminCommand::Sessions => {
            let mut sessions = client.get("/v1/sessions").await?;
            with_readable_times(&mut sessions, "sessions", &[("opened_at_ms", "opened")]);
            table(
                json,
                &sessions,
                "sessions",
                &[
                    "id", "user", "host", "service", "broker", "state", "resumes", "opened",
                ],
            );
        }
        AdminCommand::Member(command) => {
            crate::members::run(
                &client,
                &config_path,
                args.token_file.as_deref(),
                command,
                json,
            )
            .await?;
        }
        AdminCommand::Snapshot(crate::args::SnapshotCommand::Save { file }) => {
            crate::backup::save(&client, &file, json).await?;
        }
        AdminCommand::Audit { after } => {
            let mut records = client.get(&format!("/v1/audit?after={after}")).await?;
            with_readable_times(&mut records, "records", &[("at_ms", "at")]);
            table(
                json,
                &records,
                "records",
                &[
                    "seq", "at", "actor", "source", "action", "target", "outcome",
                ],
            );
        }
    }
    Ok(())
}

/// The first line of stdin, without its line ending (`--password-stdin`).
pub(crate) fn password_from_stdin() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| {
        Failure::new(
            exit::FAILURE,
            format!("cannot read the password from stdin: {e}"),
        )
    })?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

pub(crate) fn read_password(from_stdin: bool) -> Result<String, Failure> {
    if from_stdin {
        return password_from_stdin();
    }
    let first = rpassword::prompt_password("New password: ").map_err(|e| {
        Failure::new(
            exit::FAILURE,
            format!("cannot read the password: {e} (use --password-stdin)"),
        )
    })?;
    let second = rpassword::prompt_password("Repeat it: ")
        .map_err(|e| Failure::new(exit::FAILURE, format!("cannot read the password: {e}")))?;
    if first != second {
        return Err(Failure::new(
            exit::FAILURE,
            "the passwords differ; nothing was changed",
        ));
    }
    Ok(first)
}

/// Adds to each row of `value[key]`, for every (`field_ms`, `name`) of `fields`, the field
/// `name` as RFC 3339 and `name_ago` as an age: tables show those, JSON keeps both forms.
fn with_readable_times(value: &mut Value, key: &str, fields: &[(&str, &str)]) {
    let now = crate::time::now_ms();
    for row in value[key].as_array_mut().into_iter().flatten() {
        for (field, name) in fields {
            let ms = row[*field].as_u64().unwrap_or(0);
            if let Some(row) = row.as_object_mut() {
                row.insert((*name).to_owned(), Value::String(crate::time::rfc3339(ms)));
                row.insert(
                    format!("{name}_ago"),
                    Value::String(crate::time::relative(ms, now)),
                );
            }
        }
    }
}

pub fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("a JSON value serializes")
    );
}

pub(crate) fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Prints `value[key]` (an array of objects) as aligned columns, or as JSON.
pub(crate) fn table(json: bool, value: &Value, key: &str, columns: &[&str]) {
    if json {
        return print_json(value);
    }
    let rows: Vec<Vec<String>> = value[key]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| columns.iter().map(|c| cell(&item[*c])).collect())
                .collect()
        })
        .unwrap_or_default();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(columns.iter().map(|c| c.to_uppercase()).collect());
    for row in rows {
        line(row);
    }
}

fn print_status(s: &Value) {
    println!(
        "node        {} ({}, cluster {})",
        cell(&s["node_id"]),
        cell(&s["role"]),
        cell(&s["cluster_name"])
    );
    println!(
        "version     {}   uptime {} s",
        cell(&s["version"]),
        cell(&s["uptime_secs"])
    );
    println!(
        "relay       {}   admin {}",
        cell(&s["relay_addr"]),
        cell(&s["admin_addr"])
    );
    let raft = &s["raft"];
    println!(
        "raft        id {} {} term {} leader {} commit {} applied {}",
        cell(&raft["id"]),
        cell(&raft["role"]),
        cell(&raft["term"]),
        cell(&raft["leader"]),
        cell(&raft["commit"]),
        cell(&raft["applied"])
    );
    let services: Vec<String> = s["services"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|svc| {
                    format!(
                        "{} {}",
                        cell(&svc["name"]),
                        if svc["running"] == true {
                            "running"
                        } else {
                            "STOPPED"
                        }
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    println!("services    {}", services.join(", "));
    println!(
        "hosts       {} attached ({}), {} enrolled of {}",
        s["hosts_attached"].as_array().map_or(0, Vec::len),
        cell(&s["hosts_attached"]),
        cell(&s["hosts_enrolled"]),
        cell(&s["hosts"])
    );
    println!(
        "sessions    {} relayed here (limit {}), {} open in the cluster",
        cell(&s["sessions_relayed"]),
        cell(&s["sessions_max"]),
        cell(&s["sessions_open"])
    );
    println!(
        "users       {}   grants {}   audit records {}",
        cell(&s["users"]),
        cell(&s["grants"]),
        cell(&s["audit_records"])
    );
    let expires = |key: &str| match s["certificates"][key].as_u64() {
        Some(ms) if ms > 0 => format!(
            "{} ({})",
            crate::time::rfc3339(ms),
            crate::time::relative(ms, crate::time::now_ms())
        ),
        _ => "unknown".into(),
    };
    println!(
        "certificate expires {}; CA {}",
        expires("node_certificate_expires_at_ms"),
        expires("ca_expires_at_ms")
    );
}
