//! Issue 2/8, acceptance 1a and 1b (3 brokers): the cluster bootstraps, elects a leader and
//! replicates writes made on any node; with 8 writers running, the leader is killed with
//! SIGKILL; every write acknowledged before or after the kill is on every node once the
//! killed node is back, and the time from the kill to the first committed write is reported.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn t06_three_brokers_replicate_and_lose_no_acknowledged_write_when_the_leader_dies() {
    let w = World::init_brokers(3);
    let mut nodes: Vec<Proc> = (1..=3).map(|i| w.start_node(i)).collect();
    let leader = wait_for("a leader", Duration::from_secs(20), || {
        w.leader_among(&[1, 2, 3])
    });

    // 1a: a write on every node (followers forward to the leader) is visible on every node.
    for i in 1..=3u8 {
        let name = format!("user{i}");
        w.ferry_with(
            &[
                "admin",
                "--config",
                &w.client_config(),
                "--node",
                &format!("b{i}"),
                "user",
                "add",
                &name,
                "--group",
                "staff",
                "--password-stdin",
            ],
            Some("a long password\n"),
            &[],
        )
        .ok();
    }
    for i in 1..=3u8 {
        wait_for(
            &format!("b{i} to have every user"),
            Duration::from_secs(10),
            || {
                let users = w.admin_on(i, &["user", "list", "--json"]).ok();
                (1..=3)
                    .all(|u| users.contains(&format!("\"user{u}\"")))
                    .then_some(())
            },
        );
    }

    // 1b: 8 writers (grants, one name per write) on the nodes that survive, then kill the leader.
    let survivors: Vec<u8> = (1..=3).filter(|&i| i != leader).collect();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|k| {
            let (acked, stop) = (acked.clone(), stop.clone());
            let node = survivors[k % survivors.len()];
            let config = w.client_config();
            let home = w.path().join("config-home");
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let group = format!("w{k}-{n}");
                    n += 1;
                    let out = std::process::Command::new(FERRY)
                        .args([
                            "admin",
                            "--config",
                            &config,
                            "--node",
                            &format!("b{node}"),
                            "grant",
                            &group,
                            "lab",
                        ])
                        .env("XDG_CONFIG_HOME", &home)
                        .output()
                        .unwrap();
                    if out.status.success() {
                        acked.lock().unwrap().push(group);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let before_kill = acked.lock().unwrap().len();
    nodes[usize::from(leader) - 1].kill();
    let killed_at = Instant::now();
    let first_commit = wait_for(
        "a write committed after the kill",
        Duration::from_secs(30),
        || {
            let probe = format!("probe-{}", killed_at.elapsed().as_nanos());
            (w.admin_on(survivors[0], &["grant", &probe, "lab"]).code == 0)
                .then(|| killed_at.elapsed())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    println!(
        "leader b{leader} killed: first committed write after {:.2} s (election timeout 1-2 s); \
         {} writes acknowledged, {before_kill} before the kill",
        first_commit.as_secs_f64(),
        acked.len()
    );
    assert!(acked.len() > before_kill, "writes continued after the kill");

    // The killed node comes back, catches up, and every node holds every acknowledged write.
    nodes[usize::from(leader) - 1] = w.start_node(leader);
    for i in 1..=3u8 {
        wait_for(
            &format!("b{i} to hold every acknowledged write"),
            Duration::from_secs(30),
            || {
                let grants = w.grants_on(i);
                acked.iter().all(|g| grants.contains(g)).then_some(())
            },
        );
    }
    let states: Vec<BTreeSet<String>> = (1..=3).map(|i| w.grants_on(i)).collect();
    assert!(
        states.windows(2).all(|p| p[0] == p[1]),
        "all nodes converge to the same grants"
    );
}
