//! Command-line syntax (clap derive). Exact command names are a contract (docs/DESIGN.md
//! section 7).

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version = ferry_broker::build_info::VERSION_LONG,
    about = "Ferry: a highly available remote-access connection broker",
    long_about = "Ferry brokers remote-access sessions: host agents keep a QUIC connection to the \
broker, clients log in and open byte streams to services on those hosts (SSH, VNC, RDP, any TCP port).\n\n\
Quick start: `ferry dev` runs a whole cluster with a demo host in one process and prints what to type next.",
    after_help = "Exit codes: 0 ok, 1 failure, 2 usage error, 3 refused by the restart gate, \
4 authentication or permission denied, 5 not found, 6 unavailable or unreachable, \
7 broker certificate not trusted, 8 configuration error."
)]
pub struct Cli {
    /// The config file: for clients, host agents and `ferry admin`, the cluster's client.toml
    /// (without it: $FERRY_CONFIG, then $XDG_CONFIG_HOME/ferry/client.toml, then
    /// /etc/ferry/client.toml); for `ferry broker` and `ferry debug force-new-cluster`, the
    /// node's config. Accepted anywhere on the line.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "FERRY_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a complete cluster with a demo host in this process, on 127.0.0.1, and print how to connect.
    Dev(DevArgs),
    /// Create a cluster: CA, node certificates and configs, admin.token, client.toml.
    Init(InitArgs),
    /// Run a broker node (its config: --config NODE.toml, written by `ferry init`, or
    /// $FERRY_NODE_CONFIG).
    Broker,
    /// Inspect and administer a cluster through the admin API.
    Admin(AdminArgs),
    /// Run the host agent on a managed machine, exposing local services.
    Host(HostArgs),
    /// Log in and cache a token for `ferry connect`.
    Login(LoginArgs),
    /// List the hosts and services you may reach, online or not, and the broker each is
    /// attached to.
    Ls(ListArgs),
    /// Show who you are logged in as: user, groups, cluster, token expiry.
    #[command(alias = "status")]
    Whoami(WhoamiArgs),
    /// Log out: revoke your login token on every broker and delete the cached copy.
    Logout,
    /// Change your own password (the current one is asked first). Tokens already issued
    /// stay valid; `ferry logout` ends the one cached here.
    Passwd(PasswdArgs),
    /// Open a session to a service on a host, on a local port or on stdio.
    Connect(ConnectArgs),
    /// Measure Ferry against a baseline in the same run.
    Bench(BenchArgs),
    /// Tools for testing and investigating a node's files.
    #[command(subcommand)]
    Debug(DebugCommand),
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
pub enum DebugCommand {
    /// Damage a stopped node's data directory on purpose, reproducibly from a seed: flip
    /// random bytes in, or truncate, one random file (the quarantine is left alone). Prints
    /// what it did as JSON. For corruption trials; never on a node you care about.
    Corrupt {
        /// The node's data directory (its config's data_dir).
        #[arg(long)]
        data_dir: std::path::PathBuf,
        #[arg(long)]
        seed: u64,
    },
    /// On a stopped node, replace its store with one whose only voter is this node, holding
    /// the state its store committed: the way back when a majority of the voters lost their
    /// stores (docs/OPERATIONS.md, "Lost stores"). The old store is kept in the quarantine.
    ForceNewCluster {
        /// Confirms that the other voters are to be forgotten (they rejoin under new raft ids).
        #[arg(long)]
        yes: bool,
    },
    /// Seed a new node's empty store from a backup (`ferry admin snapshot save`): run it for
    /// every node of a new cluster made by `ferry init`, each with its --config NODE.toml,
    /// before starting them. The new cluster starts with the backup's users, tokens, hosts,
    /// grants, admin tokens and audit log, and nothing of the old cluster's members or
    /// sessions, so it never talks to the old one. A damaged or truncated file is refused.
    Restore {
        /// The backup file.
        #[arg(long, value_name = "FILE")]
        snapshot: PathBuf,
    },
    /// Ask the node of --config NODE.toml (or $FERRY_NODE_CONFIG), on this machine, whether
    /// it is alive (`/healthz`) or ready (`/readyz`, every local service running), over its
    /// admin API's HTTPS under the cluster CA: for container health checks and scripts.
    /// Exit 0 yes, 1 no (the answer on stderr).
    Probe {
        #[arg(value_enum, default_value_t = Probe::Healthz)]
        probe: Probe,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Probe {
    Healthz,
    Readyz,
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Directory for the dev cluster's files (recreated on each run).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("ferry-dev"))]
    pub dir: PathBuf,
    /// First port; the broker uses it and the next few.
    #[arg(long, default_value_t = 7100)]
    pub base_port: u16,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Directory to write the cluster's files into (created; must not already hold a cluster).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of brokers, all on one machine at --bind-ip (b1, b2, ...). For nodes on
    /// several machines name each with --node instead.
    #[arg(long, default_value_t = 1, conflicts_with_all = ["node", "witness"])]
    pub brokers: u8,
    /// Number of witnesses on that machine (w1, ...).
    #[arg(long, default_value_t = 0, conflicts_with_all = ["node", "witness"])]
    pub witnesses: u8,
    /// A broker on its own machine: NODE_ID=HOST, HOST being the IP address or DNS name
    /// that hosts, clients and the other nodes reach it at (repeat for each broker). Nodes
    /// on different hosts use the same ports; nodes sharing a host take the next block of ten.
    #[arg(long, value_name = "NODE_ID=HOST", value_parser = node_spec)]
    pub node: Vec<NodeSpec>,
    /// A witness on its own machine: NODE_ID=HOST (repeatable), as with --node.
    #[arg(long, value_name = "NODE_ID=HOST", value_parser = node_spec)]
    pub witness: Vec<NodeSpec>,
    /// IP address the nodes listen on. Without --node it is also where they are reached
    /// (default 127.0.0.1); with --node the default is each node's HOST when that is an IP
    /// and 0.0.0.0 when it is a name; give 0.0.0.0 in containers and behind NAT, where the
    /// address a node is reached at is not its own.
    #[arg(long)]
    pub bind_ip: Option<IpAddr>,
    /// IP address of the nodes' admin API (HTTPS under the cluster CA, certified too).
    /// Without --node: 127.0.0.1, for operators on the machine, or behind a tunnel or a
    /// proxy that checks who they are. With --node: each node's HOST unless given (give
    /// 127.0.0.1 to keep it on each machine's loopback).
    #[arg(long)]
    pub admin_ip: Option<IpAddr>,
    /// Data directory written into each node's own config (DIR/nodes/NODE/NODE.toml), e.g.
    /// /var/lib/ferry; by default `data` beside that config.
    #[arg(long, value_name = "PATH")]
    pub data_dir: Option<PathBuf>,
    /// With --join: the IP address or DNS name the new node is reached at (default: the
    /// first node's host, with the next free ports).
    #[arg(long, value_name = "HOST", requires = "join")]
    pub host: Option<String>,
    /// Also answer plain HTTP on the admin API (beside HTTPS on the same port), for probes,
    /// scrapers and a browser on the node itself. Allowed only with a loopback --admin-ip.
    #[arg(long)]
    pub admin_plain_http: bool,
    /// First port; node i uses base+10*(i-1) for QUIC and the next port for the admin API.
    #[arg(long, default_value_t = 7100)]
    pub base_port: u16,
    /// Cluster name (keys cached login tokens).
    #[arg(long, default_value = "ferry")]
    pub cluster_name: String,
    /// Instead of a new cluster: write the files of node NODE_ID joining the cluster in --out
    /// (certificate, config, client.toml entry), then print how to add it.
    #[arg(long, value_name = "NODE_ID")]
    pub join: Option<String>,
    /// With --join: the node is a witness.
    #[arg(long, requires = "join")]
    pub join_as_witness: bool,
    /// With --join: its raft id (default: one past the highest in --out).
    #[arg(long, requires = "join")]
    pub raft_id: Option<u64>,
    /// How long node certificates are valid (`365d`, `90d`); renew them before with --renew.
    #[arg(long, value_name = "DURATION", default_value = "365d", value_parser = duration)]
    pub cert_validity: std::time::Duration,
    /// Instead of a new cluster: issue node NODE_ID a new key and certificate from the CA in
    /// --out (valid for --cert-validity), replacing its files; restart the node through a
    /// drain to use them.
    #[arg(long, value_name = "NODE_ID", conflicts_with_all = ["join", "rotate_ca", "retire_old_ca"])]
    pub renew: Option<String>,
    /// Instead of a new cluster: start a CA rotation. A new CA signs from now on; ca.pem
    /// trusts the new and the old CA until --retire-old-ca (docs/OPERATIONS.md, "Rotating
    /// certificates").
    #[arg(long, conflicts_with_all = ["join", "retire_old_ca"])]
    pub rotate_ca: bool,
    /// Instead of a new cluster: end a CA rotation; ca.pem trusts the new CA alone.
    #[arg(long, conflicts_with = "join")]
    pub retire_old_ca: bool,
}

/// A node named on the command line: `NODE_ID=HOST`.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub node_id: String,
    /// Where it is reached, with port 0 (the ports are laid out by `init`).
    pub host: ferry_transport::addr::HostPort,
}

fn node_spec(text: &str) -> Result<NodeSpec, String> {
    let (node_id, host) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NODE_ID=HOST (e.g. b1=10.0.0.5)"))?;
    node_id_ok(node_id)?;
    Ok(NodeSpec {
        node_id: node_id.to_owned(),
        host: host_spec(host)?,
    })
}

/// A HOST (IP address or DNS name, IPv6 in brackets or not) with port 0.
pub(crate) fn host_spec(host: &str) -> Result<ferry_transport::addr::HostPort, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ferry_transport::addr::HostPort::new(bare, 0)
        .map_err(|e| format!("{host:?} is not an IP address or DNS name: {}", e.reason()))
}

/// A node id is also its certificate's DNS name and often a pod's or machine's name: one
/// DNS label of lowercase letters, digits and inner '-'.
pub(crate) fn node_id_ok(node_id: &str) -> Result<(), String> {
    let ok = !node_id.is_empty()
        && node_id.len() <= 63
        && !node_id.starts_with('-')
        && !node_id.ends_with('-')
        && node_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "node id {node_id:?} must be 1 to 63 lowercase letters, digits and inner '-' \
             (it is also the node's name in its certificate)"
        ))
    }
}

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// Read the admin token from this file instead of admin.token beside the config file.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Ask this node (a node id from client.toml) instead of the first that answers.
    // Its own id: clap merges global arguments by id, and the NODE of `drain`, `undrain` and
    // `restart-check` would otherwise overwrite it.
    #[arg(long = "node", id = "ask_node", value_name = "NODE", global = true)]
    pub node: Option<String>,
    /// Print the answer as JSON on stdout (times both as epoch milliseconds and RFC 3339).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Show the cluster: every node's role, health, services, load, lag and maintenance, and
    /// the failure tolerance.
    Status,
    /// Show the answering node's own details (raft indices, hosts attached, table sizes).
    Node,
    /// May NODE be taken down now? Prints every check of the restart gate with its reason.
    /// Exit 0 allowed, 3 refused.
    RestartCheck { node: String },
    /// Take NODE out of service: the maintenance lease (if the restart gate allows it), then
    /// NODE gives up leadership, refuses new sessions and hands its hosts and sessions to
    /// other brokers. Exit 0 drained (or draining, without --wait), 3 refused.
    Drain {
        /// The node (or $FERRY_NODE, for stop hooks that cannot pass arguments).
        #[arg(env = "FERRY_NODE")]
        node: String,
        /// Wait until NODE holds no hosts or sessions, showing progress, for at most the
        /// duration given (`--wait`, `--wait 90s`, `--wait 10m`; alone: 5 min).
        #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "5m", value_parser = duration)]
        wait: Option<std::time::Duration>,
        /// Drain even though restart checks fail. Loud, and recorded in the audit log with
        /// the checks that failed.
        #[arg(long)]
        force: bool,
    },
    /// End NODE's maintenance: release its lease; it serves new sessions again.
    Undrain {
        #[arg(env = "FERRY_NODE")]
        node: String,
    },
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage hosts.
    #[command(subcommand)]
    Host(HostCommand),
    /// Allow users of GROUP to open sessions to hosts of HOSTGROUP (`grant GROUP HOSTGROUP
    /// [--services ssh,vnc]`), or withdraw that (`grant remove GROUP HOSTGROUP`).
    Grant(GrantArgs),
    /// List grants.
    Grants,
    /// List open sessions.
    Sessions,
    /// End a session (`session kill ID`).
    #[command(subcommand)]
    Session(SessionCommand),
    /// Named admin API tokens with roles, and revoking a user's login tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Inspect and change the cluster's membership (one change at a time).
    #[command(subcommand)]
    Member(MemberCommand),
    /// Backups of the replicated state (`snapshot save FILE`).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Show audit records.
    Audit {
        /// Only records after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct GrantArgs {
    #[command(subcommand)]
    pub command: Option<GrantCommand>,
    /// The user group.
    #[arg(required = true)]
    pub group: Option<String>,
    /// The host group.
    #[arg(required = true)]
    pub host_group: Option<String>,
    /// Only these services (comma-separated, e.g. `ssh,vnc`); without it, every service.
    /// Granting again replaces the list.
    #[arg(long, value_delimiter = ',')]
    pub services: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum GrantCommand {
    /// Withdraw a grant: the sessions it allowed end on every broker.
    Remove { group: String, host_group: String },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Save the cluster's replicated state (users, tokens, hosts, grants, admin tokens, the
    /// audit log) to FILE, online: consistent at one applied index that includes every write
    /// acknowledged before the command, checksummed, streamed to disk and verified before it
    /// is renamed into place. Restore it into a new cluster with `ferry debug restore`.
    Save { file: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// End a session on every broker, relayed or waiting for a resume; both ends close.
    Kill {
        id: u64,
        /// Why, for the audit log and the ends' logs.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a named admin token with a role; prints the token alone on stdout, once.
    /// Roles: read (status, lists, audit), operator (also drain, undrain, restart-check,
    /// session kill), admin (also users, hosts, grants, members, tokens).
    Create {
        name: String,
        #[arg(long, value_parser = ["read", "operator", "admin"])]
        role: String,
    },
    /// List admin tokens: names, roles, who created them (never the tokens).
    List,
    /// Revoke a named admin token, or with --user every login token of a user (their sessions
    /// opened with those tokens end).
    Revoke {
        #[arg(required_unless_present = "user", conflicts_with = "user")]
        name: Option<String>,
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// List voters and learners, with replication progress as the leader sees it.
    List,
    /// Add a node as a learner; the leader promotes it to voter once it has caught up.
    /// Write its config first with `ferry init --out DIR --join NODE_ID`, and start it.
    Add {
        node_id: String,
        /// A raft id this cluster has never used.
        #[arg(long)]
        raft_id: u64,
        /// Where its peer listener is reached (host:port, an IP or a DNS name), as in its
        /// config file.
        #[arg(long)]
        peer_addr: ferry_transport::addr::HostPort,
        /// Where its relay listener is reached (host:port), as in its config file: other
        /// brokers hand it to hosts and clients as a place to fail over or move to.
        #[arg(long)]
        relay_addr: Option<ferry_transport::addr::HostPort>,
        /// It is a witness (votes, serves no traffic).
        #[arg(long)]
        witness: bool,
        /// Keep it a learner: a non-voting broker that relays traffic.
        #[arg(long)]
        learner: bool,
        /// Wait until it has been promoted to voter, for at most the duration given
        /// (`--wait`, `--wait 5m`; alone: 2 min).
        #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "2m", value_parser = duration)]
        wait: Option<std::time::Duration>,
    },
    /// Promote a caught-up learner (added with --learner) to voter.
    Promote { node_id: String },
    /// Remove a member; its raft id is retired. Refused if the voters left could not form a
    /// quorum, unless --force.
    Remove {
        node_id: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user.
    Add {
        name: String,
        /// Group of the user (repeat for several).
        #[arg(long = "group", required = true)]
        groups: Vec<String>,
        /// Read the password from the first line of stdin instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List,
    /// Disable a user: no login, no new session, and their live sessions end on every broker.
    Disable { name: String },
    /// Enable a disabled user again.
    Enable { name: String },
    /// Remove a user and their login tokens; their live sessions end.
    Remove { name: String },
    /// Set a user's password (the old one stops working; tokens stay: `token revoke --user`).
    Passwd {
        name: String,
        /// Read the password from the first line of stdin instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum HostCommand {
    /// Register a host and print its one-time enrollment token (alone, on stdout).
    Enroll {
        name: String,
        /// Group of the host (repeat for several).
        #[arg(long = "group", required = true)]
        groups: Vec<String>,
    },
    /// List hosts.
    List,
    /// Remove a host: its agent is disconnected and refused everywhere, its sessions end.
    Remove { name: String },
    /// Issue a new one-time enrollment token for a host (alone, on stdout); its old
    /// credential stops working at once.
    ReEnroll { name: String },
}

#[derive(Args, Debug)]
pub struct HostArgs {
    /// This host's name, as enrolled.
    #[arg(long)]
    pub name: String,
    /// Where the agent keeps its credential.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// One-time enrollment token from `ferry admin host enroll`.
    #[arg(long, env = "FERRY_ENROLL_TOKEN")]
    pub enroll: Option<String>,
    /// A service to expose: NAME=ADDR:PORT (repeat for several), e.g. ssh=127.0.0.1:22.
    #[arg(long = "expose", required = true, value_parser = parse_expose)]
    pub expose: Vec<(String, SocketAddr)>,
}

/// A duration with its unit (`30s`, `5m`, `1h 30m`, `250ms`), by humantime.
fn duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| {
        format!(
            "{s:?} is not a duration like 30s, 5m or 250ms ({e}); a flag that takes an \
             optional duration, like --wait, takes the next word as one: put it after NODE"
        )
    })
}

/// A size with its unit (`1GiB`, `500MB`, `64KiB`, or plain bytes), by bytesize.
fn size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size like 1GiB, 500MB or 65536: {e}"))
}

fn parse_expose(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=ADDR:PORT (for example ssh=127.0.0.1:22)"))?;
    ferry_state::validate_name(ferry_state::NameKind::Service, name).map_err(|r| r.message)?;
    let addr = addr
        .parse()
        .map_err(|e| format!("{addr:?} in {s:?} is not an ADDR:PORT socket address: {e}"))?;
    Ok((name.to_owned(), addr))
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// User name.
    #[arg(long)]
    pub user: String,
    /// Read the password from the first line of stdin (else $FERRY_PASSWORD, else a prompt).
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Args, Debug)]
pub struct PasswdArgs {
    /// Read the current password from the first line of stdin and the new one from the
    /// second, instead of prompting.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Print the hosts as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct WhoamiArgs {
    /// Print the answer as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ConnectArgs {
    /// Host to reach.
    pub host: String,
    /// Service on the host (as the host agent exposes it).
    pub service: String,
    /// Listen on this local address; each connection to it becomes a session.
    #[arg(long, conflicts_with = "stdio", required_unless_present = "stdio")]
    pub listen: Option<SocketAddr>,
    /// Carry one session on stdin/stdout (for `ssh -o ProxyCommand='ferry connect %h ssh --stdio --config ...'`).
    #[arg(long)]
    pub stdio: bool,
    /// With --listen: most local connections forwarded at once; one more is closed at once,
    /// with a line on stderr saying why.
    #[arg(long, default_value_t = ferry_agent::client::FORWARDED_SESSIONS_MAX_DEFAULT)]
    pub max_sessions: usize,
    /// Most QUIC connections to the brokers: one carries as many sessions as a broker grants
    /// streams per connection (255 by default), and more are opened as needed.
    #[arg(long, default_value_t = ferry_agent::client::CONNECTIONS_MAX_DEFAULT)]
    pub max_connections: usize,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: BenchScenario,
    /// Also write machine-readable results to this file.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum BenchScenario {
    /// Leader SIGKILL to first committed write, N times under load (docs/DESIGN.md, P6);
    /// with --sessions, SIGKILL of the broker carrying live sessions: their stalls and losses
    /// (P7).
    Failover {
        /// How many times to kill: the leader [default: 10], or with --sessions the broker
        /// carrying the sessions [default: 1; each killed broker is restarted before the next].
        #[arg(long)]
        kills: Option<u32>,
        /// Run P7 (docs/DESIGN.md) instead: this many sessions moving data both ways through
        /// b1, which is SIGKILLed mid-transfer.
        #[arg(long)]
        sessions: Option<usize>,
        /// With --sessions: what each direction of each session sends per second (`256KiB`,
        /// `1MiB`; 0: as fast as flow control allows).
        #[arg(long, requires = "sessions", value_name = "SIZE", default_value = ferry_bench::live_sessions::Load::RATE_DEFAULT, value_parser = size)]
        rate: u64,
        /// With --sessions: steady traffic before each kill (the baseline's window lies at its
        /// end), e.g. `5s`.
        #[arg(long, requires = "sessions", value_name = "DURATION", default_value = ferry_bench::live_sessions::Load::STEADY_DEFAULT, value_parser = duration)]
        steady: std::time::Duration,
        /// With --sessions: traffic after every session flows again, e.g. `3s`.
        #[arg(long, requires = "sessions", value_name = "DURATION", default_value = ferry_bench::live_sessions::Load::AFTER_DEFAULT, value_parser = duration)]
        after: std::time::Duration,
    },
    /// Planned drain: b1 hands its host agent and client off to b2 while they carry live
    /// sessions moving data both ways; sessions dropped and stalls (docs/DESIGN.md, P8).
    Drain {
        /// Sessions open through b1 during the hand-off.
        #[arg(long, default_value_t = 50)]
        sessions: usize,
        /// What each direction of each session sends per second (`256KiB`, `1MiB`; 0: as fast
        /// as flow control allows).
        #[arg(long, value_name = "SIZE", default_value = ferry_bench::live_sessions::Load::RATE_DEFAULT, value_parser = size)]
        rate: u64,
        /// Steady traffic before the hand-off (the baseline's window lies at its end), e.g. `5s`.
        #[arg(long, value_name = "DURATION", default_value = ferry_bench::live_sessions::Load::STEADY_DEFAULT, value_parser = duration)]
        steady: std::time::Duration,
        /// Traffic after every session flows again, e.g. `3s`.
        #[arg(long, value_name = "DURATION", default_value = ferry_bench::live_sessions::Load::AFTER_DEFAULT, value_parser = duration)]
        after: std::time::Duration,
    },
    /// Relayed vs direct goodput and CPU per GB (docs/DESIGN.md, P1, P2).
    Relay {
        /// Bytes to move in each run (`1GiB`, `500MB`, `1073741824`).
        #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = size)]
        bytes: u64,
        /// Runs of each kind; the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// UDP payload bound for every endpoint, relayed and direct alike (1452 is the
        /// Ethernet-safe default; loopback allows up to 65527).
        #[arg(long, default_value_t = ferry_transport::endpoint::UDP_PAYLOAD_BYTES_DEFAULT)]
        udp_payload_bytes: u16,
    },
    /// Replicated writes/s and latency under concurrent proposers vs etcd (docs/DESIGN.md, P4).
    Replicate {
        /// Concurrency levels (concurrent proposers), run one after the other.
        #[arg(long, value_delimiter = ',', default_value = "1,64,256")]
        proposers: Vec<usize>,
        /// Measured time per level and system (after 1 s of warm-up), e.g. `10s`.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
        duration: std::time::Duration,
    },
}

pub fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    // Servers log at info; one-shot commands stay quiet unless asked (RUST_LOG or FERRY_LOG).
    let default = match cli.command {
        Command::Broker | Command::Dev(_) | Command::Host(_) => "info",
        _ => "warn",
    };
    let filter = std::env::var("FERRY_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    // Colours only on a terminal: a log file or the journal gets plain `key=value` text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
