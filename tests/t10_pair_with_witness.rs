//! Issue 2/8, acceptance 1a (pair): two brokers and a witness bootstrap, elect a broker,
//! replicate writes (the witness holds them too), and survive the loss of the leading broker.
//! The witness serves no traffic and never stays leader: when it wins an election it hands
//! leadership to the caught-up broker.

mod common;
use common::*;
use std::time::Duration;

/// Positions in port order: b1, b2, then w1.
const NODES: [(&str, u8); 3] = [("b1", 1), ("b2", 2), ("w1", 3)];

fn status(w: &World, name: &str) -> Option<serde_json::Value> {
    let out = w.admin(&["--node", name, "node", "--json"]);
    (out.code == 0)
        .then(|| serde_json::from_str(&out.stdout).ok())
        .flatten()
}

fn leader_among(w: &World, names: &[&str]) -> Option<String> {
    names
        .iter()
        .find(|n| status(w, n).is_some_and(|s| s["raft"]["role"] == "leader"))
        .map(|n| n.to_string())
}

fn users_on(w: &World, name: &str) -> String {
    w.admin(&["--node", name, "user", "list", "--json"]).ok()
}

#[test]
fn t10_a_pair_and_a_witness_replicate_and_the_witness_never_keeps_leadership() {
    let w = World::init_cluster(2, 1);
    // A witness that times out first usually wins the election after the leader dies, which
    // exercises its hand-off to the surviving broker.
    let path = w.cluster().join("w1.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replace("election_ticks = 10", "election_ticks = 3");
    assert_ne!(text, edited);
    std::fs::write(&path, edited).unwrap();
    let mut nodes: Vec<Proc> = NODES
        .iter()
        .map(|(name, pos)| w.start_named(name, *pos))
        .collect();

    let leader = wait_for("a broker to lead", Duration::from_secs(20), || {
        leader_among(&w, &["b1", "b2", "w1"]).filter(|l| l.starts_with('b'))
    });
    let witness = status(&w, "w1").unwrap();
    assert_eq!(witness["role"], "witness");
    let services: Vec<&str> = witness["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        !services.contains(&"relay"),
        "a witness runs no relay listener: {services:?}"
    );

    w.add_user("alice", "staff", "correct horse battery");
    wait_for(
        "the witness to hold the write",
        Duration::from_secs(10),
        || users_on(&w, "w1").contains("\"alice\"").then_some(()),
    );

    // Lose the leading broker: the other broker and the witness keep a quorum, and the leader
    // ends up being the surviving broker even if the witness wins the election.
    let (dead, survivor) = if leader == "b1" { (0, "b2") } else { (1, "b1") };
    nodes[dead].kill();
    wait_for(
        "the surviving broker to lead",
        Duration::from_secs(30),
        || (leader_among(&w, &[survivor, "w1"]).as_deref() == Some(survivor)).then_some(()),
    );
    w.ferry_with(
        &[
            "admin",
            "--config",
            &w.client_config(),
            "--node",
            survivor,
            "user",
            "add",
            "bob",
            "--group",
            "staff",
            "--password-stdin",
        ],
        Some("correct horse battery\n"),
        &[],
    )
    .ok();

    let witness_log = nodes[2].log_text();
    println!(
        "witness handed leadership over: {}",
        witness_log.contains("handing leadership to a broker")
    );

    let (name, position) = NODES[dead];
    nodes[dead] = w.start_named(name, position);
    for (name, _) in NODES {
        wait_for(
            &format!("{name} to hold both users"),
            Duration::from_secs(30),
            || {
                let users = users_on(&w, name);
                (users.contains("\"alice\"") && users.contains("\"bob\"")).then_some(())
            },
        );
    }

    // Every node stops cleanly on SIGTERM while its peers are still running.
    for node in nodes.iter_mut() {
        assert_eq!(
            node.terminate().code(),
            Some(0),
            "{} exits cleanly on SIGTERM",
            node.name
        );
    }
}
