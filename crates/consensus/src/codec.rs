//! Decoding Raft's messages from bytes another node wrote, with prost rather than
//! rust-protobuf 2.
//!
//! raft-rs 0.7 carries its messages in rust-protobuf 2 types, whose parser recurses without a
//! limit on nested groups (RUSTSEC-2024-0437): a peer (or a leader's log entry) could crash a
//! node with a few kilobytes of nested group tags. Every such byte string is decoded here by
//! prost (`ferry_proto::eraftpb`, the same definitions: its recursion is limited, claimed
//! lengths are checked against the input before allocating, and an enum value it does not know
//! is refused) and then built into raft-rs's type field by field, which parses nothing.
//! rust-protobuf still encodes what this node sends, and reads what this node itself wrote to
//! its own disk (checksummed, `ferry_store`).
//!
//! The wire format is the same either way: `tests` below check that what rust-protobuf writes
//! decodes here to an equal value.

use ferry_proto::eraftpb as pb;
use prost::Message as _;
use raft::eraftpb as raft_pb;

/// Why bytes are not a Raft message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("undecodable {what}: {source}")]
    Prost {
        what: &'static str,
        source: prost::DecodeError,
    },
    #[error("undecodable {what}: unknown {field} value {value}")]
    UnknownEnum {
        what: &'static str,
        field: &'static str,
        value: i32,
    },
}

type Result<T> = std::result::Result<T, DecodeError>;

/// A Raft message from a peer.
pub fn decode_message(bytes: &[u8]) -> Result<raft_pb::Message> {
    let m = pb::Message::decode(bytes).map_err(prost_error("raft message"))?;
    message(m)
}

/// An entry's `ConfChange` (the older form of a configuration change).
pub fn decode_conf_change(bytes: &[u8]) -> Result<raft_pb::ConfChange> {
    let c = pb::ConfChange::decode(bytes).map_err(prost_error("conf change"))?;
    let mut out = raft_pb::ConfChange::default();
    out.set_change_type(change_type(c.change_type)?);
    out.set_node_id(c.node_id);
    out.set_context(c.context.into());
    out.set_id(c.id);
    Ok(out)
}

/// An entry's `ConfChangeV2`.
pub fn decode_conf_change_v2(bytes: &[u8]) -> Result<raft_pb::ConfChangeV2> {
    let c = pb::ConfChangeV2::decode(bytes).map_err(prost_error("conf change v2"))?;
    let mut out = raft_pb::ConfChangeV2::default();
    out.set_transition(enum_value("conf change v2", "transition", c.transition)?);
    let changes = c
        .changes
        .into_iter()
        .map(|s| {
            let mut single = raft_pb::ConfChangeSingle::default();
            single.set_change_type(change_type(s.change_type)?);
            single.set_node_id(s.node_id);
            Ok(single)
        })
        .collect::<Result<Vec<_>>>()?;
    out.set_changes(changes.into());
    out.set_context(c.context.into());
    Ok(out)
}

fn prost_error(what: &'static str) -> impl Fn(prost::DecodeError) -> DecodeError {
    move |source| DecodeError::Prost { what, source }
}

/// A rust-protobuf enum from its number; an unknown one is refused.
fn enum_value<E: protobuf::ProtobufEnum>(
    what: &'static str,
    field: &'static str,
    value: i32,
) -> Result<E> {
    E::from_i32(value).ok_or(DecodeError::UnknownEnum { what, field, value })
}

fn change_type(value: i32) -> Result<raft_pb::ConfChangeType> {
    enum_value("conf change", "change_type", value)
}

fn message(m: pb::Message) -> Result<raft_pb::Message> {
    let mut out = raft_pb::Message::default();
    out.set_msg_type(enum_value("raft message", "msg_type", m.msg_type)?);
    out.set_to(m.to);
    out.set_from(m.from);
    out.set_term(m.term);
    out.set_log_term(m.log_term);
    out.set_index(m.index);
    let entries = m
        .entries
        .into_iter()
        .map(entry)
        .collect::<Result<Vec<_>>>()?;
    out.set_entries(entries.into());
    out.set_commit(m.commit);
    out.set_commit_term(m.commit_term);
    if let Some(snapshot) = m.snapshot {
        out.set_snapshot(self::snapshot(snapshot));
    }
    out.set_request_snapshot(m.request_snapshot);
    out.set_reject(m.reject);
    out.set_reject_hint(m.reject_hint);
    out.set_context(m.context.into());
    out.set_deprecated_priority(m.deprecated_priority);
    out.set_priority(m.priority);
    Ok(out)
}

/// An entry; a configuration change in it is decoded here too and written again by
/// rust-protobuf, because raft-rs parses the conf change of a proposal itself
/// (`Raft::step`, `MsgPropose`): what reaches that parser is then only what its own encoder
/// wrote from a value prost accepted.
fn entry(e: pb::Entry) -> Result<raft_pb::Entry> {
    use protobuf::Message as _;
    const ENCODES: &str = "rust-protobuf encodes any proto3 value (no required fields)";
    let mut out = raft_pb::Entry::default();
    let entry_type = enum_value("raft entry", "entry_type", e.entry_type)?;
    out.set_entry_type(entry_type);
    out.set_term(e.term);
    out.set_index(e.index);
    let data = match entry_type {
        raft_pb::EntryType::EntryNormal => e.data,
        raft_pb::EntryType::EntryConfChange => decode_conf_change(&e.data)?
            .write_to_bytes()
            .expect(ENCODES),
        raft_pb::EntryType::EntryConfChangeV2 => decode_conf_change_v2(&e.data)?
            .write_to_bytes()
            .expect(ENCODES),
    };
    out.set_data(data.into());
    out.set_context(e.context.into());
    out.set_sync_log(e.sync_log);
    Ok(out)
}

fn snapshot(s: pb::Snapshot) -> raft_pb::Snapshot {
    let mut out = raft_pb::Snapshot::default();
    out.set_data(s.data.into());
    if let Some(meta) = s.metadata {
        let mut m = raft_pb::SnapshotMetadata::default();
        if let Some(cs) = meta.conf_state {
            m.set_conf_state(conf_state(cs));
        }
        m.set_index(meta.index);
        m.set_term(meta.term);
        out.set_metadata(m);
    }
    out
}

fn conf_state(c: pb::ConfState) -> raft_pb::ConfState {
    let mut out = raft_pb::ConfState::default();
    out.set_voters(c.voters);
    out.set_learners(c.learners);
    out.set_voters_outgoing(c.voters_outgoing);
    out.set_learners_next(c.learners_next);
    out.set_auto_leave(c.auto_leave);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::{Message as _, ProtobufEnum as _};
    use rand::{Rng, SeedableRng};

    fn bytes(rng: &mut impl Rng) -> Vec<u8> {
        let len = rng.gen_range(0..40);
        (0..len).map(|_| rng.gen()).collect()
    }

    fn ids(rng: &mut impl Rng) -> Vec<u64> {
        (0..rng.gen_range(0..4))
            .map(|_| rng.gen_range(1..9))
            .collect()
    }

    /// A message with every field set at random (rust-protobuf's own type).
    fn random_message(rng: &mut impl Rng) -> raft_pb::Message {
        let mut m = raft_pb::Message::default();
        m.set_msg_type(raft_pb::MessageType::from_i32(rng.gen_range(0..19)).unwrap());
        m.set_to(rng.gen());
        m.set_from(rng.gen());
        m.set_term(rng.gen());
        m.set_log_term(rng.gen());
        m.set_index(rng.gen());
        for _ in 0..rng.gen_range(0..4) {
            let mut e = raft_pb::Entry::default();
            e.set_entry_type(raft_pb::EntryType::from_i32(rng.gen_range(0..3)).unwrap());
            e.set_term(rng.gen());
            e.set_index(rng.gen());
            let data = match e.get_entry_type() {
                raft_pb::EntryType::EntryNormal => bytes(rng),
                // Configuration changes, as raft-rs proposes them.
                raft_pb::EntryType::EntryConfChange => {
                    let mut cc = raft_pb::ConfChange::default();
                    cc.set_node_id(rng.gen());
                    cc.set_id(rng.gen());
                    cc.write_to_bytes().unwrap()
                }
                raft_pb::EntryType::EntryConfChangeV2 => {
                    random_conf_change_v2(rng).write_to_bytes().unwrap()
                }
            };
            e.set_data(data.into());
            e.set_context(bytes(rng).into());
            e.set_sync_log(rng.gen());
            m.mut_entries().push(e);
        }
        m.set_commit(rng.gen());
        m.set_commit_term(rng.gen());
        if rng.gen() {
            let mut cs = raft_pb::ConfState::default();
            cs.set_voters(ids(rng));
            cs.set_learners(ids(rng));
            cs.set_voters_outgoing(ids(rng));
            cs.set_learners_next(ids(rng));
            cs.set_auto_leave(rng.gen());
            let mut meta = raft_pb::SnapshotMetadata::default();
            meta.set_conf_state(cs);
            meta.set_index(rng.gen());
            meta.set_term(rng.gen());
            let mut s = raft_pb::Snapshot::default();
            s.set_data(bytes(rng).into());
            s.set_metadata(meta);
            m.set_snapshot(s);
        }
        m.set_request_snapshot(rng.gen());
        m.set_reject(rng.gen());
        m.set_reject_hint(rng.gen());
        m.set_context(bytes(rng).into());
        m.set_deprecated_priority(rng.gen());
        m.set_priority(rng.gen());
        m
    }

    fn random_conf_change_v2(rng: &mut impl Rng) -> raft_pb::ConfChangeV2 {
        let mut v2 = raft_pb::ConfChangeV2::default();
        v2.set_transition(raft_pb::ConfChangeTransition::from_i32(rng.gen_range(0..3)).unwrap());
        let mut single = raft_pb::ConfChangeSingle::default();
        single.set_change_type(raft_pb::ConfChangeType::from_i32(rng.gen_range(0..3)).unwrap());
        single.set_node_id(rng.gen());
        v2.set_changes(vec![single].into());
        v2.set_context(bytes(rng).into());
        v2
    }

    fn seed() -> u64 {
        let seed = std::env::var("FERRY_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        println!("FERRY_SEED={seed}");
        seed
    }

    #[test]
    fn what_rust_protobuf_writes_decodes_to_the_same_message() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
        for _ in 0..2_000 {
            let m = random_message(&mut rng);
            let wire = m.write_to_bytes().unwrap();
            let back = decode_message(&wire).unwrap();
            assert_eq!(back, m);
        }
    }

    #[test]
    fn conf_changes_decode_to_the_same_values() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
        for _ in 0..500 {
            let mut cc = raft_pb::ConfChange::default();
            cc.set_change_type(raft_pb::ConfChangeType::from_i32(rng.gen_range(0..3)).unwrap());
            cc.set_node_id(rng.gen());
            cc.set_context(bytes(&mut rng).into());
            cc.set_id(rng.gen());
            assert_eq!(
                decode_conf_change(&cc.write_to_bytes().unwrap()).unwrap(),
                cc
            );
            let mut v2 = raft_pb::ConfChangeV2::default();
            v2.set_transition(
                raft_pb::ConfChangeTransition::from_i32(rng.gen_range(0..3)).unwrap(),
            );
            let mut single = raft_pb::ConfChangeSingle::default();
            single.set_change_type(cc.get_change_type());
            single.set_node_id(cc.node_id);
            v2.set_changes(vec![single].into());
            v2.set_context(bytes(&mut rng).into());
            assert_eq!(
                decode_conf_change_v2(&v2.write_to_bytes().unwrap()).unwrap(),
                v2
            );
        }
    }

    /// The input RUSTSEC-2024-0437 is about: groups nested a hundred thousand deep (rust-protobuf
    /// 2 would recurse once per level and overflow the stack; this is not run against it).
    #[test]
    fn deeply_nested_groups_are_refused_not_recursed_into() {
        let depth = 100_000;
        // Field 20, wire type 3 (start group) repeated, then as many end-group tags.
        let mut bytes = Vec::with_capacity(depth * 4);
        for _ in 0..depth {
            bytes.extend_from_slice(&[0xa3, 0x01]);
        }
        for _ in 0..depth {
            bytes.extend_from_slice(&[0xa4, 0x01]);
        }
        let error = decode_message(&bytes).unwrap_err();
        assert!(error.to_string().contains("recursion limit"), "{error}");
        assert!(decode_conf_change_v2(&bytes).is_err());
        // Inside a proposal's conf-change entry, where raft-rs would parse it itself.
        let mut e = raft_pb::Entry::default();
        e.set_entry_type(raft_pb::EntryType::EntryConfChangeV2);
        e.set_data(bytes.into());
        let mut m = raft_pb::Message::default();
        m.set_msg_type(raft_pb::MessageType::MsgPropose);
        m.mut_entries().push(e);
        let error = decode_message(&m.write_to_bytes().unwrap()).unwrap_err();
        assert!(error.to_string().contains("conf change v2"), "{error}");
    }

    #[test]
    fn unknown_enum_values_are_refused() {
        let m = pb::Message {
            msg_type: 99,
            ..Default::default()
        };
        let error = decode_message(&m.encode_to_vec()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "undecodable raft message: unknown msg_type value 99"
        );
    }
}
