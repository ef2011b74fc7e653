//! Runtime membership changes with etcd's rules. The leader checks a change against the membership it
//! knows (`plan`, pure and tested here), then openraft carries it out through joint consensus.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::node::NodeError;
use super::types::{Attributes, Member};

/// etcd's `maxLearners`: one learner at a time.
const MAX_LEARNERS: usize = 1;

/// A change a client asks for through the Cluster service.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MemberChange {
    Add { peer_urls: Vec<String>, learner: bool },
    Remove { id: u64 },
    Update { id: u64, peer_urls: Vec<String> },
    Promote { id: u64 },
}

/// A member as the Cluster service lists it. A member added at run time has no name and no client URLs
/// until it starts and publishes them ("unstarted" in etcdctl).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub learner: bool,
}

impl MemberInfo {
    /// etcd counts a member as started once it has a name: from `--initial-cluster`, or published.
    fn started(&self) -> bool {
        !self.name.is_empty()
    }
}

/// A rejected change, with etcd's error text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MemberError {
    #[error("etcdserver: member ID already exist")]
    Exists,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStarted,
    #[error("etcdserver: given member URLs are invalid")]
    BadUrls,
    #[error("etcdserver: member not found")]
    NotFound,
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// Lists the members of `membership`, with the attributes each one published.
pub fn list(
    membership: &openraft::Membership<u64, Member>,
    attributes: &BTreeMap<u64, Attributes>,
) -> Vec<MemberInfo> {
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(id, node)| {
            let published = attributes.get(id);
            MemberInfo {
                id: *id,
                name: published.map_or_else(|| node.name.clone(), |a| a.name.clone()),
                peer_urls: node.peer_urls.clone(),
                client_urls: published.map_or_else(|| node.client_urls.clone(), |a| a.client_urls.clone()),
                learner: !voters.contains(id),
            }
        })
        .collect()
}

/// How far the leader's log has reached each member (etcd's raft progress), for promotion.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub leader_last_index: u64,
    pub matched: BTreeMap<u64, u64>,
}

/// Which members the leader has been hearing from (etcd's transport "active since"), for the strict
/// checks: a change must not take away a quorum that is only there on paper.
#[derive(Clone, Debug, Default)]
pub struct Connectivity {
    /// This member (always connected to itself).
    pub me: u64,
    /// Members answering now.
    pub active: BTreeSet<u64>,
    /// Members answering without a break for etcd's `HealthInterval` (5 s).
    pub steady: BTreeSet<u64>,
}

impl Connectivity {
    fn steady(&self, id: u64) -> bool {
        id == self.me || self.steady.contains(&id)
    }

    fn active(&self, id: u64) -> bool {
        id == self.me || self.active.contains(&id)
    }
}

/// What openraft must do for a change.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub changes: openraft::ChangeMembers<u64, Member>,
    /// Whether voters taken out stay as learners (never: a removed member is gone).
    pub retain: bool,
}

/// Checks `change` against the current members like etcd's `ValidateConfigurationChange` and, with
/// `strict` (`--strict-reconfig-check`, and whom the leader hears from), its quorum checks; `new_id` is
/// the id an added member gets.
pub fn plan(
    change: &MemberChange,
    members: &[MemberInfo],
    progress: &Progress,
    strict: Option<&Connectivity>,
    new_id: u64,
) -> Result<Plan, MemberError> {
    use openraft::ChangeMembers::*;
    let find = |id: u64| members.iter().find(|m| m.id == id).ok_or(MemberError::NotFound);
    let voters = || members.iter().filter(|m| !m.learner);
    let url_taken = |urls: &[String], except: Option<u64>| {
        members.iter().filter(|m| Some(m.id) != except).any(|m| m.peer_urls.iter().any(|u| urls.contains(u)))
    };
    let plan = |changes| Ok(Plan { changes, retain: false });
    // etcd's `isConnectedFullySince`: before adding anyone, every voter has been answering for a while.
    let all_steady = || strict.is_none_or(|c| voters().all(|m| c.steady(m.id)));
    let is_strict = strict.is_some();
    match change {
        MemberChange::Add { peer_urls, learner } => {
            validate_urls(peer_urls)?;
            if members.iter().any(|m| m.id == new_id) {
                return Err(MemberError::Exists);
            }
            if url_taken(peer_urls, None) {
                return Err(MemberError::PeerUrlExists);
            }
            let node = Member { name: String::new(), peer_urls: peer_urls.clone(), client_urls: Vec::new() };
            if *learner {
                if members.iter().filter(|m| m.learner).count() + 1 > MAX_LEARNERS {
                    return Err(MemberError::TooManyLearners);
                }
                if !all_steady() {
                    return Err(MemberError::Unhealthy);
                }
                return plan(AddNodes(BTreeMap::from([(new_id, node)])));
            }
            // etcd's IsReadyToAddVotingMember: the started voters must make a quorum of the cluster
            // with the new member (which has not started yet), except when growing from one member.
            let size = voters().count() + 1;
            let started = voters().filter(|m| m.started()).count();
            if is_strict && !(started == 1 && size == 2) && started < size / 2 + 1 {
                return Err(MemberError::NotEnoughStarted);
            }
            if !all_steady() {
                return Err(MemberError::Unhealthy);
            }
            plan(AddVoters(BTreeMap::from([(new_id, node)])))
        }
        MemberChange::Remove { id } => {
            if find(*id)?.learner {
                return plan(RemoveNodes(BTreeSet::from([*id])));
            }
            // etcd's IsReadyToRemoveVotingMember: the started voters left must make a quorum of the rest.
            let rest = voters().filter(|m| m.id != *id).count();
            let started = voters().filter(|m| m.id != *id && m.started()).count();
            if (is_strict && started < rest / 2 + 1) || rest == 0 {
                return Err(MemberError::NotEnoughStarted);
            }
            // etcd's mayRemoveMember: a member that is down is safe to remove; otherwise the voters
            // that have been answering, less the one going, must still make a quorum.
            if let Some(c) = strict.filter(|c| c.active(*id)) {
                let steady = voters().filter(|m| c.steady(m.id)).count();
                let size = voters().count();
                if steady.saturating_sub(1) < 1 + (size - 1) / 2 {
                    return Err(MemberError::Unhealthy);
                }
            }
            plan(RemoveVoters(BTreeSet::from([*id])))
        }
        MemberChange::Update { id, peer_urls } => {
            validate_urls(peer_urls)?;
            let m = find(*id)?;
            if url_taken(peer_urls, Some(*id)) {
                return Err(MemberError::PeerUrlExists);
            }
            // Only the address changes: the member keeps its id, its role and its log.
            let node = Member {
                name: m.name.clone(),
                peer_urls: peer_urls.clone(),
                client_urls: m.client_urls.clone(),
            };
            plan(SetNodes(BTreeMap::from([(*id, node)])))
        }
        MemberChange::Promote { id } => {
            if !find(*id)?.learner {
                return Err(MemberError::NotLearner);
            }
            // etcd's isLearnerReady: the learner has 90% of the leader's log.
            let matched = progress.matched.get(id).copied().unwrap_or(0);
            if (matched as f64) < progress.leader_last_index as f64 * 0.9 {
                return Err(MemberError::LearnerNotReady);
            }
            // etcd's IsReadyToPromoteMember counts the learner as a started voter.
            let size = voters().count() + 1;
            let started = voters().filter(|m| m.started()).count() + 1;
            if is_strict && started < size / 2 + 1 {
                return Err(MemberError::NotEnoughStarted);
            }
            plan(AddVoterIds(BTreeSet::from([*id])))
        }
    }
}

/// etcd's `types.NewURLs`: every URL is scheme://host:port with a known scheme and no path.
fn validate_urls(urls: &[String]) -> Result<(), MemberError> {
    let valid = |u: &str| {
        let Some((scheme, rest)) = u.split_once("://") else { return false };
        if !matches!(scheme, "http" | "https" | "unix" | "unixs") {
            return false;
        }
        let host_port = rest.strip_suffix('/').unwrap_or(rest);
        !host_port.contains('/')
            && host_port.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
    };
    if urls.is_empty() || !urls.iter().all(|u| valid(u)) {
        return Err(MemberError::BadUrls);
    }
    Ok(())
}

/// The id of a member added at run time: like etcd, a hash of its peer URLs, the cluster and the time,
/// so that a member removed and added again with the same URLs never gets its old id back.
pub fn new_member_id(peer_urls: &[String], cluster_id: u64, now_nanos: u128) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    crate::config::fnv64(&[urls.join(",").as_bytes(), &cluster_id.to_be_bytes(), &now_nanos.to_be_bytes()])
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, learner: bool) -> MemberInfo {
        MemberInfo {
            id,
            name: name.into(),
            peer_urls: vec![format!("http://127.0.0.1:{}", 2380 + id)],
            client_urls: vec![],
            learner,
        }
    }

    /// Everyone has been answering for long enough.
    fn healthy() -> Connectivity {
        Connectivity { me: 1, active: (1..10).collect(), steady: (1..10).collect() }
    }

    fn three() -> Vec<MemberInfo> {
        vec![member(1, "a", false), member(2, "b", false), member(3, "c", false)]
    }

    fn add(urls: &[&str], learner: bool) -> MemberChange {
        MemberChange::Add { peer_urls: urls.iter().map(|u| u.to_string()).collect(), learner }
    }

    #[test]
    fn adding_checks_urls_and_the_learner_limit() {
        let p = Progress::default();
        let ms = three();
        assert_eq!(
            plan(&add(&["127.0.0.1:2390"], false), &ms, &p, Some(&healthy()), 9),
            Err(MemberError::BadUrls)
        );
        assert_eq!(
            plan(&add(&["http://h:99999"], false), &ms, &p, Some(&healthy()), 9),
            Err(MemberError::BadUrls)
        );
        assert_eq!(
            plan(&add(&["http://h:1/path"], false), &ms, &p, Some(&healthy()), 9),
            Err(MemberError::BadUrls)
        );
        assert_eq!(plan(&add(&[], false), &ms, &p, Some(&healthy()), 9), Err(MemberError::BadUrls));
        assert_eq!(
            plan(&add(&["http://127.0.0.1:2382"], false), &ms, &p, Some(&healthy()), 9),
            Err(MemberError::PeerUrlExists)
        );
        assert_eq!(
            plan(&add(&["http://h:1"], false), &ms, &p, Some(&healthy()), 2),
            Err(MemberError::Exists)
        );
        let ok = plan(&add(&["http://h:1"], true), &ms, &p, Some(&healthy()), 9).unwrap();
        assert!(matches!(ok.changes, openraft::ChangeMembers::AddNodes(_)));
        let mut with_learner = three();
        with_learner.push(member(4, "", true));
        assert_eq!(
            plan(&add(&["http://h:1"], true), &with_learner, &p, Some(&healthy()), 9),
            Err(MemberError::TooManyLearners)
        );
    }

    #[test]
    fn strict_checks_count_started_voters_like_etcd() {
        let p = Progress::default();
        // Three voters, two of them never started: a fourth voter would leave 1 of 4 started.
        let ms = vec![member(1, "a", false), member(2, "", false), member(3, "", false)];
        assert_eq!(
            plan(&add(&["http://h:1"], false), &ms, &p, Some(&healthy()), 9),
            Err(MemberError::NotEnoughStarted)
        );
        assert!(plan(&add(&["http://h:1"], false), &ms, &p, None, 9).is_ok());
        // Growing a one-member cluster is always allowed.
        assert!(plan(&add(&["http://h:1"], false), &ms[..1], &p, Some(&healthy()), 9).is_ok());
        // Removing a started voter would leave one started of two.
        assert_eq!(
            plan(&MemberChange::Remove { id: 1 }, &ms, &p, Some(&healthy()), 0),
            Err(MemberError::NotEnoughStarted)
        );
        assert!(plan(&MemberChange::Remove { id: 2 }, &three(), &p, Some(&healthy()), 0).is_ok());
        // The last voter cannot go, strict or not.
        assert_eq!(
            plan(&MemberChange::Remove { id: 1 }, &ms[..1], &p, None, 0),
            Err(MemberError::NotEnoughStarted)
        );
        assert_eq!(
            plan(&MemberChange::Remove { id: 7 }, &ms, &p, Some(&healthy()), 0),
            Err(MemberError::NotFound)
        );
    }

    #[test]
    fn strict_checks_need_the_voters_answering_like_etcd() {
        let p = Progress::default();
        let ms = three();
        // Member 3 answers now, but not for 5 s yet: no additions; a removal of member 2 would leave
        // member 1 (the leader) and a member it cannot count on.
        let shaky = Connectivity { me: 1, active: BTreeSet::from([2, 3]), steady: BTreeSet::from([2]) };
        assert_eq!(plan(&add(&["http://h:1"], false), &ms, &p, Some(&shaky), 9), Err(MemberError::Unhealthy));
        assert_eq!(plan(&add(&["http://h:1"], true), &ms, &p, Some(&shaky), 9), Err(MemberError::Unhealthy));
        assert_eq!(
            plan(&MemberChange::Remove { id: 2 }, &ms, &p, Some(&shaky), 0),
            Err(MemberError::Unhealthy)
        );
        assert!(plan(&add(&["http://h:1"], false), &ms, &p, None, 9).is_ok());
        // A member that is down is safe to remove: the others keep their quorum.
        let down = Connectivity { me: 1, active: BTreeSet::from([2]), steady: BTreeSet::from([2]) };
        assert!(plan(&MemberChange::Remove { id: 3 }, &ms, &p, Some(&down), 0).is_ok());
        assert_eq!(
            plan(&MemberChange::Remove { id: 2 }, &ms, &p, Some(&down), 0),
            Err(MemberError::Unhealthy)
        );
    }

    #[test]
    fn promotion_needs_a_learner_that_has_caught_up() {
        let mut ms = three();
        ms.push(member(4, "", true));
        let behind = Progress { leader_last_index: 100, matched: BTreeMap::from([(4, 80)]) };
        let caught_up = Progress { leader_last_index: 100, matched: BTreeMap::from([(4, 95)]) };
        let promote = |id| MemberChange::Promote { id };
        assert_eq!(plan(&promote(4), &ms, &behind, Some(&healthy()), 0), Err(MemberError::LearnerNotReady));
        assert_eq!(plan(&promote(2), &ms, &caught_up, Some(&healthy()), 0), Err(MemberError::NotLearner));
        assert_eq!(plan(&promote(8), &ms, &caught_up, Some(&healthy()), 0), Err(MemberError::NotFound));
        let ok = plan(&promote(4), &ms, &caught_up, Some(&healthy()), 0).unwrap();
        assert_eq!(ok.changes, openraft::ChangeMembers::AddVoterIds(BTreeSet::from([4])));
    }

    #[test]
    fn updating_keeps_the_member_but_not_a_taken_url() {
        let ms = three();
        let p = Progress::default();
        let update = |id, u: &str| MemberChange::Update { id, peer_urls: vec![u.to_string()] };
        assert_eq!(
            plan(&update(1, "http://127.0.0.1:2382"), &ms, &p, Some(&healthy()), 0),
            Err(MemberError::PeerUrlExists)
        );
        assert_eq!(plan(&update(9, "http://h:1"), &ms, &p, Some(&healthy()), 0), Err(MemberError::NotFound));
        let ok = plan(&update(1, "http://127.0.0.1:2381"), &ms, &p, Some(&healthy()), 0).unwrap();
        let openraft::ChangeMembers::SetNodes(nodes) = ok.changes else { panic!("not SetNodes") };
        assert_eq!(nodes[&1].name, "a");
        assert_eq!(nodes[&1].peer_urls, ["http://127.0.0.1:2381"]);
    }

    #[test]
    fn added_ids_differ_over_time() {
        let urls = vec!["http://h:1".to_string()];
        assert_ne!(new_member_id(&urls, 7, 1), new_member_id(&urls, 7, 2));
    }
}
