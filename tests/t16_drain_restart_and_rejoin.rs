//! Issue 4/8, acceptance 1 and 6: the planned restart done right, and two operators racing.
//!
//! 1. A healthy pair with a witness: the restart gate allows either broker; `ferry admin
//!    drain b1 --wait` takes the maintenance lease, moves 20 live sessions to b2 (none
//!    dropped, every byte checked), b1 stops, starts again, rejoins, and the leader releases
//!    the lease once b1 has been healthy for the stabilization time.
//! 6. Two operators drain two different nodes at the same moment: exactly one wins; the other
//!    is refused, naming the lease holder.

mod common;
use common::gate::GATE_TEST_CONFIG;
use common::*;
use std::time::{Duration, Instant};

const SESSIONS: usize = 20;
/// Each direction of each session: 256 KiB/s, like a remote desktop.
const PACE_BYTES_PER_SEC: u64 = 256 * 1024;

fn admin_as(w: &World, operator: &str, node: &str, args: &[&str]) -> Output {
    let config = w.client_config();
    let mut full = vec!["admin", "--config", config.as_str(), "--node", node];
    full.extend_from_slice(args);
    w.ferry_with(&full, None, &[("FERRY_OPERATOR", operator)])
}

#[test]
fn t16_drain_moves_20_sessions_then_restart_rejoins_and_releases_the_lease() {
    let len: u64 = 3 << 20;
    let w = World::init_cluster(2, 1);
    for node in ["b1", "b2", "w1"] {
        w.append_config(node, GATE_TEST_CONFIG);
    }
    let mut b1 = w.start_named("b1", 1);
    let _b2 = w.start_named("b2", 2);
    let _w1 = w.start_named("w1", 3);
    w.wait_healthy(3);
    w.restart_check_until("b1", 0, &["ALLOWED"]);
    w.restart_check_until("b2", 0, &["ALLOWED"]);

    let sessions = w.paced_sessions_via(1, "desk", len, PACE_BYTES_PER_SEC);
    let service = &sessions.service;
    let clients = sessions.start(&w, SESSIONS, 300);

    // The drain: the gate allows it, b1 hands everything to b2 and leads nothing.
    let started = Instant::now();
    let out = admin_as(&w, "dana@ops", "b2", &["drain", "b1", "--wait", "60s"]);
    eprintln!(
        "drain took {:?}:\n{}{}",
        started.elapsed(),
        out.stdout,
        out.stderr
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("restart of b1: ALLOWED"), "{out:?}");
    assert!(out.stderr.contains("b1 is drained"), "{out:?}");
    let status = w.cluster_status().unwrap();
    assert_eq!(status["leases"][0]["node"], "b1");
    assert_eq!(status["leases"][0]["holder"], "token:init (dana@ops)");
    assert_ne!(status["leader"], "b1", "leadership moved away from b1");
    assert_eq!(w.metric(1, "ferry_sessions_open", ""), 0.0);
    assert_eq!(w.metric(1, "ferry_draining", ""), 1.0);
    // While b1 is under maintenance, b2 is the one that must stay: its restart is refused.
    w.restart_check_until(
        "b2",
        3,
        &["FAIL one at a time", "node b1 is under maintenance"],
    );

    // Every session finished with every byte, none dropped.
    let ends: Vec<TransferEnd> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let service_ends: Vec<TransferEnd> = (0..SESSIONS)
        .map(|_| {
            service
                .recv_timeout(Duration::from_secs(120))
                .expect("every session finished on the service side")
        })
        .collect();
    for end in ends.iter().chain(&service_ends) {
        assert_eq!(end.error, None, "no local connection saw an error");
        assert_eq!(end.received_bytes, len, "no byte lost");
    }
    let mut sent: Vec<_> = ends.iter().map(|e| e.sent).collect();
    let mut received: Vec<_> = service_ends.iter().map(|e| e.received).collect();
    sent.sort();
    received.sort();
    assert_eq!(sent, received, "client to host: identical SHA-256s");
    let stall = ends
        .iter()
        .chain(&service_ends)
        .map(|e| e.longest_gap)
        .max()
        .unwrap();
    eprintln!("{SESSIONS} sessions moved; longest stall {stall:?}");
    assert_eq!(
        w.metric(2, "ferry_sessions_resumed_total", ""),
        SESSIONS as f64
    );
    assert_eq!(w.metric(2, "ferry_sessions_lost_total", ""), 0.0);

    // The restart: b1 stops, comes back, rejoins; the leader releases the lease once b1 has
    // been healthy for the stabilization time.
    let exit = b1.terminate();
    assert!(exit.success(), "b1 stopped cleanly: {exit:?}");
    let _b1 = w.start_named("b1", 1);
    let status = wait_for("the lease to be released", Duration::from_secs(30), || {
        let status = w.cluster_status()?;
        let released = status["leases"].as_array()?.is_empty();
        let all_healthy = status["nodes"]
            .as_array()?
            .iter()
            .all(|n| n["healthy"] == true);
        (released && all_healthy).then_some(status)
    });
    let b1_status = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == "b1")
        .unwrap()
        .clone();
    assert_eq!(b1_status["draining"], false, "{b1_status}");
    let audit: serde_json::Value =
        serde_json::from_str(&w.admin(&["audit", "--json"]).ok()).unwrap();
    let release = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "maintenance.release")
        .expect("the release is audited")
        .clone();
    eprintln!("audit: {release}");
    assert!(release["actor"].as_str().unwrap().starts_with("node:"));
    assert!(
        release["outcome"]
            .as_str()
            .unwrap()
            .contains("b1 is back and has been healthy for"),
        "{release}"
    );
    w.restart_check_until("b1", 0, &["ALLOWED"]);
}

#[test]
fn t16_two_operators_draining_two_nodes_at_once_exactly_one_wins() {
    let w = World::init_cluster(3, 0);
    for node in ["b1", "b2", "b3"] {
        w.append_config(node, GATE_TEST_CONFIG);
    }
    let _nodes: Vec<Proc> = (1..=3).map(|i| w.start_node(i)).collect();
    w.wait_healthy(3);
    w.restart_check_until("b1", 0, &["ALLOWED"]);
    w.restart_check_until("b2", 0, &["ALLOWED"]);

    // Through two different nodes, at the same moment.
    let barrier = std::sync::Barrier::new(2);
    let (ann, bob) = std::thread::scope(|scope| {
        let ann = scope.spawn(|| {
            barrier.wait();
            admin_as(&w, "ann@ops", "b3", &["drain", "b1"])
        });
        let bob = scope.spawn(|| {
            barrier.wait();
            admin_as(&w, "bob@ops", "b2", &["drain", "b2"])
        });
        (ann.join().unwrap(), bob.join().unwrap())
    });
    eprintln!("ann: {ann:?}\nbob: {bob:?}");
    let (winner, loser, holder, held) = match (ann.code, bob.code) {
        (0, 3) => ("b1", bob, "token:init (ann@ops)", "b1"),
        (3, 0) => ("b2", ann, "token:init (bob@ops)", "b2"),
        codes => panic!("exactly one drain must win, got exit codes {codes:?}"),
    };
    assert!(
        loser.stdout.contains(&format!(
            "node {held} is under maintenance (lease taken by {holder}"
        )),
        "the refusal names the lease holder: {loser:?}"
    );
    let status = w.cluster_status().unwrap();
    let leases = status["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 1, "{status:#}");
    assert_eq!(leases[0]["node"], winner);
    assert_eq!(leases[0]["holder"], holder);

    // `undrain` ends it; the other drain may then go ahead.
    w.admin(&["undrain", winner]).ok();
    let other = if winner == "b1" { "b2" } else { "b1" };
    w.restart_check_until(other, 0, &["ALLOWED"]);
}
