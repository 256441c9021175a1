//! The state machine's snapshot: the bytes of a Raft snapshot's data, decoded and restored as
//! `ferry_consensus`'s `restore` does (prost decode, then `StateMachine::restore`).
#![no_main]

use ferry_state::{Snapshot, StateMachine};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Ok(snapshot) = Snapshot::decode(data) else {
        return;
    };
    let Ok(state) = StateMachine::restore(snapshot) else {
        return;
    };
    // A restored state's own snapshot restores to the same state.
    let bytes = state.snapshot().encode_to_vec();
    let decoded = Snapshot::decode(&bytes[..]).expect("a state's snapshot decodes");
    let again = StateMachine::restore(decoded).expect("a state's snapshot restores");
    assert_eq!(again, state);
});
