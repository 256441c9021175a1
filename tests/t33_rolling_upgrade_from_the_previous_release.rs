//! Issue 9/12, scope 8: a rolling upgrade. A pair and a witness run the previous release (its
//! commit is in .ci/previous-release; `.ci/build-previous-release` builds it from a git
//! worktree), with a live session (paced traffic both ways) and writes flowing. Each node in
//! turn is drained through the gate, stopped and started again on this build, with the same
//! config and store; `ferry admin status` shows each node's version on the way. No session is
//! lost, every acknowledged write is kept, and at the end every node runs this build.
//!
//! Without the previous release's binary (target/previous-release/ferry, or
//! FERRY_PREVIOUS_BIN) the test says so loudly and does nothing: `.ci/run` builds it first.

mod common;
use common::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Each direction of the session, at [`PACE`] (48 s): it outlasts the upgrade (15 s here),
/// which the test checks.
const LEN: u64 = 12 * 1024 * 1024;
const PACE: u64 = 256 * 1024;
const NODES: [(&str, u8); 3] = [("b1", 1), ("b2", 2), ("w1", 3)];

/// What `bin --version` says, without the leading "ferry ": `0.9.0 (0123456789ab)`.
fn version_of(bin: &std::path::Path) -> String {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .expect("run --version");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().trim_start_matches("ferry ").to_owned()
}

fn previous_release() -> Option<PathBuf> {
    let path = std::env::var_os("FERRY_PREVIOUS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/previous-release/ferry")
        });
    path.exists().then_some(path)
}

/// Every node's reported version, as the answering node sees them.
fn versions(w: &World) -> Vec<(String, String)> {
    let Some(status) = w.cluster_status() else {
        return Vec::new();
    };
    status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                n["node_id"].as_str().unwrap_or("?").to_owned(),
                n["version"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

#[test]
fn t33_rolling_upgrade_loses_no_session_and_no_write() {
    let Some(previous) = previous_release() else {
        eprintln!(
            "\n!!!!!!!! SKIPPED: no previous release binary (target/previous-release/ferry or \
             FERRY_PREVIOUS_BIN): run .ci/build-previous-release first; the rolling-upgrade \
             test did not run !!!!!!!!\n"
        );
        return;
    };
    let current = PathBuf::from(FERRY);
    let this_build = version_of(&current);
    eprintln!("from {} to {this_build}", version_of(&previous));

    // The previous release writes the cluster (its configs must stay readable by this build).
    let w = World::init_using(&previous, 2, 1, 0);
    for (name, _) in NODES {
        w.append_config(name, "\n[gate]\nstabilization_secs = 2\n");
    }
    let mut nodes: Vec<Proc> = NODES
        .iter()
        .map(|(name, pos)| w.start_named_using(&previous, name, *pos))
        .collect();
    w.wait_healthy(3);

    // A live session through b1, and writes flowing (users added through any node).
    let session = w.paced_sessions_via(1, "data", LEN, PACE);
    let clients = session.start(&w, 1, 33);
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        let urls: Vec<String> = (1..=3).map(|i| w.admin_url_of(i)).collect();
        let token = std::fs::read_to_string(w.cluster().join("admin.token")).unwrap();
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("user{i:04}");
                let body = format!(
                    r#"{{"name":"{name}","groups":["staff"],"password":"pw-{i}-long-enough"}}"#
                );
                let url = &urls[i % urls.len()];
                match admin_request(url, token.trim(), "POST", "/v1/users", &body) {
                    Some((200, _)) => acked.lock().unwrap().push(name),
                    // A node away, or a leader change: the next write goes to the next node,
                    // under a new name (this one may have been applied without an answer).
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
                i += 1;
            }
        })
    };
    eprintln!("versions before: {:?}", versions(&w));

    let started = Instant::now();
    for (k, (name, pos)) in NODES.iter().enumerate() {
        w.restart_check_until(name, 0, &[]);
        w.admin(&["drain", name, "--wait", "60s"]).ok();
        let status = nodes[k].terminate();
        eprintln!("{name} drained and stopped ({status})");
        nodes[k] = w.start_named_using(&current, name, *pos);
        wait_for(
            &format!("{name} back on this build, healthy, its lease released"),
            Duration::from_secs(60),
            || {
                let status = w.cluster_status()?;
                let list = status["nodes"].as_array()?;
                let ready = list.len() == 3
                    && list
                        .iter()
                        .all(|n| n["healthy"] == true && n["maintenance"].is_null())
                    && list.iter().any(|n| {
                        n["node_id"] == *name && n["version"].as_str() == Some(this_build.as_str())
                    });
                ready.then_some(())
            },
        );
        eprintln!("versions with {name} upgraded: {:?}", versions(&w));
    }
    let upgrade = started.elapsed();
    assert!(
        session.progress.load(Ordering::Relaxed) < LEN,
        "the session was still live when the last node was back (else it proves less)"
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    // The session went through every step.
    for client in clients {
        let end = client.join().unwrap();
        assert!(end.error.is_none(), "the client's end broke: {end:?}");
        let host_end = session
            .service
            .recv_timeout(Duration::from_secs(120))
            .expect("the host side's end");
        assert!(
            host_end.error.is_none(),
            "the host's end broke: {host_end:?}"
        );
        assert_eq!(end.sent, host_end.received, "client to host bytes differ");
        assert_eq!(host_end.sent, end.received, "host to client bytes differ");
        eprintln!(
            "session: {} bytes each way, SHA-256 identical, longest stall {} ms",
            end.received_bytes,
            end.longest_gap.as_millis()
        );
    }
    // Every acknowledged write is there.
    let acked = acked.lock().unwrap().clone();
    let out = w.admin(&["user", "list", "--json"]).ok();
    let users: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: std::collections::BTreeSet<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|u| !names.contains(u.as_str()))
        .collect();
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
    let finished = versions(&w);
    assert!(
        finished.iter().all(|(_, v)| *v == this_build),
        "every node runs this build: {finished:?}"
    );
    eprintln!(
        "upgraded 3 nodes in {:.1} s; {} writes acknowledged from just before the first drain to the \
         end, all kept; versions after: \
         {finished:?}",
        upgrade.as_secs_f64(),
        acked.len()
    );
}
