//! Issue 10/12: a broker's QUIC port faces peers without an account. Each test plays one such
//! attacker against real broker processes, with raw QUIC clients speaking the wire protocol
//! (from source addresses of their own on 127.0.0.0/8), and checks that the cluster keeps
//! serving real users while memory and the replicated state stay bounded. Every figure is
//! printed, RSS of every broker before, during and after.

mod common;
use common::*;
use ferry_proto::frame::FrameLimits;
use ferry_proto::wire::{self, client_request, client_response, host_request, ErrorCode, Role};
use ferry_transport::{endpoint, framed, tls};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery";

/// A client endpoint trusting the cluster CA, sending from `source` (an address on lo).
fn endpoint_from(w: &World, source: &str) -> quinn::Endpoint {
    let trust = tls::Trust::load(&w.cluster().join("ca.pem")).unwrap();
    let ep = endpoint::client(&trust, &endpoint::Limits::default()).unwrap();
    ep.rebind(std::net::UdpSocket::bind(format!("{source}:0")).unwrap())
        .unwrap();
    ep
}

/// A connection to broker `node` at `addr` past `Hello` as `role`, with its control stream.
async fn hello(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    node: &str,
    role: Role,
) -> Option<(quinn::Connection, quinn::SendStream, quinn::RecvStream)> {
    let conn = ep.connect(addr, node).ok()?.await.ok()?;
    let (mut send, mut recv) = conn.open_bi().await.ok()?;
    let hello = wire::Hello {
        protocol_version: ferry_proto::PROTOCOL_VERSION,
        role: role as i32,
        software: "t34".into(),
    };
    framed::write(&mut send, &hello, FrameLimits::default())
        .await
        .ok()?;
    let _: wire::HelloReply = framed::read(&mut recv, FrameLimits::default()).await.ok()?;
    Some((conn, send, recv))
}

/// One client request on a stream of its own, and its answer.
async fn ask(
    conn: &quinn::Connection,
    request: client_request::Request,
) -> Option<wire::ClientResponse> {
    let (mut send, mut recv) = conn.open_bi().await.ok()?;
    let request = wire::ClientRequest {
        request: Some(request),
    };
    framed::write(&mut send, &request, FrameLimits::default())
        .await
        .ok()?;
    let _ = send.finish();
    framed::read(&mut recv, FrameLimits::default()).await.ok()
}

fn login(user: &str, password: &str) -> client_request::Request {
    client_request::Request::Login(wire::Login {
        user: user.into(),
        password: password.into(),
    })
}

/// Brokers' RSS (MiB), sampled every 100 ms while a flood runs; the peak per broker.
struct RssPeaks {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<u64>>,
}

impl RssPeaks {
    fn start(pids: Vec<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peaks = vec![0u64; pids.len()];
            while !flag.load(Ordering::Relaxed) {
                for (peak, pid) in peaks.iter_mut().zip(&pids) {
                    *peak = (*peak).max(rss_mib(*pid));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            peaks
        });
        Self { stop, thread }
    }

    fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

/// Checks and prints RSS before, at the peak during, and after, per broker.
fn check_rss(label: &str, before: &[u64], peaks: &[u64], after: &[u64], growth_max_mib: u64) {
    for (i, ((b, p), a)) in before.iter().zip(peaks).zip(after).enumerate() {
        println!(
            "{label}: b{} RSS before {b} MiB, peak during {p} MiB, after {a} MiB (growth {} MiB)",
            i + 1,
            p.saturating_sub(*b)
        );
        assert!(
            p.saturating_sub(*b) < growth_max_mib,
            "{label}: b{} grew by {} MiB, the limit is {growth_max_mib} MiB",
            i + 1,
            p.saturating_sub(*b)
        );
    }
}

fn sum_metric(w: &World, nodes: u8, name: &str, filter: &str) -> f64 {
    (1..=nodes).map(|i| w.metric(i, name, filter)).sum()
}

/// Each broker's node id and relay address.
fn relay_addrs(w: &World, nodes: u8) -> Vec<(String, SocketAddr)> {
    (1..=nodes)
        .map(|i| {
            let port = w.layout().relay_port(u16::from(i));
            (format!("b{i}"), SocketAddr::from(([127, 0, 0, 1], port)))
        })
        .collect()
}

#[test]
fn t34_a_login_storm_for_one_user_verifies_at_most_the_limit_cluster_wide() {
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let w = World::init_brokers(3);
    let nodes: Vec<Proc> = (1..=3).map(|i| w.start_node(i)).collect();
    w.wait_healthy(3);
    w.add_user("alice", "staff", PASSWORD);
    w.add_user("bob", "staff", PASSWORD);
    let brokers = relay_addrs(&w, 3);
    let pids: Vec<u32> = nodes.iter().map(|p| p.pid()).collect();
    let before: Vec<u64> = pids.iter().map(|p| rss_mib(*p)).collect();
    let checks_before = sum_metric(&w, 3, "ferry_password_checks_total", "");

    const ATTEMPTS: usize = 5_000;
    const CONNECTIONS_PER_BROKER: usize = 10;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let peaks = RssPeaks::start(pids.clone());
    let started = Instant::now();
    let answers: BTreeMap<String, usize> = runtime.block_on(async {
        let ep = endpoint_from(&w, "127.0.0.1");
        let mut conns = Vec::new();
        for (node, addr) in &brokers {
            for _ in 0..CONNECTIONS_PER_BROKER {
                let (conn, send, recv) = hello(&ep, *addr, node, Role::Client)
                    .await
                    .expect("the attacker's connection gets past Hello");
                conns.push((conn, send, recv));
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..ATTEMPTS {
            let conn = conns[i % conns.len()].0.clone();
            tasks.spawn(async move {
                match ask(&conn, login("alice", &format!("guess {i}"))).await {
                    Some(wire::ClientResponse {
                        response: Some(client_response::Response::Error(e)),
                    }) => format!("{:?}", e.code()),
                    Some(other) => format!("unexpected {other:?}"),
                    None => "no answer".to_owned(),
                }
            });
        }
        let mut answers = BTreeMap::new();
        while let Some(answer) = tasks.join_next().await {
            *answers.entry(answer.unwrap()).or_insert(0) += 1;
        }
        answers
    });
    let storm = started.elapsed();
    let peaks = peaks.finish();
    let checks = sum_metric(&w, 3, "ferry_password_checks_total", "") - checks_before;
    println!("login storm: {ATTEMPTS} wrong passwords for alice over 3 brokers in {storm:?}: {answers:?}");
    println!("password verifications cluster-wide during the storm: {checks}");
    let refused_by_reason: Vec<(String, f64)> = [
        "login_per_source_user",
        "login_cluster",
        "login_per_user",
        "login_per_source",
        "password_queue",
    ]
    .iter()
    .map(|r| {
        (
            r.to_string(),
            sum_metric(
                &w,
                3,
                "ferry_admission_refused_total",
                &format!("reason=\"{r}\""),
            ),
        )
    })
    .collect();
    println!("refusals by reason: {refused_by_reason:?}");
    // The configured limit: login_failures_max (5) guesses at alice from one source.
    assert!(checks <= 5.0, "{checks} verifications; the limit is 5");
    assert_eq!(
        answers.get("Unauthenticated").copied().unwrap_or(0),
        checks as usize
    );
    assert_eq!(
        answers.values().sum::<usize>(),
        ATTEMPTS,
        "every attempt got an answer: {answers:?}"
    );

    // alice from another address, and bob from the attacker's, log in at once.
    let (alice_took, bob_took) = runtime.block_on(async {
        let mut took = Vec::new();
        for (user, source) in [("alice", "127.0.0.2"), ("bob", "127.0.0.1")] {
            let ep = endpoint_from(&w, source);
            let started = Instant::now();
            let (node, addr) = &brokers[1];
            let (conn, _send, _recv) = hello(&ep, *addr, node, Role::Client).await.unwrap();
            let answer = ask(&conn, login(user, PASSWORD)).await.unwrap();
            let elapsed = started.elapsed();
            assert!(
                matches!(answer.response, Some(client_response::Response::LoginOk(_))),
                "{user} from {source}: {answer:?}"
            );
            took.push(elapsed);
        }
        (took[0], took[1])
    });
    println!(
        "alice from 127.0.0.2 logged in in {alice_took:?}; bob from 127.0.0.1 in {bob_took:?}"
    );
    assert!(alice_took < Duration::from_secs(1) && bob_took < Duration::from_secs(1));
    // A real client too.
    w.login_via(&w.client_config_for(3), "bob", PASSWORD).ok();
    let after: Vec<u64> = pids.iter().map(|p| rss_mib(*p)).collect();
    check_rss("login storm", &before, &peaks, &after, 200);
}

/// Attempts per flood (enrolls, and resumes): `FERRY_T34_FLOOD`, 20,000 by default.
fn flood_size() -> usize {
    std::env::var("FERRY_T34_FLOOD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// One enrollment with a 60 KiB name and a random token, on a connection of its own (the
/// broker closes a host connection whose enrollment it refused).
async fn enroll_once(ep: &quinn::Endpoint, addr: SocketAddr, node: &str, i: usize) -> &'static str {
    let Some((conn, mut send, mut recv)) = hello(ep, addr, node, Role::Host).await else {
        return "no connection";
    };
    let request = wire::HostRequest {
        request: Some(host_request::Request::Enroll(wire::Enroll {
            name: format!("{i}-{}", "n".repeat(60 * 1024)),
            token: format!("{:064x}", rand::random::<u128>()),
        })),
    };
    let answer = match framed::write(&mut send, &request, FrameLimits::default()).await {
        Err(_) => "write failed",
        Ok(()) => {
            match framed::read::<wire::HostResponse, _>(&mut recv, FrameLimits::default()).await {
                Ok(wire::HostResponse {
                    response: Some(wire::host_response::Response::Error(e)),
                }) => match e.code() {
                    ErrorCode::InvalidArgument => "refused: invalid name",
                    ErrorCode::ResourceExhausted => "refused: source locked out",
                    _ => "refused: other",
                },
                Ok(_) => "ENROLLED",
                Err(_) => "no answer",
            }
        }
    };
    conn.close(0u32.into(), b"done");
    answer
}

#[test]
fn t34_enroll_and_resume_floods_add_nothing_per_attempt_to_the_replicated_state() {
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let w = World::init_brokers(3);
    for i in 1..=3 {
        w.set_limit(&format!("b{i}"), "failure_audit_period_secs", "2");
    }
    let nodes: Vec<Proc> = (1..=3).map(|i| w.start_node(i)).collect();
    w.wait_healthy(3);
    let _host = w.alice_reaching(&w.client_config(), "lab-pc", &[("echo", echo_server())]);
    let brokers = relay_addrs(&w, 3);
    let pids: Vec<u32> = nodes.iter().map(|p| p.pid()).collect();
    let audit_before = audit_seqs(&w);
    let before: Vec<u64> = pids.iter().map(|p| rss_mib(*p)).collect();
    let proposals_before = sum_metric(&w, 3, "ferry_proposals_total", "");

    let n = flood_size();
    const WORKERS: usize = 50;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let peaks = RssPeaks::start(pids.clone());
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let resumes_sent = Arc::new(AtomicU64::new(0));
    let flood = {
        let (done, resumes_sent, brokers) = (done.clone(), resumes_sent.clone(), brokers.clone());
        // quinn endpoints are made inside the runtime that drives them.
        let _inside = runtime.enter();
        let eps: Vec<quinn::Endpoint> = (0..WORKERS)
            .map(|k| endpoint_from(&w, &format!("127.0.0.{}", 10 + k)))
            .collect();
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                for (k, ep) in eps.into_iter().enumerate() {
                    let (node, addr) = brokers[k % brokers.len()].clone();
                    let sent = resumes_sent.clone();
                    tasks.spawn(async move {
                        let mut answers: BTreeMap<&'static str, usize> = BTreeMap::new();
                        // Half the workers enroll, half resume.
                        if k % 2 == 0 {
                            for i in 0..n / (WORKERS / 2) {
                                *answers
                                    .entry(enroll_once(&ep, addr, &node, i).await)
                                    .or_default() += 1;
                            }
                        } else {
                            let mut conn = None;
                            for _ in 0..n / (WORKERS / 2) {
                                if conn.is_none() {
                                    conn = hello(&ep, addr, &node, Role::Client).await;
                                }
                                let Some((c, _, _)) = &conn else {
                                    *answers.entry("no connection").or_default() += 1;
                                    continue;
                                };
                                let resume =
                                    client_request::Request::ResumeSession(wire::ResumeSession {
                                        session_id: rand::random::<u64>() >> 1,
                                        resume_secret: format!("{:064x}", rand::random::<u128>()),
                                        received: 0,
                                        written: 0,
                                    });
                                sent.fetch_add(1, Ordering::Relaxed);
                                let answer = match ask(c, resume).await {
                                    Some(wire::ClientResponse {
                                        response: Some(client_response::Response::Error(e)),
                                    }) => match e.code() {
                                        ErrorCode::ResourceExhausted => {
                                            "refused: source locked out"
                                        }
                                        _ => "refused: no such session",
                                    },
                                    Some(_) => "RESUMED",
                                    None => {
                                        conn = None;
                                        "connection lost"
                                    }
                                };
                                *answers.entry(answer).or_default() += 1;
                            }
                        }
                        answers
                    });
                }
                let mut all: BTreeMap<&'static str, usize> = BTreeMap::new();
                while let Some(answers) = tasks.join_next().await {
                    for (k, v) in answers.unwrap() {
                        *all.entry(k).or_default() += v;
                    }
                }
                done.store(true, Ordering::Relaxed);
                all
            })
        })
    };

    // A real session during the flood.
    wait_for("the flood to be under way", Duration::from_secs(30), || {
        (resumes_sent.load(Ordering::Relaxed) > 1000).then_some(())
    });
    let during = Instant::now();
    let out = w.connect_stdio("lab-pc", "echo", "hello through the flood\n");
    let connect_took = during.elapsed();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("hello through the flood"),
        "{}",
        out.stdout
    );
    let flood_was_running = !done.load(Ordering::Relaxed);
    let answers = flood.join().unwrap();
    let flood_took = started.elapsed();
    let peaks = peaks.finish();
    println!("flood of {n} enrolls (60 KiB names) and {n} resumes (random ids) from {WORKERS} sources over 3 brokers in {flood_took:?}: {answers:?}");
    println!("a real `ferry connect` during the flood (still running: {flood_was_running}) echoed in {connect_took:?}");
    assert!(!answers.contains_key("ENROLLED") && !answers.contains_key("RESUMED"));

    // Nothing was proposed per attempt: the summaries (one per node and period), the real
    // session's records and the nodes' own upkeep are all that moved the counter.
    let proposals = sum_metric(&w, 3, "ferry_proposals_total", "") - proposals_before;
    let periods = (flood_took.as_secs() / 2 + 2) * 3;
    println!("proposals during the flood, all nodes: {proposals} (summaries at most {periods}; attempts {})", 2 * n);
    assert!(
        proposals < (periods + 100) as f64,
        "{proposals} proposals for {} anonymous attempts",
        2 * n
    );
    let summary = w.wait_for_audit("auth.failures", &["(invalid name)"]);
    println!("an audit summary: {}", summary["outcome"]);
    let refused: Vec<(String, f64)> = [
        "anonymous_failures_per_source",
        "unauthenticated_per_source",
        "connections_per_source",
    ]
    .iter()
    .map(|r| {
        (
            r.to_string(),
            sum_metric(
                &w,
                3,
                "ferry_admission_refused_total",
                &format!("reason=\"{r}\""),
            ),
        )
    })
    .collect();
    println!("refusals by reason: {refused:?}");
    let audit_after = audit_seqs(&w);
    let kept = audit_before
        .iter()
        .filter(|s| audit_after.contains(s))
        .count();
    println!(
        "audit records from before the flood still there: {kept} of {}",
        audit_before.len()
    );
    assert_eq!(kept, audit_before.len());
    let after: Vec<u64> = pids.iter().map(|p| rss_mib(*p)).collect();
    check_rss("enroll and resume flood", &before, &peaks, &after, 64);
}

/// The sequence numbers of every audit record the cluster holds.
fn audit_seqs(w: &World) -> std::collections::BTreeSet<u64> {
    // The first page, oldest first: the records from before a flood, unless it pushed them out.
    let out = w.admin(&["audit", "--json"]).ok();
    let audit: serde_json::Value = serde_json::from_str(&out).unwrap();
    audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .collect()
}

#[test]
fn t34_stalled_handshakes_and_idle_connections_from_one_source_shut_no_one_out() {
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let w = World::init();
    let broker = w.start_broker();
    w.add_user("alice", "staff", PASSWORD);
    w.admin(&["grant", "staff", "lab"]).ok();
    let token = w.enroll("lab-pc", "lab");
    let relay = w.relay_addr();
    let before = vec![broker.rss_kib() / 1024];
    let peaks = RssPeaks::start(vec![broker.pid()]);
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // 2,000 handshakes that never finish: their Initial packets reach the broker through a
    // relay that drops every answer.
    const STALLED: usize = 2_000;
    const IDLE: usize = 5_000;
    let (stalled_ep, idle_held) = runtime.block_on(async {
        let hole = tokio::net::UdpSocket::bind("127.0.0.7:0").await.unwrap();
        let hole_addr = hole.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = hole.recv_from(&mut buf).await {
                if from != relay {
                    let _ = hole.send_to(&buf[..n], relay).await;
                }
            }
        });
        let ep = endpoint_from(&w, "127.0.0.7");
        for _ in 0..STALLED {
            let connecting = ep.connect(hole_addr, "b1").unwrap();
            tokio::spawn(async move {
                let _ = connecting.await;
            });
        }
        // 5,000 connections past Hello from another source, each writing into its control
        // stream and then idling.
        let idle_ep = endpoint_from(&w, "127.0.0.8");
        let mut tasks = tokio::task::JoinSet::new();
        let limit = Arc::new(tokio::sync::Semaphore::new(256));
        for _ in 0..IDLE {
            let (ep, permit) = (
                idle_ep.clone(),
                limit.clone().acquire_owned().await.unwrap(),
            );
            tasks.spawn(async move {
                let _permit = permit;
                let (conn, mut send, recv) = hello(&ep, relay, "b1", Role::Client).await?;
                send.write_all(&[0u8; 16 * 1024]).await.ok()?;
                Some((conn, send, recv))
            });
        }
        let mut held = Vec::new();
        while let Some(r) = tasks.join_next().await {
            held.extend(r.unwrap());
        }
        (ep, held)
    });
    println!(
        "{STALLED} stalled handshakes from 127.0.0.7; {} of {IDLE} connections from 127.0.0.8 got past Hello and idle",
        idle_held.len()
    );

    // A real host attaches, a client logs in and connects, while all that is held.
    let started = Instant::now();
    let _host = w.start_host("lab-pc", Some(&token), &[("echo", echo_server())]);
    let host_took = started.elapsed();
    let started = Instant::now();
    w.login("alice", PASSWORD).ok();
    let out = w.connect_stdio("lab-pc", "echo", "still serving\n");
    let client_took = started.elapsed();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("still serving"));
    println!("a real host attached in {host_took:?}; a client logged in and connected in {client_took:?}");
    let peaks = peaks.finish();
    let reasons = [
        "unauthenticated_per_source",
        "unauthenticated_max",
        "connections_per_source",
        "address_validation_retry",
        "authenticate_timeout",
    ];
    for reason in reasons {
        println!(
            "refused {reason}: admission {} / connections {}",
            w.metric(
                1,
                "ferry_admission_refused_total",
                &format!("reason=\"{reason}\"")
            ),
            w.metric(
                1,
                "ferry_connections_refused_total",
                &format!("reason=\"{reason}\"")
            )
        );
    }
    assert!(
        w.metric(
            1,
            "ferry_connections_refused_total",
            "reason=\"unauthenticated_per_source\""
        ) > 0.0
    );
    assert!(
        host_took < Duration::from_secs(2),
        "the host took {host_took:?} to attach"
    );
    assert!(
        client_took < Duration::from_secs(2),
        "the client took {client_took:?}"
    );
    drop((stalled_ep, idle_held));
    let after = vec![broker.rss_kib() / 1024];
    check_rss("stalled and idle connections", &before, &peaks, &after, 256);
}
