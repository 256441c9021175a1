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
/// Error code of a stream the cluster ended because the session may not go on (killed, or
/// its access withdrawn). An endpoint that sees it ends the session and does not resume it;
/// a relay passes it on unchanged, so it reaches the endpoint through any number of brokers.
pub const RESET_ENDED: VarInt = VarInt::from_u32(0x5f);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading: {0}")]
    Read(String),
    #[error("writing: {0}")]
    Write(String),
    /// The cut signal fired: both streams were reset with [`RESET_ENDED`].
    #[error("ended by the cluster")]
    Ended,
}

/// Chunks moved per batch by the relay. Each batch takes the connection locks once instead of
/// once per received STREAM frame (a frame is about one packet, ~1.4 KB at Ethernet MTU).
const BATCH_CHUNKS: usize = 32;

/// Copies `recv` into `send` until `recv` ends, or until `cut` turns true; returns the bytes
/// moved. Zero-copy: received chunks are handed to the sender as they are. A reset or stop
/// from one side passes to the other with its error code; a cut resets both sides with
/// [`RESET_ENDED`].
pub async fn quic_to_quic(
    mut recv: RecvStream,
    mut send: SendStream,
    mut cut: tokio::sync::watch::Receiver<bool>,
) -> Result<u64, Error> {
    let mut moved = 0u64;
    let cut_now = async {
        // A dropped sender means nobody can cut any more: wait for ever.
        if cut.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = copy(&mut recv, &mut send, &mut moved) => return result,
        () = cut_now => {}
    }
    let _ = send.reset(RESET_ENDED);
    let _ = recv.stop(RESET_ENDED);
    Err(Error::Ended)
}

async fn copy(recv: &mut RecvStream, send: &mut SendStream, moved: &mut u64) -> Result<u64, Error> {
    let mut chunks: [Bytes; BATCH_CHUNKS] = Default::default();
    loop {
        match recv.read_chunks(&mut chunks).await {
            Ok(Some(n)) => {
                *moved += chunks[..n].iter().map(|c| c.len() as u64).sum::<u64>();
                if let Err(e) = send.write_all_chunks(&mut chunks[..n]).await {
                    let code = match &e {
                        quinn::WriteError::Stopped(code) => *code,
                        _ => RESET_PARTNER_FAILED,
                    };
                    let _ = recv.stop(code);
                    return Err(Error::Write(e.to_string()));
                }
            }
            Ok(None) => {
                let _ = send.finish();
                return Ok(*moved);
            }
            Err(e) => {
                let code = match &e {
                    quinn::ReadError::Reset(code) => *code,
                    _ => RESET_PARTNER_FAILED,
                };
                let _ = send.reset(code);
                return Err(Error::Read(e.to_string()));
            }
        }
    }
}
