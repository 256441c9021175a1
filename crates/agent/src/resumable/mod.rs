//! The IO around `ferry_session::Stream`: one session's bytes between the local connection
//! (TCP or stdio) and whichever QUIC stream currently reaches the far endpoint.
//!
//! A session outlives its links. Each link gets a *generation*; bumping it (a [`Session::detach`])
//! makes the old link's tasks stop touching the session at once, under the same lock that
//! counts received bytes, so the offsets exchanged on resume are exact. A new link is then
//! [`Session::attach`]ed with the offset the far side has received, and the core replays the
//! gap. The local side never notices: its reader pauses when the replay buffer is full, its
//! writer gets every byte once, in order.
//!
//! Tasks per session: a local reader, a local writer, and per link a link reader and a link
//! writer. They share [`Shared`] under one `std` mutex that is never held across an await.
//!
//! The link reader never waits for the local side: acknowledgements are the session's flow
//! control (see `ferry_session::Stream`), and they arrive behind the peer's data on the same
//! link, so a reader that stopped reading could keep its own replay buffer full for ever.

mod link;

use bytes::{Bytes, BytesMut};
use ferry_session::{Decoder, Delivery, Frame, Stream};
use ferry_transport::splice::RESET_ENDED;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Notify};

/// How often a link acknowledges a trickle of received bytes that never reaches
/// `ack_every_bytes` (keystrokes), and re-checks for missed wake-ups.
const ACK_INTERVAL: Duration = Duration::from_millis(20);
/// Largest read from the local side at once.
const LOCAL_READ_BYTES_MAX: usize = 64 * 1024;
/// Stream error code an endpoint uses when it leaves a link because the session moved on.
pub const RESET_MOVED: quinn::VarInt = quinn::VarInt::from_u32(0x5e);
/// Why a session the cluster ended (see [`RESET_ENDED`]) ended, as the endpoint says it.
pub const ENDED_BY_CLUSTER: &str =
    "the cluster ended the session: it was killed or its access was withdrawn";

/// A QUIC stream pair that reaches the far endpoint, and what the far side has received.
pub struct Link {
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    /// The far endpoint has every byte of ours before this offset.
    pub peer_received: u64,
    /// `stable_id` of the connection carrying it (to know when a connection is unused).
    pub conn_id: usize,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Both directions ended and were acknowledged.
    Complete,
    /// The local side failed, or the far side gave the session up, for this reason.
    Aborted(String),
    /// No link could be re-established (window expired, resume refused), for this reason.
    Lost(String),
}

/// Where a session's link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A link of this generation carries the session.
    Linked(u64),
    /// No link: since when (for the resume window).
    Unlinked(Instant),
    Ended,
}

/// Offsets reported by [`Session::detach`].
#[derive(Debug, Clone, Copy)]
pub struct Detached {
    generation: u64,
    /// Bytes this side has received: the far side replays from here.
    pub received: u64,
    /// Bytes this side has sent in total.
    pub written: u64,
}

struct Core {
    stream: Stream,
    /// Generation of the current (or next) link. Link tasks of other generations stop.
    generation: u64,
    phase: Phase,
    /// The local writer has written (and shut down after) the far side's end: the last
    /// condition of a complete session, so that nothing ends it while bytes are on their way
    /// to the local connection.
    local_done: bool,
    /// Wakes the current link's writer.
    link_writer: Option<Arc<Notify>>,
    /// Connection of the current link.
    conn_id: Option<usize>,
    ending: Option<Ending>,
    /// Bytes replayed after resumes, for the metrics.
    replayed_bytes: u64,
    resumes: u32,
}

struct Shared {
    id: u64,
    core: Mutex<Core>,
    /// Wakes the local reader (capacity freed), the local writer (deliveries) and the link
    /// reader (the session left its link).
    local_reader: Notify,
    local_writer: Notify,
    link_reader: Notify,
    /// Phase changes, for whoever supervises the session.
    phase: watch::Sender<Phase>,
    /// Set once the far side's end of stream has been delivered locally.
    remote_ended: watch::Sender<bool>,
    /// Set once the session ended and its last link's stream was finished and fully
    /// acknowledged by QUIC (or reset): closing the connection then loses nothing.
    flushed: watch::Sender<bool>,
}

/// A running session; cheap to clone.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

impl Session {
    /// Starts moving bytes between `local` and the first link (whose far side has received
    /// nothing yet).
    pub fn start<R, W>(
        id: u64,
        config: ferry_session::Config,
        local_read: R,
        local_write: W,
        link: Link,
    ) -> Self
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (phase, _) = watch::channel(Phase::Unlinked(Instant::now()));
        let shared = Arc::new(Shared {
            id,
            core: Mutex::new(Core {
                stream: Stream::new(config),
                generation: 0,
                phase: Phase::Unlinked(Instant::now()),
                local_done: false,
                link_writer: None,
                conn_id: None,
                ending: None,
                replayed_bytes: 0,
                resumes: 0,
            }),
            local_reader: Notify::new(),
            local_writer: Notify::new(),
            link_reader: Notify::new(),
            phase,
            remote_ended: watch::channel(false).0,
            flushed: watch::channel(false).0,
        });
        let session = Self { shared };
        tokio::spawn(local_reader(session.shared.clone(), local_read));
        tokio::spawn(local_writer(session.shared.clone(), local_write));
        let detached = session.detach();
        session
            .attach(detached, link)
            .expect("a fresh stream accepts a link whose peer received nothing");
        session
    }

    pub fn id(&self) -> u64 {
        self.shared.id
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        lock(&self.shared)
    }

    /// Leaves the current link (if any): its tasks stop at once, and the offsets returned are
    /// final until [`Session::attach`]. The old streams are reset by their tasks.
    pub fn detach(&self) -> Detached {
        let mut core = self.core();
        core.generation += 1;
        core.stream.detach();
        if let Some(w) = core.link_writer.take() {
            w.notify_one();
        }
        core.conn_id = None;
        if matches!(core.phase, Phase::Linked(_)) {
            set_phase(&self.shared, &mut core, Phase::Unlinked(Instant::now()));
        }
        self.shared.link_reader.notify_waiters();
        Detached {
            generation: core.generation,
            received: core.stream.received(),
            written: core.stream.written(),
        }
    }

    /// Continues on `link`, whose far side has received `link.peer_received` bytes. Refused
    /// when another detach came in between (the link is reset) or the offsets are impossible
    /// (the session is lost: continuing would corrupt it).
    pub fn attach(&self, detached: Detached, link: Link) -> Result<(), String> {
        let mut core = self.core();
        if core.generation != detached.generation || core.phase == Phase::Ended {
            drop(core);
            let Link {
                mut send, mut recv, ..
            } = link;
            let _ = send.reset(RESET_MOVED);
            let _ = recv.stop(RESET_MOVED);
            return Err("the session moved to another link meanwhile".into());
        }
        let before = core.stream.acked();
        if let Err(e) = core.stream.resume(link.peer_received) {
            let why = format!("resume offsets are impossible: {e}");
            drop(core);
            self.end(Ending::Lost(why.clone()));
            return Err(why);
        }
        if detached.generation > 1 {
            core.resumes += 1;
            core.replayed_bytes += core.stream.written() - link.peer_received.max(before);
        }
        let notify = Arc::new(Notify::new());
        core.link_writer = Some(notify.clone());
        core.conn_id = Some(link.conn_id);
        let generation = core.generation;
        set_phase(&self.shared, &mut core, Phase::Linked(generation));
        drop(core);
        tokio::spawn(link::link_writer(
            self.shared.clone(),
            generation,
            link.send,
            notify,
        ));
        tokio::spawn(link::link_reader(
            self.shared.clone(),
            generation,
            link.recv,
        ));
        self.shared.local_reader.notify_one();
        Ok(())
    }

    /// Ends the local side's stream now, as if it had reached end of file (for stdio, whose
    /// stdin may never end): the far side gets an end of stream, then the session completes.
    pub fn end_local(&self) {
        let mut core = self.core();
        if !core.stream.local_ended() {
            core.stream.end_local();
        }
        wake_link(&core);
    }

    /// Ends the session for `why` (no link within the window, a refused resume): the local
    /// connection is closed.
    pub fn end(&self, why: Ending) {
        let mut core = self.core();
        finish(&self.shared, &mut core, why);
    }

    /// Gives the session up for `why`: the far side is told (an Abort frame, if a link is up)
    /// and the local connection is closed.
    pub fn abort(&self, why: String) {
        let mut core = self.core();
        if core.phase != Phase::Ended {
            core.stream.abort(why.clone());
            finish(&self.shared, &mut core, Ending::Aborted(why));
        }
    }

    /// Watches the session's phase.
    pub fn phase(&self) -> watch::Receiver<Phase> {
        self.shared.phase.subscribe()
    }

    /// Waits until the session has ended, and says how.
    pub async fn ended(&self) -> Ending {
        let mut phase = self.phase();
        let _ = phase.wait_for(|p| *p == Phase::Ended).await;
        self.core()
            .ending
            .clone()
            .expect("the phase is Ended only once an ending is recorded")
    }

    /// Waits until the far side's stream has ended and that end was delivered locally.
    pub async fn remote_ended(&self) {
        let mut ended = self.shared.remote_ended.subscribe();
        let _ = ended.wait_for(|e| *e).await;
    }

    /// Waits until the session has ended and its final frames have left (see `Shared::flushed`).
    pub async fn flushed(&self) {
        let mut flushed = self.shared.flushed.subscribe();
        let _ = flushed.wait_for(|f| *f).await;
    }

    /// Connection of the current link, if linked.
    pub fn conn_id(&self) -> Option<usize> {
        self.core().conn_id
    }

    /// (bytes sent, bytes received and delivered locally, resumes, bytes replayed).
    pub fn totals(&self) -> (u64, u64, u32, u64) {
        let core = self.core();
        (
            core.stream.written(),
            core.stream.delivered(),
            core.resumes,
            core.replayed_bytes,
        )
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, Core> {
    shared
        .core
        .lock()
        .expect("never poisoned: no code panics while holding the session lock")
}

fn set_phase(shared: &Shared, core: &mut Core, phase: Phase) {
    if core.phase != Phase::Ended {
        core.phase = phase;
        shared.phase.send_replace(phase);
    }
}

/// Records the session's end once and wakes every task so that each stops.
fn finish(shared: &Shared, core: &mut Core, ending: Ending) {
    if core.ending.is_none() {
        tracing::info!(session_id = shared.id, ending = ?ending, "session ended");
        core.ending = Some(ending);
    }
    core.phase = Phase::Ended;
    shared.phase.send_replace(Phase::Ended);
    if let Some(w) = &core.link_writer {
        w.notify_one();
    }
    shared.local_reader.notify_one();
    shared.local_writer.notify_one();
    shared.link_reader.notify_waiters();
}

/// Once both ends are acknowledged and delivered, and the local writer is done, the session
/// is complete.
fn check_complete(shared: &Shared, core: &mut Core) {
    if core.stream.is_complete() && core.local_done && core.ending.is_none() {
        finish(shared, core, Ending::Complete);
    }
}

async fn local_reader<R: AsyncRead + Unpin>(shared: Arc<Shared>, mut local: R) {
    let mut buf = BytesMut::new();
    loop {
        let room = {
            let core = lock(&shared);
            if core.phase == Phase::Ended {
                return;
            }
            core.stream.write_capacity()
        };
        if room == 0 {
            // The replay buffer is full: wait for acknowledgements (backpressure).
            let _ = tokio::time::timeout(ACK_INTERVAL, shared.local_reader.notified()).await;
            continue;
        }
        buf.reserve(room.min(LOCAL_READ_BYTES_MAX));
        let n = room.min(LOCAL_READ_BYTES_MAX);
        let read = {
            let mut limited = (&mut local).take(n as u64);
            limited.read_buf(&mut buf).await
        };
        let failed = {
            let mut core = lock(&shared);
            let failed = match read {
                Ok(0) => {
                    if !core.stream.local_ended() {
                        core.stream.end_local();
                    }
                    wake_link(&core);
                    return;
                }
                // Ended from outside meanwhile (see `Session::end_local`): nothing more goes out.
                Ok(_) if core.stream.local_ended() => return,
                Ok(_) => {
                    core.stream.push_local(buf.split().freeze());
                    None
                }
                Err(e) => {
                    let why = format!("local connection failed: {e}");
                    core.stream.abort(why.clone());
                    Some(why)
                }
            };
            wake_link(&core);
            failed
        };
        if let Some(why) = failed {
            // The Abort frame goes out on the current link before the end.
            tokio::time::sleep(ACK_INTERVAL * 5).await;
            finish(&shared, &mut lock(&shared), Ending::Aborted(why));
            return;
        }
    }
}

fn wake_link(core: &Core) {
    if let Some(w) = &core.link_writer {
        w.notify_one();
    }
}

async fn local_writer<W: AsyncWrite + Unpin>(shared: Arc<Shared>, mut local: W) {
    loop {
        let next = {
            let mut core = lock(&shared);
            match core.stream.poll_deliver() {
                Some(d) => {
                    // Taking bytes may make an acknowledgement due: it frees the peer's buffer.
                    if core.stream.ack_due() {
                        wake_link(&core);
                    }
                    Some(d)
                }
                None if core.phase == Phase::Ended => return,
                None => None,
            }
        };
        match next {
            None => {
                let _ = tokio::time::timeout(ACK_INTERVAL, shared.local_writer.notified()).await;
            }
            Some(Delivery::Bytes(bytes)) => {
                // Flushed after every delivery: a local writer may buffer, and tokio's stdout
                // does (it wraps std's line-buffered stdout, which holds every byte after the
                // last newline until a flush: binary protocols such as SSH then hang).
                let written = match local.write_all(&bytes).await {
                    Ok(()) => local.flush().await,
                    Err(e) => Err(e),
                };
                if let Err(e) = written {
                    let mut core = lock(&shared);
                    core.stream
                        .abort(format!("far side's local connection failed: {e}"));
                    wake_link(&core);
                    finish(
                        &shared,
                        &mut core,
                        Ending::Aborted(format!("local connection failed: {e}")),
                    );
                    return;
                }
                let mut core = lock(&shared);
                check_complete(&shared, &mut core);
            }
            Some(Delivery::End) => {
                let _ = local.flush().await;
                let _ = local.shutdown().await;
                shared.remote_ended.send_replace(true);
                let mut core = lock(&shared);
                core.local_done = true;
                check_complete(&shared, &mut core);
            }
            Some(Delivery::Aborted(reason)) => {
                let _ = local.shutdown().await;
                let mut core = lock(&shared);
                finish(
                    &shared,
                    &mut core,
                    Ending::Aborted(format!("the far side gave up: {reason}")),
                );
                return;
            }
        }
    }
}
