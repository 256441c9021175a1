//! Issue 5/8, acceptance 1: seeded corruption trials on a 3-broker cluster with writes
//! flowing. In each trial one node is stopped (killed or terminated), `ferry debug corrupt`
//! flips bytes in or truncates one random file of its data directory, and the node is started
//! again. Every time it must answer within 10 s, either start clean (the damage hit nothing the
//! store relies on), repair locally, or quarantine its store and rejoin under a new raft id;
//! then every node must hold the same state, with every acknowledged write.
//!
//! `FERRY_SEED` replays a run; `FERRY_TRIALS` changes the number of trials (50 by default).

mod common;

use common::store::Writer;
use common::{wait_for, World};
use std::time::{Duration, Instant};

const NODES: [u8; 3] = [1, 2, 3];

#[test]
fn t18_corruption_trials_every_damaged_node_starts_and_rejoins_with_every_acked_write() {
    let seed: u64 = std::env::var("FERRY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let trials: u64 = std::env::var("FERRY_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    println!("FERRY_SEED={seed} FERRY_TRIALS={trials}");

    let world = World::init_brokers(3);
    for i in NODES {
        // Snapshots and compaction every 64 entries: the stores hold all three kinds of
        // record (snapshot, log after it, metadata) and a rejoining node needs a snapshot.
        world.edit_config(
            &format!("b{i}"),
            "snapshot_every_entries = 10000",
            "snapshot_every_entries = 64",
        );
    }
    let mut nodes: Vec<Option<common::Proc>> =
        NODES.iter().map(|i| Some(world.start_node(*i))).collect();
    world.wait_healthy(3);
    let writer = Writer::start(&world, &NODES);
    wait_for("the first writes", Duration::from_secs(30), || {
        (writer.acked().len() >= 20).then_some(())
    });

    let (mut quarantines, mut repairs, mut clean) = (0u32, 0u32, 0u32);
    let mut to_healthy: Vec<Duration> = Vec::new();
    for trial in 0..trials {
        let victim = NODES[(trial % 3) as usize];
        let name = format!("b{victim}");
        let others: Vec<u8> = NODES.iter().copied().filter(|i| *i != victim).collect();
        writer.use_nodes(&world, &others);
        let mut node = nodes[usize::from(victim - 1)].take().unwrap();
        if trial % 2 == 0 {
            node.kill();
        } else {
            let exit = node.terminate();
            assert_eq!(
                exit.code(),
                Some(0),
                "{} exits cleanly on SIGTERM",
                node.name
            );
        }
        drop(node);
        let trial_seed = seed.wrapping_add(trial);
        let data_dir = world.data_dir(&name);
        let damage = world
            .ferry(&[
                "debug",
                "corrupt",
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--seed",
                &trial_seed.to_string(),
            ])
            .ok();
        let quarantined_before = world.quarantined(&name).len();

        let started = Instant::now();
        nodes[usize::from(victim - 1)] = Some(world.start_node(victim));
        let answered = started.elapsed();
        assert!(
            answered < Duration::from_secs(10),
            "trial {trial} (seed {trial_seed}): {name} took {answered:?} to answer after {damage}"
        );
        wait_for(
            &format!("trial {trial}: {name} ready after {damage}"),
            Duration::from_secs(60),
            || world.is_ready(victim).then_some(()),
        );
        world.wait_healthy(3);
        let healthy = started.elapsed();
        to_healthy.push(healthy);
        writer.use_nodes(&world, &NODES);

        let outcome = if world.quarantined(&name).len() > quarantined_before {
            quarantines += 1;
            "quarantined and rejoined"
        } else if world.metric(victim, "ferry_store_repairs_total", "") > 0.0 {
            repairs += 1;
            "repaired locally"
        } else {
            clean += 1;
            "no damage found"
        };

        // Every node holds the same state, and it has every write acknowledged so far.
        writer.pause();
        let acked = writer.acked();
        let (applied, digest) = world.wait_same_state(&NODES);
        for i in NODES {
            let hosts = world.hosts_on(i).expect("hosts");
            let missing: Vec<&String> = acked.iter().filter(|h| !hosts.contains(*h)).collect();
            assert!(
                missing.is_empty(),
                "trial {trial} (seed {trial_seed}): b{i} lost acknowledged writes {missing:?}"
            );
        }
        writer.resume();
        let raft_id = world.state_digest(victim).map_or(0, |d| d.0);
        println!(
            "trial {trial:2} seed {trial_seed}: {name} {outcome} (raft id {raft_id}); answered in \
             {:.2} s, healthy in {:.2} s; {damage}; state at {applied} = {}…, {} acked writes",
            answered.as_secs_f64(),
            healthy.as_secs_f64(),
            &digest[..12],
            acked.len()
        );
    }
    to_healthy.sort();
    let p50 = to_healthy[to_healthy.len() / 2];
    let max = to_healthy[to_healthy.len() - 1];
    println!(
        "SUMMARY: {trials} trials (seed {seed}): {quarantines} quarantined and rejoined, {repairs} \
         repaired locally, {clean} no damage found; time to healthy p50 {:.2} s, max {:.2} s; \
         {} writes acknowledged of {} attempted",
        p50.as_secs_f64(),
        max.as_secs_f64(),
        writer.acked().len(),
        writer.attempted()
    );
    assert!(
        quarantines > 0,
        "no trial damaged a store enough to quarantine it: the trials test nothing"
    );
}
