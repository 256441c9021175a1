//! Network input: `ferry_input_check::peer` (see crates/input-check/src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_input_check::peer(data));
