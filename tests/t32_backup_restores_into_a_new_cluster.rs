//! Issue 9/12, scope 7: backup and restore. A pair and a witness take writes (users added one
//! after another) while `ferry admin snapshot save` runs; then every node's data is destroyed.
//! A new cluster made by `ferry init` (its own CA, its own ports) is seeded from the file with
//! `ferry debug restore` on each node and started: every write acknowledged before the save
//! began is there, with the grants, hosts and audit log; its members are its own nodes alone,
//! so it never talks to the old one. A damaged and a truncated copy are refused, and a node
//! that already holds a store is not overwritten.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn user_names(w: &World) -> BTreeSet<String> {
    let out = w.admin(&["user", "list", "--json"]).ok();
    let users: serde_json::Value = serde_json::from_str(&out).unwrap();
    users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn t32_backup_saved_under_writes_restores_into_a_new_cluster() {
    let (old, old_nodes) = World::pair_with_witness();
    old.add_user("alice", "staff", ALICE_PASSWORD);
    old.enroll("pc1", "lab");
    old.admin(&["grant", "staff", "lab", "--services", "ssh,vnc"])
        .ok();

    // Writes flowing: users added one after another through b1's admin API; each name is
    // noted once its write was acknowledged.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, url) = (acked.clone(), stop.clone(), old.admin_url_of(1));
        let token = std::fs::read_to_string(old.cluster().join("admin.token")).unwrap();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("user{i:04}");
                let body = format!(
                    r#"{{"name":"{name}","groups":["staff"],"password":"pw-{i}-long-enough"}}"#
                );
                if let Some((200, _)) =
                    admin_request(&url, token.trim(), "POST", "/v1/users", &body)
                {
                    acked.lock().unwrap().push(name);
                }
                i += 1;
            }
        })
    };
    wait_for("writes to flow", Duration::from_secs(30), || {
        (acked.lock().unwrap().len() >= 20).then_some(())
    });
    let before_save: Vec<String> = acked.lock().unwrap().clone();
    let file = old.path().join("cluster.backup");
    let saved = old.admin(&["snapshot", "save", file.to_str().unwrap(), "--json"]);
    let after_save = acked.lock().unwrap().len();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let summary: serde_json::Value = serde_json::from_str(&saved.ok()).unwrap();
    eprintln!(
        "saved while writes flowed: {} users acknowledged before the save, {} by its end; \
         the file: {summary}",
        before_save.len(),
        after_save
    );
    assert!(summary["bytes"].as_u64().unwrap() > 0);

    // A read token may not take a backup (it holds password hashes).
    let read_token = old
        .admin(&["token", "create", "dashboards", "--role", "read"])
        .ok();
    let token_file = old.path().join("read.token");
    std::fs::write(&token_file, read_token.trim()).unwrap();
    let denied_file = old.path().join("denied.backup");
    old.admin(&[
        "--token-file",
        token_file.to_str().unwrap(),
        "snapshot",
        "save",
        denied_file.to_str().unwrap(),
    ])
    .fails(4, "needs role admin");
    assert!(
        !denied_file.exists(),
        "nothing left behind by a refused save"
    );

    // Every node of the old cluster is gone, with its data.
    drop(old_nodes);
    std::fs::remove_dir_all(old.cluster().join("data")).unwrap();

    // Damaged and truncated copies are refused before anything is written.
    let new = World::init_cluster(2, 1);
    let config = |name: &str| new.cluster().join(format!("{name}.toml"));
    let bytes = std::fs::read(&file).unwrap();
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x01;
    let damaged = old.path().join("damaged.backup");
    std::fs::write(&damaged, &flipped).unwrap();
    let truncated = old.path().join("truncated.backup");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let restore = |node: &str, from: &std::path::Path| {
        new.ferry(&[
            "debug",
            "restore",
            "--snapshot",
            from.to_str().unwrap(),
            "--config",
            config(node).to_str().unwrap(),
        ])
    };
    restore("b1", &damaged).fails(8, "damaged");
    restore("b1", &truncated).fails(8, "truncated");
    assert!(
        !new.cluster().join("data/b1/raft").exists(),
        "a refused restore writes nothing"
    );

    for node in ["b1", "b2", "w1"] {
        let out = restore(node, &file);
        assert_eq!(out.code, 0, "{out:?}");
        eprintln!("{}", out.stderr.trim());
    }
    restore("b1", &file).fails(3, "already holds a store");

    let _new_nodes = [
        new.start_named("b1", 1),
        new.start_named("b2", 2),
        new.start_named("w1", 3),
    ];
    new.wait_healthy(3);
    let users = user_names(&new);
    let missing: Vec<&String> = before_save.iter().filter(|u| !users.contains(*u)).collect();
    assert!(
        missing.is_empty(),
        "writes acknowledged before the save are missing: {missing:?}"
    );
    assert!(users.contains("alice"));
    eprintln!(
        "restored: {} users ({} acknowledged before the save, all there)",
        users.len(),
        before_save.len()
    );
    let grants = new.admin(&["grants", "--json"]).ok();
    assert!(
        grants.contains("\"lab\"") && grants.contains("vnc"),
        "{grants}"
    );
    let hosts = new.admin(&["host", "list", "--json"]).ok();
    assert!(hosts.contains("\"pc1\""), "{hosts}");
    let audit = new.admin(&["audit", "--json"]).ok();
    assert!(audit.contains("user.add"), "the audit log came along");
    // The new cluster writes, and its members are its own nodes alone.
    new.add_user("bob", "staff", "another long password");
    let members = new.admin(&["member", "list", "--json"]).ok();
    let members: serde_json::Value = serde_json::from_str(&members).unwrap();
    let list = members["members"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{members}");
    for m in list {
        let port: u16 = m["peer_addr"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (new.base_port..new.base_port + 30).contains(&port),
            "member {m} is not a node of the new cluster (ports from {})",
            new.base_port
        );
    }
    // Alice logs in to the new cluster with the password she had.
    new.login("alice", ALICE_PASSWORD).ok();
}
