//! What the leader decides about membership and leadership on its own: which learner to
//! promote, whom to hand leadership to, and which raft ids to record as having taken part.

use ferry_consensus::PeerProgress;

/// What a node knows of the configuration and of its peers' replication, as its consensus
/// core reports it. `progress` is empty unless the node leads.
#[derive(Debug, Clone, Copy)]
pub struct LeaderView<'a> {
    /// This node's raft id.
    pub own: u64,
    /// Whether this node leads now.
    pub is_leader: bool,
    /// Whether a configuration change is proposed and not yet applied: only one at a time.
    pub change_pending: bool,
    /// Index of the last entry in the leader's log.
    pub last_index: u64,
    /// Raft ids of the voters.
    pub voters: &'a [u64],
    /// The replication progress of every member but this node.
    pub progress: &'a [PeerProgress],
}

/// The learner the leader should promote to voter now, if any: the first one that has caught
/// up (`PeerProgress::caught_up`) among those the member directory added as future voters
/// (`future_voter`; a learner added as a learner stays one). None while another change is
/// pending: the core refuses a second change, and promotion is retried on the next check.
pub fn promotion(view: &LeaderView<'_>, future_voter: impl Fn(u64) -> bool) -> Option<u64> {
    if !view.is_leader || view.change_pending {
        return None;
    }
    view.progress
        .iter()
        .filter(|p| !p.voter && p.caught_up(view.last_index))
        .map(|p| p.id)
        .find(|&id| future_voter(id))
}

/// The broker a leader that should not lead (a witness, or a node under maintenance: `avoid`)
/// hands leadership to: the first of `brokers` (in their order) that votes and holds every
/// entry of the leader's log, so that the transfer costs no entry and no second election.
/// None when the node may lead, does not lead, or no broker is caught up yet (it asks again on
/// the next tick).
pub fn handoff_target(view: &LeaderView<'_>, avoid: bool, brokers: &[u64]) -> Option<u64> {
    if !avoid || !view.is_leader {
        return None;
    }
    brokers.iter().copied().find(|&b| {
        b != view.own
            && view.voters.contains(&b)
            && view
                .progress
                .iter()
                .any(|p| p.id == b && p.matched == view.last_index)
    })
}

/// Raft ids the leader has seen take part (a peer with a matched entry, and itself) that the
/// state does not record as seen yet (`was_seen`): the leader proposes them (`MembersSeen`),
/// so that an empty store never takes one of these ids again (see [`crate::identity`]).
pub fn unseen_members(view: &LeaderView<'_>, was_seen: impl Fn(u64) -> bool) -> Vec<u64> {
    if !view.is_leader {
        return Vec::new();
    }
    view.progress
        .iter()
        .filter(|p| p.matched > 0)
        .map(|p| p.id)
        .chain(std::iter::once(view.own))
        .filter(|&id| !was_seen(id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64, voter: bool, matched: u64, active: bool, snapshotting: bool) -> PeerProgress {
        PeerProgress {
            id,
            voter,
            matched,
            recent_active: active,
            snapshotting,
        }
    }

    fn view<'a>(
        leader: bool,
        pending: bool,
        voters: &'a [u64],
        progress: &'a [PeerProgress],
    ) -> LeaderView<'a> {
        LeaderView {
            own: 1,
            is_leader: leader,
            change_pending: pending,
            last_index: 100,
            voters,
            progress,
        }
    }

    /// (case, leads, change pending, progress, future voters or brokers, expected).
    type Case = (
        &'static str,
        bool,
        bool,
        Vec<PeerProgress>,
        &'static [u64],
        Option<u64>,
    );

    #[test]
    fn promotion_table() {
        let voters = [1, 2, 3];
        let cases: &[Case] = &[
            (
                "caught-up future voter",
                true,
                false,
                vec![peer(4, false, 100, true, false)],
                &[4],
                Some(4),
            ),
            (
                "within the lag allowance",
                true,
                false,
                vec![peer(4, false, 100 - 64, true, false)],
                &[4],
                Some(4),
            ),
            (
                "too far behind",
                true,
                false,
                vec![peer(4, false, 100 - 65, true, false)],
                &[4],
                None,
            ),
            (
                "receiving a snapshot",
                true,
                false,
                vec![peer(4, false, 100, true, true)],
                &[4],
                None,
            ),
            (
                "not heard from lately",
                true,
                false,
                vec![peer(4, false, 100, false, false)],
                &[4],
                None,
            ),
            (
                "added as a learner for good",
                true,
                false,
                vec![peer(4, false, 100, true, false)],
                &[],
                None,
            ),
            (
                "another change pending",
                true,
                true,
                vec![peer(4, false, 100, true, false)],
                &[4],
                None,
            ),
            (
                "not the leader",
                false,
                false,
                vec![peer(4, false, 100, true, false)],
                &[4],
                None,
            ),
            (
                "voters are not promoted",
                true,
                false,
                vec![peer(2, true, 100, true, false)],
                &[2],
                None,
            ),
            (
                "the first eligible of several",
                true,
                false,
                vec![
                    peer(4, false, 10, true, false),
                    peer(5, false, 100, true, false),
                    peer(6, false, 100, true, false),
                ],
                &[4, 5, 6],
                Some(5),
            ),
        ];
        for (case, leads, pending, progress, future, expected) in cases {
            let got = promotion(&view(*leads, *pending, &voters, progress), |id| {
                future.contains(&id)
            });
            assert_eq!(got, *expected, "{case}");
        }
    }

    #[test]
    fn handoff_table() {
        let voters = [1, 2, 3];
        // Here the first flag is whether the node avoids leadership.
        let cases: &[Case] = &[
            (
                "a broker may lead",
                false,
                true,
                vec![peer(2, true, 100, true, false)],
                &[2],
                None,
            ),
            (
                "not the leader",
                true,
                false,
                vec![peer(2, true, 100, true, false)],
                &[2],
                None,
            ),
            (
                "caught-up broker",
                true,
                true,
                vec![peer(2, true, 100, true, false)],
                &[2, 3],
                Some(2),
            ),
            (
                "behind by one entry",
                true,
                true,
                vec![peer(2, true, 99, true, false)],
                &[2],
                None,
            ),
            (
                "skips the broker behind",
                true,
                true,
                vec![
                    peer(2, true, 99, true, false),
                    peer(3, true, 100, true, false),
                ],
                &[2, 3],
                Some(3),
            ),
            (
                "a learner cannot lead",
                true,
                true,
                vec![peer(4, false, 100, true, false)],
                &[4],
                None,
            ),
            ("never itself", true, true, vec![], &[1], None),
            (
                "no broker known",
                true,
                true,
                vec![peer(2, true, 100, true, false)],
                &[],
                None,
            ),
        ];
        for (case, avoid, leads, progress, brokers, expected) in cases {
            let got = handoff_target(&view(*leads, false, &voters, progress), *avoid, brokers);
            assert_eq!(got, *expected, "{case}");
        }
    }

    #[test]
    fn unseen_members_table() {
        let voters = [1, 2, 3];
        let progress = [
            peer(2, true, 5, true, false),
            peer(3, true, 0, false, false),
            peer(4, false, 7, true, false),
        ];
        // (case, leads, already seen, expected)
        let cases: &[(&str, bool, &[u64], &[u64])] = &[
            ("all new", true, &[], &[2, 4, 1]),
            (
                "a peer without a matched entry is not seen",
                true,
                &[1],
                &[2, 4],
            ),
            ("nothing new", true, &[1, 2, 4], &[]),
            ("only the leader records", false, &[], &[]),
        ];
        for (case, leads, seen, expected) in cases {
            let got = unseen_members(&view(*leads, false, &voters, &progress), |id| {
                seen.contains(&id)
            });
            assert_eq!(got, *expected, "{case}");
        }
    }
}
