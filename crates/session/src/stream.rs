//! One endpoint's side of a resumable session.

use crate::frame::{Frame, DATA_BYTES_MAX};
use bytes::Bytes;
use std::collections::VecDeque;

/// Accounting overhead charged per buffered chunk, so that many tiny chunks (a terminal sends
/// one keystroke at a time) cannot hold far more memory than `buffer_bytes_max` says.
const CHUNK_OVERHEAD_BYTES: usize = 64;

/// The largest replay buffer an endpoint may keep ([`Config::buffer_bytes_max`]), and so the
/// most a receiver ever holds undelivered, counted the same way (bytes plus the per-chunk
/// overhead for each frame: an honest sender's frames are never smaller than its replay
/// chunks): a peer that sends more than this beyond what was acknowledged breaks the
/// protocol. Tiny frames therefore cannot make a receiver hold far more than the bound.
pub const BUFFER_BYTES_LIMIT: usize = 64 * 1024 * 1024;

/// Limits of one endpoint's stream.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Largest amount of sent-but-unacknowledged data kept for replay, at most
    /// [`BUFFER_BYTES_LIMIT`]. When it is full the local reader must pause: backpressure,
    /// never loss and never unbounded memory. It also bounds what the peer holds undelivered.
    pub buffer_bytes_max: usize,
    /// An acknowledgement is due once this many bytes were delivered since the last one. (The
    /// IO layer also acknowledges on a timer, so a trickle is acknowledged too.)
    pub ack_every_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            buffer_bytes_max: 8 * 1024 * 1024,
            ack_every_bytes: 256 * 1024,
        }
    }
}

/// What a received frame means for the local side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Bytes to write to the local connection, in order.
    Bytes(Bytes),
    /// The other side's stream ended: shut the local writer down.
    End,
    /// The other side abandoned the session, for this reason.
    Aborted(String),
}

/// A frame or resume offset that cannot happen between two correct endpoints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("session data at offset {got}, expected {expected} (a gap or a duplicate)")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("session data after the end of the stream at {0}")]
    DataAfterEnd(u64),
    #[error("peer acknowledged {acked} bytes, but only {written} were ever sent")]
    AckBeyondWritten { acked: u64, written: u64 },
    #[error("peer acknowledged the end of a stream that has not ended")]
    FinAckBeforeFin,
    #[error("peer resumes from {peer_received}, below {acked} it had already acknowledged")]
    PeerWentBack { peer_received: u64, acked: u64 },
    #[error("empty session data frame")]
    EmptyData,
    #[error(
        "peer sent {undelivered_cost} bytes (with per-frame overhead) beyond what was \
         delivered, more than any replay buffer may hold ({BUFFER_BYTES_LIMIT})"
    )]
    ReceiveLimitExceeded { undelivered_cost: usize },
}

/// One endpoint's state: the bytes it sends (numbered, kept until acknowledged) and the
/// bytes it receives (queued for the local side, acknowledged once delivered).
///
/// Offsets obey `acked <= sent <= written` on the outbound side; `replay` holds exactly the
/// bytes `acked..written`. On the inbound side `ack_sent <= delivered <= received`, and
/// `inbound` holds exactly the bytes `delivered..received`.
///
/// **Flow control is the acknowledgement.** A receiver acknowledges only what it has
/// delivered to its local side, so a sender never has more than its replay buffer beyond what
/// the receiver's local side took, and the receiver never holds more than that undelivered.
/// The link reader therefore never has a reason to stop reading, and it must not: the
/// acknowledgements that free the peer's buffer travel behind the peer's data on the same
/// ordered link. A reader that waits for its local side while its peer waits for an
/// acknowledgement stuck behind data deadlocks the session (two saturated directions through
/// an echo service do exactly that; `tests/sim.rs` checks it cannot happen).
#[derive(Debug)]
pub struct Stream {
    config: Config,
    /// Bytes `acked..written`, oldest first.
    replay: VecDeque<Bytes>,
    /// What `replay` costs against `buffer_bytes_max` (bytes plus per-chunk overhead).
    replay_cost: usize,
    /// The peer has everything before this offset.
    acked: u64,
    /// Everything before this offset was handed to the current link.
    sent: u64,
    /// Total bytes taken from the local side.
    written: u64,
    /// Position of `sent` in `replay`: chunk index and offset inside it.
    cursor: (usize, usize),
    /// The local side ended at `written`.
    local_ended: bool,
    /// The Fin was handed to the current link.
    fin_sent: bool,
    /// The peer acknowledged the Fin.
    fin_acked: bool,
    /// The local side gave up; the Abort frame is still to send.
    abort_pending: Option<String>,
    /// Total bytes received from the peer (accepted in order).
    received: u64,
    /// Bytes handed to the local side; what acknowledgements carry.
    delivered: u64,
    /// Bytes `delivered..received`, oldest first.
    inbound: VecDeque<Bytes>,
    /// What `inbound` costs against [`BUFFER_BYTES_LIMIT`] (bytes plus per-chunk overhead).
    inbound_cost: usize,
    /// The last `delivered` offset acknowledged to the peer.
    ack_sent: u64,
    /// Where the peer's stream ended, once its Fin arrived.
    remote_fin: Option<u64>,
    /// The peer's end was handed to the local side (after every byte before it).
    end_delivered: bool,
    /// The peer gave the session up, for this reason; delivered after the bytes before it.
    remote_abort: Option<String>,
    /// The peer's abort was handed to the local side.
    abort_delivered: bool,
    /// The peer's Fin was acknowledged on the current link.
    fin_ack_sent: bool,
}

impl Stream {
    pub fn new(config: Config) -> Self {
        assert!(
            config.buffer_bytes_max > CHUNK_OVERHEAD_BYTES,
            "a replay buffer must hold at least one byte"
        );
        assert!(
            config.buffer_bytes_max <= BUFFER_BYTES_LIMIT,
            "configurations are clamped to BUFFER_BYTES_LIMIT"
        );
        Self {
            config,
            replay: VecDeque::new(),
            replay_cost: 0,
            acked: 0,
            sent: 0,
            written: 0,
            cursor: (0, 0),
            local_ended: false,
            fin_sent: false,
            fin_acked: false,
            abort_pending: None,
            received: 0,
            delivered: 0,
            inbound: VecDeque::new(),
            inbound_cost: 0,
            ack_sent: 0,
            remote_fin: None,
            end_delivered: false,
            remote_abort: None,
            abort_delivered: false,
            fin_ack_sent: false,
        }
    }

    // ---- The local side. ----

    /// How many bytes the local reader may read now; 0 means pause it until acks arrive.
    /// (Room for the bytes and the overhead of every frame-sized chunk they make.)
    pub fn write_capacity(&self) -> usize {
        if self.local_ended {
            return 0;
        }
        let room = self
            .config
            .buffer_bytes_max
            .saturating_sub(self.replay_cost);
        room.saturating_sub(CHUNK_OVERHEAD_BYTES * room.div_ceil(DATA_BYTES_MAX).max(1))
    }

    /// Takes bytes read from the local side. `bytes.len()` must not exceed
    /// [`Stream::write_capacity`]. They are kept in chunks of at most one frame, so that the
    /// receiver, which charges the overhead per frame, never counts more than this side.
    pub fn push_local(&mut self, mut bytes: Bytes) {
        assert!(!self.local_ended, "nothing is read after the local end");
        assert!(
            bytes.len() <= self.write_capacity(),
            "the local reader reads at most write_capacity() bytes"
        );
        while !bytes.is_empty() {
            let chunk = bytes.split_to(bytes.len().min(DATA_BYTES_MAX));
            self.written += chunk.len() as u64;
            self.replay_cost += chunk.len() + CHUNK_OVERHEAD_BYTES;
            self.replay.push_back(chunk);
        }
    }

    /// The local side ended (end of file): a Fin follows the last byte.
    pub fn end_local(&mut self) {
        self.local_ended = true;
    }

    /// The local side failed: tell the peer the session is over.
    pub fn abort(&mut self, reason: impl Into<String>) {
        self.abort_pending = Some(reason.into());
    }

    // ---- The link. ----

    /// The next frame to send on the current link, if any: an abort, a due acknowledgement,
    /// unsent data, then the Fin.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        if let Some(reason) = self.abort_pending.take() {
            return Some(Frame::Abort { reason });
        }
        if self.delivered - self.ack_sent >= self.config.ack_every_bytes
            || (self.end_delivered && !self.fin_ack_sent)
        {
            return self.poll_ack();
        }
        if self.sent < self.written {
            return Some(self.next_data());
        }
        if self.local_ended && !self.fin_sent {
            self.fin_sent = true;
            return Some(Frame::Fin {
                offset: self.written,
            });
        }
        None
    }

    /// An acknowledgement if anything was delivered since the last one (for the IO layer's
    /// timer).
    pub fn poll_ack(&mut self) -> Option<Frame> {
        let fin_unacked = self.end_delivered && !self.fin_ack_sent;
        if self.delivered == self.ack_sent && !fin_unacked {
            return None;
        }
        self.ack_sent = self.delivered;
        self.fin_ack_sent = self.end_delivered;
        Some(Frame::Ack {
            received: self.delivered,
            fin_received: self.fin_ack_sent,
        })
    }

    /// An acknowledgement is due now (`poll_transmit` would send one first): the IO layer
    /// wakes the link's writer after a delivery that makes one due.
    pub fn ack_due(&self) -> bool {
        self.delivered - self.ack_sent >= self.config.ack_every_bytes
            || (self.end_delivered && !self.fin_ack_sent)
    }

    fn next_data(&mut self) -> Frame {
        let (index, inside) = self.cursor;
        let chunk = &self.replay[index];
        let end = chunk.len().min(inside + DATA_BYTES_MAX);
        let bytes = chunk.slice(inside..end);
        let offset = self.sent;
        self.sent += bytes.len() as u64;
        self.cursor = if end == chunk.len() {
            (index + 1, 0)
        } else {
            (index, end)
        };
        Frame::Data { offset, bytes }
    }

    /// Takes a frame from the current link. What it carries for the local side waits in the
    /// inbound queue for [`Stream::poll_deliver`]; the link reader never waits for it.
    pub fn handle_frame(&mut self, frame: Frame) -> Result<(), Error> {
        match frame {
            Frame::Data { offset, bytes } => {
                if bytes.is_empty() {
                    return Err(Error::EmptyData);
                }
                if let Some(end) = self.remote_fin {
                    return Err(Error::DataAfterEnd(end));
                }
                if offset != self.received {
                    return Err(Error::OutOfOrder {
                        expected: self.received,
                        got: offset,
                    });
                }
                let cost = self.inbound_cost + bytes.len() + CHUNK_OVERHEAD_BYTES;
                if cost > BUFFER_BYTES_LIMIT {
                    return Err(Error::ReceiveLimitExceeded {
                        undelivered_cost: cost,
                    });
                }
                self.received += bytes.len() as u64;
                self.inbound_cost = cost;
                self.inbound.push_back(bytes);
                Ok(())
            }
            Frame::Fin { offset } => {
                if offset != self.received {
                    return Err(Error::OutOfOrder {
                        expected: self.received,
                        got: offset,
                    });
                }
                // A Fin is sent again after a resume when its acknowledgement was lost.
                self.remote_fin = Some(offset);
                self.fin_ack_sent = false;
                Ok(())
            }
            Frame::Ack {
                received,
                fin_received,
            } => {
                self.acknowledge(received)?;
                if fin_received {
                    if !(self.local_ended && received == self.written) {
                        return Err(Error::FinAckBeforeFin);
                    }
                    self.fin_acked = true;
                }
                Ok(())
            }
            Frame::Abort { reason } => {
                self.remote_abort.get_or_insert(reason);
                Ok(())
            }
        }
    }

    // ---- The local writer. ----

    /// The next thing to hand to the local side, in order: received bytes, then the peer's
    /// end (or abort). Taking bytes makes them acknowledgeable ([`Stream::ack_due`]).
    pub fn poll_deliver(&mut self) -> Option<Delivery> {
        if let Some(bytes) = self.inbound.pop_front() {
            self.delivered += bytes.len() as u64;
            self.inbound_cost -= bytes.len() + CHUNK_OVERHEAD_BYTES;
            return Some(Delivery::Bytes(bytes));
        }
        if let Some(reason) = self.remote_abort.take() {
            self.abort_delivered = true;
            return Some(Delivery::Aborted(reason));
        }
        if self.remote_fin.is_some() && !self.end_delivered {
            self.end_delivered = true;
            return Some(Delivery::End);
        }
        None
    }

    /// Drops replayable bytes below `received`, which the peer has.
    fn acknowledge(&mut self, received: u64) -> Result<(), Error> {
        if received > self.written {
            return Err(Error::AckBeyondWritten {
                acked: received,
                written: self.written,
            });
        }
        while self.acked < received {
            let front = self
                .replay
                .front_mut()
                .expect("replay holds acked..written and acked < received <= written");
            let take = (received - self.acked).min(front.len() as u64) as usize;
            if take == front.len() {
                self.replay_cost -= front.len() + CHUNK_OVERHEAD_BYTES;
                self.replay.pop_front();
                self.cursor.0 = self.cursor.0.saturating_sub(1);
                if self.cursor.0 == 0 && self.sent < received {
                    self.cursor = (0, 0);
                }
            } else {
                let _ = front.split_to(take);
                self.replay_cost -= take;
                if self.cursor.0 == 0 {
                    self.cursor.1 = self.cursor.1.saturating_sub(take);
                }
            }
            self.acked += take as u64;
        }
        if self.sent < self.acked {
            // Only a resume acknowledges what this link never carried.
            self.sent = self.acked;
            self.cursor = (0, 0);
        }
        Ok(())
    }

    /// Leaves the current link: what the local side has not taken yet is dropped (the peer
    /// still holds it, unacknowledged, and replays it), so that [`Stream::received`] is
    /// exactly what was delivered. Presenting the delivered offset on resume keeps the bound
    /// on undelivered bytes across any number of resumes; presenting more would let the peer
    /// send a whole replay buffer beyond it each time. A peer's abort is kept: it ends the
    /// session whatever link comes next (the peer will not resume it).
    pub fn detach(&mut self) {
        self.inbound.clear();
        self.inbound_cost = 0;
        self.received = self.delivered;
        if !self.end_delivered {
            self.remote_fin = None;
        }
    }

    /// Starts over on a new link (after [`Stream::detach`]): the peer has received everything
    /// before `peer_received`. Afterwards [`Stream::poll_transmit`] replays from there. The
    /// peer learns this side's [`Stream::received`] through the same exchange.
    pub fn resume(&mut self, peer_received: u64) -> Result<(), Error> {
        assert!(
            self.inbound.is_empty() && self.received == self.delivered,
            "a stream is detached before it resumes"
        );
        if peer_received < self.acked {
            return Err(Error::PeerWentBack {
                peer_received,
                acked: self.acked,
            });
        }
        self.acknowledge(peer_received)?;
        self.sent = self.acked;
        self.cursor = (0, 0);
        self.fin_sent = false;
        self.ack_sent = self.received;
        self.fin_ack_sent = false;
        Ok(())
    }

    // ---- Observers. ----

    /// Bytes received so far; after [`Stream::detach`], what this side presents on resume.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Bytes handed to the local side so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Bytes received but not yet handed to the local side (at most the peer's replay buffer).
    pub fn undelivered_bytes(&self) -> u64 {
        self.received - self.delivered
    }

    /// What the undelivered bytes cost with their per-frame overhead: never more than the
    /// peer's replay buffer charges for them, so at most its `buffer_bytes_max`.
    pub fn undelivered_cost_bytes(&self) -> usize {
        self.inbound_cost
    }

    /// The peer gave the session up (its abort waits behind the bytes before it, or was
    /// delivered): no link will carry this session again.
    pub fn remote_aborted(&self) -> bool {
        self.remote_abort.is_some() || self.abort_delivered
    }

    /// Bytes taken from the local side so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Bytes the peer has acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Bytes held for replay.
    pub fn unacked_bytes(&self) -> u64 {
        self.written - self.acked
    }

    /// Bytes the replay buffer charges against its limit (never above `buffer_bytes_max`).
    pub fn buffer_cost_bytes(&self) -> usize {
        self.replay_cost
    }

    /// Both directions ended, each end was delivered and acknowledged: the session is
    /// complete.
    pub fn is_complete(&self) -> bool {
        self.local_ended && self.fin_acked && self.end_delivered && self.fin_ack_sent
    }

    /// The local side has ended (or was ended).
    pub fn local_ended(&self) -> bool {
        self.local_ended
    }

    /// The peer's stream has ended and its end was delivered.
    pub fn remote_ended(&self) -> bool {
        self.end_delivered
    }
}
