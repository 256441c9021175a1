//! The Raft metadata records (`decode_meta`): hard state, conf state and snapshot.
#![no_main]

use ferry_consensus::{ConfState, HardState, Snapshot};
use ferry_store::{raft_log, record};
use libfuzzer_sys::fuzz_target;
use protobuf::Message;

fn reencode<M: Message>(key: &[u8], message: &M) -> M {
    let bytes = message.write_to_bytes().expect("a decoded message encodes");
    raft_log::decode_meta::<M>(key, &record::seal(&bytes)).expect("a re-encoded message decodes")
}

fn check<M: Message + PartialEq + std::fmt::Debug>(key: &[u8], value: &[u8]) {
    let Ok(message) = raft_log::decode_meta::<M>(key, value) else {
        return;
    };
    // Not `again == message`: rust-protobuf 2 decodes a repeated singular message field by
    // clearing the first one, which leaves its unknown fields `Some(empty)` where a fresh
    // decode has `None`, and `UnknownFields`'s `==` tells them apart. Instead: the same fields,
    // the same size, and re-encoding is a fixed point.
    let again = reencode(key, &message);
    assert_eq!(
        protobuf::text_format::print_to_string(&again),
        protobuf::text_format::print_to_string(&message)
    );
    assert_eq!(again.compute_size(), message.compute_size());
    assert_eq!(reencode(key, &again), again);
}

fn all(value: &[u8]) {
    check::<HardState>(b"hard_state", value);
    check::<ConfState>(b"conf_state", value);
    check::<Snapshot>(b"snapshot", value);
}

fuzz_target!(|data: &[u8]| {
    all(data);
    // The input as a payload, sealed: past the checksum, into the protobuf parser.
    all(&record::seal(data));
});
