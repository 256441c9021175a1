//! Issue 2/8, acceptance 1e: a node restarted after missing 10,000 writes catches up. The
//! leader compacts its log every 1,000 entries, so the returning node can only catch up from a
//! snapshot, then from the log after it.

mod common;
use common::*;
use std::time::{Duration, Instant};

const WRITES: usize = 10_000;
const WRITERS: usize = 32;

fn grant_count(w: &World, i: u8) -> usize {
    let status = w.status_of(i).expect("node answers");
    status["grants"].as_u64().unwrap() as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t08_a_node_that_missed_10000_writes_catches_up_from_a_snapshot() {
    let w = World::init_brokers(3);
    for i in 1..=3 {
        let path = w.cluster().join(format!("b{i}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text.replace(
            "snapshot_every_entries = 10000",
            "snapshot_every_entries = 1000",
        );
        assert_ne!(text, edited);
        std::fs::write(&path, edited).unwrap();
    }
    let mut nodes: Vec<Proc> = (1..=3).map(|i| w.start_node(i)).collect();
    wait_for("a leader", Duration::from_secs(20), || {
        (1..=3).find(|&i| {
            w.status_of(i)
                .is_some_and(|s| s["raft"]["role"] == "leader")
        })
    });
    let leader = (1..=3)
        .find(|&i| {
            w.status_of(i)
                .is_some_and(|s| s["raft"]["role"] == "leader")
        })
        .unwrap();
    let lagging = (1..=3).find(|&i| i != leader).unwrap();
    nodes[usize::from(lagging) - 1].kill();

    // 10,000 writes through the leader's admin API while the lagging node is down.
    let token = std::fs::read_to_string(w.cluster().join("admin.token")).unwrap();
    let url = format!("{}/v1/grants", w.admin_url_of(leader));
    ferry_transport::tls::install_default_provider();
    let client = reqwest::Client::new();
    let started = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|k| {
            let (client, url, token) = (client.clone(), url.clone(), token.trim().to_owned());
            tokio::spawn(async move {
                for n in (k..WRITES).step_by(WRITERS) {
                    let body =
                        serde_json::json!({ "user_group": format!("g{n}"), "host_group": "lab" });
                    let response = client
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    assert!(
                        response.status().is_success(),
                        "write {n}: {}",
                        response.status()
                    );
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    println!(
        "{WRITES} writes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let expected = grant_count(&w, leader);
    assert_eq!(expected, WRITES);

    let restarted = Instant::now();
    nodes[usize::from(lagging) - 1] = w.start_node(lagging);
    wait_for(
        "the lagging node to catch up",
        Duration::from_secs(60),
        || (grant_count(&w, lagging) == expected).then_some(()),
    );
    println!(
        "caught up {WRITES} writes in {:.1} s",
        restarted.elapsed().as_secs_f64()
    );
    let status = w.status_of(lagging).unwrap();
    assert!(
        status["raft"]["snapshots_installed"].as_u64().unwrap() >= 1,
        "the node caught up from a snapshot: {status}"
    );
}
