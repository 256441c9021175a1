//! Seeded two-way traffic over live sessions. Each direction of each session carries its own
//! seeded byte stream, paced or as fast as flow control allows; its receiving side checks
//! every byte and records when it read (see [`crate::stall::Reads`]), so that a stall and any
//! lost, duplicated or reordered byte show up afterwards.
//!
//! The client side of session `i` is an in-memory pipe (as a local TCP connection would be)
//! that first sends `i` as an 8-byte header; the service behind the host agent reads it to
//! know which streams to check and send on that connection.

use crate::stall::Reads;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How fast each direction of each session sends.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as the session's flow control allows.
    Unlimited,
    /// About this many bytes per second, written every [`PACE_INTERVAL`].
    BytesPerSecond(u64),
}

/// Interval between a paced sender's writes; the steady-state gap between reads is about this.
pub const PACE_INTERVAL: Duration = Duration::from_millis(10);
/// Largest paced rate: one write per interval of at most 1 MiB.
pub const PACED_BYTES_PER_SECOND_MAX: u64 = 100 << 20;
/// Size of each write of an unpaced sender.
const UNPACED_WRITE_BYTES: usize = 16 * 1024;
/// Receive buffer of each direction.
const READ_BYTES: usize = 64 * 1024;
/// Buffer of the in-memory pipe standing in for a session's local TCP connection.
const LOCAL_PIPE_BYTES: usize = 256 * 1024;
/// The session index that precedes the client's stream on each session.
const HEADER_BYTES: usize = 8;
/// How long the service waits for a new connection's header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a sender may take to end its stream once told to stop.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Base of every stream's seed (any value; fixed so that a failing byte can be reproduced).
const SEED: u64 = 0x5eed_f077_0000_0000;

/// Which way a stream flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to the service behind the host.
    Up = 0,
    /// Service to client.
    Down = 1,
}

/// One direction of one session, shared by its sending and receiving tasks and the scenario.
#[derive(Default)]
struct Flow {
    /// Bytes its sender has handed to its side of the session.
    sent_bytes: AtomicU64,
    /// Latest read, µs since the epoch (0: none yet); for waiting until traffic flows again.
    last_read_us: AtomicU64,
    /// Why its sender stopped early, if it did.
    send_error: Mutex<Option<String>>,
    /// What its receiver saw; set once, when the receiver is done.
    received: Mutex<Option<Received>>,
}

/// What a receiving side saw.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// Bytes received and found to be the expected ones.
    pub bytes: u64,
    pub reads: Reads,
    /// A wrong byte, a read error, or no end of stream in time.
    pub error: Option<String>,
}

/// One direction of one session, at the end.
#[derive(Debug, Clone)]
pub struct FlowResult {
    pub sent_bytes: u64,
    pub received: Received,
    pub send_error: Option<String>,
}

impl FlowResult {
    /// Bytes sent but not received intact.
    pub fn lost_bytes(&self) -> u64 {
        self.sent_bytes.saturating_sub(self.received.bytes)
    }

    pub fn error(&self) -> Option<&str> {
        self.send_error
            .as_deref()
            .or(self.received.error.as_deref())
    }
}

/// The traffic of every session: its flows, and the signals that end it.
pub struct Traffic {
    /// Time zero of every recorded time.
    epoch: Instant,
    pace: Pace,
    /// `flows[i][Direction as usize]`.
    flows: Vec<[Arc<Flow>; 2]>,
    /// Connections the service accepted for each session (exactly one is right: a resumed
    /// session keeps its connection to the service).
    connections: Vec<AtomicU32>,
    /// Senders stop and end their streams once this is true.
    stop: watch::Sender<bool>,
    /// Receivers stop waiting for the end of their stream once this is true.
    give_up: watch::Sender<bool>,
}

impl Traffic {
    pub fn new(sessions: usize, pace: Pace) -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            pace,
            flows: (0..sessions).map(|_| Default::default()).collect(),
            connections: (0..sessions).map(|_| AtomicU32::new(0)).collect(),
            stop: watch::channel(false).0,
            give_up: watch::channel(false).0,
        })
    }

    /// `t` in µs since the epoch.
    pub fn us(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// Starts the service the host agent exposes, on a free loopback port.
    pub async fn start_service(self: &Arc<Self>) -> anyhow::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(self.clone().serve(listener));
        Ok(addr)
    }

    async fn serve(self: Arc<Self>, listener: TcpListener) {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(self.clone().serve_one(tcp));
        }
    }

    async fn serve_one(self: Arc<Self>, tcp: TcpStream) {
        let _ = tcp.set_nodelay(true);
        let (mut read, write) = tcp.into_split();
        let mut header = [0u8; HEADER_BYTES];
        let index = match tokio::time::timeout(HEADER_TIMEOUT, read.read_exact(&mut header)).await {
            Ok(Ok(_)) => u64::from_le_bytes(header) as usize,
            _ => {
                eprintln!("bench service: a connection sent no session header; closed");
                return;
            }
        };
        let Some(flows) = self.flows.get(index) else {
            eprintln!("bench service: a connection named session {index}, which does not exist");
            return;
        };
        if self.connections[index].fetch_add(1, Ordering::Relaxed) > 0 {
            eprintln!(
                "bench service: session {index} connected again; only its first connection counts"
            );
            return;
        }
        let up = flows[Direction::Up as usize].clone();
        let down = flows[Direction::Down as usize].clone();
        tokio::spawn(
            self.clone()
                .receive(up, pattern(index, Direction::Up), read),
        );
        tokio::spawn(self.send(down, pattern(index, Direction::Down), write, None));
    }

    /// Starts session `index`'s client side; returns the session's local ends, for
    /// `SessionOpener::carry`.
    pub fn start_client(
        self: &Arc<Self>,
        index: usize,
    ) -> (ReadHalf<DuplexStream>, WriteHalf<DuplexStream>) {
        let (app, local) = tokio::io::duplex(LOCAL_PIPE_BYTES);
        let (app_read, app_write) = tokio::io::split(app);
        let flows = &self.flows[index];
        tokio::spawn(self.clone().send(
            flows[Direction::Up as usize].clone(),
            pattern(index, Direction::Up),
            app_write,
            Some((index as u64).to_le_bytes()),
        ));
        tokio::spawn(self.clone().receive(
            flows[Direction::Down as usize].clone(),
            pattern(index, Direction::Down),
            app_read,
        ));
        tokio::io::split(local)
    }

    /// How many directions (of all sessions) have not read since `t`.
    pub fn flows_not_read_since(&self, t: Instant) -> usize {
        let t = self.us(t);
        self.flows
            .iter()
            .flatten()
            .filter(|f| f.last_read_us.load(Ordering::Relaxed) <= t)
            .count()
    }

    /// Tells every sender to stop and end its stream.
    pub fn stop_sending(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until every receiver has seen its end of stream (or `deadline` passes, when the
    /// rest are told to give up), then returns every flow's result, `[up, down]` per session.
    pub async fn finish(&self, deadline: Duration) -> Vec<[FlowResult; 2]> {
        let done = || {
            self.flows
                .iter()
                .flatten()
                .all(|f| lock(&f.received).is_some())
        };
        let start = Instant::now();
        while !done() && start.elapsed() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.give_up.send_replace(true);
        /// Time for receivers that were told to give up to record why.
        const GIVE_UP_GRACE: Duration = Duration::from_secs(2);
        let start = Instant::now();
        while !done() && start.elapsed() < GIVE_UP_GRACE {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.flows
            .iter()
            .enumerate()
            .map(|(i, flows)| {
                [Direction::Up, Direction::Down].map(|d| {
                    let flow = &flows[d as usize];
                    let received = lock(&flow.received).clone().unwrap_or_else(|| Received {
                        error: Some(match (d, self.connections[i].load(Ordering::Relaxed)) {
                            (Direction::Up, 0) => "the service never saw this session".into(),
                            _ => "its receiver never finished".into(),
                        }),
                        ..Default::default()
                    });
                    FlowResult {
                        sent_bytes: flow.sent_bytes.load(Ordering::Relaxed),
                        received,
                        send_error: lock(&flow.send_error).clone(),
                    }
                })
            })
            .collect()
    }

    /// Connections the service accepted for session `index`.
    pub fn connections(&self, index: usize) -> u32 {
        self.connections[index].load(Ordering::Relaxed)
    }

    /// Sends `flow`'s stream on `write` until told to stop, then ends it.
    async fn send<W: AsyncWrite + Unpin>(
        self: Arc<Self>,
        flow: Arc<Flow>,
        mut pattern: Pattern,
        mut write: W,
        header: Option<[u8; HEADER_BYTES]>,
    ) {
        let fail = |why: String| *lock(&flow.send_error) = Some(why);
        if let Some(header) = header {
            // A fresh pipe has room for it: this does not block.
            if let Err(e) = write.write_all(&header).await {
                return fail(format!("writing the session header failed: {e}"));
            }
        }
        let (chunk, mut ticker) = match self.pace {
            Pace::Unlimited => (UNPACED_WRITE_BYTES, None),
            Pace::BytesPerSecond(rate) => {
                let per_tick = rate.min(PACED_BYTES_PER_SECOND_MAX) as u128
                    * PACE_INTERVAL.as_micros()
                    / 1_000_000;
                let mut ticker = tokio::time::interval(PACE_INTERVAL);
                // After a stall, go on at the same pace rather than in a burst.
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ((per_tick as usize).max(1), Some(ticker))
            }
        };
        let mut stop = self.stop.subscribe();
        let mut buf = vec![0u8; chunk];
        'stream: loop {
            if let Some(ticker) = ticker.as_mut() {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.wait_for(|s| *s) => break 'stream,
                }
            }
            pattern.fill(&mut buf);
            let mut written = 0;
            while written < buf.len() {
                // `write` is cancel-safe: when stop wins, nothing of this call was written,
                // so `sent_bytes` stays exact.
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => break 'stream,
                    r = write.write(&buf[written..]) => match r {
                        Ok(0) => return fail("the session accepted no more bytes".into()),
                        Ok(n) => {
                            written += n;
                            flow.sent_bytes.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) => return fail(format!("write failed: {e}")),
                    },
                }
            }
        }
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, write.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => fail(format!("ending the stream failed: {e}")),
            Err(_) => fail(format!("ending the stream took over {SHUTDOWN_TIMEOUT:?}")),
        }
    }

    /// Reads `flow`'s stream from `read` to its end, checking every byte against `pattern`
    /// and recording when each read happened.
    async fn receive<R: AsyncRead + Unpin>(
        self: Arc<Self>,
        flow: Arc<Flow>,
        mut pattern: Pattern,
        mut read: R,
    ) {
        let mut buf = vec![0u8; READ_BYTES];
        let mut expected = vec![0u8; READ_BYTES];
        let mut received = Received::default();
        let mut give_up = self.give_up.subscribe();
        loop {
            let n = tokio::select! {
                r = read.read(&mut buf) => r,
                _ = give_up.wait_for(|g| *g) => {
                    received.error = Some("no end of stream after the senders stopped".into());
                    break;
                }
            };
            let n = match n {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    received.error = Some(format!("read failed: {e}"));
                    break;
                }
            };
            let now = self.us(Instant::now()).max(1);
            flow.last_read_us.store(now, Ordering::Relaxed);
            if received.reads.record(now).is_err() {
                received.error = Some("too many gaps to record: run shorter".into());
                break;
            }
            if let Err(offset) = pattern.check(&buf[..n], &mut expected) {
                received.error = Some(format!("wrong byte at offset {offset}"));
                received.bytes = offset;
                break;
            }
            received.bytes += n as u64;
        }
        *lock(&flow.received) = Some(received);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock()
        .expect("never poisoned: nothing panics while holding a traffic lock")
}

fn pattern(session: usize, direction: Direction) -> Pattern {
    Pattern {
        seed: splitmix64(SEED ^ ((session as u64) << 1 | direction as u64)),
        offset: 0,
    }
}

/// A seeded byte stream: the 8 bytes at offset `8n` are the little-endian SplitMix64 output
/// for `seed + n * golden ratio`. Cheap enough to check at line rate.
struct Pattern {
    seed: u64,
    /// Offset of the next byte.
    offset: u64,
}

impl Pattern {
    fn word(&self, n: u64) -> u64 {
        splitmix64(self.seed.wrapping_add(n.wrapping_mul(GOLDEN)))
    }

    /// Writes the next `buf.len()` bytes of the stream into `buf`.
    fn fill(&mut self, buf: &mut [u8]) {
        let mut word = self.word(self.offset / 8);
        for b in buf.iter_mut() {
            let k = self.offset % 8;
            if k == 0 {
                word = self.word(self.offset / 8);
            }
            *b = (word >> (8 * k)) as u8;
            self.offset += 1;
        }
    }

    /// Checks that `got` is the next part of the stream (`scratch` must be at least as long);
    /// on a mismatch, returns the stream offset of the first wrong byte.
    fn check(&mut self, got: &[u8], scratch: &mut [u8]) -> Result<(), u64> {
        let start = self.offset;
        let expected = &mut scratch[..got.len()];
        self.fill(expected);
        match got.iter().zip(expected.iter()).position(|(a, b)| a != b) {
            None => Ok(()),
            Some(i) => Err(start + i as u64),
        }
    }
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream cut into pieces of these sizes must check out whole, and a flipped byte at
    /// `flip` must be reported at its offset.
    fn check(pieces: &[usize], flip: Option<u64>) {
        let mut sender = pattern(3, Direction::Up);
        let mut receiver = pattern(3, Direction::Up);
        let mut scratch = vec![0u8; 1024];
        let mut offset = 0u64;
        for &len in pieces {
            let mut piece = vec![0u8; len];
            sender.fill(&mut piece);
            if let Some(f) = flip.filter(|f| (offset..offset + len as u64).contains(f)) {
                piece[(f - offset) as usize] ^= 1;
                assert_eq!(receiver.check(&piece, &mut scratch), Err(f));
                return;
            }
            assert_eq!(
                receiver.check(&piece, &mut scratch),
                Ok(()),
                "piece at {offset}"
            );
            offset += len as u64;
        }
        assert_eq!(flip, None, "the flipped byte was past the stream");
    }

    #[test]
    fn patterns_check_in_any_pieces() {
        check(&[1, 7, 8, 9, 1000, 3], None);
        check(&[5, 5, 5], Some(7));
        check(&[16], Some(0));
    }

    #[test]
    fn directions_and_sessions_differ() {
        let first = |s, d| {
            let mut b = [0u8; 16];
            pattern(s, d).fill(&mut b);
            b
        };
        assert_ne!(first(0, Direction::Up), first(0, Direction::Down));
        assert_ne!(first(0, Direction::Up), first(1, Direction::Up));
    }
}
