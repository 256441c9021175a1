//! A Raft log entry (`decode_entry`): the first 8 bytes are the index it is stored under, the
//! rest the stored value.
#![no_main]

use ferry_store::{raft_log, record};
use libfuzzer_sys::fuzz_target;
use protobuf::Message as _;

fn check(index: u64, value: &[u8]) {
    let Ok(entry) = raft_log::decode_entry(index, value) else {
        return;
    };
    // Re-encoding need not give the same bytes (field order, unknown fields, non-minimal
    // varints) but must give the same entry.
    let bytes = entry.write_to_bytes().expect("a decoded entry encodes");
    let again = raft_log::decode_entry(index, &record::seal(&bytes)).expect("re-encoded entry");
    assert_eq!(again, entry);
}

fuzz_target!(|data: &[u8]| {
    let split = data.len().min(8);
    let mut key = [0u8; 8];
    key[..split].copy_from_slice(&data[..split]);
    let index = u64::from_be_bytes(key);
    let value = &data[split..];
    check(index, value);
    // The value as a payload, sealed: past the checksum, into the protobuf parser.
    check(index, &record::seal(value));
});
