//! What arrives from the network, exercised as a node takes it. One function per family of
//! input; each takes arbitrary bytes, never panics on them (a panic is a bug of ours), and
//! checks that whatever decodes encodes back to itself. The fuzz targets in `fuzz/` call these
//! without bound (nightly, cargo-fuzz); `tests/network_input_never_panics.rs` feeds them seeded
//! random and mutated valid inputs on every CI build (stable).
//!
//! - [`wire`]: the frames clients and host agents send a broker (and brokers send them back),
//!   through the bounded frame codec, one message type chosen by the first byte.
//! - [`peer`]: what a peer broker sends: its requests, Raft messages (prost, then raft-rs's
//!   types: `ferry_consensus::codec`), and forwarded commands applied to a state machine, as
//!   the leader applies them.
//! - [`session`]: the resumable stream's frames, in arbitrary pieces, handled by a session
//!   stream, then a resume at an arbitrary offset.
//! - [`admin_json`]: the admin API's JSON bodies (`ferry_broker::admin::decode_json_body`).

#![forbid(unsafe_code)]

use ferry_proto::frame::{self, FrameLimits};
use ferry_proto::{peer, state, wire};
use prost::Message;

/// Wire message types [`wire`] chooses among.
const WIRE_TYPES: u8 = 12;

/// A frame from a client or host agent (or a broker's answer to one).
pub fn wire(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % WIRE_TYPES {
        0 => message::<wire::Hello>(rest),
        1 => message::<wire::HelloReply>(rest),
        2 => message::<wire::ClientRequest>(rest),
        3 => message::<wire::ClientResponse>(rest),
        4 => message::<wire::HostRequest>(rest),
        5 => message::<wire::HostResponse>(rest),
        6 => message::<wire::SessionStart>(rest),
        7 => message::<wire::SessionStartReply>(rest),
        8 => message::<wire::BrokerNotice>(rest),
        9 => message::<wire::ResumeSession>(rest),
        10 => message::<wire::SessionResumed>(rest),
        _ => message::<wire::HostList>(rest),
    }
}

/// Peer message types [`peer`] chooses among.
const PEER_TYPES: u8 = 10;

/// What another broker sends over the peer link.
pub fn peer(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % PEER_TYPES {
        0 => message::<peer::PeerRequest>(rest),
        1 => {
            message::<peer::RaftMessage>(rest);
            // The Raft message inside, as the peer link decodes it.
            let _ = ferry_consensus::codec::decode_message(rest);
        }
        2 => {
            let _ = ferry_consensus::codec::decode_conf_change_v2(rest);
            let _ = ferry_consensus::codec::decode_conf_change(rest);
        }
        3 => forwarded_command(rest),
        4 => message::<peer::ForwardResponse>(rest),
        5 => message::<peer::GateResponse>(rest),
        6 => message::<peer::HealthReport>(rest),
        7 => message::<peer::RejoinReply>(rest),
        8 => message::<peer::LoginVerdict>(rest),
        _ => message::<peer::RelayResponse>(rest),
    }
}

/// A command a follower forwards to the leader: decoded, then applied (twice: the second
/// application meets the state the first left) to a state machine with a user and a host.
fn forwarded_command(bytes: &[u8]) {
    let Ok(command) = state::Command::decode(bytes) else {
        return;
    };
    let mut machine = seeded_state();
    machine.apply(&command);
    machine.apply(&command);
}

/// A state with something in it for commands to refer to.
fn seeded_state() -> ferry_state::StateMachine {
    use state::command::Kind;
    let mut machine = ferry_state::StateMachine::default();
    let setup = [
        Kind::AddUser(state::AddUser {
            name: "alice".into(),
            groups: vec!["staff".into()],
            password_hash: "$argon2id$fake".into(),
        }),
        Kind::CreateHost(state::CreateHost {
            name: "lab-pc".into(),
            groups: vec!["lab".into()],
            enrollment_token_hash: vec![7; 32],
            enrollment_expires_at_ms: u64::MAX,
        }),
        Kind::AddGrant(state::AddGrant {
            user_group: "staff".into(),
            host_group: "lab".into(),
            services: Vec::new(),
        }),
    ];
    for kind in setup {
        machine.apply(&state::Command {
            now_ms: 1,
            actor: "test".into(),
            source: String::new(),
            kind: Some(kind),
        });
    }
    machine
}

/// A session stream's input: the first byte sets the size of the pieces the rest arrives in
/// (as QUIC may split it), the last eight bytes a resume offset.
pub fn session(data: &[u8]) {
    use ferry_session::{Config, Decoder, Stream};
    let Some((&piece, rest)) = data.split_first() else {
        return;
    };
    let mut stream = Stream::new(Config {
        buffer_bytes_max: 64 * 1024,
        ack_every_bytes: 1024,
    });
    stream.push_local(bytes::Bytes::from_static(b"what this side wrote"));
    let mut decoder = Decoder::new();
    for chunk in rest.chunks(usize::from(piece).max(1)) {
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let mut encoded = bytes::BytesMut::new();
                    frame.encode(&mut encoded);
                    let mut again = Decoder::new();
                    again.push(&encoded);
                    assert_eq!(
                        again.next_frame().ok().flatten().as_ref(),
                        Some(&frame),
                        "a decoded session frame encodes back to itself"
                    );
                    if stream.handle_frame(frame).is_err() {
                        return;
                    }
                    while stream.poll_deliver().is_some() {}
                    while stream.poll_transmit().is_some() {}
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let offset = rest
        .len()
        .checked_sub(8)
        .and_then(|at| rest.get(at..))
        .and_then(|tail| <[u8; 8]>::try_from(tail).ok())
        .map_or(0, u64::from_be_bytes);
    stream.detach();
    let _ = stream.resume(offset);
    while stream.poll_transmit().is_some() {}
}

/// An admin API JSON body, the first byte choosing which.
pub fn admin_json(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let _ = ferry_broker::admin::decode_json_body(usize::from(kind), rest);
}

/// Decodes `bytes` as `M`, bare and as a frame; what decodes must encode back to itself.
fn message<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(m) = M::decode(bytes) {
        let again = M::decode(&m.encode_to_vec()[..]).expect("an encoding decodes");
        assert_eq!(again, m, "a decoded message encodes back to itself");
    }
    let _ = frame::decode_frame::<M>(bytes, FrameLimits::default());
}
