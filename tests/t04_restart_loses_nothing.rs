//! Acceptance 1/8 item 4: a broker killed with SIGKILL and restarted has every user, host,
//! grant and audit record it acknowledged; the host agent reattaches by itself.

mod common;
use common::*;
use serde_json::Value;

fn json(out: Output) -> Value {
    serde_json::from_str(&out.ok()).unwrap()
}

/// Hosts without the fields that describe the live connection rather than the stored state.
fn stored_hosts(w: &World) -> Value {
    let mut hosts = json(w.admin(&["host", "list", "--json"]));
    for h in hosts["hosts"].as_array_mut().unwrap() {
        let h = h.as_object_mut().unwrap();
        h.remove("connected");
        h.remove("services");
    }
    hosts
}

#[test]
fn t04_sigkill_and_restart_keep_users_hosts_grants_and_audit() {
    let w = World::init();
    let mut broker = w.start_broker();
    for (i, user) in ["alice", "bob", "carol"].iter().enumerate() {
        w.add_user(user, &format!("group{i}"), "correct horse battery");
    }
    let token = w.enroll("lab-pc", "lab");
    let _pending = w.enroll("not-yet-enrolled", "lab");
    w.admin(&["grant", "group0", "lab"]).ok();
    w.admin(&["grant", "group1", "lab"]).ok();
    let _host = w.start_host("lab-pc", Some(&token), &[("echo", echo_server())]);
    w.login("alice", "correct horse battery").ok();
    assert_eq!(
        w.connect_stdio("lab-pc", "echo", "before\n").ok(),
        "before\n"
    );

    let users = json(w.admin(&["user", "list", "--json"]));
    let hosts = stored_hosts(&w);
    let grants = json(w.admin(&["grants", "--json"]));
    let audit = json(w.admin(&["audit", "--json"]));
    assert!(audit["records"].as_array().unwrap().len() >= 8);

    broker.kill();
    let _broker = w.start_broker();

    assert_eq!(json(w.admin(&["user", "list", "--json"])), users);
    assert_eq!(stored_hosts(&w), hosts);
    assert_eq!(json(w.admin(&["grants", "--json"])), grants);
    // The last entries are committed, but a restarted node learns that only once it leads
    // again and commits a new entry: until then its (local) listing may lag.
    let before = audit["records"].as_array().unwrap();
    let after = wait_for(
        "the restarted node to apply its whole log",
        std::time::Duration::from_secs(10),
        || {
            let after = json(w.admin(&["audit", "--json"]));
            let records = after["records"].as_array().unwrap().clone();
            (records.len() >= before.len()).then_some(records)
        },
    );
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "the audit log kept every record, in order"
    );

    // The cached token, the host's credential and the password all still work.
    wait_for(
        "the host agent to reattach",
        std::time::Duration::from_secs(30),
        || {
            let out = w.connect_stdio("lab-pc", "echo", "after\n");
            (out.code == 0).then_some(out)
        },
    );
    w.login("bob", "correct horse battery").ok();
}
