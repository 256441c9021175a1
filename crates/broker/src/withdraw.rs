//! Withdrawn access ends live access: every broker watches its applied state and ends what it
//! carries that may no longer go on, within [`WATCH_EVERY`] of applying the change.
//!
//! - Sessions this node relays (opened or resumed here, or carried for a peer to a host
//!   attached here) are registered in [`Carried`] while they are relayed. One that
//!   `StateMachine::session_allowed` refuses (killed, token revoked, user disabled or removed,
//!   grant removed or narrowed, host removed or re-enrolled) is cut: both of its streams are
//!   reset with `RESET_ENDED`, which the endpoints take as final (no resume).
//! - Sessions whose host agent is attached here, relayed or detached and waiting for a resume,
//!   are also named to that agent on its control stream (`BrokerNotice.end_sessions`), so that
//!   a detached session ends on the host at once instead of when its resume window passes.
//!   (Its client, if it comes back, is refused: a resume re-checks `session_allowed`.)
//! - Host agents attached here whose credential no longer checks (host removed or re-enrolled)
//!   are disconnected.
//!
//! Each broker decides from its own applied state, so a withdrawal reaches every node without
//! a message of its own; the leader's sweep then closes the withdrawn sessions in the table.

use crate::context::Ctx;
use ferry_proto::wire::{BrokerNotice, EndSession};
use ferry_transport::CloseCode;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How often the watcher looks at the applied state (it does work only when the applied index
/// moved). Withdrawal must end live access within 2 s; this leaves room for the commit.
pub const WATCH_EVERY: Duration = Duration::from_millis(100);

/// How long a host agent whose credential was withdrawn stays connected after its sessions
/// were cut: long enough for their resets to leave (a closed connection drops what it had
/// not sent), short against the 2 s bound on ending live access.
const AGENT_CLOSE_GRACE: Duration = Duration::from_millis(200);

/// The sessions this node relays now, each with the switch that cuts it.
#[derive(Default)]
pub struct Carried {
    /// By registration (one session may be relayed twice here for a moment, while a resume
    /// takes over from the path it replaces).
    entries: Mutex<HashMap<u64, Entry>>,
    next_key: AtomicU64,
}

struct Entry {
    session_id: u64,
    /// The state held the session at some check: from then on, its absence means it ended.
    /// (A session carried for a peer may arrive before this node applied its opening.)
    seen: bool,
    cut: watch::Sender<bool>,
}

/// A session's place in [`Carried`]; leaving it (drop) deregisters the session.
pub struct Registration<'a> {
    carried: &'a Carried,
    key: u64,
    /// Turns true when the session is cut; give it to the splice.
    pub cut: watch::Receiver<bool>,
}

impl Carried {
    /// Registers session `session_id`, which this node has seen in its applied state (it
    /// opened or resumed it), as relayed here until the registration is dropped: from now on
    /// its absence from the state means it ended.
    pub fn register_known(&self, session_id: u64) -> Registration<'_> {
        self.register(session_id, true)
    }

    /// Registers session `session_id`, carried for a peer broker that opened it: this node may
    /// not have applied its opening yet, so its absence means nothing until it was seen.
    pub fn register_unseen(&self, session_id: u64) -> Registration<'_> {
        self.register(session_id, false)
    }

    fn register(&self, session_id: u64, seen: bool) -> Registration<'_> {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let (cut, cut_rx) = watch::channel(false);
        self.lock().insert(
            key,
            Entry {
                session_id,
                seen,
                cut,
            },
        );
        Registration {
            carried: self,
            key,
            cut: cut_rx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries
            .lock()
            .expect("never poisoned: no code panics while holding the carried-sessions lock")
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.carried.lock().remove(&self.key);
    }
}

/// Service "withdraw": applies withdrawals to what this node carries (see the module's notes).
pub async fn watch_withdrawals(
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) -> crate::supervisor::ServiceResult {
    let mut every = tokio::time::interval(WATCH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watcher = Watcher::default();
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.changed() => return Ok(()),
        }
        let applied = ctx.replica.applied_index();
        if applied == watcher.checked_index {
            continue;
        }
        watcher.checked_index = applied;
        watcher.check(&ctx);
    }
}

/// What the watcher remembers between checks.
#[derive(Default)]
struct Watcher {
    /// The applied index of the last check.
    checked_index: u64,
    /// Sessions of hosts attached here at the last check, with their host: one that left the
    /// table since was ended (closed as withdrawn, or closed) and is named to its host, which
    /// ignores the ids of sessions it no longer holds.
    host_sessions: BTreeMap<u64, String>,
    /// Sessions already named to their host agent, so that each is named once.
    named: BTreeSet<u64>,
    /// Host agents being disconnected (after [`AGENT_CLOSE_GRACE`]), so that each is once.
    disconnecting: BTreeSet<String>,
}

impl Watcher {
    fn check(&mut self, ctx: &Ctx) {
        let state = ctx.replica.read();
        // 1. Sessions relayed here.
        for entry in ctx.sessions.carried.lock().values_mut() {
            let refused = match state.session_allowed(entry.session_id) {
                Ok(_) => {
                    entry.seen = true;
                    continue;
                }
                Err(refusal) => refusal,
            };
            let known = entry.seen || state.session(entry.session_id).is_some();
            if known && !*entry.cut.borrow() {
                tracing::info!(session_id = entry.session_id, reason = %refused.message, "session no longer allowed: cutting it");
                ctx.metrics.sessions_withdrawn.inc();
                entry.cut.send_replace(true);
            }
        }
        // 2. Host agents attached here whose credential no longer holds, and 3. the sessions
        // of the others that may not go on.
        let mut to_name: BTreeMap<String, Vec<EndSession>> = BTreeMap::new();
        let mut host_sessions = BTreeMap::new();
        for name in ctx.sessions.hosts.names() {
            let Some(attached) = ctx.sessions.hosts.get(&name) else {
                continue;
            };
            if let Err(refusal) = state.check_host_credential(&name, &attached.credential_hash) {
                if self.disconnecting.insert(name.clone()) {
                    tracing::warn!(host = %name, reason = %refusal.message, "host credential withdrawn: disconnecting its agent");
                    // Its sessions were cut above: their RESET_ENDED goes out first, so that
                    // the other ends (through other brokers too) learn the session ended for
                    // good, rather than see a lost host and try to resume.
                    let conn = attached.conn.clone();
                    let reason = format!("host {name:?} may no longer attach: {}", refusal.message);
                    tokio::spawn(async move {
                        tokio::time::sleep(AGENT_CLOSE_GRACE).await;
                        CloseCode::Unauthenticated.close(&conn, &reason);
                    });
                }
            }
        }
        self.disconnecting
            .retain(|name| ctx.sessions.hosts.get(name).is_some());
        for session in state.sessions() {
            if ctx.sessions.hosts.get(&session.host).is_none() {
                continue;
            }
            host_sessions.insert(session.id, session.host.clone());
            if let Err(refusal) = state.session_allowed(session.id) {
                if self.named.insert(session.id) {
                    to_name
                        .entry(session.host.clone())
                        .or_default()
                        .push(EndSession {
                            session_id: session.id,
                            reason: refusal.message,
                        });
                }
            }
        }
        for (gone, host) in &self.host_sessions {
            if !host_sessions.contains_key(gone) && self.named.insert(*gone) {
                to_name.entry(host.clone()).or_default().push(EndSession {
                    session_id: *gone,
                    reason: format!("session {gone} was ended"),
                });
            }
        }
        self.named.retain(|id| state.session(*id).is_some());
        self.host_sessions = host_sessions;
        drop(state);
        for (host, ended) in to_name {
            let Some(attached) = ctx.sessions.hosts.get(&host) else {
                continue;
            };
            let notice = BrokerNotice {
                end_sessions: ended,
                ..Default::default()
            };
            if !ctx
                .sessions
                .notices
                .notify_connection(attached.conn.stable_id(), notice)
            {
                tracing::warn!(%host, "could not tell the host agent which sessions ended (its notice queue is full)");
            }
        }
    }
}
