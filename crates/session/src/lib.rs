//! The resumable stream protocol between a client and a host agent.
//!
//! A session's bytes travel end to end between the two endpoints, through one or two brokers
//! that relay them without looking inside. Each endpoint numbers the bytes it sends, keeps
//! every byte the other side has not acknowledged in a bounded replay buffer, and acknowledges
//! what it has received. When the path breaks (a broker dies or drains), both endpoints reach
//! each other again through another broker, exchange the offset each has received up to, and
//! each replays exactly the gap: no byte is lost, none is delivered twice.
//!
//! This crate is sans-IO, in the manner of `quinn-proto`: [`Stream`] takes frames and local
//! bytes in and hands frames and deliveries out. It owns no socket, no clock and no task; the
//! agent crate moves its frames over QUIC and its bytes to and from the local TCP connection.
//!
//! Architecture invariant: every byte is identified by its offset, and a receiver accepts a
//! data frame only at exactly the offset it expects. Duplicates and gaps are therefore not
//! handled but impossible; a frame that would create one is a protocol error.

#![forbid(unsafe_code)]

pub mod frame;
mod stream;

pub use frame::{Decoder, Frame};
pub use stream::{Config, Delivery, Error, Stream, BUFFER_BYTES_LIMIT};
