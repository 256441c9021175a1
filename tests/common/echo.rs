//! A saturated bidirectional transfer through an echo service: the client writes as fast as
//! the path takes bytes while another thread reads the echo as fast as it comes. Both
//! directions are then limited only by flow control, and both endpoints' replay buffers stay
//! full: the state in which a hand-off once left a session hung.

use super::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A transfer in progress: `progress` counts the bytes echoed back so far.
pub struct EchoTransfer {
    pub progress: Arc<AtomicU64>,
    pub len: u64,
    handle: std::thread::JoinHandle<TransferEnd>,
}

impl EchoTransfer {
    /// Connects to `addr` (a forwarded port whose far end is an echo service) and starts
    /// pushing `len` seeded bytes through it, reading the echo at the same time.
    pub fn start(addr: SocketAddr, len: u64, seed: u64) -> Self {
        let stream = std::net::TcpStream::connect(addr).expect("connect to the forwarded port");
        let progress = Arc::new(AtomicU64::new(0));
        let seen = progress.clone();
        let handle = std::thread::spawn(move || run_transfer(stream, len, seed, Some(&seen), None));
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

    /// Waits for the end and checks it: every byte back, identical SHA-256, no error (a read
    /// that waited 30 s is reported as a hang).
    pub fn finish(self, label: &str) -> TransferEnd {
        let end = self
            .handle
            .join()
            .expect("the transfer thread never panics");
        assert_eq!(
            end.error, None,
            "{label}: the local connection saw no error"
        );
        assert_eq!(
            end.received_bytes, self.len,
            "{label}: every byte came back"
        );
        assert_eq!(end.sent, end.received, "{label}: identical SHA-256");
        end
    }
}
