//! SledLog against the LogStore contract, on real sled files: round trips, suffix truncation,
//! compaction, snapshot installation, reopen, damage detection, and a single-node Core.

use ferry_consensus::{Core, CoreConfig, Entry, HardState, LogStore, StateRole};
use ferry_proto::state::{command::Kind, AddGrant, Command};
use ferry_store::{OpenError, SledLog};
use std::path::Path;

/// Opens the store in `dir` as raft id 1, initializing it with `voters` when it is new.
fn open(dir: &Path, voters: &[u64]) -> SledLog {
    let mut log = SledLog::open(dir).unwrap();
    if log.raft_id().is_none() {
        log.initialize(1, voters).unwrap();
    }
    log
}
use raft::Storage;

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("entry {index}/{term}").into_bytes().into(),
        ..Default::default()
    }
}

fn all(log: &SledLog) -> Vec<(u64, u64)> {
    let (first, last) = (log.first_index().unwrap(), log.last_index().unwrap());
    if last < first {
        return vec![];
    }
    log.entries(first, last + 1, None, raft::GetEntriesContext::empty(false))
        .unwrap()
        .iter()
        .map(|e| (e.index, e.term))
        .collect()
}

#[test]
fn appends_truncate_conflicts_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = open(dir.path(), &[1, 2, 3]);
        log.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>())
            .unwrap();
        // A new leader overwrites 4.. with its own entries; 5 must disappear.
        log.append(&[entry(4, 2)]).unwrap();
        let hs = HardState {
            term: 2,
            vote: 3,
            commit: 3,
            ..Default::default()
        };
        log.set_hard_state(&hs).unwrap();
        log.sync().unwrap();
        assert_eq!(all(&log), vec![(1, 1), (2, 1), (3, 1), (4, 2)]);
    }
    let log = open(dir.path(), &[9]);
    assert_eq!(all(&log), vec![(1, 1), (2, 1), (3, 1), (4, 2)]);
    let state = log.initial_state().unwrap();
    assert_eq!(
        (
            state.hard_state.term,
            state.hard_state.vote,
            state.hard_state.commit
        ),
        (2, 3, 3)
    );
    assert_eq!(
        state.conf_state.voters,
        vec![1, 2, 3],
        "the stored configuration wins over the bootstrap one"
    );
}

#[test]
fn compaction_and_snapshots_move_the_start_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), &[1]);
    log.append(&(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>())
        .unwrap();
    let conf = log.initial_state().unwrap().conf_state;
    let mut at6 = ferry_consensus::Snapshot::default();
    at6.set_data(b"state at 6".to_vec().into());
    at6.mut_metadata().index = 6;
    at6.mut_metadata().term = log.term(6).unwrap();
    at6.mut_metadata().set_conf_state(conf);
    log.compact(at6).unwrap();
    assert_eq!(
        (log.first_index().unwrap(), log.last_index().unwrap()),
        (7, 10)
    );
    assert_eq!(log.term(6).unwrap(), 1);
    assert!(log.term(5).is_err(), "compacted");
    assert_eq!(&log.latest_snapshot().unwrap().data[..], b"state at 6");

    // A leader's snapshot beyond our log replaces it entirely.
    let mut snapshot = log.latest_snapshot().unwrap();
    snapshot.mut_metadata().index = 20;
    snapshot.mut_metadata().term = 3;
    snapshot.set_data(b"state at 20".to_vec().into());
    log.apply_snapshot(&snapshot).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = open(dir.path(), &[1]);
    assert_eq!(
        (log.first_index().unwrap(), log.last_index().unwrap()),
        (21, 20)
    );
    assert_eq!(log.term(20).unwrap(), 3);
    assert_eq!(log.initial_state().unwrap().hard_state.commit, 20);
}

#[test]
fn damaged_entries_are_reported_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = open(dir.path(), &[1]);
        log.append(&(1..=3).map(|i| entry(i, 1)).collect::<Vec<_>>())
            .unwrap();
        log.sync().unwrap();
    }
    {
        // Flip a byte inside entry 2's stored record, through sled itself (opened as the log
        // opens it: sled lets go of the lock a moment after the log above is dropped).
        let db = ferry_store::raft_log::open_db(dir.path()).unwrap();
        let tree = db.open_tree("raft_log").unwrap();
        let mut value = tree.get(2u64.to_be_bytes()).unwrap().unwrap().to_vec();
        let last = value.len() - 1;
        value[last] ^= 0x01;
        tree.insert(2u64.to_be_bytes(), value).unwrap();
        db.flush().unwrap();
    }
    let err = SledLog::open(dir.path()).err().expect("damage is detected");
    assert!(matches!(err, OpenError::Damaged(_)), "{err}");
    assert!(err.to_string().contains("raft log entry 2"), "{err}");
}

#[test]
fn a_single_node_core_on_sled_commits_and_recovers_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let config = CoreConfig {
        id: 1,
        heartbeat_tick: 1,
        min_election_tick: 3,
        max_election_tick: 4,
        snapshot_every_entries: 7,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 64,
    };
    let expected = {
        let mut core = Core::new(&config, open(dir.path(), &[1])).unwrap();
        let mut ticks = 0;
        while core.role() != StateRole::Leader {
            core.tick();
            core.handle_ready().unwrap();
            ticks += 1;
            assert!(ticks < 100, "a lone voter elects itself");
        }
        for i in 0..20u64 {
            let command = Command {
                now_ms: i,
                kind: Some(Kind::AddGrant(AddGrant {
                    user_group: format!("g{i}"),
                    host_group: "h".into(),
                    services: vec![],
                })),
                ..Default::default()
            };
            core.propose(&command, i).unwrap();
            let out = core.handle_ready().unwrap();
            let tokens: Vec<_> = out.applied.iter().map(|a| a.token).collect();
            assert_eq!(tokens, vec![Some(i)]);
        }
        let state = core.state().clone();
        state
    };
    // The snapshot (every 7 entries) restores most of the state at once; raft-rs re-delivers
    // the committed rest once the node handles its first Ready.
    let mut core = Core::new(&config, open(dir.path(), &[1])).unwrap();
    for _ in 0..10 {
        core.tick();
        core.handle_ready().unwrap();
    }
    assert_eq!(*core.state(), expected);
}

#[test]
fn a_new_store_is_empty_until_initialized() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = SledLog::open(dir.path()).unwrap();
        assert_eq!(log.raft_id(), None);
    }
    {
        let mut log = SledLog::open(dir.path()).unwrap();
        assert_eq!(log.raft_id(), None, "opening writes nothing");
        log.initialize(7, &[]).unwrap();
    }
    let log = SledLog::open(dir.path()).unwrap();
    assert_eq!(log.raft_id(), Some(7));
    assert!(log.initial_state().unwrap().conf_state.voters.is_empty());
}

/// sled recovers a damaged data file by stopping at the first bad message: the store comes
/// back consistent but older. The high-water mark catches it.
#[test]
fn a_store_that_lost_durable_entries_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = open(dir.path(), &[1]);
        log.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>())
            .unwrap();
        log.sync().unwrap();
    }
    {
        let db = ferry_store::raft_log::open_db(dir.path()).unwrap();
        let tree = db.open_tree("raft_log").unwrap();
        tree.remove(5u64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let err = SledLog::open(dir.path())
        .err()
        .expect("the loss is detected");
    assert!(matches!(err, OpenError::Damaged(_)), "{err}");
    assert!(err.to_string().contains("entries up to 5"), "{err}");
}

/// Whatever is in sled's data file, opening never panics: damage is an error.
#[test]
fn garbage_in_the_data_file_is_damage_not_a_panic() {
    let seed: u64 = std::env::var("FERRY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    println!("FERRY_SEED={seed}");
    for trial in 0..8u64 {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = open(dir.path(), &[1]);
            log.append(&(1..=50).map(|i| entry(i, 1)).collect::<Vec<_>>())
                .unwrap();
            log.sync().unwrap();
        }
        let path = dir.path().join("db");
        let mut bytes = std::fs::read(&path).unwrap();
        // xorshift, from the seed: damage a run of bytes somewhere in the file.
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (trial + 1);
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let at = (next() % bytes.len() as u64) as usize;
        let len = (next() % 4096) as usize;
        for b in bytes.iter_mut().skip(at).take(len) {
            *b = next() as u8;
        }
        if trial % 2 == 1 {
            bytes.truncate(at);
        }
        std::fs::write(&path, &bytes).unwrap();
        // Either sled and every check vouch for all 50 entries, or the store is refused.
        match SledLog::open(dir.path()) {
            Ok(log) => assert_eq!(all(&log).len(), 50, "trial {trial}"),
            Err(e) => assert!(matches!(e, OpenError::Damaged(_)), "trial {trial}: {e}"),
        }
    }
}

#[test]
fn a_damaged_mark_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = open(dir.path(), &[1]);
        log.append(&[entry(1, 1)]).unwrap();
        log.sync().unwrap();
    }
    std::fs::write(dir.path().join("ferry-mark"), [0u8; 256]).unwrap();
    let err = SledLog::open(dir.path())
        .err()
        .expect("the mark is damaged");
    assert!(matches!(err, OpenError::Damaged(_)), "{err}");
}
