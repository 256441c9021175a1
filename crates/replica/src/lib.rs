//! The seam between a node and consensus: propose a command, read the applied state.
//!
//! One thread ("ferry-raft") owns the consensus [`Core`](ferry_consensus::Core) over the node's
//! [`SledLog`](ferry_store::SledLog). It takes events from one bounded channel (proposals, peer
//! messages, reads), ticks on a deadline, and after each batch of events handles one Ready: a
//! batch of proposals costs one fsync (group commit). Proposers get their outcome when their
//! entry is applied, or a clear error (not the leader, timed out, shutting down). Outgoing peer
//! messages go to the peer transport's queue.
//!
//! - `handle.rs`: [`Replica`], the cheap handle everyone holds, and what it reports;
//! - `recover.rs`: opening consensus on a store, replaying it, starting the driver;
//! - `driver.rs`: the driver thread: events, ticks, Ready, and the leader's duties, which
//!   `ferry-policy` decides.
//!
//! Architecture invariant: the driver never blocks on the network or on a proposer (every
//! queue it feeds is bounded and dropped into when full), and a storage error stops it: raft-rs
//! cannot go on safely over a store that may lie.

#![forbid(unsafe_code)]

mod driver;
mod handle;
mod recover;

pub use handle::{
    membership_command, replica, Event, EventQueue, Membership, ProposeError, RaftOptions, Replica,
    Status,
};
pub use recover::{recover, start_driver, DriverExit, StartError};

/// Wall-clock milliseconds since the Unix epoch: the `now_ms` stamped on commands.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
