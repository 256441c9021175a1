//! Acceptance 1/8 item 3: every denial says why and exits non-zero; bad input never harms the
//! broker. Exit codes: 4 denied, 5 not found, 7 untrusted certificate.

mod common;
use common::*;
use std::time::Duration;

const PASSWORD: &str = "correct horse battery";

/// A running broker with user alice (staff), host lab-pc (lab) attached, and staff -> lab.
fn world_with_host(edit_config: impl FnOnce(&World)) -> (World, Proc, Proc) {
    let w = World::init();
    edit_config(&w);
    let broker = w.start_broker();
    w.add_user("alice", "staff", PASSWORD);
    let token = w.enroll("lab-pc", "lab");
    w.admin(&["grant", "staff", "lab"]).ok();
    let host = w.start_host("lab-pc", Some(&token), &[("echo", echo_server())]);
    (w, broker, host)
}

#[test]
fn t02_wrong_password_and_unknown_user_are_denied_and_audited() {
    // Failed logins are audited as one summary per node and period (a second here).
    let (w, _broker, _host) =
        world_with_host(|w| w.set_limit("b1", "failure_audit_period_secs", "1"));
    w.login("alice", "not the password")
        .fails(4, "unknown user or wrong password");
    w.login("mallory", PASSWORD)
        .fails(4, "unknown user or wrong password");
    let record = w.wait_for_audit(
        "auth.failures",
        &[
            "login \"alice\" from 127.0.0.1: 1",
            "login \"mallory\" from 127.0.0.1: 1",
        ],
    );
    assert_eq!(record["actor"], "node:b1", "{record}");
    w.login("alice", PASSWORD).ok();
}

#[test]
fn t02_repeated_failures_lock_the_user_out() {
    let (w, _broker, _host) = world_with_host(|_| {});
    for _ in 0..5 {
        w.login("alice", "guess").fails(4, "wrong password");
    }
    w.login("alice", PASSWORD)
        .fails(6, "too many failed logins");
}

#[test]
fn t02_expired_token_is_refused_with_advice() {
    let (w, _broker, _host) = world_with_host(|w| {
        let path = w.cluster().join("b1.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text.replace("token_ttl_secs = 43200", "token_ttl_secs = 1");
        assert_ne!(text, edited, "the config names token_ttl_secs");
        std::fs::write(&path, edited).unwrap();
    });
    w.login("alice", PASSWORD).ok();
    wait_for("the token to expire", Duration::from_secs(15), || {
        let out = w.connect_stdio("lab-pc", "echo", "x\n");
        (out.code != 0).then_some(out)
    })
    .fails(4, "your login token has expired; run `ferry login` again");
}

#[test]
fn t02_unknown_and_ungranted_hosts_and_services_are_refused() {
    let (w, _broker, _host) = world_with_host(|_| {});
    let token = w.enroll("vault-pc", "vault");
    let _vault = w.start_host("vault-pc", Some(&token), &[("ssh", echo_server())]);
    w.login("alice", PASSWORD).ok();
    w.connect_stdio("nope", "echo", "")
        .fails(5, "unknown host \"nope\"");
    w.connect_stdio("vault-pc", "ssh", "")
        .fails(4, "is not granted access to host \"vault-pc\"");
    w.connect_stdio("lab-pc", "vnc", "")
        .fails(5, "does not expose service \"vnc\"");
    // Not logged in at all (fresh config home).
    let config = w.client_config();
    let mut cmd = w.command(&["connect", "lab-pc", "echo", "--stdio", "--config", &config]);
    let out = cmd
        .env("XDG_CONFIG_HOME", w.path().join("elsewhere"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not logged in"));
}

#[test]
fn t02_an_enrollment_token_works_once() {
    let (w, _broker, _host) = world_with_host(|_| {});
    let token = w.enroll("lab-pc-2", "lab");
    let _first = w.start_host("lab-pc-2", Some(&token), &[("echo", echo_server())]);
    let config = w.client_config();
    let state = w.path().join("another-state-dir");
    let out = w.ferry(&[
        "host",
        "--config",
        &config,
        "--name",
        "lab-pc-2",
        "--state-dir",
        state.to_str().unwrap(),
        "--enroll",
        &token,
        "--expose",
        "echo=127.0.0.1:9",
    ]);
    out.fails(4, "an enrollment token works once");
}

#[test]
fn t02_a_client_trusting_another_ca_refuses_the_broker() {
    let (w, _broker, _host) = world_with_host(|_| {});
    let other = World::init();
    let untrusting = w.path().join("untrusting");
    std::fs::create_dir_all(&untrusting).unwrap();
    std::fs::copy(
        w.cluster().join("client.toml"),
        untrusting.join("client.toml"),
    )
    .unwrap();
    std::fs::copy(other.cluster().join("ca.pem"), untrusting.join("ca.pem")).unwrap();
    let config = untrusting.join("client.toml");
    let out = w.ferry_with(
        &[
            "login",
            "--config",
            config.to_str().unwrap(),
            "--user",
            "alice",
        ],
        None,
        &[("FERRY_PASSWORD", PASSWORD)],
    );
    out.fails(7, "certificate");
}

#[test]
fn t02_a_broker_certificate_from_another_ca_is_refused() {
    let other = World::init();
    let w = World::init();
    std::fs::copy(
        other.cluster().join("b1.pem"),
        w.cluster().join("alien.pem"),
    )
    .unwrap();
    std::fs::copy(
        other.cluster().join("b1.key"),
        w.cluster().join("alien.key"),
    )
    .unwrap();
    let path = w.cluster().join("b1.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"b1.pem\"", "\"alien.pem\"")
            .replace("\"b1.key\"", "\"alien.key\""),
    )
    .unwrap();
    let _broker = w.start_broker();
    w.login("alice", PASSWORD)
        .fails(7, "not signed by the cluster CA");
}
