//! The sealed record (`record::open`) and the two fixed-size records built on it or beside
//! it: the identity record and the log key.
#![no_main]

use ferry_store::{raft_log, record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A record that opens is exactly what sealing its payload writes.
    if let Ok(payload) = record::open(data) {
        assert_eq!(record::seal(payload), data);
    }
    if let Ok(id) = raft_log::decode_identity(data) {
        assert_ne!(id, 0);
        assert_eq!(record::seal(&id.to_be_bytes()), data);
    }
    // The same bytes as a payload: the checksum no longer stops the decoder.
    let sealed = record::seal(data);
    assert_eq!(record::open(&sealed), Ok(data));
    if let Ok(id) = raft_log::decode_identity(&sealed) {
        assert_eq!(id.to_be_bytes(), data);
    }
    if let Ok(index) = raft_log::decode_index(data) {
        assert_eq!(index.to_be_bytes(), data);
    }
});
