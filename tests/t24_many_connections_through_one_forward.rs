//! Issue 6/12, many connections through one forward: a browser or a database pool opens
//! hundreds of connections at once through `ferry connect --listen`. Every one of 2,000
//! concurrent local connections gets its echo (the forward opens further QUIC connections to
//! the broker when one runs out of streams); past `--max-sessions`, a connection is closed at
//! once and the forward says why. None waits without an answer.

mod common;
use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// How each local connection ended.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    /// Its line came back.
    echoed: usize,
    /// Closed (or reset) without an echo: refused.
    refused: usize,
    /// Neither within the deadline: the failure this test exists for.
    hung: usize,
}

/// Opens `n` connections to `addr` at once, each sending one line; every connection stays
/// open until all have answered, so that all `n` sessions are live together. A refused one
/// must also be told fast: the slowest refusal is returned.
fn connect_many(addr: std::net::SocketAddr, n: usize) -> (Counts, Duration) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let attempts = (0..n).map(|i| async move {
            let started = Instant::now();
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (read, mut write) = stream.into_split();
            let line = format!("connection {i}\n");
            if write.write_all(line.as_bytes()).await.is_err() {
                return (2, started.elapsed(), None);
            }
            let mut reader = BufReader::new(read);
            let mut got = String::new();
            let answer = tokio::time::timeout(Duration::from_secs(20), reader.read_line(&mut got));
            let kind = match answer.await {
                Ok(Ok(_)) if got == line => 1,
                Ok(_) => 2,
                Err(_) => 3,
            };
            (kind, started.elapsed(), Some((reader, write)))
        });
        let results = futures_join_all(attempts.collect()).await;
        let mut counts = Counts::default();
        let mut slowest_refusal = Duration::ZERO;
        for (kind, took, _held) in &results {
            match kind {
                1 => counts.echoed += 1,
                2 => {
                    counts.refused += 1;
                    slowest_refusal = slowest_refusal.max(*took);
                }
                _ => counts.hung += 1,
            }
        }
        (counts, slowest_refusal)
    })
}

/// Runs futures concurrently (without a dependency for `join_all`).
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: Vec<F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("no task panics"));
    }
    out
}

/// One broker, host lab-pc exposing an echo service, alice logged in.
fn world() -> (World, Proc, Proc) {
    let w = World::init();
    let broker = w.start_broker();
    let host = w.alice_reaching(&w.client_config(), "lab-pc", &[("echo", echo_server())]);
    (w, broker, host)
}

#[test]
fn t24_two_thousand_concurrent_connections_through_one_forward_all_echo() {
    let (w, _broker, _host) = world();
    let (forward, addr) = w.forward("lab-pc", "echo");
    let started = Instant::now();
    let (counts, _) = connect_many(addr, 2_000);
    eprintln!("2000 connections: {counts:?} in {:?}", started.elapsed());
    assert_eq!(
        counts,
        Counts {
            echoed: 2_000,
            refused: 0,
            hung: 0
        },
        "{}",
        forward.log_text()
    );
    // One QUIC connection carries about 255 sessions: the forward opened more.
    let accepted = w.metric(1, "ferry_connections_accepted_total", "");
    eprintln!("the broker accepted {accepted} QUIC connections");
    assert!(accepted >= 8.0, "2000 sessions need 8 or more connections");
}

#[test]
fn t24_past_max_sessions_a_connection_is_refused_at_once_with_the_reason() {
    let (w, _broker, _host) = world();
    let config = w.client_config();
    let (forward, addr) = w.forward_with(&config, "lab-pc", "echo", &["--max-sessions", "300"]);
    let (counts, slowest_refusal) = connect_many(addr, 400);
    eprintln!("400 connections, limit 300: {counts:?}; slowest refusal {slowest_refusal:?}");
    assert_eq!(
        counts,
        Counts {
            echoed: 300,
            refused: 100,
            hung: 0
        },
        "{}",
        forward.log_text()
    );
    assert!(
        slowest_refusal < Duration::from_secs(5),
        "refused at once, not after {slowest_refusal:?}"
    );
    assert!(
        forward
            .log_text()
            .contains("refusing local connection: 300 already forwarded (--max-sessions)"),
        "{}",
        forward.log_text()
    );
}
