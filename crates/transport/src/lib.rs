//! Ferry's QUIC and TLS plumbing: the cluster CA and node certificates, rustls and quinn
//! configurations, and frames over QUIC streams.
//!
//! Architecture invariant: certificate verification is never disabled. There is no
//! "insecure" switch here for anything to reach, not even `ferry dev`, which makes its own CA.

#![forbid(unsafe_code)]

pub mod addr;
pub mod certs;
pub mod close;
pub mod endpoint;
pub mod framed;
pub mod splice;
pub mod tls;

pub use close::CloseCode;
