//! The high-water mark file: one slot (`Mark::decode`) and the whole file of two slots
//! (`Mark::decode_file`).
#![no_main]

use ferry_store::mark::{Mark, SLOT_BYTES};
use libfuzzer_sys::fuzz_target;

/// Bytes of a slot the checksum covers, checksum included (the rest is padding).
const CHECKED_BYTES: usize = 8 + 8 * 8 + 4;

fn check_slot(slot: &[u8]) -> Option<Mark> {
    let mark = Mark::decode(slot).ok()?;
    let encoded = mark.encode();
    assert_eq!(encoded[..CHECKED_BYTES], slot[..CHECKED_BYTES]);
    assert_eq!(Mark::decode(&encoded), Ok(mark));
    Some(mark)
}

fn check_file(file: &[u8]) {
    let Ok(mark) = Mark::decode_file(file) else {
        return;
    };
    assert_eq!(file.len(), 2 * SLOT_BYTES);
    let (a, b) = file.split_at(SLOT_BYTES);
    // The mark is the valid slot with the highest sequence.
    let slots = [check_slot(a), check_slot(b)];
    assert!(slots.contains(&Some(mark)));
    assert!(slots.iter().flatten().all(|s| s.sequence <= mark.sequence));
}

/// `bytes` as a slot that passes the magic and checksum checks (when `whole`) or only the
/// checksum, so the fuzzer need not guess either.
fn reseal(bytes: &[u8], whole: bool) -> [u8; SLOT_BYTES] {
    let mut slot = [0u8; SLOT_BYTES];
    let n = bytes.len().min(SLOT_BYTES);
    slot[..n].copy_from_slice(&bytes[..n]);
    if whole {
        slot[..8].copy_from_slice(b"FRYMARK1");
    }
    let crc = crc32fast::hash(&slot[..CHECKED_BYTES - 4]);
    slot[CHECKED_BYTES - 4..CHECKED_BYTES].copy_from_slice(&crc.to_be_bytes());
    slot
}

fuzz_target!(|data: &[u8]| {
    check_slot(data);
    check_file(data);
    // Past the checks: each half of the input (the first byte chooses which slots get a
    // valid magic) as a slot with a correct checksum.
    let choose = data.first().copied().unwrap_or(0);
    let (a, b) = data.split_at(data.len() / 2);
    let a = reseal(a, choose & 1 == 0);
    let b = reseal(b, choose & 2 == 0);
    if choose & 1 == 0 {
        assert!(check_slot(&a).is_some());
    }
    check_file(&[a, b].concat());
});
