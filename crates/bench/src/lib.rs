//! Ferry's load harness. Every scenario measures Ferry and a baseline in the same run and
//! reports the ratio, so figures from different machines stay comparable.

#![forbid(unsafe_code)]

mod cluster;
pub mod drain;
pub mod failover;
pub mod live_sessions;
pub mod relay;
pub mod replicate;
pub mod report;
pub mod session_failover;
mod stall;
mod traffic;
