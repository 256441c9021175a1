use super::*;
use ferry_proto::state::{command::Kind, AddGrant};

fn grant(i: u64) -> Command {
    Command {
        now_ms: i,
        actor: "test".into(),
        source: String::new(),
        kind: Some(Kind::AddGrant(AddGrant {
            user_group: format!("u{i}"),
            host_group: "h".into(),
        })),
    }
}

#[test]
fn log_and_snapshot_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = StateMachine::new();
    {
        let store = Store::open(dir.path()).unwrap();
        for i in 1..=10 {
            let c = grant(i);
            store.append(&[(i, &c)]).unwrap();
            expected.apply(&c);
            if i == 6 {
                store.save_snapshot(6, &expected.snapshot()).unwrap();
            }
        }
        store.flush().unwrap();
        assert_eq!(
            store.log_len(),
            4,
            "entries up to the snapshot are compacted"
        );
    }
    let store = Store::open(dir.path()).unwrap();
    let (state, applied) = store.recover().unwrap();
    assert_eq!(applied, 10);
    assert_eq!(state, expected);
    assert_eq!(store.last_index().unwrap(), 10);
}

#[test]
fn records_detect_damage() {
    let sealed = record::seal(b"hello");
    assert_eq!(record::open(&sealed).unwrap(), b"hello");
    for i in 0..sealed.len() {
        let mut bad = sealed.clone();
        bad[i] ^= 0x40;
        assert!(
            record::open(&bad).is_err(),
            "flip at byte {i} went unnoticed"
        );
    }
    for len in 0..sealed.len() {
        assert!(
            record::open(&sealed[..len]).is_err(),
            "truncation to {len} went unnoticed"
        );
    }
}

#[test]
fn recovery_refuses_a_gap_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.append(&[(1, &grant(1)), (3, &grant(3))]).unwrap();
    let err = store.recover().unwrap_err();
    assert!(err.to_string().contains("gap: entry 3 follows 1"), "{err}");
}
