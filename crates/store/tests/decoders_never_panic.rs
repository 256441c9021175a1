//! Every on-disk record decoder of the store, fed seeded random bytes and mutated valid
//! records (bit flips, truncations, extensions, mutated payloads sealed again so the checksum
//! holds): none panics, none allocates far beyond its input, and what decodes re-encodes to
//! the same value. The fuzz targets in `fuzz/` explore the same decoders without bound
//! (nightly only); this runs on every CI build. `FERRY_SEED=N` replays a run.

use ferry_consensus::{ConfState, Entry, HardState, Snapshot};
use ferry_decoder_check::{check, hex, mutate, seed, Bound, Counting, Rng};
use ferry_store::mark::{Mark, SLOT_BYTES};
use ferry_store::{raft_log, record};
use raft::eraftpb::EntryType;

/// Inputs per decoder.
const INPUTS: usize = 20_000;
/// Bytes of a mark slot its checksum covers, checksum included (the rest is padding).
const MARK_CHECKED_BYTES: usize = 8 + 8 * 8 + 4;
/// What one decode may allocate beyond a constant, per input byte. rust-protobuf 2 reserves
/// up to its `READ_RAW_BYTES_MAX_ALLOC` (10 MiB) for a `bytes` field whose claimed length is
/// below that before finding the input shorter, so the constant covers that; anything
/// driven by a larger claimed length (a reserve of `len` for a length no input holds) fails.
const ALLOC_PER_INPUT_BYTE: usize = 256;
const ALLOC_CONSTANT: usize = 10 * 1024 * 1024 + 64 * 1024;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What one decode may allocate.
const BOUND: Bound = Bound {
    constant: ALLOC_CONSTANT,
    per_input_byte: ALLOC_PER_INPUT_BYTE,
};

/// Runs `decode` on `input` under the panic and allocation checks; returns the peak.
fn run(seed: u64, decoder: &str, input: &[u8], decode: impl FnOnce(&[u8])) -> usize {
    check(seed, decoder, input, BOUND, decode).1
}

/// What a decoder is fed: random bytes, valid records, mutated records, and mutated payloads
/// sealed again (the checksum holds, so the decoder behind it sees the damage).
enum Input {
    Random(Vec<u8>),
    Valid(Vec<u8>),
    Mutated(Vec<u8>),
}

impl Input {
    fn bytes(&self) -> &[u8] {
        match self {
            Input::Random(b) | Input::Valid(b) | Input::Mutated(b) => b,
        }
    }
}

/// `INPUTS` inputs from `payload` (a valid payload) and `seal` (how the decoder's record is
/// made from a payload).
fn inputs(
    rng: &mut Rng,
    mut payload: impl FnMut(&mut Rng) -> Vec<u8>,
    seal: impl Fn(&[u8]) -> Vec<u8>,
) -> Vec<Input> {
    (0..INPUTS)
        .map(|_| match rng.below(20) {
            0..=3 => Input::Random(rng.blob()),
            4 | 5 => Input::Valid(seal(&payload(rng))),
            6..=11 => {
                let valid = seal(&payload(rng));
                Input::Mutated(mutate(rng, &valid))
            }
            _ => {
                let valid = payload(rng);
                Input::Mutated(seal(&mutate(rng, &valid)))
            }
        })
        .collect()
}

/// Feeds `inputs` to `decode`, which says whether the input decoded; valid inputs must.
fn feed(seed: u64, decoder: &str, inputs: &[Input], decode: impl Fn(&[u8]) -> bool) {
    let (mut ok, mut err, mut peak) = (0, 0, 0);
    for input in inputs {
        let mut decoded = false;
        peak = peak.max(run(seed, decoder, input.bytes(), |b| decoded = decode(b)));
        if let Input::Valid(b) = input {
            assert!(decoded, "{decoder} refused a valid record: {}", hex(b));
        }
        if decoded {
            ok += 1;
        } else {
            err += 1;
        }
    }
    println!("{decoder}: {ok} decoded, {err} refused, at most {peak} bytes allocated");
    assert!(ok > 0 && err > 0, "{decoder}: {ok} decoded, {err} refused");
}

fn entry(rng: &mut Rng) -> Entry {
    let mut entry = Entry {
        term: rng.number(),
        index: rng.number(),
        data: rng.blob().into(),
        context: rng.bytes_below(8).into(),
        sync_log: rng.percent(10),
        ..Default::default()
    };
    entry.set_entry_type(
        [
            EntryType::EntryNormal,
            EntryType::EntryConfChange,
            EntryType::EntryConfChangeV2,
        ][rng.below(3)],
    );
    entry
}

fn hard_state(rng: &mut Rng) -> HardState {
    HardState {
        term: rng.number(),
        vote: rng.number(),
        commit: rng.number(),
        ..Default::default()
    }
}

fn conf_state(rng: &mut Rng) -> ConfState {
    ConfState {
        voters: rng.numbers(),
        learners: rng.numbers(),
        voters_outgoing: rng.numbers(),
        learners_next: rng.numbers(),
        auto_leave: rng.percent(20),
        ..Default::default()
    }
}

fn snapshot(rng: &mut Rng) -> Snapshot {
    let mut snapshot = Snapshot {
        data: rng.blob().into(),
        ..Default::default()
    };
    let meta = snapshot.mut_metadata();
    meta.index = rng.number();
    meta.term = rng.number();
    meta.set_conf_state(conf_state(rng));
    snapshot
}

fn mark(rng: &mut Rng) -> Mark {
    Mark {
        sequence: rng.number(),
        raft_id: rng.number(),
        term: rng.number(),
        vote: rng.number(),
        commit: rng.number(),
        last_index: rng.number(),
        last_term: rng.number(),
        snapshot_index: rng.number(),
    }
}

fn encode(message: &impl protobuf::Message) -> Vec<u8> {
    message.write_to_bytes().expect("a message encodes")
}

// ---- The decoders ----

#[test]
fn the_sealed_record_identity_and_log_key_decoders_never_panic() {
    let seed = seed();
    let mut rng = Rng::new(seed, 1);
    let records = inputs(&mut rng, |rng| rng.blob(), record::seal);
    feed(seed, "record::open", &records, |b| {
        let Ok(payload) = record::open(b) else {
            return false;
        };
        // A record that opens is exactly what sealing its payload writes.
        assert_eq!(record::seal(payload), b);
        true
    });

    let identities = inputs(
        &mut rng,
        |rng| rng.number().max(1).to_be_bytes().to_vec(),
        record::seal,
    );
    feed(seed, "decode_identity", &identities, |b| {
        let Ok(id) = raft_log::decode_identity(b) else {
            return false;
        };
        assert_ne!(id, 0);
        assert_eq!(record::seal(&id.to_be_bytes()), b);
        true
    });

    let keys = inputs(
        &mut rng,
        |rng| rng.number().to_be_bytes().to_vec(),
        |p| p.to_vec(),
    );
    feed(seed, "decode_index", &keys, |b| {
        let Ok(index) = raft_log::decode_index(b) else {
            return false;
        };
        assert_eq!(index.to_be_bytes(), b);
        true
    });
}

/// A mark slot that decodes is the one its mark encodes (up to the padding), and encodes
/// back to itself.
fn check_slot(slot: &[u8]) -> Option<Mark> {
    let mark = Mark::decode(slot).ok()?;
    let encoded = mark.encode();
    assert_eq!(encoded[..MARK_CHECKED_BYTES], slot[..MARK_CHECKED_BYTES]);
    assert_eq!(Mark::decode(&encoded), Ok(mark));
    Some(mark)
}

/// `body` as a slot with a correct checksum (what a mutated payload "sealed again" is here).
fn reseal_slot(body: &[u8]) -> Vec<u8> {
    let mut slot = body.to_vec();
    if slot.len() >= MARK_CHECKED_BYTES {
        let crc = crc32fast::hash(&slot[..MARK_CHECKED_BYTES - 4]);
        slot[MARK_CHECKED_BYTES - 4..MARK_CHECKED_BYTES].copy_from_slice(&crc.to_be_bytes());
    }
    slot
}

#[test]
fn the_mark_decoders_never_panic() {
    let seed = seed();
    let mut rng = Rng::new(seed, 2);
    let slots = inputs(&mut rng, |rng| mark(rng).encode().to_vec(), reseal_slot);
    feed(seed, "Mark::decode", &slots, |b| check_slot(b).is_some());

    let files = inputs(
        &mut rng,
        |rng| {
            let (a, b) = (mark(rng), mark(rng));
            match rng.below(4) {
                // One slot never written, or torn.
                0 => [a.encode().to_vec(), rng.bytes(SLOT_BYTES)].concat(),
                1 => [vec![0; SLOT_BYTES], b.encode().to_vec()].concat(),
                _ => [a.encode(), b.encode()].concat(),
            }
        },
        |file| {
            if file.len() < 2 * SLOT_BYTES {
                return file.to_vec();
            }
            let (a, b) = file.split_at(SLOT_BYTES);
            [reseal_slot(a), b.to_vec()].concat()
        },
    );
    feed(seed, "Mark::decode_file", &files, |file| {
        let Ok(mark) = Mark::decode_file(file) else {
            return false;
        };
        assert_eq!(file.len(), 2 * SLOT_BYTES);
        let (a, b) = file.split_at(SLOT_BYTES);
        // The mark is the valid slot with the highest sequence.
        let slots = [check_slot(a), check_slot(b)];
        assert!(slots.contains(&Some(mark)), "{mark:?} is neither slot");
        assert!(slots.iter().flatten().all(|s| s.sequence <= mark.sequence));
        true
    });
}

#[test]
fn the_log_entry_decoder_never_panics() {
    let seed = seed();
    let mut rng = Rng::new(seed, 3);
    // The index the entry is stored under: its own, or (after damage) another.
    let entries = inputs(&mut rng, |rng| encode(&entry(rng)), record::seal);
    let indexes: Vec<u64> = (0..entries.len()).map(|_| rng.number()).collect();
    let (mut ok, mut err, mut peak) = (0, 0, 0);
    for (input, index) in entries.iter().zip(indexes) {
        let mut decoded = false;
        let used = run(seed, "decode_entry", input.bytes(), |b| {
            let Ok(entry) = raft_log::decode_entry(index, b) else {
                return;
            };
            decoded = true;
            // Re-encoding need not give the same bytes (field order, unknown fields,
            // non-minimal varints) but must give the same entry (which has no message fields,
            // so `==` is exact; see `decode_meta`).
            let again = raft_log::decode_entry(index, &record::seal(&encode(&entry)));
            assert_eq!(again.ok(), Some(entry));
        });
        if let Input::Valid(b) = input {
            assert!(decoded, "decode_entry refused a valid record: {}", hex(b));
        }
        if decoded {
            ok += 1;
        } else {
            err += 1;
        }
        peak = peak.max(used);
    }
    println!("decode_entry: {ok} decoded, {err} refused, at most {peak} bytes allocated");
    assert!(ok > 0 && err > 0);
}

fn reencode<M: protobuf::Message>(key: &[u8], message: &M) -> M {
    raft_log::decode_meta::<M>(key, &record::seal(&encode(message)))
        .expect("a re-encoded message decodes")
}

/// Decodes a metadata record; what decodes re-encodes to the same fields.
fn decode_meta<M>(key: &[u8], bytes: &[u8]) -> bool
where
    M: protobuf::Message + PartialEq + std::fmt::Debug,
{
    let Ok(message) = raft_log::decode_meta::<M>(key, bytes) else {
        return false;
    };
    // Not `again == message`: rust-protobuf 2 decodes a repeated singular message field by
    // clearing the first one, which leaves its unknown fields `Some(empty)` where a fresh
    // decode has `None`, and `UnknownFields`'s `==` tells them apart. Instead: the same
    // fields, the same size, and re-encoding is a fixed point.
    let again = reencode(key, &message);
    assert_eq!(
        protobuf::text_format::print_to_string(&again),
        protobuf::text_format::print_to_string(&message)
    );
    assert_eq!(again.compute_size(), message.compute_size());
    assert_eq!(reencode(key, &again), again);
    true
}

fn check_meta<M>(seed: u64, rng: &mut Rng, key: &[u8], message: impl Fn(&mut Rng) -> M)
where
    M: protobuf::Message + PartialEq + std::fmt::Debug,
{
    let records = inputs(rng, |rng| encode(&message(rng)), record::seal);
    let decoder = format!("decode_meta({})", String::from_utf8_lossy(key));
    feed(seed, &decoder, &records, |b| decode_meta::<M>(key, b));
}

#[test]
fn the_metadata_decoders_never_panic() {
    let seed = seed();
    let mut rng = Rng::new(seed, 4);
    check_meta(seed, &mut rng, b"hard_state", hard_state);
    check_meta(seed, &mut rng, b"conf_state", conf_state);
    check_meta(seed, &mut rng, b"snapshot", snapshot);
    // Found by the fuzz target: the metadata field twice, the first with unknown fields.
    let payload = [0x12, 0x02, 0x68, 0x01, 0x12, 0x00];
    assert!(decode_meta::<Snapshot>(
        b"snapshot",
        &record::seal(&payload)
    ));
}
