//! A client's connections to brokers.
//!
//! Every session and every resume takes a QUIC stream, and a broker grants a bounded number of
//! concurrent streams per connection (its `limits.streams_per_connection_max`). So that a
//! forward carries as many local connections as a user's tools open, the pool opens a stream
//! on the first connection that has one free *now*, and dials another connection (to the
//! same broker) when none has, up to `connections_max`. Past that it refuses at once, with
//! the reason: nothing ever waits for a stream that may never come.
//!
//! The pool also reads each connection's control stream for the broker's notices (a drain
//! names where to move) and hands them to its owner through a bounded channel.

use crate::dial::{closed, Connected, Dialer};
use crate::Error;
use ferry_proto::frame::FrameLimits;
use ferry_proto::wire::{self, ErrorCode};
use ferry_transport::framed;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Mutex};

/// A connection beyond the first that has carried no new stream for this long, and that no
/// session uses, is closed.
const IDLE_CLOSE_AFTER: Duration = Duration::from_secs(30);
/// How long a stream may take to open on a connection just dialed (the broker's initial
/// grant covers it at once; this only bounds a broker that grants none).
const FRESH_STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// After a dial that reached no broker, requests fail at once with its error for this long
/// instead of each dialing in turn: thousands of sessions resuming through a partition would
/// otherwise queue behind one another's dials for minutes.
const DIAL_FAILURE_HOLD: Duration = Duration::from_millis(500);

/// Broker `node_id` asked its endpoints to move to `to`.
pub struct Notice {
    pub node_id: String,
    pub to: wire::BrokerInfo,
    pub reason: String,
}

/// A stream opened for a request, and the connection carrying it.
pub struct Opened {
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    pub conn: quinn::Connection,
}

struct Member {
    conn: quinn::Connection,
    /// The broker it reaches.
    node_id: String,
    /// Its broker drains: no new streams here; the owner closes it once its sessions moved.
    retiring: bool,
    /// When it last gave out a stream (for closing idle extra connections).
    last_used: Instant,
}

pub struct Pool {
    /// Makes new connections (QUIC, TLS against the cluster CA, Hello).
    dialer: Dialer,
    /// Connections in the order new streams try them, and the last failed dial. A tokio
    /// mutex: held across a dial, so that a burst of requests on a full pool dials one
    /// connection, not one each.
    members: Mutex<Members>,
    /// Most connections held at once (retiring ones included).
    connections_max: usize,
    /// The broker whose connection was lost last, or which drains: dialed last.
    lost_broker: std::sync::Mutex<Option<String>>,
    /// Where each connection's reader of broker notices sends them (bounded).
    notices: mpsc::Sender<Notice>,
}

#[derive(Default)]
struct Members {
    list: Vec<Member>,
    /// When a dial last reached no broker, and why (see [`DIAL_FAILURE_HOLD`]).
    dial_failed: Option<(Instant, String)>,
}

impl Pool {
    /// A pool of at most `connections_max` connections, and the receiver of their brokers'
    /// notices.
    pub fn new(dialer: Dialer, connections_max: usize) -> (Self, mpsc::Receiver<Notice>) {
        let connections_max = connections_max.max(1);
        // Each connection sends at most a notice or two before it is retired.
        let (notices, receiver) = mpsc::channel(2 * connections_max);
        let pool = Self {
            dialer,
            members: Mutex::new(Members::default()),
            connections_max,
            lost_broker: Default::default(),
            notices,
        };
        (pool, receiver)
    }

    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// Opens a stream for one request: on a connection with a stream free now, else on a
    /// new connection, else refused (every connection allowed is full).
    pub async fn open(&self) -> Result<Opened, Error> {
        let mut guard = self.members.lock().await;
        let Members { list, dial_failed } = &mut *guard;
        self.prune(list);
        for member in list.iter_mut().filter(|m| !m.retiring) {
            // Otherwise it closed meanwhile (pruned next time), or every stream it may open is
            // in use.
            if let Some(Ok((send, recv))) = open_now(&member.conn) {
                member.last_used = Instant::now();
                return Ok(Opened {
                    send,
                    recv,
                    conn: member.conn.clone(),
                });
            }
        }
        if list.len() >= self.connections_max {
            let live = list.iter().filter(|m| !m.retiring).count();
            return Err(Error::Refused {
                code: ErrorCode::ResourceExhausted,
                message: format!(
                    "all {live} connections to the brokers carry as many streams as the \
                     brokers allow, and no more than {} connections are allowed \
                     (--max-connections)",
                    self.connections_max
                ),
            });
        }
        let connected = self.dial_like(list, dial_failed).await?;
        let conn = connected.conn.clone();
        self.adopt(list, connected);
        drop(guard);
        let (send, recv) = tokio::time::timeout(FRESH_STREAM_TIMEOUT, conn.open_bi())
            .await
            .map_err(|_| {
                Error::Protocol("the broker granted no stream on a new connection".into())
            })?
            .map_err(|e| closed(&conn, &e))?;
        Ok(Opened { send, recv, conn })
    }

    /// Connects now if no connection is up, so that configuration and trust errors surface
    /// at once.
    pub async fn ensure_connected(&self) -> Result<(), Error> {
        let mut guard = self.members.lock().await;
        let Members { list, dial_failed } = &mut *guard;
        self.prune(list);
        if list.iter().any(|m| !m.retiring) {
            return Ok(());
        }
        let connected = self.dial_like(list, dial_failed).await?;
        self.adopt(list, connected);
        Ok(())
    }

    /// Stops giving out streams on every connection to `node_id` (it drains) and returns
    /// their ids; the owner moves their sessions and then calls [`Pool::close`].
    pub async fn retire(&self, node_id: &str) -> Vec<usize> {
        *self
            .lost_broker
            .lock()
            .expect("never poisoned: no panics under the lock") = Some(node_id.to_owned());
        let mut members = self.members.lock().await;
        members
            .list
            .iter_mut()
            .filter(|m| m.node_id == node_id)
            .map(|m| {
                m.retiring = true;
                m.conn.stable_id()
            })
            .collect()
    }

    /// Takes a connection made elsewhere (to the broker a draining one named); it is tried
    /// first for new streams.
    pub async fn add_first(&self, connected: Connected) {
        let mut members = self.members.lock().await;
        self.adopt(&mut members.list, connected);
        members.list.rotate_right(1);
    }

    /// Closes connection `id` and forgets it.
    pub async fn close(&self, id: usize, why: &str) {
        let mut members = self.members.lock().await;
        if let Some(i) = members.list.iter().position(|m| m.conn.stable_id() == id) {
            members
                .list
                .remove(i)
                .conn
                .close(0u32.into(), why.as_bytes());
        }
    }

    /// Closes extra connections (beyond the first live one) that carry no session
    /// (`in_use(id)` false) and gave out no stream for a while.
    pub async fn close_idle(&self, in_use: impl Fn(usize) -> bool) {
        let mut members = self.members.lock().await;
        self.prune(&mut members.list);
        let first = members.list.iter().position(|m| !m.retiring);
        let mut i = 0;
        members.list.retain(|m| {
            let keep = Some(i) == first
                || m.retiring
                || m.last_used.elapsed() < IDLE_CLOSE_AFTER
                || in_use(m.conn.stable_id());
            if !keep {
                tracing::debug!(broker = %m.node_id, "closing an idle extra connection");
                m.conn.close(0u32.into(), b"idle");
            }
            i += 1;
            keep
        });
    }

    /// Closes every connection.
    pub async fn close_all(&self, why: &str) {
        for m in self.members.lock().await.list.drain(..) {
            m.conn.close(0u32.into(), why.as_bytes());
        }
    }

    /// Forgets closed connections, remembering the broker of one that failed.
    fn prune(&self, members: &mut Vec<Member>) {
        members.retain(|m| {
            let open = m.conn.close_reason().is_none();
            if !open && !m.retiring {
                *self
                    .lost_broker
                    .lock()
                    .expect("never poisoned: no panics under the lock") = Some(m.node_id.clone());
            }
            open
        });
    }

    /// Dials the broker of the first live connection (sessions stay together), or any
    /// broker but the one lost last; fails at once while a failed dial is recent.
    async fn dial_like(
        &self,
        members: &[Member],
        dial_failed: &mut Option<(Instant, String)>,
    ) -> Result<Connected, Error> {
        if let Some((at, why)) = dial_failed.as_ref() {
            if at.elapsed() < DIAL_FAILURE_HOLD {
                return Err(Error::Unreachable(why.clone()));
            }
        }
        let dialed = self.dial(members).await;
        *dial_failed = match &dialed {
            Err(Error::Unreachable(why)) => Some((Instant::now(), why.clone())),
            _ => None,
        };
        dialed
    }

    async fn dial(&self, members: &[Member]) -> Result<Connected, Error> {
        if let Some(m) = members.iter().find(|m| !m.retiring) {
            let same = wire::BrokerInfo {
                node_id: m.node_id.clone(),
                relay_addr: m.conn.remote_address().to_string(),
            };
            match self.dialer.connect_to(&same).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::debug!(broker = %m.node_id, error = %e, "cannot add a connection")
                }
            }
        }
        let avoid = self
            .lost_broker
            .lock()
            .expect("never poisoned: no panics under the lock")
            .clone();
        self.dialer.connect_avoiding(avoid.as_deref()).await
    }

    fn adopt(&self, members: &mut Vec<Member>, connected: Connected) {
        tracing::debug!(broker = %connected.node_id, held = members.len() + 1, "connected");
        let Connected {
            conn,
            node_id,
            control,
            ..
        } = connected;
        tokio::spawn(read_notices(
            node_id.clone(),
            control.1,
            self.notices.clone(),
        ));
        members.push(Member {
            conn,
            node_id,
            retiring: false,
            last_used: Instant::now(),
        });
    }
}

/// Opens a bidirectional stream if the connection may open one now, without waiting.
fn open_now(
    conn: &quinn::Connection,
) -> Option<Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>> {
    let open = conn.open_bi();
    let mut open = std::pin::pin!(open);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match open.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(result) => Some(result),
        std::task::Poll::Pending => None,
    }
}

/// Reads a broker's notices on a connection's control stream until it ends.
async fn read_notices(
    node_id: String,
    mut control: quinn::RecvStream,
    notices: mpsc::Sender<Notice>,
) {
    while let Ok(notice) =
        framed::read::<wire::BrokerNotice, _>(&mut control, FrameLimits::default()).await
    {
        if let Some(to) = notice.move_to {
            let notice = Notice {
                node_id: node_id.clone(),
                to,
                reason: notice.reason,
            };
            if notices.send(notice).await.is_err() {
                return;
            }
        }
    }
}
