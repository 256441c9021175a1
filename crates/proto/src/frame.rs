//! Length-prefixed frames: a 4-byte big-endian payload length, then one protobuf message.
//!
//! The reader learns the length before it allocates anything, so a hostile peer can never make
//! it buffer more than [`FrameLimits::max_frame_bytes`]. The codec is pure: the transport crate
//! reads the header and the payload from a stream and calls [`decode_header`] and
//! [`decode_payload`] in between.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

/// Size of the length prefix.
pub const HEADER_BYTES: usize = 4;

/// Default bound on one frame's payload. Control messages are tiny; 64 KiB leaves room for a
/// broker list of hundreds of nodes while keeping a connection's worst-case buffer small.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

/// Why bytes could not become a message. Each variant closes the connection that sent them.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed {message} frame: {reason}")]
    Malformed {
        message: &'static str,
        reason: String,
    },
}

/// Bounds applied to every frame a peer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    pub max_frame_bytes: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

/// Validates a length prefix and returns the payload length to read next.
pub fn decode_header(header: [u8; HEADER_BYTES], limits: FrameLimits) -> Result<usize, Error> {
    let len = u32::from_be_bytes(header) as usize;
    if len > limits.max_frame_bytes {
        return Err(Error::TooLarge {
            len,
            max: limits.max_frame_bytes,
        });
    }
    Ok(len)
}

/// Decodes a payload of the length [`decode_header`] returned.
pub fn decode_payload<M: Message + Default>(payload: &[u8]) -> Result<M, Error> {
    M::decode(payload).map_err(|e| Error::Malformed {
        message: short_type_name::<M>(),
        reason: e.to_string(),
    })
}

/// Encodes a message as one frame, refusing to produce a frame the peer would refuse.
pub fn encode<M: Message>(message: &M, limits: FrameLimits) -> Result<Bytes, Error> {
    let len = message.encoded_len();
    if len > limits.max_frame_bytes {
        return Err(Error::TooLarge {
            len,
            max: limits.max_frame_bytes,
        });
    }
    let mut buf = BytesMut::with_capacity(HEADER_BYTES + len);
    buf.put_u32(len as u32);
    message
        .encode(&mut buf)
        .expect("BytesMut grows on demand, so encoding cannot run out of space");
    Ok(buf.freeze())
}

fn short_type_name<M>() -> &'static str {
    let full = std::any::type_name::<M>();
    full.rsplit("::").next().unwrap_or(full)
}

/// Decodes a whole frame held in memory (header and payload), e.g. from a fuzzer or a test.
pub fn decode_frame<M: Message + Default>(frame: &[u8], limits: FrameLimits) -> Result<M, Error> {
    let header: [u8; HEADER_BYTES] = frame
        .get(..HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| Error::Malformed {
            message: short_type_name::<M>(),
            reason: format!("truncated header: {} of {HEADER_BYTES} bytes", frame.len()),
        })?;
    let len = decode_header(header, limits)?;
    let payload = &frame[HEADER_BYTES..];
    if payload.len() != len {
        return Err(Error::Malformed {
            message: short_type_name::<M>(),
            reason: format!("header says {len} bytes, frame holds {}", payload.len()),
        });
    }
    decode_payload(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    fn limits(max: usize) -> FrameLimits {
        FrameLimits {
            max_frame_bytes: max,
        }
    }

    #[test]
    fn round_trips_every_shape_of_message() {
        let hello = wire::Hello {
            protocol_version: 1,
            role: wire::Role::Host as i32,
            software: "ferry test".into(),
        };
        let frame = encode(&hello, FrameLimits::default()).unwrap();
        assert_eq!(
            decode_frame::<wire::Hello>(&frame, FrameLimits::default()).unwrap(),
            hello
        );

        // An all-default message is a zero-length payload that decodes to the default.
        let empty = wire::SessionStartReply::default();
        let frame = encode(&empty, FrameLimits::default()).unwrap();
        assert_eq!(frame.len(), HEADER_BYTES);
        assert_eq!(
            decode_frame::<wire::SessionStartReply>(&frame, FrameLimits::default()).unwrap(),
            empty
        );
    }

    #[test]
    fn refuses_bad_frames_with_a_reason() {
        struct Case {
            name: &'static str,
            frame: Vec<u8>,
            max: usize,
            want: &'static str,
        }
        let cases = [
            Case {
                name: "oversized",
                frame: vec![0, 1, 0, 0, 1],
                max: 1024,
                want: "exceeds the maximum of 1024",
            },
            Case {
                name: "truncated header",
                frame: vec![0, 0],
                max: 1024,
                want: "truncated header",
            },
            Case {
                name: "short payload",
                frame: vec![0, 0, 0, 9, 1],
                max: 1024,
                want: "header says 9 bytes",
            },
            Case {
                name: "garbage payload",
                frame: vec![0, 0, 0, 3, 0xff, 0xff, 0xff],
                max: 1024,
                want: "malformed Hello frame",
            },
        ];
        for case in cases {
            let err = decode_frame::<wire::Hello>(&case.frame, limits(case.max)).unwrap_err();
            assert!(
                err.to_string().contains(case.want),
                "{}: got {err:?}, want it to mention {:?}",
                case.name,
                case.want
            );
        }
    }

    #[test]
    fn encoder_refuses_what_the_decoder_would() {
        let big = wire::Hello {
            software: "x".repeat(100),
            ..Default::default()
        };
        assert!(matches!(
            encode(&big, limits(50)),
            Err(Error::TooLarge { .. })
        ));
    }
}
