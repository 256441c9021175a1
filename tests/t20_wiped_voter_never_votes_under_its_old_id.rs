//! Issue 5/8, acceptance 3, the amnesia case: a voter whose store was wiped while it was down
//! must not vote under its old raft id, since it may have voted in the current term already,
//! and amnesia can elect two leaders in one term. The test makes the wiped node the only
//! voter that could give the witness a quorum, checks no leader is elected, then brings the
//! other broker back: the wiped node rejoins under a new raft id, the old one is removed, and
//! across the whole run no term ever had two leaders.

mod common;

use common::store::{leaders_by_term, Writer};
use common::{wait_for, World};
use std::time::{Duration, Instant};

/// Names and positions in port order.
const NODES: [(&str, u8); 3] = [("b1", 1), ("b2", 2), ("w1", 3)];

fn raft(w: &World, pos: u8) -> Option<serde_json::Value> {
    let (code, body) = w.admin_get(pos, "/v1/status")?;
    let v: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| code == 200)?;
    Some(v["raft"].clone())
}

#[test]
fn t20_a_wiped_voter_never_votes_under_its_old_raft_id() {
    let w = World::init_cluster(2, 1);
    // Quick elections: the window in which an amnesiac vote would elect someone is many
    // election timeouts long.
    for (name, _) in NODES {
        w.edit_config(name, "election_ticks = 10", "election_ticks = 5");
    }
    let mut procs: Vec<Option<common::Proc>> = NODES
        .iter()
        .map(|(name, pos)| Some(w.start_named(name, *pos)))
        .collect();
    let mut logs: Vec<String> = Vec::new();
    w.wait_healthy(3);
    let writer = Writer::start(&w, &[1]);
    wait_for("writes", Duration::from_secs(30), || {
        (writer.acked().len() >= 20).then_some(())
    });
    writer.pause();

    // b2 goes down and loses its store; then b1 goes down too: only w1 and the wiped b2 remain.
    let mut b2 = procs[1].take().unwrap();
    b2.kill();
    logs.push(b2.log_text());
    std::fs::remove_dir_all(w.data_dir("b2")).unwrap();
    let mut b1 = procs[0].take().unwrap();
    b1.kill();
    logs.push(b1.log_text());
    let b2_old_id = 2;

    procs[1] = Some(w.start_named("b2", 2));
    let (code, body) = wait_for("b2 to say it must rejoin", Duration::from_secs(10), || {
        common::http_get(&format!("{}/readyz", w.admin_url_of(2)))
            .filter(|(_, b)| b.contains("rejoining under a new raft id"))
    });
    assert_eq!(code, 503);
    let why = body.lines().find(|l| l.contains("rejoining")).unwrap_or("");
    println!("b2, wiped: {why}");
    // Eight election timeouts: w1 campaigns again and again; b2 must never give it a vote.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(4) {
        let w1 = raft(&w, 3).expect("w1 answers");
        assert_ne!(
            w1["role"], "leader",
            "w1 was elected with a vote from the wiped b2"
        );
        assert_eq!(w1["leader"], 0, "a leader without b1: {w1}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let w1 = raft(&w, 3).unwrap();
    println!("w1 after 4 s without b1: {w1}");

    // b1 returns: a leader is elected, and b2 rejoins under a new raft id.
    procs[0] = Some(w.start_named("b1", 1));
    w.wait_healthy(3);
    let (b2_id, _, _) = w.state_digest(2).unwrap();
    assert_ne!(b2_id, b2_old_id, "b2 came back under its old raft id");
    // It catches up as a learner, then the leader promotes it.
    let mut polls = 0u32;
    let voters = wait_for("b2's new id to be a voter", Duration::from_secs(30), || {
        polls += 1;
        if polls.is_multiple_of(200) {
            // Still a learner after 5 s: show how the leader sees it.
            println!("members: {:?}", w.admin_get(1, "/v1/members").map(|r| r.1));
        }
        let voters: Vec<u64> = raft(&w, 1)?["voters"]
            .as_array()?
            .iter()
            .filter_map(|v| v.as_u64())
            .collect();
        (voters.contains(&b2_id) && !voters.contains(&b2_old_id)).then_some(voters)
    });
    println!("b2 rejoined as raft id {b2_id}; voters {voters:?}");
    let audit = w.audit_records(1);
    let removal = audit
        .iter()
        .find(|r| r["action"] == "member.remove" && r["target"] == "b2 (raft id 2)")
        .unwrap_or_else(|| panic!("no audit record of the old id's removal: {audit:?}"));
    let outcome = removal["outcome"].as_str().unwrap();
    assert!(outcome.contains("wiped or lost"), "{removal}");
    println!("audit: {removal}");

    // Every acknowledged write survived, on every node.
    w.wait_same_state(&[1, 2, 3]);
    let acked = writer.acked();
    for (name, pos) in NODES {
        let hosts = w.hosts_on(pos).unwrap();
        assert!(
            acked.iter().all(|h| hosts.contains(h)),
            "{name} lost writes"
        );
    }
    drop(writer);

    for p in procs.iter().flatten() {
        logs.push(p.log_text());
    }
    let terms = leaders_by_term(&logs);
    println!("leaders by term: {terms:?}");
    assert!(!terms.is_empty(), "no leadership was logged");
    for (term, leaders) in &terms {
        assert_eq!(leaders.len(), 1, "term {term} had leaders {leaders:?}");
    }
}
