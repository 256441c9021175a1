//! Raft messages out: the consensus driver's outbox, one sender task per peer; and this
//! node's health reports to every peer.

use crate::links::{Link, Peers, RECONCILE_EVERY};
use ferry_consensus::Message;
use ferry_proto::peer::{peer_request, HealthReport, RaftMessage};
use ferry_transport::framed;
use protobuf::Message as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Mutex};

/// Pause between attempts to reach a peer that is down.
const RECONNECT_DELAY: Duration = Duration::from_millis(300);
/// Time a health report may take to reach a peer.
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);

impl Peers {
    /// Service "raft-outbox": hands each message of the consensus driver to its peer's queue.
    pub async fn dispatch_loop(
        self: Arc<Self>,
        outbox: Arc<Mutex<mpsc::Receiver<Message>>>,
        mut shutdown: watch::Receiver<bool>,
    ) -> crate::LoopResult {
        let mut outbox = outbox.lock().await;
        loop {
            let message = tokio::select! {
                message = outbox.recv() => match message {
                    Some(message) => message,
                    None => return Err("the consensus driver's outbox closed".into()),
                },
                _ = shutdown.changed() => return Ok(()),
            };
            if self.is_blocked(message.to) {
                continue;
            }
            let link = self.link(message.to).or_else(|| {
                self.reconcile(); // a member the directory has just added
                self.link(message.to)
            });
            match link {
                // Full: this peer is behind; drop rather than stall the others.
                Some(link) => drop(link.queue.try_send(message)),
                None => tracing::debug!(to = message.to, "message for an unknown peer dropped"),
            }
        }
    }

    /// One peer's sender: keeps a connection and a stream to it, and writes its Raft messages.
    pub(crate) async fn send_loop(
        self: Arc<Self>,
        link: Arc<Link>,
        mut rx: mpsc::Receiver<Message>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let limits = self.limits.frames();
        loop {
            if link.is_retired() {
                if let Some(conn) = link.conn.lock().await.take() {
                    conn.close(
                        ferry_transport::CloseCode::ShuttingDown.varint(),
                        b"removed from the cluster",
                    );
                }
                return;
            }
            let Some(conn) = self.connection(&link).await else {
                // Drop what queued up while the peer was down: it is stale by now.
                while rx.try_recv().is_ok() {}
                tokio::select! {
                    _ = tokio::time::sleep(RECONNECT_DELAY) => continue,
                    _ = shutdown.changed() => return,
                }
            };
            let Ok(mut stream) = conn.open_uni().await else {
                continue;
            };
            loop {
                let message = tokio::select! {
                    m = rx.recv() => match m { Some(m) => m, None => return },
                    _ = shutdown.changed() => return,
                    // Look at `retired` now and then even when nothing is sent.
                    _ = tokio::time::sleep(RECONCILE_EVERY) => {
                        if link.is_retired() { break }
                        continue
                    }
                };
                let frame = RaftMessage {
                    message: message.write_to_bytes().unwrap_or_default(),
                };
                if framed::write(&mut stream, &frame, limits).await.is_err() {
                    break; // reconnect; Raft retransmits what was lost
                }
            }
        }
    }

    /// Sends this node's health report to every peer, in the background. A peer still
    /// receiving the previous one skips this one: reports are snapshots, the next replaces it.
    pub fn broadcast_health(self: &Arc<Self>, report: &HealthReport) {
        for link in self.all_links() {
            if link.is_retired()
                || self.is_blocked(link.config.raft_id)
                || link.report_in_flight.swap(true, Ordering::AcqRel)
            {
                continue;
            }
            let (this, report) = (self.clone(), report.clone());
            tokio::spawn(async move {
                let request = peer_request::Request::Health(report);
                let _ = this.notify(&link, request, REPORT_TIMEOUT).await;
                link.report_in_flight.store(false, Ordering::Release);
            });
        }
    }
}
