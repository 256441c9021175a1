//! Issue 8/12, acceptance 2: a host proves possession of its key. A copy of its credential
//! files without the key cannot attach; a second agent with the whole identity is refused
//! while the first is attached (on the same broker or another), counted in
//! `ferry_host_duplicate_attach_total`, and never preferred; `host re-enroll` makes the old
//! identity useless, and the host enrolls again with a new key.

mod common;
use common::*;
use std::path::Path;
use std::time::Duration;

fn copy_dir(from: &Path, to: &Path, skip: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !skip.contains(&name.as_str()) {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// Starts `ferry host` for pc1 with state directory `state`, through broker b<`broker`>.
fn agent(w: &World, name: &str, state: &Path, broker: u8, token: Option<&str>) -> Proc {
    let config = w.client_config_for(broker);
    let state = state.display().to_string();
    let mut args = vec![
        "host",
        "--config",
        &config,
        "--name",
        "pc1",
        "--state-dir",
        &state,
        "--expose",
        "echo=127.0.0.1:9",
    ];
    if let Some(token) = token {
        args.extend(["--enroll", token]);
    }
    w.spawn(name, &args)
}

fn exits(proc: &mut Proc, what: &str) -> std::process::ExitStatus {
    wait_for(what, Duration::from_secs(20), || {
        proc.child.try_wait().ok().flatten()
    })
}

#[test]
fn t29_a_host_is_its_key_and_one_agent_holds_it() {
    let (w, _nodes) = World::pair_with_witness();
    let token = w.enroll("pc1", "lab");
    let first = w.start_host_via(
        &w.client_config_for(1),
        "pc1",
        Some(&token),
        &[("echo", echo_server())],
    );
    // Where `start_host_via` keeps the agent's state.
    let state = w.path().join("host-pc1");
    for file in ["credential.toml", "host.pem", "host.key"] {
        assert!(state.join(file).exists(), "{file} in {}", state.display());
    }
    let key = std::fs::metadata(state.join("host.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        key.permissions().mode() & 0o777,
        0o600,
        "the key is private"
    );

    // 1. The credential files without the key: the agent cannot even present the identity.
    let no_key = w.path().join("copy-without-key");
    copy_dir(&state, &no_key, &["host.key"]);
    let mut copy = agent(&w, "copy-without-key", &no_key, 2, None);
    let status = exits(&mut copy, "the keyless copy to give up");
    assert!(!status.success());
    assert!(
        copy.log_text().contains("the host's key is gone"),
        "{}",
        copy.log_text()
    );

    // ...and with another key in its place, the handshake proves the wrong key: refused.
    let other = w.path().join("other-key");
    let other_token = w.enroll("pc2", "lab");
    let mut pc2 = w.spawn(
        "pc2",
        &[
            "host",
            "--config",
            &w.client_config_for(1),
            "--name",
            "pc2",
            "--state-dir",
            &other.display().to_string(),
            "--enroll",
            &other_token,
            "--expose",
            "echo=127.0.0.1:9",
        ],
    );
    wait_for("pc2 to enroll", Duration::from_secs(20), || {
        other.join("host.key").exists().then_some(())
    });
    pc2.kill();
    let forged = w.path().join("forged");
    copy_dir(&state, &forged, &["host.key"]);
    std::fs::copy(other.join("host.key"), forged.join("host.key")).unwrap();
    let mut forged_agent = agent(&w, "forged", &forged, 2, None);
    let status = exits(&mut forged_agent, "the forged agent to give up");
    assert!(!status.success(), "{}", forged_agent.log_text());

    // 2. The whole identity copied: refused on the other broker and on the same one, while
    // the first stays attached; counted.
    let duplicate_dir = w.path().join("full-copy");
    copy_dir(&state, &duplicate_dir, &[]);
    let duplicates_before = w.metric(1, "ferry_host_duplicate_attach_total", "")
        + w.metric(2, "ferry_host_duplicate_attach_total", "");
    let mut on_b2 = agent(&w, "full-copy-b2", &duplicate_dir, 2, None);
    let mut on_b1 = agent(&w, "full-copy-b1", &duplicate_dir, 1, None);
    wait_for("both copies to be refused", Duration::from_secs(20), || {
        (on_b2
            .log_text()
            .contains("by another agent with the same identity")
            && on_b1
                .log_text()
                .contains("by another agent with the same identity"))
        .then_some(())
    });
    let duplicates = w.metric(1, "ferry_host_duplicate_attach_total", "")
        + w.metric(2, "ferry_host_duplicate_attach_total", "");
    eprintln!("duplicate attachments refused: {duplicates_before} -> {duplicates}");
    assert!(duplicates >= duplicates_before + 2.0);
    assert!(
        w.metric(2, "ferry_host_duplicate_attach_last_timestamp_seconds", "") > 0.0,
        "the alert's series is set"
    );
    let hosts = w.admin(&["host", "list", "--json"]).ok();
    let hosts: serde_json::Value = serde_json::from_str(&hosts).unwrap();
    let pc1 = hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "pc1")
        .unwrap();
    assert_eq!(
        pc1["attached_broker"], "b1",
        "the first agent keeps its place"
    );
    assert!(
        !first.log_text().contains("connection to the broker lost"),
        "the first agent was never pushed off:\n{}",
        first.log_text()
    );
    on_b1.kill();
    on_b2.kill();

    // 3. Re-enrolled: the old identity is dead everywhere, the first agent is disconnected
    // and gives up, and the host enrolls again with a new key.
    let new_token = w
        .admin(&["host", "re-enroll", "pc1"])
        .ok()
        .trim()
        .to_owned();
    let mut first = first;
    let status = exits(&mut first, "the old agent to give up");
    assert!(!status.success());
    let mut stale = agent(&w, "stale-copy", &duplicate_dir, 2, None);
    exits(&mut stale, "the stale copy to give up");
    assert!(
        stale.log_text().contains("has not completed enrollment"),
        "{}",
        stale.log_text()
    );
    let old_certificate = std::fs::read(state.join("host.pem")).unwrap();
    let _again = agent(&w, "re-enrolled", &state, 1, Some(&new_token));
    wait_for("the host to attach again", Duration::from_secs(20), || {
        let hosts = w.admin(&["host", "list", "--json"]).ok();
        let v: serde_json::Value = serde_json::from_str(&hosts).ok()?;
        v["hosts"]
            .as_array()?
            .iter()
            .any(|h| h["name"] == "pc1" && h["enrolled"] == true && h["connected"] == true)
            .then_some(())
    });
    assert_ne!(
        std::fs::read(state.join("host.pem")).unwrap(),
        old_certificate,
        "a new key"
    );
}
