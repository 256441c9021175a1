//! The amnesia guard and member replacement: which raft id a node with an empty store may
//! take, and how the leader replaces a member that lost its store.
//!
//! An empty store is either a node's first start or a node that lost its store (quarantined
//! at start-up, wiped, a new disk). The second must never vote or acknowledge under its old
//! raft id: it may have voted in the current term or acknowledged entries it no longer has,
//! and amnesia can elect two leaders in one term or lose a committed entry. So:
//!
//! - a store known to be lost (quarantined, or an empty store in a data directory that held
//!   one before) always rejoins under a new raft id: the leader removes the node's old ids and
//!   adds the new one as a learner, which catches up from a snapshot and is promoted;
//! - otherwise the node asks its peers whether its configured id has taken part (the leader
//!   records every id it sees replicate: [`crate::unseen_members`]). If any peer has seen it,
//!   it rejoins as above. If none has, it takes its configured id once enough peers answered:
//!   a majority of the initial voters (itself included) that have a store or never had one,
//!   or, for a node that joins a running cluster, one peer with a store. Nodes of a new
//!   cluster thus start in any order; a node started late keeps its id; two nodes that lost
//!   their stores never outvote the one that kept it.

use ferry_proto::peer::StoreProbeReply;

/// Raft ids are at most this: proposal tokens keep the proposer's id in 16 bits.
pub const RAFT_ID_MAX: u64 = u16::MAX as u64;

/// One peer asked whether a raft id has taken part, and its answer (`None`: no answer).
#[derive(Debug, Clone, PartialEq)]
pub struct Asked {
    pub node_id: String,
    pub raft_id: u64,
    pub answer: Option<StoreProbeReply>,
}

/// What a node with an empty store does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Initialize the store under the configured raft id (with the initial voters, if any).
    TakeConfigured,
    /// Ask the leader for a new raft id; `why` goes into the request and the audit record.
    Rejoin { why: String },
    /// Not enough is known yet; ask again. `waiting` says for what, for the operator.
    Wait { waiting: String },
}

/// Decides whether an empty store may take raft id `configured`.
///
/// `initial_voters` is the configuration a new cluster starts with (empty for a node that
/// joins a running cluster); `lost` says why the store must rejoin whatever its peers say (it
/// was quarantined, or its data directory held a store before); `answers` are the peers'
/// answers to "has `configured` taken part?", `None` for a node configured without peers.
pub fn identity(
    configured: u64,
    initial_voters: &[u64],
    lost: Option<&str>,
    answers: Option<&[Asked]>,
) -> Decision {
    let answers = match (answers, lost) {
        (None, None) => return Decision::TakeConfigured,
        (None, Some(_)) => {
            return Decision::Wait {
                waiting: "this node has no peers to rejoin: its data was only in the \
                          quarantined store; see docs/OPERATIONS.md, 'Lost stores'"
                    .into(),
            }
        }
        (Some(_), Some(why)) => {
            return Decision::Rejoin {
                why: why.to_owned(),
            }
        }
        (Some(answers), None) => answers,
    };
    if let Some(by) = answers
        .iter()
        .find(|a| a.answer.as_ref().is_some_and(|a| a.seen))
    {
        return Decision::Rejoin {
            why: format!(
                "its store was empty while raft id {configured} had taken part in the cluster \
                 ({} says so): wiped or lost",
                by.node_id
            ),
        };
    }
    let enough = if initial_voters.is_empty() {
        // Joining a running cluster: a peer with a store knows whether it saw this id (one
        // still opening its own store knows nothing).
        answers
            .iter()
            .any(|a| a.answer.as_ref().is_some_and(|a| a.initialized))
    } else {
        // A peer that lost its store knows nothing: only one with a store, or one that never
        // had one (a cluster still forming), speaks for the cluster.
        let initial_answered = answers
            .iter()
            .filter(|a| {
                initial_voters.contains(&a.raft_id)
                    && a.answer.as_ref().is_some_and(|a| a.initialized || a.fresh)
            })
            .count();
        let own = usize::from(initial_voters.contains(&configured));
        (initial_answered + own) * 2 > initial_voters.len()
    };
    if enough {
        return Decision::TakeConfigured;
    }
    let names = |answered: bool| {
        let names: Vec<&str> = answers
            .iter()
            .filter(|a| a.answer.is_some() == answered)
            .map(|a| a.node_id.as_str())
            .collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    Decision::Wait {
        waiting: format!(
            "the store is empty: waiting for a majority of the initial voters to answer whether \
             raft id {configured} has taken part before using it (answered: {}; no answer: {})",
            names(true),
            names(false)
        ),
    }
}

/// What a node knows when a peer asks whether a raft id has taken part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Knowledge {
    /// This node's raft id; 0 while its own identity is not settled.
    pub raft_id: u64,
    /// The index its state has applied.
    pub applied: u64,
    /// Its store is empty and its data directory never held one.
    pub never_had_store: bool,
    /// It runs under its configured raft id as one of a new cluster's initial voters.
    pub bootstrapped: bool,
    /// Its applied state records the asked id as seen (or retired).
    pub seen: bool,
}

/// The answer to a store probe ([`identity`] reads it on the asking side). Only a node whose
/// state holds something (an applied entry or snapshot) speaks for the cluster; a node that
/// never had a store, or started a new cluster and has applied nothing yet, says it knows
/// nothing because nothing happened (`fresh`); any other node (a learner added a moment ago,
/// not caught up at all) says nothing useful: neither.
pub fn answer(knows: &Knowledge) -> StoreProbeReply {
    let initialized = knows.raft_id != 0 && knows.applied > 0;
    let forming =
        knows.raft_id == 0 && knows.never_had_store || knows.raft_id != 0 && knows.bootstrapped;
    StoreProbeReply {
        initialized,
        seen: initialized && knows.seen,
        fresh: !initialized && forming,
    }
}

/// What the leader knows when a node asks to rejoin under a new raft id.
#[derive(Debug, Clone, Copy)]
pub struct Known<'a> {
    /// Name of the node asking.
    pub node: &'a str,
    /// The raft id of every node in the leader's config file, by name.
    pub configured: &'a [(&'a str, u64)],
    /// The member directory (members added at runtime): name, raft id, future voter.
    pub members: &'a [(&'a str, u64, bool)],
    /// The current configuration.
    pub voters: &'a [u64],
    pub learners: &'a [u64],
    /// Every raft id the state knows of (members, retired, seen).
    pub known_ids: &'a [u64],
    /// The leader's own raft id.
    pub own: u64,
}

/// How a member that lost its store is replaced: its old ids leave the configuration, then a
/// new id joins as a learner (and is promoted once caught up when `voter`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Every raft id of the node still in the configuration, in order.
    pub remove: Vec<u64>,
    /// The new raft id: above every id anyone knows of, so never one that voted before.
    pub add: u64,
    /// It keeps its place: a voter comes back as a voter, a learner as a learner.
    pub voter: bool,
}

/// Why no replacement can be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no raft id is left below {RAFT_ID_MAX}")]
    NoIdLeft,
}

/// Plans the replacement of `known.node` (see [`Plan`]).
pub fn replacement(known: &Known<'_>) -> Result<Plan, PlanError> {
    let in_config = |id: &u64| known.voters.contains(id) || known.learners.contains(id);
    let mut remove: Vec<u64> = known
        .configured
        .iter()
        .filter(|(name, _)| *name == known.node)
        .map(|(_, id)| *id)
        .chain(
            known
                .members
                .iter()
                .filter(|(name, _, _)| *name == known.node)
                .map(|(_, id, _)| *id),
        )
        .filter(in_config)
        .collect();
    remove.sort_unstable();
    remove.dedup();
    let add = known
        .voters
        .iter()
        .chain(known.learners)
        .chain(known.known_ids)
        .copied()
        .chain(known.configured.iter().map(|(_, id)| *id))
        .chain([known.own])
        .max()
        .unwrap_or(0)
        + 1;
    if add > RAFT_ID_MAX {
        return Err(PlanError::NoIdLeft);
    }
    let voter = remove.is_empty()
        || remove.iter().any(|id| {
            known.voters.contains(id) || known.members.iter().any(|(_, m, voter)| m == id && *voter)
        });
    Ok(Plan { remove, add, voter })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(name: &str, raft_id: u64, answer: Option<(bool, bool, bool)>) -> Asked {
        Asked {
            node_id: name.into(),
            raft_id,
            answer: answer.map(|(initialized, seen, fresh)| StoreProbeReply {
                initialized,
                seen,
                fresh,
            }),
        }
    }

    /// The kind of decision, for tables (the texts are checked separately).
    fn kind(d: &Decision) -> &'static str {
        match d {
            Decision::TakeConfigured => "take",
            Decision::Rejoin { .. } => "rejoin",
            Decision::Wait { .. } => "wait",
        }
    }

    const STORE: Option<(bool, bool, bool)> = Some((true, false, false));
    const SEEN: Option<(bool, bool, bool)> = Some((true, true, false));
    const FRESH: Option<(bool, bool, bool)> = Some((false, false, true));
    /// A peer that lost its own store: it knows nothing.
    const EMPTY: Option<(bool, bool, bool)> = Some((false, false, false));

    #[test]
    fn identity_table() {
        let three = [1, 2, 3];
        let five = [1, 2, 3, 4, 5];
        // (case, configured, initial voters, lost, answers (None: no peers), expected)
        #[allow(clippy::type_complexity)]
        let cases: Vec<(&str, u64, &[u64], Option<&str>, Option<Vec<Asked>>, &str)> = vec![
            ("one-node cluster", 1, &[1], None, None, "take"),
            (
                "one-node cluster, store lost",
                1,
                &[1],
                Some("quarantined"),
                None,
                "wait",
            ),
            (
                "store lost: rejoin whatever peers say",
                1,
                &three,
                Some("quarantined"),
                Some(vec![asked("b2", 2, STORE), asked("b3", 3, STORE)]),
                "rejoin",
            ),
            (
                "a peer saw the id",
                1,
                &three,
                None,
                Some(vec![asked("b2", 2, SEEN), asked("b3", 3, None)]),
                "rejoin",
            ),
            (
                "seen outweighs a majority of unseen",
                1,
                &five,
                None,
                Some(vec![
                    asked("b2", 2, STORE),
                    asked("b3", 3, STORE),
                    asked("b4", 4, SEEN),
                ]),
                "rejoin",
            ),
            (
                "new cluster: one peer with a store and itself",
                1,
                &three,
                None,
                Some(vec![asked("b2", 2, STORE), asked("b3", 3, None)]),
                "take",
            ),
            (
                "new cluster: one fresh peer and itself",
                1,
                &three,
                None,
                Some(vec![asked("b2", 2, FRESH), asked("b3", 3, None)]),
                "take",
            ),
            (
                "no answer yet",
                1,
                &three,
                None,
                Some(vec![asked("b2", 2, None), asked("b3", 3, None)]),
                "wait",
            ),
            (
                "a peer that lost its store does not count",
                1,
                &three,
                None,
                Some(vec![asked("b2", 2, EMPTY), asked("b3", 3, None)]),
                "wait",
            ),
            (
                "five voters: two answers and itself",
                1,
                &five,
                None,
                Some(vec![
                    asked("b2", 2, STORE),
                    asked("b3", 3, FRESH),
                    asked("b4", 4, None),
                ]),
                "take",
            ),
            (
                "five voters: one answer and itself is short",
                1,
                &five,
                None,
                Some(vec![asked("b2", 2, STORE), asked("b3", 3, None)]),
                "wait",
            ),
            (
                "a non-initial peer does not count toward the majority",
                1,
                &three,
                None,
                Some(vec![asked("b9", 9, STORE), asked("b2", 2, None)]),
                "wait",
            ),
            (
                "joining a running cluster: one peer with a store",
                7,
                &[],
                None,
                Some(vec![asked("b1", 1, STORE)]),
                "take",
            ),
            (
                "joining a running cluster: only fresh peers",
                7,
                &[],
                None,
                Some(vec![asked("b1", 1, FRESH)]),
                "wait",
            ),
            (
                "joining a running cluster: seen",
                7,
                &[],
                None,
                Some(vec![asked("b1", 1, SEEN)]),
                "rejoin",
            ),
        ];
        for (case, configured, voters, lost, answers, expected) in cases {
            let got = identity(configured, voters, lost, answers.as_deref());
            assert_eq!(kind(&got), expected, "{case}: {got:?}");
        }
    }

    #[test]
    fn identity_says_who_saw_it_and_who_is_silent() {
        let seen = identity(1, &[1, 2, 3], None, Some(&[asked("b2", 2, SEEN)]));
        assert!(
            matches!(&seen, Decision::Rejoin { why } if why.contains("(b2 says so)")),
            "{seen:?}"
        );
        let wait = identity(
            1,
            &[1, 2, 3],
            None,
            Some(&[asked("b2", 2, EMPTY), asked("b3", 3, None)]),
        );
        assert!(
            matches!(&wait, Decision::Wait { waiting } if waiting.contains("answered: b2; no answer: b3")),
            "{wait:?}"
        );
    }

    #[test]
    fn answer_table() {
        let knows = |raft_id, applied, never_had_store, bootstrapped, seen| Knowledge {
            raft_id,
            applied,
            never_had_store,
            bootstrapped,
            seen,
        };
        // (case, what the node knows, expected (initialized, seen, fresh))
        let cases = [
            (
                "caught up, not seen",
                knows(2, 40, false, true, false),
                (true, false, false),
            ),
            (
                "caught up, seen",
                knows(2, 40, false, false, true),
                (true, true, false),
            ),
            (
                "never had a store",
                knows(0, 0, true, false, false),
                (false, false, true),
            ),
            (
                "lost its store, not settled",
                knows(0, 0, false, false, false),
                (false, false, false),
            ),
            (
                "new cluster, nothing applied",
                knows(2, 0, false, true, false),
                (false, false, true),
            ),
            (
                "learner added, nothing applied",
                knows(7, 0, false, false, false),
                (false, false, false),
            ),
        ];
        for (case, knows, (initialized, seen, fresh)) in cases {
            let got = answer(&knows);
            assert_eq!(
                (got.initialized, got.seen, got.fresh),
                (initialized, seen, fresh),
                "{case}"
            );
        }
    }

    #[test]
    fn replacement_table() {
        let configured = [("b1", 1), ("b2", 2), ("w1", 3)];
        // (case, node, members, voters, learners, known ids, expected)
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            &str,
            &str,
            Vec<(&str, u64, bool)>,
            &[u64],
            &[u64],
            &[u64],
            Result<Plan, PlanError>,
        )> = vec![
            (
                "a configured voter",
                "b1",
                vec![],
                &[1, 2, 3],
                &[],
                &[1, 2, 3],
                Ok(Plan {
                    remove: vec![1],
                    add: 4,
                    voter: true,
                }),
            ),
            (
                "new id above retired and seen ids",
                "b1",
                vec![],
                &[1, 2, 3],
                &[],
                &[1, 2, 3, 9],
                Ok(Plan {
                    remove: vec![1],
                    add: 10,
                    voter: true,
                }),
            ),
            (
                "a voter replaced before keeps both old ids out",
                "b1",
                vec![("b1", 4, true)],
                &[2, 3, 4],
                &[1],
                &[1, 2, 3, 4],
                Ok(Plan {
                    remove: vec![1, 4],
                    add: 5,
                    voter: true,
                }),
            ),
            (
                "a learner stays a learner",
                "b9",
                vec![("b9", 5, false)],
                &[1, 2, 3],
                &[5],
                &[5],
                Ok(Plan {
                    remove: vec![5],
                    add: 6,
                    voter: false,
                }),
            ),
            (
                "already removed: only the add",
                "b1",
                vec![],
                &[2, 3],
                &[],
                &[1, 2, 3],
                Ok(Plan {
                    remove: vec![],
                    add: 4,
                    voter: true,
                }),
            ),
        ];
        for (case, node, members, voters, learners, known_ids, expected) in cases {
            let known = Known {
                node,
                configured: &configured,
                members: &members,
                voters,
                learners,
                known_ids,
                own: 2,
            };
            assert_eq!(replacement(&known), expected, "{case}");
        }
        let full = [RAFT_ID_MAX];
        let known = Known {
            node: "b1",
            configured: &configured,
            members: &[],
            voters: &[1, 2, 3],
            learners: &[],
            known_ids: &full,
            own: 2,
        };
        assert_eq!(replacement(&known), Err(PlanError::NoIdLeft));
    }
}
