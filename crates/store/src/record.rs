//! The on-disk record format: `[format: u8 = 1][crc32 of payload: u32 BE][payload]`, with the
//! IEEE CRC-32 (`crc32fast`).
//!
//! Sealed before writing, opened (and verified) after reading: a flipped bit or a truncated
//! value is reported as corruption instead of being decoded into something plausible.

/// Format byte of the current record layout.
const FORMAT_V1: u8 = 1;
/// Bytes before the payload.
pub const HEADER_BYTES: usize = 5;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("record of {0} bytes is shorter than its {HEADER_BYTES}-byte header")]
    Truncated(usize),
    #[error("record format {0} is unknown")]
    Format(u8),
    #[error("checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum { stored: u32, computed: u32 },
}

/// Wraps a payload with its format byte and checksum.
pub fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Verifies a sealed record and returns its payload.
pub fn open(record: &[u8]) -> Result<&[u8], Error> {
    if record.len() < HEADER_BYTES {
        return Err(Error::Truncated(record.len()));
    }
    if record[0] != FORMAT_V1 {
        return Err(Error::Format(record[0]));
    }
    let stored = u32::from_be_bytes(record[1..5].try_into().expect("slice of 4 bytes"));
    let payload = &record[HEADER_BYTES..];
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(Error::Checksum { stored, computed });
    }
    Ok(payload)
}
