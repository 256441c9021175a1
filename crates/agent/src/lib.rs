//! Ferry's endpoints: the host agent (`ferry host`) and the client library behind `ferry login`
//! and `ferry connect`.
//!
//! Architecture invariant: endpoints trust only the cluster CA from their config and never
//! disable certificate verification. They speak to brokers only through the wire messages of
//! `ferry-proto`, so a broker can be upgraded under them.

#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod dial;
mod enrollment;
pub mod error;
pub mod host;
pub mod pool;
pub mod resumable;
mod retired;
pub mod token_cache;

pub use config::ClientConfig;
pub use error::Error;
