//! Issue 10/12, acceptance 4: random bytes, truncated and oversized frames, and deeply nested
//! protobuf groups at every port of a node — the relay port (as a client and as a host), the
//! peer port (holding a valid node certificate) and the admin API — close the offending
//! connection with a reason (or answer an HTTP error), panic nothing, and take no node down.
//! The test counts what it sent and what it was told.

mod common;
use common::*;
use ferry_proto::frame::FrameLimits;
use ferry_proto::wire::{self, Role};
use ferry_transport::{close, endpoint, framed, tls};
use prost::Message as _;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// Times each kind of bad input is sent.
const ROUNDS: usize = 10;

/// Protobuf groups nested `depth` deep (field 1, start and end group): prost stops at its
/// recursion limit; rust-protobuf 2 would recurse once per level (RUSTSEC-2024-0437).
fn nested_groups(depth: usize) -> Vec<u8> {
    let mut bytes = vec![0x0b; depth];
    bytes.extend(std::iter::repeat_n(0x0c, depth));
    bytes
}

/// A frame (4-byte length, then `payload`).
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn random_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random::<u8>()).collect()
}

/// The close reason of `conn`, once it closes (within 15 s).
async fn closed(conn: &quinn::Connection) -> String {
    match tokio::time::timeout(Duration::from_secs(15), conn.closed()).await {
        Ok(error) => close::describe(&error),
        Err(_) => "NOT CLOSED".into(),
    }
}

/// Bad input on the relay port: the bytes of a first stream (`before_hello`: instead of
/// `Hello`), or of a second stream after a valid `Hello` as `role`.
async fn relay_case(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    role: Option<Role>,
    bytes: Vec<u8>,
) -> String {
    let Ok(connecting) = ep.connect(addr, "b1") else {
        return "no connection".into();
    };
    let Ok(conn) = connecting.await else {
        return "no connection".into();
    };
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut _control = None;
    if let Some(role) = role {
        let hello = wire::Hello {
            protocol_version: ferry_proto::PROTOCOL_VERSION,
            role: role as i32,
            software: "t36".into(),
        };
        framed::write(&mut send, &hello, FrameLimits::default())
            .await
            .unwrap();
        let _: wire::HelloReply = framed::read(&mut recv, FrameLimits::default())
            .await
            .unwrap();
        _control = Some((send, recv));
        if role == Role::Client {
            let (mut s, _r) = conn.open_bi().await.unwrap();
            let _ = s.write_all(&bytes).await;
            let _ = s.finish();
            return closed(&conn).await;
        }
        // A host sends its requests on the control stream.
        let (send, _) = _control.as_mut().unwrap();
        let _ = send.write_all(&bytes).await;
        let _ = send.finish();
        return closed(&conn).await;
    }
    let _ = send.write_all(&bytes).await;
    let _ = send.finish();
    closed(&conn).await
}

/// Bad input on the peer port, as node b3 (its own certificate and key): on a Raft message
/// stream (`uni`) or a request stream.
async fn peer_case(w: &World, addr: SocketAddr, uni: bool, bytes: Vec<u8>) -> String {
    let cluster = w.cluster();
    let identity = tls::Identity::load(&cluster.join("b3.pem"), &cluster.join("b3.key")).unwrap();
    let trust = tls::Trust::load(&cluster.join("ca.pem")).unwrap();
    let limits = endpoint::Limits {
        uni_streams_per_connection_max: 16,
        ..Default::default()
    };
    let ep = endpoint::peer("127.0.0.1:0".parse().unwrap(), identity, &trust, &limits).unwrap();
    let conn = match ep.connect(addr, "b1").unwrap().await {
        Ok(conn) => conn,
        Err(e) => return format!("no connection: {e}"),
    };
    if uni {
        let mut s = conn.open_uni().await.unwrap();
        let _ = s.write_all(&bytes).await;
        let _ = s.finish();
    } else {
        let (mut s, _r) = conn.open_bi().await.unwrap();
        let _ = s.write_all(&bytes).await;
        let _ = s.finish();
    }
    closed(&conn).await
}

/// Bytes sent raw to the admin API's TCP port; the first line of the answer, or how it ended.
fn admin_case(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) if answer.is_empty() => "closed without an answer".into(),
        Ok(_) => String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
        Err(e) => format!("read failed: {e}"),
    }
}

/// Keeps the part of a close reason that names what happened (not the sizes it quotes).
fn kind_of(reason: &str) -> String {
    let cut = reason
        .find("frame of ")
        .map_or(reason.len(), |at| at + "frame of".len());
    reason[..cut].chars().take(90).collect()
}

#[test]
fn t36_bad_bytes_at_every_port_close_that_connection_and_harm_no_node() {
    let w = World::init_brokers(3);
    let nodes: Vec<Proc> = (1..=3).map(|i| w.start_node(i)).collect();
    w.wait_healthy(3);
    let layout = w.layout();
    let relay: SocketAddr = SocketAddr::from(([127, 0, 0, 1], layout.relay_port(1)));
    let peer: SocketAddr = SocketAddr::from(([127, 0, 0, 1], layout.peer_port(1)));
    let admin: SocketAddr = SocketAddr::from(([127, 0, 0, 1], layout.admin_port(1)));
    let token = std::fs::read_to_string(w.cluster().join("admin.token")).unwrap();

    let nested_hello = frame(&nested_groups(10_000));
    let nested_raft = frame(
        &ferry_proto::peer::RaftMessage {
            message: nested_groups(10_000),
        }
        .encode_to_vec(),
    );
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&[0x0a; 10]);
    let oversized = u32::MAX.to_be_bytes().to_vec();

    let mut told: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut sent = 0usize;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let trust = tls::Trust::load(&w.cluster().join("ca.pem")).unwrap();
        let ep = endpoint::client(&trust, &endpoint::Limits::default()).unwrap();
        for _ in 0..ROUNDS {
            let cases: Vec<(&str, Option<Role>, Vec<u8>)> = vec![
                ("relay: random bytes", None, random_bytes(2000)),
                ("relay: truncated frame", None, truncated.clone()),
                ("relay: oversized frame", None, oversized.clone()),
                ("relay: nested groups", None, nested_hello.clone()),
                (
                    "relay client: random bytes",
                    Some(Role::Client),
                    random_bytes(2000),
                ),
                (
                    "relay client: nested groups",
                    Some(Role::Client),
                    nested_hello.clone(),
                ),
                (
                    "relay client: truncated",
                    Some(Role::Client),
                    truncated.clone(),
                ),
                (
                    "relay host: nested groups",
                    Some(Role::Host),
                    nested_hello.clone(),
                ),
                ("relay host: oversized", Some(Role::Host), oversized.clone()),
            ];
            for (label, role, bytes) in cases {
                sent += 1;
                let reason = relay_case(&ep, relay, role, bytes).await;
                *told
                    .entry(label.into())
                    .or_default()
                    .entry(kind_of(&reason))
                    .or_default() += 1;
            }
            let peer_cases: Vec<(&str, bool, Vec<u8>)> = vec![
                ("peer raft stream: nested groups", true, nested_raft.clone()),
                ("peer raft stream: oversized", true, oversized.clone()),
                ("peer raft stream: random bytes", true, random_bytes(2000)),
                ("peer request: nested groups", false, nested_hello.clone()),
                ("peer request: random bytes", false, random_bytes(2000)),
            ];
            for (label, uni, bytes) in peer_cases {
                sent += 1;
                let reason = peer_case(&w, peer, uni, bytes).await;
                *told
                    .entry(label.into())
                    .or_default()
                    .entry(kind_of(&reason))
                    .or_default() += 1;
            }
        }
    });
    let nested_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for _ in 0..ROUNDS {
        let admin_cases: Vec<(&str, Vec<u8>)> = vec![
            ("admin: random bytes", random_bytes(2000)),
            (
                "admin: nested JSON body",
                format!(
                    "POST /v1/users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{nested_json}",
                    token.trim(),
                    nested_json.len()
                )
                .into_bytes(),
            ),
            (
                "admin: oversized header",
                format!("GET /v1/users HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\n\r\n", "a".repeat(200_000))
                    .into_bytes(),
            ),
            (
                "admin: truncated request",
                b"POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"na".to_vec(),
            ),
        ];
        for (label, bytes) in admin_cases {
            sent += 1;
            let answer = admin_case(admin, &bytes);
            *told
                .entry(label.into())
                .or_default()
                .entry(answer)
                .or_default() += 1;
        }
    }
    println!("sent {sent} bad inputs; what each kind was told:");
    for (label, answers) in &told {
        println!("  {label}: {answers:?}");
    }
    for (label, answers) in &told {
        assert!(
            !answers.contains_key("NOT CLOSED"),
            "{label}: a connection stayed open: {answers:?}"
        );
        if label.starts_with("relay") {
            assert!(
                answers.keys().all(|k| k.contains("protocol error")),
                "{label}: closed without a protocol error: {answers:?}"
            );
        }
        if label.starts_with("peer") {
            assert!(
                answers
                    .keys()
                    .all(|k| k.contains("protocol error from peer b3")),
                "{label}: {answers:?}"
            );
        }
        if label.starts_with("admin") {
            assert!(
                answers
                    .keys()
                    .all(|k| k.starts_with("HTTP/1.1 4") || k.contains("closed")),
                "{label}: {answers:?}"
            );
        }
    }
    // Every node still serves, and none panicked.
    for i in 1..=3u8 {
        let (code, _) = http_get(&format!("{}/readyz", w.admin_url_of(i))).unwrap_or_default();
        assert_eq!(code, 200, "b{i} is not ready after the bad input");
    }
    w.wait_healthy(3);
    for node in &nodes {
        assert!(!node.log_text().contains("panicked"), "{}", node.log_text());
    }
    let errors: Vec<String> = ["malformed_frame", "oversized_frame", "truncated_frame"]
        .iter()
        .map(|r| {
            format!(
                "{r}={}",
                w.metric(1, "ferry_protocol_errors_total", &format!("reason=\"{r}\""))
            )
        })
        .collect();
    println!("b1 protocol errors: {}", errors.join(", "));
}
