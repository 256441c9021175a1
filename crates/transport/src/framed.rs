//! Reading and writing [`ferry_proto::frame`] frames on async streams (QUIC streams in
//! production, in-memory pipes in tests).

use ferry_proto::frame::{self, FrameLimits, HEADER_BYTES};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Codec(#[from] frame::Error),
    #[error("stream ended before a complete frame")]
    Truncated,
    /// The stream ended cleanly, between frames: the sender has nothing more to say.
    #[error("stream ended")]
    Ended,
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame. Allocates at most `limits.max_frame_bytes`, after checking the header.
pub async fn read<M, R>(reader: &mut R, limits: FrameLimits) -> Result<M, Error>
where
    M: Message + Default,
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; HEADER_BYTES];
    // A stream that ends before a frame begins ended cleanly; one that ends inside is cut.
    if reader.read(&mut header[..1]).await? == 0 {
        return Err(Error::Ended);
    }
    read_exact(reader, &mut header[1..]).await?;
    let len = frame::decode_header(header, limits)?;
    let mut payload = vec![0u8; len];
    read_exact(reader, &mut payload).await?;
    Ok(frame::decode_payload(&payload)?)
}

/// Writes one frame.
pub async fn write<M, W>(writer: &mut W, message: &M, limits: FrameLimits) -> Result<(), Error>
where
    M: Message,
    W: AsyncWrite + Unpin,
{
    let bytes = frame::encode(message, limits)?;
    writer.write_all(&bytes).await?;
    Ok(())
}

async fn read_exact<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> Result<(), Error> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::Truncated),
        Err(e) => Err(Error::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::wire;

    #[tokio::test]
    async fn frames_cross_a_pipe_and_bad_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let hello = wire::Hello {
            protocol_version: 7,
            ..Default::default()
        };
        write(&mut a, &hello, FrameLimits::default()).await.unwrap();
        let got: wire::Hello = read(&mut b, FrameLimits::default()).await.unwrap();
        assert_eq!(got, hello);

        // An oversized header is refused before any payload is read or allocated.
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read::<wire::Hello, _>(&mut b, FrameLimits::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Codec(frame::Error::TooLarge { .. })),
            "{err}"
        );

        // A stream that ends mid-frame is reported as truncated.
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0, 0, 10, 1, 2]).await.unwrap();
        drop(a);
        let err = read::<wire::Hello, _>(&mut b, FrameLimits::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Truncated), "{err}");
    }
}
