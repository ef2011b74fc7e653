//! etcd's `--force-new-cluster`: a member whose cluster lost its quorum for good restarts as the only
//! voter of it, with its data.
//!
//! etcd appends configuration changes that remove every other member to its log and declares them
//! committed. concord appends one openraft membership entry naming this member alone, after the last
//! entry of its log, as the entry of a term of its own above every term it has seen (its vote goes to
//! itself in that term first): no other member can hold a different entry under that log id. openraft
//! takes the newest membership in the log as the effective one, committed or not, so the member then
//! elects itself without anyone's vote, and its first entry as leader commits the forced one and
//! everything before it.
//!
//! etcd drops the entries past the commit index it recorded. concord keeps every entry of the log: its
//! commit index is not synced (see `LogStore::read_committed`), so the entries past it may hold writes
//! a quorum had, that clients were told had succeeded.

use std::collections::{BTreeMap, BTreeSet};

use openraft::storage::{RaftLogStorage, StorageHelper};
use openraft::{CommittedLeaderId, EntryPayload, Membership};

use super::log_store::LogStore;
use super::state_machine::StateMachineStore;
use super::types::{Entry, LogId, Member, StorageError, Vote};

/// Makes `id` the only voter of the membership stored in `log` and `sm`, unless it is already. A
/// member missing from that membership (one that was removed) comes back as `me`. Returns whether
/// anything changed; a member without a log (a new one) has nothing to force.
pub async fn force_new_cluster(
    log: &mut LogStore,
    sm: &mut StateMachineStore,
    id: u64,
    me: Member,
) -> Result<bool, StorageError> {
    let Some(last) = log.get_log_state().await?.last_log_id else {
        return Ok(false);
    };
    let state = StorageHelper::new(log, sm).get_membership().await?;
    let current = state.effective().membership();
    let alone = BTreeSet::from([id]);
    if current.voter_ids().eq(alone.iter().copied()) && current.learner_ids().next().is_none() {
        return Ok(false);
    }
    let me = current.get_node(&id).cloned().unwrap_or(me);
    let forced = Membership::new(vec![alone], BTreeMap::from([(id, me)]));
    let seen = log.read_vote().await?.map_or(0, |v| v.leader_id().term);
    let term = seen.max(last.leader_id.term) + 1;
    log.save_vote(&Vote::new(term, id)).await?;
    let log_id = LogId::new(CommittedLeaderId::new(term, id), last.index + 1);
    log.append_before_start(&Entry { log_id, payload: EntryPayload::Membership(forced) })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::storage::RaftStateMachine;

    use super::*;
    use crate::raft::state_machine::StateMachine;
    use crate::storage::Db;

    fn member(name: &str) -> Member {
        Member { name: name.into(), peer_urls: vec![format!("http://{name}:2380")], client_urls: vec![] }
    }

    fn three_members(index: u64) -> Entry {
        let nodes: BTreeMap<u64, Member> = (1..=3).map(|id| (id, member(&format!("m{id}")))).collect();
        let voters = nodes.keys().copied().collect();
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), index),
            payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
        }
    }

    fn open(dir: &std::path::Path) -> (LogStore, StateMachineStore) {
        let sm = StateMachine::open(&dir.join("records"), dir.join("snap"), 100).unwrap();
        let db = Arc::new(Db::open(dir, 1 << 20).unwrap());
        (LogStore::open(db, &dir.join("wal"), sm.clone()).unwrap(), StateMachineStore { sm })
    }

    async fn voters(log: &mut LogStore, sm: &mut StateMachineStore) -> Vec<(u64, String)> {
        let state = StorageHelper::new(log, sm).get_membership().await.unwrap();
        let m = state.effective().membership();
        m.voter_ids().map(|id| (id, m.get_node(&id).unwrap().name.clone())).collect()
    }

    /// The membership may be in the state machine alone (the log purged past it): the forced entry
    /// follows the purge point, and a second start with the flag changes nothing.
    #[tokio::test]
    async fn a_membership_only_the_state_machine_holds_is_forced_after_the_purge_point() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, mut sm) = open(dir.path());
            log.append_before_start(&three_members(1)).unwrap();
            sm.apply([three_members(1)]).await.unwrap();
            log.purge(three_members(1).log_id).await.unwrap();
            assert!(force_new_cluster(&mut log, &mut sm, 2, member("ignored")).await.unwrap());
        }
        let (mut log, mut sm) = open(dir.path());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(LogId::new(CommittedLeaderId::new(3, 2), 2)), "a term of its own");
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
        assert_eq!(voters(&mut log, &mut sm).await, [(2, "m2".to_string())]);
        assert!(!force_new_cluster(&mut log, &mut sm, 2, member("ignored")).await.unwrap());
    }

    /// A member the cluster had removed comes back under the name and URLs it starts with.
    #[tokio::test]
    async fn a_removed_member_is_forced_in_as_it_starts() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut sm) = open(dir.path());
        log.append_before_start(&three_members(1)).unwrap();
        assert!(force_new_cluster(&mut log, &mut sm, 7, member("m7")).await.unwrap());
        assert_eq!(voters(&mut log, &mut sm).await, [(7, "m7".to_string())]);
    }

    #[tokio::test]
    async fn a_member_without_a_log_has_nothing_to_force() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut sm) = open(dir.path());
        assert!(!force_new_cluster(&mut log, &mut sm, 1, member("m1")).await.unwrap());
        assert_eq!(log.get_log_state().await.unwrap().last_log_id, None);
    }
}
