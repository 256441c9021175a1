//! Issue 6/12, the hang after a saturated hand-off: a client pushes bytes through a forwarded
//! port to an echo service as fast as both directions go (a writer and a reader thread), so
//! that both endpoints' replay buffers are full, and the broker carrying the session is then
//! drained (`ferry admin drain --wait`) or killed with SIGKILL. Round after round, alternating
//! between the two brokers of a pair with a witness, every transfer must come back whole
//! (identical SHA-256, no error at the local connection) and never stop moving: a read that
//! waits 30 s is a hang and fails the test.
//!
//! The cause was a link reader that stopped reading while its local side was behind: the
//! acknowledgements that would have freed the other side's buffer sat behind data on the
//! same link (crates/session/src/stream.rs, "Flow control is the acknowledgement").
//!
//! `FERRY_E2E_SATURATED_ROUNDS` sets the rounds of each test (CI runs 3; the acceptance run
//! 20), `FERRY_E2E_SATURATED_BYTES` the bytes of each transfer.

mod common;
use common::echo::EchoTransfer;
use common::gate::GATE_TEST_CONFIG;
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn rounds() -> usize {
    std::env::var("FERRY_E2E_SATURATED_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

fn transfer_bytes() -> u64 {
    std::env::var("FERRY_E2E_SATURATED_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512 << 20)
}

/// The drain or kill comes once this much has come back: far beyond both replay buffers
/// (8 MiB each), so both are full and both directions are in full flow.
const SATURATED_AFTER_BYTES: u64 = 24 << 20;

/// A pair of brokers and a witness; user alice's forward to an echo service on host lab-pc,
/// both endpoints first attached to b1.
struct Pair {
    w: World,
    /// b1, b2, w1 (None while killed).
    nodes: Vec<Option<Proc>>,
    _host: Proc,
    forward: (Proc, SocketAddr),
}

fn pair() -> Pair {
    let w = World::init_cluster(2, 1);
    for name in ["b1", "b2", "w1"] {
        w.append_config(name, GATE_TEST_CONFIG);
    }
    let nodes = vec![
        Some(w.start_node(1)),
        Some(w.start_node(2)),
        Some(w.start_named("w1", 3)),
    ];
    w.wait_healthy(3);
    let config = w.client_config_for(1);
    let host = w.alice_reaching(&config, "lab-pc", &[("echo", echo_server())]);
    let forward = w.forward_via(&config, "lab-pc", "echo");
    Pair {
        w,
        nodes,
        _host: host,
        forward,
    }
}

impl Pair {
    /// Sessions resumed so far on broker `i` (a hand-off or a failover resumes each once).
    fn resumed(&self, i: u8) -> f64 {
        self.w.metric(i, "ferry_sessions_resumed_total", "")
    }

    /// The broker (1 or 2) relaying the one open session.
    fn carrier(&self) -> u8 {
        wait_for(
            "the broker carrying the session",
            Duration::from_secs(30),
            || {
                [1u8, 2]
                    .into_iter()
                    .find(|&i| self.w.metric(i, "ferry_sessions_open", "") == 1.0)
            },
        )
    }
}

/// Prints the stalls of every round and checks none was a hang.
fn report(label: &str, stalls: &[Duration]) {
    let max = stalls.iter().max().copied().unwrap_or_default();
    eprintln!(
        "{label}: {} rounds, none hung; longest stall per round {:?}; max {max:?}",
        stalls.len(),
        stalls
    );
}

#[test]
fn t23_drains_of_a_saturated_bidirectional_session_never_hang() {
    let p = pair();
    let len = transfer_bytes();
    let mut stalls = Vec::new();
    // Sessions are opened where the endpoints are: b1 first, then each drain moves them.
    let mut carrier = 1u8;
    for round in 0..rounds() {
        let node = format!("b{carrier}");
        // The gate first, so that the drain follows the saturation at once.
        p.w.restart_check_until(&node, 0, &[]);
        let resumed_before = p.resumed(1) + p.resumed(2);
        let transfer = EchoTransfer::start(p.forward.1, len, round as u64);
        transfer.wait_for_progress(SATURATED_AFTER_BYTES, Duration::from_secs(60));
        assert_eq!(
            p.carrier(),
            carrier,
            "round {round}: the session runs through {node}"
        );
        let started = Instant::now();
        let out = p.w.admin(&["drain", &node, "--wait", "60s"]);
        assert_eq!(out.code, 0, "round {round}: drain {node}: {out:?}");
        let drained = started.elapsed();
        let echoed_at_drain = transfer.progress.load(std::sync::atomic::Ordering::Relaxed);
        let label = format!("drain round {round} ({node})");
        let result = transfer.finish(&label);
        assert!(
            echoed_at_drain < len && p.resumed(1) + p.resumed(2) > resumed_before,
            "{label}: the drain moved the session in the middle of the transfer \
             ({echoed_at_drain} of {len} bytes echoed when it returned)"
        );
        eprintln!(
            "{label}: drained in {drained:?} with {} MiB of {} echoed; the rest echoed intact; \
             longest stall {:?}",
            echoed_at_drain >> 20,
            len >> 20,
            result.longest_gap
        );
        stalls.push(result.longest_gap);
        p.w.admin(&["undrain", &node]).ok();
        carrier = 3 - carrier;
    }
    report("drains", &stalls);
}

#[test]
fn t23_sigkills_of_the_broker_carrying_a_saturated_session_never_hang() {
    let mut p = pair();
    let len = transfer_bytes();
    let mut stalls = Vec::new();
    for round in 0..rounds() {
        let transfer = EchoTransfer::start(p.forward.1, len, round as u64);
        transfer.wait_for_progress(SATURATED_AFTER_BYTES, Duration::from_secs(60));
        let victim = p.carrier();
        let survivor = 3 - victim;
        let resumed_before = p.resumed(survivor);
        p.nodes[usize::from(victim) - 1]
            .take()
            .expect("the carrier runs")
            .kill();
        let echoed_at_kill = transfer.progress.load(std::sync::atomic::Ordering::Relaxed);
        let label = format!("kill round {round} (b{victim})");
        let result = transfer.finish(&label);
        assert!(
            p.resumed(survivor) > resumed_before,
            "{label}: the session was resumed on b{survivor}"
        );
        eprintln!(
            "{label}: killed with {} MiB of {} echoed; the rest echoed intact; longest stall {:?}",
            echoed_at_kill >> 20,
            len >> 20,
            result.longest_gap
        );
        stalls.push(result.longest_gap);
        p.nodes[usize::from(victim) - 1] = Some(p.w.start_node(victim));
        p.w.wait_healthy(3);
    }
    report("kills", &stalls);
}
