//! Acceptance 1/8 item 2: init, broker, user, enrollment, grant, host agent, login, connect;
//! 256 MiB of random bytes through the forwarded port come back with the same SHA-256; several
//! sessions at once; sessions closed and reopened; stdio mode.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn t01_port_forward_moves_256_mib_intact_and_sessions_open_concurrently_and_again() {
    let w = World::init();
    let _broker = w.start_broker();
    w.add_user("alice", "staff", "correct horse battery");
    let token = w.enroll("lab-pc-12", "lab");
    assert_eq!(token.len(), 64, "stdout holds the token alone: {token:?}");
    w.admin(&["grant", "staff", "lab"]).ok();
    let echo = echo_server();
    let _host = w.start_host("lab-pc-12", Some(&token), &[("echo", echo)]);
    w.login("alice", "correct horse battery").ok();
    let (_forward, addr) = w.forward("lab-pc-12", "echo");

    let len = 256 << 20;
    let (sent, received, n) = push_through(addr, len, 1);
    assert_eq!(n, len, "every byte came back");
    assert_eq!(
        sent, received,
        "SHA-256 of what came back equals what was sent"
    );

    let concurrent: Vec<_> = (0..6)
        .map(|i| std::thread::spawn(move || push_through(addr, 16 << 20, 100 + i)))
        .collect();
    for (i, handle) in concurrent.into_iter().enumerate() {
        let (sent, received, n) = handle.join().unwrap();
        assert_eq!((n, sent), (16 << 20, received), "concurrent session {i}");
    }

    for i in 0..5 {
        let (sent, received, n) = push_through(addr, 1 << 20, 200 + i);
        assert_eq!((n, sent), (1 << 20, received), "reopened session {i}");
    }

    let out = w
        .connect_stdio("lab-pc-12", "echo", "hello over stdio\n")
        .ok();
    assert_eq!(out, "hello over stdio\n");

    // Every session was recorded, and every one is closed once its connection ended.
    wait_for("all sessions to be closed", Duration::from_secs(20), || {
        let sessions: serde_json::Value =
            serde_json::from_str(&w.admin(&["sessions", "--json"]).ok()).ok()?;
        sessions["sessions"].as_array()?.is_empty().then_some(())
    });
    let audit: serde_json::Value =
        serde_json::from_str(&w.admin(&["audit", "--json"]).ok()).unwrap();
    let records = audit["records"].as_array().unwrap();
    let count = |action: &str| records.iter().filter(|r| r["action"] == action).count();
    assert_eq!(count("session.open"), 13, "1 + 6 + 5 + 1 sessions");
    assert_eq!(count("session.close"), 13);
}
