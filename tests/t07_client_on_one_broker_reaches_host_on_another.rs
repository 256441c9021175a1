//! Issue 2/8, acceptance 1c: a client attached to broker b1 reaches a host attached to broker
//! b2 (relayed over the b1-b2 peer link) and moves 256 MiB with a matching SHA-256.

mod common;
use common::*;

#[test]
fn t07_cross_broker_session_moves_256_mib_intact() {
    let w = World::init_brokers(3);
    let _nodes: Vec<Proc> = (1..=3).map(|i| w.start_node(i)).collect();
    w.add_user("alice", "staff", "correct horse battery");
    let token = w.enroll("lab-pc", "lab");
    w.admin(&["grant", "staff", "lab"]).ok();
    let echo = echo_server();
    let host_config = w.client_config_for(2);
    let _host = w.start_host_via(&host_config, "lab-pc", Some(&token), &[("echo", echo)]);
    let hosts = w.admin_on(1, &["host", "list", "--json"]).ok();
    assert!(hosts.contains("\"attached_broker\": \"b2\""), "{hosts}");

    let client_config = w.client_config_for(1);
    w.login_via(&client_config, "alice", "correct horse battery")
        .ok();
    let (_forward, addr) = w.forward_via(&client_config, "lab-pc", "echo");
    let len = 256 << 20;
    let (sent, received, n) = push_through(addr, len, 7);
    assert_eq!(n, len);
    assert_eq!(
        sent, received,
        "SHA-256 of what came back equals what was sent"
    );

    // The session was carried by b1 (client side) and b2 (host side). Brokers count a
    // session's bytes when it ends, just after both endpoints confirmed the end to each other.
    let relayed = |metrics: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with("ferry_relay_bytes_total") && l.contains("client_to_host"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    wait_for(
        "both brokers to count the session's bytes",
        std::time::Duration::from_secs(10),
        || {
            let (_, b1) = http_get(&format!("{}/metrics", w.admin_url_of(1))).unwrap();
            let (_, b2) = http_get(&format!("{}/metrics", w.admin_url_of(2))).unwrap();
            (relayed(&b1) >= len as f64 && relayed(&b2) >= len as f64).then_some(())
        },
    );
}
