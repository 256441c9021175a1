//! Issue 2/8, acceptance 1d: partitions made with the peer transport's fault switch (real
//! processes; traffic to and from the cut-off peers is dropped), both ways: isolating the
//! leader, then isolating a follower. The minority commits nothing and says so; the majority
//! keeps serving; after healing every node converges to the same state. A minority node that
//! has not heard from a leader for longer than `read_staleness_ms` authorizes nothing: its
//! read_index finds no quorum, and a login there is refused with a reason.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::time::Duration;

async fn block(w: &World, node: u8, peers: &[u8]) {
    let token = std::fs::read_to_string(w.cluster().join("admin.token")).unwrap();
    let blocked: Vec<String> = peers.iter().map(|p| format!("b{p}")).collect();
    ferry_transport::tls::install_default_provider();
    let response = reqwest::Client::new()
        .post(format!("{}/v1/faults/peers", w.admin_url_of(node)))
        .bearer_auth(token.trim())
        .json(&serde_json::json!({ "blocked": blocked }))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "fault switch on b{node}: {}",
        response.status()
    );
}

const PASSWORD: &str = "correct horse battery";

fn leader(w: &World) -> u8 {
    wait_for("a leader", Duration::from_secs(20), || {
        w.leader_among(&[1, 2, 3])
    })
}

async fn partition_round(w: &World, isolated: u8, round: &str) {
    let majority: Vec<u8> = (1..=3).filter(|&i| i != isolated).collect();
    block(w, isolated, &majority).await;
    for &i in &majority {
        block(w, i, &[isolated]).await;
    }
    // The majority keeps serving (electing a new leader if it lost the old one).
    let written = format!("{round}-majority");
    wait_for(
        "the majority to commit a write",
        Duration::from_secs(20),
        || (w.admin_on(majority[0], &["grant", &written, "lab"]).code == 0).then_some(()),
    );
    // The minority commits nothing, and says so.
    let before = w.grants_on(isolated);
    let refused = format!("{round}-minority");
    let out = w.admin_on(isolated, &["grant", &refused, "lab"]);
    assert_eq!(
        out.code, 6,
        "a write on the minority fails as unavailable: {out:?}"
    );
    assert!(
        out.stderr.contains("not applied within") || out.stderr.contains("no leader"),
        "the minority says why: {out:?}"
    );
    assert_eq!(
        w.grants_on(isolated),
        before,
        "the minority applied nothing new"
    );
    // Past the staleness window, the minority authorizes nothing either.
    wait_for(
        "the minority to be out of contact with any leader for over 1 s",
        Duration::from_secs(10),
        || {
            let raft = w.status_of(isolated)?["raft"].clone();
            let stale = raft["leader_contact_ms_ago"]
                .as_u64()
                .is_none_or(|ms| ms > 1_000)
                && raft["role"] != "leader";
            stale.then_some(())
        },
    );
    w.login_via(&w.client_config_for(isolated), "alice", PASSWORD)
        .fails(6, "cannot reach the cluster's leader");

    // Heal: everyone converges on the same state, with the majority's write and without the
    // minority's.
    for i in 1..=3 {
        block(w, i, &[]).await;
    }
    wait_for(
        "the healed cluster to converge",
        Duration::from_secs(30),
        || {
            let states: Vec<BTreeSet<String>> = (1..=3).map(|i| w.grants_on(i)).collect();
            (states.windows(2).all(|p| p[0] == p[1]) && states[0].contains(&written)).then_some(())
        },
    );
    assert!(
        !w.grants_on(isolated).contains(&refused),
        "the refused write never appears"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t09_partitions_leave_the_minority_without_commits_and_heal() {
    let w = World::init_brokers(3);
    for i in 1..=3 {
        let path = w.cluster().join(format!("b{i}.toml"));
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("\n[faults]\nenabled = true\n");
        std::fs::write(&path, text).unwrap();
    }
    let _nodes: Vec<Proc> = (1..=3).map(|i| w.start_node(i)).collect();
    let first_leader = leader(&w);
    w.add_user("alice", "staff", PASSWORD);
    partition_round(&w, first_leader, "leader-isolated").await;
    let follower = (1..=3).find(|&i| i != leader(&w)).unwrap();
    partition_round(&w, follower, "follower-isolated").await;
}
