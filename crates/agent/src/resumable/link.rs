//! A link's two tasks: the writer sends the session's frames (data, replay, acknowledgements)
//! on the link's stream; the reader takes the peer's frames into the session's core. Both stop
//! touching the session the moment the link's generation is no longer current.

use super::*;

/// Sends the session's frames on one link until the link fails, the session leaves it, or
/// the session completes (then the stream is finished cleanly).
pub(super) async fn link_writer(
    shared: Arc<Shared>,
    generation: u64,
    mut send: quinn::SendStream,
    wake: Arc<Notify>,
) {
    let mut ack_due = tokio::time::interval(ACK_INTERVAL);
    ack_due.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut encoded = BytesMut::new();
    loop {
        enum Next {
            Send(Frame),
            Wait,
            /// The session ended: finish the stream cleanly (complete or abandoned: the
            /// brokers record it closed) or reset it (lost, or moved to another link).
            Stop {
                clean: bool,
            },
        }
        let next = {
            let mut core = lock(&shared);
            if core.generation != generation {
                Next::Stop { clean: false }
            } else {
                let frame = core.stream.poll_transmit();
                check_complete(&shared, &mut core);
                match frame {
                    // An acknowledgement or an abort still goes out after the end.
                    Some(f @ (Frame::Ack { .. } | Frame::Abort { .. })) => Next::Send(f),
                    Some(f) if core.phase != Phase::Ended => Next::Send(f),
                    _ if core.phase == Phase::Ended => Next::Stop {
                        clean: !matches!(core.ending, Some(Ending::Lost(_))),
                    },
                    _ => Next::Wait,
                }
            }
        };
        let frame = match next {
            Next::Send(frame) => Some(frame),
            Next::Wait => None,
            Next::Stop { clean: true } => {
                let _ = send.finish();
                // Keep the stream until the far side has read it all.
                let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
                shared.flushed.send_replace(true);
                return;
            }
            Next::Stop { clean: false } => {
                let _ = send.reset(RESET_MOVED);
                return;
            }
        };
        let Some(frame) = frame else {
            tokio::select! {
                _ = wake.notified() => {}
                _ = ack_due.tick() => {
                    let ack = {
                        let mut core = lock(&shared);
                        let ack = core.stream.poll_ack();
                        check_complete(&shared, &mut core);
                        ack
                    };
                    if let Some(ack) = ack {
                        if write_frame(&mut send, ack, &mut encoded).await.is_err() {
                            return link_lost(&shared, generation, "writing");
                        }
                    }
                }
            }
            continue;
        };
        match write_frame(&mut send, frame, &mut encoded).await {
            Ok(()) => {}
            Err(quinn::WriteError::Stopped(code)) if code == RESET_ENDED => {
                return ended_by_cluster(&shared, generation);
            }
            Err(_) => return link_lost(&shared, generation, "writing"),
        }
    }
}

async fn write_frame(
    send: &mut quinn::SendStream,
    frame: Frame,
    encoded: &mut BytesMut,
) -> Result<(), quinn::WriteError> {
    match frame {
        Frame::Data { offset, bytes } => {
            let header = Frame::data_header(offset, bytes.len());
            send.write_all_chunks(&mut [Bytes::copy_from_slice(&header), bytes])
                .await
        }
        other => {
            other.encode(encoded);
            send.write_all_chunks(&mut [encoded.split().freeze()]).await
        }
    }
}

/// Reads the session's frames from one link, whatever the local side is doing (see the
/// module's notes: waiting for it here can deadlock the session).
pub(super) async fn link_reader(shared: Arc<Shared>, generation: u64, mut recv: quinn::RecvStream) {
    let mut decoder = Decoder::new();
    loop {
        let current = {
            let core = lock(&shared);
            core.generation == generation && core.phase != Phase::Ended
        };
        if !current {
            let _ = recv.stop(RESET_MOVED);
            return;
        }
        let chunk = tokio::select! {
            chunk = recv.read_chunk(LOCAL_READ_BYTES_MAX, true) => chunk,
            _ = shared.link_reader.notified() => continue,
        };
        let chunk = match chunk {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) => {
                // The far side finished its stream: normal once the session is complete, or
                // once it gave the session up (its abort reaches the local writer in turn).
                let mut core = lock(&shared);
                check_complete(&shared, &mut core);
                let done = core.phase == Phase::Ended
                    || core.stream.is_complete()
                    || core.stream.remote_aborted();
                drop(core);
                if !done {
                    link_lost(&shared, generation, "the link ended early");
                }
                return;
            }
            Err(quinn::ReadError::Reset(code)) if code == RESET_ENDED => {
                return ended_by_cluster(&shared, generation);
            }
            Err(e) => {
                return link_lost(&shared, generation, &format!("reading: {e}"));
            }
        };
        decoder.push(&chunk);
        if !handle_chunk(&shared, generation, &mut decoder) {
            let _ = recv.stop(RESET_MOVED);
            return;
        }
    }
}

/// Takes the frames decoded so far. False when the link is no longer the session's.
fn handle_chunk(shared: &Shared, generation: u64, decoder: &mut Decoder) -> bool {
    {
        let mut core = lock(shared);
        if core.generation != generation {
            return false;
        }
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    drop(core);
                    tracing::warn!(session_id = shared.id, error = %e, "bad session frame");
                    link_lost(shared, generation, &e.to_string());
                    return false;
                }
            };
            match core.stream.handle_frame(frame) {
                Ok(()) => {}
                Err(e) => {
                    // The far side (or a broker in between) broke the protocol: continuing
                    // could corrupt the stream, so the session is given up.
                    tracing::warn!(session_id = shared.id, error = %e, "session protocol violated by the far side");
                    let why = format!("protocol violated: {e}");
                    core.stream.abort(why.clone());
                    finish(shared, &mut core, Ending::Aborted(why));
                    return false;
                }
            }
        }
        check_complete(shared, &mut core);
        wake_link(&core);
    }
    shared.local_writer.notify_one();
    shared.local_reader.notify_one();
    true
}

/// A broker reset the link with [`RESET_ENDED`]: the cluster ended the session (killed, or
/// its access withdrawn). Resuming would be refused, so the session ends here.
fn ended_by_cluster(shared: &Shared, generation: u64) {
    let mut core = lock(shared);
    if core.generation == generation {
        finish(shared, &mut core, Ending::Lost(ENDED_BY_CLUSTER.into()));
    }
}

/// The current link failed: the session waits for a new one.
fn link_lost(shared: &Shared, generation: u64, why: &str) {
    let mut core = lock(shared);
    if core.generation == generation && matches!(core.phase, Phase::Linked(_)) {
        tracing::info!(
            session_id = shared.id,
            why,
            "session link lost; waiting for a resume"
        );
        core.link_writer = None;
        core.conn_id = None;
        set_phase(shared, &mut core, Phase::Unlinked(Instant::now()));
    }
}
