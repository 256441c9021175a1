//! Dispatch of subcommands to their implementations.

use crate::args::{BenchScenario, Cli, Command, ConnectArgs, DebugCommand, HostArgs};
use crate::{account, admin, dev, init, CliResult, Failure};
use clap::CommandFactory;
use ferry_agent::error::exit;
use ferry_agent::host::HostOptions;
use ferry_agent::{client, token_cache, ClientConfig};
use ferry_bench::live_sessions::Load;
use std::path::Path;

pub async fn dispatch(cli: Cli) -> CliResult {
    let config = cli.config.as_deref();
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Init(args) if args.renew.is_some() => {
            let node_id = args.renew.clone().unwrap_or_default();
            let cert = crate::certificates::renew(&args, &node_id)?;
            let until = ferry_transport::certs::not_after(
                &std::fs::read_to_string(&cert).unwrap_or_default(),
            )
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| crate::time::rfc3339(d.as_millis() as u64))
            .unwrap_or_default();
            println!("{}", cert.display());
            eprintln!(
                "node {node_id}: a new key and certificate (valid until {until}) in {}.\n  \
                 Copy them to the node if it runs elsewhere, then restart it through a drain:\n  \
                 ferry admin drain {node_id} --wait; restart the node; ferry admin undrain {node_id}",
                args.out.display()
            );
            Ok(())
        }
        Command::Init(args) if args.rotate_ca => {
            crate::certificates::rotate(&args)?;
            eprintln!(
                "a new CA signs from now on; {} trusts the new and the old CA. Next:\n  \
                 1. give every node, client and host the new ca.pem (clients and agents read it \
                 at their next connection, nodes at their next start);\n  \
                 2. for each node: ferry init --out {} --renew NODE, copy, restart it through a drain;\n  \
                 3. ferry init --out {} --retire-old-ca, give out ca.pem again, restart the nodes once more.",
                args.out.join("ca.pem").display(),
                args.out.display(),
                args.out.display()
            );
            Ok(())
        }
        Command::Init(args) if args.retire_old_ca => {
            crate::certificates::retire(&args)?;
            eprintln!(
                "{} trusts the new CA alone. Give it to every node, client and host, and restart \
                 the nodes one at a time through a drain.",
                args.out.join("ca.pem").display()
            );
            Ok(())
        }
        Command::Init(args) if args.join.is_some() => {
            let node_id = args.join.clone().unwrap_or_default();
            let path = crate::join::run(&args, &node_id)?;
            let config = ferry_broker::NodeConfig::load(&path)
                .map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
            println!("{}", path.display());
            eprintln!(
                "node {node_id} (raft id {}) written to {}; client.toml now lists it.\n  \
                 1. start it:  ferry broker --config {}\n  \
                 2. add it:    ferry admin --config {} member add {node_id} --raft-id {} --peer-addr {}{} --wait",
                config.raft.id,
                path.display(),
                path.display(),
                args.out.join("client.toml").display(),
                config.raft.id,
                config.peer_addr.map(|a| a.to_string()).unwrap_or_default(),
                if args.join_as_witness {
                    " --witness".to_owned()
                } else {
                    format!(" --relay-addr {}", config.relay_addr)
                },
            );
            Ok(())
        }
        Command::Init(args) => {
            let cluster = init::run(&args)?;
            eprintln!(
                "cluster {:?} written to {}:\n  start the broker:  ferry broker --config {}\n  administer it:     ferry admin --config {} status\n  \
                 on other machines: copy {}/NODE/ to node NODE (its files, never ca.key) and run \
                 ferry broker --config NODE.toml there",
                args.cluster_name,
                cluster.dir.display(),
                cluster.node_configs[0].display(),
                cluster.client_config.display(),
                cluster.dir.join("nodes").display()
            );
            Ok(())
        }
        Command::Broker => {
            let config = node_config(config, "ferry broker")?;
            let node = ferry_broker::start(config).await?;
            shutdown_signal().await;
            tracing::info!("shutting down");
            node.shutdown().await;
            Ok(())
        }
        Command::Admin(args) => admin::run(config, args).await,
        Command::Host(args) => host(config, args).await,
        Command::Login(args) => account::login(config, args).await,
        Command::Ls(args) => account::list(config, args).await,
        Command::Whoami(args) => account::whoami(config, args).await,
        Command::Logout => account::logout(config).await,
        Command::Passwd(args) => account::passwd(config, args).await,
        Command::Connect(args) => connect(config, args).await,
        Command::Bench(args) => {
            let report = match args.scenario {
                BenchScenario::Relay {
                    bytes,
                    runs,
                    udp_payload_bytes,
                } => {
                    let options = ferry_bench::relay::Options {
                        bytes,
                        runs,
                        udp_payload_bytes_max: udp_payload_bytes,
                    };
                    ferry_bench::relay::run(options).await
                }
                BenchScenario::Failover {
                    kills,
                    sessions: None,
                    ..
                } => {
                    let kills = kills.unwrap_or(10);
                    ferry_bench::failover::run(ferry_bench::failover::Options { kills }).await
                }
                BenchScenario::Failover {
                    kills,
                    sessions: Some(sessions),
                    rate,
                    steady,
                    after,
                } => {
                    let load = Load::new(sessions, rate, steady, after).map_err(Failure::from)?;
                    let options = ferry_bench::session_failover::Options {
                        load,
                        kills: kills.unwrap_or(1),
                    };
                    ferry_bench::session_failover::run(options).await
                }
                BenchScenario::Drain {
                    sessions,
                    rate,
                    steady,
                    after,
                } => {
                    let load = Load::new(sessions, rate, steady, after).map_err(Failure::from)?;
                    ferry_bench::drain::run(ferry_bench::drain::Options { load }).await
                }
                BenchScenario::Replicate {
                    proposers,
                    duration,
                } => {
                    let options = ferry_bench::replicate::Options {
                        proposers,
                        duration,
                    };
                    ferry_bench::replicate::run(options).await
                }
            }
            .map_err(Failure::from)?;
            ferry_bench::report::emit(&report, args.json.as_deref()).map_err(Failure::from)
        }
        Command::Debug(DebugCommand::Corrupt { data_dir, seed }) => {
            let damage = crate::debug::corrupt(&data_dir, seed).map_err(Failure::from)?;
            println!("{damage}");
            Ok(())
        }
        Command::Debug(DebugCommand::ForceNewCluster { yes }) => {
            let config = node_config(config, "ferry debug force-new-cluster")?;
            if !yes {
                return Err(Failure::new(
                    exit::REFUSED,
                    format!(
                        "this makes {} the only voter of its cluster and forgets the others \
                         (they rejoin under new raft ids); stop every node first, then run it \
                         again with --yes",
                        config.node_id
                    ),
                ));
            }
            let done = tokio::task::spawn_blocking(move || {
                ferry_broker::startup::force_new_cluster(&config)
            })
            .await
            .map_err(|e| Failure::new(exit::FAILURE, e.to_string()))??;
            println!("{done}");
            Ok(())
        }
        Command::Debug(DebugCommand::Restore { snapshot }) => {
            let config = node_config(config, "ferry debug restore")?;
            crate::backup::restore(config, &snapshot).await
        }
        Command::Debug(DebugCommand::Probe { probe }) => {
            let config = node_config(config, "ferry debug probe")?;
            crate::debug::probe(&config, probe).await
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "ferry", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// The node config of `command` (a broker's): `--config` is required, nothing is looked up.
/// The node's config: --config, else `$FERRY_NODE_CONFIG` (what container images and
/// Kubernetes set, where the command line is shared by every node).
fn node_config(path: Option<&Path>, command: &str) -> Result<ferry_broker::NodeConfig, Failure> {
    let from_env = std::env::var_os("FERRY_NODE_CONFIG").map(std::path::PathBuf::from);
    let path = path.or(from_env.as_deref()).ok_or_else(|| {
        Failure::new(
            exit::CONFIG,
            format!(
                "{command} needs the node's config: --config NODE.toml (written by `ferry \
                 init`) or FERRY_NODE_CONFIG"
            ),
        )
    })?;
    ferry_broker::NodeConfig::load(path).map_err(|e| Failure::new(exit::CONFIG, e.to_string()))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn host(config: Option<&Path>, args: HostArgs) -> CliResult {
    let (_, config) = ClientConfig::find_and_load(config)?;
    let options = HostOptions {
        config,
        name: args.name,
        state_dir: args.state_dir,
        enroll_token: args.enroll,
        services: args.expose.into_iter().collect(),
    };
    ferry_agent::host::run(options, shutdown_signal()).await?;
    Ok(())
}

async fn connect(config: Option<&Path>, args: ConnectArgs) -> CliResult {
    let (_, config) = ClientConfig::find_and_load(config)?;
    let cached = token_cache::load(&config.cluster_name)?;
    let limits = client::OpenerLimits {
        connections_max: args.max_connections,
    };
    let opener = client::SessionOpener::new(&config, cached.token, limits)?;
    if args.stdio {
        client::stdio(&opener, &args.host, &args.service).await?;
        return Ok(());
    }
    let listen = args.listen.expect("clap requires --listen unless --stdio");
    // Fail now, not on the first local connection, when no broker can be reached or trusted.
    opener.ensure_connected().await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Failure::new(exit::FAILURE, format!("cannot listen on {listen}: {e}")))?;
    eprintln!(
        "forwarding {} -> {}/{} through cluster {:?} as {:?}; Ctrl-C to stop",
        listener.local_addr().unwrap_or(listen),
        args.host,
        args.service,
        config.cluster_name,
        cached.user
    );
    tokio::select! {
        r = client::forward(listener, opener, args.host, args.service, args.max_sessions) => r.map_err(Failure::from),
        _ = shutdown_signal() => Ok(()),
    }
}
