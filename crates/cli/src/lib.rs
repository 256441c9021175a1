//! The `ferry` command line. Each subcommand lives in its own module; this file holds the clap
//! definitions, logging set-up and the mapping from errors to exit codes.
//!
//! Architecture invariant: no protocol or policy logic here. The CLI parses, calls a library
//! crate, and prints: machine-readable output on stdout, guidance and progress on stderr.

#![forbid(unsafe_code)]

mod access;
mod account;
mod admin;
mod args;
mod backup;
mod bundle;
mod certificates;
mod debug;
mod dev;
mod init;
mod join;
mod members;
mod operations;
mod run;
mod time;

use clap::Parser;
use std::process::ExitCode;

pub use args::Cli;

/// A failure to report: the message for stderr and the exit code for scripts.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<ferry_agent::Error> for Failure {
    fn from(e: ferry_agent::Error) -> Self {
        Self::new(e.exit_code(), e.to_string())
    }
}

impl From<ferry_broker::node::StartError> for Failure {
    fn from(e: ferry_broker::node::StartError) -> Self {
        Self::new(ferry_agent::error::exit::FAILURE, e.to_string())
    }
}

impl From<ferry_broker::startup::ForceError> for Failure {
    fn from(e: ferry_broker::startup::ForceError) -> Self {
        Self::new(ferry_agent::error::exit::FAILURE, e.to_string())
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::new(ferry_agent::error::exit::FAILURE, format!("{e:#}"))
    }
}

pub type CliResult = Result<(), Failure>;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    args::init_logging(&cli);
    ferry_transport::tls::install_default_provider();
    // Brokers, host agents and forwards hold a socket per connection and session: thousands,
    // beyond the usual soft limit of 1024 open files. Like Go's runtime, take what the hard
    // limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            return ExitCode::from(ferry_agent::error::exit::FAILURE);
        }
    };
    let result = runtime.block_on(run::dispatch(cli));
    // Do not wait for blocking reads (stdin) that will never finish.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("ferry: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
