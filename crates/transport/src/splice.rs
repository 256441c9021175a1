//! Moving session bytes: QUIC stream to QUIC stream (the broker's relay) and local byte
//! streams to and from QUIC (TCP sockets and stdio at the endpoints).
//!
//! Each function moves one direction and propagates its end: a clean end of input becomes a
//! clean finish of the output (TCP half-close semantics survive the relay), an error becomes a
//! reset, so the far side sees an error and never a silently truncated stream.

use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream, VarInt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest chunk read at once; also the read buffer of the local side.
pub const CHUNK_BYTES_MAX: usize = 64 * 1024;

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

/// Copies a local byte stream (TCP, stdin) into a QUIC stream until the local side ends.
pub async fn local_to_quic<R: AsyncRead + Unpin>(
    mut local: R,
    mut send: SendStream,
) -> Result<u64, Error> {
    let mut moved = 0u64;
    let mut buf = BytesMut::with_capacity(CHUNK_BYTES_MAX);
    loop {
        buf.reserve(CHUNK_BYTES_MAX);
        match local.read_buf(&mut buf).await {
            Ok(0) => {
                let _ = send.finish();
                return Ok(moved);
            }
            Ok(n) => {
                moved += n as u64;
                if let Err(e) = send.write_chunk(buf.split().freeze()).await {
                    return Err(Error::Write(e.to_string()));
                }
            }
            Err(e) => {
                let _ = send.reset(RESET_PARTNER_FAILED);
                return Err(Error::Read(e.to_string()));
            }
        }
    }
}

/// Copies a QUIC stream into a local byte stream (TCP, stdout) until the QUIC stream ends, then
/// shuts the local writer down so the local program sees end of file.
///
/// Reads into one buffer rather than chunk by chunk: a copy is far cheaper than the one write
/// system call per received packet that forwarding each chunk would cost.
pub async fn quic_to_local<W: AsyncWrite + Unpin>(
    mut recv: RecvStream,
    mut local: W,
) -> Result<u64, Error> {
    let mut moved = 0u64;
    let mut buf = vec![0u8; CHUNK_BYTES_MAX];
    loop {
        match recv.read(&mut buf).await {
            Ok(Some(n)) => {
                moved += n as u64;
                if let Err(e) = local.write_all(&buf[..n]).await {
                    let _ = recv.stop(RESET_PARTNER_FAILED);
                    return Err(Error::Write(e.to_string()));
                }
            }
            Ok(None) => {
                let _ = local.flush().await;
                let _ = local.shutdown().await;
                return Ok(moved);
            }
            Err(e) => return Err(Error::Read(e.to_string())),
        }
    }
}
