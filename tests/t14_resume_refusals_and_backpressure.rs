//! Issue 3/8, acceptance 5: a resume with a wrong or stale secret is refused and audited; a
//! resume after the session expired is refused with a clear message at the client; a replay
//! buffer that fills blocks the sender instead of growing (and loses nothing once the far side
//! reads again).

mod common;
use common::*;
use ferry_proto::wire::{self, client_request, client_response};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn sessions(w: &World, node: u8) -> Vec<serde_json::Value> {
    let out = w.admin_on(node, &["sessions", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["sessions"].as_array().cloned().unwrap_or_default()
}

/// Sends a raw `ResumeSession` to broker b1, as a client would; returns the broker's answer.
fn resume_raw(w: &World, session_id: u64, secret: &str) -> client_response::Response {
    w.client_request(
        1,
        client_request::Request::ResumeSession(wire::ResumeSession {
            session_id,
            resume_secret: secret.to_owned(),
            received: 0,
            written: 0,
        }),
    )
}

fn refusal(response: client_response::Response) -> wire::Error {
    match response {
        client_response::Response::Error(e) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn t14_wrong_or_stale_resume_secrets_are_refused_and_audited() {
    let w = World::init();
    w.set_limit("b1", "failure_audit_period_secs", "1");
    let _broker = w.start_broker();
    let _host = w.alice_reaching(&w.client_config(), "lab-pc", &[("echo", echo_server())]);
    let (_forward, addr) = w.forward("lab-pc", "echo");

    // A live session, and a guess at its secret.
    let mut live = std::net::TcpStream::connect(addr).unwrap();
    live.write_all(b"hello\n").unwrap();
    let mut buf = [0u8; 6];
    live.read_exact(&mut buf).unwrap();
    let id = sessions(&w, 1)[0]["id"].as_u64().unwrap();
    let e = refusal(resume_raw(&w, id, "guessed-secret"));
    assert_eq!(e.code(), wire::ErrorCode::PermissionDenied);
    assert!(e.message.contains("wrong resume secret"), "{}", e.message);

    // A session that has ended: whatever secret is presented, it is gone.
    drop(live);
    wait_for("the session to close", Duration::from_secs(10), || {
        sessions(&w, 1).is_empty().then_some(())
    });
    let e = refusal(resume_raw(&w, id, "its-old-secret"));
    assert_eq!(e.code(), wire::ErrorCode::NotFound);
    assert!(
        e.message
            .contains("has ended or expired; open a new session"),
        "{}",
        e.message
    );

    // Both refusals are in the audit log, replicated like every other record: counted in
    // the node's summary of failed anonymous attempts, not proposed one by one.
    w.wait_for_audit(
        "auth.failures",
        &[&format!("resume \"{id}\" from 127.0.0.1: 2")],
    );
}

#[test]
fn t14_resume_after_the_window_is_refused_with_a_clear_message() {
    let w = World::init_brokers(3);
    for i in 1..=3 {
        let path = w.cluster().join(format!("b{i}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text.replace(
            "session_resume_window_secs = 60",
            "session_resume_window_secs = 2",
        );
        assert_ne!(text, edited, "the config names session_resume_window_secs");
        std::fs::write(&path, edited).unwrap();
    }
    let mut nodes: Vec<Proc> = (1..=3).map(|i| w.start_node(i)).collect();
    let config = w.client_config_for(1);
    let host = w.alice_reaching(&config, "lab-pc", &[("echo", echo_server())]);
    let (forward, addr) = w.forward_via(&config, "lab-pc", "echo");
    let mut local = std::net::TcpStream::connect(addr).unwrap();
    local.write_all(b"hello\n").unwrap();
    let mut buf = [0u8; 6];
    local.read_exact(&mut buf).unwrap();

    // The client is frozen while its broker dies, and thaws only after the window passed.
    let signal = |sig: &str, pid: u32| {
        std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
    };
    signal("-STOP", forward.pid());
    nodes[0].kill();
    wait_for(
        "the leader to close the session as lost",
        Duration::from_secs(30),
        || sessions(&w, 2).is_empty().then_some(()),
    );
    // The leader counts the loss once its close is applied (on followers, it may be first).
    wait_for(
        "the loss to be counted, with its reason",
        Duration::from_secs(10),
        || {
            let lost: f64 = [2, 3]
                .iter()
                .map(|&i| w.metric(i, "ferry_sessions_lost_total", "expired"))
                .sum();
            (lost == 1.0).then_some(())
        },
    );
    signal("-CONT", forward.pid());

    // The client tries to resume, is told why it cannot, and closes the local connection.
    wait_for(
        "the client to report the session lost",
        Duration::from_secs(30),
        || {
            let log = forward.log_text();
            log.contains("lost: session").then_some(log)
        },
    );
    let log = forward.log_text();
    assert!(
        log.contains("has ended or expired; open a new session"),
        "clear message at the client:\n{log}"
    );
    local
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = local.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the local connection is closed");
    // The host gives the session up too: told by its broker once the cluster closed it, or
    // by its own window (counted from when it noticed the broker was gone), whichever first.
    wait_for(
        "the host to give the session up too",
        Duration::from_secs(10),
        || {
            let log = host.log_text();
            (log.contains("not resumed within") || log.contains("the cluster ended the session"))
                .then_some(())
        },
    );
}

#[test]
fn t14_a_full_replay_buffer_blocks_the_sender_and_loses_nothing() {
    let w = World::init();
    let _broker = w.start_broker();
    w.add_user("alice", "staff", "correct horse battery");
    let token = w.enroll("lab-pc", "lab");
    w.admin(&["grant", "staff", "lab"]).ok();
    // A service that accepts and does not read until told to.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let service = listener.local_addr().unwrap();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        use sha2::{Digest, Sha256};
        let (mut stream, _) = listener.accept().unwrap();
        go_rx.recv().unwrap();
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = stream.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            total += n as u64;
        }
        (total, <[u8; 32]>::from(hash.finalize()))
    });
    let _host = w.start_host("lab-pc", Some(&token), &[("slow", service)]);
    w.login("alice", "correct horse battery").ok();
    let (forward, addr) = w.forward("lab-pc", "slow");
    let rss_before = forward.rss_kib();

    let mut local = std::net::TcpStream::connect(addr).unwrap();
    local
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let chunk = vec![0x42u8; 64 * 1024];
    let mut written = 0u64;
    let started = Instant::now();
    let mut hash = {
        use sha2::Digest;
        sha2::Sha256::new()
    };
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the sender was never held back: {written} bytes accepted"
        );
        match local.write(&chunk) {
            Ok(n) => {
                use sha2::Digest;
                hash.update(&chunk[..n]);
                written += n as u64;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => panic!("the local connection failed: {e}"),
        }
    }
    let rss_blocked = forward.rss_kib();
    eprintln!(
        "backpressure: the sender was held back after {} MiB; client RSS {} -> {} MiB",
        written >> 20,
        rss_before >> 10,
        rss_blocked >> 10
    );
    // Bounded by the replay buffer (8 MiB) plus the QUIC and TCP windows along the path.
    assert!(
        written < 96 << 20,
        "{written} bytes accepted without being read"
    );
    assert!(
        rss_blocked.saturating_sub(rss_before) < 96 << 10,
        "client memory grew from {rss_before} to {rss_blocked} KiB"
    );
    // Once the service reads, everything arrives.
    go_tx.send(()).unwrap();
    local.set_write_timeout(None).unwrap();
    local.shutdown(std::net::Shutdown::Write).unwrap();
    let (total, received) = reader.join().unwrap();
    let sent: [u8; 32] = {
        use sha2::Digest;
        hash.finalize().into()
    };
    assert_eq!(total, written);
    assert_eq!(received, sent, "identical SHA-256 after the backpressure");
}
