//! A Ferry broker node: accepts host agents and clients over QUIC, authenticates them against
//! the replicated state, relays session streams, and serves the admin API.
//!
//! Architecture invariant: decisions live in the pure crates: who may do what in `ferry-state`,
//! whether a node may restart in `ferry-gate`, the cluster decisions (promotion, identity,
//! replacement, the session sweep) in `ferry-policy`; this crate wires IO around them and
//! carries their decisions out. `node.rs` assembles the components and no module imports it.
//! Every task it spawns ends on shutdown, and every queue it owns is bounded.

#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod auth;
pub mod build_info;
pub mod certificates;
pub mod cluster;
pub mod config;
pub mod context;
pub mod gate;
pub mod handoff;
pub mod health;
pub mod hosts;
mod inbox;
pub mod metrics;
pub mod node;
pub mod propose;
pub mod rejoin;
pub mod relay;
pub mod restore;
pub mod startup;
pub mod supervisor;
pub mod sweep;
pub mod withdraw;

pub use config::NodeConfig;
pub use node::{start, RunningNode};

pub use ferry_replica::now_ms;
