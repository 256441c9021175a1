//! Durable storage for a node: the Raft log, its hard state and snapshots, in sled.
//!
//! Every value written carries a checksum ([`record`]) verified on every read: sled has open
//! reports of corruption after a crash, and Raft's storage contract (issue 2) treats a lying
//! store as fatal, so we refuse to return bytes we cannot vouch for.
//!
//! Architecture invariant: this is the only crate that names sled. It implements the consensus
//! crate's storage seam and knows nothing of networking or of what the entries mean.

#![forbid(unsafe_code)]

mod error;
pub mod mark;
pub mod raft_log;
pub mod record;

pub use raft_log::{OpenError, Scan, SledLog, StoreError};
