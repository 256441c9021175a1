//! Ferry's consensus core: one raft-rs `RawNode` and the replicated [`StateMachine`], driven
//! without IO. The node's driver (issue 2) feeds it ticks, peer messages and proposals, and
//! carries out what [`Core::handle_ready`] returns: messages to send. Storage is reached only
//! through the [`LogStore`] trait, whose `sync` is the durability point.
//!
//! Architecture invariant: no tokio, no quinn, no sled, no clock, no thread. Time is `tick()`;
//! the only randomness raft-rs itself draws (election timeouts) can be pinned by configuration,
//! which is what makes the simulation in `ferry-policy`'s `tests/sim.rs` reproducible from a
//! seed.
//!
//! [`StateMachine`]: ferry_state::StateMachine

#![forbid(unsafe_code)]

pub mod codec;
mod core;
mod log;
mod membership;

pub use crate::core::{Applied, Core, CoreConfig, Error, Output, ProposeError, SharedState};
pub use crate::log::{LogStore, MemLog};
pub use crate::membership::{MembershipError, PeerProgress, PROMOTE_LAG_ENTRIES_MAX};
pub use raft::eraftpb::{ConfState, Entry, HardState, Message, Snapshot};
pub use raft::{SnapshotStatus, StateRole};
