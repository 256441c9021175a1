//! Issue 4/8, acceptance 2 to 5, 7 and 8: the restart gate refuses a restart when the rest of
//! the cluster could not carry on, naming what is wrong. Each refusal comes from a real
//! condition in real processes — a process killed, a service stopped through the test-only
//! fault switch, a configured limit — never from made-up inputs to the gate function.

mod common;
use common::gate::GATE_TEST_CONFIG;
use common::*;
use std::io::{Read, Write};
use std::time::Duration;

/// A pair and a witness, with `edit` applied to the configs before they start.
fn pair_with_witness(edit: impl Fn(&World)) -> (World, Vec<Proc>) {
    let w = World::init_cluster(2, 1);
    for node in ["b1", "b2", "w1"] {
        w.append_config(node, GATE_TEST_CONFIG);
    }
    edit(&w);
    let nodes = vec![
        w.start_named("b1", 1),
        w.start_named("b2", 2),
        w.start_named("w1", 3),
    ];
    (w, nodes)
}

/// Acceptance 2 and 8: the incident replayed. b2 silently lacks its relay service; a restart
/// of b1 is refused naming it, b2 is not ready; a forced drain proceeds and is audited.
#[test]
fn t15_incident_replayed_stopped_relay_on_b2_blocks_b1() {
    let (w, _nodes) = pair_with_witness(|_| {});
    w.wait_healthy(3);
    w.restart_check_until("b1", 0, &["ALLOWED"]);
    w.restart_check_until("b2", 0, &["ALLOWED"]);

    let (code, body) = w
        .admin_post(
            2,
            "/v1/faults/services",
            r#"{"service":"relay","stopped":true}"#,
        )
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let out = w.restart_check_until(
        "b1",
        3,
        &[
            "REFUSED",
            "FAIL service coverage",
            "b2: service relay is stopped (stopped by the test-only fault switch)",
        ],
    );
    assert!(
        out.stderr.contains("b1 may not be taken down now"),
        "{out:?}"
    );
    // b2 says so itself.
    let (code, body) = http_get(&format!("{}/readyz", w.admin_url_of(2))).unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("service relay is stopped (stopped by the test-only fault switch)"),
        "{body}"
    );
    // Every node's view follows within a report interval (the leader's answered above).
    let status = wait_for("b1 to see b2 unhealthy", Duration::from_secs(10), || {
        let status = w.cluster_status()?;
        let b2_healthy = status["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["node_id"] == "b2")?["healthy"]
            == true;
        (!b2_healthy).then_some(status)
    });
    assert_eq!(status["failure_tolerance"], 0);

    // A refused drain without --force changes nothing.
    let out = w.admin(&["drain", "b1"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("pass --force"), "{out:?}");
    assert!(w.cluster_status().unwrap()["leases"]
        .as_array()
        .unwrap()
        .is_empty());

    // Acceptance 8: --force proceeds, loudly, and the audit log records who forced what and
    // which checks failed.
    let out = w.ferry_with(
        &[
            "admin",
            "--config",
            &w.client_config(),
            "drain",
            "b1",
            "--force",
        ],
        None,
        &[("FERRY_OPERATOR", "carol@desk")],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("REFUSED, but FORCED"), "{out:?}");
    assert!(
        out.stderr.contains("PAST FAILING RESTART CHECKS"),
        "{out:?}"
    );
    let audit: serde_json::Value =
        serde_json::from_str(&w.admin(&["audit", "--json"]).ok()).unwrap();
    let forced = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "maintenance.acquire.forced")
        .expect("the forced drain is audited");
    eprintln!("audit: {forced}");
    assert_eq!(forced["actor"], "token:init (carol@desk)");
    assert_eq!(forced["target"], "b1");
    let outcome = forced["outcome"].as_str().unwrap();
    assert!(
        outcome.starts_with("ok, FORCED past failing checks: "),
        "{outcome}"
    );
    assert!(
        outcome.contains("service coverage: ") && outcome.contains("b2: service relay is stopped"),
        "{outcome}"
    );
}

/// Acceptance 3: with the witness down, neither broker may restart (failure tolerance 0).
#[test]
fn t15_witness_down_refuses_both_brokers_for_quorum() {
    let (w, mut nodes) = pair_with_witness(|_| {});
    w.wait_healthy(3);
    w.restart_check_until("b1", 0, &["ALLOWED", "failure tolerance 1"]);
    nodes[2].kill();
    for node in ["b1", "b2"] {
        w.restart_check_until(
            node,
            3,
            &[
                "failure tolerance 0",
                "FAIL quorum",
                "would remain",
                "bring back first: w1 (",
            ],
        );
    }
}

/// Acceptance 4: two brokers and no witness: every restart is refused, and the answer says to
/// add a witness.
#[test]
fn t15_two_brokers_without_witness_are_told_to_add_one() {
    let w = World::init_cluster(2, 0);
    for node in ["b1", "b2"] {
        w.append_config(node, GATE_TEST_CONFIG);
    }
    let _nodes = [w.start_named("b1", 1), w.start_named("b2", 2)];
    w.wait_healthy(2);
    for node in ["b1", "b2"] {
        w.restart_check_until(
            node,
            3,
            &[
                "FAIL quorum",
                "two voters cannot lose either: add a witness",
            ],
        );
    }
}

/// Acceptance 5: b2 may carry 2 sessions; b1 carries 3, so b1 may not go.
#[test]
fn t15_capacity_the_other_broker_cannot_absorb_is_refused_with_numbers() {
    let (w, _nodes) =
        pair_with_witness(|w| w.edit_config("b2", "sessions_max = 10000", "sessions_max = 2"));
    w.wait_healthy(3);
    w.add_user("alice", "staff", "correct horse battery");
    let token = w.enroll("lab-pc", "lab");
    w.admin(&["grant", "staff", "lab"]).ok();
    let echo = echo_server();
    let _host = w.start_host_via(
        &w.client_config_for(1),
        "lab-pc",
        Some(&token),
        &[("echo", echo)],
    );
    let client = w.client_config_for(1);
    w.login_via(&client, "alice", "correct horse battery").ok();
    let (_forward, addr) = w.forward_via(&client, "lab-pc", "echo");
    // Three live sessions: each echoes a byte, then stays open.
    let sessions: Vec<std::net::TcpStream> = (0..3)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(b"x").unwrap();
            let mut byte = [0u8];
            s.read_exact(&mut byte).unwrap();
            s
        })
        .collect();
    w.restart_check_until(
        "b1",
        3,
        &[
            "FAIL capacity",
            "b1 carries 3 sessions",
            "room for only 2 sessions",
            "b2: 0 of 2 sessions",
            "raise their limits.sessions_max",
        ],
    );
    // b2 itself carries nothing: it may go.
    w.restart_check_until("b2", 0, &["ALLOWED", "ok   capacity"]);
    drop(sessions);
}

/// Acceptance 7: a node over its memory limit is unhealthy, and the gate does not count on it.
#[test]
fn t15_node_over_its_memory_limit_is_unhealthy_and_not_counted() {
    // 1 MiB: every process is over it.
    let (w, _nodes) = pair_with_witness(|w| {
        w.edit_config("b2", "memory_bytes_max = 0", "memory_bytes_max = 1048576")
    });
    let out = w.restart_check_until(
        "b1",
        3,
        &[
            "FAIL service coverage",
            "b2: memory",
            "MiB is over its limit of 1 MiB",
        ],
    );
    assert!(out.stdout.contains("FAIL quorum"), "{out:?}");
    let (code, body) = http_get(&format!("{}/readyz", w.admin_url_of(2))).unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("is over its limit of 1 MiB"), "{body}");
    let status = w.cluster_status().unwrap();
    let b2 = &status["nodes"].as_array().unwrap()[1];
    assert_eq!(b2["node_id"], "b2");
    assert_eq!(b2["healthy"], false);
    assert!(w.metric(1, "ferry_cluster_member_healthy", "member=\"b2\"") == 0.0);
}
