//! The state machine's snapshot decoder (the bytes of a Raft snapshot's data, decoded and
//! restored as `ferry_consensus`'s `restore` does: prost, then `StateMachine::restore`), fed
//! seeded random bytes and mutated valid snapshots: it never panics, never allocates far beyond
//! its input, and a restored state's own snapshot restores to the same state. The fuzz target
//! `fuzz/fuzz_targets/state_snapshot.rs` explores it without bound (nightly only); this runs on
//! every CI build. `FERRY_SEED=N` replays a run.

// The records below name every field today; `..Default::default()` keeps this test compiling
// when one gains a field (protobuf changes are additive).
#![allow(clippy::needless_update)]

use ferry_decoder_check::{check, hex, mutate, seed, Bound, Counting, Rng};
use ferry_state::{
    AuditRecord, Grant, Host, MaintenanceLease, Member, Session, Snapshot, StateMachine, Token,
    User,
};
use prost::Message as _;

/// Inputs in all.
const INPUTS: usize = 20_000;
/// What one decode may allocate beyond a constant, per input byte: every 2 bytes can be one
/// empty record of a repeated field, a struct of up to ~200 bytes in a vector that grows by
/// doubling, then a map. A length-driven allocation (a reserve for a claimed length no input
/// holds) exceeds it.
const ALLOC_PER_INPUT_BYTE: usize = 1024;
const ALLOC_CONSTANT: usize = 64 * 1024;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What one decode may allocate.
const BOUND: Bound = Bound {
    constant: ALLOC_CONSTANT,
    per_input_byte: ALLOC_PER_INPUT_BYTE,
};

/// The inputs a snapshot's records are made of.
trait Values {
    fn text(&mut self) -> String;
    fn texts(&mut self) -> Vec<String>;
    fn hash(&mut self) -> Vec<u8>;
    fn enumeration(&mut self) -> i32;
}

impl Values for Rng {
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
    let seed = seed();
    let mut rng = Rng::new(seed, 0);
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
        let (state, peak) = check(seed, "the snapshot decoder", &input, BOUND, decode);
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
