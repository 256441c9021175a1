//! Dispatch of subcommands to their implementations.

use crate::args::{BenchScenario, Cli, Command, ConnectArgs, DebugCommand, HostArgs, LoginArgs};
use crate::{admin, dev, init, CliResult, Failure};
use clap::CommandFactory;
use ferry_agent::error::exit;
use ferry_agent::host::HostOptions;
use ferry_agent::{client, token_cache, ClientConfig};
use ferry_bench::live_sessions::Load;

pub async fn dispatch(cli: Cli) -> CliResult {
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
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
                "cluster {:?} written to {}:\n  start the broker:  ferry broker --config {}\n  administer it:     ferry admin --config {} status",
                args.cluster_name,
                cluster.dir.display(),
                cluster.node_configs[0].display(),
                cluster.client_config.display()
            );
            Ok(())
        }
        Command::Broker(args) => {
            let config = ferry_broker::NodeConfig::load(&args.config)
                .map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
            let node = ferry_broker::start(config).await?;
            shutdown_signal().await;
            tracing::info!("shutting down");
            node.shutdown().await;
            Ok(())
        }
        Command::Admin(args) => admin::run(args).await,
        Command::Host(args) => host(args).await,
        Command::Login(args) => login(args).await,
        Command::Connect(args) => connect(args).await,
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
                    rate_kib,
                    steady_secs,
                    after_secs,
                } => {
                    let load = Load::new(sessions, rate_kib, steady_secs, after_secs)
                        .map_err(Failure::from)?;
                    let options = ferry_bench::session_failover::Options {
                        load,
                        kills: kills.unwrap_or(1),
                    };
                    ferry_bench::session_failover::run(options).await
                }
                BenchScenario::Drain {
                    sessions,
                    rate_kib,
                    steady_secs,
                    after_secs,
                } => {
                    let load = Load::new(sessions, rate_kib, steady_secs, after_secs)
                        .map_err(Failure::from)?;
                    ferry_bench::drain::run(ferry_bench::drain::Options { load }).await
                }
                BenchScenario::Replicate { proposers, secs } => {
                    let options = ferry_bench::replicate::Options { proposers, secs };
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
        Command::Debug(DebugCommand::ForceNewCluster { config, yes }) => {
            let config = ferry_broker::NodeConfig::load(&config)
                .map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
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
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "ferry", &mut std::io::stdout());
            Ok(())
        }
    }
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

async fn host(args: HostArgs) -> CliResult {
    let options = HostOptions {
        config: ClientConfig::load(&args.config)?,
        name: args.name,
        state_dir: args.state_dir,
        enroll_token: args.enroll,
        services: args.expose.into_iter().collect(),
    };
    ferry_agent::host::run(options, shutdown_signal()).await?;
    Ok(())
}

async fn login(args: LoginArgs) -> CliResult {
    let config = ClientConfig::load(&args.config)?;
    let password = match std::env::var("FERRY_PASSWORD") {
        Ok(p) => p,
        Err(_) => {
            rpassword::prompt_password(format!("Password for {}: ", args.user)).map_err(|e| {
                Failure::new(
                    exit::FAILURE,
                    format!("cannot read the password: {e} (or set FERRY_PASSWORD)"),
                )
            })?
        }
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
    let hours = ok.expires_at_ms.saturating_sub(ferry_broker::now_ms()) / 3_600_000;
    eprintln!(
        "logged in to {:?} as {:?} for {hours} h; token cached in {}",
        config.cluster_name,
        args.user,
        path.display()
    );
    Ok(())
}

async fn connect(args: ConnectArgs) -> CliResult {
    let config = ClientConfig::load(&args.config)?;
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
