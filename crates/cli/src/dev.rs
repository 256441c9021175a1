//! `ferry dev`: a whole cluster (two brokers and a witness) and a demo host in one process, on
//! 127.0.0.1, for trying Ferry.
//!
//! It uses the same code paths as a real deployment: `init` writes a cluster, the broker runs
//! from its config, users and grants go through the admin API, and the demo host enrolls with a
//! one-time token over QUIC. Only the placement (one process) differs.

use crate::admin::AdminClient;
use crate::args::{DevArgs, InitArgs};
use crate::run::shutdown_signal;
use crate::{init, CliResult, Failure};
use ferry_agent::error::exit;
use ferry_agent::host::HostOptions;
use ferry_agent::ClientConfig;
use rand::distributions::{Alphanumeric, DistString};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Marks a directory as created by `ferry dev`, so a re-run may delete it and nothing else.
const MARKER: &str = ".ferry-dev";
const DEMO_HOST: &str = "demo-pc";
const DEMO_SERVICE: &str = "echo";
const DEMO_USER: &str = "demo";

pub async fn run(args: DevArgs) -> CliResult {
    prepare_dir(&args.dir)?;
    let cluster = init::run(&InitArgs {
        out: args.dir.clone(),
        brokers: 2,
        witnesses: 1,
        node: Vec::new(),
        witness: Vec::new(),
        bind_ip: Some(Ipv4Addr::LOCALHOST.into()),
        admin_ip: Some(Ipv4Addr::LOCALHOST.into()),
        data_dir: None,
        host: None,
        // The status page opens in a browser on this machine without the cluster's CA.
        admin_plain_http: true,
        base_port: args.base_port,
        cluster_name: "dev".into(),
        join: None,
        join_as_witness: false,
        raft_id: None,
        cert_validity: ferry_transport::certs::NODE_VALIDITY_DEFAULT,
        renew: None,
        rotate_ca: false,
        retire_old_ca: false,
    })?;
    // Two brokers and a witness, each a complete node with its own ports and store.
    let mut nodes = Vec::new();
    for path in &cluster.node_configs {
        let config = ferry_broker::NodeConfig::load(path)
            .map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
        let node = ferry_broker::start(config).await.map_err(|e| {
            Failure::new(
                exit::FAILURE,
                format!("{e:#} (another `ferry dev` running? try --base-port)"),
            )
        })?;
        nodes.push(node);
    }

    let demo_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.base_port.saturating_add(50)));
    let demo = tokio::net::TcpListener::bind(demo_addr)
        .await
        .map_err(|e| {
            Failure::new(
                exit::FAILURE,
                format!("cannot start the demo service on {demo_addr}: {e}"),
            )
        })?;
    tokio::spawn(demo_service(demo));

    let admin = AdminClient::new(&cluster.client_config, None)?;
    let password = Alphanumeric.sample_string(&mut rand::thread_rng(), 16);
    admin
        .post(
            "/v1/users",
            &serde_json::json!({ "name": DEMO_USER, "groups": ["staff"], "password": password }),
        )
        .await?;
    let enrollment = admin
        .post(
            "/v1/hosts",
            &serde_json::json!({ "name": DEMO_HOST, "groups": ["lab"] }),
        )
        .await?;
    admin
        .post(
            "/v1/grants",
            &serde_json::json!({ "user_group": "staff", "host_group": "lab" }),
        )
        .await?;

    let host = HostOptions {
        config: ClientConfig::load(&cluster.client_config)?,
        name: DEMO_HOST.into(),
        state_dir: args.dir.join("demo-host"),
        enroll_token: enrollment["token"].as_str().map(str::to_owned),
        services: [(DEMO_SERVICE.to_owned(), demo_addr)].into_iter().collect(),
    };
    let (stop_host, host_stopped) = tokio::sync::oneshot::channel::<()>();
    let host_task = tokio::spawn(ferry_agent::host::run(host, async {
        let _ = host_stopped.await;
    }));
    wait_for_host(&admin).await?;

    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "ferry".into());
    let client = cluster.client_config.display();
    let forward_port = args.base_port.saturating_sub(100).max(1024);
    println!(
        "Ferry dev cluster is running: brokers b1 on {relay} (admin https://{admin_addr}) and b2,\n\
         a witness w1, demo host {DEMO_HOST:?} exposing service {DEMO_SERVICE:?}, user {DEMO_USER:?}.\n\
         \n\
         In a second terminal, log in and forward a local port to the demo service:\n\
         \n  FERRY_PASSWORD='{password}' {exe} login --config {client} --user {DEMO_USER}\n  \
         {exe} connect {DEMO_HOST} {DEMO_SERVICE} --listen 127.0.0.1:{forward_port} --config {client}\n\
         \n\
         Then, in a third terminal, talk to it (type a line, it comes back in capitals):\n\
         \n  nc 127.0.0.1 {forward_port}\n\
         \n\
         Or all on stdio, without a local port:\n\
         \n  echo hello | {exe} connect {DEMO_HOST} {DEMO_SERVICE} --stdio --config {client}\n\
         \n\
         What may the demo user reach?   {exe} ls --config {client}\n\
         \n\
         Inspect the cluster:   {exe} admin --config {client} status\n\
         Status page:           http://{admin_addr}/\n\
         May b1 be restarted?   {exe} admin --config {client} restart-check b1\n\
         Press Ctrl-C here to stop.",
        relay = nodes[0].relay_addr,
        admin_addr = nodes[0].admin_addr,
    );
    shutdown_signal().await;
    eprintln!("stopping");
    let _ = stop_host.send(());
    let _ = host_task.await;
    for node in nodes {
        node.shutdown().await;
    }
    Ok(())
}

fn prepare_dir(dir: &std::path::Path) -> Result<(), Failure> {
    let fail = |e: std::io::Error| {
        Failure::new(
            exit::FAILURE,
            format!("cannot prepare {}: {e}", dir.display()),
        )
    };
    if dir.exists() {
        let empty = std::fs::read_dir(dir).map_err(fail)?.next().is_none();
        if !dir.join(MARKER).exists() && !empty {
            return Err(Failure::new(
                exit::CONFIG,
                format!(
                    "{} exists and was not made by `ferry dev`; pass another --dir",
                    dir.display()
                ),
            ));
        }
        std::fs::remove_dir_all(dir).map_err(fail)?;
    }
    std::fs::create_dir_all(dir).map_err(fail)?;
    std::fs::write(
        dir.join(MARKER),
        "made by `ferry dev`; deleted by its next run\n",
    )
    .map_err(fail)
}

async fn wait_for_host(admin: &AdminClient) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < deadline {
        let hosts = admin.get("/v1/hosts").await?;
        let attached = hosts["hosts"].as_array().is_some_and(|hs| {
            hs.iter()
                .any(|h| h["name"] == DEMO_HOST && h["connected"] == true)
        });
        if attached {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(Failure::new(
        exit::FAILURE,
        "the demo host did not attach within 15 s; see the log above",
    ))
}

/// The demo service: a banner, then every line sent back in capitals.
async fn demo_service(listener: tokio::net::TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let banner = format!("Hello from the Ferry demo service on {DEMO_HOST}. Type a line; it comes back in capitals.\n");
            if w.write_all(banner.as_bytes()).await.is_err() {
                return;
            }
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if w.write_all(format!("{}\n", line.to_uppercase()).as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}
