//! Issue 3/8, acceptance 3: the broker carrying 50 concurrent sessions with traffic is drained
//! (live hand-off). Its host agent and its client are told in-band to move to another broker;
//! they connect there, resume every session, and only then leave. No session is dropped, no
//! byte lost (SHA-256 both ways), and the longest stall is printed (docs/DESIGN.md, P8; its
//! first goal was at most 200 ms).

mod common;
use common::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const SESSIONS: usize = 50;
/// Each direction of each session: 512 KiB/s, 50 MiB/s in all.
const PACE_BYTES_PER_SEC: u64 = 512 * 1024;

#[test]
fn t13_drain_moves_50_live_sessions_without_loss() {
    // Each session streams steadily both ways (like a remote desktop), not in bulk: with 50
    // bulk transfers saturating two cores, gaps between reads measure stream scheduling on
    // the saturated path, not the hand-off.
    let len: u64 = 3 << 20;
    let w = World::init_brokers(3);
    let _nodes: Vec<Proc> = (1..=3).map(|i| w.start_node(i)).collect();
    let sessions = w.paced_sessions_via(1, "bulk", len, PACE_BYTES_PER_SEC);
    let service = &sessions.service;
    let clients = sessions.start(&w, SESSIONS, 100);
    let started = Instant::now();
    let (code, report) = w
        .admin_post(1, "/v1/node/handoff", r#"{"to": "b2", "wait_secs": 60}"#)
        .expect("the admin API answers");
    eprintln!("hand-off answered in {:?}: {report}", started.elapsed());
    assert_eq!(code, 200, "{report}");
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["target"], "b2");
    assert_eq!(report["hosts_notified"], 1);
    assert_eq!(report["clients_notified"], 1);
    assert_eq!(
        report["sessions_remaining"], 0,
        "b1 carries nothing after the hand-off"
    );

    let ends: Vec<TransferEnd> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let service_ends: Vec<TransferEnd> = (0..SESSIONS)
        .map(|_| {
            service
                .recv_timeout(Duration::from_secs(120))
                .expect("every session finished on the service side")
        })
        .collect();
    let stall = ends
        .iter()
        .chain(&service_ends)
        .map(|e| e.longest_gap)
        .max()
        .unwrap();
    eprintln!(
        "drain: {SESSIONS} sessions of {len} bytes each way; longest stall {stall:?}; \
         b2 resumed {} sessions",
        w.metric(2, "ferry_sessions_resumed_total", "")
    );
    for end in ends.iter().chain(&service_ends) {
        assert_eq!(end.error, None, "no local connection saw an error");
        assert_eq!(end.received_bytes, len, "no byte lost");
    }
    let client_sent: BTreeSet<_> = ends.iter().map(|e| e.sent).collect();
    let service_received: BTreeSet<_> = service_ends.iter().map(|e| e.received).collect();
    assert_eq!(
        client_sent.len(),
        SESSIONS,
        "each client sent its own stream"
    );
    assert_eq!(
        client_sent, service_received,
        "client to host: identical SHA-256s"
    );
    for end in &ends {
        assert_eq!(
            end.received, service_ends[0].sent,
            "host to client: identical SHA-256"
        );
    }
    assert_eq!(
        w.metric(2, "ferry_sessions_resumed_total", ""),
        SESSIONS as f64,
        "every session was resumed on b2"
    );
    assert_eq!(w.metric(1, "ferry_sessions_lost_total", ""), 0.0);
    // Reported above against P8 (docs/DESIGN.md; first 200 ms, measured by `ferry bench
    // drain`); this loose bound only catches a hand-off that fell back to noticing a dead path
    // (seconds).
    assert!(
        stall < Duration::from_secs(1),
        "a stall of {stall:?} is not a live hand-off"
    );
    // The drained node holds nothing: its host agent and client left once they had moved.
    wait_for("b1 to hold no host", Duration::from_secs(30), || {
        (w.metric(1, "ferry_hosts_attached", "") == 0.0).then_some(())
    });
}
