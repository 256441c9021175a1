//! The state machine's snapshot decoder (the bytes of a Raft snapshot's data, decoded and
//! restored as `ferry_consensus`'s `restore` does: prost, then `StateMachine::restore`), fed
//! seeded random bytes and mutated valid snapshots: it never panics, never allocates far beyond
//! its input, and a restored state's own snapshot restores to the same state. The fuzz target
//! `fuzz/fuzz_targets/state_snapshot.rs` explores it without bound (nightly only); this runs on
//! every CI build. `FERRY_SEED=N` replays a run.

// The records below name every field today; `..Default::default()` keeps this test compiling
// when one gains a field (protobuf changes are additive).
#![allow(clippy::needless_update)]

use ferry_state::{
    AuditRecord, Grant, Host, MaintenanceLease, Member, Session, Snapshot, StateMachine, Token,
    User,
};
use prost::Message as _;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

/// Inputs in all.
const INPUTS: usize = 20_000;
/// What one decode may allocate beyond a constant, per input byte: every 2 bytes can be one
/// empty record of a repeated field, a struct of up to ~200 bytes in a vector that grows by
/// doubling, then a map. A length-driven allocation (a reserve for a claimed length no input
/// holds) exceeds it.
const ALLOC_PER_INPUT_BYTE: usize = 1024;
const ALLOC_CONSTANT: usize = 64 * 1024;

// ---- Allocation accounting: the peak of live bytes this thread allocated during a decode. ----

struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn grew(bytes: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().wrapping_add(bytes);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn shrank(bytes: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().wrapping_sub(bytes)));
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters move.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size());
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as the new block coming before the old one goes, as a copy would.
        grew(new_size);
        shrank(layout.size());
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- Inputs ----

/// xorshift64*, from the seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut rng = Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        for _ in 0..4 {
            rng.next();
        }
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// Random bytes, mostly short, sometimes long.
    fn blob(&mut self) -> Vec<u8> {
        let len = match self.below(10) {
            0..=5 => self.below(16),
            6..=8 => self.below(300),
            _ => self.below(2000),
        };
        self.bytes(len)
    }

    /// A number, often an edge value.
    fn number(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => 1,
            2 => u64::MAX - self.below(2) as u64,
            3 => 1 << self.below(64),
            4 => self.below(1000) as u64,
            _ => self.next(),
        }
    }

    fn text(&mut self) -> String {
        let len = self.below(12);
        (0..len)
            .map(|_| ['a', 'b', '-', '.', '0', 'é', ' '][self.below(7)])
            .collect()
    }

    fn texts(&mut self) -> Vec<String> {
        (0..self.below(3)).map(|_| self.text()).collect()
    }

    fn hash(&mut self) -> Vec<u8> {
        let len = [0, 32][self.below(2)];
        self.bytes(len)
    }

    /// An enum value: known, or one this build does not know.
    fn enumeration(&mut self) -> i32 {
        [0, 1, 2, 3, -1, 1000][self.below(6)]
    }
}

/// A varint: what protobuf lengths and tags are made of.
fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// One to three mutations of `valid`.
fn mutate(rng: &mut Rng, valid: &[u8]) -> Vec<u8> {
    let mut out = valid.to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(8) {
            // Flip bits.
            0 | 1 if !out.is_empty() => {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(out.len());
                    out[at] ^= 1 << rng.below(8);
                }
            }
            // Truncate.
            2 => out.truncate(rng.below(out.len() + 1)),
            // Extend with random bytes.
            3 => {
                let len = 1 + rng.below(32);
                out.extend(rng.bytes(len));
            }
            // Overwrite a byte with an edge value.
            4 if !out.is_empty() => {
                let at = rng.below(out.len());
                out[at] = [0x00, 0x01, 0x7f, 0x80, 0xff][rng.below(5)];
            }
            // Insert random bytes.
            5 => {
                let at = rng.below(out.len() + 1);
                let len = 1 + rng.below(8);
                let bytes = rng.bytes(len);
                out.splice(at..at, bytes);
            }
            // Repeat a run (a repeated record, a doubled field).
            6 if !out.is_empty() => {
                let from = rng.below(out.len());
                let to = from + 1 + rng.below(out.len() - from);
                let run = out[from..to].to_vec();
                let at = rng.below(out.len() + 1);
                out.splice(at..at, run);
            }
            // Append a field: a tag (any field, any wire type) and a value, often a length
            // claiming more than there is.
            _ => {
                let field = 1 + rng.below(20) as u64;
                let wire = rng.below(8) as u64;
                varint(field << 3 | wire, &mut out);
                let value = match rng.below(3) {
                    0 => rng.below(8) as u64,
                    1 => u32::MAX as u64 - rng.below(2) as u64,
                    _ => rng.number(),
                };
                varint(value, &mut out);
            }
        }
    }
    out
}

/// A snapshot that restores: unique names and ids, tokens of existing users, sessions below
/// the next id, audit records in sequence, no member retired.
fn valid_snapshot(rng: &mut Rng) -> Snapshot {
    let users: Vec<User> = (0..rng.below(4))
        .map(|i| User {
            name: format!("user{i}"),
            groups: rng.texts(),
            password_hash: rng.text(),
            disabled: rng.percent(20),
            failed_logins: rng.number() as u32,
            last_failed_login_ms: rng.number(),
            ..Default::default()
        })
        .collect();
    let tokens = if users.is_empty() {
        Vec::new()
    } else {
        (0..rng.below(4))
            .map(|_| Token {
                token_hash: rng.hash(),
                user: users[rng.below(users.len())].name.clone(),
                expires_at_ms: rng.number(),
                ..Default::default()
            })
            .collect()
    };
    let hosts = (0..rng.below(4))
        .map(|i| Host {
            name: format!("host{i}"),
            groups: rng.texts(),
            enrollment: rng.enumeration(),
            enrollment_token_hash: rng.hash(),
            enrollment_expires_at_ms: rng.number(),
            credential_hash: rng.hash(),
            attached_broker: rng.text(),
            presence_epoch: rng.number(),
            ..Default::default()
        })
        .collect();
    let grants = (0..rng.below(4))
        .map(|_| Grant {
            user_group: rng.text(),
            host_group: rng.text(),
            ..Default::default()
        })
        .collect();
    let sessions: Vec<Session> = (0..rng.below(4) as u64)
        .map(|id| Session {
            id: 1 + 3 * id,
            user: rng.text(),
            host: rng.text(),
            service: rng.text(),
            broker: rng.text(),
            resume_secret_hash: rng.hash(),
            state: rng.enumeration(),
            opened_at_ms: rng.number(),
            closed_at_ms: rng.number(),
            bytes_client_to_host: rng.number(),
            bytes_host_to_client: rng.number(),
            close_reason: rng.text(),
            detached_at_ms: rng.number(),
            resumes: rng.number() as u32,
            ..Default::default()
        })
        .collect();
    let first_seq = rng.below(1000) as u64;
    let audit: Vec<AuditRecord> = (0..rng.below(5) as u64)
        .map(|i| AuditRecord {
            seq: first_seq + 2 * i,
            at_ms: rng.number(),
            actor: rng.text(),
            source: rng.text(),
            action: rng.text(),
            target: rng.text(),
            outcome: rng.text(),
            ..Default::default()
        })
        .collect();
    let retired_raft_ids: Vec<u64> = (0..rng.below(3) as u64).map(|i| 100 + i).collect();
    let members = (0..rng.below(3) as u64)
        .map(|i| Member {
            raft_id: 200 + i,
            node_id: rng.text(),
            peer_addr: rng.text(),
            role: rng.enumeration(),
            voter: rng.percent(50),
            relay_addr: rng.text(),
            ..Default::default()
        })
        .collect();
    let leases = (0..rng.below(3))
        .map(|i| MaintenanceLease {
            node: format!("node{i}"),
            holder: rng.text(),
            since_ms: rng.number(),
            forced: rng.percent(30),
            failed_checks: rng.texts(),
            boot_id: rng.number(),
            ..Default::default()
        })
        .collect();
    Snapshot {
        users,
        tokens,
        hosts,
        grants,
        next_session_id: sessions.len() as u64 * 3 + 1 + rng.below(10) as u64,
        sessions,
        next_audit_seq: audit.last().map_or(1, |r| r.seq + 1) + rng.below(10) as u64,
        audit,
        members,
        retired_raft_ids,
        leases,
        // The format version, and whatever later fields default to.
        ..StateMachine::new().snapshot()
    }
}

/// The decoder as consensus runs it on a Raft snapshot's data: `Some` when it restores.
fn decode(bytes: &[u8]) -> Option<StateMachine> {
    let snapshot = Snapshot::decode(bytes).ok()?;
    StateMachine::restore(snapshot).ok()
}

#[test]
fn the_state_snapshot_decoder_never_panics() {
    let seed = std::env::var("FERRY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f3a2_u64);
    println!("FERRY_SEED={seed}");
    let mut rng = Rng::new(seed);
    let (mut restored, mut refused, mut peak_per_byte) = (0, 0, 0);
    for _ in 0..INPUTS {
        let (input, valid) = match rng.below(10) {
            0..=1 => (rng.blob(), false),
            2 => (valid_snapshot(&mut rng).encode_to_vec(), true),
            _ => {
                let valid = valid_snapshot(&mut rng).encode_to_vec();
                (mutate(&mut rng, &valid), false)
            }
        };
        let start = LIVE.with(Cell::get);
        PEAK.with(|peak| peak.set(start));
        let result = catch_unwind(AssertUnwindSafe(|| decode(&input)));
        let peak = PEAK.with(Cell::get).wrapping_sub(start);
        let state = match result {
            Ok(state) => state,
            Err(panic) => {
                eprintln!(
                    "the snapshot decoder panicked on {} bytes: {} (FERRY_SEED={seed})",
                    input.len(),
                    hex(&input)
                );
                resume_unwind(panic);
            }
        };
        let bound = ALLOC_CONSTANT + ALLOC_PER_INPUT_BYTE * input.len();
        assert!(
            peak <= bound,
            "the snapshot decoder allocated {peak} bytes (bound {bound}) for {} bytes: {} \
             (FERRY_SEED={seed})",
            input.len(),
            hex(&input)
        );
        if input.len() >= 64 {
            peak_per_byte = peak_per_byte.max(peak / input.len());
        }
        let Some(state) = state else {
            assert!(!valid, "a valid snapshot is refused: {}", hex(&input));
            refused += 1;
            continue;
        };
        restored += 1;
        // A restored state's own snapshot restores to the same state.
        let again = decode(&state.snapshot().encode_to_vec());
        assert!(
            again.as_ref() == Some(&state),
            "a restored state's snapshot does not restore to it: {} (FERRY_SEED={seed})",
            hex(&input)
        );
    }
    println!("{restored} restored, {refused} refused, peak {peak_per_byte} bytes allocated per input byte (inputs of 64 bytes and more)");
    assert!(restored > 0 && refused > 0);
}
