//! The peers' connections in: each is identified by its certificate, its Raft messages go to
//! the replica, and every request goes to the node's [`Inbox`], answered on its stream.

use crate::convert::outcome_to_wire;
use crate::inbox::{Inbox, IncomingRelay, Request};
use crate::links::{Peers, CONNECT_TIMEOUT};
use crate::PeerConfig;
use ferry_proto::peer::{
    peer_request, GateResponse, LoginVerdict, PeerRequest, RaftMessage, RejoinReply, RelayResponse,
};
use ferry_proto::state::Command;
use ferry_proto::wire;
use ferry_replica::ProposeError;
use ferry_transport::framed;
use prost::Message as _;
use std::sync::Arc;
use tokio::sync::{oneshot, watch};

impl Peers {
    /// Service "peer-links": accepts the peers' connections and serves what they send, until
    /// shutdown. At most `limits.handshakes_max` connections are in their handshake at once;
    /// more are refused.
    pub async fn accept_loop(
        self: Arc<Self>,
        inbox: Inbox,
        mut shutdown: watch::Receiver<bool>,
    ) -> crate::LoopResult {
        loop {
            let incoming = tokio::select! {
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => return Err("the peer endpoint closed".into()),
                },
                _ = shutdown.changed() => {
                    // Closing the endpoint ends every peer connection and the tasks serving them.
                    self.endpoint.close(ferry_transport::CloseCode::ShuttingDown.varint(), b"node shutting down");
                    return Ok(());
                }
            };
            let Ok(handshake) = self.handshakes.clone().try_acquire_owned() else {
                tracing::warn!(remote = %incoming.remote_address(), "peer connection refused: too many handshakes in flight");
                incoming.refuse();
                continue;
            };
            let (this, inbox) = (self.clone(), inbox.clone());
            tokio::spawn(async move {
                let conn = tokio::time::timeout(CONNECT_TIMEOUT, incoming).await;
                drop(handshake);
                let Ok(Ok(conn)) = conn else {
                    return;
                };
                let Some(peer) = this.identify(&conn) else {
                    tracing::warn!(remote = %conn.remote_address(), "peer connection refused: certificate names no configured peer");
                    conn.close(1u32.into(), b"certificate names no configured peer");
                    return;
                };
                this.serve(conn, peer, inbox).await;
            });
        }
    }

    /// The known peer whose name the connection's (CA-verified) certificate carries.
    fn identify(self: &Arc<Self>, conn: &quinn::Connection) -> Option<PeerConfig> {
        let named = |this: &Arc<Self>| {
            let identity = conn.peer_identity()?;
            let chain = identity
                .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()?;
            let node = ferry_transport::tls::peer_node(&chain, &this.names())?.to_owned();
            this.link_named(&node).map(|link| link.config.clone())
        };
        named(self).or_else(|| {
            self.reconcile(); // perhaps a member added a moment ago
            named(self)
        })
    }

    /// Serves one peer's connection until it closes.
    async fn serve(self: Arc<Self>, conn: quinn::Connection, peer: PeerConfig, inbox: Inbox) {
        loop {
            tokio::select! {
                uni = conn.accept_uni() => {
                    let Ok(recv) = uni else { return };
                    tokio::spawn(self.clone().take_raft_messages(conn.clone(), recv, peer.clone()));
                }
                bi = conn.accept_bi() => {
                    let Ok((send, recv)) = bi else { return };
                    if self.is_blocked_named(&peer.node_id) {
                        continue; // dropped: the peer times out, as across a partition
                    }
                    let answer = self.clone().answer(conn.clone(), send, recv, peer.node_id.clone(), inbox.clone());
                    tokio::spawn(answer);
                }
            }
        }
    }

    /// Hands the Raft messages of one stream to the replica, while the peer's raft id (the one
    /// it has now: it changes when the peer rejoins) vouches for their sender.
    async fn take_raft_messages(
        self: Arc<Self>,
        conn: quinn::Connection,
        mut recv: quinn::RecvStream,
        peer: PeerConfig,
    ) {
        let limits = self.limits.frames();
        loop {
            let frame = match framed::read::<RaftMessage, _>(&mut recv, limits).await {
                Ok(frame) => frame,
                // The stream ended or broke (a reconnect, a close): nothing more to read.
                Err(framed::Error::Ended | framed::Error::Io(_)) => return,
                Err(e) => return reject(&conn, &peer.node_id, &e),
            };
            let raft_id = self
                .link_named(&peer.node_id)
                .map_or(peer.raft_id, |l| l.config.raft_id);
            if self.is_blocked(raft_id) {
                continue;
            }
            // prost, never rust-protobuf, parses what a peer sent (`ferry_consensus::codec`).
            match ferry_consensus::codec::decode_message(&frame.message) {
                Ok(m) if m.from == raft_id || self.learn_raft_id(&peer.node_id, m.from) => {
                    self.replica.step(m)
                }
                Ok(m) => {
                    tracing::warn!(peer = %peer.node_id, from = m.from, "raft message with a forged sender dropped")
                }
                Err(e) => return reject(&conn, &peer.node_id, &e),
            }
        }
    }

    /// Reads one request, hands it to the node, and writes the node's answer.
    async fn answer(
        self: Arc<Self>,
        conn: quinn::Connection,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        from: String,
        inbox: Inbox,
    ) {
        let limits = self.limits.frames();
        let request = match framed::read::<PeerRequest, _>(&mut recv, limits).await {
            Ok(request) => request,
            Err(framed::Error::Ended | framed::Error::Io(_)) => return,
            Err(e) => return reject(&conn, &from, &e),
        };
        /// Hands `request` to the node and waits for its answer; `None` when the queue is full
        /// or the node dropped the request.
        async fn ask<T>(
            inbox: &Inbox,
            request: impl FnOnce(oneshot::Sender<T>) -> Request,
        ) -> Option<T> {
            let (reply, answer) = oneshot::channel();
            inbox.requests.try_send(request(reply)).ok()?;
            answer.await.ok()
        }
        let busy = "too many peer requests waiting; try again";
        match request.request {
            Some(peer_request::Request::Forward(forward)) => {
                let response = match Command::decode(&forward.command[..]) {
                    Ok(command) => outcome_to_wire(
                        ask(&inbox, |reply| Request::Forward { command, reply })
                            .await
                            .unwrap_or(Err(ProposeError::Overloaded)),
                    ),
                    Err(e) => outcome_to_wire(Err(ProposeError::Invalid(format!(
                        "undecodable command: {e}"
                    )))),
                };
                let _ = framed::write(&mut send, &response, limits).await;
            }
            Some(peer_request::Request::Probe(probe)) => {
                // No answer at all when busy: an empty answer would read as "knows nothing".
                let Some(reply) = ask(&inbox, |reply| Request::Probe { probe, reply }).await else {
                    return;
                };
                let _ = framed::write(&mut send, &reply, limits).await;
            }
            Some(peer_request::Request::Rejoin(request)) => {
                let reply = ask(&inbox, |reply| Request::Rejoin {
                    request,
                    from,
                    reply,
                })
                .await
                .unwrap_or_else(|| RejoinReply {
                    raft_id: 0,
                    error: busy.into(),
                });
                let _ = framed::write(&mut send, &reply, limits).await;
            }
            Some(peer_request::Request::Health(report)) => {
                // A report is a snapshot: one dropped is replaced half a second later.
                let _ = inbox.requests.try_send(Request::Health { from, report });
                return;
            }
            Some(peer_request::Request::Login(request)) => {
                // Busy is a refusal, not a pass: the limits must not give way under load.
                let verdict = ask(&inbox, |reply| Request::Login { request, reply })
                    .await
                    .unwrap_or_else(|| LoginVerdict {
                        refusal: "the cluster is busy checking logins; try again".into(),
                        scope: "busy".into(),
                        not_leader: false,
                    });
                let _ = framed::write(&mut send, &verdict, limits).await;
            }
            Some(peer_request::Request::Gate(request)) => {
                let (reply, answer) = oneshot::channel();
                let response = match inbox.gates.try_send((request, reply)) {
                    Ok(()) => answer.await.unwrap_or_default(),
                    Err(_) => GateResponse {
                        error: "too many gate requests waiting; try again".into(),
                        ..Default::default()
                    },
                };
                let _ = framed::write(&mut send, &response, limits).await;
            }
            Some(peer_request::Request::Relay(request)) => {
                let incoming = IncomingRelay {
                    request,
                    send,
                    recv,
                };
                if let Err(e) = inbox.relays.try_send(incoming) {
                    let mut refused = e.into_inner();
                    let error = wire::Error::new(
                        wire::ErrorCode::ResourceExhausted,
                        "too many relayed sessions waiting",
                    );
                    let response = RelayResponse {
                        error: Some(error),
                        reply: None,
                    };
                    let _ = framed::write(&mut refused.send, &response, limits).await;
                    let _ = refused.send.finish();
                }
                return;
            }
            None => return,
        }
        let _ = send.finish();
    }
}

/// Closes a peer's connection because it sent bytes that are not a valid frame or message: a
/// node of this cluster never does, so this is a bug or an impostor holding a node's key, and
/// the reason says which input. The peer's links reconnect.
fn reject(conn: &quinn::Connection, peer: &str, error: &dyn std::fmt::Display) {
    let reason = format!("protocol error from peer {peer}: {error}");
    tracing::warn!(%peer, %reason, "closing a peer connection");
    ferry_transport::CloseCode::Protocol.close(conn, &reason);
}
