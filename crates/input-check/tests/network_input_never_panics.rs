//! Every family of network input (`ferry_input_check`: wire frames, peer messages and forwarded
//! commands, session frames and resumes, admin API bodies), fed seeded random bytes and
//! mutated valid encodings: no panic, and no decode allocates far beyond its input. The fuzz
//! targets in `fuzz/` explore the same functions without bound (nightly only); this runs on
//! every CI build. `FERRY_SEED=N` replays a run.

use ferry_decoder_check::{check, mutate, seed, Bound, Counting, Rng};
use ferry_proto::{peer, state, wire};
use prost::Message as _;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Inputs per family.
const INPUTS: usize = 20_000;

/// What handling one input may allocate: a state machine and a session stream are set up for
/// each (a constant), and a decode may build a record per couple of input bytes.
const BOUND: Bound = Bound {
    constant: 1024 * 1024,
    per_input_byte: 1024,
};

/// Valid encodings to mutate, each behind the byte that selects its type in `f`.
fn run(family: &str, stream: u64, valid: &[Vec<u8>], f: fn(&[u8])) {
    let seed = seed();
    let mut rng = Rng::new(seed, stream);
    let mut sizes = 0usize;
    for i in 0..INPUTS {
        let input = if i % 2 == 0 {
            rng.blob()
        } else {
            let base = rng.below(valid.len());
            mutate(&mut rng, &valid[base])
        };
        sizes += input.len();
        check(seed, family, &input, BOUND, f);
    }
    println!("{family}: {INPUTS} inputs, {sizes} bytes, no panic (FERRY_SEED={seed})");
}

fn tagged(tag: u8, bytes: Vec<u8>) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(bytes);
    out
}

#[test]
fn wire_frames_never_panic() {
    let hello = wire::Hello {
        protocol_version: 1,
        role: wire::Role::Client as i32,
        software: "ferry".into(),
    };
    let login = wire::ClientRequest {
        request: Some(wire::client_request::Request::Login(wire::Login {
            user: "alice".into(),
            password: "correct horse".into(),
        })),
    };
    let resume = wire::ClientRequest {
        request: Some(wire::client_request::Request::ResumeSession(
            wire::ResumeSession {
                session_id: 7,
                resume_secret: "00".repeat(32),
                received: 1 << 20,
                written: 1 << 21,
            },
        )),
    };
    let enroll = wire::HostRequest {
        request: Some(wire::host_request::Request::Enroll(wire::Enroll {
            name: "lab-pc".into(),
            token: "ab".repeat(32),
        })),
    };
    let valid = vec![
        tagged(0, hello.encode_to_vec()),
        tagged(2, login.encode_to_vec()),
        tagged(2, resume.encode_to_vec()),
        tagged(4, enroll.encode_to_vec()),
        tagged(6, wire::SessionStart::default().encode_to_vec()),
    ];
    run("wire", 1, &valid, ferry_input_check::wire);
}

#[test]
fn peer_messages_and_forwarded_commands_never_panic() {
    let command = state::Command {
        now_ms: 5,
        actor: "user:alice".into(),
        source: "192.0.2.1:4000".into(),
        kind: Some(state::command::Kind::OpenSession(state::OpenSession {
            user: "alice".into(),
            host: "lab-pc".into(),
            service: "ssh".into(),
            broker: "b1".into(),
            resume_secret_hash: vec![1; 32],
            token_hash: vec![2; 32],
        })),
    };
    let raft = ferry_proto::eraftpb::Message {
        msg_type: 3,
        to: 2,
        from: 1,
        entries: vec![ferry_proto::eraftpb::Entry {
            data: command.encode_to_vec(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let valid = vec![
        tagged(0, peer::PeerRequest::default().encode_to_vec()),
        tagged(1, raft.encode_to_vec()),
        tagged(3, command.encode_to_vec()),
        tagged(6, peer::HealthReport::default().encode_to_vec()),
    ];
    run("peer", 2, &valid, ferry_input_check::peer);
}

#[test]
fn session_frames_and_resumes_never_panic() {
    use ferry_session::Frame;
    let mut frames = bytes::BytesMut::new();
    for frame in [
        Frame::Data {
            offset: 0,
            bytes: bytes::Bytes::from_static(b"hello"),
        },
        Frame::Ack {
            received: 5,
            fin_received: false,
        },
        Frame::Fin { offset: 5 },
        Frame::Abort {
            reason: "gone".into(),
        },
    ] {
        frame.encode(&mut frames);
    }
    let valid = vec![tagged(3, frames.to_vec()), tagged(200, frames.to_vec())];
    run("session", 3, &valid, ferry_input_check::session);
}

#[test]
fn admin_json_bodies_never_panic() {
    let valid = vec![
        tagged(
            0,
            br#"{"name":"alice","groups":["staff"],"password":"x"}"#.to_vec(),
        ),
        tagged(6, br#"{"force":true,"wait":false}"#.to_vec()),
        tagged(10, br#"{"a":[1,2,{"b":null}]}"#.to_vec()),
    ];
    run("admin-json", 4, &valid, ferry_input_check::admin_json);
}
