//! Ferry's load harness. Every scenario measures Ferry and a baseline in the same run and
//! reports the ratio, so figures from different machines stay comparable.

pub mod failover;
pub mod relay;
pub mod replicate;
pub mod report;
