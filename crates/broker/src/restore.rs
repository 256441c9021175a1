//! `ferry debug restore`: a new cluster's node seeded from a backup file
//! (crates/state/src/backup.rs), the way `ferry debug force-new-cluster` (startup.rs) seeds
//! a store from a node's own state.

use crate::startup::{raft_dir, ForceError};
use ferry_store::{OpenError, SledLog};

/// `ferry debug restore`: seeds the empty store of a node of a new cluster (made by `ferry
/// init`) with the state of a backup file, as every node of that cluster is, so that they
/// start from one log position with the same state. Returns what it did, in a sentence.
pub fn restore_backup(
    config: &crate::NodeConfig,
    header: &ferry_state::BackupHeader,
    snapshot: ferry_state::Snapshot,
) -> Result<String, ForceError> {
    use prost::Message as _;
    let dir = raft_dir(&config.data_dir);
    let voters = config.raft.initial_voters.clone();
    if voters.is_empty() {
        return Err(ForceError::Refused(format!(
            "{} joins a running cluster (its raft.initial_voters is empty): restore every node \
             of a new cluster made by `ferry init` instead, and add this one afterwards",
            config.node_id
        )));
    }
    // Host agents keep the cluster's name with their credential and refuse a config naming
    // another cluster: the restored hosts would be stranded.
    if header.cluster_name != config.cluster_name {
        return Err(ForceError::Refused(format!(
            "the backup is of cluster {:?}, and {} belongs to cluster {:?}: host agents and \
             cached logins are bound to the cluster's name, so make the new cluster with \
             `ferry init --cluster-name {}`",
            header.cluster_name, config.node_id, config.cluster_name, header.cluster_name
        )));
    }
    let snapshot = ferry_state::backup::for_new_cluster(snapshot, &voters);
    ferry_state::StateMachine::restore(snapshot.clone())
        .map_err(|e| ForceError::Refused(format!("the backup's state is unusable: {e}")))?;
    let open_error = |e: OpenError| ForceError::Open {
        dir: dir.clone(),
        detail: e.to_string(),
    };
    if dir.exists() {
        let log = SledLog::open(&dir).map_err(open_error)?;
        if log.raft_id().is_some() {
            return Err(ForceError::Refused(format!(
                "{} already holds a store: a restore seeds a new node only (stop the node and \
                 move its data_dir aside first, if it is to start over from the backup)",
                dir.display()
            )));
        }
    }
    // Every node of the new cluster gets the same index and term: their logs agree from the
    // start, and the first election happens in a later term.
    let (index, term) = (header.applied_index.max(1), header.term.max(1));
    let mut raft_snapshot = raft::eraftpb::Snapshot::default();
    raft_snapshot.set_data(snapshot.encode_to_vec().into());
    let meta = raft_snapshot.mut_metadata();
    meta.index = index;
    meta.term = term;
    meta.set_conf_state(raft::eraftpb::ConfState {
        voters: voters.clone(),
        ..Default::default()
    });
    let mut log = SledLog::open(&dir).map_err(open_error)?;
    log.initialize(config.raft.id, &voters)?;
    ferry_consensus::LogStore::apply_snapshot(&mut log, &raft_snapshot)?;
    let mut hard_state = raft::Storage::initial_state(&log)?.hard_state;
    hard_state.term = hard_state.term.max(term);
    hard_state.vote = 0;
    hard_state.commit = hard_state.commit.max(index);
    ferry_consensus::LogStore::set_hard_state(&mut log, &hard_state)?;
    ferry_consensus::LogStore::sync(&mut log)?;
    Ok(format!(
        "{node} (raft id {id}) seeded from the backup of cluster {cluster:?} taken on {from} at \
         index {index}: {users} users, {hosts} hosts, {grants} grants, {audit} audit records; \
         voters {voters:?}. Restore every node of the new cluster the same way, then start them.",
        node = config.node_id,
        id = config.raft.id,
        cluster = header.cluster_name,
        from = header.node_id,
        users = snapshot.users.len(),
        hosts = snapshot.hosts.len(),
        grants = snapshot.grants.len(),
        audit = snapshot.audit.len(),
    ))
}
