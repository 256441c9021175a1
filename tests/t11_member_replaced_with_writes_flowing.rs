//! Issue 2/8, acceptance 1f: replacing a member. With writers running throughout, the leader
//! of a 3-broker cluster is removed (it hands leadership over first), a fresh node b4 is
//! written with `ferry init --join`, started, added as a learner, caught up from a snapshot and
//! promoted by the leader; every acknowledged write is on every member at the end. Also: a
//! retired raft id is refused, and a removal that would cost the quorum is refused.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn members(w: &World, i: u8) -> Option<serde_json::Value> {
    let out = w.admin_on(i, &["member", "list", "--json"]);
    (out.code == 0)
        .then(|| serde_json::from_str(&out.stdout).ok())
        .flatten()
}

/// (node id, suffrage) of every member, as node `i` sees it.
fn suffrages(w: &World, i: u8) -> BTreeSet<(String, String)> {
    members(w, i)
        .map(|m| {
            m["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let s = |k: &str| m[k].as_str().unwrap().to_owned();
                    (s("node_id"), s("suffrage"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn voters(names: &[String]) -> BTreeSet<(String, String)> {
    names
        .iter()
        .map(|n| (n.clone(), "voter".to_owned()))
        .collect()
}

#[test]
fn t11_a_member_is_replaced_with_writes_flowing_and_none_is_lost() {
    let w = World::init_with_room(3, 0, 1);
    let mut nodes: Vec<Option<Proc>> = (1..=3).map(|i| Some(w.start_node(i))).collect();
    let victim = wait_for("a leader", Duration::from_secs(20), || {
        w.leader_among(&[1, 2, 3])
    });
    let survivors: Vec<u8> = (1..=3).filter(|&i| i != victim).collect();

    // Writers on the nodes that stay, for the whole replacement.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|k| {
            let (acked, stop) = (acked.clone(), stop.clone());
            let node = survivors[k % survivors.len()];
            let config = w.client_config();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let group = format!("w{k}-{n}");
                    n += 1;
                    let out = std::process::Command::new(FERRY)
                        .args(["admin", "--config", &config, "--node", &format!("b{node}")])
                        .args(["grant", &group, "lab"])
                        .output()
                        .unwrap();
                    if out.status.success() {
                        acked.lock().unwrap().push(group);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));

    // Remove the leader: it hands leadership to a caught-up voter, which commits the removal.
    let removed = w.admin_on(survivors[0], &["member", "remove", &format!("b{victim}")]);
    assert_eq!(removed.code, 0, "member remove failed: {}", removed.stderr);
    let names: Vec<String> = survivors.iter().map(|i| format!("b{i}")).collect();
    wait_for("the removal to be applied", Duration::from_secs(10), || {
        (suffrages(&w, survivors[0]) == voters(&names)).then_some(())
    });
    nodes[usize::from(victim) - 1].take().unwrap().kill();

    // A removed member's raft id is never reused.
    w.admin_on(
        survivors[0],
        &[
            "member",
            "add",
            "b9",
            "--raft-id",
            &victim.to_string(),
            "--peer-addr",
            "127.0.0.1:9",
        ],
    )
    .fails(1, "never reused");

    // A fresh node joins: its files from `ferry init --join`, then `member add --wait`.
    let cluster = w.cluster();
    let joined = w.ferry(&["init", "--out", cluster.to_str().unwrap(), "--join", "b4"]);
    let b4_config = joined.ok();
    let b4_config: toml::Value =
        toml::from_str(&std::fs::read_to_string(b4_config.trim()).unwrap()).unwrap();
    let peer_addr = b4_config["peer_addr"].as_str().unwrap().to_owned();
    let raft_id = b4_config["raft"]["id"].as_integer().unwrap();
    assert_eq!(
        raft_id, 4,
        "one past the highest raft id in the cluster directory"
    );
    let _b4 = w.start_named("b4", 4);
    let added = w.admin_on(
        survivors[1],
        &[
            "member",
            "add",
            "b4",
            "--raft-id",
            "4",
            "--peer-addr",
            &peer_addr,
            "--relay-addr",
            b4_config["relay_addr"].as_str().unwrap(),
            "--wait",
            "60s",
        ],
    );
    assert_eq!(added.code, 0, "member add failed: {}", added.stderr);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    println!("{} writes acknowledged during the replacement", acked.len());
    assert!(acked.len() > 20, "writes flowed: {}", acked.len());

    let mut members_now = names.clone();
    members_now.push("b4".into());
    for i in [survivors[0], survivors[1], 4] {
        assert_eq!(suffrages(&w, i), voters(&members_now), "membership on b{i}");
        wait_for(
            &format!("b{i} to hold every acknowledged write"),
            Duration::from_secs(30),
            || {
                let grants = w.grants_on(i);
                acked.iter().all(|g| grants.contains(g)).then_some(())
            },
        );
    }
    let b4 = w.status_of(4).unwrap();
    assert!(
        b4["raft"]["snapshots_installed"].as_u64().unwrap() >= 1,
        "b4 started from a snapshot: {b4}"
    );
    // Every page: thousands of writes were recorded around the changes.
    let audit = w.audit_records(4);
    for action in ["member.remove", "member.add", "member.promote"] {
        assert!(
            audit.iter().any(|r| r["action"] == action),
            "audit records {action}"
        );
    }

    // With one of three voters down, removing another would leave no quorum: refused.
    let leader = wait_for("a leader", Duration::from_secs(10), || {
        w.leader_among(&[survivors[0], survivors[1], 4])
    });
    let others: Vec<u8> = [survivors[0], survivors[1], 4]
        .into_iter()
        .filter(|&i| i != leader)
        .collect();
    let (down, target) = (others[0], others[1]);
    match down {
        4 => drop(_b4),
        i => drop(nodes[usize::from(i) - 1].take()),
    }
    wait_for(
        "the leader to see the stopped voter as unreachable",
        Duration::from_secs(10),
        || {
            let m = members(&w, leader)?;
            let down = m["members"]
                .as_array()?
                .iter()
                .find(|m| m["node_id"] == format!("b{down}"))?
                .clone();
            (down["reachable"] == false).then_some(())
        },
    );
    w.admin_on(leader, &["member", "remove", &format!("b{target}")])
        .fails(1, "lose its quorum");
}
