//! The leader's session sweep: sessions whose broker is gone are marked detached (their
//! endpoints may resume them on another broker), sessions detached for longer than the
//! resume window are closed as lost, and sessions no longer allowed (access withdrawn) are
//! closed with the reason. (The brokers carrying a withdrawn session cut it themselves, from
//! their own applied state; the sweep only clears the table.)

use ferry_consensus::PeerProgress;
use ferry_state::StateMachine;

/// One change the sweep asks the leader to propose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SweepAction {
    /// Close a session as lost (`CloseSession`).
    Close { session_id: u64, reason: String },
    /// Mark a session detached from `broker` (`DetachSession`); `resumes` is the session's
    /// resume count, so that a resume that raced the sweep is not undone.
    Detach {
        session_id: u64,
        broker: String,
        resumes: u32,
        reason: String,
    },
}

/// Brokers (by node id) the leader has not heard from within an election timeout, among
/// `brokers` (node id, raft id) it has replication progress for.
pub fn unreachable_brokers(brokers: &[(String, u64)], progress: &[PeerProgress]) -> Vec<String> {
    brokers
        .iter()
        .filter(|(_, raft_id)| {
            progress
                .iter()
                .find(|p| p.id == *raft_id)
                .is_some_and(|p| !p.recent_active)
        })
        .map(|(node_id, _)| node_id.clone())
        .collect()
}

/// What the leader does with the sessions in `state` at `now_ms`: close those detached for
/// `window_ms` or more and those no longer allowed, detach those still attached to an
/// `unreachable` broker. Closes come first, in session order; a session is named once.
pub fn sweep(
    state: &StateMachine,
    now_ms: u64,
    window_ms: u64,
    unreachable: &[String],
) -> Vec<SweepAction> {
    // By session id, so that closes come in session order and name a session once.
    let mut closes = std::collections::BTreeMap::new();
    for s in state.sessions_expired(now_ms, window_ms) {
        closes.insert(
            s.id,
            format!("lost: not resumed within {} s", window_ms / 1000),
        );
    }
    for (s, why) in state.sessions_withdrawn() {
        closes
            .entry(s.id)
            .or_insert_with(|| format!("access withdrawn: {}", why.message));
    }
    let orphaned = state
        .sessions()
        .filter(|s| !closes.contains_key(&s.id))
        .filter(|s| s.detached_at_ms == 0 && unreachable.contains(&s.broker))
        .map(|s| SweepAction::Detach {
            session_id: s.id,
            broker: s.broker.clone(),
            resumes: s.resumes,
            reason: format!("broker {} unreachable", s.broker),
        })
        .collect::<Vec<_>>();
    closes
        .into_iter()
        .map(|(session_id, reason)| SweepAction::Close { session_id, reason })
        .chain(orphaned)
        .collect()
}

/// Sessions the state says `node` carries, when `node` has just started: they lost their path
/// with the process that carried them, so they are marked detached (and expire unless their
/// endpoints resume them, here or elsewhere).
pub fn orphaned_at_restart(state: &StateMachine, node: &str) -> Vec<SweepAction> {
    state
        .sessions()
        .filter(|s| s.broker == node && s.detached_at_ms == 0)
        .map(|s| SweepAction::Detach {
            session_id: s.id,
            broker: node.to_owned(),
            resumes: s.resumes,
            reason: "broker restarted".into(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::state as pb;
    use ferry_proto::state::{command::Kind, Command};

    const T0: u64 = 1_700_000_000_000;
    const WINDOW_MS: u64 = 30_000;

    fn apply(state: &mut StateMachine, now_ms: u64, kind: Kind) {
        let command = Command {
            now_ms,
            actor: "test".into(),
            source: String::new(),
            kind: Some(kind),
        };
        let outcome = state.apply(&command);
        assert!(
            !matches!(outcome, ferry_state::Outcome::Refused(_)),
            "{command:?}: {outcome:?}"
        );
    }

    /// Three sessions: 1 on b1, 2 on b2, 3 on b2 detached at T0.
    fn state() -> StateMachine {
        let mut state = StateMachine::new();
        apply(
            &mut state,
            T0,
            Kind::AddUser(pb::AddUser {
                name: "alice".into(),
                groups: vec!["staff".into()],
                password_hash: "$argon2id$fake".into(),
            }),
        );
        apply(
            &mut state,
            T0,
            Kind::CreateHost(pb::CreateHost {
                name: "pc1".into(),
                groups: vec!["lab".into()],
                enrollment_token_hash: ferry_state::hash_secret("tok"),
                enrollment_expires_at_ms: T0 + 1000,
            }),
        );
        apply(
            &mut state,
            T0,
            Kind::CompleteEnrollment(pb::CompleteEnrollment {
                name: "pc1".into(),
                enrollment_token_hash: ferry_state::hash_secret("tok"),
                credential_hash: ferry_state::hash_secret("cred"),
            }),
        );
        apply(
            &mut state,
            T0,
            Kind::AddGrant(pb::AddGrant {
                user_group: "staff".into(),
                host_group: "lab".into(),
                services: vec![],
            }),
        );
        for broker in ["b1", "b2", "b2"] {
            apply(
                &mut state,
                T0,
                Kind::OpenSession(pb::OpenSession {
                    user: "alice".into(),
                    host: "pc1".into(),
                    service: "ssh".into(),
                    broker: broker.into(),
                    resume_secret_hash: ferry_state::hash_secret("resume"),
                    token_hash: ferry_state::hash_secret("token"),
                }),
            );
        }
        let third = state
            .sessions()
            .map(|s| s.id)
            .max()
            .expect("three sessions");
        apply(
            &mut state,
            T0,
            Kind::DetachSession(pb::DetachSession {
                session_id: third,
                broker: "b2".into(),
                reason: "path broke".into(),
                resumes: 0,
            }),
        );
        state
    }

    /// The sweep's actions as (verb, session number 1-3), for tables.
    fn summary(state: &StateMachine, actions: &[SweepAction]) -> Vec<(&'static str, usize)> {
        let mut ids: Vec<u64> = state.sessions().map(|s| s.id).collect();
        ids.sort_unstable();
        let number = |id: &u64| ids.iter().position(|i| i == id).expect("a known session") + 1;
        actions
            .iter()
            .map(|a| match a {
                SweepAction::Close { session_id, .. } => ("close", number(session_id)),
                SweepAction::Detach { session_id, .. } => ("detach", number(session_id)),
            })
            .collect()
    }

    #[test]
    fn sweep_table() {
        let state = state();
        // (case, now, unreachable brokers, expected)
        #[allow(clippy::type_complexity)]
        let cases: &[(&str, u64, &[&str], &[(&str, usize)])] = &[
            ("all well, window not over", T0 + WINDOW_MS - 1, &[], &[]),
            (
                "window over: the detached one closes",
                T0 + WINDOW_MS,
                &[],
                &[("close", 3)],
            ),
            (
                "b2 unreachable: its attached session detaches",
                T0,
                &["b2"],
                &[("detach", 2)],
            ),
            (
                "both, closes first",
                T0 + WINDOW_MS,
                &["b1", "b2"],
                &[("close", 3), ("detach", 1), ("detach", 2)],
            ),
            ("an unknown broker changes nothing", T0, &["b9"], &[]),
        ];
        for (case, now, unreachable, expected) in cases {
            let unreachable: Vec<String> = unreachable.iter().map(|s| s.to_string()).collect();
            let actions = sweep(&state, *now, WINDOW_MS, &unreachable);
            assert_eq!(summary(&state, &actions), *expected, "{case}");
        }
        let actions = sweep(&state, T0 + WINDOW_MS, WINDOW_MS, &["b2".into()]);
        assert!(
            matches!(&actions[0], SweepAction::Close { reason, .. } if reason == "lost: not resumed within 30 s")
        );
        assert!(
            matches!(&actions[1], SweepAction::Detach { reason, broker, .. } if reason == "broker b2 unreachable" && broker == "b2")
        );
    }

    #[test]
    fn withdrawn_sessions_are_closed_once_with_the_reason() {
        let mut state = state();
        let ids: Vec<u64> = state.sessions().map(|s| s.id).collect();
        for id in [ids[0], ids[2]] {
            apply(
                &mut state,
                T0,
                Kind::KillSession(pb::KillSession {
                    session_id: id,
                    reason: "offboarding".into(),
                }),
            );
        }
        let actions = sweep(&state, T0, WINDOW_MS, &["b1".into()]);
        assert_eq!(summary(&state, &actions), [("close", 1), ("close", 3)]);
        assert!(
            matches!(&actions[0], SweepAction::Close { reason, .. } if reason.starts_with("access withdrawn: ") && reason.contains("killed by an administrator: offboarding")),
            "{actions:?}"
        );
        // Expired and withdrawn: closed once, as lost.
        let actions = sweep(&state, T0 + WINDOW_MS, WINDOW_MS, &[]);
        assert_eq!(summary(&state, &actions), [("close", 1), ("close", 3)]);
        assert!(
            matches!(&actions[1], SweepAction::Close { reason, .. } if reason.starts_with("lost:")),
            "{actions:?}"
        );
        // Removing the grant withdraws every session.
        apply(
            &mut state,
            T0,
            Kind::RemoveGrant(pb::RemoveGrant {
                user_group: "staff".into(),
                host_group: "lab".into(),
            }),
        );
        let actions = sweep(&state, T0, WINDOW_MS, &[]);
        assert_eq!(
            summary(&state, &actions),
            [("close", 1), ("close", 2), ("close", 3)]
        );
    }

    #[test]
    fn orphans_at_restart_are_the_attached_sessions_of_this_node() {
        let state = state();
        assert_eq!(
            summary(&state, &orphaned_at_restart(&state, "b2")),
            [("detach", 2)]
        );
        assert_eq!(
            summary(&state, &orphaned_at_restart(&state, "b1")),
            [("detach", 1)]
        );
        assert!(orphaned_at_restart(&state, "b3").is_empty());
    }

    #[test]
    fn unreachable_brokers_are_those_not_heard_from() {
        let progress = |id, active| PeerProgress {
            id,
            voter: true,
            matched: 1,
            recent_active: active,
            snapshotting: false,
        };
        let brokers = vec![
            ("b1".to_string(), 1),
            ("b2".to_string(), 2),
            ("b3".to_string(), 3),
        ];
        // b1 leads (no progress of its own), b2 is silent, b3 answers.
        let got = unreachable_brokers(&brokers, &[progress(2, false), progress(3, true)]);
        assert_eq!(got, ["b2"]);
    }
}
