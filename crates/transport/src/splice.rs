//! Moving session bytes QUIC stream to QUIC stream: the broker's relay. (The endpoints carry
//! their local connections through `ferry_session`, in the agent crate.)
//!
//! The relay moves one direction and propagates its end: a clean end of input becomes a clean
//! finish of the output, an error becomes a reset, so the far side sees an error and never a
//! silently truncated stream.

use bytes::Bytes;
use quinn::{RecvStream, SendStream, VarInt};

/// Error code used when resetting a stream because its partner failed.
pub const RESET_PARTNER_FAILED: VarInt = VarInt::from_u32(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading: {0}")]
    Read(String),
    #[error("writing: {0}")]
    Write(String),
}

/// Chunks moved per batch by the relay. Each batch takes the connection locks once instead of
/// once per received STREAM frame (a frame is about one packet, ~1.4 KB at Ethernet MTU).
const BATCH_CHUNKS: usize = 32;

/// Copies `recv` into `send` until `recv` ends; returns the bytes moved. Zero-copy: received
/// chunks are handed to the sender as they are.
pub async fn quic_to_quic(mut recv: RecvStream, mut send: SendStream) -> Result<u64, Error> {
    let mut moved = 0u64;
    let mut chunks: [Bytes; BATCH_CHUNKS] = Default::default();
    loop {
        match recv.read_chunks(&mut chunks).await {
            Ok(Some(n)) => {
                moved += chunks[..n].iter().map(|c| c.len() as u64).sum::<u64>();
                if let Err(e) = send.write_all_chunks(&mut chunks[..n]).await {
                    let _ = recv.stop(RESET_PARTNER_FAILED);
                    return Err(Error::Write(e.to_string()));
                }
            }
            Ok(None) => {
                let _ = send.finish();
                return Ok(moved);
            }
            Err(e) => {
                let _ = send.reset(RESET_PARTNER_FAILED);
                return Err(Error::Read(e.to_string()));
            }
        }
    }
}
