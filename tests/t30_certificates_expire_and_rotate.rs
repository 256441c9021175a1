//! Issue 8/12, acceptance 4 (in part): node certificates have a finite validity, shown in the
//! status and exported for an alert; a node whose certificate has expired is refused by
//! clients with a clear message (exit 7) and by its peers; `ferry init --renew` issues a new
//! one; and the cluster CA rotates without downtime while a session carries traffic: the
//! session survives, and at the end only the new CA is trusted.

mod common;
use common::*;
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery";

fn ready(w: &World, i: u8) {
    let url = format!("{}/readyz", w.admin_url_of(i));
    wait_for(
        &format!("node {i} to be ready"),
        Duration::from_secs(30),
        || http_get(&url).filter(|(code, _)| *code == 200),
    );
}

fn init_subcommand(w: &World, args: &[&str]) -> Output {
    let out = w.cluster().display().to_string();
    let mut full = vec!["init", "--out", out.as_str()];
    full.extend_from_slice(args);
    w.ferry(&full)
}

#[test]
fn t30_an_expired_node_certificate_is_refused_with_a_clear_message() {
    let w = World::init();
    let mut broker = w.start_broker();
    // A year by default, in the status and the metric.
    let status = w.admin(&["node", "--json"]).ok();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let expires_ms = status["certificates"]["node_certificate_expires_at_ms"]
        .as_u64()
        .unwrap();
    let year_ms = 365 * 86_400_000u64;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        expires_ms > now_ms + year_ms - 86_400_000 && expires_ms < now_ms + year_ms + 86_400_000,
        "{status:#}"
    );
    let exported = w.metric(
        1,
        "ferry_certificate_expiry_timestamp_seconds",
        "certificate=\"node\"",
    );
    assert_eq!(exported as u64, expires_ms / 1000);
    assert!(w.admin(&["node"]).ok().contains("certificate expires"));
    // And in the cluster's status, for every node.
    let cluster = w.admin(&["status", "--json"]).ok();
    let cluster: serde_json::Value = serde_json::from_str(&cluster).unwrap();
    assert_eq!(
        cluster["nodes"][0]["certificate_expires_at_ms"].as_u64(),
        Some(expires_ms),
        "{cluster:#}"
    );
    let table = w.admin(&["status"]).ok();
    assert!(
        table.contains("CERT_EXPIRES") && table.contains("in 364 d"),
        "{table}"
    );

    // Renewed for one second, then restarted: expired.
    broker.kill();
    init_subcommand(&w, &["--renew", "b1", "--cert-validity", "1s"]).ok();
    std::thread::sleep(Duration::from_secs(2));
    let _broker = w.spawn(
        "broker-b1-expired",
        &[
            "broker",
            "--config",
            w.cluster().join("b1.toml").to_str().unwrap(),
        ],
    );
    let config = w.client_config();
    wait_for("the broker to listen", Duration::from_secs(20), || {
        http_get(&format!("{}/healthz", w.admin_url())).filter(|(c, _)| *c == 200)
    });
    let out = w.ferry_with(
        &["login", "--config", &config, "--user", "alice"],
        None,
        &[("FERRY_PASSWORD", PASSWORD)],
    );
    eprintln!("login against an expired certificate: {out:?}");
    out.fails(7, "The broker's certificate has expired");
}

/// Kills node `name` (position `i`) and starts it again, waiting until it is ready.
fn restart(w: &World, nodes: &mut [Proc], name: &str, i: u8) {
    nodes[usize::from(i - 1)].kill();
    nodes[usize::from(i - 1)] = w.start_named(name, i);
    ready(w, i);
}

#[test]
fn t30_the_ca_rotates_under_a_live_session() {
    const NODES: [(&str, u8); 3] = [("b1", 1), ("b2", 2), ("w1", 3)];
    let w = World::init_cluster(2, 1);
    let mut nodes: Vec<Proc> = NODES.iter().map(|(n, i)| w.start_named(n, *i)).collect();
    for (_, i) in NODES {
        ready(&w, i);
    }
    // A session from a client on b1 to a host on b2, traffic both ways throughout.
    // About 32 s of traffic: longer than the rotation (about 17 s here).
    const LEN: u64 = 12 * 1024 * 1024;
    const PACE: u64 = 384 * 1024;
    let (service, ends, progress) = duplex_service(LEN, 3, Some(PACE));
    w.add_user("alice", "staff", PASSWORD);
    let token = w.enroll("pc1", "lab");
    w.admin(&["grant", "staff", "lab"]).ok();
    let _host = w.start_host_via(
        &w.client_config_for(2),
        "pc1",
        Some(&token),
        &[("svc", service)],
    );
    w.login_via(&w.client_config_for(1), "alice", PASSWORD).ok();
    let (_forward, addr) = w.forward_via(&w.client_config_for(1), "pc1", "svc");
    let client = duplex_client(addr, LEN, 4, Some(PACE));
    wait_for("traffic", Duration::from_secs(20), || {
        (progress.load(std::sync::atomic::Ordering::Relaxed) > 64 * 1024).then_some(())
    });
    let old_b1 = (
        std::fs::read(w.cluster().join("b1.pem")).unwrap(),
        std::fs::read(w.cluster().join("b1.key")).unwrap(),
    );
    let started = Instant::now();

    // 1. A new CA; every node trusts both, one restart at a time.
    init_subcommand(&w, &["--rotate-ca"]).ok();
    let bundle = std::fs::read_to_string(w.cluster().join("ca.pem")).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
    for (name, i) in NODES {
        restart(&w, &mut nodes, name, i);
    }
    // The old CA cannot be retired while nodes hold its certificates.
    init_subcommand(&w, &["--retire-old-ca"]).fails(8, "still hold certificates of the old CA");
    // 2. Every node renewed under the new CA, one restart at a time.
    for (name, i) in NODES {
        init_subcommand(&w, &["--renew", name]).ok();
        restart(&w, &mut nodes, name, i);
    }
    // 3. The old CA retired; one more round of restarts.
    init_subcommand(&w, &["--retire-old-ca"]).ok();
    let bundle = std::fs::read_to_string(w.cluster().join("ca.pem")).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 1);
    for (name, i) in NODES {
        restart(&w, &mut nodes, name, i);
    }
    let rotated_in = started.elapsed();

    // The session survived every restart, byte for byte.
    let client_end = client.join().unwrap();
    let service_end = ends.recv_timeout(Duration::from_secs(120)).unwrap();
    eprintln!(
        "rotation took {rotated_in:?}; longest stall at the client {:?}, at the host {:?}",
        client_end.longest_gap, service_end.longest_gap
    );
    assert_eq!(client_end.error, None, "client side");
    assert_eq!(service_end.error, None, "host side");
    assert_eq!(client_end.received_bytes, LEN);
    assert_eq!(
        client_end.received, service_end.sent,
        "identical SHA-256 host -> client"
    );
    assert_eq!(
        service_end.received, client_end.sent,
        "identical SHA-256 client -> host"
    );

    // Only the new CA is trusted: b1 back on its old certificate is refused by clients and
    // by its peers.
    nodes[0].kill();
    std::fs::write(w.cluster().join("b1.pem"), &old_b1.0).unwrap();
    std::fs::write(w.cluster().join("b1.key"), &old_b1.1).unwrap();
    let mut stale = w.start_named("b1", 1);
    let out = w.ferry(&["ls", "--config", &w.client_config_for(1)]);
    eprintln!("ls against an old-CA certificate: {out:?}");
    out.fails(7, "");
    // Its peers refuse it too: for 5 s (over three election timeouts) it hears from no leader.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(5) {
        if let Some(status) = w.status_of(1) {
            assert!(
                status["raft"]["leader_contact_ms_ago"].is_null(),
                "b1 on an old-CA certificate reached the leader: {status:#}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stale.kill();
}

#[test]
fn t30_a_removed_nodes_certificate_is_refused_by_clients_hosts_and_peers() {
    let w = World::init_brokers(3);
    let _nodes: Vec<Proc> = (1..=3).map(|i| w.start_node(i)).collect();
    for i in 1..=3 {
        ready(&w, i);
    }
    w.add_user("alice", "staff", PASSWORD);
    w.admin(&["grant", "staff", "lab"]).ok();
    let token = w.enroll("pc1", "lab");
    let via_b1 = w.client_config_for(1);
    let via_b3 = w.client_config_for(3);
    let mut host = w.start_host_via(&via_b1, "pc1", Some(&token), &[("echo", echo_server())]);
    w.login_via(&via_b1, "alice", PASSWORD).ok();
    w.ferry(&["ls", "--config", &via_b3]).ok();

    // b3 is removed from the cluster but keeps running, with its still-valid certificate.
    w.admin_on(1, &["member", "remove", "b3"]).ok();
    // Endpoints learn it from any broker they reach, and remember it.
    w.ferry(&["ls", "--config", &via_b1]).ok();
    let out = w.ferry(&["ls", "--config", &via_b3]);
    out.fails(7, "broker b3 was removed from the cluster");
    // The host agent learns it when it next connects (here: restarted), and keeps it in its
    // state directory.
    host.kill();
    let mut again = w.spawn(
        "host-pc1-again",
        &[
            "host",
            "--config",
            &via_b1,
            "--name",
            "pc1",
            "--state-dir",
            &w.path().join("host-pc1").display().to_string(),
            "--expose",
            "echo=127.0.0.1:9",
        ],
    );
    let remembered = w.path().join("host-pc1").join("retired-nodes");
    wait_for(
        "the host agent to remember b3",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&remembered)
                .ok()
                .filter(|t| t.lines().any(|l| l == "b3"))
        },
    );
    again.kill();
    let state = w.path().join("host-pc1").display().to_string();
    let out = w.ferry(&[
        "host",
        "--config",
        &via_b3,
        "--name",
        "pc1",
        "--state-dir",
        &state,
        "--expose",
        "echo=127.0.0.1:9",
    ]);
    out.fails(7, "broker b3 was removed from the cluster");
    // Its peers refuse it: it hears from no leader any more.
    wait_for(
        "b3 to be cut off from its peers",
        Duration::from_secs(20),
        || {
            let status = w.status_of(3)?;
            let contact = &status["raft"]["leader_contact_ms_ago"];
            (contact.is_null() || contact.as_u64().is_some_and(|ms| ms > 3_000)).then_some(())
        },
    );
    // And no node may join under its name again.
    let config = w.client_config();
    let peer = format!("127.0.0.1:{}", w.layout().peer_port(3));
    w.ferry(&[
        "admin",
        "--config",
        &config,
        "member",
        "add",
        "b3",
        "--raft-id",
        "9",
        "--peer-addr",
        &peer,
    ])
    .fails(1, "was removed from this cluster");
}

#[test]
fn t30_init_lays_out_what_each_node_needs_without_the_ca_key() {
    let w = World::init_cluster(2, 1);
    for node in ["b1", "b2", "w1"] {
        let dir = w.cluster().join("nodes").join(node);
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut want = vec![
            "admin.token".to_owned(),
            "ca.pem".to_owned(),
            "client.toml".to_owned(),
            format!("{node}.key"),
            format!("{node}.pem"),
            format!("{node}.toml"),
        ];
        want.sort();
        assert_eq!(
            files,
            want,
            "{}: what the node needs (client.toml for `ferry admin` and stop hooks on its \
             machine), never ca.key",
            dir.display()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(format!("{node}.key")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A node runs from its own directory alone (here b1, its peers from theirs).
    let mut nodes = Vec::new();
    for (name, i) in [("b1", 1u8), ("b2", 2), ("w1", 3)] {
        let config = w
            .cluster()
            .join("nodes")
            .join(name)
            .join(format!("{name}.toml"));
        nodes.push(w.spawn(
            &format!("node-{name}"),
            &["broker", "--config", config.to_str().unwrap()],
        ));
        let _ = i;
    }
    for i in 1..=3 {
        ready(&w, i);
    }
    assert!(
        w.cluster().join("nodes/b1/data").is_dir(),
        "its data under its directory"
    );
    // A renewal and a rotation keep the nodes' directories current.
    init_subcommand(&w, &["--renew", "b1"]).ok();
    assert_eq!(
        std::fs::read(w.cluster().join("b1.pem")).unwrap(),
        std::fs::read(w.cluster().join("nodes/b1/b1.pem")).unwrap()
    );
    init_subcommand(&w, &["--rotate-ca"]).ok();
    assert_eq!(
        std::fs::read(w.cluster().join("ca.pem")).unwrap(),
        std::fs::read(w.cluster().join("nodes/w1/ca.pem")).unwrap()
    );
}
