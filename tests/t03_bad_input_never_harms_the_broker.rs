//! Acceptance 1/8 item 3 (bad input): garbage, oversized frames and an unknown protocol version
//! close that connection with a reason the other side can print; the broker keeps serving and
//! its memory stays bounded.

mod common;
use common::*;
use ferry_proto::frame::FrameLimits;
use ferry_proto::wire;
use ferry_transport::{close, endpoint, framed, tls};
use std::time::Duration;

async fn close_reason(ep: &quinn::Endpoint, w: &World, bytes: &[u8]) -> String {
    let conn = ep
        .connect(w.relay_addr(), "b1")
        .unwrap()
        .await
        .expect("TLS handshake with the broker");
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    let error = tokio::time::timeout(Duration::from_secs(15), conn.closed())
        .await
        .expect("the broker closes a connection that sends bad frames");
    close::describe(&error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t03_garbage_oversized_and_wrong_version_close_only_that_connection() {
    let w = World::init();
    let broker = w.start_broker();
    w.add_user("alice", "staff", "correct horse battery");
    let trust = tls::Trust::load(&w.cluster().join("ca.pem")).unwrap();
    let ep = endpoint::client(&trust, &endpoint::Limits::default()).unwrap();

    let reason = close_reason(&ep, &w, &[0, 0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).await;
    assert!(
        reason.contains("protocol error: malformed Hello frame"),
        "{reason}"
    );

    let reason = close_reason(&ep, &w, &u32::MAX.to_be_bytes()).await;
    assert!(
        reason.contains("frame of 4294967295 bytes exceeds the maximum of 65536 bytes"),
        "{reason}"
    );

    // A well-formed Hello of a protocol version the broker does not speak.
    let hello = wire::Hello {
        protocol_version: 99,
        role: wire::Role::Client as i32,
        software: "future".into(),
    };
    let frame = ferry_proto::frame::encode(&hello, FrameLimits::default()).unwrap();
    let conn = ep.connect(w.relay_addr(), "b1").unwrap().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&frame).await.unwrap();
    let reply: wire::HelloReply = framed::read(&mut recv, FrameLimits::default())
        .await
        .unwrap();
    let Some(wire::hello_reply::Reply::Error(e)) = reply.reply else {
        panic!("expected an error reply")
    };
    assert!(
        e.message.contains("unsupported protocol version 99"),
        "{}",
        e.message
    );
    let reason = close::describe(
        &tokio::time::timeout(Duration::from_secs(15), conn.closed())
            .await
            .unwrap(),
    );
    assert!(
        reason.contains("unsupported protocol version 99"),
        "{reason}"
    );

    // Memory stays bounded under a burst of hostile connections, each claiming a huge frame and
    // sending junk after it, plus a flood of junk UDP datagrams at the QUIC port.
    let before = broker.rss_kib();
    let mut junk_frame = u32::MAX.to_be_bytes().to_vec();
    junk_frame.extend(std::iter::repeat_n(0xab, 60_000));
    let attacks: Vec<_> = (0..200)
        .map(|_| {
            let (ep, addr, junk) = (ep.clone(), w.relay_addr(), junk_frame.clone());
            tokio::spawn(async move {
                let conn = ep.connect(addr, "b1").unwrap().await?;
                let (mut send, _recv) = conn.open_bi().await?;
                let _ = send.write_all(&junk).await;
                let _ = tokio::time::timeout(Duration::from_secs(15), conn.closed()).await;
                Ok::<_, quinn::ConnectionError>(())
            })
        })
        .collect();
    for attack in attacks {
        let _ = attack.await.unwrap();
    }
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..5_000u32 {
        let datagram: Vec<u8> = (0..1200).map(|j| (i.wrapping_mul(31) ^ j) as u8).collect();
        let _ = udp.send_to(&datagram, w.relay_addr());
    }
    let after = broker.rss_kib();
    assert!(
        after < before + 64 * 1024,
        "broker RSS grew from {before} KiB to {after} KiB under hostile input"
    );

    // The broker is unharmed: it still logs users in and counts what it refused.
    w.login("alice", "correct horse battery").ok();
    let (code, metrics) = http_get(&format!("{}/metrics", w.admin_url())).unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("ferry_protocol_errors_total{node=\"b1\",reason=\"oversized_frame\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("reason=\"malformed_frame\""), "{metrics}");
}
