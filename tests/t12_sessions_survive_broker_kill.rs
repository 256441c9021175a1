//! Issue 3/8, acceptance 1, 2 and 4: while 1 GiB flows each way through a forwarded port, the
//! broker carrying the session is killed with SIGKILL. The endpoints resume the session through
//! another broker: the transfer completes with identical SHA-256 digests, the local TCP
//! connections at both ends never see a reset or an early end, and the longest stall is
//! printed (docs/DESIGN.md, P7; its first goal was at most 3 s). An interactive session (small
//! messages both ways, like a terminal) survives the same crash with every message delivered
//! once, in order.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Bytes each way; `FERRY_E2E_TRANSFER_BYTES` overrides it for quick local runs.
fn transfer_bytes() -> u64 {
    std::env::var("FERRY_E2E_TRANSFER_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30)
}

/// A cluster with user alice granted host lab-pc, whose agent exposes a duplex transfer service
/// and an echo service through broker b`host_on`; the client forwards through b`client_on`.
struct Setup {
    w: World,
    nodes: Vec<Option<Proc>>,
    _host: Proc,
    service: std::sync::mpsc::Receiver<TransferEnd>,
    service_progress: std::sync::Arc<std::sync::atomic::AtomicU64>,
    bulk: (Proc, SocketAddr),
    chat: (Proc, SocketAddr),
}

fn setup(brokers: u8, witnesses: u8, host_on: u8, client_on: u8, len: u64) -> Setup {
    let w = World::init_cluster(brokers, witnesses);
    let mut nodes: Vec<Option<Proc>> = (1..=brokers).map(|i| Some(w.start_node(i))).collect();
    for j in 1..=witnesses {
        nodes.push(Some(w.start_named(&format!("w{j}"), brokers + j)));
    }
    w.add_user("alice", "staff", "correct horse battery");
    let token = w.enroll("lab-pc", "lab");
    w.admin(&["grant", "staff", "lab"]).ok();
    let (service_addr, service, service_progress) = duplex_service(len, 2, None);
    let echo = echo_server();
    let host = w.start_host_via(
        &w.client_config_for(host_on),
        "lab-pc",
        Some(&token),
        &[("bulk", service_addr), ("chat", echo)],
    );
    let client_config = w.client_config_for(client_on);
    w.login_via(&client_config, "alice", "correct horse battery")
        .ok();
    let bulk = w.forward_via(&client_config, "lab-pc", "bulk");
    let chat = w.forward_via(&client_config, "lab-pc", "chat");
    Setup {
        w,
        nodes,
        _host: host,
        service,
        service_progress,
        bulk,
        chat,
    }
}

/// Sends numbered lines every few milliseconds until `stop`, reading the echoes; returns the
/// lines sent and the lines received (which must be equal: once each, in order).
fn chat(
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (Vec<String>, Vec<String>) {
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut sent = Vec::new();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            let line = format!("keystroke {n}");
            writer.write_all(format!("{line}\n").as_bytes()).unwrap();
            sent.push(line);
            n += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        writer.shutdown(std::net::Shutdown::Write).unwrap();
        sent
    });
    let mut received = Vec::new();
    for line in BufReader::new(stream).lines() {
        received.push(line.expect("the chat connection never fails"));
    }
    (sender.join().unwrap(), received)
}

/// Runs the transfer and the chat, kills node `victim` (index into `nodes`, from 1) once a
/// quarter of the bytes went through, and checks everything arrived intact.
fn kill_mid_transfer(mut s: Setup, victim: u8, len: u64, label: &str) {
    let stop_chat = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let chat_addr = s.chat.1;
    let chatter = {
        let stop = stop_chat.clone();
        std::thread::spawn(move || chat(chat_addr, stop))
    };
    let started = Instant::now();
    let client = duplex_client(s.bulk.1, len, 1, None);
    wait_for(
        "a quarter of the transfer",
        Duration::from_secs(120),
        || (s.service_progress.load(Ordering::Relaxed) >= len / 4).then_some(()),
    );
    let mut victim_proc = s.nodes[usize::from(victim) - 1].take().unwrap();
    let name = victim_proc.name.clone();
    victim_proc.kill();
    let killed_at = Instant::now();
    eprintln!(
        "{label}: killed {name} (SIGKILL) {:?} into the transfer",
        started.elapsed()
    );

    let client_end = client.join().unwrap();
    let service_end = s
        .service
        .recv_timeout(Duration::from_secs(120))
        .expect("the service side finished");
    // Keep chatting for a moment after the transfer, then check every line came back once.
    std::thread::sleep(Duration::from_millis(200));
    stop_chat.store(true, Ordering::Relaxed);
    let (sent_lines, echoed) = chatter.join().unwrap();
    let stall = client_end.longest_gap.max(service_end.longest_gap);
    eprintln!(
        "{label}: transfer of {len} bytes each way done {:?} after the kill; longest stall \
         {:?} (client side {:?}, host side {:?}); {} chat lines echoed",
        killed_at.elapsed(),
        stall,
        client_end.longest_gap,
        service_end.longest_gap,
        echoed.len()
    );
    assert_eq!(
        client_end.error, None,
        "the client's local connection saw no error"
    );
    assert_eq!(
        service_end.error, None,
        "the service's local connection saw no error"
    );
    assert_eq!(client_end.received_bytes, len);
    assert_eq!(service_end.received_bytes, len);
    assert_eq!(
        client_end.sent, service_end.received,
        "client to host: identical SHA-256"
    );
    assert_eq!(
        service_end.sent, client_end.received,
        "host to client: identical SHA-256"
    );
    assert!(sent_lines.len() > 10, "the chat ran");
    assert_eq!(
        echoed, sent_lines,
        "every chat message came back exactly once, in order"
    );
    // Stated for the record; the bound is P7's (docs/DESIGN.md), measured by `ferry bench
    // failover`.
    assert!(
        stall < Duration::from_secs(10),
        "a stall of {stall:?} means the session was not resumed promptly"
    );
    let survivors: Vec<u8> = (1..=s.nodes.len() as u8)
        .filter(|i| s.nodes[usize::from(*i) - 1].is_some())
        .collect();
    let resumed: f64 = survivors
        .iter()
        .map(|&i| s.w.metric(i, "ferry_sessions_resumed_total", ""))
        .sum();
    assert!(
        resumed >= 2.0,
        "both sessions were resumed, metrics say {resumed}"
    );
}

#[test]
fn t12_pair_with_witness_broker_killed_under_a_1_gib_transfer() {
    let len = transfer_bytes();
    let s = setup(2, 1, 1, 1, len);
    kill_mid_transfer(s, 1, len, "pair");
}

#[test]
fn t12_three_brokers_broker_killed_under_a_1_gib_transfer() {
    let len = transfer_bytes();
    let s = setup(3, 0, 2, 2, len);
    kill_mid_transfer(s, 2, len, "three brokers");
}

#[test]
fn t12_host_and_client_on_different_brokers_client_side_killed() {
    let len = transfer_bytes();
    let s = setup(3, 0, 2, 1, len);
    kill_mid_transfer(s, 1, len, "client's broker");
}

#[test]
fn t12_host_and_client_on_different_brokers_host_side_killed() {
    let len = transfer_bytes();
    let s = setup(3, 0, 2, 1, len);
    kill_mid_transfer(s, 2, len, "host's broker");
}
