//! Issue 6/12, the technician's commands: `ferry ls` lists the hosts and services the user
//! may reach with where each is attached; `ferry whoami` (and `ferry status`) says who the
//! token belongs to and until when; `ferry logout` revokes the token on every broker (a copy
//! of it is refused everywhere afterwards, exit 4); `ferry login --password-stdin`; the client
//! config is found without `--config`, and global flags go anywhere on the line.

mod common;
use common::*;
use serde_json::Value;
use std::time::Duration;

const PASSWORD: &str = "correct horse battery";

/// Three brokers; alice (staff) granted hosts of group lab; pc-a attached to b1, pc-b to b2
/// (both in lab), pc-c in lab and enrolled but stopped, pc-d in lab but never enrolled, pc-x
/// in group office (not granted).
struct Lab {
    w: World,
    _nodes: Vec<Proc>,
    _hosts: Vec<Proc>,
}

fn lab() -> Lab {
    let w = World::init_brokers(3);
    let nodes: Vec<Proc> = (1..=3).map(|i| w.start_node(i)).collect();
    w.add_user("alice", "staff", PASSWORD);
    w.admin(&["grant", "staff", "lab"]).ok();
    let echo = echo_server();
    let a = w.enroll("pc-a", "lab");
    let b = w.enroll("pc-b", "lab");
    let c = w.enroll("pc-c", "lab");
    w.enroll("pc-d", "lab");
    let x = w.enroll("pc-x", "office");
    w.start_host_via(&w.client_config_for(3), "pc-c", Some(&c), &[("ssh", echo)])
        .kill();
    let hosts = vec![
        w.start_host_via(
            &w.client_config_for(1),
            "pc-a",
            Some(&a),
            &[("ssh", echo), ("vnc", echo)],
        ),
        w.start_host_via(&w.client_config_for(2), "pc-b", Some(&b), &[("rdp", echo)]),
        w.start_host_via(&w.client_config_for(1), "pc-x", Some(&x), &[("ssh", echo)]),
    ];
    Lab {
        w,
        _nodes: nodes,
        _hosts: hosts,
    }
}

fn json(out: Output) -> Value {
    serde_json::from_str(&out.ok()).expect("stdout is JSON")
}

#[test]
fn t26_ls_whoami_and_a_logout_that_holds_on_every_broker() {
    // Bound whole: the nodes and hosts live (and are killed) with it.
    let lab = lab();
    let w = &lab.w;
    let config = w.client_config();

    // Not logged in yet: a clear refusal, exit 4.
    w.ferry(&["ls", "--config", &config])
        .fails(4, "not logged in");

    // --password-stdin, like `user add`.
    let out = w.ferry_with(
        &[
            "login",
            "--config",
            &config,
            "--user",
            "alice",
            "--password-stdin",
        ],
        Some(&format!("{PASSWORD}\n")),
        &[],
    );
    out.ok();

    // ls: granted and enrolled hosts only, online or not, with their services and brokers
    // (pc-c's broker notices its agent is gone within the idle timeout).
    let listed = wait_for("pc-c to be offline", Duration::from_secs(20), || {
        let listed = json(w.ferry(&["ls", "--json", "--config", &config]));
        let offline = listed["hosts"]
            .as_array()?
            .iter()
            .any(|h| h["host"] == "pc-c" && h["online"] == false);
        offline.then_some(listed)
    });
    let hosts = listed["hosts"].as_array().unwrap();
    let summary: Vec<(String, bool, Value, Value)> = hosts
        .iter()
        .map(|h| {
            (
                h["host"].as_str().unwrap().to_owned(),
                h["online"].as_bool().unwrap(),
                h["broker"].clone(),
                h["services"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "pc-a".to_owned(),
                true,
                "b1".into(),
                serde_json::json!(["ssh", "vnc"])
            ),
            (
                "pc-b".to_owned(),
                true,
                "b2".into(),
                serde_json::json!(["rdp"])
            ),
            (
                "pc-c".to_owned(),
                false,
                Value::Null,
                serde_json::json!(["ssh"])
            ),
        ],
        "{listed}"
    );
    let table = w.ferry(&["ls", "--config", &config]).ok();
    eprintln!("ferry ls:\n{table}");
    assert!(table.starts_with("HOST"), "{table}");
    assert!(table.lines().any(|l| l.contains("pc-a")
        && l.contains("online")
        && l.contains("b1")
        && l.contains("ssh,vnc")));
    assert!(table
        .lines()
        .any(|l| l.contains("pc-c") && l.contains("offline")));
    assert!(!table.contains("pc-x"), "pc-x is not granted: {table}");
    assert!(
        !table.contains("pc-d"),
        "pc-d never completed its enrollment: {table}"
    );

    // whoami and its alias status: user, groups, cluster, expiry (RFC 3339 and relative).
    let who = json(w.ferry(&["whoami", "--json", "--config", &config]));
    assert_eq!(
        (who["user"].as_str(), who["cluster"].as_str()),
        (Some("alice"), Some("e2e"))
    );
    assert_eq!(who["groups"], serde_json::json!(["staff"]));
    assert!(who["expires_at_ms"].as_u64().unwrap() > 0);
    assert!(who["expires_at"].as_str().unwrap().ends_with('Z'), "{who}");
    let text = w.ferry(&["status", "--config", &config]).ok();
    eprintln!("ferry status:\n{text}");
    assert!(
        text.contains("alice") && text.contains("valid until") && text.contains("(in "),
        "{text}"
    );

    // logout revokes the token on the cluster: a copy kept aside is refused by every broker.
    let cache = w.path().join("config-home/ferry/tokens/e2e.toml");
    let copy = std::fs::read_to_string(&cache).expect("login cached the token");
    let out = w.ferry(&["logout", "--config", &config]);
    assert!(out.stderr.contains("revoked on every broker"), "{out:?}");
    out.ok();
    assert!(!cache.exists(), "the cached token is deleted");
    std::fs::write(&cache, &copy).unwrap();
    // Every broker applies the revocation within moments of its commit (a follower may
    // honour a token for up to its read-staleness window, 1 s); then every command is refused.
    let logged_out = std::time::Instant::now();
    for i in 1..=3u8 {
        let only = w.client_config_for(i);
        wait_for(
            &format!("b{i} to refuse the revoked token"),
            Duration::from_secs(5),
            || (w.ferry(&["whoami", "--config", &only]).code == 4).then_some(()),
        );
        w.ferry(&["whoami", "--config", &only])
            .fails(4, "not valid");
        w.ferry(&["ls", "--config", &only]).fails(4, "not valid");
        w.ferry_with(
            &["connect", "pc-a", "ssh", "--stdio", "--config", &only],
            Some("hi\n"),
            &[],
        )
        .fails(4, "not valid");
        eprintln!(
            "b{i} refuses the revoked token ({:?} after the logout)",
            logged_out.elapsed()
        );
    }
    // Logging out again with the stale copy: nothing left to revoke, still a clean exit.
    let again = w.ferry(&["logout", "--config", &config]);
    assert!(again.stderr.contains("no longer valid"), "{again:?}");
    again.ok();
    w.ferry(&["logout", "--config", &config]).ok();
    // The revocation is in the audit log, under alice.
    let audit = json(w.admin(&["audit", "--json"]));
    assert!(
        audit["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "logout" && r["target"] == "alice" && r["outcome"] == "ok"),
        "{audit}"
    );
}

#[test]
fn t26_the_client_config_is_found_without_flags_and_flags_go_anywhere() {
    let w = World::init();
    let _broker = w.start_broker();
    w.add_user("alice", "staff", PASSWORD);
    let config = w.client_config();

    // Nothing to find: the error names every place it looked, exit 8.
    if std::path::Path::new("/etc/ferry/client.toml").exists() {
        eprintln!(
            "NOT CHECKED: the error when no config exists (this machine has /etc/ferry/client.toml)"
        );
    } else {
        let out = w.ferry(&["whoami"]);
        let tried = out.stderr.clone();
        out.fails(8, "FERRY_CONFIG");
        assert!(
            tried.contains("config-home/ferry/client.toml")
                && tried.contains("/etc/ferry/client.toml"),
            "{tried}"
        );
    }

    // $FERRY_CONFIG.
    w.ferry_with(
        &["login", "--user", "alice"],
        None,
        &[("FERRY_PASSWORD", PASSWORD), ("FERRY_CONFIG", &config)],
    )
    .ok();
    let who = w
        .ferry_with(&["whoami", "--json"], None, &[("FERRY_CONFIG", &config)])
        .ok();
    assert!(who.contains("\"alice\""), "{who}");
    // A $FERRY_CONFIG that does not exist is an error about that file, not a silent fallback.
    w.ferry_with(
        &["whoami"],
        None,
        &[("FERRY_CONFIG", "/nonexistent/client.toml")],
    )
    .fails(8, "/nonexistent/client.toml");

    // $XDG_CONFIG_HOME/ferry/client.toml (the world's config home), with admin.token beside it.
    let home = w.path().join("config-home/ferry");
    std::fs::create_dir_all(&home).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let ca = w.cluster().join("ca.pem");
    std::fs::write(
        home.join("client.toml"),
        text.replace(
            "ca_cert = \"ca.pem\"",
            &format!("ca_cert = {:?}", ca.display().to_string()),
        ),
    )
    .unwrap();
    std::fs::copy(w.cluster().join("admin.token"), home.join("admin.token")).unwrap();
    let who = w.ferry(&["whoami"]).ok();
    assert!(
        who.contains("alice") && who.contains(&home.display().to_string()),
        "{who}"
    );
    let users = w.ferry(&["admin", "user", "list"]).ok();
    assert!(users.contains("alice"), "{users}");

    // Global flags anywhere: before or after the subcommand, the same answer.
    let before = w
        .ferry(&[
            "--config", &config, "admin", "--json", "--node", "b1", "node",
        ])
        .ok();
    let after = w
        .ferry(&[
            "admin", "node", "--node", "b1", "--json", "--config", &config,
        ])
        .ok();
    let pick = |s: &str| -> (Value, Value) {
        let v: Value = serde_json::from_str(s).unwrap();
        (v["node_id"].clone(), v["cluster_name"].clone())
    };
    assert_eq!(pick(&before), pick(&after));
    assert_eq!(pick(&before).0, "b1");
    // --node names the node asked, whatever NODE the subcommand is about (clap merges global
    // arguments by id; the two once shared one, and `restart-check b1` asked b1).
    w.ferry(&[
        "admin",
        "--config",
        &config,
        "--node",
        "b9",
        "restart-check",
        "b1",
    ])
    .fails(8, "no node \"b9\"");
}

#[test]
fn t26_passwd_changes_the_own_password_once_the_current_one_verifies() {
    let w = World::init();
    w.set_limit("b1", "failure_audit_period_secs", "1");
    let _broker = w.start_broker();
    w.add_user("alice", "staff", PASSWORD);
    w.login("alice", PASSWORD).ok();
    let config = w.client_config();
    let passwd = |input: &str| {
        w.ferry_with(
            &["passwd", "--config", &config, "--password-stdin"],
            Some(input),
            &[],
        )
    };
    passwd("not it\nsomething new 1\n").fails(4, "the current password is wrong");
    passwd(&format!("{PASSWORD}\nshort\n")).fails(1, "8 to 1024 characters");
    passwd(&format!("{PASSWORD}\nsomething new 2\n")).ok();
    w.login("alice", PASSWORD).fails(4, "");
    w.login("alice", "something new 2").ok();
    let audit = w.admin(&["audit", "--json"]).ok();
    let audit: Value = serde_json::from_str(&audit).unwrap();
    let records = audit["records"].as_array().unwrap();
    assert!(
        records.iter().any(|r| r["action"] == "user.passwd"
            && r["actor"] == "user:alice"
            && r["outcome"] == "ok"),
        "{audit:#}"
    );
    // A wrong current password counts as a failed login, in the period's summary.
    w.wait_for_audit("auth.failures", &["login \"alice\" from 127.0.0.1"]);
}
