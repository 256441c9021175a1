//! SledLog against the LogStore contract, on real sled files: round trips, suffix truncation,
//! compaction, snapshot installation, reopen, damage detection, and a single-node Core.

use ferry_consensus::{Core, CoreConfig, Entry, HardState, LogStore, StateRole};
use ferry_proto::state::{command::Kind, AddGrant, Command};
use ferry_store::SledLog;
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
        let mut log = SledLog::open(dir.path(), &[1, 2, 3]).unwrap();
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
    let log = SledLog::open(dir.path(), &[9]).unwrap();
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
    let mut log = SledLog::open(dir.path(), &[1]).unwrap();
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
    let log = SledLog::open(dir.path(), &[1]).unwrap();
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
        let mut log = SledLog::open(dir.path(), &[1]).unwrap();
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
    let err = SledLog::open(dir.path(), &[1])
        .err()
        .expect("damage is detected");
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
        let mut core = Core::new(&config, SledLog::open(dir.path(), &[1]).unwrap()).unwrap();
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
    let mut core = Core::new(&config, SledLog::open(dir.path(), &[1]).unwrap()).unwrap();
    for _ in 0..10 {
        core.tick();
        core.handle_ready().unwrap();
    }
    assert_eq!(*core.state(), expected);
}
