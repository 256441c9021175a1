//! A saturated bidirectional transfer through an echo service: the client writes as fast as
//! the path takes bytes while another thread reads the echo as fast as it comes. Both
//! directions are then limited only by flow control, and both endpoints' replay buffers stay
//! full: the state in which a hand-off once left a session hung.

use super::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How long a read may wait before the transfer counts as hung.
pub const HANG_AFTER: Duration = Duration::from_secs(30);

/// A transfer in progress: `progress` counts the bytes echoed back so far.
pub struct EchoTransfer {
    pub progress: Arc<AtomicU64>,
    pub len: u64,
    handle: std::thread::JoinHandle<EchoResult>,
}

/// How a transfer ended.
#[derive(Debug)]
pub struct EchoResult {
    /// SHA-256 of what was sent and of what came back.
    pub sent: [u8; 32],
    pub echoed: [u8; 32],
    pub echoed_bytes: u64,
    /// Longest time between two reads once the echo had started: the stall.
    pub longest_gap: Duration,
    /// A reset, a hang (no byte for [`HANG_AFTER`]), an early end: none may happen.
    pub error: Option<String>,
}

impl EchoTransfer {
    /// Connects to `addr` (a forwarded port whose far end is an echo service) and starts
    /// pushing `len` seeded bytes through it.
    pub fn start(addr: SocketAddr, len: u64, seed: u64) -> Self {
        use rand::{RngCore, SeedableRng};
        use sha2::{Digest, Sha256};
        use std::io::Read;
        let stream = std::net::TcpStream::connect(addr).expect("connect to the forwarded port");
        stream.set_read_timeout(Some(HANG_AFTER)).unwrap();
        let progress = Arc::new(AtomicU64::new(0));
        let seen = progress.clone();
        let handle = std::thread::spawn(move || {
            let mut writer = stream.try_clone().unwrap();
            let sender = std::thread::spawn(move || {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
                let mut hash = Sha256::new();
                let mut buf = vec![0u8; 256 * 1024];
                let mut left = len;
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    rng.fill_bytes(&mut buf[..n]);
                    hash.update(&buf[..n]);
                    if let Err(e) = writer.write_all(&buf[..n]) {
                        return (hash.finalize().into(), Some(format!("write: {e}")));
                    }
                    left -= n as u64;
                }
                let error = writer
                    .shutdown(std::net::Shutdown::Write)
                    .err()
                    .map(|e| format!("shutdown: {e}"));
                (hash.finalize().into(), error)
            });
            let mut reader = stream;
            let mut hash = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            let (mut echoed_bytes, mut longest_gap, mut last, mut error) =
                (0u64, Duration::ZERO, None::<Instant>, None);
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let now = Instant::now();
                        if let Some(last) = last {
                            longest_gap = longest_gap.max(now - last);
                        }
                        last = Some(now);
                        hash.update(&buf[..n]);
                        echoed_bytes += n as u64;
                        seen.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        error = Some(format!(
                            "read after {echoed_bytes} of {len} bytes: {e} (a hang: nothing \
                             for {HANG_AFTER:?})"
                        ));
                        // Unblock the sender: it may wait on a full path for ever.
                        let _ = reader.shutdown(std::net::Shutdown::Both);
                        break;
                    }
                }
            }
            let (sent, send_error) = sender.join().unwrap();
            EchoResult {
                sent,
                echoed: hash.finalize().into(),
                echoed_bytes,
                longest_gap,
                error: error.or(send_error),
            }
        });
        Self {
            progress,
            len,
            handle,
        }
    }

    /// Waits until `bytes` have come back (panics after `deadline`).
    pub fn wait_for_progress(&self, bytes: u64, deadline: Duration) {
        wait_for(&format!("{bytes} bytes echoed"), deadline, || {
            (self.progress.load(Ordering::Relaxed) >= bytes).then_some(())
        });
    }

    /// Waits for the end and checks it: every byte back, identical SHA-256, no error.
    pub fn finish(self, label: &str) -> EchoResult {
        let result = self
            .handle
            .join()
            .expect("the transfer thread never panics");
        assert_eq!(
            result.error, None,
            "{label}: the local connection saw no error"
        );
        assert_eq!(
            result.echoed_bytes, self.len,
            "{label}: every byte came back"
        );
        assert_eq!(result.sent, result.echoed, "{label}: identical SHA-256");
        result
    }
}
