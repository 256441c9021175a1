//! Issue 8/12, acceptance 1: withdrawing access ends live access. Alice has a live session
//! (traffic flowing both ways through a pair and a witness: her client on b1, the host agent
//! on b2, so both brokers carry it) and a cached token; an administrator, with a named admin
//! token, disables her / revokes her tokens / removes the grant / removes the host / kills the
//! session. Within 2 s both local ends close; what she may do afterwards is refused on every
//! broker with a sentence; the audit names the token that did it and its address. And a
//! session detached at the moment of the withdrawal (its client frozen, its broker killed)
//! ends on the host at once, and its resume is refused when the client comes back.

mod common;
use common::*;
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery";
/// Each direction: far more than the test lasts at `PACE`, so the session is live throughout.
const LEN: u64 = 256 * 1024 * 1024;
const PACE: u64 = 256 * 1024;
/// The bound of the acceptance: from the command's answer (the change is committed) to both
/// local ends closed.
const WITHDRAWAL_DEADLINE: Duration = Duration::from_secs(2);

/// A pair and a witness with alice's session live through it.
struct Live {
    nodes: Vec<Proc>,
    host: Proc,
    forward: Proc,
    /// The host side's end of each connection, as the service saw it.
    service_ends: Receiver<TransferEnd>,
    service_progress: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The client side: the transfer's end and when it came (taken by the one who waits).
    client: Option<JoinHandle<(TransferEnd, Instant)>>,
    /// A named admin token ("offboarder", role admin).
    admin_token: String,
    /// Last: fields drop in order, and the processes above print their logs from this
    /// world's directory when a test fails.
    w: World,
}

fn live_session() -> Live {
    let (w, nodes) = World::pair_with_witness();
    w.add_user("alice", "staff", PASSWORD);
    let enrollment = w.enroll("pc1", "lab");
    w.admin(&["grant", "staff", "lab"]).ok();
    let admin_token = w
        .admin(&["token", "create", "offboarder", "--role", "admin"])
        .ok()
        .trim()
        .to_owned();
    let (service, service_ends, service_progress) = duplex_service(LEN, 7, Some(PACE));
    let host = w.start_host_via(
        &w.client_config_for(2),
        "pc1",
        Some(&enrollment),
        &[("ssh", service)],
    );
    w.login_via(&w.client_config_for(1), "alice", PASSWORD).ok();
    let (forward, addr) = w.forward_via(&w.client_config_for(1), "pc1", "ssh");
    let transfer = duplex_client(addr, LEN, 8, Some(PACE));
    let client = std::thread::spawn(move || {
        let end = transfer.join().expect("the transfer thread never panics");
        (end, Instant::now())
    });
    let live = Live {
        w,
        nodes,
        host,
        forward,
        service_ends,
        service_progress,
        client: Some(client),
        admin_token,
    };
    wait_for("traffic to flow", Duration::from_secs(20), || {
        (live
            .service_progress
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 64 * 1024)
            .then_some(())
    });
    live
}

impl Live {
    /// `ferry admin ARGS` with the named admin token.
    fn admin_as_offboarder(&self, args: &[&str]) -> String {
        let config = self.w.client_config();
        let mut full = vec!["admin", "--config", config.as_str()];
        full.extend_from_slice(args);
        self.w
            .ferry_with(&full, None, &[("FERRY_ADMIN_TOKEN", &self.admin_token)])
            .ok()
    }

    /// Runs the withdrawal and checks that both local ends close within the deadline.
    fn withdraw(mut self, args: &[&str]) -> Withdrawn {
        self.admin_as_offboarder(args);
        let answered = Instant::now();
        let service_end = self
            .service_ends
            .recv_timeout(Duration::from_secs(30))
            .expect("the host side's connection ends");
        let service_closed = answered.elapsed();
        let client = self
            .client
            .take()
            .expect("the client side is waited for once");
        let (client_end, client_closed_at) = client.join().unwrap();
        let client_closed = client_closed_at.saturating_duration_since(answered);
        eprintln!(
            "{args:?}: host side closed {service_closed:?} and client side {client_closed:?} \
             after the command answered; host side: {:?}; client side: {:?}",
            service_end.error, client_end.error
        );
        assert!(
            service_closed <= WITHDRAWAL_DEADLINE && client_closed <= WITHDRAWAL_DEADLINE,
            "{args:?}: both local ends close within {WITHDRAWAL_DEADLINE:?} \
             (host side {service_closed:?}, client side {client_closed:?})"
        );
        assert!(
            client_end.received_bytes < LEN && service_end.received_bytes < LEN,
            "the session was cut, not completed"
        );
        wait_for("the client to say why", Duration::from_secs(10), || {
            self.forward
                .log_text()
                .contains("lost: the cluster ended the session")
                .then_some(())
        });
        Withdrawn { live: self }
    }
}

/// After the withdrawal.
struct Withdrawn {
    live: Live,
}

impl Withdrawn {
    fn w(&self) -> &World {
        &self.live.w
    }

    /// `ferry ARGS --config <client config naming only b<i>>`.
    fn on(&self, i: u8, args: &[&str]) -> Output {
        let config = self.w().client_config_for(i);
        let mut full = args.to_vec();
        full.extend_from_slice(&["--config", &config]);
        self.w().ferry_with(&full, Some(""), &[])
    }

    /// A new session to pc1/ssh through broker b<i>, on stdio.
    fn connect_on(&self, i: u8) -> Output {
        self.on(i, &["connect", "pc1", "ssh", "--stdio"])
    }

    /// The audit record of `action` names the offboarder's token and a loopback address.
    fn audited(&self, action: &str) -> serde_json::Value {
        let records = self.w().admin(&["audit", "--json"]).ok();
        let records: serde_json::Value = serde_json::from_str(&records).unwrap();
        let record = records["records"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|r| r["action"] == action)
            .unwrap_or_else(|| panic!("an audit record of {action}: {records:#}"))
            .clone();
        assert!(
            record["actor"]
                .as_str()
                .unwrap()
                .starts_with("token:offboarder"),
            "the audit names the token: {record}"
        );
        assert!(
            record["source"].as_str().unwrap().starts_with("127.0.0.1:"),
            "the audit names the client's address: {record}"
        );
        record
    }

    /// The leader's sweep closes the withdrawn session in the table, with the reason.
    fn closed_in_the_table(&self, fragment: &str) {
        wait_for(
            "the session to leave the table",
            Duration::from_secs(10),
            || {
                let out = self.w().admin(&["sessions", "--json"]).ok();
                let v: serde_json::Value = serde_json::from_str(&out).ok()?;
                v["sessions"].as_array()?.is_empty().then_some(())
            },
        );
        let records = self.w().admin(&["audit", "--json"]).ok();
        assert!(
            records.contains("access withdrawn") && records.contains(fragment),
            "the close is audited with the reason ({fragment:?}): {records}"
        );
    }
}

#[test]
fn t27_disabling_a_user_ends_her_sessions_and_refuses_her_everywhere() {
    let done = live_session().withdraw(&["user", "disable", "alice"]);
    done.audited("user.disable");
    for i in [1, 2] {
        done.connect_on(i).fails(4, "alice");
        done.on(i, &["ls"]).fails(4, "disabled");
    }
    done.closed_in_the_table("disabled");
    // Enabled again, she may work again (her token was kept).
    done.w().admin(&["user", "enable", "alice"]).ok();
    done.on(1, &["ls"]).ok();
}

#[test]
fn t27_revoking_a_users_tokens_ends_the_sessions_they_opened() {
    let done = live_session().withdraw(&["token", "revoke", "--user", "alice"]);
    done.audited("token.revoke_user");
    for i in [1, 2] {
        done.connect_on(i).fails(4, "ferry login");
        done.on(i, &["ls"]).fails(4, "ferry login");
    }
    done.closed_in_the_table("token that opened it was revoked");
}

#[test]
fn t27_removing_a_grant_ends_the_sessions_it_allowed() {
    let done = live_session().withdraw(&["grant", "remove", "staff", "lab"]);
    done.audited("grant.remove");
    for i in [1, 2] {
        done.connect_on(i).fails(4, "not granted");
        let listed = done.on(i, &["ls", "--json"]).ok();
        assert!(!listed.contains("pc1"), "pc1 is no longer listed: {listed}");
    }
    done.closed_in_the_table("not granted");
}

#[test]
fn t27_narrowing_a_grant_to_other_services_ends_the_sessions_to_the_rest() {
    let done = live_session().withdraw(&["grant", "staff", "lab", "--services", "vnc"]);
    done.audited("grant.add");
    done.connect_on(1).fails(4, "only for service(s) vnc");
    done.closed_in_the_table("only for service(s) vnc");
}

#[test]
fn t27_removing_a_host_disconnects_its_agent_and_ends_its_sessions() {
    let mut done = live_session().withdraw(&["host", "remove", "pc1"]);
    done.audited("host.remove");
    for i in [1, 2] {
        done.connect_on(i).fails(5, "unknown host");
    }
    // The agent was disconnected and is refused everywhere: it gives up.
    let host = &mut done.live.host;
    let status = wait_for("the host agent to exit", Duration::from_secs(20), || {
        host.child.try_wait().ok().flatten()
    });
    assert!(!status.success(), "{}", host.log_text());
    assert!(host.log_text().contains("pc1"), "{}", host.log_text());
    done.closed_in_the_table("unknown host");
}

#[test]
fn t27_killing_a_session_ends_it_and_nothing_else() {
    let live = live_session();
    let sessions = live.w.admin(&["sessions", "--json"]).ok();
    let sessions: serde_json::Value = serde_json::from_str(&sessions).unwrap();
    let id = sessions["sessions"][0]["id"].as_u64().unwrap().to_string();
    let done = live.withdraw(&["session", "kill", &id, "--reason", "offboarding"]);
    done.audited("session.kill");
    done.closed_in_the_table("killed by an administrator: offboarding");
    // Alice may still open a new session: only that one was killed.
    let (_forward, addr) = done
        .w()
        .forward_via(&done.w().client_config_for(2), "pc1", "ssh");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut first = [0u8; 1024];
    std::io::Read::read_exact(&mut stream, &mut first).expect("a new session carries bytes");
}

#[test]
fn t27_a_detached_session_ends_on_the_host_and_its_resume_is_refused() {
    let live = live_session();
    // Freeze the client, then kill the broker it reaches the session through: the session is
    // detached (the leader marks it so) and its host agent waits for a resume on b2.
    let signal = |sig: &str, pid: u32| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP", live.forward.pid());
    let Live {
        w,
        mut nodes,
        host,
        forward,
        service_ends,
        client,
        admin_token,
        ..
    } = live;
    let client = client.expect("not waited for yet");
    nodes[0].kill();
    wait_for(
        "the session to be detached",
        Duration::from_secs(20),
        || {
            let out = w.admin(&["sessions", "--json"]);
            let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
            (v["sessions"][0]["state"] == "waiting_for_resume").then_some(())
        },
    );
    let config = w.client_config();
    w.ferry_with(
        &["admin", "--config", &config, "user", "disable", "alice"],
        None,
        &[("FERRY_ADMIN_TOKEN", &admin_token)],
    )
    .ok();
    let answered = Instant::now();
    let service_end = service_ends
        .recv_timeout(Duration::from_secs(30))
        .expect("the host side's connection ends");
    eprintln!(
        "detached: the host side closed {:?} after the command answered ({:?})",
        answered.elapsed(),
        service_end.error
    );
    assert!(
        answered.elapsed() <= WITHDRAWAL_DEADLINE,
        "the host side closes within {WITHDRAWAL_DEADLINE:?}, not when the resume window passes"
    );
    // The client comes back and tries to resume on b2: refused, and its local end closes.
    signal("-CONT", forward.pid());
    let (client_end, _) = client.join().unwrap();
    assert!(client_end.received_bytes < LEN);
    wait_for(
        "the client to say its resume was refused",
        Duration::from_secs(20),
        || forward.log_text().contains("lost:").then_some(()),
    );
    drop((host, forward, nodes));
}
