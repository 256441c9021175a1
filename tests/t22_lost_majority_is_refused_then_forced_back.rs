//! Issue 5/8, the limit of self-repair: when a majority of the voters lost their stores, no
//! leader can be elected, so the nodes cannot rejoin on their own, and they say so instead of
//! guessing. The documented manual recovery (docs/OPERATIONS.md, "Lost stores") then brings the
//! cluster back from the surviving store: `ferry debug force-new-cluster` on it, and the others
//! rejoin under new raft ids by themselves, with every write the survivor held.

mod common;

use common::store::Writer;
use common::{wait_for, World};
use std::time::Duration;

#[test]
fn t22_a_lost_majority_is_refused_clearly_then_forced_back_from_the_survivor() {
    let w = World::init_brokers(3);
    let mut nodes: Vec<Option<common::Proc>> = (1..=3).map(|i| Some(w.start_node(i))).collect();
    w.wait_healthy(3);
    let writer = Writer::start(&w, &[1, 2, 3]);
    wait_for("writes", Duration::from_secs(30), || {
        (writer.acked().len() >= 30).then_some(())
    });
    writer.pause();
    let acked = writer.acked();
    drop(writer);
    w.wait_same_state(&[1, 2, 3]);

    // Every node stops; b2 and b3 lose their stores.
    for node in nodes.iter_mut() {
        let mut node = node.take().unwrap();
        let exit = node.terminate();
        assert_eq!(
            exit.code(),
            Some(0),
            "{} exits cleanly on SIGTERM",
            node.name
        );
    }
    for name in ["b2", "b3"] {
        std::fs::remove_dir_all(w.data_dir(name).join("raft")).unwrap();
    }
    for i in 1..=3 {
        nodes[usize::from(i - 1)] = Some(w.start_node(i));
    }
    // b2 and b3 have been seen: they must rejoin, which needs a leader, which b1 alone cannot
    // be. They say so, and nobody is elected.
    let (code, body) = wait_for("b2 to explain", Duration::from_secs(15), || {
        common::http_get(&format!("{}/readyz", w.admin_url_of(2)))
            .filter(|(_, b)| b.contains("A leader is needed"))
    });
    assert_eq!(code, 503);
    let why = body
        .lines()
        .find(|l| l.contains("A leader is needed"))
        .unwrap();
    println!("b2: {why}");
    assert!(why.contains("Lost stores"), "{why}");
    std::thread::sleep(Duration::from_secs(3));
    let (_, status) = w.admin_get(1, "/v1/status").unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["raft"]["leader"], 0,
        "a leader without a quorum: {status}"
    );

    // The manual recovery: stop b1, force a cluster of one from its store, start it.
    let exit = nodes[0].take().unwrap().terminate();
    assert_eq!(exit.code(), Some(0), "b1 exits cleanly on SIGTERM");
    let config = w.cluster().join("b1.toml");
    let config = config.to_str().unwrap();
    let refused = w.ferry(&["debug", "force-new-cluster", "--config", config]);
    assert_eq!(
        refused.code, 3,
        "without --yes it only explains: {}",
        refused.stderr
    );
    let forced = w
        .ferry(&["debug", "force-new-cluster", "--config", config, "--yes"])
        .ok();
    println!("{}", forced.trim());
    nodes[0] = Some(w.start_node(1));
    let all = w.wait_healthy(3);
    let ids: Vec<u64> = (1..=3).map(|i| w.state_digest(i).unwrap().0).collect();
    println!("raft ids after the recovery: {ids:?}");
    assert_eq!(ids[0], 1, "b1 kept its id");
    assert!(
        ids[1] > 3 && ids[2] > 3,
        "b2 and b3 rejoined under new ids: {ids:?}"
    );
    drop(all);
    w.wait_same_state(&[1, 2, 3]);
    for i in 1..=3 {
        let hosts = w.hosts_on(i).unwrap();
        assert!(
            acked.iter().all(|h| hosts.contains(h)),
            "b{i} lacks writes the survivor held"
        );
    }
    assert_eq!(
        w.quarantined("b1").len(),
        1,
        "b1's previous store is kept in its quarantine"
    );
}
