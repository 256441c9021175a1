//! Deterministic simulation of two endpoints over a path that breaks and is resumed.
//!
//! Each seed drives a random schedule: local writes of random sizes, links that deliver frames
//! in order but get cut at random (every frame in flight is lost, as when a broker dies),
//! resumes, local readers that stall, and ends of stream. The checks: each side receives
//! exactly the bytes the other wrote, in order, once; the replay buffer never exceeds its
//! limit; both sides complete. `FERRY_SEED=N` replays one seed.

use bytes::Bytes;
use ferry_session::{Config, Decoder, Delivery, Frame, Stream};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;

const SEEDS_PER_RUN: u64 = 500;
const STEPS_MAX: usize = 200_000;

struct Side {
    stream: Stream,
    /// Everything the local application wrote (to compare with what the far side received).
    wrote: Vec<u8>,
    /// Bytes still to write locally.
    to_write: usize,
    got: Vec<u8>,
    ended: bool,
}

fn byte_at(side: u8, offset: usize) -> u8 {
    (offset as u64)
        .wrapping_mul(2654435761)
        .wrapping_add(side as u64) as u8
}

fn run(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let config = Config {
        buffer_bytes_max: rng.gen_range(256..200_000),
        ack_every_bytes: rng.gen_range(1..100_000),
    };
    let mut sides: Vec<Side> = (0..2)
        .map(|_| Side {
            stream: Stream::new(config),
            wrote: Vec::new(),
            // Enough to fill the buffer many times over, few enough to finish within the steps.
            to_write: rng.gen_range(0..(config.buffer_bytes_max * 100).min(400_000)),
            got: Vec::new(),
            ended: false,
        })
        .collect();
    // In-flight bytes per direction on the current link, encoded, with a decoder per receiver.
    let mut wires: [VecDeque<u8>; 2] = [VecDeque::new(), VecDeque::new()];
    let mut decoders = [Decoder::new(), Decoder::new()];
    let mut link_up = true;
    let mut resumes = 0;
    for step in 0..STEPS_MAX {
        if sides.iter().all(|s| s.stream.is_complete()) {
            for (i, side) in sides.iter().enumerate() {
                assert_eq!(
                    side.got,
                    sides[1 - i].wrote,
                    "seed {seed}: side {i} received exactly what the other wrote"
                );
            }
            if std::env::var("FERRY_SEED").is_ok() {
                eprintln!("seed {seed}: complete after {resumes} resumes");
            }
            return;
        }
        match rng.gen_range(0..100) {
            // A local write, as large as the replay buffer allows.
            0..=29 => {
                let i = rng.gen_range(0..2);
                let side = &mut sides[i];
                let room = side.stream.write_capacity();
                if side.to_write > 0 && room > 0 {
                    let n = rng.gen_range(1..=side.to_write.min(room).min(70_000));
                    let start = side.wrote.len();
                    let chunk: Vec<u8> = (start..start + n).map(|o| byte_at(i as u8, o)).collect();
                    side.wrote.extend_from_slice(&chunk);
                    side.stream.push_local(Bytes::from(chunk));
                    side.to_write -= n;
                } else if side.to_write == 0 && !side.ended {
                    side.stream.end_local();
                    side.ended = true;
                }
            }
            // A side transmits what it has (or a timer-driven ack).
            30..=64 => {
                let i = rng.gen_range(0..2);
                if !link_up {
                    continue;
                }
                let frame = if rng.gen_bool(0.1) {
                    sides[i].stream.poll_ack()
                } else {
                    sides[i].stream.poll_transmit()
                };
                if let Some(frame) = frame {
                    let mut out = bytes::BytesMut::new();
                    frame.encode(&mut out);
                    wires[i].extend(out.iter());
                }
                assert!(
                    sides[i].stream.buffer_cost_bytes() <= config.buffer_bytes_max,
                    "seed {seed} step {step}: replay buffer over its limit"
                );
            }
            // The wire delivers some bytes, in order, in a random piece size.
            65..=94 => {
                let i = rng.gen_range(0..2);
                if !link_up || wires[i].is_empty() {
                    continue;
                }
                let n = rng.gen_range(1..=wires[i].len());
                let piece: Vec<u8> = wires[i].drain(..n).collect();
                decoders[1 - i].push(&piece);
                while let Some(frame) = decoders[1 - i]
                    .next_frame()
                    .unwrap_or_else(|e| panic!("seed {seed}: decode: {e}"))
                {
                    match sides[1 - i].stream.handle_frame(frame) {
                        Ok(Some(Delivery::Bytes(b))) => sides[1 - i].got.extend_from_slice(&b),
                        Ok(Some(Delivery::End)) => {}
                        Ok(Some(Delivery::Aborted(r))) => panic!("seed {seed}: abort {r}"),
                        Ok(None) => {}
                        Err(e) => panic!("seed {seed} step {step}: {e}"),
                    }
                }
            }
            // The path breaks: everything in flight is lost.
            95..=97 => {
                link_up = false;
                wires = [VecDeque::new(), VecDeque::new()];
                decoders = [Decoder::new(), Decoder::new()];
            }
            // The endpoints meet again through another broker and exchange offsets.
            _ => {
                if link_up {
                    continue;
                }
                let (r0, r1) = (sides[0].stream.received(), sides[1].stream.received());
                sides[0]
                    .stream
                    .resume(r1)
                    .unwrap_or_else(|e| panic!("seed {seed}: resume 0: {e}"));
                sides[1]
                    .stream
                    .resume(r0)
                    .unwrap_or_else(|e| panic!("seed {seed}: resume 1: {e}"));
                link_up = true;
                resumes += 1;
            }
        }
    }
    panic!(
        "seed {seed}: did not complete in {STEPS_MAX} steps ({config:?}, link up {link_up}): {:?}",
        sides
            .iter()
            .map(|s| (&s.stream, s.to_write, s.ended))
            .collect::<Vec<_>>()
    );
}

#[test]
fn every_byte_arrives_once_in_order_across_broken_links() {
    if let Some(seed) = std::env::var("FERRY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        eprintln!("replaying seed {seed}");
        return run(seed);
    }
    let base: u64 = rand::random::<u32>() as u64;
    eprintln!(
        "seeds {base}..{} (FERRY_SEED=N replays one)",
        base + SEEDS_PER_RUN
    );
    for seed in base..base + SEEDS_PER_RUN {
        run(seed);
    }
}

#[test]
fn a_full_replay_buffer_stops_the_local_reader_until_acknowledged() {
    let config = Config {
        buffer_bytes_max: 10_000,
        ack_every_bytes: 1,
    };
    let (mut a, mut b) = (Stream::new(config), Stream::new(config));
    let mut pushed = 0;
    while a.write_capacity() > 0 {
        let n = a.write_capacity().min(3000);
        a.push_local(Bytes::from(vec![1u8; n]));
        pushed += n;
    }
    assert!(pushed < 10_000 && a.buffer_cost_bytes() <= 10_000);
    // Sending does not free the buffer; only the peer's acknowledgement does.
    while let Some(f) = a.poll_transmit() {
        b.handle_frame(f).expect("in order");
    }
    assert_eq!(
        a.write_capacity(),
        0,
        "sent but unacknowledged bytes stay buffered"
    );
    let ack = b.poll_transmit().expect("an ack is due");
    assert!(matches!(ack, Frame::Ack { received, .. } if received == pushed as u64));
    a.handle_frame(ack).expect("valid ack");
    assert_eq!(a.unacked_bytes(), 0);
    assert!(a.write_capacity() > 9000);
}

#[test]
fn impossible_frames_are_errors() {
    let config = Config::default();
    let data = |offset, n: usize| Frame::Data {
        offset,
        bytes: Bytes::from(vec![0u8; n]),
    };
    let cases: Vec<(Vec<Frame>, &str)> = vec![
        (vec![data(5, 1)], "offset 5, expected 0"),
        (vec![data(0, 3), data(0, 3)], "offset 0, expected 3"),
        (vec![data(0, 0)], "empty"),
        (vec![Frame::Fin { offset: 0 }, data(0, 1)], "after the end"),
        (
            vec![Frame::Ack {
                received: 1,
                fin_received: false,
            }],
            "only 0 were ever sent",
        ),
        (
            vec![Frame::Ack {
                received: 0,
                fin_received: true,
            }],
            "has not ended",
        ),
    ];
    for (frames, expected) in cases {
        let mut s = Stream::new(config);
        let error = frames
            .into_iter()
            .map(|f| s.handle_frame(f))
            .find_map(Result::err)
            .unwrap_or_else(|| panic!("expected an error containing {expected:?}"));
        assert!(
            error.to_string().contains(expected),
            "{error} should contain {expected:?}"
        );
    }
    let mut s = Stream::new(config);
    s.push_local(Bytes::from_static(b"abc"));
    s.handle_frame(Frame::Ack {
        received: 2,
        fin_received: false,
    })
    .expect("valid");
    assert!(s.resume(1).unwrap_err().to_string().contains("below 2"));
    assert!(s.resume(4).unwrap_err().to_string().contains("only 3"));
}
