//! Ferry's cluster decisions, as pure functions of state and time.
//!
//! These are the decisions that lose data or strand a node when wrong: which learner to
//! promote, whom a witness hands leadership to, which raft ids the leader records as having
//! taken part, whether an empty store may take its configured raft id (the amnesia guard),
//! how a member that lost its store is replaced, when an unanswered snapshot is sent again,
//! and which sessions the leader detaches or closes. Each takes what it needs to know (never a
//! clock, a socket or a lock: time comes in as `now_ms`) and returns what to do. The broker's
//! drivers carry the actions out; the simulation in `tests/sim.rs` runs these same functions
//! against the real consensus core, with crashes, wipes and rejoins among its faults.
//!
//! Architecture invariant: nothing here performs IO, reads a clock or spawns a task; every
//! function is deterministic in its arguments.

#![forbid(unsafe_code)]

pub mod identity;
pub mod leadership;
pub mod snapshots;
pub mod sweep;

pub use identity::{
    answer, identity, replacement, Asked, Decision, Knowledge, Known, Plan, PlanError, RAFT_ID_MAX,
};
pub use leadership::{handoff_target, promotion, unseen_members, LeaderView};
pub use snapshots::SnapshotRetry;
pub use sweep::{orphaned_at_restart, sweep, unreachable_brokers, SweepAction};
