//! The session frames and their encoding.
//!
//! ```text
//! Data   0x01 | offset u64 | length u32 | bytes
//! Ack    0x02 | received u64 | fin_received u8
//! Fin    0x03 | offset u64                      (the sender's total: it sends nothing more)
//! Abort  0x04 | length u16 | reason (UTF-8)      (the sender gave the session up)
//! ```
//!
//! Integers are big-endian. A frame's size is bounded by [`DATA_BYTES_MAX`] and
//! [`REASON_BYTES_MAX`], so a decoder never buffers more than one frame of input.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest data payload in one frame.
pub const DATA_BYTES_MAX: usize = 64 * 1024;
/// Longest abort reason.
pub const REASON_BYTES_MAX: usize = 1024;
/// Header of a data frame: kind, offset, length.
pub const DATA_HEADER_BYTES: usize = 1 + 8 + 4;

const KIND_DATA: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_FIN: u8 = 3;
const KIND_ABORT: u8 = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Bytes `offset..offset + bytes.len()` of the sender's stream.
    Data { offset: u64, bytes: Bytes },
    /// The sender has received every byte before `received`, and the end of the stream too
    /// when `fin_received`.
    Ack { received: u64, fin_received: bool },
    /// The sender's stream ends at `offset`.
    Fin { offset: u64 },
    /// The sender abandoned the session (its local connection failed); nothing will follow.
    Abort { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown session frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("session data frame of {0} bytes exceeds the maximum of {DATA_BYTES_MAX}")]
    DataTooLarge(usize),
    #[error("session abort reason of {0} bytes exceeds the maximum of {REASON_BYTES_MAX}")]
    ReasonTooLong(usize),
    #[error("session abort reason is not UTF-8")]
    ReasonNotUtf8,
    #[error("session ack carries fin flag {0}, not 0 or 1")]
    BadFlag(u8),
}

impl Frame {
    /// Appends the encoding of `self` to `out`. The data payload is copied; use
    /// [`Frame::data_header`] to send it without a copy.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Frame::Data { offset, bytes } => {
                out.extend_from_slice(&Self::data_header(*offset, bytes.len()));
                out.extend_from_slice(bytes);
            }
            Frame::Ack {
                received,
                fin_received,
            } => {
                out.put_u8(KIND_ACK);
                out.put_u64(*received);
                out.put_u8(u8::from(*fin_received));
            }
            Frame::Fin { offset } => {
                out.put_u8(KIND_FIN);
                out.put_u64(*offset);
            }
            Frame::Abort { reason } => {
                let mut end = reason.len().min(REASON_BYTES_MAX);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                out.put_u8(KIND_ABORT);
                out.put_u16(end as u16);
                out.extend_from_slice(&reason.as_bytes()[..end]);
            }
        }
    }

    /// The header of a data frame of `len` bytes at `offset`; the payload follows it as is.
    pub fn data_header(offset: u64, len: usize) -> [u8; DATA_HEADER_BYTES] {
        assert!(len <= DATA_BYTES_MAX, "callers split data into frames");
        let mut header = [0u8; DATA_HEADER_BYTES];
        header[0] = KIND_DATA;
        header[1..9].copy_from_slice(&offset.to_be_bytes());
        header[9..].copy_from_slice(&(len as u32).to_be_bytes());
        header
    }
}

/// Reassembles frames from a byte stream delivered in arbitrary pieces.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that do not form a whole frame yet.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, if one has arrived. An error means the stream is not a session
    /// stream (or is corrupt): the caller drops the link.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        let Some(&kind) = self.buf.first() else {
            return Ok(None);
        };
        let need = |n: usize, buf: &BytesMut| buf.len() >= n;
        match kind {
            KIND_DATA => {
                if !need(DATA_HEADER_BYTES, &self.buf) {
                    return Ok(None);
                }
                let len = u32::from_be_bytes(self.buf[9..13].try_into().expect("4 bytes")) as usize;
                if len > DATA_BYTES_MAX {
                    return Err(DecodeError::DataTooLarge(len));
                }
                if !need(DATA_HEADER_BYTES + len, &self.buf) {
                    self.buf.reserve(DATA_HEADER_BYTES + len - self.buf.len());
                    return Ok(None);
                }
                self.buf.advance(1);
                let offset = self.buf.get_u64();
                self.buf.advance(4);
                let bytes = self.buf.split_to(len).freeze();
                Ok(Some(Frame::Data { offset, bytes }))
            }
            KIND_ACK => {
                if !need(10, &self.buf) {
                    return Ok(None);
                }
                let flag = self.buf[9];
                if flag > 1 {
                    return Err(DecodeError::BadFlag(flag));
                }
                self.buf.advance(1);
                let received = self.buf.get_u64();
                self.buf.advance(1);
                Ok(Some(Frame::Ack {
                    received,
                    fin_received: flag == 1,
                }))
            }
            KIND_FIN => {
                if !need(9, &self.buf) {
                    return Ok(None);
                }
                self.buf.advance(1);
                Ok(Some(Frame::Fin {
                    offset: self.buf.get_u64(),
                }))
            }
            KIND_ABORT => {
                if !need(3, &self.buf) {
                    return Ok(None);
                }
                let len = u16::from_be_bytes([self.buf[1], self.buf[2]]) as usize;
                if len > REASON_BYTES_MAX {
                    return Err(DecodeError::ReasonTooLong(len));
                }
                if !need(3 + len, &self.buf) {
                    return Ok(None);
                }
                self.buf.advance(3);
                let reason = self.buf.split_to(len);
                let reason =
                    String::from_utf8(reason.to_vec()).map_err(|_| DecodeError::ReasonNotUtf8)?;
                Ok(Some(Frame::Abort { reason }))
            }
            other => Err(DecodeError::UnknownKind(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(frames: &[Frame], piece_bytes: usize) {
        let mut wire = BytesMut::new();
        for f in frames {
            f.encode(&mut wire);
        }
        let mut decoder = Decoder::new();
        let mut out = Vec::new();
        for piece in wire.chunks(piece_bytes) {
            decoder.push(piece);
            while let Some(f) = decoder.next_frame().expect("valid frames decode") {
                out.push(f);
            }
        }
        assert_eq!(out, frames, "pieces of {piece_bytes} bytes");
        assert_eq!(decoder.pending_bytes(), 0);
    }

    #[test]
    fn frames_round_trip_whatever_the_pieces() {
        let frames = vec![
            Frame::Data {
                offset: 0,
                bytes: Bytes::from_static(b"hello"),
            },
            Frame::Ack {
                received: 7,
                fin_received: false,
            },
            Frame::Data {
                offset: 5,
                bytes: Bytes::from(vec![9u8; DATA_BYTES_MAX]),
            },
            Frame::Fin { offset: 5 + 65536 },
            Frame::Ack {
                received: u64::MAX,
                fin_received: true,
            },
            Frame::Abort {
                reason: "local connection reset".into(),
            },
        ];
        for piece in [1, 2, 3, 7, 13, 1000, 70_000] {
            check(&frames, piece);
        }
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic_or_a_huge_buffer() {
        let cases: Vec<(Vec<u8>, DecodeError)> = vec![
            (vec![0x09], DecodeError::UnknownKind(9)),
            (
                [&[KIND_DATA][..], &[0; 8], &u32::MAX.to_be_bytes()].concat(),
                DecodeError::DataTooLarge(u32::MAX as usize),
            ),
            (
                [&[KIND_ABORT][..], &u16::MAX.to_be_bytes()].concat(),
                DecodeError::ReasonTooLong(u16::MAX as usize),
            ),
            (
                [&[KIND_ABORT][..], &2u16.to_be_bytes(), &[0xff, 0xfe]].concat(),
                DecodeError::ReasonNotUtf8,
            ),
            (
                [&[KIND_ACK][..], &[0; 8], &[2]].concat(),
                DecodeError::BadFlag(2),
            ),
        ];
        for (input, expected) in cases {
            let mut d = Decoder::new();
            d.push(&input);
            assert_eq!(d.next_frame(), Err(expected), "input {input:?}");
        }
    }

    #[test]
    fn an_abort_reason_is_cut_at_a_character_boundary() {
        let reason = "é".repeat(REASON_BYTES_MAX); // 2 bytes each
        let mut wire = BytesMut::new();
        Frame::Abort { reason }.encode(&mut wire);
        let mut d = Decoder::new();
        d.push(&wire);
        match d.next_frame() {
            Ok(Some(Frame::Abort { reason })) => assert_eq!(reason.len(), REASON_BYTES_MAX),
            other => panic!("expected an abort, got {other:?}"),
        }
    }
}
