//! Deterministic simulation of two endpoints over a path that breaks and is resumed.
//!
//! Each seed drives a random schedule over two endpoints and the applications behind them:
//!
//! - the client's application writes a random amount and reads whatever arrives, sometimes
//!   stalling; the host's is either the same or an **echo service** that sends back what it
//!   reads and stops reading while it cannot write (its buffer is bounded, like a real echo
//!   server's socket buffers);
//! - each direction of the link holds a bounded number of bytes in flight (QUIC flow control,
//!   the brokers' buffers): a writer whose frame does not fit waits with it, and whatever it
//!   sends next (an acknowledgement too) waits behind it;
//! - the link is cut at random, and on purpose when both directions are saturated and both
//!   replay buffers are full (a broker killed or drained during a large copy both ways);
//!   every byte in flight is lost, and the endpoints resume through "another broker".
//!
//! The checks: each side receives exactly the bytes the other wrote, in order, once; no replay
//! buffer exceeds its limit and no receiver holds more undelivered than its peer's buffer;
//! the session never stops making progress while its link is up (a deadlock is reported with
//! its seed); both sides complete. `FERRY_SEED=N` replays one seed.

use bytes::Bytes;
use ferry_session::{Config, Decoder, Delivery, Frame, Stream};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;

const SEEDS_PER_RUN: u64 = 500;
const STEPS_MAX: usize = 400_000;
/// Steps without any byte moving, while the link is up, that prove a deadlock: every action
/// has been drawn about a hundred times by then.
const STALLED_STEPS_MAX: usize = 1_000;
/// Chance that a step cuts the link at random (besides the cuts when saturated): rare enough
/// that a deadlock lasts long enough to be seen, as it would last for ever between two
/// brokers that stay up.
const CUT_PER_STEP: f64 = 0.000_3;
/// Chance that a step in which both directions are saturated cuts the link, once the link
/// has been up for `SATURATED_CUT_SPACING` steps (on a slow link both directions are
/// saturated almost always, and cutting them every few steps would let nothing through).
const CUT_WHEN_SATURATED: f64 = 0.05;
const SATURATED_CUT_SPACING: usize = 3_000;

/// How a link reader treats its local side: the protocol's rule, and the rule that once hung
/// saturated sessions after a hand-off (kept to show that the simulation catches it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReaderRule {
    /// Read the link whenever bytes are there (the rule in `ferry-agent`).
    AlwaysRead,
    /// Stop reading the link while this many bytes wait for the local side.
    PauseWhenUndelivered(u64),
}

/// The application behind one endpoint.
#[derive(Debug)]
enum App {
    /// Writes `to_write` more bytes, then ends; reads everything that arrives.
    Source { to_write: usize, ended: bool },
    /// Sends back what it reads. Holds at most `held_max` bytes read but not yet sent back,
    /// and reads nothing more while full. Ends its output once its input ended and it sent
    /// everything back.
    Echo {
        held: VecDeque<u8>,
        held_max: usize,
        input_ended: bool,
        ended: bool,
    },
}

struct Side {
    stream: Stream,
    config: Config,
    app: App,
    /// Everything the application wrote, to compare with what the far side received.
    wrote: Vec<u8>,
    /// Everything the application received.
    got: Vec<u8>,
    /// Encoded bytes of the frame being written that the link has not taken yet: the writer
    /// waits with them (a blocked `write_all`), and nothing else goes out before them.
    unsent: VecDeque<u8>,
    decoder: Decoder,
}

fn byte_at(side: u8, offset: usize) -> u8 {
    (offset as u64)
        .wrapping_mul(2654435761)
        .wrapping_add(side as u64) as u8
}

#[derive(Debug)]
struct Outcome {
    resumes: u32,
    saturated_cuts: u32,
}

fn random_config(rng: &mut StdRng) -> Config {
    Config {
        buffer_bytes_max: rng.gen_range(256..200_000),
        ack_every_bytes: rng.gen_range(1..100_000),
    }
}

fn run(seed: u64, rule: ReaderRule) -> Result<Outcome, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    // The two endpoints need not agree on their buffers (a client and a host configured apart).
    let configs = [random_config(&mut rng), random_config(&mut rng)];
    let echo = rng.gen_bool(0.5);
    // Bytes in flight per direction: from a quarter of a data frame to several replay buffers.
    let link_bytes_max: usize = rng.gen_range(16_000..400_000);
    let to_write = rng.gen_range(0..(configs[0].buffer_bytes_max * 100).min(400_000));
    let mut sides: Vec<Side> = (0..2)
        .map(|i| Side {
            stream: Stream::new(configs[i]),
            config: configs[i],
            app: if i == 1 && echo {
                App::Echo {
                    held: VecDeque::new(),
                    held_max: rng.gen_range(1..100_000),
                    input_ended: false,
                    ended: false,
                }
            } else {
                App::Source {
                    to_write: if i == 0 {
                        to_write
                    } else {
                        rng.gen_range(0..400_000)
                    },
                    ended: false,
                }
            },
            wrote: Vec::new(),
            got: Vec::new(),
            unsent: VecDeque::new(),
            decoder: Decoder::new(),
        })
        .collect();
    // Bytes in flight per direction on the current link (index: the sender).
    let mut wires: [VecDeque<u8>; 2] = [VecDeque::new(), VecDeque::new()];
    let mut link_up = true;
    let mut outcome = Outcome {
        resumes: 0,
        saturated_cuts: 0,
    };
    let mut stalled_steps = 0;
    let mut linked_at = 0;
    let fail = |step: usize, what: String| {
        Err(format!(
            "seed {seed} step {step} ({rule:?}, configs {configs:?}, echo {echo}, link {link_bytes_max}): {what}"
        ))
    };
    for step in 0..STEPS_MAX {
        if sides.iter().all(|s| s.stream.is_complete()) {
            for (i, side) in sides.iter().enumerate() {
                if side.got != sides[1 - i].wrote {
                    return fail(
                        step,
                        format!("side {i} did not receive what the other wrote"),
                    );
                }
            }
            return Ok(outcome);
        }
        let mut progress = false;
        // Both replay buffers full while both applications still have bytes to send.
        let saturated = sides
            .iter()
            .all(|s| s.stream.write_capacity() == 0 && !s.stream.local_ended());
        match rng.gen_range(0..100) {
            // An application writes (a source: new bytes; an echo: what it holds).
            0..=19 => {
                let i = rng.gen_range(0..2);
                let side = &mut sides[i];
                let room = side.stream.write_capacity();
                match &mut side.app {
                    App::Source { to_write, ended } => {
                        if *to_write > 0 && room > 0 {
                            let n = rng.gen_range(1..=(*to_write).min(room).min(70_000));
                            let start = side.wrote.len();
                            let chunk: Vec<u8> =
                                (start..start + n).map(|o| byte_at(i as u8, o)).collect();
                            side.wrote.extend_from_slice(&chunk);
                            side.stream.push_local(Bytes::from(chunk));
                            *to_write -= n;
                            progress = true;
                        } else if *to_write == 0 && !*ended {
                            side.stream.end_local();
                            *ended = true;
                            progress = true;
                        }
                    }
                    App::Echo {
                        held,
                        input_ended,
                        ended,
                        ..
                    } => {
                        if !held.is_empty() && room > 0 {
                            let n = rng.gen_range(1..=held.len().min(room).min(70_000));
                            let chunk: Vec<u8> = held.drain(..n).collect();
                            side.wrote.extend_from_slice(&chunk);
                            side.stream.push_local(Bytes::from(chunk));
                            progress = true;
                        } else if held.is_empty() && *input_ended && !*ended {
                            side.stream.end_local();
                            *ended = true;
                            progress = true;
                        }
                    }
                }
            }
            // An application reads what its endpoint delivers (unless it stalls, or is an
            // echo with a full buffer).
            20..=39 => {
                let i = rng.gen_range(0..2);
                let side = &mut sides[i];
                if let App::Echo { held, held_max, .. } = &side.app {
                    if held.len() >= *held_max {
                        continue;
                    }
                }
                let Some(delivery) = side.stream.poll_deliver() else {
                    continue;
                };
                progress = true;
                match delivery {
                    Delivery::Bytes(b) => {
                        side.got.extend_from_slice(&b);
                        if let App::Echo { held, .. } = &mut side.app {
                            held.extend(b.iter());
                        }
                    }
                    Delivery::End => {
                        if let App::Echo { input_ended, .. } = &mut side.app {
                            *input_ended = true;
                        }
                    }
                    Delivery::Aborted(r) => return fail(step, format!("abort: {r}")),
                }
            }
            // An endpoint's link writer: finishes the frame it is writing as far as the link
            // takes it, then takes the next (or a timer-driven acknowledgement).
            40..=64 => {
                let i = rng.gen_range(0..2);
                if !link_up {
                    continue;
                }
                let side = &mut sides[i];
                if side.unsent.is_empty() {
                    // The acknowledgement timer: it fires at any time, and soon whenever the
                    // writer has nothing else to send (the agent's ticks every 20 ms).
                    let frame = if rng.gen_bool(0.1) {
                        side.stream.poll_ack()
                    } else {
                        let timer = rng.gen_bool(0.5);
                        side.stream
                            .poll_transmit()
                            .or_else(|| timer.then(|| side.stream.poll_ack()).flatten())
                    };
                    if let Some(frame) = frame {
                        let mut out = bytes::BytesMut::new();
                        frame.encode(&mut out);
                        side.unsent.extend(out.iter());
                        progress = true;
                    }
                }
                let room = link_bytes_max.saturating_sub(wires[i].len());
                let n = room.min(side.unsent.len());
                if n > 0 {
                    wires[i].extend(side.unsent.drain(..n));
                    progress = true;
                }
                if side.stream.buffer_cost_bytes() > side.config.buffer_bytes_max {
                    return fail(step, format!("side {i}'s replay buffer is over its limit"));
                }
            }
            // An endpoint's link reader takes some of what arrived, in order.
            65..=94 => {
                let i = rng.gen_range(0..2);
                let from = 1 - i;
                if !link_up || wires[from].is_empty() {
                    continue;
                }
                if let ReaderRule::PauseWhenUndelivered(n) = rule {
                    if sides[i].stream.undelivered_bytes() >= n {
                        continue;
                    }
                }
                let n = rng.gen_range(1..=wires[from].len());
                let piece: Vec<u8> = wires[from].drain(..n).collect();
                progress = true;
                let side = &mut sides[i];
                side.decoder.push(&piece);
                loop {
                    let frame = match side.decoder.next_frame() {
                        Ok(Some(frame)) => frame,
                        Ok(None) => break,
                        Err(e) => return fail(step, format!("decode: {e}")),
                    };
                    if let Err(e) = side.stream.handle_frame(frame) {
                        return fail(step, format!("side {i}: {e}"));
                    }
                }
                let peer_buffer = sides[from].config.buffer_bytes_max;
                if sides[i].stream.undelivered_cost_bytes() > peer_buffer {
                    return fail(
                        step,
                        format!(
                            "side {i} holds {} bytes undelivered (with overhead), more than its \
                             peer's buffer {peer_buffer}",
                            sides[i].stream.undelivered_cost_bytes()
                        ),
                    );
                }
            }
            // The path breaks (a broker dies or drains): everything in flight is lost. Far
            // more likely when both directions are saturated with full buffers (below).
            95..=97 => {
                if !link_up || !rng.gen_bool(CUT_PER_STEP / 0.03) {
                    continue;
                }
                cut(&mut sides, &mut wires);
                link_up = false;
            }
            // The endpoints meet again through another broker and exchange offsets.
            _ => {
                if link_up {
                    continue;
                }
                let (r0, r1) = (sides[0].stream.received(), sides[1].stream.received());
                if let Err(e) = sides[0].stream.resume(r1) {
                    return fail(step, format!("resume 0: {e}"));
                }
                if let Err(e) = sides[1].stream.resume(r0) {
                    return fail(step, format!("resume 1: {e}"));
                }
                link_up = true;
                linked_at = step;
                outcome.resumes += 1;
                progress = true;
            }
        }
        if link_up
            && saturated
            && step - linked_at >= SATURATED_CUT_SPACING
            && rng.gen_bool(CUT_WHEN_SATURATED)
        {
            cut(&mut sides, &mut wires);
            link_up = false;
            outcome.saturated_cuts += 1;
        }
        stalled_steps = if progress || !link_up {
            0
        } else {
            stalled_steps + 1
        };
        if stalled_steps >= STALLED_STEPS_MAX {
            return fail(
                step,
                format!(
                    "deadlock: nothing moved for {STALLED_STEPS_MAX} steps with the link up \
                     (in flight {}/{} bytes; {})",
                    wires[0].len(),
                    wires[1].len(),
                    describe(&sides)
                ),
            );
        }
    }
    fail(
        STEPS_MAX,
        format!("did not complete (link up {link_up}): {}", describe(&sides)),
    )
}

/// Each side's offsets and application, for failure messages.
fn describe(sides: &[Side]) -> String {
    let side = |s: &Side| {
        let app = match &s.app {
            App::Source { to_write, ended } => {
                format!("source, {to_write} to write, ended {ended}")
            }
            App::Echo {
                held,
                held_max,
                input_ended,
                ended,
            } => format!(
                "echo holding {}/{held_max}, input ended {input_ended}, ended {ended}",
                held.len()
            ),
        };
        format!(
            "[written {} acked {} capacity {} | received {} delivered {} | writer waits with {} bytes | {app}]",
            s.stream.written(),
            s.stream.acked(),
            s.stream.write_capacity(),
            s.stream.received(),
            s.stream.delivered(),
            s.unsent.len(),
        )
    };
    format!("client {} host {}", side(&sides[0]), side(&sides[1]))
}

/// Cuts the link: both directions' bytes in flight and half-written frames are lost, and both
/// endpoints detach (what their local sides have not taken is dropped; the peers replay it).
fn cut(sides: &mut [Side], wires: &mut [VecDeque<u8>; 2]) {
    *wires = [VecDeque::new(), VecDeque::new()];
    for side in sides {
        side.unsent.clear();
        side.decoder = Decoder::new();
        side.stream.detach();
    }
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("FERRY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        eprintln!("replaying seed {seed}");
        return vec![seed];
    }
    let base: u64 = rand::random::<u32>() as u64;
    eprintln!(
        "seeds {base}..{} (FERRY_SEED=N replays one)",
        base + SEEDS_PER_RUN
    );
    (base..base + SEEDS_PER_RUN).collect()
}

#[test]
fn every_byte_arrives_once_in_order_across_broken_links() {
    let (mut resumes, mut saturated_cuts) = (0, 0);
    for seed in seeds() {
        let outcome = run(seed, ReaderRule::AlwaysRead).unwrap_or_else(|e| panic!("{e}"));
        resumes += outcome.resumes;
        saturated_cuts += outcome.saturated_cuts;
    }
    eprintln!("{resumes} resumes, {saturated_cuts} of them cut while saturated both ways");
}

/// The rule the agent once had (its link reader paused while 1 MiB waited for the local
/// side) deadlocks a saturated session through an echo service: the simulation must find it,
/// or it would not protect the rule that replaced it.
#[test]
fn a_link_reader_that_waits_for_its_local_side_is_caught_deadlocking() {
    let base: u64 = std::env::var("FERRY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let found = (base..base + SEEDS_PER_RUN).find_map(|seed| {
        run(seed, ReaderRule::PauseWhenUndelivered(16 * 1024))
            .err()
            .filter(|e| e.contains("deadlock"))
    });
    let found = found.expect("some seed deadlocks with a reader that waits for its local side");
    eprintln!("caught: {}", &found[..found.len().min(300)]);
}

/// The hang that shipped: both replay buffers full and both directions saturated through an
/// echo service when the link is cut. Deterministic, step by step: fill everything, cut,
/// resume, and the session must still move every byte.
#[test]
fn a_cut_with_both_directions_saturated_and_both_buffers_full_resumes() {
    let config = Config {
        buffer_bytes_max: 100_000,
        ack_every_bytes: 10_000,
    };
    let (mut client, mut host) = (Stream::new(config), Stream::new(config));
    let total = 1_000_000usize;
    let (mut written, mut echoed_back) = (0usize, 0usize);
    let mut held: VecDeque<u8> = VecDeque::new();
    let held_max = 50_000;
    // Links that hold 30 kB each way: far less than a replay buffer.
    let link_max: usize = 30_000;
    let mut to_host: VecDeque<u8> = VecDeque::new();
    let mut to_client: VecDeque<u8> = VecDeque::new();
    let (mut client_unsent, mut host_unsent) = (VecDeque::<u8>::new(), VecDeque::<u8>::new());
    let (mut client_dec, mut host_dec) = (Decoder::new(), Decoder::new());
    let mut cut_done = false;
    for round in 0..100_000 {
        // Client application: write as much as allowed; read everything.
        let room = client.write_capacity().min(total - written).min(60_000);
        if room > 0 {
            client.push_local(Bytes::from(vec![(written % 251) as u8; room]));
            written += room;
        } else if written == total && !client.local_ended() {
            client.end_local();
        }
        while let Some(d) = client.poll_deliver() {
            if let Delivery::Bytes(b) = d {
                echoed_back += b.len();
            }
        }
        // Echo: read while it has room, write back what it can.
        while held.len() < held_max {
            match host.poll_deliver() {
                Some(Delivery::Bytes(b)) => held.extend(b.iter()),
                Some(Delivery::End) => {}
                Some(Delivery::Aborted(r)) => panic!("abort {r}"),
                None => break,
            }
        }
        let n = host.write_capacity().min(held.len()).min(60_000);
        if n > 0 {
            host.push_local(held.drain(..n).collect::<Vec<u8>>().into());
        } else if held.is_empty() && host.remote_ended() && !host.local_ended() {
            host.end_local();
        }
        // Writers: a frame at a time, as far as the link takes it.
        for (stream, unsent, wire) in [
            (&mut client, &mut client_unsent, &mut to_host),
            (&mut host, &mut host_unsent, &mut to_client),
        ] {
            if unsent.is_empty() {
                if let Some(f) = stream.poll_transmit().or_else(|| stream.poll_ack()) {
                    let mut out = bytes::BytesMut::new();
                    f.encode(&mut out);
                    unsent.extend(out.iter());
                }
            }
            let n = link_max.saturating_sub(wire.len()).min(unsent.len());
            wire.extend(unsent.drain(..n));
        }
        // The moment the hang needed: both buffers full, both links full, both writers
        // blocked mid-frame. Cut, and resume from the offsets each side delivered.
        if !cut_done
            && client.write_capacity() == 0
            && host.write_capacity() == 0
            && to_host.len() == link_max
            && to_client.len() == link_max
        {
            for s in [&mut client, &mut host] {
                s.detach();
            }
            let (rc, rh) = (client.received(), host.received());
            client.resume(rh).expect("valid offsets");
            host.resume(rc).expect("valid offsets");
            (to_host, to_client) = (VecDeque::new(), VecDeque::new());
            (client_unsent, host_unsent) = (VecDeque::new(), VecDeque::new());
            (client_dec, host_dec) = (Decoder::new(), Decoder::new());
            cut_done = true;
        }
        // Readers: always read everything that arrived.
        for (stream, wire, dec) in [
            (&mut host, &mut to_host, &mut host_dec),
            (&mut client, &mut to_client, &mut client_dec),
        ] {
            let piece: Vec<u8> = wire.drain(..).collect();
            dec.push(&piece);
            while let Some(f) = dec.next_frame().expect("valid frames") {
                stream.handle_frame(f).expect("valid frames");
            }
        }
        if client.is_complete() && host.is_complete() {
            assert!(cut_done, "the saturated state was reached and cut");
            assert_eq!(echoed_back, total, "every byte came back once");
            eprintln!("complete after {round} rounds");
            return;
        }
    }
    panic!(
        "the session did not complete: cut {cut_done}, written {written}, echoed back {echoed_back}"
    );
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
    // Sending does not free the buffer; only the peer's acknowledgement does, and the peer
    // acknowledges only what its local side took.
    while let Some(f) = a.poll_transmit() {
        b.handle_frame(f).expect("in order");
    }
    assert_eq!(
        a.write_capacity(),
        0,
        "sent but unacknowledged bytes stay buffered"
    );
    assert_eq!(
        b.poll_transmit(),
        None,
        "nothing delivered, nothing acknowledged"
    );
    while b.poll_deliver().is_some() {}
    assert!(b.ack_due());
    let ack = b.poll_transmit().expect("an ack is due");
    assert!(matches!(ack, Frame::Ack { received, .. } if received == pushed as u64));
    a.handle_frame(ack).expect("valid ack");
    assert_eq!(a.unacked_bytes(), 0);
    assert!(a.write_capacity() > 9000);
}

#[test]
fn detaching_drops_what_was_not_delivered_and_the_peer_replays_it() {
    let config = Config {
        buffer_bytes_max: 10_000,
        ack_every_bytes: 1,
    };
    let (mut a, mut b) = (Stream::new(config), Stream::new(config));
    a.push_local(Bytes::from_static(b"hello "));
    a.push_local(Bytes::from_static(b"world"));
    a.end_local();
    while let Some(f) = a.poll_transmit() {
        b.handle_frame(f).expect("in order");
    }
    assert_eq!(b.poll_deliver(), Some(Delivery::Bytes("hello ".into())));
    assert_eq!(b.received(), 11);
    b.detach();
    assert_eq!(
        b.received(),
        6,
        "only what was delivered counts after a detach"
    );
    a.detach();
    a.resume(b.received()).expect("valid");
    b.resume(a.received()).expect("valid");
    while let Some(f) = a.poll_transmit() {
        b.handle_frame(f)
            .expect("the replay starts where b's delivery ended");
    }
    assert_eq!(b.poll_deliver(), Some(Delivery::Bytes("world".into())));
    assert_eq!(b.poll_deliver(), Some(Delivery::End));
    assert_eq!(b.poll_deliver(), None);
}

#[test]
fn an_abort_outlives_a_detach_and_ends_the_session_after_the_bytes_before_it() {
    let config = Config {
        buffer_bytes_max: 10_000,
        ack_every_bytes: 1,
    };
    let (mut a, mut b) = (Stream::new(config), Stream::new(config));
    a.push_local(Bytes::from_static(b"last words"));
    a.abort("the service reset the connection");
    while let Some(f) = a.poll_transmit() {
        b.handle_frame(f).expect("valid frames");
    }
    assert!(b.remote_aborted());
    // The link ends before the local side took anything: the abort is not lost.
    b.detach();
    assert!(b.remote_aborted(), "a detach keeps the peer's abort");
    assert_eq!(
        b.poll_deliver(),
        Some(Delivery::Aborted("the service reset the connection".into()))
    );
    assert!(b.remote_aborted());
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
        (
            (0..=ferry_session::BUFFER_BYTES_LIMIT / 65536)
                .map(|i| data(i as u64 * 65536, 65536))
                .collect(),
            "more than any replay buffer",
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
