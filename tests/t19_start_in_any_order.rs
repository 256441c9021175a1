//! Issue 5/8, acceptance 2: the nodes of a pair and its witness start in every order, with
//! delays of up to a minute between them. Each node's admin API and `/healthz` answer within
//! 2 s of its own start (its store is opened and its raft id settled in the background), a
//! node alone says what it waits for, and the cluster forms by itself once a quorum is up. A
//! node started after the cluster formed keeps its configured raft id: it never took part, so
//! it need not rejoin under a new one.

mod common;

use common::{wait_for, World};
use rand::{Rng as _, SeedableRng as _};
use std::time::{Duration, Instant};

/// Names and positions in port order.
const NODES: [(&str, u8); 3] = [("b1", 1), ("b2", 2), ("w1", 3)];

fn role(w: &World, pos: u8) -> Option<String> {
    let (code, body) = w.admin_get(pos, "/v1/status")?;
    let v: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| code == 200)?;
    v["raft"]["role"].as_str().map(str::to_owned)
}

#[test]
fn t19_a_pair_and_its_witness_form_in_any_start_order_with_delays() {
    let seed: u64 = std::env::var("FERRY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("FERRY_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let orders: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for (k, order) in orders.iter().enumerate() {
        // The first order leaves its first node alone for a minute; the second starts all
        // three at once; the others wait up to 3 s between starts.
        let delays = match k {
            0 => [Duration::from_secs(60), Duration::from_millis(500)],
            1 => [Duration::ZERO, Duration::ZERO],
            _ => [
                Duration::from_millis(rng.gen_range(0..3000)),
                Duration::from_millis(rng.gen_range(0..3000)),
            ],
        };
        let names: Vec<&str> = order.iter().map(|i| NODES[*i].0).collect();
        println!("order {k}: {names:?}, delays {delays:?}");
        let w = World::init_cluster(2, 1);
        let mut procs = Vec::new();
        for (j, i) in order.iter().enumerate() {
            if j > 0 {
                std::thread::sleep(delays[j - 1]);
            }
            let (name, pos) = NODES[*i];
            let started = Instant::now();
            procs.push(w.start_named(name, pos));
            let healthz = started.elapsed();
            let admin = wait_for(
                &format!("{name}'s admin API"),
                Duration::from_secs(2),
                || w.admin_get(pos, "/v1/status").filter(|(c, _)| *c == 200),
            );
            drop(admin);
            let answered = started.elapsed();
            println!(
                "  {name}: /healthz after {:.3} s, admin API after {:.3} s",
                healthz.as_secs_f64(),
                answered.as_secs_f64()
            );
            assert!(
                answered < Duration::from_secs(2),
                "{name} took {answered:?} to answer /healthz and its admin API"
            );
            if j == 0 && delays[0] >= Duration::from_secs(1) {
                // Alone, the node runs and says what it waits for.
                let (code, body) = wait_for(
                    &format!("{name} to say what it waits for"),
                    Duration::from_secs(5),
                    || {
                        common::http_get(&format!("{}/readyz", w.admin_url_of(pos)))
                            .filter(|(_, b)| b.contains("waiting for a majority"))
                    },
                );
                assert_eq!(code, 503);
                let waiting = body.lines().find(|l| l.contains("waiting")).unwrap_or("");
                println!("  {name} alone: {waiting}");
            }
        }
        let formed = Instant::now();
        wait_for("a broker to lead", Duration::from_secs(30), || {
            NODES
                .iter()
                .filter(|(n, _)| n.starts_with('b'))
                .find(|(_, pos)| role(&w, *pos).as_deref() == Some("leader"))
        });
        w.wait_healthy(3);
        println!(
            "  every node healthy {:.2} s after the last start",
            formed.elapsed().as_secs_f64()
        );
        // Nobody rejoined: every node kept its configured raft id.
        let ids: Vec<u64> = NODES
            .iter()
            .map(|(_, pos)| w.state_digest(*pos).expect("digest").0)
            .collect();
        assert_eq!(ids, vec![1, 2, 3], "order {k}: {names:?}");
        w.admin(&["grant", "ops", "servers"]).ok();
        w.wait_same_state(&[1, 2, 3]);
        drop(procs);
    }
}
